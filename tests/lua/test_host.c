/* test_host.c - the Lua host over a real memory store and streams registry: the
 * decorator chain (only hooked types reach Lua), the echo agent end to end, shutdown in
 * the middle of an answer, and nothing leaked (refs, tasks, handles).
 * Must not: use sockets; each test has its own loop, store and host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/clock.h"
#include "lua/host.h"
#include "store/store.h"
#include "core/err.h"
#include "stream/streams.h"

typedef struct {
  uv_loop_t loop;
  ds_store_t *store;
  ds_streams_t *ss;
  ds_lua_host_t *h;
  char dir[64];
} fx_t;

static void write_file(const char *path, const char *s) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(s, f);
  fclose(f);
}

static const char *PING =
    "ds.on('t:ping', function(ev)\n"
    "  ds.sleep(1)\n"
    "  ds.append('out/' .. ev.path, 't:pong', ds.json.obj('seen', ev.offset, 'n', ev.payload.n))\n"
    "end)\n"
    "ds.on('t:watch', function(ev)\n"
    "  local sub <close> = ds.subscribe('w', 0)\n"
    "  local v, why = ds.subscribe('quiet'):next(5)\n"
    "  assert(v == nil and why == 'timeout')\n"
    "  local seen = {}\n"
    "  for e in sub:events(5000) do\n"
    "    seen[#seen + 1] = e.payload.i\n"
    "    if #seen == 3 then break end\n"
    "  end\n"
    "  ds.append('out/w', 't:got', {seen = seen, next = sub:offset()})\n"
    "end)\n"
    "ds.on('t:raw', function(ev)\n"
    "  local ok1 = ds.append_raw('out/raw', 't:r', '{\"a\":1}')\n"
    "  local r2, e2, c2 = ds.append_raw('out/raw', 't:r', '{}, \"version\":\"9\"')\n"
    "  local r3, e3, c3 = ds.append_raw('out/raw', 't:r', '[1]')\n"
    "  local r4, e4, c4 = ds.append_raw('out/never', 't:r', 'nope')\n"
    "  ds.append('out/raw', 't:result', ds.json.obj('ok1', ok1 ~= nil, 'c2', c2, 'c3', c3, 'c4', c4,\n"
    "    'r', r2 == nil and r3 == nil and r4 == nil))\n"
    "end)\n";

/* A loop, a memory store, a temp root with plugins/ (ping.lua, echo.lua, and `extra` as
 * plugins/extra.lua when given) and config.lua (agents: echo, plus `agents_extra`). The
 * host is not created: host_start does. */
static fx_t *fixture(const char *agents_extra, const char *extra) {
  fx_t *f = calloc(1, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  ds_store_opts_t so = {.kind = "memory", .loop = &f->loop};
  char err[256];
  assert_int_equal(ds_store_open(&so, &f->store, err, sizeof err), 0);
  f->ss = ds_streams_new(f->store, NULL);
  snprintf(f->dir, sizeof f->dir, "/tmp/ds-test-host-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  char p[256];
  snprintf(p, sizeof p, "%s/plugins", f->dir);
  assert_int_equal(mkdir(p, 0700), 0);
  snprintf(p, sizeof p, "%s/plugins/ping.lua", f->dir);
  write_file(p, PING);
  if (extra) {
    snprintf(p, sizeof p, "%s/plugins/extra.lua", f->dir);
    write_file(p, extra);
  }
  snprintf(p, sizeof p, "%s/plugins/echo.lua", f->dir);
  char src[512];
  snprintf(src, sizeof src, "%s/plugins/echo.lua", DS_SOURCE_DIR);
  FILE *in = fopen(src, "r");
  assert_non_null(in);
  FILE *out = fopen(p, "w");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
  fclose(in);
  fclose(out);
  snprintf(p, sizeof p, "%s/config.lua", f->dir);
  char cfg[1024];
  snprintf(cfg, sizeof cfg,
           "return { agents = { default_model = 'echo', plugin_dir = '%s/plugins',"
           " models = { echo = { delay_ms = 2 } }%s } }\n",
           f->dir, agents_extra ? agents_extra : "");
  write_file(p, cfg);
  return f;
}

static void host_start(fx_t *f) {
  char p[256], err[256];
  snprintf(p, sizeof p, "%s/config.lua", f->dir);
  ds_lua_host_opts_t o = {.config_path = p};
  f->h = ds_lua_host_new(&f->loop, f->ss, &o, err, sizeof err);
  if (!f->h) fail_msg("host: %s", err);
}

static int setup(void **state) {
  fx_t *f = fixture(NULL, NULL);
  host_start(f);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_lua_host_shutdown(f->h);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(ds_lua_host_free(f->h), 0);
  ds_streams_free(f->ss);
  ds_store_close(f->store);
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

static uint64_t next_offset(fx_t *f, const char *path) {
  ds_stream_t *s;
  if (ds_streams_get(f->ss, path, 0, 0, &s) != 0) return 0;
  return ds_stream_next_offset(s);
}

static void append(fx_t *f, const char *path, const char *body) {
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, path, 1, 0, &s), 0);
  uint64_t off;
  char err[256];
  assert_int_equal(ds_stream_append_event(s, body, strlen(body), &off, err, sizeof err), 0);
}

/* Runs the loop until path has n events, or fails after a deadline. */
static void run_until(fx_t *f, const char *path, uint64_t n) {
  uint64_t deadline = ds_clock_mono_ms() + 10000;
  while (next_offset(f, path) < n) {
    if (ds_clock_mono_ms() > deadline) fail_msg("timed out: %s has %llu events", path, (unsigned long long)next_offset(f, path));
    uv_run(&f->loop, UV_RUN_ONCE);
  }
}

static void run_until_idle(fx_t *f) {
  ds_lua_host_stats_t st;
  uint64_t deadline = ds_clock_mono_ms() + 10000;
  for (;;) {
    ds_lua_host_stats(f->h, &st);
    if (st.tasks_live == 0) break;
    if (ds_clock_mono_ms() > deadline) fail_msg("tasks still alive");
    uv_run(&f->loop, UV_RUN_ONCE);
  }
}

static int copy_first(void *ud, uint64_t offset, const char *repr, size_t len) {
  (void)offset;
  snprintf(ud, 512, "%.*s", (int)len, repr);
  return 1;
}

static void test_hooks_see_only_their_types(void **state) {
  fx_t *f = *state;
  run_until_idle(f); /* the agent's start-up task has ended */
  ds_lua_host_stats_t before, after;
  ds_lua_host_stats(f->h, &before);
  for (int i = 0; i < 50; i++) append(f, "a/b", "{\"type\":\"t:other\",\"payload\":{}}");
  append(f, "a/b", "{\"type\":\"t:ping\",\"payload\":{\"n\":9007199254740993}}");
  run_until(f, "out/a/b", 1);
  run_until_idle(f);
  ds_lua_host_stats(f->h, &after);
  assert_int_equal(after.events_dispatched - before.events_dispatched, 1);
  assert_int_equal(after.hooks_failed, 0);
  assert_int_equal(after.refs, before.refs);
  /* the int64 beyond double precision went through Lua exactly */
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, "out/a/b", 0, 0, &s), 0);
  char got[512] = "";
  assert_int_equal(ds_store_read(ds_stream_store(s), 0, 1, 4096, copy_first, got), 1);
  if (!strstr(got, "\"payload\":{\"seen\":\"0000000000000050\",\"n\":9007199254740993}")) fail_msg("got %s", got);
}

static void test_subscription_yields_until_events_arrive(void **state) {
  fx_t *f = *state;
  append(f, "w", "{\"type\":\"t:x\",\"payload\":{\"i\":1}}");
  append(f, "ctl", "{\"type\":\"t:watch\",\"payload\":{}}");
  /* let the hook start and block, then publish the rest */
  for (int i = 0; i < 20; i++) uv_run(&f->loop, UV_RUN_NOWAIT);
  append(f, "w", "{\"type\":\"t:x\",\"payload\":{\"i\":2}}");
  append(f, "w", "{\"type\":\"t:x\",\"payload\":{\"i\":3}}");
  run_until(f, "out/w", 1);
  run_until_idle(f);
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, "out/w", 0, 0, &s), 0);
  char got[512] = "";
  assert_int_equal(ds_store_read(ds_stream_store(s), 0, 1, 4096, copy_first, got), 1);
  if (!strstr(got, "\"payload\":{\"next\":3,\"seen\":[1,2,3]}")) fail_msg("got %s", got);
  ds_lua_host_stats_t st;
  ds_lua_host_stats(f->h, &st);
  assert_int_equal(st.hooks_failed, 0);
}

/* append_raw splices the payload text into the event body, so it must be one object. */
static void test_append_raw_rejects_smuggled_fields(void **state) {
  fx_t *f = *state;
  append(f, "ctl", "{\"type\":\"t:raw\",\"payload\":{}}");
  run_until(f, "out/raw", 2);
  run_until_idle(f);
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, "out/raw", 0, 0, &s), 0);
  char got[512] = "";
  assert_int_equal(ds_store_read(ds_stream_store(s), 1, 1, 4096, copy_first, got), 1);
  if (!strstr(got, "\"payload\":{\"ok1\":true,\"c2\":\"EINVAL\",\"c3\":\"EINVAL\",\"c4\":\"EINVAL\",\"r\":true}"))
    fail_msg("got %s", got);
  assert_int_equal(next_offset(f, "out/raw"), 2);
  /* the failed append to a never-written path left nothing behind */
  assert_int_equal(ds_streams_get(f->ss, "out/never", 0, 0, &s), DS_ENOTFOUND);
}

static void test_echo_agent_end_to_end(void **state) {
  fx_t *f = *state;
  append(f, "chat", "{\"type\":\"iterate:agent:action:send-user-message:called\",\"payload\":{\"content\":\"one two\"}}");
  /* user, started, metadata, text-start, 2 deltas, text-end, finish, ended */
  run_until(f, "chat", 9);
  run_until_idle(f);
  assert_int_equal(next_offset(f, "chat"), 9);
}

/* Reads the record at offset `at` of path into buf (NUL-terminated). */
static void record_at(fx_t *f, const char *path, uint64_t at, char *buf) {
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, path, 0, 0, &s), 0);
  buf[0] = 0;
  assert_int_equal(ds_store_read(ds_stream_store(s), at, 1, 4096, copy_first, buf), 1);
}

/* Issue 12, item 14: a shutdown in the middle of an answer ends the request with
 * request-cancelled reason "shutdown", and nothing is appended after it. */
static void test_shutdown_mid_answer(void **state) {
  fx_t *f = *state;
  append(f, "chat2",
         "{\"type\":\"iterate:agent:action:send-user-message:called\",\"payload\":{\"content\":\"a b c d e f g h i j k l m n o p\"}}");
  run_until(f, "chat2", 5);
  ds_lua_host_stats_t st;
  ds_lua_host_stats(f->h, &st);
  assert_true(st.tasks_live > 0); /* the echo task sleeps between words */
  ds_lua_host_shutdown(f->h);
  uint64_t n = next_offset(f, "chat2");
  char last[512];
  record_at(f, "chat2", n - 1, last);
  if (!strstr(last, "\"type\":\"iterate:llm-loop:request-cancelled\"") ||
      !strstr(last, "\"requestOffset\":\"0000000000000001\",\"reason\":\"shutdown\",\"message\":\"server shutting down\""))
    fail_msg("last event: %s", last);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(next_offset(f, "chat2"), n);
}

/* Runs the loop until cond(f) or a deadline. */
static void run_while(fx_t *f, int (*cond)(fx_t *), const char *what) {
  uint64_t deadline = ds_clock_mono_ms() + 20000;
  while (!cond(f)) {
    if (ds_clock_mono_ms() > deadline) fail_msg("timed out: %s", what);
    uv_run(&f->loop, UV_RUN_NOWAIT);
  }
}

static int one_disabled(fx_t *f) {
  ds_lua_host_stats_t st;
  ds_lua_host_stats(f->h, &st);
  return st.plugins_disabled == 1 && st.tasks_live == 0;
}

/* Issue 12, item 2: a hook whose tasks each spawn two more stops at the cap per plugin:
 * the spawns past it are refused (the spawner fails), the plugin is disabled, its tasks
 * cancelled; memory stays bounded and the agent still answers. */
static void test_spawn_storm_is_capped(void **state) {
  (void)state;
  fx_t *f = fixture(", max_tasks_per_plugin = 64, max_tasks_per_path = 1000, max_hook_errors = 3",
                    "local function storm() ds.spawn(storm); ds.spawn(storm) end\n"
                    "ds.on('t:storm', storm)\n");
  host_start(f);
  append(f, "s", "{\"type\":\"t:storm\",\"payload\":{}}");
  run_while(f, one_disabled, "the storm plugin to be disabled");
  ds_lua_host_stats_t st;
  ds_lua_host_stats(f->h, &st);
  assert_true(st.tasks_refused > 0);
  assert_true(st.mem_bytes < (64u << 20));
  /* the agent is not affected */
  append(f, "chat", "{\"type\":\"iterate:agent:action:send-user-message:called\",\"payload\":{\"content\":\"ok\"}}");
  run_until(f, "chat", 7);
  run_until_idle(f);
  teardown((void **)&f);
}

/* ... and per path: a plugin may spawn many tasks, but not all for one path */
static void test_tasks_per_path_are_capped(void **state) {
  (void)state;
  fx_t *f = fixture(", max_tasks_per_plugin = 10000, max_tasks_per_path = 8, max_hook_errors = 0",
                    "ds.on('t:fan', function()\n"
                    "  local ok, n = 0, 0\n"
                    "  for i = 1, 20 do\n"
                    "    if pcall(ds.spawn, function() ds.sleep(5) end) then ok = ok + 1 end\n"
                    "  end\n"
                    "  ds.append('out/fan', 't:spawned', {ok = ok})\n"
                    "end)\n");
  host_start(f);
  append(f, "p", "{\"type\":\"t:fan\",\"payload\":{}}");
  run_until(f, "out/fan", 1);
  char got[512];
  record_at(f, "out/fan", 0, got);
  /* the hook task itself is one of the path's 8 */
  if (!strstr(got, "\"payload\":{\"ok\":7}")) fail_msg("got %s", got);
  run_until_idle(f);
  teardown((void **)&f);
}

static int hog_gone(fx_t *f) { return one_disabled(f); }

static int mem_back(fx_t *f) {
  ds_lua_host_stats_t st;
  ds_lua_host_stats(f->h, &st);
  return st.mem_bytes < (8u << 20);
}

/* A plugin that keeps what it allocates, yielding often, reaches the memory cap: that
 * task is killed, the plugin disabled at once, and what it kept is released, so the
 * agent still answers. */
static void test_memory_hog_is_disabled_and_released(void **state) {
  (void)state;
  fx_t *f = fixture(", memory_limit_mb = 24, max_hook_errors = 100",
                    "hog = {}\n"
                    "ds.on('t:hog', function()\n"
                    "  while true do\n"
                    "    for _ = 1, 1000 do hog[#hog + 1] = { #hog } end\n"
                    "    ds.sleep(0)\n"
                    "  end\n"
                    "end)\n");
  host_start(f);
  append(f, "h", "{\"type\":\"t:hog\",\"payload\":{}}");
  run_while(f, hog_gone, "the hog plugin to be disabled");
  ds_lua_host_stats_t st;
  ds_lua_host_stats(f->h, &st);
  assert_int_equal(st.tasks_killed, 1);
  append(f, "chat", "{\"type\":\"iterate:agent:action:send-user-message:called\",\"payload\":{\"content\":\"ok\"}}");
  run_until(f, "chat", 7);
  run_until_idle(f);
  run_while(f, mem_back, "the hog's memory to be collected (in steps, loop turn by loop turn)");
  teardown((void **)&f);
}

/* config.lua is evaluated by the host under the load phase's bound too: an endless loop
 * refuses the start, naming the file. */
static void test_runaway_config_refuses_the_host(void **state) {
  (void)state;
  fx_t *f = fixture(NULL, NULL);
  char p[256], err[256] = "";
  snprintf(p, sizeof p, "%s/config.lua", f->dir);
  write_file(p, "local t = coroutine.wrap(function() while true do end end)\nt()\n");
  ds_lua_host_opts_t o = {.config_path = p};
  assert_null(ds_lua_host_new(&f->loop, f->ss, &o, err, sizeof err));
  if (!strstr(err, p) || !strstr(err, "exceeded")) fail_msg("got %s", err);
  ds_streams_free(f->ss);
  ds_store_close(f->store);
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_hooks_see_only_their_types, setup, teardown),
      cmocka_unit_test_setup_teardown(test_subscription_yields_until_events_arrive, setup, teardown),
      cmocka_unit_test_setup_teardown(test_append_raw_rejects_smuggled_fields, setup, teardown),
      cmocka_unit_test_setup_teardown(test_echo_agent_end_to_end, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_mid_answer, setup, teardown),
      cmocka_unit_test(test_spawn_storm_is_capped),
      cmocka_unit_test(test_tasks_per_path_are_capped),
      cmocka_unit_test(test_memory_hog_is_disabled_and_released),
      cmocka_unit_test(test_runaway_config_refuses_the_host),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
