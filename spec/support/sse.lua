-- spec/support/sse.lua - a Server-Sent Events reader over a raw socket.
--
-- Provides: sse.open(port, path, headers, opts) -> Reader. The reader parses the HTTP
-- response head, de-chunks (Transfer-Encoding: chunked), or reads a Content-Length or
-- close-delimited body, and frames SSE messages (id:, event:, data:, comments, blank-line
-- dispatch, CRLF or LF line ends). next_event(timeout) returns the next message;
-- pump(timeout) reads what is available (timeout 0 = non-blocking, for select loops).
-- Messages: {id=, event=, data=, fields={...}}; comments are counted in reader.comments
-- and kept (text) in reader.comment_list. With opts.keep_raw the decoded body text is kept
-- in reader.raw_text for byte-level framing checks.
-- Must not: interpret event payloads (callers do that), or reconnect on its own.
local socket = require "socket"
local http = require "spec.support.http"

local M = {}

local R = {}
R.__index = R

function M.open(port, path, headers, opts)
  opts = opts or {}
  local conn = http.connect(port, { timeout = opts.timeout, rcvbuf = opts.rcvbuf })
  local req = http.build(opts.method or "GET", path, headers or {}, nil)
  assert(conn:send_raw(req))
  local r = setmetatable({
    conn = conn, sock = conn.sock, raw = "", rpos = 1, text = "", state = "head",
    queue = {}, qhead = 1, qtail = 0, comments = 0, comment_list = {}, keep_raw = opts.keep_raw,
    raw_text = opts.keep_raw and {} or nil, ended = false, closed = false, chunk_left = 0,
    need_crlf = false, events_seen = 0, bytes = 0, method = opts.method or "GET",
  }, R)
  return r
end

--- Adopts an already-connected http Conn whose request was sent (used for pipelining tests).
function M.adopt(conn)
  return setmetatable({
    conn = conn, sock = conn.sock, raw = conn.buf, rpos = 1, text = "", state = "head",
    queue = {}, qhead = 1, qtail = 0, comments = 0, comment_list = {}, ended = false, closed = conn.closed,
    chunk_left = 0, need_crlf = false, events_seen = 0, bytes = 0,
  }, R)
end

function R:close()
  if not self.closed_by_us then
    self.sock:close()
    self.closed_by_us = true
  end
end

function R:_new_event()
  return { fields = {}, datas = {}, any = false }
end

function R:_sse(text)
  if self.keep_raw then self.raw_text[#self.raw_text + 1] = text end
  local t = self.text .. text
  if t:find("\r", 1, true) then
    local hold = ""
    if t:sub(-1) == "\r" then t, hold = t:sub(1, -2), "\r" end
    t = t:gsub("\r\n?", "\n") .. hold
  end
  local cur = self.cur or self:_new_event()
  local pos = 1
  while true do
    local e = t:find("\n", pos, true)
    if not e then break end
    local line = t:sub(pos, e - 1)
    pos = e + 1
    if line == "" then
      if cur.any then
        local ev = { id = cur.id, event = cur.event, fields = cur.fields,
                     data = table.concat(cur.datas, "\n"), data_lines = #cur.datas }
        self.qtail = self.qtail + 1
        self.queue[self.qtail] = ev
        self.events_seen = self.events_seen + 1
      end
      cur = self:_new_event()
    elseif line:byte(1) == 58 then
      self.comments = self.comments + 1
      self.comment_list[#self.comment_list + 1] = line
    else
      local name, value = line:match("^([^:]*):? ?(.*)$")
      cur.fields[#cur.fields + 1] = { name, value }
      cur.any = true
      if name == "data" then
        cur.datas[#cur.datas + 1] = value
      elseif name == "id" then
        cur.id = value
      elseif name == "event" then
        cur.event = value
      end
    end
  end
  self.text = t:sub(pos)
  self.cur = cur
end

function R:_process()
  while true do
    if self.state == "head" then
      local he = self.raw:find("\r\n\r\n", 1, true)
      if not he then return end
      local head = self.raw:sub(1, he - 1)
      local status_line = head:match("^[^\r\n]*")
      self.status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
      if not self.status then error("malformed status line: " .. status_line) end
      self.headers = {}
      for line in head:gmatch("\r\n([^\r\n]*)") do
        local k, v = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
        if k then
          k = k:lower()
          self.headers[k] = self.headers[k] and (self.headers[k] .. ", " .. v) or v
        end
      end
      self.raw = self.raw:sub(he + 4)
      if self.status >= 100 and self.status < 200 then
        -- interim response; the final head follows
      else
        local te = self.headers["transfer-encoding"]
        if self.method == "HEAD" then
          self.state = "done"
          self.ended = true
        elseif te and te:lower():find("chunked") then
          self.state = "chunked"
        elseif self.headers["content-length"] then
          self.state = "length"
          self.length_left = tonumber(self.headers["content-length"])
          if self.length_left == 0 then self.state, self.ended = "done", true end
        else
          self.state = "close"
        end
      end
    elseif self.state == "chunked" then
      local raw, pos = self.raw, 1
      local out = {}
      while true do
        if self.need_crlf then
          if #raw - pos + 1 < 2 then break end
          if raw:sub(pos, pos + 1) ~= "\r\n" then error("chunk data not followed by CRLF") end
          pos = pos + 2
          self.need_crlf = false
        elseif self.chunk_left == 0 then
          local le = raw:find("\r\n", pos, true)
          if not le then break end
          local size = tonumber(raw:sub(pos, le - 1):match("^%x+"), 16)
          if not size then error("bad chunk size line: " .. raw:sub(pos, le - 1)) end
          pos = le + 2
          if size == 0 then
            self.state, self.ended = "trailer", true
            break
          end
          self.chunk_left = size
        else
          local avail = #raw - pos + 1
          if avail <= 0 then break end
          local take = math.min(avail, self.chunk_left)
          out[#out + 1] = raw:sub(pos, pos + take - 1)
          pos = pos + take
          self.chunk_left = self.chunk_left - take
          if self.chunk_left == 0 then self.need_crlf = true end
        end
      end
      self.raw = raw:sub(pos)
      if #out > 0 then self:_sse(table.concat(out)) end
      if self.state == "chunked" then return end
    elseif self.state == "length" then
      if #self.raw == 0 then return end
      local take = math.min(#self.raw, self.length_left)
      local piece = self.raw:sub(1, take)
      self.raw = self.raw:sub(take + 1)
      self.length_left = self.length_left - take
      if self.length_left == 0 then self.state, self.ended = "done", true end
      self:_sse(piece)
    elseif self.state == "close" then
      if #self.raw == 0 then return end
      local piece = self.raw
      self.raw = ""
      self:_sse(piece)
      return
    else
      -- trailer / done: leftover bytes belong to a next response on this connection
      return
    end
  end
end

--- Read what arrives within `timeout` seconds (0: only what is already there).
--- Returns bytes read (0 on timeout); sets self.closed on EOF.
function R:pump(timeout)
  if self.closed then return 0 end
  local data, err = http.recv_some(self.sock, timeout)
  if data then
    self.bytes = self.bytes + #data
    self.raw = self.raw .. data
    self:_process()
  end
  if err == "closed" then
    self.closed = true
    if self.state == "close" then self.ended = true end
  elseif err then
    self.closed = true
    self.error = err
  end
  return data and #data or 0
end

--- Waits until the response head arrived. Returns status or nil, reason.
function R:wait_head(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while not self.headers do
    if self.closed then return nil, "closed" end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, "timeout" end
    self:pump(math.min(left, 0.5))
  end
  return self.status
end

--- Next SSE message, or nil, "timeout" | "closed" | "ended".
function R:next_event(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while true do
    if self.qhead <= self.qtail then
      local ev = self.queue[self.qhead]
      self.queue[self.qhead] = nil
      self.qhead = self.qhead + 1
      if self.qhead > self.qtail then
        self.queue, self.qhead, self.qtail = {}, 1, 0
      end
      return ev
    end
    if self.ended then return nil, "ended" end
    if self.closed then return nil, "closed" end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, "timeout" end
    self:pump(math.min(left, 0.5))
  end
end

--- Events already parsed and not yet taken.
function R:pending()
  return self.qtail - self.qhead + 1
end

--- Reads until the response ends (non-live GET). Returns list of events, or nil, reason.
function R:read_all(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  local evs = {}
  while true do
    local ev, why = self:next_event(math.max(0, deadline - socket.gettime()))
    if ev then
      evs[#evs + 1] = ev
    elseif why == "ended" then
      return evs
    else
      return nil, why, evs
    end
  end
end

--- Waits for cond(reader) to be true while pumping. Returns true or false on timeout.
function R:wait(cond, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while not cond(self) do
    if self.closed then return cond(self) end
    local left = deadline - socket.gettime()
    if left <= 0 then return false end
    self:pump(math.min(left, 0.2))
  end
  return true
end

function R:raw_body()
  return table.concat(self.raw_text or {})
end

return M
