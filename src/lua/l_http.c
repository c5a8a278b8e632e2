/* l_http.c - extra HTTP routes from Lua: ds.http.route(method, prefix, fn).
 *
 * Load phase only. For a request no built-in route takes, the router calls
 * ds_lua_host_handle(); the first route whose method matches ("*" = any) and whose
 * prefix starts the raw request path takes it, and fn(req) runs in its own task with a
 * request table {method, path, query, headers = {lowercase name = value}, body} and
 * req:respond(status, body?, headers?). fn may instead return status, body, headers.
 * A handler that raises gets a 500 (logged with its traceback); one that ends without
 * answering gets a 500 too. If the client goes away first, req:respond returns
 * nil, "closed". The request box is an I/O object: C clears it when the request ends.
 * Must not: answer a request twice or touch it after its close callback.
 */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "lua/lhost.h"

#define REQ_MT "ds.Request"

typedef struct {
  ds__lreq_t *r;
} req_box_t;

struct ds__lreq_s {
  ds_lua_host_t *h;
  ds_http_req_t *req; /* NULL once answered or closed */
  int responded;
  int task_done;
  int box_ref;
  req_box_t *box;
  ds__lreq_t *prev, *next;
};

static int str_eq_ci(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    char x = *a, y = *b;
    if (x >= 'a' && x <= 'z') x = (char)(x - 32);
    if (y >= 'a' && y <= 'z') y = (char)(y - 32);
    if (x != y) return 0;
  }
  return *a == *b;
}

static int l_route(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  const char *method = luaL_checkstring(L, 1);
  size_t pl;
  const char *prefix = luaL_checklstring(L, 2, &pl);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (h->phase != DS_PHASE_LOAD) return luaL_error(L, "ds.http.route: routes are registered in the load phase");
  if (pl == 0 || prefix[0] != '/') return luaL_error(L, "ds.http.route: prefix must start with '/'");
  if (h->nroutes == h->routes_cap) {
    h->routes_cap = h->routes_cap ? h->routes_cap * 2 : 8;
    h->routes = ds_xrealloc(h->routes, h->routes_cap * sizeof *h->routes);
  }
  lua_pushvalue(L, 3);
  ds__route_t *rt = &h->routes[h->nroutes++];
  rt->fn_ref = ds_vm_ref(L);
  rt->method = ds_xstrdup(method);
  rt->prefix = ds_xstrndup(prefix, pl);
  rt->prefix_len = pl;
  rt->plugin = ds__current_plugin(L);
  return 0;
}

static void lreq_maybe_free(ds__lreq_t *r) {
  if (!r->task_done || r->req) return;
  ds_lua_host_t *h = r->h;
  if (r->prev) r->prev->next = r->next;
  else h->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  free(r);
}

static void on_req_close(void *ud) {
  ds__lreq_t *r = ud;
  r->req = NULL;
  lreq_maybe_free(r);
}

static void answer(ds__lreq_t *r, int status, const ds_http_header_t *hdrs, const char *body, size_t len) {
  ds_http_req_t *req = r->req;
  r->req = NULL;
  r->responded = 1;
  ds_http_respond(req, status, hdrs, body, len);
}

static int l_respond(lua_State *L) {
  req_box_t *box = lua_touserdata(L, lua_upvalueindex(1));
  /* method call: req:respond(status, body, headers) */
  int base = lua_istable(L, 1) ? 2 : 1;
  lua_Integer status = luaL_checkinteger(L, base);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, base + 1, "", &blen);
  ds__lreq_t *r = box->r;
  if (!r || r->responded) {
    if (r && r->responded) return luaL_error(L, "req:respond: already answered");
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (!r->req) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (status < 100 || status > 599) return luaL_error(L, "req:respond: bad status %d", (int)status);
  ds_http_header_t hdrs[33];
  size_t nh = 0;
  if (lua_istable(L, base + 2)) {
    lua_pushnil(L);
    while (nh < 32 && lua_next(L, base + 2)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
        hdrs[nh].name = lua_tostring(L, -2);
        hdrs[nh].value = lua_tostring(L, -1);
        nh++;
        /* the strings stay referenced by the headers table (on the stack) until return */
      }
      lua_pop(L, 1);
    }
  }
  hdrs[nh].name = NULL;
  hdrs[nh].value = NULL;
  answer(r, (int)status, hdrs, body, blen);
  lua_pushboolean(L, 1);
  return 1;
}

void ds__http_task_done(ds__lreq_t *r, int status, lua_State *L) {
  if (r->req && !r->responded) {
    if (status == LUA_OK) {
      /* the path only: the query may carry ?access_token=, which must never be logged */
      ds_warn("lua", "route handler ended without answering %s %.*s", r->req->method,
              (int)r->req->path_len, r->req->path);
      static const char msg[] = "{\"error\":\"handler did not respond\"}";
      static const ds_http_header_t hd[] = {{"Content-Type", "application/json"}, {NULL, NULL}};
      answer(r, 500, hd, msg, sizeof msg - 1);
    } else if (status == -1) {
      static const char msg[] = "{\"error\":\"server shutting down\"}";
      static const ds_http_header_t hd[] = {{"Content-Type", "application/json"}, {NULL, NULL}};
      answer(r, 503, hd, msg, sizeof msg - 1);
    } else {
      const char *m = lua_tostring(L, -1);
      ds_error("lua", "route handler for %s %.*s failed: %s", r->req->method, (int)r->req->path_len,
               r->req->path, m ? m : "?");
      static const char msg[] = "{\"error\":\"internal error in a Lua route\"}";
      static const ds_http_header_t hd[] = {{"Content-Type", "application/json"}, {NULL, NULL}};
      answer(r, 500, hd, msg, sizeof msg - 1);
    }
  }
  r->task_done = 1;
  if (r->box) r->box->r = NULL;
  r->box = NULL;
  ds_vm_unref(r->h->L, r->box_ref);
  r->box_ref = LUA_NOREF;
  lreq_maybe_free(r);
}

void ds__http_close_all(ds_lua_host_t *h) {
  /* Every request belongs to a task, and a task's end answers its request (503 when
   * cancelled by the shutdown), which frees it: nothing can remain after the
   * scheduler's shutdown. Anything left would be a host bug; report it. */
  for (ds__lreq_t *r = h->reqs; r; r = r->next) ds_error("lua", "a Lua-routed request outlived its task");
}

typedef struct {
  ds_lua_host_t *h;
  ds__route_t *rt;
  int ri;
  ds__lreq_t *r;
  ds_task_t *t;
} build_args_t;

/* Protected (allocations may fail): builds the request table and spawns the handler's
 * task. [args(lightuserdata)] -> [] */
static int build_and_spawn(lua_State *L) {
  build_args_t *a = lua_touserdata(L, 1);
  ds__lreq_t *r = a->r;
  ds_http_req_t *req = r->req;
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->h->route_runner_ref); /* [a runner] */
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->rt->fn_ref);          /* [a runner fn] */
  lua_createtable(L, 0, 6);                                  /* [a runner fn req] */
  lua_pushstring(L, req->method);
  lua_setfield(L, -2, "method");
  lua_pushlstring(L, req->path, req->path_len);
  lua_setfield(L, -2, "path");
  if (req->query) {
    lua_pushstring(L, req->query);
    lua_setfield(L, -2, "query");
  }
  lua_pushlstring(L, req->body ? req->body : "", req->body_len);
  lua_setfield(L, -2, "body");
  lua_createtable(L, 0, (int)req->nheaders);
  for (size_t i = 0; i < req->nheaders; i++) {
    lua_getfield(L, -1, req->headers[i].name);
    int have = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (have) continue; /* the first of repeated headers wins */
    lua_pushstring(L, req->headers[i].value);
    lua_setfield(L, -2, req->headers[i].name);
  }
  lua_setfield(L, -2, "headers");
  req_box_t *box = lua_newuserdatauv(L, sizeof *box, 0); /* [a runner fn req box] */
  box->r = NULL;
  luaL_setmetatable(L, REQ_MT);
  lua_pushvalue(L, -1);
  r->box_ref = ds_vm_ref(L); /* [a runner fn req box] */
  r->box = box;
  box->r = r;
  lua_pushcclosure(L, l_respond, 1); /* [a runner fn req respond] */
  lua_setfield(L, -2, "respond");    /* [a runner fn req] */
  ds__spawn_t sp = {.plugin = a->rt->plugin, .hook = -1, .route = a->ri, .req = r, .capped = 1};
  char why[256];
  a->t = ds__spawn(a->h, L, 2, &sp, why, sizeof why); /* [a] */
  if (!a->t) ds_warn("lua", "route %s %s not run: %s", a->rt->method, a->rt->prefix, why);
  return 0;
}

int ds_lua_host_handle(ds_lua_host_t *h, ds_http_req_t *req) {
  if (!h || h->phase != DS_PHASE_RUN || h->nroutes == 0) return 0;
  ds__route_t *rt = NULL;
  int ri = -1;
  for (size_t i = 0; i < h->nroutes; i++) {
    ds__route_t *x = &h->routes[i];
    if (x->plugin >= 0 && h->plugins[x->plugin].disabled) continue;
    if (strcmp(x->method, "*") != 0 && !str_eq_ci(x->method, req->method)) continue;
    if (req->path_len < x->prefix_len || memcmp(req->path, x->prefix, x->prefix_len) != 0) continue;
    rt = x;
    ri = (int)i;
    break;
  }
  if (!rt) return 0;
  lua_State *L = h->L;
  ds__lreq_t *r = calloc(1, sizeof *r);
  if (!r) return 0;
  r->h = h;
  r->req = req;
  r->box_ref = LUA_NOREF;
  r->next = h->reqs;
  if (h->reqs) h->reqs->prev = r;
  h->reqs = r;
  build_args_t a = {h, rt, ri, r, NULL};
  lua_pushcfunction(L, build_and_spawn);
  lua_pushlightuserdata(L, &a);
  if (ds_vm_pcall(L, 1, 0) != LUA_OK) {
    ds_error("lua", "cannot start the Lua route for %s %.*s: %s", req->method, (int)req->path_len, req->path,
             lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (!a.t) { /* not started (shutting down, out of memory): answer here */
    r->task_done = 1;
    if (r->box) r->box->r = NULL;
    r->box = NULL;
    ds_vm_unref(L, r->box_ref);
    r->box_ref = LUA_NOREF;
    static const char msg[] = "{\"error\":\"cannot run the Lua route\"}";
    static const ds_http_header_t hd[] = {{"Content-Type", "application/json"}, {NULL, NULL}};
    answer(r, 503, hd, msg, sizeof msg - 1);
    lreq_maybe_free(r);
    return 1;
  }
  ds_http_req_on_close(req, on_req_close, r);
  return 1;
}

static const luaL_Reg funcs[] = {{"route", l_route}, {NULL, NULL}};

void ds__http_open(lua_State *L) {
  luaL_newmetatable(L, REQ_MT);
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "http");
}
