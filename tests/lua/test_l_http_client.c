/* test_l_http_client.c - cmocka tests of the `ds.http` Lua binding (request/read/close).
 *
 * Provides: a Lua state with the scheduler and the binding installed as global `http`,
 * Lua snippets run as tasks against spec/fixtures/upstream/openai_fake.py (started here
 * on a free port, Python standard library only): SSE streaming, HTTP error bodies, cancel
 * seen by the fake, task cancellation aborting the transfer, refused port, reset, stall,
 * concurrency, misuse. Each test ends with no request object alive, no task left and
 * uv_loop_close() == 0.
 * Must not: sleep for fixed times (loop runs and log polls have deadlines).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "lua/l_http_client.h"
#include "lua/sched.h"
#include "lua/vm.h"

extern char **environ;

static pid_t g_fake_pid;
static int g_fake_port;
static char g_log_path[256];

static int start_fake(void **state) {
  snprintf(g_log_path, sizeof g_log_path, "/tmp/ds-test-lhttp-%d.jsonl", (int)getpid());
  unlink(g_log_path);
  int fds[2];
  if (pipe(fds) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  char script[512];
  snprintf(script, sizeof script, "%s/spec/fixtures/upstream/openai_fake.py", DS_SOURCE_DIR);
  char *argv[] = {"/usr/bin/python3", script, "--log", g_log_path, "--pace-ms", "2", NULL};
  int rc = posix_spawn(&g_fake_pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) return -1;
  char line[64] = "";
  size_t n = 0;
  while (n < sizeof line - 1) {
    ssize_t r = read(fds[0], line + n, 1);
    if (r <= 0 || line[n] == '\n') break;
    n++;
  }
  line[n] = '\0';
  close(fds[0]);
  g_fake_port = atoi(line);
  return g_fake_port > 0 ? 0 : -1;
}

static int stop_fake(void **state) {
  kill(g_fake_pid, SIGTERM);
  waitpid(g_fake_pid, NULL, 0);
  unlink(g_log_path);
  return 0;
}

typedef struct {
  uv_loop_t loop;
  ds_vm_t *vm;
  ds_sched_t *sched;
  ds_l_http_t *http;
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
  f->http = ds_l_http_new(&f->loop);
  assert_non_null(f->http);
  f->L = ds_vm_state(f->vm);
  lua_newtable(f->L);
  ds_l_http_open(f->L, f->http);
  lua_setglobal(f->L, "http");
  lua_pushfstring(f->L, "http://127.0.0.1:%d", g_fake_port);
  lua_setglobal(f->L, "BASE");
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_sched_shutdown(f->sched);
  ds_l_http_shutdown(f->http);
  uint64_t end = uv_now(&f->loop) + 5000;
  while (uv_run(&f->loop, UV_RUN_NOWAIT) != 0 && uv_now(&f->loop) < end) uv_update_time(&f->loop);
  lua_gc(f->L, LUA_GCCOLLECT);
  assert_int_equal(ds_l_http_live(f->http), 0);
  ds_sched_stats_t st;
  ds_sched_stats(f->sched, &st);
  assert_int_equal(st.live, 0);
  assert_int_equal(ds_vm_free(f->vm), 0);
  assert_int_equal(ds_sched_free(f->sched), 0);
  assert_int_equal(ds_l_http_free(f->http), 0);
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

static void run_until_done(fx_t *f, result_t *r, int n) {
  uint64_t end = uv_now(&f->loop) + 20000;
  for (;;) {
    int all = 1;
    for (int i = 0; i < n; i++) all &= r[i].done;
    if (all) break;
    if (uv_now(&f->loop) > end) fail_msg("tasks did not finish in time");
    uv_run(&f->loop, UV_RUN_ONCE);
    uv_update_time(&f->loop);
  }
  for (int i = 0; i < n; i++)
    if (r[i].status != LUA_OK) fail_msg("task %d failed: %s", i, r[i].err);
}

static void run_lua(fx_t *f, const char *code) {
  result_t r = {0};
  spawn(f, code, &r);
  run_until_done(f, &r, 1);
}

/* Polls the fake's log for a line containing both strings. */
static int log_has(fx_t *f, const char *a, const char *b) {
  uint64_t end = uv_now(&f->loop) + 10000;
  while (uv_now(&f->loop) < end) {
    FILE *fp = fopen(g_log_path, "r");
    char line[8192];
    int found = 0;
    while (fp && fgets(line, sizeof line, fp))
      if (strstr(line, a) && (!b || strstr(line, b))) found = 1;
    if (fp) fclose(fp);
    if (found) return 1;
    uv_run(&f->loop, UV_RUN_NOWAIT);
    usleep(5000);
    uv_update_time(&f->loop);
  }
  return 0;
}

static const char *PRELUDE =
    "local function post(body, extra)\n"
    "  local o = {url = BASE .. '/v1/responses', method = 'POST', sse = true, body = body,\n"
    "             headers = {Authorization = 'Bearer k', ['Content-Type'] = 'application/json'}}\n"
    "  for k, v in pairs(extra or {}) do o[k] = v end\n"
    "  return http.request(o)\n"
    "end\n";

static void test_stream_events(void **state) {
  fx_t *f = *state;
  ds_buf_t code = DS_BUF_INIT;
  ds_buf_puts(&code, PRELUDE);
  ds_buf_puts(&code,
              "local res, err, c = post('{\"model\":\"m\",\"stream\":true,\"input\":\"hi [[tokens:6]]\"}')\n"
              "assert(res, tostring(err))\n"
              "assert(res:status() == 200)\n"
              "assert(res:headers()['content-type']:find('text/event-stream', 1, true))\n"
              "local names, text = {}, ''\n"
              "for ev in res:events() do\n"
              "  names[#names + 1] = ev.event\n"
              "  local d = ev.data:match('\"delta\": \"([^\"]*)\"')\n"
              "  if ev.event == 'response.output_text.delta' then text = text .. d end\n"
              "end\n"
              "local e1 = res:error() assert(e1 == nil, e1)\n"
              "assert(names[1] == 'response.created', names[1])\n"
              "assert(names[#names] == 'response.completed', names[#names])\n"
              "local n = 0 for _, e in ipairs(names) do if e == 'response.output_text.delta' then n = n + 1 end end\n"
              "assert(n == 6, 'deltas ' .. n)\n"
              "assert(text:find('^Hello there'), text)\n"
              "assert(res:read() == nil)\n"
              "res:close()\n"
              "local a, b, c2 = res:read()\n"
              "assert(a == nil and b == 'closed' and c2 == 'closed')\n"
              "res:close()\n");
  run_lua(f, ds_buf_cstr(&code));
  ds_buf_free(&code);
}

static void test_http_error_body(void **state) {
  fx_t *f = *state;
  ds_buf_t code = DS_BUF_INIT;
  ds_buf_puts(&code, PRELUDE);
  ds_buf_puts(&code,
              "local res = assert(post('{\"stream\":true,\"input\":\"x [[fault:429]]\"}'))\n"
              "assert(res:status() == 429, res:status())\n"
              "local body = ''\n"
              "while true do local c = res:read() if not c then break end\n"
              "  assert(type(c) == 'string') body = body .. c end\n"
              "assert(body:find('Rate limit exceeded', 1, true), body)\n"
              "res:close()\n");
  run_lua(f, ds_buf_cstr(&code));
  ds_buf_free(&code);
}

static void test_close_aborts_upstream(void **state) {
  fx_t *f = *state;
  ds_buf_t code = DS_BUF_INIT;
  ds_buf_puts(&code, PRELUDE);
  ds_buf_puts(&code,
              "local res = assert(post('{\"stream\":true,\"input\":\"closeme [[tokens:200]] [[pace:100]]\"}'))\n"
              "for ev in res:events() do\n"
              "  if ev.event == 'response.output_text.delta' then break end\n"
              "end\n"
              "res:close()\n"
              "assert(http.stats().active == 0)\n");
  run_lua(f, ds_buf_cstr(&code));
  ds_buf_free(&code);
  assert_true(log_has(f, "\"client_closed\"", "closeme"));
}

static void test_task_cancel_aborts(void **state) {
  fx_t *f = *state;
  ds_buf_t code = DS_BUF_INIT;
  ds_buf_puts(&code, PRELUDE);
  ds_buf_puts(&code,
              "local res = assert(post('{\"stream\":true,\"input\":\"cancelme [[fault:hang]]\"}'))\n"
              "res:read()\n"
              "error('not reached')\n");
  result_t r = {0};
  ds_task_t *t = spawn(f, ds_buf_cstr(&code), &r);
  ds_buf_free(&code);
  /* wait until the fake saw the request, then the task is blocked in request() */
  assert_true(log_has(f, "\"fault\": \"hang\"", "cancelme"));
  assert_int_equal(ds_task_cancel(t), 0);
  assert_true(r.done);
  lua_gc(f->L, LUA_GCCOLLECT);
  assert_int_equal(ds_l_http_live(f->http), 0);
  assert_true(log_has(f, "\"client_closed\"", "cancelme"));
}

static void test_failures(void **state) {
  fx_t *f = *state;
  /* a port that is free right now */
  uv_tcp_t t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&f->loop, &t);
  uv_tcp_bind(&t, (const struct sockaddr *)&a, 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
  int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  lua_pushinteger(f->L, port);
  lua_setglobal(f->L, "FREE_PORT");
  ds_buf_t code = DS_BUF_INIT;
  ds_buf_puts(&code, PRELUDE);
  ds_buf_puts(&code,
              "local r, m, c = http.request{url = 'http://127.0.0.1:' .. FREE_PORT .. '/'}\n"
              "assert(r == nil and c == 'ECONNREFUSED' and #m > 0, tostring(c))\n"
              "r, m, c = http.request{url = 'http://no-such-host.invalid/'}\n"
              "assert(r == nil and c == 'EDNS', tostring(c))\n"
              "r, m, c = http.request{url = 'ftp://x/'}\n"
              "assert(r == nil and c == 'EINVAL', tostring(c))\n"
              "local res = assert(post('{\"stream\":true,\"input\":\"x [[fault:reset]] [[tokens:6]]\"}'))\n"
              "local ev, msg, code repeat ev, msg, code = res:read() until not ev\n"
              "assert(code == 'ECLOSED', tostring(code) .. ' ' .. tostring(msg))\n"
              "assert(select(2, res:error()) == 'ECLOSED')\n"
              "res:close()\n"
              "res = assert(post('{\"stream\":true,\"input\":\"x [[fault:stall]]\"}', {stall_timeout_ms = 300}))\n"
              "repeat ev, msg, code = res:read() until not ev\n"
              "assert(code == 'ESTALLED', tostring(code) .. ' ' .. tostring(msg))\n"
              "res:close()\n"
              "r, m, c = post('{\"stream\":true,\"input\":\"x [[fault:hang]]\"}', {timeout_ms = 300})\n"
              "assert(r == nil and c == 'ETIMEDOUT', tostring(c))\n"
              "res = assert(post('{\"stream\":true,\"input\":\"x [[tokens:50]]\"}', {max_event = 16}))\n"
              "repeat ev, msg, code = res:read() until not ev\n"
              "assert(code == 'EPROTO', tostring(code))\n"
              "res:close()\n"
              "local ok, e = pcall(http.request, {url = 'http://x/', headers = {['X'] = 'a\\r\\nB: c'}})\n"
              "assert(not ok and e:find('line break'), e)\n");
  run_lua(f, ds_buf_cstr(&code));
  ds_buf_free(&code);
}

static void test_busy_second_reader(void **state) {
  fx_t *f = *state;
  result_t r[2];
  memset(r, 0, sizeof r);
  ds_buf_t a = DS_BUF_INIT, b = DS_BUF_INIT;
  ds_buf_puts(&a, PRELUDE);
  ds_buf_puts(&a,
              "SHARED = assert(post('{\"stream\":true,\"input\":\"shared [[tokens:3]] [[pace:200]]\"}'))\n"
              "local n = 0\n"
              "for ev in SHARED:events() do n = n + 1 end\n"
              "assert(SHARED:error() == nil and n > 5)\n"
              "SHARED:close()\n");
  ds_buf_puts(&b,
              "while not SHARED do coroutine.yield() end\n"
              "local x, msg, code = SHARED:read()\n"
              "assert(x == nil and code == 'busy', tostring(code))\n");
  spawn(f, ds_buf_cstr(&a), &r[0]);
  spawn(f, ds_buf_cstr(&b), &r[1]);
  ds_buf_free(&a);
  ds_buf_free(&b);
  run_until_done(f, r, 2);
  lua_pushnil(f->L);
  lua_setglobal(f->L, "SHARED");
}

static void test_outside_task(void **state) {
  fx_t *f = *state;
  int rc = luaL_dostring(f->L, "return http.request{url = BASE}");
  assert_int_not_equal(rc, LUA_OK);
  assert_non_null(strstr(lua_tostring(f->L, -1), "task"));
  lua_pop(f->L, 1);
}

#define NCONC 20
static void test_concurrent(void **state) {
  fx_t *f = *state;
  result_t r[NCONC];
  memset(r, 0, sizeof r);
  ds_buf_t code = DS_BUF_INIT;
  ds_buf_puts(&code, PRELUDE);
  ds_buf_puts(&code,
              "local res = assert(post('{\"stream\":true,\"input\":\"c [[tokens:30]] [[pace:5]]\"}'))\n"
              "local n = 0\n"
              "for ev in res:events() do if ev.event == 'response.output_text.delta' then n = n + 1 end end\n"
              "assert(n == 30 and res:error() == nil)\n"
              "res:close()\n");
  for (int i = 0; i < NCONC; i++) spawn(f, ds_buf_cstr(&code), &r[i]);
  ds_buf_free(&code);
  run_until_done(f, r, NCONC);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_stream_events, setup, teardown),
      cmocka_unit_test_setup_teardown(test_http_error_body, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_aborts_upstream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_cancel_aborts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(test_busy_second_reader, setup, teardown),
      cmocka_unit_test_setup_teardown(test_outside_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
  };
  return cmocka_run_group_tests_name("l_http_client", tests, start_fake, stop_fake);
}
