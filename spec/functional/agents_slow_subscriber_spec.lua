-- agents_slow_subscriber_spec.lua - acceptance 7: slow subscribers and released resources.
--
-- A live subscriber that never reads is dropped once its unsent backlog passes
-- limits.subscriber_backlog_bytes (64 KiB here) while ~50 MB (16 KiB events) of events flow; the server's
-- RSS stays bounded; a subscriber reading alongside receives everything in order; the
-- dropped one got a gap-free prefix and resumes by offset. Clients that disconnect with
-- unread data release their subscriptions (/debug/stats back to baseline).
local http = require "spec.support.http"
local sse = require "spec.support.sse"
local A = require "spec.support.agents"
local server = require "spec.support.server"

local off = A.off

-- each event stays well below the backlog limit, so a reader that keeps up is never at it
local EVENTS = 3200
local PAYLOAD_BYTES = 16 * 1024

describe("slow subscribers", function()
  -- the hot-tail cache is held to 1 MiB here: it keeps the newest events by design (32 MiB
  -- by default), and this RSS bound is about what a slow subscriber costs, not the cache
  local ctx = A.serve({ storage = "yaml", config = { limits = { subscriber_backlog_bytes = 65536,
    tail_cache_bytes = 1048576 } } })

  it("are dropped past the backlog limit, RSS stays bounded, others are unaffected", function()
    local p = "slow/s"
    local port = ctx.srv.port
    -- (default socket buffers: a tiny receive window would make reading the dropped
    -- response's remains crawl; the kernel buffers a few MB, far below the ~50 MB sent)
    local slow = sse.open(port, A.url(p, "live=sse"))
    assert.are.equal(200, slow:wait_head(5))
    local fast = sse.open(port, A.url(p, "live=sse"))
    finally(function()
      slow:close()
      fast:close()
    end)
    assert.are.equal(200, fast:wait_head(5))
    ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 2 })
    -- settle the allocator with a few events before measuring
    local w = http.connect(port)
    local blob = string.rep("x", PAYLOAD_BYTES)
    local fast_got = 0
    local function drain_fast()
      fast:pump(0)
      while true do
        local ev = fast:next_event(0)
        if not ev then break end
        assert.are.equal(off(fast_got), ev.id, "fast subscriber: gap or duplicate")
        fast_got = fast_got + 1
      end
    end
    for i = 0, 4 do
      A.append(w, p, "big", '{"i":' .. i .. ',"blob":"' .. blob .. '"}')
      drain_fast()
    end
    local rss0 = ctx.srv:rss_kb()
    local rss_max = rss0
    for i = 5, EVENTS - 1 do
      A.append(w, p, "big", '{"i":' .. i .. ',"blob":"' .. blob .. '"}')
      drain_fast()
      if i % 100 == 0 then rss_max = math.max(rss_max, ctx.srv:rss_kb()) end
    end
    w:close()
    assert.is_true(fast:wait(function()
      drain_fast()
      return fast_got == EVENTS
    end, 30), "fast subscriber got " .. fast_got .. " of " .. EVENTS)
    rss_max = math.max(rss_max, ctx.srv:rss_kb())
    -- ~50 MB went through; holding it for the slow subscriber would show here (not under
    -- AddressSanitizer, whose quarantine keeps freed memory resident by design)
    if not server.sanitized() then
      assert.is_true(rss_max - rss0 < 24 * 1024,
        string.format("server RSS grew from %d kB to %d kB", rss0, rss_max))
    end
    -- the slow one was dropped (only the fast one is left subscribed)
    ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 1 })
    -- what the slow one did receive is a gap-free prefix, then the response ends
    local got, last = 0, nil
    while true do
      local ev, why = slow:next_event(10)
      if not ev then
        assert.is_true(why == "closed" or why == "ended", "slow subscriber: " .. tostring(why))
        break
      end
      assert.are.equal(off(got), ev.id)
      got, last = got + 1, ev.id
    end
    assert.is_true(got < EVENTS, "the slow subscriber was not dropped")
    slow:close()
    -- it resumes by offset and gets exactly the rest
    local rest = A.history(port, p, last and ("offset=" .. last) or nil)
    assert.are.equal(EVENTS - got, #rest)
    for i, ev in ipairs(rest) do assert.are.equal(off(got + i - 1), ev.id) end
    fast:close()
    ctx.srv:wait_stats(ctx.base)
  end)

  it("that disconnect with unread data release their subscriptions", function()
    local p = "slow/gone"
    local port = ctx.srv.port
    local subs = {}
    finally(function()
      for _, r in ipairs(subs) do r:close() end
    end)
    for i = 1, 4 do
      subs[i] = sse.open(port, A.url(p, "live=sse"), {}, { rcvbuf = 4096 })
      assert.are.equal(200, subs[i]:wait_head(5))
    end
    ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 4 })
    local w = http.connect(port)
    finally(function() w:close() end)
    local blob = string.rep("y", 16 * 1024)
    for i = 0, 15 do A.append(w, p, "mid", '{"i":' .. i .. ',"blob":"' .. blob .. '"}') end
    for i = 1, 4 do subs[i]:close() end
    ctx.srv:wait_stats({ subscribers = ctx.base.subscribers, streams_open = ctx.base.streams_open })
    -- the server is healthy afterwards
    assert.are.equal(off(16), A.append(w, p, "after"))
    w:close()
    assert.are.equal(17, #A.history(port, p))
  end)

  it("closing live subscribers one by one returns the counts step by step", function()
    local p = "slow/steps"
    local rs = {}
    for i = 1, 6 do
      rs[i] = sse.open(ctx.srv.port, A.url(p, "live=sse"))
      assert.are.equal(200, rs[i]:wait_head(5))
    end
    ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 6, streams_open = ctx.base.streams_open + 6 })
    for i = 1, 6 do
      rs[i]:close()
      ctx.srv:wait_stats({ subscribers = ctx.base.subscribers + 6 - i, streams_open = ctx.base.streams_open + 6 - i })
    end
  end)
end)
