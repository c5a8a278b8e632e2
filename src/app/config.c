/* config.c - config.lua loading with named, checked keys. */
#include "app/config.h"

#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/log.h"
#include "net/egress.h"
#include "lua/vm.h"

void ds_config_defaults(ds_config_t *c) {
  memset(c, 0, sizeof *c);
  c->host = ds_xstrdup("127.0.0.1");
  c->port = 3000;
  c->data_dir = ds_xstrdup(".data");
  c->storage = ds_xstrdup("yaml");
  c->fsync = DS_FSYNC_INTERVAL;
  c->fsync_interval_ms = 1000;
  c->log_level = DS_LOG_INFO;
  c->max_body_bytes = 1u << 20;
  c->max_header_bytes = 16u << 10;
  c->max_json_depth = 64;
  c->max_connections = 16384;
  c->header_timeout_ms = 10000;
  c->body_timeout_ms = 30000;
  c->idle_timeout_ms = 60000;
  c->subscriber_backlog_bytes = 4u << 20;
  c->tail_cache_bytes = (size_t)32 << 20;
  c->tail_cache_total_bytes = (size_t)256 << 20;
  c->max_open_files = 4096;
  c->keepalive_ms = 15000;
  c->long_poll_timeout_ms = 30000;
  c->sse_reconnect_ms = 60000;
  c->subscriptions = 1;
  c->agents_enabled = 1;
}

static void free_strings(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

void ds_config_free(ds_config_t *c) {
  free_strings(c->webhook_allow_networks, c->nwebhook_allow_networks);
  free(c->config_path);
  free(c->host);
  free(c->data_dir);
  free(c->storage);
  memset(c, 0, sizeof *c);
}

int ds_config_apply_env(ds_config_t *c, char *(*getenv_fn)(const char *name), char *err,
                        size_t errlen) {
  /* PORT as the original server (and its UI's dev script) read it; an empty value counts
   * as unset, as `process.env.PORT || 3000` treats it. Strict digits: " 80", "+80", "0x50"
   * or "80abc" are refused, not half-read. */
  const char *port = getenv_fn("PORT");
  if (port && *port) {
    size_t n = strlen(port);
    long v = 0;
    int ok = n <= 5;
    for (size_t i = 0; ok && i < n; i++) {
      if (port[i] < '0' || port[i] > '9') ok = 0;
      else v = v * 10 + (port[i] - '0');
    }
    if (!ok || v > 65535) {
      snprintf(err, errlen, "PORT must be an integer from 0 to 65535, got '%.32s'", port);
      for (char *q = err; *q; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
      return -1;
    }
    c->port = (int)v;
  }
  return 0;
}

int ds_fsync_parse(const char *s) {
  if (strcmp(s, "always") == 0) return DS_FSYNC_ALWAYS;
  if (strcmp(s, "interval") == 0) return DS_FSYNC_INTERVAL;
  if (strcmp(s, "never") == 0) return DS_FSYNC_NEVER;
  return -1;
}

typedef struct {
  const char *file;
  char *err;
  size_t errlen;
  int failed;
} ctx_t;

static int bad(ctx_t *x, const char *key, const char *what) {
  if (!x->failed) snprintf(x->err, x->errlen, "%s: %s %s", x->file, key, what);
  x->failed = 1;
  return -1;
}

/* [.., tbl] -> reads tbl[key]; returns 1 if present (value pushed), 0 if nil (nothing pushed) */
static int field(lua_State *L, const char *key) {
  lua_getfield(L, -1, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static void get_uint(lua_State *L, ctx_t *x, const char *key, const char *name, long long lo,
                     long long hi, void *out, size_t size) {
  if (!field(L, key)) return;
  int isnum = 0;
  lua_Integer v = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || v < lo || v > hi) {
    char what[96];
    snprintf(what, sizeof what, "must be an integer from %lld to %lld", lo, hi);
    bad(x, name, what);
    return;
  }
  if (size == sizeof(unsigned)) *(unsigned *)out = (unsigned)v;
  else if (size == sizeof(size_t)) *(size_t *)out = (size_t)v;
}

static void get_int(lua_State *L, ctx_t *x, const char *key, const char *name, int lo, int hi, int *out) {
  if (!field(L, key)) return;
  int isnum = 0;
  lua_Integer v = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || v < lo || v > hi) {
    char what[96];
    snprintf(what, sizeof what, "must be an integer from %d to %d", lo, hi);
    bad(x, name, what);
    return;
  }
  *out = (int)v;
}

static void get_str(lua_State *L, ctx_t *x, const char *key, const char *name, char **out) {
  if (!field(L, key)) return;
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
    lua_pop(L, 1);
    bad(x, name, "must be a non-empty string");
    return;
  }
  free(*out);
  *out = ds_xstrdup(lua_tostring(L, -1));
  lua_pop(L, 1);
}

static void get_bool(lua_State *L, ctx_t *x, const char *key, const char *name, int *out) {
  if (!field(L, key)) return;
  if (!lua_isboolean(L, -1)) {
    lua_pop(L, 1);
    bad(x, name, "must be true or false");
    return;
  }
  *out = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

/* A list of networks ("10.0.0.0/8", "::1/128", "127.0.0.1"), checked by the same parser
 * the egress policy uses. */
static void get_networks(lua_State *L, ctx_t *x, const char *key, const char *name, char ***out,
                         size_t *nout) {
  if (!field(L, key)) return;
  const char *what = "must be a list of networks such as \"127.0.0.0/8\" or \"::1/128\"";
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    bad(x, name, what);
    return;
  }
  size_t n = lua_rawlen(L, -1);
  char **v = ds_xcalloc(n + 1, sizeof *v);
  size_t k = 0;
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i);
    if (lua_type(L, -1) == LUA_TSTRING) v[k++] = ds_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  char err[200];
  ds_egress_t *e = k == n ? ds_egress_new((const char *const *)v, k, err, sizeof err) : NULL;
  if (!e) {
    char msg[300];
    snprintf(msg, sizeof msg, "%s%s%s", what, k == n ? ": " : "", k == n ? err : "");
    free_strings(v, k);
    bad(x, name, msg);
    return;
  }
  ds_egress_free(e);
  free_strings(*out, *nout);
  *out = v;
  *nout = k;
}

/* Refuses unknown keys: a typo in a limit must not silently run with the default. */
static void check_keys(lua_State *L, ctx_t *x, const char *section, const char *const *known) {
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      bad(x, section[0] ? section : "config", "has a non-string key");
      return;
    }
    const char *k = lua_tostring(L, -1);
    int ok = 0;
    for (const char *const *p = known; *p; p++)
      if (strcmp(*p, k) == 0) ok = 1;
    if (!ok) {
      char name[160];
      snprintf(name, sizeof name, "%s%s%s", section, section[0] ? "." : "", k);
      lua_pop(L, 1);
      bad(x, name, "is not a known setting");
      return;
    }
  }
}

static int open_section(lua_State *L, ctx_t *x, const char *key) {
  if (!field(L, key)) return 0;
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    bad(x, key, "must be a table");
    return 0;
  }
  return 1;
}

static int msgh(lua_State *L) {
  const char *m = lua_tostring(L, 1);
  lua_pushstring(L, m ? m : "(error object is not a string)");
  return 1;
}

ds_vm_t *ds_config_eval(const char *path, char *err, size_t errlen) {
  ds_vm_t *vm = ds_vm_new(DS_CONFIG_MEM_LIMIT);
  if (!vm) {
    snprintf(err, errlen, "%s: cannot create a Lua state", path);
    return NULL;
  }
  lua_State *L = ds_vm_state(vm);
  ds_budget_t b;
  ds_budget_init(&b, "instruction budget of config.lua", DS_CONFIG_BUDGET, L);
  ds_budget_set_time(&b, DS_CONFIG_TIME_LIMIT_MS);
  ds_budget_t *outer = ds_vm_enter(vm, &b);
  lua_State *was = ds_vm_set_running(vm, L);
  lua_pushcfunction(L, msgh);
  int rc = luaL_loadfilex(L, path, "t");
  if (rc == LUA_OK) rc = lua_pcall(L, 0, 1, 1);
  if (rc != LUA_OK && b.killed) { /* thrown as a memory error: say what it was */
    lua_pop(L, 1);
    ds_vm_push_kill(L);
  }
  ds_vm_set_running(vm, was);
  ds_vm_leave(vm, outer);
  if (rc != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    if (m && strncmp(m, path, strlen(path)) == 0) snprintf(err, errlen, "%s", m);
    else snprintf(err, errlen, "%s: %s", path, m ? m : "error");
    ds_vm_free(vm);
    return NULL;
  }
  lua_remove(L, 1); /* the handler: the result is alone on the stack */
  if (!lua_istable(L, -1)) {
    snprintf(err, errlen, "%s: must return a table (got %s)", path, luaL_typename(L, -1));
    ds_vm_free(vm);
    return NULL;
  }
  return vm;
}

int ds_config_load(ds_config_t *c, const char *path, char *err, size_t errlen) {
  ds_vm_t *vm = ds_config_eval(path, err, errlen);
  if (!vm) return -1;
  lua_State *L = ds_vm_state(vm);
  ctx_t x = {path, err, errlen, 0};
  static const char *const top[] = {"host", "port", "data_dir", "storage", "fsync",
                                    "fsync_interval_ms", "log_level", "limits", "sse",
                                    "protocol", "agents", "auth", "cors", NULL};
  check_keys(L, &x, "", top);
  get_str(L, &x, "host", "host", &c->host);
  get_int(L, &x, "port", "port", 0, 65535, &c->port);
  get_str(L, &x, "data_dir", "data_dir", &c->data_dir);
  get_str(L, &x, "storage", "storage", &c->storage);
  if (strcmp(c->storage, "yaml") != 0 && strcmp(c->storage, "memory") != 0)
    bad(&x, "storage", "must be \"yaml\" or \"memory\"");
  char *fs = NULL;
  get_str(L, &x, "fsync", "fsync", &fs);
  if (fs) {
    int f = ds_fsync_parse(fs);
    if (f < 0) bad(&x, "fsync", "must be \"always\", \"interval\" or \"never\"");
    else c->fsync = (ds_fsync_t)f;
    free(fs);
  }
  get_uint(L, &x, "fsync_interval_ms", "fsync_interval_ms", 1, 3600000, &c->fsync_interval_ms,
           sizeof c->fsync_interval_ms);
  char *lvl = NULL;
  get_str(L, &x, "log_level", "log_level", &lvl);
  if (lvl) {
    int l = ds_log_level_parse(lvl);
    if (l < 0) bad(&x, "log_level", "must be debug, info, warn, error or off");
    else c->log_level = l;
    free(lvl);
  }
  if (open_section(L, &x, "limits")) {
    static const char *const keys[] = {"max_body_bytes", "max_header_bytes", "max_json_depth",
                                       "max_connections", "header_timeout_ms", "body_timeout_ms",
                                       "idle_timeout_ms", "subscriber_backlog_bytes",
                                       "tail_cache_bytes", "tail_cache_total_bytes",
                                       "max_open_files", NULL};
    check_keys(L, &x, "limits", keys);
    get_uint(L, &x, "max_body_bytes", "limits.max_body_bytes", 1, 1LL << 32, &c->max_body_bytes, sizeof(size_t));
    get_uint(L, &x, "max_header_bytes", "limits.max_header_bytes", 256, 1 << 24, &c->max_header_bytes, sizeof(size_t));
    get_int(L, &x, "max_json_depth", "limits.max_json_depth", 1, 10000, &c->max_json_depth);
    get_uint(L, &x, "max_connections", "limits.max_connections", 1, 10000000, &c->max_connections, sizeof(unsigned));
    get_uint(L, &x, "header_timeout_ms", "limits.header_timeout_ms", 1, 86400000, &c->header_timeout_ms, sizeof(unsigned));
    get_uint(L, &x, "body_timeout_ms", "limits.body_timeout_ms", 1, 86400000, &c->body_timeout_ms, sizeof(unsigned));
    get_uint(L, &x, "idle_timeout_ms", "limits.idle_timeout_ms", 1, 86400000, &c->idle_timeout_ms, sizeof(unsigned));
    get_uint(L, &x, "subscriber_backlog_bytes", "limits.subscriber_backlog_bytes", 1024, 1LL << 34, &c->subscriber_backlog_bytes, sizeof(size_t));
    get_uint(L, &x, "tail_cache_bytes", "limits.tail_cache_bytes", 1, 1LL << 40, &c->tail_cache_bytes, sizeof(size_t));
    get_uint(L, &x, "tail_cache_total_bytes", "limits.tail_cache_total_bytes", 1, 1LL << 40, &c->tail_cache_total_bytes, sizeof(size_t));
    get_uint(L, &x, "max_open_files", "limits.max_open_files", 4, 1000000, &c->max_open_files, sizeof(unsigned));
    lua_pop(L, 1);
  }
  if (open_section(L, &x, "sse")) {
    static const char *const keys[] = {"keepalive_ms", NULL};
    check_keys(L, &x, "sse", keys);
    get_uint(L, &x, "keepalive_ms", "sse.keepalive_ms", 10, 86400000, &c->keepalive_ms, sizeof(unsigned));
    lua_pop(L, 1);
  }
  if (open_section(L, &x, "protocol")) {
    static const char *const keys[] = {"long_poll_timeout_ms", "sse_reconnect_ms", "subscriptions",
                                       "webhook_allow_networks", NULL};
    check_keys(L, &x, "protocol", keys);
    get_uint(L, &x, "long_poll_timeout_ms", "protocol.long_poll_timeout_ms", 1, 86400000, &c->long_poll_timeout_ms, sizeof(unsigned));
    get_uint(L, &x, "sse_reconnect_ms", "protocol.sse_reconnect_ms", 10, 86400000, &c->sse_reconnect_ms, sizeof(unsigned));
    get_bool(L, &x, "subscriptions", "protocol.subscriptions", &c->subscriptions);
    get_networks(L, &x, "webhook_allow_networks", "protocol.webhook_allow_networks",
                 &c->webhook_allow_networks, &c->nwebhook_allow_networks);
    lua_pop(L, 1);
  }
  if (field(L, "agents")) {
    if (lua_isboolean(L, -1)) c->agents_enabled = lua_toboolean(L, -1);
    else if (!lua_istable(L, -1)) bad(&x, "agents", "must be a table or false");
    lua_pop(L, 1);
  }
  ds_vm_free(vm);
  if (x.failed) return -1;
  free(c->config_path);
  c->config_path = ds_xstrdup(path);
  return 0;
}
