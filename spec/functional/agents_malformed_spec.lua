-- agents_malformed_spec.lua - issue 12, item 10 (the agent's side): a stored record that
-- is not a well-formed agent event never stops the agent: it is logged at warn with its
-- path and offset and skipped, live and when a path's state is rebuilt at start-up; the
-- next message is answered.
-- Records are written two ways: events with odd payloads through /agents (accepted by the
-- API, odd for the agent), and hand-written YAML documents of every record kind the store
-- reads (JSON that is not an event, text, events whose type or payload has the wrong type)
-- placed in the data dir before the start.
-- Must not: sleep fixed times or leave processes or temp directories behind.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")

local T = S.T

-- The events of a path, skipping what is not JSON (how /agents serves records that are
-- not events is the read side's business, not this spec's).
local function events(srv, path)
  local cjson = require("cjson")
  local _, body = srv:request("GET", "/agents/" .. path)
  local out = {}
  for data in body:gmatch("data: ([^\n]*)\n") do
    local ok, v = pcall(cjson.decode, data)
    if ok and type(v) == "table" and v.type then
      out[#out + 1] = v
    end
  end
  return out
end

local function warn_lines(log)
  local out = {}
  for line in log:gmatch("[^\n]+") do
    if line:find(" warn lua:lua: agent: ", 1, true) then
      out[#out + 1] = line
    end
  end
  return table.concat(out, "\n")
end

describe("malformed stored events", function()
  it("sent through /agents with odd payloads: the agent answers, reports, and goes on", function()
    S.with_server({ agents = { default_model = "echo" } }, function(srv)
      local p = "odd/live"
      local odd = {
        { T.user, { content = 5 } },
        { T.user, { content = "x", mode = { "not", "a", "mode" } } },
        { T.config, { model = { name = "echo" } } },
        { T.audio, { audio = 12 } },
        { T.cancel, { junk = { 1, 2, 3 } } },
        { T.user, { content = { nested = true } } },
      }
      for _, o in ipairs(odd) do
        assert.equal(204, srv:post(p, o[1], o[2]))
      end
      local _, fin = srv:prompt(p, T.user, { content = "a real question" })
      assert.equal(T.ended, fin.type)
      local evs = srv:events(p)
      -- content 5, a bad mode, a model table, audio to a text model, a content table
      assert.equal(5, S.count(evs, T.ai_error))
      assert.equal(1, S.count(evs, T.started))
      -- a restart rebuilds the state from these records, and still answers
      srv:restart()
      local _, fin2 = srv:prompt(p, T.user, { content = "after the restart" })
      assert.equal(T.ended, fin2.type)
      assert.same({}, srv:error_lines(nil, true))
    end)
  end)

  it("hand-written into the data dir: skipped with path and offset at start-up, the next message answered", function()
    local root = S.mktemp()
    local dir = root .. "/data/streams/odd"
    os.execute("mkdir -p " .. S.q(dir))
    local docs = {
      "json: 1",
      "json: just a string",
      "json: null",
      "json:\n  - 1\n  - x",
      "json:\n  role: user\n  content: not an agent event",
      "text: a line of plain text",
      "type: 5\npayload: {}",
      "type: " .. T.user .. "\npayload: not an object",
      "type: " .. T.user .. "\npayload:\n  content: hello from the file\nversion: \"1\"\npath: odd/chat",
    }
    local out = {}
    for i, d in ipairs(docs) do
      out[#out + 1] = ("---\n%s\noffset: \"%016d\"\ncreatedAt: 2026-01-01T00:00:00.000Z\n"):format(d, i - 1)
    end
    S.write_file(dir .. "/chat.yaml", table.concat(out))
    local srv = S.start({ agents = { default_model = "echo" }, root = root })
    local ok, err = pcall(function()
      assert.equal(204, srv:post("odd/chat", T.user, { content = "and now a question" }))
      local evs = S.wait_for(function()
        local e = events(srv, "odd/chat")
        return S.count(e, T.ended) == 1 and e
      end, 10, "the answer")
      local warns = warn_lines(srv:log())
      assert.truthy(warns:find("agent: skipping the malformed event at odd/chat offset 0000000000000000: a number", 1,
        true), warns)
      assert.truthy(warns:find("agent: skipped 5 more malformed events at odd/chat", 1, true), warns)
      -- the message stored in the file was never answered: the new one supersedes it
      local deltas = table.concat(S.deltas(evs))
      assert.equal("and now a question", deltas)
      srv:wait_idle()
      assert.same({}, srv:error_lines())
    end)
    srv:stop()
    srv:cleanup()
    os.execute("rm -rf " .. S.q(root))
    assert(ok, err)
  end)
end)
