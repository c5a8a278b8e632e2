-- Unit specs of the agent policy (lua/agent.lua, llm_loop.lua, history.lua, models.lua,
-- plugins/echo.lua) against the deterministic fake host.
package.path = "lua/?.lua;spec/support/?.lua;" .. package.path
local fake = require("fake_host")
local models_mod = require("models")
local agent_mod = require("agent")

local P = "agent/s1"
local T = require("agent_events")
local SHORT = {}
for k, v in pairs(T) do
  SHORT[v] = k
end

-- A model that records what it was given and answers with fixed words.
local function recorder(words, opts)
  opts = opts or {}
  local m = { calls = {}, cancels = 0, inputs = opts.inputs }
  function m.start(_, ctx)
    m.calls[#m.calls + 1] = { messages = ctx.messages, prompt = ctx.prompt, model = ctx.model_name }
    if opts.fail then
      return nil, opts.fail
    end
    if opts.raise then
      error(opts.raise)
    end
    ctx:emit({ type = "text-start", id = "r" })
    for i, w in ipairs(words) do
      if opts.delay then
        ctx.ds.sleep(opts.delay)
      end
      ctx:emit({ type = "text-delta", id = "r", delta = (i > 1 and " " or "") .. w })
    end
    ctx:emit({ type = "text-end", id = "r" })
  end
  function m.cancel()
    m.cancels = m.cancels + 1
  end
  return m
end

local function setup(cfg, streams)
  cfg = cfg or { default_model = "echo", models = { echo = { delay_ms = 0 } } }
  local h = fake.new()
  if streams then
    h:restore(streams)
  end
  local reg = models_mod.new()
  h:load_plugin("plugins/echo.lua", reg, cfg)
  local agent = agent_mod.install(h.ds, cfg, reg)
  return h, agent, reg
end

local function short_types(h, path, from)
  local out = {}
  for i, ev in ipairs(h:events(path or P)) do
    if i > (from or 0) then
      out[#out + 1] = SHORT[ev.type] or ev.type
    end
  end
  return out
end

local function parts(h, req)
  local out = {}
  for _, ev in ipairs(h:events(P, T.sse)) do
    if req == nil or ev.payload.requestOffset == req then
      out[#out + 1] = ev.payload.part
    end
  end
  return out
end

local function say(h, content, mode, path)
  h.ds.append(path or P, T.user, { content = content, mode = mode })
end

describe("agent", function()
  it("answers with echo: lifecycle, parts and requestOffsets in order", function()
    local h = setup()
    h.ds.append(P, T.config, { model = "echo" })
    say(h, "hello brave new world")
    h:run()
    assert.same({ "config", "user", "started", "sse", "sse", "sse", "sse", "sse", "sse", "sse", "sse", "ended" },
      short_types(h))
    local started = h:events(P, T.started)[1]
    assert.same({ model = "echo" }, started.payload)
    local R = started.offset
    for _, ev in ipairs(h:events(P, T.sse)) do
      assert.equal(R, ev.payload.requestOffset)
    end
    assert.equal(R, h:events(P, T.ended)[1].payload.requestOffset)
    local ps = parts(h)
    assert.equal("response-metadata", ps[1].type)
    assert.equal("echo", ps[1].modelId)
    assert.equal("text-start", ps[2].type)
    local text = {}
    for i = 3, 6 do
      assert.equal("text-delta", ps[i].type)
      assert.equal(ps[2].id, ps[i].id)
      text[#text + 1] = ps[i].delta
    end
    assert.equal("hello brave new world", table.concat(text))
    assert.equal("text-end", ps[7].type)
    assert.same({ type = "finish", reason = "stop", usage = { inputTokens = 4, outputTokens = 4, totalTokens = 8 } },
      ps[8])
    assert.same({}, h.errors)
    assert.equal(0, h.live_tasks)
  end)

  it("switches models and reports an unknown model without changing it", function()
    local h, _, reg = setup()
    local other = recorder({ "ok" })
    reg:register("other", other)
    h.ds.append(P, T.config, { model = "nope" })
    h:run()
    local err = h:events(P, T.ai_error)[1]
    assert.equal("unknown_model", err.payload.error)
    assert.equal("nope", err.payload.model)
    assert.truthy(err.payload.message:find("nope", 1, true))
    say(h, "one")
    h:run()
    assert.equal("echo", h:events(P, T.started)[1].payload.model)
    h.ds.append(P, T.config, { model = "other" })
    say(h, "two")
    h:run()
    assert.equal("other", h:events(P, T.started)[2].payload.model)
    assert.equal(1, #other.calls)
    assert.same({ kind = "text", text = "two" }, other.calls[1].prompt)
  end)

  it("uses the configured default model, and reports it when it is not registered", function()
    local h = setup({ default_model = "openai", models = {} })
    say(h, "hi")
    h:run()
    assert.same({ "user", "ai_error" }, short_types(h))
    local e = h:events(P, T.ai_error)[1].payload
    assert.equal("unknown_model", e.error)
    assert.equal("openai", e.model)
  end)

  it("interrupt: new request-started, old cancelled + interrupted, then the new parts", function()
    local h, _, reg = setup()
    local slow = recorder({ "a", "b", "c", "d" }, { delay = 10 })
    reg:register("slow", slow)
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "first")
    h:advance(25) -- two words streamed
    local n_before = #h:events(P)
    say(h, "second", "interrupt")
    h:run()
    local tail = short_types(h, P, n_before)
    assert.same({ "user", "started", "cancelled", "interrupted", "sse", "sse", "sse", "sse", "sse", "sse", "ended" },
      tail)
    local starts = h:events(P, T.started)
    local R1, R2 = starts[1].offset, starts[2].offset
    local c = h:events(P, T.cancelled)[1].payload
    assert.same({ requestOffset = R1, reason = "interrupted", message = "interrupted by a new message" }, c)
    assert.same({ requestOffset = R1 }, h:events(P, T.interrupted)[1].payload)
    -- nothing of the old request after its cancellation
    local cancelled_at = tonumber(h:events(P, T.cancelled)[1].offset)
    for _, ev in ipairs(h:events(P, T.sse)) do
      if ev.payload.requestOffset == R1 then
        assert.is_true(tonumber(ev.offset) < cancelled_at)
      end
    end
    assert.equal(1, slow.cancels)
    -- the new request saw the interrupted partial answer in its history
    assert.same({
      { role = "user", text = "first" },
      { role = "assistant", text = "a b" },
      { role = "user", text = "second" },
    }, slow.calls[2].messages)
    assert.equal(R2, h:events(P, T.ended)[1].payload.requestOffset)
    assert.equal(0, h.live_tasks)
    assert.same({}, h.errors)
  end)

  it("default mode is interrupt", function()
    local h, _, reg = setup()
    reg:register("slow", recorder({ "a", "b" }, { delay = 10 }))
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "first")
    h:advance(5)
    say(h, "second")
    h:run()
    assert.equal(1, #h:events(P, T.interrupted))
    assert.equal(1, #h:events(P, T.ended))
  end)

  it("queue: answered after the current request ends, with its answer in history", function()
    local h, _, reg = setup()
    local slow = recorder({ "a", "b" }, { delay = 10 })
    reg:register("slow", slow)
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "first")
    h:advance(5)
    say(h, "second", "queue")
    say(h, "third", "queue")
    h:run()
    assert.same({ "config", "user", "started", "sse", "user", "user", "sse", "sse", "sse", "ended", "started", "sse", "sse", "sse", "sse", "ended", "started", "sse", "sse", "sse", "sse", "ended" },
      short_types(h))
    assert.equal(0, #h:events(P, T.cancelled))
    assert.same({ kind = "text", text = "second" }, slow.calls[2].prompt)
    -- the answer sits where its request started: before the messages queued meanwhile
    assert.same({
      { role = "user", text = "first" },
      { role = "assistant", text = "a b" },
      { role = "user", text = "second" },
      { role = "user", text = "third" },
    }, slow.calls[2].messages)
    assert.same({ kind = "text", text = "third" }, slow.calls[3].prompt)
  end)

  it("queue with nothing in flight starts at once", function()
    local h = setup()
    say(h, "now please", "queue")
    h:run()
    assert.equal(1, #h:events(P, T.ended))
  end)

  it("background: history only, seen by the next request", function()
    local h, _, reg = setup()
    local m = recorder({ "ok" })
    reg:register("m", m)
    h.ds.append(P, T.config, { model = "m" })
    say(h, "remember this", "background")
    h:run()
    assert.equal(0, #h:events(P, T.started))
    say(h, "question")
    h:run()
    assert.same({ { role = "user", text = "remember this" }, { role = "user", text = "question" } },
      m.calls[1].messages)
  end)

  it("rejects an unknown mode and a non-string content", function()
    local h = setup()
    say(h, "x", "sometimes")
    h.ds.append(P, T.user, { content = 42 })
    h:run()
    local errs = h:events(P, T.ai_error)
    assert.equal("invalid_mode", errs[1].payload.error)
    assert.equal("invalid_input", errs[2].payload.error)
    assert.equal(0, #h:events(P, T.started))
  end)

  it("cancel: request-cancelled reason cancelled, no more parts, nothing started", function()
    local h, _, reg = setup()
    local slow = recorder({ "a", "b", "c" }, { delay = 10 })
    reg:register("slow", slow)
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "first")
    say(h, "later", "queue")
    h:advance(15)
    h.ds.append(P, T.cancel, {})
    h:run()
    local c = h:events(P, T.cancelled)
    assert.equal(1, #c)
    assert.same({ requestOffset = h:events(P, T.started)[1].offset, reason = "cancelled",
      message = "cancelled by the user" }, c[1].payload)
    assert.equal("cancelled", short_types(h)[#short_types(h)])
    assert.equal(1, #h:events(P, T.started))
    assert.equal(1, slow.cancels)
    assert.equal(0, h.live_tasks)
    -- cancel with nothing in flight appends nothing
    local n = #h:events(P)
    h.ds.append(P, T.cancel, {})
    h:run()
    assert.equal(n + 1, #h:events(P))
  end)

  it("a failing model ends the request with reason error and the next prompt works", function()
    local h, _, reg = setup()
    reg:register("bad", recorder({}, { fail = "upstream HTTP 500: boom\nmore" }))
    reg:register("raiser", recorder({}, { raise = "kaput" }))
    h.ds.append(P, T.config, { model = "bad" })
    say(h, "x")
    h:run()
    local c = h:events(P, T.cancelled)[1].payload
    assert.equal("error", c.reason)
    assert.equal("upstream HTTP 500: boom", c.message)
    h.ds.append(P, T.config, { model = "raiser" })
    say(h, "y")
    h:run()
    c = h:events(P, T.cancelled)[2].payload
    assert.equal("error", c.reason)
    assert.truthy(c.message:find("kaput", 1, true))
    h.ds.append(P, T.config, { model = "echo" })
    say(h, "z")
    h:run()
    assert.equal(1, #h:events(P, T.ended))
  end)

  it("audio: unsupported_input for a text model, a request for an audio model", function()
    local h, _, reg = setup()
    h.ds.append(P, T.audio, { audio = "AAAA" })
    h:run()
    local e = h:events(P, T.ai_error)[1].payload
    assert.same({ error = "unsupported_input", message = e.message, model = "echo", inputType = "audio" }, e)
    local voice = recorder({ "heard" }, { inputs = { text = true, audio = true } })
    reg:register("voice", voice)
    h.ds.append(P, T.config, { model = "voice" })
    h.ds.append(P, T.audio, { audio = "AAAA" })
    h:run()
    assert.same({ kind = "audio", audio = "AAAA" }, voice.calls[1].prompt)
    assert.equal(1, #h:events(P, T.ended))
  end)

  it("keeps paths independent and honours prefixes", function()
    local cfg = { default_model = "echo", prefixes = { "agent/" }, models = {} }
    local h = setup(cfg)
    say(h, "one", nil, "agent/a")
    say(h, "two", nil, "agent/b")
    say(h, "three", nil, "other/c")
    h:run()
    assert.equal(1, #h:events("agent/a", T.ended))
    assert.equal(1, #h:events("agent/b", T.ended))
    assert.equal(0, #h:events("other/c", T.started))
  end)
end)

describe("agent state cache", function()
  it("drops idle states beyond the cap and rebuilds them on their next use", function()
    local saved = agent_mod.MAX_CACHED
    agent_mod.MAX_CACHED = 10
    local ok, err = pcall(function()
      local h, agent, reg = setup()
      local slow = recorder({ "a", "b" }, { delay = 10 })
      reg:register("slow", slow)
      h.ds.append("busy", T.config, { model = "slow" })
      say(h, "keep me", nil, "busy")
      h:advance(5) -- "busy" has a request in flight: never evicted
      for i = 1, 30 do
        say(h, "hi", nil, "p" .. i)
        h:drain() -- echo answers without timers; the clock (and "busy") stand still
      end
      assert.is_true(agent.n_states <= 10)
      assert.truthy(agent.states["busy"])
      h:run()
      assert.equal(1, #h:events("busy", T.ended))
      -- an evicted path continues its conversation: history rebuilt, nothing re-answered
      local gone
      for i = 1, 30 do
        if not agent.states["p" .. i] then
          gone = "p" .. i
          break
        end
      end
      assert.truthy(gone)
      say(h, "again", nil, gone)
      h:run()
      assert.equal(2, #h:events(gone, T.started))
      local fin = {}
      for _, ev in ipairs(h:events(gone, T.sse)) do
        if ev.payload.part.type == "finish" then
          fin[#fin + 1] = ev.payload.part.usage.inputTokens
        end
      end
      assert.same({ 1, 3 }, fin)
    end)
    agent_mod.MAX_CACHED = saved
    assert(ok, err)
  end)
end)

describe("agent state rebuilt from a recorded history", function()
  it("continues the conversation and never answers a message twice", function()
    local h = setup()
    say(h, "alpha beta")
    h:run()
    say(h, "gamma")
    h:run()
    local saved = h:dump()
    -- restart: a new host and agent over the same streams
    local h2, _, reg = setup(nil, saved)
    local m = recorder({ "fine" })
    reg:register("m", m)
    h2.ds.append(P, T.config, { model = "m" })
    say(h2, "delta")
    h2:run()
    assert.equal(3, #h2:events(P, T.started))
    assert.equal(3, #h2:events(P, T.ended))
    assert.equal(1, #m.calls)
    assert.same({
      { role = "user", text = "alpha beta" },
      { role = "assistant", text = "alpha beta" },
      { role = "user", text = "gamma" },
      { role = "assistant", text = "gamma" },
      { role = "user", text = "delta" },
    }, m.calls[1].messages)
    assert.same({}, h2.errors)
  end)

  it("restores the model set by config:set", function()
    local h, _, reg = setup()
    reg:register("m", recorder({ "x" }))
    h.ds.append(P, T.config, { model = "m" })
    h:run()
    local saved = h:dump()
    local h2, _, reg2 = setup(nil, saved)
    local m2 = recorder({ "y" })
    reg2:register("m", m2)
    say(h2, "hello")
    h2:run()
    assert.equal("m", h2:events(P, T.started)[1].payload.model)
    assert.equal(1, #m2.calls)
  end)

  it("closes a request left in flight by a crash with reason error", function()
    local h, _, reg = setup()
    reg:register("slow", recorder({ "a", "b", "c" }, { delay = 10 }))
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "first")
    h:advance(15)
    local saved = h:dump() -- the server dies here, mid-answer
    local h2, _, reg2 = setup(nil, saved)
    local m = recorder({ "ok" })
    reg2:register("slow", m)
    say(h2, "second")
    h2:run()
    local n_saved = #saved[P]
    assert.same({ "user", "cancelled", "started", "sse", "sse", "sse", "ended" }, short_types(h2, P, n_saved))
    local c = h2:events(P, T.cancelled)[1].payload
    assert.equal("error", c.reason)
    assert.equal(h2:events(P, T.started)[1].offset, c.requestOffset)
    assert.same({
      { role = "user", text = "first" },
      { role = "assistant", text = "a" },
      { role = "user", text = "second" },
    }, m.calls[1].messages)
  end)

  it("answers a message that was stored but never started, exactly once", function()
    local h = setup()
    -- stored by the core, then the server died before the hook ran
    h.streams[P] = {
      { type = T.config, payload = { model = "echo" }, version = "1", path = P, offset = "0000000000000000" },
      { type = T.user, payload = { content = "lost?" }, version = "1", path = P, offset = "0000000000000001" },
    }
    local saved = h:dump()
    local h2 = setup(nil, saved)
    say(h2, "aside", "background")
    h2:run()
    assert.equal(1, #h2:events(P, T.started))
    local deltas = {}
    for _, part in ipairs(parts(h2)) do
      if part.type == "text-delta" then
        deltas[#deltas + 1] = part.delta
      end
    end
    assert.equal("lost?", table.concat(deltas))
    -- a further restart answers nothing again
    local h3 = setup(nil, h2:dump())
    h3.ds.append(P, T.config, { model = "echo" })
    h3:run()
    assert.equal(1, #h3:events(P, T.started))
  end)

  it("replays queued prompts that were not answered yet", function()
    local h, _, reg = setup()
    reg:register("slow", recorder({ "a", "b" }, { delay = 10 }))
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "first")
    h:advance(5)
    say(h, "queued one", "queue")
    h:advance(1)
    local saved = h:dump()
    local h2, _, reg2 = setup(nil, saved)
    local m = recorder({ "ok" })
    reg2:register("slow", m)
    h2.ds.append(P, T.config, { model = "slow" })
    h2:run()
    -- orphan cancelled, then the queued prompt answered
    assert.equal(1, #h2:events(P, T.cancelled))
    assert.equal(2, #h2:events(P, T.started))
    assert.same({ kind = "text", text = "queued one" }, m.calls[1].prompt)
  end)
end)

describe("agents.max_cached_paths", function()
  it("sets the cap on cached per-path states", function()
    local h, agent = setup({ default_model = "echo", max_cached_paths = 2, models = { echo = { delay_ms = 0 } } })
    for i = 1, 5 do
      say(h, "hello " .. i, nil, "cap/p" .. i)
      h:run()
    end
    assert.equal(2, agent.max_cached)
    assert.is_true(agent.n_states <= 2)
    -- an evicted path still answers, with its history rebuilt from the stream
    say(h, "again", nil, "cap/p1")
    h:run()
    assert.equal(2, #h:events("cap/p1", T.ended))
    assert.same({}, h.errors)
  end)
end)

-- Issue 12, item 10 (Lua side): a stored record that is not a well-formed agent event is
-- logged with its place and skipped; it never stops the agent.
describe("malformed stored events", function()
  local function warns(h)
    local out = {}
    for _, l in ipairs(h.logs) do
      if l.level == "warn" then
        out[#out + 1] = l.msg
      end
    end
    return out
  end

  it("are skipped when a path's state is rebuilt, and the next message is answered", function()
    local h = setup()
    h.streams[P] = {
      1, -- JSON appended through /v1: a number, a string, null, a list, an object of another shape
      "s",
      h.ds.json.null,
      { 1, "x" },
      { role = "user", content = "not an event" },
      { type = 5, payload = {} },
      { type = T.user, payload = "a string payload" },
      { type = T.user, payload = { content = "the real one" }, path = P, offset = "0000000000000007" },
      { type = T.started, payload = { model = "echo" } }, -- no offset, no path: still replayable
      { type = T.ended, payload = { requestOffset = "0000000000000008" } },
    }
    local h2 = setup(nil, h:dump())
    say(h2, "next one")
    h2:run()
    assert.same({}, h2.errors)
    local ends = h2:events(P, T.ended)
    assert.equal(2, #ends) -- the stored one and the answer to "next one"
    local w = warns(h2)
    assert.truthy(w[1]:find("agent: skipping the malformed event at " .. P .. " offset 0000000000000000: a number", 1,
      true), w[1])
    assert.truthy(table.concat(w, "\n"):find("skipped 4 more malformed events at " .. P, 1, true))
    -- the real message is in the history the model saw; the odd records are not
    local h3, _, reg = setup(nil, h2:dump())
    local m = recorder({ "ok" })
    reg:register("m", m)
    h3.ds.append(P, T.config, { model = "m" })
    say(h3, "third")
    h3:run()
    assert.same({ "the real one", "next one", "third" }, (function()
      local out = {}
      for _, msg in ipairs(m.calls[1].messages) do
        if msg.role == "user" then
          out[#out + 1] = msg.text
        end
      end
      return out
    end)())
  end)

  it("are skipped live, logged with path and offset", function()
    local h, agent = setup()
    for _, ev in ipairs({ 42, { type = T.user }, { type = T.user, path = P, offset = "0000000000000009", payload = 7 },
      { type = T.user, payload = {} } }) do
      agent:handle(ev)
    end
    assert.same({}, h.errors)
    local w = warns(h)
    assert.equal(4, #w)
    assert.truthy(w[3]:find("at " .. P .. " offset 0000000000000009: a payload that is a number", 1, true), w[3])
    say(h, "fine")
    h:run()
    assert.equal(1, #h:events(P, T.ended))
  end)
end)

describe("a long history", function()
  it("is replayed in batches, and the events arriving meanwhile are handled in order after it", function()
    local h = setup()
    local list = {}
    for i = 1, 2500 do
      list[i] = { type = T.user, payload = { content = "old " .. i, mode = "background" }, version = "1", path = P,
        offset = ("%016d"):format(i - 1) }
    end
    h.streams[P] = list
    local h2, agent = setup(nil, h:dump())
    say(h2, "first")
    say(h2, "second", "queue")
    -- the first hook task rebuilds (yielding between batches); the second waits behind it
    h2:drain()
    assert.same({}, h2.errors)
    local started = h2:events(P, T.started)
    assert.equal(2, #started)
    assert.equal(2, #h2:events(P, T.ended))
    local deltas = {}
    for _, part in ipairs(parts(h2)) do
      if part.type == "text-delta" then
        deltas[#deltas + 1] = part.delta
      end
    end
    assert.same({ "first", "second" }, deltas)
    assert.is_nil(next(agent.loading))
  end)
end)

-- Issue 12, item 14: shutdown closes what is in flight; a start closes what a crash left.
describe("requests across a stop", function()
  it("marks a path while its request is in flight", function()
    local h, _, reg = setup()
    reg:register("slow", recorder({ "a", "b" }, { delay = 10 }))
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "hi")
    h:advance(5)
    local R = h:events(P, T.started)[1].offset
    assert.same({ [P] = R }, h.marks["open-requests"])
    h:run()
    assert.same({}, h.marks["open-requests"])
  end)

  it("at shutdown ends the request in flight with reason shutdown", function()
    local h, _, reg = setup()
    local m = recorder({ "a", "b", "c" }, { delay = 10 })
    reg:register("slow", m)
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "hi")
    h:advance(15)
    h:shutdown()
    local R = h:events(P, T.started)[1].offset
    local c = h:events(P, T.cancelled)
    assert.equal(1, #c)
    assert.same({ requestOffset = R, reason = "shutdown", message = "server shutting down" }, c[1].payload)
    assert.equal(1, m.cancels)
    assert.same({}, h.marks["open-requests"])
    -- its task was stopped: nothing more comes
    local n = #h:events(P)
    h:run()
    assert.equal(n, #h:events(P))
  end)

  it("at start-up closes an orphan at once, without any new event on its path", function()
    local h, _, reg = setup()
    reg:register("slow", recorder({ "a", "b", "c" }, { delay = 10 }))
    h.ds.append(P, T.config, { model = "slow" })
    say(h, "hi")
    h.ds.append("other/path", T.config, { model = "echo" })
    h:advance(15)
    local saved, marks = h:dump(), h.marks -- the process is killed here
    marks["open-requests"]["stale/path"] = "0000000000000003" -- a mark whose request was closed
    local h2 = setup(nil, saved)
    h2.marks = marks
    h2:start()
    h2:run()
    local n_saved = #saved[P]
    assert.same({ "cancelled" }, short_types(h2, P, n_saved))
    local c = h2:events(P, T.cancelled)[1].payload
    assert.equal("error", c.reason)
    assert.equal("server restarted during the request", c.message)
    assert.same({}, h2.marks["open-requests"])
    assert.same({}, h2.errors)
  end)
end)
