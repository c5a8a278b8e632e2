-- agents_yaml_layout_spec.lua - contract §5.1 (YAML file layout) and acceptance 5.
--
-- Covers: the contract's example event byte for byte (createdAt masked), quoting and
-- block-style rules for a second document, the .yaml.offset sidecar (bare decimal) and
-- "documents win" when it disagrees, the design document's grep recipes run with the real
-- grep, and `tail -f` / direct reads seeing every event whole right after its 204.
local http = require "spec.support.http"
local server = require "spec.support.server"
local A = require "spec.support.agents"

local off = A.off
local q = server.sh_quote
local TS = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"

-- Split a YAML file into its documents (each starting with "---\n").
local function documents(text)
  assert(text, "stream file missing")
  local docs = {}
  local pos = 1
  assert(text:sub(1, 4) == "---\n", "file does not start with a document marker")
  while pos <= #text do
    local nxt = text:find("\n---\n", pos, true)
    if nxt then
      docs[#docs + 1] = text:sub(pos, nxt)
      pos = nxt + 1
    else
      docs[#docs + 1] = text:sub(pos)
      break
    end
  end
  return docs
end

local function mask(doc)
  assert(doc, "stream file or document missing")
  local masked, n = doc:gsub("\ncreatedAt: " .. TS .. "\n", "\ncreatedAt: <MASKED>\n")
  assert(n == 1, "document has no well-formed createdAt line:\n" .. doc)
  return masked
end

local function whole(doc, offset)
  return doc:sub(1, 4) == "---\n" and doc:find('\noffset: "' .. offset .. '"\n', 1, true) ~= nil
      and doc:match("\ncreatedAt: " .. TS .. "\n$") ~= nil
end

describe("YAML file layout", function()
  -- agent input events (the contract's own example is one) may make the agent layer append
  -- request events that fail for lack of an API key; those log lines are expected here.
  local ctx = A.serve({ storage = "yaml", allow_errors = { "openai", "api key", "api_key", "llm", "agent", "upstream" } })

  it("writes the contract's example event exactly (createdAt masked)", function()
    A.append(ctx.srv.port, "agent/session-123", "iterate:agent:action:send-user-message:called", '{"content":"Hello"}')
    local text = server.read_file(ctx.srv:stream_file("agent/session-123"))
    local docs = documents(text)
    assert.are.equal(table.concat({
      "---",
      "type: iterate:agent:action:send-user-message:called",
      "payload:",
      "  content: Hello",
      'version: "1"',
      "path: agent/session-123",
      'offset: "0000000000000000"',
      "createdAt: <MASKED>",
      "",
    }, "\n"), mask(docs[1]))
    -- anything the agent layer appended afterwards is whole documents too
    for i, d in ipairs(docs) do
      assert.is_true(whole(d, off(i - 1)), "document " .. i .. " is not whole:\n" .. d)
    end
  end)

  it("quotes strings that would read back as something else, block style, 2-space indent", function()
    local payload = '{"num":5,"neg":-3,"f":1.5,"s":"5","b":true,"sb":"true","sn":"null","tilde":"~","empty":"",'
        .. '"nested":{"deep":{"x":"hello world"}},"sp":" lead","colon":"a: b","hash":"a #b","e":{},"l":[]}'
    A.append(ctx.srv.port, "layout/more", "layout:check", payload, '"version":2')
    local text = server.read_file(ctx.srv:stream_file("layout/more"))
    assert.are.equal(table.concat({
      "---",
      "type: layout:check",
      "payload:",
      "  num: 5",
      "  neg: -3",
      "  f: 1.5",
      '  s: "5"',
      "  b: true",
      '  sb: "true"',
      '  sn: "null"',
      '  tilde: "~"',
      '  empty: ""',
      "  nested:",
      "    deep:",
      "      x: hello world",
      '  sp: " lead"',
      '  colon: "a: b"',
      '  hash: "a #b"',
      "  e: {}",
      "  l: []",
      'version: "2"',
      "path: layout/more",
      'offset: "0000000000000000"',
      "createdAt: <MASKED>",
      "",
    }, "\n"), mask(text))
  end)

  it("an empty payload is written as {}", function()
    A.append(ctx.srv.port, "layout/empty", "t", "{}")
    local text = server.read_file(ctx.srv:stream_file("layout/empty"))
    assert.are.equal('---\ntype: t\npayload: {}\nversion: "1"\npath: layout/empty\noffset: "0000000000000000"\ncreatedAt: <MASKED>\n',
      mask(text))
  end)

  describe("the design document's grep recipes", function()
    local dir
    setup(function()
      local c = http.connect(ctx.srv.port)
      local function add(p, t, payload) A.append(c, p, t, payload) end
      add("grep/f", "iterate:llm-loop:request-started", '{"model":"openai"}')
      add("grep/f", "iterate:llm-loop:response:sse", '{"requestOffset":0,"part":{"type":"text-start","id":"m1"}}')
      add("grep/f", "iterate:llm-loop:response:sse", '{"requestOffset":0,"part":{"type":"text-delta","id":"m1","delta":"Hi"}}')
      add("grep/f", "iterate:llm-loop:response:sse",
        '{"requestOffset":0,"part":{"type":"finish","reason":"stop","usage":{"inputTokens":12,"outputTokens":3,"totalTokens":15}}}')
      add("grep/f", "iterate:llm-loop:request-ended", '{"requestOffset":0}')
      add("grep/g", "iterate:llm-loop:request-started", '{"model":"openai"}')
      add("grep/g", "iterate:llm-loop:request-cancelled", '{"requestOffset":0,"reason":"error","message":"OpenAI HTTP 429: Rate limit exceeded"}')
      add("grep/h", "iterate:llm-loop:request-started", '{"model":"grok"}')
      c:close()
      dir = ctx.srv:streams_dir() .. "/grep"
    end)

    it('grep "^type:" f.yaml | sort | uniq -c', function()
      local out = server.cmd_output(string.format('cd %s && grep "^type:" f.yaml | sort | uniq -c', q(dir)))
      local counts = {}
      for n, t in out:gmatch("%s*(%d+) ([^\n]+)") do counts[t] = tonumber(n) end
      assert.are.same({
        ["type: iterate:llm-loop:request-started"] = 1,
        ["type: iterate:llm-loop:response:sse"] = 3,
        ["type: iterate:llm-loop:request-ended"] = 1,
      }, counts)
    end)

    it("grep -l request-cancelled *.yaml", function()
      local out = server.cmd_output(string.format("cd %s && grep -l request-cancelled *.yaml", q(dir)))
      assert.are.equal("g.yaml\n", out)
    end)

    it('grep -A5 "type: finish" f.yaml | grep inputTokens', function()
      local out = server.cmd_output(string.format('cd %s && grep -A5 "type: finish" f.yaml | grep inputTokens', q(dir)))
      assert.is_truthy(out:match("^%s+inputTokens: 12\n$"), "got: " .. out)
    end)
  end)

  it("every event is whole in the file right after its 204, and tail -f shows each event whole", function()
    local p = "tail/f"
    local file = ctx.srv:stream_file(p)
    A.append(ctx.srv.port, p, "first", '{"i":0}')
    local tail_out = ctx.srv.root .. "/tail.out"
    local pid = tonumber(server.cmd_output(string.format("tail -n +1 -f %s > %s 2>/dev/null & echo $!", q(file), q(tail_out))))
    local ok, err = pcall(function()
      local c = http.connect(ctx.srv.port)
      local prev = #server.read_file(file)
      for i = 1, 40 do
        local payload = '{"i":' .. i .. ',"text":"' .. string.rep("line of text ", i * 20) .. '"}'
        assert.are.equal(off(i), A.append(c, p, "ev", payload))
        local text = server.read_file(file)
        local new = text:sub(prev + 1)
        prev = #text
        -- exactly one new document, whole
        assert.is_true(whole(new, off(i)), "after append " .. i .. " the file does not end with the whole event")
        assert.are.equal(1, #documents(new))
        -- tail -f sees it whole (wait for tail to catch up; it never shows a fragment at a boundary)
        server.wait_for(function()
          local t = server.read_file(tail_out) or ""
          return t:find('\noffset: "' .. off(i) .. '"\n', 1, true) and t:match("\ncreatedAt: " .. TS .. "\n$")
        end, 5, "tail -f to show event " .. i)
      end
      c:close()
      assert.are.equal(server.read_file(file), server.read_file(tail_out))
    end)
    os.execute("kill " .. pid)
    if not ok then error(err, 0) end
  end)

  describe("the .yaml.offset sidecar", function()
    local p = "sidecar/s"
    it("holds the next offset as a bare decimal", function()
      for _ = 1, 3 do A.append(ctx.srv.port, p, "t") end
      server.wait_for(function() return server.read_file(ctx.srv:stream_file(p) .. ".offset") == "3" end, 5,
        "sidecar to read \"3\" (got " .. tostring(server.read_file(ctx.srv:stream_file(p) .. ".offset")) .. ")")
    end)

    it("loses to the documents when it disagrees (ahead, behind, missing)", function()
      local side = ctx.srv:stream_file(p) .. ".offset"
      local next_off = 3
      for _, bogus in ipairs({ "999", "0", "1", false, "garbage" }) do
        ctx.srv:stop()
        if bogus then
          server.write_file(side, bogus)
        else
          os.remove(side)
        end
        ctx.srv:restart()
        ctx.base = ctx.srv:baseline()
        assert.are.equal(off(next_off), A.append(ctx.srv.port, p, "t"), "sidecar " .. tostring(bogus))
        next_off = next_off + 1
      end
      local evs = A.history(ctx.srv.port, p)
      local want = {}
      for i = 0, next_off - 1 do want[#want + 1] = off(i) end
      assert.are.same(want, A.offsets(evs))
    end)
  end)
end)

-- A key repeated in one object (contract §1, revised): JavaScript's JSON.parse keeps the
-- last value at the first key's position, and so does every JSON the server stores: the
-- /agents event (top level and payload, nested), the protocol's JSON messages. The YAML must
-- stay valid (a YAML mapping cannot repeat a key; checked with PyYAML and a loader that
-- refuses duplicates) and the SSE JSON must carry the key once, also after a restart (the
-- cold read transcodes the YAML).
local STRICT_YAML = [[
import sys, yaml
class Strict(yaml.SafeLoader):
    pass
def mapping(loader, node, deep=False):
    keys = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, "duplicate key %r" % (key,), k.start_mark)
        keys.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)
Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
docs = list(yaml.load_all(open(sys.argv[1]), Loader=Strict))
print(len(docs))
]]

describe("duplicate JSON keys", function()
  local ctx = A.serve({ storage = "yaml" })

  local function strict_yaml_docs(file)
    local py = ctx.srv.root .. "/strict_yaml.py"
    server.write_file(py, STRICT_YAML)
    local out = server.cmd_output("/usr/bin/python3 " .. q(py) .. " " .. q(file) .. " 2>&1")
    return tonumber(out:match("^(%d+)\n$")), out
  end

  it("keep the last value once, at the first key's position: SSE, YAML, and after a restart", function()
    local p = "dup/keys"
    local body = '{"type":"first","payload":{"x":1,"w":{"k":1,"z":0,"k":[2]},"x":{"n":2},"\\u0078":3},' ..
        '"type":"dup:test","version":"1","version":7}'
    local status = A.post(ctx.srv.port, p, body)
    assert.are.equal(204, status)
    local want = '{"type":"dup:test","payload":{"x":3,"w":{"k":[2],"z":0}},"version":"7","path":"dup/keys",' ..
        '"offset":"0000000000000000","createdAt":"'
    local evs = A.history(ctx.srv.port, p)
    assert.are.equal(1, #evs)
    assert.are.equal(want, evs[1].data:sub(1, #want))
    local file = ctx.srv:stream_file(p)
    local n, out = strict_yaml_docs(file)
    assert.are.equal(1, n, out)
    local text = server.read_file(file)
    assert.are.equal(1, select(2, text:gsub("\n  x: ", "")))
    assert.truthy(text:find("\npayload:\n  x: 3\n  w:\n    k:\n      %- 2\n    z: 0\nversion: \"7\"\n"), text)
    -- cold read after a restart: the YAML transcoded back to the same JSON
    ctx.srv:restart()
    ctx.base = ctx.srv:baseline()
    local again = A.history(ctx.srv.port, p)
    assert.are.equal(evs[1].data, again[1].data)
  end)

  it("in protocol JSON messages too (stored once, read back with one key)", function()
    local st = http.request(ctx.srv.port, "PUT", "/v1/stream/dup/proto", { ["Content-Type"] = "application/json" },
      '[{"a":1,"b":2,"a":3}]')
    assert.are.equal(201, st)
    st = http.request(ctx.srv.port, "POST", "/v1/stream/dup/proto", { ["Content-Type"] = "application/json" },
      '{"m":{"q":1,"q":2},"m":{"q":3,"q":4}}')
    assert.are.equal(204, st)
    local gs, _, gb = http.request(ctx.srv.port, "GET", "/v1/stream/dup/proto?offset=-1")
    assert.are.equal(200, gs)
    assert.are.equal('[{"a":3,"b":2},{"m":{"q":4}}]', gb)
    local n, out = strict_yaml_docs(ctx.srv:stream_file("dup/proto"))
    assert.are.equal(2, n, out)
  end)
end)
