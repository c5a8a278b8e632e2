/* l_http_client.c - `ds.http`: the cosocket-shaped Lua binding of net/http_client.
 *
 * Provides: ds.http.request (yields until headers), Response methods read/events/
 * headers/status/error/close, queueing of body chunks or SSE events between curl
 * callbacks and the reading task (see l_http_client.h for the Lua contract).
 * Must not: run Lua in curl callbacks (on_headers/on_data/on_done only queue and call
 * ds_task_wake); free a request struct while a box, a transfer or a waiting task still
 * points at it (refs counts the box and the waiter; the transfer is detached first).
 */
#include "lua/l_http_client.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "lua/sched.h"
#include "net/http_client.h"
#include "net/sse_parser.h"

#define MT_RESPONSE "ds.http.Response"
#define DEFAULT_MAX_BUFFER ((size_t)64 << 20) /* unread bytes queued before giving up */

typedef struct hreq_s hreq_t;

struct ds_l_http_s {
  uv_loop_t *loop;
  ds_http_client_t *client; /* NULL after shutdown */
  hreq_t *live;             /* every request struct not yet freed */
  long nlive;
  int shut;
};

typedef struct item_s {
  struct item_s *next;
  int is_event;
  char *type; /* event type (events only) */
  char *data;
  size_t data_len;
  char *id;
} item_t;

enum { W_NONE = 0, W_HEADERS, W_READ };

struct hreq_s {
  ds_l_http_t *mod;
  ds_http_xfer_t *x;   /* NULL once done, cancelled or shut down */
  unsigned refs;       /* the box + a waiting task */
  hreq_t *prev, *next; /* mod->live */
  /* what arrived */
  long status;
  char **hdr;          /* name, value, name, value... (copied) */
  size_t nhdr;
  int headers_ready;
  item_t *head, *tail;
  size_t queued_bytes;
  size_t max_buffer;
  int sse_wanted;
  int sse_on;          /* SSE parsing active (2xx answer) */
  ds_sse_parser_t sse;
  /* how it ended */
  int done;
  char code[16];
  char *msg;           /* NULL for a clean end */
  int closed;          /* closed by Lua */
  /* the task waiting on this request */
  ds_task_t *waiter;
  int wait_kind;
  int reading; /* a task blocked here and not yet resumed: others must not read meanwhile */
};

typedef struct {
  hreq_t *r; /* NULL once closed */
} box_t;

/* ---------------- request struct lifetime ---------------- */

static void item_free(item_t *it) {
  free(it->type);
  free(it->data);
  free(it->id);
  free(it);
}

static void hreq_unref(hreq_t *r) {
  if (--r->refs > 0) return;
  ds_l_http_t *m = r->mod;
  if (r->prev) r->prev->next = r->next; else m->live = r->next;
  if (r->next) r->next->prev = r->prev;
  m->nlive--;
  for (size_t i = 0; i < 2 * r->nhdr; i++) free(r->hdr[i]);
  free(r->hdr);
  while (r->head) {
    item_t *it = r->head;
    r->head = it->next;
    item_free(it);
  }
  if (r->sse_wanted) ds_sse_parser_free(&r->sse);
  free(r->msg);
  free(r);
}

/* Records the end of the transfer (first end wins). */
static void hreq_end(hreq_t *r, const char *code, const char *msg) {
  if (r->done) return;
  r->done = 1;
  snprintf(r->code, sizeof r->code, "%s", code);
  if (strcmp(code, DS_HTTPC_OK) != 0) {
    r->msg = ds_xstrdup(msg && *msg ? msg : code);
    /* keep it one line: curl's messages are, but be sure */
    for (char *p = r->msg; *p; p++)
      if (*p == '\n' || *p == '\r') *p = ' ';
  }
}

static void wake(hreq_t *r);

/* Cancels the transfer (if any), drops the transfer's ref (cb_done will not run for a
 * cancelled transfer) and ends the request with `code`. The caller must hold another ref
 * (box or waiter). Allowed from r's own curl callbacks (http_client defers the removal). */
static void hreq_cancel_xfer(hreq_t *r, const char *code, const char *msg) {
  hreq_end(r, code, msg);
  if (r->x) {
    ds_http_xfer_cancel(r->x);
    r->x = NULL;
    hreq_unref(r);
  }
}

/* ---------------- curl-side callbacks: queue and wake, never Lua ---------------- */

static void enqueue(hreq_t *r, item_t *it) {
  if (r->tail) r->tail->next = it; else r->head = it;
  r->tail = it;
  r->queued_bytes += it->data_len + 64;
}

static int on_sse_event(const ds_sse_event_t *ev, void *ud) {
  hreq_t *r = ud;
  item_t *it = ds_xcalloc(1, sizeof *it);
  it->is_event = 1;
  it->type = ds_xstrndup(ev->type, ev->type_len);
  it->data = ds_xstrndup(ev->data, ev->data_len);
  it->data_len = ev->data_len;
  it->id = ds_xstrndup(ev->id, ev->id_len);
  enqueue(r, it);
  return 0;
}

/* Whether a Content-Type value names an event stream; an answer without one counts as a
 * stream too (some servers omit it). Anything else - a complete JSON answer from a server
 * that ignored `stream: true`, an HTML page from a proxy - is passed on as body chunks
 * for the caller to read whole. */
static int is_event_stream(const ds_http_header_t *h, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (strcasecmp(h[i].name, "content-type") != 0) continue;
    const char *v = h[i].value;
    while (*v == ' ') v++;
    return strncasecmp(v, "text/event-stream", 17) == 0;
  }
  return 1;
}

static void cb_headers(ds_http_xfer_t *x, long status, const ds_http_header_t *h, size_t n, void *ud) {
  hreq_t *r = ud;
  r->status = status;
  r->hdr = ds_xcalloc(2 * n + 1, sizeof *r->hdr);
  for (size_t i = 0; i < n; i++) {
    r->hdr[2 * i] = ds_xstrdup(h[i].name);
    r->hdr[2 * i + 1] = ds_xstrdup(h[i].value);
  }
  r->nhdr = n;
  r->headers_ready = 1;
  r->sse_on = r->sse_wanted && status >= 200 && status < 300 && is_event_stream(h, n);
  wake(r);
}

static void cb_data(ds_http_xfer_t *x, const char *p, size_t n, void *ud) {
  hreq_t *r = ud;
  if (r->sse_on) {
    if (ds_sse_parser_feed(&r->sse, p, n) != 0) {
      hreq_cancel_xfer(r, DS_HTTPC_EPROTO, "server-sent event larger than the configured limit");
      wake(r);
      return;
    }
  } else {
    item_t *it = ds_xcalloc(1, sizeof *it);
    it->data = ds_xmalloc(n + 1);
    memcpy(it->data, p, n);
    it->data[n] = '\0';
    it->data_len = n;
    enqueue(r, it);
  }
  if (r->queued_bytes > r->max_buffer) {
    hreq_cancel_xfer(r, DS_HTTPC_EPROTO, "response too large: unread data exceeds the buffer limit");
  }
  if (r->head || r->done) wake(r);
}

static void cb_done(ds_http_xfer_t *x, const char *code, const char *msg, void *ud) {
  hreq_t *r = ud;
  r->x = NULL; /* the client releases the transfer when this returns */
  hreq_end(r, code, msg);
  wake(r);
  hreq_unref(r); /* the transfer's ref */
}

static const ds_http_xfer_cbs_t XFER_CBS = {cb_headers, cb_data, cb_done};

/* ---------------- waiting tasks ---------------- */

static int push_item_or_end(lua_State *L, hreq_t *r);

/* retval of a task blocked in request(): pushes one boolean for the continuation. */
static int retval_headers(lua_State *co, void *ud) {
  hreq_t *r = ud;
  int n = 0;
  r->reading = 0;
  if (co) {
    lua_pushboolean(co, r->headers_ready);
    n = 1;
  }
  hreq_unref(r);
  return n;
}

/* retval of a task blocked in read(): pushes the read results. */
static int retval_read(lua_State *co, void *ud) {
  hreq_t *r = ud;
  r->reading = 0;
  int n = co ? push_item_or_end(co, r) : 0;
  if (n < 0) { /* cannot happen: woken only with something to deliver, and `reading` kept
                * other readers away; answer rather than corrupt the resume */
    lua_pushnil(co);
    lua_pushliteral(co, "read woken without data");
    lua_pushliteral(co, "EIO");
    n = 3;
  }
  hreq_unref(r);
  return n;
}

/* The waiting task is being cancelled (or timed out): it no longer reads, so the transfer
 * is abandoned at once. */
static void wait_cleanup(void *ud) {
  hreq_t *r = ud;
  r->reading = 0;
  r->waiter = NULL;
  r->wait_kind = W_NONE;
  hreq_cancel_xfer(r, "ECANCELED", "request abandoned");
  hreq_unref(r);
}

static void wake(hreq_t *r) {
  if (!r->waiter) return;
  int ready = r->wait_kind == W_HEADERS ? (r->headers_ready || r->done) : (r->head != NULL || r->done);
  if (!ready) return;
  ds_task_t *t = r->waiter;
  int kind = r->wait_kind;
  r->waiter = NULL;
  r->wait_kind = W_NONE;
  ds_task_wake(t, kind == W_HEADERS ? retval_headers : retval_read, r);
}

/* ---------------- Lua side ---------------- */

static hreq_t *check_open(lua_State *L, int idx) {
  box_t *b = luaL_checkudata(L, idx, MT_RESPONSE);
  return b->r;
}

static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  lua_pushliteral(L, "closed");
  return 3;
}

static int push_failure(lua_State *L, hreq_t *r) {
  lua_pushnil(L);
  lua_pushstring(L, r->msg ? r->msg : "failed");
  lua_pushstring(L, r->code);
  return 3;
}

/* Pushes the next queued item, or the end (nil) / failure (nil, msg, code); returns the
 * count, or -1 when nothing is available yet. */
static int push_item_or_end(lua_State *L, hreq_t *r) {
  if (r->closed) return push_closed(L);
  if (r->head) {
    item_t *it = r->head;
    r->head = it->next;
    if (!r->head) r->tail = NULL;
    r->queued_bytes -= it->data_len + 64;
    if (it->is_event) {
      lua_createtable(L, 0, 3); /* [ev] */
      lua_pushstring(L, it->type);
      lua_setfield(L, -2, "event");
      lua_pushlstring(L, it->data, it->data_len);
      lua_setfield(L, -2, "data");
      lua_pushstring(L, it->id);
      lua_setfield(L, -2, "id");
    } else {
      lua_pushlstring(L, it->data, it->data_len);
    }
    item_free(it);
    return 1;
  }
  if (r->done) {
    if (r->msg) return push_failure(L, r);
    lua_pushnil(L);
    return 1;
  }
  return -1;
}

static void hreq_block(lua_State *L, ds_task_t *t, hreq_t *r, int kind) {
  r->reading = 1;
  r->waiter = t;
  r->wait_kind = kind;
  r->refs++; /* the waiter's ref: released by retval or cleanup */
}

static long opt_int_field(lua_State *L, int idx, const char *name, long dflt) {
  long v = dflt;
  if (lua_getfield(L, idx, name) != LUA_TNIL) {
    if (!lua_isinteger(L, -1)) luaL_error(L, "ds.http.request: %s must be an integer", name);
    v = (long)lua_tointeger(L, -1);
    if (v < 0) luaL_error(L, "ds.http.request: %s must not be negative", name);
  }
  lua_pop(L, 1);
  return v;
}

static void check_header_text(lua_State *L, const char *s) {
  if (strpbrk(s, "\r\n")) luaL_error(L, "ds.http.request: header contains a line break");
}

static int request_k(lua_State *L, int status, lua_KContext ctx);

/* ds.http.request(opts) */
static int l_http_request(lua_State *L) {
  ds_l_http_t *m = lua_touserdata(L, lua_upvalueindex(1));
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "ds.http.request must be called from a task");
  if (m->shut) return push_closed(L);

  ds_http_request_t req = {0};
  lua_getfield(L, 1, "url");
  req.url = lua_tostring(L, -1);
  if (!req.url || lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "ds.http.request: url must be a string");
  lua_getfield(L, 1, "method");
  req.method = lua_tostring(L, -1);
  lua_getfield(L, 1, "body");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "ds.http.request: body must be a string");
    req.body = lua_tolstring(L, -1, &req.body_len);
  }
  /* [opts, url, method, body] stay on the stack so the strings live until curl copied them.
   * The box is created before any C allocation: Lua may raise (memory cap) here. */
  box_t *b = lua_newuserdatauv(L, sizeof *b, 0); /* [opts, url, method, body, box] */
  b->r = NULL;
  luaL_setmetatable(L, MT_RESPONSE);
  req.connect_timeout_ms = opt_int_field(L, 1, "connect_timeout_ms", 10000);
  req.total_timeout_ms = opt_int_field(L, 1, "timeout_ms", 0);
  req.stall_timeout_ms = opt_int_field(L, 1, "stall_timeout_ms", 0);
  long max_event = opt_int_field(L, 1, "max_event", 1 << 20);
  lua_getfield(L, 1, "sse");
  int sse = lua_toboolean(L, -1);
  lua_pop(L, 1);

  /* validate first (raising), then copy: nothing is allocated while luaL_error may jump */
  int htype = lua_getfield(L, 1, "headers"); /* [.., headers] */
  if (htype != LUA_TTABLE && htype != LUA_TNIL) return luaL_error(L, "ds.http.request: headers must be a table");
  if (htype == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* [.., headers, key, value] */
      if (lua_type(L, -1) != LUA_TSTRING || (lua_type(L, -2) != LUA_TSTRING && !lua_isinteger(L, -2)))
        return luaL_error(L, "ds.http.request: headers must map names to strings");
      if (lua_type(L, -2) == LUA_TSTRING) check_header_text(L, lua_tostring(L, -2));
      check_header_text(L, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  ds_buf_t hb = DS_BUF_INIT; /* "Name: value\0" lines */
  size_t nh = 0;
  if (htype == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING) ds_buf_printf(&hb, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
      else ds_buf_puts(&hb, lua_tostring(L, -1));
      ds_buf_putc(&hb, '\0');
      nh++;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1); /* [opts, url, method, body, box] */
  const char **hv = ds_xcalloc(nh + 1, sizeof *hv);
  for (size_t i = 0, off = 0; i < nh; i++) {
    hv[i] = hb.data + off;
    off += strlen(hv[i]) + 1;
  }
  req.headers = hv;
  req.nheaders = nh;

  hreq_t *r = ds_xcalloc(1, sizeof *r);
  r->mod = m;
  r->max_buffer = DEFAULT_MAX_BUFFER;
  r->sse_wanted = sse;
  if (sse) ds_sse_parser_init(&r->sse, (size_t)max_event, on_sse_event, r);
  r->next = m->live;
  if (m->live) m->live->prev = r;
  m->live = r;
  m->nlive++;
  r->refs = 1; /* the box's */

  b->r = r;

  int rc = ds_http_client_request(m->client, &req, &XFER_CBS, r, &r->x);
  free(hv);
  ds_buf_free(&hb);
  if (rc < 0) {
    hreq_end(r, "EINVAL", rc == DS_EINVAL ? "invalid request (the URL must be http:// or https://)" : ds_strerror(rc));
    return push_failure(L, r);
  }
  r->refs++; /* the transfer's: released in cb_done, or when aborted */
  hreq_block(L, t, r, W_HEADERS);
  return ds_task_block(L, t, wait_cleanup, r, -1, request_k, 0);
}

/* Continuation of request(): [opts, url, method, body, box, ready:boolean] */
static int request_k(lua_State *L, int status, lua_KContext ctx) {
  box_t *b = lua_touserdata(L, 5);
  hreq_t *r = b->r;
  if (!r) return push_closed(L);
  if (r->headers_ready) {
    lua_pushvalue(L, 5);
    return 1;
  }
  if (r->done) return push_failure(L, r);
  return push_closed(L);
}

static int push_busy(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "busy reading in another task");
  lua_pushliteral(L, "busy");
  return 3;
}

static int l_res_read(lua_State *L);
static int l_res_read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return l_res_read(L);
}

static int l_res_read(lua_State *L) {
  hreq_t *r = check_open(L, 1);
  if (!r) return push_closed(L);
  if (r->reading) return push_busy(L);
  if (r->head && ds_task_due(L)) return ds_task_pause(L, l_res_read_k, 0); /* a backlog: others first */
  int n = push_item_or_end(L, r);
  if (n >= 0) return n;
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "Response:read must be called from a task");
  hreq_block(L, t, r, W_READ);
  return ds_task_block(L, t, wait_cleanup, r, -1, NULL, 0);
}

/* iterator: f(res, _) -> item or nil */
static int l_res_iter_k(lua_State *L, int status, lua_KContext ctx);

static int l_res_iter(lua_State *L);
static int l_res_iter_again(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return l_res_iter(L);
}

static int l_res_iter(lua_State *L) {
  lua_settop(L, 1);
  hreq_t *r = check_open(L, 1);
  if (!r) return 0;
  if (r->reading) return luaL_error(L, "Response:events: busy reading in another task");
  if (r->head && ds_task_due(L)) return ds_task_pause(L, l_res_iter_again, 0);
  int n = push_item_or_end(L, r);
  if (n >= 0) return l_res_iter_k(L, LUA_OK, 0);
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "Response:events must be iterated from a task");
  hreq_block(L, t, r, W_READ);
  return ds_task_block(L, t, wait_cleanup, r, -1, l_res_iter_k, 0);
}

/* [res, results of read...]: an item goes through; end and failure both stop the loop. */
static int l_res_iter_k(lua_State *L, int status, lua_KContext ctx) {
  if (lua_gettop(L) >= 2 && !lua_isnil(L, 2) && !lua_isboolean(L, 2)) {
    lua_settop(L, 2);
    return 1;
  }
  lua_pushnil(L);
  return 1;
}

static int l_res_events(lua_State *L) {
  luaL_checkudata(L, 1, MT_RESPONSE);
  lua_pushcfunction(L, l_res_iter);
  lua_pushvalue(L, 1);
  return 2;
}

static int l_res_error(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_RESPONSE);
  hreq_t *r = b->r;
  if (!r) {
    lua_pushliteral(L, "closed");
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (!r->done || !r->msg) return 0;
  lua_pushstring(L, r->msg);
  lua_pushstring(L, r->code);
  return 2;
}

static int l_res_status(lua_State *L) {
  hreq_t *r = check_open(L, 1);
  if (!r) return push_closed(L);
  lua_pushinteger(L, r->status);
  return 1;
}

static int l_res_headers(lua_State *L) {
  hreq_t *r = check_open(L, 1);
  if (!r) return push_closed(L);
  lua_createtable(L, 0, (int)r->nhdr); /* [t] */
  for (size_t i = 0; i < r->nhdr; i++) {
    luaL_Buffer lb;
    luaL_buffinit(L, &lb);
    for (const char *p = r->hdr[2 * i]; *p; p++) luaL_addchar(&lb, (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
    luaL_pushresult(&lb); /* [t, name] */
    if (lua_getfield(L, -2, lua_tostring(L, -1)) == LUA_TSTRING) {
      /* [t, name, old] */
      lua_pushliteral(L, ", ");
      lua_pushstring(L, r->hdr[2 * i + 1]);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, r->hdr[2 * i + 1]);
    }
    lua_setfield(L, -3, lua_tostring(L, -2)); /* [t, name] */
    lua_pop(L, 1);
  }
  return 1;
}

/* close(): cancels the transfer, wakes a reader with "closed", drops the box's ref. */
static void box_close(box_t *b) {
  hreq_t *r = b->r;
  if (!r) return;
  b->r = NULL;
  r->closed = 1;
  hreq_cancel_xfer(r, "ECANCELED", "closed");
  wake(r);
  hreq_unref(r);
}

static int l_res_close(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_RESPONSE);
  box_close(b);
  return 0;
}

static int l_res_gc(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_RESPONSE);
  box_close(b); /* never calls Lua; safe in __gc */
  return 0;
}

static int l_res_tostring(lua_State *L) {
  box_t *b = luaL_checkudata(L, 1, MT_RESPONSE);
  if (!b->r) lua_pushliteral(L, "ds.http.Response (closed)");
  else lua_pushfstring(L, "ds.http.Response (%d%s)", (int)b->r->status, b->r->done ? ", done" : "");
  return 1;
}

static int l_http_stats(lua_State *L) {
  ds_l_http_t *m = lua_touserdata(L, lua_upvalueindex(1));
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, m->nlive);
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, m->client && !m->shut ? (lua_Integer)ds_http_client_active(m->client) : 0);
  lua_setfield(L, -2, "active");
  return 1;
}

static const luaL_Reg response_methods[] = {
    {"read", l_res_read},     {"events", l_res_events},   {"error", l_res_error}, {"status", l_res_status},
    {"headers", l_res_headers}, {"close", l_res_close},   {NULL, NULL},
};

static const luaL_Reg response_metamethods[] = {
    {"__gc", l_res_gc}, {"__close", l_res_close}, {"__tostring", l_res_tostring}, {"__index", NULL}, {NULL, NULL},
};

/* ---------------- module ---------------- */

ds_l_http_t *ds_l_http_new(uv_loop_t *loop) {
  ds_l_http_t *m = ds_xcalloc(1, sizeof *m);
  m->loop = loop;
  if (ds_http_client_new(loop, &m->client) != 0) {
    free(m);
    return NULL;
  }
  return m;
}

void ds_l_http_open(lua_State *L, ds_l_http_t *h) {
  /* [t] */
  if (luaL_newmetatable(L, MT_RESPONSE)) { /* [t, mt] */
    luaL_setfuncs(L, response_metamethods, 0);
    luaL_newlib(L, response_methods); /* [t, mt, methods] */
    lua_setfield(L, -2, "__index");   /* [t, mt] */
  }
  lua_pop(L, 1); /* [t] */
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, l_http_request, 1);
  lua_setfield(L, -2, "request");
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, l_http_stats, 1);
  lua_setfield(L, -2, "stats");
}

void ds_l_http_shutdown(ds_l_http_t *h) {
  if (h->shut) return;
  h->shut = 1;
  /* detach every transfer first: closing the client cancels them without callbacks */
  for (hreq_t *r = h->live, *next; r; r = next) {
    next = r->next;
    r->refs++; /* keep r while we drop the transfer's ref */
    hreq_cancel_xfer(r, DS_HTTPC_ECLOSED, "server shutting down");
    wake(r);
    hreq_unref(r);
  }
  ds_http_client_close(h->client, NULL, NULL);
  h->client = NULL;
}

long ds_l_http_live(const ds_l_http_t *h) { return h->nlive; }

long ds_l_http_free(ds_l_http_t *h) {
  if (!h) return 0;
  long leaked = h->nlive;
  if (leaked) ds_warn("http", "%ld request object(s) still alive at shutdown", leaked);
  /* leaked structs keep a pointer to h: detach them so nothing dangles */
  for (hreq_t *r = h->live; r; r = r->next) r->mod = NULL;
  free(h);
  return leaked;
}
