-- spec/support/agents.lua - shared helpers for the /agents functional specs.
--
-- Provides: serve(opts) (registers setup/teardown/after_each that start the real server,
-- check /debug/stats returns to baseline after each test, stop it with exit 0, check its
-- log has no error lines, and remove its temp root), offset formatting, POST helpers,
-- history reads (non-live GET parsed into events with decoded ordered JSON), and the
-- JSON-error assertion used for every 4xx/5xx of the contract.
-- Must not: relax any contract check; specs decide what is expected.
local cjson = require "cjson"
local http = require "spec.support.http"
local sse = require "spec.support.sse"
local server = require "spec.support.server"
local J = require "spec.support.json"

local A = {}

function A.off(n) return string.format("%016d", n) end

--- Registers lifecycle hooks in the enclosing describe block; returns ctx with ctx.srv.
--- opts: server.start options plus allow_errors (patterns excused in the log check).
function A.serve(opts)
  opts = opts or {}
  local busted = require "busted"
  local setup, teardown, after_each = busted.setup, busted.teardown, busted.after_each
  local ctx = {}
  setup(function()
    ctx.srv = server.start(opts)
    ctx.base = ctx.srv:baseline()
  end)
  after_each(function()
    if ctx.srv and ctx.srv:alive() then ctx.srv:wait_stats(ctx.base, 10) end
  end)
  teardown(function()
    local srv = ctx.srv
    if not srv then return end
    local ok, err = pcall(function()
      srv:stop()
      srv:assert_no_error_log(opts.allow_errors, true)
    end)
    srv:cleanup()
    if not ok then error(err, 0) end
  end)
  return ctx
end

function A.url(path, query)
  local u = "/agents/" .. http.escape_path(path)
  if query then u = u .. "?" .. query end
  return u
end

--- Body text for an append. payload is JSON text (default {}); extra is raw JSON text of
--- more top-level members, e.g. '"version":2'.
function A.body(type_, payload, extra)
  local parts = { '"type":' .. J.encode(type_), '"payload":' .. (payload or "{}") }
  if extra then parts[#parts + 1] = extra end
  return "{" .. table.concat(parts, ",") .. "}"
end

--- POST one body (text) to a path (already a URL when it starts with "/"). conn optional.
function A.post(port_or_conn, path, body, headers)
  local url = path:sub(1, 1) == "/" and path or A.url(path)
  if type(port_or_conn) == "table" then
    return port_or_conn:request("POST", url, headers, body)
  end
  return http.request(port_or_conn, "POST", url, headers, body)
end

--- POST and assert 204; returns the offset from Stream-Offset.
function A.append(port_or_conn, path, type_, payload, extra)
  local status, h, b = A.post(port_or_conn, path, A.body(type_ or "t", payload, extra))
  assert(status == 204, string.format("append to %s: expected 204, got %s %s", path, tostring(status), tostring(b)))
  return h["stream-offset"]
end

--- Non-live GET; returns events (each with .json = ordered decode of data), status, headers,
--- raw body text. url may be a path (escaped here) or a full "/..." URL.
function A.history(port, path, query, headers)
  local url = path:sub(1, 1) == "/" and path or A.url(path, query)
  local r = sse.open(port, url, headers, { keep_raw = true })
  local status = assert(r:wait_head(10))
  if status ~= 200 then
    r:close()
    return nil, status, r.headers
  end
  local evs, why = r:read_all(20)
  r:close()
  assert(evs, "history read did not end: " .. tostring(why))
  for _, ev in ipairs(evs) do
    ev.json = J.decode(ev.data)
  end
  return evs, status, r.headers, r:raw_body()
end

--- Offsets (as strings) of a list of events.
function A.offsets(evs)
  local out = {}
  for i, ev in ipairs(evs) do out[i] = ev.id end
  return out
end

--- Asserts a contract error response: status, JSON content type, {"error": one line}.
function A.assert_json_error(want_status, status, headers, body, what)
  what = what or ""
  assert(status == want_status, string.format("%s: expected status %d, got %s (body %q)", what, want_status,
    tostring(status), tostring(body)))
  local ct = headers["content-type"] or ""
  assert(ct:lower():match("^application/json"), string.format("%s: expected application/json, got %q", what, ct))
  local ok, obj = pcall(cjson.decode, body)
  assert(ok and type(obj) == "table", string.format("%s: error body is not JSON: %q", what, tostring(body)))
  assert(type(obj.error) == "string" and #obj.error > 0, string.format("%s: no \"error\" string in %q", what, body))
  assert(not obj.error:find("\n"), string.format("%s: error message is not one line: %q", what, obj.error))
end

--- Keys of an ordered object, as a list.
function A.keys(o) return o.keys end

return A
