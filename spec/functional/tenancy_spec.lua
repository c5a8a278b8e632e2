-- Every stream a request names is authorized, not only its URL (issue 12, items 4 and 5),
-- and webhooks cannot reach internal addresses (item 6), end to end against the real binary
-- with bearer tokens on:
--  * a fork's source needs read on it: a team-a token cannot fork team-b's stream into its
--    own prefix (403 JSON, nothing created, no reference kept on the source);
--  * subscriptions stay inside the creating token's prefixes: patterns (their literal
--    leading segments), explicit streams, wake streams (append) and added membership links;
--    a subscription is read and changed only by a token that could have created it; answers
--    list only streams the caller may read; glob links never leave the creator's prefixes;
--  * callback / ack / release carry the callback token instead of a bearer token and pass
--    the router;
--  * webhook URLs in every numeric IPv4 form of the SSRF report are refused while a
--    receiver listens on 127.0.0.1, and a stored subscription to an address that is no
--    longer allowed is refused at delivery (nothing connects).
package.path = "./?.lua;" .. package.path
local R = require("spec.support.rel")
local socket = require("socket")
local cjson = require("cjson.safe")

local ADMIN = "admin-7f3a9c2e51d84b06"
local TEAM_A = "team-a-5c1e8f2a7d93b460"
local TEAM_B = "team-b-0d4e6a9b3c28f175"
local A_READER = "a-reader-93be0c1d4a7f2e68"

local function bearer(t)
  return { Authorization = "Bearer " .. t }
end

local function with(h, extra)
  local out = {}
  for k, v in pairs(h) do out[k] = v end
  for k, v in pairs(extra) do out[k] = v end
  return out
end

local function code_of(resp)
  local t = cjson.decode(resp.body or "")
  return type(t) == "table" and type(t.error) == "table" and t.error.code or nil
end

local function start(extra)
  local cfg = {
    log_level = "info",
    auth = {
      tokens = {
        { token = ADMIN },
        { token = TEAM_A, scopes = { "read", "append" }, prefixes = { "/v1/stream/team-a/", "/v1/stream/__ds/" } },
        { token = TEAM_B, scopes = { "read", "append" }, prefixes = { "/v1/stream/team-b/", "/v1/stream/__ds/" } },
        { token = A_READER, scopes = { "read" }, prefixes = { "/v1/stream/team-a/", "/v1/stream/__ds/" } },
      },
    },
  }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return R.start({ config = cfg })
end

local function run(srv, fn)
  local ok, err = pcall(function()
    fn()
    srv:stop()
    srv:assert_no_sanitizer_reports()
  end)
  local log = srv:log()
  srv:cleanup()
  assert(ok, tostring(err) .. "\n--- server log tail:\n" .. log:sub(-3000))
end

local function sub_url(id)
  return "/v1/stream/__ds/subscriptions/" .. id
end

describe("fork sources", function()
  it("need read on the source: no fork of another tenant's stream, nothing created or pinned", function()
    local srv = start()
    run(srv, function()
      assert.equal(201, srv:req("PUT", "/v1/stream/team-b/secret", '[{"s":1},{"s":2}]', bearer(ADMIN)).status)
      local forms = { "/v1/stream/team-b/secret", "team-b/secret", "http://127.0.0.1:" .. srv.port .. "/v1/stream/team-b/secret" }
      for _, src in ipairs(forms) do
        local r = srv:req("PUT", "/v1/stream/team-a/stolen", "", with(bearer(TEAM_A), { ["Stream-Forked-From"] = src }))
        assert(r.status == 403, src .. ": " .. tostring(r.status) .. " " .. tostring(r.body))
        local msg = R.json_error(r)
        assert(msg and msg:find("team-b/secret", 1, true), tostring(r.body))
      end
      -- a path that climbs out is not a way around it
      local r = srv:req("PUT", "/v1/stream/team-a/stolen", "",
        with(bearer(TEAM_A), { ["Stream-Forked-From"] = "/v1/stream/team-a/../team-b/secret" }))
      assert(r.status == 400 or r.status == 403, tostring(r.status))
      -- nothing was created, nothing read
      assert.equal(404, srv:req("GET", "/v1/stream/team-a/stolen?offset=-1", nil, bearer(TEAM_A)).status)
      assert.same({}, R.files_under(srv.data_dir .. "/streams/team-a"))
      -- and no reference was kept: the source deletes for good (a pinned one would be
      -- soft-deleted: 410, and a re-create 409)
      assert.equal(204, srv:req("DELETE", "/v1/stream/team-b/secret", nil, bearer(ADMIN)).status)
      assert.equal(404, srv:req("GET", "/v1/stream/team-b/secret?offset=-1", nil, bearer(ADMIN)).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-b/secret", "[]", bearer(ADMIN)).status)
      -- a fork the admin made: its idempotent re-PUT by team-a is refused too (no answer
      -- that tells team-a what the fork's source is)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/adminfork", "",
        with(bearer(ADMIN), { ["Stream-Forked-From"] = "/v1/stream/team-b/secret" })).status)
      assert.equal(403, srv:req("PUT", "/v1/stream/team-a/adminfork", "",
        with(bearer(TEAM_A), { ["Stream-Forked-From"] = "/v1/stream/team-b/secret" })).status)
      -- within its own prefix a token forks as before
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/src", '[{"a":1}]', bearer(TEAM_A)).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/fork", "",
        with(bearer(TEAM_A), { ["Stream-Forked-From"] = "/v1/stream/team-a/src" })).status)
      local g = srv:req("GET", "/v1/stream/team-a/fork?offset=-1", nil, bearer(TEAM_A))
      assert.equal(200, g.status)
      assert.equal('[{"a":1}]', g.body)
    end)
  end)
end)

describe("subscriptions", function()
  it("stay inside the token's prefixes: patterns, streams, wake streams, links", function()
    local srv = start()
    run(srv, function()
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/inbox", "[]", bearer(TEAM_A)).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-b/inbox", "[]", bearer(TEAM_B)).status)
      local bad = {
        { pattern = "team-b/**", wake_stream = "team-a/inbox" },
        { pattern = "**", wake_stream = "team-a/inbox" },
        { pattern = "*/inbox", wake_stream = "team-a/inbox" },
        { pattern = "team-a-evil/**", wake_stream = "team-a/inbox" },
        { streams = { "team-b/secret" }, wake_stream = "team-a/inbox" },
        { streams = { "team-a/x", "team-b/x" }, wake_stream = "team-a/inbox" },
        { pattern = "team-a/**", wake_stream = "team-b/inbox" }, -- wake events into team-b
      }
      for i, b in ipairs(bad) do
        b.type = "pull-wake"
        local r = srv:req("PUT", sub_url("bad" .. i), cjson.encode(b), bearer(TEAM_A))
        assert(r.status == 403, cjson.encode(b) .. ": " .. tostring(r.status) .. " " .. tostring(r.body))
        assert.equal("FORBIDDEN", code_of(r))
        assert.equal(404, srv:req("GET", sub_url("bad" .. i), nil, bearer(ADMIN)).status)
      end
      -- invalid stream paths are refused outright (they would name other files)
      local r = srv:req("PUT", sub_url("dots"), cjson.encode({ type = "pull-wake",
        streams = { "team-a/../team-b/secret" }, wake_stream = "team-a/inbox" }), bearer(TEAM_A))
      assert.equal(400, r.status)
      -- a read-only token creates nothing
      assert.equal(403, srv:req("PUT", sub_url("ro"), cjson.encode({ type = "pull-wake",
        pattern = "team-a/**", wake_stream = "team-a/inbox" }), bearer(A_READER)).status)
      -- inside its prefix it works, and wakes land in its own wake stream
      r = srv:req("PUT", sub_url("a1"), cjson.encode({ type = "pull-wake", pattern = "team-a/**",
        wake_stream = "team-a/inbox" }), bearer(TEAM_A))
      assert.equal(201, r.status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-b/x", '{"b":1}', bearer(TEAM_B)).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/x", '{"a":1}', bearer(TEAM_A)).status)
      R.wait_for(function()
        local w = srv:req("GET", "/v1/stream/team-a/inbox?offset=-1", nil, bearer(TEAM_A))
        return w.body:find('"subscription_id":"a1"', 1, true)
      end, 5, "a wake event in team-a/inbox")
      assert.equal("[]", srv:req("GET", "/v1/stream/team-b/inbox?offset=-1", nil, bearer(TEAM_B)).body)
      -- the stream "team-a" itself matches the glob but lies outside the creator's prefix:
      -- never linked, even when the admin writes to it
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a", '{"outside":1}', bearer(ADMIN)).status)
      local g = cjson.decode(srv:req("GET", sub_url("a1"), nil, bearer(ADMIN)).body)
      local paths = {}
      for _, s in ipairs(g.streams) do paths[s.path] = true end
      assert.same({ ["team-a/x"] = true }, paths)
      -- membership links are checked like the rest
      assert.equal(403, srv:req("POST", sub_url("a1") .. "/streams", '{"streams":["team-b/x"]}', bearer(TEAM_A)).status)
      assert.equal(204, srv:req("POST", sub_url("a1") .. "/streams", '{"streams":["team-a/y"]}', bearer(TEAM_A)).status)
      assert.equal(403, srv:req("DELETE", sub_url("a1") .. "/streams/team-b%2Fx", nil, bearer(TEAM_A)).status)
      assert.equal(204, srv:req("DELETE", sub_url("a1") .. "/streams/team-a%2Fy", nil, bearer(TEAM_A)).status)
    end)
  end)

  it("belong to the tokens that could create them; answers list only readable streams", function()
    local srv = start()
    run(srv, function()
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/inbox", "[]", bearer(TEAM_A)).status)
      assert.equal(201, srv:req("PUT", sub_url("a2"), cjson.encode({ type = "pull-wake", pattern = "team-a/**",
        streams = { "team-a/e" }, wake_stream = "team-a/inbox" }), bearer(TEAM_A)).status)
      local same = cjson.encode({ type = "pull-wake", pattern = "team-a/**", streams = { "team-a/e" },
        wake_stream = "team-a/inbox" })
      -- another tenant can neither read nor change it
      for _, q in ipairs({ { "GET", sub_url("a2") }, { "DELETE", sub_url("a2") }, { "PUT", sub_url("a2"), same },
        { "POST", sub_url("a2") .. "/streams", '{"streams":["team-b/z"]}' },
        { "POST", sub_url("a2") .. "/claim", '{"worker":"b"}' },
        { "DELETE", sub_url("a2") .. "/streams/team-a%2Fe" } }) do
        local r = srv:req(q[1], q[2], q[3], bearer(TEAM_B))
        assert(r.status == 403, q[1] .. " " .. q[2] .. ": " .. tostring(r.status) .. " " .. tostring(r.body))
        assert(r.body:find("FORBIDDEN", 1, true) or R.json_error(r), r.body)
      end
      assert.equal(200, srv:req("GET", sub_url("a2"), nil, bearer(ADMIN)).status)
      -- its own tenant can, a reader of that tenant may read it, not claim it
      assert.equal(200, srv:req("PUT", sub_url("a2"), same, bearer(TEAM_A)).status)
      assert.equal(200, srv:req("GET", sub_url("a2"), nil, bearer(A_READER)).status)
      assert.equal(403, srv:req("POST", sub_url("a2") .. "/claim", '{"worker":"r"}', bearer(A_READER)).status)
      -- an admin subscription over everything is not team-a's
      assert.equal(201, srv:req("PUT", sub_url("all"), cjson.encode({ type = "pull-wake", pattern = "**",
        wake_stream = "team-a/inbox" }), bearer(ADMIN)).status)
      assert.equal(403, srv:req("GET", sub_url("all"), nil, bearer(TEAM_A)).status)
      -- an admin subscription team-a may manage, linked to a stream team-a cannot read:
      -- team-a's answers leave that stream out
      assert.equal(201, srv:req("PUT", sub_url("adm-a"), cjson.encode({ type = "pull-wake", pattern = "team-a/**",
        wake_stream = "team-a/inbox" }), bearer(ADMIN)).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a", '{"top":1}', bearer(ADMIN)).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/team-a/seen", '{"x":1}', bearer(TEAM_A)).status)
      local function paths(tok)
        local t = cjson.decode(srv:req("GET", sub_url("adm-a"), nil, bearer(tok)).body)
        local out = {}
        for _, s in ipairs(t.streams) do out[#out + 1] = s.path end
        table.sort(out)
        return out
      end
      R.wait_for(function() return #paths(ADMIN) == 2 end, 5, "admin sees both links")
      assert.same({ "team-a", "team-a/seen" }, paths(ADMIN))
      assert.same({ "team-a/seen" }, paths(TEAM_A))
      local c = srv:req("POST", sub_url("adm-a") .. "/claim", '{"worker":"a"}', bearer(TEAM_A))
      assert.equal(200, c.status)
      local claimed = cjson.decode(c.body)
      assert.equal(1, #claimed.streams)
      assert.equal("team-a/seen", claimed.streams[1].path)
      -- ack and release carry the callback token, not a bearer token: the router lets
      -- them through, the token decides
      local ack = srv:req("POST", sub_url("adm-a") .. "/ack", cjson.encode({ wake_id = claimed.wake_id,
        generation = claimed.generation, acks = { { stream = "team-a/seen", offset = claimed.streams[1].tail_offset } } }),
        bearer(claimed.token))
      assert.equal(200, ack.status)
      assert.equal(401, srv:req("POST", sub_url("adm-a") .. "/ack", cjson.encode({ wake_id = claimed.wake_id,
        generation = claimed.generation }), bearer("1.forged-token")).status)
      assert.equal(204, srv:req("POST", sub_url("adm-a") .. "/release", cjson.encode({ wake_id = claimed.wake_id,
        generation = claimed.generation }), bearer(claimed.token)).status)
      -- without any token those routes still answer 401 (from the subscription API), and a
      -- forged token learns nothing about which subscriptions exist
      assert.equal(401, srv:req("POST", sub_url("adm-a") .. "/callback", "{}").status)
      assert.equal(401, srv:req("POST", sub_url("no-such-sub") .. "/ack", "{}", bearer("1.forged")).status)
      -- DELETE by the owner works
      assert.equal(204, srv:req("DELETE", sub_url("a2"), nil, bearer(TEAM_A)).status)
      assert.equal(404, srv:req("GET", sub_url("a2"), nil, bearer(ADMIN)).status)
    end)
  end)
end)

-- A TCP listener on 127.0.0.1 that counts connections (a would-be SSRF target).
local function listener()
  local l = assert(socket.bind("127.0.0.1", 0))
  local _, port = l:getsockname()
  l:settimeout(0)
  return l, tonumber(port)
end

local function connections(l, wait)
  local n, deadline = 0, socket.gettime() + (wait or 0)
  repeat
    local c = l:accept()
    if c then
      n = n + 1
      c:close()
    else
      socket.sleep(0.05)
    end
  until socket.gettime() > deadline
  return n
end

describe("webhook destinations", function()
  it("are refused in every numeric form of an internal address, while a receiver listens there", function()
    local l, port = listener()
    local srv = R.start({ config = { log_level = "info" } })
    run(srv, function()
      local urls = {
        "https://2130706433:" .. port .. "/", "http://2130706433:" .. port .. "/",
        "https://0x7f000001:" .. port .. "/", "https://0x7f.1:" .. port .. "/", "https://127.1:" .. port .. "/",
        "https://017700000001:" .. port .. "/", "https://[::ffff:127.0.0.1]:" .. port .. "/",
        "https://[::ffff:7f00:1]:" .. port .. "/", "https://localhost.:" .. port .. "/",
        "https://LocalHost:" .. port .. "/", "http://127.0.0.1:" .. port .. "/",
        "https://2852039166/", "https://10.1/", "https://0x0a000001/", "https://0/",
        "https://[::1]:" .. port .. "/", "https://[fd00::1]/", "https://[fe80::1]/",
      }
      for i, u in ipairs(urls) do
        local r = srv:req("PUT", sub_url("w" .. i), cjson.encode({ type = "webhook", pattern = "x/*",
          webhook = { url = u } }))
        assert(r.status == 400, u .. ": " .. tostring(r.status) .. " " .. tostring(r.body))
        assert.equal("WEBHOOK_URL_REJECTED", code_of(r))
      end
      -- nothing was created, so nothing can be delivered; and nothing connected
      assert.equal(201, srv:req("PUT", "/v1/stream/x/1", '{"n":1}').status)
      assert.equal(0, connections(l, 1))
    end)
    l:close()
  end)

  it("are checked again at every delivery: a stored one that is no longer allowed never connects", function()
    local l, port = listener()
    local srv = R.start({ config = { log_level = "info", protocol = { webhook_allow_networks = { "127.0.0.0/8" } } } })
    run(srv, function()
      local u = "http://2130706433:" .. port .. "/hook"
      assert.equal(201, srv:req("PUT", sub_url("hook"), cjson.encode({ type = "webhook", pattern = "x/*",
        webhook = { url = u } })).status)
      srv:stop()
      -- the operator withdraws the allowance; the subscription file still names the URL
      local cfg = assert(io.open(srv.config_path)):read("a")
      cfg = cfg:gsub('%["protocol"%] = %b{},', "")
      assert(io.open(srv.config_path, "w")):write(cfg):close()
      srv:restart()
      assert.equal(200, srv:req("GET", sub_url("hook")).status)
      assert.equal(201, srv:req("PUT", "/v1/stream/x/1", '{"n":1}').status)
      R.wait_for(function() return srv:log():find("webhook delivery to " .. u .. " refused", 1, true) end, 5,
        "the refused delivery logged")
      assert.equal(0, connections(l, 1))
    end)
    l:close()
  end)
end)
