/* sched.h - tasks: Lua coroutines resumed by the uv loop ("cosocket" style).
 *
 * Provides: ds_sched_t, which runs each task (a coroutine) until it finishes or blocks in
 * a yielding binding; the ready queue, drained from a uv_idle handle that is active only
 * while something is ready, at most a time slice per loop iteration (the rest wait for
 * the next one, after the loop polled); per-task deadlines; a budget per resume (vm.h:
 * every coroutine the task creates spends it too, and a task past it is killed, with no
 * pcall or handler able to keep it alive); counted coroutine refs with one release point
 * (task end).
 *
 * The contract for yielding bindings (OpenResty's cosocket shape):
 *   1. t = ds_task_current(L), raise if NULL (not in a task);
 *   2. try the fast path synchronously;
 *   3. otherwise register the wait in the object's wait slot and
 *      `return ds_task_block(L, t, cleanup, ud, timeout_ms, k, kctx);`
 *   4. completion (from any loop callback; no Lua runs there) calls
 *      ds_task_wake(t, retval, ud): on resume retval(co, ud) pushes the results - the
 *      yielded call returns them, or continuation k gets them on its stack.
 * On timeout the scheduler calls cleanup(ud) (unregister the wait) and resumes with the
 * results of ds_task_push_timeout (nil, "timeout", "timeout") - or, when a continuation is
 * given, with a single false, so k can tell. On cancel it calls cleanup(ud), and for a
 * task already woken it calls retval(NULL, ud) so the binding frees what it queued.
 *
 * Threading: loop thread only. Must not: run Lua inside uv callbacks other than the idle
 * drain (where resuming is the point).
 */
#ifndef DS_LUA_SCHED_H
#define DS_LUA_SCHED_H

#include <stdint.h>
#include <uv.h>

#include "lua/vm.h"

typedef struct ds_sched_s ds_sched_t;
typedef struct ds_task_s ds_task_t;

typedef void (*ds_task_cleanup_fn)(void *ud);
/** Pushes results onto co and returns their count; co == NULL means "discard ud". */
typedef int (*ds_task_retval_fn)(lua_State *co, void *ud);
/** Called when a task ends: status LUA_OK, or an error status with the message (with
 *  traceback) at the top of L's stack (L is the main state; pop nothing). The task's
 *  coroutine is already released (a collection run here may free it). */
typedef void (*ds_task_done_fn)(ds_task_t *t, int status, lua_State *L, void *ud);

typedef struct ds_sched_stats_s {
  uint64_t spawned, finished, failed, killed, cancelled, live, resumes;
} ds_sched_stats_t;

ds_sched_t *ds_sched_new(uv_loop_t *loop, ds_vm_t *vm);
/** Work units (vm.h) a task may spend per resume before it is killed (0 = unlimited). */
void ds_sched_set_budget(ds_sched_t *s, uint64_t instructions);
/** Wall-clock milliseconds a resume may last before the task is killed (0 = unlimited). */
void ds_sched_set_time_limit(ds_sched_t *s, uint64_t ms);
/** Cancels every task and closes the idle handle (the caller runs the loop after). */
void ds_sched_shutdown(ds_sched_t *s);
/** Frees the scheduler (after shutdown and the loop ran); returns the tasks leaked. */
long ds_sched_free(ds_sched_t *s);
void ds_sched_stats(const ds_sched_t *s, ds_sched_stats_t *out);

/**
 * Creates a task from the function at the top of L's stack minus nargs (the function and
 * its arguments are popped) and makes it ready; it first runs from the loop, never inside
 * this call. done (may be NULL) is called once when it ends. Returns NULL on OOM or after
 * shutdown (the values are popped anyway).
 */
ds_task_t *ds_sched_spawn(ds_sched_t *s, lua_State *L, int nargs, ds_task_done_fn done, void *ud);
/** Cancels a task that is not running: releases its wait, closes its coroutine (pending
 *  to-be-closed variables run), calls done with status -1. Idempotent after the end.
 *  Returns 0, or DS_EBUSY for the running task. */
int ds_task_cancel(ds_task_t *t);

/** Keeps the task struct alive past its end (for Lua handles); pair with ds_task_release. */
void ds_task_retain(ds_task_t *t);
void ds_task_release(ds_task_t *t);
/** 1 once the task ended (finished, failed, killed or cancelled). */
int ds_task_ended(const ds_task_t *t);
/** Why its last resume's budget was killed (DS_BUDGET_EXCEEDED, DS_BUDGET_MEMORY), or 0. */
int ds_task_killed(const ds_task_t *t);
void *ds_task_ud(const ds_task_t *t);
ds_sched_t *ds_task_sched(const ds_task_t *t);

/** The task whose coroutine is L, or NULL (main thread, a plugin's own coroutine). */
ds_task_t *ds_task_current(lua_State *L);
/** Blocks the running task (see the contract above). timeout_ms < 0: no deadline.
 *  Use as `return ds_task_block(...)`. */
int ds_task_block(lua_State *L, ds_task_t *t, ds_task_cleanup_fn cleanup, void *ud, int64_t timeout_ms,
                  lua_KFunction k, lua_KContext kctx);
/** Makes a blocked task ready; retval(co, ud) will push its results. Never runs Lua. */
void ds_task_wake(ds_task_t *t, ds_task_retval_fn retval, void *ud);
/** Pushes nil, "timeout", "timeout". */
int ds_task_push_timeout(lua_State *co, void *ud);

/* Cooperative slices. A binding whose fast path would return at once (data already
 * queued) may instead let other tasks and I/O go first when the running task has run for
 * DS_TASK_SLICE_MS in this resume: code that streams a backlog through such a binding
 * then yields on its own, long before its time limit (sched.h's budget) would kill it. */
#define DS_TASK_SLICE_MS 10
/** 1 when L is a task that has run for a slice in this resume and can yield. */
int ds_task_due(lua_State *L);
/** Yields the running task for one round; on resume k(L, LUA_YIELD, ctx) runs on the stack
 *  as it was (typically it redoes the call). Use as `return ds_task_pause(L, k, ctx);`. */
int ds_task_pause(lua_State *L, lua_KFunction k, lua_KContext ctx);

#endif
