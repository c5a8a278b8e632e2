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
