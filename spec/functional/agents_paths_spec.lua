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
      "%C2%85", "a%E2%80%AEb", "%E2%81%A6", "a%E2%80%A8", string.rep("s", 242), string.rep("d", 251) .. "/x",
      "c.yaml.idx", "c.yaml.meta.tmp/x", "c.yaml.offset",
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

-- The store's file-name mapping (issue 12, item 20), on both views and both stores alike:
-- a segment is at most 241 bytes (a file name is at most 255 bytes, and the longest one the
-- store makes is "<segment>.yaml.meta.tmp"); segments of the form "<x>.yaml.<y>" are reserved
-- for the files kept beside a stream; C1 controls, Unicode bidi controls and line/paragraph
-- separators are refused; "x.yaml/..." next to a stream "x" is a 409 (its directory would be
-- x's file), in both orders, while "a" and "a/b" stay legal.
local function v1(port, method, p, body, ct)
  local h = {}
  if ct then h["Content-Type"] = ct end
  return http.request(port, method, "/v1/stream/" .. p, h, body)
end

for _, storage in ipairs({ "yaml", "memory" }) do
  describe("the store's file-name mapping (" .. storage .. " storage)", function()
    local ctx = A.serve({ storage = storage })

    local function refused_everywhere(p, label, want)
      local url = "/agents/" .. p
      local st, h, b = A.post(ctx.srv.port, url, A.body("t"))
      A.assert_json_error(400, st, h, b, "POST " .. label)
      if want then assert.truthy(b:find(want, 1, true), label .. ": " .. b) end
      local gs, gh, gb = http.request(ctx.srv.port, "GET", url)
      A.assert_json_error(400, gs, gh, gb, "GET " .. label)
      local ps, ph, pb = v1(ctx.srv.port, "PUT", p, "x", "text/plain")
      A.assert_json_error(400, ps, ph, pb, "PUT /v1 " .. label)
      local qs, qh, qb = v1(ctx.srv.port, "POST", p, "x", "text/plain")
      A.assert_json_error(400, qs, qh, qb, "POST /v1 " .. label)
      local rs, rh, rb = v1(ctx.srv.port, "GET", p .. "?offset=-1")
      A.assert_json_error(400, rs, rh, rb, "GET /v1 " .. label)
    end

    it("a 241-byte segment works on both views, metadata included", function()
      local seg = string.rep("s", 241)
      assert.are.equal(off(0), A.append(ctx.srv.port, "len/" .. seg, "t"))
      assert.are.equal(1, #A.history(ctx.srv.port, "len/" .. seg))
      -- a text stream writes its metadata sidecar (<segment>.yaml.meta through .meta.tmp)
      local st = v1(ctx.srv.port, "PUT", "lenv/" .. seg, "hello", "text/plain")
      assert.are.equal(201, st)
      local gs, _, gb = v1(ctx.srv.port, "GET", "lenv/" .. seg .. "?offset=-1")
      assert.are.equal(200, gs)
      assert.are.equal("hello", gb)
      -- also as a directory
      assert.are.equal(off(0), A.append(ctx.srv.port, seg .. "/x", "t"))
    end)

    for _, n in ipairs({ 242, 251, 255, 256, 300 }) do
      it("a " .. n .. "-byte segment is a 400 naming the limit, on both views", function()
        local seg = string.rep("s", n)
        refused_everywhere("len/" .. seg, n .. "-byte last segment", "241")
        refused_everywhere(seg .. "/x", n .. "-byte directory segment", "241")
      end)
    end

    for _, p in ipairs({ "c.yaml.offset", "c.yaml.idx", "c.yaml.meta", "c.yaml.meta.tmp", "x/c.yaml.idx/b",
      "c.yaml.damaged-1733600000000", "c.YAML.Meta", "c.yaml.yaml", ".yaml.x" }) do
      it("the reserved sidecar name " .. p .. " is a 400 on both views", function()
        refused_everywhere(http.escape_path(p), p, "reserved")
      end)
    end

    local controls = {
      { "%C2%80", "U+0080" }, { "a%C2%85b", "U+0085" }, { "%C2%9F", "U+009F" },
      { "x%E2%80%AEfdp.exe", "U+202E" }, { "%E2%80%AA", "U+202A" }, { "a/%E2%81%A6b", "U+2066" },
      { "%E2%81%A9", "U+2069" }, { "a%E2%80%8Eb", "U+200E" }, { "a%E2%80%8F", "U+200F" },
      { "%D8%9Cx", "U+061C" }, { "a%E2%80%A8b", "U+2028" }, { "a%E2%80%A9b", "U+2029" },
    }
    for _, c in ipairs(controls) do
      it("a path with " .. c[2] .. " is a 400 on both views", function()
        refused_everywhere(c[1], c[2], c[2])
      end)
    end

    it("neighbouring characters stay valid (U+00A0, U+200D, U+202F, U+2065, U+206A)", function()
      for _, p in ipairs({ "ok/%C2%A0", "ok/a%E2%80%8Db", "ok/%E2%80%AF", "ok/%E2%81%A5", "ok/%E2%81%AA" }) do
        assert.are.equal(204, (A.post(ctx.srv.port, "/agents/" .. p, A.body("t"))), p)
      end
    end)

    it("x.yaml/... next to a stream x is a 409 in both orders; reads see no stream", function()
      -- x exists first
      A.append(ctx.srv.port, "cf/c", "t")
      local st, h, b = A.post(ctx.srv.port, "/agents/cf/c.yaml/b", A.body("t"))
      A.assert_json_error(409, st, h, b, "POST /agents/cf/c.yaml/b")
      local ps, ph, pb = v1(ctx.srv.port, "PUT", "cf/c.yaml/b", "", "application/json")
      A.assert_json_error(409, ps, ph, pb, "PUT /v1/stream/cf/c.yaml/b")
      local evs, gs = A.history(ctx.srv.port, "cf/c.yaml/b")
      assert.are.equal(200, gs)
      assert.are.same({}, evs)
      assert.are.equal(404, (v1(ctx.srv.port, "GET", "cf/c.yaml/b?offset=-1")))
      -- c still works
      assert.are.equal(off(1), A.append(ctx.srv.port, "cf/c", "t"))
      -- the other order: d.yaml/b exists first
      A.append(ctx.srv.port, "cf/d.yaml/b", "t")
      st, h, b = A.post(ctx.srv.port, "/agents/cf/d", A.body("t"))
      A.assert_json_error(409, st, h, b, "POST /agents/cf/d")
      ps, ph, pb = v1(ctx.srv.port, "PUT", "cf/d", "", "application/json")
      A.assert_json_error(409, ps, ph, pb, "PUT /v1/stream/cf/d")
      evs, gs = A.history(ctx.srv.port, "cf/d")
      assert.are.equal(200, gs)
      assert.are.same({}, evs)
      assert.are.equal(404, (v1(ctx.srv.port, "GET", "cf/d?offset=-1")))
      assert.are.equal(off(1), A.append(ctx.srv.port, "cf/d.yaml/b", "t"))
      -- once d.yaml/b is gone, d can be created
      assert.are.equal(204, (v1(ctx.srv.port, "DELETE", "cf/d.yaml/b")))
      assert.are.equal(off(0), A.append(ctx.srv.port, "cf/d", "t"))
      -- a "/x.yaml" that names no stream is an ordinary directory
      assert.are.equal(off(0), A.append(ctx.srv.port, "cf/e.yaml/b", "t"))
      assert.are.equal(off(0), A.append(ctx.srv.port, "cf/e.yaml/c.yaml/z", "t"))
      -- ... but a deeper "b.yaml/" beside the stream e.yaml/b is the same conflict
      st, h, b = A.post(ctx.srv.port, "/agents/cf/e.yaml/b.yaml/z", A.body("t"))
      A.assert_json_error(409, st, h, b, "POST /agents/cf/e.yaml/b.yaml/z")
    end)

    it("a stream a and a stream a/b are both legal and keep working", function()
      A.append(ctx.srv.port, "nest/a", "t")
      A.append(ctx.srv.port, "nest/a/b", "t")
      A.append(ctx.srv.port, "nest/a", "t")
      A.append(ctx.srv.port, "nest/a/b/c", "t")
      assert.are.same({ off(0), off(1) }, A.offsets(A.history(ctx.srv.port, "nest/a")))
      assert.are.same({ off(0) }, A.offsets(A.history(ctx.srv.port, "nest/a/b")))
      assert.are.same({ off(0) }, A.offsets(A.history(ctx.srv.port, "nest/a/b/c")))
      if storage == "yaml" then
        ctx.srv:restart()
        ctx.base = ctx.srv:baseline()
        assert.are.same({ off(0), off(1) }, A.offsets(A.history(ctx.srv.port, "nest/a")))
        assert.are.same({ off(0) }, A.offsets(A.history(ctx.srv.port, "nest/a/b")))
        assert.are.equal(off(2), A.append(ctx.srv.port, "nest/a", "t"))
      end
    end)
  end)
end
