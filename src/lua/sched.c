/* sched.c - tasks (coroutines) resumed from the loop; see sched.h.
 * Must not: resume a task from anywhere but the idle drain; free a task before its timer
 * handle's close callback ran. */
#include "lua/sched.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"

enum { T_READY = 0, T_RUNNING, T_BLOCKED, T_ENDED };

/* One idle round resumes ready tasks for at most this long, then lets the loop poll
 * (the rest stay ready for the next round): however many tasks are ready, I/O is never
 * held up for more than a slice plus one task's budget. */
#define SLICE_NS ((uint64_t)10 * 1000 * 1000)

struct ds_task_s {
  ds_sched_t *s;
  lua_State *co;
  int co_ref;
  int state;
  int first;        /* not started yet: its arguments are on co's stack */
  int nargs;        /* ... and this many of them */
  int k_mode;       /* blocked with a continuation: a timeout resumes with `false` */
  int timer_open;   /* uv_timer initialised and not yet closed */
  unsigned refs;    /* the scheduler's (until the end) + ds_task_retain()s */
  ds_budget_t budget; /* of the current (or last) resume */
  uint64_t resumed_ns; /* when the current resume began */
  ds_task_cleanup_fn cleanup;
  void *cleanup_ud;
  ds_task_retval_fn retval;
  void *retval_ud;
  ds_task_done_fn done;
  void *done_ud;
  uv_timer_t timer;
  ds_task_t *rnext;        /* ready queue */
  ds_task_t *lprev, *lnext; /* live list */
};

struct ds_sched_s {
  uv_loop_t *loop;
  ds_vm_t *vm;
  lua_State *L;
  uv_idle_t idle;
  int idle_open, idle_active, shut;
  uint64_t budget, time_ms;
  ds_task_t *rhead, *rtail;
  size_t rcount;
  ds_task_t *live;
  ds_task_t *current;
  ds_sched_stats_t st;
};

static void on_idle(uv_idle_t *h);

ds_sched_t *ds_sched_new(uv_loop_t *loop, ds_vm_t *vm) {
  ds_sched_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->loop = loop;
  s->vm = vm;
  s->L = ds_vm_state(vm);
  uv_idle_init(loop, &s->idle);
  s->idle.data = s;
  s->idle_open = 1;
  return s;
}

void ds_sched_set_budget(ds_sched_t *s, uint64_t instructions) { s->budget = instructions; }
void ds_sched_set_time_limit(ds_sched_t *s, uint64_t ms) { s->time_ms = ms; }

void ds_sched_stats(const ds_sched_t *s, ds_sched_stats_t *out) { *out = s->st; }

static ds_task_t **extra(lua_State *co) { return (ds_task_t **)lua_getextraspace(co); }

ds_task_t *ds_task_current(lua_State *L) {
  ds_task_t *t = *extra(L);
  if (t && t->co == L && t->state == T_RUNNING) return t;
  return NULL;
}

int ds_task_ended(const ds_task_t *t) { return t->state == T_ENDED; }
int ds_task_killed(const ds_task_t *t) { return t->budget.killed; }
void *ds_task_ud(const ds_task_t *t) { return t->done_ud; }
ds_sched_t *ds_task_sched(const ds_task_t *t) { return t->s; }

static void task_maybe_free(ds_task_t *t) {
  if (t->refs == 0 && !t->timer_open && t->state == T_ENDED) free(t);
}

void ds_task_retain(ds_task_t *t) { t->refs++; }

void ds_task_release(ds_task_t *t) {
  t->refs--;
  task_maybe_free(t);
}

static void on_timer_closed(uv_handle_t *h) {
  ds_task_t *t = h->data;
  t->timer_open = 0;
  task_maybe_free(t);
}

static void ready_push(ds_sched_t *s, ds_task_t *t) {
  t->state = T_READY;
  t->rnext = NULL;
  if (s->rtail) s->rtail->rnext = t;
  else s->rhead = t;
  s->rtail = t;
  s->rcount++;
  if (!s->idle_active && s->idle_open) {
    uv_idle_start(&s->idle, on_idle);
    s->idle_active = 1;
  }
}

static void ready_remove(ds_sched_t *s, ds_task_t *t) {
  ds_task_t *prev = NULL;
  for (ds_task_t *x = s->rhead; x; prev = x, x = x->rnext) {
    if (x != t) continue;
    if (prev) prev->rnext = x->rnext;
    else s->rhead = x->rnext;
    if (s->rtail == x) s->rtail = prev;
    s->rcount--;
    return;
  }
}

/* The one end of every task: release the coroutine ref (its documented release point),
 * report, close the timer. status: LUA_OK, an error status with the message on s->L's
 * top, or -1 for cancelled. */
static void task_end(ds_task_t *t, int status) {
  ds_sched_t *s = t->s;
  t->state = T_ENDED;
  if (t->lprev) t->lprev->lnext = t->lnext;
  else s->live = t->lnext;
  if (t->lnext) t->lnext->lprev = t->lprev;
  t->lprev = t->lnext = NULL;
  s->st.live--;
  if (status == LUA_OK) s->st.finished++;
  else if (status == -1) s->st.cancelled++;
  else s->st.failed++;
  /* the coroutine goes first: what done does (a collection, when a plugin is disabled)
   * must find it unreachable */
  *extra(t->co) = NULL;
  ds_vm_unref(s->L, t->co_ref);
  t->co_ref = LUA_NOREF;
  t->co = NULL;
  if (t->done) t->done(t, status, s->L, t->done_ud);
  if (t->timer_open) uv_close((uv_handle_t *)&t->timer, on_timer_closed);
  ds_task_release(t);
}

ds_task_t *ds_sched_spawn(ds_sched_t *s, lua_State *L, int nargs, ds_task_done_fn done, void *ud) {
  if (s->shut) {
    lua_pop(L, nargs + 1);
    return NULL;
  }
  ds_task_t *t = calloc(1, sizeof *t);
  if (!t) {
    lua_pop(L, nargs + 1);
    return NULL;
  }
  /* [fn args...] */
  lua_State *co = lua_newthread(L); /* [fn args... co] */
  lua_insert(L, -(nargs + 2));      /* [co fn args...] */
  lua_xmove(L, co, nargs + 1);      /* [co]; co: [fn args...] */
  t->co_ref = ds_vm_ref(L);         /* [] */
  t->s = s;
  t->co = co;
  t->first = 1;
  t->nargs = nargs;
  t->refs = 1;
  t->done = done;
  t->done_ud = ud;
  *extra(co) = t;
  uv_timer_init(s->loop, &t->timer);
  t->timer.data = t;
  t->timer_open = 1;
  t->lnext = s->live;
  if (s->live) s->live->lprev = t;
  s->live = t;
  s->st.spawned++;
  s->st.live++;
  ready_push(s, t);
  return t;
}

/* Closes a task's coroutine that will not run again (failed or cancelled): its
 * pending to-be-closed variables' __close handlers run now, protected and under a budget
 * of their own (lua_settop would run them unprotected, and unbounded). */
static void close_thread(ds_sched_t *s, ds_task_t *t) {
  /* A task killed from the hook died with Lua's hooks off (vm.h): its handlers would run
   * unbounded, so they do not run; its stack stays as it is until the thread is
   * collected (C objects on it close in their __gc). */
  if (t->budget.killed) return;
  ds_budget_t b;
  ds_budget_init(&b, "instruction budget", s->budget, t->co);
  ds_budget_set_time(&b, s->time_ms);
  ds_budget_t *outer = ds_vm_enter(s->vm, &b);
  lua_State *was_running = ds_vm_set_running(s->vm, t->co);
  if (lua_resetthread(t->co) != LUA_OK) lua_pop(t->co, 1); /* a __close handler's error */
  lua_settop(t->co, 0);
  ds_vm_set_running(s->vm, was_running);
  ds_vm_leave(s->vm, outer);
}

static void task_resume(ds_sched_t *s, ds_task_t *t) {
  lua_State *co = t->co;
  int nargs;
  if (t->first) {
    t->first = 0;
    nargs = t->nargs;
  } else if (t->retval) {
    ds_task_retval_fn fn = t->retval;
    t->retval = NULL;
    nargs = fn(co, t->retval_ud);
  } else {
    nargs = 0;
  }
  t->state = T_RUNNING;
  /* every resume gets a fresh budget; the threads it creates inherit the vm's hook */
  ds_budget_init(&t->budget, "instruction budget", s->budget, co);
  ds_budget_set_time(&t->budget, s->time_ms);
  ds_budget_t *outer = ds_vm_enter(s->vm, &t->budget);
  lua_State *was_running = ds_vm_set_running(s->vm, co);
  s->current = t;
  s->st.resumes++;
  t->resumed_ns = uv_hrtime();
  int nres = 0;
  int rc = lua_resume(co, NULL, nargs, &nres);
  s->current = NULL;
  ds_vm_set_running(s->vm, was_running);
  ds_vm_leave(s->vm, outer);
  if (t->budget.killed && rc != LUA_OK && rc != LUA_YIELD) s->st.killed++;
  if (rc == LUA_YIELD) {
    lua_pop(co, nres);
    /* a plain coroutine.yield() inside a task: treat as "let others run" */
    if (t->state == T_RUNNING) ready_push(s, t);
    return;
  }
  if (rc == LUA_OK) {
    lua_settop(co, 0);
    task_end(t, LUA_OK);
    return;
  }
  /* Reporting must not fail for lack of memory (a LUA_ERRMEM task is the likely case
   * here, and this runs unprotected): lift the cap while building the message. */
  size_t cap = ds_vm_mem_limit(s->vm);
  ds_vm_set_mem_limit(s->vm, 0);
  if (t->budget.killed) ds_vm_push_kill(co); /* not the "not enough memory" it was thrown as */
  ds_vm_push_traceback(s->L, co); /* [msg] on the main state */
  ds_vm_set_mem_limit(s->vm, cap);
  close_thread(s, t); /* its pending to-be-closed variables */
  task_end(t, rc);
  lua_pop(s->L, 1);
}

static void on_idle(uv_idle_t *h) {
  ds_sched_t *s = h->data;
  /* at most what is ready now: tasks made ready meanwhile run in the next iteration, so
   * I/O callbacks get their turn between rounds (a task that only yields cannot starve
   * the loop) */
  size_t n = s->rcount;
  uint64_t until = uv_hrtime() + SLICE_NS;
  while (n-- > 0 && s->rhead) {
    if (uv_hrtime() > until) break; /* the rest run next round, after the loop polled */
    ds_task_t *t = s->rhead;
    s->rhead = t->rnext;
    if (!s->rhead) s->rtail = NULL;
    t->rnext = NULL;
    s->rcount--;
    task_resume(s, t);
  }
  if (!s->rhead && s->idle_active) {
    uv_idle_stop(&s->idle);
    s->idle_active = 0;
  }
}

int ds_task_push_timeout(lua_State *co, void *ud) {
  (void)ud;
  if (!co) return 0;
  lua_pushnil(co);
  lua_pushliteral(co, "timeout");
  lua_pushliteral(co, "timeout");
  return 3;
}

static int push_false(lua_State *co, void *ud) {
  (void)ud;
  if (!co) return 0;
  lua_pushboolean(co, 0);
  return 1;
}

static void on_deadline(uv_timer_t *h) {
  ds_task_t *t = h->data;
  if (t->state != T_BLOCKED) return;
  ds_task_cleanup_fn c = t->cleanup;
  t->cleanup = NULL;
  if (c) c(t->cleanup_ud);
  t->retval = t->k_mode ? push_false : ds_task_push_timeout;
  t->retval_ud = NULL;
  ready_push(t->s, t);
}

int ds_task_block(lua_State *L, ds_task_t *t, ds_task_cleanup_fn cleanup, void *ud, int64_t timeout_ms,
                  lua_KFunction k, lua_KContext kctx) {
  if (!lua_isyieldable(L)) {
    if (cleanup) cleanup(ud);
    return luaL_error(L, "cannot block here (inside a metamethod or iterator called from C)");
  }
  t->state = T_BLOCKED;
  t->cleanup = cleanup;
  t->cleanup_ud = ud;
  t->k_mode = k != NULL;
  if (timeout_ms >= 0) uv_timer_start(&t->timer, on_deadline, (uint64_t)timeout_ms, 0);
  if (k) return lua_yieldk(L, 0, kctx, k);
  return lua_yield(L, 0);
}

int ds_task_due(lua_State *L) {
  ds_task_t *t = ds_task_current(L);
  return t && lua_isyieldable(L) && uv_hrtime() - t->resumed_ns > (uint64_t)DS_TASK_SLICE_MS * 1000000u;
}

int ds_task_pause(lua_State *L, lua_KFunction k, lua_KContext ctx) {
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "ds_task_pause outside a task");
  /* task_resume sees the yield of a task no longer RUNNING and leaves it queued */
  ready_push(t->s, t);
  return lua_yieldk(L, 0, ctx, k);
}

void ds_task_wake(ds_task_t *t, ds_task_retval_fn retval, void *ud) {
  if (t->state != T_BLOCKED) {
    if (retval) retval(NULL, ud);
    return;
  }
  uv_timer_stop(&t->timer);
  t->cleanup = NULL;
  t->retval = retval;
  t->retval_ud = ud;
  ready_push(t->s, t);
}

int ds_task_cancel(ds_task_t *t) {
  if (t->state == T_ENDED) return 0;
  if (t->state == T_RUNNING) return DS_EBUSY;
  ds_sched_t *s = t->s;
  if (t->state == T_BLOCKED) {
    uv_timer_stop(&t->timer);
    ds_task_cleanup_fn c = t->cleanup;
    t->cleanup = NULL;
    if (c) c(t->cleanup_ud);
  } else { /* ready */
    ready_remove(s, t);
    if (t->retval) {
      ds_task_retval_fn fn = t->retval;
      t->retval = NULL;
      fn(NULL, t->retval_ud);
    }
  }
  /* close the coroutine: pending to-be-closed variables run now */
  t->state = T_ENDED; /* no binding may block it while it closes */
  close_thread(s, t);
  t->state = T_BLOCKED;
  task_end(t, -1);
  return 0;
}

void ds_sched_shutdown(ds_sched_t *s) {
  s->shut = 1;
  while (s->live) {
    ds_task_t *t = s->live;
    if (ds_task_cancel(t) != 0) break; /* only possible from inside a task: a host bug */
  }
  if (s->idle_open) {
    if (s->idle_active) uv_idle_stop(&s->idle);
    s->idle_active = 0;
    s->idle_open = 0;
    uv_close((uv_handle_t *)&s->idle, NULL);
  }
}

long ds_sched_free(ds_sched_t *s) {
  if (!s) return 0;
  long leaked = (long)s->st.live;
  if (leaked) ds_warn("lua", "%ld task(s) still alive at shutdown", leaked);
  free(s);
  return leaked;
}
