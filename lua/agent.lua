--- agent.lua - the agent decorator (agents-api.md §6).
--
-- Provides: hooks on the four agent action events. Per-path state (model, history, the
-- request in flight, queued prompts) is rebuilt from the path's own stream on first use,
-- by replaying the stored events before the triggering one, so a restart continues a
-- conversation, never answers a message twice and does not lose one that was stored
-- but never answered (it is answered at the next event on that path). A rebuild reads
-- in batches and lets other tasks run between them; events of that path arriving
-- meanwhile wait in order and are handled by the rebuilding task once it is done.
-- A stored record that is not a well-formed agent event (not an object, no string type,
-- a payload that is not an object: e.g. JSON appended through /v1, or a hand-edited
-- file) is logged at warn with its path and offset and skipped, live and in a rebuild.
-- At start-up, every path with a request left open by a crash (llm_loop.lua's marks) is
-- rebuilt at once, which closes the orphan; at shutdown every request in flight ends
-- with request-cancelled reason "shutdown".
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
local MAX_SKIP_LOGS = 3 -- malformed records logged one by one per rebuild; the rest counted
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
    loading = {}, -- path -> {task, queue}: a rebuild in progress and the events waiting for it
  }, M)
  for _, t in ipairs(M.types) do
    ds.on(t, function(ev)
      self:handle(ev)
    end)
  end
  if ds.on_start then
    ds.on_start(function()
      self:close_orphans()
    end)
  end
  if ds.on_shutdown then
    ds.on_shutdown(function()
      self:shutdown()
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

-- Why a stored record cannot be replayed, or nil: an agent event is a table with a
-- string type and an object payload (or none).
local function malformed(ev, live)
  if type(ev) ~= "table" then
    return ("a %s, not an event object"):format(type(ev))
  end
  if type(ev.type) ~= "string" then
    return "no string type"
  end
  if ev.payload ~= nil and type(ev.payload) ~= "table" then
    return ("a payload that is a %s, not an object"):format(type(ev.payload))
  end
  if live and (type(ev.path) ~= "string" or type(ev.offset) ~= "string") then
    return "no path or offset"
  end
  return nil
end

function M:skip(path, offset, why)
  self.ds.log.warn(("agent: skipping the malformed event at %s offset %s: %s"):format(tostring(path),
    tostring(offset), why))
end

-- Builds the state of `path` from its events before offset `upto` (all when nil), also
-- stopping at the first event queued behind this rebuild (`loading`): those are handled
-- after it, not replayed. Yields between batches.
local function rebuild(self, path, upto, loading)
  local st = llm_loop.new_state(path, self.default_model)
  local limit = tonumber(upto)
  local from, bad = 0, 0
  while true do
    local evs, next_off = self.ds.read(path, from, REPLAY_BATCH)
    if not evs then
      self.ds.log.error(("agent: cannot replay %s: %s"):format(path, tostring(next_off)))
      break
    end
    if #evs == 0 then
      break
    end
    local first = (math.tointeger(next_off) or (from + #evs)) - #evs -- offsets are consecutive
    local stop = false
    for i, ev in ipairs(evs) do
      local n = first + i - 1
      local q = loading and loading.queue[1]
      if (limit and n >= limit) or (q and n >= tonumber(q.offset)) then
        stop = true
        break
      end
      local why = malformed(ev)
      if not why then
        if type(ev.offset) ~= "string" then
          ev.offset = ("%016d"):format(n)
        end
        local ok, err = pcall(replay, self, st, ev)
        why = not ok and ("cannot be replayed: " .. llm_loop.one_line(err)) or nil
      end
      if why then
        bad = bad + 1
        if bad <= MAX_SKIP_LOGS then
          self:skip(path, ("%016d"):format(n), why)
        end
      end
      from = n + 1
    end
    if stop then
      break
    end
    -- a long history must not hold the loop: let other tasks (and I/O) run
    if coroutine.isyieldable() then
      coroutine.yield()
    end
  end
  if bad > MAX_SKIP_LOGS then
    self.ds.log.warn(("agent: skipped %d more malformed events at %s"):format(bad - MAX_SKIP_LOGS, path))
  end
  return st
end

-- Whether the task rebuilding a path is still at it (one killed mid-rebuild is not).
local function alive(loading)
  return loading.task == nil or loading.task:status() ~= "ended"
end

---Handles `ev` (nil: none) on `path` once the path's state exists: built now if needed,
---from the events stored before ev. While another task rebuilds it, ev waits in its queue.
function M:deliver(path, ev)
  local st = self.states[path]
  if st then
    if ev then
      self:apply(st, ev)
    end
    return st
  end
  local loading = self.loading[path]
  if loading and alive(loading) then
    if ev then
      loading.queue[#loading.queue + 1] = ev
    end
    return nil
  end
  loading = { task = self.ds.task and self.ds.task() or nil, queue = {} }
  self.loading[path] = loading
  st = rebuild(self, path, ev and ev.offset, loading)
  self.states[path] = st
  self.n_states = self.n_states + 1
  if self.n_states > self.max_cached then
    self:evict(path)
  end
  -- A request that was in flight when the server stopped will never finish.
  self.loop:close_orphan(st)
  -- nothing below yields: no event can join the queue while it is emptied
  if ev then
    self:apply(st, ev)
  end
  for _, q in ipairs(loading.queue) do
    self:apply(st, q)
  end
  self.loading[path] = nil
  return st
end

---At start-up: every path a crash left with a request open (llm_loop.lua's marks) is
---rebuilt now, which closes its orphan with request-cancelled; a stale mark goes.
function M:close_orphans()
  local marks = self.ds.marks
  if not marks then
    return
  end
  for _, m in ipairs(marks.list(llm_loop.MARKS)) do
    local path = m.key
    if self:serves(path) then
      self:deliver(path, nil)
    end
    local st = self.states[path]
    if not (st and st.inflight) and not self.loading[path] then
      marks.remove(llm_loop.MARKS, path)
    end
    coroutine.yield() -- many orphans must not hold the loop (this runs in a task)
  end
end

---At shutdown (outside any task): every request in flight ends with request-cancelled
---reason "shutdown".
function M:shutdown()
  for _, st in pairs(self.states) do
    local ok, err = pcall(self.loop.shutdown, self.loop, st)
    if not ok then
      self.ds.log.warn(("agent: cannot close the request of %s at shutdown: %s"):format(st.path,
        llm_loop.one_line(err)))
    end
  end
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
  local why = malformed(ev, true)
  if why then
    self:skip(type(ev) == "table" and ev.path, type(ev) == "table" and ev.offset, why)
    return
  end
  if not self:serves(ev.path) then
    return
  end
  self:deliver(ev.path, ev)
end

---Applies one event to a path's state; a failure is logged with the event's place, and
---the agent goes on with the next event.
function M:apply(st, ev)
  local ok, err = pcall(self.apply_event, self, st, ev)
  if not ok then
    self.ds.log.warn(("agent: the event at %s offset %s was not handled: %s"):format(st.path, tostring(ev.offset),
      llm_loop.one_line(err)))
  end
end

function M:apply_event(st, ev)
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
