/* l_ws.c - `ds.ws`: the cosocket-shaped Lua binding of net/ws_client.
 *
 * Provides: ds.ws.connect (yields until open), WebSocket methods send/receive/ping/pongs/
 * state/error/set_idle/close (see l_ws.h for the Lua contract).
 * Must not: run Lua in ws_client callbacks (on_event only calls ds_task_wake); free a
 * conn struct while a box or a waiting task still points at it (refs counts both).
 */
#include "lua/l_ws.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "lua/sched.h"
#include "net/ws_client.h"

#define MT_WS "ds.ws.WebSocket"

typedef struct conn_s conn_t;

struct ds_l_ws_s {
  uv_loop_t *loop;
  ds_ws_client_t *client;
  conn_t *live; /* every conn struct not yet freed */
  long nlive;
  int shut;
};

enum { W_NONE = 0, W_OPEN, W_RECV };

struct conn_s {
  ds_l_ws_t *mod;
  ds_ws_t *ws;   /* NULL once released (closed by Lua or shutdown) */
  unsigned refs; /* the box + a waiting task */
  conn_t *prev, *next;
  ds_task_t *waiter;
  int wait_kind;
};

typedef struct {
  conn_t *c; /* NULL once closed */
} box_t;

static void conn_unref(conn_t *c) {
  if (--c->refs > 0) return;
  ds_l_ws_t *m = c->mod;
  if (m) {
    if (c->prev) c->prev->next = c->next; else m->live = c->next;
    if (c->next) c->next->prev = c->prev;
    m->nlive--;
  }
  if (c->ws) ds_ws_release(c->ws);
  free(c);
}

/* ---------------- waking (from ws_client callbacks: never Lua) ---------------- */

static int retval_bool(lua_State *co, void *ud) {
  conn_t *c = ud;
  if (co) lua_pushboolean(co, 1);
  conn_unref(c);
  return co ? 1 : 0;
}

static int ready(conn_t *c) {
  if (!c->ws) return 1;
  int st = ds_ws_state(c->ws);
  if (c->wait_kind == W_OPEN) return st != DS_WS_CONNECTING;
  return ds_ws_pending(c->ws) > 0 || st == DS_WS_ENDED || ds_ws_error(c->ws, NULL, NULL, NULL) != NULL;
}

static void wake(conn_t *c) {
  if (!c->waiter || !ready(c)) return;
  ds_task_t *t = c->waiter;
  c->waiter = NULL;
  c->wait_kind = W_NONE;
  if (c->ws) ds_ws_set_waiting(c->ws, 0);
  ds_task_wake(t, retval_bool, c);
}

static void on_event(ds_ws_t *ws, void *ud) { wake(ud); }

/* The waiting task timed out or was cancelled: only the wait ends, not the connection. */
static void wait_cleanup(void *ud) {
  conn_t *c = ud;
  c->waiter = NULL;
  c->wait_kind = W_NONE;
  if (c->ws) ds_ws_set_waiting(c->ws, 0);
  conn_unref(c);
}

static void block_on(conn_t *c, ds_task_t *t, int kind) {
  c->waiter = t;
  c->wait_kind = kind;
  c->refs++; /* the waiter's: released by retval_bool or wait_cleanup */
  if (c->ws) ds_ws_set_waiting(c->ws, 1);
}

/* ---------------- Lua side ---------------- */

static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  lua_pushliteral(L, "closed");
  return 3;
}

/* nil, msg, code[, http_status] of an ended connection. */
static int push_end(lua_State *L, conn_t *c) {
  const char *msg = NULL;
  int status = 0;
  const char *code = ds_ws_error(c->ws, &msg, &status, NULL);
  lua_pushnil(L);
  lua_pushstring(L, msg ? msg : "WebSocket closed");
  lua_pushstring(L, code ? code : DS_WS_ECLOSED);
  if (status) {
    lua_pushinteger(L, status);
    return 4;
  }
  return 3;
}

static conn_t *check_conn(lua_State *L, int idx) {
  box_t *b = luaL_checkudata(L, idx, MT_WS);
  return b->c;
}

static long opt_int_field(lua_State *L, int idx, const char *name, long dflt) {
  long v = dflt;
  if (lua_getfield(L, idx, name) != LUA_TNIL) {
    if (!lua_isinteger(L, -1)) luaL_error(L, "ds.ws.connect: %s must be an integer", name);
    v = (long)lua_tointeger(L, -1);
    if (v < 0) luaL_error(L, "ds.ws.connect: %s must not be negative", name);
  }
  lua_pop(L, 1);
  return v;
}

static int connect_k(lua_State *L, int status, lua_KContext ctx);

/* ds.ws.connect(opts) */
static int l_ws_connect(lua_State *L) {
  ds_l_ws_t *m = lua_touserdata(L, lua_upvalueindex(1));
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "ds.ws.connect must be called from a task");
  if (m->shut) return push_closed(L);
  ds_ws_opts_t o = {0};
  lua_getfield(L, 1, "url"); /* [opts, url] */
  if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "ds.ws.connect: url must be a string");
  o.url = lua_tostring(L, -1);
  /* the box exists before any C allocation: Lua may raise (memory cap) while creating it */
  box_t *b = lua_newuserdatauv(L, sizeof *b, 0); /* [opts, url, box] */
  b->c = NULL;
  luaL_setmetatable(L, MT_WS);
  o.connect_timeout_ms = opt_int_field(L, 1, "timeout_ms", 10000);
  o.max_message = (size_t)opt_int_field(L, 1, "max_message", 16 << 20);
  o.idle_timeout_ms = opt_int_field(L, 1, "idle_timeout_ms", 0);
  lua_getfield(L, 1, "insecure");
  o.insecure = lua_toboolean(L, -1);
  lua_pop(L, 1);
  /* validate the headers (raising) before copying them */
  int htype = lua_getfield(L, 1, "headers"); /* [opts, url, box, headers] */
  if (htype != LUA_TTABLE && htype != LUA_TNIL) return luaL_error(L, "ds.ws.connect: headers must be a table");
  if (htype == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "ds.ws.connect: headers must map names to strings");
      if (strpbrk(lua_tostring(L, -2), "\r\n:") || strpbrk(lua_tostring(L, -1), "\r\n"))
        return luaL_error(L, "ds.ws.connect: invalid header name or value");
      lua_pop(L, 1);
    }
  }
  ds_buf_t hb = DS_BUF_INIT;
  size_t nh = 0;
  if (htype == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      ds_buf_printf(&hb, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
      ds_buf_putc(&hb, '\0');
      nh++;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1); /* [opts, url, box] */
  const char **hv = ds_xcalloc(nh + 1, sizeof *hv);
  for (size_t i = 0, off = 0; i < nh; i++) {
    hv[i] = hb.data + off;
    off += strlen(hv[i]) + 1;
  }
  o.headers = hv;
  o.nheaders = nh;

  conn_t *c = ds_xcalloc(1, sizeof *c);
  c->mod = m;
  c->refs = 1; /* the box's */
  c->next = m->live;
  if (m->live) m->live->prev = c;
  m->live = c;
  m->nlive++;
  b->c = c;
  int rc = ds_ws_connect(m->client, &o, on_event, c, &c->ws);
  free(hv);
  ds_buf_free(&hb);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, rc == DS_EINVAL ? "invalid WebSocket URL or header (the URL must be ws:// or wss://)"
                                      : ds_strerror(rc));
    lua_pushstring(L, rc == DS_EINVAL ? DS_WS_EINVAL : ds_err_name(rc));
    return 3; /* the box (closed: c->ws NULL) is collected later */
  }
  if (ds_ws_state(c->ws) != DS_WS_CONNECTING) return connect_k(L, LUA_OK, 0);
  block_on(c, t, W_OPEN);
  return ds_task_block(L, t, wait_cleanup, c, -1, connect_k, 0);
}

/* Continuation of connect(): [opts, url, box, (true)] */
static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  box_t *b = lua_touserdata(L, 3);
  conn_t *c = b->c;
  if (!c || !c->ws) return push_closed(L);
  if (ds_ws_state(c->ws) == DS_WS_OPEN) {
    lua_pushvalue(L, 3);
    return 1;
  }
  return push_end(L, c);
}

static int l_ws_send(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!c || !c->ws) return push_closed(L);
  if (ds_ws_send_text(c->ws, s, n) != 0) {
    if (ds_ws_error(c->ws, NULL, NULL, NULL)) return push_end(L, c);
    return push_closed(L);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_ws_ping(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  if (!c || !c->ws) return push_closed(L);
  if (ds_ws_ping(c->ws) != 0) return push_end(L, c);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_ws_pongs(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  lua_pushinteger(L, c && c->ws ? (lua_Integer)ds_ws_pongs(c->ws) : 0);
  return 1;
}

/* Pushes the next message or the end; -1 if nothing yet. */
static int push_message(lua_State *L, conn_t *c) {
  if (!c->ws) return push_closed(L);
  ds_ws_msg_t *msg = ds_ws_pop(c->ws);
  if (msg) {
    lua_pushlstring(L, msg->data, msg->len);
    free(msg);
    return 1;
  }
  if (ds_ws_error(c->ws, NULL, NULL, NULL)) return push_end(L, c);
  return -1;
}

static int receive_k(lua_State *L, int status, lua_KContext ctx) {
  /* [ws, timeout, resumed?]: false = timed out */
  box_t *b = lua_touserdata(L, 1);
  if (lua_gettop(L) >= 3 && lua_isboolean(L, 3) && !lua_toboolean(L, 3)) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    lua_pushliteral(L, "timeout");
    return 3;
  }
  conn_t *c = b->c;
  if (!c) return push_closed(L);
  int n = push_message(L, c);
  if (n >= 0) return n;
  return push_closed(L); /* woken without a message: only when released */
}

static int l_ws_receive(lua_State *L);
static int l_ws_receive_again(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return l_ws_receive(L);
}

static int l_ws_receive(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  lua_Integer timeout = luaL_optinteger(L, 2, -1);
  lua_settop(L, 2);
  if (!c) return push_closed(L);
  if (ds_task_due(L)) return ds_task_pause(L, l_ws_receive_again, 0); /* a backlog: others first */
  int n = push_message(L, c);
  if (n >= 0) return n;
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "WebSocket:receive must be called from a task");
  if (c->waiter) {
    lua_pushnil(L);
    lua_pushliteral(L, "busy receiving in another task");
    lua_pushliteral(L, "busy");
    return 3;
  }
  block_on(c, t, W_RECV);
  return ds_task_block(L, t, wait_cleanup, c, timeout < 0 ? -1 : (int64_t)timeout, receive_k, 0);
}

static int l_ws_state(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  if (!c || !c->ws) {
    lua_pushliteral(L, "closed");
    return 1;
  }
  static const char *const names[] = {"connecting", "open", "closing", "closed"};
  int st = ds_ws_state(c->ws);
  if (st == DS_WS_OPEN && ds_ws_error(c->ws, NULL, NULL, NULL)) st = DS_WS_CLOSING;
  lua_pushstring(L, names[st]);
  return 1;
}

static int l_ws_error(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  if (!c || !c->ws) {
    lua_pushliteral(L, "closed");
    lua_pushliteral(L, "closed");
    return 2;
  }
  const char *msg = NULL;
  int status = 0;
  const char *code = ds_ws_error(c->ws, &msg, &status, NULL);
  if (!code) return 0;
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  lua_pushinteger(L, status);
  return 3;
}

static int l_ws_set_idle(lua_State *L) {
  conn_t *c = check_conn(L, 1);
  lua_Integer ms = luaL_checkinteger(L, 2);
  if (c && c->ws) ds_ws_set_idle(c->ws, ms > 0 ? (long)ms : 0);
  return 0;
}

/* Releases the C connection (clean close), wakes a waiter with "closed", clears the box. */
static void box_close(box_t *b, int code, const char *reason) {
  conn_t *c = b->c;
  if (!c) return;
  b->c = NULL;
  if (c->ws) {
    ds_ws_close(c->ws, code, reason);
    ds_ws_release(c->ws);
    c->ws = NULL;
  }
  wake(c);
  conn_unref(c);
}

static int l_ws_close(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_WS);
  int code = (int)luaL_optinteger(L, 2, 1000);
  const char *reason = luaL_optstring(L, 3, "");
  box_close(b, code, reason);
  return 0;
}

static int l_ws_gc(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_WS);
  box_close(b, 1001, "going away"); /* never calls Lua */
  return 0;
}

static int l_ws_tostring(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_WS);
  lua_pushstring(L, b->c && b->c->ws ? "ds.ws.WebSocket" : "ds.ws.WebSocket (closed)");
  return 1;
}

static int l_ws_stats(lua_State *L) {
  ds_l_ws_t *m = lua_touserdata(L, lua_upvalueindex(1));
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, m->nlive);
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, m->client ? ds_ws_client_live(m->client) : 0);
  lua_setfield(L, -2, "connections");
  return 1;
}

static const luaL_Reg ws_methods[] = {
    {"send", l_ws_send},   {"receive", l_ws_receive},   {"ping", l_ws_ping},   {"pongs", l_ws_pongs},
    {"state", l_ws_state}, {"error", l_ws_error},       {"set_idle", l_ws_set_idle}, {"close", l_ws_close},
    {NULL, NULL},
};

static const luaL_Reg ws_metamethods[] = {
    {"__gc", l_ws_gc}, {"__close", l_ws_close}, {"__tostring", l_ws_tostring}, {"__index", NULL}, {NULL, NULL},
};

/* ---------------- module ---------------- */

ds_l_ws_t *ds_l_ws_new(uv_loop_t *loop) {
  ds_l_ws_t *m = ds_xcalloc(1, sizeof *m);
  m->loop = loop;
  if (ds_ws_client_new(loop, &m->client) != 0) {
    free(m);
    return NULL;
  }
  return m;
}

void ds_l_ws_open(lua_State *L, ds_l_ws_t *m) {
  /* [t] */
  if (luaL_newmetatable(L, MT_WS)) { /* [t, mt] */
    luaL_setfuncs(L, ws_metamethods, 0);
    luaL_newlib(L, ws_methods);     /* [t, mt, methods] */
    lua_setfield(L, -2, "__index"); /* [t, mt] */
  }
  lua_pop(L, 1); /* [t] */
  lua_pushlightuserdata(L, m);
  lua_pushcclosure(L, l_ws_connect, 1);
  lua_setfield(L, -2, "connect");
  lua_pushlightuserdata(L, m);
  lua_pushcclosure(L, l_ws_stats, 1);
  lua_setfield(L, -2, "stats");
}

void ds_l_ws_shutdown(ds_l_ws_t *m) {
  if (!m || m->shut) return;
  m->shut = 1;
  /* release every connection; the boxes stay (their conn answers "closed") */
  for (conn_t *c = m->live; c; c = c->next) {
    if (c->ws) {
      ds_ws_release(c->ws);
      c->ws = NULL;
    }
  }
  for (conn_t *c = m->live, *next; c; c = next) {
    next = c->next;
    c->refs++;
    wake(c);
    conn_unref(c);
  }
  ds_ws_client_close(m->client); /* stage 1 */
}

long ds_l_ws_free(ds_l_ws_t *m) {
  if (!m) return 0;
  long leaked = m->nlive;
  if (leaked) ds_warn("ws", "%ld WebSocket object(s) still alive at shutdown", leaked);
  for (conn_t *c = m->live; c; c = c->next) c->mod = NULL;
  leaked += ds_ws_client_free(m->client); /* stage 2: runs the loop once more */
  free(m);
  return leaked;
}
