-- Functional specs of the agent layer against the real binary with the `echo` model
-- (agents-api.md §6.2): lifecycle order and requestOffsets, 204 before the answer,
-- interrupt ordering, cancel, restart mid-conversation.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")

local T = S.T

local function words(n, prefix)
  local t = {}
  for i = 1, n do
    t[i] = (prefix or "w") .. i
  end
  return table.concat(t, " ")
end

local function after(evs, offset)
  local out = {}
  for _, e in ipairs(evs) do
    if tonumber(e.offset) > tonumber(offset) then
      out[#out + 1] = e
    end
  end
  return out
end

describe("agent layer with the echo model", function()
  local srv
  setup(function()
    srv = S.start({ agents = { default_model = "openai", models = { echo = { delay_ms = 40 } } } })
  end)
  teardown(function()
    if srv then
      srv:stop()
      local ok, err = pcall(srv.assert_clean_log, srv)
      srv:cleanup()
      assert(ok, err)
    end
  end)

  for round = 1, 2 do -- twice: catches state leaking between scenarios
    it("answers config:set echo + a message with the §6.2 events in order (round " .. round .. ")", function()
      local p = "func/order" .. round
      assert.equal(204, srv:post(p, T.config, { model = "echo" }))
      assert.equal(204, srv:post(p, T.user, { content = "hello brave new world" }))
      local evs = srv:wait_count(p, T.ended, 1, "request-ended")
      local types = {}
      for _, e in ipairs(evs) do
        types[#types + 1] = e.type
      end
      assert.same({ T.config, T.user, T.started, T.sse, T.sse, T.sse, T.sse, T.sse, T.sse, T.sse, T.sse, T.ended },
        types)
      local R = evs[3].offset
      assert.equal("0000000000000002", R)
      assert.same({ model = "echo" }, evs[3].payload)
      local kinds, text = {}, {}
      for i = 4, 11 do
        assert.equal(R, evs[i].payload.requestOffset)
        local part = evs[i].payload.part
        kinds[#kinds + 1] = part.type
        if part.type == "text-delta" then
          text[#text + 1] = part.delta
        end
      end
      assert.same({ "response-metadata", "text-start", "text-delta", "text-delta", "text-delta", "text-delta",
        "text-end", "finish" }, kinds)
      assert.equal("hello brave new world", table.concat(text))
      assert.same({ inputTokens = 4, outputTokens = 4, totalTokens = 8 }, evs[11].payload.part.usage)
      assert.same({ requestOffset = R }, evs[12].payload)
      srv:wait_idle()
    end)
  end

  it("reports an unknown model", function()
    local p = "func/unknown"
    srv:post(p, T.config, { model = "no-such-model" })
    local evs = srv:wait_count(p, T.ai_error, 1, "ai:error")
    local e = S.of_type(evs, T.ai_error)[1].payload
    assert.equal("unknown_model", e.error)
    assert.equal("no-such-model", e.model)
    assert.is_string(e.message)
  end)

  it("returns 204 before the answer completes", function()
    local p = "func/fast204"
    srv:post(p, T.config, { model = "echo" })
    assert.equal(204, srv:post(p, T.user, { content = words(40) }))
    -- 40 words at 40 ms each take over a second and a half; the POST did not wait
    local evs = srv:events(p)
    assert.equal(0, S.count(evs, T.ended))
    srv:wait_count(p, T.ended, 1, "request-ended", 15)
  end)

  it("interrupt: new request-started, old cancelled + interrupted, then the new answer", function()
    local p = "func/interrupt"
    srv:post(p, T.config, { model = "echo" })
    srv:post(p, T.user, { content = words(50, "old") })
    local evs = srv:wait_events(p, function(e)
      return #S.deltas(e) >= 2
    end, "two deltas")
    local R1 = S.of_type(evs, T.started)[1].offset
    srv:post(p, T.user, { content = "new question", mode = "interrupt" })
    evs = srv:wait_count(p, T.ended, 1, "the new request to end")
    local user2 = S.of_type(evs, T.user)[2]
    local tail = after(evs, user2.offset)
    assert.equal(T.started, tail[1].type)
    local R2 = tail[1].offset
    assert.equal(T.cancelled, tail[2].type)
    assert.same({ requestOffset = R1, reason = "interrupted", message = tail[2].payload.message }, tail[2].payload)
    assert.equal(T.interrupted, tail[3].type)
    assert.same({ requestOffset = R1 }, tail[3].payload)
    for i = 4, #tail do
      assert.equal(R2, tail[i].payload.requestOffset) -- nothing more of the old request
    end
    assert.equal(T.ended, tail[#tail].type)
    -- the new request saw the partial old answer: more input tokens than its own prompt
    local finish
    for _, e in ipairs(tail) do
      if e.type == T.sse and e.payload.part.type == "finish" then
        finish = e.payload.part
      end
    end
    assert.is_true(finish.usage.inputTokens > 50 + 2)
    srv:wait_idle()
  end)

  it("cancel: request-cancelled with reason cancelled, and nothing after it", function()
    local p = "func/cancel"
    srv:post(p, T.config, { model = "echo" })
    srv:post(p, T.user, { content = words(50) })
    local evs = srv:wait_events(p, function(e)
      return S.count(e, T.sse) >= 3
    end, "the answer to start")
    local R = S.of_type(evs, T.started)[1].offset
    assert.equal(204, srv:post(p, T.cancel, {}))
    evs = srv:wait_count(p, T.cancelled, 1, "request-cancelled")
    local c = S.of_type(evs, T.cancelled)[1]
    assert.equal(R, c.payload.requestOffset)
    assert.equal("cancelled", c.payload.reason)
    srv:wait_idle()
    evs = srv:events(p)
    assert.equal(T.cancelled, evs[#evs].type)
    assert.equal(0, S.count(evs, T.ended))
  end)
end)

describe("agent layer across a restart", function()
  it("answers the next message with the full history and nothing twice", function()
    local srv = S.start({ agents = { default_model = "echo" } })
    local ok, err = pcall(function()
      local p = "func/restart"
      srv:post(p, T.user, { content = "alpha beta" })
      srv:wait_count(p, T.ended, 1, "first answer")
      srv:post(p, T.user, { content = "gamma" })
      srv:wait_count(p, T.ended, 2, "second answer")
      srv:restart()
      srv:post(p, T.user, { content = "delta epsilon" })
      local evs = srv:wait_count(p, T.ended, 3, "third answer")
      srv:wait_idle()
      evs = srv:events(p)
      assert.equal(3, S.count(evs, T.started))
      assert.equal(3, S.count(evs, T.ended))
      assert.equal(0, S.count(evs, T.cancelled))
      local finishes = {}
      for _, e in ipairs(evs) do
        if e.type == T.sse and e.payload.part.type == "finish" then
          finishes[#finishes + 1] = e.payload.part.usage.inputTokens
        end
      end
      -- history: alpha beta | alpha beta | gamma | gamma | delta epsilon = 2+2+1+1+2
      assert.same({ 2, 5, 8 }, finishes)
    end)
    srv:stop()
    local clean, why = pcall(srv.assert_clean_log, srv)
    srv:cleanup()
    assert(ok, err)
    assert(clean, why)
  end)
end)
