/* test_yaml_store_leftovers.c - what a crash leaves beside a stream does not outlive the
 * next start: a stream created where an interrupted delete left sidecars behind starts with
 * none of the old stream's state, and a torn .idx tail (a partial entry) is rewritten.
 *
 * A delete unlinks the .yaml first and its sidecars after it; a crash (kill -9 or power loss)
 * between the two leaves the old .meta (content type, closure, producer state, TTL) and
 * possibly a .meta.tmp beside no stream. Found by the crash-state explorer
 * (tests/crash/explore.py, "recreate" probe): an /agents append re-creating the path got a
 * stream that read as the old application/octet-stream protocol stream. A new stream
 * (ordinary or fork) must not inherit it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "store_test_util.h"

static ds_store_t *open_store(uv_loop_t *loop, const char *dir) {
  ds_store_opts_t o;
  memset(&o, 0, sizeof o);
  o.kind = "yaml";
  o.data_dir = dir;
  o.fsync = DS_FSYNC_INTERVAL;
  o.loop = loop;
  ds_store_t *st = NULL;
  char err[256];
  if (ds_store_open(&o, &st, err, sizeof err) != 0) fail_msg("ds_store_open: %s", err);
  return st;
}

static char *side(const char *dir, const char *path, const char *suffix) {
  char rel[600];
  snprintf(rel, sizeof rel, "streams/%s.yaml%s", path, suffix);
  return t_path(dir, rel);
}

/* Leaves what a delete interrupted after its first unlink leaves: the sidecars of a stream
 * with two records and protocol metadata, plus a temporary metadata file. */
static void interrupted_delete(uv_loop_t *loop, const char *dir, const char *path) {
  ds_store_t *st = open_store(loop, dir);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(st, path, 1, 0, &s), 0);
  assert_int_equal(t_append(s, 2, "old"), 0);
  const char *meta = "{\"contentType\":\"application/octet-stream\",\"closed\":true}";
  assert_int_equal(ds_store_meta_set(s, meta, strlen(meta)), 0);
  assert_int_equal(t_close_store(st, loop), 0);
  char *y = side(dir, path, ""), *tmp = side(dir, path, ".meta.tmp");
  assert_int_equal(unlink(y), 0);
  t_write_file(tmp, "{\"contentType\":\"text/plain\"}", 28, "wb");
  free(y);
  free(tmp);
}

static void expect_fresh(uv_loop_t *loop, const char *dir, const char *path, uint64_t base) {
  ds_store_t *st = open_store(loop, dir);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_exists(st, path), 0);
  assert_int_equal(ds_store_get(st, path, 1, base, &s), 0);
  assert_int_equal(ds_store_first_offset(s), base);
  assert_int_equal(ds_store_next_offset(s), base);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds_store_meta_get(s, &b), DS_ENOTFOUND);
  ds_buf_free(&b);
  assert_int_equal(t_close_store(st, loop), 0);
  char *m = side(dir, path, ".meta"), *tmp = side(dir, path, ".meta.tmp");
  assert_false(t_file_exists(m));
  assert_false(t_file_exists(tmp));
  free(m);
  free(tmp);
  /* and so it stays after a restart */
  st = open_store(loop, dir);
  assert_int_equal(ds_store_get(st, path, 0, 0, &s), 0);
  assert_int_equal(ds_store_meta_get(s, &b), DS_ENOTFOUND);
  assert_int_equal(ds_store_next_offset(s), base);
  ds_buf_free(&b);
  assert_int_equal(t_close_store(st, loop), 0);
}

static void test_new_stream_does_not_inherit_metadata(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  char *dir = t_mkdtemp();
  interrupted_delete(&loop, dir, "d/old");
  expect_fresh(&loop, dir, "d/old", 0);
  t_rmrf(dir);
  free(dir);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_new_fork_does_not_inherit_metadata(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  char *dir = t_mkdtemp();
  interrupted_delete(&loop, dir, "d/fork");
  expect_fresh(&loop, dir, "d/fork", 7);
  t_rmrf(dir);
  free(dir);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A power loss tears the .idx sidecar's last append (a page written in part) while the
 * document it indexes did not reach the disk: found by tests/crash/explore.py, `check` after
 * a restart still said "ends with a partial entry". */
static void torn_idx(size_t docs, const char *tail, size_t tail_len) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  char *dir = t_mkdtemp();
  ds_store_t *st = open_store(&loop, dir);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(st, "d/idx", 1, 0, &s), 0);
  if (docs) assert_int_equal(t_append(s, docs, "rec"), 0);
  assert_int_equal(t_close_store(st, &loop), 0);
  char *ip = side(dir, "d/idx", ".idx");
  size_t len = 0;
  char *idx = t_read_file(ip, &len);
  assert_int_equal(len, docs * 8);
  free(idx);
  t_write_file(ip, tail, tail_len, "ab"); /* the next entry, in part */
  st = open_store(&loop, dir);
  assert_int_equal(ds_store_get(st, "d/idx", 0, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), docs);
  assert_int_equal(t_close_store(st, &loop), 0);
  idx = t_read_file(ip, &len);
  assert_int_equal(len, docs * 8); /* whole entries again, one per document */
  free(idx);
  free(ip);
  t_rmrf(dir);
  free(dir);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_torn_idx_entry_rewritten(void **state) {
  (void)state;
  torn_idx(3, "\x5a\x01\x00", 3);
}

static void test_torn_idx_entry_of_empty_stream_rewritten(void **state) {
  (void)state;
  torn_idx(0, "\x00", 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_stream_does_not_inherit_metadata),
      cmocka_unit_test(test_new_fork_does_not_inherit_metadata),
      cmocka_unit_test(test_torn_idx_entry_rewritten),
      cmocka_unit_test(test_torn_idx_entry_of_empty_stream_rewritten),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
