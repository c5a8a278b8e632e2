/* test_l_ws.c - cmocka tests of the `ds.ws` Lua binding (connect/send/receive/close).
 *
 * Provides: a Lua state with the scheduler and the binding installed as global `ws`, Lua
 * snippets run as tasks against tests/net/ws_peer.py (python3-websockets under
 * /usr/bin/python3, started here on 127.0.0.1): echo in order, receive timeout that keeps
 * the connection, ping/pong, peer close and drop reported with codes, refused / 401 /
 * connect timeout / bad URL, close and __close idempotent with the box answering
 * "closed", task cancellation while receiving, connections alive at shutdown, misuse.
 * Each test ends with no WebSocket object alive, no task left and uv_loop_close() == 0.
 * Must not: sleep for fixed times (loop runs have deadlines).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "lua/l_ws.h"
#include "lua/sched.h"
#include "lua/vm.h"

static pid_t g_pid;
static int g_port;

static int start_peer(void **state) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  g_pid = fork();
  if (g_pid < 0) return -1;
  if (g_pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl("/usr/bin/python3", "python3", DS_SOURCE_DIR "/tests/net/ws_peer.py", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  char line[64] = "";
  int ok = fgets(line, sizeof line, f) && sscanf(line, "PORT=%d", &g_port) == 1;
  fclose(f);
  return ok ? 0 : -1;
}

static int stop_peer(void **state) {
  kill(g_pid, SIGTERM);
  waitpid(g_pid, NULL, 0);
  return 0;
}

typedef struct {
  uv_loop_t loop;
  ds_vm_t *vm;
  ds_sched_t *sched;
  ds_l_ws_t *ws;
  lua_State *L;
} fx_t;

typedef struct {
  int done;
  int status;
  char err[2048];
} result_t;

static void on_task_done(ds_task_t *t, int status, lua_State *L, void *ud) {
  result_t *r = ud;
  r->done = 1;
  r->status = status;
  if (status != LUA_OK && status != -1) snprintf(r->err, sizeof r->err, "%s", lua_tostring(L, -1));
}

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->vm = ds_vm_new(0);
  f->sched = ds_sched_new(&f->loop, f->vm);
  f->ws = ds_l_ws_new(&f->loop);
  assert_non_null(f->ws);
  f->L = ds_vm_state(f->vm);
  lua_newtable(f->L);
  ds_l_ws_open(f->L, f->ws);
  lua_setglobal(f->L, "ws");
  lua_pushfstring(f->L, "ws://127.0.0.1:%d", g_port);
  lua_setglobal(f->L, "BASE");
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_sched_shutdown(f->sched);
  ds_l_ws_shutdown(f->ws);
  uint64_t end = uv_now(&f->loop) + 5000;
  while (uv_run(&f->loop, UV_RUN_NOWAIT) != 0 && uv_now(&f->loop) < end) uv_update_time(&f->loop);
  ds_sched_stats_t st;
  ds_sched_stats(f->sched, &st);
  assert_int_equal(st.live, 0);
  assert_int_equal(ds_vm_free(f->vm), 0);
  assert_int_equal(ds_sched_free(f->sched), 0);
  assert_int_equal(ds_l_ws_free(f->ws), 0); /* stage 2 of the lws destroy */
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

static ds_task_t *spawn(fx_t *f, const char *code, result_t *r) {
  if (luaL_loadstring(f->L, code) != LUA_OK) fail_msg("load: %s", lua_tostring(f->L, -1));
  ds_task_t *t = ds_sched_spawn(f->sched, f->L, 0, on_task_done, r);
  assert_non_null(t);
  return t;
}

static void run_until(fx_t *f, int *flag) {
  uint64_t end = uv_now(&f->loop) + 20000;
  while (!*flag) {
    if (uv_now(&f->loop) > end) fail_msg("did not finish in time");
    uv_run(&f->loop, UV_RUN_ONCE);
    uv_update_time(&f->loop);
  }
}

static void run_lua(fx_t *f, const char *code) {
  result_t r = {0};
  spawn(f, code, &r);
  run_until(f, &r.done);
  if (r.status != LUA_OK) fail_msg("task failed: %s", r.err);
}

static long live(fx_t *f) {
  lua_gc(f->L, LUA_GCCOLLECT);
  luaL_dostring(f->L, "return ws.stats().live");
  long n = (long)lua_tointeger(f->L, -1);
  lua_pop(f->L, 1);
  return n;
}

static void test_echo(void **state) {
  fx_t *f = *state;
  run_lua(f,
          "local c, err, code = ws.connect{url = BASE .. '/headers', headers = {Authorization = 'Bearer t', ['X-Test'] = '1'}}\n"
          "assert(c, tostring(err) .. ' ' .. tostring(code))\n"
          "assert(c:state() == 'open')\n"
          "assert(c:receive(5000) == 'Bearer t|1')\n"
          "for i = 1, 5 do assert(c:send('m' .. i) == true) end\n"
          "for i = 1, 5 do local m = c:receive(5000) assert(m == 'm' .. i, tostring(m)) end\n"
          "assert(c:ping()) local n = 0\n"
          "while c:pongs() == 0 and n < 100 do c:send('p') c:receive(5000) n = n + 1 end\n"
          "assert(c:pongs() >= 1)\n"
          "assert(c:error() == nil)\n"
          "c:close() c:close()\n"
          "assert(c:state() == 'closed')\n"
          "local a, b, d = c:receive(10) assert(a == nil and b == 'closed' and d == 'closed')\n"
          "a, b, d = c:send('x') assert(a == nil and b == 'closed' and d == 'closed')\n"
          "assert(tostring(c):find('closed'))\n");
  assert_int_equal(live(f), 0);
}

static void test_receive_timeout_keeps_connection(void **state) {
  fx_t *f = *state;
  run_lua(f,
          "local c = assert(ws.connect{url = BASE .. '/echo'})\n"
          "local a, b, d = c:receive(30)\n"
          "assert(a == nil and b == 'timeout' and d == 'timeout', tostring(b))\n"
          "assert(c:send('still here'))\n"
          "assert(c:receive(5000) == 'still here')\n"
          "do local c2 <close> = assert(ws.connect{url = BASE .. '/echo'}) end\n");
  assert_int_equal(live(f), 0); /* the task ended: its locals were collected (__gc closes) */
}

static void test_peer_close_and_drop(void **state) {
  fx_t *f = *state;
  run_lua(f,
          "local c = assert(ws.connect{url = BASE .. '/close'})\n"
          "assert(c:send('x'))\n"
          "assert(c:receive(5000) == 'x')\n"
          "local a, msg, code = c:receive(5000)\n"
          "assert(a == nil and code == 'ECLOSED', tostring(code))\n"
          "assert(msg:find('4001'), msg)\n"
          "assert(c:state() == 'closed')\n"
          "local m2, c2 = c:error() assert(c2 == 'ECLOSED')\n"
          "a, msg, code = c:receive(5000) assert(code == 'ECLOSED')\n"
          "a, msg, code = c:send('y') assert(a == nil and code == 'ECLOSED', tostring(code))\n"
          "c:close()\n"
          "local d = assert(ws.connect{url = BASE .. '/drop'})\n"
          "assert(d:send('z'))\n"
          "assert(d:receive(5000) == 'z')\n"
          "a, msg, code = d:receive(5000)\n"
          "assert(a == nil and code == 'ECLOSED', tostring(code))\n"
          "d:close()\n");
  assert_int_equal(live(f), 0);
}

static void test_connect_failures(void **state) {
  fx_t *f = *state;
  run_lua(f,
          "local c, msg, code, status = ws.connect{url = BASE .. '/reject'}\n"
          "assert(c == nil and code == 'EHANDSHAKE' and status == 401, tostring(code))\n"
          "assert(msg:find('401'))\n"
          "c, msg, code = ws.connect{url = 'ws://127.0.0.1:1/'}\n"
          "assert(c == nil and code == 'ECONNREFUSED', tostring(code))\n"
          "assert(not msg:find('\\n'))\n"
          "c, msg, code = ws.connect{url = BASE .. '/stall', timeout_ms = 200}\n"
          "assert(c == nil and code == 'ETIMEDOUT', tostring(code))\n"
          "c, msg, code = ws.connect{url = 'http://127.0.0.1/'}\n"
          "assert(c == nil and code == 'EINVAL', tostring(code))\n"
          "c, msg, code = ws.connect{url = BASE .. '/big?n=3000', max_message = 100}\n"
          "if c then local a, m, k = c:receive(5000) assert(a == nil and k == 'ETOOBIG', tostring(k)) c:close() end\n"
          "assert(not pcall(ws.connect, {url = 5}))\n"
          "assert(not pcall(ws.connect, {url = BASE, headers = {['A\\r\\nB'] = 'x'}}))\n"
          "assert(not pcall(ws.connect, {url = BASE, timeout_ms = -1}))\n");
  assert_int_equal(live(f), 0);
}

static void test_cancel_while_receiving(void **state) {
  fx_t *f = *state;
  result_t r = {0};
  ds_task_t *t = spawn(f,
                       "conn = assert(ws.connect{url = BASE .. '/echo'})\n"
                       "opened = true\n"
                       "conn:receive()\n"
                       "error('not reached')\n",
                       &r);
  /* run until the task is blocked in receive() */
  uint64_t end = uv_now(&f->loop) + 10000;
  for (;;) {
    lua_getglobal(f->L, "opened");
    int opened = lua_toboolean(f->L, -1);
    lua_pop(f->L, 1);
    if (opened) break;
    if (uv_now(&f->loop) > end) fail_msg("never opened");
    uv_run(&f->loop, UV_RUN_ONCE);
    uv_update_time(&f->loop);
  }
  assert_int_equal(ds_task_cancel(t), 0);
  assert_true(r.done);
  /* the connection survives its reader: another task uses it */
  run_lua(f,
          "assert(conn:state() == 'open')\n"
          "assert(conn:send('again'))\n"
          "assert(conn:receive(5000) == 'again')\n");
  assert_int_equal(live(f), 1);
}

static void test_open_at_shutdown(void **state) {
  fx_t *f = *state;
  /* connections held in globals when the host shuts down: teardown must close them,
   * collect the boxes and destroy the lws context with nothing leaked */
  run_lua(f,
          "keep = {}\n"
          "for i = 1, 3 do keep[i] = assert(ws.connect{url = BASE .. '/echo'}) end\n"
          "keep[1]:send('pending')\n");
  assert_int_equal(live(f), 3);
}

static void test_outside_task(void **state) {
  fx_t *f = *state;
  assert_int_not_equal(LUA_OK, luaL_dostring(f->L, "ws.connect{url = BASE}"));
  assert_non_null(strstr(lua_tostring(f->L, -1), "task"));
  lua_pop(f->L, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_echo, setup, teardown),
      cmocka_unit_test_setup_teardown(test_receive_timeout_keeps_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(test_peer_close_and_drop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connect_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_while_receiving, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_at_shutdown, setup, teardown),
      cmocka_unit_test_setup_teardown(test_outside_task, setup, teardown),
  };
  return cmocka_run_group_tests(tests, start_peer, stop_peer);
}
