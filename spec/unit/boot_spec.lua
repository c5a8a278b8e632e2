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
