/* test_sched.c - the Lua scheduler and VM: tasks resumed from the loop, blocking and
 * waking, deadlines, cancel, the instruction budget, counted refs, clean loop close.
 * Must not: use sockets or the server; each test has its own loop and state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "lua/sched.h"
#include "lua/vm.h"

typedef struct {
  uv_loop_t loop;
  ds_vm_t *vm;
  lua_State *L;
  ds_sched_t *s;
  int done_ok, done_err, done_cancel;
  char last_err[512];
  /* the one wait slot of the test binding wait() */
  ds_task_t *waiter;
  int cleanups;
  uv_timer_t waker;
} fx_t;

static fx_t *G;

static void on_done(ds_task_t *t, int status, lua_State *L, void *ud) {
  (void)t;
  fx_t *f = ud;
  if (status == LUA_OK) f->done_ok++;
  else if (status == -1) f->done_cancel++;
  else {
    f->done_err++;
    snprintf(f->last_err, sizeof f->last_err, "%s", lua_tostring(L, -1));
  }
}

static int sleep_k(lua_State *L, int st, lua_KContext c) {
  (void)st;
  (void)c;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_sleep(lua_State *L) {
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "not in a task");
  return ds_task_block(L, t, NULL, NULL, luaL_checkinteger(L, 1), sleep_k, 0);
}

static void wait_cleanup(void *ud) {
  fx_t *f = ud;
  f->waiter = NULL;
  f->cleanups++;
}

/* wait(timeout): blocks until wake_soon() fires or the timeout */
static int l_wait(lua_State *L) {
  ds_task_t *t = ds_task_current(L);
  if (!t) return luaL_error(L, "not in a task");
  if (G->waiter) {
    lua_pushnil(L);
    lua_pushliteral(L, "busy");
    return 2;
  }
  G->waiter = t;
  return ds_task_block(L, t, wait_cleanup, G, luaL_optinteger(L, 1, -1), NULL, 0);
}

static int push_42(lua_State *co, void *ud) {
  (void)ud;
  if (!co) return 0;
  lua_pushinteger(co, 42);
  lua_pushliteral(co, "woken");
  return 2;
}

static void on_waker(uv_timer_t *tm) {
  fx_t *f = tm->data;
  if (f->waiter) {
    ds_task_t *t = f->waiter;
    f->waiter = NULL;
    ds_task_wake(t, push_42, NULL);
  }
}

static int l_wake_soon(lua_State *L) {
  uv_timer_start(&G->waker, on_waker, (uint64_t)luaL_optinteger(L, 1, 1), 0);
  return 0;
}

/* fast(): a binding with a fast path that lets others go first once the task used its slice */
static int l_fast(lua_State *L);
static int l_fast_k(lua_State *L, int st, lua_KContext c) {
  (void)st;
  (void)c;
  return l_fast(L);
}
static int l_fast(lua_State *L) {
  if (ds_task_due(L)) return ds_task_pause(L, l_fast_k, 0);
  lua_pushinteger(L, 7);
  return 1;
}

static int l_in_task(lua_State *L) {
  lua_pushboolean(L, ds_task_current(L) != NULL);
  return 1;
}

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->vm = ds_vm_new(64u << 20);
  assert_non_null(f->vm);
  f->L = ds_vm_state(f->vm);
  f->s = ds_sched_new(&f->loop, f->vm);
  uv_timer_init(&f->loop, &f->waker);
  f->waker.data = f;
  lua_register(f->L, "sleep", l_sleep);
  lua_register(f->L, "wait", l_wait);
  lua_register(f->L, "wake_soon", l_wake_soon);
  lua_register(f->L, "in_task", l_in_task);
  lua_register(f->L, "fast", l_fast);
  lua_newtable(f->L);
  lua_setglobal(f->L, "log");
  G = f;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_sched_shutdown(f->s);
  uv_close((uv_handle_t *)&f->waker, NULL);
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(lua_gettop(f->L), 0);
  assert_int_equal(ds_vm_free(f->vm), 0);
  assert_int_equal(ds_sched_free(f->s), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

/* Spawns the chunk `code` as a task (function(...) body). */
static ds_task_t *spawn(fx_t *f, const char *code) {
  assert_int_equal(luaL_loadstring(f->L, code), LUA_OK);
  ds_task_t *t = ds_sched_spawn(f->s, f->L, 0, on_done, f);
  assert_non_null(t);
  return t;
}

static void run(fx_t *f) { uv_run(&f->loop, UV_RUN_DEFAULT); }

static void test_spawn_runs_from_loop(void **state) {
  fx_t *f = *state;
  luaL_dostring(f->L, "order = {}");
  spawn(f, "order[#order+1] = 'a'; assert(in_task())");
  spawn(f, "order[#order+1] = 'b'");
  /* nothing ran inside spawn */
  luaL_dostring(f->L, "n_before = #order");
  lua_getglobal(f->L, "n_before");
  assert_int_equal(lua_tointeger(f->L, -1), 0);
  lua_pop(f->L, 1);
  run(f);
  assert_int_equal(f->done_ok, 2);
  assert_int_equal(luaL_dostring(f->L, "assert(table.concat(order) == 'ab')"), LUA_OK);
  assert_false(ds_task_current(f->L));
  ds_sched_stats_t st;
  ds_sched_stats(f->s, &st);
  assert_int_equal(st.live, 0);
  assert_int_equal(ds_vm_ref_count(f->vm), 0);
}

static void test_sleep_orders_by_deadline(void **state) {
  fx_t *f = *state;
  luaL_dostring(f->L, "order = {}");
  spawn(f, "sleep(30); order[#order+1] = 'slow'");
  spawn(f, "assert(sleep(5) == true); order[#order+1] = 'fast'");
  run(f);
  assert_int_equal(f->done_ok, 2);
  assert_int_equal(luaL_dostring(f->L, "assert(table.concat(order, ',') == 'fast,slow')"), LUA_OK);
}

static void test_wake_delivers_values(void **state) {
  fx_t *f = *state;
  spawn(f, "wake_soon(1); local v, w = wait(-1); assert(v == 42 and w == 'woken'); result = v");
  run(f);
  assert_int_equal(f->done_ok, 1);
  assert_int_equal(f->cleanups, 0);
  lua_getglobal(f->L, "result");
  assert_int_equal(lua_tointeger(f->L, -1), 42);
  lua_pop(f->L, 1);
}

static void test_timeout_runs_cleanup(void **state) {
  fx_t *f = *state;
  spawn(f, "local v, msg, code = wait(5); assert(v == nil and msg == 'timeout' and code == 'timeout')");
  run(f);
  assert_int_equal(f->done_ok, 1);
  assert_int_equal(f->cleanups, 1);
  assert_null(f->waiter);
}

static void test_cancel_blocked_task(void **state) {
  fx_t *f = *state;
  luaL_dostring(f->L, "closed = false");
  ds_task_t *t = spawn(f, "local c <close> = setmetatable({}, {__close = function() closed = true end}); wait(-1); error('not reached')");
  ds_task_retain(t);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_ptr_equal(f->waiter, t);
  assert_int_equal(ds_task_cancel(t), 0);
  assert_int_equal(ds_task_cancel(t), 0); /* idempotent */
  assert_true(ds_task_ended(t));
  ds_task_release(t);
  assert_int_equal(f->cleanups, 1);
  assert_int_equal(f->done_cancel, 1);
  assert_int_equal(f->done_err, 0);
  assert_int_equal(luaL_dostring(f->L, "assert(closed == true)"), LUA_OK);
  run(f);
  assert_int_equal(ds_vm_ref_count(f->vm), 0);
}

static void test_cancel_ready_task(void **state) {
  fx_t *f = *state;
  ds_task_t *t = spawn(f, "error('never runs')");
  assert_int_equal(ds_task_cancel(t), 0);
  run(f);
  assert_int_equal(f->done_cancel, 1);
  assert_int_equal(f->done_err, 0);
}

static void test_error_has_file_line(void **state) {
  fx_t *f = *state;
  static const char bad[] = "local x = 1\nerror('boom')\n";
  assert_int_equal(luaL_loadbuffer(f->L, bad, strlen(bad), "@plugins/bad.lua"), LUA_OK);
  assert_non_null(ds_sched_spawn(f->s, f->L, 0, on_done, f));
  spawn(f, "ok_after = true");
  run(f);
  assert_int_equal(f->done_err, 1);
  assert_int_equal(f->done_ok, 1);
  assert_non_null(strstr(f->last_err, "plugins/bad.lua:2: boom"));
  assert_non_null(strstr(f->last_err, "traceback"));
}

static void test_budget_kills_runaway_even_under_pcall(void **state) {
  fx_t *f = *state;
  ds_sched_set_budget(f->s, 200000);
  static const char loop[] = "while true do pcall(function() while true do end end) end\n";
  assert_int_equal(luaL_loadbuffer(f->L, loop, strlen(loop), "@plugins/loop.lua"), LUA_OK);
  assert_non_null(ds_sched_spawn(f->s, f->L, 0, on_done, f));
  spawn(f, "sleep(1); survivor = true");
  run(f);
  assert_int_equal(f->done_err, 1);
  assert_int_equal(f->done_ok, 1);
  if (!strstr(f->last_err, "plugins/loop.lua:1:") || !strstr(f->last_err, "instruction budget exceeded"))
    fail_msg("got: %s", f->last_err);
  ds_sched_stats_t st;
  ds_sched_stats(f->s, &st);
  assert_int_equal(st.killed, 1);
  assert_int_equal(luaL_dostring(f->L, "assert(survivor)"), LUA_OK);
}

static void test_budget_is_per_resume(void **state) {
  fx_t *f = *state;
  ds_sched_set_budget(f->s, 200000);
  /* lots of work in total, but it yields often */
  spawn(f, "for i = 1, 20 do local x = 0; for j = 1, 20000 do x = x + j end; sleep(0) end; fine = true");
  run(f);
  assert_int_equal(f->done_ok, 1);
  assert_int_equal(f->done_err, 0);
}

static int count_idle_rounds;
static void on_check(uv_check_t *h) {
  (void)h;
  count_idle_rounds++;
}

/* A task that only ever yields must not keep one loop iteration forever. */
static void test_plain_yield_lets_the_loop_turn(void **state) {
  fx_t *f = *state;
  static uv_check_t chk;
  uv_check_init(&f->loop, &chk);
  uv_check_start(&chk, on_check);
  count_idle_rounds = 0;
  ds_task_t *t = spawn(f, "while true do coroutine.yield() end");
  for (int i = 0; i < 5; i++) uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_true(count_idle_rounds >= 5);
  assert_int_equal(ds_task_cancel(t), 0);
  assert_int_equal(f->done_cancel, 1);
  uv_close((uv_handle_t *)&chk, NULL);
}

static void test_nested_coroutine_is_not_a_task(void **state) {
  fx_t *f = *state;
  spawn(f, "local co = coroutine.wrap(function() return in_task() end); inner = co(); outer = in_task()");
  run(f);
  assert_int_equal(luaL_dostring(f->L, "assert(inner == false and outer == true)"), LUA_OK);
}

static void test_shutdown_cancels_everything(void **state) {
  fx_t *f = *state;
  spawn(f, "wait(-1)");
  spawn(f, "sleep(100000)");
  spawn(f, "while true do sleep(1) end");
  uv_run(&f->loop, UV_RUN_NOWAIT);
  ds_sched_shutdown(f->s);
  assert_int_equal(f->done_cancel, 3);
  assert_int_equal(f->cleanups, 1);
  /* spawning after shutdown is refused and leaves the stack balanced */
  luaL_loadstring(f->L, "return 1");
  assert_null(ds_sched_spawn(f->s, f->L, 0, on_done, f));
  assert_int_equal(lua_gettop(f->L), 0);
}

static void test_refs_are_counted(void **state) {
  fx_t *f = *state;
  lua_pushinteger(f->L, 1);
  int r = ds_vm_ref(f->L);
  assert_int_equal(ds_vm_ref_count(f->vm), 1);
  ds_vm_unref(f->L, r);
  ds_vm_unref(f->L, LUA_NOREF);
  assert_int_equal(ds_vm_ref_count(f->vm), 0);
}

static void test_memory_cap_is_an_error_not_an_abort(void **state) {
  fx_t *f = *state;
  ds_vm_set_mem_limit(f->vm, ds_vm_mem_used(f->vm) + (1u << 20));
  spawn(f, "local t = {} for i = 1, 1e7 do t[i] = ('x'):rep(100) .. i end");
  run(f);
  assert_int_equal(f->done_err, 1);
  if (!strstr(f->last_err, "memory limit exceeded") && !strstr(f->last_err, "not enough memory"))
    fail_msg("got: %s", f->last_err);
  ds_vm_set_mem_limit(f->vm, 0);
  lua_gc(f->L, LUA_GCCOLLECT);
}

/* ---- every escape route of the budget (issue 12, item 2) ---- */

/* Runs `code` as a task under a small budget beside a survivor that sleeps through it;
 * the runaway must be killed with `want` in its message and the survivor must finish. */
static void expect_killed(fx_t *f, const char *code, const char *want) {
  f->done_ok = f->done_err = 0;
  f->last_err[0] = 0;
  ds_sched_set_budget(f->s, 200000);
  assert_int_equal(luaL_loadbuffer(f->L, code, strlen(code), "@plugins/escape.lua"), LUA_OK);
  assert_non_null(ds_sched_spawn(f->s, f->L, 0, on_done, f));
  spawn(f, "sleep(1); survivor = (survivor or 0) + 1");
  run(f);
  if (f->done_err != 1 || f->done_ok != 1 || !strstr(f->last_err, want))
    fail_msg("code %s: ok=%d err=%d, got: %s", code, f->done_ok, f->done_err, f->last_err);
}

static void test_budget_covers_nested_coroutines(void **state) {
  fx_t *f = *state;
  expect_killed(f, "coroutine.wrap(function() while true do end end)()", "instruction budget exceeded");
  expect_killed(f,
                "local co = coroutine.create(function() while true do pcall(function() while true do end end) end end)\n"
                "while true do pcall(coroutine.resume, co) end",
                "instruction budget exceeded");
  /* a coroutine that keeps yielding: each resume is cheap, the loop around it is not */
  expect_killed(f, "local co = coroutine.wrap(function() while true do coroutine.yield(1) end end)\n"
                   "while true do co() end",
                "instruction budget exceeded");
  /* three levels deep, the kill is not caught on the way up */
  expect_killed(f,
                "local function deep(n) if n == 0 then while true do end end\n"
                "  local ok, e = coroutine.resume(coroutine.create(deep), n - 1); return ok, e end\n"
                "while true do pcall(deep, 3) end",
                "instruction budget exceeded");
  ds_sched_stats_t st;
  ds_sched_stats(f->s, &st);
  assert_int_equal(st.killed, 4);
}

static void test_budget_kill_passes_error_handlers(void **state) {
  fx_t *f = *state;
  /* the handler runs after an ordinary error and never returns */
  expect_killed(f, "xpcall(error, function() while true do end end)", "instruction budget exceeded");
  expect_killed(f, "while true do xpcall(error, function() while true do end end) end", "instruction budget exceeded");
  /* the handler of the kill itself: it must not run hook-free */
  expect_killed(f, "xpcall(function() while true do end end, function() while true do end end)",
                "instruction budget exceeded");
  expect_killed(f,
                "xpcall(function() xpcall(function() while true do end end, function() while true do end end) end,\n"
                "  function() while true do end end)",
                "instruction budget exceeded");
  /* a __close handler that loops, run by the unwinding of the kill */
  expect_killed(f,
                "local c <close> = setmetatable({}, {__close = function() while true do end end})\n"
                "while true do end",
                "instruction budget exceeded");
  /* an error object whose __tostring loops: reporting must not run it */
  expect_killed(f, "error(setmetatable({}, {__tostring = function() while true do end end}))", "table value");
}

static void test_pathological_patterns_are_killed(void **state) {
  fx_t *f = *state;
  static const char *const calls[] = {
      "string.find(s, p)", "string.match(s, p)", "string.gsub(s, p, 'x')",
      "for x in string.gmatch(s, p) do end", "s:find(p, 1)",
  };
  for (size_t i = 0; i < sizeof calls / sizeof *calls; i++) {
    char code[256];
    snprintf(code, sizeof code, "local s = string.rep('a', 30) .. 'b'\nlocal p = string.rep('a*', 20) .. 'c'\n%s",
             calls[i]);
    expect_killed(f, code, "instruction budget exceeded");
  }
  /* patterns still work, and cost only what they do (a few units per subject byte) */
  ds_sched_set_budget(f->s, 1000000);
  spawn(f, "assert(('hello world'):match('(%w+) (%w+)') == 'hello')\n"
           "assert(select(2, ('a,b,,c'):gsub(',', ';')) == 3)\n"
           "local s = string.rep('ab', 20000); assert(#s:gsub('b', '') == 20000)");
  f->done_ok = 0;
  run(f);
  assert_int_equal(f->done_ok, 1);
}

static void test_c_loops_are_charged(void **state) {
  fx_t *f = *state;
  /* used to loop 2^62 times without allocating a byte */
  spawn(f, "assert(string.rep('', 2^62) == '' and string.rep('', 10, '') == '')");
  f->done_ok = 0;
  run(f);
  assert_int_equal(f->done_ok, 1);
  expect_killed(f, "local t = {} for i = 1, 1e6 do table.insert(t, 1, i) end", "instruction budget exceeded");
  expect_killed(f, "table.move({}, 1, math.maxinteger - 1, 2)", "instruction budget exceeded");
  expect_killed(f, "table.concat({}, '', 1, 1e12)", "instruction budget exceeded");
  expect_killed(f, "local t = {} for i = 1, 3e4 do t[i] = i end while true do table.sort(t) end",
                "instruction budget exceeded");
  /* one instruction copying a megabyte costs what the copy does */
  expect_killed(f, "local s = string.rep('x', 1 << 20) while true do local y = s .. '!' end",
                "instruction budget exceeded");
  expect_killed(f, "local s = string.rep('x', 1 << 20) while true do local n = utf8.len(s) end",
                "instruction budget exceeded");
}

static void test_memory_kill_is_not_swallowed(void **state) {
  fx_t *f = *state;
  ds_vm_set_mem_limit(f->vm, ds_vm_mem_used(f->vm) + (4u << 20));
  /* without a budget on instructions: only the memory kill can stop it */
  ds_sched_set_budget(f->s, 0);
  spawn(f, "hog = {} while true do pcall(function() hog[#hog + 1] = {} end) end");
  spawn(f, "sleep(1); survivor = 1");
  run(f);
  assert_int_equal(f->done_err, 1);
  assert_int_equal(f->done_ok, 1);
  if (!strstr(f->last_err, "memory limit exceeded")) fail_msg("got: %s", f->last_err);
  assert_int_equal(luaL_dostring(f->L, "hog = nil"), LUA_OK);
  ds_vm_set_mem_limit(f->vm, 0);
  lua_gc(f->L, LUA_GCCOLLECT);
}

/* A task's coroutine belongs to the scheduler: Lua may not resume or close it. */
static void test_task_coroutine_is_not_lua_s(void **state) {
  fx_t *f = *state;
  spawn(f, "victim = coroutine.running(); sleep(20); victim_done = true");
  spawn(f, "local ok, e = pcall(coroutine.resume, victim); assert(not ok and e:find('scheduler'), e)\n"
           "ok, e = pcall(coroutine.close, victim); assert(not ok and e:find('cancel the task'), e)");
  run(f);
  assert_int_equal(f->done_ok, 2);
  assert_int_equal(f->done_err, 0);
  assert_int_equal(luaL_dostring(f->L, "assert(victim_done); victim = nil"), LUA_OK);
}

/* A binding whose data is ready still lets the loop turn once the task has run for a
 * slice (so streaming a backlog never meets the time limit); before that it answers at
 * once. Measured in CPU time spent, so it holds on any machine speed. */
static void test_fast_path_pauses_after_a_slice(void **state) {
  fx_t *f = *state;
  spawn(f, "assert(fast() == 7)\n"
           "local t0 = os.clock() while os.clock() - t0 < 0.015 do end\n"
           "assert(fast() == 7)\n"
           "done_fast = true");
  ds_sched_stats_t before, after;
  ds_sched_stats(f->s, &before);
  run(f);
  ds_sched_stats(f->s, &after);
  assert_int_equal(f->done_ok, 1);
  assert_int_equal(after.resumes - before.resumes, 2); /* the second fast() paused once */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_spawn_runs_from_loop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sleep_orders_by_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wake_delivers_values, setup, teardown),
      cmocka_unit_test_setup_teardown(test_timeout_runs_cleanup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_blocked_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_ready_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_has_file_line, setup, teardown),
      cmocka_unit_test_setup_teardown(test_budget_kills_runaway_even_under_pcall, setup, teardown),
      cmocka_unit_test_setup_teardown(test_budget_is_per_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plain_yield_lets_the_loop_turn, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nested_coroutine_is_not_a_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_cancels_everything, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refs_are_counted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_memory_cap_is_an_error_not_an_abort, setup, teardown),
      cmocka_unit_test_setup_teardown(test_budget_covers_nested_coroutines, setup, teardown),
      cmocka_unit_test_setup_teardown(test_budget_kill_passes_error_handlers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pathological_patterns_are_killed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_c_loops_are_charged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_memory_kill_is_not_swallowed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_coroutine_is_not_lua_s, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fast_path_pauses_after_a_slice, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
