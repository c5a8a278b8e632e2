--- boot.lua - wiring of the Lua side; the host calls boot.start(ds, agents_cfg) once, in
-- the load phase.
--
-- Provides: the `agents` config with its defaults filled in (the README documents each
-- key), the model registry, the agent decorator installed on ds, and plugin_env(name),
-- the sandbox every plugin runs in: its own _ENV whose reads fall through to a read-only
-- base (allow-listed standard libraries plus `ds`, `models`, `config`); reading an
-- undeclared global raises "attempt to access nonexistent global 'x'".
-- Must not: do I/O (load phase).
local models_mod = require("models")
local agent_mod = require("agent")
local grok_mod = require("grok")

local M = {}

M.DEFAULTS = {
  default_model = "openai",
  models = {
    openai = {
      model = "gpt-4o",
      base_url = "https://api.openai.com/v1",
      api_key_env = "OPENAI_API_KEY",
      system_prompt = nil,
      api = "responses",
    },
    grok = grok_mod.DEFAULTS, -- one list, kept with the model that reads it
    echo = { delay_ms = 0 },
  },
  prefixes = nil,
  plugin_dir = "plugins",
  plugins_enabled = nil,
  plugins_disabled = {},
  instruction_budget = 50000000,
  load_instruction_budget = 10000000,
  max_hook_errors = 5,
  memory_limit_mb = 512,
  max_cached_paths = 10000,
}

local KNOWN = {}
for k in pairs(M.DEFAULTS) do
  KNOWN[k] = true
end
KNOWN.prefixes, KNOWN.plugins_enabled = true, true

local function merge(defaults, given)
  local out = {}
  for k, v in pairs(defaults) do
    out[k] = v
  end
  for k, v in pairs(given or {}) do
    if type(v) == "table" and type(defaults[k]) == "table" and #v == 0 and next(defaults[k]) ~= nil then
      out[k] = merge(defaults[k], v)
    else
      out[k] = v
    end
  end
  return out
end

---Fills in defaults and checks types. Raises on a bad value (refusing to start).
function M.normalize(cfg)
  if cfg == nil then
    cfg = {}
  end
  if type(cfg) ~= "table" then
    error("config: agents must be a table", 0)
  end
  for k in pairs(cfg) do
    if not KNOWN[k] then
      error(("config: unknown key agents.%s"):format(tostring(k)), 0)
    end
  end
  local c = merge(M.DEFAULTS, cfg)
  if type(c.default_model) ~= "string" then
    error("config: agents.default_model must be a string", 0)
  end
  if type(c.models) ~= "table" then
    error("config: agents.models must be a table", 0)
  end
  -- every model gets a table of its own: one that came from M.DEFAULTS unchanged (not
  -- configured) would otherwise be the defaults themselves, so a model changing its config
  -- at run time would change the fallbacks of every later lookup
  local models = {}
  for name, m in pairs(c.models) do
    if type(m) ~= "table" then
      error(("config: agents.models.%s must be a table"):format(name), 0)
    end
    local d = M.DEFAULTS.models[name]
    models[name] = merge(d or {}, m ~= d and m or nil)
  end
  c.models = models
  if c.prefixes ~= nil and type(c.prefixes) ~= "table" then
    error("config: agents.prefixes must be a list of path prefixes", 0)
  end
  for _, k in ipairs({ "instruction_budget", "load_instruction_budget", "max_hook_errors", "memory_limit_mb",
    "max_cached_paths" }) do
    if math.type(c[k]) ~= "integer" or c[k] < 0 then
      error(("config: agents.%s must be a non-negative integer"):format(k), 0)
    end
  end
  if type(c.plugin_dir) ~= "string" then
    error("config: agents.plugin_dir must be a string", 0)
  end
  return c
end

local READONLY_LIBS = { "string", "table", "math", "utf8", "coroutine" }
local SAFE_GLOBALS = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber", "tostring", "type",
  "rawequal", "rawget", "rawlen", "rawset", "setmetatable", "getmetatable", "_VERSION",
}

local function readonly(t, name)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error(("attempt to modify read-only %s.%s"):format(name, tostring(k)), 2)
    end,
    __metatable = false,
  })
end

---@param ds table host module
---@param cfg table|nil the `agents` table of config.lua
function M.start(ds, cfg)
  local conf = M.normalize(cfg)
  local registry = models_mod.new()
  registry:register("openai", require("openai").new(ds)) -- the built-in model (lua/openai.lua)
  registry:register("grok", grok_mod.new(ds)) -- xAI realtime voice (lua/grok.lua)
  local agent = agent_mod.install(ds, conf, registry)
  local base = {}
  for _, k in ipairs(SAFE_GLOBALS) do
    base[k] = _G[k]
  end
  for _, lib in ipairs(READONLY_LIBS) do
    base[lib] = readonly(_G[lib], lib)
  end
  base.os = readonly({ time = os.time, clock = os.clock, date = os.date, getenv = os.getenv }, "os")
  base.ds = ds
  base.models = registry:facade()
  base.config = conf
  base.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do
      parts[i] = tostring((select(i, ...)))
    end
    ds.log.info(table.concat(parts, "\t"))
  end
  local function plugin_env(name)
    return setmetatable({ PLUGIN = name }, {
      __index = function(_, k)
        local v = base[k]
        if v == nil then
          error(("attempt to access nonexistent global '%s'"):format(tostring(k)), 2)
        end
        return v
      end,
    })
  end
  return { config = conf, models = registry, agent = agent, plugin_env = plugin_env }
end

return M
