-- grok_spec.lua - functional specs of the `grok` model (agents-api.md §6.4, issue 5) against
-- the real binary and a fake xAI realtime server (spec/fixtures/upstream/grok_fake.py,
-- python3-websockets under /usr/bin/python3, started here on 127.0.0.1), one `it` per
-- acceptance point:
--   1. text prompt: request-started, the realtime messages verbatim (first response.created,
--      last response.done), request-ended; the fake saw the bearer key, session.update with
--      the documented fields, conversation.item.create and response.create;
--   2. audio prompt: the fake receives exactly the audio sent, then commit and
--      response.create; with model openai the same prompt is iterate:ai:error
--      unsupported_input;
--   3. the POST returns 204 before the answer; two prompts reuse one connection; a drop
--      mid-answer cancels the request and the next prompt reconnects; interrupt and cancel
--      send response.cancel; an idle connection is closed and reopened;
--   4. faults (refused, 401, no session.updated, invalid JSON, stall, error message): each
--      ends with request-cancelled reason "error" and a one-line message, the server stays
--      up and the next prompt works;
--   5. openai -> grok -> openai keeps the history (checked in what each fake receives).
-- Must not: reach a real upstream (XAI_* and OPENAI_* are set to the fakes or scrubbed),
-- sleep fixed times, or leave processes behind.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")
local U = require("spec.support.upstream")

local T = S.T

-- Servers of this file run with XAI_* / OPENAI_* taken from opts.env only (server.lua
-- removes them from the environment it inherits). Their logs must also hold no "still held"
-- (a connection kept past shutdown) and no error line.
local start_server = S.start
local LOG_MARKS = { "still held", " error " }

local function stop_server(srv, secret)
  if not srv then
    return
  end
  srv:stop()
  local ok, err = pcall(srv.assert_clean_log, srv, { LOG_MARKS[1], LOG_MARKS[2], secret })
  srv:cleanup()
  assert(ok, err)
end

local function with_server(opts, fn)
  S.with_server(opts, fn, LOG_MARKS)
end

-- event helpers --------------------------------------------------------------------

local function grok_payloads(evs, R)
  local out = {}
  local on = false
  for _, e in ipairs(evs) do
    if e.type == T.started then
      on = e.offset == R
    elseif on and e.type == T.grok then
      out[#out + 1] = e.payload
    end
  end
  return out
end

local function assert_error_end(e, pattern)
  assert.equal(T.cancelled, e.type)
  assert.equal("error", e.payload.reason)
  local msg = e.payload.message
  assert.is_string(msg)
  assert.falsy(msg:find("\n"), msg)
  assert.truthy(msg:find(pattern), msg)
end

local PCM = {}
for i = 0, 4799 do
  PCM[#PCM + 1] = string.char((i * 37 + 11) % 256)
end
PCM = table.concat(PCM)

local function b64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return (s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do
      r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0")
    end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then
      return ""
    end
    local c = 0
    for i = 1, 6 do
      c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0)
    end
    return chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1]
end

-- specs --------------------------------------------------------------------------

describe("grok model against the fake realtime server", function()
  local grok, openai, srv
  setup(function()
    grok = U.start("grok")
    openai = U.start("openai", { pace_ms = 1 })
    srv = start_server({
      storage = "memory",
      env = { XAI_API_KEY = "xai-test-key", XAI_REALTIME_URL = grok.url, OPENAI_API_KEY = "sk-test",
        OPENAI_BASE_URL = openai.base },
      agents = { models = { grok = { ready_timeout_ms = 1500, response_timeout_ms = 1500 } } },
    })
  end)
  teardown(function()
    stop_server(srv, "xai-test-key")
    if grok then
      grok:stop()
    end
    if openai then
      openai:stop()
    end
  end)

  for round = 1, 2 do
    it("answers a text prompt with the realtime messages verbatim (round " .. round .. ")", function()
      local p = "grok/text" .. round
      local marker = "hello grok round " .. round
      assert.equal(204, srv:post(p, T.config, { model = "grok" }))
      local evs, e, R = srv:prompt(p, T.user, { content = marker })
      assert.equal(T.ended, e.type)
      local types = {}
      for _, ev in ipairs(evs) do
        types[#types + 1] = ev.type
      end
      assert.equal(T.config, types[1])
      assert.equal(T.user, types[2])
      assert.equal(T.started, types[3])
      assert.equal(R, evs[3].offset)
      assert.same({ model = "grok" }, evs[3].payload)
      assert.equal(T.ended, types[#types])
      for i = 4, #types - 1 do
        assert.equal(T.grok, types[i])
      end
      local msgs = grok_payloads(evs, R)
      assert.equal("response.created", msgs[1].type)
      assert.equal("response.done", msgs[#msgs].type)
      assert.equal("completed", msgs[#msgs].response.status)
      assert.is_number(msgs[#msgs].response.usage.total_tokens)
      local text = {}
      for _, m in ipairs(msgs) do
        -- set-up messages are not part of the answer
        assert.are_not.equal("conversation.created", m.type)
        assert.are_not.equal("session.updated", m.type)
        if m.type == "response.output_audio_transcript.delta" then
          text[#text + 1] = m.delta
        end
      end
      assert.equal("You said: " .. marker, table.concat(text))
      -- verbatim: the stored payload keeps the fake's key order
      local _, body = srv:request("GET", "/agents/" .. p)
      assert.truthy(body:find('"payload":{"type":"response.created","event_id":"event_', 1, true), body)
      -- what the fake saw
      local conn = grok:conn_of(marker)
      assert.is_number(conn)
      local c = grok:record(conn, "connect")
      assert.equal("Bearer xai-test-key", c.authorization)
      assert.equal("/v1/realtime", c.path)
      local seen = grok:messages(conn)
      assert.equal("session.update", seen[1].msg.type)
      local s = seen[1].msg.session
      -- what the original sent (issue 12, item 19)
      assert.equal("ara", s.voice)
      assert.equal("You are a helpful voice assistant. Keep your responses conversational and concise since "
        .. "they will be spoken aloud.", s.instructions)
      assert.same({ type = "audio/pcm", rate = 48000 }, s.audio.input.format)
      assert.same({ type = "audio/pcm", rate = 48000 }, s.audio.output.format)
      assert.same({ type = "server_vad", threshold = 0.5, prefix_padding_ms = 300, silence_duration_ms = 500,
        create_response = true }, s.turn_detection)
      assert.same({ model = "whisper-large-v3-turbo" }, s.input_audio_transcription)
      assert.equal("conversation.item.create", seen[2].msg.type)
      assert.same({ type = "message", role = "user", content = { { type = "input_text", text = marker } } },
        seen[2].msg.item)
      assert.equal("response.create", seen[3].msg.type)
      assert.equal(3, #seen)
    end)
  end

  it("sends audio prompts byte for byte; openai refuses audio with unsupported_input", function()
    local p = "grok/audio"
    local audio = b64(PCM)
    assert.equal(204, srv:post(p, T.config, { model = "grok" }))
    local evs, e, R = srv:prompt(p, T.audio, { audio = audio })
    assert.equal(T.ended, e.type)
    local conn = grok:conn_of(audio:sub(1, 40))
    assert.is_number(conn)
    local seen = grok:messages(conn)
    local i
    for k, m in ipairs(seen) do
      if m.msg.type == "input_audio_buffer.append" then
        i = k
      end
    end
    assert.is_number(i)
    assert.equal(audio, seen[i].msg.audio)
    assert.equal("input_audio_buffer.commit", seen[i + 1].msg.type)
    assert.equal("response.create", seen[i + 2].msg.type)
    assert.equal(i + 2, #seen)
    -- the fake's transcript of the user audio arrived within the request
    local got = false
    for _, m in ipairs(grok_payloads(evs, R)) do
      if m.type == "conversation.item.input_audio_transcription.completed" then
        got = m.transcript == #PCM .. " bytes of audio"
      end
    end
    assert.is_true(got)

    local po = "grok/audio-openai"
    assert.equal(204, srv:post(po, T.config, { model = "openai" }))
    assert.equal(204, srv:post(po, T.audio, { audio = audio }))
    local oe = srv:wait_count(po, T.ai_error, 1, "iterate:ai:error")
    local err = S.of_type(oe, T.ai_error)[1].payload
    assert.equal("unsupported_input", err.error)
    assert.equal("openai", err.model)
    assert.equal("audio", err.inputType)
    assert.equal(0, S.count(oe, T.started))
  end)

  it("returns 204 before the answer, reuses one connection, reconnects after a drop", function()
    local p = "grok/reuse"
    grok:control("pace=40")
    assert.equal(204, srv:post(p, T.config, { model = "grok" }))
    assert.equal(204, srv:post(p, T.user, { content = "first reuse prompt with several words in it" }))
    -- the POST came back while the paced answer (>= 10 messages x 40 ms) is still running
    local now = srv:events(p)
    assert.equal(0, S.count(now, T.ended))
    local evs = srv:wait_count(p, T.ended, 1, "the first answer")
    grok:control("pace=5")
    assert.truthy(S.count(evs, T.grok) > 0)
    local conns = grok:connects()
    local _, e2 = srv:prompt(p, T.user, { content = "second reuse prompt" })
    assert.equal(T.ended, e2.type)
    assert.equal(conns, grok:connects())
    local c1 = grok:conn_of("first reuse prompt")
    assert.equal(c1, grok:conn_of("second reuse prompt"))

    -- the fake drops the socket mid-answer
    local _, e3 = srv:prompt(p, T.user, { content = "third [fault:drop]" })
    assert_error_end(e3, "closed")
    assert.truthy(srv:alive())
    local _, e4 = srv:prompt(p, T.user, { content = "fourth after the drop" })
    assert.equal(T.ended, e4.type)
    local c4 = grok:conn_of("fourth after the drop")
    assert.are_not.equal(c1, c4)
  end)

  it("sends response.cancel upstream on interrupt and on cancel", function()
    local p = "grok/interrupt"
    assert.equal(204, srv:post(p, T.config, { model = "grok" }))
    local _, e0 = srv:prompt(p, T.user, { content = "warm up the connection" })
    assert.equal(T.ended, e0.type)
    grok:control("pace=200")
    assert.equal(204, srv:post(p, T.user, { content = "slow answer to interrupt" }))
    srv:wait_events(p, function(x)
      local ps = S.of_type(x, T.grok)
      return #ps > 0 and ps[#ps].payload.type == "response.created"
        and S.count(x, T.started) == 2
    end, "the slow answer to start")
    grok:control("pace=5")
    local _, e2 = srv:prompt(p, T.user, { content = "the interrupting prompt" })
    assert.equal(T.ended, e2.type)
    local evs = srv:events(p)
    assert.equal(1, S.count(evs, T.interrupted))
    local conn = grok:conn_of("slow answer to interrupt")
    local cancels = 0
    for _, m in ipairs(grok:messages(conn)) do
      if m.msg.type == "response.cancel" then
        cancels = cancels + 1
      end
    end
    assert.equal(1, cancels)

    grok:control("pace=200")
    assert.equal(204, srv:post(p, T.user, { content = "slow answer to cancel" }))
    srv:wait_events(p, function(x)
      local ps = S.of_type(x, T.grok)
      return S.count(x, T.started) == 4 and ps[#ps].payload.type == "response.created"
    end, "the slow answer to start")
    grok:control("pace=5")
    assert.equal(204, srv:post(p, T.cancel, {}))
    local ce = srv:wait_events(p, function(x)
      local c = S.of_type(x, T.cancelled)
      return #c > 0 and c[#c].payload.reason == "cancelled"
    end, "request-cancelled")
    assert.truthy(ce)
    S.wait_for(function()
      local n = 0
      for _, m in ipairs(grok:messages(conn)) do
        if m.msg.type == "response.cancel" then
          n = n + 1
        end
      end
      return n == 2
    end, 10, "the second response.cancel")
    -- the connection still serves the next prompt
    local _, e5 = srv:prompt(p, T.user, { content = "after the cancel" })
    assert.equal(T.ended, e5.type)
    assert.equal(conn, grok:conn_of("after the cancel"))
  end)

  it("keeps a cancelled response's late messages out of the next answer", function()
    local p = "grok/late"
    assert.equal(204, srv:post(p, T.config, { model = "grok" }))
    local _, e0 = srv:prompt(p, T.user, { content = "warm up late" })
    assert.equal(T.ended, e0.type)
    local conn = grok:conn_of("warm up late")
    assert.equal(204, srv:post(p, T.user, { content = "slow start [fault:latecreated]" }))
    -- interrupt while the fake holds back response.created of the first answer
    S.wait_for(function()
      local seen = grok:messages(conn)
      local last = seen[#seen]
      return last and last.msg.type == "response.create" and seen[#seen - 1].raw:find("slow start", 1, true)
    end, 10, "the fake to receive the slow response.create")
    local evs, e2, R2 = srv:prompt(p, T.user, { content = "the prompt after the late one" })
    assert.equal(T.ended, e2.type)
    assert.equal(1, S.count(evs, T.interrupted))
    local msgs = grok_payloads(evs, R2)
    assert.equal("response.created", msgs[1].type)
    local id = msgs[1].response.id
    assert.equal("response.done", msgs[#msgs].type)
    assert.equal("completed", msgs[#msgs].response.status)
    assert.equal(id, msgs[#msgs].response.id)
    for _, m in ipairs(msgs) do
      local rid = m.response_id or (m.response and m.response.id)
      if rid then
        assert.equal(id, rid)
      end
    end
    local text = {}
    for _, m in ipairs(msgs) do
      if m.type == "response.output_audio_transcript.delta" then
        text[#text + 1] = m.delta
      end
    end
    assert.equal("You said: the prompt after the late one", table.concat(text))
    -- the fake saw the cancel, tagged with our event id
    local cancel
    for _, m in ipairs(grok:messages(conn)) do
      if m.msg.type == "response.cancel" then
        cancel = m.msg
      end
    end
    assert.truthy(cancel and cancel.event_id:match("^cancel_%d+$"))
  end)

  local faults = {
    { name = "handshake rejected (401)", control = "next=401", pattern = "HTTP 401" },
    { name = "no session.updated", control = "next=nosession", pattern = "no session.updated" },
    { name = "invalid JSON message", marker = "[fault:badjson]", pattern = "invalid JSON" },
    { name = "stall past the timeout", marker = "[fault:stall]", pattern = "timed out" },
    { name = "error message", marker = "[fault:error]", pattern = "Simulated upstream error" },
  }
  for i, f in ipairs(faults) do
    it("ends the request on a fault: " .. f.name, function()
      local p = "grok/fault" .. i
      assert.equal(204, srv:post(p, T.config, { model = "grok" }))
      if f.control then
        grok:control(f.control)
      end
      local _, e = srv:prompt(p, T.user, { content = "prompt " .. (f.marker or "") })
      assert_error_end(e, f.pattern)
      assert.truthy(srv:alive())
      local _, e2 = srv:prompt(p, T.user, { content = "recovered after " .. f.name })
      assert.equal(T.ended, e2.type)
    end)
  end

  it("keeps the history across openai -> grok -> openai", function()
    local p = "grok/switch"
    assert.equal(204, srv:post(p, T.config, { model = "openai" }))
    local _, e1 = srv:prompt(p, T.user, { content = "alpha question for openai" })
    assert.equal(T.ended, e1.type)
    local oreqs = openai:records("request")
    local answer1 = table.concat(S.deltas(srv:events(p))) -- what openai answered, as the history holds it
    assert.truthy(#answer1 > 0)

    assert.equal(204, srv:post(p, T.config, { model = "grok" }))
    local _, e2 = srv:prompt(p, T.user, { content = "beta question for grok" })
    assert.equal(T.ended, e2.type)
    local conn = grok:conn_of("beta question for grok")
    local items = {}
    for _, m in ipairs(grok:messages(conn)) do
      if m.msg.type == "conversation.item.create" then
        items[#items + 1] = { m.msg.item.role, m.msg.item.content[1].text }
      end
    end
    assert.same({
      { "user", "alpha question for openai" },
      { "assistant", answer1 },
      { "user", "beta question for grok" },
    }, items)

    assert.equal(204, srv:post(p, T.audio, { audio = b64(PCM:sub(1, 960)) }))
    srv:wait_count(p, T.ended, 3, "the audio answer")

    assert.equal(204, srv:post(p, T.config, { model = "openai" }))
    local _, e3 = srv:prompt(p, T.user, { content = "gamma question for openai" })
    assert.equal(T.ended, e3.type)
    local reqs = openai:records("request")
    assert.equal(#oreqs + 1, #reqs)
    local input = reqs[#reqs].body.input
    local seen = {}
    for _, m in ipairs(input) do
      seen[#seen + 1] = { m.role, m.content[1].text }
    end
    assert.same({
      { "user", "alpha question for openai" },
      { "assistant", answer1 },
      { "user", "beta question for grok" },
      { "assistant", "You said: beta question for grok" },
      { "user", "960 bytes of audio" },
      { "assistant", "You said: 960 bytes of audio" },
      { "user", "gamma question for openai" },
    }, seen)
    local answer3 = {}
    local after_gamma = false
    for _, e in ipairs(srv:events(p)) do
      if e.type == T.user and e.payload.content == "gamma question for openai" then
        after_gamma = true
      elseif after_gamma and e.type == T.sse and e.payload.part.type == "text-delta" then
        answer3[#answer3 + 1] = e.payload.part.delta
      end
    end

    -- back to grok on the connection still open: only the turns it missed are sent
    assert.equal(204, srv:post(p, T.config, { model = "grok" }))
    local _, e4 = srv:prompt(p, T.user, { content = "delta question for grok" })
    assert.equal(T.ended, e4.type)
    assert.equal(conn, grok:conn_of("delta question for grok"))
    local tail = {}
    local from_gamma = false
    for _, m in ipairs(grok:messages(conn)) do
      if m.msg.type == "conversation.item.create" then
        local it = { m.msg.item.role, m.msg.item.content[1].text }
        if it[2] == "gamma question for openai" then
          from_gamma = true
        end
        if from_gamma then
          tail[#tail + 1] = it
        end
      end
    end
    assert.same({
      { "user", "gamma question for openai" },
      { "assistant", table.concat(answer3) },
      { "user", "delta question for grok" },
    }, tail)
  end)
end)

-- Issue 12, item 19: the session settings are configurable, and the user's spoken turn
-- joins the history through the server's transcription - also when it arrives after the
-- answer.
describe("grok session settings and transcription", function()
  local grok, openai
  setup(function()
    grok = U.start("grok")
    openai = U.start("openai", { pace_ms = 1 })
  end)
  teardown(function()
    if grok then
      grok:stop()
    end
    if openai then
      openai:stop()
    end
  end)

  local function env()
    return { XAI_API_KEY = "xai-test-key", XAI_REALTIME_URL = grok.url, OPENAI_API_KEY = "sk-test",
      OPENAI_BASE_URL = openai.base }
  end

  -- The user turns openai receives for the next prompt on p.
  local function openai_user_turns(srv, p)
    assert.equal(204, srv:post(p, T.config, { model = "openai" }))
    local _, e = srv:prompt(p, T.user, { content = "and now in text" })
    assert.equal(T.ended, e.type)
    local reqs = openai:records("request")
    local out = {}
    for _, m in ipairs(reqs[#reqs].body.input) do
      if m.role == "user" then
        out[#out + 1] = m.content[1].text
      end
    end
    return out
  end

  it("waits for a transcription that comes after the answer, and the turn joins the history", function()
    with_server({ storage = "memory", env = env(),
      agents = { models = { grok = { ready_timeout_ms = 1500, response_timeout_ms = 1500 } } } }, function(srv)
      local p = "grok/late-transcript"
      assert.equal(204, srv:post(p, T.config, { model = "grok" }))
      grok:control("transcript=late")
      local evs, e, R = srv:prompt(p, T.audio, { audio = b64(PCM:sub(1, 1440)) })
      grok:control("transcript=now")
      assert.equal(T.ended, e.type)
      local kinds = {}
      for _, m in ipairs(grok_payloads(evs, R)) do
        kinds[#kinds + 1] = m.type
      end
      -- after response.done, before request-ended
      assert.equal("response.done", kinds[#kinds - 1])
      assert.equal("conversation.item.input_audio_transcription.completed", kinds[#kinds])
      assert.same({ "1440 bytes of audio", "and now in text" }, openai_user_turns(srv, p))
    end)
  end)

  it("sends the configured settings; without transcription the spoken turn stays out of the history", function()
    with_server({ storage = "memory", env = env(), agents = { models = { grok = {
      ready_timeout_ms = 1500, response_timeout_ms = 1500, instructions = "Be brief.", voice = "rex",
      turn_detection = { threshold = 0.8 }, input_audio_transcription = false,
    } } } }, function(srv)
      local p = "grok/settings"
      assert.equal(204, srv:post(p, T.config, { model = "grok" }))
      local own = {} -- audio no other spec sends (PCM repeats every 256 bytes: a slice of it would not do)
      for i = 1, 480 do
        own[i] = string.char((i * 53 + 7) % 256)
      end
      local audio = b64(table.concat(own))
      local evs, e, R = srv:prompt(p, T.audio, { audio = audio })
      assert.equal(T.ended, e.type)
      local s = grok:messages(grok:conn_of(audio:sub(1, 40)))[1].msg.session
      assert.equal("Be brief.", s.instructions)
      assert.equal("rex", s.voice)
      assert.same({ type = "server_vad", threshold = 0.8, prefix_padding_ms = 300, silence_duration_ms = 500,
        create_response = true }, s.turn_detection)
      assert.is_nil(s.input_audio_transcription)
      for _, m in ipairs(grok_payloads(evs, R)) do
        assert.are_not.equal("conversation.item.input_audio_transcription.completed", m.type)
      end
      assert.same({ "and now in text" }, openai_user_turns(srv, p))
    end)
  end)

  it("turns server VAD off with turn_detection = false", function()
    with_server({ storage = "memory", env = env(), agents = { models = { grok = {
      ready_timeout_ms = 1500, response_timeout_ms = 1500, turn_detection = false } } } }, function(srv)
      local p = "grok/no-vad"
      assert.equal(204, srv:post(p, T.config, { model = "grok" }))
      local _, e = srv:prompt(p, T.user, { content = "no vad please" })
      assert.equal(T.ended, e.type)
      local s = grok:messages(grok:conn_of("no vad please"))[1].msg.session
      assert.equal(require("cjson").null, s.turn_detection)
    end)
  end)

  it("refuses to start on a setting of the wrong type, naming it", function()
    local ok, err = pcall(S.start, { agents = { models = { grok = { turn_detection = { threshold = "high" } } } } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("agents.models.grok.turn_detection.threshold must be a number", 1, true), err)
  end)
end)

describe("grok model connection management", function()
  it("cancels the request when XAI_API_KEY is missing", function()
    with_server({ storage = "memory", env = { XAI_REALTIME_URL = "ws://127.0.0.1:1/" } }, function(srv)
      assert.equal(204, srv:post("k/1", T.config, { model = "grok" }))
      local _, e = srv:prompt("k/1", T.user, { content = "no key" })
      assert_error_end(e, "XAI_API_KEY")
      assert.truthy(srv:alive())
    end)
  end)

  it("reports a refused connection and stays up", function()
    local port = U.free_port()
    with_server({
      storage = "memory",
      env = { XAI_API_KEY = "k", XAI_REALTIME_URL = ("ws://127.0.0.1:%d/v1/realtime"):format(port) },
      agents = { models = { grok = { connect_timeout_ms = 2000 } } },
    }, function(srv)
      assert.equal(204, srv:post("r/1", T.config, { model = "grok" }))
      local _, e = srv:prompt("r/1", T.user, { content = "anyone there?" })
      assert_error_end(e, "ECONNREFUSED")
      assert.truthy(srv:alive())
      local _, e2 = srv:prompt("r/1", T.user, { content = "still nobody?" })
      assert_error_end(e2, "ECONNREFUSED")
    end)
  end)

  it("closes an idle connection and reopens it on the next prompt", function()
    local grok = U.start("grok")
    local ok, err = pcall(with_server, {
      storage = "memory",
      env = { XAI_API_KEY = "k", XAI_REALTIME_URL = grok.url },
      agents = { models = { grok = { idle_timeout_ms = 300 } } },
    }, function(srv)
      assert.equal(204, srv:post("i/1", T.config, { model = "grok" }))
      local _, e = srv:prompt("i/1", T.user, { content = "before idle" })
      assert.equal(T.ended, e.type)
      local c1 = grok:conn_of("before idle")
      S.wait_for(function()
        return grok:record(c1, "close")
      end, 10, "the idle close")
      local _, e2 = srv:prompt("i/1", T.user, { content = "after idle" })
      assert.equal(T.ended, e2.type)
      assert.are_not.equal(c1, grok:conn_of("after idle"))
    end)
    grok:stop()
    assert(ok, err)
  end)

  it("closes every connection at shutdown without leaks", function()
    local grok = U.start("grok")
    local srv = start_server({
      storage = "memory",
      env = { XAI_API_KEY = "k", XAI_REALTIME_URL = grok.url },
    })
    local ok, err = pcall(function()
      for i = 1, 3 do
        local p = "s/" .. i
        assert.equal(204, srv:post(p, T.config, { model = "grok" }))
        local _, e = srv:prompt(p, T.user, { content = "open " .. i })
        assert.equal(T.ended, e.type)
      end
      assert.equal(3, grok:connects())
    end)
    stop_server(srv) -- asserts no leak report in the log
    S.wait_for(function()
      local closes = 0
      for _, r in ipairs(grok:records()) do
        if r.event == "close" then
          closes = closes + 1
        end
      end
      return closes == 3
    end, 10, "the fake to see 3 closes")
    grok:stop()
    assert(ok, err)
  end)
end)
