--- fake_host.lua - a deterministic, in-memory stand-in for the `ds` host module.
--
-- Provides: what the C host gives lua/ and plugins (ds.on, ds.on_start, ds.on_shutdown,
-- ds.append, ds.read, ds.spawn, ds.task, ds.sleep, ds.now_ms, ds.iso_now, ds.log, ds.marks,
-- ds.json.obj/null; F.json_obj on its own), with h:start() / h:shutdown() running the
-- start-up and shutdown functions, h.marks the marks by set,
-- with tasks as plain coroutines, a ready queue run in FIFO order, and a virtual clock that
-- only moves when the spec says so (h:run() drains ready tasks and fires due timers;
-- h:advance(ms) moves the clock). Hooks run like in the real host: each stored event whose type some hook
-- registered starts one task per hook, after the append returns.
-- Must not: be used by the server; specs only.
local F = {}
F.__index = F

local NULL = setmetatable({}, { __tostring = function() return "null" end })

local function copy(v)
  if type(v) ~= "table" or v == NULL then
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    out[k] = copy(x)
  end
  return out
end

--- ds.json.obj: an object from alternating keys and values (the host keeps their order;
--- specs compare plain tables). Also used by specs that build a smaller ds of their own.
function F.json_obj(...)
  local t, n = {}, select("#", ...)
  for i = 1, n, 2 do
    local k, v = select(i, ...)
    t[k] = v
  end
  return t
end

function F.new()
  local h = setmetatable({
    streams = {}, -- path -> list of events
    hooks = {}, -- type -> list of fn
    ready = {}, -- FIFO of {task, args}
    timers = {}, -- list of {at, seq, task}
    seq = 0,
    now = 0,
    logs = {},
    live_tasks = 0,
    errors = {},
    starts = {},
    stops = {},
    marks = {}, -- set -> {key = value}
    current = nil, -- the task running
  }, F)
  local ds = { json = { null = NULL, obj = F.json_obj }, log = {} }
  h.ds = ds

  function ds.on(etype, fn)
    h.hooks[etype] = h.hooks[etype] or {}
    table.insert(h.hooks[etype], fn)
  end

  function ds.append(path, etype, payload)
    local list = h.streams[path] or {}
    h.streams[path] = list
    local off = ("%016d"):format(#list)
    local ev = {
      type = etype,
      payload = copy(payload),
      version = "1",
      path = path,
      offset = off,
      createdAt = h:iso(),
    }
    list[#list + 1] = ev
    for _, key in ipairs({ etype, "*" }) do
      for _, fn in ipairs(h.hooks[key] or {}) do
        ds.spawn(fn, copy(ev))
      end
    end
    return off
  end

  function ds.on_start(fn)
    h.starts[#h.starts + 1] = fn
  end

  function ds.on_shutdown(fn)
    h.stops[#h.stops + 1] = fn
  end

  -- as the host's: records as stored, then the offset after the last one
  function ds.read(path, from, max)
    local list = h.streams[path] or {}
    local out = {}
    for i = from + 1, #list do
      if #out >= max then
        break
      end
      out[#out + 1] = copy(list[i])
    end
    return out, from + #out
  end

  ds.marks = {
    set = function(set, key, value)
      h.marks[set] = h.marks[set] or {}
      h.marks[set][key] = value
      return true
    end,
    remove = function(set, key)
      if h.marks[set] then
        h.marks[set][key] = nil
      end
      return true
    end,
    list = function(set)
      local out = {}
      for k, v in pairs(h.marks[set] or {}) do
        out[#out + 1] = { key = k, value = v }
      end
      return out
    end,
  }

  function ds.task()
    return h.current
  end

  function ds.spawn(fn, ...)
    local task = { args = table.pack(...), cancelled = false, done = false }
    task.co = coroutine.create(function(...)
      local ok, err = xpcall(fn, debug.traceback, ...)
      if not ok then
        h.errors[#h.errors + 1] = err
      end
    end)
    function task.cancel()
      if task.done then
        return
      end
      task.cancelled = true
      task.done = true
      h.live_tasks = h.live_tasks - 1
      for i = #h.timers, 1, -1 do
        if h.timers[i].task == task then
          table.remove(h.timers, i)
        end
      end
      for i = #h.ready, 1, -1 do
        if h.ready[i].task == task then
          table.remove(h.ready, i)
        end
      end
      if coroutine.status(task.co) == "suspended" then
        coroutine.close(task.co)
      end
    end
    -- the method forms task:cancel() and task:status() work too
    setmetatable(task, { __index = {
      cancel = function(t) t.cancel() end,
      status = function(t) return t.done and "ended" or "running" end,
    } })
    h.live_tasks = h.live_tasks + 1
    h.ready[#h.ready + 1] = { task = task, args = task.args }
    return task
  end

  function ds.sleep(ms)
    local _, main = coroutine.running()
    if main then
      error("ds.sleep: not inside a task", 2)
    end
    coroutine.yield({ sleep = ms })
  end

  function ds.now_ms()
    return h.now
  end

  function ds.iso_now()
    return h:iso()
  end

  for _, lvl in ipairs({ "debug", "info", "warn", "error" }) do
    ds.log[lvl] = function(msg)
      h.logs[#h.logs + 1] = { level = lvl, msg = tostring(msg) }
    end
  end
  return h
end

function F:iso()
  local s = self.now // 1000
  return ("2026-01-20T12:%02d:%02d.%03dZ"):format((s // 60) % 60, s % 60, self.now % 1000)
end

function F:resume(entry)
  local task = entry.task
  if task.done then
    return
  end
  local outer = self.current
  self.current = task
  local ok, req = coroutine.resume(task.co, table.unpack(entry.args, 1, entry.args.n))
  self.current = outer
  if not ok then
    self.errors[#self.errors + 1] = req
  end
  if coroutine.status(task.co) == "dead" then
    if not task.done then
      task.done = true
      self.live_tasks = self.live_tasks - 1
    end
    return
  end
  if type(req) == "table" and req.sleep then
    self.seq = self.seq + 1
    self.timers[#self.timers + 1] = { at = self.now + req.sleep, seq = self.seq, task = task }
  elseif not task.done then
    -- a plain coroutine.yield(): ready again, after what is ready now (as the host does)
    self.ready[#self.ready + 1] = { task = task, args = { n = 0 } }
  end
end

---Runs the start-up functions as tasks (the host does once the run phase begins).
function F:start()
  for _, fn in ipairs(self.starts) do
    self.ds.spawn(fn)
  end
  self:drain()
end

---Runs the shutdown functions outside any task (as the host does), then cancels every task.
function F:shutdown()
  for _, fn in ipairs(self.stops) do
    fn()
  end
end

-- Runs every ready task (and those they make ready) without moving the clock.
function F:drain()
  while #self.ready > 0 do
    local entry = table.remove(self.ready, 1)
    self:resume(entry)
  end
end

local function next_timer(self)
  local best
  for i, t in ipairs(self.timers) do
    if not best or t.at < self.timers[best].at or (t.at == self.timers[best].at and t.seq < self.timers[best].seq) then
      best = i
    end
  end
  return best
end

---Moves the clock forward by ms, firing due timers in order.
function F:advance(ms)
  local target = self.now + ms
  self:drain()
  while true do
    local i = next_timer(self)
    if not i or self.timers[i].at > target then
      break
    end
    local t = table.remove(self.timers, i)
    self.now = t.at
    self:resume({ task = t.task, args = { n = 0 } })
    self:drain()
  end
  self.now = target
end

---Runs until nothing is ready and no timer is pending.
function F:run()
  self:drain()
  while true do
    local i = next_timer(self)
    if not i then
      break
    end
    local t = table.remove(self.timers, i)
    if t.at > self.now then
      self.now = t.at
    end
    self:resume({ task = t.task, args = { n = 0 } })
    self:drain()
  end
end

---Events of a path (optionally only those of a type).
function F:events(path, etype)
  local out = {}
  for _, ev in ipairs(self.streams[path] or {}) do
    if type(ev) == "table" and (not etype or ev.type == etype) then -- (a stream may hold other JSON)
      out[#out + 1] = ev
    end
  end
  return out
end

---Event types of a path in order, with the short names the specs use.
function F:types(path)
  local out = {}
  for _, ev in ipairs(self.streams[path] or {}) do
    out[#out + 1] = type(ev) == "table" and ev.type or type(ev)
  end
  return out
end

---Loads a plugin file in an environment like the real host's (ds, models, config).
function F:load_plugin(file, models, config)
  local env = setmetatable({ ds = self.ds, models = models:facade(), config = config or {} }, { __index = _G })
  local chunk = assert(loadfile(file, "t", env))
  chunk()
  return env
end

---A fresh copy of the stored streams (to simulate a restart: new host, same data).
function F:dump()
  return copy(self.streams)
end

function F:restore(streams)
  self.streams = copy(streams)
end

return F
