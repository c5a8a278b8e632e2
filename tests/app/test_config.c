/* test_config.c - config.lua loading: defaults, values, and refusals with file:line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/config.h"

static char *write_tmp(const char *text) {
  char *path = strdup("/tmp/ds-config-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_defaults(void **state) {
  (void)state;
  ds_config_t c;
  ds_config_defaults(&c);
  assert_string_equal(c.host, "127.0.0.1");
  assert_int_equal(c.port, 3000);
  assert_string_equal(c.data_dir, ".data");
  assert_string_equal(c.storage, "yaml");
  assert_int_equal(c.fsync, DS_FSYNC_INTERVAL);
  assert_int_equal(c.max_body_bytes, 1 << 20);
  assert_int_equal(c.keepalive_ms, 15000);
  assert_int_equal(c.tail_cache_bytes, 32 << 20);
  assert_int_equal(c.tail_cache_total_bytes, 256 << 20);
  ds_config_free(&c);
}

static void test_values(void **state) {
  (void)state;
  char *p = write_tmp("return { port = 0, storage = 'memory', fsync = 'always',\n"
                      " limits = { max_body_bytes = 2048, max_json_depth = 8,\n"
                      "   tail_cache_bytes = 4096, tail_cache_total_bytes = 65536 },\n"
                      " sse = { keepalive_ms = 250 }, protocol = { long_poll_timeout_ms = 500,\n"
                      "   webhook_allow_networks = { '127.0.0.0/8', '::1' } } }\n");
  ds_config_t c;
  ds_config_defaults(&c);
  char err[256];
  assert_int_equal(ds_config_load(&c, p, err, sizeof err), 0);
  assert_int_equal(c.port, 0);
  assert_string_equal(c.storage, "memory");
  assert_int_equal(c.fsync, DS_FSYNC_ALWAYS);
  assert_int_equal(c.max_body_bytes, 2048);
  assert_int_equal(c.max_json_depth, 8);
  assert_int_equal(c.tail_cache_bytes, 4096);
  assert_int_equal(c.tail_cache_total_bytes, 65536);
  assert_int_equal(c.keepalive_ms, 250);
  assert_int_equal(c.long_poll_timeout_ms, 500);
  assert_int_equal(c.nwebhook_allow_networks, 2);
  assert_string_equal(c.webhook_allow_networks[0], "127.0.0.0/8");
  assert_string_equal(c.webhook_allow_networks[1], "::1");
  assert_string_equal(c.config_path, p);
  ds_config_free(&c);
  unlink(p);
  free(p);
}

static void expect_refusal(const char *text, const char *needle) {
  char *p = write_tmp(text);
  ds_config_t c;
  ds_config_defaults(&c);
  char err[256] = "";
  assert_int_equal(ds_config_load(&c, p, err, sizeof err), -1);
  if (!strstr(err, needle)) fail_msg("error '%s' lacks '%s'", err, needle);
  ds_config_free(&c);
  unlink(p);
  free(p);
}

static void test_refusals(void **state) {
  (void)state;
  expect_refusal("return {\n port = ,\n}\n", ":2:");               /* syntax error: file:line */
  expect_refusal("local x = nil\nreturn x.y\n", ":2:");              /* runtime error: file:line */
  expect_refusal("return 42\n", "must return a table");
  expect_refusal("return { prot = 1 }\n", "prot is not a known setting");
  expect_refusal("return { port = 70000 }\n", "port must be an integer");
  expect_refusal("return { storage = 'disk' }\n", "storage must be");
  expect_refusal("return { fsync = 'sometimes' }\n", "fsync must be");
  expect_refusal("return { limits = { max_body = 5 } }\n", "limits.max_body is not a known setting");
  expect_refusal("return { limits = { max_body_bytes = 'big' } }\n", "limits.max_body_bytes must be");
  expect_refusal("return { sse = 5 }\n", "sse must be a table");
  expect_refusal("return { limits = { tail_cache_bytes = 0 } }\n", "limits.tail_cache_bytes must be");
  expect_refusal("return { limits = { tail_cache_total_bytes = -1 } }\n",
                 "limits.tail_cache_total_bytes must be");
  expect_refusal("return { protocol = { webhook_allow_networks = '127.0.0.1' } }\n",
                 "protocol.webhook_allow_networks must be a list of networks");
  expect_refusal("return { protocol = { webhook_allow_networks = { 'localhost' } } }\n",
                 "\"localhost\" is not a network");
  expect_refusal("return { protocol = { webhook_allow_networks = { '10.0.0.0/40' } } }\n",
                 "protocol.webhook_allow_networks must be");
}

/* The PORT environment variable (ds_config_apply_env) with a fake environment. */
static const char *g_port;
static char *fake_getenv(const char *name) { return strcmp(name, "PORT") == 0 ? (char *)g_port : NULL; }

static void test_env_port(void **state) {
  (void)state;
  ds_config_t c;
  ds_config_defaults(&c);
  char err[160];
  g_port = NULL; /* unset: config.lua's value stays */
  assert_int_equal(ds_config_apply_env(&c, fake_getenv, err, sizeof err), 0);
  assert_int_equal(c.port, 3000);
  g_port = ""; /* empty counts as unset */
  assert_int_equal(ds_config_apply_env(&c, fake_getenv, err, sizeof err), 0);
  assert_int_equal(c.port, 3000);
  static const struct { const char *v; int port; } ok[] = {{"0", 0}, {"8080", 8080}, {"65535", 65535}, {"00080", 80}};
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    g_port = ok[i].v;
    assert_int_equal(ds_config_apply_env(&c, fake_getenv, err, sizeof err), 0);
    assert_int_equal(c.port, ok[i].port);
  }
  c.port = 3000;
  static const char *const bad[] = {"65536", "-1", "+80", " 80", "80 ", "0x50", "8e3", "abc", "123456", "99999999999999999999", "8\n0"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    g_port = bad[i];
    assert_int_equal(ds_config_apply_env(&c, fake_getenv, err, sizeof err), -1);
    assert_non_null(strstr(err, "PORT must be an integer from 0 to 65535"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(c.port, 3000);
  }
  ds_config_free(&c);
}

/* config.lua is a program: one that never ends or grows without bound must refuse the
 * start, naming the file, not hang it (issue 12, item 2). Each of these used to run
 * forever (or until the machine ran out of memory). */
static void test_runaway_config_is_refused(void **state) {
  (void)state;
  expect_refusal("local x = 1\nwhile true do end\n", ":2: instruction budget of config.lua exceeded");
  expect_refusal("coroutine.wrap(function() while true do pcall(function() while true do end end) end end)()\n",
                 ":1: instruction budget of config.lua exceeded");
  expect_refusal("local t = {}\nwhile true do t[#t + 1] = {} end\n", ":2: memory limit exceeded");
  expect_refusal("local t = {}\nwhile true do t[#t + 1] = ('x'):rep(4096) .. #t end\n", "not enough memory");
  expect_refusal("return (string.rep('a', 30) .. 'b'):find(string.rep('a*', 20) .. 'c')\n",
                 ":1: instruction budget of config.lua exceeded");
  expect_refusal("xpcall(error, function() while true do end end)\n", "instruction budget of config.lua exceeded");
  /* the same bound for the second evaluation (auth settings) */
  char *p = write_tmp("while true do end\n");
  char err[256] = "";
  assert_null(ds_config_eval(p, err, sizeof err));
  if (!strstr(err, p) || !strstr(err, "exceeded")) fail_msg("error '%s' does not name the file", err);
  unlink(p);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_env_port),
      cmocka_unit_test(test_runaway_config_is_refused),
  };
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
