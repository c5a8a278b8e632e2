/* l_json.c - ds.json: JSON <-> Lua values that keep int64 and key order.
 *
 * Provides: ds.json.decode(text) -> value | nil, msg; ds.json.encode(value) -> text
 * (raises on values JSON cannot hold: cycles, functions, inf/nan); ds.json.obj(k1, v1,
 * ...) an object with that key order; ds.json.array(...) an array (also when empty);
 * ds.json.null, the sentinel for JSON null.
 * Representation (value objects; plain tables, no metatables imposed):
 *   - objects are tables; their key order is remembered in a weak-keyed side table, so the
 *     encoder writes decoded objects back in their order (keys added later follow, sorted);
 *     plain tables built by Lua code are written with sorted keys;
 *   - arrays are sequences; decoded arrays and ds.json.array() are marked in a weak-keyed
 *     set, so `[]` stays `[]` (an empty unmarked table encodes as `{}`);
 *   - numbers: a lexeme without fraction or exponent that fits int64 becomes a Lua integer
 *     (exact over the whole 64-bit range); every other number becomes a float (a double;
 *     an integer lexeme beyond int64 loses precision there). Integers encode as integers;
 *     floats encode with the shortest %.17g form that reads back as the same double and
 *     always carry a '.' or exponent ("1.0"), so a float stays a float through a round trip;
 *   - null decodes to ds.json.null (so the key stays present); nil encodes as null.
 * Parsing uses the project codec (store/json.h) with its depth limit and UTF-8 checks.
 * Must not: keep pointers into Lua strings after returning.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "lua/lhost.h"
#include "store/json.h"

static char ORDER_KEY, ARRAY_KEY, NULL_KEY;

#define MAX_DEPTH 64

static void push_weak(lua_State *L, void *key, const char *mode) {
  lua_newtable(L);
  lua_newtable(L);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

static void push_number(lua_State *L, const char *s, size_t n) {
  int is_int = 1;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '.' || c == 'e' || c == 'E') {
      is_int = 0;
      break;
    }
  }
  if (is_int) {
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno == 0 && end == s + n) {
      lua_pushinteger(L, (lua_Integer)v);
      return;
    }
  }
  lua_pushnumber(L, strtod(s, NULL));
}

/* [order arrays] below the top while converting */
static void push_value(lua_State *L, const ds_value_t *v, int order_idx, int arrays_idx) {
  luaL_checkstack(L, 4, "JSON nesting");
  switch (v->type) {
  case DS_V_NULL:
    lua_rawgetp(L, LUA_REGISTRYINDEX, &NULL_KEY);
    break;
  case DS_V_BOOL:
    lua_pushboolean(L, v->u.b);
    break;
  case DS_V_NUMBER:
    push_number(L, v->u.str.s, v->u.str.len);
    break;
  case DS_V_STRING:
  case DS_V_BINARY:
    lua_pushlstring(L, v->u.str.s, v->u.str.len);
    break;
  case DS_V_ARRAY:
    lua_createtable(L, (int)v->u.arr.len, 0); /* [arr] */
    for (size_t i = 0; i < v->u.arr.len; i++) {
      push_value(L, v->u.arr.items[i], order_idx, arrays_idx);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, arrays_idx);
    break;
  case DS_V_OBJECT:
    lua_createtable(L, 0, (int)v->u.obj.len);   /* [obj] */
    lua_createtable(L, (int)v->u.obj.len, 0);   /* [obj keys] */
    for (size_t i = 0; i < v->u.obj.len; i++) {
      const ds_member_t *m = &v->u.obj.items[i];
      lua_pushlstring(L, m->key, m->klen);      /* [obj keys k] */
      lua_pushvalue(L, -1);
      lua_rawseti(L, -3, (lua_Integer)i + 1);   /* [obj keys k] */
      push_value(L, m->val, order_idx, arrays_idx); /* [obj keys k v] */
      lua_rawset(L, -4);                        /* [obj keys] */
    }
    lua_pushvalue(L, -2);                       /* [obj keys obj] */
    lua_insert(L, -2);                          /* [obj obj keys] */
    lua_rawset(L, order_idx);                   /* [obj] */
    break;
  }
}

int ds__json_push(lua_State *L, const char *s, size_t n, char *err, size_t errlen) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  int rc = ds_json_parse(&a, s, n, MAX_DEPTH, &v, err, errlen);
  if (rc != 0) {
    ds_arena_free(&a);
    return -1;
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ORDER_KEY);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY); /* [order arrays] */
  int top = lua_gettop(L);
  push_value(L, v, top - 1, top); /* [order arrays value] */
  lua_replace(L, top - 1);        /* [value arrays] */
  lua_pop(L, 1);                  /* [value] */
  ds_arena_free(&a);
  return 0;
}

static void put_float(ds_buf_t *b, double d) {
  char tmp[40];
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, d);
    if (strtod(tmp, NULL) == d) break;
  }
  ds_buf_puts(b, tmp);
  if (!strpbrk(tmp, ".eE")) ds_buf_puts(b, ".0");
}

typedef struct enc_s {
  lua_State *L;
  ds_buf_t *b;
  int order_idx, arrays_idx, null_idx;
  const char *err;
} enc_t;

static int encode(enc_t *e, int idx, int depth);

static int is_sequence(lua_State *L, int idx, lua_Integer *len) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  lua_Integer count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1 || k > n) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  *len = n;
  return count == n;
}

static int key_to_string(lua_State *L, int idx) {
  /* pushes the key at idx as a string, or returns 0 for keys JSON cannot name */
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING) {
    lua_pushvalue(L, idx);
    return 1;
  }
  if (t == LUA_TNUMBER) {
    lua_pushvalue(L, idx);
    lua_tolstring(L, -1, NULL); /* converts the copy, not the key */
    return 1;
  }
  return 0;
}

static int cmp_keys(const void *a, const void *b) {
  const char *const *x = a, *const *y = b;
  return strcmp(*x, *y);
}

static int write_member(enc_t *e, int tbl, int depth, int *first) {
  /* [... keystr value] */
  lua_State *L = e->L;
  if (!*first) ds_buf_putc(e->b, ',');
  *first = 0;
  size_t kl;
  const char *k = lua_tolstring(L, -2, &kl);
  ds_json_write_string(e->b, k, kl);
  ds_buf_putc(e->b, ':');
  (void)tbl;
  return encode(e, lua_gettop(L), depth + 1);
}

static int encode_object(enc_t *e, int idx, int depth) {
  lua_State *L = e->L;
  ds_buf_putc(e->b, '{');
  int first = 1;
  lua_newtable(L); /* [seen] */
  int seen = lua_gettop(L);
  lua_pushvalue(L, idx);
  lua_rawget(L, e->order_idx); /* [seen keys|nil] */
  if (lua_istable(L, -1)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i); /* [seen keys k] */
      lua_pushvalue(L, -1);
      lua_rawget(L, seen);
      int dup = lua_toboolean(L, -1);
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_rawget(L, idx); /* [seen keys k v] */
      if (dup || lua_isnil(L, -1)) {
        lua_pop(L, 2);
        continue;
      }
      lua_pushvalue(L, -2);
      lua_pushboolean(L, 1);
      lua_rawset(L, seen);
      if (write_member(e, idx, depth, &first) != 0) return -1;
      lua_pop(L, 2); /* [seen keys] */
    }
  }
  lua_pop(L, 1); /* [seen] */
  /* the remaining keys, sorted for a stable output */
  size_t cap = 8, n = 0;
  char **names = ds_xmalloc(cap * sizeof *names);
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* [seen k v] */
    lua_pop(L, 1);
    if (!key_to_string(L, -1)) {
      for (size_t i = 0; i < n; i++) free(names[i]);
      free(names);
      e->err = "object key is neither a string nor a number";
      return -1;
    }
    lua_pushvalue(L, -1);
    lua_rawget(L, seen);
    int done = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!done) {
      if (n == cap) names = ds_xrealloc(names, (cap *= 2) * sizeof *names);
      size_t kl;
      const char *k = lua_tolstring(L, -1, &kl);
      names[n++] = ds_xstrndup(k, kl);
    }
    lua_pop(L, 1); /* [seen k] */
  }
  qsort(names, n, sizeof *names, cmp_keys);
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    if (rc == 0) {
      lua_pushstring(L, names[i]);
      lua_pushvalue(L, -1);
      lua_rawget(L, idx);
      if (lua_isnil(L, -1)) { /* a numeric key */
        lua_pop(L, 1);
        lua_Integer ik;
        char *end;
        ik = strtoll(names[i], &end, 10);
        if (*end == 0) lua_rawgeti(L, idx, ik);
        else lua_pushnumber(L, strtod(names[i], NULL)), lua_rawget(L, idx);
      }
      rc = write_member(e, idx, depth, &first);
      if (rc == 0) lua_pop(L, 2);
    }
    free(names[i]);
  }
  free(names);
  if (rc != 0) return -1;
  lua_pop(L, 1); /* [] */
  ds_buf_putc(e->b, '}');
  return 0;
}

static int encode(enc_t *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth > MAX_DEPTH) {
    e->err = "nesting deeper than 64 (or a cycle)";
    return -1;
  }
  luaL_checkstack(L, 8, "JSON encode");
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    ds_buf_puts(e->b, "null");
    return 0;
  case LUA_TBOOLEAN:
    ds_buf_puts(e->b, lua_toboolean(L, idx) ? "true" : "false");
    return 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      ds_buf_printf(e->b, "%lld", (long long)lua_tointeger(L, idx));
    } else {
      double d = lua_tonumber(L, idx);
      if (!isfinite(d)) {
        e->err = "cannot encode inf or nan";
        return -1;
      }
      put_float(e->b, d);
    }
    return 0;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    ds_json_write_string(e->b, s, n);
    return 0;
  }
  case LUA_TTABLE:
    break;
  default:
    if (lua_rawequal(L, idx, e->null_idx)) {
      ds_buf_puts(e->b, "null");
      return 0;
    }
    e->err = lua_pushfstring(L, "cannot encode a %s value", luaL_typename(L, idx));
    return -1;
  }
  if (lua_rawequal(L, idx, e->null_idx)) {
    ds_buf_puts(e->b, "null");
    return 0;
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->arrays_idx);
  int marked = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_Integer len = 0;
  int seq = is_sequence(L, idx, &len);
  if (marked || (seq && len > 0)) {
    if (!seq) {
      e->err = "array has holes or non-integer keys";
      return -1;
    }
    ds_buf_putc(e->b, '[');
    for (lua_Integer i = 1; i <= len; i++) {
      if (i > 1) ds_buf_putc(e->b, ',');
      lua_rawgeti(L, idx, i);
      if (encode(e, lua_gettop(L), depth + 1) != 0) return -1;
      lua_pop(L, 1);
    }
    ds_buf_putc(e->b, ']');
    return 0;
  }
  return encode_object(e, idx, depth);
}

int ds__json_encode(lua_State *L, int idx, ds_buf_t *b) {
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ORDER_KEY);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &NULL_KEY);
  enc_t e = {L, b, top + 1, top + 2, top + 3, NULL};
  int rc = encode(&e, idx, 0);
  if (rc != 0) {
    const char *msg = e.err ? e.err : "cannot encode";
    lua_pushstring(L, msg);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return -1;
  }
  lua_settop(L, top);
  return 0;
}

static int l_json_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char err[200];
  if (ds__json_push(L, s, n, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

static int l_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  ds_buf_t b = DS_BUF_INIT;
  if (ds__json_encode(L, 1, &b) != 0) {
    ds_buf_free(&b);
    return luaL_error(L, "ds.json.encode: %s", lua_tostring(L, -1));
  }
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  ds_buf_free(&b);
  return 1;
}

static int l_json_obj(lua_State *L) {
  int n = lua_gettop(L);
  if (n % 2) return luaL_error(L, "ds.json.obj: expects key, value pairs");
  lua_createtable(L, 0, n / 2);        /* [args obj] */
  lua_createtable(L, n / 2, 0);        /* [args obj keys] */
  for (int i = 1; i <= n; i += 2) {
    luaL_checktype(L, i, LUA_TSTRING);
    if (lua_isnil(L, i + 1)) continue;
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pushvalue(L, i);
    lua_pushvalue(L, i + 1);
    lua_rawset(L, -4);
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ORDER_KEY); /* [args obj keys order] */
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 2); /* [args obj] */
  return 1;
}

static int l_json_array(lua_State *L) {
  int n = lua_gettop(L);
  lua_createtable(L, n, 0);
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i);
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return 1;
}

static int l_null_tostring(lua_State *L) {
  lua_pushliteral(L, "null");
  return 1;
}

static const luaL_Reg json_funcs[] = {{"decode", l_json_decode},
                                      {"encode", l_json_encode},
                                      {"obj", l_json_obj},
                                      {"array", l_json_array},
                                      {NULL, NULL}};

void ds__json_open(lua_State *L) {
  /* [ds] */
  push_weak(L, &ORDER_KEY, "k");
  push_weak(L, &ARRAY_KEY, "k");
  lua_newuserdatauv(L, 0, 0); /* [ds null] */
  luaL_newmetatable(L, "ds.json.null");
  lua_pushcfunction(L, l_null_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &NULL_KEY); /* [ds null] */
  luaL_newlib(L, json_funcs);                   /* [ds null json] */
  lua_insert(L, -2);
  lua_setfield(L, -2, "null"); /* [ds json] */
  lua_setfield(L, -2, "json"); /* [ds] */
}
