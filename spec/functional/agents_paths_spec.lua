-- agents_paths_spec.lua - contract §4 (stream paths) and acceptance 8.
--
-- Covers: nested paths map to nested files, `a_b` and `a/b` are distinct, the query string
-- is not part of the path (POST and GET), percent-decoding happens exactly once, UTF-8
-- paths, the 512-byte limit; and every invalid form (`..`, `.`, `%2e%2e`, `%2F` making
-- empty or dot segments, `%00`, empty segments, overlong, backslash, control characters,
-- invalid UTF-8, malformed escapes) answers 400 with a JSON error on POST and GET while no
-- file appears anywhere in the server's root (checked by listing the tree before/after).
local http = require "spec.support.http"
local server = require "spec.support.server"
local A = require "spec.support.agents"
local J = require "spec.support.json"

local off = A.off

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

describe("valid stream paths (yaml storage)", function()
  local ctx = A.serve({ storage = "yaml" })

  it("a nested path lives in a nested file", function()
    A.append(ctx.srv.port, "agent/session-123", "t")
    assert.is_true(exists(ctx.srv:streams_dir() .. "/agent/session-123.yaml"))
    A.append(ctx.srv.port, "deep/a/b/c/d", "t")
    assert.is_true(exists(ctx.srv:streams_dir() .. "/deep/a/b/c/d.yaml"))
  end)

  it("a_b and a/b are different streams in different files", function()
    A.append(ctx.srv.port, "x_y", "flat")
    A.append(ctx.srv.port, "x/y", "nested")
    A.append(ctx.srv.port, "x/y", "nested2")
    local flat = A.history(ctx.srv.port, "x_y")
    local nested = A.history(ctx.srv.port, "x/y")
    assert.are.equal(1, #flat)
    assert.are.equal(2, #nested)
    assert.are.equal("x_y", J.get(flat[1].json, "path"))
    assert.are.equal("x/y", J.get(nested[1].json, "path"))
    assert.is_true(exists(ctx.srv:streams_dir() .. "/x_y.yaml"))
    assert.is_true(exists(ctx.srv:streams_dir() .. "/x/y.yaml"))
  end)

  it("the query string is not part of the path, for POST and GET", function()
    local status = A.post(ctx.srv.port, "/agents/q/x?foo=bar&offset=3", A.body("t"))
    assert.are.equal(204, status)
    local status2 = A.post(ctx.srv.port, "/agents/q/x?", A.body("t"))
    assert.are.equal(204, status2)
    local evs = A.history(ctx.srv.port, "/agents/q/x?foo=bar")
    assert.are.same({ off(0), off(1) }, A.offsets(evs))
    assert.are.equal("q/x", J.get(evs[1].json, "path"))
    assert.is_false(exists(ctx.srv:streams_dir() .. "/q/x?foo=bar&offset=3.yaml"))
  end)

  it("percent-decodes exactly once", function()
    assert.are.equal(204, (A.post(ctx.srv.port, "/agents/pct/x%20y", A.body("t"))))
    assert.are.equal(204, (A.post(ctx.srv.port, "/agents/pct/%2525", A.body("t"))))
    local e1 = A.history(ctx.srv.port, "/agents/pct/x%20y")
    assert.are.equal("pct/x y", J.get(e1[1].json, "path"))
    local e2 = A.history(ctx.srv.port, "/agents/pct/%2525")
    assert.are.equal("pct/%25", J.get(e2[1].json, "path"))
    -- "%25" as a path is its own stream, not "%"
    assert.are.equal(1, #e2)
    assert.is_true(exists(ctx.srv:streams_dir() .. "/pct/x y.yaml"))
    assert.is_true(exists(ctx.srv:streams_dir() .. "/pct/%25.yaml"))
  end)

  it("accepts UTF-8 paths", function()
    local p = "utf/\u{e9}t\u{e9}/\u{1F600}"
    A.append(ctx.srv.port, p, "t")
    local evs = A.history(ctx.srv.port, p)
    assert.are.equal(p, J.get(evs[1].json, "path"))
    assert.is_true(exists(ctx.srv:streams_dir() .. "/" .. p .. ".yaml"))
  end)

  it("accepts exactly 512 bytes", function()
    local p = table.concat({ string.rep("a", 100), string.rep("b", 100), string.rep("c", 100),
      string.rep("d", 100), string.rep("e", 108) }, "/")
    assert.are.equal(512, #p)
    assert.are.equal(off(0), A.append(ctx.srv.port, p, "t"))
    assert.are.equal(1, #A.history(ctx.srv.port, p))
  end)

  it("segments may contain dots that are not . or ..", function()
    for _, p in ipairs({ "dots/...", "dots/.hidden", "dots/a..b", "dots/v1.2" }) do
      assert.are.equal(off(0), A.append(ctx.srv.port, p, "t"), p)
    end
  end)
end)

for _, storage in ipairs({ "yaml", "memory" }) do
  describe("invalid stream paths (" .. storage .. " storage)", function()
    local ctx = A.serve({ storage = storage })
    local before

    local long513 = string.rep("a", 200) .. "/" .. string.rep("b", 200) .. "/" .. string.rep("c", 111)
    assert(#long513 == 513)

    local bad = {
      "..", "../x", "a/..", "a/../b", "../../../../etc/passwd", ".", "./a", "a/.", "a/./b",
      "%2e%2e", "%2E%2E", "%2e%2e/x", "a/%2e%2e", "a/%2e%2e/b", ".%2e", "%2e.", "%2e", "a/%2e/b",
      "%2Fetc%2Fpasswd", "%2F..%2F..%2Fetc%2Fpasswd", "..%2Fx", "a%2F..%2Fb", "a%2F%2Fb", "a%2F", "%2F",
      "%00", "a%00b", "a/%00", "x.yaml%00.txt",
      "a//b", "/a", "a/", "a///", "//",
      long513, string.rep("x", 2000), string.rep("a/", 300) .. "a",
      "a%5Cb", "..%5C..%5Cx", "%5C", "a\\b", "..\\x",
      "%01", "a%0Ab", "a%0Db", "a%09b", "%1F", "%7F", "a%1Bb",
      "%FF", "a%C3", "%C0%AF", "%ED%A0%80",
      "%", "a%", "%4", "%zz", "a%G0",
    }

    setup(function()
      os.execute("mkdir -p " .. server.sh_quote(ctx.srv.root .. "/outside"))
      before = server.tree(ctx.srv.root)
    end)

    for _, p in ipairs(bad) do
      local label = #p > 40 and (p:sub(1, 20) .. "...(" .. #p .. " bytes)") or p
      it("POST and GET /agents/" .. label .. " -> 400 with a JSON error", function()
        local url = "/agents/" .. p
        local status, h, body = A.post(ctx.srv.port, url, A.body("t"))
        A.assert_json_error(400, status, h, body, "POST " .. label)
        local gs, gh, gb = http.request(ctx.srv.port, "GET", url)
        A.assert_json_error(400, gs, gh, gb, "GET " .. label)
        local ls, lh, lb = http.request(ctx.srv.port, "GET", url .. "?live=sse")
        A.assert_json_error(400, ls, lh, lb, "GET live " .. label)
      end)
    end

    it("created no file anywhere (tree before == tree after)", function()
      local after = server.tree(ctx.srv.root)
      assert.are.same(before, after)
    end)
  end)
end
