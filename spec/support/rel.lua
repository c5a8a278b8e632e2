-- spec/support/rel.lua - server and raw-socket helpers for the reliability and security specs
-- (hostile clients, auth/CORS, upstream faults).
--
-- Provides: R.start{config = <table written as config.lua>, plugins = {name = source},
-- env = {NAME = value}} -> server (real binary on 127.0.0.1, port 0, temp dir with data/ and
-- plugins/); server:raw(bytes, opts) -> response table {status, headers, body, closed} read
-- from a fresh TCP connection; server:req(method, target, body, headers) (one request with
-- Connection: close); server:check(tag) (a normal append and read back, asserted);
-- server:rss_kb(), server:fds(), server:log(), server:stats(), server:stop(), server:cleanup();
-- R.wait_for(cond, timeout, what); R.json_error(resp) (the body is {"error": "<one line>"}).
-- Must not: sleep fixed times where a condition can be polled, or leave processes or temp
-- directories behind (cleanup() kills and removes).
local socket = require("socket")
local cjson = require("cjson.safe")

local R = {}
R.__index = R

local function read_file(p)
  local f = io.open(p, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end
R.read_file = read_file

local function write_file(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
R.write_file = write_file

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
R.q = q

function R.wait_for(cond, timeout, what)
  local deadline = socket.gettime() + (timeout or 10)
  local delay = 0.005
  while true do
    local v = cond()
    if v then
      return v
    end
    if socket.gettime() > deadline then
      error("timed out waiting for " .. (what or "condition"), 2)
    end
    socket.sleep(delay)
    delay = math.min(delay * 2, 0.05)
  end
end

-- Lua source for a config value (keys sorted so the file is stable).
local function ser(v, ind)
  ind = ind or ""
  if type(v) == "table" then
    local keys = {}
    for k in pairs(v) do
      keys[#keys + 1] = k
    end
    table.sort(keys, function(a, b)
      return tostring(a) < tostring(b)
    end)
    local out = { "{\n" }
    for _, k in ipairs(keys) do
      local key = type(k) == "number" and ("[" .. k .. "]") or ("[" .. string.format("%q", k) .. "]")
      out[#out + 1] = ind .. "  " .. key .. " = " .. ser(v[k], ind .. "  ") .. ",\n"
    end
    out[#out + 1] = ind .. "}"
    return table.concat(out)
  elseif type(v) == "string" then
    return string.format("%q", v)
  end
  return tostring(v)
end
R.ser = ser

local function binary()
  return os.getenv("DS_BINARY") or "build/durable-stream"
end

function R.source_dir()
  return os.getenv("DS_SOURCE_DIR") or "."
end

function R.mktemp()
  local p = io.popen("mktemp -d /tmp/ds-rel-XXXXXX")
  local dir = p:read("l")
  p:close()
  return dir
end

function R.start(opts)
  opts = opts or {}
  local dir = R.mktemp()
  local self = setmetatable({ dir = dir, data_dir = dir .. "/data", plugin_dir = dir .. "/plugins", opts = opts }, R)
  os.execute("mkdir -p " .. q(self.plugin_dir))
  for name, src in pairs(opts.plugins or {}) do
    write_file(self.plugin_dir .. "/" .. name, src)
  end
  local cfg = opts.config or {}
  cfg.port = cfg.port or 0
  cfg.data_dir = cfg.data_dir or self.data_dir
  if cfg.agents == nil then
    cfg.agents = { default_model = "echo" }
  end
  if type(cfg.agents) == "table" and cfg.agents.plugin_dir == nil then
    -- the stock echo plugin plus the spec's own
    write_file(self.plugin_dir .. "/echo.lua", assert(read_file(R.source_dir() .. "/plugins/echo.lua")))
    cfg.agents.plugin_dir = self.plugin_dir
  end
  self.config_path = dir .. "/config.lua"
  write_file(self.config_path, "return " .. ser(cfg) .. "\n")
  local ok, err = pcall(self.launch, self)
  if not ok then
    self:cleanup()
    error(err, 0)
  end
  return self
end

function R:launch()
  self.run = (self.run or 0) + 1
  self.out = self.dir .. "/out." .. self.run
  self.err = self.dir .. "/err." .. self.run
  local env = ""
  for k, v in pairs(self.opts.env or {}) do
    env = env .. k .. "=" .. q(v) .. " "
  end
  local cmd = ("%s exec %s --config %s >%s 2>%s & echo $!"):format(env, q(binary()), q(self.config_path),
    q(self.out), q(self.err))
  local p = io.popen(cmd)
  self.pid = tonumber(p:read("l"))
  p:close()
  self.port = R.wait_for(function()
    local s = read_file(self.out) or ""
    local port = s:match("listening on http://[^:]+:(%d+)")
    if port then
      return tonumber(port)
    end
    if not self:alive() then
      error("server exited at start: " .. (read_file(self.err) or ""))
    end
  end, 15, "the listening line")
end

function R:alive()
  return os.execute("kill -0 " .. self.pid .. " 2>/dev/null") == true
end

function R:stop()
  if not self.pid then
    return
  end
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  R.wait_for(function()
    return not self:alive()
  end, 15, "server exit")
  self.pid = nil
end

function R:cleanup()
  if self.pid then
    os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
    self.pid = nil
  end
  os.execute("rm -rf " .. q(self.dir))
end

---Whether the binary is an ASan/UBSan build (RSS bounds do not apply: ASan's quarantine
---holds freed memory on purpose).
function R.sanitized()
  if R._sanitized == nil then
    R._sanitized = os.execute("grep -q __asan_init " .. q(binary()) .. " 2>/dev/null") == true
  end
  return R._sanitized
end

---Fails when a sanitizer reported anything in the server's stderr (call after stop()).
function R:assert_no_sanitizer_reports()
  local l = self:log()
  for _, pat in ipairs({ "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:" }) do
    assert(not l:find(pat, 1, true), "sanitizer report in the server log:\n" .. l:sub(-4000))
  end
end

function R:log()
  local out = {}
  for i = 1, self.run do
    out[#out + 1] = read_file(self.dir .. "/err." .. i) or ""
  end
  return table.concat(out)
end

function R:rss_kb()
  local s = read_file("/proc/" .. self.pid .. "/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)"))
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
  local p = io.popen("cd " .. q(root) .. " 2>/dev/null && find . -type f | sort")
  local out = {}
  for l in p:lines() do
    out[#out + 1] = l
  end
  p:close()
  return out
end

return R
