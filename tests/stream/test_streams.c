/* test_streams.c - streams registry: validation, gap-free offsets, publication order,
 * watched streams, paths and offsets helpers. Runs on the memory store. */
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
#include "store/store.h"
#include "stream/streams.h"

typedef struct {
  uv_loop_t loop;
  ds_store_t *store;
  ds_streams_t *ss;
} fx_t;

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  uv_loop_init(&f->loop);
  ds_store_opts_t o = {.kind = "memory", .loop = &f->loop};
  char err[128];
  if (ds_store_open(&o, &f->store, err, sizeof err) != 0) return -1;
  f->ss = ds_streams_new(f->store, NULL);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_streams_free(f->ss);
  ds_store_close(f->store);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

typedef struct {
  ds_sub_t sub;
  uint64_t offsets[64];
  char frames[64][512];
  int n;
} rec_t;

static void on_pub(ds_sub_t *sub, const ds_published_t *rec) {
  rec_t *r = sub->ud;
  r->offsets[r->n] = rec->offset;
  snprintf(r->frames[r->n], sizeof r->frames[0], "%.*s", (int)rec->agents_frame->len,
           rec->agents_frame->data);
  r->n++;
}

static int append(ds_stream_t *s, const char *body, uint64_t *off, char *err) {
  return ds_stream_append_event(s, body, strlen(body), off, err, 256);
}

static void test_append_and_publish(void **state) {
  fx_t *f = *state;
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, "agent/s1", DS_STREAMS_WATCH, 0, &s), 0);
  assert_false(ds_stream_exists(s));
  rec_t r = {0};
  r.sub.on_publish = on_pub;
  r.sub.ud = &r;
  ds_stream_subscribe(s, &r.sub);
  char err[256];
  uint64_t off = 99;
  assert_int_equal(append(s, "{\"type\":\"a\",\"payload\":{\"content\":\"Hello\"}}", &off, err), 0);
  assert_int_equal(off, 0);
  assert_true(ds_stream_exists(s));
  assert_int_equal(append(s, "{\"type\":\"b\",\"payload\":{},\"version\":2}", &off, err), 0);
  assert_int_equal(off, 1);
  assert_int_equal(r.n, 2);
  assert_int_equal(r.offsets[0], 0);
  assert_int_equal(r.offsets[1], 1);
  assert_non_null(strstr(r.frames[0], "id: 0000000000000000\nevent: data\ndata: {\"type\":\"a\","
                                      "\"payload\":{\"content\":\"Hello\"},\"version\":\"1\","
                                      "\"path\":\"agent/s1\",\"offset\":\"0000000000000000\","
                                      "\"createdAt\":\""));
  assert_non_null(strstr(r.frames[1], "\"version\":\"2\""));
  assert_int_equal(ds_stream_next_offset(s), 2);
  ds_stream_unsubscribe(&r.sub);
  ds_stream_unsubscribe(&r.sub); /* idempotent */
}

static void test_validation(void **state) {
  fx_t *f = *state;
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, "v", DS_STREAMS_WATCH, 0, &s), 0);
  char err[256];
  uint64_t off;
  struct {
    const char *body, *needle;
  } bad[] = {
      {"not json", "JSON"},
      {"[1]", "object"},
      {"{\"payload\":{}}", "type"},
      {"{\"type\":5,\"payload\":{}}", "type must be a string"},
      {"{\"type\":\"\",\"payload\":{}}", "type must not be empty"},
      {"{\"type\":\"t\"}", "payload"},
      {"{\"type\":\"t\",\"payload\":[]}", "payload must be"},
      {"{\"type\":\"t\",\"payload\":\"x\"}", "payload must be"},
      {"{\"type\":\"t\",\"payload\":null}", "payload must be"},
      {"{\"type\":\"t\",\"payload\":{},\"version\":true}", "version"},
      {"{\"type\":\"t\",\"payload\":{}} x", "JSON"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = 0;
    assert_int_equal(append(s, bad[i].body, &off, err), DS_EINVAL);
    if (!strstr(err, bad[i].needle)) fail_msg("%s: '%s' lacks '%s'", bad[i].body, err, bad[i].needle);
  }
  /* nothing was created by invalid events */
  assert_false(ds_stream_exists(s));
  ds_streams_release(s);
  assert_false(ds_store_exists(f->store, "v"));
  /* version as number: shortest decimal */
  assert_int_equal(ds_streams_get(f->ss, "v", DS_STREAMS_WATCH, 0, &s), 0);
  assert_int_equal(append(s, "{\"type\":\"t\",\"payload\":{},\"version\":1.5,\"offset\":\"9\",\"path\":\"x\"}", &off, err), 0);
  assert_int_equal(off, 0);
}

static void test_paths(void **state) {
  (void)state;
  char err[128];
  assert_int_equal(ds_path_validate("agent/session-123", 17, err, sizeof err), 0);
  assert_int_equal(ds_path_validate("a", 1, err, sizeof err), 0);
  const char *bad[] = {"", "/a", "a/", "a//b", "..", "a/../b", ".", "a/./b", "a\\b", "a\x01"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(ds_path_validate(bad[i], strlen(bad[i]), err, sizeof err), -1);
  char longp[600];
  memset(longp, 'a', sizeof longp);
  for (size_t i = 128; i < sizeof longp; i += 129) longp[i] = '/'; /* segments of 128 bytes */
  assert_int_equal(ds_path_validate(longp, 512, err, sizeof err), 0);
  assert_int_equal(ds_path_validate(longp, 513, err, sizeof err), -1);
  assert_int_equal(ds_path_validate("\xff", 1, err, sizeof err), -1);
  assert_int_equal(ds_path_validate("a\0b", 3, err, sizeof err), -1);
  /* the store's name mapping: at most 241 bytes per segment, no ".yaml." inside one */
  memset(longp, 's', sizeof longp);
  assert_int_equal(ds_path_validate(longp, DS_STORE_SEGMENT_MAX, err, sizeof err), 0);
  assert_int_equal(ds_path_validate(longp, DS_STORE_SEGMENT_MAX + 1, err, sizeof err), -1);
  assert_non_null(strstr(err, "241"));
  longp[DS_STORE_SEGMENT_MAX + 1] = '/';
  assert_int_equal(ds_path_validate(longp, DS_STORE_SEGMENT_MAX + 3, err, sizeof err), -1);
  const char *reserved[] = {"c.yaml.idx", "a/c.yaml.meta/b", "c.YAML.offset", ".yaml.x"};
  for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
    assert_int_equal(ds_path_validate(reserved[i], strlen(reserved[i]), err, sizeof err), -1);
    assert_non_null(strstr(err, "reserved"));
  }
  assert_int_equal(ds_path_validate("c.yaml/b", 8, err, sizeof err), 0);
  assert_int_equal(ds_path_validate("c.yaml", 6, err, sizeof err), 0);
  /* C1 controls, bidi controls, line/paragraph separators; neighbours are fine */
  const struct { const char *p; const char *cp; } refused[] = {
      {"a\xc2\x80", "U+0080"}, {"\xc2\x9f", "U+009F"}, {"\xd8\x9c", "U+061C"}, {"\xe2\x80\x8e", "U+200E"},
      {"\xe2\x80\x8f", "U+200F"}, {"\xe2\x80\xa8", "U+2028"}, {"\xe2\x80\xa9", "U+2029"},
      {"\xe2\x80\xaa", "U+202A"}, {"x/\xe2\x80\xae", "U+202E"}, {"\xe2\x81\xa6", "U+2066"},
      {"\xe2\x81\xa9", "U+2069"}};
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    assert_int_equal(ds_path_validate(refused[i].p, strlen(refused[i].p), err, sizeof err), -1);
    assert_non_null(strstr(err, refused[i].cp));
    assert_true(strlen(err) < 128);
  }
  const char *fine[] = {"\xc2\xa0", "\xe2\x80\x8d", "\xe2\x80\xaf", "\xe2\x81\xa5", "\xe2\x81\xaa", "\xd8\x9b",
                        "\xe2\x80\xa7"};
  for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++)
    assert_int_equal(ds_path_validate(fine[i], strlen(fine[i]), err, sizeof err), 0);
}

static void test_offsets(void **state) {
  (void)state;
  char out[17];
  ds_offset_format(0, out);
  assert_string_equal(out, "0000000000000000");
  ds_offset_format(9999, out);
  assert_string_equal(out, "0000000000009999");
  /* every digit position, and values past 16 digits (only the low 16 are kept) */
  static const uint64_t vals[] = {1,
                                  12,
                                  123456789,
                                  99999999,
                                  100000000,
                                  1234567890123456,
                                  9999999999999999,
                                  10000000000000000,
                                  12345678901234567890u,
                                  UINT64_MAX};
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
    char want[24];
    snprintf(want, sizeof want, "%016llu",
             (unsigned long long)(vals[i] % UINT64_C(10000000000000000)));
    ds_offset_format(vals[i], out);
    assert_string_equal(out, want);
  }
  for (uint64_t v = 1; v < UINT64_C(10000000000000000); v = v * 7 + 3) {
    char want[24];
    snprintf(want, sizeof want, "%016llu", (unsigned long long)v);
    ds_offset_format(v, out);
    assert_string_equal(out, want);
  }
  uint64_t v;
  assert_int_equal(ds_offset_parse("0000000000009999", 16, &v), 0);
  assert_int_equal(v, 9999);
  assert_int_equal(ds_offset_parse("7", 1, &v), 0);
  assert_int_equal(v, 7);
  assert_int_equal(ds_offset_parse("", 0, &v), -1);
  assert_int_equal(ds_offset_parse("12345678901234567", 17, &v), -1);
  assert_int_equal(ds_offset_parse("1a", 2, &v), -1);
  assert_int_equal(ds_offset_parse("-1", 2, &v), -1);
}

static void test_watch_forgotten(void **state) {
  fx_t *f = *state;
  ds_streams_stats_t st;
  ds_streams_get_stats(f->ss, &st);
  uint64_t before = st.streams_live;
  ds_stream_t *s;
  assert_int_equal(ds_streams_get(f->ss, "never/written", DS_STREAMS_WATCH, 0, &s), 0);
  rec_t r = {0};
  r.sub.on_publish = on_pub;
  r.sub.ud = &r;
  ds_stream_subscribe(s, &r.sub);
  ds_stream_unsubscribe(&r.sub);
  ds_streams_get_stats(f->ss, &st);
  assert_int_equal(st.streams_live, before);
  assert_int_equal(ds_streams_get(f->ss, "never/written", DS_STREAMS_EXISTING, 0, &s), DS_ENOTFOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_append_and_publish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_validation, setup, teardown),
      cmocka_unit_test(test_paths),
      cmocka_unit_test(test_offsets),
      cmocka_unit_test_setup_teardown(test_watch_forgotten, setup, teardown),
  };
  return cmocka_run_group_tests_name("streams", tests, NULL, NULL);
}
