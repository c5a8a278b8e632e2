-- agents_append_spec.lua - contract §2 (POST /agents/<path>) against the real binary.
--
-- Covers: 204 + Stream-Offset/Stream-Next-Offset, Content-Type not required, stored event
-- shape and key order, version defaulting and number-to-string, unknown fields ignored,
-- every 400 case with a one-line JSON error and no consumed offset, 413 at the body
-- limit (and exactly-at-limit accepted), 404 for empty paths / unknown routes / methods,
-- 500 on a storage failure and 507 on a full disk with nothing partial left behind, and
-- serialized concurrent appends. Runs for both storages where the API is the same.
local socket = require "socket"
local http = require "spec.support.http"
local server = require "spec.support.server"
local A = require "spec.support.agents"
local J = require "spec.support.json"

local off = A.off

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function parse_iso(s)
  local y, mo, d, h, mi, se, ms = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)%.(%d%d%d)Z$")
  if not y then return nil end
  return days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60
      + tonumber(se) + tonumber(ms) / 1000
end

local seq = 0
local function fresh(prefix)
  seq = seq + 1
  return string.format("%s/p%d", prefix or "append", seq)
end

for _, storage in ipairs({ "yaml", "memory" }) do
  describe("POST /agents/<path> (" .. storage .. " storage)", function()
    local ctx = A.serve({ storage = storage })

    it("answers 204 with an empty body and the assigned offsets in headers", function()
      local p = fresh()
      local c = http.connect(ctx.srv.port)
      for i = 0, 2 do
        local status, h, body = c:request("POST", A.url(p), { ["Content-Type"] = "application/json" },
          A.body("t", '{"i":' .. i .. '}'))
        assert.are.equal(204, status)
        assert.are.equal("", body)
        assert.are.equal(off(i), h["stream-offset"])
        assert.are.equal(off(i + 1), h["stream-next-offset"])
      end
      c:close()
    end)

    it("does not require a Content-Type (none, text/plain, form)", function()
      local p = fresh()
      local c = http.connect(ctx.srv.port)
      local s1 = c:request("POST", A.url(p), {}, A.body("t"))
      local s2 = c:request("POST", A.url(p), { ["Content-Type"] = "text/plain" }, A.body("t"))
      local s3 = c:request("POST", A.url(p), { ["Content-Type"] = "application/x-www-form-urlencoded" }, A.body("t"))
      c:close()
      assert.are.same({ 204, 204, 204 }, { s1, s2, s3 })
      assert.are.same({ off(0), off(1), off(2) }, A.offsets(A.history(ctx.srv.port, p)))
    end)

    it("stores type, payload, version, path, offset, createdAt in that key order", function()
      local p = fresh("agent")
      local before = socket.gettime()
      -- not an agent input type: the agent layer would append request events of its own
      A.append(ctx.srv.port, p, "test:append:shape", '{"content":"Hello"}')
      local after = socket.gettime()
      local evs = A.history(ctx.srv.port, p)
      assert.are.equal(1, #evs)
      local e = evs[1].json
      assert.are.same({ "type", "payload", "version", "path", "offset", "createdAt" }, e.keys)
      assert.are.equal("test:append:shape", J.get(e, "type"))
      assert.is_true(J.equal(J.decode('{"content":"Hello"}'), J.get(e, "payload")))
      assert.are.equal("1", J.get(e, "version"))
      assert.are.equal(p, J.get(e, "path"))
      assert.are.equal(off(0), J.get(e, "offset"))
      local created = J.get(e, "createdAt")
      assert.is_string(created)
      local t = parse_iso(created)
      assert.is_truthy(t, "createdAt is not ISO-8601 UTC with milliseconds: " .. tostring(created))
      assert.is_true(t >= before - 2 and t <= after + 2,
        string.format("createdAt %s is not the server clock at append", created))
    end)

    it("defaults version to \"1\" and stores numbers as their shortest decimal string", function()
      local p = fresh()
      local cases = {
        { nil, "1" }, { '"version":"1"', "1" }, { '"version":"abc"', "abc" }, { '"version":2', "2" },
        { '"version":1.5', "1.5" }, { '"version":2.50', "2.5" }, { '"version":1.0', "1" },
        { '"version":1e2', "100" }, { '"version":10', "10" }, { '"version":"2"', "2" },
      }
      local c = http.connect(ctx.srv.port)
      for _, cs in ipairs(cases) do A.append(c, p, "t", "{}", cs[1]) end
      c:close()
      local evs = A.history(ctx.srv.port, p)
      assert.are.equal(#cases, #evs)
      for i, cs in ipairs(cases) do
        assert.are.equal(cs[2], J.get(evs[i].json, "version"), "version for " .. tostring(cs[1]))
      end
    end)

    it("accepts and ignores unknown top-level fields; the server assigns path, offset, createdAt", function()
      local p = fresh()
      A.append(ctx.srv.port, p, "t", "{}")
      local extra = '"eventStreamId":"/other/stream","offset":"0000000000000042","createdAt":"1999-01-01T00:00:00.000Z",'
          .. '"path":"evil/other","extra":{"nested":[1,2]},"id":7'
      local status, h = A.post(ctx.srv.port, p, '{' .. extra .. ',"type":"t2","payload":{"a":1}}')
      assert.are.equal(204, status)
      assert.are.equal(off(1), h["stream-offset"])
      local evs = A.history(ctx.srv.port, p)
      assert.are.equal(2, #evs)
      local e = evs[2].json
      assert.are.same({ "type", "payload", "version", "path", "offset", "createdAt" }, e.keys)
      assert.are.equal(p, J.get(e, "path"))
      assert.are.equal(off(1), J.get(e, "offset"))
      assert.are_not.equal("1999-01-01T00:00:00.000Z", J.get(e, "createdAt"))
      assert.are.same({ off(0), off(1) }, A.offsets(evs))
      -- nothing went to the path named in the body
      local other = A.history(ctx.srv.port, "evil/other")
      assert.are.equal(0, #other)
    end)

    describe("rejects invalid bodies with 400 and a one-line JSON error", function()
      local bad = {
        { "empty body", "" },
        { "not JSON", "not json" },
        { "open brace only", "{" },
        { "truncated object", '{"type":"t","payload":{}' },
        { "trailing garbage", '{"type":"t","payload":{}} x' },
        { "two objects", '{"type":"t","payload":{}}{"type":"t","payload":{}}' },
        { "trailing comma", '{"type":"t","payload":{},}' },
        { "single quotes", "{'type':'t','payload':{}}" },
        { "NaN literal", '{"type":"t","payload":{"n":NaN}}' },
        { "Infinity literal", '{"type":"t","payload":{"n":Infinity}}' },
        { "leading zero", '{"type":"t","payload":{"n":01}}' },
        { "raw newline in string", '{"type":"t","payload":{"s":"a\nb"}}' },
        { "bad escape", '{"type":"t","payload":{"s":"\\x41"}}' },
        { "invalid UTF-8 (ff fe)", '{"type":"t","payload":{"s":"\xff\xfe"}}' },
        { "invalid UTF-8 (overlong)", '{"type":"t","payload":{"s":"\xc0\xaf"}}' },
        { "invalid UTF-8 (raw surrogate)", '{"type":"t","payload":{"s":"\xed\xa0\x80"}}' },
        { "invalid UTF-8 (truncated sequence)", '{"type":"t","payload":{"s":"\xe2\x82"}}' },
        { "invalid UTF-8 in a key", '{"type":"t","payload":{"\xff":1}}' },
        { "invalid UTF-8 in type", '{"type":"t\xff","payload":{}}' },
        { "array", '[{"type":"t","payload":{}}]' },
        { "string", '"hello"' },
        { "number", "42" },
        { "null", "null" },
        { "true", "true" },
        { "type missing", '{"payload":{}}' },
        { "type number", '{"type":1,"payload":{}}' },
        { "type null", '{"type":null,"payload":{}}' },
        { "type object", '{"type":{},"payload":{}}' },
        { "type array", '{"type":["t"],"payload":{}}' },
        { "type boolean", '{"type":true,"payload":{}}' },
        { "type empty", '{"type":"","payload":{}}' },
        { "payload missing", '{"type":"t"}' },
        { "payload array", '{"type":"t","payload":[]}' },
        { "payload string", '{"type":"t","payload":"x"}' },
        { "payload null", '{"type":"t","payload":null}' },
        { "payload number", '{"type":"t","payload":1}' },
        { "payload boolean", '{"type":"t","payload":true}' },
        { "version boolean", '{"type":"t","payload":{},"version":true}' },
        { "version null", '{"type":"t","payload":{},"version":null}' },
        { "version object", '{"type":"t","payload":{},"version":{}}' },
        { "version array", '{"type":"t","payload":{},"version":["1"]}' },
      }
      for _, case in ipairs(bad) do
        it(case[1], function()
          local p = fresh("bad")
          local status, h, body = A.post(ctx.srv.port, p, case[2])
          A.assert_json_error(400, status, h, body, case[1])
          -- no offset was consumed, nothing stored
          assert.are.equal(0, #A.history(ctx.srv.port, p))
          assert.are.equal(off(0), A.append(ctx.srv.port, p, "ok"))
        end)
      end

      it("invalid path (empty segment)", function()
        local status, h, body = A.post(ctx.srv.port, "/agents/a//b", A.body("t"))
        A.assert_json_error(400, status, h, body, "a//b")
      end)

      it("400s in the middle of a stream leave no gap", function()
        local p = fresh("bad")
        local c = http.connect(ctx.srv.port)
        A.append(c, p, "a")
        for _, case in ipairs(bad) do
          local status, h, body = c:request("POST", A.url(p), {}, case[2])
          A.assert_json_error(400, status, h, body, case[1])
        end
        A.append(c, p, "b")
        c:close()
        local evs = A.history(ctx.srv.port, p)
        assert.are.same({ off(0), off(1) }, A.offsets(evs))
        assert.are.equal("b", J.get(evs[2].json, "type"))
      end)
    end)

    describe("body size limit (max_body_bytes = 1048576)", function()
      local function body_of_size(n)
        local head, tail = '{"type":"big","payload":{"s":"', '"}}'
        return head .. string.rep("x", n - #head - #tail) .. tail
      end

      it("accepts a body of exactly the limit", function()
        local p = fresh("big")
        local b = body_of_size(1048576)
        assert.are.equal(1048576, #b)
        local status = A.post(ctx.srv.port, p, b)
        assert.are.equal(204, status)
      end)

      it("answers 413 with a JSON error one byte over the limit, consuming no offset", function()
        local p = fresh("big")
        A.append(ctx.srv.port, p, "first")
        local status, h, body = A.post(ctx.srv.port, p, body_of_size(1048577))
        A.assert_json_error(413, status, h, body, "limit+1")
        assert.are.equal(off(1), A.append(ctx.srv.port, p, "after"))
        assert.are.equal(2, #A.history(ctx.srv.port, p))
      end)

      it("answers 413 for a chunked body that grows past the limit", function()
        local p = fresh("big")
        local c = http.connect(ctx.srv.port)
        local req = http.build("POST", A.url(p), { ["Transfer-Encoding"] = "chunked" }, nil)
        c:send_raw(req)
        local piece = string.rep("y", 65536)
        local head = '{"type":"t","payload":{"s":"'
        c:send_raw(string.format("%x\r\n%s\r\n", #head, head))
        local r
        for _ = 1, 20 do
          local ok = c:send_raw(string.format("%x\r\n%s\r\n", #piece, piece))
          if not ok then break end
          r = c:try_response("POST")
          if r then break end
          c:pump(0)
        end
        c:send_raw('3\r\n"}}\r\n0\r\n\r\n')
        r = r or c:read_response("POST")
        c:close()
        assert.is_truthy(r, "no response to an oversized chunked body")
        A.assert_json_error(413, r.status, r.headers, r.body, "chunked over limit")
        assert.are.equal(0, #A.history(ctx.srv.port, p))
      end)
    end)

    describe("answers 404 with a JSON error", function()
      local cases = {
        { "POST", "/agents" }, { "POST", "/agents/" }, { "GET", "/agents" }, { "GET", "/agents/" },
        { "POST", "/agents?x=1" }, { "POST", "/nope" }, { "GET", "/" }, { "GET", "/agentsx/a" },
        { "POST", "/agent/a" }, { "PUT", "/agents/a" }, { "DELETE", "/agents/a" }, { "PATCH", "/agents/a" },
      }
      for _, cs in ipairs(cases) do
        it(cs[1] .. " " .. cs[2], function()
          local body = (cs[1] ~= "GET") and A.body("t") or nil
          local status, h, b = http.request(ctx.srv.port, cs[1], cs[2], {}, body)
          A.assert_json_error(404, status, h, b, cs[1] .. " " .. cs[2])
        end)
      end

      it("and stores nothing for a PUT", function()
        http.request(ctx.srv.port, "PUT", "/agents/put-target", {}, A.body("t"))
        assert.are.equal(0, #A.history(ctx.srv.port, "put-target"))
      end)
    end)

    it("serializes concurrent appends: 100 POSTs on 20 connections get offsets 0..99", function()
      local p = fresh("conc")
      local conns = {}
      for i = 1, 20 do conns[i] = http.connect(ctx.srv.port) end
      for i, c in ipairs(conns) do
        local reqs = {}
        for j = 1, 5 do reqs[j] = http.build("POST", A.url(p), {}, A.body("t", string.format('{"c":%d,"j":%d}', i, j))) end
        assert(c:send_raw(table.concat(reqs)))
      end
      local got = {}
      for _, c in ipairs(conns) do
        for _ = 1, 5 do
          local r = assert(c:read_response("POST"))
          assert.are.equal(204, r.status)
          got[#got + 1] = r.headers["stream-offset"]
        end
        c:close()
      end
      table.sort(got)
      local want = {}
      for i = 0, 99 do want[#want + 1] = off(i) end
      assert.are.same(want, got)
      local evs = A.history(ctx.srv.port, p)
      assert.are.same(want, A.offsets(evs))
      -- each (c, j) exactly once
      local seen = {}
      for _, ev in ipairs(evs) do
        local pl = J.encode(J.get(ev.json, "payload"))
        assert.is_nil(seen[pl], "duplicate event " .. pl)
        seen[pl] = true
      end
    end)
  end)
end

describe("POST storage failures (yaml storage)", function()
  local ctx = A.serve({ storage = "yaml", allow_errors = { "collide", "is a directory", "eisdir", "no space", "enospc", "full", "storage", "write", "open" } })

  it("answers 500 with a JSON error when the stream file cannot be opened, consuming no offset", function()
    -- a symlink loop where the file belongs (ELOOP); a directory there would be the name of
    -- streams under collide.yaml/, a 409 (agents_paths_spec)
    local dir = ctx.srv:streams_dir()
    os.execute("ln -s collide.yaml " .. server.sh_quote(dir .. "/collide.yaml"))
    local status, h, body = A.post(ctx.srv.port, "collide", A.body("t"))
    A.assert_json_error(500, status, h, body, "stream file is a symlink loop")
    os.execute("rm " .. server.sh_quote(dir .. "/collide.yaml"))
    assert.are.equal(off(0), A.append(ctx.srv.port, "collide", "t"))
    assert.are.same({ off(0) }, A.offsets(A.history(ctx.srv.port, "collide")))
  end)
end)

describe("POST on a full disk (yaml storage on a small tmpfs)", function()
  local mnt, srv, base
  local mounted = false

  setup(function()
    mnt = server.mktemp()
    mounted = os.execute(string.format("mount -t tmpfs -o size=256k tmpfs %s 2>/dev/null", server.sh_quote(mnt))) == true
    if mounted then
      srv = server.start({ storage = "yaml", data_dir = mnt .. "/data" })
      base = srv:baseline()
    end
  end)

  teardown(function()
    local ok, err = true, nil
    if srv then
      ok, err = pcall(function()
        srv:stop()
        srv:assert_no_error_log({ "no space", "enospc", "full", "write", "storage", "append" }, true)
      end)
      srv:cleanup()
    end
    if mounted then os.execute("umount " .. server.sh_quote(mnt)) end
    os.execute("rmdir " .. server.sh_quote(mnt) .. " 2>/dev/null")
    if not ok then error(err, 0) end
  end)

  it("answers 507 with a JSON error, leaves no partial document, and continues gap-free once space is back", function()
    if not mounted then
      pending("needs `mount -t tmpfs` (not permitted here)")
      return
    end
    local p = "full/stream"
    assert.are.equal(off(0), A.append(srv.port, p, "t", "{}"))
    -- fill the filesystem, leaving a little room
    local free_kb = tonumber(server.cmd_output("df -k --output=avail " .. server.sh_quote(mnt) .. " | tail -1"):match("%d+"))
    os.execute(string.format("dd if=/dev/zero of=%s/filler bs=1k count=%d 2>/dev/null", server.sh_quote(mnt),
      math.max(free_kb - 24, 0)))
    local payload = '{"s":"' .. string.rep("z", 3000) .. '"}'
    local acked, status, h, body = 1, nil, nil, nil
    local c = http.connect(srv.port)
    for _ = 1, 200 do
      status, h, body = c:request("POST", A.url(p), {}, A.body("t", payload))
      if status ~= 204 then break end
      assert.are.equal(off(acked), h["stream-offset"])
      acked = acked + 1
    end
    c:close()
    A.assert_json_error(507, status, h, body, "disk full")
    -- the file holds exactly the acknowledged documents, each whole
    local text = server.read_file(srv:stream_file(p))
    local docs = 0
    for _ in text:gmatch("%-%-%-\n") do docs = docs + 1 end
    assert.are.equal(acked, docs)
    assert.is_truthy(text:match("\ncreatedAt: [^\n]+\n$"), "file does not end with a whole document")
    -- space comes back: the next append gets the next offset
    os.execute("rm -f " .. server.sh_quote(mnt .. "/filler"))
    assert.are.equal(off(acked), A.append(srv.port, p, "t", "{}"))
    local evs = A.history(srv.port, p)
    local want = {}
    for i = 0, acked do want[#want + 1] = off(i) end
    assert.are.same(want, A.offsets(evs))
    srv:wait_stats(base)
  end)
end)

describe("POST of an event that starts AI work", function()
  -- an upstream that accepts the connection and never answers: generation must run in the
  -- background, so the POST is answered at once anyway
  local upstream = assert(socket.bind("127.0.0.1", 0))
  local _, up_port = upstream:getsockname()
  local ctx = A.serve({
    storage = "yaml",
    config = { agents = { default_model = "openai", models = { openai = {
      base_url = "http://127.0.0.1:" .. up_port .. "/v1", api_key = "sk-test-not-a-key", connect_timeout_ms = 60000,
    } } } },
    allow_errors = { "openai", "upstream", "cancel", "shutdown", "request" },
  })
  teardown(function() upstream:close() end)

  it("answers 204 while the upstream request is still pending", function()
    local p = "ai/pending"
    local c = http.connect(ctx.srv.port, { timeout = 3 })
    local t0 = socket.gettime()
    local status, h = c:request("POST", A.url(p), {},
      A.body("iterate:agent:action:send-user-message:called", '{"content":"Hello"}'))
    c:close()
    assert.are.equal(204, status)
    assert.are.equal(off(0), h["stream-offset"])
    assert.is_true(socket.gettime() - t0 < 3)
    -- the request started in the background and has not ended (the upstream is silent)
    local evs
    server.wait_for(function()
      evs = A.history(ctx.srv.port, p)
      return #evs >= 2
    end, 5, "request-started")
    assert.are.equal("iterate:llm-loop:request-started", J.get(evs[2].json, "type"))
    assert.are.equal(2, #evs)
    -- cancelling ends it (and lets the after_each find no task left running)
    assert.are.equal(off(2), A.append(ctx.srv.port, p, "iterate:agent:action:cancel-request:called", "{}"))
    server.wait_for(function()
      evs = A.history(ctx.srv.port, p)
      return #evs >= 4
    end, 5, "request-cancelled")
    local last = evs[4].json
    assert.are.equal("iterate:llm-loop:request-cancelled", J.get(last, "type"))
    assert.are.equal("cancelled", J.get(J.get(last, "payload"), "reason"))
  end)
end)
