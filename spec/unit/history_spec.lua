-- Unit specs of lua/history.lua: turns built from events.
package.path = "lua/?.lua;" .. package.path
local history = require("history")

local function ev(t, payload, off)
  return { type = t, payload = payload, offset = off }
end

describe("history", function()
  it("builds user and assistant turns, including interrupted partial answers", function()
    local h = history.new()
    h:apply(ev("iterate:agent:action:send-user-message:called", { content = "hi" }, "0"))
    h:apply(ev("iterate:llm-loop:request-started", { model = "echo" }, "1"))
    h:apply(ev("iterate:llm-loop:response:sse", { requestOffset = "1", part = { type = "text-start", id = "x" } }, "2"))
    h:apply(ev("iterate:llm-loop:response:sse", { requestOffset = "1", part = { type = "text-delta", id = "x", delta = "Hel" } }, "3"))
    h:apply(ev("iterate:agent:action:send-user-message:called", { content = "stop" }, "4"))
    h:apply(ev("iterate:llm-loop:request-started", { model = "echo" }, "5"))
    h:apply(ev("iterate:llm-loop:request-cancelled", { requestOffset = "1", reason = "interrupted" }, "6"))
    h:apply(ev("iterate:llm-loop:response:sse", { requestOffset = "1", part = { type = "text-delta", delta = "late" } }, "7"))
    h:apply(ev("iterate:llm-loop:response:sse", { requestOffset = "5", part = { type = "text-delta", delta = "ok" } }, "8"))
    assert.same({
      { role = "user", text = "hi" },
      { role = "assistant", text = "Hellate" },
      { role = "user", text = "stop" },
      { role = "assistant", text = "ok" },
    }, h:messages())
    assert.same({ { role = "user", text = "hi" }, { role = "assistant", text = "Hellate" }, { role = "user", text = "stop" } },
      h:messages({ before = "5" }))
    assert.equal("ok", h:answer("5"))
  end)

  it("leaves out empty answers and keeps background messages and audio turns", function()
    local h = history.new()
    h:apply(ev("iterate:agent:action:send-user-message:called", { content = "a", mode = "background" }, "0"))
    h:apply(ev("iterate:llm-loop:request-started", {}, "1"))
    h:apply(ev("iterate:llm-loop:request-cancelled", { requestOffset = "1", reason = "cancelled" }, "2"))
    h:apply(ev("iterate:agent:action:send-user-audio:called", { audio = "QUJD" }, "3"))
    assert.same({ { role = "user", text = "a" }, { role = "user", audio = "QUJD" } }, h:messages())
  end)

  it("adds Grok transcripts to the request in flight", function()
    local h = history.new()
    h:apply(ev("iterate:agent:action:send-user-message:called", { content = "talk" }, "0"))
    h:apply(ev("iterate:llm-loop:request-started", { model = "grok" }, "1"))
    h:apply(ev("iterate:grok:response:sse", { type = "response.output_audio_transcript.delta", delta = "Hi " }, "2"))
    h:apply(ev("iterate:grok:response:sse", { type = "response.output_audio.delta", delta = "AAAA" }, "3"))
    h:apply(ev("iterate:grok:response:sse", { type = "response.output_audio_transcript.delta", delta = "there" }, "4"))
    h:apply(ev("iterate:llm-loop:request-ended", { requestOffset = "1" }, "5"))
    h:apply(ev("iterate:grok:response:sse", { type = "response.output_audio_transcript.delta", delta = "stray" }, "6"))
    assert.same({ { role = "user", text = "talk" }, { role = "assistant", text = "Hi there" } }, h:messages())
  end)

  it("gives a user audio turn the text of its Grok transcript", function()
    local h = history.new()
    h:apply(ev("iterate:agent:action:send-user-audio:called", { audio = "QUJD" }, "0"))
    h:apply(ev("iterate:llm-loop:request-started", { model = "grok" }, "1"))
    h:apply(ev("iterate:grok:response:sse",
      { type = "conversation.item.input_audio_transcription.completed", transcript = "what time is it" }, "2"))
    h:apply(ev("iterate:grok:response:sse", { type = "response.output_audio_transcript.delta", delta = "Noon." }, "3"))
    h:apply(ev("iterate:llm-loop:request-ended", { requestOffset = "1" }, "4"))
    assert.same({
      { role = "user", audio = "QUJD", text = "what time is it" },
      { role = "assistant", text = "Noon." },
    }, h:messages())
  end)
end)

describe("grok helpers", function()
  local grok = require("grok")
  local ds = { json = { obj = require("fake_host").json_obj } }
  function ds.json.array(...)
    return { ... }
  end

  it("builds session.update with what the original sent, and the configured values", function()
    local defaults = grok.session_update(ds, {})
    assert.same({
      type = "session.update",
      session = {
        instructions = "You are a helpful voice assistant. Keep your responses conversational and concise "
          .. "since they will be spoken aloud.",
        voice = "ara",
        audio = { input = { format = { type = "audio/pcm", rate = 48000 } },
          output = { format = { type = "audio/pcm", rate = 48000 } } },
        input_audio_transcription = { model = "whisper-large-v3-turbo" },
        turn_detection = { type = "server_vad", threshold = 0.5, prefix_padding_ms = 300,
          silence_duration_ms = 500, create_response = true },
      },
    }, defaults)
    local m = grok.session_update(ds, { voice = "rex", instructions = "Be brief.",
      turn_detection = { type = "semantic_vad" }, input_audio_transcription = { model = "whisper-1" } })
    assert.equal("Be brief.", m.session.instructions)
    assert.equal("rex", m.session.voice)
    assert.same({ type = "semantic_vad" }, m.session.turn_detection)
    assert.same({ model = "whisper-1" }, m.session.input_audio_transcription)
    -- false turns each off: no transcription asked for, turn detection null
    ds.json.null = "null"
    local off = grok.session_update(ds, { turn_detection = false, input_audio_transcription = false })
    assert.is_nil(off.session.input_audio_transcription)
    assert.equal(ds.json.null, off.session.turn_detection)
    assert.is_false(grok.transcribes({ input_audio_transcription = false }))
    assert.is_true(grok.transcribes({}))
  end)

  it("turns text history into conversation items, skipping audio without a transcript", function()
    local items = grok.history_items(ds, {
      { role = "user", text = "hi" },
      { role = "assistant", text = "hello" },
      { role = "user", audio = "QUJD" },
      { role = "user", audio = "QUJD", text = "spoken" },
      { role = "user", text = "prompt" },
    }, 1, 4)
    assert.equal(3, #items)
    assert.same({ type = "conversation.item.create", item = { type = "message", role = "user",
      content = { { type = "input_text", text = "hi" } } } }, items[1])
    assert.same({ type = "output_text", text = "hello" }, items[2].item.content[1])
    assert.equal("assistant", items[2].item.role)
    assert.same({ type = "input_text", text = "spoken" }, items[3].item.content[1])
  end)
end)

describe("models", function()
  local models = require("models")
  it("registers, replaces and validates models", function()
    local reg = models.new()
    reg:register("a", { start = function() end })
    reg:register("b", { start = function() end, inputs = { audio = true } })
    reg:register("a", { start = function() end })
    assert.same({ "a", "b" }, reg:names())
    assert.is_true(models.accepts(reg:get("a"), "text"))
    assert.is_false(models.accepts(reg:get("a"), "audio"))
    assert.is_true(models.accepts(reg:get("b"), "audio"))
    assert.has_error(function() reg:register("", { start = function() end }) end)
    assert.has_error(function() reg:register("c", {}) end)
    assert.is_nil(reg:get("zz"))
    assert.is_nil(reg:get(nil))
  end)
end)
