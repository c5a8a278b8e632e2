-- lua_runaway_spec.lua - the invariant of issue 12, item 2: while a plugin misbehaves,
-- /health and appends on other paths answer within 100 ms, and the server keeps serving
-- until the plugin is disabled; then the agent still answers.
--
-- Each misbehaviour is a plugin written here into the server's plugin dir, triggered by an
-- event type of its own: an endless loop in a nested coroutine (with a pcall inside), a
-- spawn storm (each task spawns two more and burns some CPU), a memory hog (a global table
-- growing until the cap, yielding often so only the cap can stop it), a backtracking
-- pattern, and an endless loop in an xpcall message handler. A runaway is stopped by the
-- instruction budget or the time limit of a resume, whichever comes first (both defaults). While it runs, one client keeps triggering it and another measures, one
-- request at a time, the latency of GET /health and of an append on another path.
-- The threshold is the issue's 100 ms on a normal build; an ASan build runs the same
-- budgets several times slower, so it gets 500 ms. On a shared machine a CPU-bound kill
-- takes longer on the wall clock than on the CPU: the threshold is multiplied by how
-- much slower a fixed CPU-bound loop ran in this process around the measurement (1 on an
-- idle machine) - a generous margin, stated here. The measured maxima and the factor are
-- printed.
-- Must not: sleep fixed times (it polls the log with deadlines) or leave processes behind.
package.path = "./?.lua;" .. package.path
local S = require("spec.support.lua_host_server")
local http = require("spec.support.http")
local socket = require("socket")
local cjson = require("cjson")

local T = S.T

local PLUGINS = {
  ["nested.lua"] = [[
ds.on("test:nested", function()
  coroutine.wrap(function()
    while true do pcall(function() while true do end end) end
  end)()
end)
]],
  ["storm.lua"] = [[
local function storm()
  for _ = 1, 20000 do end
  ds.spawn(storm)
  ds.spawn(storm)
end
ds.on("test:storm", storm)
]],
  ["hog.lua"] = [[
-- keeps everything it makes, yielding often: only the memory cap can stop it
hog = {}
ds.on("test:hog", function()
  while true do
    for _ = 1, 2000 do hog[#hog + 1] = { #hog } end
    ds.sleep(0)
  end
end)
]],
  ["pattern.lua"] = [[
ds.on("test:pattern", function()
  return (("a"):rep(30) .. "b"):find(("a*"):rep(20) .. "c")
end)
]],
  ["handler.lua"] = [[
ds.on("test:handler", function()
  xpcall(error, function() while true do end end)
end)
]],
}

local KINDS = { "nested", "storm", "hog", "pattern", "handler" }

-- How much longer than its CPU time a fixed CPU-bound loop takes on the wall clock now.
local function contention()
  local c0, w0 = os.clock(), socket.gettime()
  local x = 0
  for i = 1, 3000000 do
    x = x + i % 7
  end
  local cpu, wall = os.clock() - c0, socket.gettime() - w0
  return math.max(1, wall / math.max(cpu, 1e-3)), x
end

local function limit_ms(factor)
  return (S.sanitized() and 500 or 100) * (factor or 1)
end

local function timed(conn, method, path, body)
  local t0 = socket.gettime()
  local status = conn:request(method, path, body and { ["Content-Type"] = "application/json" } or nil, body)
  return status, (socket.gettime() - t0) * 1000
end

local function disabled(srv, plugin)
  return srv:log():find("plugin " .. plugin .. " disabled", 1, true) ~= nil
end

-- Triggers `kind` until its plugin is disabled, measuring meanwhile; returns the latencies.
local function misbehave(srv, kind)
  local trig, probe = http.connect(srv.port), http.connect(srv.port)
  local health, appends = {}, {}
  local body = cjson.encode({ type = "test:" .. kind, payload = {} })
  local deadline = socket.gettime() + 60
  local n, after = 0, 0
  while after < 80 do
    if socket.gettime() > deadline then
      error(kind .. ": the plugin was not disabled within 60 s")
    end
    if not disabled(srv, kind) then
      assert.equal(204, (trig:request("POST", "/agents/runaway/" .. kind, { ["Content-Type"] = "application/json" }, body)))
    else
      after = after + 40 -- the server keeps serving after the plugin is gone
    end
    for _ = 1, 40 do
      n = n + 1
      local st, ms = timed(probe, "GET", "/health")
      assert.equal(200, st)
      health[#health + 1] = ms
      st, ms = timed(probe, "POST", "/agents/calm/" .. kind, cjson.encode({ type = "note", payload = { n = n } }))
      assert.equal(204, st)
      appends[#appends + 1] = ms
    end
  end
  trig:close()
  probe:close()
  return health, appends
end

local function max(list)
  local m = 0
  for _, v in ipairs(list) do
    m = math.max(m, v)
  end
  return m
end

describe("a model that never yields", function()
  it("is killed, and its request ends with request-cancelled reason error", function()
    S.with_server({
      agents = { default_model = "echo" },
      plugins = { ["spin.lua"] = 'models.register("spin", { start = function() while true do end end })\n' },
    }, function(srv)
      local p = "runaway/model"
      assert.equal(204, srv:post(p, T.config, { model = "spin" }))
      local _, fin = srv:prompt(p, T.user, { content = "spin please" })
      assert.equal(T.cancelled, fin.type)
      assert.equal("error", fin.payload.reason)
      assert.truthy(fin.payload.message:find("^the model's task failed: .*spin%.lua:1: .*exceeded"), fin.payload.message)
      -- the path goes on
      assert.equal(204, srv:post(p, T.config, { model = "echo" }))
      local _, fin2 = srv:prompt(p, T.user, { content = "and echo" })
      assert.equal(T.ended, fin2.type)
    end)
  end)
end)

describe("a misbehaving plugin", function()
  it("never holds /health or appends on other paths longer than the limit, and gets disabled", function()
    S.with_server({
      agents = { default_model = "echo", max_hook_errors = 3, memory_limit_mb = 64 },
      plugins = PLUGINS,
    }, function(srv)
      local report = {}
      for _, kind in ipairs(KINDS) do
        local f1 = contention()
        local health, appends = misbehave(srv, kind)
        local factor = math.max(f1, (contention()))
        local mh, ma = max(health), max(appends)
        report[#report + 1] = ("%s: %d /health max %.1f ms, %d appends max %.1f ms (limit %.0f ms, contention x%.2f)")
          :format(kind, #health, mh, #appends, ma, limit_ms(factor), factor)
        assert.is_true(mh < limit_ms(factor), ("%s: /health took %.1f ms (limit %.0f)"):format(kind, mh, limit_ms(factor)))
        assert.is_true(ma < limit_ms(factor), ("%s: an append took %.1f ms (limit %.0f)"):format(kind, ma, limit_ms(factor)))
        -- every sample's append is stored, none lost while the plugin misbehaved
        assert.equal(#appends, #srv:events("calm/" .. kind))
      end
      print("\n  latency while misbehaving:\n    " .. table.concat(report, "\n    "))
      local log = srv:log()
      local KILLED = ":%d+: [^\n]*exceeded %(" -- instruction budget or time limit
      assert.truthy(log:find("nested: hook for test:nested failed: [^\n]*nested%.lua" .. KILLED), log)
      assert.truthy(log:find("plugin storm: task failed: [^\n]*ds%.spawn: [^\n]*already has %d+ live tasks"), log)
      assert.truthy(log:find("plugin hog disabled: memory limit reached", 1, true), log)
      assert.truthy(log:find("pattern: hook for test:pattern failed: [^\n]*pattern%.lua" .. KILLED), log)
      assert.truthy(log:find("handler: hook for test:handler failed: [^\n]*handler%.lua" .. KILLED), log)
      -- the agent still answers, every task ended, the hog's memory went back
      local _, fin = srv:prompt("after/all", T.user, { content = "still here" })
      assert.equal(T.ended, fin.type)
      srv:wait_idle()
      local st = S.wait_for(function()
        local s = srv:stats()
        return s.lua.mem_bytes < 16 * 1024 * 1024 and s
      end, 10, "the hog's memory to be collected")
      assert.equal(#KINDS, st.lua.plugins_disabled)
      assert.is_true(st.lua.tasks_refused > 0)
      if not S.sanitized() then
        assert.is_true(srv:rss_kb() < 400 * 1024, "RSS " .. srv:rss_kb() .. " kB")
      end
    end)
  end)
end)
