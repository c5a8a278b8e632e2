-- spec/support/json.lua - order- and lexeme-preserving JSON for the functional specs.
--
-- Provides: J.obj / J.arr / J.num / J.null builders for values whose key order and number
-- lexemes matter, J.encode (compact, optionally \u-escaping everything non-ASCII),
-- J.decode (strict; keeps key order and number lexemes; `compact` mode rejects whitespace
-- between tokens), J.equal (fidelity comparison per the contract: strings byte-equal,
-- integers exact, floats the same double, key order preserved) and J.check_escapes (the
-- wire policy: raw UTF-8, \u only for control characters, DEL and U+2028/2029).
-- Must not: depend on cjson for anything where precision or order matters (cjson loses
-- both); cjson is only used by callers for small control-plane bodies like {"error": ...}.
local J = {}

local OBJ, ARR, NUM = {}, {}, {}
J.null = setmetatable({}, { __tostring = function() return "null" end })

--- J.obj{ {"k", v}, {"k2", v2} } -> ordered object
function J.obj(pairs_)
  local o = { [OBJ] = true, keys = {}, vals = {} }
  for i, kv in ipairs(pairs_ or {}) do
    o.keys[i], o.vals[i] = kv[1], kv[2]
  end
  return o
end

--- J.arr({v1, v2, ...}, n) -> array (n needed only when elements may be nil; they never are)
function J.arr(items)
  local a = { [ARR] = true, n = #items }
  for i = 1, #items do a[i] = items[i] end
  return a
end

--- J.num("1.50e3") -> number kept by its lexeme
function J.num(lexeme) return { [NUM] = true, lexeme = lexeme } end

function J.is_obj(v) return type(v) == "table" and v[OBJ] == true end
function J.is_arr(v) return type(v) == "table" and v[ARR] == true end
function J.is_num(v) return type(v) == "table" and v[NUM] == true end

--- field lookup on an ordered object (first match)
function J.get(o, k)
  for i, key in ipairs(o.keys) do
    if key == k then return o.vals[i] end
  end
  return nil
end

local short = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function esc_cp(cp)
  if cp < 0x10000 then return string.format("\\u%04x", cp) end
  cp = cp - 0x10000
  return string.format("\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF))
end

local function enc_string(s, ascii, canonical)
  local out = s:gsub('[%c"\\]', function(c)
    return short[c] or string.format("\\u%04x", c:byte())
  end)
  if canonical then
    out = out:gsub("\u{2028}", "\\u2028"):gsub("\u{2029}", "\\u2029")
  end
  if ascii then
    out = out:gsub("[\xC2-\xF4][\x80-\xBF]+", function(seq)
      local res = {}
      for _, cp in utf8.codes(seq) do res[#res + 1] = esc_cp(cp) end
      return table.concat(res)
    end)
  end
  return '"' .. out .. '"'
end

local function enc(v, ascii, out, canonical)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = enc_string(v, ascii, canonical)
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == J.null or v == nil then
    out[#out + 1] = "null"
  elseif t == "number" then
    if math.type(v) == "integer" then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  elseif J.is_num(v) then
    out[#out + 1] = v.lexeme
  elseif J.is_obj(v) then
    out[#out + 1] = "{"
    for i, k in ipairs(v.keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = enc_string(k, ascii, canonical)
      out[#out + 1] = ":"
      enc(v.vals[i], ascii, out, canonical)
    end
    out[#out + 1] = "}"
  elseif J.is_arr(v) then
    out[#out + 1] = "["
    for i = 1, v.n do
      if i > 1 then out[#out + 1] = "," end
      enc(v[i], ascii, out, canonical)
    end
    out[#out + 1] = "]"
  else
    error("json.encode: cannot encode " .. tostring(v))
  end
end

--- Compact JSON text. opts.ascii: escape every non-ASCII code point as \u (surrogate pairs
--- for astral), to exercise the server's escape decoding. opts.canonical: the server's
--- output form (short escapes for " \\ \b \f \n \r \t, \u00xx for other controls and DEL,
--- \u2028 / \u2029, everything else raw UTF-8; numbers by their lexeme).
function J.encode(v, opts)
  local out = {}
  enc(v, opts and opts.ascii, out, opts and opts.canonical)
  return table.concat(out)
end

-- decoder ---------------------------------------------------------------------------

local function utf8_of(cp) return utf8.char(cp) end

local Dec = {}
Dec.__index = Dec

function Dec:fail(msg)
  error(string.format("json.decode: %s at byte %d near %q", msg, self.pos, self.s:sub(self.pos, self.pos + 20)), 0)
end

function Dec:ws()
  local s, e = self.s:find("^[ \t\r\n]+", self.pos)
  if s then
    if self.compact then self:fail("whitespace outside strings in compact JSON") end
    self.pos = e + 1
  end
end

function Dec:string()
  local s = self.s
  local pos = self.pos + 1
  local parts = {}
  while true do
    local a, b = s:find('^[^"\\%c]+', pos)
    if a then
      parts[#parts + 1] = s:sub(a, b)
      pos = b + 1
    end
    local c = s:sub(pos, pos)
    if c == '"' then
      self.pos = pos + 1
      local str = table.concat(parts)
      if not utf8.len(str) then self:fail("invalid UTF-8 in string") end
      return str
    elseif c == "\\" then
      local e = s:sub(pos + 1, pos + 1)
      local simple = ({ ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' })[e]
      if simple then
        parts[#parts + 1] = simple
        pos = pos + 2
      elseif e == "u" then
        local hex = s:match("^%x%x%x%x", pos + 2)
        if not hex then self.pos = pos; self:fail("bad \\u escape") end
        local cp = tonumber(hex, 16)
        pos = pos + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local lo = s:match("^\\u(%x%x%x%x)", pos)
          if not lo then self.pos = pos; self:fail("lone high surrogate") end
          local lcp = tonumber(lo, 16)
          if lcp < 0xDC00 or lcp > 0xDFFF then self.pos = pos; self:fail("bad low surrogate") end
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lcp - 0xDC00)
          pos = pos + 6
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          self.pos = pos; self:fail("lone low surrogate")
        end
        parts[#parts + 1] = utf8_of(cp)
      else
        self.pos = pos
        self:fail("bad escape")
      end
    elseif c == "" then
      self:fail("unterminated string")
    else
      self.pos = pos
      self:fail("raw control character in string")
    end
  end
end

function Dec:value(depth)
  if depth > 10000 then self:fail("too deep") end
  self:ws()
  local s = self.s
  local c = s:sub(self.pos, self.pos)
  if c == "{" then
    self.pos = self.pos + 1
    local o = J.obj()
    self:ws()
    if s:sub(self.pos, self.pos) == "}" then
      self.pos = self.pos + 1
      return o
    end
    while true do
      self:ws()
      if s:sub(self.pos, self.pos) ~= '"' then self:fail("expected key") end
      local k = self:string()
      self:ws()
      if s:sub(self.pos, self.pos) ~= ":" then self:fail("expected ':'") end
      self.pos = self.pos + 1
      local v = self:value(depth + 1)
      o.keys[#o.keys + 1] = k
      o.vals[#o.vals + 1] = v
      self:ws()
      local d = s:sub(self.pos, self.pos)
      self.pos = self.pos + 1
      if d == "}" then return o end
      if d ~= "," then self.pos = self.pos - 1; self:fail("expected ',' or '}'") end
    end
  elseif c == "[" then
    self.pos = self.pos + 1
    local a = J.arr({})
    self:ws()
    if s:sub(self.pos, self.pos) == "]" then
      self.pos = self.pos + 1
      return a
    end
    while true do
      local v = self:value(depth + 1)
      a.n = a.n + 1
      a[a.n] = v
      self:ws()
      local d = s:sub(self.pos, self.pos)
      self.pos = self.pos + 1
      if d == "]" then return a end
      if d ~= "," then self.pos = self.pos - 1; self:fail("expected ',' or ']'") end
    end
  elseif c == '"' then
    return self:string()
  elseif s:find("^true", self.pos) then
    self.pos = self.pos + 4
    return true
  elseif s:find("^false", self.pos) then
    self.pos = self.pos + 5
    return false
  elseif s:find("^null", self.pos) then
    self.pos = self.pos + 4
    return J.null
  else
    local lex = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", self.pos)
    if not lex or not lex:match("^-?0$") and not lex:match("^-?[1-9]") and not lex:match("^-?0[.eE]") then
      self:fail("unexpected token")
    end
    if not (lex:match("^-?%d+$") or lex:match("^-?%d+%.%d+$") or lex:match("^-?%d+%.%d+[eE][-+]?%d+$")
        or lex:match("^-?%d+[eE][-+]?%d+$")) then
      self:fail("malformed number " .. lex)
    end
    self.pos = self.pos + #lex
    return J.num(lex)
  end
end

--- Decode text into ordered values. opts.compact: reject whitespace between tokens.
function J.decode(text, opts)
  local d = setmetatable({ s = text, pos = 1, compact = opts and opts.compact }, Dec)
  local v = d:value(0)
  if not d.compact then d:ws() end
  if d.pos <= #text then d:fail("trailing data") end
  return v
end

-- comparison ------------------------------------------------------------------------

local function lexeme_of(v)
  if J.is_num(v) then return v.lexeme end
  if type(v) == "number" then
    return math.type(v) == "integer" and string.format("%d", v) or string.format("%.17g", v)
  end
  return nil
end

local function num_equal(a, b)
  local la, lb = lexeme_of(a), lexeme_of(b)
  local ia, ib = la:match("^-?%d+$"), lb:match("^-?%d+$")
  if ia then
    -- integers must be exact (64-bit range): compare as Lua integers
    local na, nb = math.tointeger(tonumber(la)), math.tointeger(tonumber(lb))
    if na == nil then return la == lb end
    return ib ~= nil and na == nb
  end
  -- floats: the same double, including the sign of zero
  local da, db = tonumber(la) + 0.0, tonumber(lb) + 0.0
  if da ~= db then return false end
  if da == 0 then return (1 / da) == (1 / db) end
  return true
end

--- Returns true, or false and a path/description of the first difference.
function J.equal(a, b, path)
  path = path or "$"
  local na, nb = lexeme_of(a) ~= nil, lexeme_of(b) ~= nil
  if na or nb then
    if not (na and nb) then return false, path .. ": number vs non-number" end
    if not num_equal(a, b) then return false, string.format("%s: number %s ~= %s", path, lexeme_of(a), lexeme_of(b)) end
    return true
  end
  if type(a) == "string" or type(b) == "string" then
    if a ~= b then return false, string.format("%s: string %q ~= %q", path, tostring(a), tostring(b)) end
    return true
  end
  if J.is_obj(a) then
    if not J.is_obj(b) then return false, path .. ": object vs non-object" end
    if #a.keys ~= #b.keys then return false, string.format("%s: %d keys vs %d", path, #a.keys, #b.keys) end
    for i, k in ipairs(a.keys) do
      if b.keys[i] ~= k then return false, string.format("%s: key #%d %q ~= %q", path, i, k, tostring(b.keys[i])) end
      local ok, why = J.equal(a.vals[i], b.vals[i], path .. "." .. k)
      if not ok then return false, why end
    end
    return true
  end
  if J.is_arr(a) then
    if not J.is_arr(b) then return false, path .. ": array vs non-array" end
    if a.n ~= b.n then return false, string.format("%s: length %d vs %d", path, a.n, b.n) end
    for i = 1, a.n do
      local ok, why = J.equal(a[i], b[i], path .. "[" .. i .. "]")
      if not ok then return false, why end
    end
    return true
  end
  if a ~= b then return false, string.format("%s: %s ~= %s", path, tostring(a), tostring(b)) end
  return true
end

--- Checks the server's output escaping policy on one compact JSON text: valid UTF-8, no raw
--- control characters, and \u escapes only for control characters, DEL and U+2028/2029
--- (everything else must be raw UTF-8). Returns true or false, reason.
function J.check_escapes(text)
  if not utf8.len(text) then return false, "invalid UTF-8" end
  if text:find("[%z\1-\31]") then return false, "raw control character" end
  -- walk escapes, skipping escaped backslashes
  local pos = 1
  while true do
    local s = text:find("\\", pos, true)
    if not s then break end
    local e = text:sub(s + 1, s + 1)
    if e == "u" then
      local cp = tonumber(text:sub(s + 2, s + 5), 16)
      if not cp then return false, "bad \\u escape" end
      if not (cp < 0x20 or cp == 0x7f or cp == 0x2028 or cp == 0x2029) then
        return false, string.format("needless \\u%04x escape (must be raw UTF-8)", cp)
      end
      pos = s + 6
    else
      pos = s + 2
    end
  end
  return true
end

return J
