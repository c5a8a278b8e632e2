--- models.lua - the model registry of the agent layer.
--
-- Provides: a registry where `lua/` and plugins register models by name. A model is a
-- plain Lua object (a table) with this interface:
--
--   model.inputs            table of accepted prompt kinds, e.g. {text = true, audio = true};
--                           default {text = true}
--   model:start(ctx)        runs inside its own task; streams the answer with ctx:emit(part)
--                           (OpenAI-style parts) or ctx:append(type, payload) (raw events);
--                           may yield (ds.sleep, transports). Returns normally on success;
--                           raises, or returns nil, "<message>", on failure.
--   model:cancel(ctx)       optional; called when the request is cancelled or interrupted,
--                           before its task is killed, so a transport can abort its upstream
--                           transfer at once. Must not yield.
--
-- Also the helpers the built-in upstream models (openai.lua, grok.lua) share: settings(defaults)
-- (a model's config lookup with its defaults), api_key(cfg, defaults) (the key from the config
-- or from the environment variable it names) and one_line(s, max) (a message on one line).
--
-- Must not: know about events or paths; llm_loop.lua drives the request lifecycle.
local M = {}
M.__index = M

---@return table registry
function M.new()
  return setmetatable({ by_name = {}, order = {} }, M)
end

---Registers (or replaces) a model under `name`.
---@param name string
---@param model table
function M:register(name, model)
  if type(name) ~= "string" or name == "" then
    error("models.register: name must be a non-empty string", 2)
  end
  if type(model) ~= "table" or type(model.start) ~= "function" then
    error("models.register: model '" .. name .. "' needs a start(self, ctx) function", 2)
  end
  if model.cancel ~= nil and type(model.cancel) ~= "function" then
    error("models.register: model '" .. name .. "' cancel must be a function", 2)
  end
  if not self.by_name[name] then
    self.order[#self.order + 1] = name
  end
  self.by_name[name] = model
end

---@param name string
---@return table|nil model
function M:get(name)
  if type(name) ~= "string" then
    return nil
  end
  return self.by_name[name]
end

---@return string[] names in registration order
function M:names()
  local out = {}
  for i, n in ipairs(self.order) do
    out[i] = n
  end
  return out
end

---@param model table
---@param kind string "text" | "audio"
---@return boolean
function M.accepts(model, kind)
  local inputs = model.inputs or { text = true }
  return inputs[kind] == true
end

---A lookup of a model's settings: get(cfg, k) is cfg[k], or defaults[k] when cfg has none
---(false stays false).
---@param defaults table
---@return fun(cfg: table, k: string): any
function M.settings(defaults)
  return function(cfg, k)
    local v = cfg[k]
    if v == nil then
      return defaults[k]
    end
    return v
  end
end

---The API key of an upstream model: cfg.api_key, else the environment variable named by
---api_key_env (from cfg, else from defaults). Returns the key, or nil when neither gives a
---non-empty string; and the variable's name, for the "key missing" message.
---@return string|nil key, any env
function M.api_key(cfg, defaults)
  local env = cfg.api_key_env
  if env == nil then
    env = defaults.api_key_env
  end
  local key = cfg.api_key
  if key == nil and type(env) == "string" then
    key = os.getenv(env)
  end
  if type(key) ~= "string" or key == "" then
    return nil, env
  end
  return key, env
end

---An upstream's message on one line: line breaks folded, trailing blanks dropped, cut at
---max bytes (default 300) with "..." after the cut.
function M.one_line(s, max)
  s = tostring(s or ""):gsub("[\r\n]+", " "):gsub("%s+$", "")
  max = max or 300
  if #s > max then
    s = s:sub(1, max) .. "..."
  end
  return s
end

---The plugin-facing view of the registry: plain functions (models.register(name, m)).
function M:facade()
  local reg = self
  return {
    register = function(name, model)
      return reg:register(name, model)
    end,
    get = function(name)
      return reg:get(name)
    end,
    names = function()
      return reg:names()
    end,
  }
end

return M
