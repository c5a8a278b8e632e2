/* l_task.c - ds.spawn, ds.task, ds.sleep, ds.now_ms, ds.iso_now and the ds.Task handle.
 *
 * ds.Task is an I/O object (habits §4.1): a box holding a retained ds_task_t; the task
 * struct outlives the task until the box is collected. task:cancel() stops a task that
 * is not the running one (its wait is released, its coroutine closed); task:status()
 * is "running" or "ended"; task:on_end(fn) runs fn(ok, msg) in a new task when it ends
 * (not when cancelled). ds.task() is the running task's own handle (nil outside one).
 * Must not: resume anything itself (sched.c does, from the loop).
 */
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "lua/lhost.h"

#define TASK_MT "ds.Task"

typedef struct {
  ds_task_t *t;
} task_box_t;

static int l_spawn(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (h->phase != DS_PHASE_RUN) return luaL_error(L, "ds.spawn is not allowed in the load phase");
  int nargs = lua_gettop(L) - 1;
  task_box_t *box = lua_newuserdatauv(L, sizeof *box, 0); /* [fn args box] */
  box->t = NULL;
  luaL_setmetatable(L, TASK_MT);
  lua_insert(L, 1); /* [box fn args] */
  ds__tctx_t *parent = ds__current_tctx(L);
  ds__spawn_t sp = {.plugin = ds__current_plugin(L), .hook = -1, .route = -1, .capped = 1, .cap_path = 1};
  if (parent && parent->path) { /* a task works for the path its spawner worked for */
    sp.path = parent->path->path;
    sp.path_len = strlen(parent->path->path);
  }
  char why[256];
  ds_task_t *t = ds__spawn(h, L, nargs, &sp, why, sizeof why); /* [box] */
  if (!t) return luaL_error(L, "ds.spawn: %s", why);
  ds_task_retain(t);
  box->t = t;
  return 1;
}

/* ds.task() -> the running task's handle, or nil outside a task. */
static int l_task(lua_State *L) {
  ds_task_t *t = ds_task_current(L);
  if (!t) return 0;
  task_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->t = NULL;
  luaL_setmetatable(L, TASK_MT);
  ds_task_retain(t);
  box->t = t;
  return 1;
}

static int l_task_cancel(lua_State *L) {
  task_box_t *box = luaL_checkudata(L, 1, TASK_MT);
  if (!box->t) return 0;
  int rc = ds_task_cancel(box->t);
  if (rc == DS_EBUSY) return luaL_error(L, "task:cancel(): a task cannot cancel itself (return instead)");
  lua_pushboolean(L, 1);
  return 1;
}

/* task:on_end(fn): once the task ends by returning (fn(true)) or by an error or a kill
 * (fn(false, "<one-line message>")) - not when cancelled - fn runs in a task of its own,
 * for the same plugin and path: what a killed task can no longer do itself (the agent
 * closes the request of a model task that was killed). Returns true, or false when the
 * task already ended. Replaces an earlier one. */
static int l_task_on_end(lua_State *L) {
  task_box_t *box = luaL_checkudata(L, 1, TASK_MT);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!box->t || ds_task_ended(box->t)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  ds__tctx_t *c = ds_task_ud(box->t);
  lua_pushvalue(L, 2);
  int ref = ds_vm_ref(L);
  ds_vm_unref(L, c->on_end_ref);
  c->on_end_ref = ref;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_task_status(lua_State *L) {
  task_box_t *box = luaL_checkudata(L, 1, TASK_MT);
  lua_pushstring(L, box->t && !ds_task_ended(box->t) ? "running" : "ended");
  return 1;
}

static int l_task_gc(lua_State *L) {
  task_box_t *box = luaL_checkudata(L, 1, TASK_MT);
  if (box->t) {
    ds_task_release(box->t);
    box->t = NULL;
  }
  return 0;
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  /* resumed only by the deadline (pushes false): the sleep is over */
  lua_pushboolean(L, 1);
  return 1;
}

static int l_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  ds_task_t *t = ds__check_task(L, "ds.sleep");
  if (ms < 0) ms = 0;
  return ds_task_block(L, t, NULL, NULL, (int64_t)ms, sleep_k, 0);
}

static int l_now_ms(lua_State *L) {
  ds_lua_host_t *h = ds__host_of(L);
  lua_pushinteger(L, (lua_Integer)uv_now(h->loop));
  return 1;
}

static int l_iso_now(lua_State *L) {
  char out[DS_ISO8601_LEN + 1];
  ds_clock_iso8601(ds_clock_wall_ms(), out);
  lua_pushstring(L, out);
  return 1;
}

static const luaL_Reg task_methods[] = {
    {"cancel", l_task_cancel}, {"status", l_task_status}, {"on_end", l_task_on_end}, {NULL, NULL}};
static const luaL_Reg task_meta[] = {{"__gc", l_task_gc}, {NULL, NULL}};
static const luaL_Reg funcs[] = {
    {"spawn", l_spawn}, {"task", l_task}, {"sleep", l_sleep}, {"now_ms", l_now_ms}, {"iso_now", l_iso_now},
    {NULL, NULL}};

void ds__task_open(lua_State *L) {
  /* [ds] */
  luaL_newmetatable(L, TASK_MT); /* [ds mt] */
  luaL_setfuncs(L, task_meta, 0);
  luaL_newlib(L, task_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
