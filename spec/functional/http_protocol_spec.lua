-- http_protocol_spec.lua - HTTP/1.1 behaviour of the server as the /agents API uses it.
--
-- Covers: keep-alive reuse, pipelining (responses in request order), chunked request
-- bodies, Expect: 100-continue (interim 100, and a final 413 without reading an oversized
-- body), 413 over the body limit, 431 for huge headers, 400 for malformed request lines
-- (then the connection closes), HEAD, HTTP/1.0, the header timeout, and clean connection
-- accounting in /debug/stats.
local socket = require "socket"
local http = require "spec.support.http"
local A = require "spec.support.agents"
local J = require "spec.support.json"

local off = A.off

describe("HTTP/1.1", function()
  local ctx = A.serve({ storage = "memory", config = { limits = { max_header_bytes = 8192, header_timeout_ms = 1000 } } })

  it("keeps a connection alive across requests", function()
    local c = http.connect(ctx.srv.port)
    local sock = c.sock
    for i = 0, 4 do
      local status, h = c:request("POST", A.url("ka"), {}, A.body("t"))
      assert.are.equal(204, status)
      assert.are.equal(off(i), h["stream-offset"])
    end
    local status = c:request("GET", A.url("ka"))
    assert.are.equal(200, status)
    assert.are.equal(sock, c.sock)
    assert.is_false(c.closed)
    assert.is_falsy(c.server_closes)
    c:close()
  end)

  it("answers pipelined requests in order", function()
    local c = http.connect(ctx.srv.port)
    local reqs = {}
    for i = 1, 10 do reqs[i] = http.build("POST", A.url("pipe"), {}, A.body("t", '{"i":' .. i .. '}')) end
    reqs[11] = http.build("GET", A.url("pipe"))
    reqs[12] = http.build("POST", A.url("pipe"), {}, "not json")
    reqs[13] = http.build("HEAD", A.url("pipe"))
    reqs[14] = http.build("POST", A.url("pipe"), {}, A.body("t", '{"i":11}'))
    assert(c:send_raw(table.concat(reqs)))
    for i = 0, 9 do
      local r = assert(c:read_response("POST"))
      assert.are.equal(204, r.status)
      assert.are.equal(off(i), r.headers["stream-offset"])
    end
    local g = assert(c:read_response("GET"))
    assert.are.equal(200, g.status)
    assert.are.equal(10, select(2, g.body:gsub("\nevent: data\n", "")))
    local bad = assert(c:read_response("POST"))
    A.assert_json_error(400, bad.status, bad.headers, bad.body, "pipelined bad JSON")
    local h = assert(c:read_response("HEAD"))
    assert.are.equal(200, h.status)
    local last = assert(c:read_response("POST"))
    assert.are.equal(204, last.status)
    assert.are.equal(off(10), last.headers["stream-offset"])
    c:close()
  end)

  it("accepts a chunked request body", function()
    local c = http.connect(ctx.srv.port)
    local body = A.body("chunked", '{"text":"' .. string.rep("abc", 1000) .. '","n":1}')
    local parts = { body:sub(1, 1), body:sub(2, 100), body:sub(101, 2000), body:sub(2001) }
    local req = { http.build("POST", A.url("chunked"), { ["Transfer-Encoding"] = "chunked" }, nil) }
    for _, p in ipairs(parts) do req[#req + 1] = string.format("%x\r\n%s\r\n", #p, p) end
    req[#req + 1] = "0\r\n\r\n"
    -- send in pieces so the server sees the body arrive across reads
    for _, piece in ipairs(req) do assert(c:send_raw(piece)) end
    local r = assert(c:read_response("POST"))
    assert.are.equal(204, r.status)
    c:close()
    local evs = A.history(ctx.srv.port, "chunked")
    assert.are.equal(1, #evs)
    assert.is_true(J.equal(J.decode(body), J.decode('{"type":"chunked","payload":' .. J.encode(J.get(evs[1].json, "payload")) .. '}')))
  end)

  it("accepts a chunked body with chunk extensions and trailers", function()
    local c = http.connect(ctx.srv.port)
    local body = A.body("chunked2", '{"a":1}')
    local req = http.build("POST", A.url("chunked2"), { ["Transfer-Encoding"] = "chunked" }, nil)
        .. string.format("%x;ext=1\r\n%s\r\n", #body, body) .. "0\r\nX-Trailer: yes\r\n\r\n"
    assert(c:send_raw(req))
    local r = assert(c:read_response("POST"))
    assert.are.equal(204, r.status)
    c:close()
  end)

  it("handles Expect: 100-continue", function()
    local c = http.connect(ctx.srv.port)
    local body = A.body("expect", '{"a":1}')
    assert(c:send_raw(http.build("POST", A.url("expect"), { Expect = "100-continue", ["Content-Length"] = #body }, nil)))
    local interim = assert(c:read_response("POST", { interim = true }))
    assert.are.equal(100, interim.status)
    assert(c:send_raw(body))
    local r = assert(c:read_response("POST"))
    assert.are.equal(204, r.status)
    assert.are.equal(off(0), r.headers["stream-offset"])
    c:close()
  end)

  it("answers 413 at once to Expect: 100-continue with a Content-Length over the limit", function()
    local c = http.connect(ctx.srv.port)
    assert(c:send_raw(http.build("POST", A.url("expect-big"), { Expect = "100-continue", ["Content-Length"] = 2 * 1048576 }, nil)))
    local r = assert(c:read_response("POST", { interim = true }))
    A.assert_json_error(413, r.status, r.headers, r.body, "Expect with oversized Content-Length")
    c:close()
  end)

  it("answers 413 to a Content-Length over the limit", function()
    local c = http.connect(ctx.srv.port)
    local big = string.rep("x", 1048577)
    c:send_raw(http.build("POST", A.url("big"), {}, big))
    local r = assert(c:read_response("POST"))
    A.assert_json_error(413, r.status, r.headers, r.body, "body over limit")
    c:close()
    assert.are.equal(0, #A.history(ctx.srv.port, "big"))
  end)

  it("answers 431 to headers over max_header_bytes", function()
    local c = http.connect(ctx.srv.port)
    c:send_raw(http.build("GET", A.url("hdr"), { ["X-Big"] = string.rep("h", 20000) }))
    local r = assert(c:read_response("GET"))
    assert.are.equal(431, r.status)
    c:close()
  end)

  it("answers 431 to many headers together over max_header_bytes", function()
    local hs = {}
    for i = 1, 200 do hs["X-H" .. i] = string.rep("v", 60) end
    local c = http.connect(ctx.srv.port)
    c:send_raw(http.build("POST", A.url("hdr"), hs, A.body("t")))
    local r = assert(c:read_response("POST"))
    assert.are.equal(431, r.status)
    c:close()
    assert.are.equal(0, #A.history(ctx.srv.port, "hdr"))
  end)

  for _, line in ipairs({ "THIS IS NOT HTTP", "GET /agents/x HTTP/1.1 extra", "\1\2garbage", "GET /agents/x HTTP/x.y",
    "POST  HTTP/1.1" }) do
    it(string.format("answers 400 to the malformed request line %q and closes", line), function()
      local c = http.connect(ctx.srv.port)
      c:send_raw(line .. "\r\nHost: x\r\n\r\n")
      local r = assert(c:read_response("GET"))
      assert.are.equal(400, r.status)
      -- the server closes the connection after a parse error
      local deadline = socket.gettime() + 5
      while not c.closed and socket.gettime() < deadline do c:pump(0.2) end
      assert.is_true(c.closed)
      c:close()
    end)
  end

  it("answers 400 to a bad Content-Length", function()
    local c = http.connect(ctx.srv.port)
    c:send_raw("POST /agents/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
    local r = assert(c:read_response("POST"))
    assert.are.equal(400, r.status)
    c:close()
  end)

  it("HEAD answers headers only and keeps the connection usable", function()
    A.append(ctx.srv.port, "head", "t")
    local c = http.connect(ctx.srv.port)
    local status, h, body = c:request("HEAD", A.url("head"))
    assert.are.equal(200, status)
    assert.are.equal("", body)
    assert.is_truthy((h["content-type"] or ""):match("^text/event%-stream"))
    local s2, _, b2 = c:request("GET", A.url("head"))
    assert.are.equal(200, s2)
    assert.are.equal(1, select(2, b2:gsub("\nevent: data\n", "")))
    c:close()
  end)

  it("serves HTTP/1.0 clients (response delimited, connection closed)", function()
    A.append(ctx.srv.port, "http10", "t")
    local c = http.connect(ctx.srv.port)
    c:send_raw("GET " .. A.url("http10") .. " HTTP/1.0\r\nHost: x\r\n\r\n")
    local deadline = socket.gettime() + 5
    while not c.closed and socket.gettime() < deadline do c:pump(0.2) end
    assert.is_true(c.closed, "server kept an HTTP/1.0 connection open")
    local r = assert(c:try_response("GET"))
    assert.are.equal(200, r.status)
    assert.are.equal(1, select(2, r.body:gsub("\nevent: data\n", "")))
    c:close()
  end)

  it("closes a connection whose headers never complete (header_timeout_ms = 1000)", function()
    local c = http.connect(ctx.srv.port)
    c:send_raw("GET /agents/slowloris HTTP/1.1\r\nHost: x\r\n")
    local deadline = socket.gettime() + 8
    while not c.closed and socket.gettime() < deadline do c:pump(0.2) end
    assert.is_true(c.closed, "connection still open 8 s after a 1 s header timeout")
    c:close()
  end)

  it("counts connections in /debug/stats and releases them on close", function()
    local cs = {}
    for i = 1, 5 do
      cs[i] = http.connect(ctx.srv.port)
      assert.are.equal(200, (cs[i]:request("GET", A.url("count"))))
    end
    ctx.srv:wait_stats({ connections = ctx.base.connections + 5 })
    for i = 1, 5 do cs[i]:close() end
    ctx.srv:wait_stats(ctx.base)
  end)
end)

describe("shutdown", function()
  local server = require "spec.support.server"
  local sse = require "spec.support.sse"

  for _, sig in ipairs({ "INT", "TERM" }) do
    it("SIG" .. sig .. " with live subscribers and idle keep-alive connections exits 0 and ends their responses", function()
      local srv = server.start({ storage = "yaml" })
      finally(function() srv:cleanup() end)
      A.append(srv.port, "bye", "t")
      local rs = {}
      for i = 1, 3 do
        rs[i] = sse.open(srv.port, A.url("bye", "live=sse"))
        assert.are.equal(off(0), assert(rs[i]:next_event(5)).id)
      end
      local idle = http.connect(srv.port)
      assert.are.equal(200, (idle:request("GET", A.url("bye"))))
      assert.are.equal(0, srv:stop({ signal = sig }))
      for i = 1, 3 do
        local ev, why = rs[i]:next_event(5)
        assert.is_nil(ev)
        assert.is_true(why == "closed" or why == "ended", tostring(why))
        rs[i]:close()
      end
      idle:pump(2)
      assert.is_true(idle.closed)
      idle:close()
      srv:assert_no_error_log()
      -- the data survives a clean shutdown
      srv:restart()
      assert.are.same({ off(0) }, A.offsets(A.history(srv.port, "bye")))
      srv:stop()
    end)
  end
end)
