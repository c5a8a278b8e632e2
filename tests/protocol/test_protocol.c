/* test_protocol.c - unit tests of the protocol front end's internals on the memory store:
 * request offset parsing, cursors, subscription globs, JSON-mode message preparation
 * (one-level flattening, empty arrays), record rendering through ds_stream_append_records,
 * and the metadata sidecar round trip (state saved, forgotten, reloaded). The HTTP
 * behaviour is covered by the official conformance suite (tests/conformance.test.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/err.h"
#include "protocol/pappend.h"
#include "protocol/pinternal.h"
#include "store/store.h"
#include "stream/streams.h"

typedef struct {
  uv_loop_t loop;
  ds_store_t *store;
  ds_streams_t *ss;
  ds_protocol_t *p;
} fx_t;

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  uv_loop_init(&f->loop);
  ds_store_opts_t o = {.kind = "memory", .loop = &f->loop};
  char err[128];
  if (ds_store_open(&o, &f->store, err, sizeof err) != 0) return -1;
  f->ss = ds_streams_new(f->store, NULL);
  ds_protocol_opts_t po = {.long_poll_timeout_ms = 500, .subscriptions = 0};
  f->p = ds_protocol_new(&f->loop, f->ss, &po);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_protocol_shutdown(f->p);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ds_protocol_free(f->p);
  ds_streams_free(f->ss);
  ds_store_close(f->store);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

static int parse(const char *s, uint64_t *v, int *sentinel) {
  return ds__offset_parse_req(s, strlen(s), v, sentinel);
}

static void test_offsets(void **state) {
  (void)state;
  uint64_t v;
  int sn;
  assert_int_equal(parse("-1", &v, &sn), 0);
  assert_int_equal(sn, -1);
  assert_int_equal(parse("now", &v, &sn), 0);
  assert_int_equal(sn, 1);
  assert_int_equal(parse("0000000000000042", &v, &sn), 0);
  assert_int_equal(sn, 0);
  assert_int_equal(v, 42);
  /* the reference servers' "<seq>_<bytes>" form: the first part is the position */
  assert_int_equal(parse("0000000000000000_0000000000000000", &v, &sn), 0);
  assert_int_equal(v, 0);
  assert_int_equal(parse("9999999999999999_9999999999999999", &v, &sn), 0);
  assert_int_equal(v, 9999999999999999ULL);
  const char *bad[] = {"", "-2", "abc", "1,2", " 1", "1 ", "../1", "1/2", "12345678901234567",
                       "1_", "_1", "1_x", "NOW", "1\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(parse(bad[i], &v, &sn), -1);
  assert_int_equal(ds__offset_parse_req("1\0" "2", 3, &v, &sn), -1);
}

static void test_cursor(void **state) {
  (void)state;
  char a[32], b[32], c[32];
  ds__cursor(NULL, a);
  ds__cursor("1", b); /* an old client cursor: the current interval */
  assert_string_equal(a, b);
  ds__cursor(a, c); /* echoing the current cursor must move it forward */
  assert_true(strtoll(c, NULL, 10) > strtoll(a, NULL, 10));
  assert_true(strtoll(c, NULL, 10) <= strtoll(a, NULL, 10) + 180);
}

static void test_glob(void **state) {
  (void)state;
  assert_true(ds__glob_match("events/*", "events/a"));
  assert_false(ds__glob_match("events/*", "events/a/b"));
  assert_false(ds__glob_match("events/*", "events"));
  assert_true(ds__glob_match("events/**", "events/a/b"));
  assert_true(ds__glob_match("events/**", "events"));
  assert_true(ds__glob_match("**/x", "a/b/x"));
  assert_false(ds__glob_match("a/*/c", "a/b/d"));
  assert_true(ds__glob_match("/a/b/", "a/b"));
}

static void test_json_flattening(void **state) {
  (void)state;
  char err[128];
  struct {
    const char *body;
    bool create;
    int rc;
    size_t n;
    const char *first;
  } cases[] = {
      {"[1,2,3]", false, 0, 3, "1"},
      {"[[1,2],[3,4]]", false, 0, 2, "[1,2]"},
      {"[[[1,2,3]]]", false, 0, 1, "[[1,2,3]]"},
      {"{\"a\": 1}", false, 0, 1, "{\"a\":1}"},
      {"[]", false, DS_EINVAL, 0, NULL},
      {"[]", true, 0, 0, NULL},
      {"{bad", false, DS_EINVAL, 0, NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    ds__msgs_t m;
    ds__msgs_init(&m);
    int rc = ds__msgs_prepare(&m, DS__M_JSON, cases[i].body, strlen(cases[i].body),
                              cases[i].create, err, sizeof err);
    assert_int_equal(rc, cases[i].rc);
    if (rc == 0) {
      assert_int_equal(m.n, cases[i].n);
      if (cases[i].first) {
        assert_int_equal(m.items[0].repr_len, strlen(cases[i].first));
        assert_memory_equal(m.reprs.data + m.items[0].repr_off, cases[i].first,
                            strlen(cases[i].first));
      }
    }
    ds__msgs_free(&m);
  }
}

typedef struct {
  char buf[256];
  size_t len;
  long n;
} collect_t;

static int collect(void *ud, uint64_t off, const char *repr, size_t len) {
  (void)off;
  collect_t *c = ud;
  memcpy(c->buf + c->len, repr, len);
  c->len += len;
  c->n++;
  return 0;
}

static void test_commit_and_read(void **state) {
  fx_t *f = *state;
  ds_stream_t *s = NULL;
  assert_int_equal(ds_streams_get(f->ss, "bin/one", DS_STREAMS_CREATE, 0, &s), 0);
  ds__pstream_t *st = ds__state_new(f->p, "bin/one");
  st->ctype = strdup("application/octet-stream");
  st->mode = DS__M_BYTES;
  assert_int_equal(ds__state_save(f->p, st), 0);
  char err[64];
  const char raw[] = {0, 1, 2, '\r', '\n', (char)0xff};
  ds__msgs_t m;
  ds__msgs_init(&m);
  assert_int_equal(ds__msgs_prepare(&m, DS__M_BYTES, raw, sizeof raw, false, err, sizeof err), 0);
  assert_int_equal(ds__msgs_commit(&m, s), 0);
  ds__msgs_free(&m);
  ds__msgs_init(&m);
  assert_int_equal(ds__msgs_prepare(&m, DS__M_BYTES, "xy", 2, false, err, sizeof err), 0);
  assert_int_equal(ds__msgs_commit(&m, s), 0);
  ds__msgs_free(&m);
  assert_int_equal(ds_stream_next_offset(s), 2);
  collect_t c = {{0}, 0, 0};
  assert_int_equal(ds__read_range(f->p, st, s, 0, UINT64_MAX, 1 << 20, collect, &c), 2);
  assert_int_equal(c.len, sizeof raw + 2);
  assert_memory_equal(c.buf, raw, sizeof raw);
  assert_memory_equal(c.buf + sizeof raw, "xy", 2);
  /* a range read stops before `to` */
  memset(&c, 0, sizeof c);
  assert_int_equal(ds__read_range(f->p, st, s, 0, 1, 1 << 20, collect, &c), 1);
  assert_int_equal(c.len, sizeof raw);
}

static void test_fork_stitching(void **state) {
  fx_t *f = *state;
  char err[64];
  ds_stream_t *src = NULL, *fk = NULL;
  assert_int_equal(ds_streams_get(f->ss, "src", DS_STREAMS_CREATE, 0, &src), 0);
  ds__pstream_t *ss = ds__state_new(f->p, "src");
  ss->ctype = strdup("text/plain");
  ss->mode = DS__M_TEXT;
  ds__state_save(f->p, ss);
  const char *parts[] = {"a", "b", "c"};
  for (int i = 0; i < 3; i++) {
    ds__msgs_t m;
    ds__msgs_init(&m);
    assert_int_equal(ds__msgs_prepare(&m, DS__M_TEXT, parts[i], 1, false, err, sizeof err), 0);
    assert_int_equal(ds__msgs_commit(&m, src), 0);
    ds__msgs_free(&m);
  }
  /* fork at offset 2: inherits "ab", then its own "Z" at offset 2 */
  assert_int_equal(ds_streams_get(f->ss, "fork", DS_STREAMS_CREATE, 2, &fk), 0);
  ds__pstream_t *fs = ds__state_new(f->p, "fork");
  fs->ctype = strdup("text/plain");
  fs->mode = DS__M_TEXT;
  fs->fork_from = strdup("src");
  fs->fork_offset = 2;
  ds__state_save(f->p, fs);
  ds__msgs_t m;
  ds__msgs_init(&m);
  assert_int_equal(ds__msgs_prepare(&m, DS__M_TEXT, "Z", 1, false, err, sizeof err), 0);
  assert_int_equal(ds__msgs_commit(&m, fk), 0);
  ds__msgs_free(&m);
  collect_t c = {{0}, 0, 0};
  assert_int_equal(ds__read_range(f->p, fs, fk, 0, UINT64_MAX, 1 << 20, collect, &c), 3);
  assert_int_equal(c.len, 3);
  assert_memory_equal(c.buf, "abZ", 3);
  memset(&c, 0, sizeof c);
  assert_int_equal(ds__read_range(f->p, fs, fk, 1, UINT64_MAX, 1 << 20, collect, &c), 2);
  assert_memory_equal(c.buf, "bZ", 2);
}

static void test_meta_roundtrip(void **state) {
  fx_t *f = *state;
  ds_stream_t *s = NULL;
  assert_int_equal(ds_streams_get(f->ss, "meta/x", DS_STREAMS_CREATE, 0, &s), 0);
  ds__pstream_t *st = ds__state_new(f->p, "meta/x");
  st->ctype = strdup("text/plain; charset=utf-8");
  st->mode = ds__mode_of(st->ctype);
  st->has_ttl = true;
  st->ttl_s = 3600;
  st->closed = true;
  st->closed_by = strdup("prod \"1\"");
  st->closed_epoch = 2;
  st->closed_seq = 7;
  ds__producer_t *pr = ds__producer_put(st, "prod \"1\"");
  pr->epoch = 2;
  pr->seq = 7;
  st->refs = 3;
  st->seq = strdup("009");
  assert_int_equal(ds__state_save(f->p, st), 0);
  ds__state_forget(f->p, "meta/x");
  ds__pstream_t *l = ds__state_peek(f->p, "meta/x", NULL);
  assert_non_null(l);
  assert_false(l->agents);
  assert_string_equal(l->ctype, "text/plain; charset=utf-8");
  assert_int_equal(l->mode, DS__M_TEXT);
  assert_true(l->has_ttl);
  assert_int_equal(l->ttl_s, 3600);
  assert_true(l->closed);
  assert_string_equal(l->closed_by, "prod \"1\"");
  assert_int_equal(l->closed_epoch, 2);
  assert_int_equal(l->closed_seq, 7);
  ds__producer_t *lp = ds__producer_find(l, "prod \"1\"");
  assert_non_null(lp);
  assert_int_equal(lp->epoch, 2);
  assert_int_equal(lp->seq, 7);
  assert_int_equal(l->refs, 3);
  assert_string_equal(l->seq, "009");
  /* a stream without metadata is an /agents event stream: application/json */
  ds_stream_t *a = NULL;
  assert_int_equal(ds_streams_get(f->ss, "agents/y", DS_STREAMS_CREATE, 0, &a), 0);
  ds__pstream_t *ag = ds__state_peek(f->p, "agents/y", NULL);
  assert_true(ag->agents);
  assert_int_equal(ag->mode, DS__M_JSON);
  assert_null(ds__state_peek(f->p, "missing", NULL));
}

static void test_expiry_and_cascade(void **state) {
  fx_t *f = *state;
  ds_stream_t *s = NULL;
  assert_int_equal(ds_streams_get(f->ss, "exp/src", DS_STREAMS_CREATE, 0, &s), 0);
  ds__pstream_t *src = ds__state_new(f->p, "exp/src");
  src->ctype = strdup("text/plain");
  src->refs = 1;
  ds__state_save(f->p, src);
  assert_int_equal(ds_streams_get(f->ss, "exp/fork", DS_STREAMS_CREATE, 0, &s), 0);
  ds__pstream_t *fk = ds__state_new(f->p, "exp/fork");
  fk->ctype = strdup("text/plain");
  fk->fork_from = strdup("exp/src");
  ds__state_save(f->p, fk);
  /* the source expires while a fork reads through it: soft-deleted, data kept */
  src->has_ttl = true;
  src->ttl_s = 1;
  src->access_ms -= 5000;
  ds__pstream_t *got = ds__state_get(f->p, "exp/src", NULL);
  assert_non_null(got);
  assert_true(got->soft_deleted);
  /* deleting the last fork garbage-collects the soft-deleted source */
  ds__state_delete_cascade(f->p, "exp/fork");
  assert_null(ds__state_peek(f->p, "exp/fork", NULL));
  assert_null(ds__state_peek(f->p, "exp/src", NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_offsets),
      cmocka_unit_test(test_cursor),
      cmocka_unit_test(test_glob),
      cmocka_unit_test(test_json_flattening),
      cmocka_unit_test_setup_teardown(test_commit_and_read, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fork_stitching, setup, teardown),
      cmocka_unit_test_setup_teardown(test_meta_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_expiry_and_cascade, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
