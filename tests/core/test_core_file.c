/* test_core_file.c - the whole-file helpers of core/file.h: atomic replace (content, mode,
 * no temp file left, old content kept when the write cannot happen), read-all, durable
 * remove (idempotent) and move-aside (content kept under a new name, original gone),
 * mkdir -p of "" refused, the non-syncing variants and explicit fsyncs, and a symlink
 * planted at "<file>.tmp" never followed (its target untouched).
 * Each test works in its own temp dir and removes it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/file.h"

static char *tmpdir(void) {
  char tpl[] = "/tmp/ds-core-file-XXXXXX";
  char *d = mkdtemp(tpl);
  assert_non_null(d);
  return strdup(d);
}

static void rm_rf(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    for (struct dirent *e; (e = readdir(d));) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char p[4096];
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      struct stat sb;
      if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_rf(p);
      else unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

static size_t count_entries(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static void test_write_read_replace(void **state) {
  (void)state;
  char *dir = tmpdir();
  char sub[4096], f[4200];
  snprintf(sub, sizeof sub, "%s/a/b", dir);
  assert_int_equal(ds_file_mkdir_p(sub, 0700), 0);
  assert_int_equal(ds_file_mkdir_p(sub, 0700), 0); /* exists: fine */
  snprintf(f, sizeof f, "%s/x.json", sub);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds_file_read_all(f, &b), DS_ENOTFOUND);
  assert_int_equal(ds_file_write_atomic(f, "first", 5, 0600), 0);
  assert_int_equal(ds_file_read_all(f, &b), 0);
  assert_int_equal(b.len, 5);
  assert_memory_equal(b.data, "first", 5);
  struct stat sb;
  assert_int_equal(stat(f, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  assert_int_equal(ds_file_write_atomic(f, "second!", 7, 0600), 0);
  ds_buf_reset(&b);
  assert_int_equal(ds_file_read_all(f, &b), 0);
  assert_int_equal(b.len, 7);
  assert_memory_equal(b.data, "second!", 7);
  assert_int_equal(count_entries(sub), 1); /* no x.json.tmp left */
  ds_buf_free(&b);
  rm_rf(dir);
  free(dir);
}

static void test_write_failure_keeps_nothing(void **state) {
  (void)state;
  char *dir = tmpdir();
  char f[4200];
  snprintf(f, sizeof f, "%s/missing/x.json", dir);
  int rc = ds_file_write_atomic(f, "x", 1, 0644);
  assert_true(rc < 0);
  assert_int_equal(count_entries(dir), 0);
  rm_rf(dir);
  free(dir);
}

static void test_remove_and_move_aside(void **state) {
  (void)state;
  char *dir = tmpdir();
  char f[4200], aside[4300];
  snprintf(f, sizeof f, "%s/bad.json", dir);
  assert_int_equal(ds_file_write_atomic(f, "{broken", 7, 0644), 0);
  assert_int_equal(ds_file_move_aside(f, aside, sizeof aside), 0);
  assert_non_null(strstr(aside, "/bad.json.damaged-"));
  assert_int_equal(access(f, F_OK), -1);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds_file_read_all(aside, &b), 0);
  assert_int_equal(b.len, 7);
  assert_memory_equal(b.data, "{broken", 7);
  ds_buf_free(&b);
  char again[4300]; /* a failed move still names its would-be target (another ms) */
  assert_true(ds_file_move_aside(f, again, sizeof again) < 0); /* nothing left to move */
  assert_int_equal(ds_file_remove(aside), 0);
  assert_int_equal(ds_file_remove(aside), 0); /* already gone: still fine */
  assert_int_equal(count_entries(dir), 0);
  rm_rf(dir);
  free(dir);
}

static void test_mkdir_p_edges(void **state) {
  (void)state;
  assert_int_equal(ds_file_mkdir_p("", 0700), DS_EINVAL);
  assert_int_equal(ds_file_mkdir_p(NULL, 0700), DS_EINVAL);
  char *dir = tmpdir();
  char sub[4096];
  snprintf(sub, sizeof sub, "%s/x/y/z/", dir); /* trailing slash: same directory */
  assert_int_equal(ds_file_mkdir_p(sub, 0700), 0);
  struct stat sb;
  snprintf(sub, sizeof sub, "%s/x/y/z", dir);
  assert_int_equal(stat(sub, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  assert_int_equal(sb.st_mode & 0077, 0); /* the last level gets `mode` (0700) */
  /* a path component that is a file: an error, not a crash */
  char f[4200];
  snprintf(f, sizeof f, "%s/plain", dir);
  assert_int_equal(ds_file_write_atomic(f, "x", 1, 0644), 0);
  snprintf(sub, sizeof sub, "%s/plain/below", dir);
  assert_true(ds_file_mkdir_p(sub, 0700) < 0);
  rm_rf(dir);
  free(dir);
}

static void test_nosync_and_fsync(void **state) {
  (void)state;
  char *dir = tmpdir();
  char f[4200];
  snprintf(f, sizeof f, "%s/state.json", dir);
  assert_int_equal(ds_file_fsync(f), DS_ENOTFOUND);
  assert_int_equal(ds_file_write_atomic_opt(f, "one", 3, 0644, false), 0);
  assert_int_equal(ds_file_write_atomic_opt(f, "two!", 4, 0644, false), 0);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds_file_read_all(f, &b), 0);
  assert_int_equal(b.len, 4);
  assert_memory_equal(b.data, "two!", 4);
  ds_buf_free(&b);
  assert_int_equal(count_entries(dir), 1); /* no temp file left */
  assert_int_equal(ds_file_fsync(f), 0);
  assert_int_equal(ds_file_fsync_dir(dir), 0);
  assert_true(ds_file_fsync_dir(f) < 0); /* not a directory */
  assert_int_equal(ds_file_remove_opt(f, false), 0);
  assert_int_equal(ds_file_remove_opt(f, false), 0);
  assert_int_equal(count_entries(dir), 0);
  rm_rf(dir);
  free(dir);
}

static void test_tmp_symlink_not_followed(void **state) {
  (void)state;
  char *dir = tmpdir();
  char f[4200], tmp[4300], victim[4200];
  snprintf(f, sizeof f, "%s/state.json", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", f);
  snprintf(victim, sizeof victim, "%s/victim", dir);
  assert_int_equal(ds_file_write_atomic(victim, "precious", 8, 0600), 0);
  assert_int_equal(ds_file_write_atomic(f, "old", 3, 0644), 0);
  assert_int_equal(symlink(victim, tmp), 0);
  assert_true(ds_file_write_atomic(f, "new", 3, 0644) < 0);
  assert_true(ds_file_write_atomic_opt(f, "new", 3, 0644, false) < 0);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds_file_read_all(victim, &b), 0);
  assert_int_equal(b.len, 8);
  assert_memory_equal(b.data, "precious", 8); /* the symlink's target is untouched */
  ds_buf_reset(&b);
  assert_int_equal(ds_file_read_all(f, &b), 0);
  assert_int_equal(b.len, 3);
  assert_memory_equal(b.data, "old", 3); /* and the old file kept */
  ds_buf_free(&b);
  rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_write_read_replace),
      cmocka_unit_test(test_write_failure_keeps_nothing),
      cmocka_unit_test(test_remove_and_move_aside),
      cmocka_unit_test(test_mkdir_p_edges),
      cmocka_unit_test(test_nosync_and_fsync),
      cmocka_unit_test(test_tmp_symlink_not_followed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
