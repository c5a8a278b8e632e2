-- agents_shutdown_spec.lua - issue 12, item 14: no request is left open by a stop.
--   * SIGTERM (and SIGINT) in the middle of an answer: the request in flight ends with
--     request-cancelled {requestOffset, reason: "shutdown", message} before the process
--     exits - in the YAML file, and on a live SSE read that was open (it sees the event
--     before its stream ends);
--   * kill -9 in the middle of an answer: the next start closes the orphan at once
--     (request-cancelled reason "error"), with nothing posted to its path - and no other
--     stream is read for it (the agent's marks name the paths with a request open);
--   * an idle server stops and starts without any of this.
-- Must not: sleep fixed times (it polls with deadlines) or leave processes behind.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")
local sse = require("spec.support.sse")
local cjson = require("cjson")

local T = S.T

local AGENTS = { default_model = "echo", models = { echo = { delay_ms = 100 } } }
local WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"

-- Posts a slow prompt and waits for its first two deltas; returns its request offset.
local function mid_answer(srv, p)
  assert.equal(204, srv:post(p, T.user, { content = WORDS }))
  local evs = srv:wait_events(p, function(e)
    return #S.deltas(e) >= 2
  end, "two deltas")
  return S.of_type(evs, T.started)[1].offset
end

-- The agent's marks of open requests on disk (one file per path).
local function marks_left(srv)
  local p = io.popen("ls " .. S.q(srv.data_dir .. "/agents/open-requests") .. " 2>/dev/null")
  local out = p:read("a")
  p:close()
  return out
end

describe("a stop in the middle of an answer", function()
  for _, sig in ipairs({ "TERM", "INT" }) do
    it("SIG" .. sig .. ": the request ends with request-cancelled reason shutdown, seen live and stored", function()
      local srv = S.start({ agents = AGENTS })
      local ok, err = pcall(function()
        local p = "stop/" .. sig:lower()
        local R = mid_answer(srv, p)
        local reader = sse.open(srv.port, "/agents/" .. p .. "?offset=" .. R .. "&live=sse")
        assert.equal(200, reader:wait_head(10))
        srv:stop({ signal = sig, expect_exit = 0 })
        -- the live reader saw the cancellation before its stream ended
        local live = {}
        while true do
          local ev = reader:next_event(10)
          if not ev then
            break
          end
          live[#live + 1] = cjson.decode(ev.data)
        end
        reader:close()
        local last = live[#live]
        assert.equal(T.cancelled, last.type)
        assert.same({ requestOffset = R, reason = "shutdown", message = "server shutting down" }, last.payload)
        -- and the file has it, after the deltas, with nothing after it
        local yaml = S.read_file(srv:stream_file(p))
        local tail = yaml:sub(-400)
        assert.truthy(tail:find("type: " .. T.cancelled, 1, true), tail)
        assert.truthy(tail:find("reason: shutdown", 1, true), tail)
        assert.equal("", marks_left(srv))
        -- the next start finds nothing to close, and the conversation goes on
        srv:restart()
        local _, fin = srv:prompt(p, T.user, { content = "again" })
        assert.equal(T.ended, fin.type)
        assert.equal(1, S.count(srv:events(p), T.cancelled))
        srv:assert_clean_log()
      end)
      srv:stop()
      srv:cleanup()
      assert(ok, err)
    end)
  end

  it("kill -9: the next start closes the orphan at once, with nothing posted to its path", function()
    local srv = S.start({ agents = AGENTS })
    local ok, err = pcall(function()
      local p, q = "stop/killed", "stop/killed-too"
      local R = mid_answer(srv, p)
      local Q = mid_answer(srv, q)
      -- an idle path with a finished conversation: the start must not touch it
      local _, fin = srv:prompt("stop/idle", T.user, { content = "short" })
      assert.equal(T.ended, fin.type)
      local n_idle = #srv:events("stop/idle")
      srv:kill9()
      srv:restart()
      -- the start task reads the two orphans' streams, and nothing else (the stats first:
      -- the reads of this spec count too)
      local st = srv:wait_stats({ ["lua.tasks_live"] = 0 })
      local n_read = #srv:events(p) + #srv:events(q)
      assert.is_true(st.store.records_read > 0 and st.store.records_read <= n_read,
        ("records read at start-up: %d, of the orphans' %d"):format(st.store.records_read, n_read))
      for path, off in pairs({ [p] = R, [q] = Q }) do
        local evs = srv:wait_events(path, function(e)
          return S.count(e, T.cancelled) == 1
        end, "the orphan of " .. path .. " closed")
        local c = S.of_type(evs, T.cancelled)[1]
        assert.same({ requestOffset = off, reason = "error", message = "server restarted during the request" }, c.payload)
        assert.equal(c, evs[#evs]) -- nothing after it
      end
      assert.equal(n_idle, #srv:events("stop/idle"))
      assert.equal("", marks_left(srv))
      local _, fin2 = srv:prompt(p, T.user, { content = "continue" })
      assert.equal(T.ended, fin2.type)
    end)
    srv:stop()
    srv:cleanup()
    assert(ok, err)
  end)
end)
