/* l_stream.c - streams from Lua: ds.append, ds.read, ds.subscribe and ds.Subscription.
 *
 *   ds.append(path, type, payload) -> offset | nil, msg, code
 *       stores one /agents event (payload encoded with ds.json), synchronously: the
 *       offset is assigned and subscribers see it before this returns.
 *   ds.append_raw(path, type, payload_json) -> offset | nil, msg, code
 *       the same with the payload given as JSON text, stored as a POSTed payload would be
 *       (never re-encoded through a Lua table: key order, numbers and escapes survive as
 *       the store keeps them); invalid JSON returns nil, msg, "EINVAL".
 *   ds.read(path, from, max) -> {records...}, next | nil, msg, code
 *       records with offset >= from (an integer), at most max (default 1000), each
 *       decoded as stored: an /agents event is a table with its envelope, but a stream
 *       may also hold other JSON (a /v1 append: a number, a string, ds.json.null...) or
 *       text that is not JSON (given as the string). `next` is the offset after the last
 *       record returned (from when none): read on from there. Offsets are consecutive, so
 *       record i has offset next - #records + i - 1. A path never written reads as {}.
 *   ds.subscribe(path, from) -> sub       events with offset >= from (default: the next)
 *   sub:next(timeout_ms) -> event | nil, "timeout" | nil, "closed"   (yields; the default
 *       timeout is 30000 ms; -1 waits forever)
 *   for ev in sub:events(timeout_ms) do ... end   the same as a loop; ends at a timeout
 *       or when the subscription closes
 *   sub:offset() -> the next offset it will deliver
 *   sub:close()                            idempotent; also __close and __gc
 * Subscription is an I/O object: a box pointing to a C struct; closing (by Lua, by the
 * stream's deletion or by host shutdown) clears the box and every method answers
 * nil, "closed". Exactly-once: the subscription only remembers `next`; a publication just
 * wakes the waiter, which reads the store from `next` - one source of truth, no gap, no
 * duplicate.
 * Must not: append from inside a ds_sub_t callback (they only wake).
 */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "lua/lhost.h"
#include "store/json.h"

#define SUB_MT "ds.Subscription"

struct ds__lsub_s {
  ds_lua_host_t *h;
  ds_sub_t sub;
  ds_stream_t *stream; /* valid while !closed (deletion closes us first) */
  int subscribed;
  int closed;
  uint64_t next;
  ds_task_t *waiter;
  uint64_t deadline; /* uv_now ms; 0 = none */
  struct ds__lsub_s **box; /* the Lua box pointing at us */
  ds__lsub_t *prev, *nextl;
};

static int fail(lua_State *L, int code, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, ds_err_name(code));
  return 3;
}

static int check_path(lua_State *L, int idx, const char **path) {
  size_t n;
  *path = luaL_checklstring(L, idx, &n);
  char err[160];
  if (ds_path_validate(*path, n, err, sizeof err) != 0) return luaL_error(L, "invalid stream path: %s", err);
  return 0;
}

static int l_append(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  const char *path;
  check_path(L, 1, &path);
  size_t tl;
  const char *type = luaL_checklstring(L, 2, &tl);
  int raw = lua_toboolean(L, lua_upvalueindex(1));
  if (raw) luaL_checktype(L, 3, LUA_TSTRING);
  else luaL_checkany(L, 3);
  if (h->phase != DS_PHASE_RUN) return luaL_error(L, "ds.append is not allowed in the load phase");
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_puts(&b, "{\"type\":");
  ds_json_write_string(&b, type, tl);
  ds_buf_puts(&b, ",\"payload\":");
  if (raw) {
    size_t pl;
    const char *pj = lua_tolstring(L, 3, &pl);
    /* The text is spliced into the event body, so it must be exactly one JSON object on
     * its own: `{}, "version":"9"` would otherwise smuggle top-level fields in. */
    ds_arena_t a;
    ds_arena_init(&a);
    ds_value_t *v = NULL;
    char perr[160];
    int prc = ds_json_parse(&a, pj, pl, DS_JSON_DEFAULT_MAX_DEPTH, &v, perr, sizeof perr);
    int is_obj = prc == 0 && v->type == DS_V_OBJECT;
    ds_arena_free(&a);
    if (!is_obj) {
      ds_buf_free(&b);
      return fail(L, DS_EINVAL, prc != 0 ? perr : "payload must be a JSON object");
    }
    ds_buf_append(&b, pj, pl);
  } else if (lua_isnil(L, 3)) {
    ds_buf_puts(&b, "{}");
  } else if (ds__json_encode(L, 3, &b) != 0) {
    ds_buf_free(&b);
    return luaL_error(L, "ds.append: payload: %s", lua_tostring(L, -1));
  }
  ds_buf_putc(&b, '}');
  ds_stream_t *s = NULL;
  /* WATCH, not CREATE: an event that fails validation must not leave an empty stream */
  int rc = ds_streams_get(h->streams, path, DS_STREAMS_WATCH, 0, &s);
  if (rc != 0) {
    ds_buf_free(&b);
    return fail(L, rc, ds_strerror(rc));
  }
  uint64_t off = 0;
  char err[256] = "";
  rc = ds_stream_append_event(s, b.data, b.len, &off, err, sizeof err);
  ds_buf_free(&b);
  if (rc != 0) {
    ds_streams_release(s);
    return fail(L, rc, err[0] ? err : ds_strerror(rc));
  }
  char o[17];
  ds_offset_format(off, o);
  lua_pushstring(L, o);
  return 1;
}

typedef struct {
  lua_State *L;
  int tbl;
  lua_Integer n;
  int err;
  uint64_t next; /* after the last record delivered */
} read_ctx_t;

static void push_record(lua_State *L, const char *repr, size_t len) {
  char err[160];
  if (ds__json_push(L, repr, len, err, sizeof err) != 0) lua_pushlstring(L, repr, len);
}

static int on_record(void *ud, uint64_t offset, const char *repr, size_t len) {
  read_ctx_t *c = ud;
  luaL_checkstack(c->L, 8, "ds.read");
  push_record(c->L, repr, len);
  lua_rawseti(c->L, c->tbl, ++c->n);
  c->next = offset + 1;
  return 0;
}

static int l_read(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  const char *path;
  check_path(L, 1, &path);
  lua_Integer from = luaL_optinteger(L, 2, 0);
  lua_Integer max = luaL_optinteger(L, 3, 1000);
  if (from < 0) from = 0;
  if (max <= 0) max = 1000;
  lua_newtable(L);
  ds_stream_t *s = NULL;
  int rc = ds_streams_get(h->streams, path, 0, 0, &s);
  if (rc == DS_ENOTFOUND) {
    lua_pushinteger(L, from);
    return 2;
  }
  if (rc != 0) return fail(L, rc, ds_strerror(rc));
  read_ctx_t c = {L, lua_gettop(L), 0, 0, (uint64_t)from};
  long got = ds_store_read(ds_stream_store(s), (uint64_t)from, (size_t)max, (size_t)64 << 20, on_record, &c);
  if (got < 0) return fail(L, (int)got, ds_strerror((int)got));
  lua_pushinteger(L, (lua_Integer)c.next);
  return 2;
}

/* ---- subscriptions ---- */

static void lsub_wake(ds__lsub_t *ls) {
  if (ls->waiter) {
    ds_task_t *t = ls->waiter;
    ls->waiter = NULL;
    ds_task_wake(t, NULL, NULL); /* resumes next_k with no values: "look again" */
  }
}

static void on_publish(ds_sub_t *sub, const ds_published_t *rec) {
  (void)rec;
  lsub_wake(sub->ud);
}

static void lsub_detach(ds__lsub_t *ls) {
  if (ls->subscribed) {
    ds_stream_unsubscribe(&ls->sub);
    ls->subscribed = 0;
  }
  ls->closed = 1;
}

static void on_change(ds_sub_t *sub, int what) {
  ds__lsub_t *ls = sub->ud;
  if (what == 1) { /* deleted: detached by the registry */
    ls->subscribed = 0;
    ls->closed = 1;
    lsub_wake(ls);
  }
}

/* Frees the C side; the box (if any) is cleared so methods answer nil, "closed". */
static void lsub_free(ds__lsub_t *ls) {
  lsub_detach(ls);
  lsub_wake(ls);
  ds_lua_host_t *h = ls->h;
  if (ls->prev) ls->prev->nextl = ls->nextl;
  else h->subs = ls->nextl;
  if (ls->nextl) ls->nextl->prev = ls->prev;
  if (ls->box) *ls->box = NULL;
  free(ls);
}

void ds__stream_close_all(ds_lua_host_t *h) {
  while (h->subs) lsub_free(h->subs);
}

static ds__lsub_t *check_sub(lua_State *L) {
  ds__lsub_t **box = luaL_checkudata(L, 1, SUB_MT);
  return *box;
}

static int l_subscribe(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  const char *path;
  check_path(L, 1, &path);
  if (h->phase != DS_PHASE_RUN) return luaL_error(L, "ds.subscribe is not allowed in the load phase");
  int from_given = !lua_isnoneornil(L, 2);
  lua_Integer from = from_given ? luaL_checkinteger(L, 2) : 0;
  if (from < 0) from = 0;
  lua_settop(L, 1);
  ds__lsub_t **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, SUB_MT);
  ds_stream_t *s = NULL;
  int rc = ds_streams_get(h->streams, path, 1, 0, &s);
  if (rc != 0) return fail(L, rc, ds_strerror(rc));
  ds__lsub_t *ls = calloc(1, sizeof *ls);
  if (!ls) return luaL_error(L, "out of memory");
  ls->h = h;
  ls->next = from_given ? (uint64_t)from : ds_stream_next_offset(s);
  ls->stream = s;
  ls->sub.on_publish = on_publish;
  ls->sub.on_change = on_change;
  ls->sub.ud = ls;
  ds_stream_subscribe(s, &ls->sub);
  ls->subscribed = 1;
  ls->box = box;
  *box = ls;
  ls->nextl = h->subs;
  if (h->subs) h->subs->prev = ls;
  h->subs = ls;
  return 1;
}

static int one_record(void *ud, uint64_t offset, const char *repr, size_t len) {
  read_ctx_t *c = ud;
  push_record(c->L, repr, len);
  c->n = (lua_Integer)offset;
  return 1;
}

static void waiter_cleanup(void *ud) {
  ds__lsub_t **box = ud;
  if (*box) (*box)->waiter = NULL;
}

static int next_k(lua_State *L, int status, lua_KContext ctx);

/* Fast path, else block; the stack holds [sub timeout] below whatever resume pushed. */
static int next_try(lua_State *L) {
  ds__lsub_t **box = luaL_checkudata(L, 1, SUB_MT);
  ds__lsub_t *ls = *box;
  if (!ls || ls->closed) return fail(L, DS_ECLOSED, "closed");
  lua_settop(L, 2);
  ds_stream_t *s = ls->stream;
  read_ctx_t c = {L, 0, -1, 0, 0};
  long got = ds_store_read(ds_stream_store(s), ls->next, 1, (size_t)64 << 20, one_record, &c);
  if (got < 0) return fail(L, (int)got, ds_strerror((int)got));
  if (got > 0) {
    ls->next = (uint64_t)c.n + 1;
    return 1;
  }
  ds_task_t *t = ds__check_task(L, "sub:next");
  if (ls->waiter) return fail(L, DS_EBUSY, "busy");
  int64_t left = -1;
  if (ls->deadline) {
    uint64_t now = uv_now(ls->h->loop);
    if (now >= ls->deadline) return fail(L, DS_ETIMEOUT, "timeout");
    left = (int64_t)(ls->deadline - now);
  }
  ls->waiter = t;
  return ds_task_block(L, t, waiter_cleanup, box, left, next_k, 0);
}

static int next_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (lua_gettop(L) > 2 && lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
    ds__lsub_t **box = luaL_checkudata(L, 1, SUB_MT);
    if (*box) (*box)->waiter = NULL;
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    lua_pushliteral(L, "timeout");
    return 3;
  }
  return next_try(L);
}

static int l_sub_next(lua_State *L) {
  ds__lsub_t *ls = check_sub(L);
  lua_Integer timeout = luaL_optinteger(L, 2, 30000);
  lua_settop(L, 2);
  if (!ls || ls->closed) return fail(L, DS_ECLOSED, "closed");
  ls->deadline = timeout >= 0 ? uv_now(ls->h->loop) + (uint64_t)timeout : 0;
  return next_try(L);
}

/* the generic-for iterator of sub:events(timeout_ms): (sub, previous) -> event | nil */
static int l_sub_iter(lua_State *L) {
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1)); /* [sub timeout] */
  int n = l_sub_next(L);
  if (n > 1) {
    /* nil, msg, code: end the loop; the reason stays readable as sub:offset()/next() */
    lua_settop(L, 0);
    lua_pushnil(L);
    return 1;
  }
  return n;
}

static int l_sub_events(lua_State *L) {
  check_sub(L);
  lua_Integer timeout = luaL_optinteger(L, 2, 30000);
  lua_pushinteger(L, timeout);
  lua_pushcclosure(L, l_sub_iter, 1);
  lua_pushvalue(L, 1);
  return 2;
}

static int l_sub_close(lua_State *L) {
  ds__lsub_t *ls = check_sub(L);
  if (ls) lsub_free(ls);
  return 0;
}

static int l_sub_offset(lua_State *L) {
  ds__lsub_t *ls = check_sub(L);
  if (!ls) return fail(L, DS_ECLOSED, "closed");
  lua_pushinteger(L, (lua_Integer)ls->next);
  return 1;
}

static const luaL_Reg sub_methods[] = {
    {"next", l_sub_next}, {"events", l_sub_events}, {"close", l_sub_close}, {"offset", l_sub_offset},
    {NULL, NULL}};
static const luaL_Reg sub_meta[] = {{"__gc", l_sub_close}, {"__close", l_sub_close}, {NULL, NULL}};
static const luaL_Reg funcs[] = {
    {"append", l_append}, {"read", l_read}, {"subscribe", l_subscribe}, {NULL, NULL}};

void ds__stream_open(lua_State *L) {
  luaL_newmetatable(L, SUB_MT);
  luaL_setfuncs(L, sub_meta, 0);
  luaL_newlib(L, sub_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, l_append, 1);
  lua_setfield(L, -2, "append_raw");
}
