-- agents_roundtrip_spec.lua - acceptance 4: JSON fidelity through storage (contract §1).
--
-- Generates well over 2,000 payloads: strings that look like numbers, booleans, null, `~`,
-- dates and YAML syntax; leading/trailing spaces; newlines; control characters; unicode
-- incl. astral; int64 extremes; awkward doubles; deep nesting; empty {} / []; keys that
-- need quoting; random trees. POSTs them pipelined on keep-alive connections (half with
-- every non-ASCII character \u-escaped), reads the history and compares each payload
-- structurally and in key order (integers exact, floats the same double), checks the wire
-- escaping policy (compact, raw UTF-8), then restarts the server and checks again.
local http = require "spec.support.http"
local A = require "spec.support.agents"
local J = require "spec.support.json"

local off = A.off
local obj, arr, num = J.obj, J.arr, J.num

local special_strings = {
  "123", "-1", "0", "0.5", "1e3", "1E3", "+1", ".5", "0x1F", "0o17", "0b101", "1_000", "007", "-0", "1.", "inf",
  ".inf", "-.inf", ".nan", "NaN", "Infinity", "-Infinity", "true", "false", "True", "FALSE", "yes", "no", "Yes", "NO",
  "on", "off", "y", "n", "Y", "N", "null", "Null", "NULL", "~", "", "  ", " ", " lead", "trail ", "  both  ",
  "2026-01-20", "2026-01-20T12:00:00.000Z", "2001-12-14t21:59:43.10-05:00", "12:30:45", "1:20", "190:20:30",
  "- item", "-", "--", "---", "...", "--- x", "? key", "?", "key: value", ":", "a:b", "a: b", "a #b", "#comment",
  "# c", "a#b", "&anchor", "*alias", "!tag", "!!str", "%TAG", "@at", "`tick", "|", "|-", ">", ">-", "'single'",
  '"double"', "[1, 2]", "{a: 1}", "[]", "{}", ",", "a,b", "a\nb", "line1\nline2\n", "\n", "\n\n", "trailing\n",
  "\r\n", "a\rb", "\ttab", "tab\t", "\0", "a\0b", "\1\2\31", "\127", "\u{80}", "\u{85}", "\u{a0}", "\u{feff}",
  "\u{2028}", "\u{2029}", "\u{e9}", "\u{65e5}\u{672c}\u{8a9e}", "\u{1F600}", "\u{10FFFF}", "\u{1F600}\u{1F601}",
  "\u{1D11E} music", "\u{3a9}\u{2248}\u{e7}\u{221a}", "\\", "\\n", "\\u0041", '"', '"quoted"', "'", "it's",
  "a\\\\b", "</script>", "<!-- -->", "%", "%25", "\u{e000}", " \n ", "a  b", "multi\n  indented\n    lines",
  "---\nfoo: bar\n...", "key:\n  - x", "0.1", "1e400", "-.5", "1,000", "$1", "=", "<<", "@", "0:0", "tRuE",
}

local number_lexemes = {
  "0", "1", "-1", "42", "9223372036854775807", "-9223372036854775808", "9223372036854775806",
  "-9223372036854775807", "9007199254740993", "9007199254740992", "-9007199254740993", "12345678901234567",
  "1000000000000000000", "4294967296", "2147483648", "-2147483649", "0.1", "0.2", "0.30000000000000004", "1.5",
  "-1.5", "1e308", "1.7976931348623157e308", "-1.7976931348623157e308", "5e-324", "4.9e-324",
  "2.2250738585072014e-308", "2.2250738585072011e-308", "1e-7", "1E5", "1e+5", "1E-5", "1.0", "-0.0", "0.0",
  "100.0", "123456789.123456789", "3.141592653589793", "2.718281828459045", "1.2345678901234567e-300",
  "6.02214076e23", "1e21", "1e22", "0.000001", "9007199254740993.0", "0.1e1", "1.7976931348623157E+308",
  "2.5e-3", "-2.5E+3", "0e0", "0E-0",
}

-- random generation ------------------------------------------------------------------

local function rand_cp()
  local r = math.random(1, 10)
  if r <= 3 then return math.random(0x20, 0x7e) end
  if r == 4 then return math.random(0, 0x1f) end
  if r == 5 then return math.random(0x80, 0x7ff) end
  if r == 6 then return math.random(0x800, 0xd7ff) end
  if r == 7 then return math.random(0xe000, 0xfffd) end
  if r == 8 then return math.random(0x10000, 0x10ffff) end
  if r == 9 then return ({ 0x7f, 0x2028, 0x2029, 0x22, 0x5c, 0x3a, 0x23, 0x20, 0x0a, 0x2d })[math.random(1, 10)] end
  return math.random(0x1f300, 0x1faff)
end

local function rand_string(maxlen)
  local n = math.random(0, maxlen)
  local t = {}
  for i = 1, n do t[i] = utf8.char(rand_cp()) end
  return table.concat(t)
end

local function rand_number()
  local r = math.random(1, 5)
  if r == 1 then return num(string.format("%d", math.random(0))) end
  if r == 2 then return num(string.format("%d", math.random(-1000, 1000))) end
  if r == 3 then return num(string.format("%.17g", (math.random() - 0.5) * 10.0 ^ math.random(-300, 300))) end
  if r == 4 then return num(string.format("%.17g", math.random() * 1000)) end
  return num(number_lexemes[math.random(1, #number_lexemes)])
end

local function rand_value(depth)
  local r = math.random(1, depth > 0 and 10 or 7)
  if r == 1 then return rand_string(12) end
  if r == 2 then return special_strings[math.random(1, #special_strings)] end
  if r == 3 then return rand_number() end
  if r == 4 then return ({ true, false, J.null })[math.random(1, 3)] end
  if r == 5 then return obj({}) end
  if r == 6 then return arr({}) end
  if r == 7 then return rand_string(40) end
  if r <= 9 then
    local o = obj({})
    local used = {}
    for _ = 1, math.random(1, 5) do
      local k = math.random(1, 2) == 1 and rand_string(8) or special_strings[math.random(1, #special_strings)]
      if not used[k] then
        used[k] = true
        o.keys[#o.keys + 1] = k
        o.vals[#o.vals + 1] = rand_value(depth - 1)
      end
    end
    return o
  end
  local items = {}
  for i = 1, math.random(1, 5) do items[i] = rand_value(depth - 1) end
  return arr(items)
end

local function nest_obj(d, leaf)
  local v = leaf
  for i = d, 1, -1 do v = obj({ { "d" .. i, v } }) end
  return v
end

local function nest_arr(d, leaf)
  local v = leaf
  for _ = 1, d do v = arr({ v }) end
  return v
end

--- Builds the payload list: { {type=, payload=<ordered object>}, ... }
local function generate()
  math.randomseed(424242)
  local out = {}
  local function add(p, t) out[#out + 1] = { type = t or "roundtrip", payload = p } end
  for _, s in ipairs(special_strings) do
    add(obj({ { "v", s } }))
    add(obj({ { s, 1 } }))
    add(obj({ { "list", arr({ s, s }) }, { s, obj({ { s, s } }) } }))
    if s ~= "" then add(obj({ { "v", s } }), s) end
  end
  for _, n in ipairs(number_lexemes) do
    add(obj({ { "v", num(n) } }))
    add(obj({ { "a", arr({ num(n), num(n), obj({ { "x", num(n) } }) }) } }))
  end
  local all = obj({})
  for i, s in ipairs(special_strings) do
    all.keys[i] = "k" .. i
    all.vals[i] = s
  end
  add(all)
  local rev = obj({})
  for i = #special_strings, 1, -1 do
    rev.keys[#rev.keys + 1] = special_strings[i]
    rev.vals[#rev.vals + 1] = i
  end
  add(rev)
  add(obj({}))
  add(obj({ { "e", obj({}) } }))
  add(obj({ { "e", arr({}) } }))
  add(obj({ { "e", arr({ arr({}), obj({}) }) } }))
  add(obj({ { "e", arr({ obj({}) }) } }))
  add(obj({ { "t", true }, { "f", false }, { "n", J.null }, { "nl", arr({ J.null }) } }))
  add(obj({ { "z", 1 }, { "a", 2 }, { "m", 3 }, { "b", 4 } }))
  for d = 1, 55 do
    add(nest_obj(d, "leaf " .. d))
    add(obj({ { "arr", nest_arr(d, num(tostring(d))) } }))
    add(obj({ { "mix", nest_arr(d % 10, nest_obj(d % 7, obj({}))) } }))
  end
  while #out < 2200 do
    local o = rand_value(4)
    if not J.is_obj(o) then o = obj({ { "v", o } }) end
    add(o)
  end
  return out
end

local function post_all(port, path, items)
  local c = http.connect(port)
  local batch = 50
  for i = 1, #items, batch do
    local reqs = {}
    local last = math.min(i + batch - 1, #items)
    for k = i, last do
      local it_ = items[k]
      local body = "{" .. '"type":' .. J.encode(it_.type, { ascii = k % 2 == 0 }) .. ',"payload":'
          .. J.encode(it_.payload, { ascii = k % 2 == 0 }) .. "}"
      reqs[#reqs + 1] = http.build("POST", A.url(path), {}, body)
    end
    assert(c:send_raw(table.concat(reqs)))
    for k = i, last do
      local r = assert(c:read_response("POST"))
      if r.status ~= 204 then
        error(string.format("payload #%d (%s) answered %d %s", k, J.encode(items[k].payload):sub(1, 200), r.status, r.body))
      end
      assert.are.equal(off(k - 1), r.headers["stream-offset"])
    end
  end
  c:close()
end

-- The exact line the server writes for event i (createdAt matched by pattern): its JSON
-- writer echoes number lexemes and escapes only what the canonical form escapes.
local function expected_line(item, path, i)
  return '{"type":' .. J.encode(item.type, { canonical = true }) .. ',"payload":'
      .. J.encode(item.payload, { canonical = true }) .. ',"version":"1","path":' .. J.encode(path)
      .. ',"offset":"' .. off(i - 1) .. '","createdAt":"'
end

local function verify_text(port, path, items)
  local evs = A.history(port, path)
  assert.are.equal(#items, #evs)
  local failures = {}
  for i, ev in ipairs(evs) do
    local want = expected_line(items[i], path, i)
    local d = ev.data
    if d:sub(1, #want) ~= want or not d:sub(#want + 1):match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ\"}$") then
      local k = 1
      while d:byte(k) == want:byte(k) do k = k + 1 end
      failures[#failures + 1] = string.format("#%d differs at byte %d: want ...%q got ...%q", i, k,
        want:sub(math.max(1, k - 20), k + 40), d:sub(math.max(1, k - 20), k + 40))
      if #failures >= 20 then break end
    end
  end
  assert(#failures == 0, #failures .. " event line(s) differ from the canonical text:\n" .. table.concat(failures, "\n"))
end

local function verify(port, path, items)
  local evs = A.history(port, path)
  assert.are.equal(#items, #evs)
  local failures = {}
  for i, ev in ipairs(evs) do
    local ok, why = pcall(function()
      assert(ev.id == off(i - 1), "id " .. tostring(ev.id))
      assert(ev.data_lines == 1, "data is not one line")
      local cok, cerr = pcall(J.decode, ev.data, { compact = true })
      assert(cok, cerr)
      local eok, eerr = J.check_escapes(ev.data)
      assert(eok, eerr)
      local e = ev.json
      assert(J.get(e, "type") == items[i].type, "type differs")
      local same, diff = J.equal(items[i].payload, J.get(e, "payload"))
      assert(same, diff)
      assert(J.get(e, "offset") == off(i - 1), "offset field")
      assert(J.get(e, "path") == path, "path field")
      assert(J.get(e, "version") == "1", "version field")
    end)
    if not ok then
      failures[#failures + 1] = string.format("#%d sent %s: %s", i, J.encode(items[i].payload):sub(1, 160), tostring(why))
      if #failures >= 20 then break end
    end
  end
  assert(#failures == 0, #failures .. " payload(s) did not round-trip:\n" .. table.concat(failures, "\n"))
end

local items = generate()

describe("JSON fidelity (yaml storage, across a restart)", function()
  local ctx = A.serve({ storage = "yaml" })

  it("generates at least 2,000 payloads", function()
    assert.is_true(#items >= 2000)
  end)

  it("every payload comes back exactly", function()
    post_all(ctx.srv.port, "roundtrip/yaml", items)
    verify(ctx.srv.port, "roundtrip/yaml", items)
  end)

  it("each event line is the canonical compact text of what was sent", function()
    verify_text(ctx.srv.port, "roundtrip/yaml", items)
  end)

  it("and again after a restart (read from the YAML file)", function()
    ctx.srv:restart()
    ctx.base = ctx.srv:baseline()
    verify(ctx.srv.port, "roundtrip/yaml", items)
    verify_text(ctx.srv.port, "roundtrip/yaml", items)
  end)
end)

describe("JSON fidelity (memory storage)", function()
  local ctx = A.serve({ storage = "memory" })

  it("every payload comes back exactly", function()
    post_all(ctx.srv.port, "roundtrip/memory", items)
    verify(ctx.srv.port, "roundtrip/memory", items)
    verify_text(ctx.srv.port, "roundtrip/memory", items)
  end)
end)
