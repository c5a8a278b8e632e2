-- Functional specs of plugins: isolation of broken plugins (syntax error, a hook that
-- raises, a hook that never yields), logged with file:line while the server keeps
-- serving; a plugin dropped into plugins/ works after a restart (the README example);
-- a route registered from Lua.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")

local USER = "iterate:agent:action:send-user-message:called"
local ENDED = "iterate:llm-loop:request-ended"
local USER_P = USER:gsub("%p", "%%%0")

local AUDIT = [[
-- audit.lua: records every user message in audit/<path>
ds.on("iterate:agent:action:send-user-message:called", function(ev)
  ds.append("audit/" .. ev.path, "audit:event-seen",
    ds.json.obj("path", ev.path, "offset", ev.offset, "type", ev.type))
end)
]]

describe("plugins", function()
  it("isolates a syntax error, a raising hook and a runaway hook; the server keeps serving", function()
    local srv = S.start({
      agents = { default_model = "echo", instruction_budget = 2000000, max_hook_errors = 2 },
      plugins = {
        ["a_syntax.lua"] = "local x = 1\nthis is not lua\n",
        ["b_raise.lua"] = 'ds.on("' .. USER .. '", function(ev)\n  local t = nil\n  return t.field\nend)\n',
        ["c_loop/init.lua"] = 'ds.on("' .. USER .. '", function(ev)\n  while true do\n    pcall(function() while true do end end)\n  end\nend)\n',
        ["d_off.lua.disabled"] = "error('never loaded')\n",
        ["e_load_loop.lua"] = "while true do end\n",
        ["f_load_io.lua"] = "ds.append('x', 'y', {})\n",
      },
    })
    local ok, err = pcall(function()
      for i = 1, 3 do
        local p = "plug/iso" .. i
        assert.equal(204, srv:post(p, USER, { content = "still here " .. i }))
        srv:wait_count(p, ENDED, 1, "the echo answer " .. i)
        srv:wait_idle()
      end
      local log = srv:log()
      assert.truthy(log:find("plugin a_syntax failed to load: [^\n]*a_syntax%.lua:2:"), log)
      assert.truthy(log:find("plugin b_raise: hook for " .. USER_P .. " failed: [^\n]*b_raise%.lua:3: attempt to index"), log)
      assert.truthy(log:find("plugin c_loop: hook for " .. USER_P .. " failed: [^\n]*c_loop/init%.lua:%d+: [^\n]*instruction budget exceeded"), log)
      assert.truthy(log:find("plugin e_load_loop failed to load: [^\n]*e_load_loop%.lua:1: instruction budget"), log)
      assert.truthy(log:find("plugin f_load_io failed to load: [^\n]*f_load_io%.lua:1: ds.append is not allowed in the load phase"), log)
      assert.truthy(log:find("plugin b_raise disabled: 2 hook failures"), log)
      assert.truthy(log:find("plugin c_loop disabled: 2 hook failures"), log)
      assert.falsy(log:find("never loaded"))
      local st = srv:stats()
      assert.equal(2, st.lua.tasks_killed)
      assert.equal(4, st.lua.hooks_failed)
      -- appends and reads of plain streams still work
      assert.equal(204, srv:post("plain/x", "note", { n = 1 }))
      assert.equal(1, #srv:events("plain/x"))
      assert.same({ n = 1 }, srv:first_live_event("plain/x").payload)
    end)
    srv:stop()
    local log = srv:log()
    srv:cleanup()
    assert(ok, err)
    assert.falsy(log:find("leaked"), log)
    assert.falsy(log:find("Sanitizer"), log)
    assert.falsy(log:find("runtime error"), log)
  end)

  it("a plugin dropped into plugins/ works after a restart", function()
    local srv = S.start({ agents = { default_model = "echo" } })
    local ok, err = pcall(function()
      srv:post("plug/drop", USER, { content = "before" })
      srv:wait_count("plug/drop", ENDED, 1, "first answer")
      srv:wait_idle()
      assert.same({}, srv:events("audit/plug/drop"))
      S.write_file(srv.plugin_dir .. "/audit.lua", AUDIT)
      srv:restart()
      srv:post("plug/drop", USER, { content = "after" })
      local audit = srv:wait_events("audit/plug/drop", function(e)
        return #e == 1
      end, "the audit event")
      assert.equal("audit:event-seen", audit[1].type)
      assert.same({ path = "plug/drop", offset = "0000000000000008", type = USER }, audit[1].payload)
      srv:wait_count("plug/drop", ENDED, 2, "second answer")
      srv:wait_idle()
    end)
    srv:stop()
    srv:cleanup()
    assert(ok, err)
  end)

  it("refuses to start on a bad agents value, with the reason", function()
    local ok, err = pcall(S.start, { agents = { bogus = 1 } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("unknown key agents.bogus", 1, true), err)
    ok, err = pcall(S.start, { agents = { max_hook_errors = "many" } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("agents.max_hook_errors must be a non-negative integer", 1, true), err)
  end)

  it("serves a route registered from Lua", function()
    local srv = S.start({
      agents = { default_model = "echo" },
      plugins = {
        ["hello.lua"] = [[
ds.http.route("GET", "/hello", function(req)
  ds.sleep(5)
  return 200, ds.json.encode(ds.json.obj("path", req.path, "query", req.query)), {["Content-Type"] = "application/json"}
end)
ds.http.route("POST", "/boom", function(req) error("route exploded") end)
]],
      },
    })
    local ok, err = pcall(function()
      local status, body = srv:request("GET", "/hello/x?y=1")
      assert.equal(200, status)
      assert.equal('{"path":"/hello/x","query":"y=1"}', body)
      status = srv:request("POST", "/boom", "{}")
      assert.equal(500, status)
      status = srv:request("GET", "/nothing-here")
      assert.equal(404, status)
      srv:wait_idle()
      assert.truthy(srv:log():find("hello%.lua:5: route exploded"))
    end)
    srv:stop()
    srv:cleanup()
    assert(ok, err)
  end)
end)
