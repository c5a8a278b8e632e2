-- spec/support/lua_host_server.lua - the agent-event helpers of the Lua host's functional
-- specs, over a server started by spec/support/server.lua.
--
-- Provides: S.start{agents=..., plugins={name=source}, copy_plugins={...}, storage=, env=}
-- -> server (the real binary, port 0, temp root, config.lua holding the given agents table
-- and a plugins/ dir with echo.lua), stopped with SIGINT, whose log() is the stderr of every
-- run; server:post(path, type, payload) -> status, server:events(path) -> list of decoded
-- events (non-live GET), server:wait_events(path, pred, what), server:wait_count(path, type,
-- n, what), server:prompt(path, type,
-- payload) (post and wait for the request's end), server:assert_clean_log(extra),
-- S.with_server(opts, fn, extra) (start, run, stop, check the log, remove),
-- server:first_live_event,
-- server:stats(), server:wait_idle(), and every Server method of server.lua (stop, restart,
-- alive, cleanup...); S.T (spec/support/agent_events.lua), S.end_of(evs, R), S.deltas(evs),
-- S.of_type, S.count,
-- and server.class()'s S.wait_for, S.read_file, S.q...
-- Must not: sleep fixed times (everything polls with deadlines) or leave processes or
-- temp directories behind.
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")
local server = require("spec.support.server")

local S = server.class()
S.T = require("spec.support.agent_events")
local T = S.T

---@param opts table {agents = table, plugins = {name = source}, copy_plugins = {"echo.lua"},
---storage = "yaml" | "memory", env = {NAME = value}, root = a temp root to reuse (e.g. with
---files placed in its data dir before the start; removed by cleanup only when it made it)}
function S.start(opts)
  opts = opts or {}
  return server.start({
    class = S,
    defaults = false,
    config = { storage = opts.storage or "yaml", agents = opts.agents or {} },
    plugins = opts.plugins or {},
    copy_plugins = opts.copy_plugins,
    env = opts.env,
    root = opts.root,
    stop_signal = "INT",
    expect_exit = false,
  })
end

function S:request(method, path, body)
  local chunks = {}
  local _, status, headers = http.request({
    url = ("http://127.0.0.1:%d%s"):format(self.port, path),
    method = method,
    source = body and ltn12.source.string(body) or nil,
    headers = body and { ["content-type"] = "application/json", ["content-length"] = #body } or nil,
    sink = ltn12.sink.table(chunks),
  })
  return status, table.concat(chunks), headers
end

function S:post(path, etype, payload)
  local body = cjson.encode({ type = etype, payload = payload or {} })
  local status = self:request("POST", "/agents/" .. path, body)
  return status
end

function S:events(path)
  local status, body = self:request("GET", "/agents/" .. path)
  assert(status == 200, "GET history: " .. tostring(status))
  local out = {}
  for data in body:gmatch("data: ([^\n]*)\n") do
    out[#out + 1] = cjson.decode(data)
  end
  return out
end

function S:wait_events(path, pred, what, timeout)
  return S.wait_for(function()
    local evs = self:events(path)
    if pred(evs) then
      return evs
    end
  end, timeout or 10, what)
end

---Waits until the path holds exactly n events of type etype; returns its events.
function S:wait_count(path, etype, n, what, timeout)
  return self:wait_events(path, function(evs)
    return S.count(evs, etype) == n
  end, what, timeout)
end

---The event that ended request R (request-ended or request-cancelled), or nil.
function S.end_of(evs, R)
  for _, e in ipairs(evs) do
    if (e.type == T.ended or e.type == T.cancelled) and e.payload.requestOffset == R then
      return e
    end
  end
end

---The deltas of every text-delta part among the events, in order.
function S.deltas(evs)
  local out = {}
  for _, e in ipairs(evs) do
    if e.type == T.sse and e.payload.part.type == "text-delta" then
      out[#out + 1] = e.payload.part.delta
    end
  end
  return out
end

---Posts a prompt event (asserting 204) and waits for the request it starts to end.
---@return table evs all events of the path, table fin the end event, string R the request's offset
function S:prompt(path, etype, payload, timeout)
  local before = S.count(self:events(path), T.started)
  local status = self:post(path, etype, payload)
  if status ~= 204 then
    error(("POST %s to %s answered %s, not 204"):format(etype, path, tostring(status)), 2)
  end
  local R
  local evs = self:wait_events(path, function(evs)
    local started = S.of_type(evs, T.started)
    if #started > before then
      R = started[#started].offset
      return S.end_of(evs, R) ~= nil
    end
  end, "the request for " .. tostring(payload and payload.content or etype) .. " to end", timeout or 15)
  return evs, S.end_of(evs, R), R
end

-- What the server logs about leaks (at shutdown) or a sanitizer (ASan/LSan/UBSan builds).
local LEAK_MARKS = { "leaked", "still alive", "Sanitizer", "runtime error" }

---Raises when the log of every run holds a leak or sanitizer report, or any of the plain
---strings in `extra` (e.g. an API key that must never be logged).
function S:assert_clean_log(extra)
  local log = self:log()
  for _, list in ipairs({ LEAK_MARKS, extra or {} }) do
    for _, mark in ipairs(list) do
      local at = log:find(mark, 1, true)
      if at then
        error(("the server log holds %q:\n%s"):format(mark, log:sub(math.max(1, at - 2000), at + 2000)), 2)
      end
    end
  end
end

---Starts a server with opts (as S.start), runs fn(srv), stops the server, checks its log
---(assert_clean_log(extra), when fn passed) and removes it; raises fn's error first.
function S.with_server(opts, fn, extra)
  local srv = S.start(opts)
  local ok, err = pcall(fn, srv)
  srv:stop()
  local clean, why = true, nil
  if ok then
    clean, why = pcall(srv.assert_clean_log, srv, extra)
  end
  srv:cleanup()
  if not ok then
    error(err, 0)
  end
  assert(clean, why)
end

---Opens a live SSE read and returns the first event's decoded data (or errors).
function S:first_live_event(path, timeout)
  local c = assert(socket.tcp())
  c:settimeout(timeout or 10)
  assert(c:connect("127.0.0.1", self.port))
  assert(c:send(("GET /agents/%s?live=sse HTTP/1.1\r\nHost: x\r\n\r\n"):format(path)))
  local got
  while not got do
    local line, err = c:receive("*l")
    if not line then
      c:close()
      error("live read: " .. tostring(err))
    end
    got = line:match("^data: (.*)$")
  end
  c:close()
  return cjson.decode(got)
end

function S:stats()
  local status, body = self:request("GET", "/debug/stats")
  assert(status == 200)
  return cjson.decode(body)
end

---Waits until no Lua task is alive (every hook and request finished).
function S:wait_idle()
  return S.wait_for(function()
    local st = self:stats()
    return st.lua and st.lua.tasks_live == 0
  end, 10, "Lua tasks to finish")
end

---Helpers over event lists.
function S.of_type(evs, t)
  local out = {}
  for _, e in ipairs(evs) do
    if e.type == t then
      out[#out + 1] = e
    end
  end
  return out
end

function S.count(evs, t)
  return #S.of_type(evs, t)
end

return S
