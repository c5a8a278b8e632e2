/* lhost.h - internals shared by the host (host.c) and its bindings (l_*.c).
 *
 * Provides: the host struct, the registration entry points of each binding module, and
 * the JSON conversion helpers the bindings share (l_json.c).
 * Must not: be included outside src/lua (the public interface is host.h; yielding
 * bindings of other modules use sched.h).
 */
#ifndef DS_LUA_LHOST_H
#define DS_LUA_LHOST_H

#include <stdint.h>

#include "core/buf.h"
#include "lua/host.h"
#include "lua/l_http_client.h"
#include "lua/l_ws.h"
#include "lua/sched.h"
#include "lua/vm.h"

enum { DS_PHASE_LOAD = 0, DS_PHASE_RUN, DS_PHASE_DOWN };

typedef struct ds__hook_s {
  char *type; /* "*" = every event */
  size_t type_len;
  int fn_ref;
  int plugin;
} ds__hook_t;

typedef struct ds__route_s {
  char *method; /* "*" = any */
  char *prefix;
  size_t prefix_len;
  int fn_ref;
  int plugin;
} ds__route_t;

typedef struct ds__plugin_s {
  char *name;
  char *file;
  int errors;
  int disabled;
  int env_ref;    /* its _ENV (cleared when it is disabled, so its memory goes) */
  unsigned tasks; /* live tasks */
  int capped;     /* a spawn was refused and not yet logged as over */
} ds__plugin_t;

/* Live tasks per stream path (for agents.max_tasks_per_path): a small chained hash. */
typedef struct ds__pathcount_s {
  struct ds__pathcount_s *next;
  unsigned n;    /* live tasks counted toward the cap */
  unsigned held; /* other live tasks naming this path (the entry lives while any does) */
  char path[];
} ds__pathcount_t;
#define DS__PATH_BUCKETS 1024

typedef struct ds__tctx_s ds__tctx_t;

/* A function registered with ds.on_start or ds.on_shutdown, and its plugin. */
typedef struct ds__lifecycle_s {
  int fn_ref;
  int plugin;
} ds__lifecycle_t;

typedef struct ds__pending_s ds__pending_t;
typedef struct ds__lsub_s ds__lsub_t;
typedef struct ds__lreq_s ds__lreq_t;

struct ds_lua_host_s {
  uv_loop_t *loop;
  ds_streams_t *streams;
  ds_vm_t *vm;
  lua_State *L;
  ds_sched_t *sched;
  int phase;
  int loading; /* plugin index being loaded (0 = the lua/ policy) */
  int ds_ref;  /* the `ds` module table */
  int route_runner_ref;
  ds__hook_t *hooks;
  size_t nhooks, hooks_cap;
  size_t wildcard_hooks;
  ds__route_t *routes;
  size_t nroutes, routes_cap;
  ds__plugin_t *plugins;
  size_t nplugins, plugins_cap;
  int max_hook_errors;
  unsigned max_tasks_per_plugin, max_tasks_per_path; /* 0 = no cap */
  ds__pathcount_t **paths; /* DS__PATH_BUCKETS buckets, allocated on first use */
  ds__tctx_t *live;        /* every task's context, newest first */
  uint64_t tasks_refused, plugins_disabled;
  uint64_t load_budget;
  ds_budget_t load_bud;     /* the load phase's, while it runs */
  ds_budget_t *load_outer;
  ds__pending_t *phead, *ptail;
  uv_idle_t dispatch;
  int dispatch_open, dispatch_active;
  uv_timer_t gc_timer; /* collects in small steps after a plugin was disabled at the memory cap */
  int gc_timer_open;
  ds__lsub_t *subs; /* live Lua subscriptions */
  ds__lreq_t *reqs; /* HTTP requests owned by Lua routes */
  ds_l_http_t *httpc; /* outbound HTTP for ds.http.request (l_http_client.c) */
  char *marks_dir;    /* ds.marks' files; NULL: kept in memory (l_marks.c) */
  ds__lifecycle_t *starts, *stops; /* ds.on_start / ds.on_shutdown functions */
  size_t nstarts, nstops;
  ds_l_ws_t *wsc;     /* outbound WebSockets for ds.ws.connect (l_ws.c) */
  uint64_t events_seen, events_dispatched, hooks_failed;
};

/** Per-task context (the task's done ud): which plugin and stream path it runs for. */
struct ds__tctx_s {
  ds_lua_host_t *h;
  ds_task_t *task;
  int plugin;
  int hook; /* hook index, -1 if not a hook task */
  int route; /* route index, -1 if not a route task */
  ds__lreq_t *req;
  ds__pathcount_t *path; /* the stream path it works for (hooks: the event's; spawned
                          * tasks inherit their spawner's); NULL for none */
  int cancelling;
  int counted; /* counts toward agents.max_tasks_per_plugin / _per_path */
  int on_end_ref; /* task:on_end(fn): spawned with (ok, message) when it ends, or LUA_NOREF */
  ds__tctx_t *prev, *next; /* h->live */
};

/** What a spawn is for. */
typedef struct ds__spawn_s {
  int plugin;
  int hook;         /* hook index or -1 */
  int route;        /* route index or -1 */
  ds__lreq_t *req;  /* route tasks: their request */
  const char *path; /* stream path or NULL */
  size_t path_len;
  int capped;       /* counts toward, and is refused past, agents.max_tasks_per_plugin */
  int cap_path;     /* refused past agents.max_tasks_per_path too (ds.spawn; a hook event
                     * is refused only per plugin: a burst of events on one path is a
                     * client's doing, a storm the plugin's) */
} ds__spawn_t;

/** The host of a Lua state (kept in the `ds` registry slot). */
ds_lua_host_t *ds__host_of(lua_State *L);
/** Raises unless in the run phase and inside a task; returns the task. */
ds_task_t *ds__check_task(lua_State *L, const char *what);
/** Spawns fn (at top minus nargs) as a task attributed to sp->plugin and sp->path. The
 *  values are popped either way. Returns NULL with the reason in why when refused: the
 *  plugin or the path already has its maximum of live tasks (sp->capped), the Lua memory
 *  cap is reached, or the host is shutting down. */
ds_task_t *ds__spawn(ds_lua_host_t *h, lua_State *L, int nargs, const ds__spawn_t *sp, char *why, size_t whylen);
/** The context of the running task (NULL outside tasks). */
ds__tctx_t *ds__current_tctx(lua_State *L);
/** The plugin the running code belongs to (load phase: the one loading; tasks: theirs). */
int ds__current_plugin(lua_State *L);

/* l_json.c */
void ds__json_open(lua_State *L); /* [ds] -> sets ds.json */
/** Decodes JSON text and pushes the value; returns 0, or -1 with the reason in err. */
int ds__json_push(lua_State *L, const char *s, size_t n, char *err, size_t errlen);
/** Encodes the value at idx into b; returns 0 or -1 with the reason pushed as a string
 *  (never raises for bad values: cycles, inf, functions). */
int ds__json_encode(lua_State *L, int idx, ds_buf_t *b);

/* l_log.c, l_stream.c, l_http.c, l_task.c */
void ds__log_open(lua_State *L);
void ds__stream_open(lua_State *L);
void ds__http_open(lua_State *L);
void ds__task_open(lua_State *L);
void ds__marks_open(lua_State *L);
/** Closes every Lua subscription (host shutdown, before the streams go). */
void ds__stream_close_all(ds_lua_host_t *h);
/** Answers and releases every Lua-owned request (host shutdown). */
void ds__http_close_all(ds_lua_host_t *h);
/** Called when a route task ended. */
void ds__http_task_done(ds__lreq_t *r, int status, lua_State *L);

#endif
