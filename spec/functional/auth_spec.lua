-- Bearer-token authorization and CORS, end to end against the real binary: with auth on, no
-- route (/agents, /v1/stream, /health, /debug/stats, a Lua plugin route, unknown paths) answers
-- without a valid token; 401 (no or bad token) vs 403 (scope or prefix); ?access_token= for
-- EventSource-style GETs; tokens never reach the log (even at debug level, even from a failing
-- plugin route); CORS preflight and response headers for allowed and disallowed origins
-- (the refusal of other origins on every route is csrf_spec's subject).
package.path = "./?.lua;" .. package.path
local R = require("spec.support.rel")
local cjson = require("cjson.safe")

local ADMIN = "admin-7f3a9c2e51d84b06"
local READER = "reader-2b8e4d1f90a6c375"
local TEAM = "team-a-5c1e8f2a7d93b460"
local ORIGIN = "https://app.example"

local PLUGIN = [[
ds.http.route("GET", "/hello", function(req)
  return 200, ds.json.encode(ds.json.obj("hello", "world")), {["Content-Type"] = "application/json"}
end)
ds.http.route("POST", "/hello", function(req)
  return 200, "{}", {["Content-Type"] = "application/json"}
end)
ds.http.route("GET", "/broken", function(req) error("route exploded") end)
]]

local function bearer(t)
  return { Authorization = "Bearer " .. t }
end

local EV = cjson.encode({ type = "t", payload = { a = 1 } })

-- Every route family, with the body it needs.
local ROUTES = {
  { "GET", "/agents/auth/x" },
  { "HEAD", "/agents/auth/x" },
  { "POST", "/agents/auth/x", EV },
  { "GET", "/agents/auth/x?live=sse&offset=now" },
  { "GET", "/agents" },
  { "PUT", "/v1/stream/auth-x", "" },
  { "POST", "/v1/stream/auth-x", "[1]" },
  { "GET", "/v1/stream/auth-x?offset=-1" },
  { "HEAD", "/v1/stream/auth-x" },
  { "DELETE", "/v1/stream/auth-gone" },
  { "GET", "/health" },
  { "GET", "/debug/stats" },
  { "GET", "/hello" },
  { "POST", "/hello", "{}" },
  { "GET", "/no/such/route" },
}

-- Sends a request head (its lines plus headers) on a fresh connection and returns the
-- status code of the answer's first line (nil when none came), without reading further.
local function head_status(srv, lines, headers)
  local c = srv:connect()
  for k, v in pairs(headers or {}) do
    lines[#lines + 1] = k .. ": " .. v
  end
  c:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
  c:settimeout(5)
  local line = c:receive("*l")
  c:close()
  return line and tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
end

local function call(srv, r, headers)
  local method, target, body = r[1], r[2], r[3]
  if target:find("live=sse") then
    -- a live read never ends: read the head only, then hang up
    local status = head_status(srv, { method .. " " .. target .. " HTTP/1.1", "Host: a" }, headers)
    if status and status >= 400 then
      return srv:req(method, target, body, headers) -- read the whole error answer
    end
    return { status = status, headers = {}, body = "" }
  end
  if method == "HEAD" then
    local status = head_status(srv, { "HEAD " .. target .. " HTTP/1.1", "Host: a", "Connection: close" }, headers)
    return { status = status, body = "" }
  end
  return srv:req(method, target, body, headers)
end

local function start(extra)
  local cfg = {
    log_level = "debug",
    auth = {
      tokens = {
        { token = ADMIN },
        { token = READER, scopes = { "read" } },
        { token = TEAM, scopes = { "read", "append" }, prefixes = { "/agents/team-a/", "/v1/stream/team-a/" } },
      },
    },
    cors = { allowed_origins = { ORIGIN, "http://localhost:5173" } },
  }
  for k, v in pairs(extra or {}) do
    cfg[k] = v
  end
  return R.start({ config = cfg, plugins = { ["hello.lua"] = PLUGIN } })
end

local function run(srv, fn)
  local ok, err = pcall(function()
    fn()
    srv:stop()
    srv:assert_no_sanitizer_reports()
  end)
  local log = srv:log()
  srv:cleanup()
  assert(ok, tostring(err) .. "\n--- server log tail:\n" .. log:sub(-2000))
  return log
end

describe("bearer-token auth", function()
  local srv, log

  setup(function()
    srv = start()
  end)

  teardown(function()
    if srv then
      srv:stop()
      log = srv:log()
      local ok, err = pcall(srv.assert_no_sanitizer_reports, srv)
      srv:cleanup()
      assert(ok, err)
    end
  end)

  it("answers 401 with a JSON error on every route without a valid token", function()
    local bad = {
      false, -- no Authorization header at all
      { Authorization = "Bearer" },
      { Authorization = "Bearer " },
      { Authorization = "Bearer wrong-token-0000000000" },
      { Authorization = "Bearer " .. ADMIN:upper() },
      { Authorization = "Bearer " .. ADMIN:sub(1, -2) },
      { Authorization = "Bearer " .. ADMIN .. "x" },
      { Authorization = "Basic " .. ADMIN },
      { Authorization = ADMIN },
      { ["X-Access-Token"] = ADMIN },
    }
    local n = 0
    for _, r in ipairs(ROUTES) do
      for _, h in ipairs(bad) do
        local resp = call(srv, r, h or nil)
        assert(resp.status == 401, ("%s %s with %s: %s"):format(r[1], r[2], cjson.encode(h), tostring(resp.status)))
        if r[1] ~= "HEAD" then
          assert(R.json_error(resp), "401 without a JSON error: " .. tostring(resp.body))
          assert.equal("Bearer", resp.headers["www-authenticate"])
        end
        n = n + 1
      end
    end
    -- ?access_token= with a wrong value is no better
    local resp = srv:req("GET", "/agents/auth/x?access_token=nope-nope-nope")
    assert.equal(401, resp.status)
    print(("\nauth: %d unauthenticated requests over %d routes, all 401"):format(n + 1, #ROUTES))
    -- nothing was written by any of them
    assert.same({}, R.files_under(srv.data_dir .. "/streams/auth"))
  end)

  it("lets a full token reach every route", function()
    for _, r in ipairs(ROUTES) do
      local resp = call(srv, r, bearer(ADMIN))
      assert(resp.status and resp.status ~= 401 and resp.status ~= 403,
        ("%s %s: %s %s"):format(r[1], r[2], tostring(resp.status), tostring(resp.body)))
    end
    assert.equal(200, srv:req("GET", "/hello", nil, bearer(ADMIN)).status)
    assert.equal(204, srv:req("POST", "/agents/auth/y", EV, bearer(ADMIN)).status)
    assert.equal(200, srv:req("GET", "/health", nil, bearer(ADMIN)).status)
  end)

  it("answers 403 for a read-only token on writes and for paths outside a token's prefixes", function()
    -- read scope: reads pass, every write is 403
    assert.equal(200, srv:req("GET", "/agents/auth/y", nil, bearer(READER)).status)
    assert.equal(200, srv:req("GET", "/health", nil, bearer(READER)).status)
    assert.equal(200, srv:req("GET", "/hello", nil, bearer(READER)).status)
    for _, r in ipairs({ { "POST", "/agents/auth/z", EV }, { "PUT", "/v1/stream/auth-r", "" },
      { "POST", "/v1/stream/auth-x", "[2]" }, { "DELETE", "/v1/stream/auth-x" }, { "POST", "/hello", "{}" } }) do
      local resp = call(srv, r, bearer(READER))
      assert(resp.status == 403, r[1] .. " " .. r[2] .. ": " .. tostring(resp.status))
      assert(R.json_error(resp))
    end
    -- prefix token: its own prefix only
    assert.equal(204, srv:req("POST", "/agents/team-a/x", EV, bearer(TEAM)).status)
    assert.equal(200, srv:req("GET", "/agents/team-a/x", nil, bearer(TEAM)).status)
    for _, r in ipairs({ { "POST", "/agents/team-b/x", EV }, { "GET", "/agents/team-b/x" },
      { "GET", "/agents/team-a-evil/x" }, { "POST", "/agents/team-a", EV }, { "GET", "/health" },
      { "GET", "/debug/stats" }, { "GET", "/hello" }, { "PUT", "/v1/stream/team-b/s", "" } }) do
      local resp = call(srv, r, bearer(TEAM))
      assert(resp.status == 403, r[1] .. " " .. r[2] .. ": " .. tostring(resp.status))
      assert(R.json_error(resp))
    end
    -- escaping the prefix through the path is refused before anything is stored
    for _, t in ipairs({ "/agents/team-a/../team-b/x", "/agents/team-a/%2e%2e/team-b/x",
      "/agents/team-a/..%2Fteam-b%2Fx", "/agents/team-a/%2E%2E/team-b/x" }) do
      local resp = srv:req("POST", t, EV, bearer(TEAM))
      assert(resp.status == 400 or resp.status == 403, t .. ": " .. tostring(resp.status))
    end
    assert.same({}, R.files_under(srv.data_dir .. "/streams/team-b"))
  end)

  it("accepts ?access_token= for EventSource-style GETs", function()
    local resp = srv:req("GET", "/agents/auth/y?access_token=" .. READER)
    assert.equal(200, resp.status)
    assert.truthy(resp.body:find('"type":"t"', 1, true))
    resp = srv:req("GET", "/v1/stream/auth-x?offset=-1&access_token=" .. ADMIN)
    assert.equal(200, resp.status)
    -- a live SSE read with the token in the query
    local c = srv:connect()
    c:send("GET /agents/auth/y?live=sse&access_token=" .. READER .. " HTTP/1.1\r\nHost: a\r\n\r\n")
    c:settimeout(5)
    assert.equal("HTTP/1.1 200 OK", c:receive("*l"))
    c:close()
    -- the query token carries its scope: a read token cannot append through it
    assert.equal(403, srv:req("POST", "/agents/auth/y?access_token=" .. READER, EV).status)
  end)

  it("never writes a token to the log", function()
    -- a failing plugin route with the token in the query, a 403, bad tokens
    assert.equal(500, srv:req("GET", "/broken?access_token=" .. ADMIN).status)
    assert.equal(500, srv:req("GET", "/broken", nil, bearer(READER)).status)
    srv:req("POST", "/agents/team-b/x?access_token=" .. TEAM, EV)
    srv:req("GET", "/agents/%2e%2e?access_token=" .. ADMIN)
    srv:req("GET", "/no/route?access_token=" .. READER)
    R.wait_for(function()
      return srv:log():find("route exploded", 1, true)
    end, 5, "the route failure in the log")
    local l = srv:log()
    assert.truthy(l:find("bearer-token authorization is on", 1, true))
    for _, t in ipairs({ ADMIN, READER, TEAM, ADMIN:sub(1, 12), READER:sub(-12), TEAM:sub(4, 16) }) do
      assert.falsy(l:find(t, 1, true), "a token appears in the log")
    end
  end)
end)

describe("CORS", function()
  it("answers preflights for allowed origins only, and labels responses", function()
    local srv = start()
    run(srv, function()
      -- preflight: no token needed (browsers send none), allowed origin
      local pre = srv:req("OPTIONS", "/agents/auth/x", nil, { Origin = ORIGIN,
        ["Access-Control-Request-Method"] = "POST", ["Access-Control-Request-Headers"] = "authorization, content-type" })
      assert.equal(204, pre.status)
      assert.equal(ORIGIN, pre.headers["access-control-allow-origin"])
      assert.truthy(pre.headers["access-control-allow-methods"]:find("POST", 1, true))
      assert.truthy(pre.headers["access-control-allow-headers"]:lower():find("authorization", 1, true))
      assert.equal("nosniff", pre.headers["x-content-type-options"])
      -- disallowed origin: 403 JSON, no allow-origin
      local bad = srv:req("OPTIONS", "/agents/auth/x", nil, { Origin = "https://evil.example",
        ["Access-Control-Request-Method"] = "POST" })
      assert.equal(403, bad.status)
      assert(R.json_error(bad))
      assert.is_nil(bad.headers["access-control-allow-origin"])
      -- a suffix or prefix of an allowed origin is not allowed
      for _, o in ipairs({ ORIGIN .. ".evil.example", "https://app.example:8443", "http://app.example", "null" }) do
        local r = srv:req("OPTIONS", "/health", nil, { Origin = o, ["Access-Control-Request-Method"] = "GET" })
        assert(r.status == 403, o)
        assert.is_nil(r.headers["access-control-allow-origin"])
      end
      -- actual requests: allowed origin gets ACAO + Vary + exposed headers, on errors too
      local ok = srv:req("GET", "/agents/auth/x", nil, { Origin = ORIGIN, Authorization = "Bearer " .. ADMIN })
      assert.equal(200, ok.status)
      assert.equal(ORIGIN, ok.headers["access-control-allow-origin"])
      assert.equal("Origin", ok.headers["vary"])
      assert.truthy(ok.headers["access-control-expose-headers"]:find("Stream-Next-Offset", 1, true))
      local denied = srv:req("GET", "/agents/auth/x", nil, { Origin = ORIGIN })
      assert.equal(401, denied.status)
      assert.equal(ORIGIN, denied.headers["access-control-allow-origin"])
      -- another origin is refused outright, even with a valid token (csrf_spec has the rule)
      local other = srv:req("GET", "/agents/auth/x", nil, { Origin = "https://evil.example", Authorization = "Bearer " .. ADMIN })
      assert.equal(403, other.status)
      assert(R.json_error(other))
      assert.is_nil(other.headers["access-control-allow-origin"])
      -- security headers on everything, the HTTP layer's own errors included
      local raw = srv:raw("GARBAGE\r\n\r\n")
      assert.equal(400, raw.status)
      assert.equal("nosniff", raw.headers["x-content-type-options"])
    end)
  end)

  it("allows only loopback origins when cors is not configured", function()
    local srv = R.start({ config = {} })
    run(srv, function()
      local r = srv:req("GET", "/health", nil, { Origin = "http://localhost:5173" })
      assert.equal(200, r.status)
      assert.equal("http://localhost:5173", r.headers["access-control-allow-origin"])
      assert.equal("Origin", r.headers["vary"])
      local pre = srv:req("OPTIONS", "/agents/x", nil, { Origin = "http://127.0.0.1:8080",
        ["Access-Control-Request-Method"] = "POST" })
      assert.equal(204, pre.status)
      assert.equal("http://127.0.0.1:8080", pre.headers["access-control-allow-origin"])
      local bad = srv:req("OPTIONS", "/agents/x", nil, { Origin = "https://anything.example",
        ["Access-Control-Request-Method"] = "POST" })
      assert.equal(403, bad.status)
      assert.is_nil(bad.headers["access-control-allow-origin"])
    end)
  end)

  it('allows any origin with allowed_origins = "*"', function()
    local srv = R.start({ config = { cors = { allowed_origins = "*" } } })
    run(srv, function()
      local r = srv:req("GET", "/health", nil, { Origin = "https://anything.example" })
      assert.equal(200, r.status)
      assert.equal("*", r.headers["access-control-allow-origin"])
      local pre = srv:req("OPTIONS", "/agents/x", nil, { Origin = "https://anything.example",
        ["Access-Control-Request-Method"] = "POST" })
      assert.equal(204, pre.status)
      assert.equal("*", pre.headers["access-control-allow-origin"])
    end)
  end)

  it("refuses to start with a malformed auth table", function()
    for _, auth in ipairs({ { tokens = { { token = "short" } } }, { tokens = { { token = ADMIN, scopes = { "admin" } } } },
      { tokens = "x" } }) do
      local ok, err = pcall(R.start, { config = { auth = auth } })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("refusing to start", 1, true), tostring(err))
      assert.falsy(tostring(err):find(ADMIN, 1, true))
    end
  end)
end)
