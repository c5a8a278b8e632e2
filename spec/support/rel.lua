-- spec/support/rel.lua - raw-socket helpers for the reliability and security specs
-- (hostile clients, auth/CORS, upstream faults), over a server started by
-- spec/support/server.lua.
--
-- Provides: R.start{config = <table written as config.lua>, plugins = {name = source},
-- env = {NAME = value}} -> server (the real binary on 127.0.0.1, port 0, temp root with data/
-- and plugins/, agents default_model "echo" unless the config says otherwise; stopped with
-- SIGTERM; log() is the stderr of every run); server:raw(bytes, opts) -> response table
-- {status, headers, body, closed} read from a fresh TCP connection; server:req(method,
-- target, body, headers) (one request with Connection: close); server:check(tag) (a normal
-- append and read back, asserted); server:fds(), server:stats(), and every Server method of
-- server.lua (stop, alive, rss_kb, cleanup...); R.json_error(resp) (the body is {"error": "<one line>"}).
-- Must not: sleep fixed times where a condition can be polled, or leave processes or temp
-- directories behind (cleanup() kills and removes).
local socket = require("socket")
local cjson = require("cjson.safe")
local server = require("spec.support.server")

local R = server.class()

function R.start(opts)
  opts = opts or {}
  local cfg = {}
  for k, v in pairs(opts.config or {}) do
    cfg[k] = v
  end
  if cfg.agents == nil then
    cfg.agents = { default_model = "echo" }
  end
  return server.start({
    class = R,
    defaults = false,
    config = cfg,
    plugins = opts.plugins or {},
    env = opts.env,
    stop_signal = "TERM",
    expect_exit = false,
    start_timeout = 15,
    stop_timeout = 15,
  })
end

---Fails when a sanitizer reported anything in the server's stderr (call after stop()).
function R:assert_no_sanitizer_reports()
  local l = self:log()
  for _, pat in ipairs({ "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:" }) do
    assert(not l:find(pat, 1, true), "sanitizer report in the server log:\n" .. l:sub(-4000))
  end
end


function R:fds()
  local p = io.popen("ls /proc/" .. self.pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(p:read("l"))
  p:close()
  return n
end

function R:connect()
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect("127.0.0.1", self.port))
  return c
end

-- Reads one HTTP response from c (status line, headers, body by Content-Length or chunked,
-- or to EOF). Returns nil when the peer closed (or timed out) before a status line.
function R.read_response(c, timeout)
  c:settimeout(timeout or 5)
  local line, err = c:receive("*l")
  if not line then
    return { closed = true, err = err }
  end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  while true do
    local h = c:receive("*l")
    if not h or h == "" then
      break
    end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    if k then
      headers[k:lower()] = v
    end
  end
  local body = ""
  if headers["content-length"] then
    body = c:receive(tonumber(headers["content-length"])) or ""
  elseif (headers["transfer-encoding"] or ""):lower() == "chunked" then
    local parts = {}
    while true do
      local sz = c:receive("*l")
      if not sz then
        break
      end
      local n = tonumber(sz:match("^%x+"), 16)
      if not n or n == 0 then
        c:receive("*l")
        break
      end
      parts[#parts + 1] = c:receive(n) or ""
      c:receive("*l")
    end
    body = table.concat(parts)
  end
  return { status = status, headers = headers, body = body, line = line }
end

-- Whether the server has closed c (reads to EOF, discarding, within timeout).
function R.wait_closed(c, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  c:settimeout(0.2)
  while socket.gettime() < deadline do
    local _, err, part = c:receive(65536)
    if err == "closed" then
      return true
    end
    if err ~= "timeout" and err ~= nil then
      return true -- reset
    end
    local _ = part
  end
  return false
end

---Sends raw bytes on a new connection and reads one response.
---opts.shutdown: half-close after sending; opts.timeout: read timeout; opts.keep: return c too.
function R:raw(bytes, opts)
  opts = opts or {}
  local c = self:connect()
  local ok, err = c:send(bytes)
  local r
  if not ok and err ~= "closed" then
    r = { closed = true, err = err }
  else
    if opts.shutdown then
      c:shutdown("send")
    end
    r = R.read_response(c, opts.timeout)
  end
  if opts.keep then
    r.conn = c
  else
    r.closed_after = r.closed or R.wait_closed(c, opts.close_timeout or 0.5)
    c:close()
  end
  return r
end

function R:req(method, target, body, headers)
  local h = { method .. " " .. target .. " HTTP/1.1", "Host: 127.0.0.1", "Connection: close" }
  for k, v in pairs(headers or {}) do
    h[#h + 1] = k .. ": " .. v
  end
  if body then
    h[#h + 1] = "Content-Type: application/json"
    h[#h + 1] = "Content-Length: " .. #body
  end
  return self:raw(table.concat(h, "\r\n") .. "\r\n\r\n" .. (body or ""))
end

-- The server's JSON error body: {"error": "<one line>"} (nil when it is not one).
function R.json_error(resp)
  local t = resp and resp.body and cjson.decode(resp.body)
  if type(t) == "table" and type(t.error) == "string" and not t.error:find("\n") then
    return t.error
  end
  return nil
end

R.check_n = 0
---A normal append and read back on a fresh connection: the server still serves.
function R:check(tag, headers)
  R.check_n = R.check_n + 1
  local p = "/agents/check/" .. (tag or "x"):gsub("[^%w]", "_")
  local payload = cjson.encode({ type = "check", payload = { n = R.check_n } })
  local a = self:req("POST", p, payload, headers)
  assert(a.status == 204, "check append to " .. p .. " answered " .. tostring(a.status) .. " " .. tostring(a.body))
  local r = self:req("GET", p, nil, headers)
  assert(r.status == 200, "check read answered " .. tostring(r.status))
  assert(r.body:find('"n":' .. R.check_n .. "}", 1, true), "check read lacks the appended event: " .. r.body)
  return true
end

function R:stats(headers)
  local r = self:req("GET", "/debug/stats", nil, headers)
  assert(r.status == 200, "stats: " .. tostring(r.status))
  return cjson.decode(r.body)
end

---Every file under root, as a sorted list of paths relative to root.
function R.files_under(root)
  local p = io.popen("cd " .. R.q(root) .. " 2>/dev/null && find . -type f | sort")
  local out = {}
  for l in p:lines() do
    out[#out + 1] = l
  end
  p:close()
  return out
end

return R
