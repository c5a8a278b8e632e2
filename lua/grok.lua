--- grok.lua - the `grok` model: xAI's realtime voice API over a WebSocket (agents-api.md §6.4).
--
-- Provides: grok.new(ds) -> a model object for the registry (models.lua interface) that
-- accepts text and audio prompts, and the pure helpers session_update / history_items used
-- by the specs. Per stream path it keeps one connection (in ctx.scratch, which is per path
-- and model), opened on the first Grok prompt:
--   * connect to the URL with `Authorization: Bearer <key>`; after the server's first
--     message (conversation.created or session.created) send session.update
--     (instructions, voice, 48 kHz PCM in and out, server VAD); ready on session.updated
--     within ready_timeout_ms. Set-up messages are never part of an answer;
--   * when the session starts on a path that already has a conversation (e.g. after
--     answers from `openai`), the text history is sent first as conversation items; turns
--     added by other models while the connection stayed open are sent the same way;
--   * text prompt: conversation.item.create (input_text) + response.create; audio prompt:
--     input_audio_buffer.append {audio} + input_audio_buffer.commit + response.create;
--   * every server message of the request is appended verbatim (the JSON text as
--     received) as iterate:grok:response:sse; the request ends at response.done, or fails
--     (the loop appends request-cancelled reason "error") on an `error` message, invalid
--     JSON, the socket closing, or no message for response_timeout_ms;
--   * interrupt and cancel send response.cancel upstream; the connection stays for the
--     next prompt; a dropped connection is reopened on the next prompt; an idle one is
--     closed after idle_timeout_ms.
-- Configuration (config.lua agents.models.grok): url, model (sent as ?model=), api_key_env
-- (or api_key), voice, instructions, idle_timeout_ms, ready_timeout_ms, connect_timeout_ms,
-- response_timeout_ms, turn_detection. Environment: XAI_API_KEY (via api_key_env) and
-- XAI_REALTIME_URL, which overrides url.
-- Must not: append lifecycle events (llm_loop.lua does), log or return the API key.
local models = require("models")
local E = require("events")

local M = {}

-- The defaults of agents.models.grok (boot.lua fills them into the config from here):
-- what the original project sent in session.update.
local DEFAULTS = {
  url = "wss://api.x.ai/v1/realtime",
  api_key_env = "XAI_API_KEY",
  voice = "ara",
  instructions = "You are a helpful voice assistant. Keep your responses conversational and concise since they will be spoken aloud.",
  -- the server transcribes the user's audio (conversation.item.input_audio_transcription.completed),
  -- so a spoken turn joins the history as text; false: no transcription
  input_audio_transcription = { model = "whisper-large-v3-turbo" },
  -- server voice activity detection; false sends null (the client decides turns)
  turn_detection = {
    type = "server_vad",
    threshold = 0.5,
    prefix_padding_ms = 300,
    silence_duration_ms = 500,
    create_response = true,
  },
  idle_timeout_ms = 300000,
  ready_timeout_ms = 10000,
  connect_timeout_ms = 10000,
  response_timeout_ms = 60000,
  -- after response.done, how long an audio prompt waits for its transcription
  transcription_timeout_ms = 5000,
}
M.DEFAULTS = DEFAULTS

-- The type of each key of agents.models.grok (boot.lua checks them at start-up). The two
-- nested tables are sent upstream as given: keys beyond those listed pass unchecked.
M.SCHEMA = {
  url = "string",
  model = "string",
  api_key_env = "string",
  api_key = "string",
  voice = "string",
  instructions = "string",
  input_audio_transcription = { or_false = true, open = true, fields = { model = "string", language = "string",
    prompt = "string" } },
  turn_detection = { or_false = true, open = true, fields = { type = "string", threshold = "number",
    prefix_padding_ms = "count", silence_duration_ms = "count", create_response = "boolean",
    interrupt_response = "boolean" } },
  idle_timeout_ms = "count",
  ready_timeout_ms = "count",
  connect_timeout_ms = "count",
  response_timeout_ms = "count",
  transcription_timeout_ms = "count",
}

local cfg_get = models.settings(DEFAULTS)
local one_line = models.one_line

---Whether the session asks the server to transcribe the user's audio.
function M.transcribes(cfg)
  return type(cfg_get(cfg, "input_audio_transcription")) == "table"
end

---The session.update message (a table for ds.json.encode).
function M.session_update(ds, cfg)
  local obj = ds.json.obj
  local fmt = function()
    return obj("type", "audio/pcm", "rate", 48000)
  end
  local td = cfg_get(cfg, "turn_detection")
  local session = obj(
    "instructions", cfg_get(cfg, "instructions"),
    "voice", cfg_get(cfg, "voice"),
    "audio", obj("input", obj("format", fmt()), "output", obj("format", fmt())),
    "turn_detection", type(td) == "table" and td or ds.json.null) -- (a plain table encodes with sorted keys)
  local tr = cfg_get(cfg, "input_audio_transcription")
  if type(tr) == "table" then
    session.input_audio_transcription = tr
  end
  return obj("type", "session.update", "session", session)
end

---conversation.item.create messages for history turns from..to (text turns only).
function M.history_items(ds, msgs, from, to)
  local obj, arr = ds.json.obj, ds.json.array
  local out = {}
  for i = from, to do
    local m = msgs[i]
    if m and type(m.text) == "string" and m.text ~= "" then
      local content
      if m.role == "assistant" then
        content = obj("type", "output_text", "text", m.text)
      else
        content = obj("type", "input_text", "text", m.text)
      end
      out[#out + 1] = obj("type", "conversation.item.create", "item",
        obj("type", "message", "role", m.role == "assistant" and "assistant" or "user", "content", arr(content)))
    end
  end
  return out
end

local function with_model(url, model)
  if type(model) ~= "string" or model == "" or url:find("[?&]model=") then
    return url
  end
  return url .. (url:find("?", 1, true) and "&" or "?") .. "model=" .. model
end

local function send(ds, ws, msg)
  local ok, err, code = ws:send(ds.json.encode(msg))
  if not ok then
    return nil, "Grok connection lost while sending: " .. one_line(err) .. " (" .. tostring(code) .. ")"
  end
  return true
end

local function close_conn(scratch, conn)
  if scratch.conn == conn then
    scratch.conn = nil
  end
  if conn and conn.ws then
    conn.ws:close()
    conn.ws = nil
  end
end

local function decode(ds, raw)
  local ok, msg, err = pcall(ds.json.decode, raw)
  if not ok then
    return nil, msg
  end
  if type(msg) ~= "table" then
    return nil, err or "not a JSON object"
  end
  return msg
end

-- Opens and sets up a connection (yields). Returns conn or nil, message.
local function open(ds, cfg, key)
  local url = with_model(os.getenv("XAI_REALTIME_URL") or cfg_get(cfg, "url"), cfg.model)
  local ws, err, code, status = ds.ws.connect({
    url = url,
    headers = { Authorization = "Bearer " .. key },
    timeout_ms = math.tointeger(cfg_get(cfg, "connect_timeout_ms")) or 10000,
  })
  if not ws then
    if code == "EHANDSHAKE" and status then
      return nil, ("Grok handshake rejected: HTTP %d"):format(status)
    end
    return nil, ("Grok connection failed: %s (%s)"):format(one_line(err), tostring(code))
  end
  -- closes the socket if set-up fails or the task is cancelled meanwhile
  local guard <close> = setmetatable({ ws = ws }, {
    __close = function(g)
      if g.ws then
        g.ws:close()
      end
    end,
  })
  local ready_ms = math.tointeger(cfg_get(cfg, "ready_timeout_ms")) or 10000
  local deadline = ds.now_ms() + ready_ms
  -- The next set-up message before the deadline, or nil and the failure; `waiting` names
  -- what did not come in time.
  local function next_msg(waiting)
    local left = deadline - ds.now_ms()
    local raw, rerr, rcode
    if left > 0 then
      raw, rerr, rcode = ws:receive(math.floor(left))
    else
      rcode = "timeout"
    end
    if raw then
      return raw
    elseif rcode == "timeout" then
      return nil, ("Grok session not ready: no %s within %d ms"):format(waiting, ready_ms)
    end
    return nil, ("Grok connection closed during set-up: %s (%s)"):format(one_line(rerr), tostring(rcode))
  end
  local raw, rerr = next_msg("message from the server")
  if not raw then
    return nil, rerr
  end
  local ok, serr = send(ds, ws, M.session_update(ds, cfg))
  if not ok then
    return nil, serr
  end
  while true do
    raw, rerr = next_msg("session.updated")
    if not raw then
      return nil, rerr
    end
    local msg, derr = decode(ds, raw)
    if not msg then
      return nil, "Grok sent invalid JSON during set-up: " .. one_line(derr)
    end
    if msg.type == "session.updated" then
      break
    elseif msg.type == "error" then
      local e = type(msg.error) == "table" and msg.error.message or raw
      return nil, "Grok rejected the session: " .. one_line(e)
    end
  end
  guard.ws = nil
  ws:set_idle(math.tointeger(cfg_get(cfg, "idle_timeout_ms")) or 0)
  return { ws = ws, known = 0, unacked = 0, stale = {}, cancel_ids = {}, cancels = 0, create_ids = {}, creates = 0 }
end

-- Responses are created in the order of our response.create messages, so while more than
-- one is unacknowledged, a response.created belongs to an older (cancelled) request: its
-- id is remembered as stale and its messages are kept out of the current answer.
-- Returns true when msg belongs to no current answer.
local function track(conn, msg, rid)
  if msg.type == "response.created" then
    conn.unacked = math.max(0, (conn.unacked or 0) - 1)
    if conn.unacked > 0 then
      if rid then
        conn.stale[rid] = true
      end
      return true
    end
    return false
  end
  return rid ~= nil and conn.stale[rid] == true
end

-- An `error` caused by our own response.cancel (the response had already finished) is
-- not a failure of the current request.
local function cancel_error(conn, msg)
  local e = type(msg.error) == "table" and msg.error or {}
  if e.code == "response_cancel_not_active" then
    return true
  end
  return type(e.event_id) == "string" and conn.cancel_ids[e.event_id] == true
end

local function response_id(msg)
  if type(msg.response) == "table" and type(msg.response.id) == "string" then
    return msg.response.id
  end
  if type(msg.response_id) == "string" then
    return msg.response_id
  end
  return nil
end

---@param ds table the host module
function M.new(ds)
  local model = { inputs = { text = true, audio = true } }

  function model.start(_, ctx)
    local cfg = ctx.config or {}
    local key, env = models.api_key(cfg, DEFAULTS)
    if not key then
      return nil, ("Grok API key missing: set %s"):format(tostring(env))
    end
    local scratch = ctx.scratch
    local conn = scratch.conn
    if conn and (not conn.ws or conn.ws:state() ~= "open") then
      close_conn(scratch, conn) -- dropped or idle-closed: reopen below
      conn = nil
    end
    if not conn then
      local err
      conn, err = open(ds, cfg, key)
      if not conn then
        return nil, err
      end
      scratch.conn = conn
    end
    local ws = conn.ws
    -- whatever arrived between requests belongs to no answer
    while ws:state() == "open" do
      local raw = ws:receive(0)
      if not raw then
        break
      end
      local msg = decode(ds, raw)
      if msg then
        track(conn, msg, response_id(msg))
      end
    end
    if ws:state() ~= "open" then
      close_conn(scratch, conn)
      return nil, "Grok connection closed while idle; it is reopened on the next prompt"
    end

    -- the conversation so far that this session has not seen (the prompt is the last turn)
    local msgs = ctx.messages or {}
    local upto = #msgs
    local last = msgs[#msgs]
    if last and last.role == "user" then
      upto = upto - 1
    end
    for _, item in ipairs(M.history_items(ds, msgs, conn.known + 1, upto)) do
      local ok, err = send(ds, ws, item)
      if not ok then
        close_conn(scratch, conn)
        return nil, err
      end
    end
    local obj, arr = ds.json.obj, ds.json.array
    local prompt = ctx.prompt or {}
    local out
    if prompt.kind == "audio" then
      out = {
        obj("type", "input_audio_buffer.append", "audio", prompt.audio),
        obj("type", "input_audio_buffer.commit"),
        "response.create",
      }
    else
      out = {
        obj("type", "conversation.item.create", "item", obj("type", "message", "role", "user", "content",
          arr(obj("type", "input_text", "text", prompt.text or "")))),
        "response.create",
      }
    end
    for _, m in ipairs(out) do
      if m == "response.create" then
        conn.creates = conn.creates + 1
        local id = "create_" .. conn.creates
        conn.create_ids[id] = true
        conn.unacked = conn.unacked + 1
        m = obj("event_id", id, "type", "response.create")
      end
      local ok, err = send(ds, ws, m)
      if not ok then
        close_conn(scratch, conn)
        return nil, err
      end
    end
    ctx.grok = { conn = conn }

    local timeout = math.tointeger(cfg_get(cfg, "response_timeout_ms")) or 60000
    local current -- our response id, once response.created arrived
    local transcript = {}
    local heard = prompt.kind ~= "audio" or not M.transcribes(cfg) -- the user's turn as text, or none due
    while true do
      local raw, err, code = ws:receive(timeout)
      if not raw then
        close_conn(scratch, conn)
        if code == "timeout" then
          return nil, ("Grok response timed out: no message for %d ms"):format(timeout)
        end
        return nil, ("Grok connection closed mid-answer: %s (%s)"):format(one_line(err), tostring(code))
      end
      local msg, derr = decode(ds, raw)
      if not msg then
        close_conn(scratch, conn)
        return nil, "Grok sent invalid JSON: " .. one_line(derr)
      end
      local t = msg.type
      local rid = response_id(msg)
      -- messages of an earlier, cancelled response are not part of this answer
      local stale = track(conn, msg, rid)
      if not stale and type(t) == "string" and t:sub(1, 9) == "response." then
        if t == "response.created" then
          current = current or rid
        elseif (rid ~= nil and rid ~= current) or (rid == nil and not current) then
          stale = true
        end
      end
      if t == "error" then
        local e = type(msg.error) == "table" and msg.error or {}
        if type(e.event_id) == "string" and conn.create_ids[e.event_id] then
          -- a response.create was refused: no response.created will come for it
          conn.create_ids[e.event_id] = nil
          conn.unacked = math.max(0, conn.unacked - 1)
        end
        if cancel_error(conn, msg) then
          stale = true
        end
      end
      if not stale then
        local ok = ctx:append_raw(E.grok, raw, msg)
        if not ok then
          return nil, "cancelled"
        end
        if t == "response.output_audio_transcript.delta" and type(msg.delta) == "string" then
          transcript[#transcript + 1] = msg.delta
        elseif t == "conversation.item.input_audio_transcription.completed" then
          heard = true
        end
        if t == "response.done" then
          conn.known = #msgs + ((#transcript > 0) and 1 or 0)
          ctx.grok = nil
          local r = msg.response
          if type(r) == "table" and r.status == "failed" then
            local detail = type(r.status_details) == "table" and r.status_details.error or nil
            local m = type(detail) == "table" and detail.message or "response failed"
            return nil, "Grok response failed: " .. one_line(m)
          end
          if not heard then
            -- the transcription of the user's audio may come after the answer: it is the
            -- user's turn in the history, so the request waits for it (bounded)
            local wait = math.tointeger(cfg_get(cfg, "transcription_timeout_ms")) or 0
            local deadline = ds.now_ms() + wait
            while ws:state() == "open" do
              local left = deadline - ds.now_ms()
              if left <= 0 then
                ds.log.warn(("grok: no transcription of the audio prompt on %s (request %s) within %d ms")
                  :format(tostring(ctx.path), tostring(ctx.request_offset), wait))
                break
              end
              local late = ws:receive(left)
              if not late then
                break
              end
              local lm = decode(ds, late)
              if lm then
                track(conn, lm, response_id(lm))
                if lm.type == "conversation.item.input_audio_transcription.completed" then
                  ctx:append_raw(E.grok, late, lm)
                  break
                end
              end
            end
          end
          return
        elseif t == "error" then
          ctx.grok = nil
          local e = type(msg.error) == "table" and msg.error.message or raw
          return nil, "Grok error: " .. one_line(e)
        end
      end
    end
  end

  function model.cancel(_, ctx)
    local g = ctx.grok
    if not g or not g.conn or not g.conn.ws then
      return
    end
    ctx.grok = nil
    local conn = g.conn
    conn.cancels = conn.cancels + 1
    local id = "cancel_" .. conn.cancels
    conn.cancel_ids[id] = true
    conn.ws:send(ds.json.encode(ds.json.obj("event_id", id, "type", "response.cancel")))
    -- the session saw the prompt but the partial answer may be cut: resync from here
    conn.known = #(ctx.messages or {})
  end

  return model
end

return M
