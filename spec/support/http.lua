-- spec/support/http.lua - a raw HTTP/1.1 client on luasocket for the functional specs.
--
-- Provides: http.connect(port) -> Conn with request (keep-alive reuse, reconnect after the
-- server closed), send_raw / read_response (pipelining, malformed requests), pump /
-- try_response (non-blocking use from a select loop), chunked and close-delimited response
-- decoding; http.build (one request's bytes); http.request (one-shot on a fresh connection);
-- http.recv_some (what a socket has within a timeout, shared with sse.lua).
-- Headers of responses are lowercased; repeated headers are joined with ", ".
-- Must not: hide protocol details from the specs (no redirects, no retries of requests that
-- may have reached the server, no automatic decoding beyond transfer codings).
local socket = require "socket"

local M = {}
M.HOST = "127.0.0.1"
M.TIMEOUT = 10

local Conn = {}
Conn.__index = Conn

--- Serialize one request. headers: map name -> value (value false = omit a default).
--- A body gets Content-Length unless the headers carry Transfer-Encoding or content-length.
function M.build(method, path, headers, body)
  headers = headers or {}
  local lines = { string.format("%s %s HTTP/1.1", method, path) }
  local have = {}
  for k, v in pairs(headers) do
    have[k:lower()] = true
    if v ~= false then lines[#lines + 1] = k .. ": " .. tostring(v) end
  end
  if not have.host then lines[#lines + 1] = "Host: " .. M.HOST end
  if body and not have["content-length"] and not have["transfer-encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

function M.connect(port, opts)
  opts = opts or {}
  local s = assert(socket.tcp())
  s:settimeout(opts.timeout or M.TIMEOUT)
  local ok, err = s:connect(M.HOST, port)
  if not ok then
    s:close()
    error("connect to port " .. tostring(port) .. " failed: " .. tostring(err))
  end
  s:setoption("tcp-nodelay", true)
  if opts.rcvbuf then s:setoption("recv-buffer-size", opts.rcvbuf) end
  return setmetatable({ sock = s, port = port, buf = "", closed = false, pending = {}, timeout = opts.timeout or M.TIMEOUT }, Conn)
end

function Conn:close()
  if self.sock then self.sock:close() end
  self.closed = true
end

function Conn:send_raw(data)
  self.sock:settimeout(self.timeout)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if not last then
      if err == "timeout" then
        i = partial + 1
      else
        return nil, err
      end
    else
      i = last + 1
    end
  end
  return true
end

--- Reads what arrives on sock within `timeout` seconds (0: only what is already there).
--- Returns the bytes (nil when none) and what ended the connection ("closed", a reset...;
--- nil while it is open).
function M.recv_some(sock, timeout)
  -- receive(n) waits for all n bytes: wait for readability first, then take what is there
  if timeout > 0 then
    local ready = socket.select({ sock }, nil, timeout)
    if #ready == 0 then return nil end
  end
  sock:settimeout(0)
  local data, err, partial = sock:receive(65536)
  data = data or partial
  if data == "" then data = nil end
  if err == "timeout" then err = nil end
  return data, err
end

--- Read whatever is available within `timeout` seconds (0 = non-blocking). Returns the
--- number of bytes read; marks the connection closed on EOF.
function Conn:pump(timeout)
  if self.closed then return 0 end
  local data, err = M.recv_some(self.sock, timeout)
  if data then self.buf = self.buf .. data end
  if err then
    -- "closed", or a reset after the server answered and closed early
    self.closed = true
    self.error = err
  end
  return data and #data or 0
end

local function parse_head(head)
  local status_line, rest = head:match("^([^\r\n]*)\r\n(.*)$")
  if not status_line then status_line, rest = head, "" end
  local version, code, reason = status_line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
  if not version then error("malformed status line: " .. status_line) end
  local headers = {}
  for line in (rest .. "\r\n"):gmatch("(.-)\r\n") do
    if line ~= "" then
      local k, v = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
      if not k then error("malformed header line: " .. line) end
      k = k:lower()
      headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
    end
  end
  return version, tonumber(code), reason, headers
end

--- Try to take one complete response for `method` from the buffer. Returns resp or nil.
--- resp = {status, reason, version, headers, body, raw_head}
function Conn:try_response(method)
  local buf = self.buf
  local he = buf:find("\r\n\r\n", 1, true)
  if not he then return nil end
  local version, status, reason, headers = parse_head(buf:sub(1, he - 1))
  local pos = he + 4
  local body
  if method == "HEAD" or (status >= 100 and status < 200) or status == 204 or status == 304 then
    body = ""
  elseif headers["transfer-encoding"] and headers["transfer-encoding"]:lower():find("chunked") then
    local parts = {}
    while true do
      local le = buf:find("\r\n", pos, true)
      if not le then return nil end
      local size = tonumber(buf:sub(pos, le - 1):match("^%x+"), 16)
      if not size then error("bad chunk size line: " .. buf:sub(pos, le - 1)) end
      pos = le + 2
      if size == 0 then
        -- trailers end at an empty line
        local te = buf:find("\r\n", pos, true)
        while te and te ~= pos do
          pos = te + 2
          te = buf:find("\r\n", pos, true)
        end
        if not te then return nil end
        pos = te + 2
        break
      end
      if #buf < pos + size + 1 then return nil end
      parts[#parts + 1] = buf:sub(pos, pos + size - 1)
      if buf:sub(pos + size, pos + size + 1) ~= "\r\n" then error("chunk not followed by CRLF") end
      pos = pos + size + 2
    end
    body = table.concat(parts)
  elseif headers["content-length"] then
    local n = tonumber(headers["content-length"])
    if #buf < pos + n - 1 then return nil end
    body = buf:sub(pos, pos + n - 1)
    pos = pos + n
  else
    -- close-delimited
    if not self.closed then return nil end
    body = buf:sub(pos)
    pos = #buf + 1
  end
  self.buf = buf:sub(pos)
  return { status = status, reason = reason, version = version, headers = headers, body = body,
           raw_head = buf:sub(1, he + 3) }
end

--- Blocking read of the next response (1xx interim responses are returned too when
--- opts.interim is set, otherwise skipped).
function Conn:read_response(method, opts)
  opts = opts or {}
  local deadline = socket.gettime() + (opts.timeout or self.timeout)
  while true do
    local r = self:try_response(method)
    if r then
      if r.status >= 100 and r.status < 200 and not opts.interim then
        -- skip interim, keep reading
      else
        if r.headers.connection and r.headers.connection:lower():find("close") then
          self.server_closes = true
        end
        return r
      end
    else
      if self.closed then
        return nil, "closed"
      end
      local left = deadline - socket.gettime()
      if left <= 0 then return nil, "timeout" end
      self:pump(math.min(left, 0.5))
    end
  end
end

--- One request on this connection; reconnects first when the server closed it.
--- Returns status, headers, body, resp.
function Conn:request(method, path, headers, body)
  if self.closed or self.server_closes then
    local fresh = M.connect(self.port, { timeout = self.timeout })
    self.sock, self.buf, self.closed, self.server_closes = fresh.sock, "", false, false
  end
  local ok, err = self:send_raw(M.build(method, path, headers, body))
  if not ok then error("send failed: " .. tostring(err)) end
  local r, rerr = self:read_response(method)
  if not r then error(string.format("%s %s: no response (%s)", method, path, rerr)) end
  return r.status, r.headers, r.body, r
end

--- One request on a fresh connection, closed afterwards.
function M.request(port, method, path, headers, body)
  local c = M.connect(port)
  local ok, status, hdrs, b, r = pcall(c.request, c, method, path, headers, body)
  c:close()
  if not ok then error(status, 0) end
  return status, hdrs, b, r
end

--- Percent-encode a stream path for a URL (keeps '/', unreserved characters).
function M.escape_path(p)
  return (p:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

M.Conn = Conn
return M
