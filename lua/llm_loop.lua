--- llm_loop.lua - the request lifecycle of agents-api.md §6.2, for every model.
--
-- Provides: starting a request (request-started, then the model streams its parts in its
-- own task, then request-ended or request-cancelled reason "error"), interrupting the
-- request in flight (new request-started first, then request-cancelled reason
-- "interrupted" and request-interrupted for the old one, then the new request's parts),
-- user cancellation (request-cancelled reason "cancelled") and the queue of prompts sent
-- with mode "queue".
-- Every event it appends is also fed to the path's history, so the history seen live is
-- the one a replay of the stream would build.
-- A path with a request in flight has a mark in ds.marks' set "open-requests" (key the
-- path, value the request's offset), set with request-started and removed with its
-- terminal event: after a crash, the next start finds the orphans there (agent.lua)
-- without reading every stream. At shutdown every request in flight ends with
-- request-cancelled reason "shutdown".
-- Must not: decide which events mean what (agent.lua) or talk to an upstream (models).
local history_mod = require("history")
local E = require("events")

local M = {}
M.__index = M

M.MARKS = "open-requests" -- the ds.marks set of paths with a request in flight

---@param ds table the host module
---@param models table the model registry
---@param cfg table the `agents` config table
function M.new(ds, models, cfg)
  return setmetatable({ ds = ds, models = models, cfg = cfg or {} }, M)
end

---Fresh per-path state.
function M.new_state(path, model)
  return {
    path = path,
    model = model,
    history = history_mod.new(),
    inflight = nil, -- the request in flight: {offset, model, task, ctx, done}
    pending = nil, -- a prompt stored but not yet started (only after a restart)
    queue = {}, -- prompts sent with mode "queue", oldest first
    scratch = {}, -- per-model scratch space (e.g. a Grok connection), by model name
  }
end

local function one_line(msg)
  msg = tostring(msg or "unknown error")
  msg = msg:gsub("\r?\n.*", "")
  if #msg > 500 then
    msg = msg:sub(1, 500)
  end
  return msg
end
M.one_line = one_line

-- What emit and emit_raw do with an append's result (off, err): feed the stored event to
-- the history and return its offset, or log the refusal and return nil, err.
local function stored(self, st, etype, payload, off, err)
  if not off then
    self.ds.log.error(("agent: append %s to %s failed: %s"):format(etype, st.path, tostring(err)))
    return nil, err
  end
  st.history:apply({ type = etype, payload = payload, offset = off, path = st.path })
  return off
end

---Appends an event to the path and feeds it to the history. Returns the offset, or nil
---and a message (logged) when the store refused it.
function M:emit(st, etype, payload)
  return stored(self, st, etype, payload, self.ds.append(st.path, etype, payload))
end

---Like emit, with the payload as JSON text (ds.append_raw) and its decoded form.
function M:emit_raw(st, etype, payload_json, decoded)
  return stored(self, st, etype, decoded, self.ds.append_raw(st.path, etype, payload_json))
end

-- The mark of a path with a request in flight (see the file header); a failure to keep it
-- only costs the eager close after a crash, so it is logged, not raised.
function M:mark(st)
  local marks = self.ds.marks
  if not marks then
    return
  end
  local ok, err
  if st.inflight then
    ok, err = marks.set(M.MARKS, st.path, st.inflight.offset)
  else
    ok, err = marks.remove(M.MARKS, st.path)
  end
  if not ok then
    self.ds.log.warn(("agent: cannot record the open request of %s: %s"):format(st.path, tostring(err)))
  end
end

-- Stops a request's model and task without appending anything. Idempotent.
local function abort(req)
  if req.done then
    return
  end
  req.done = true
  req.ctx.cancelled = true
  if req.model.cancel then
    local ok, err = pcall(req.model.cancel, req.model, req.ctx)
    if not ok then
      req.ctx.ds.log.warn("agent: model cancel failed: " .. one_line(err))
    end
  end
  if req.task then
    req.task:cancel()
  end
end

local function obj(ds, ...)
  return ds.json.obj(...)
end

-- Ends a request that stopped by itself (success or error) and starts the next queued one.
function M:finish(st, req, ok, err)
  if req.done then
    return
  end
  req.done = true
  req.ctx.cancelled = true
  if st.inflight == req then
    st.inflight = nil
    self:mark(st)
  end
  if ok then
    self:emit(st, E.ended, obj(self.ds, "requestOffset", req.offset))
  else
    -- the operator's record of every failed answer (refused, 401, stall, cut, malformed...)
    self.ds.log.warn(("agent: request %s on %s (model %s) failed: %s"):format(req.offset, st.path,
      tostring(req.model_name), one_line(err)))
    self:emit(st, E.cancelled, obj(self.ds, "requestOffset", req.offset, "reason", "error", "message", one_line(err)))
  end
  self:next(st)
end

-- The body of a request's task.
local function run(loop, st, req)
  local ok, r1, r2 = pcall(req.model.start, req.model, req.ctx)
  if req.done then
    return
  end
  if ok and r1 == nil and r2 ~= nil then
    ok, r1 = false, r2
  end
  loop:finish(st, req, ok, r1)
end

---Starts a request for `prompt` ({kind="text", text=...} or {kind="audio", audio=...})
---with the path's current model, interrupting the request in flight if there is one.
---@return string|nil offset of request-started
function M:start(st, prompt)
  local ds = self.ds
  local model = self.models:get(st.model)
  if not model then
    return nil
  end
  local old = st.inflight
  local off = self:emit(st, E.started, obj(ds, "model", st.model))
  if not off then
    return nil
  end
  local models_cfg = self.cfg.models or {}
  local req = { offset = off, model = model, model_name = st.model, done = false }
  st.scratch[st.model] = st.scratch[st.model] or {}
  local loop = self
  req.ctx = {
    ds = ds,
    path = st.path,
    request_offset = off,
    model_name = st.model,
    config = models_cfg[st.model] or {},
    prompt = prompt,
    messages = st.history:messages({ before = off }),
    scratch = st.scratch[st.model],
    cancelled = false,
    ---Appends an OpenAI-style part as iterate:llm-loop:response:sse.
    emit = function(ctx, part)
      if ctx.cancelled then
        return nil, "cancelled"
      end
      return loop:emit(st, E.sse, obj(ds, "requestOffset", off, "part", part))
    end,
    ---Appends any event to the path (e.g. iterate:grok:response:sse).
    append = function(ctx, etype, payload)
      if ctx.cancelled then
        return nil, "cancelled"
      end
      return loop:emit(st, etype, payload)
    end,
    ---Appends an event whose payload is given as JSON text, stored as received (not
    ---re-encoded); `decoded` is the same payload as a table, for the history.
    append_raw = function(ctx, etype, payload_json, decoded)
      if ctx.cancelled then
        return nil, "cancelled"
      end
      return loop:emit_raw(st, etype, payload_json, decoded)
    end,
  }
  st.inflight = req
  self:mark(st)
  if old and not old.done then
    abort(old)
    self:emit(st, E.cancelled, obj(ds, "requestOffset", old.offset, "reason", "interrupted", "message",
      "interrupted by a new message"))
    self:emit(st, E.interrupted, obj(ds, "requestOffset", old.offset))
  end
  -- a spawn can be refused (agents.max_tasks_per_path, the memory cap): the request then
  -- ends at once, with the reason
  local spawned, task = pcall(ds.spawn, run, self, st, req)
  if not spawned then
    self:finish(st, req, false, "cannot run the model: " .. one_line(task))
    return off
  end
  req.task = task
  -- a model task killed (budget, time, memory) cannot end its request itself: this does
  -- (finish is a no-op for a request already ended)
  if task.on_end then
    task:on_end(function(ok_end, err)
      if not ok_end then
        loop:finish(st, req, false, "the model's task failed: " .. tostring(err))
      end
    end)
  end
  return off
end

---Cancels the request in flight (user cancel): request-cancelled reason "cancelled".
---Queued prompts are dropped too: a cancel starts nothing. Returns true if one was running.
function M:cancel(st)
  st.queue = {}
  st.pending = nil
  local req = st.inflight
  if not req then
    return false
  end
  st.inflight = nil
  self:mark(st)
  abort(req)
  self:emit(st, E.cancelled, obj(self.ds, "requestOffset", req.offset, "reason", "cancelled", "message",
    "cancelled by the user"))
  return true
end

---Ends the request in flight because the server stops: its model and task stop and
---request-cancelled reason "shutdown" is appended (called outside any task: no yield).
function M:shutdown(st)
  local req = st.inflight
  if not req then
    return false
  end
  st.inflight = nil
  abort(req)
  self:emit(st, E.cancelled, obj(self.ds, "requestOffset", req.offset, "reason", "shutdown", "message",
    "server shutting down"))
  self:mark(st)
  return true
end

---Closes a request found in flight when the state was rebuilt after a restart: nothing
---will ever finish it, so it is cancelled with reason "error".
function M:close_orphan(st)
  local req = st.inflight
  if not req then
    return
  end
  st.inflight = nil
  self:emit(st, E.cancelled, obj(self.ds, "requestOffset", req.offset, "reason", "error", "message",
    "server restarted during the request"))
  self:mark(st)
end

---Starts the next prompt waiting (stored-but-unstarted first, then the queue) when no
---request is in flight.
function M:next(st)
  if st.inflight then
    return
  end
  local prompt = st.pending
  st.pending = nil
  if not prompt and #st.queue > 0 then
    prompt = table.remove(st.queue, 1)
  end
  if prompt then
    self:start(st, prompt)
  end
end

return M
