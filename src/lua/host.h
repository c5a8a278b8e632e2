/* host.h - the Lua host: one Lua 5.4 state on the server's loop, running the agent policy
 * (lua/) and drop-in plugins (plugins/) as coroutine tasks.
 *
 * Provides: start-up (load lua/ modules and plugins in their load phase), the decorator
 * chain (installed as the ds_streams_t observer: each stored record that some hook cares
 * about starts a task), Lua-registered HTTP routes, and orderly shutdown with leak
 * reporting (refs, tasks).
 * Must not: run Lua inside third-party callbacks (curl, lws, llhttp, uv): they enqueue and
 * mark tasks ready; ready tasks resume from the loop. Must not block the HTTP response of
 * the append that triggered a hook.
 */
#ifndef DS_LUA_HOST_H
#define DS_LUA_HOST_H

#include <uv.h>

#include "http/http.h"
#include "stream/streams.h"

typedef struct ds_lua_host_s ds_lua_host_t;

typedef struct ds_lua_host_opts_s {
  const char *config_path; /* config.lua (its `agents` table configures the policy); may be NULL */
  const char *lua_dir;     /* directory holding the policy modules; default "<root>/lua" */
  const char *plugin_dir;  /* default from config, else "<root>/plugins" */
  const char *state_dir;   /* where ds.marks keeps its files (e.g. <data_dir>/agents);
                            * NULL keeps them in memory (the memory store) */
} ds_lua_host_opts_t;

/** Creates the host and runs the load phase. A broken plugin is reported and skipped; a
 *  broken lua/ policy module is fatal (returns NULL with the reason, file:line, in err). */
ds_lua_host_t *ds_lua_host_new(uv_loop_t *loop, ds_streams_t *streams, const ds_lua_host_opts_t *opts,
                               char *err, size_t errlen);
/** Offers a request to Lua routes; returns 1 if a route took it (it will answer), else 0. */
int ds_lua_host_handle(ds_lua_host_t *h, ds_http_req_t *req);
typedef struct ds_lua_host_stats_s {
  uint64_t tasks_live, refs, hooks_failed, events_dispatched, tasks_killed, mem_bytes;
  uint64_t tasks_refused, plugins_disabled; /* spawns over a cap; plugins disabled since start */
} ds_lua_host_stats_t;
/** Counters for /debug/stats and tests (refs and tasks_live return to their baseline
 *  once every hook and request has finished). */
void ds_lua_host_stats(const ds_lua_host_t *h, ds_lua_host_stats_t *out);

/** Runs the ds.on_shutdown functions (the agent closes its requests in flight there,
 *  appending request-cancelled reason "shutdown"), bounded by DS_LUA_SHUTDOWN_MS of wall
 *  clock, then cancels running tasks and closes handles; the caller runs the loop
 *  afterwards. Call it before ending live readers, so they see what was appended. */
#define DS_LUA_SHUTDOWN_MS 1000
void ds_lua_host_shutdown(ds_lua_host_t *h);
/** Frees the state; reports leaked refs/tasks with ds_warn and returns their count. */
int ds_lua_host_free(ds_lua_host_t *h);

#endif
