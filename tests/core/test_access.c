/* test_access.c - the one authorization check: grants, stream paths of a view, and how a
 * subscription glob is covered by URL-path prefixes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/access.h"

static bool allows(const ds_access_t *a, int scope, const char *path) {
  return ds_access_allows(a, scope, path, strlen(path));
}

static void test_null_grant_allows_everything(void **state) {
  (void)state;
  assert_true(allows(NULL, DS_SCOPE_APPEND, "/anything"));
  assert_true(ds_access_allows_stream(NULL, DS_SCOPE_READ, "/v1/stream", "team-b/secret"));
}

static void test_prefixes_and_scopes(void **state) {
  (void)state;
  const char *pr[] = {"/v1/stream/team-a/", "/agents/team-a/"};
  ds_access_t *a = ds_access_new(DS_SCOPE_READ | DS_SCOPE_APPEND, pr, 2);
  assert_true(allows(a, DS_SCOPE_READ, "/v1/stream/team-a/x"));
  assert_true(allows(a, DS_SCOPE_APPEND, "/agents/team-a/x/y"));
  assert_false(allows(a, DS_SCOPE_READ, "/v1/stream/team-b/x"));
  assert_false(allows(a, DS_SCOPE_READ, "/v1/stream/team-a"));        /* the prefix needs its '/' */
  assert_false(allows(a, DS_SCOPE_READ, "/v1/stream/team-a-evil/x")); /* not a segment match */
  assert_true(ds_access_allows_stream(a, DS_SCOPE_READ, "/v1/stream", "team-a/x"));
  assert_false(ds_access_allows_stream(a, DS_SCOPE_READ, "/v1/stream", "team-b/secret"));
  assert_int_equal(ds_access_count(a), 2);
  assert_string_equal(ds_access_prefix(a, 1), "/agents/team-a/");
  assert_null(ds_access_prefix(a, 2));
  ds_access_free(a);
  ds_access_t *r = ds_access_new(DS_SCOPE_READ, pr, 1);
  assert_true(allows(r, DS_SCOPE_READ, "/v1/stream/team-a/x"));
  assert_false(allows(r, DS_SCOPE_APPEND, "/v1/stream/team-a/x"));
  assert_false(allows(r, DS_SCOPE_READ | DS_SCOPE_APPEND, "/v1/stream/team-a/x"));
  ds_access_free(r);
  ds_access_t *none = ds_access_new(0, NULL, 0); /* requests with their own credential */
  assert_false(allows(none, DS_SCOPE_READ, "/"));
  assert_false(allows(none, DS_SCOPE_APPEND, "/v1/stream/x"));
  ds_access_free(none);
}

static void cover(const char *glob, const char *want) {
  ds_buf_t b = DS_BUF_INIT;
  ds_access_glob_cover("/v1/stream", glob, &b);
  assert_string_equal(ds_buf_cstr(&b), want);
  ds_buf_free(&b);
}

static void test_glob_cover(void **state) {
  (void)state;
  cover("**", "/v1/stream/");
  cover("*/x", "/v1/stream/");
  cover("team-a/**", "/v1/stream/team-a/");
  cover("team-a/*", "/v1/stream/team-a/");
  cover("team-a/b/**/c", "/v1/stream/team-a/b/");
  cover("team-a/x", "/v1/stream/team-a/x");   /* no wildcard: one stream */
  cover("team-a/x*y/*", "/v1/stream/team-a/x*y/"); /* '*' inside a segment is literal */
  cover("/team-a//*/", "/v1/stream/team-a/");
  /* what the rule means for a team-a token */
  const char *pr[] = {"/v1/stream/team-a/", "/v1/stream/__ds/"};
  ds_access_t *a = ds_access_new(DS_SCOPE_READ | DS_SCOPE_APPEND, pr, 2);
  const char *ok[] = {"team-a/**", "team-a/*", "team-a/x/*/y", "team-a/x"};
  const char *no[] = {"**", "*", "*/secret", "team-b/**", "team-a-evil/**", "team-a"};
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    ds_buf_t b = DS_BUF_INIT;
    ds_access_glob_cover("/v1/stream", ok[i], &b);
    assert_true(ds_access_allows(a, DS_SCOPE_READ, b.data, b.len));
    ds_buf_free(&b);
  }
  for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
    ds_buf_t b = DS_BUF_INIT;
    ds_access_glob_cover("/v1/stream", no[i], &b);
    assert_false(ds_access_allows(a, DS_SCOPE_READ, b.data, b.len));
    ds_buf_free(&b);
  }
  ds_access_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_null_grant_allows_everything),
      cmocka_unit_test(test_prefixes_and_scopes),
      cmocka_unit_test(test_glob_cover),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
