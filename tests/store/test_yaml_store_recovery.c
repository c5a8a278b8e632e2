/* test_yaml_store_recovery.c - crash recovery and failure atomicity of the yaml store:
 * torn tails (partial documents, NUL garbage) truncated on open (and kept aside), stale/
 * missing/corrupt .offset and .idx sidecars repaired from the documents, all-or-nothing
 * appends when the file cannot grow (RLIMIT_FSIZE and a full tmpfs), and recovery once
 * space returns. Damage in the middle of a file (flipped bytes, a truncated, duplicated or
 * deleted document, a damaged .idx, .offset or .meta sidecar): every intact record before
 * it is read, the read fails at it, appends are refused, and the log names the file, the
 * byte position and the expected offset.
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

/* ---- damage in the middle ---- */

/* Captures the log (stderr) between log_begin and log_end. A failing assertion in between
 * jumps out with stderr still captured (cmocka's message included): the teardown
 * (restore_log) puts stderr back and shows what was captured. */
typedef struct {
  int saved;
  char path[64];
} logcap_t;

static logcap_t *g_cap;

static void log_begin(logcap_t *l) {
  snprintf(l->path, sizeof l->path, "/tmp/ds-store-log-XXXXXX");
  int fd = mkstemp(l->path);
  assert_true(fd >= 0);
  fflush(stderr);
  l->saved = dup(2);
  assert_true(l->saved >= 0);
  assert_int_equal(dup2(fd, 2), 2);
  close(fd);
  g_cap = l;
  ds_log_set_level(DS_LOG_INFO);
}

static char *log_end(logcap_t *l) {
  ds_log_set_level(DS_LOG_OFF);
  fflush(stderr);
  dup2(l->saved, 2);
  close(l->saved);
  g_cap = NULL;
  char *txt = t_read_file(l->path, NULL);
  unlink(l->path);
  assert_non_null(txt);
  return txt;
}

static int restore_log(void **state) {
  if (g_cap) {
    logcap_t *l = g_cap;
    char *txt = log_end(l);
    fprintf(stderr, "---- log captured until the failure ----\n%s----\n", txt);
    free(txt);
  }
  return 0;
}

static void assert_log_has(const char *log, const char *what) {
  if (!strstr(log, what)) fail_msg("log lacks \"%s\":\n%s", what, log);
}

/* The file as bytes, edited with splice(): replace [at, at + del) by ins. */
static void splice_file(const char *file, size_t at, size_t del, const char *ins, size_t n) {
  size_t len;
  char *txt = t_read_file(file, &len);
  assert_non_null(txt);
  assert_true(at + del <= len);
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_append(&b, txt, at);
  ds_buf_append(&b, ins, n);
  ds_buf_append(&b, txt + at + del, len - at - del);
  t_write_file(file, b.data, b.len, "wb");
  ds_buf_free(&b);
  free(txt);
}

/* Opens the damaged stream (the log of the open and of what follows is captured) and
 * checks the contract: a read from the start gets exactly the intact records [base,
 * intact) with their content, then the read at `intact` fails (also on its own), the
 * damage is reported there at byte `pos`, and an append is refused without touching the
 * file. Returns the captured log. */
static char *check_damaged(fx_t *f, const char *path, uint64_t base, uint64_t intact,
                           uint64_t pos, ds_store_stream_t **out) {
  logcap_t l;
  log_begin(&l);
  fx_open(f);
  ds_store_stream_t *s;
  int rc = ds_store_get(f->st, path, 0, 0, &s);
  if (rc != 0) {
    char *log = log_end(&l);
    fail_msg("ds_store_get: %s; log:\n%s", ds_err_name(rc), log);
  }
  assert_int_equal(ds_store_first_offset(s), base);
  t_coll_t c = {0};
  long n = ds_store_read(s, 0, 0, 0, t_collect, &c);
  if (intact > base) {
    assert_int_equal(n, (long)(intact - base));
  } else {
    assert_int_equal(n, DS_ECORRUPT);
  }
  for (size_t i = 0; i < c.n; i++) {
    assert_int_equal(c.offs[i], base + i);
    char *want = t_expected_repr(path, base + i, "rec");
    assert_string_equal(c.reprs[i], want);
    free(want);
  }
  t_coll_free(&c);
  assert_int_equal(ds_store_read(s, intact, 0, 0, t_collect, &c), DS_ECORRUPT);
  assert_int_equal(c.n, 0);
  char rel[600];
  snprintf(rel, sizeof rel, "streams/%s.yaml", path);
  char *file = t_path(f->dir, rel);
  long size = t_file_size(file);
  uint64_t next = ds_store_next_offset(s);
  assert_int_equal(t_append(s, 1, "rec"), DS_ECORRUPT);
  assert_int_equal(t_file_size(file), size);
  assert_int_equal(ds_store_next_offset(s), next);
  free(file);
  ds_store_damage_t d;
  assert_int_equal(ds_store_damage(s, &d), 0);
  assert_int_equal(d.offset, intact);
  assert_int_equal(d.pos, pos);
  assert_true(ds_store_damage_at(s, intact, NULL));
  *out = s;
  char *log = log_end(&l);
  char want[64];
  snprintf(want, sizeof want, "byte %" PRIu64, pos);
  assert_log_has(log, rel);
  assert_log_has(log, want);
  snprintf(want, sizeof want, "offset %" PRIu64, intact);
  assert_log_has(log, want);
  if (strstr(log, "last document has no valid offset line")) fail_msg("misleading log:\n%s", log);
  return log;
}

static void test_damage_flipped_bytes_in_a_document(void **state) {
  /* bytes flipped inside document 3: it does not decode; the documents after it are
   * where their offsets say, so a read from 4 still works */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/flip", 0, 8);
  uint64_t st[16];
  assert_int_equal(doc_starts(file, st, 16), 8);
  splice_file(file, st[3] + 6, 3, "\x01\x7f\xff", 3); /* "type: tes..." */
  ds_store_stream_t *s;
  char *log = check_damaged(&f, "d/flip", 0, 3, st[3], &s);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 4, 0, 0, t_collect, &c), 4);
  assert_int_equal(c.offs[0], 4);
  t_coll_free(&c);
  free(log);
  fx_close(&f);
  free(file);
  fx_done(&f, 1);
}

static void test_damage_flipped_separator(void **state) {
  /* a flipped "---" line merges documents 4 and 5. With the .idx still knowing where
   * document 5 began, record 4 is intact and the read fails at 5 (found by the read);
   * without it the file holds one document fewer than offsets, found on open, and
   * nothing from the merged document on can be located. */
  for (int v = 0; v < 2; v++) {
    fx_t f;
    fx_init(&f, NULL);
    char *file = make_stream(&f, "d/sep", 0, 8);
    uint64_t st[16];
    assert_int_equal(doc_starts(file, st, 16), 8);
    splice_file(file, st[5] + 1, 1, "+", 1);
    if (v == 1) {
      char *ip = side(file, ".idx");
      unlink(ip);
      free(ip);
    }
    ds_store_stream_t *s;
    char *log = check_damaged(&f, "d/sep", 0, v == 0 ? 5 : 4, v == 0 ? st[5] : st[4], &s);
    t_coll_t c = {0};
    assert_int_equal(ds_store_read(s, 6, 0, 0, t_collect, &c), v == 0 ? 2 : DS_ECORRUPT);
    t_coll_free(&c);
    free(log);
    fx_close(&f);
    free(file);
    fx_done(&f, 1);
  }
}

static void test_damage_truncated_middle_document(void **state) {
  /* document 4 loses its createdAt line (it decodes, but is cut short), or is cut in the
   * middle of a line (it merges with document 5) */
  for (int v = 0; v < 2; v++) {
    fx_t f;
    fx_init(&f, NULL);
    char *file = make_stream(&f, "d/cut", 0, 8);
    uint64_t st[16];
    assert_int_equal(doc_starts(file, st, 16), 8);
    size_t cut = v == 0 ? 36 : 20;
    splice_file(file, st[5] - cut, cut, "", 0);
    ds_store_stream_t *s;
    char *log = check_damaged(&f, "d/cut", 0, 4, st[4], &s);
    if (v == 0) assert_log_has(log, "createdAt");
    free(log);
    fx_close(&f);
    free(file);
    fx_done(&f, 1);
  }
}

static void test_damage_duplicated_document(void **state) {
  /* document 2 copied right after itself: reads stop at the copy (where offset 3 should
   * be), and the log says duplicate, not "no valid offset line" */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/dup", 0, 6);
  uint64_t st[16];
  assert_int_equal(doc_starts(file, st, 16), 6);
  size_t len;
  char *txt = t_read_file(file, &len);
  splice_file(file, st[3], 0, txt + st[2], st[3] - st[2]);
  free(txt);
  ds_store_stream_t *s;
  char *log = check_damaged(&f, "d/dup", 0, 3, st[3], &s);
  assert_log_has(log, "duplicate");
  assert_int_equal(ds_store_next_offset(s), 6);
  free(log);
  fx_close(&f);
  free(file);
  fx_done(&f, 1);
}

static void test_damage_deleted_document(void **state) {
  /* document 3 deleted by hand: the stream still starts at 0 (it did not become a stream
   * from 1 whose every read failed), records 0-2 read, offset 3 is reported missing */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/del", 0, 6);
  uint64_t st[16];
  assert_int_equal(doc_starts(file, st, 16), 6);
  splice_file(file, st[3], st[4] - st[3], "", 0);
  ds_store_stream_t *s;
  char *log = check_damaged(&f, "d/del", 0, 3, st[3], &s);
  assert_log_has(log, "offset 3 is missing");
  assert_int_equal(ds_store_next_offset(s), 6);
  free(log);
  fx_close(&f);
  /* the first document deleted: nothing is presented as a stream starting at 1 */
  free(file);
  file = make_stream(&f, "d/del0", 0, 4);
  assert_int_equal(doc_starts(file, st, 16), 4);
  splice_file(file, 0, st[1], "", 0);
  log = check_damaged(&f, "d/del0", 0, 0, 0, &s);
  free(log);
  fx_close(&f);
  /* the same in a fork at 5: its first offset is known (.base), it does not start at 6 */
  free(file);
  file = make_stream(&f, "d/delf", 5, 4);
  assert_int_equal(doc_starts(file, st, 16), 4);
  splice_file(file, 0, st[1], "", 0);
  log = check_damaged(&f, "d/delf", 5, 5, 0, &s);
  assert_log_has(log, "offset 5 is missing");
  free(log);
  fx_close(&f);
  free(file);
  fx_done(&f, 1);
}

static void test_damage_idx_extra_entry(void **state) {
  /* an .idx with one bogus (increasing) entry in the middle: more entries than offsets;
   * the index is rebuilt from the documents, logged, and everything works */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/idx", 0, 9);
  uint64_t st[16], bad[17];
  assert_int_equal(doc_starts(file, st, 16), 9);
  for (size_t i = 0, j = 0; i < 9; i++) {
    bad[j++] = st[i];
    if (i == 4) bad[j++] = st[i] + 11;
  }
  write_idx(file, bad, 10);
  logcap_t l;
  log_begin(&l);
  fx_open(&f);
  ds_store_stream_t *s;
  int rc = ds_store_get(f.st, "d/idx", 0, 0, &s);
  fx_close(&f);
  char *log = log_end(&l);
  if (rc != 0) fail_msg("ds_store_get: %s; log:\n%s", ds_err_name(rc), log);
  assert_log_has(log, "d/idx.yaml.idx: damaged");
  free(log);
  reopen_and_check(&f, "d/idx", 0, 9);
  check_idx_file(file);
  free(file);
  fx_done(&f, 1);
}

static void test_damage_offset_sidecar(void **state) {
  /* (1) a non-empty stream: the documents win, the damage is logged */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/off", 0, 5);
  char *op = side(file, ".offset");
  t_write_file(op, "7x", 2, "wb");
  logcap_t l;
  log_begin(&l);
  reopen_and_check(&f, "d/off", 0, 5);
  char *log = log_end(&l);
  assert_log_has(log, "d/off.yaml.offset: damaged");
  free(log);
  check_offset_file(file, "6");
  free(op);
  free(file);
  /* (2) an empty fork: its first offset comes from .base, not 0 */
  file = make_stream(&f, "d/fork", 7, 0);
  op = side(file, ".offset");
  t_write_file(op, "\xff", 1, "wb");
  reopen_and_check(&f, "d/fork", 7, 7);
  check_offset_file(file, "8");
  /* (3) an empty fork made before .base existed: its fork point comes from its metadata */
  free(file);
  file = make_stream(&f, "d/old", 7, 0);
  char *bp = side(file, ".base"), *mp = side(file, ".meta");
  unlink(bp);
  t_write_file(mp, "{\"fork\":{\"offset\":7}}", 21, "wb");
  free(op);
  op = side(file, ".offset");
  t_write_file(op, "", 0, "wb");
  reopen_and_check(&f, "d/old", 7, 7);
  check_offset_file(file, "8");
  /* (4) and when its metadata is damaged too, the first offset is unknown: appends are
   * refused instead of restarting it at 0 */
  free(file);
  file = make_stream(&f, "d/lost", 7, 0);
  free(bp);
  free(mp);
  free(op);
  bp = side(file, ".base");
  mp = side(file, ".meta");
  op = side(file, ".offset");
  unlink(bp);
  t_write_file(mp, "{\"fork\":{\"off", 14, "wb");
  t_write_file(op, "", 0, "wb");
  log_begin(&l);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "d/lost", 0, 0, &s), 0);
  assert_int_equal(t_append(s, 1, "rec"), DS_ECORRUPT);
  assert_int_equal(t_file_size(file), 0);
  fx_close(&f);
  log = log_end(&l);
  assert_log_has(log, "d/lost.yaml.offset: damaged and the stream is empty");
  free(log);
  free(bp);
  free(mp);
  free(op);
  free(file);
  fx_done(&f, 1);
}

static void test_stale_base_sidecar(void **state) {
  /* a .base left behind by a delete interrupted after the .yaml went: a new ordinary
   * stream at that path starts at 0, also when it is still empty at the next open */
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/stale", 0, 0);
  char *bp = side(file, ".base");
  t_write_file(bp, "9", 1, "wb");
  unlink(file);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "d/stale", 1, 0, &s), 0);
  assert_int_equal(ds_store_first_offset(s), 0);
  fx_close(&f);
  assert_false(t_file_exists(bp));
  reopen_and_check(&f, "d/stale", 0, 0);
  free(bp);
  free(file);
  fx_done(&f, 1);
}

static void test_damage_meta_sidecar(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "d/meta", 0, 2);
  char *mp = side(file, ".meta");
  const char *good = "{\"contentType\":\"application/json\",\"ttl\":60}";
  ds_buf_t b = DS_BUF_INIT;
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "d/meta", 0, 0, &s), 0);
  assert_int_equal(ds_store_meta_get(s, &b), DS_ENOTFOUND); /* missing: not damage */
  assert_int_equal(ds_store_meta_set(s, good, strlen(good)), 0);
  fx_close(&f);
  const char *bad[] = {"{\"contentType\":\"applica", "", "\x00\x00\x00\x00", "[1]"};
  for (size_t v = 0; v < sizeof bad / sizeof *bad; v++) {
    size_t n = v == 2 ? 4 : strlen(bad[v]);
    t_write_file(mp, bad[v], n, "wb");
    logcap_t l;
    log_begin(&l);
    fx_open(&f);
    assert_int_equal(ds_store_get(f.st, "d/meta", 0, 0, &s), 0);
    assert_int_equal(ds_store_meta_get(s, &b), DS_ECORRUPT);
    assert_int_equal(ds_store_meta_get(s, &b), DS_ECORRUPT); /* stays so, logged once */
    t_coll_t c = {0};
    assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 2); /* records unaffected */
    t_coll_free(&c);
    fx_close(&f);
    char *log = log_end(&l);
    assert_log_has(log, "d/meta.yaml.meta: damaged metadata sidecar");
    const char *first = strstr(log, "damaged metadata"), *again = first ? strstr(first + 1, "damaged metadata") : NULL;
    assert_null(again);
    free(log);
    size_t len; /* left as it is */
    char *txt = t_read_file(mp, &len);
    assert_int_equal(len, n);
    free(txt);
  }
  ds_buf_free(&b);
  free(mp);
  free(file);
  fx_done(&f, 1);
}

static void test_torn_tail_kept_aside(void **state) {
  fx_t f;
  fx_init(&f, NULL);
  char *file = make_stream(&f, "t/aside", 0, 3);
  const char *part = "---\ntype: test:event\npayload:\n  n: 3\n  te";
  t_write_file(file, part, strlen(part), "ab");
  reopen_and_check(&f, "t/aside", 0, 3);
  char *dir = t_path(f.dir, "streams/t");
  DIR *d = opendir(dir);
  assert_non_null(d);
  struct dirent *e;
  int found = 0;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "aside.yaml.damaged-", 19) != 0) continue;
    char *p = t_path(dir, e->d_name);
    size_t len;
    char *txt = t_read_file(p, &len);
    assert_int_equal(len, strlen(part));
    assert_memory_equal(txt, part, len);
    free(txt);
    free(p);
    found++;
  }
  closedir(d);
  assert_int_equal(found, 1);
  free(dir);
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
      cmocka_unit_test_teardown(test_damage_flipped_bytes_in_a_document, restore_log),
      cmocka_unit_test_teardown(test_damage_flipped_separator, restore_log),
      cmocka_unit_test_teardown(test_damage_truncated_middle_document, restore_log),
      cmocka_unit_test_teardown(test_damage_duplicated_document, restore_log),
      cmocka_unit_test_teardown(test_damage_deleted_document, restore_log),
      cmocka_unit_test_teardown(test_damage_idx_extra_entry, restore_log),
      cmocka_unit_test_teardown(test_damage_offset_sidecar, restore_log),
      cmocka_unit_test(test_stale_base_sidecar),
      cmocka_unit_test_teardown(test_damage_meta_sidecar, restore_log),
      cmocka_unit_test(test_torn_tail_kept_aside),
      cmocka_unit_test(test_path_collisions),
      cmocka_unit_test(test_kill9_while_appending),
      cmocka_unit_test(test_append_all_or_nothing_fsize),
      cmocka_unit_test_teardown(test_disk_full_tmpfs, teardown_tmpfs),
  };
  return cmocka_run_group_tests_name("yaml_store_recovery", tests, NULL, NULL);
}
