/* test_auth.c - token scopes and prefixes, constant-time compare, CORS origins. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/auth.h"

static char *write_tmp(const char *text) {
  char *path = strdup("/tmp/ds-auth-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_off_by_default(void **state) {
  (void)state;
  char err[200];
  ds_auth_t *a = ds_auth_load(NULL, err, sizeof err);
  assert_non_null(a);
  assert_false(ds_auth_enabled(a));
  assert_int_equal(ds_auth_check(a, "POST", "/agents/x", 9, NULL, NULL), 0);
  /* without cors.allowed_origins only loopback origins (any port) are allowed */
  assert_null(ds_auth_cors_origin(a, "https://x.example"));
  assert_false(ds_auth_origin_allowed(a, "https://x.example"));
  assert_false(ds_auth_origin_allowed(a, "null"));
  assert_true(ds_auth_origin_allowed(a, NULL)); /* no Origin: not a browser */
  assert_null(ds_auth_cors_origin(a, NULL));
  const char *ok[] = {"http://localhost:5173", "http://localhost", "http://127.0.0.1:3000", "http://[::1]:80",
                      "http://LocalHost:1"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    assert_true(ds_auth_origin_allowed(a, ok[i]));
    assert_string_equal(ds_auth_cors_origin(a, ok[i]), ok[i]);
  }
  const char *no[] = {"https://localhost:5173", "http://localhost.evil", "http://localhost:5173.evil",
                      "http://localhost:", "http://localhost:65536", "http://localhost:5173/", "http://127.0.0.2",
                      "http://[::2]:80", "http://user@localhost", "localhost:5173", ""};
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    assert_false(ds_auth_origin_allowed(a, no[i]));
    assert_null(ds_auth_cors_origin(a, no[i]));
  }
  ds_auth_free(a);
}

static void test_origins_configured(void **state) {
  (void)state;
  char *p = write_tmp("return { cors = { allowed_origins = { 'https://app.example', 'http://dev.example:*', 'null' } } }\n");
  char err[200];
  ds_auth_t *a = ds_auth_load(p, err, sizeof err);
  assert_non_null(a);
  assert_true(ds_auth_origin_allowed(a, "https://app.example"));
  assert_false(ds_auth_origin_allowed(a, "https://app.example:8443"));
  assert_true(ds_auth_origin_allowed(a, "http://dev.example:8080"));
  assert_true(ds_auth_origin_allowed(a, "null"));
  assert_string_equal(ds_auth_cors_origin(a, "null"), "null");
  assert_false(ds_auth_origin_allowed(a, "http://localhost:5173")); /* the list replaced the default */
  ds_auth_free(a);
  unlink(p);
  free(p);
  p = write_tmp("return { cors = { allowed_origins = '*' } }\n");
  a = ds_auth_load(p, err, sizeof err);
  assert_non_null(a);
  assert_true(ds_auth_origin_allowed(a, "https://anything.example"));
  assert_true(ds_auth_origin_allowed(a, "null"));
  assert_string_equal(ds_auth_cors_origin(a, "https://anything.example"), "*");
  ds_auth_free(a);
  unlink(p);
  free(p);
}

static void test_tokens(void **state) {
  (void)state;
  char *p = write_tmp("return { auth = { tokens = {\n"
                      " { token = 'admin-secret-1', scopes = {'read','append'} },\n"
                      " { token = 'reader-secret-2', scopes = {'read'}, prefixes = {'/agents/team/'} },\n"
                      "} }, cors = { allowed_origins = {'https://app.example'} } }\n");
  char err[200];
  ds_auth_t *a = ds_auth_load(p, err, sizeof err);
  assert_non_null(a);
  assert_true(ds_auth_enabled(a));
  assert_int_equal(ds_auth_check(a, "GET", "/agents/x", 9, NULL, NULL), 401);
  assert_int_equal(ds_auth_check(a, "GET", "/agents/x", 9, "Bearer wrong-token", NULL), 401);
  assert_int_equal(ds_auth_check(a, "GET", "/agents/x", 9, "Basic abc", NULL), 401);
  assert_int_equal(ds_auth_check(a, "POST", "/agents/x", 9, "Bearer admin-secret-1", NULL), 0);
  assert_int_equal(ds_auth_check(a, "GET", "/health", 7, "bearer admin-secret-1", NULL), 0);
  assert_int_equal(ds_auth_check(a, "GET", "/agents/team/a", 14, "Bearer reader-secret-2", NULL), 0);
  assert_int_equal(ds_auth_check(a, "GET", "/agents/team/a", 14, NULL, "reader-secret-2"), 0);
  assert_int_equal(ds_auth_check(a, "POST", "/agents/team/a", 14, "Bearer reader-secret-2", NULL), 403);
  assert_int_equal(ds_auth_check(a, "GET", "/agents/other", 13, "Bearer reader-secret-2", NULL), 403);
  assert_int_equal(ds_auth_check(a, "GET", "/v1/stream/x", 12, "Bearer reader-secret-", NULL), 401);
  assert_string_equal(ds_auth_cors_origin(a, "https://app.example"), "https://app.example");
  assert_null(ds_auth_cors_origin(a, "https://evil.example"));
  ds_auth_free(a);
  unlink(p);
  free(p);
}

static void test_bad_tables(void **state) {
  (void)state;
  const char *bad[] = {
      "return { auth = 5 }",
      "return { auth = { tokens = { 'x' } } }",
      "return { auth = { tokens = { { token = 'short' } } } }",
      "return { auth = { tokens = { { token = 'long-enough', scopes = {'write'} } } } }",
      "return { cors = { allowed_origins = 5 } }",
      "return { cors = { allowed_origins = { 'https://app.example/' } } }",
      "return { cors = { allowed_origins = { 'app.example' } } }",
      "return { cors = { allowed_origins = { 'https://*.example' } } }",
      "return { cors = { allowed_origins = { '' } } }",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *p = write_tmp(bad[i]);
    char err[200] = "";
    assert_null(ds_auth_load(p, err, sizeof err));
    assert_non_null(strstr(err, p));
    unlink(p);
    free(p);
  }
}

static void test_ct_equal(void **state) {
  (void)state;
  assert_true(ds_auth_ct_equal("abc", 3, "abc", 3));
  assert_false(ds_auth_ct_equal("abc", 3, "abd", 3));
  assert_false(ds_auth_ct_equal("abc", 3, "abcd", 4));
  assert_false(ds_auth_ct_equal("", 0, "a", 1));
  assert_true(ds_auth_ct_equal("", 0, "", 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_off_by_default),
      cmocka_unit_test(test_origins_configured),
      cmocka_unit_test(test_tokens),
      cmocka_unit_test(test_bad_tables),
      cmocka_unit_test(test_ct_equal),
  };
  return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
