-- spec/support/server.lua - the one launcher of the real durable-stream binary for specs
-- (spec/support/lua_host_server.lua and rel.lua build on it).
--
-- Provides: server.start{config=, defaults=, storage=, data_dir=, args=, env=, plugins=,
-- copy_plugins=, class=, ...} -> Server (port 0, temp root, config.lua written from a Lua
-- table, waits for the "listening on" line), and on the Server: stop{expect_exit=0}, kill9,
-- restart (same data dir), log / logs (stderr), error_lines, rss_kb, stats (GET
-- /debug/stats), wait_stats (poll until counts match), stream_file (where the YAML store
-- keeps a path), cleanup (removes the temp root). Also server.wait_for(cond, timeout, what)
-- for polling with a deadline, and the file and quoting helpers the other supports share.
-- Must not: sleep for fixed times (everything polls with deadlines), leave processes or
-- temp directories behind, touch anything outside its temp root, or let an API key or
-- upstream URL from the developer's shell reach the server.
local socket = require "socket"
local cjson = require "cjson"
local http = require "spec.support.http"

local M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.sh_quote = sh_quote

local function read_file(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read_file = read_file

local function write_file(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
M.write_file = write_file

local function cmd_output(cmd)
  local p = assert(io.popen(cmd, "r"))
  local s = p:read("a")
  p:close()
  return s
end
M.cmd_output = cmd_output

function M.sleep(sec) socket.sleep(sec) end

--- Polls cond() until it returns a truthy value or the deadline passes.
function M.wait_for(cond, timeout, what)
  local deadline = socket.gettime() + (timeout or 10)
  local delay = 0.005
  while true do
    local v = cond()
    if v then return v end
    if socket.gettime() > deadline then
      error("timed out waiting for " .. (what or "condition"), 2)
    end
    socket.sleep(delay)
    delay = math.min(delay * 2, 0.05)
  end
end

local function abs_path(p)
  if p:sub(1, 1) == "/" then return p end
  local base = os.getenv("DS_SOURCE_DIR") or cmd_output("pwd"):gsub("\n$", "")
  return base .. "/" .. p
end

function M.binary()
  return abs_path(os.getenv("DS_BINARY") or "build/durable-stream")
end

function M.source_dir()
  return os.getenv("DS_SOURCE_DIR") or "."
end

--- True when the binary is built with AddressSanitizer (its quarantine holds freed memory,
--- so RSS bounds do not apply).
function M.sanitized()
  if M._sanitized == nil then
    M._sanitized = os.execute("grep -q __asan_init " .. sh_quote(M.binary()) .. " 2>/dev/null") == true
  end
  return M._sanitized
end

function M.mktemp()
  local d = cmd_output("mktemp -d /tmp/ds-spec.XXXXXX"):gsub("\n$", "")
  assert(d:match("^/tmp/ds%-spec%.") , "mktemp failed")
  return d
end

-- config.lua serialization --------------------------------------------------------

local function ser(v, indent)
  local t = type(v)
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local out = { "{\n" }
    for _, k in ipairs(keys) do
      out[#out + 1] = string.format("%s  [%q] = %s,\n", indent, k, ser(v[k], indent .. "  "))
    end
    out[#out + 1] = indent .. "}"
    return table.concat(out)
  elseif t == "string" then
    return string.format("%q", v)
  else
    return tostring(v)
  end
end

local function merge(base, over)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(over or {}) do
    if type(v) == "table" and type(out[k]) == "table" then
      out[k] = merge(out[k], v)
    else
      out[k] = v
    end
  end
  return out
end

--- Defaults for specs: small timeouts and backlogs so the time-related specs stay fast.
M.default_config = {
  host = "127.0.0.1",
  port = 0,
  storage = "yaml",
  fsync = "interval",
  fsync_interval_ms = 100,
  log_level = "info",
  limits = {
    max_body_bytes = 1048576,
    max_header_bytes = 16384,
    max_json_depth = 64,
    max_connections = 1024,
    header_timeout_ms = 3000,
    idle_timeout_ms = 30000,
    subscriber_backlog_bytes = 65536,
  },
  sse = { keepalive_ms = 200 },
}

-- Server ----------------------------------------------------------------------------

local S = {}
S.__index = S
M.Server = S

-- Variables the server never inherits: agent events in specs must never call real
-- upstreams; a spec that wants them sets them in opts.env.
local SCRUBBED_ENV = { "OPENAI_API_KEY", "OPENAI_BASE_URL", "XAI_API_KEY", "XAI_REALTIME_URL" }

-- The config table of a start: merged over default_config (the server also gets --host,
-- --port and --data-dir), or with defaults = false the spec's own table as given, with
-- port 0 and the data dir filled in where it names none.
local function config_of(self, opts)
  if opts.defaults == false then
    local cfg = merge({}, opts.config)
    if cfg.port == nil then cfg.port = 0 end
    if cfg.data_dir == nil then cfg.data_dir = self.data_dir end
    return cfg
  end
  local cfg = merge(M.default_config, opts.config)
  if opts.storage then cfg.storage = opts.storage end
  return cfg
end

-- plugins/ of the temp root: the spec's own plugin sources (name -> source; names may have
-- a directory), and when the config's agents table names no plugin_dir, the stock plugins
-- of copy_plugins (default echo.lua) with agents.plugin_dir pointing here.
local function write_plugins(self, opts)
  self.plugin_dir = self.root .. "/plugins"
  os.execute("mkdir -p " .. sh_quote(self.plugin_dir))
  for name, src in pairs(opts.plugins) do
    local sub = name:match("^(.*)/")
    if sub then os.execute("mkdir -p " .. sh_quote(self.plugin_dir .. "/" .. sub)) end
    write_file(self.plugin_dir .. "/" .. name, src)
  end
  local agents = self.config.agents
  if type(agents) == "table" and agents.plugin_dir == nil then
    for _, name in ipairs(opts.copy_plugins or { "echo.lua" }) do
      write_file(self.plugin_dir .. "/" .. name, assert(read_file(M.source_dir() .. "/plugins/" .. name)))
    end
    self.config.agents = merge(agents, { plugin_dir = self.plugin_dir })
  end
end

--- opts: config (table merged over default_config; with defaults = false written as
--- given), storage ("yaml"|"memory"), data_dir (default <root>/data), root (reuse a temp
--- root), args (extra CLI flags), env ({NAME = value} for the server's environment),
--- plugins ({name = source}: a plugins/ dir, see write_plugins) and copy_plugins,
--- stop_signal (default "TERM") and expect_exit (default 0) for stop(), start_timeout and
--- stop_timeout (seconds, default 10), class (a metatable whose __index falls back to the
--- Server methods, for the helpers built on this launcher).
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ opts = opts, starts = 0 }, opts.class or S)
  self.root = opts.root or M.mktemp()
  self.own_root = not opts.root
  self.data_dir = opts.data_dir or (self.root .. "/data")
  os.execute("mkdir -p " .. sh_quote(self.data_dir))
  self.config = config_of(self, opts)
  if opts.plugins then write_plugins(self, opts) end
  self.config_path = self.root .. "/config.lua"
  write_file(self.config_path, "return " .. ser(self.config, "") .. "\n")
  local ok, err = pcall(self._launch, self)
  if not ok then
    self:cleanup()
    error(err, 0)
  end
  return self
end

function S:_launch()
  self.starts = self.starts + 1
  local n = self.starts
  self.out_path = string.format("%s/out.%d", self.root, n)
  self.err_path = string.format("%s/err.%d", self.root, n)
  self.pid_path = string.format("%s/pid.%d", self.root, n)
  self.status_path = string.format("%s/status.%d", self.root, n)
  local args = { "env" }
  for _, k in ipairs(SCRUBBED_ENV) do args[#args + 1] = "-u " .. k end
  local env_names = {}
  for k in pairs(self.opts.env or {}) do env_names[#env_names + 1] = k end
  table.sort(env_names)
  for _, k in ipairs(env_names) do args[#args + 1] = k .. "=" .. sh_quote(self.opts.env[k]) end
  args[#args + 1] = sh_quote(M.binary())
  args[#args + 1] = "--config"
  args[#args + 1] = sh_quote(self.config_path)
  if self.opts.defaults ~= false then
    for _, a in ipairs({ "--host", "127.0.0.1", "--port", "0", "--data-dir", sh_quote(self.data_dir) }) do
      args[#args + 1] = a
    end
    if self.opts.storage then
      args[#args + 1] = "--storage"
      args[#args + 1] = sh_quote(self.opts.storage)
    end
  end
  for _, a in ipairs(self.opts.args or {}) do args[#args + 1] = sh_quote(a) end
  -- The subshell keeps the binary as its child so it can record the exit status.
  local cmd = string.format(
    "cd %s && ( %s > %s 2> %s < /dev/null & echo $! > %s.tmp && mv %s.tmp %s; wait $!; echo $? > %s.tmp && mv %s.tmp %s ) > /dev/null 2>&1 &",
    sh_quote(self.root), table.concat(args, " "), sh_quote(self.out_path), sh_quote(self.err_path),
    sh_quote(self.pid_path), sh_quote(self.pid_path), sh_quote(self.pid_path),
    sh_quote(self.status_path), sh_quote(self.status_path), sh_quote(self.status_path))
  os.execute(cmd)
  self.pid = tonumber(M.wait_for(function() return read_file(self.pid_path) end, 10, "server pid"))
  self.exited = false
  local timeout = self.opts.start_timeout or 10
  local deadline = socket.gettime() + timeout
  while true do
    local out = read_file(self.out_path) or ""
    local host, port = out:match("listening on http://([^:\n]+):(%d+)")
    if port then
      self.host, self.port = host, tonumber(port)
      break
    end
    local st = read_file(self.status_path)
    if st then
      self.exited = true
      error(string.format("server exited (status %s) before listening; stderr:\n%s", st:gsub("\n", ""),
        read_file(self.err_path) or ""))
    end
    if socket.gettime() > deadline then
      self:kill9()
      error(string.format("server did not print 'listening on' within %d s; stderr:\n%s", timeout,
        read_file(self.err_path) or ""))
    end
    socket.sleep(0.01)
  end
  return self
end

function S:alive()
  return not self.exited and read_file(self.status_path) == nil
end

--- Waits for the process to exit; returns its exit status (128+signal when killed).
function S:wait_exit(timeout)
  local st = M.wait_for(function() return read_file(self.status_path) end, timeout or 10, "server exit")
  self.exited = true
  return tonumber((st:gsub("%s", "")))
end

function S:signal(sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
end

--- Signals the server (opts.signal, else the start's stop_signal, else TERM) and waits.
--- opts.expect_exit (else the start's expect_exit, else 0; false: any) asserts the status.
function S:stop(opts)
  opts = opts or {}
  if not self:alive() then
    self.exited = true
    return tonumber((read_file(self.status_path) or ""):match("%d+"))
  end
  local sig = opts.signal or self.opts.stop_signal or "TERM"
  self:signal(sig)
  local ok, st = pcall(self.wait_exit, self, self.opts.stop_timeout or 10)
  if not ok then
    self:signal("KILL")
    self:wait_exit(10)
    error(string.format("server did not exit within %d s of SIG%s", self.opts.stop_timeout or 10, sig))
  end
  local want = opts.expect_exit
  if want == nil then want = self.opts.expect_exit end
  if want == nil then want = 0 end
  if want ~= false and st ~= want then
    error(string.format("server exit status %s, expected %s; stderr tail:\n%s", tostring(st), tostring(want),
      (self:log() or ""):sub(-2000)))
  end
  return st
end

function S:kill9()
  if self:alive() then
    self:signal("KILL")
    return self:wait_exit(10)
  end
end

--- Stop (or not, when already dead) and start again on the same data dir.
function S:restart(opts)
  if self:alive() then self:stop(opts) end
  return self:_launch()
end

function S:log() return read_file(self.err_path) or "" end

function S:logs()
  local all = {}
  for i = 1, self.starts do
    all[#all + 1] = read_file(string.format("%s/err.%d", self.root, i)) or ""
  end
  return table.concat(all)
end

--- Lines of the log at level error (or sanitizer reports). `allow` patterns are excused.
function S:error_lines(allow, all_runs)
  local text = all_runs and self:logs() or self:log()
  local bad = {}
  for line in text:gmatch("[^\n]+") do
    local is_err = line:match("^%S+ error ") or line:find("AddressSanitizer", 1, true)
        or line:find("runtime error:", 1, true) or line:find("LeakSanitizer", 1, true)
    if is_err then
      local excused = false
      for _, p in ipairs(allow or {}) do
        if line:lower():find(p) then excused = true end
      end
      if not excused then bad[#bad + 1] = line end
    end
  end
  return bad
end

--- Asserts the current run's log has no error lines.
function S:assert_no_error_log(allow, all_runs)
  local bad = self:error_lines(allow, all_runs)
  if #bad > 0 then
    error("server logged errors:\n" .. table.concat(bad, "\n"), 2)
  end
end

function S:rss_kb()
  local st = read_file("/proc/" .. self.pid .. "/status") or ""
  return tonumber(st:match("VmRSS:%s*(%d+)"))
end

--- GET /debug/stats on a fresh connection (which counts itself in "connections").
function S:stats()
  local status, _, body = http.request(self.port, "GET", "/debug/stats", { Connection = "close" })
  assert(status == 200, "GET /debug/stats returned " .. tostring(status))
  return cjson.decode(body)
end

local function stat(st, key)
  local v = st
  for part in key:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

--- Polls /debug/stats until every key of `want` matches ("a.b" looks into nested
--- objects); errors with the last stats.
function S:wait_stats(want, timeout)
  local last
  local ok = pcall(M.wait_for, function()
    last = self:stats()
    for k, v in pairs(want) do
      if stat(last, k) ~= v then return false end
    end
    return true
  end, timeout or 10)
  if not ok then
    local got, exp = {}, {}
    for k, v in pairs(want) do
      got[#got + 1] = k .. "=" .. tostring(last and stat(last, k))
      exp[#exp + 1] = k .. "=" .. tostring(v)
    end
    table.sort(got)
    table.sort(exp)
    error("server stats did not return to " .. table.concat(exp, " ") .. "; got " .. table.concat(got, " "), 2)
  end
  return last
end

--- A class for the helpers built on this launcher (lua_host_server.lua, rel.lua): its
--- objects fall back to the Server methods, log() is the stderr of every run (a restart keeps
--- the earlier lines), and it carries this module's file, quoting and polling functions.
function M.class()
  local C = setmetatable({}, { __index = S })
  C.__index = C
  C.log = S.logs
  C.q = sh_quote
  for _, k in ipairs({ "read_file", "write_file", "wait_for", "source_dir", "mktemp", "sanitized" }) do
    C[k] = M[k]
  end
  return C
end

-- Counters that must return to their idle value after every test. The first three are
-- the documented minimum; the others are checked when the server reports them.
M.baseline_keys = { "connections", "streams_open", "subscribers", "readers_open", "bytes_queued", "lua.tasks_live" }

--- The baseline: counts when only the stats request itself is connected.
function S:baseline()
  local s = self:stats()
  local b = {}
  for _, k in ipairs(M.baseline_keys) do b[k] = stat(s, k) end
  return b
end

function S:streams_dir() return self.data_dir .. "/streams" end

function S:stream_file(path) return self:streams_dir() .. "/" .. path .. ".yaml" end

function S:cleanup()
  if self.pid and self:alive() then self:kill9() end
  if self.own_root and self.root and self.root:match("^/tmp/ds%-spec%.") then
    os.execute("rm -rf " .. sh_quote(self.root))
  end
end

--- Lists every file and directory under dir (sorted, relative paths, dirs end with '/').
function M.tree(dir)
  local out = cmd_output("cd " .. sh_quote(dir) .. " && find . -mindepth 1 \\( -type d -printf '%p/\\n' \\) -o -printf '%p\\n' | sort")
  local list = {}
  for l in out:gmatch("[^\n]+") do list[#list + 1] = l end
  return list
end

return M
