-- csrf_spec.lua - cross-site request forgery (issue 12, item 7; agents-api.md §2, revised):
-- a request whose Origin header is not an allowed origin gets 403 JSON and stores or changes
-- nothing, whatever its method and content type (a page's `fetch(url, {method: "POST",
-- mode: "no-cors", body})` is a "simple" request: no preflight ever asks), on every route:
-- /agents, /v1/stream (create, append, delete), the __ds subscription API, a Lua plugin route,
-- reads too. Allowed by default: loopback origins only (http://localhost:*, http://127.0.0.1:*,
-- http://[::1]:*); `cors.allowed_origins` replaces that list ("*" = any origin, "null" must be
-- listed to allow sandboxed iframes and file:// pages). Requests without Origin (curl,
-- servers) are not affected. Preflights agree with the rule. Every refusal is checked by
-- reading back, without an Origin, that nothing was stored.
local http = require "spec.support.http"
local server = require "spec.support.server"
local cjson = require "cjson"

local PLUGIN = [[
ds.http.route("POST", "/hook", function(req)
  local off, err = ds.append("csrf/plugin", "hook:called", ds.json.obj("body", req.body))
  if not off then return 500, err end
  return 200, ds.json.encode(ds.json.obj("offset", off)), { ["Content-Type"] = "application/json" }
end)
]]

local EV = '{"type":"csrf:test","payload":{"n":1}}'
local seq = 0

local function start(cors)
  return server.start({ config = { cors = cors, agents = { default_model = "echo" } },
    plugins = { ["hook.lua"] = PLUGIN } })
end

local function with(cors, fn)
  local srv = start(cors)
  local ok, err = pcall(fn, srv)
  local sok, serr = pcall(srv.stop, srv)
  srv:cleanup()
  assert(ok, err)
  assert(sok, serr)
end

-- A browser's simple request: text/plain body, the page's Origin.
local function req(srv, method, path, origin, body, extra)
  local h = { ["Content-Type"] = "text/plain;charset=UTF-8" }
  if origin then h.Origin = origin end
  for k, v in pairs(extra or {}) do h[k] = v end
  return http.request(srv.port, method, path, h, body)
end

local function events(srv, p)
  local st, _, body = http.request(srv.port, "GET", "/agents/" .. p)
  assert.are.equal(200, st)
  local n = 0
  for _ in body:gmatch("\nevent: data\n") do n = n + 1 end
  return n
end

local function assert_refused(st, h, body, what)
  assert(st == 403, what .. ": expected 403, got " .. tostring(st) .. " " .. tostring(body))
  assert.truthy((h["content-type"] or ""):find("application/json", 1, true), what)
  local obj = cjson.decode(body)
  assert(type(obj.error) == "string" and obj.error:find("origin", 1, true), what .. ": " .. body)
  assert.is_nil(h["access-control-allow-origin"], what)
end

-- Every write route from `origin`: refused, and nothing stored or changed anywhere.
local function assert_all_refused(srv, origin)
  seq = seq + 1
  local p = "csrf/refused" .. seq
  -- a stream that exists, to try appending to and deleting it
  assert.are.equal(201, (http.request(srv.port, "PUT", "/v1/stream/" .. p .. "-kept", { ["Content-Type"] = "text/plain" }, "kept")))
  local plugin_before = events(srv, "csrf/plugin")
  local tries = {
    { "POST", "/agents/" .. p, EV },
    { "POST", "/agents/" .. p, EV, { ["Content-Type"] = "application/json" } },
    { "POST", "/agents/" .. p, EV, { ["Content-Type"] = "application/x-www-form-urlencoded" } },
    { "PUT", "/v1/stream/" .. p, "x" },
    { "POST", "/v1/stream/" .. p .. "-kept", "more" },
    { "DELETE", "/v1/stream/" .. p .. "-kept" },
    { "PUT", "/v1/stream/__ds/subscriptions/csrf" .. seq, '{"type":"pull-wake","streams":["' .. p .. '"],"wake_stream":"' .. p .. '-wake"}',
      { ["Content-Type"] = "application/json" } },
    { "POST", "/hook", "forged" },
    { "GET", "/agents/" .. p },
    { "GET", "/v1/stream/" .. p .. "-kept?offset=-1" },
    { "GET", "/health" },
  }
  for _, t in ipairs(tries) do
    local st, h, body = req(srv, t[1], t[2], origin, t[3], t[4])
    assert_refused(st, h, body, t[1] .. " " .. t[2] .. " from " .. tostring(origin))
  end
  -- nothing stored, nothing changed (read without an Origin)
  assert.are.equal(0, events(srv, p))
  assert.are.equal(404, (http.request(srv.port, "GET", "/v1/stream/" .. p .. "?offset=-1")))
  local gs, _, gb = http.request(srv.port, "GET", "/v1/stream/" .. p .. "-kept?offset=-1")
  assert.are.equal(200, gs)
  assert.are.equal("kept", gb)
  assert.are.equal(404, (http.request(srv.port, "GET", "/v1/stream/__ds/subscriptions/csrf" .. seq)))
  assert.are.equal(plugin_before, events(srv, "csrf/plugin"))
  -- a preflight from there is refused too
  local ps, ph, pb = req(srv, "OPTIONS", "/agents/" .. p, origin, nil, { ["Access-Control-Request-Method"] = "POST" })
  assert_refused(ps, ph, pb, "preflight from " .. tostring(origin))
end

-- Writes from `origin` work (and carry Access-Control-Allow-Origin).
local function assert_allowed(srv, origin, acao)
  seq = seq + 1
  local p = "csrf/allowed" .. seq
  local before = events(srv, "csrf/plugin")
  local st, h, body = req(srv, "POST", "/agents/" .. p, origin, EV)
  assert(st == 204, "POST from " .. origin .. ": " .. tostring(st) .. " " .. tostring(body))
  assert.are.equal(acao or origin, h["access-control-allow-origin"])
  assert.are.equal(1, events(srv, p))
  st = req(srv, "PUT", "/v1/stream/" .. p .. "-v1", origin, "x")
  assert.are.equal(201, st)
  st = req(srv, "POST", "/hook", origin, "legit")
  assert.are.equal(200, st)
  assert.are.equal(before + 1, events(srv, "csrf/plugin"))
  local ps, ph = req(srv, "OPTIONS", "/agents/" .. p, origin, nil,
    { ["Access-Control-Request-Method"] = "POST", ["Access-Control-Request-Headers"] = "content-type" })
  assert.are.equal(204, ps)
  assert.are.equal(acao or origin, ph["access-control-allow-origin"])
end

local FOREIGN = { "https://evil.example", "http://localhost.evil.example", "http://localhost:5173.evil.example",
  "https://localhost:5173", "http://127.0.0.1.nip.io", "http://localhost:3000/", "http://localhost:-1",
  "http://localhost:123456", "HTTP://EVIL.EXAMPLE" }

describe("cross-site requests, default config (loopback origins only)", function()
  local srv
  setup(function() srv = start(nil) end)
  teardown(function()
    if srv then
      srv:stop()
      srv:assert_no_error_log()
      srv:cleanup()
    end
  end)

  for _, o in ipairs(FOREIGN) do
    it("refuses Origin " .. o .. " on every route and stores nothing", function()
      assert_all_refused(srv, o)
    end)
  end

  it("refuses Origin: null (sandboxed iframes, file:// pages) and stores nothing", function()
    assert_all_refused(srv, "null")
  end)

  it("refuses a request carrying two Origin headers", function()
    local c = http.connect(srv.port)
    local raw = "POST /agents/csrf/two HTTP/1.1\r\nHost: a\r\nOrigin: http://localhost:5173\r\n" ..
        "Origin: https://evil.example\r\nContent-Length: " .. #EV .. "\r\n\r\n" .. EV
    assert(c:send_raw(raw))
    local r = c:read_response("POST")
    c:close()
    assert_refused(r.status, r.headers, r.body, "two Origin headers")
    assert.are.equal(0, events(srv, "csrf/two"))
  end)

  for _, o in ipairs({ "http://localhost:5173", "http://localhost", "http://127.0.0.1:8080", "http://[::1]:3000",
    "http://LOCALHOST:5173" }) do
    it("allows the loopback origin " .. o, function() assert_allowed(srv, o) end)
  end

  it("does not affect requests without an Origin (curl, servers)", function()
    local st = http.request(srv.port, "POST", "/agents/csrf/curl", {}, EV)
    assert.are.equal(204, st)
    assert.are.equal(1, events(srv, "csrf/curl"))
  end)
end)

describe("cross-site requests, configured origins", function()
  it("a list replaces the default: listed origins and patterns only", function()
    with({ allowed_origins = { "https://app.example", "http://localhost:*" } }, function(srv)
      assert_allowed(srv, "https://app.example")
      assert_allowed(srv, "http://localhost:5173")
      assert_all_refused(srv, "https://evil.example")
      assert_all_refused(srv, "https://app.example:8443")
      assert_all_refused(srv, "http://127.0.0.1:5173") -- not listed any more
      assert_all_refused(srv, "null")
    end)
    with({ allowed_origins = { "https://app.example" } }, function(srv)
      assert_all_refused(srv, "http://localhost:5173")
    end)
  end)

  it('"*" allows every origin, null included', function()
    with({ allowed_origins = "*" }, function(srv)
      assert_allowed(srv, "https://evil.example", "*")
      assert_allowed(srv, "null", "*")
    end)
  end)

  it('"null" must be listed to allow Origin: null', function()
    with({ allowed_origins = { "null" } }, function(srv)
      assert_allowed(srv, "null")
      assert_all_refused(srv, "https://evil.example")
    end)
  end)

  it("refuses to start with an entry that is not an origin", function()
    for _, bad in ipairs({ "https://app.example/", "app.example", "https://app.example/path", "https://*.example",
      "", "http://", "https://app.example:80x" }) do
      local ok, err = pcall(start, { allowed_origins = { bad } })
      if ok then
        err:stop()
        err:cleanup()
      end
      assert.is_false(ok, "started with allowed_origins = { " .. bad .. " }")
      assert.truthy(tostring(err):find("cors.allowed_origins", 1, true), tostring(err))
    end
  end)
end)
