-- spec/support/upstream.lua - the fake upstreams of the model specs as processes on
-- 127.0.0.1: spec/fixtures/upstream/openai_fake.py (HTTP/SSE, Python standard library) and
-- grok_fake.py (WebSocket realtime, python3-websockets under /usr/bin/python3).
--
-- Provides: U.start(kind, opts) with kind "openai" | "grok" and opts.pace_ms (openai's
-- --pace-ms; the fake's own default when absent) -> fake {pid, port, dir, log_path, base
-- (openai: http://127.0.0.1:<port>/v1), url (grok: ws://127.0.0.1:<port>/v1/realtime)};
-- fake:stop() (its temp dir stays when DS_SPEC_KEEP is set); fake:records(kind) (the
-- decoded log lines, only those of r.kind == kind when given); for openai
-- fake:requests_with(marker); for grok fake:control(query), fake:conn_of(marker),
-- fake:messages(conn), fake:record(conn, event), fake:connects(). Also U.free_port() (a
-- port nobody listens on) and U.grok_available() (whether grok_fake.py can run here).
-- Must not: bind anything but 127.0.0.1, sleep fixed times, or leave processes behind.
local cjson = require("cjson")
local socket = require("socket")
local server = require("spec.support.server")

local q = server.sh_quote

local U = {}

local Fake = {}
Fake.__index = Fake

-- How each fake names its port on its first stdout line.
local PORT_LINE = { openai = "^(%d+)\n", grok = "PORT=(%d+)" }

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

function U.start(kind, opts)
  opts = opts or {}
  assert(PORT_LINE[kind], "no fake upstream named " .. tostring(kind))
  local dir = server.mktemp()
  local self = setmetatable({ kind = kind, dir = dir, log_path = dir .. "/" .. kind .. ".jsonl" }, Fake)
  local script = server.source_dir() .. "/spec/fixtures/upstream/" .. kind .. "_fake.py"
  local cmd = ("/usr/bin/python3 %s --log %s"):format(q(script), q(self.log_path))
  if opts.pace_ms then
    cmd = cmd .. " --pace-ms " .. math.tointeger(opts.pace_ms)
  end
  local p = io.popen(("%s >%s 2>%s & echo $!"):format(cmd, q(dir .. "/stdout"), q(dir .. "/stderr")))
  self.pid = tonumber(p:read("l"))
  p:close()
  local ok, err = pcall(function()
    self.port = server.wait_for(function()
      local s = server.read_file(dir .. "/stdout")
      local n = s and s:match(PORT_LINE[kind])
      if n then
        return tonumber(n)
      end
      if not alive(self.pid) then
        error(kind .. "_fake exited: " .. (server.read_file(dir .. "/stderr") or ""))
      end
    end, 10, kind .. "_fake's port")
  end)
  if not ok then
    self:stop()
    error(err, 0)
  end
  if kind == "openai" then
    self.base = ("http://127.0.0.1:%d/v1"):format(self.port)
  else
    self.url = ("ws://127.0.0.1:%d/v1/realtime"):format(self.port)
  end
  return self
end

function Fake:stop()
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  server.wait_for(function()
    return not alive(self.pid)
  end, 10, "the " .. self.kind .. " fake to exit")
  if not os.getenv("DS_SPEC_KEEP") then
    os.execute("rm -rf " .. q(self.dir))
  end
end

function Fake:records(kind)
  local out = {}
  -- only whole lines: the fake may be writing the last one while a spec polls
  for line in (server.read_file(self.log_path) or ""):gmatch("([^\n]+)\n") do
    local r = cjson.decode(line)
    if not kind or r.kind == kind then
      out[#out + 1] = r
    end
  end
  return out
end

-- openai: the request records whose last user text contains `marker`.
function Fake:requests_with(marker)
  local out = {}
  for _, r in ipairs(self:records("request")) do
    local body = r.body or {}
    local msgs = body.input or body.messages or {}
    local last = msgs[#msgs]
    local text = last and (type(last.content) == "string" and last.content or last.content[1].text) or ""
    if text:find(marker, 1, true) then
      out[#out + 1] = r
    end
  end
  return out
end

-- grok: arms a fault or sets the pace (GET /_control?<query>).
function Fake:control(query)
  local http = require("socket.http")
  local body, status = http.request(("http://127.0.0.1:%d/_control?%s"):format(self.port, query))
  assert(status == 200, "control " .. query .. ": " .. tostring(status) .. " " .. tostring(body))
end

-- grok: the connection number whose client messages contain `marker`.
function Fake:conn_of(marker)
  for _, r in ipairs(self:records()) do
    if r.event == "message" and r.raw:find(marker, 1, true) then
      return r.conn
    end
  end
end

-- grok: the client messages of one connection, in order.
function Fake:messages(conn)
  local out = {}
  for _, r in ipairs(self:records()) do
    if r.conn == conn and r.event == "message" then
      out[#out + 1] = r
    end
  end
  return out
end

-- grok: the first record of `event` ("connect", "close", ...) on one connection.
function Fake:record(conn, event)
  for _, r in ipairs(self:records()) do
    if r.conn == conn and r.event == event then
      return r
    end
  end
end

-- grok: how many connections were attempted (accepted or rejected).
function Fake:connects()
  local n = 0
  for _, r in ipairs(self:records()) do
    if r.event == "connect" or r.event == "rejected" then
      n = n + 1
    end
  end
  return n
end

--- A port on 127.0.0.1 that nobody listens on (bound, read and closed).
function U.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

function U.grok_available()
  return os.execute("/usr/bin/python3 -c 'import websockets' 2>/dev/null") == true
end

return U
