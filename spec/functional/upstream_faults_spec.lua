-- Upstream fault catalogue for both model transports, through their fakes: the OpenAI HTTP/SSE
-- transport (spec/fixtures/upstream/openai_fake.py) and the Grok realtime WebSocket transport
-- (spec/fixtures/upstream/grok_fake.py). Faults: connection refused, DNS failure (a name under
-- .invalid), TLS failure (https/wss to a plain port), 401, 429, 500, stalled stream, garbage,
-- malformed events, connection reset and close mid-answer, clean EOF without completion,
-- response.failed, a hanging upstream, WebSocket handshake refused, no session, invalid JSON,
-- error message, WebSocket drop mid-answer. Every case must end the request with
-- request-cancelled reason "error" and a one-line message (no key in it), the server stays up,
-- and the next prompt on the same path succeeds (for faults that come from the configuration
-- itself - refused, DNS, TLS - the next prompt goes to the echo model on that path).
-- Every case runs even when an earlier one failed; the counts printed per transport are the
-- real outcomes ("openai 13/14" when one case failed), and each `it` fails naming every
-- case that did not end cleanly.
package.path = "./?.lua;" .. package.path
local R = require("spec.support.rel")
local U = require("spec.support.upstream")
local cjson = require("cjson")

local T = require("spec.support.agent_events")
local USER, CONFIG, STARTED, ENDED, CANCELLED = T.user, T.config, T.started, T.ended, T.cancelled
local OPENAI_KEY = "sk-faults-5e1d0c9b"
local XAI_KEY = "xai-faults-77a2c41e"

-- Server with the given model settings; keys and URLs only from the config and env below.
local function server(models, env)
  local e = { OPENAI_API_KEY = OPENAI_KEY, XAI_API_KEY = XAI_KEY }
  for k, v in pairs(env or {}) do
    e[k] = v
  end
  return R.start({ config = { storage = "memory", agents = { default_model = "echo", models = models } }, env = e })
end

local function events(srv, path, after)
  local r = srv:req("GET", "/agents/" .. path .. (after and ("?offset=" .. after) or ""))
  assert(r.status == 200, "read " .. path .. ": " .. tostring(r.status))
  local out = {}
  for data in r.body:gmatch("data: ([^\n]*)\n") do
    out[#out + 1] = cjson.decode(data)
  end
  return out
end

local function post(srv, path, etype, payload)
  local r = srv:req("POST", "/agents/" .. path, cjson.encode({ type = etype, payload = payload }))
  assert(r.status == 204, "post " .. etype .. ": " .. tostring(r.status) .. " " .. tostring(r.body))
  return tonumber(r.headers["stream-offset"])
end

-- Sends a prompt and waits for its request's end event.
local function ask(srv, path, text, timeout)
  local off = post(srv, path, USER, { content = text })
  local reqoff
  return R.wait_for(function()
    for _, e in ipairs(events(srv, path, off)) do
      if e.type == STARTED and not reqoff then
        reqoff = e.offset
      end
      if reqoff and (e.type == ENDED or e.type == CANCELLED) and e.payload.requestOffset == reqoff then
        return e
      end
    end
  end, timeout or 20, "the end of the request for " .. text)
end

local function assert_error_end(e, pattern, what)
  assert(e.type == CANCELLED, what .. ": ended with " .. e.type)
  assert.equal("error", e.payload.reason)
  local m = e.payload.message
  assert(type(m) == "string" and #m > 0 and not m:find("\n"), what .. ": message " .. tostring(m))
  assert(#m <= 400, what .. ": message too long")
  assert(not m:find(OPENAI_KEY, 1, true) and not m:find(XAI_KEY, 1, true), what .. ": key in the message")
  if pattern then
    assert(m:find(pattern), what .. ": message '" .. m .. "' does not match " .. pattern)
  end
end

-- Runs fn(fake) with a fake upstream of `kind` (spec/support/upstream.lua), then stops it.
local function with_fake(kind, opts, fn)
  local fake = U.start(kind, opts)
  local ok, err = pcall(fn, fake)
  fake:stop()
  assert(ok, err)
end

-- Runs fn() against srv, then stops and removes the server: fn's error first, then any
-- sanitizer report, then `secret` (when given) found in the server's log.
local function with_server(srv, secret, fn)
  local ok, err = pcall(fn)
  srv:stop()
  local log = srv:log()
  local sok, serr = pcall(srv.assert_no_sanitizer_reports, srv)
  srv:cleanup()
  assert(ok, err)
  assert(sok, serr)
  if secret then
    assert.falsy(log:find(secret, 1, true))
  end
end

-- Outcomes per transport: every catalogue case runs (a failing case does not stop the ones
-- after it), and its real result is recorded, so the printed "n/m" counts what happened.
local COUNTS = {}
local function record(transport, name, ok, err)
  local c = COUNTS[transport] or { cases = 0, clean = 0, failures = {} }
  COUNTS[transport] = c
  c.cases = c.cases + 1
  if ok then
    c.clean = c.clean + 1
  else
    c.failures[#c.failures + 1] = name .. ": " .. tostring(err)
  end
end

-- Runs one case of the catalogue; returns whether it ended cleanly (never raises).
local function case(transport, name, fn)
  local ok, err = pcall(fn)
  record(transport, name, ok, err)
  return ok
end

-- Fails the enclosing `it` when any of the cases recorded for `transport` since `from`
-- (the failure count before they ran) failed, listing every failure.
local function assert_clean_since(transport, from)
  local c = COUNTS[transport] or { failures = {} }
  local failed = {}
  for i = from + 1, #c.failures do failed[#failed + 1] = c.failures[i] end
  assert(#failed == 0, ("%s: %d case(s) did not end cleanly:\n%s"):format(transport, #failed, table.concat(failed, "\n")))
end

local function failures_so_far(transport)
  return COUNTS[transport] and #COUNTS[transport].failures or 0
end

-- Faults that come from the configuration itself (cases: {name, upstream URL, message
-- pattern}): on a server of its own each, two prompts to `model` end with the error and the
-- server stays up; the path then answers with the echo model. settings(url) gives the
-- model's config table and the server's environment.
local function config_faults(model, cases, settings)
  local from = failures_so_far(model)
  for _, c in ipairs(cases) do
    case(model, c[1], function()
      local cfg, env = settings(c[2])
      local srv = server({ [model] = cfg }, env)
      with_server(srv, nil, function()
        local p = "faults/cfg-" .. model
        post(srv, p, CONFIG, { model = model })
        for round = 1, 2 do
          assert_error_end(ask(srv, p, c[1] .. " round " .. round), c[3], model .. " " .. c[1])
          assert(srv:alive(), "the server died")
        end
        post(srv, p, CONFIG, { model = "echo" })
        assert.equal(ENDED, ask(srv, p, "echo after " .. c[1]).type)
      end)
    end)
  end
  assert_clean_since(model, from)
end

describe("upstream faults", function()
  teardown(function()
    local parts, failed = {}, {}
    for t, c in pairs(COUNTS) do
      parts[#parts + 1] = ("%s %d/%d ended cleanly with the next prompt answered"):format(t, c.clean, c.cases)
      for _, f in ipairs(c.failures) do failed[#failed + 1] = "  FAILED " .. t .. " " .. (f:gsub("\n.*", "")) end
    end
    table.sort(parts)
    table.sort(failed)
    print("\nupstream faults: " .. table.concat(parts, "; ") .. (#failed > 0 and ("\n" .. table.concat(failed, "\n")) or ""))
  end)

  it("openai: every fault of the fake ends the request cleanly and the next prompt works", function()
    with_fake("openai", { pace_ms = 1 }, function(fake)
      local base = fake.base
      local srv = server({ openai = { base_url = base, stall_timeout_ms = 800, timeout_ms = 4000 } },
        { OPENAI_BASE_URL = base })
      with_server(srv, OPENAI_KEY, function()
        local p = "faults/openai"
        post(srv, p, CONFIG, { model = "openai" })
        assert.equal(ENDED, ask(srv, p, "warm up [[tokens:3]]").type)
        local faults = {
          { "401", "401" }, { "429", "429" }, { "500", "500" }, { "stall", "stall" }, { "hang", "stall" },
          { "garbage", nil }, { "malformed", nil }, { "reset", nil }, { "close", nil }, { "eof", nil },
          { "failed", nil },
        }
        local from = failures_so_far("openai")
        for _, f in ipairs(faults) do
          case("openai", f[1], function()
            assert(srv:alive(), "the server died")
            local e = ask(srv, p, ("fault %s [[fault:%s]] [[tokens:6]]"):format(f[1], f[1]))
            assert_error_end(e, f[2], "openai " .. f[1])
            assert(srv:alive(), "the server died")
            local nxt = ask(srv, p, "after " .. f[1] .. " [[tokens:3]]")
            assert(nxt.type == ENDED, "openai: the prompt after " .. f[1] .. " ended with " .. nxt.type)
          end)
        end
        assert_clean_since("openai", from)
      end)
    end)
  end)

  it("openai: refused, DNS failure and TLS failure end cleanly; the path keeps working", function()
    with_fake("openai", nil, function(fake)
      config_faults("openai", {
        { "refused", ("http://127.0.0.1:%d/v1"):format(U.free_port()), "refused" },
        { "DNS failure", "http://upstream.invalid/v1", nil },
        { "TLS failure", ("https://127.0.0.1:%d/v1"):format(fake.port), "TLS" },
      }, function(url)
        return { base_url = url, connect_timeout_ms = 3000, timeout_ms = 5000 }, { OPENAI_BASE_URL = url }
      end)
    end)
  end)

  it("grok: every fault of the fake ends the request cleanly and the next prompt works", function()
    if not U.grok_available() then
      pending("python3-websockets is not installed for /usr/bin/python3")
      return
    end
    with_fake("grok", nil, function(fake)
      local url = fake.url
      local srv = server({ grok = { url = url, ready_timeout_ms = 1500, response_timeout_ms = 1500,
        connect_timeout_ms = 3000 } }, { XAI_REALTIME_URL = url })
      with_server(srv, XAI_KEY, function()
        local p = "faults/grok"
        post(srv, p, CONFIG, { model = "grok" })
        assert.equal(ENDED, ask(srv, p, "warm up").type)
        local faults = {
          { "handshake 401", control = "next=401", pattern = "401" },
          { "no session", control = "next=nosession", pattern = "session" },
          { "invalid JSON", marker = "[fault:badjson]", pattern = "JSON" },
          { "stall", marker = "[fault:stall]", pattern = "timed out" },
          { "error message", marker = "[fault:error]" },
          { "WebSocket drop", marker = "[fault:drop]" },
        }
        local from = failures_so_far("grok")
        for i, f in ipairs(faults) do
          case("grok", f[1], function()
            assert(srv:alive(), "the server died")
            if f.control then
              -- connection-level faults hit the next connection: a fresh path opens one
              p = "faults/grok-" .. i
              post(srv, p, CONFIG, { model = "grok" })
              fake:control(f.control)
            end
            local e = ask(srv, p, "fault " .. f[1] .. " " .. (f.marker or ""))
            assert_error_end(e, f.pattern, "grok " .. f[1])
            assert(srv:alive(), "the server died")
            local nxt = ask(srv, p, "after " .. f[1])
            assert(nxt.type == ENDED, "grok: the prompt after " .. f[1] .. " ended with " .. nxt.type)
          end)
        end
        assert_clean_since("grok", from)
      end)
    end)
  end)

  it("grok: refused, DNS failure and TLS failure end cleanly; the path keeps working", function()
    if not U.grok_available() then
      pending("python3-websockets is not installed for /usr/bin/python3")
      return
    end
    with_fake("grok", nil, function(fake)
      config_faults("grok", {
        { "refused", ("ws://127.0.0.1:%d/v1/realtime"):format(U.free_port()), "ECONNREFUSED" },
        { "DNS failure", "ws://upstream.invalid/v1/realtime", nil },
        { "TLS failure", ("wss://127.0.0.1:%d/v1/realtime"):format(fake.port), nil },
      }, function(url)
        return { url = url, connect_timeout_ms = 3000, ready_timeout_ms = 2000 }, { XAI_REALTIME_URL = url }
      end)
    end)
  end)
end)
