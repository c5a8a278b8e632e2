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
