--- agent.lua - the agent decorator (agents-api.md §6).
--
-- Provides: hooks on the four agent action events. Per-path state (model, history, the
-- request in flight, queued prompts) is rebuilt from the path's own stream on first use,
-- by replaying the stored events before the triggering one, so a restart continues a
-- conversation, never answers a message twice and does not lose one that was stored
-- but never answered (it is answered at the next event on that path).
--   iterate:agent:config:set                          {model}: switch model, or
--       iterate:ai:error {error:"unknown_model", message, model}
--   iterate:agent:action:send-user-message:called      {content, mode?}: modes
--       "interrupt" (default: start now, interrupting), "queue" (after the current
--       request), "background" (history only)
--   iterate:agent:action:send-user-audio:called        {audio}: needs a model accepting
--       audio, else iterate:ai:error {error:"unsupported_input", message, model, inputType:"audio"}
--   iterate:agent:action:cancel-request:called         {}: cancel, start nothing
-- Must not: block (hooks run as tasks; everything here is synchronous appends), or react
-- to paths outside the configured prefixes.
local llm_loop = require("llm_loop")
local E = require("events")

local M = {}
M.__index = M

M.types = { E.config, E.user, E.audio, E.cancel }

local REPLAY_BATCH = 1000
-- Paths whose state stays cached; beyond this, idle states (nothing in flight, nothing
-- queued, no model connection kept) are dropped: they are rebuilt from the stream on
-- their next use, so this bounds memory without changing behaviour.
M.MAX_CACHED = 10000

---Installs the agent: registers its hooks with ds.on and returns the agent object.
---@param ds table host module
---@param cfg table the `agents` config table
---@param models table model registry (models.lua)
function M.install(ds, cfg, models)
  cfg = cfg or {}
  local self = setmetatable({
    ds = ds,
    cfg = cfg,
    models = models,
    loop = llm_loop.new(ds, models, cfg),
    states = {},
    n_states = 0,
    -- agents.max_cached_paths overrides the cap (the soak run uses a small one)
    max_cached = math.tointeger(cfg.max_cached_paths) or M.MAX_CACHED,
    default_model = cfg.default_model or "openai",
    prefixes = cfg.prefixes,
  }, M)
  for _, t in ipairs(M.types) do
    ds.on(t, function(ev)
      self:handle(ev)
    end)
  end
  return self
end

---Whether the agent serves `path` (config `prefixes`; nil or empty = every path).
function M:serves(path)
  local prefixes = self.prefixes
  if type(prefixes) ~= "table" or #prefixes == 0 then
    return true
  end
  for _, p in ipairs(prefixes) do
    if path:sub(1, #p) == p then
      return true
    end
  end
  return false
end

local function mode_of(p)
  local mode = p.mode
  if mode == nil then
    return "interrupt"
  end
  return mode
end

-- Replays one stored event into a fresh state (no side effects besides the state).
local function replay(self, st, ev)
  local t, p = ev.type, type(ev.payload) == "table" and ev.payload or {}
  st.history:apply(ev)
  if t == E.config then
    if self.models:get(p.model) then
      st.model = p.model
    end
  elseif t == E.user then
    if type(p.content) ~= "string" then
      return
    end
    local prompt = { kind = "text", text = p.content }
    local mode = mode_of(p)
    if mode == "interrupt" then
      st.pending = prompt
    elseif mode == "queue" then
      if st.inflight or st.pending then
        st.queue[#st.queue + 1] = prompt
      else
        st.pending = prompt
      end
    end
  elseif t == E.audio then
    local model = self.models:get(st.model)
    if type(p.audio) == "string" and model and self.models.accepts(model, "audio") then
      st.pending = { kind = "audio", audio = p.audio }
    end
  elseif t == E.cancel then
    st.pending = nil
    st.queue = {}
  elseif t == E.started then
    st.inflight = { offset = ev.offset, done = false }
    if st.pending then
      st.pending = nil
    elseif #st.queue > 0 then
      table.remove(st.queue, 1)
    end
  elseif t == E.ended or t == E.cancelled then
    if st.inflight and st.inflight.offset == p.requestOffset then
      st.inflight = nil
    end
  end
end

---The state of `path`, rebuilt from the events stored before offset `upto` on first use.
function M:state(path, upto)
  local st = self.states[path]
  if st then
    return st
  end
  st = llm_loop.new_state(path, self.default_model)
  local limit = tonumber(upto)
  local from = 0
  while true do
    local evs, err = self.ds.read(path, from, REPLAY_BATCH)
    if not evs then
      self.ds.log.error(("agent: cannot replay %s: %s"):format(path, tostring(err)))
      break
    end
    local stop = #evs == 0
    for _, ev in ipairs(evs) do
      local n = tonumber(ev.offset)
      if limit and n >= limit then
        stop = true
        break
      end
      replay(self, st, ev)
      from = n + 1
    end
    if stop then
      break
    end
  end
  self.states[path] = st
  self.n_states = self.n_states + 1
  if self.n_states > self.max_cached then
    self:evict(path)
  end
  -- A request that was in flight when the server stopped will never finish.
  self.loop:close_orphan(st)
  return st
end

local function idle(st)
  if st.inflight or st.pending or #st.queue > 0 then
    return false
  end
  for _, scratch in pairs(st.scratch) do
    if next(scratch) ~= nil then
      return false
    end
  end
  return true
end

---Drops idle cached states (never `keep`) until a tenth below the cap.
function M:evict(keep)
  local target = self.max_cached - self.max_cached // 10
  for path, st in pairs(self.states) do
    if self.n_states <= target then
      break
    end
    if path ~= keep and idle(st) then
      self.states[path] = nil
      self.n_states = self.n_states - 1
    end
  end
end

function M:ai_error(st, code, message, extra)
  local ds = self.ds
  local payload
  if extra then
    payload = ds.json.obj("error", code, "message", message, "model", st.model, "inputType", extra)
  else
    payload = ds.json.obj("error", code, "message", message, "model", st.model)
  end
  return self.loop:emit(st, E.ai_error, payload)
end

---Handles one stored event (called from a hook task).
function M:handle(ev)
  local path = ev.path
  if type(path) ~= "string" or not self:serves(path) then
    return
  end
  local st = self:state(path, ev.offset)
  local t, p = ev.type, type(ev.payload) == "table" and ev.payload or {}
  st.history:apply(ev)
  local loop = self.loop
  if t == E.config then
    local name = p.model
    if self.models:get(name) then
      st.model = name
    else
      local shown = type(name) == "string" and name or tostring(name)
      local payload = self.ds.json.obj("error", "unknown_model", "message",
        ("unknown model '%s' (available: %s)"):format(shown, table.concat(self.models:names(), ", ")),
        "model", name == nil and self.ds.json.null or name)
      loop:emit(st, E.ai_error, payload)
    end
    loop:next(st)
  elseif t == E.user then
    if type(p.content) ~= "string" then
      self:ai_error(st, "invalid_input", "payload.content must be a string")
      return
    end
    local prompt = { kind = "text", text = p.content }
    local mode = mode_of(p)
    if mode == "background" then
      loop:next(st)
      return
    end
    if mode ~= "interrupt" and mode ~= "queue" then
      self:ai_error(st, "invalid_mode", ("unknown mode '%s' (interrupt, queue, background)"):format(tostring(mode)))
      return
    end
    if not self.models:get(st.model) then
      self:ai_error(st, "unknown_model", ("model '%s' is not available"):format(tostring(st.model)))
      return
    end
    if mode == "queue" and (st.inflight or st.pending) then
      st.queue[#st.queue + 1] = prompt
      loop:next(st)
      return
    end
    -- interrupt (or queue with nothing running): this prompt supersedes one stored but
    -- never started before a restart; its text is in the history either way.
    st.pending = nil
    loop:start(st, prompt)
  elseif t == E.audio then
    local model = self.models:get(st.model)
    if not model then
      self:ai_error(st, "unknown_model", ("model '%s' is not available"):format(tostring(st.model)))
      return
    end
    if not self.models.accepts(model, "audio") then
      self:ai_error(st, "unsupported_input", ("model '%s' does not accept audio input"):format(st.model), "audio")
      return
    end
    if type(p.audio) ~= "string" or p.audio == "" then
      self:ai_error(st, "invalid_input", "payload.audio must be a base64 string")
      return
    end
    st.pending = nil
    loop:start(st, { kind = "audio", audio = p.audio })
  elseif t == E.cancel then
    loop:cancel(st)
  end
end

return M
