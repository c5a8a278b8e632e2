-- Hostile-client catalogue: malformed request lines and headers, huge headers, bodies over the
-- limit, chunked-encoding abuse, request smuggling, invalid UTF-8, deep JSON, path traversal in
-- every encoding, slowloris, idle connections past the limit, SSE readers that never read.
-- Every case must end in a 4xx (with a one-line JSON error where the server answers) or a
-- connection close, and after every case the server must still serve a normal append and read.
-- The whole catalogue runs twice: a warm-up round (allocator caches, connection pools), then a
-- measured round; the server's RSS after the measured round must be within 10% of before it.
-- No file may appear outside the data dir.
package.path = "./?.lua;" .. package.path
local R = require("spec.support.rel")
local socket = require("socket")

local CRLF = "\r\n"
local LIMITS = {
  max_body_bytes = 65536,
  max_header_bytes = 8192,
  max_json_depth = 32,
  max_connections = 24,
  header_timeout_ms = 1500,
  body_timeout_ms = 1500,
  idle_timeout_ms = 60000,
  subscriber_backlog_bytes = 65536,
  -- the slow-reader case appends ~4 MB per round; a small hot-tail cache keeps that (a
  -- bounded cache by design) out of the RSS comparison, which looks for leaks
  tail_cache_bytes = 65536,
  tail_cache_total_bytes = 1048576,
}

local function get(target, extra)
  return "GET " .. target .. " HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. (extra or "") .. "Connection: close" .. CRLF .. CRLF
end

local function post(target, body, extra)
  return "POST " .. target .. " HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. "Content-Type: application/json" .. CRLF
    .. (extra or ("Content-Length: " .. #body .. CRLF)) .. "Connection: close" .. CRLF .. CRLF .. body
end

local EV = '{"type":"t","payload":{"a":1}}'

local function chunked(chunks_text)
  return "POST /agents/h/chunk HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. "Transfer-Encoding: chunked" .. CRLF
    .. "Connection: close" .. CRLF .. CRLF .. chunks_text
end

local function nest(n, open, close, inner)
  return open:rep(n) .. (inner or "1") .. close:rep(n)
end

-- A case is {name, bytes} (sent on one connection, one response read) or {name, fn = function(srv)
-- -> response}. `status` pins the exact code; otherwise any 4xx or a close passes.
local CASES = {
  -- malformed request lines
  { "garbage request line", "GARBAGE" .. CRLF .. CRLF },
  { "method only", "GET" .. CRLF .. CRLF },
  { "unknown HTTP version", "GET /health HTTP/9.9" .. CRLF .. "Host: a" .. CRLF .. CRLF },
  { "extra token after version", "GET /health HTTP/1.1 extra" .. CRLF .. "Host: a" .. CRLF .. CRLF },
  { "binary request line", "\0\1\2\3\255\254" .. CRLF .. CRLF },
  { "tab instead of space", "GET\t/health\tHTTP/1.1" .. CRLF .. CRLF },
  { "lowercase method", "get /health HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. CRLF },
  { "HTTP/0.9 style request", "GET /health" .. CRLF .. CRLF },
  { "CONNECT tunnel request", "CONNECT evil.example:443 HTTP/1.1" .. CRLF .. "Host: evil.example:443" .. CRLF .. CRLF },
  { "absolute-form target to another host", get("http://evil.example/agents/x") },
  { "asterisk target", get("*") },
  { "method of 10000 letters", ("A"):rep(10000) .. " / HTTP/1.1" .. CRLF .. CRLF },
  { "URI of 100 KB", get("/agents/" .. ("a"):rep(100000)), status = 431 },
  { "control character in target", "GET /agents/a\1b HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. CRLF },
  { "unsupported method on a stream", "DELETE /agents/h/x HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. "Connection: close" .. CRLF .. CRLF },
  -- malformed headers
  { "header line without colon", "GET /health HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. "NoColonHere" .. CRLF .. CRLF },
  { "space in header name", "GET /health HTTP/1.1" .. CRLF .. "Bad Name: x" .. CRLF .. CRLF },
  { "space before colon", "GET /health HTTP/1.1" .. CRLF .. "Host : a" .. CRLF .. CRLF },
  { "empty header name", "GET /health HTTP/1.1" .. CRLF .. ": x" .. CRLF .. CRLF },
  { "NUL in header value", "GET /health HTTP/1.1" .. CRLF .. "X-A: a\0b" .. CRLF .. CRLF },
  { "bare CR in header value", "GET /health HTTP/1.1" .. CRLF .. "X-A: a\rb" .. CRLF .. CRLF },
  { "separator in header name", "GET /health HTTP/1.1" .. CRLF .. "X(a): b" .. CRLF .. CRLF },
  { "obs-fold continuation line", "GET /health HTTP/1.1" .. CRLF .. "X-A: a" .. CRLF .. " folded" .. CRLF .. CRLF },
  { "non-numeric Content-Length", post("/agents/h/x", EV, "Content-Length: abc" .. CRLF) },
  { "negative Content-Length", post("/agents/h/x", EV, "Content-Length: -1" .. CRLF) },
  { "Content-Length with a plus sign", post("/agents/h/x", EV, "Content-Length: +" .. #EV .. CRLF) },
  { "Content-Length of 20 digits", post("/agents/h/x", EV, "Content-Length: 99999999999999999999" .. CRLF) },
  { "Content-Length list", post("/agents/h/x", EV, "Content-Length: " .. #EV .. ", " .. (#EV + 1) .. CRLF) },
  -- huge headers
  { "one header of 20 KB", get("/health", "X-Big: " .. ("b"):rep(20000) .. CRLF), status = 431 },
  { "1200 small headers", get("/health", ("X-H: v" .. CRLF):rep(1200)), status = 431 },
  { "headers without end", "GET /health HTTP/1.1" .. CRLF .. ("X-H: v" .. CRLF):rep(2000), status = 431 },
  -- bodies over the limit
  { "declared body of 10 MB", post("/agents/h/x", "", "Content-Length: 10485760" .. CRLF), status = 413 },
  { "sent body of 70 KB", post("/agents/h/x", '{"type":"t","payload":{"x":"' .. ("x"):rep(70000) .. '"}}'), status = 413 },
  { "chunked body over the limit", chunked(("4000" .. CRLF .. ("x"):rep(0x4000) .. CRLF):rep(5) .. "0" .. CRLF .. CRLF), status = 413 },
  { "100-continue with a huge body", post("/agents/h/x", "", "Content-Length: 999999999" .. CRLF .. "Expect: 100-continue" .. CRLF), status = 413 },
  -- chunked-encoding abuse
  { "chunk size not hex", chunked("zz" .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "negative chunk size", chunked("-1" .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "chunk size of 18 hex digits", chunked("ffffffffffffffffff" .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "chunk size 7fffffffffffffff", chunked("7fffffffffffffff" .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "missing CRLF after chunk data", chunked(("%x"):format(#EV) .. CRLF .. EV .. "0" .. CRLF .. CRLF) },
  { "chunk data longer than its size", chunked("2" .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "control byte in chunk extension", chunked(("%x"):format(#EV) .. ";a\1b" .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "chunk extension of 20 KB", chunked(("%x"):format(#EV) .. ";" .. ("e"):rep(20000) .. CRLF .. EV .. CRLF .. "0" .. CRLF .. CRLF) },
  { "trailers of 20 KB", chunked(("%x"):format(#EV) .. CRLF .. EV .. CRLF .. "0" .. CRLF .. ("X-T: " .. ("t"):rep(100) .. CRLF):rep(200) .. CRLF) },
  { "malformed trailer line", chunked(("%x"):format(#EV) .. CRLF .. EV .. CRLF .. "0" .. CRLF .. "bad trailer" .. CRLF .. CRLF) },
  { "body ends mid-chunk", chunked("100" .. CRLF .. EV), shutdown = true },
  { "chunked stream never terminated", chunked(("%x"):format(#EV) .. CRLF .. EV .. CRLF), status = 408 },
  -- request smuggling
  { "Content-Length and Transfer-Encoding", post("/agents/h/x", "0" .. CRLF .. CRLF, "Content-Length: 5" .. CRLF .. "Transfer-Encoding: chunked" .. CRLF), status = 400 },
  { "Transfer-Encoding then Content-Length", post("/agents/h/x", "0" .. CRLF .. CRLF, "Transfer-Encoding: chunked" .. CRLF .. "Content-Length: 5" .. CRLF), status = 400 },
  { "duplicate conflicting Content-Length", post("/agents/h/x", EV, "Content-Length: " .. #EV .. CRLF .. "Content-Length: 3" .. CRLF), status = 400 },
  { "Transfer-Encoding: identity", post("/agents/h/x", EV, "Transfer-Encoding: identity" .. CRLF), status = 400 },
  { "Transfer-Encoding: gzip, chunked", post("/agents/h/x", "0" .. CRLF .. CRLF, "Transfer-Encoding: gzip, chunked" .. CRLF), status = 400 },
  { "Transfer-Encoding: xchunked", post("/agents/h/x", "0" .. CRLF .. CRLF, "Transfer-Encoding: xchunked" .. CRLF) },
  { "Transfer-Encoding twice", post("/agents/h/x", "0" .. CRLF .. CRLF, "Transfer-Encoding: chunked" .. CRLF .. "Transfer-Encoding: chunked" .. CRLF) },
  { "Transfer-Encoding folded (obs-fold)", post("/agents/h/x", "0" .. CRLF .. CRLF, "Transfer-Encoding:" .. CRLF .. " chunked" .. CRLF) },
  { "Transfer-Encoding with CL in HTTP/1.0", "POST /agents/h/x HTTP/1.0" .. CRLF .. "Content-Length: 5" .. CRLF .. "Transfer-Encoding: chunked" .. CRLF .. CRLF .. "0" .. CRLF .. CRLF, status = 400 },
  -- invalid UTF-8 and bad JSON
  { "invalid UTF-8 byte in body", post("/agents/h/x", '{"type":"t","payload":{"s":"\255"}}'), status = 400 },
  { "overlong UTF-8 in body", post("/agents/h/x", '{"type":"t","payload":{"s":"\192\174"}}'), status = 400 },
  { "UTF-16 surrogate bytes in body", post("/agents/h/x", '{"type":"t","payload":{"s":"\237\160\128"}}'), status = 400 },
  { "truncated UTF-8 in body", post("/agents/h/x", '{"type":"t","payload":{"s":"\226\130"}}'), status = 400 },
  { "invalid UTF-8 in event type", post("/agents/h/x", '{"type":"\255","payload":{}}'), status = 400 },
  { "raw 0xFF in path", get("/agents/h/\255"), status = 400 },
  { "percent-encoded invalid UTF-8 in path", get("/agents/h/%ff%fe"), status = 400 },
  { "not JSON", post("/agents/h/x", "not json"), status = 400 },
  { "JSON without type", post("/agents/h/x", '{"payload":{}}'), status = 400 },
  { "JSON with trailing garbage", post("/agents/h/x", EV .. "}"), status = 400 },
  -- deep JSON
  { "payload nested 40 arrays", post("/agents/h/x", '{"type":"t","payload":{"a":' .. nest(40, "[", "]") .. "}}"), status = 400 },
  { "payload nested 40 objects", post("/agents/h/x", '{"type":"t","payload":' .. nest(40, '{"a":', "}") .. "}"), status = 400 },
  { "body of 60000 open brackets", post("/agents/h/x", ("["):rep(60000)), status = 400 },
  -- path traversal in every encoding
  { "raw ..", get("/agents/../../etc/passwd"), status = 400 },
  { "raw .. mid-path", get("/agents/h/../../../x"), status = 400 },
  { "raw . segment", get("/agents/h/./x"), status = 400 },
  { "%2e%2e", get("/agents/%2e%2e/%2e%2e/etc/passwd"), status = 400 },
  { "%2E%2e mixed case", get("/agents/h/%2E%2e/x"), status = 400 },
  { ".%2e", get("/agents/h/.%2e/x"), status = 400 },
  { "%2e segment", get("/agents/h/%2e/x"), status = 400 },
  { "..%2F (encoded slash)", get("/agents/..%2F..%2Fetc"), status = 400 },
  { "%2F alone", get("/agents/h%2Fx"), status = 400 },
  { "..%5C (encoded backslash)", get("/agents/..%5C..%5Cetc"), status = 400 },
  { "raw backslash", get("/agents/h\\..\\x"), status = 400 },
  { "%00 NUL", get("/agents/h/x%00.yaml"), status = 400 },
  { "overlong %c0%ae", get("/agents/%c0%ae%c0%ae/x"), status = 400 },
  { "overlong %c0%af slash", get("/agents/h/..%c0%afx"), status = 400 },
  { "double slash inside", get("/agents/h//x"), status = 400 },
  { "trailing slash", get("/agents/h/x/"), status = 400 },
  { "POST with %2e%2e", post("/agents/%2e%2e/escape", EV), status = 400 },
  { "POST with raw ..", post("/agents/h/../../../escape", EV), status = 400 },
  { "POST with %252e%252e stays a literal name", post("/agents/h/%252e%252e/lit", EV), status = 204, inside = true },
  { "bad percent escape", get("/agents/h/%zz"), status = 400 },
  { "truncated percent escape", get("/agents/h/x%2"), status = 400 },
  { "path over 512 bytes", get("/agents/" .. ("p/"):rep(300) .. "x"), status = 400 },
  -- the same against the Durable Streams front end
  { "/v1/stream raw ..", "PUT /v1/stream/../x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status = 400, text_ok = true },
  { "/v1/stream %2e%2e", "PUT /v1/stream/%2e%2e/x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status = 400, text_ok = true },
  { "/v1/stream %00", "PUT /v1/stream/a%00b HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status = 400, text_ok = true },
  { "/v1/stream overlong %c0%ae", "PUT /v1/stream/%c0%ae%c0%ae/x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status = 400, text_ok = true },
  { "/v1/stream %5C", "PUT /v1/stream/a%5Cb HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status = 400, text_ok = true },
  { "/v1/stream double slash", "PUT /v1/stream/a//b HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status = 400, text_ok = true },
  { "/v1/stream deep, invalid and non-UTF-8 JSON appends", fn = function(srv)
    local c = srv:req("PUT", "/v1/stream/h-json", "")
    assert(c.status == 201 or c.status == 200, "create: " .. tostring(c.status))
    for _, body in ipairs({ ("["):rep(60000), '{"a":', '["\255"]', '{"a":1}}' }) do
      local r = srv:req("POST", "/v1/stream/h-json", body)
      assert(r.status == 400, "append " .. body:sub(1, 10) .. ": " .. tostring(r.status))
      assert(#r.body > 0 and not r.body:find("\n"), "append error body: " .. r.body)
    end
    return srv:req("POST", "/v1/stream/h-json", ("["):rep(60000))
  end, status = 400, text_ok = true },
  -- slow and idle clients, readers that never read
  { "slowloris: headers one byte a second", fn = function(srv)
    local c = srv:connect()
    local msg = "GET /health HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. ("X-Slow: " .. ("s"):rep(40) .. CRLF):rep(10)
    local sent = 0
    local deadline = socket.gettime() + 15
    local resp
    while socket.gettime() < deadline do
      sent = sent + 1
      local ok = c:send(msg:sub(sent, sent))
      if not ok then
        resp = { closed = true }
        break
      end
      local r, ready = socket.select({ c }, nil, 1)
      if r and #r > 0 then
        -- the server answered (408) or closed: read what it sent
        resp = R.read_response(c, 2)
        break
      end
      local _ = ready
    end
    assert(resp, "the server never timed out the slow header")
    assert(sent < #msg, "the whole slow head got through")
    resp.closed_after = R.wait_closed(c, 5)
    c:close()
    if resp.status then
      assert.equal(408, resp.status)
    end
    return resp
  end },
  { "slow body: one byte then silence", fn = function(srv)
    local c = srv:connect()
    c:send("POST /agents/h/x HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. "Content-Length: 100" .. CRLF .. CRLF .. "{")
    local resp = R.read_response(c, 10)
    resp.closed_after = R.wait_closed(c, 5)
    c:close()
    assert.equal(408, resp.status)
    return resp
  end },
  { "idle connections past max_connections", fn = function(srv)
    local idle = {}
    for i = 1, LIMITS.max_connections do
      idle[i] = srv:connect()
    end
    -- make sure the server has accepted them all (connections_open counts them)
    local extra = srv:connect()
    local resp = R.read_response(extra, 5)
    resp.closed_after = R.wait_closed(extra, 5)
    extra:close()
    for _, c in ipairs(idle) do
      c:close()
    end
    R.wait_for(function()
      local ok, st = pcall(srv.stats, srv)
      return ok and st.connections <= 1
    end, 10, "the idle connections to be gone")
    assert.equal(503, resp.status)
    return resp
  end, status = 503 },
  { "SSE reader that never reads", fn = function(srv)
    local before = srv:stats().readers_dropped
    local c = srv:connect()
    -- offset=now: the reader is live at once in both rounds. Reading the first round's ~4 MB
    -- history first made the case depend on the kernel's socket buffers: when they could not
    -- take the whole history, the reader stayed in its paced catch-up (bounded memory, never
    -- dropped, never live) and the case failed under load.
    c:send(get("/agents/h/sse-slow?offset=now&live=sse"))
    R.wait_for(function()
      return srv:stats().readers_open >= 1
    end, 5, "the live reader")
    local big = '{"type":"big","payload":{"z":"' .. ("z"):rep(60000) .. '"}}'
    local n = 0
    R.wait_for(function()
      n = n + 1
      assert(n < 600, "the slow reader was never dropped")
      local a = srv:req("POST", "/agents/h/sse-slow", big)
      assert(a.status == 204, "big append: " .. tostring(a.status) .. " " .. tostring(a.body))
      return srv:stats().readers_dropped > before
    end, 60, "the slow reader to be dropped")
    local closed = R.wait_closed(c, 10)
    c:close()
    return { closed = closed, closed_after = closed }
  end },
  { "1000 pipelined requests never read", fn = function(srv)
    local c = srv:connect()
    c:settimeout(5)
    c:send(("GET /agents/h/x HTTP/1.1" .. CRLF .. "Host: a" .. CRLF .. CRLF):rep(1000))
    c:close()
    return { closed = true, closed_after = true }
  end },
}

local function verify(case, resp)
  local name = case[1]
  if case.status then
    assert(resp.status == case.status,
      ("%s: expected %d, got %s %s"):format(name, case.status, tostring(resp.status), tostring(resp.body)))
  else
    assert(resp.closed or (resp.status and resp.status >= 400 and resp.status < 500),
      ("%s: expected a 4xx or a close, got %s"):format(name, tostring(resp.status)))
  end
  if resp.status and resp.status >= 400 and resp.body then
    if case.text_ok then
      -- the Durable Streams front end answers its own errors as one line of text
      assert(R.json_error(resp) or (#resp.body > 0 and not resp.body:find("\n")),
        ("%s: %d without a one-line error: %q"):format(name, resp.status, resp.body))
    else
      assert(R.json_error(resp), ("%s: %d without a one-line JSON error: %q"):format(name, resp.status, resp.body))
    end
  end
end

local function run_catalogue(srv)
  local counts = { status = {}, closed = 0, failures = {} }
  for _, case in ipairs(CASES) do
    local resp
    if case.fn then
      resp = case.fn(srv)
    else
      resp = srv:raw(case[2], { shutdown = case.shutdown, timeout = 10 })
    end
    local vok, verr = pcall(verify, case, resp)
    if not vok then
      counts.failures[#counts.failures + 1] = type(verr) == "table" and tostring(verr.message or verr[1]) or tostring(verr)
    end
    if resp.status then
      counts.status[resp.status] = (counts.status[resp.status] or 0) + 1
    else
      counts.closed = counts.closed + 1
    end
    local ok, err = pcall(srv.check, srv, "after")
    assert(ok, case[1] .. ": the server stopped serving: " .. tostring(err))
  end
  assert(#counts.failures == 0, #counts.failures .. " cases failed:\n" .. table.concat(counts.failures, "\n"))
  return counts
end

describe("hostile clients", function()
  it("get a 4xx or a close for every case; the server keeps serving with flat memory", function()
    assert(#CASES >= 60, "the catalogue has " .. #CASES .. " cases")
    local srv = R.start({ config = { limits = LIMITS, fsync = "never" } })
    local marker = srv.root .. "/marker"
    R.write_file(marker, "")
    local ok, err = pcall(function()
      srv:check("warm")
      run_catalogue(srv) -- warm-up round
      local before = srv:rss_kb()
      local counts = run_catalogue(srv)
      local after = srv:rss_kb()
      local parts = {}
      for s, n in pairs(counts.status) do
        parts[#parts + 1] = s .. "x" .. n
      end
      table.sort(parts)
      print(("\nhostile catalogue: %d cases, answers %s, closes %d; RSS before %d kB, after %d kB (%+.1f%%)"):format(
        #CASES, table.concat(parts, " "), counts.closed, before, after, (after - before) * 100 / before))
      if R.sanitized() then
        print("sanitizer build: RSS not judged (ASan's quarantine keeps freed memory)")
      else
        assert(after <= before * 1.10, ("RSS grew from %d to %d kB"):format(before, after))
      end
      -- nothing written outside the data dir: not in the server's temp dir, not in the cwd
      local p = io.popen("find " .. R.q(srv.root) .. " . -newer " .. R.q(marker)
        .. " -type f -not -path " .. R.q(srv.data_dir .. "/*") .. " -not -path " .. R.q(srv.root .. "/err.*")
        .. " -not -path " .. R.q(srv.root .. "/out.*") .. " -not -path './build*' -not -path './.git/*'"
        .. " -not -path './.cache/*' 2>/dev/null")
      local stray = p:read("a")
      p:close()
      assert.equal("", stray)
      -- and inside it only stream files under streams/, plus the protocol's webhook signing
      -- keys, which the server writes at start-up (the catalogue creates no subscription)
      for _, f in ipairs(R.files_under(srv.data_dir)) do
        assert(f:match("^%./streams/.+%.yaml$") or f:match("^%./streams/.+%.yaml%.%a+$")
          or f == "./subscriptions/signing-keys.json", "unexpected file in the data dir: " .. f)
        assert(not f:find("/%.%./") and not f:find("passwd") and not f:find("escape"), f)
      end
      assert(srv:alive())
      srv:stop()
      srv:assert_no_sanitizer_reports()
    end)
    local log = srv:log()
    srv:cleanup()
    assert(ok, tostring(err) .. "\n--- server log tail:\n" .. log:sub(-3000))
  end)
end)
