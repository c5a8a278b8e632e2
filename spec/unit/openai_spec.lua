-- openai_spec.lua - unit specs of lua/openai.lua against a scripted ds.http.
--
-- Covers: the request built from history (Responses and Chat Completions shapes, system
-- prompt, prompt appended once, key and base URL from the environment), the mapping of
-- upstream events to parts, and the one-line message of every failure.
-- Must not: open sockets; the real transport is covered by spec/functional/openai_spec.lua.
local cjson = require("cjson")
local openai = require("openai")

local ARR = setmetatable({}, { __mode = "k" })

local function fake_ds(script)
  local ds = { json = { obj = require("fake_host").json_obj }, http = {}, sent = {} }
  function ds.json.array(...)
    local t = { ... }
    ARR[t] = true
    return t
  end
  ds.json.encode = cjson.encode
  function ds.json.decode(s)
    local ok, v = pcall(cjson.decode, s)
    if ok then
      return v
    end
    return nil, tostring(v)
  end
  function ds.iso_now()
    return "2026-01-01T00:00:00.000Z"
  end
  function ds.http.request(opts)
    ds.sent[#ds.sent + 1] = opts
    if script.fail then
      return nil, script.fail[1], script.fail[2]
    end
    local i = 0
    local res = { closed = false }
    function res.status()
      return script.status or 200
    end
    function res.headers()
      return script.headers or { ["content-type"] = "text/event-stream" }
    end
    function res.error()
      if script.items[i + 1] == nil and script.tail_error and i >= #script.items then
        return script.tail_error[1], script.tail_error[2]
      end
    end
    function res.read()
      i = i + 1
      local item = script.items[i]
      if item == nil and script.tail_error then
        return nil, script.tail_error[1], script.tail_error[2]
      end
      return item
    end
    function res.close()
      res.closed = true
    end
    ds.res = res
    return res
  end
  return ds
end

local function ev(name, obj)
  obj.type = obj.type or name
  return { event = name, data = cjson.encode(obj), id = "" }
end

local function responses_events(text_parts, usage)
  local items = {
    ev("response.created", { response = { id = "resp_1", model = "gpt-4o-2024-08-06", created_at = 1700000000 } }),
    ev("response.in_progress", { response = { id = "resp_1" } }),
    ev("response.output_item.added", { item = { id = "msg_1", type = "message" } }),
    ev("response.content_part.added", { item_id = "msg_1" }),
  }
  for _, d in ipairs(text_parts) do
    items[#items + 1] = ev("response.output_text.delta", { item_id = "msg_1", delta = d })
  end
  items[#items + 1] = ev("response.output_text.done", { item_id = "msg_1" })
  items[#items + 1] = ev("response.output_item.done", { item = { id = "msg_1", type = "message" } })
  items[#items + 1] = ev("response.completed", { response = { id = "resp_1", usage = usage } })
  return items
end

local function run(ds, cfg, messages, prompt)
  local parts = {}
  local ctx = {
    config = cfg,
    messages = messages,
    prompt = { kind = "text", text = prompt },
    emit = function(_, p)
      parts[#parts + 1] = p
      return "0"
    end,
  }
  local model = openai.new(ds)
  local r1, r2 = model.start(model, ctx)
  return parts, r1, r2, ctx
end

local function types(parts)
  local out = {}
  for i, p in ipairs(parts) do
    out[i] = p.type
  end
  return table.concat(out, ",")
end

describe("openai model", function()
  local cfg = { api_key = "sk-test", base_url = "http://up.example/v1/" }

  it("builds the Responses request from history and maps events to parts", function()
    local ds = fake_ds({ items = responses_events({ "Hel", "lo" },
      { input_tokens = 30, output_tokens = 2, total_tokens = 32 }) })
    local hist = {
      { role = "user", text = "first" },
      { role = "assistant", text = "answer one" },
      { role = "user", audio = "AAAA" },
      { role = "user", text = "second" },
    }
    local parts, r1, r2 = run(ds, cfg, hist, "second")
    assert.is_nil(r1)
    assert.is_nil(r2)
    local req = ds.sent[1]
    assert.equal("http://up.example/v1/responses", req.url)
    assert.equal("POST", req.method)
    assert.equal("Bearer sk-test", req.headers.Authorization)
    assert.is_true(req.sse)
    local body = cjson.decode(req.body)
    assert.equal("gpt-4o", body.model)
    assert.is_true(body.stream)
    assert.same({
      { role = "user", content = { { type = "input_text", text = "first" } } },
      { role = "assistant", content = { { type = "output_text", text = "answer one" } } },
      { role = "user", content = { { type = "input_text", text = "second" } } },
    }, body.input)
    assert.equal("response-metadata,text-start,text-delta,text-delta,text-end,finish", types(parts))
    assert.same({ type = "response-metadata", id = "resp_1", modelId = "gpt-4o-2024-08-06",
      timestamp = "2023-11-14T22:13:20.000Z" }, parts[1])
    assert.same({ type = "text-delta", id = "msg_1", delta = "Hel" }, parts[3])
    assert.same({ type = "finish", reason = "stop", usage = { inputTokens = 30, outputTokens = 2, totalTokens = 32 } },
      parts[6])
    assert.is_true(ds.res.closed)
  end)

  it("adds the system prompt and the prompt when history lacks it", function()
    local ds = fake_ds({ items = responses_events({ "x" }, {}) })
    run(ds, { api_key = "k", system_prompt = "Be brief." }, {}, "hi")
    local body = cjson.decode(ds.sent[1].body)
    assert.equal("https://api.openai.com/v1/responses", ds.sent[1].url)
    assert.same({ role = "system", content = { { type = "input_text", text = "Be brief." } } }, body.input[1])
    assert.same({ role = "user", content = { { type = "input_text", text = "hi" } } }, body.input[2])
    assert.equal(2, #body.input)
  end)

  it("maps response.incomplete to finish reason length", function()
    local items = responses_events({ "a" }, { input_tokens = 1, output_tokens = 1, total_tokens = 2 })
    items[#items] = ev("response.incomplete", { response = { incomplete_details = { reason = "max_output_tokens" },
      usage = { input_tokens = 1, output_tokens = 1, total_tokens = 2 } } })
    local parts, r1, r2 = run(fake_ds({ items = items }), cfg, {}, "q")
    assert.is_nil(r2)
    assert.equal("length", parts[#parts].reason)
  end)

  it("speaks Chat Completions behind api = 'chat' with the same parts", function()
    local function chunk(t)
      return { event = "message", data = cjson.encode(t), id = "" }
    end
    local ds = fake_ds({ items = {
      chunk({ id = "c1", model = "m", created = 1700000000, choices = { { delta = { role = "assistant", content = "" } } } }),
      chunk({ id = "c1", model = "m", choices = { { delta = { content = "Hi" } } } }),
      chunk({ id = "c1", model = "m", choices = { { delta = { content = " you" } } } }),
      chunk({ id = "c1", model = "m", choices = { { delta = {}, finish_reason = "stop" } } }),
      chunk({ id = "c1", model = "m", choices = {}, usage = { prompt_tokens = 9, completion_tokens = 2, total_tokens = 11 } }),
      { event = "message", data = "[DONE]", id = "" },
    } })
    local parts, _, r2 = run(ds, { api_key = "k", api = "chat", system_prompt = "S" },
      { { role = "user", text = "q" } }, "q")
    assert.is_nil(r2)
    assert.equal("https://api.openai.com/v1/chat/completions", ds.sent[1].url)
    local body = cjson.decode(ds.sent[1].body)
    assert.same({ include_usage = true }, body.stream_options)
    assert.same({ { role = "system", content = "S" }, { role = "user", content = "q" } }, body.messages)
    assert.equal("response-metadata,text-start,text-delta,text-delta,text-end,finish", types(parts))
    assert.same({ inputTokens = 9, outputTokens = 2, totalTokens = 11 }, parts[6].usage)
    assert.equal("stop", parts[6].reason)
  end)

  it("reads the key from the configured environment variable and honours OPENAI_BASE_URL", function()
    local ds = fake_ds({ items = responses_events({ "x" }, {}) })
    local _, _, r2 = run(ds, { api_key_env = "DS_SPEC_SURELY_UNSET_KEY" }, {}, "q")
    assert.equal("OpenAI API key missing: set DS_SPEC_SURELY_UNSET_KEY or agents.models.openai.api_key", r2)
    assert.equal(0, #ds.sent)
    -- PATH is always set: use it as a stand-in key variable
    run(ds, { api_key_env = "PATH" }, {}, "q")
    assert.equal("Bearer " .. os.getenv("PATH"), ds.sent[1].headers.Authorization)
  end)

  describe("failures end the request with one line", function()
    local cases = {
      { "ECONNREFUSED", "Failed to connect to 127.0.0.1 port 9: Couldn't connect to server", "^OpenAI connection refused: " },
      { "EDNS", "Could not resolve host: x.invalid", "^OpenAI DNS lookup failed: " },
      { "ETLS", "SSL routines::wrong version number", "^OpenAI TLS error: " },
      { "ETIMEDOUT", "Operation timed out after 1000 ms", "^OpenAI request timed out: " },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local _, r1, r2 = run(fake_ds({ fail = { c[2], c[1] } }), cfg, {}, "q")
        assert.is_nil(r1)
        assert.matches(c[3], r2)
        assert.is_nil(r2:find("\n"))
      end)
    end

    it("HTTP 429 with the API's error message", function()
      local ds = fake_ds({ status = 429, items = {
        '{"error": {"message": "Rate limit exceeded",', ' "type": "requests"}}' } })
      local _, _, r2 = run(ds, cfg, {}, "q")
      assert.equal("OpenAI HTTP 429: Rate limit exceeded", r2)
    end)

    it("HTTP 502 without JSON", function()
      local ds = fake_ds({ status = 502, items = { "<html>\nbad gateway\n</html>" } })
      local _, _, r2 = run(ds, cfg, {}, "q")
      assert.equal("OpenAI HTTP 502: bad gateway", r2)
    end)

    -- issue 12, item 18: error bodies that are not OpenAI-shaped keep their detail
    it("error bodies of other shapes keep their detail, on one line", function()
      local bodies = {
        { 404, '{"error":"Not Found","message":"Cannot POST /x"}', "OpenAI HTTP 404: Not Found: Cannot POST /x" },
        { 400, '{"message":"model is required"}', "OpenAI HTTP 400: model is required" },
        { 422, '{"detail":[{"loc":["body"],"msg":"field required"}]}', "OpenAI HTTP 422: field required" },
        { 401, '{"detail":"Invalid token"}', "OpenAI HTTP 401: Invalid token" },
        { 500, '{"errors":[{"message":"backend down"}]}', "OpenAI HTTP 500: backend down" },
        { 503, "Service Unavailable\nretry in 5 s\n", "OpenAI HTTP 503: Service Unavailable" },
        { 502, "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
          "OpenAI HTTP 502: 502 Bad Gateway" },
        { 500, "", "OpenAI HTTP 500: no error message" },
      }
      for _, b in ipairs(bodies) do
        local _, _, r2 = run(fake_ds({ status = b[1], items = { b[2] } }), cfg, {}, "q")
        assert.equal(b[3], r2)
      end
    end)

    it("stall and close mid-answer", function()
      local items = responses_events({ "a", "b" }, {})
      local partial = { items[1], items[2], items[3], items[5] }
      local parts, _, r2 = run(fake_ds({ items = partial, tail_error = { "no data received for 500 ms", "ESTALLED" } }),
        cfg, {}, "q")
      assert.equal("OpenAI stream stalled: no data received for 500 ms", r2)
      assert.equal("response-metadata,text-start,text-delta", types(parts))
      _, _, r2 = run(fake_ds({ items = partial, tail_error = { "Recv failure: Connection reset by peer", "ECLOSED" } }),
        cfg, {}, "q")
      assert.equal("OpenAI connection closed mid-answer: Recv failure: Connection reset by peer", r2)
      _, _, r2 = run(fake_ds({ items = partial }), cfg, {}, "q")
      assert.matches("^OpenAI connection closed mid%-answer: the stream ended before response.completed", r2)
    end)

    it("malformed event data", function()
      local items = responses_events({ "a" }, {})
      items[3] = { event = "response.output_item.added", data = "{not json", id = "" }
      local _, _, r2 = run(fake_ds({ items = items }), cfg, {}, "q")
      assert.matches("^OpenAI sent malformed data: ", r2)
    end)

    it("error and response.failed events give an error part", function()
      local items = responses_events({ "a" }, {})
      items[3] = ev("response.failed", { response = { error = { code = "server_error", message = "boom" } } })
      local parts, _, r2 = run(fake_ds({ items = items }), cfg, {}, "q")
      assert.equal("OpenAI error: boom", r2)
      assert.equal("error", parts[#parts].type)
      assert.same({ code = "server_error", message = "boom" }, parts[#parts].error)
      items[3] = ev("error", { code = "rate_limit_exceeded", message = "slow down" })
      parts, _, r2 = run(fake_ds({ items = items }), cfg, {}, "q")
      assert.equal("OpenAI error: slow down", r2)
      assert.equal("error", parts[#parts].type)
    end)
  end)

  -- issue 12, item 17: a server that ignores stream: true and answers with the whole
  -- response as application/json gives the same parts
  describe("a whole JSON answer instead of a stream", function()
    local JSON = { ["content-type"] = "application/json; charset=utf-8" }
    it("Responses object", function()
      local body = cjson.encode({ id = "resp_9", object = "response", created_at = 1700000000, model = "gpt-4o-x",
        status = "completed", output = { { id = "msg_9", type = "message", role = "assistant",
          content = { { type = "output_text", text = "Hello " }, { type = "output_text", text = "world" } } } },
        usage = { input_tokens = 5, output_tokens = 2, total_tokens = 7 } })
      local parts, r1, r2 = run(fake_ds({ headers = JSON, items = { body:sub(1, 20), body:sub(21) } }), cfg, {}, "q")
      assert.is_nil(r1)
      assert.is_nil(r2)
      assert.same({
        { type = "response-metadata", id = "resp_9", modelId = "gpt-4o-x", timestamp = "2023-11-14T22:13:20.000Z" },
        { type = "text-start", id = "msg_9" },
        { type = "text-delta", id = "msg_9", delta = "Hello world" },
        { type = "text-end", id = "msg_9" },
        { type = "finish", reason = "stop", usage = { inputTokens = 5, outputTokens = 2, totalTokens = 7 } },
      }, parts)
    end)

    it("chat.completion", function()
      local body = cjson.encode({ id = "chatcmpl-9", object = "chat.completion", created = 1700000000, model = "m",
        choices = { { index = 0, message = { role = "assistant", content = "Hi there" }, finish_reason = "length" } },
        usage = { prompt_tokens = 4, completion_tokens = 2, total_tokens = 6 } })
      local parts, _, r2 = run(fake_ds({ headers = JSON, items = { body } }), { api_key = "k", api = "chat" }, {}, "q")
      assert.is_nil(r2)
      assert.equal("response-metadata,text-start,text-delta,text-end,finish", types(parts))
      assert.same({ type = "text-delta", id = "chatcmpl-9", delta = "Hi there" }, parts[3])
      assert.same({ type = "finish", reason = "length", usage = { inputTokens = 4, outputTokens = 2, totalTokens = 6 } },
        parts[5])
    end)

    it("anything else says what came", function()
      local _, _, r2 = run(fake_ds({ headers = JSON, items = { '{"object":"list","data":[]}' } }), cfg, {}, "q")
      assert.equal("OpenAI sent a JSON answer that is neither a Responses object nor a stream (object list)", r2)
      _, _, r2 = run(fake_ds({ headers = JSON, items = { '{"error":{"message":"quota"}}' } }), cfg, {}, "q")
      assert.equal("OpenAI error: quota", r2)
      _, _, r2 = run(fake_ds({ headers = { ["content-type"] = "text/html" }, items = { "<title>Login</title>" } }),
        cfg, {}, "q")
      assert.equal("OpenAI answered 200 with text/html instead of an event stream: Login", r2)
    end)
  end)

  it("cancel closes the response in flight", function()
    local ds = fake_ds({ items = {} })
    local model = openai.new(ds)
    local res = { closed = false, close = function(self) self.closed = true end }
    local ctx = { openai_res = res }
    model.cancel(model, ctx)
    assert.is_true(res.closed)
    assert.is_nil(ctx.openai_res)
    model.cancel(model, ctx) -- idempotent
  end)
end)
