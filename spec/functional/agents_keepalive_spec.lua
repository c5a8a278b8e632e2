-- agents_keepalive_spec.lua - the first body bytes and the keep-alive comments of /agents
-- SSE reads (agents-api.md §3, revised; issue 12, item 13).
--
-- Covers: an SSE comment right after the headers, so a buffering proxy (vite's dev proxy)
-- passes the response on at once instead of holding it until the first keepalive (checked
-- with keepalive_ms = 60000: the comment must come within 3 s, which a keepalive cannot);
-- and keepalives per connection, keepalive_ms after the last byte sent on THAT connection:
-- none while events flow more often than that, one after keepalive_ms of silence (not
-- before), and two readers opened at different moments each get their own phase.
-- Timing margins: keepalive_ms = 1000; "not before" allows 150 ms of measurement slack (the
-- client stamps arrival times), "one after" waits up to 5 s more, so a slow machine can only
-- make keepalives later, which the test accepts.
local socket = require "socket"
local http = require "spec.support.http"
local sse = require "spec.support.sse"
local A = require "spec.support.agents"

local K = 1.0     -- keepalive_ms / 1000
local SLACK = 0.15

-- Pumps r for `secs`, stamping the arrival time of every comment and event.
local function watch(r, secs, log)
  local deadline = socket.gettime() + secs
  while socket.gettime() < deadline and not r.closed do
    local c, e = r.comments, r.events_seen
    r:pump(0.01)
    local now = socket.gettime()
    for i = c + 1, r.comments do log[#log + 1] = { kind = "comment", t = now, text = r.comment_list[i] } end
    for _ = e + 1, r.events_seen do log[#log + 1] = { kind = "event", t = now } end
  end
  return log
end

local function count(log, kind, text, from, to)
  local n = 0
  for _, x in ipairs(log) do
    if x.kind == kind and (not text or x.text == text) and x.t >= (from or 0) and x.t <= (to or math.huge) then n = n + 1 end
  end
  return n
end

describe("first body bytes (keepalive_ms = 60000)", function()
  local ctx = A.serve({ storage = "memory", config = { sse = { keepalive_ms = 60000 } } })

  for _, q in ipairs({ "live=sse", "offset=now&live=sse", "live=true" }) do
    it("a live read of an empty stream (" .. q .. ") sends an SSE comment right after the headers", function()
      local r = sse.open(ctx.srv.port, A.url("first/empty-" .. q:gsub("[^%w]", ""), q))
      assert.are.equal(200, r:wait_head(5))
      assert.is_true(r:wait(function(x) return x.comments >= 1 end, 3), "no body bytes within 3 s")
      assert.are.equal(0, r:pending())
      assert.are.equal(":", r.comment_list[1]:sub(1, 1))
      r:close()
    end)
  end

  it("also before the history of a non-empty stream, and on non-live reads", function()
    A.append(ctx.srv.port, "first/full", "t")
    local r = sse.open(ctx.srv.port, A.url("first/full", "live=sse"), nil, { keep_raw = true })
    assert.are.equal(0, tonumber(assert(r:next_event(3)).id))
    assert.is_true(r:raw_body():sub(1, 1) == ":", r:raw_body())
    r:close()
    local evs, status, _, raw = A.history(ctx.srv.port, "first/full")
    assert.are.equal(200, status)
    assert.are.equal(1, #evs)
    assert.are.equal(":", raw:sub(1, 1))
  end)
end)

describe("keepalives per connection (keepalive_ms = 1000)", function()
  local ctx = A.serve({ storage = "memory", config = { sse = { keepalive_ms = 1000 } } })

  it("none while events flow, one after keepalive_ms of silence and not before", function()
    local p = "ka/flow"
    local r = sse.open(ctx.srv.port, A.url(p, "live=sse"))
    assert.are.equal(200, r:wait_head(5))
    local log = {}
    local c = http.connect(ctx.srv.port)
    -- an event every 300 ms for 3 s: the connection is never silent for keepalive_ms
    for _ = 1, 10 do
      A.append(c, p, "tick")
      watch(r, 0.3, log)
    end
    local flowing_until = socket.gettime()
    assert.are.equal(10, count(log, "event"))
    assert.are.equal(0, count(log, "comment", ": keepalive"),
      "keepalive sent while events flowed every 300 ms (a shared tick, not per connection)")
    -- silence: the first keepalive comes keepalive_ms after the last event, not earlier
    watch(r, K + 5, log)
    local last_event
    for _, x in ipairs(log) do if x.kind == "event" then last_event = x.t end end
    local kas = {}
    for _, x in ipairs(log) do
      if x.kind == "comment" and x.text == ": keepalive" and x.t > flowing_until - 0.5 then kas[#kas + 1] = x.t end
    end
    assert(#kas >= 1, "no keepalive after the events stopped")
    assert(kas[1] - last_event >= K - SLACK, ("first keepalive %.3f s after the last event"):format(kas[1] - last_event))
    for i = 2, #kas do
      assert(kas[i] - kas[i - 1] >= K - SLACK, ("keepalives %.3f s apart"):format(kas[i] - kas[i - 1]))
    end
    c:close()
    r:close()
  end)

  it("two readers opened at different moments keep their own phase", function()
    local a = sse.open(ctx.srv.port, A.url("ka/a", "live=sse"))
    assert.are.equal(200, a:wait_head(5))
    local la = watch(a, 0.45, {})
    local b = sse.open(ctx.srv.port, A.url("ka/b", "live=sse"))
    assert.are.equal(200, b:wait_head(5))
    local b_open = socket.gettime()
    local lb = {}
    local deadline = socket.gettime() + 2 * K + 5
    while socket.gettime() < deadline and (count(la, "comment", ": keepalive") < 2 or count(lb, "comment", ": keepalive") < 2) do
      watch(a, 0.01, la)
      watch(b, 0.01, lb)
    end
    local function kas(log)
      local t = {}
      for _, x in ipairs(log) do if x.text == ": keepalive" then t[#t + 1] = x.t end end
      return t
    end
    local ka, kb = kas(la), kas(lb)
    assert(#ka >= 2 and #kb >= 2, ("keepalives: a %d, b %d"):format(#ka, #kb))
    assert(kb[1] - b_open >= K - SLACK, ("b's first keepalive %.3f s after it connected"):format(kb[1] - b_open))
    assert(kb[2] - kb[1] >= K - SLACK and ka[2] - ka[1] >= K - SLACK, "keepalives closer than keepalive_ms")
    a:close()
    b:close()
  end)
end)
