/* test_yaml_store_recovery.c - crash recovery and failure atomicity of the yaml store:
 * torn tails (partial documents, NUL garbage) truncated on open, stale/missing/corrupt
 * .offset and .idx sidecars repaired from the documents, all-or-nothing appends when the
 * file cannot grow (RLIMIT_FSIZE and a full tmpfs), and recovery once space returns.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "core/log.h"
#include "store_test_util.h"

typedef struct {
  char *dir;
  uv_loop_t loop;
  ds_store_opts_t opts;
  ds_store_t *st;
} fx_t;

static void fx_init(fx_t *f, const char *dir) {
  memset(f, 0, sizeof *f);
  f->dir = dir ? ds_xstrdup(dir) : t_mkdtemp();
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->opts.kind = "yaml";
  f->opts.data_dir = f->dir;
  f->opts.fsync = DS_FSYNC_INTERVAL;
  f->opts.loop = &f->loop;
}

static void fx_open(fx_t *f) {
  char err[256];
  int rc = ds_store_open(&f->opts, &f->st, err, sizeof err);
  if (rc != 0) fail_msg("ds_store_open: %s (%s)", ds_err_name(rc), err);
}

static void fx_close(fx_t *f) {
  if (f->st) assert_int_equal(t_close_store(f->st, &f->loop), 0);
  f->st = NULL;
}

static void fx_done(fx_t *f, int remove) {
  fx_close(f);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  if (remove) t_rmrf(f->dir);
  free(f->dir);
}

/* Creates stream `path` holding n records, closes the store; returns the .yaml path. */
static char *make_stream(fx_t *f, const char *path, uint64_t base, size_t n) {
  fx_open(f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f->st, path, 1, base, &s), 0);
  for (size_t i = 0; i < n; i++) assert_int_equal(t_append(s, 1, "rec"), 0);
  fx_close(f);
  char rel[600];
  snprintf(rel, sizeof rel, "streams/%s.yaml", path);
  return t_path(f->dir, rel);
}

static char *side(const char *file, const char *suffix) {
  size_t n = strlen(file) + strlen(suffix) + 1;
  char *p = ds_xmalloc(n);
  snprintf(p, n, "%s%s", file, suffix);
  return p;
}

/* Document starts in the file, found independently of the store. */
static size_t doc_starts(const char *file, uint64_t *out, size_t max) {
  size_t len, n = 0;
  char *txt = t_read_file(file, &len);
  assert_non_null(txt);
  for (size_t i = 0; i + 4 <= len; i++)
    if ((i == 0 || txt[i - 1] == '\n') && memcmp(txt + i, "---\n", 4) == 0 && n < max)
      out[n++] = i;
  free(txt);
  return n;
}

static void check_idx_file(const char *file) {
  size_t cap = (size_t)t_file_size(file) / 4 + 1;
  uint64_t *want = ds_xmalloc(cap * sizeof *want);
  size_t n = doc_starts(file, want, cap);
  char *ip = side(file, ".idx");
  size_t len;
  char *idx = t_read_file(ip, &len);
  free(ip);
  assert_non_null(idx);
  assert_int_equal(len, n * 8);
  for (size_t i = 0; i < n; i++) {
    uint64_t v = 0;
    for (int b = 7; b >= 0; b--) v = (v << 8) | (unsigned char)idx[i * 8 + (size_t)b];
    assert_int_equal(v, want[i]);
  }
  free(idx);
  free(want);
}

static void check_offset_file(const char *file, const char *want) {
  char *op = side(file, ".offset");
  char *txt = t_read_file(op, NULL);
  free(op);
  assert_non_null(txt);
  assert_string_equal(txt, want);
  free(txt);
}

/* Reopens, checks base/next and that every record reads back (cold, via the index). */
static void reopen_and_check(fx_t *f, const char *path, uint64_t base, uint64_t next) {
  fx_open(f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f->st, path, 0, 0, &s), 0);
  assert_int_equal(ds_store_first_offset(s), base);
  assert_int_equal(ds_store_next_offset(s), next);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), (long)(next - base));
  for (size_t i = 0; i < c.n; i++) {
    assert_int_equal(c.offs[i], base + i);
    char *want = t_expected_repr(path, base + i, "rec");
    assert_string_equal(c.reprs[i], want);
    free(want);
  }
  t_coll_free(&c);
  /* offsets continue gap-free */
  assert_int_equal(t_append(s, 1, "rec"), 0);
  assert_int_equal(ds_store_next_offset(s), next + 1);
  fx_close(f);
}

static void test_torn_partial_document(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "t/partial", 0, 5);
  long size = t_file_size(file);
  const char *part = "---\ntype: test:event\npayload:\n  n: 5\n  text: rec\nversion: \"1\"\n";
  t_write_file(file, part, strlen(part), "ab");
  reopen_and_check(&f, "t/partial", 0, 5);
  /* truncated to the good prefix, then one record appended */
  size_t len;
  char *txt = t_read_file(file, &len);
  assert_true((long)len > size);
  assert_memory_equal(txt + size, "---\ntype: test:event\npayload:\n  n: 5\n", 36);
  assert_non_null(strstr(txt + size, "offset: \"0000000000000005\"\n"));
  free(txt);
  check_idx_file(file);
  check_offset_file(file, "6");
  free(file);
  fx_done(&f, 1);
}

static void test_torn_nul_tail(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "t/nul", 0, 3);
  long size = t_file_size(file);
  char zeros[5000] = {0};
  t_write_file(file, zeros, sizeof zeros, "ab");
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "t/nul", 0, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), 3);
  assert_int_equal(t_file_size(file), size);
  fx_close(&f);
  reopen_and_check(&f, "t/nul", 0, 3);
  check_idx_file(file);
  free(file);
  fx_done(&f, 1);
}

static void test_torn_created_line(void **state) {
  /* the last line itself is cut short: the whole document goes */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "t/line", 0, 4);
  size_t len;
  char *txt = t_read_file(file, &len);
  assert_int_equal(truncate(file, (off_t)(len - 5)), 0);
  reopen_and_check(&f, "t/line", 0, 3);
  free(txt);
  check_idx_file(file);
  free(file);
  fx_done(&f, 1);
}

static void test_torn_only_document(void **state) {
  /* a fork at 7 whose first append was torn: empty again, base kept */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "t/fork", 7, 0);
  const char *part = "---\ntype: test:event\npay";
  t_write_file(file, part, strlen(part), "ab");
  reopen_and_check(&f, "t/fork", 7, 7);
  check_idx_file(file);
  check_offset_file(file, "8");
  free(file);
  fx_done(&f, 1);
}

static void test_offset_sidecar_repair(void **state) {
  const char *variants[] = {"2", NULL, "abc", "", "99999999"};
  for (size_t v = 0; v < 5; v++) {
    fx_t f;
    fx_init(&f, NULL);
    char *file = make_stream(&f, "o/s", 0, 5);
    char *op = side(file, ".offset");
    if (variants[v]) t_write_file(op, variants[v], strlen(variants[v]), "wb");
    else unlink(op);
    fx_open(&f);
    ds_store_stream_t *s;
    assert_int_equal(ds_store_get(f.st, "o/s", 0, 0, &s), 0);
    assert_int_equal(ds_store_next_offset(s), 5);
    fx_close(&f);
    check_offset_file(file, "5"); /* rewritten on open */
    reopen_and_check(&f, "o/s", 0, 5);
    free(op);
    free(file);
    fx_done(&f, 1);
  }
}

static void write_idx(const char *file, const uint64_t *v, size_t n) {
  char *ip = side(file, ".idx");
  unsigned char *b = ds_xmalloc(n * 8 + 1);
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 8; k++) b[i * 8 + (size_t)k] = (unsigned char)(v[i] >> (8 * k));
  t_write_file(ip, b, n * 8, "wb");
  free(b);
  free(ip);
}

static void test_idx_sidecar_repair(void **state) {
  enum { MISSING, GARBAGE, SHORT, EXTRA, SHIFTED, PARTIAL_ENTRY, EMPTY, NVAR };
  for (int v = 0; v < NVAR; v++) {
    fx_t f;
    fx_init(&f, NULL);
    char *file = make_stream(&f, "i/x", 0, 9);
    check_idx_file(file);
    uint64_t starts[64];
    size_t n = doc_starts(file, starts, 64);
    assert_int_equal(n, 9);
    char *ip = side(file, ".idx");
    uint64_t tmp[64];
    switch (v) {
    case MISSING: unlink(ip); break;
    case GARBAGE: t_write_file(ip, "\x13\x37garbage garbage garbage!", 26, "wb"); break;
    case SHORT: write_idx(file, starts, 3); break;
    case EXTRA:
      memcpy(tmp, starts, sizeof starts);
      tmp[9] = 1u << 30;
      tmp[10] = 1u << 31;
      write_idx(file, tmp, 11);
      break;
    case SHIFTED:
      for (size_t i = 0; i < n; i++) tmp[i] = starts[i] + (i ? 1 : 0);
      write_idx(file, tmp, n);
      break;
    case PARTIAL_ENTRY: {
      write_idx(file, starts, 5);
      t_write_file(ip, "\x01\x02\x03", 3, "ab");
      break;
    }
    case EMPTY: t_write_file(ip, "", 0, "wb"); break;
    }
    reopen_and_check(&f, "i/x", 0, 9);
    check_idx_file(file);
    free(ip);
    free(file);
    fx_done(&f, 1);
  }
}

static void test_not_a_stream_file(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "bad", 0, 0);
  const char *junk = "hello: world\ncreatedAt: 2026-01-20T12:00:00.000Z\n";
  t_write_file(file, junk, strlen(junk), "wb");
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "bad", 0, 0, &s), DS_ECORRUPT);
  assert_int_equal(t_file_size(file), (long)strlen(junk)); /* left alone for inspection */
  fx_close(&f);
  free(file);
  fx_done(&f, 1);
}

static void test_idx_lies_in_the_middle(void **state) {
  /* open only verifies the last entry; a wrong middle entry is found by the read and the
   * index is rebuilt from the documents */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "i/mid", 0, 9);
  uint64_t starts[64];
  size_t n = doc_starts(file, starts, 64);
  starts[4] += 7; /* still increasing, no longer a document start */
  write_idx(file, starts, n);
  reopen_and_check(&f, "i/mid", 0, 9);
  check_idx_file(file);
  free(file);
  fx_done(&f, 1);
}

static void test_corrupt_document_in_the_middle(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "c/doc", 0, 6);
  uint64_t starts[64];
  assert_int_equal(doc_starts(file, starts, 64), 6);
  size_t len;
  char *txt = t_read_file(file, &len);
  char *hit = strstr(txt + starts[3], "test:event");
  assert_non_null(hit);
  memcpy(hit, "{{{{{{{{{{", 10); /* same length: positions stay valid */
  t_write_file(file, txt, len, "wb");
  free(txt);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "c/doc", 0, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), 6);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 3); /* what precedes it */
  t_coll_free(&c);
  assert_int_equal(ds_store_read(s, 3, 0, 0, t_collect, &c), DS_ECORRUPT);
  assert_int_equal(c.n, 0);
  assert_int_equal(ds_store_read(s, 4, 0, 0, t_collect, &c), 2); /* later records readable */
  t_coll_free(&c);
  fx_close(&f);
  free(file);
  fx_done(&f, 1);
}

static void test_path_collisions(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "a", 1, 0, &s), 0);          /* streams/a.yaml */
  assert_int_equal(ds_store_get(f.st, "a.yaml/b", 1, 0, &s), DS_ECONFLICT); /* needs dir a.yaml */
  assert_int_equal(ds_store_get(f.st, "x.yaml/y", 1, 0, &s), 0);   /* dir x.yaml */
  assert_int_equal(ds_store_get(f.st, "x", 1, 0, &s), DS_ECONFLICT);
  char seg[400];
  memset(seg, 'q', sizeof seg - 1);
  seg[sizeof seg - 1] = '\0';
  assert_int_equal(ds_store_get(f.st, seg, 1, 0, &s), DS_EINVAL); /* longer than NAME_MAX */
  fx_close(&f);
  fx_done(&f, 1);
}

/* ---- kill -9 while appending ---- */

static void child_append_forever(const char *dir, int wfd) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  ds_store_opts_t o = {0};
  o.kind = "yaml";
  o.data_dir = dir;
  o.fsync = DS_FSYNC_INTERVAL;
  o.fsync_interval_ms = 5;
  o.loop = &loop;
  ds_store_t *st;
  char err[128];
  if (ds_store_open(&o, &st, err, sizeof err) != 0) _exit(2);
  ds_store_stream_t *s;
  if (ds_store_get(st, "crash/s", 1, 0, &s) != 0) _exit(3);
  for (uint64_t i = 0;; i++) {
    if (t_append(s, (size_t)(i % 4) + 1, "rec") != 0) _exit(4);
    uint64_t acked = ds_store_next_offset(s);
    if (write(wfd, &acked, sizeof acked) != (ssize_t)sizeof acked) _exit(5);
    uv_run(&loop, UV_RUN_NOWAIT); /* let the timer flush sidecars now and then */
  }
}

static void test_kill9_while_appending(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  uint64_t acked = 0;
  for (int round = 1; round <= 4; round++) {
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(pfd[0]);
      child_append_forever(f.dir, pfd[1]);
    }
    close(pfd[1]);
    uint64_t v, target = acked + 300u * (unsigned)round;
    while (read(pfd[0], &v, sizeof v) == (ssize_t)sizeof v) {
      acked = v;
      if (acked >= target) break;
    }
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    while (read(pfd[0], &v, sizeof v) == (ssize_t)sizeof v) acked = v; /* drain */
    close(pfd[0]);
    assert_true(WIFSIGNALED(status));
    assert_true(acked >= target);
    /* every acknowledged record is there, in order, nothing torn */
    fx_open(&f);
    ds_store_stream_t *s;
    assert_int_equal(ds_store_get(f.st, "crash/s", 0, 0, &s), 0);
    uint64_t next = ds_store_next_offset(s);
    assert_true(next >= acked);
    t_coll_t c = {0};
    uint64_t from = 0;
    while (from < next) {
      long n = ds_store_read(s, from, 1000, 0, t_collect, &c);
      assert_true(n > 0);
      from += (uint64_t)n;
    }
    assert_int_equal(c.n, next);
    for (size_t i = 0; i < c.n; i++) assert_int_equal(c.offs[i], i);
    char *want = t_expected_repr("crash/s", next - 1, "rec");
    assert_string_equal(c.reprs[c.n - 1], want);
    free(want);
    t_coll_free(&c);
    fx_close(&f);
    char *file = t_path(f.dir, "streams/crash/s.yaml");
    check_idx_file(file);
    free(file);
    acked = next;
  }
  fx_done(&f, 1);
}

/* ---- the file cannot grow ---- */

static void test_append_all_or_nothing_fsize(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "full/rl", 0, 2);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "full/rl", 0, 0, &s), 0);
  long size = t_file_size(file);
  long doc = size / 2;
  struct rlimit old, lim;
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  lim = old;
  lim.rlim_cur = (rlim_t)(size + doc + doc / 2); /* room for one and a half documents */
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
  int rc_batch = t_append(s, 3, "rec"); /* the write stops part-way: EFBIG */
  long size_after_batch = t_file_size(file);
  int rc_one = t_append(s, 1, "rec"); /* fits */
  int rc_two = t_append(s, 1, "rec"); /* partially fits: rolled back */
  long size_after = t_file_size(file);
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, prev);
  assert_int_equal(rc_batch, DS_ENOSPC);
  assert_int_equal(size_after_batch, size);
  assert_int_equal(rc_one, 0);
  assert_int_equal(rc_two, DS_ENOSPC);
  assert_int_equal(size_after, size + doc);
  assert_int_equal(ds_store_next_offset(s), 3);
  /* space is back */
  assert_int_equal(t_append(s, 2, "rec"), 0);
  assert_int_equal(ds_store_next_offset(s), 5);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 5);
  t_coll_free(&c);
  fx_close(&f);
  reopen_and_check(&f, "full/rl", 0, 5);
  check_idx_file(file);
  free(file);
  fx_done(&f, 1);
}

static char *g_mnt; /* the tmpfs mount point, unmounted by the teardown even on failure */

static int teardown_tmpfs(void **state) {
  if (g_mnt) {
    t_rmrf(g_mnt); /* empties the tmpfs, then removes nothing more: it is a mount point */
    umount2(g_mnt, MNT_DETACH); /* lazy: a failed test may still hold descriptors */
    rmdir(g_mnt);
    free(g_mnt);
    g_mnt = NULL;
  }
  return 0;
}

static void test_disk_full_tmpfs(void **state) {
  char *mnt = t_mkdtemp();
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=64k") != 0) {
    rmdir(mnt);
    free(mnt);
    skip(); /* needs root (CAP_SYS_ADMIN) to mount a tiny tmpfs */
  }
  g_mnt = mnt;
  fx_t f;
  fx_init(&f, mnt);
  f.opts.fsync = DS_FSYNC_ALWAYS;
  fx_open(&f);
  /* a filler file we can delete later to give space back */
  char *filler = t_path(mnt, "filler");
  char block[4096];
  memset(block, 'x', sizeof block);
  for (int i = 0; i < 4; i++) t_write_file(filler, block, sizeof block, "ab");
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "disk/full", 1, 0, &s), 0);
  int rc = 0;
  uint64_t acked = 0;
  for (int i = 0; i < 10000 && rc == 0; i++) {
    rc = t_append(s, (size_t)(i % 3) + 1, "rec");
    if (rc == 0) acked = ds_store_next_offset(s);
  }
  assert_int_equal(rc, DS_ENOSPC);
  assert_int_equal(ds_store_next_offset(s), acked);
  assert_true(acked > 10);
  /* nothing half-written is visible */
  char *file = t_path(mnt, "streams/disk/full.yaml");
  uint64_t starts[1024];
  assert_int_equal(doc_starts(file, starts, 1024), acked);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), (long)acked);
  t_coll_free(&c);
  /* still failing cleanly, then space comes back */
  assert_int_equal(t_append(s, 1, "rec"), DS_ENOSPC);
  unlink(filler);
  assert_int_equal(t_append(s, 1, "rec"), 0);
  assert_int_equal(ds_store_next_offset(s), acked + 1);
  fx_close(&f);
  reopen_and_check(&f, "disk/full", 0, acked + 1);
  free(filler);
  free(file);
  fx_done(&f, 0);
}

int main(void) {
  ds_log_set_level(DS_LOG_OFF);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_torn_partial_document),
      cmocka_unit_test(test_torn_nul_tail),
      cmocka_unit_test(test_torn_created_line),
      cmocka_unit_test(test_torn_only_document),
      cmocka_unit_test(test_offset_sidecar_repair),
      cmocka_unit_test(test_idx_sidecar_repair),
      cmocka_unit_test(test_not_a_stream_file),
      cmocka_unit_test(test_idx_lies_in_the_middle),
      cmocka_unit_test(test_corrupt_document_in_the_middle),
      cmocka_unit_test(test_path_collisions),
      cmocka_unit_test(test_kill9_while_appending),
      cmocka_unit_test(test_append_all_or_nothing_fsize),
      cmocka_unit_test_teardown(test_disk_full_tmpfs, teardown_tmpfs),
  };
  return cmocka_run_group_tests_name("yaml_store_recovery", tests, NULL, NULL);
}
