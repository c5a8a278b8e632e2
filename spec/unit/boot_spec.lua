-- Unit specs of lua/boot.lua: the agents config defaults and checks, and the plugin
-- sandbox (own globals, read-only base, nonexistent globals raise).
package.path = "lua/?.lua;spec/support/?.lua;" .. package.path
local fake = require("fake_host")
local boot = require("boot")

describe("boot", function()
  it("fills in every default and merges model settings", function()
    local c = boot.normalize({ default_model = "echo", models = { openai = { model = "gpt-4.1" }, mine = { x = 1 } } })
    assert.equal("echo", c.default_model)
    assert.equal("gpt-4.1", c.models.openai.model)
    assert.equal("https://api.openai.com/v1", c.models.openai.base_url)
    assert.equal("OPENAI_API_KEY", c.models.openai.api_key_env)
    assert.equal("responses", c.models.openai.api)
    assert.equal("ara", c.models.grok.voice)
    assert.equal(0, c.models.echo.delay_ms)
    assert.same({ x = 1 }, c.models.mine)
    assert.equal("plugins", c.plugin_dir)
    assert.same({}, c.plugins_disabled)
    assert.is_nil(c.prefixes)
    assert.equal(5, c.max_hook_errors)
    local d = boot.normalize(nil)
    assert.equal("openai", d.default_model)
  end)

  it("gives every model a config table of its own, never the defaults themselves", function()
    for _, given in ipairs({ {}, { models = { openai = { model = "m" } } } }) do
      local c = boot.normalize(given)
      for name, d in pairs(boot.DEFAULTS.models) do
        assert.are_not.equal(d, c.models[name], name)
      end
      assert.are_not.equal(boot.DEFAULTS.models, c.models)
      c.models.grok.voice = "changed"
      c.models.openai.base_url = "changed"
      assert.equal("ara", boot.DEFAULTS.models.grok.voice)
      assert.equal("https://api.openai.com/v1", boot.DEFAULTS.models.openai.base_url)
    end
  end)

  it("refuses unknown keys and bad types", function()
    assert.has_error(function() boot.normalize({ bogus = 1 }) end, "config: unknown key agents.bogus")
    assert.has_error(function() boot.normalize({ default_model = 3 }) end)
    assert.has_error(function() boot.normalize({ prefixes = "agent/" }) end)
    assert.has_error(function() boot.normalize({ instruction_budget = -1 }) end)
    assert.has_error(function() boot.normalize({ models = { openai = 1 } }) end)
    assert.has_error(function() boot.normalize(42) end)
  end)

  it("checks the type of every agents key and names the key it refuses", function()
    local ok, err = pcall(boot.normalize, { models = { echo = { delay_ms = "x" } } })
    assert.is_false(ok)
    assert.equal('config: agents.models.echo.delay_ms must be a non-negative integer (got string "x")', err)
    -- a value of the wrong type for each key of the schema, top level and per model
    local wrong = { count = "ten", string = 10, number = "fast", boolean = "yes", ["string list"] = { 1, 2 } }
    local function bad_value(t)
      if type(t) == "string" then
        return wrong[t]
      elseif t.fields then
        return 42
      end
      return "not-one-of-them" -- an enumeration
    end
    local n = 0
    for key, t in pairs(boot.SCHEMA) do
      ok, err = pcall(boot.normalize, { [key] = bad_value(t) })
      assert.is_false(ok, key)
      assert.truthy(err:find("agents." .. key .. " must be", 1, true), err)
      n = n + 1
    end
    for model, schema in pairs(boot.MODEL_SCHEMA) do
      for key, t in pairs(schema) do
        ok, err = pcall(boot.normalize, { models = { [model] = { [key] = bad_value(t) } } })
        assert.is_false(ok, model .. "." .. key)
        assert.truthy(err:find(("agents.models.%s.%s must be"):format(model, key), 1, true), err)
        n = n + 1
      end
    end
    assert.is_true(n > 35)
    -- nested settings are checked too, and unknown keys of a shipped model are refused
    ok, err = pcall(boot.normalize, { models = { grok = { turn_detection = { threshold = "high" } } } })
    assert.equal('config: agents.models.grok.turn_detection.threshold must be a number (got string "high")', err)
    ok, err = pcall(boot.normalize, { models = { openai = { modle = "gpt-4o" } } })
    assert.equal("config: unknown key agents.models.openai.modle", err)
    ok, err = pcall(boot.normalize, { models = { openai = { api = "completions" } } })
    assert.equal('config: agents.models.openai.api must be one of "responses", "chat" (got string "completions")', err)
    -- false turns a nested feature off; a plugin's own model is not checked here
    local c = boot.normalize({ models = { grok = { turn_detection = false, input_audio_transcription = false },
      mine = { anything = {} } } })
    assert.is_false(c.models.grok.turn_detection)
    assert.same({ anything = {} }, c.models.mine)
    -- a partial nested table keeps the other defaults
    c = boot.normalize({ models = { grok = { turn_detection = { threshold = 0.7 } } } })
    assert.same({ type = "server_vad", threshold = 0.7, prefix_padding_ms = 300, silence_duration_ms = 500,
      create_response = true }, c.models.grok.turn_detection)
  end)

  it("refuses __gc metamethods in plugins (nothing bounds them)", function()
    local h = fake.new()
    local res = boot.start(h.ds, { default_model = "echo" })
    local env = res.plugin_env("p")
    assert.has_error(function()
      load("setmetatable({}, {__gc = function() while true do end end})", "=p", "t", env)()
    end, "setmetatable: __gc metamethods are not allowed in plugins (nothing bounds them); use <close>")
    local t = load("return setmetatable({}, {__index = function() return 1 end})", "=p", "t", env)()
    assert.equal(1, t.x)
  end)

  it("gives each plugin its own environment over a read-only base", function()
    local h = fake.new()
    local res = boot.start(h.ds, { default_model = "echo" })
    local env1, env2 = res.plugin_env("one"), res.plugin_env("two")
    local chunk = load("x = 1; return x, PLUGIN, type(ds.on), models.names ~= nil, config.default_model", "=one", "t", env1)
    local x, name, on, has_models, dm = chunk()
    assert.same({ 1, "one", "function", true, "echo" }, { x, name, on, has_models, dm })
    assert.has_error(function() load("return x", "=two", "t", env2)() end, "attempt to access nonexistent global 'x'")
    assert.has_error(function() load("return io", "=two", "t", env2)() end)
    assert.has_error(function() load("string.upper = nil", "=two", "t", env2)() end)
    assert.has_error(function() load("os.execute('true')", "=two", "t", env2)() end)
    assert.equal("A", load("return string.upper('a')", "=two", "t", env2)())
  end)

  it("installs the agent and exposes the registry to plugins", function()
    local h = fake.new()
    local res = boot.start(h.ds, { default_model = "m" })
    local env = res.plugin_env("p")
    load("models.register('m', {start = function(_, ctx) ctx:emit({type = 'text-delta', delta = 'hi'}) end})",
      "=p", "t", env)()
    h.ds.append("x", "iterate:agent:action:send-user-message:called", { content = "hello" })
    h:run()
    assert.equal(1, #h:events("x", "iterate:llm-loop:request-ended"))
  end)
end)
