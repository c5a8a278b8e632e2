-- openai_spec.lua - functional specs of the `openai` model against the real binary and a
-- fake OpenAI upstream (spec/fixtures/upstream/openai_fake.py, Python standard library,
-- started here on 127.0.0.1), one `it` per acceptance point of issue 4:
--   1. config:set openai + a message -> request-started, parts, request-ended, the
--      request the fake saw (POST /v1/responses, bearer key, model, stream, input shape);
--   2. history in order over three turns, including an interrupted partial answer;
--      inputTokens grows, and the YAML grep recipe shows it;
--   3. interrupting a slow answer aborts the upstream transfer (the fake sees the close)
--      with the §6.2 ordering;
--   4. every fault -> request-cancelled reason "error" with a one-line message naming the
--      cause; the server stays up and the next prompt succeeds;
--   5. the Chat Completions switch gives the same parts;
--   6. 50 conversations on 50 paths stream at once within 1.5x the paced time;
--   plus OPENAI_API_KEY / OPENAI_BASE_URL from the environment.
-- Must not: reach a real upstream (spec/support/server.lua starts the server with OPENAI_*
-- removed from its environment unless a spec sets them), sleep fixed times, or leave
-- processes behind.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")
local U = require("spec.support.upstream")
local cjson = require("cjson")
local socket = require("socket")

local T = S.T

-- event helpers --------------------------------------------------------------------

local function parts_of(evs, R)
  local out = {}
  for _, e in ipairs(evs) do
    if e.type == T.sse and e.payload.requestOffset == R then
      out[#out + 1] = e.payload.part
    end
  end
  return out
end

local function kinds(parts)
  local out = {}
  for i, p in ipairs(parts) do
    out[i] = p.type
  end
  return out
end

-- Posts a prompt and waits for its request to end; returns events, R, the end event.
local function ask(srv, path, content, mode, timeout)
  local evs, fin, R = srv:prompt(path, T.user, { content = content, mode = mode }, timeout)
  return evs, R, fin
end

local function check_stream(parts, R, evs)
  local k = kinds(parts)
  assert.equal("response-metadata", k[1])
  assert.equal("text-start", k[2])
  assert.equal("text-end", k[#k - 1])
  assert.equal("finish", k[#k])
  for i = 3, #k - 2 do
    assert.equal("text-delta", k[i])
  end
  assert.is_true(#k - 4 >= 1)
  local f = parts[#parts]
  assert.equal("stop", f.reason)
  -- (cjson reads every number as a float: check integrality by value)
  assert.is_true(f.usage.inputTokens > 0 and f.usage.inputTokens == math.floor(f.usage.inputTokens))
  assert.equal(#k - 4, f.usage.outputTokens)
  assert.equal(f.usage.inputTokens + f.usage.outputTokens, f.usage.totalTokens)
  local text = {}
  for i = 3, #k - 2 do
    assert.equal(parts[2].id, parts[i].id)
    text[#text + 1] = parts[i].delta
  end
  return table.concat(text)
end


-- issue 12, item 18: every failed answer is logged at warn with its path and request
local function assert_logged(log, R, p, msg)
  local line = ("warn lua:lua: agent: request %s on %s (model openai) failed: %s"):format(R, p, msg)
  assert.truthy(log:find(line, 1, true), "no log line: " .. line)
end

local function http_stats(srv)
  return srv:stats()
end

-- specs ----------------------------------------------------------------------------------

describe("openai model against the fake upstream", function()
  local fake, srv
  setup(function()
    fake = U.start("openai", { pace_ms = 5 })
    srv = S.start({ agents = { models = { openai = {
      api_key = "sk-spec-key", base_url = fake.base, stall_timeout_ms = 1500, timeout_ms = 30000,
    } } } })
  end)
  teardown(function()
    if srv then
      srv:stop()
      srv:assert_clean_log()
      srv:cleanup()
    end
    if fake then
      fake:stop()
    end
  end)

  it("1. streams an answer as parts between request-started and request-ended", function()
    local p = "openai/basic"
    assert.equal(204, srv:post(p, T.config, { model = "openai" }))
    local evs, R, fin = ask(srv, p, "Say hello [[tokens:7]]")
    assert.equal(T.ended, fin.type)
    assert.same({ requestOffset = R }, fin.payload)
    local started
    for _, e in ipairs(evs) do
      if e.offset == R then
        started = e
      end
    end
    assert.same({ model = "openai" }, started.payload)
    -- every event after request-started belongs to R, in order
    local seen = false
    for _, e in ipairs(evs) do
      if seen and e.type == T.sse then
        assert.equal(R, e.payload.requestOffset)
      end
      seen = seen or e.offset == R
    end
    local parts = parts_of(evs, R)
    assert.equal(7 + 4, #parts)
    local text = check_stream(parts, R, evs)
    assert.equal("Hello there, café ☕ friend.", text)
    assert.matches("^resp_fake", parts[1].id)
    assert.equal("gpt-4o-2024-08-06", parts[1].modelId)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", parts[1].timestamp)
    -- what the upstream saw
    local reqs = fake:requests_with("Say hello [[tokens:7]]")
    assert.equal(1, #reqs)
    local r = reqs[1]
    assert.equal("POST", r.method)
    assert.equal("/v1/responses", r.path)
    assert.equal("Bearer sk-spec-key", r.headers.Authorization)
    assert.matches("^application/json", r.headers["Content-Type"])
    assert.equal("gpt-4o", r.body.model)
    assert.equal(true, r.body.stream)
    assert.same({ { role = "user", content = { { type = "input_text", text = "Say hello [[tokens:7]]" } } } },
      r.body.input)
    srv:wait_idle()
  end)

  it("2. sends the whole history each turn, including an interrupted partial answer", function()
    local p = "openai/history"
    srv:post(p, T.config, { model = "openai" })
    local evs1, R1 = ask(srv, p, "first question [[tokens:5]]")
    local a1 = check_stream(parts_of(evs1, R1), R1, evs1)
    -- second turn: slow, interrupted after a few deltas
    assert.equal(204, srv:post(p, T.user, { content = "second question [[tokens:60]] [[pace:100]]" }))
    local evs = srv:wait_events(p, function(e)
      return #S.deltas(e) >= 5 + 3
    end, "three deltas of the second answer")
    local evs3, R3 = ask(srv, p, "third question [[tokens:4]]", "interrupt")
    -- the partial second answer as stored
    local R2
    for _, e in ipairs(evs3) do
      if e.type == T.cancelled and e.payload.reason == "interrupted" then
        R2 = e.payload.requestOffset
      end
    end
    assert.is_string(R2)
    local partial = {}
    for _, part in ipairs(parts_of(evs3, R2)) do
      if part.type == "text-delta" then
        partial[#partial + 1] = part.delta
      end
    end
    partial = table.concat(partial)
    assert.is_true(#partial > 0)
    check_stream(parts_of(evs3, R3), R3, evs3)
    -- the third request carried user, assistant, user (interrupted), assistant (partial), user
    local r3 = fake:requests_with("third question")[1]
    local function msg(role, kind, text)
      return { role = role, content = { { type = kind, text = text } } }
    end
    assert.same({
      msg("user", "input_text", "first question [[tokens:5]]"),
      msg("assistant", "output_text", a1),
      msg("user", "input_text", "second question [[tokens:60]] [[pace:100]]"),
      msg("assistant", "output_text", partial),
      msg("user", "input_text", "third question [[tokens:4]]"),
    }, r3.body.input)
    -- inputTokens grows, and the design document's recipe shows it on the YAML file
    local f1 = parts_of(evs3, R1)[#parts_of(evs3, R1)].usage.inputTokens
    local f3 = parts_of(evs3, R3)[#parts_of(evs3, R3)].usage.inputTokens
    assert.is_true(f3 > f1, ("inputTokens %d -> %d"):format(f1, f3))
    local file = srv.data_dir .. "/streams/" .. p .. ".yaml"
    local pipe = io.popen(("grep -A5 'type: finish' %s | grep inputTokens"):format(S.q(file)))
    local out = pipe:read("a")
    pipe:close()
    local nums = {}
    for n in out:gmatch("inputTokens: (%d+)") do
      nums[#nums + 1] = tonumber(n)
    end
    assert.same({ f1, f3 }, nums)
    srv:wait_idle()
  end)

  it("3. interrupting a slow answer aborts the upstream transfer, in §6.2 order", function()
    local p = "openai/interrupt"
    srv:post(p, T.config, { model = "openai" })
    assert.equal(204, srv:post(p, T.user, { content = "slow one [[fault:slow]]" }))
    local evs = srv:wait_events(p, function(e)
      return #S.deltas(e) > 0
    end, "the first delta")
    local R1 = evs[#evs].payload.requestOffset
    local evs2, R2, fin = ask(srv, p, "quick one [[tokens:3]]", "interrupt")
    assert.equal(T.ended, fin.type)
    -- the fake saw the slow answer's connection close, long before its 40 slow tokens
    S.wait_for(function()
      for _, r in ipairs(fake:records("client_closed")) do
        if r.prompt:find("slow one", 1, true) then
          return true
        end
      end
    end, 5, "the fake to see the slow transfer closed")
    for _, r in ipairs(fake:records("completed")) do
      assert.is_not.equal(fake:requests_with("slow one")[1].id, r.id)
    end
    -- §6.2: new request-started, old cancelled (interrupted), old interrupted, new parts
    local i0
    for i, e in ipairs(evs2) do
      if e.offset == R2 then
        i0 = i
      end
    end
    assert.equal(T.cancelled, evs2[i0 + 1].type)
    assert.equal(R1, evs2[i0 + 1].payload.requestOffset)
    assert.equal("interrupted", evs2[i0 + 1].payload.reason)
    assert.equal(T.interrupted, evs2[i0 + 2].type)
    assert.same({ requestOffset = R1 }, evs2[i0 + 2].payload)
    for i = i0 + 3, #evs2 do
      assert.equal(R2, evs2[i].payload.requestOffset)
    end
    srv:wait_idle()
    -- nothing more was appended for the old request
    local after = srv:events(p)
    assert.equal(#evs2, #after)
  end)

  -- issue 12, item 17: a server that ignores stream: true answers with the whole response
  it("17. takes a whole JSON answer given instead of a stream as the answer", function()
    local p = "openai/whole"
    srv:post(p, T.config, { model = "openai" })
    local evs, R, fin = ask(srv, p, "whole please [[fault:json]] [[tokens:5]]")
    assert.equal(T.ended, fin.type)
    local parts = parts_of(evs, R)
    assert.same({ "response-metadata", "text-start", "text-delta", "text-end", "finish" }, kinds(parts))
    assert.equal("Hello there, café ☕", parts[3].delta)
    assert.matches("^resp_whole", parts[1].id)
    assert.matches("^msg_whole", parts[2].id)
    assert.equal("stop", parts[5].reason)
    assert.is_true(parts[5].usage.inputTokens > 0)
    assert.equal(5, parts[5].usage.outputTokens)
    -- the answer joins the history like a streamed one
    ask(srv, p, "and then [[tokens:2]]")
    local r = fake:requests_with("and then")[1]
    assert.same({ role = "assistant", content = { { type = "output_text", text = "Hello there, café ☕" } } },
      r.body.input[2])
    srv:wait_idle()
  end)

  local FAULTS = {
    { "401", "^OpenAI HTTP 401: Incorrect API key provided" },
    { "429", "^OpenAI HTTP 429: Rate limit exceeded$" },
    { "500", "^OpenAI HTTP 500: The server had an error while processing your request" },
    { "stall", "^OpenAI stream stalled: no data received for 1500 ms$" },
    { "garbage", "^OpenAI sent malformed data: " },
    { "malformed", "^OpenAI sent malformed data: " },
    { "reset", "^OpenAI connection closed mid%-answer: " },
    { "close", "^OpenAI connection closed mid%-answer: " },
    { "eof", "^OpenAI connection closed mid%-answer: the stream ended before response%.completed$" },
    { "failed", "^OpenAI error: The model crashed while generating$", "error" },
    { "error_event", "^OpenAI error: Rate limit reached during streaming$", "error" },
    -- issue 12, item 18: bodies that are not OpenAI-shaped keep their detail
    { "notfound", "^OpenAI HTTP 404: Not Found: Cannot POST /x$" },
    { "plain", "^OpenAI HTTP 502: upstream connect error$" },
    { "html", "^OpenAI answered 200 with text/html instead of an event stream: Sign in$" },
  }


  it("4. ends each fault with request-cancelled reason error and a one-line message; the next prompt works",
    function()
      local p = "openai/faults"
      srv:post(p, T.config, { model = "openai" })
      for _, f in ipairs(FAULTS) do
        local evs, R, fin = ask(srv, p, ("fault %s [[fault:%s]] [[tokens:6]]"):format(f[1], f[1]))
        assert.equal(T.cancelled, fin.type, f[1])
        assert.equal("error", fin.payload.reason, f[1])
        assert.equal(R, fin.payload.requestOffset)
        local m = fin.payload.message
        assert.is_string(m)
        assert.is_nil(m:find("\n"), m)
        assert.is_true(#m <= 400, m)
        assert.matches(f[2], m)
        assert.falsy(m:find("sk%-spec%-key"), m)
        if f[3] then
          local parts = parts_of(evs, R)
          assert.equal(f[3], parts[#parts].type, f[1])
        end
        assert_logged(srv:log(), R, p, m)
        -- the server is up and the next prompt succeeds
        local evs2, R2, fin2 = ask(srv, p, "after " .. f[1] .. " [[tokens:3]]")
        assert.equal(T.ended, fin2.type, "after " .. f[1])
        check_stream(parts_of(evs2, R2), R2, evs2)
      end
      srv:wait_idle()
      local st = http_stats(srv)
      assert.equal(0, st.lua.tasks_live)
    end)

end)

describe("openai model configuration", function()
  local fake
  setup(function()
    fake = U.start("openai", { pace_ms = 5 })
  end)
  teardown(function()
    if fake then
      fake:stop()
    end
  end)

  local function with_server(openai_cfg, env, fn)
    S.with_server({ agents = { models = { openai = openai_cfg } }, env = env }, fn)
  end

  it("5. the Chat Completions switch gives the same parts", function()
    with_server({ api_key = "sk-chat", base_url = fake.base, api = "chat", system_prompt = "Be terse." }, nil,
      function(srv)
        local p = "openai/chat"
        srv:post(p, T.config, { model = "openai" })
        local evs, R, fin = ask(srv, p, "chat hello [[tokens:5]]")
        assert.equal(T.ended, fin.type)
        local parts = parts_of(evs, R)
        assert.equal(5 + 4, #parts)
        assert.equal("Hello there, café ☕", check_stream(parts, R, evs))
        assert.matches("^chatcmpl%-fake", parts[1].id)
        local r = fake:requests_with("chat hello")[1]
        assert.equal("/v1/chat/completions", r.path)
        assert.equal("Bearer sk-chat", r.headers.Authorization)
        assert.equal(true, r.body.stream)
        assert.same({ include_usage = true }, r.body.stream_options)
        assert.same({ { role = "system", content = "Be terse." }, { role = "user", content = "chat hello [[tokens:5]]" } },
          r.body.messages)
        -- a second turn carries the history; faults map the same way
        local evs2, R2 = ask(srv, p, "chat again [[tokens:2]]")
        assert.is_true(parts_of(evs2, R2)[4 + 2].usage.inputTokens > parts[#parts].usage.inputTokens)
        local _, _, fin3 = ask(srv, p, "chat fault [[fault:429]]")
        assert.equal("OpenAI HTTP 429: Rate limit exceeded", fin3.payload.message)
        local _, _, fin4 = ask(srv, p, "chat cut [[fault:reset]] [[tokens:6]]")
        assert.matches("^OpenAI connection closed mid%-answer", fin4.payload.message)
        -- issue 12, item 17: a whole chat.completion instead of a stream
        local evs5, R5, fin5 = ask(srv, p, "chat whole [[fault:json]] [[tokens:3]]")
        assert.equal(T.ended, fin5.type)
        local p5 = parts_of(evs5, R5)
        assert.same({ "response-metadata", "text-start", "text-delta", "text-end", "finish" }, kinds(p5))
        assert.equal("Hello there,", p5[3].delta)
        assert.matches("^chatcmpl%-whole", p5[1].id)
        assert.same({ inputTokens = p5[5].usage.inputTokens, outputTokens = 3,
          totalTokens = p5[5].usage.inputTokens + 3 }, p5[5].usage)
        srv:wait_idle()
      end)
  end)

  it("6. streams 50 conversations on 50 paths at once within 1.5x the paced time", function()
    -- its own server with the default (long) stall timeout: under load the first byte of
    -- an answer may take longer than the short stall timeout the fault specs use
    with_server({ api_key = "sk-many", base_url = fake.base }, nil, function(srv)
      local N, TOKENS, PACE = 50, 30, 60
      local paced = (TOKENS - 1) * PACE / 1000 -- seconds one answer takes by itself
      local t0 = socket.gettime()
      for i = 1, N do
        local p = "openai/many/" .. i
        assert.equal(204, srv:post(p, T.user, { content = ("conv %d [[tokens:%d]] [[pace:%d]]"):format(i, TOKENS, PACE) }))
      end
      local posted = socket.gettime() - t0
      -- wait on the fake's log (cheap) rather than polling 50 histories while they stream
      local seen, finished = 0, 0
      local ok_wait, why = pcall(S.wait_for, function()
        local ids = {}
        for _, r in ipairs(fake:requests_with("[[pace:" .. PACE .. "]]")) do
          ids[r.id] = true
        end
        local n = 0
        for _, r in ipairs(fake:records("completed")) do
          if ids[r.id] then
            n = n + 1
          end
        end
        seen, finished = #fake:requests_with("[[pace:" .. PACE .. "]]"), n
        for _, r in ipairs(fake:records("client_closed")) do
          if ids[r.id] then
            local evs = srv:events("openai/many/" .. r.prompt:match("conv (%d+)"))
            error(("the server closed conversation request %s early (%s); its last event: %s"):format(r.id, r.prompt,
              cjson.encode(evs[#evs])))
          end
        end
        return n >= N
      end, 60, "the fake to finish 50 answers")
      assert(ok_wait, ("%s: the fake saw %d of %d requests and finished %d"):format(tostring(why), seen, N, finished))
    
      local done = {}
      S.wait_for(function()
        for i = 1, N do
          if not done[i] then
            local evs = srv:events("openai/many/" .. i)
            local last = evs[#evs]
            if last.type == T.ended or last.type == T.cancelled then
              done[i] = evs
            end
          end
        end
        for i = 1, N do
          if not done[i] then
            return false
          end
        end
        return true
      end, 60, "50 answers")
      -- the spread, measured on the server's own clock: first prompt stored -> last end
      local function ms(iso)
        local h, mi, s, f = iso:match("T(%d+):(%d+):(%d+)%.(%d+)Z$")
        return ((tonumber(h) * 60 + tonumber(mi)) * 60 + tonumber(s)) * 1000 + tonumber(f)
      end
      local first, last = math.huge, 0
      for i = 1, N do
        local evs = done[i]
        assert.equal(T.ended, evs[#evs].type, "conversation " .. i)
        local parts = {}
        for _, e in ipairs(evs) do
          if e.type == T.sse then
            parts[#parts + 1] = e.payload.part
          elseif e.type == T.user then
            first = math.min(first, ms(e.createdAt))
          end
        end
        assert.equal(TOKENS + 4, #parts)
        last = math.max(last, ms(evs[#evs].createdAt))
      end
      local spread = (last - first) / 1000
      local ratio = spread / paced
      print(("50 conversations: paced %.2f s, all done in %.2f s (ratio %.2f; posting took %.2f s)"):format(paced,
        spread, ratio, posted))
      assert.is_true(ratio <= 1.5, ("ratio %.2f > 1.5"):format(ratio))
      srv:wait_idle()
    end)
  end)

  it("takes the key from OPENAI_API_KEY and the base URL from OPENAI_BASE_URL", function()
    with_server({ base_url = "http://127.0.0.1:9/v1" }, { OPENAI_API_KEY = "sk-from-env", OPENAI_BASE_URL = fake.base },
      function(srv)
        local p = "openai/env"
        srv:post(p, T.config, { model = "openai" })
        local _, _, fin = ask(srv, p, "env hello [[tokens:2]]")
        assert.equal(T.ended, fin.type)
        local r = fake:requests_with("env hello")[1]
        assert.equal("Bearer sk-from-env", r.headers.Authorization)
      end)
  end)

  -- faults that come from the configuration itself; the server keeps answering
  local CASES = {
    { "missing key", { base_url = "http://127.0.0.1:9/v1" }, "^OpenAI API key missing: set OPENAI_API_KEY" },
    { "connection refused", { api_key = "k", base_url = "http://127.0.0.1:REFUSED/v1" }, "^OpenAI connection refused: " },
    { "DNS", { api_key = "k", base_url = "http://no-such-upstream.invalid/v1" }, "^OpenAI DNS lookup failed: " },
    { "TLS", { api_key = "k", base_url = "https://127.0.0.1:FAKE/v1" }, "^OpenAI TLS error: " },
    { "timeout", { api_key = "k", base_url = "FAKEBASE", timeout_ms = 600, stall_timeout_ms = 0 },
      "^OpenAI request timed out: ", "[[fault:hang]]" },
  }
  for _, c in ipairs(CASES) do
    it("fault from the configuration: " .. c[1], function()
      local cfg = {}
      for k, v in pairs(c[2]) do
        cfg[k] = v
      end
      if cfg.base_url:find("REFUSED") then
        cfg.base_url = cfg.base_url:gsub("REFUSED", tostring(U.free_port()))
      end
      cfg.base_url = cfg.base_url:gsub("FAKEBASE", fake.base):gsub("FAKE", tostring(fake.port))
      with_server(cfg, nil, function(srv)
        local p = "openai/cfgfault"
        srv:post(p, T.config, { model = "openai" })
        for round = 1, 2 do -- the server stays up and answers the same way again
          local _, R, fin = ask(srv, p, ("%s round %d %s"):format(c[1], round, c[4] or ""))
          assert.equal(T.cancelled, fin.type)
          assert.same("error", fin.payload.reason)
          assert.equal(R, fin.payload.requestOffset)
          assert.is_nil(fin.payload.message:find("\n"))
          assert.matches(c[3], fin.payload.message)
          assert_logged(srv:log(), R, p, fin.payload.message)
        end
        srv:wait_idle()
      end)
    end)
  end
end)
