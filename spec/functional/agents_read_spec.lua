-- agents_read_spec.lua - contract §3 (GET /agents/<path> as Server-Sent Events).
--
-- Covers: exclusive offset (missing, empty, -1, short and 16-digit numbers, beyond the
-- end, `now`), 400 for every other offset, Last-Event-ID as the resume point over offset
-- (and 400 when malformed), EventSource reconnects with the same URL, live
-- (`sse`, `true`) vs everything else, response headers flushed before any event, exact
-- framing (id/event/data, compact single-line JSON, raw UTF-8), keepalive comments, no
-- control frames, history-then-live in order with no gap/duplicate while appends race
-- with the catch-up read, never-written paths, HEAD, and release on disconnect.
local socket = require "socket"
local http = require "spec.support.http"
local sse = require "spec.support.sse"
local A = require "spec.support.agents"
local J = require "spec.support.json"

local off = A.off

local seq = 0
local function fresh(prefix)
  seq = seq + 1
  return string.format("%s/r%d", prefix or "read", seq)
end

local function fill(port, p, n)
  local c = http.connect(port)
  for i = 0, n - 1 do A.append(c, p, "e", '{"i":' .. i .. '}') end
  c:close()
end

local function range(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = off(i) end
  return t
end

for _, storage in ipairs({ "yaml", "memory" }) do
  describe("GET /agents/<path> (" .. storage .. " storage)", function()
    -- dropping slow readers is agents_slow_subscriber_spec's subject; here a generous backlog
    -- keeps a prompt reader on a busy machine from being dropped
    local ctx = A.serve({ storage = storage, config = { sse = { keepalive_ms = 200 },
      limits = { subscriber_backlog_bytes = 16 * 1048576 } } })

    describe("offset", function()
      local p = "read/offsets/" .. storage
      setup(function() fill(ctx.srv.port, p, 5) end)

      local cases = {
        { "missing", nil, range(0, 4) },
        { "empty", "offset=", range(0, 4) },
        { "-1", "offset=-1", range(0, 4) },
        { "16 digits, exclusive", "offset=0000000000000001", range(2, 4) },
        { "short decimal, numeric", "offset=1", range(2, 4) },
        { "0", "offset=0", range(1, 4) },
        { "leading zeros, short", "offset=003", range(4, 4) },
        { "last offset", "offset=0000000000000004", {} },
        { "beyond the end", "offset=9999999999999999", {} },
        { "now (not live)", "offset=now", {} },
        { "with other parameters", "foo=bar&offset=2&x", range(3, 4) },
      }
      for _, cs in ipairs(cases) do
        it(cs[1], function()
          local evs, status = A.history(ctx.srv.port, p, cs[2])
          assert.are.equal(200, status)
          assert.are.same(cs[3], A.offsets(evs))
        end)
      end

      local bad = {
        "garbage", "abc", "1a", "a1", "-2", "-0", "+1", " 1", "1 ", "0x10", "1.0", "1e3", "00000000000000001",
        "12345678901234567", "NOW", "Now", "now1", "%FF", "1%00",
      }
      for _, b in ipairs(bad) do
        it("400 for offset=" .. b, function()
          local q = "offset=" .. b:gsub(" ", "%%20"):gsub("%+", "%%2B")
          local status, h, body = http.request(ctx.srv.port, "GET", A.url(p, q))
          A.assert_json_error(400, status, h, body, "offset=" .. b)
        end)
      end

      it("uses Last-Event-ID when offset is absent", function()
        local evs = A.history(ctx.srv.port, p, nil, { ["Last-Event-ID"] = off(2) })
        assert.are.same(range(3, 4), A.offsets(evs))
      end)

      -- agents-api.md §3 (revised 2026-12-07): a browser reconnects an EventSource with the
      -- same URL plus Last-Event-ID, so the header is the resume point when present
      it("Last-Event-ID wins over offset", function()
        local evs = A.history(ctx.srv.port, p, "offset=0", { ["Last-Event-ID"] = off(3) })
        assert.are.same(range(4, 4), A.offsets(evs))
        evs = A.history(ctx.srv.port, p, "offset=-1", { ["Last-Event-ID"] = off(2) })
        assert.are.same(range(3, 4), A.offsets(evs))
        evs = A.history(ctx.srv.port, p, "offset=now", { ["Last-Event-ID"] = off(1) })
        assert.are.same(range(2, 4), A.offsets(evs))
        evs = A.history(ctx.srv.port, p, "offset=0000000000000003", { ["Last-Event-ID"] = "0" })
        assert.are.same(range(1, 4), A.offsets(evs))
      end)

      it("an empty Last-Event-ID is no resume point: offset applies", function()
        local evs = A.history(ctx.srv.port, p, "offset=2", { ["Last-Event-ID"] = "" })
        assert.are.same(range(3, 4), A.offsets(evs))
      end)

      for _, b in ipairs({ "garbage", "1a", "-2", "00000000000000001", "0x10", "NOW" }) do
        it("400 for a malformed Last-Event-ID " .. b .. ", also next to a valid offset", function()
          local status, h, body = http.request(ctx.srv.port, "GET", A.url(p, "offset=0"), { ["Last-Event-ID"] = b })
          A.assert_json_error(400, status, h, body, "Last-Event-ID: " .. b)
          assert.truthy(body:find("Last-Event-ID", 1, true), body)
        end)
      end
    end)

    describe("response", function()
      it("has the SSE headers and exact framing: id, event: data, one compact data line", function()
        local p = fresh()
        A.append(ctx.srv.port, p, "test:read:framing", '{"content":"Hello"}')
        A.append(ctx.srv.port, p, "two", '{"a":[1,{"b":null}],"c":"x y"}', '"version":2')
        local evs, status, h, raw = A.history(ctx.srv.port, p)
        assert.are.equal(200, status)
        assert.is_truthy((h["content-type"] or ""):match("^text/event%-stream"), h["content-type"])
        assert.are.equal("no-cache", h["cache-control"])
        assert.are.equal("keep-alive", (h["connection"] or ""):lower())
        assert.are.equal("no", h["x-accel-buffering"])
        assert.are.equal(2, #evs)
        -- rebuild the expected bytes from the parsed data lines and compare the whole body
        -- (after the ": open" comment that every GET sends first, agents_keepalive_spec)
        local expect = { ": open\n\n" }
        for i, ev in ipairs(evs) do
          expect[#expect + 1] = "id: " .. off(i - 1) .. "\nevent: data\ndata: " .. ev.data .. "\n\n"
        end
        assert.are.equal(table.concat(expect), raw)
        for i, ev in ipairs(evs) do
          assert.are.equal(1, ev.data_lines)
          -- compact: decodes with no whitespace between tokens
          local ok, err = pcall(J.decode, ev.data, { compact = true })
          assert.is_true(ok, tostring(err))
          assert.are.equal(off(i - 1), J.get(ev.json, "offset"))
        end
        assert.are.equal('{"a":[1,{"b":null}],"c":"x y"}', J.encode(J.get(evs[2].json, "payload")))
        assert.are.equal("2", J.get(evs[2].json, "version"))
      end)

      it("sends raw UTF-8, not \\u escapes", function()
        local p = fresh()
        -- the body escapes everything non-ASCII; the output must carry the raw bytes
        local payload = J.obj({ { "s", "h\u{e9}llo \u{1F600} \u{4e2d}\u{6587}" } })
        A.append(ctx.srv.port, p, "t", J.encode(payload, { ascii = true }))
        local evs = A.history(ctx.srv.port, p)
        assert.is_truthy(evs[1].data:find("h\u{e9}llo \u{1F600} \u{4e2d}\u{6587}", 1, true), evs[1].data)
        assert.is_true(J.check_escapes(evs[1].data))
      end)

      it("flushes the headers of a live response before any event exists", function()
        local p = fresh("empty")
        local r = sse.open(ctx.srv.port, A.url(p, "live=sse"))
        assert.are.equal(200, r:wait_head(5))
        assert.is_truthy((r.headers["content-type"] or ""):match("^text/event%-stream"))
        assert.are.equal(0, r:pending())
        r:close()
      end)

      it("a never-written path: 200 with no events (not live)", function()
        local evs, status = A.history(ctx.srv.port, fresh("never"))
        assert.are.equal(200, status)
        assert.are.same({}, evs)
      end)

      it("a never-written path, live: waits and delivers the first event", function()
        local p = fresh("never")
        local r = sse.open(ctx.srv.port, A.url(p, "live=sse"))
        assert.are.equal(200, r:wait_head(5))
        A.append(ctx.srv.port, p, "first", '{"n":1}')
        local ev = assert(r:next_event(5))
        assert.are.equal(off(0), ev.id)
        assert.are.equal("data", ev.event)
        assert.are.equal("first", J.get(J.decode(ev.data), "type"))
        r:close()
      end)

      it("sends keepalive comments while live and idle, and no control frames", function()
        local p = fresh()
        A.append(ctx.srv.port, p, "t")
        local r = sse.open(ctx.srv.port, A.url(p, "live=sse"))
        assert.is_true(r:wait(function(x) return x.comments >= 3 end, 5), "no keepalive comments within 5 s")
        for i, c in ipairs(r.comment_list) do
          assert.are.equal(i == 1 and ": open" or ": keepalive", c)
        end
        local ev = assert(r:next_event(1))
        assert.are.equal(off(0), ev.id)
        assert.are.equal("data", ev.event)
        assert.are.equal(0, r:pending())
        r:close()
      end)
    end)

    describe("live", function()
      for _, l in ipairs({ "sse", "true" }) do
        it("live=" .. l .. " sends history then new events and stays open", function()
          local p = fresh()
          fill(ctx.srv.port, p, 3)
          local r = sse.open(ctx.srv.port, A.url(p, "live=" .. l))
          for i = 0, 2 do assert.are.equal(off(i), assert(r:next_event(5)).id) end
          A.append(ctx.srv.port, p, "new")
          local ev = assert(r:next_event(5))
          assert.are.equal(off(3), ev.id)
          assert.are.equal("new", J.get(J.decode(ev.data), "type"))
          assert.is_false(r.ended)
          r:close()
        end)
      end

      for _, l in ipairs({ "false", "1", "", "yes", "SSE", "True", "sse2" }) do
        it("live=" .. l .. " sends the history and ends the response", function()
          local p = fresh()
          fill(ctx.srv.port, p, 2)
          local evs, status = A.history(ctx.srv.port, p, "live=" .. l)
          assert.are.equal(200, status)
          assert.are.same(range(0, 1), A.offsets(evs))
        end)
      end

      it("a non-live response ends and the connection can be reused", function()
        local p = fresh()
        fill(ctx.srv.port, p, 2)
        local c = http.connect(ctx.srv.port)
        local s1, _, b1 = c:request("GET", A.url(p))
        local s2, _, b2 = c:request("GET", A.url(p, "offset=0"))
        c:close()
        assert.are.equal(200, s1)
        assert.are.equal(200, s2)
        assert.are.equal(2, select(2, b1:gsub("\nevent: data\n", "")))
        assert.are.equal(1, select(2, b2:gsub("\nevent: data\n", "")))
      end)

      it("offset=now with live: only events appended after the request", function()
        local p = fresh()
        fill(ctx.srv.port, p, 3)
        local r = sse.open(ctx.srv.port, A.url(p, "offset=now&live=sse"))
        assert.are.equal(200, r:wait_head(5))
        A.append(ctx.srv.port, p, "after")
        local ev = assert(r:next_event(5))
        assert.are.equal(off(3), ev.id)
        r:close()
      end)

      it("live from an offset: events after it, then live ones", function()
        local p = fresh()
        fill(ctx.srv.port, p, 4)
        local r = sse.open(ctx.srv.port, A.url(p, "offset=" .. off(1) .. "&live=sse"))
        assert.are.equal(off(2), assert(r:next_event(5)).id)
        assert.are.equal(off(3), assert(r:next_event(5)).id)
        A.append(ctx.srv.port, p, "x")
        assert.are.equal(off(4), assert(r:next_event(5)).id)
        r:close()
      end)

      for _, q in ipairs({ "offset=-1&live=sse", "offset=now&live=sse", "offset=0&live=true" }) do
        it("an EventSource reconnect (same URL ?" .. q .. " plus Last-Event-ID) resumes exactly", function()
          local p = fresh()
          fill(ctx.srv.port, p, 3)
          local url = A.url(p, q)
          local r = sse.open(ctx.srv.port, url)
          assert.are.equal(200, r:wait_head(5))
          A.append(ctx.srv.port, p, "seen")
          local last
          repeat last = assert(r:next_event(5)).id until last == off(3)
          r:close()
          -- appended during the gap: neither replayed history nor lost with offset=now
          A.append(ctx.srv.port, p, "gap-1")
          A.append(ctx.srv.port, p, "gap-2")
          local r2 = sse.open(ctx.srv.port, url, { ["Last-Event-ID"] = last })
          assert.are.equal(off(4), assert(r2:next_event(5)).id)
          assert.are.equal(off(5), assert(r2:next_event(5)).id)
          A.append(ctx.srv.port, p, "later")
          assert.are.equal(off(6), assert(r2:next_event(5)).id)
          assert.are.equal(0, r2:pending())
          r2:close()
        end)
      end

      it("resumes via Last-Event-ID on reconnect (EventSource behaviour)", function()
        local p = fresh()
        fill(ctx.srv.port, p, 3)
        local r = sse.open(ctx.srv.port, A.url(p, "live=sse"))
        local last
        for _ = 1, 3 do last = assert(r:next_event(5)).id end
        r:close()
        A.append(ctx.srv.port, p, "while-away")
        local r2 = sse.open(ctx.srv.port, A.url(p, "live=sse"), { ["Last-Event-ID"] = last })
        assert.are.equal(off(3), assert(r2:next_event(5)).id)
        A.append(ctx.srv.port, p, "later")
        assert.are.equal(off(4), assert(r2:next_event(5)).id)
        r2:close()
      end)

      it("is exactly-once and in order while appends race with the catch-up read", function()
        local p = fresh("race")
        local total = 600
        local w = http.connect(ctx.srv.port)
        local readers = {}
        local sent, acked = 0, 0
        local depth = 0
        local join_at = { 0, 50, 120, 200, 300, 420, 550 }
        local ji = 1
        local deadline = socket.gettime() + 60
        while acked < total do
          assert(socket.gettime() < deadline, "appends did not finish in time")
          while ji <= #join_at and acked >= join_at[ji] do
            readers[#readers + 1] = sse.open(ctx.srv.port, A.url(p, "live=sse"))
            ji = ji + 1
          end
          while sent < total and depth < 8 do
            w:send_raw(http.build("POST", A.url(p), {}, A.body("e", '{"i":' .. sent .. '}')))
            sent, depth = sent + 1, depth + 1
          end
          w:pump(0.01)
          while true do
            local r = w:try_response("POST")
            if not r then break end
            assert.are.equal(204, r.status)
            acked, depth = acked + 1, depth - 1
          end
          for _, rd in ipairs(readers) do rd:pump(0) end
        end
        w:close()
        for idx, rd in ipairs(readers) do
          local got = {}
          while #got < total do
            local ev, why = rd:next_event(10)
            assert(ev, string.format("reader %d (joined at %d) stopped after %d events: %s %s (%d bytes read); server log tail:\n%s",
              idx, join_at[idx], #got, tostring(why), tostring(rd.error), rd.bytes, ctx.srv:log():sub(-1500)))
            got[#got + 1] = ev.id
            assert.are.equal(off(#got - 1), ev.id, string.format("reader %d: gap or duplicate", idx))
          end
          assert.are.equal(0, rd:pending())
          rd:close()
        end
      end)
    end)

    describe("HEAD", function()
      it("behaves like GET without a body", function()
        local p = fresh()
        fill(ctx.srv.port, p, 2)
        local c = http.connect(ctx.srv.port)
        local status, h, body = c:request("HEAD", A.url(p))
        assert.are.equal(200, status)
        assert.are.equal("", body)
        assert.is_truthy((h["content-type"] or ""):match("^text/event%-stream"))
        assert.are.equal("no-cache", h["cache-control"])
        -- the connection is still usable: the HEAD response carried no body bytes
        local s2, _, b2 = c:request("GET", A.url(p))
        assert.are.equal(200, s2)
        assert.are.equal(2, select(2, b2:gsub("\nevent: data\n", "")))
        c:close()
      end)

      it("with live=sse ends at once without a body", function()
        local p = fresh()
        fill(ctx.srv.port, p, 1)
        local c = http.connect(ctx.srv.port)
        local status, _, body = c:request("HEAD", A.url(p, "live=sse"))
        assert.are.equal(200, status)
        assert.are.equal("", body)
        local s2 = c:request("GET", A.url(p))
        assert.are.equal(200, s2)
        c:close()
      end)

      it("400 for a bad offset, without a body", function()
        local status, _, body = http.request(ctx.srv.port, "HEAD", A.url("x", "offset=garbage"))
        assert.are.equal(400, status)
        assert.are.equal("", body)
      end)
    end)

    describe("subscriptions", function()
      it("are released when clients disconnect", function()
        local p = fresh()
        local rs = {}
        for i = 1, 5 do
          rs[i] = sse.open(ctx.srv.port, A.url(p, "live=sse"))
          assert.are.equal(200, rs[i]:wait_head(5))
        end
        ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 5, streams_open = ctx.base.streams_open + 5 })
        for i = 1, 3 do rs[i]:close() end
        ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 2 })
        -- the survivors still get events
        A.append(ctx.srv.port, p, "x")
        assert.are.equal(off(0), assert(rs[4]:next_event(5)).id)
        assert.are.equal(off(0), assert(rs[5]:next_event(5)).id)
        rs[4]:close()
        rs[5]:close()
        ctx.srv:wait_stats(ctx.base)
      end)
    end)
  end)
end

describe("GET ordering across a restart (yaml storage)", function()
  local ctx = A.serve({ storage = "yaml" })
  it("offsets continue after a clean restart and history is intact", function()
    fill(ctx.srv.port, "restart/x", 3)
    ctx.srv:restart()
    ctx.base = ctx.srv:baseline()
    assert.are.equal(off(3), A.append(ctx.srv.port, "restart/x", "after"))
    assert.are.same(range(0, 3), A.offsets(A.history(ctx.srv.port, "restart/x")))
  end)
end)

describe("clients that must work unchanged (§7)", function()
  local server = require "spec.support.server"
  local ctx = A.serve({ storage = "yaml" })

  it("curl -N receives history and live events", function()
    local p = "clients/curl"
    A.append(ctx.srv.port, p, "before")
    local out = ctx.srv.root .. "/curl.out"
    local pid = tonumber(server.cmd_output(string.format(
      "curl -sN --max-time 20 'http://127.0.0.1:%d%s' > %s 2>/dev/null & echo $!",
      ctx.srv.port, A.url(p, "live=sse"), server.sh_quote(out))))
    finally(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
    server.wait_for(function() return (server.read_file(out) or ""):find("id: " .. off(0), 1, true) end, 5, "curl history")
    A.append(ctx.srv.port, p, "after")
    server.wait_for(function()
      local t = server.read_file(out) or ""
      return t:find("id: " .. off(1) .. "\nevent: data\ndata: ", 1, true) and t:sub(-2) == "\n\n"
    end, 5, "curl live event")
    os.execute("kill " .. pid .. " 2>/dev/null")
  end)

  it("the original browser UI's flow: POST shape, non-live history split on blank lines, live from the last offset", function()
    local p = "clients/ui"
    local c = http.connect(ctx.srv.port)
    for i = 1, 3 do
      local status = c:request("POST", A.url(p), { ["Content-Type"] = "application/json" },
        '{"type":"ui:test","version":1,"eventStreamId":"/' .. p .. '","payload":{"n":' .. i .. '}}')
      assert.is_true(status >= 200 and status < 300) -- the UI checks only res.ok
    end
    local status, _, body = c:request("GET", A.url(p))
    c:close()
    assert.are.equal(200, status)
    local datas = {}
    for block in (body .. "\n\n"):gmatch("(.-)\n\n") do
      local d = block:match("^data: ([^\n]*)") or block:match("\ndata: ([^\n]*)")
      if d then datas[#datas + 1] = J.decode(d) end
    end
    assert.are.equal(3, #datas)
    for i, d in ipairs(datas) do
      assert.are.equal("ui:test", J.get(d, "type"))
      assert.are.equal("1", J.get(d, "version"))
      assert.are.equal(p, J.get(d, "path"))
      assert.are.equal(i, tonumber(J.get(J.get(d, "payload"), "n").lexeme))
    end
    local last = J.get(datas[3], "offset")
    local r = sse.open(ctx.srv.port, A.url(p, "offset=" .. last .. "&live=sse"))
    assert.are.equal(200, r:wait_head(5))
    A.append(ctx.srv.port, p, "ui:test", '{"n":4}')
    local ev = assert(r:next_event(5))
    assert.are.equal("data", ev.event)
    assert.are.equal(off(3), J.get(J.decode(ev.data), "offset"))
    r:close()
  end)
end)

-- The protocol view resumes by `offset` only (notes/protocol.md): its SSE frames carry no
-- `id:` field, so a browser's EventSource never sends Last-Event-ID for them, and clients
-- reconnect from the control events' streamNextOffset. A Last-Event-ID header there (from a
-- proxy or a confused client) is ignored rather than taking over the protocol's offsets.
describe("Last-Event-ID on /v1/stream", function()
  local ctx = A.serve({ storage = "memory" })
  it("is ignored: offset is the protocol's resume point, and its SSE carries no id:", function()
    local st = http.request(ctx.srv.port, "PUT", "/v1/stream/lei/v1", { ["Content-Type"] = "application/json" }, "[1,2,3]")
    assert.are.equal(201, st)
    local gs, _, gb = http.request(ctx.srv.port, "GET", "/v1/stream/lei/v1?offset=-1", { ["Last-Event-ID"] = off(1) })
    assert.are.equal(200, gs)
    assert.are.equal("[1,2,3]", gb)
    local r = sse.open(ctx.srv.port, "/v1/stream/lei/v1?offset=" .. off(2) .. "&live=sse", { ["Last-Event-ID"] = off(0) })
    local ev = assert(r:next_event(5))
    assert.are.equal("data", ev.event)
    assert.are.equal("[3]", ev.data)
    assert.is_nil(ev.id)
    r:close()
  end)
end)
