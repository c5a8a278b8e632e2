--- openai.lua - the `openai` model: streams answers from the OpenAI Responses API (or any
-- Chat Completions server) into the path, as the parts of agents-api.md §6.3.
--
-- Provides: openai.new(ds) -> a model object for the registry (models.lua interface:
-- start(ctx) streams one request, cancel(ctx) aborts its upstream transfer at once), and
-- the pure helpers build_request / message_for used by the specs. For each request it
--   * POSTs {base_url}/responses (or {base_url}/chat/completions when api = "chat") with
--     the whole conversation history in order, an optional system prompt, stream: true;
--   * maps upstream events to parts: response-metadata, text-start, text-delta, text-end,
--     finish {reason, usage}; `error`/`response.failed` give an error part;
--   * returns nothing on success (the loop appends request-ended) or nil, "<one line>" on
--     any failure (the loop appends request-cancelled reason "error" with that message).
-- Configuration (config.lua agents.models.openai): model, base_url, api_key_env (or
-- api_key), system_prompt, api ("responses" | "chat"), connect_timeout_ms, timeout_ms,
-- stall_timeout_ms, max_output_tokens, temperature. Environment: OPENAI_API_KEY (via
-- api_key_env) and OPENAI_BASE_URL, which overrides base_url as OpenAI's SDKs do.
-- Must not: append lifecycle events (llm_loop.lua does), log or return the API key.
local models = require("models")

local M = {}

local DEFAULTS = {
  model = "gpt-4o",
  base_url = "https://api.openai.com/v1",
  api_key_env = "OPENAI_API_KEY",
  api = "responses",
  connect_timeout_ms = 10000,
  timeout_ms = 600000,
  stall_timeout_ms = 120000,
}

-- The type of each key of agents.models.openai (boot.lua checks them at start-up).
M.SCHEMA = {
  model = "string",
  base_url = "string",
  api_key_env = "string",
  api_key = "string",
  system_prompt = "string",
  api = { "responses", "chat" },
  connect_timeout_ms = "count",
  timeout_ms = "count",
  stall_timeout_ms = "count",
  max_output_tokens = "count",
  temperature = "number",
}

local cfg_get = models.settings(DEFAULTS)
local one_line = models.one_line

---The text of a message as the API expects it (audio turns have none).
local function text_of(m)
  if type(m.text) == "string" then
    return m.text
  end
  return nil
end

---Builds the conversation to send: history (which already ends with the prompt), plus the
---prompt when the history does not end with it.
---@return table[] list of {role, text}
function M.conversation(ctx)
  local out = {}
  for _, m in ipairs(ctx.messages or {}) do
    local t = text_of(m)
    if t and (m.role == "user" or m.role == "assistant") then
      out[#out + 1] = { role = m.role, text = t }
    end
  end
  local p = ctx.prompt
  if p and type(p.text) == "string" then
    local last = out[#out]
    if not (last and last.role == "user" and last.text == p.text) then
      out[#out + 1] = { role = "user", text = p.text }
    end
  end
  return out
end

-- The configured output limit and temperature on a request body; each API shape names the
-- token limit its own way (max_key).
local function with_limits(body, cfg, max_key)
  if cfg.max_output_tokens then
    body[max_key] = cfg.max_output_tokens
  end
  if cfg.temperature then
    body.temperature = cfg.temperature
  end
  return body
end

---The JSON body of a request (a Lua value for ds.json.encode) and its URL path.
---@return table body, string path
function M.build_request(ds, cfg, conv)
  local obj, arr = ds.json.obj, ds.json.array
  local system = cfg.system_prompt
  local body
  if cfg_get(cfg, "api") == "chat" then
    local msgs = arr()
    if type(system) == "string" and system ~= "" then
      msgs[#msgs + 1] = obj("role", "system", "content", system)
    end
    for _, m in ipairs(conv) do
      msgs[#msgs + 1] = obj("role", m.role, "content", m.text)
    end
    body = obj("model", cfg_get(cfg, "model"), "messages", msgs, "stream", true, "stream_options",
      obj("include_usage", true))
    return with_limits(body, cfg, "max_tokens"), "/chat/completions"
  end
  local input = arr()
  if type(system) == "string" and system ~= "" then
    input[#input + 1] = obj("role", "system", "content", arr(obj("type", "input_text", "text", system)))
  end
  for _, m in ipairs(conv) do
    local kind = m.role == "assistant" and "output_text" or "input_text"
    input[#input + 1] = obj("role", m.role, "content", arr(obj("type", kind, "text", m.text)))
  end
  body = obj("model", cfg_get(cfg, "model"), "input", input, "stream", true)
  return with_limits(body, cfg, "max_output_tokens"), "/responses"
end

-- What a transport failure code of ds.http says ahead of the transport's own message.
local FAILURE = {
  ECONNREFUSED = "OpenAI connection refused: ",
  EDNS = "OpenAI DNS lookup failed: ",
  ETLS = "OpenAI TLS error: ",
  ETIMEDOUT = "OpenAI request timed out: ",
  ESTALLED = "OpenAI stream stalled: ",
  ECLOSED = "OpenAI connection closed mid-answer: ",
  EPROTO = "OpenAI sent malformed data: ",
}

---One-line message for a transport failure code of ds.http.
function M.message_for(code, msg)
  if code == "closed" or code == "ECANCELED" then
    return "OpenAI request cancelled"
  end
  return (FAILURE[code] or "OpenAI request failed: ") .. one_line(msg)
end

local function iso(ds, secs)
  if math.type(secs) == "integer" or type(secs) == "number" then
    return os.date("!%Y-%m-%dT%H:%M:%S.000Z", math.floor(secs))
  end
  return ds.iso_now()
end

local FINISH = { stop = "stop", length = "length", content_filter = "content-filter", max_output_tokens = "length" }

local function usage_part(ds, input, output, total)
  input = math.tointeger(input) or 0
  output = math.tointeger(output) or 0
  total = math.tointeger(total) or (input + output)
  return ds.json.obj("inputTokens", input, "outputTokens", output, "totalTokens", total)
end

-- Reads the whole (error) body, bounded.
local function read_body(res, limit)
  local parts, n = {}, 0
  while n < limit do
    local chunk = res:read()
    if not chunk then
      break
    end
    if type(chunk) == "table" then
      chunk = chunk.data
    end
    parts[#parts + 1] = chunk
    n = n + #chunk
  end
  return table.concat(parts)
end

-- The first non-empty line of a text, blanks folded.
local function first_line(text)
  for line in tostring(text):gmatch("[^\r\n]+") do
    line = line:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    if line ~= "" then
      return line
    end
  end
  return ""
end

-- What an error body says, whatever its shape: OpenAI's {"error": {"message"}}, the
-- {"error": "Not Found", "message": "Cannot POST /x"} of many frameworks (both kept),
-- {"detail": ...} (FastAPI), {"errors": [{"message"}]}, a plain-text body (its first
-- line) or an HTML page (its title, else its first line of text).
function M.error_detail(ds, body)
  local v = ds.json.decode(body)
  if type(v) == "table" then
    local e, parts = v.error, {}
    local function add(x)
      if type(x) == "string" and x ~= "" then
        for _, seen in ipairs(parts) do
          if seen == x then
            return
          end
        end
        parts[#parts + 1] = x
      end
    end
    if type(e) == "table" then
      add(e.message)
      if #parts == 0 then
        add(e.code ~= nil and tostring(e.code) or nil)
        add(e.type)
      end
    else
      add(e)
    end
    add(v.message)
    if type(v.detail) == "table" and type(v.detail[1]) == "table" then
      add(v.detail[1].msg)
    else
      add(v.detail)
    end
    if type(v.errors) == "table" and type(v.errors[1]) == "table" then
      add(v.errors[1].message)
    end
    if #parts > 0 then
      return table.concat(parts, ": ")
    end
  end
  if body:find("^%s*<") then -- HTML (or XML): its title, or its text
    local title = body:match("<[Tt][Ii][Tt][Ll][Ee][^>]*>([^<]*)<")
    if title and first_line(title) ~= "" then
      return first_line(title)
    end
    body = body:gsub("<[^>]*>", "\n")
  end
  local line = first_line(body)
  return line ~= "" and line or "no error message"
end

local function http_error(ds, res)
  local status = res:status()
  return ("OpenAI HTTP %d: %s"):format(status, one_line(M.error_detail(ds, read_body(res, 65536)), 200))
end

local function error_text(e)
  if type(e) == "table" then
    return e.message or e.code or "unknown error"
  end
  return tostring(e or "unknown error")
end

-- Streams a Responses API answer; returns true, or nil and a message.
local function stream_responses(ds, ctx, res)
  local obj = ds.json.obj
  while true do
    local ev, err, code = res:read()
    if not ev then
      if err then
        return nil, M.message_for(code, err)
      end
      return nil, "OpenAI connection closed mid-answer: the stream ended before response.completed"
    end
    local v, jerr = ds.json.decode(ev.data)
    if type(v) ~= "table" then
      return nil, "OpenAI sent malformed data: " .. one_line(jerr or "event data is not a JSON object", 200)
    end
    local t = v.type or ev.event
    if t == "response.created" then
      local r = type(v.response) == "table" and v.response or {}
      ctx:emit(obj("type", "response-metadata", "id", r.id, "modelId", r.model, "timestamp", iso(ds, r.created_at)))
    elseif t == "response.output_item.added" then
      local item = v.item
      if type(item) == "table" and item.type == "message" then
        ctx:emit(obj("type", "text-start", "id", item.id))
      end
    elseif t == "response.output_text.delta" then
      if type(v.delta) ~= "string" then
        return nil, "OpenAI sent malformed data: response.output_text.delta without a delta"
      end
      ctx:emit(obj("type", "text-delta", "id", v.item_id, "delta", v.delta))
    elseif t == "response.output_item.done" then
      local item = v.item
      if type(item) == "table" and item.type == "message" then
        ctx:emit(obj("type", "text-end", "id", item.id))
      end
    elseif t == "response.completed" or t == "response.incomplete" then
      local r = type(v.response) == "table" and v.response or {}
      local reason = "stop"
      if t == "response.incomplete" then
        local d = type(r.incomplete_details) == "table" and r.incomplete_details.reason or nil
        reason = FINISH[d] or "unknown"
      end
      local u = type(r.usage) == "table" and r.usage or {}
      ctx:emit(obj("type", "finish", "reason", reason, "usage",
        usage_part(ds, u.input_tokens, u.output_tokens, u.total_tokens)))
      return true
    elseif t == "error" or t == "response.failed" then
      local e
      if t == "error" then
        e = v.error or obj("code", v.code, "message", v.message)
      else
        e = type(v.response) == "table" and v.response.error or nil
      end
      ctx:emit(obj("type", "error", "error", e or "response failed"))
      return nil, "OpenAI error: " .. one_line(error_text(e), 200)
    end
  end
end

-- Streams a Chat Completions answer; returns true, or nil and a message.
local function stream_chat(ds, ctx, res)
  local obj = ds.json.obj
  local meta, text_id, reason, usage
  local function finish()
    if text_id then
      ctx:emit(obj("type", "text-end", "id", text_id))
    end
    ctx:emit(obj("type", "finish", "reason", reason or "unknown", "usage",
      usage or usage_part(ds, 0, 0, 0)))
    return true
  end
  while true do
    local ev, err, code = res:read()
    if not ev then
      if err then
        return nil, M.message_for(code, err)
      end
      if reason then
        return finish() -- some servers omit [DONE]
      end
      return nil, "OpenAI connection closed mid-answer: the stream ended before [DONE]"
    end
    if ev.data == "[DONE]" then
      if not reason and not meta then
        return nil, "OpenAI sent malformed data: [DONE] before any answer"
      end
      return finish()
    end
    local v, jerr = ds.json.decode(ev.data)
    if type(v) ~= "table" then
      return nil, "OpenAI sent malformed data: " .. one_line(jerr or "chunk is not a JSON object", 200)
    end
    if v.error ~= nil then
      ctx:emit(obj("type", "error", "error", v.error))
      return nil, "OpenAI error: " .. one_line(error_text(v.error), 200)
    end
    if not meta then
      meta = true
      ctx:emit(obj("type", "response-metadata", "id", v.id, "modelId", v.model, "timestamp", iso(ds, v.created)))
    end
    local choice = type(v.choices) == "table" and v.choices[1] or nil
    if type(choice) == "table" then
      local delta = type(choice.delta) == "table" and choice.delta or {}
      if type(delta.content) == "string" and delta.content ~= "" then
        if not text_id then
          text_id = tostring(v.id or "text")
          ctx:emit(obj("type", "text-start", "id", text_id))
        end
        ctx:emit(obj("type", "text-delta", "id", text_id, "delta", delta.content))
      end
      if type(choice.finish_reason) == "string" then
        reason = FINISH[choice.finish_reason] or "unknown"
      end
    end
    if type(v.usage) == "table" then
      local u = v.usage
      usage = usage_part(ds, u.prompt_tokens, u.completion_tokens, u.total_tokens)
    end
  end
end

-- A server that ignores `stream: true` answers with the whole response as one JSON
-- document: read it (bounded) and emit the same parts a stream would have given.
local WHOLE_LIMIT = 16 << 20

local function whole_answer(ds, ctx, res, chat)
  local obj = ds.json.obj
  local body = read_body(res, WHOLE_LIMIT + 1)
  local _, err, code = res:error()
  if err then
    return nil, M.message_for(code, err)
  end
  if #body > WHOLE_LIMIT then
    return nil, ("OpenAI sent a whole JSON answer larger than %d bytes instead of a stream"):format(WHOLE_LIMIT)
  end
  local v, jerr = ds.json.decode(body)
  if type(v) ~= "table" then
    return nil, "OpenAI sent malformed data: a JSON answer that does not parse (" .. one_line(jerr or "not an object",
      120) .. ")"
  end
  if v.error ~= nil and v.error ~= ds.json.null then
    ctx:emit(obj("type", "error", "error", v.error))
    return nil, "OpenAI error: " .. one_line(M.error_detail(ds, body), 200)
  end
  local text, id, reason, usage, meta
  if type(v.choices) == "table" then -- chat.completion
    local choice = type(v.choices[1]) == "table" and v.choices[1] or {}
    local msg = type(choice.message) == "table" and choice.message or {}
    text = type(msg.content) == "string" and msg.content or ""
    id = tostring(v.id or "text")
    reason = FINISH[choice.finish_reason] or "unknown"
    local u = type(v.usage) == "table" and v.usage or {}
    usage = usage_part(ds, u.prompt_tokens, u.completion_tokens, u.total_tokens)
    meta = obj("type", "response-metadata", "id", v.id, "modelId", v.model, "timestamp", iso(ds, v.created))
  elseif type(v.output) == "table" then -- a Responses object
    if v.status == "failed" then
      local e = type(v.error) == "table" and v.error or "response failed"
      ctx:emit(obj("type", "error", "error", e))
      return nil, "OpenAI error: " .. one_line(error_text(e), 200)
    end
    local pieces = {}
    for _, item in ipairs(v.output) do
      if type(item) == "table" and item.type == "message" then
        id = id or item.id
        for _, c in ipairs(type(item.content) == "table" and item.content or {}) do
          if type(c) == "table" and c.type == "output_text" and type(c.text) == "string" then
            pieces[#pieces + 1] = c.text
          end
        end
      end
    end
    text, id = table.concat(pieces), tostring(id or v.id or "text")
    reason = "stop"
    if v.status == "incomplete" then
      local d = type(v.incomplete_details) == "table" and v.incomplete_details.reason or nil
      reason = FINISH[d] or "unknown"
    end
    local u = type(v.usage) == "table" and v.usage or {}
    usage = usage_part(ds, u.input_tokens, u.output_tokens, u.total_tokens)
    meta = obj("type", "response-metadata", "id", v.id, "modelId", v.model, "timestamp", iso(ds, v.created_at))
  else
    return nil, ("OpenAI sent a JSON answer that is neither a %s nor a stream (object %s)")
      :format(chat and "chat.completion" or "Responses object", tostring(v.object))
  end
  ctx:emit(meta)
  ctx:emit(obj("type", "text-start", "id", id))
  if text ~= "" then
    ctx:emit(obj("type", "text-delta", "id", id, "delta", text))
  end
  ctx:emit(obj("type", "text-end", "id", id))
  ctx:emit(obj("type", "finish", "reason", reason, "usage", usage))
  return true
end

---Creates the model object.
---@param ds table the host module
function M.new(ds)
  local model = { inputs = { text = true } }

  function model.start(_, ctx)
    local cfg = ctx.config or {}
    local key, env = models.api_key(cfg, DEFAULTS)
    if not key then
      return nil, ("OpenAI API key missing: set %s or agents.models.openai.api_key"):format(tostring(env))
    end
    local base = os.getenv("OPENAI_BASE_URL")
    if base == nil or base == "" then
      base = cfg_get(cfg, "base_url")
    end
    base = tostring(base):gsub("/+$", "")
    local body, path = M.build_request(ds, cfg, M.conversation(ctx))
    local res, err, code = ds.http.request({
      method = "POST",
      url = base .. path,
      headers = {
        ["Authorization"] = "Bearer " .. key,
        ["Content-Type"] = "application/json",
        ["Accept"] = "text/event-stream",
      },
      body = ds.json.encode(body),
      sse = true,
      connect_timeout_ms = cfg_get(cfg, "connect_timeout_ms"),
      timeout_ms = cfg_get(cfg, "timeout_ms"),
      stall_timeout_ms = cfg_get(cfg, "stall_timeout_ms"),
    })
    if not res then
      return nil, M.message_for(code, err)
    end
    ctx.openai_res = res
    local ok, msg
    local ctype = (res:headers()["content-type"] or ""):lower()
    local chat = cfg_get(cfg, "api") == "chat"
    if res:status() < 200 or res:status() > 299 then
      ok, msg = nil, http_error(ds, res)
    elseif ctype:find("json", 1, true) then
      ok, msg = whole_answer(ds, ctx, res, chat)
    elseif ctype ~= "" and not ctype:find("text/event-stream", 1, true) then
      ok, msg = nil, ("OpenAI answered %d with %s instead of an event stream: %s"):format(res:status(),
        ctype:gsub(";.*", ""), one_line(M.error_detail(ds, read_body(res, 65536)), 200))
    elseif chat then
      ok, msg = stream_chat(ds, ctx, res)
    else
      ok, msg = stream_responses(ds, ctx, res)
    end
    ctx.openai_res = nil
    res:close()
    if ok then
      return
    end
    return nil, msg
  end

  function model.cancel(_, ctx)
    local res = ctx.openai_res
    if res then
      ctx.openai_res = nil
      res:close()
    end
  end

  return model
end

return M
