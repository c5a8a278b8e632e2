-- config_port_spec.lua - where the listening port comes from (issue 12, item 20): the
-- --port flag, else the PORT environment variable (the original server and its UI's dev
-- script use it), else config.lua's `port`. An invalid PORT refuses to start with a clear
-- message and a non-zero exit; an empty PORT counts as unset.
local http = require "spec.support.http"
local server = require "spec.support.server"
local U = require "spec.support.upstream"

local function free_port() return tonumber(U.free_port()) end

-- Starts a server whose config.lua says `port = cfg_port` (no --port flag unless `flag`),
-- with PORT=env_port in its environment (nil: unset). Returns the server (caller stops it).
local function start(cfg_port, env_port, flag)
  local opts = { defaults = false, config = { port = cfg_port, agents = false, storage = "memory" },
    env = env_port and { PORT = env_port } or nil, args = flag and { "--port", flag } or nil }
  return server.start(opts)
end

local function serves(srv, port)
  assert.are.equal(port, srv.port)
  local status = http.request(port, "GET", "/health")
  assert.are.equal(200, status)
end

local function run(srv, fn)
  local ok, err = pcall(fn, srv)
  srv:stop()
  srv:cleanup()
  assert(ok, err)
end

describe("the listening port", function()
  it("comes from PORT over config.lua", function()
    local cfg, env = free_port(), free_port()
    run(start(cfg, tostring(env)), function(srv) serves(srv, env) end)
  end)

  it("comes from --port over PORT", function()
    local env, flag = free_port(), free_port()
    run(start(free_port(), tostring(env), tostring(flag)), function(srv) serves(srv, flag) end)
    -- --port 0 (a free port) also wins over PORT
    run(start(free_port(), tostring(env), "0"), function(srv)
      assert.are_not.equal(env, srv.port)
      serves(srv, srv.port)
    end)
  end)

  it("comes from config.lua when PORT is unset or empty", function()
    local cfg = free_port()
    run(start(cfg, nil), function(srv) serves(srv, cfg) end)
    cfg = free_port()
    run(start(cfg, ""), function(srv) serves(srv, cfg) end)
  end)

  it("PORT=0 picks a free port", function()
    run(start(free_port(), "0"), function(srv) serves(srv, srv.port) end)
  end)

  for _, bad in ipairs({ "abc", "3000x", "65536", "-1", "99999999999999999999", " 3000", "0x10", "+80" }) do
    it("an invalid PORT=" .. bad .. " refuses to start with a clear message and a non-zero exit", function()
      local ok, err = pcall(start, free_port(), bad)
      if ok then
        err:stop()
        err:cleanup()
      end
      assert.is_false(ok, "started with PORT=" .. bad)
      err = tostring(err)
      local status = tonumber(err:match("server exited %(status (%d+)%)"))
      assert(status and status ~= 0, err)
      assert.truthy(err:find("PORT must be an integer from 0 to 65535", 1, true), err)
    end)
  end
end)
