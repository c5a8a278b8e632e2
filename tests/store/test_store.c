/* test_store.c - behaviour of ds_store_* common to both kinds (yaml and memory), plus the
 * yaml kind's restart, fsync, LRU, listing and metadata behaviour.
 * Every test runs on its own loop and temp dir and ends with uv_loop_close() == 0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/log.h"
#include "store_test_util.h"

typedef struct {
  const char *kind;
  char *dir;
  uv_loop_t loop;
  ds_store_opts_t opts;
  ds_store_t *st;
} fx_t;

static void fx_init(fx_t *f, const char *kind) {
  memset(f, 0, sizeof *f);
  f->kind = kind;
  f->dir = t_mkdtemp();
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->opts.kind = kind;
  f->opts.data_dir = f->dir;
  f->opts.fsync = DS_FSYNC_INTERVAL;
  f->opts.loop = &f->loop;
}

static void fx_open(fx_t *f) {
  char err[256];
  int rc = ds_store_open(&f->opts, &f->st, err, sizeof err);
  if (rc != 0) fail_msg("ds_store_open: %s (%s)", ds_err_name(rc), err);
}

static void fx_reopen(fx_t *f) {
  assert_int_equal(t_close_store(f->st, &f->loop), 0);
  f->st = NULL;
  fx_open(f);
}

static void fx_done(fx_t *f) {
  if (f->st) assert_int_equal(t_close_store(f->st, &f->loop), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  t_rmrf(f->dir);
  free(f->dir);
}

static int is_yaml(const fx_t *f) { return strcmp(f->kind, "yaml") == 0; }

static void check_range(t_coll_t *c, const char *path, uint64_t first, size_t n, const char *text) {
  assert_int_equal(c->n, n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(c->offs[i], first + i);
    char *want = t_expected_repr(path, first + i, text);
    assert_string_equal(c->reprs[i], want);
    free(want);
  }
}

/* ---- both kinds ---- */

static void test_append_read_order(void **state) {
  fx_t f;
  fx_init(&f, *state);
  fx_open(&f);
  assert_string_equal(ds_store_kind(f.st), f.kind);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "agent/one", 0, 0, &s), DS_ENOTFOUND);
  assert_int_equal(ds_store_exists(f.st, "agent/one"), 0);
  assert_int_equal(ds_store_get(f.st, "agent/one", 1, 0, &s), 0);
  assert_int_equal(ds_store_exists(f.st, "agent/one"), 1);
  assert_string_equal(ds_store_stream_path(s), "agent/one");
  assert_int_equal(ds_store_first_offset(s), 0);
  assert_int_equal(ds_store_next_offset(s), 0);
  ds_store_stream_t *again;
  assert_int_equal(ds_store_get(f.st, "agent/one", 1, 0, &again), 0);
  assert_ptr_equal(s, again);

  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 0); /* empty */
  for (int i = 0; i < 10; i++) assert_int_equal(t_append(s, 1, "hello"), 0);
  assert_int_equal(t_append(s, 5, "hello"), 0); /* a batch */
  assert_int_equal(ds_store_next_offset(s), 15);

  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 15);
  check_range(&c, "agent/one", 0, 15, "hello");
  t_coll_free(&c);

  assert_int_equal(ds_store_read(s, 7, 3, 0, t_collect, &c), 3); /* middle, bounded */
  check_range(&c, "agent/one", 7, 3, "hello");
  t_coll_free(&c);

  assert_int_equal(ds_store_read(s, 15, 0, 0, t_collect, &c), 0); /* at the tail */
  assert_int_equal(ds_store_read(s, 99, 0, 0, t_collect, &c), 0);

  /* max_bytes: only whole records that fit, but always at least one */
  char *one = t_expected_repr("agent/one", 0, "hello");
  size_t rl = strlen(one);
  free(one);
  assert_int_equal(ds_store_read(s, 0, 0, rl * 2 + 1, t_collect, &c), 2);
  t_coll_free(&c);
  assert_int_equal(ds_store_read(s, 0, 0, 1, t_collect, &c), 1);
  t_coll_free(&c);

  /* the callback stops early */
  c.stop_after = 4;
  assert_int_equal(ds_store_read(s, 2, 0, 0, t_collect, &c), 4);
  check_range(&c, "agent/one", 2, 4, "hello");
  t_coll_free(&c);

  ds_store_stats_t stats;
  ds_store_get_stats(f.st, &stats);
  assert_int_equal(stats.appends, 15);
  assert_int_equal(stats.streams, 1);
  assert_true(stats.records_read >= 15 + 3 + 2 + 1 + 4);
  fx_done(&f);
}

static void test_base_offset(void **state) {
  fx_t f;
  fx_init(&f, *state);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "fork/child", 1, 1000, &s), 0);
  assert_int_equal(ds_store_first_offset(s), 1000);
  assert_int_equal(ds_store_next_offset(s), 1000);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 0);
  assert_int_equal(t_append(s, 3, "forked"), 0);
  assert_int_equal(ds_store_next_offset(s), 1003);
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 3); /* below base: from base */
  check_range(&c, "fork/child", 1000, 3, "forked");
  t_coll_free(&c);
  assert_int_equal(ds_store_read(s, 1002, 0, 0, t_collect, &c), 1);
  check_range(&c, "fork/child", 1002, 1, "forked");
  t_coll_free(&c);
  fx_done(&f);
}

static int g_sync_calls, g_sync_status;
static uint64_t g_fsyncs_at_cb;
static ds_store_t *g_sync_store;
static void on_sync(void *ud, int status) {
  (void)ud;
  g_sync_calls++;
  g_sync_status = status;
  if (g_sync_store) {
    ds_store_stats_t st;
    ds_store_get_stats(g_sync_store, &st);
    g_fsyncs_at_cb = st.fsyncs;
  }
}

static void test_sync_immediate(void **state) {
  /* memory always, and yaml under interval/never: the callback runs at once */
  fx_t f;
  fx_init(&f, *state);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "s", 1, 0, &s), 0);
  assert_int_equal(t_append(s, 2, "x"), 0);
  g_sync_calls = 0;
  g_sync_store = NULL;
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  assert_int_equal(g_sync_calls, 1);
  assert_int_equal(g_sync_status, 0);
  fx_done(&f);
}

static void test_meta(void **state) {
  fx_t f;
  fx_init(&f, *state);
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "m/x", 1, 0, &s), 0);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds_store_meta_get(s, &b), DS_ENOTFOUND);
  const char *m1 = "{\"contentType\":\"application/json\"}";
  assert_int_equal(ds_store_meta_set(s, m1, strlen(m1)), 0);
  assert_int_equal(ds_store_meta_get(s, &b), 0);
  assert_int_equal(b.len, strlen(m1));
  assert_memory_equal(b.data, m1, b.len);
  const char *m2 = "{\"contentType\":\"text/plain\",\"ttl\":5}";
  assert_int_equal(ds_store_meta_set(s, m2, strlen(m2)), 0);
  assert_int_equal(ds_store_meta_get(s, &b), 0);
  assert_int_equal(b.len, strlen(m2));
  assert_memory_equal(b.data, m2, b.len);
  if (is_yaml(&f)) {
    fx_reopen(&f);
    assert_int_equal(ds_store_get(f.st, "m/x", 0, 0, &s), 0);
    assert_int_equal(ds_store_meta_get(s, &b), 0);
    assert_int_equal(b.len, strlen(m2));
    assert_memory_equal(b.data, m2, b.len);
    char *tmp = t_path(f.dir, "streams/m/x.yaml.meta.tmp");
    assert_false(t_file_exists(tmp));
    free(tmp);
    char *meta = t_path(f.dir, "streams/m/x.yaml.meta");
    size_t len;
    char *on_disk = t_read_file(meta, &len);
    assert_non_null(on_disk);
    assert_int_equal(len, strlen(m2));
    free(on_disk);
    free(meta);
  }
  ds_buf_free(&b);
  fx_done(&f);
}

typedef struct {
  char *names[64];
  size_t n;
} list_t;
static void on_list(void *ud, const char *path) {
  list_t *l = ud;
  if (l->n < 64) l->names[l->n++] = ds_xstrdup(path);
}
static int list_has(const list_t *l, const char *p) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->names[i], p) == 0) return 1;
  return 0;
}
static void list_free(list_t *l) {
  for (size_t i = 0; i < l->n; i++) free(l->names[i]);
  l->n = 0;
}

static void test_nested_list_delete(void **state) {
  fx_t f;
  fx_init(&f, *state);
  fx_open(&f);
  const char *paths[] = {"a", "a/b", "a/b/c", "x/y.z/w", "agent/session-123"};
  ds_store_stream_t *s;
  for (size_t i = 0; i < 5; i++) {
    assert_int_equal(ds_store_get(f.st, paths[i], 1, 0, &s), 0);
    assert_int_equal(t_append(s, 2, "n"), 0);
  }
  if (is_yaml(&f)) {
    char *p = t_path(f.dir, "streams/a/b/c.yaml");
    assert_true(t_file_exists(p));
    free(p);
    p = t_path(f.dir, "streams/agent/session-123.yaml");
    assert_true(t_file_exists(p));
    free(p);
  }
  list_t l = {0};
  assert_int_equal(ds_store_list(f.st, on_list, &l), 0);
  assert_int_equal(l.n, 5);
  for (size_t i = 0; i < 5; i++) assert_true(list_has(&l, paths[i]));
  list_free(&l);

  /* invalid paths are refused */
  assert_int_equal(ds_store_get(f.st, "../evil", 1, 0, &s), DS_EINVAL);
  assert_int_equal(ds_store_get(f.st, "a//b", 1, 0, &s), DS_EINVAL);
  assert_int_equal(ds_store_get(f.st, "", 1, 0, &s), DS_EINVAL);

  assert_int_equal(ds_store_delete(f.st, "x/y.z/w"), 0);
  assert_int_equal(ds_store_delete(f.st, "x/y.z/w"), DS_ENOTFOUND);
  assert_int_equal(ds_store_exists(f.st, "x/y.z/w"), 0);
  assert_int_equal(ds_store_get(f.st, "x/y.z/w", 0, 0, &s), DS_ENOTFOUND);
  if (is_yaml(&f)) {
    char *p = t_path(f.dir, "streams/x");
    assert_false(t_file_exists(p)); /* emptied directories are removed */
    free(p);
    p = t_path(f.dir, "streams/a/b.yaml.offset");
    assert_true(t_file_exists(p));
    free(p);
  }
  assert_int_equal(ds_store_delete(f.st, "a/b"), 0);
  if (is_yaml(&f)) {
    char *p = t_path(f.dir, "streams/a/b.yaml.offset");
    assert_false(t_file_exists(p));
    free(p);
    p = t_path(f.dir, "streams/a/b.yaml.idx");
    assert_false(t_file_exists(p));
    free(p);
  }
  assert_int_equal(ds_store_list(f.st, on_list, &l), 0);
  assert_int_equal(l.n, 3);
  assert_false(list_has(&l, "a/b"));
  assert_true(list_has(&l, "a/b/c"));
  list_free(&l);

  /* recreate a deleted path: starts empty */
  assert_int_equal(ds_store_get(f.st, "a/b", 1, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), 0);

  /* deleting a stream that exists on disk but was never opened in this process */
  if (is_yaml(&f)) {
    fx_reopen(&f);
    assert_int_equal(ds_store_exists(f.st, "a/b/c"), 1);
    assert_int_equal(ds_store_delete(f.st, "a/b/c"), 0);
    assert_int_equal(ds_store_exists(f.st, "a/b/c"), 0);
    assert_int_equal(ds_store_list(f.st, on_list, &l), 0);
    assert_int_equal(l.n, 3);
    list_free(&l);
  }
  fx_done(&f);
}

/* The name mapping (store.h), the same for both kinds: names that do not fit are never
 * created (whichever caller names them), reads of them find nothing; "x.yaml/..." beside a
 * stream "x" is DS_ECONFLICT in both orders, until the other one is deleted; a and a/b are
 * fine. */
static void test_name_mapping(void **state) {
  fx_t f;
  fx_init(&f, *state);
  fx_open(&f);
  ds_store_stream_t *s;
  char seg[300];
  memset(seg, 's', sizeof seg);
  seg[DS_STORE_SEGMENT_MAX] = '\0';
  assert_int_equal(ds_store_name_check(seg, strlen(seg)), 0);
  assert_int_equal(ds_store_get(f.st, seg, 1, 0, &s), 0); /* 241 bytes: fits, meta included */
  assert_int_equal(ds_store_meta_set(s, "{}", 2), 0);
  seg[DS_STORE_SEGMENT_MAX] = 's';
  seg[DS_STORE_SEGMENT_MAX + 1] = '\0';
  assert_int_equal(ds_store_name_check(seg, strlen(seg)), DS_ETOOBIG);
  assert_int_equal(ds_store_get(f.st, seg, 1, 0, &s), DS_EINVAL);
  static const char *const reserved[] = {"c.yaml.offset", "d/c.yaml.idx/e", "c.YAML.meta", "c.yaml.meta.tmp", "c.yaml.x"};
  for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++) {
    assert_int_equal(ds_store_name_check(reserved[i], strlen(reserved[i])), DS_EINVAL);
    assert_int_equal(ds_store_get(f.st, reserved[i], 1, 0, &s), DS_EINVAL);
  }
  assert_int_equal(ds_store_name_check("c.yaml/b", 8), 0);
  assert_int_equal(ds_store_name_check("c.yaml", 6), 0);
  /* x first, then x.yaml/... */
  assert_int_equal(ds_store_get(f.st, "c", 1, 0, &s), 0);
  assert_int_equal(t_append(s, 1, "c"), 0);
  assert_int_equal(ds_store_get(f.st, "c.yaml/b", 1, 0, &s), DS_ECONFLICT);
  assert_int_equal(ds_store_get(f.st, "c.yaml/b/z", 1, 0, &s), DS_ECONFLICT);
  assert_int_equal(ds_store_get(f.st, "c.yaml/b", 0, 0, &s), DS_ENOTFOUND);
  /* x.yaml/... first, then x */
  assert_int_equal(ds_store_get(f.st, "d.yaml/b/z", 1, 0, &s), 0);
  assert_int_equal(t_append(s, 1, "d"), 0);
  assert_int_equal(ds_store_get(f.st, "d", 1, 0, &s), DS_ECONFLICT);
  assert_int_equal(ds_store_get(f.st, "d.yaml/b", 1, 0, &s), 0); /* a directory's stream: fine */
  assert_int_equal(ds_store_get(f.st, "d", 0, 0, &s), DS_ENOTFOUND);
  assert_int_equal(ds_store_delete(f.st, "d.yaml/b/z"), 0);
  assert_int_equal(ds_store_delete(f.st, "d.yaml/b"), 0);
  assert_int_equal(ds_store_get(f.st, "d", 1, 0, &s), 0);
  /* a and a/b */
  assert_int_equal(ds_store_get(f.st, "a", 1, 0, &s), 0);
  assert_int_equal(ds_store_get(f.st, "a/b", 1, 0, &s), 0);
  if (is_yaml(&f)) { /* the same answers after a restart (nothing cached) */
    fx_reopen(&f);
    assert_int_equal(ds_store_get(f.st, "c.yaml/b", 1, 0, &s), DS_ECONFLICT);
    assert_int_equal(ds_store_get(f.st, "c", 0, 0, &s), 0);
    assert_int_equal(ds_store_next_offset(s), 1);
  }
  fx_done(&f);
}

static void test_large_stream_reads(void **state) {
  fx_t f;
  fx_init(&f, *state);
  f.opts.tail_cache_bytes = 4096; /* only the last ~15 records stay in memory */
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "big/stream", 1, 0, &s), 0);
  const size_t N = 100000;
  for (size_t i = 0; i < N; i += 100) assert_int_equal(t_append(s, 100, "bulk"), 0);
  assert_int_equal(ds_store_next_offset(s), N);
  if (is_yaml(&f)) fx_reopen(&f); /* cold: nothing cached, index loaded from .idx */
  assert_int_equal(ds_store_get(f.st, "big/stream", 0, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), N);

  ds_store_stats_t a, b;
  t_coll_t c = {0};
  ds_store_get_stats(f.st, &a);
  assert_int_equal(ds_store_read(s, N - 50, 10, 0, t_collect, &c), 10);
  ds_store_get_stats(f.st, &b);
  check_range(&c, "big/stream", N - 50, 10, "bulk");
  t_coll_free(&c);
  assert_int_equal(b.records_read - a.records_read, 10);
  /* exactly the returned records were decoded (yaml) or served from memory */
  assert_int_equal((b.cache_misses - a.cache_misses) + (b.cache_hits - a.cache_hits), 10);

  ds_store_get_stats(f.st, &a);
  assert_int_equal(ds_store_read(s, N / 2, 25, 0, t_collect, &c), 25);
  ds_store_get_stats(f.st, &b);
  check_range(&c, "big/stream", N / 2, 25, "bulk");
  t_coll_free(&c);
  assert_int_equal((b.cache_misses - a.cache_misses) + (b.cache_hits - a.cache_hits), 25);

  /* a read spanning disk and the hot tail */
  assert_int_equal(ds_store_read(s, N - 40, 0, 0, t_collect, &c), 40);
  check_range(&c, "big/stream", N - 40, 40, "bulk");
  t_coll_free(&c);
  /* the first records */
  assert_int_equal(ds_store_read(s, 0, 3, 0, t_collect, &c), 3);
  check_range(&c, "big/stream", 0, 3, "bulk");
  t_coll_free(&c);
  fx_done(&f);
}

/* ---- yaml kind ---- */

static void test_yaml_restart(void **state) {
  fx_t f;
  fx_init(&f, "yaml");
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "agent/r", 1, 0, &s), 0);
  for (int i = 0; i < 7; i++) assert_int_equal(t_append(s, 1, "before"), 0);
  assert_int_equal(ds_store_get(f.st, "fork/empty", 1, 42, &s), 0);
  fx_reopen(&f);
  assert_int_equal(ds_store_get(f.st, "agent/r", 0, 0, &s), 0);
  assert_int_equal(ds_store_first_offset(s), 0);
  assert_int_equal(ds_store_next_offset(s), 7);
  assert_int_equal(t_append(s, 3, "after"), 0);
  t_coll_t c = {0};
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 10);
  for (size_t i = 0; i < 10; i++) {
    char *want = t_expected_repr("agent/r", i, i < 7 ? "before" : "after");
    assert_string_equal(c.reprs[i], want);
    free(want);
  }
  t_coll_free(&c);
  /* an empty fork remembers its base across restarts */
  assert_int_equal(ds_store_get(f.st, "fork/empty", 0, 0, &s), 0);
  assert_int_equal(ds_store_first_offset(s), 42);
  assert_int_equal(ds_store_next_offset(s), 42);
  assert_int_equal(t_append(s, 2, "k"), 0);
  fx_reopen(&f);
  assert_int_equal(ds_store_get(f.st, "fork/empty", 0, 0, &s), 0);
  assert_int_equal(ds_store_first_offset(s), 42);
  assert_int_equal(ds_store_next_offset(s), 44);
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 2);
  check_range(&c, "fork/empty", 42, 2, "k");
  t_coll_free(&c);

  /* the file is plain YAML documents, one per record, grep-able */
  char *p = t_path(f.dir, "streams/agent/r.yaml");
  size_t len;
  char *txt = t_read_file(p, &len);
  size_t docs = 0;
  for (const char *q = txt; (q = strstr(q, "---\ntype: test:event\n")) != NULL; q++) docs++;
  assert_int_equal(docs, 10);
  free(txt);
  free(p);
  p = t_path(f.dir, "streams/agent/r.yaml.offset");
  assert_int_equal(t_close_store(f.st, &f.loop), 0); /* close flushes the sidecars */
  f.st = NULL;
  txt = t_read_file(p, &len);
  assert_non_null(txt);
  assert_string_equal(txt, "10");
  free(txt);
  free(p);
  fx_done(&f);
}

static void test_yaml_invalid_doc(void **state) {
  fx_t f;
  fx_init(&f, "yaml");
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "v", 1, 0, &s), 0);
  const char *bad[] = {"type: x\n", "---\ntype: x\noffset: \"0\"\n",
                       "---\ntype: x\ncreatedAt: 2026-01-20T12:00:00.000Z"};
  for (size_t i = 0; i < 3; i++) {
    ds_record_in_t in = {bad[i], strlen(bad[i]), "{}", 2};
    assert_int_equal(ds_store_append(s, &in, 1), DS_EINVAL);
  }
  assert_int_equal(ds_store_next_offset(s), 0);
  char *p = t_path(f.dir, "streams/v.yaml");
  assert_int_equal(t_file_size(p), 0);
  free(p);
  fx_done(&f);
}

static void test_yaml_fsync_always(void **state) {
  fx_t f;
  fx_init(&f, "yaml");
  f.opts.fsync = DS_FSYNC_ALWAYS;
  fx_open(&f);
  ds_store_stream_t *s1, *s2;
  assert_int_equal(ds_store_get(f.st, "g/one", 1, 0, &s1), 0);
  assert_int_equal(ds_store_get(f.st, "g/two", 1, 0, &s2), 0);
  assert_int_equal(t_append(s1, 1, "a"), 0);
  assert_int_equal(t_append(s2, 1, "a"), 0);
  g_sync_calls = 0;
  g_sync_store = f.st;
  g_fsyncs_at_cb = 0;
  /* three syncs before the loop turns: one group fsync answers all of them */
  for (int i = 0; i < 3; i++) assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  assert_int_equal(g_sync_calls, 0); /* not before the fsync */
  int want = 3;
  volatile int done = 0;
  while (!done) {
    uv_run(&f.loop, UV_RUN_ONCE);
    done = g_sync_calls >= want;
  }
  assert_int_equal(g_sync_status, 0);
  assert_int_equal(g_fsyncs_at_cb, 1); /* callbacks ran after the (single) fsync round */

  /* a sync while a round runs for earlier data waits for the following round */
  assert_int_equal(t_append(s1, 1, "b"), 0);
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  assert_int_equal(t_append(s2, 1, "b"), 0);
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  want = 5;
  while (g_sync_calls < want) uv_run(&f.loop, UV_RUN_ONCE);
  assert_int_equal(g_sync_status, 0);
  ds_store_stats_t st;
  ds_store_get_stats(f.st, &st);
  assert_true(st.fsyncs >= 2);
  assert_int_equal(g_fsyncs_at_cb, st.fsyncs);

  /* nothing written since: answered at once */
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  assert_int_equal(g_sync_calls, 6);

  /* a sync pending at close is answered by close */
  assert_int_equal(t_append(s1, 1, "c"), 0);
  g_sync_store = NULL;
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  fx_done(&f);
  assert_int_equal(g_sync_calls, 7);
}

/* A round syncs by name in a worker while the loop goes on. When a stream "x.yaml/b" it
 * covers is deleted meanwhile and a stream "x" takes the name "x.yaml" as its file, the
 * round finds ENOTDIR where the file and directory were: nothing is left to sync, not an
 * I/O error (which failed the round's syncs and logged "fsync failed"). The threadpool is
 * held busy so that the round's work runs only after the loop has made that change. */
static uv_sem_t g_hold;
static void hold_work(uv_work_t *w) { uv_sem_wait(&g_hold); }
static void hold_done(uv_work_t *w, int status) { free(w); }

static void test_yaml_fsync_after_rename_of_dir(void **state) {
  fx_t f;
  fx_init(&f, "yaml");
  f.opts.fsync = DS_FSYNC_ALWAYS;
  fx_open(&f);
  enum { HOLDERS = 16 }; /* more than libuv's pool (4 unless UV_THREADPOOL_SIZE) */
  assert_int_equal(uv_sem_init(&g_hold, 0), 0);
  for (int i = 0; i < HOLDERS; i++) {
    uv_work_t *w = calloc(1, sizeof *w);
    assert_int_equal(uv_queue_work(&f.loop, w, hold_work, hold_done), 0);
  }
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "d.yaml/b", 1, 0, &s), 0); /* new file and directory */
  assert_int_equal(t_append(s, 1, "b"), 0);
  g_sync_calls = 0;
  g_sync_status = 0;
  g_sync_store = NULL; /* on_sync must not look at a store later tests no longer have */
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0); /* the round is queued, held */
  assert_int_equal(ds_store_delete(f.st, "d.yaml/b"), 0);
  assert_int_equal(ds_store_get(f.st, "d", 1, 0, &s), 0); /* "d.yaml" is now a file */
  assert_int_equal(t_append(s, 1, "d"), 0);
  for (int i = 0; i < HOLDERS; i++) uv_sem_post(&g_hold);
  while (g_sync_calls < 1) uv_run(&f.loop, UV_RUN_ONCE);
  assert_int_equal(g_sync_status, 0);
  uv_run(&f.loop, UV_RUN_NOWAIT);
  uv_sem_destroy(&g_hold);
  fx_done(&f);
}

static void test_yaml_fsync_interval(void **state) {
  fx_t f;
  fx_init(&f, "yaml");
  f.opts.fsync = DS_FSYNC_INTERVAL;
  f.opts.fsync_interval_ms = 10;
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "i", 1, 0, &s), 0);
  assert_int_equal(t_append(s, 4, "a"), 0);
  ds_store_stats_t st;
  ds_store_get_stats(f.st, &st);
  uint64_t before = st.fsyncs;
  g_sync_calls = 0;
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  assert_int_equal(g_sync_calls, 1);
  /* the timer fsyncs the dirty file in the background and refreshes the sidecars */
  uv_timer_t poll;
  uv_timer_init(&f.loop, &poll);
  uv_timer_start(&poll, t_poll_cb, 2, 2);
  uint64_t deadline = uv_now(&f.loop) + 10000;
  char *off = t_path(f.dir, "streams/i.yaml.offset");
  int fresh = 0;
  while (uv_now(&f.loop) < deadline) {
    uv_run(&f.loop, UV_RUN_ONCE);
    ds_store_get_stats(f.st, &st);
    char *txt = t_read_file(off, NULL);
    fresh = txt && strcmp(txt, "4") == 0;
    free(txt);
    if (st.fsyncs > before && fresh) break;
  }
  uv_close((uv_handle_t *)&poll, NULL);
  assert_true(st.fsyncs > before);
  assert_true(fresh);
  free(off);
  fx_done(&f);
}

static void test_yaml_fsync_never(void **state) {
  fx_t f;
  fx_init(&f, "yaml");
  f.opts.fsync = DS_FSYNC_NEVER;
  f.opts.fsync_interval_ms = 10;
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "n", 1, 0, &s), 0);
  assert_int_equal(t_append(s, 2, "a"), 0);
  g_sync_calls = 0;
  assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
  assert_int_equal(g_sync_calls, 1);
  fx_reopen(&f);
  assert_int_equal(ds_store_get(f.st, "n", 0, 0, &s), 0);
  assert_int_equal(ds_store_next_offset(s), 2);
  ds_store_stats_t st;
  ds_store_get_stats(f.st, &st);
  assert_int_equal(st.fsyncs, 0);
  fx_done(&f);
}

static void test_yaml_open_file_lru(void **state) {
  ds_fsync_t policies[] = {DS_FSYNC_NEVER, DS_FSYNC_ALWAYS, DS_FSYNC_INTERVAL};
  for (size_t pi = 0; pi < 3; pi++) {
    fx_t f;
    fx_init(&f, "yaml");
    f.opts.max_open_files = 4;
    f.opts.fsync = policies[pi];
    fx_open(&f);
    enum { NS = 20 };
    ds_store_stream_t *ss[NS];
    char name[32];
    for (int i = 0; i < NS; i++) {
      snprintf(name, sizeof name, "lru/s%02d", i);
      assert_int_equal(ds_store_get(f.st, name, 1, 0, &ss[i]), 0);
    }
    for (int round = 0; round < 3; round++)
      for (int i = 0; i < NS; i++) {
        assert_int_equal(t_append(ss[i], 1, "r"), 0);
        ds_store_stats_t st;
        ds_store_get_stats(f.st, &st);
        assert_int_equal(st.streams, NS);
        assert_true(st.open_files <= 4);
      }
    if (policies[pi] == DS_FSYNC_ALWAYS) {
      g_sync_calls = 0;
      g_sync_store = NULL;
      assert_int_equal(ds_store_sync(f.st, on_sync, NULL), 0);
      while (g_sync_calls < 1) uv_run(&f.loop, UV_RUN_ONCE);
      assert_int_equal(g_sync_status, 0);
    }
    ds_store_stats_t st;
    ds_store_get_stats(f.st, &st);
    assert_true(st.open_files <= 4);
    /* reading evicted streams reopens them */
    for (int i = 0; i < NS; i++) {
      t_coll_t c = {0};
      assert_int_equal(ds_store_read(ss[i], 0, 0, 0, t_collect, &c), 3);
      snprintf(name, sizeof name, "lru/s%02d", i);
      check_range(&c, name, 0, 3, "r");
      t_coll_free(&c);
    }
    fx_reopen(&f);
    for (int i = 0; i < NS; i++) {
      snprintf(name, sizeof name, "lru/s%02d", i);
      assert_int_equal(ds_store_get(f.st, name, 0, 0, &ss[i]), 0);
      assert_int_equal(ds_store_next_offset(ss[i]), 3);
    }
    ds_store_get_stats(f.st, &st);
    assert_true(st.open_files <= 4);
    fx_done(&f);
  }
}


static void test_yaml_cache_counts_overhead(void **state) {
  /* the per-stream limit is a memory limit: each cached record costs its bytes plus its
   * bookkeeping, so a 4 KiB tail holds fewer records than 4096 / record length */
  (void)state;
  fx_t f;
  fx_init(&f, "yaml");
  f.opts.tail_cache_bytes = 4096;
  fx_open(&f);
  ds_store_stream_t *s;
  assert_int_equal(ds_store_get(f.st, "overhead/s", 1, 0, &s), 0);
  assert_int_equal(t_append(s, 200, "x"), 0);
  t_coll_t c = {0};
  ds_store_stats_t a, b;
  ds_store_get_stats(f.st, &a);
  assert_int_equal(ds_store_read(s, 0, 0, 0, t_collect, &c), 200);
  ds_store_get_stats(f.st, &b);
  size_t len = strlen(c.reprs[199]);
  uint64_t hits = b.cache_hits - a.cache_hits;
  assert_true(hits > 0);
  assert_true(hits < 4096 / len);
  assert_true(hits * (len + 2 * sizeof(void *)) <= 4096);
  assert_int_equal(hits + (b.cache_misses - a.cache_misses), 200);
  t_coll_free(&c);
  fx_done(&f);
}

static void test_yaml_cache_budget(void **state) {
  /* all hot tails together stay within tail_cache_total_bytes: with 1 KiB per stream,
   * 64 KiB in all and 200 streams, the least recently appended streams lose their cached
   * records */
  fx_t f;
  fx_init(&f, "yaml");
  f.opts.tail_cache_bytes = 1024;
  f.opts.tail_cache_total_bytes = 64 * 1024;
  fx_open(&f);
  enum { NS = 200 };
  ds_store_stream_t *ss[NS];
  char name[32];
  for (int i = 0; i < NS; i++) {
    snprintf(name, sizeof name, "budget/s%03d", i);
    assert_int_equal(ds_store_get(f.st, name, 1, 0, &ss[i]), 0);
    assert_int_equal(t_append(ss[i], 5, "b"), 0);
  }
  ds_store_stats_t a, b;
  t_coll_t c = {0};
  ds_store_get_stats(f.st, &a);
  assert_true(a.cache_bytes > 0 && a.cache_bytes <= 64 * 1024); /* full, within the budget */
  assert_true(a.cache_bytes > 60 * 1024);
  assert_int_equal(ds_store_read(ss[NS - 1], 4, 0, 0, t_collect, &c), 1); /* newest: cached */
  ds_store_get_stats(f.st, &b);
  assert_int_equal(b.cache_hits - a.cache_hits, 1);
  assert_int_equal(b.cache_misses - a.cache_misses, 0);
  t_coll_free(&c);
  ds_store_get_stats(f.st, &a);
  assert_int_equal(ds_store_read(ss[0], 4, 0, 0, t_collect, &c), 1); /* oldest: evicted */
  ds_store_get_stats(f.st, &b);
  assert_int_equal(b.cache_hits - a.cache_hits, 0);
  assert_int_equal(b.cache_misses - a.cache_misses, 1);
  check_range(&c, "budget/s000", 4, 1, "b");
  t_coll_free(&c);
  /* appending again makes a stream's tail hot again */
  assert_int_equal(t_append(ss[0], 1, "b"), 0);
  ds_store_get_stats(f.st, &a);
  assert_int_equal(ds_store_read(ss[0], 5, 0, 0, t_collect, &c), 1);
  ds_store_get_stats(f.st, &b);
  assert_int_equal(b.cache_hits - a.cache_hits, 1);
  t_coll_free(&c);
  /* deleting streams releases their share */
  for (int i = 0; i < NS; i += 2) {
    snprintf(name, sizeof name, "budget/s%03d", i);
    assert_int_equal(ds_store_delete(f.st, name), 0);
  }
  fx_done(&f);
}

int main(void) {
  ds_log_set_level(DS_LOG_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_prestate(test_append_read_order, (void *)"yaml"),
      cmocka_unit_test_prestate(test_append_read_order, (void *)"memory"),
      cmocka_unit_test_prestate(test_base_offset, (void *)"yaml"),
      cmocka_unit_test_prestate(test_base_offset, (void *)"memory"),
      cmocka_unit_test_prestate(test_sync_immediate, (void *)"yaml"),
      cmocka_unit_test_prestate(test_sync_immediate, (void *)"memory"),
      cmocka_unit_test_prestate(test_meta, (void *)"yaml"),
      cmocka_unit_test_prestate(test_meta, (void *)"memory"),
      cmocka_unit_test_prestate(test_nested_list_delete, (void *)"yaml"),
      cmocka_unit_test_prestate(test_nested_list_delete, (void *)"memory"),
      cmocka_unit_test_prestate(test_name_mapping, (void *)"yaml"),
      cmocka_unit_test_prestate(test_name_mapping, (void *)"memory"),
      cmocka_unit_test_prestate(test_large_stream_reads, (void *)"yaml"),
      cmocka_unit_test_prestate(test_large_stream_reads, (void *)"memory"),
      cmocka_unit_test(test_yaml_restart),
      cmocka_unit_test(test_yaml_invalid_doc),
      cmocka_unit_test(test_yaml_fsync_always),
      cmocka_unit_test(test_yaml_fsync_after_rename_of_dir),
      cmocka_unit_test(test_yaml_fsync_interval),
      cmocka_unit_test(test_yaml_fsync_never),
      cmocka_unit_test(test_yaml_open_file_lru),
      cmocka_unit_test(test_yaml_cache_counts_overhead),
      cmocka_unit_test(test_yaml_cache_budget),
  };
  return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
