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
  instruction_budget = 10000000,
  task_time_limit_ms = 50,
  load_instruction_budget = 10000000,
  max_hook_errors = 5,
  memory_limit_mb = 512,
  max_cached_paths = 10000,
  max_tasks_per_plugin = 1000,
  max_tasks_per_path = 100,
}

-- The type of every key of the `agents` table (README: "config.lua: the agents table").
-- A type is "count" (a non-negative integer), "string", "number", "boolean",
-- "string list", a list of the allowed strings, or a table {fields = {...}, open = bool,
-- or_false = bool} for a nested table (open: other keys pass unchecked, for settings a
-- model sends upstream as they are; or_false: false turns the feature off).
local COUNT = "count"
local SCHEMA = {
  default_model = "string",
  prefixes = "string list",
  plugin_dir = "string",
  plugins_enabled = "string list",
  plugins_disabled = "string list",
  instruction_budget = COUNT,
  task_time_limit_ms = COUNT,
  load_instruction_budget = COUNT,
  max_hook_errors = COUNT,
  memory_limit_mb = COUNT,
  max_cached_paths = COUNT,
  max_tasks_per_plugin = COUNT,
  max_tasks_per_path = COUNT,
}
-- The models this repository ships; a model a plugin adds gets its table unchecked (the
-- plugin checks what it reads).
local MODEL_SCHEMA = {
  openai = require("openai").SCHEMA,
  grok = grok_mod.SCHEMA,
  echo = { delay_ms = COUNT },
}
M.SCHEMA, M.MODEL_SCHEMA = SCHEMA, MODEL_SCHEMA

local KNOWN = { models = true }
for k in pairs(SCHEMA) do
  KNOWN[k] = true
end

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

local function shown(v)
  if type(v) == "string" then
    return ("string %q"):format(#v > 40 and v:sub(1, 40) .. "..." or v)
  end
  return type(v) == "table" and "a table" or ("%s %s"):format(type(v), tostring(v))
end

local check

-- Checks the value of key `name` against type `t`; raises "config: agents.<name> must be ...".
local function check_value(name, v, t)
  local function bad(what)
    error(("config: agents.%s must be %s (got %s)"):format(name, what, shown(v)), 0)
  end
  if t == COUNT then
    if math.type(v) ~= "integer" or v < 0 then
      bad("a non-negative integer")
    end
  elseif t == "string" or t == "number" or t == "boolean" then
    if type(v) ~= t then
      bad("a " .. t)
    end
  elseif t == "string list" then
    if type(v) ~= "table" then
      bad("a list of strings")
    end
    for i, x in pairs(v) do
      if math.type(i) ~= "integer" or type(x) ~= "string" then
        bad("a list of strings")
      end
    end
  elseif type(t) == "table" and t.fields then
    if v == false and t.or_false then
      return
    end
    if type(v) ~= "table" then
      bad(t.or_false and "a table or false" or "a table")
    end
    check(name, v, t.fields, t.open)
  elseif type(t) == "table" then -- allowed strings
    for _, ok in ipairs(t) do
      if v == ok then
        return
      end
    end
    bad("one of \"" .. table.concat(t, "\", \"") .. "\"")
  end
end

-- Checks every key of table `tbl` (agents.<prefix>.*) against `schema`.
function check(prefix, tbl, schema, open)
  for k, v in pairs(tbl) do
    local name = prefix and (prefix .. "." .. tostring(k)) or tostring(k)
    local t = type(k) == "string" and schema[k] or nil
    if t == nil then
      if not open then
        error(("config: unknown key agents.%s"):format(name), 0)
      end
    else
      check_value(name, v, t)
    end
  end
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
  if type(c.models) ~= "table" then
    error("config: agents.models must be a table", 0)
  end
  local models_given = c.models
  c.models = nil
  check(nil, c, SCHEMA)
  -- every model gets a table of its own: one that came from M.DEFAULTS unchanged (not
  -- configured) would otherwise be the defaults themselves, so a model changing its config
  -- at run time would change the fallbacks of every later lookup
  local models = {}
  for name, m in pairs(models_given) do
    if type(name) ~= "string" then
      error("config: agents.models must map model names to tables", 0)
    end
    if type(m) ~= "table" then
      error(("config: agents.models.%s must be a table"):format(name), 0)
    end
    local d = M.DEFAULTS.models[name]
    models[name] = merge(d or {}, m ~= d and m or nil)
    if MODEL_SCHEMA[name] then
      check("models." .. name, models[name], MODEL_SCHEMA[name])
    end
  end
  c.models = models
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
  -- Lua runs __gc metamethods with its hooks off: a plugin's finalizer would be the one
  -- piece of Lua no budget bounds (vm.h), so plugins may not set one.
  base.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("setmetatable: __gc metamethods are not allowed in plugins (nothing bounds them); use <close>", 2)
    end
    return setmetatable(t, mt)
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
