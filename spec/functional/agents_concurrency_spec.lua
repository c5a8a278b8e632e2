-- agents_concurrency_spec.lua - acceptance 3: concurrent writers and live subscribers.
--
-- 8 writers (pipelined keep-alive connections) append 10,000 events to one path while 50
-- live subscribers read: 20 from the start, 15 joining mid-way with `offset=`, 15 that
-- disconnect and resume with `Last-Event-ID`. Every subscriber must receive every event
-- after its start exactly once and in order; the acknowledged offsets are exactly
-- 0..9999; the stored history (and the YAML file's offset lines) run 0000000000000000 ...
-- 0000000000009999 without a gap, with each writer's event exactly once.
-- Everything is multiplexed in this one Lua process with socket.select.
local socket = require "socket"
local http = require "spec.support.http"
local sse = require "spec.support.sse"
local server = require "spec.support.server"
local A = require "spec.support.agents"
local J = require "spec.support.json"

local off = A.off

local TOTAL = 10000
local WRITERS = 8
local DEPTH = 8
local PATH = "conc/one"

describe("8 writers and 50 live subscribers on one path", function()
  -- a subscriber here is read promptly, but the one Lua process reads 58 sockets in turn:
  -- give backlogs room so nobody is dropped for being merely busy (dropping is tested in
  -- agents_slow_subscriber_spec).
  local ctx = A.serve({ storage = "yaml", config = { limits = { subscriber_backlog_bytes = 64 * 1048576 } } })

  it("delivers every event exactly once, in order, to every subscriber; offsets 0..9999 without a gap", function()
    math.randomseed(20260120)
    local port = ctx.srv.port
    local url_live = A.url(PATH, "live=sse")

    -- subscribers ---------------------------------------------------------------------
    local subs = {}
    local writers = {}
    finally(function()
      for _, s in ipairs(subs) do s.reader:close() end
      for _, w in ipairs(writers) do w.conn:close() end
    end)
    local function new_sub(kind, from, reader)
      local s = { kind = kind, next = from, reader = reader, failure = nil, reconnects = 0 }
      subs[#subs + 1] = s
      return s
    end
    for _ = 1, 20 do new_sub("start", 0, sse.open(port, url_live)) end
    for i = 1, 15 do
      local s = new_sub("resume", 0, sse.open(port, url_live))
      -- disconnect after this many events (one or two times), then resume via Last-Event-ID
      s.cut = { math.random(1, TOTAL - TOTAL // 20) }
      if i % 3 == 0 then s.cut[2] = math.random(s.cut[1] + 1, TOTAL - 1) end
    end
    local joins = {}
    for i = 1, 15 do joins[i] = i * (TOTAL // 17) end
    local ji = 1

    local function on_event(s, ev)
      if s.failure then return end
      local want = off(s.next)
      if ev.id ~= want or ev.event ~= "data" or not ev.data:find('"offset":"' .. want .. '"', 1, true) then
        s.failure = string.format("%s subscriber expected %s, got id=%s event=%s", s.kind, want, tostring(ev.id),
          tostring(ev.event))
        return
      end
      s.next = s.next + 1
      if s.cut and s.cut[1] and s.next >= s.cut[1] then
        table.remove(s.cut, 1)
        s.reader:close()
        s.reconnects = s.reconnects + 1
        s.reader = sse.open(port, url_live, { ["Last-Event-ID"] = off(s.next - 1) })
      end
    end

    local function drain(s)
      local r = s.reader
      r:pump(0)
      while true do
        local ev = r:next_event(0)
        if not ev then break end
        on_event(s, ev)
        if s.reader ~= r then
          -- reconnected: events still queued on the old reader are dropped with it
          return
        end
      end
      if r.closed and not s.failure then
        s.failure = string.format("%s subscriber's response closed at %s", s.kind, off(s.next))
      end
    end

    -- writers -------------------------------------------------------------------------
    for w = 1, WRITERS do
      writers[w] = { conn = http.connect(port), sent = 0, acked = 0, inflight = 0, quota = TOTAL // WRITERS }
    end
    local acked_offsets = {}
    local acked_total = 0

    local deadline = socket.gettime() + 120
    local by_sock = {}
    local function all_socks()
      local list = {}
      by_sock = {}
      for _, w in ipairs(writers) do
        if w.acked < w.quota then
          list[#list + 1] = w.conn.sock
          by_sock[w.conn.sock] = w
        end
      end
      for _, s in ipairs(subs) do
        if not s.failure and s.next < TOTAL then
          list[#list + 1] = s.reader.sock
          by_sock[s.reader.sock] = s
        end
      end
      return list
    end

    while true do
      assert(socket.gettime() < deadline, "did not finish within 120 s")
      -- mid-way joiners
      while ji <= #joins and acked_total >= joins[ji] do
        local from = math.random(0, acked_total - 1)
        local s = new_sub("offset", from + 1, sse.open(port, A.url(PATH, "offset=" .. off(from) .. "&live=sse")))
        s.from = from
        ji = ji + 1
      end
      -- keep every writer's pipeline full
      for wi, w in ipairs(writers) do
        local batch = {}
        while w.sent < w.quota and w.inflight < DEPTH do
          batch[#batch + 1] = http.build("POST", A.url(PATH), {}, A.body("conc", string.format('{"w":%d,"n":%d}', wi, w.sent)))
          w.sent, w.inflight = w.sent + 1, w.inflight + 1
        end
        if #batch > 0 then assert(w.conn:send_raw(table.concat(batch))) end
      end
      local done = acked_total == TOTAL and ji > #joins
      if done then
        for _, s in ipairs(subs) do
          if not s.failure and s.next < TOTAL then done = false end
        end
      end
      if done then break end
      local socks = all_socks()
      local ready = socket.select(socks, nil, 0.05)
      for _, sk in ipairs(ready) do
        local o = by_sock[sk]
        if o and o.conn then
          o.conn:pump(0)
          while true do
            local r = o.conn:try_response("POST")
            if not r then break end
            assert.are.equal(204, r.status)
            o.acked, o.inflight = o.acked + 1, o.inflight - 1
            acked_total = acked_total + 1
            local n = tonumber(r.headers["stream-offset"])
            assert.is_nil(acked_offsets[n], "offset acknowledged twice: " .. tostring(r.headers["stream-offset"]))
            acked_offsets[n] = true
          end
          assert.is_false(o.conn.closed, "writer connection closed by the server")
        elseif o then
          drain(o)
        end
      end
    end

    for _, w in ipairs(writers) do w.conn:close() end
    local failures = {}
    for _, s in ipairs(subs) do
      if s.failure then failures[#failures + 1] = s.failure end
      s.reader:close()
    end
    assert.are.same({}, failures)
    assert.are.equal(50, #subs)
    for _, s in ipairs(subs) do assert.are.equal(TOTAL, s.next) end
    for i = 0, TOTAL - 1 do assert(acked_offsets[i], "offset never acknowledged: " .. off(i)) end

    -- stored history: gap-free, each (w, n) exactly once
    local evs = A.history(port, PATH)
    assert.are.equal(TOTAL, #evs)
    local seen = {}
    for i, ev in ipairs(evs) do
      assert.are.equal(off(i - 1), ev.id)
      local pl = J.encode(J.get(ev.json, "payload"))
      assert.is_nil(seen[pl], "stored twice: " .. pl)
      seen[pl] = true
    end
    -- and the file itself
    local text = assert(server.read_file(ctx.srv:stream_file(PATH)), "stream file missing")
    local i = 0
    for o in text:gmatch('\noffset: "(%d+)"\n') do
      assert.are.equal(off(i), o)
      i = i + 1
    end
    assert.are.equal(TOTAL, i)
  end)
end)
