-- storage_damage_spec.lua - a damaged document in the middle of a stream file (issue 12,
-- item 15), seen through both views of the real server.
--
-- The server writes an /agents conversation and a /v1 JSON stream per damage kind, is
-- stopped, one document in the middle of each file is damaged by hand (bytes flipped in
-- it, deleted, duplicated), and the server is started again. Then, on both views: every
-- intact record before the damage is delivered, in order, with its content; the read
-- ends with a clear error at the damaged one (SSE on either view: a comment naming it,
-- then the end of the response, live or not; /v1 catch-up: 200 with the records before
-- it, then 500 JSON for a read starting at it); a read starting at the damage is a 500
-- JSON error in every mode; appends are refused with 500 JSON naming the damage (the repair moves
-- everything from the damage on aside); the log names the file, the byte offset and the
-- expected offset.
local cjson = require "cjson"
local http = require "spec.support.http"
local sse = require "spec.support.sse"
local A = require "spec.support.agents"

local off = A.off
local N = 6 -- records per stream; the damage is at offset 3

-- Start of every document (0-based byte offsets), in order.
local function doc_starts(data)
  local st, pos = {}, 1
  if data:sub(1, 4) == "---\n" then st[1] = 0 end
  while true do
    local i = data:find("\n---\n", pos, true)
    if not i then break end
    st[#st + 1] = i -- the '-' after the newline at 1-based i is at 0-based i
    pos = i + 1
  end
  return st
end

-- Each damage: apply(data, st) -> damaged data, and the byte where the log must say the
-- damage is (st is 0-based; st[k + 1] is document k).
local DAMAGES = {
  {
    name = "bytes flipped inside document 3",
    apply = function(d, st) return d:sub(1, st[4] + 6) .. "\1\127\255" .. d:sub(st[4] + 10) end,
    byte = function(st) return st[4] end,
  },
  {
    name = "document 3 deleted",
    apply = function(d, st) return d:sub(1, st[4]) .. d:sub(st[5] + 1) end,
    byte = function(st) return st[4] end,
  },
  {
    name = "document 2 duplicated",
    apply = function(d, st) return d:sub(1, st[4]) .. d:sub(st[3] + 1, st[4]) .. d:sub(st[4] + 1) end,
    byte = function(st) return st[4] end,
  },
}

describe("a damaged document in the middle of a stream file", function()
  local ctx = A.serve({
    storage = "yaml",
    allow_errors = { "damaged", "refused", "append to .* failed", "reading .* failed" },
  })

  it("delivers every intact record on both views, then a clear error; appends are refused", function()
    local srv = ctx.srv
    for k = 1, #DAMAGES do
      for i = 0, N - 1 do
        A.append(srv.port, "d" .. k .. "/a", "t", '{"n":' .. i .. '}')
      end
      local st = http.request(srv.port, "PUT", "/v1/stream/d" .. k .. "/p", { ["Content-Type"] = "application/json" })
      assert.are.equal(201, st)
      for i = 0, N - 1 do
        st = http.request(srv.port, "POST", "/v1/stream/d" .. k .. "/p", { ["Content-Type"] = "application/json" },
          '{"m":' .. i .. '}')
        assert.are.equal(204, st)
      end
    end
    srv:stop()
    local where = {}
    for k, dmg in ipairs(DAMAGES) do
      for _, p in ipairs({ "a", "p" }) do
        local file = srv:stream_file("d" .. k .. "/" .. p)
        local fh = assert(io.open(file, "rb"))
        local data = fh:read("a")
        fh:close()
        local st = doc_starts(data)
        assert.are.equal(N, #st)
        local f = assert(io.open(file, "wb"))
        f:write(dmg.apply(data, st))
        f:close()
        where[k .. p] = dmg.byte(st)
      end
    end
    srv:restart()

    for k, dmg in ipairs(DAMAGES) do
      local what = dmg.name
      local apath = "d" .. k .. "/a"
      -- /agents, history: records 0-2, then the comment, then the end
      for _, q in ipairs({ "", "live=sse" }) do
        local r = sse.open(srv.port, A.url(apath, q ~= "" and q or nil), nil, { keep_raw = true })
        assert.are.equal(200, r:wait_head(10), what)
        local evs, why = r:read_all(20)
        assert(evs, what .. ": /agents read (" .. q .. ") did not end: " .. tostring(why))
        local raw = r:raw_body()
        r:close()
        assert.are.same({ off(0), off(1), off(2) }, A.offsets(evs), what .. " " .. q)
        for i, ev in ipairs(evs) do
          assert.truthy(ev.data:find('"payload":{"n":' .. (i - 1) .. '}', 1, true), what .. ": " .. ev.data)
        end
        assert.truthy(raw:find(": error: stored event " .. off(3) .. " is damaged", 1, true),
          what .. ": no error comment in " .. raw)
      end
      -- /agents, a read that starts at the damage: 500 before any event
      local status, h, body = http.request(srv.port, "GET", A.url(apath, "offset=" .. off(2)))
      A.assert_json_error(500, status, h, body, what .. ": /agents read from the damage")
      assert.truthy(cjson.decode(body).error:find("damaged", 1, true), body)
      -- /agents, append: refused, naming the damage
      status, h, body = A.post(srv.port, apath, A.body("t", '{"n":"late"}'))
      A.assert_json_error(500, status, h, body, what .. ": /agents append")
      assert.truthy(cjson.decode(body).error:find("damaged", 1, true), body)

      -- /v1: 200 with the records before the damage, then 500 at it
      local ppath = "/v1/stream/d" .. k .. "/p"
      status, h, body = http.request(srv.port, "GET", ppath .. "?offset=-1")
      assert.are.equal(200, status, what .. ": " .. tostring(body))
      assert.are.same({ { m = 0 }, { m = 1 }, { m = 2 } }, cjson.decode(body), what)
      assert.are.equal(off(3), h["stream-next-offset"], what)
      status, h, body = http.request(srv.port, "GET", ppath .. "?offset=" .. h["stream-next-offset"])
      A.assert_json_error(500, status, h, body, what .. ": /v1 read at the damage")
      assert.truthy(cjson.decode(body).error:find("damaged", 1, true), body)
      -- /v1 SSE: the same records, then a comment naming the error and the end; an SSE
      -- read that starts at the damage is a 500 (a reconnecting client learns it at once)
      local r = sse.open(srv.port, ppath .. "?offset=-1&live=sse", nil, { keep_raw = true })
      assert.are.equal(200, r:wait_head(10), what)
      local sevs, why = r:read_all(20)
      assert(sevs, what .. ": /v1 SSE read did not end: " .. tostring(why))
      local raw = r:raw_body()
      r:close()
      local msgs = {}
      for _, ev in ipairs(sevs) do
        if ev.event == "data" then
          for _, m in ipairs(cjson.decode(ev.data)) do msgs[#msgs + 1] = m end
        end
      end
      assert.are.same({ { m = 0 }, { m = 1 }, { m = 2 } }, msgs, what .. ": /v1 SSE")
      assert.truthy(raw:find(": error: reading the stored message at offset " .. off(3), 1, true), raw)
      status, h, body = http.request(srv.port, "GET", ppath .. "?offset=" .. off(3) .. "&live=sse")
      A.assert_json_error(500, status, h, body, what .. ": /v1 SSE read at the damage")
      status, h, body = http.request(srv.port, "POST", ppath, { ["Content-Type"] = "application/json" }, '{"m":"late"}')
      A.assert_json_error(500, status, h, body, what .. ": /v1 append")
      -- /agents view of the protocol stream: the same records, the same end
      local evs = A.history(srv.port, "d" .. k .. "/p")
      assert.are.same({ off(0), off(1), off(2) }, A.offsets(evs), what .. ": /agents view of the /v1 stream")

      -- the log: file, byte offset, expected offset
      local log = srv:log()
      for _, p in ipairs({ "a", "p" }) do
        local file = "d" .. k .. "/" .. p .. ".yaml"
        local found = false
        for line in log:gmatch("[^\n]+") do
          if line:find(file, 1, true) and line:find("byte " .. where[k .. p], 1, true)
              and line:find("offset 3", 1, true) then
            found = true
          end
        end
        assert(found, what .. ": no log line naming " .. file .. ", byte " .. where[k .. p] .. " and offset 3:\n" .. log)
      end
    end
  end)
end)
