/* host.c - the Lua host: start-up (config, lua/ policy, plugins), the decorator chain,
 * task attribution and error policy, shutdown with leak reporting. See host.h.
 *
 * Load phase: config.lua's `agents` table, lua/boot.lua (which installs the agent) and
 * each plugin run on the main thread under an instruction budget; they may only register
 * (ds.on, ds.http.route, models.register): ds.append, ds.spawn, ds.sleep... raise there.
 * Run phase: the streams observer copies each stored event that some hook cares about
 * (a scan of the registered types: no Lua, no allocation when nobody cares) into a
 * pending list; an idle handle turns each into one task per interested hook. A task that
 * raises is logged with file:line; after agents.max_hook_errors failures its plugin is
 * disabled (the lua/ policy is only logged, never disabled): its hooks and routes are
 * dropped, its tasks cancelled and its _ENV emptied, so what it held is collected. A
 * plugin task killed at the memory cap disables its plugin at once.
 * Tasks are attributed to a plugin and a stream path and capped per plugin
 * (agents.max_tasks_per_plugin) and, for ds.spawn, per path (agents.max_tasks_per_path);
 * their C structures count against agents.memory_limit_mb (ds_vm_account).
 * ds.on_start functions run as tasks when the run phase begins; ds.on_shutdown functions
 * run at shutdown, before the tasks are cancelled, under a budget of DS_LUA_SHUTDOWN_MS.
 * Must not: run Lua inside the observer (it runs inside an append) or any library
 * callback.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "lua/lhost.h"

#ifndef DS_SOURCE_DIR
#define DS_SOURCE_DIR "."
#endif

static char HOST_KEY, BOOT_KEY;

struct ds__pending_s {
  ds__pending_t *next;
  char *type;
  char *path;
  size_t repr_len, path_len;
  char repr[]; /* repr, NUL, type, NUL, path, NUL */
};

ds_lua_host_t *ds__host_of(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
  ds_lua_host_t *h = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return h;
}

ds_task_t *ds__check_task(lua_State *L, const char *what) {
  ds_lua_host_t *h = ds__host_of(L);
  if (h->phase == DS_PHASE_LOAD) luaL_error(L, "%s is not allowed in the load phase", what);
  ds_task_t *t = ds_task_current(L);
  if (!t) luaL_error(L, "%s must be called from a task (not the main thread or a nested coroutine)", what);
  return t;
}

int ds__current_plugin(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  if (!h) return 0;
  if (h->phase == DS_PHASE_LOAD) return h->loading;
  ds_task_t *t = ds_task_current(L);
  if (!t) return 0;
  ds__tctx_t *c = ds_task_ud(t);
  return c ? c->plugin : 0;
}

static const char *first_line(const char *msg, char *buf, size_t n) {
  if (!msg) return "?";
  size_t i = 0;
  while (msg[i] && msg[i] != '\n' && i + 1 < n) {
    buf[i] = msg[i];
    i++;
  }
  buf[i] = 0;
  return buf;
}

/* ---- live tasks: per plugin, per path ---- */

/* C memory a task costs beyond its Lua thread (its ds_task_t with the uv timer, and its
 * context), counted against agents.memory_limit_mb like the thread itself. */
#define TASK_C_BYTES 512

static unsigned path_hash(const char *p, size_t n) {
  unsigned x = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) x = (x ^ (unsigned char)p[i]) * 16777619u;
  return x % DS__PATH_BUCKETS;
}

static ds__pathcount_t *path_find(ds_lua_host_t *h, const char *p, size_t n, int create) {
  if (!h->paths) {
    if (!create) return NULL;
    h->paths = ds_xcalloc(DS__PATH_BUCKETS, sizeof *h->paths);
  }
  unsigned b = path_hash(p, n);
  for (ds__pathcount_t *e = h->paths[b]; e; e = e->next)
    if (strlen(e->path) == n && memcmp(e->path, p, n) == 0) return e;
  if (!create) return NULL;
  ds__pathcount_t *e = ds_xmalloc(sizeof *e + n + 1);
  memcpy(e->path, p, n);
  e->path[n] = 0;
  e->n = e->held = 0;
  e->next = h->paths[b];
  h->paths[b] = e;
  return e;
}

static void path_release(ds_lua_host_t *h, ds__pathcount_t *e, int counted) {
  if (!e) return;
  if (counted) e->n--;
  else e->held--;
  if (e->n > 0 || e->held > 0) return;
  ds__pathcount_t **pp = &h->paths[path_hash(e->path, strlen(e->path))];
  while (*pp && *pp != e) pp = &(*pp)->next;
  if (*pp) *pp = e->next;
  free(e);
}

ds__tctx_t *ds__current_tctx(lua_State *L) {
  ds_task_t *t = ds_task_current(L);
  return t ? ds_task_ud(t) : NULL;
}

/* Protected: [plugin index] drops what a disabled plugin holds in Lua - its hooks and
 * routes (never called again) and every global it made (its _ENV is emptied) - so the
 * memory it took goes back at the next collection. */
static int release_plugin(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  int p = (int)lua_tointeger(L, 1);
  for (size_t i = 0; i < h->nhooks; i++) {
    if (h->hooks[i].plugin != p) continue;
    ds_vm_unref(L, h->hooks[i].fn_ref);
    h->hooks[i].fn_ref = LUA_NOREF;
  }
  for (size_t i = 0; i < h->nroutes; i++) {
    if (h->routes[i].plugin != p) continue;
    ds_vm_unref(L, h->routes[i].fn_ref);
    h->routes[i].fn_ref = LUA_NOREF;
  }
  ds__plugin_t *pl = &h->plugins[p];
  if (pl->env_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, pl->env_ref); /* [p env] */
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* [p env k v] */
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, -4); /* clearing a field while traversing is allowed */
    }
    lua_pop(L, 1);
    ds_vm_unref(L, pl->env_ref);
    pl->env_ref = LUA_NOREF;
  }
  return 0;
}

/* Disables plugin p (never the lua/ policy): its hooks and routes stop, its other tasks
 * are cancelled, what it holds in Lua is released; with `collect`, a collection in small
 * steps gives the memory back soon (a plugin that filled the state to its cap: otherwise
 * the next task to allocate would pay an emergency collection, and the stats would keep
 * showing the memory until then). */
static void disable_plugin_gc(ds_lua_host_t *h, int p, const char *why, int collect);

/* One step of the collection started by disable_plugin_gc, per loop turn, until a cycle
 * completes: the memory a hog held comes back without one long pause (a full collection
 * of a state at its cap is about 0.45 ms per MB here). */
#define GC_STEP_KB 512
static void on_gc_step(uv_timer_t *tm) {
  ds_lua_host_t *h = tm->data;
  if (h->phase != DS_PHASE_RUN || lua_gc(h->L, LUA_GCSTEP, GC_STEP_KB)) uv_timer_stop(tm);
}
static void disable_plugin(ds_lua_host_t *h, int p, const char *why) { disable_plugin_gc(h, p, why, 0); }

static void disable_plugin_gc(ds_lua_host_t *h, int p, const char *why, int collect) {
  if (p <= 0 || (size_t)p >= h->nplugins || h->plugins[p].disabled) return;
  h->plugins[p].disabled = 1;
  h->plugins_disabled++;
  ds_warn("lua", "plugin %s disabled: %s", h->plugins[p].name, why);
  for (;;) { /* each cancel ends a task, whose context leaves the list: look again */
    ds__tctx_t *c = h->live;
    while (c && (c->plugin != p || c->cancelling || ds_task_ended(c->task))) c = c->next;
    if (!c) break;
    c->cancelling = 1;
    ds_task_cancel(c->task); /* DS_EBUSY for the running task: it ends on its own */
  }
  if (h->phase == DS_PHASE_RUN) {
    lua_pushcfunction(h->L, release_plugin);
    lua_pushinteger(h->L, p);
    if (ds_vm_pcall(h->L, 1, 0) != LUA_OK) lua_pop(h->L, 1);
    if (collect && h->gc_timer_open) uv_timer_start(&h->gc_timer, on_gc_step, 0, 1);
  }
}

/* A task of plugin p failed (or was refused): after agents.max_hook_errors of these the
 * plugin is disabled. */
static void plugin_failed(ds_lua_host_t *h, int p) {
  if (p <= 0 || (size_t)p >= h->nplugins) return;
  ds__plugin_t *pl = &h->plugins[p];
  pl->errors++;
  if (h->max_hook_errors > 0 && pl->errors >= h->max_hook_errors && !pl->disabled) {
    char why[64];
    snprintf(why, sizeof why, "%d hook failures", pl->errors);
    disable_plugin(h, p, why);
  }
}

/* Protected: [fn ok msg ctx(lightuserdata)] spawns fn(ok, msg) for the ended task's
 * plugin and path (uncapped: it is that task's clean-up). */
static int spawn_on_end(lua_State *L) {
  ds__tctx_t *c = lua_touserdata(L, 4);
  lua_pop(L, 1);
  ds__spawn_t sp = {.plugin = c->plugin, .hook = -1, .route = -1};
  if (c->path) {
    sp.path = c->path->path;
    sp.path_len = strlen(c->path->path);
  }
  char why[256];
  if (!ds__spawn(c->h, L, 2, &sp, why, sizeof why)) ds_warn("lua", "task:on_end function not run: %s", why);
  return 0;
}

/* The end of a task that has an on_end function: runs it (not for a cancelled task). */
static void run_on_end(ds_lua_host_t *h, ds__tctx_t *c, int status, lua_State *L) {
  int ref = c->on_end_ref;
  c->on_end_ref = LUA_NOREF;
  if (status == -1 || h->phase != DS_PHASE_RUN) {
    ds_vm_unref(L, ref);
    return;
  }
  char line[512];
  const char *msg = status == LUA_OK ? NULL : first_line(lua_tostring(L, -1), line, sizeof line);
  lua_pushcfunction(L, spawn_on_end);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  ds_vm_unref(L, ref);
  lua_pushboolean(L, status == LUA_OK);
  if (msg) lua_pushstring(L, msg);
  else lua_pushnil(L);
  lua_pushlightuserdata(L, c);
  if (ds_vm_pcall(L, 4, 0) != LUA_OK) lua_pop(L, 1);
}

static void task_done(ds_task_t *t, int status, lua_State *L, void *ud) {
  ds__tctx_t *c = ud;
  ds_lua_host_t *h = c->h;
  if (c->on_end_ref != LUA_NOREF) run_on_end(h, c, status, L);
  if (c->prev) c->prev->next = c->next;
  else h->live = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->counted && (size_t)c->plugin < h->nplugins && h->plugins[c->plugin].tasks > 0)
    h->plugins[c->plugin].tasks--;
  path_release(h, c->path, c->counted);
  ds_vm_account(h->vm, -(ptrdiff_t)TASK_C_BYTES);
  if (c->req) {
    ds__http_task_done(c->req, status, L);
  } else if (status != LUA_OK && status != -1) {
    const char *msg = lua_tostring(L, -1);
    char line[512];
    const char *pname = (size_t)c->plugin < h->nplugins ? h->plugins[c->plugin].name : "?";
    if (c->hook >= 0) {
      h->hooks_failed++;
      ds__hook_t *hk = &h->hooks[c->hook];
      ds_error("lua", "plugin %s: hook for %s failed: %s", pname, hk->type, first_line(msg, line, sizeof line));
    } else {
      ds_error("lua", "plugin %s: task failed: %s", pname, first_line(msg, line, sizeof line));
    }
    ds_debug("lua", "%s", msg ? msg : "?");
    if (ds_task_killed(t) == DS_BUDGET_MEMORY && c->plugin > 0) {
      /* it took the Lua state to its cap: whatever it keeps would starve every other
       * task, so it goes now and its memory with it */
      disable_plugin_gc(h, c->plugin, "memory limit reached (agents.memory_limit_mb)", 1);
    } else {
      plugin_failed(h, c->plugin);
    }
  }
  free(c);
}

ds_task_t *ds__spawn(ds_lua_host_t *h, lua_State *L, int nargs, const ds__spawn_t *sp, char *why, size_t whylen) {
  ds__plugin_t *pl = (size_t)sp->plugin < h->nplugins ? &h->plugins[sp->plugin] : NULL;
  ds__pathcount_t *pc = sp->path ? path_find(h, sp->path, sp->path_len, 0) : NULL;
  const char *refusal = NULL;
  if (sp->capped && pl && h->max_tasks_per_plugin && pl->tasks >= h->max_tasks_per_plugin) {
    snprintf(why, whylen, "plugin %s already has %u live tasks (agents.max_tasks_per_plugin)", pl->name, pl->tasks);
    refusal = why;
  } else if (sp->cap_path && pc && h->max_tasks_per_path && pc->n >= h->max_tasks_per_path) {
    snprintf(why, whylen, "path %s already has %u live tasks (agents.max_tasks_per_path)", pc->path, pc->n);
    refusal = why;
  } else if (ds_vm_account(h->vm, TASK_C_BYTES) != 0) {
    snprintf(why, whylen, "the Lua memory limit is reached (agents.memory_limit_mb)");
    refusal = why;
  }
  if (refusal) {
    h->tasks_refused++;
    lua_pop(L, nargs + 1);
    return NULL;
  }
  ds__tctx_t *c = ds_xcalloc(1, sizeof *c);
  c->on_end_ref = LUA_NOREF;
  c->h = h;
  c->plugin = sp->plugin;
  c->hook = sp->hook;
  c->route = sp->route;
  c->req = sp->req;
  ds_task_t *t = ds_sched_spawn(h->sched, L, nargs, task_done, c);
  if (!t) {
    ds_vm_account(h->vm, -(ptrdiff_t)TASK_C_BYTES);
    free(c);
    snprintf(why, whylen, "the host is shutting down");
    return NULL;
  }
  c->task = t;
  /* Only capped spawns count toward the caps: the lua/ policy's hook tasks (one per
   * stored event, however many a client sends at once) must not use up the room its own
   * request tasks need. A task still records its path, for the tasks it spawns. */
  c->counted = sp->capped;
  if (sp->path) {
    c->path = pc ? pc : path_find(h, sp->path, sp->path_len, 1);
    if (c->counted) c->path->n++;
    else c->path->held++;
  }
  if (pl && c->counted) {
    pl->tasks++;
    pl->capped = 0;
  }
  c->next = h->live;
  if (h->live) h->live->prev = c;
  h->live = c;
  return t;
}

/* ---- ds.on_start, ds.on_shutdown ---- */

/* Registers the function at 1 in list (load phase only). */
static int add_lifecycle(lua_State *L, ds__lifecycle_t **list, size_t *n, const char *what) {
  ds_lua_host_t *h = ds__host_of(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (h->phase != DS_PHASE_LOAD) return luaL_error(L, "%s: register in the load phase", what);
  *list = ds_xrealloc(*list, (*n + 1) * sizeof **list);
  lua_pushvalue(L, 1);
  (*list)[*n].fn_ref = ds_vm_ref(L);
  (*list)[*n].plugin = ds__current_plugin(L);
  (*n)++;
  return 0;
}

/* ds.on_start(fn): fn runs as a task once the run phase begins (start-up work that needs
 * I/O, such as closing what a crash left open). */
static int l_on_start(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  return add_lifecycle(L, &h->starts, &h->nstarts, "ds.on_start");
}

/* ds.on_shutdown(fn): fn runs at shutdown, before tasks are cancelled, outside any task
 * (it cannot yield: synchronous appends only) and bounded by DS_LUA_SHUTDOWN_MS. */
static int l_on_shutdown(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  return add_lifecycle(L, &h->stops, &h->nstops, "ds.on_shutdown");
}

static void run_starts(ds_lua_host_t *h) {
  for (size_t i = 0; i < h->nstarts; i++) {
    ds__lifecycle_t *lc = &h->starts[i];
    if (lc->plugin > 0 && h->plugins[lc->plugin].disabled) continue;
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, lc->fn_ref);
    ds__spawn_t sp = {.plugin = lc->plugin, .hook = -1, .route = -1};
    char why[256];
    if (!ds__spawn(h, h->L, 0, &sp, why, sizeof why))
      ds_error("lua", "plugin %s: start-up task not run: %s", h->plugins[lc->plugin].name, why);
  }
}

/* The shutdown functions, one budget for them all: whatever is left when it runs out
 * stays for the next start to close. */
static void run_stops(ds_lua_host_t *h) {
  if (!h->nstops) return;
  ds_budget_t b;
  ds_budget_init(&b, "instruction budget of the shutdown", h->load_budget, h->L);
  ds_budget_set_time(&b, DS_LUA_SHUTDOWN_MS);
  ds_budget_t *outer = ds_vm_enter(h->vm, &b);
  lua_State *was = ds_vm_set_running(h->vm, h->L);
  for (size_t i = 0; i < h->nstops && !b.killed; i++) {
    ds__lifecycle_t *lc = &h->stops[i];
    if (lc->plugin > 0 && h->plugins[lc->plugin].disabled) continue;
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, lc->fn_ref);
    if (ds_vm_pcall(h->L, 0, 0) != LUA_OK) {
      char line[512];
      ds_error("lua", "plugin %s: shutdown function failed: %s", h->plugins[lc->plugin].name,
               first_line(lua_tostring(h->L, -1), line, sizeof line));
      lua_pop(h->L, 1);
    }
  }
  ds_vm_set_running(h->vm, was);
  ds_vm_leave(h->vm, outer);
}

/* ---- ds.on and the decorator chain ---- */

static int l_on(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  size_t tl;
  const char *type = luaL_checklstring(L, 1, &tl);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (h->phase != DS_PHASE_LOAD) return luaL_error(L, "ds.on: hooks are registered in the load phase");
  if (tl == 0) return luaL_error(L, "ds.on: empty event type");
  if (h->nhooks == h->hooks_cap) {
    h->hooks_cap = h->hooks_cap ? h->hooks_cap * 2 : 16;
    h->hooks = ds_xrealloc(h->hooks, h->hooks_cap * sizeof *h->hooks);
  }
  lua_pushvalue(L, 2);
  ds__hook_t *hk = &h->hooks[h->nhooks++];
  hk->fn_ref = ds_vm_ref(L);
  hk->type = ds_xstrndup(type, tl);
  hk->type_len = tl;
  hk->plugin = ds__current_plugin(L);
  if (tl == 1 && type[0] == '*') h->wildcard_hooks++;
  return 0;
}

static int hook_wants(const ds_lua_host_t *h, const ds__hook_t *hk, const char *type, size_t tl) {
  if (hk->plugin > 0 && h->plugins[hk->plugin].disabled) return 0;
  if (hk->type_len == 1 && hk->type[0] == '*') return 1;
  return hk->type_len == tl && memcmp(hk->type, type, tl) == 0;
}

static void on_dispatch(uv_idle_t *idle);

/* The streams observer: runs inside every append, so it stays cheap and never runs Lua. */
static void observer(void *ud, const ds_published_t *rec) {
  ds_lua_host_t *h = ud;
  if (h->phase != DS_PHASE_RUN || rec->kind != DS_REC_EVENT || !rec->type) return;
  h->events_seen++;
  size_t tl = rec->type_len ? rec->type_len : strlen(rec->type);
  int want = 0;
  for (size_t i = 0; i < h->nhooks && !want; i++) want = hook_wants(h, &h->hooks[i], rec->type, tl);
  if (!want) return;
  size_t pl = rec->path ? strlen(rec->path) : 0;
  ds__pending_t *p = malloc(sizeof *p + rec->repr_len + 1 + tl + 1 + pl + 1);
  if (!p) {
    ds_error("lua", "out of memory: event %s dropped for hooks", rec->type);
    return;
  }
  p->next = NULL;
  p->repr_len = rec->repr_len;
  memcpy(p->repr, rec->repr, rec->repr_len);
  p->repr[rec->repr_len] = 0;
  p->type = p->repr + rec->repr_len + 1;
  memcpy(p->type, rec->type, tl);
  p->type[tl] = 0;
  p->path = p->type + tl + 1;
  p->path_len = pl;
  if (pl) memcpy(p->path, rec->path, pl);
  p->path[pl] = 0;
  if (h->ptail) h->ptail->next = p;
  else h->phead = p;
  h->ptail = p;
  if (!h->dispatch_active && h->dispatch_open) {
    uv_idle_start(&h->dispatch, on_dispatch);
    h->dispatch_active = 1;
  }
}

/* Protected: [pending(lightuserdata)] -> spawns one task per interested hook. A plugin
 * past its task caps does not get this event: that counts as one of its failures (a
 * hook appending events that wake itself is how a spawn storm starts). The lua/ policy
 * always gets it: it is the agent, and its hooks do not wake themselves. */
static int dispatch_one(lua_State *L) {
  ds__pending_t *p = lua_touserdata(L, 1);
  ds_lua_host_t *h = ds__host_of(L);
  size_t tl = strlen(p->type);
  for (size_t i = 0; i < h->nhooks; i++) {
    ds__hook_t *hk = &h->hooks[i];
    if (!hook_wants(h, hk, p->type, tl)) continue;
    lua_rawgeti(L, LUA_REGISTRYINDEX, hk->fn_ref); /* [p fn] */
    char err[160];
    if (ds__json_push(L, p->repr, p->repr_len, err, sizeof err) != 0) { /* [p fn ev] */
      lua_pop(L, 1);
      ds_error("lua", "cannot decode stored event for hooks: %s", err);
      return 0;
    }
    ds__spawn_t sp = {.plugin = hk->plugin, .hook = (int)i, .route = -1, .path = p->path_len ? p->path : NULL,
                      .path_len = p->path_len, .capped = hk->plugin > 0};
    char why[256];
    if (!ds__spawn(h, L, 1, &sp, why, sizeof why)) { /* [p] */
      ds__plugin_t *pl = &h->plugins[hk->plugin];
      if (!pl->capped) { /* once per episode: a storm would flood the log */
        pl->capped = 1;
        ds_warn("lua", "plugin %s: hook for %s on %s not run: %s", pl->name, hk->type, p->path, why);
      }
      plugin_failed(h, hk->plugin);
    }
  }
  h->events_dispatched++;
  return 0;
}

static void on_dispatch(uv_idle_t *idle) {
  ds_lua_host_t *h = idle->data;
  ds__pending_t *p = h->phead;
  h->phead = h->ptail = NULL;
  while (p) {
    ds__pending_t *next = p->next;
    if (h->phase == DS_PHASE_RUN) {
      lua_pushcfunction(h->L, dispatch_one);
      lua_pushlightuserdata(h->L, p);
      if (ds_vm_pcall(h->L, 1, 0) != LUA_OK) {
        ds_error("lua", "hook dispatch failed: %s", lua_tostring(h->L, -1));
        lua_pop(h->L, 1);
      }
    }
    free(p);
    p = next;
  }
  if (!h->phead && h->dispatch_active) {
    uv_idle_stop(&h->dispatch);
    h->dispatch_active = 0;
  }
}

/* ---- load phase ---- */

/* The load phase runs under one budget per plugin (and one for config.lua and lua/). */
/* What one load-phase run (config.lua's agents table with lua/, or one plugin) may take
 * on the clock, whatever its instruction budget: start-up cannot hang on one. */
#define LOAD_TIME_LIMIT_MS 2000

static void load_budget_arm(ds_lua_host_t *h) {
  ds_budget_init(&h->load_bud, "instruction budget of the load phase", h->load_budget, h->L);
  ds_budget_set_time(&h->load_bud, LOAD_TIME_LIMIT_MS);
  h->load_outer = ds_vm_enter(h->vm, &h->load_bud);
  ds_vm_set_running(h->vm, h->L);
}

static void load_budget_disarm(ds_lua_host_t *h) {
  ds_vm_set_running(h->vm, NULL);
  ds_vm_leave(h->vm, h->load_outer);
}

static int add_plugin(ds_lua_host_t *h, const char *name, const char *file) {
  if (h->nplugins == h->plugins_cap) {
    h->plugins_cap = h->plugins_cap ? h->plugins_cap * 2 : 8;
    h->plugins = ds_xrealloc(h->plugins, h->plugins_cap * sizeof *h->plugins);
  }
  ds__plugin_t *p = &h->plugins[h->nplugins];
  memset(p, 0, sizeof *p);
  p->name = ds_xstrdup(name);
  p->file = ds_xstrdup(file);
  p->env_ref = LUA_NOREF;
  return (int)h->nplugins++;
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int dir_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

typedef struct {
  const char *config_path;
  const char *lua_dir;
} init_args_t;

/* Protected: builds `ds`, reads config.lua's agents table, runs lua/boot.lua. */
static int init_state(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  const init_args_t *a = lua_touserdata(L, 1);
  lua_newtable(L); /* [ds] */
  ds__json_open(L);
  ds__log_open(L);
  ds__task_open(L);
  ds__stream_open(L);
  ds__http_open(L);
  lua_getfield(L, -1, "http"); /* [ds http] */
  ds_l_http_open(L, h->httpc);
  lua_pop(L, 1); /* [ds] */
  lua_newtable(L); /* [ds ws] */
  ds_l_ws_open(L, h->wsc);
  lua_setfield(L, -2, "ws"); /* [ds] */
  lua_pushcfunction(L, l_on);
  lua_setfield(L, -2, "on");
  lua_pushcfunction(L, l_on_start);
  lua_setfield(L, -2, "on_start");
  lua_pushcfunction(L, l_on_shutdown);
  lua_setfield(L, -2, "on_shutdown");
  ds__marks_open(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");  /* [ds package loaded] */
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "ds");
  lua_pop(L, 1);
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", a->lua_dir, a->lua_dir);
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1); /* [ds] */
  lua_pushvalue(L, -1);
  h->ds_ref = ds_vm_ref(L);

  /* the route runner: a handler may answer by returning status, body, headers */
  if (luaL_loadbuffer(L,
                      "local fn, req = ...\n"
                      "local status, body, headers = fn(req)\n"
                      "if status ~= nil then req:respond(status, body, headers) end\n",
                      strlen("local fn, req = ...\n"
                             "local status, body, headers = fn(req)\n"
                             "if status ~= nil then req:respond(status, body, headers) end\n"),
                      "=ds.http.route") != LUA_OK)
    return lua_error(L);
  h->route_runner_ref = ds_vm_ref(L);

  /* config.lua: its `agents` table */
  if (a->config_path) {
    if (luaL_loadfilex(L, a->config_path, "t") != LUA_OK) return lua_error(L);
    lua_call(L, 0, 1); /* [ds cfg] */
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "agents"); /* [ds cfg agents] */
      if (lua_isboolean(L, -1)) {    /* `agents = false` disables the agent layer */
        lua_pop(L, 1);
        lua_pushnil(L);
      }
      lua_remove(L, -2);
    } else {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
  } else {
    lua_pushnil(L);
  } /* [ds agents] */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "boot");
  lua_call(L, 1, 1); /* [ds agents boot] */
  lua_getfield(L, -1, "start");
  lua_pushvalue(L, -4);
  lua_pushvalue(L, -4);
  lua_call(L, 2, 1); /* [ds agents boot res] */
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &BOOT_KEY);
  lua_getfield(L, -1, "config"); /* [ds agents boot res conf] */
  lua_pushvalue(L, -1);
  lua_setfield(L, -6, "config");
  lua_getfield(L, -1, "instruction_budget");
  ds_sched_set_budget(h->sched, (uint64_t)lua_tointeger(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, -1, "load_instruction_budget");
  h->load_budget = (uint64_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "max_hook_errors");
  h->max_hook_errors = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "task_time_limit_ms");
  ds_sched_set_time_limit(h->sched, (uint64_t)lua_tointeger(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, -1, "max_tasks_per_plugin");
  h->max_tasks_per_plugin = (unsigned)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "max_tasks_per_path");
  h->max_tasks_per_path = (unsigned)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "memory_limit_mb");
  ds_vm_set_mem_limit(h->vm, (size_t)lua_tointeger(L, -1) << 20);
  lua_pop(L, 1);
  lua_getfield(L, -1, "plugin_dir"); /* [... conf dir] */
  return 1;
}

/* Protected: [plugin index] loads one plugin into its own environment. */
static int load_plugin(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  int idx = (int)lua_tointeger(L, 1);
  ds__plugin_t *p = &h->plugins[idx];
  if (luaL_loadfilex(L, p->file, "t") != LUA_OK) return lua_error(L); /* [idx chunk] */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &BOOT_KEY);
  lua_getfield(L, -1, "plugin_env");
  lua_remove(L, -2);
  lua_pushstring(L, p->name);
  lua_call(L, 1, 1); /* [idx chunk env] */
  lua_pushvalue(L, -1);
  p->env_ref = ds_vm_ref(L); /* released when the plugin is disabled or at the end */
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  lua_call(L, 0, 0);
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

static int name_in(lua_State *L, const char *field, const char *name, int if_absent) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &BOOT_KEY);
  lua_getfield(L, -1, "config");
  lua_getfield(L, -1, field); /* [boot conf list] */
  int res = if_absent;
  if (lua_istable(L, -1)) {
    res = 0;
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      const char *s = lua_tostring(L, -1);
      if (s && strcmp(s, name) == 0) res = 1;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 3);
  return res;
}

static void load_plugins(ds_lua_host_t *h, const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    ds_info("lua", "no plugin directory %s (%s)", dir, strerror(errno));
    return;
  }
  size_t n = 0, cap = 16;
  char **names = ds_xmalloc(cap * sizeof *names);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) names = ds_xrealloc(names, (cap *= 2) * sizeof *names);
    names[n++] = ds_xstrdup(e->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  ds_buf_t path = DS_BUF_INIT;
  for (size_t i = 0; i < n; i++) {
    char name[256];
    ds_buf_reset(&path);
    ds_buf_printf(&path, "%s/%s", dir, names[i]);
    if (ends_with(names[i], ".disabled")) continue;
    if (ends_with(names[i], ".lua") && file_exists(ds_buf_cstr(&path))) {
      snprintf(name, sizeof name, "%.*s", (int)(strlen(names[i]) - 4), names[i]);
    } else if (dir_exists(ds_buf_cstr(&path))) {
      ds_buf_puts(&path, "/init.lua");
      if (!file_exists(ds_buf_cstr(&path))) continue;
      snprintf(name, sizeof name, "%s", names[i]);
    } else {
      continue;
    }
    if (!name_in(h->L, "plugins_enabled", name, 1) || name_in(h->L, "plugins_disabled", name, 0)) {
      ds_info("lua", "plugin %s skipped (config)", name);
      continue;
    }
    int idx = add_plugin(h, name, ds_buf_cstr(&path));
    h->loading = idx;
    load_budget_arm(h);
    lua_pushcfunction(h->L, load_plugin);
    lua_pushinteger(h->L, idx);
    int rc = ds_vm_pcall(h->L, 1, 0);
    load_budget_disarm(h);
    h->loading = 0;
    if (rc != LUA_OK) {
      char line[512];
      const char *msg = lua_tostring(h->L, -1);
      ds_error("lua", "plugin %s failed to load: %s", name, first_line(msg, line, sizeof line));
      ds_debug("lua", "%s", msg ? msg : "?");
      lua_pop(h->L, 1);
      h->plugins[idx].disabled = 1;
    } else {
      ds_info("lua", "plugin %s loaded from %s", name, h->plugins[idx].file);
    }
  }
  ds_buf_free(&path);
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

static char *dirname_of(const char *p) {
  const char *slash = strrchr(p, '/');
  if (!slash) return ds_xstrdup(".");
  if (slash == p) return ds_xstrdup("/");
  return ds_xstrndup(p, (size_t)(slash - p));
}

/* Finds the directory holding lua/boot.lua: next to config.lua, the working directory,
 * then the source tree the binary was built from. */
static char *find_root(const char *config_path) {
  ds_buf_t b = DS_BUF_INIT;
  char *cands[3] = {config_path ? dirname_of(config_path) : NULL, ds_xstrdup("."), ds_xstrdup(DS_SOURCE_DIR)};
  char *found = NULL;
  for (int i = 0; i < 3; i++) {
    if (!cands[i] || found) continue;
    ds_buf_reset(&b);
    ds_buf_printf(&b, "%s/lua/boot.lua", cands[i]);
    if (file_exists(ds_buf_cstr(&b))) {
      found = cands[i];
      cands[i] = NULL;
    }
  }
  for (int i = 0; i < 3; i++) free(cands[i]);
  ds_buf_free(&b);
  return found ? found : ds_xstrdup(DS_SOURCE_DIR);
}

ds_lua_host_t *ds_lua_host_new(uv_loop_t *loop, ds_streams_t *streams, const ds_lua_host_opts_t *opts,
                               char *err, size_t errlen) {
  ds_lua_host_opts_t o = {0};
  if (opts) o = *opts;
  ds_lua_host_t *h = calloc(1, sizeof *h);
  if (!h) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  h->loop = loop;
  h->streams = streams;
  h->ds_ref = h->route_runner_ref = LUA_NOREF;
  h->vm = ds_vm_new(0);
  if (!h->vm) {
    free(h);
    snprintf(err, errlen, "cannot create the Lua state");
    return NULL;
  }
  h->L = ds_vm_state(h->vm);
  h->sched = ds_sched_new(loop, h->vm);
  h->httpc = ds_l_http_new(loop);
  h->wsc = h->httpc ? ds_l_ws_new(loop) : NULL;
  if (!h->wsc) {
    if (h->httpc) ds_l_http_shutdown(h->httpc);
    ds_sched_shutdown(h->sched);
    uv_run(loop, UV_RUN_NOWAIT);
    ds_vm_free(h->vm);
    ds_sched_free(h->sched);
    ds_l_http_free(h->httpc);
    free(h);
    snprintf(err, errlen, "cannot create the HTTP client");
    return NULL;
  }
  h->marks_dir = o.state_dir ? ds_xstrdup(o.state_dir) : NULL;
  uv_timer_init(loop, &h->gc_timer);
  h->gc_timer.data = h;
  h->gc_timer_open = 1;
  uv_idle_init(loop, &h->dispatch);
  h->dispatch.data = h;
  h->dispatch_open = 1;
  lua_pushlightuserdata(h->L, h);
  lua_rawsetp(h->L, LUA_REGISTRYINDEX, &HOST_KEY);

  char *root = find_root(o.config_path);
  ds_buf_t lua_dir = DS_BUF_INIT;
  if (o.lua_dir) ds_buf_puts(&lua_dir, o.lua_dir);
  else ds_buf_printf(&lua_dir, "%s/lua", root);
  add_plugin(h, "lua", ds_buf_cstr(&lua_dir)); /* index 0: the policy itself */

  h->phase = DS_PHASE_LOAD;
  h->loading = 0;
  h->load_budget = 100000000; /* until the config says otherwise */
  init_args_t a = {o.config_path, ds_buf_cstr(&lua_dir)};
  lua_pushcfunction(h->L, init_state);
  lua_pushlightuserdata(h->L, &a);
  load_budget_arm(h);
  int rc = ds_vm_pcall(h->L, 1, 1);
  load_budget_disarm(h);
  if (rc != LUA_OK) {
    char line[512];
    snprintf(err, errlen, "%s", first_line(lua_tostring(h->L, -1), line, sizeof line));
    ds_error("lua", "Lua host start failed: %s", lua_tostring(h->L, -1));
    lua_pop(h->L, 1);
    ds_buf_free(&lua_dir);
    free(root);
    ds_lua_host_shutdown(h);
    uv_run(loop, UV_RUN_NOWAIT);
    ds_lua_host_free(h);
    return NULL;
  }
  ds_buf_t pdir = DS_BUF_INIT;
  const char *cfg_dir = lua_tostring(h->L, -1);
  if (o.plugin_dir) ds_buf_puts(&pdir, o.plugin_dir);
  else if (cfg_dir && cfg_dir[0] == '/') ds_buf_puts(&pdir, cfg_dir);
  else ds_buf_printf(&pdir, "%s/%s", root, cfg_dir ? cfg_dir : "plugins");
  lua_pop(h->L, 1);
  load_plugins(h, ds_buf_cstr(&pdir));
  ds_buf_free(&pdir);
  ds_buf_free(&lua_dir);
  free(root);
  lua_settop(h->L, 0);
  lua_gc(h->L, LUA_GCCOLLECT);
  h->phase = DS_PHASE_RUN;
  ds_streams_add_observer(streams, observer, h);
  run_starts(h);
  return h;
}

void ds_lua_host_stats(const ds_lua_host_t *h, ds_lua_host_stats_t *out) {
  ds_sched_stats_t st;
  ds_sched_stats(h->sched, &st);
  out->tasks_live = st.live;
  out->tasks_killed = st.killed;
  out->hooks_failed = h->hooks_failed;
  out->events_dispatched = h->events_dispatched;
  out->refs = (uint64_t)ds_vm_ref_count(h->vm);
  out->mem_bytes = ds_vm_mem_used(h->vm);
  out->tasks_refused = h->tasks_refused;
  out->plugins_disabled = h->plugins_disabled;
}

void ds_lua_host_shutdown(ds_lua_host_t *h) {
  if (!h || h->phase == DS_PHASE_DOWN) return;
  int was_run = h->phase == DS_PHASE_RUN;
  if (was_run) run_stops(h); /* still the run phase: appends work */
  h->phase = DS_PHASE_DOWN;
  if (was_run) ds_streams_remove_observer(h->streams, observer, h);
  while (h->phead) {
    ds__pending_t *p = h->phead;
    h->phead = p->next;
    free(p);
  }
  h->ptail = NULL;
  ds__stream_close_all(h);
  ds_sched_shutdown(h->sched);
  ds_l_http_shutdown(h->httpc);
  ds_l_ws_shutdown(h->wsc);
  ds__http_close_all(h);
  if (h->gc_timer_open) {
    h->gc_timer_open = 0;
    uv_close((uv_handle_t *)&h->gc_timer, NULL);
  }
  if (h->dispatch_open) {
    if (h->dispatch_active) uv_idle_stop(&h->dispatch);
    h->dispatch_active = 0;
    h->dispatch_open = 0;
    uv_close((uv_handle_t *)&h->dispatch, NULL);
  }
}

int ds_lua_host_free(ds_lua_host_t *h) {
  if (!h) return 0;
  lua_State *L = h->L;
  for (size_t i = 0; i < h->nhooks; i++) {
    ds_vm_unref(L, h->hooks[i].fn_ref);
    free(h->hooks[i].type);
  }
  for (size_t i = 0; i < h->nroutes; i++) {
    ds_vm_unref(L, h->routes[i].fn_ref);
    free(h->routes[i].method);
    free(h->routes[i].prefix);
  }
  for (size_t i = 0; i < h->nplugins; i++) {
    ds_vm_unref(L, h->plugins[i].env_ref);
    free(h->plugins[i].name);
    free(h->plugins[i].file);
  }
  if (h->paths) { /* empty once every task ended; a leftover is a leaked task, reported below */
    for (size_t b = 0; b < DS__PATH_BUCKETS; b++) {
      while (h->paths[b]) {
        ds__pathcount_t *e = h->paths[b];
        h->paths[b] = e->next;
        free(e);
      }
    }
    free(h->paths);
  }
  for (size_t i = 0; i < h->nstarts; i++) ds_vm_unref(L, h->starts[i].fn_ref);
  for (size_t i = 0; i < h->nstops; i++) ds_vm_unref(L, h->stops[i].fn_ref);
  free(h->starts);
  free(h->stops);
  free(h->marks_dir);
  ds_vm_unref(L, h->ds_ref);
  ds_vm_unref(L, h->route_runner_ref);
  ds_sched_stats_t st;
  ds_sched_stats(h->sched, &st);
  long tasks = (long)st.live;
  long refs = ds_vm_free(h->vm);
  ds_sched_free(h->sched);
  refs += ds_l_http_free(h->httpc); /* after the state closed: every Response collected */
  refs += ds_l_ws_free(h->wsc);      /* stage 2 of the lws context destroy (runs the loop) */
  free(h->hooks);
  free(h->routes);
  free(h->plugins);
  free(h);
  return (int)(tasks + refs);
}
