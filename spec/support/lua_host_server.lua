-- spec/support/lua_host_server.lua - minimal server/HTTP helpers for the Lua host's
-- functional specs (the shared spec/support/server.lua may replace them later).
--
-- Provides: S.start{agents=..., plugins={name=source}, plugin_files={...}, data_dir=}
-- -> server (real binary, port 0, temp dir, config.lua written from the given agents
-- table), server:post(path, type, payload) -> status, server:events(path) -> list of
-- decoded events (non-live GET), server:wait_events(path, pred, what), server:stop(),
-- server:restart(), server:log(), server:stats(), server:cleanup(); S.wait_for.
-- Must not: sleep fixed times (everything polls with deadlines) or leave processes or
-- temp directories behind.
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")

local S = {}
S.__index = S

local function read_file(p)
  local f = io.open(p, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end
S.read_file = read_file

local function write_file(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
S.write_file = write_file

function S.wait_for(cond, timeout, what)
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

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function ser(v, ind)
  ind = ind or ""
  if type(v) == "table" then
    local out = { "{\n" }
    for k, x in pairs(v) do
      local key = type(k) == "number" and ("[" .. k .. "]") or ("[" .. string.format("%q", k) .. "]")
      out[#out + 1] = ind .. "  " .. key .. " = " .. ser(x, ind .. "  ") .. ",\n"
    end
    out[#out + 1] = ind .. "}"
    return table.concat(out)
  elseif type(v) == "string" then
    return string.format("%q", v)
  else
    return tostring(v)
  end
end

local function binary()
  return os.getenv("DS_BINARY") or "build/durable-stream"
end

local function source_dir()
  return os.getenv("DS_SOURCE_DIR") or "."
end
S.source_dir = source_dir

---@param opts table {agents = table, plugins = {name = source}, copy_plugins = {"echo.lua"}}
function S.start(opts)
  opts = opts or {}
  local p = io.popen("mktemp -d /tmp/ds-luahost-XXXXXX")
  local dir = p:read("l")
  p:close()
  local self = setmetatable({ dir = dir, opts = opts, data_dir = dir .. "/data", plugin_dir = dir .. "/plugins" }, S)
  os.execute("mkdir -p " .. q(self.plugin_dir))
  for _, name in ipairs(opts.copy_plugins or { "echo.lua" }) do
    write_file(self.plugin_dir .. "/" .. name, assert(read_file(source_dir() .. "/plugins/" .. name)))
  end
  for name, src in pairs(opts.plugins or {}) do
    if name:find("/") then
      os.execute("mkdir -p " .. q(self.plugin_dir .. "/" .. name:match("^(.*)/")))
    end
    write_file(self.plugin_dir .. "/" .. name, src)
  end
  local agents = opts.agents or {}
  agents.plugin_dir = self.plugin_dir
  local cfg = { port = 0, data_dir = self.data_dir, storage = opts.storage or "yaml", agents = agents }
  write_file(dir .. "/config.lua", "return " .. ser(cfg) .. "\n")
  local ok, err = pcall(self.launch, self)
  if not ok then
    self:cleanup()
    error(err, 0)
  end
  return self
end

function S:launch()
  self.run = (self.run or 0) + 1
  self.out = self.dir .. "/out." .. self.run
  self.err = self.dir .. "/err." .. self.run
  local cmd = ("%s --config %s >%s 2>%s & echo $!"):format(q(binary()), q(self.dir .. "/config.lua"), q(self.out),
    q(self.err))
  local p = io.popen(cmd)
  self.pid = tonumber(p:read("l"))
  p:close()
  self.port = S.wait_for(function()
    local s = read_file(self.out) or ""
    local port = s:match("listening on http://[^:]+:(%d+)")
    if port then
      return tonumber(port)
    end
    if not self:alive() then
      error("server exited at start: " .. (read_file(self.err) or ""))
    end
  end, 10, "the listening line")
end

function S:alive()
  return os.execute("kill -0 " .. self.pid .. " 2>/dev/null") == true
end

function S:stop()
  if not self.pid then
    return
  end
  os.execute("kill -INT " .. self.pid .. " 2>/dev/null")
  S.wait_for(function()
    return not self:alive()
  end, 10, "server exit")
  self.pid = nil
end

function S:restart()
  self:stop()
  self:launch()
end

function S:cleanup()
  if self.pid then
    os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
    self.pid = nil
  end
  os.execute("rm -rf " .. q(self.dir))
end

---All stderr lines of every run so far.
function S:log()
  local out = {}
  for i = 1, self.run do
    out[#out + 1] = read_file(self.dir .. "/err." .. i) or ""
  end
  return table.concat(out)
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
