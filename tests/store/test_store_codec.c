/* test_store_codec.c - the yaml store end to end with the real renderers: events rendered
 * by ds_event_render (awkward strings, nesting, multi-line text, unicode, empty
 * containers) are appended, the store is reopened so nothing is cached, and every cold
 * read returns exactly the compact JSON the renderer produced. Also checks the design
 * document's grep recipes still work on the file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/arena.h"
#include "core/log.h"
#include "store_test_util.h"
#include "stream/event.h"

static const char *const bodies[] = {
    "{\"type\":\"iterate:agent:action:send-user-message:called\",\"payload\":{\"content\":\"Hello\"}}",
    "{\"type\":\"finish\",\"payload\":{\"usage\":{\"inputTokens\":12,\"outputTokens\":3}}}",
    "{\"type\":\"x\",\"payload\":{\"text\":\"line one\\nline two\\n  indented\\n---\\ncreatedAt: "
    "2026-01-20T12:00:00.000Z\\n\"}}",
    "{\"type\":\"x\",\"payload\":{\"s\":[\"true\",\"null\",\"0x10\",\"1e5\",\"- a\",\"# c\",\"\","
    "\" lead\",\"trail \",\"a: b\",\"~\"]}}",
    "{\"type\":\"x\",\"payload\":{\"u\":\"\\u00e9\\u4e2d\\ud83d\\ude00\",\"ctl\":\"\\u0001\\t\"}}",
    "{\"type\":\"x\",\"payload\":{\"e\":{},\"a\":[],\"n\":[1,-2.5e-3,12345678901234567890]}}",
    "{\"type\":\"request-cancelled\",\"payload\":{\"deep\":{\"a\":{\"b\":{\"c\":[{\"d\":null}]}}}},"
    "\"version\":\"7\"}",
};
#define NBODIES (sizeof bodies / sizeof *bodies)

static void test_rendered_events_round_trip(void **state) {
  char *dir = t_mkdtemp();
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ds_store_opts_t o = {.kind = "yaml", .data_dir = dir, .loop = &loop};
  ds_store_t *st;
  char err[256];
  assert_int_equal(ds_store_open(&o, &st, err, sizeof err), 0);
  ds_store_stream_t *s;
  const char *path = "agent/session-123";
  assert_int_equal(ds_store_get(st, path, 1, 0, &s), 0);
  enum { ROUNDS = 30 };
  size_t n = ROUNDS * NBODIES;
  char **want = ds_xcalloc(n, sizeof *want);
  for (size_t i = 0; i < n; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    ds_buf_t yaml = DS_BUF_INIT, json = DS_BUF_INIT;
    ds_event_out_t out;
    const char *b = bodies[i % NBODIES];
    int rc = ds_event_render(&a, b, strlen(b), 64, path, i, 1768910400000 + (int64_t)i, &yaml,
                             &json, &out, err, sizeof err);
    if (rc != 0) fail_msg("render %zu: %s", i, err);
    ds_record_in_t in = {yaml.data, yaml.len, json.data, json.len};
    assert_int_equal(ds_store_append(s, &in, 1), 0);
    want[i] = ds_xstrndup(json.data, json.len);
    ds_buf_free(&yaml);
    ds_buf_free(&json);
    ds_arena_free(&a);
  }
  /* hot reads return the renderer's JSON */
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), (long)n);
  for (size_t i = 0; i < n; i++) assert_string_equal(c.reprs[i], want[i]);
  t_coll_free(&c);
  /* cold reads after a restart decode the documents back to the same bytes */
  ds_store_close(st);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(ds_store_open(&o, &st, err, sizeof err), 0);
  assert_int_equal(ds_store_get(st, path, 0, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), n);
  ds_store_stats_t before, after;
  ds_store_get_stats(st, &before);
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), (long)n);
  ds_store_get_stats(st, &after);
  assert_int_equal(after.cache_misses - before.cache_misses, n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(c.offs[i], i);
    assert_string_equal(c.reprs[i], want[i]);
  }
  t_coll_free(&c);
  ds_store_close(st);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);

  /* the debugging recipes: one `^type:` line per event, `---` per document */
  char *file = t_path(dir, "streams/agent/session-123.yaml");
  size_t len;
  char *txt = t_read_file(file, &len);
  assert_non_null(txt);
  size_t types = 0, seps = 0, finishes = 0;
  for (size_t i = 0; i < len; i++) {
    if (i == 0 || txt[i - 1] == '\n') {
      if (strncmp(txt + i, "type:", 5) == 0) types++;
      if (strncmp(txt + i, "---\n", 4) == 0) seps++;
      if (strncmp(txt + i, "type: finish\n", 13) == 0) finishes++;
    }
  }
  assert_int_equal(types, n);
  assert_int_equal(seps, n);
  assert_int_equal(finishes, ROUNDS);
  assert_non_null(strstr(txt, "inputTokens: 12"));
  free(txt);
  free(file);
  for (size_t i = 0; i < n; i++) free(want[i]);
  free(want);
  t_rmrf(dir);
  free(dir);
}

int main(void) {
  ds_log_set_level(DS_LOG_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rendered_events_round_trip),
  };
  return cmocka_run_group_tests_name("store_codec", tests, NULL, NULL);
}
