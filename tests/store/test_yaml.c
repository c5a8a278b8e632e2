/* test_yaml.c - unit tests of the YAML record emitter, its quoting rule, the libyaml
 * loader and ds_record_decode_yaml().
 * Must not: touch files; everything runs on in-memory strings.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "store/json.h"
#include "store/store.h"
#include "store/yaml.h"

static char g_err[256];

/* JSON text -> YAML text (static buffer). */
static const char *emit_json(const char *json) {
  static ds_buf_t out;
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v;
  if (ds_json_parse(&a, json, strlen(json), 0, &v, g_err, sizeof g_err) != 0)
    fail_msg("bad test JSON %s: %s", json, g_err);
  ds_buf_reset(&out);
  ds_yaml_emit_doc(&out, v);
  ds_arena_free(&a);
  return ds_buf_cstr(&out);
}

/* YAML text -> compact JSON (static buffer), or NULL on a load error (g_err set). */
static const char *load_n(const char *y, size_t n) {
  if (!y) assert_int_equal(n, 0);
  static ds_buf_t out;
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  int rc = ds_yaml_load_doc(&a, y, n, &v, g_err, sizeof g_err);
  const char *res = NULL;
  ds_buf_reset(&out);
  if (rc == 0) {
    ds_json_write(&out, v);
    res = ds_buf_cstr(&out);
  } else {
    assert_int_equal(rc, DS_ECORRUPT);
    assert_true(strncmp(g_err, "line ", 5) == 0);
    assert_null(strchr(g_err, '\n'));
  }
  ds_arena_free(&a);
  return res;
}
static const char *load(const char *y) { return load_n(y, strlen(y)); }

static void expect_load(const char *y, const char *json) {
  const char *got = load(y);
  if (!got) fail_msg("load failed: %s\n%s", g_err, y);
  assert_string_equal(got, json);
}

static void test_contract_example(void **st) {
  (void)st;
  const char *json = "{\"type\":\"iterate:agent:action:send-user-message:called\","
                     "\"payload\":{\"content\":\"Hello\"},\"version\":\"1\","
                     "\"path\":\"agent/session-123\",\"offset\":\"0000000000000000\","
                     "\"createdAt\":\"2026-01-20T12:00:00.000Z\"}";
  const char *expect = "---\n"
                       "type: iterate:agent:action:send-user-message:called\n"
                       "payload:\n"
                       "  content: Hello\n"
                       "version: \"1\"\n"
                       "path: agent/session-123\n"
                       "offset: \"0000000000000000\"\n"
                       "createdAt: 2026-01-20T12:00:00.000Z\n";
  assert_string_equal(emit_json(json), expect);
  expect_load(expect, json);
  /* and the record decoder sees an event */
  ds_buf_t repr = DS_BUF_INIT;
  uint64_t off = 99;
  assert_int_equal(ds_record_decode_yaml(expect, strlen(expect), &repr, &off, g_err, sizeof g_err), 0);
  assert_int_equal(off, 0);
  assert_string_equal(ds_buf_cstr(&repr), json);
  ds_buf_free(&repr);
}

static void expect_plain(const char *s, int plain) {
  int got = ds_yaml_scalar_plain_ok(s, strlen(s));
  if (got != plain) fail_msg("'%s': expected %s", s, plain ? "plain" : "quoted");
}

static void test_quoting_rule(void **st) {
  (void)st;
  /* plain */
  const char *plain[] = {"Hello", "agent/session-123", "2026-01-20T12:00:00.000Z", "2026-01-20",
                         "iterate:agent:x", "a:b", "a#b", "a-b", "it's", "say \"hi\"", "back\\slash",
                         "x y", "inf", "NaN", "Infinity", "nulls", "yess", "1.2.3a", "1a",
                         "0x", "12:3x", "+", "=x", "<<x", "a,b", "a[b]", "a{b}", "caf\xc3\xa9",
                         "\xf0\x9f\x98\x80", "a\302\240b", "ab.", "v1.0", "1-2", "1e", "e5",
                         "x-"};
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) expect_plain(plain[i], 1);
  /* empty, surrounding spaces */
  expect_plain("", 0);
  expect_plain(" a", 0);
  expect_plain("a ", 0);
  expect_plain(" ", 0);
  /* leading indicators */
  const char *ind[] = {"-a", "?a", ":a", ",a", "[a", "]a", "{a", "}a", "#a", "&a", "*a",
                       "!a", "|a", ">a", "'a", "\"a", "%a", "@a", "`a", "--x", "---", "- a"};
  for (size_t i = 0; i < sizeof ind / sizeof ind[0]; i++) expect_plain(ind[i], 0);
  /* ": ", " #", trailing ':' and document markers */
  expect_plain("a: b", 0);
  expect_plain("a #b", 0);
  expect_plain("a:", 0);
  expect_plain("...", 0);
  expect_plain("...x", 0);
  /* characters that need escapes */
  const char *esc[] = {"a\tb", "a\nb", "a\rb", "\x01", "a\x7f", "a\xc2\x80", "a\xc2\x85",
                       "a\xc2\x9f", "a\xe2\x80\xa8", "a\xe2\x80\xa9", "\357\273\277a",
                       "a\xef\xbf\xbe", "a\xef\xbf\xbf"};
  for (size_t i = 0; i < sizeof esc / sizeof esc[0]; i++) expect_plain(esc[i], 0);
  assert_false(ds_yaml_scalar_plain_ok("a\0b", 3));
  /* null / bool in every case form (YAML 1.1 and 1.2) */
  const char *words[] = {"~", "null", "Null", "NULL", "nUlL", "true", "True", "TRUE", "false",
                         "False", "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "on", "On",
                         "ON", "off", "Off", "OFF", "y", "Y", "n", "N", "<<", "="};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) expect_plain(words[i], 0);
  /* numbers of YAML 1.1, YAML 1.2 and JSON */
  const char *nums[] = {"0", "1", "-1", "+1", "007", "0777", "0o17", "0O17", "0x1F", "0XfF",
                        "0b1010", "0B11", "1_000", "+685_230", "1:20", "190:20:30",
                        "190:20:30.15", "-1:00", "1.5", ".5", "1.", "-.5", "+.5", "1e5",
                        "1E+5", "1e-7", "6.8523015e+5", "685.230_15e+03", "1.2.3", ".",
                        ".inf", ".Inf", ".INF", "-.inf", "+.inf", ".nan", ".NaN", ".NAN",
                        "-0", "-0.0", "5e-324", "1.7976931348623157e308",
                        "9223372036854775807", "-9223372036854775808", "0000000000000000",
                        "12345678901234567890123"};
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) expect_plain(nums[i], 0);
}

static void test_emit_layout(void **st) {
  (void)st;
  assert_string_equal(emit_json("{\"a\":{},\"b\":[],\"c\":null,\"d\":true,\"e\":false,\"f\":-1.5e3}"),
                      "---\na: {}\nb: []\nc: null\nd: true\ne: false\nf: -1.5e3\n");
  /* sequences inside a mapping are indented; mappings inside items use "- k: v" */
  assert_string_equal(emit_json("{\"list\":[\"a\",\"b\"],\"m\":[{\"k\":1,\"k2\":[1,{\"x\":{}}]}]}"),
                      "---\nlist:\n  - a\n  - b\nm:\n  - k: 1\n    k2:\n      - 1\n"
                      "      - x: {}\n");
  /* a sequence inside a sequence */
  assert_string_equal(emit_json("{\"s\":[[\"a\",\"b\"],[[1]],[]]}"),
                      "---\ns:\n  - - a\n    - b\n  - - - 1\n  - []\n");
  /* nested mapping as the first member of an item */
  assert_string_equal(emit_json("[{\"a\":{\"b\":1},\"c\":2}]"),
                      "---\n- a:\n    b: 1\n  c: 2\n");
  /* keys are quoted by the same rule */
  assert_string_equal(emit_json("{\"1\":1,\"true\":2,\"a b\":3,\"a: b\":4,\"\":5,\"-k\":6}"),
                      "---\n\"1\": 1\n\"true\": 2\na b: 3\n\"a: b\": 4\n\"\": 5\n\"-k\": 6\n");
  /* multi-line strings stay on one line, with escapes */
  assert_string_equal(emit_json("{\"m\":\"l1\\nl2\\r\\n\\tx\\u0000\\u0007\\u007f\\\"\\\\\"}"),
                      "---\nm: \"l1\\nl2\\r\\n\\tx\\0\\x07\\x7F\\\"\\\\\"\n");
  assert_string_equal(emit_json("{\"u\":\"\\u0085\\u2028\\u2029\\ufeff\\ufffe\\uffff\\u0080\\u009f\"}"),
                      "---\nu: \"\\x85\\u2028\\u2029\\uFEFF\\uFFFE\\uFFFF\\x80\\x9F\"\n");
  /* astral characters stay raw */
  assert_string_equal(emit_json("{\"e\":\"\\ud83d\\ude00\"}"), "---\ne: \xf0\x9f\x98\x80\n");
  /* top-level scalars and arrays */
  assert_string_equal(emit_json("\"x\""), "--- x\n");
  assert_string_equal(emit_json("\"1\""), "--- \"1\"\n");
  assert_string_equal(emit_json("5"), "--- 5\n");
  assert_string_equal(emit_json("null"), "--- null\n");
  assert_string_equal(emit_json("{}"), "--- {}\n");
  assert_string_equal(emit_json("[]"), "--- []\n");
  assert_string_equal(emit_json("[\"a\",[1]]"), "---\n- a\n- - 1\n");
}

static void test_emit_binary(void **st) {
  (void)st;
  ds_arena_t a;
  ds_arena_init(&a);
  ds_buf_t b = DS_BUF_INIT;
  ds_value_t *o = ds_value_object(&a, 0);
  ds_value_object_add(&a, o, "bytes", 5, ds_value_binary(&a, "\x00\x01\xfe\xff", 4));
  ds_value_object_add(&a, o, "empty", 5, ds_value_binary(&a, "", 0));
  ds_value_t *arr = ds_value_array(&a, 0);
  ds_value_array_push(&a, arr, ds_value_binary(&a, "hi", 2));
  ds_value_object_add(&a, o, "list", 4, arr);
  ds_yaml_emit_doc(&b, o);
  assert_string_equal(ds_buf_cstr(&b),
                      "---\nbytes: !!binary AAH+/w==\nempty: !!binary \"\"\nlist:\n  - !!binary aGk=\n");
  ds_value_t *back;
  assert_int_equal(ds_yaml_load_doc(&a, b.data, b.len, &back, g_err, sizeof g_err), 0);
  assert_true(ds_value_equal(o, back));
  ds_buf_free(&b);
  ds_arena_free(&a);
}

static void test_long_keys(void **st) {
  (void)st;
  /* keys longer than YAML's 1024-character simple-key limit use the explicit form */
  static char json[12000], key[3000];
  memset(key, 'k', 2999);
  key[2999] = '\0';
  snprintf(json, sizeof json, "{\"a\":{\"%s\":1,\"%s2\":{\"x\":[1]}},\"%s\":\"v\"}", key, key, key);
  const char *y = emit_json(json);
  assert_non_null(strstr(y, "\n  ? kkk"));
  assert_non_null(strstr(y, "\n? kkk"));
  expect_load(y, json);
}

static void test_load_scalars(void **st) {
  (void)st;
  expect_load("---\na:\nb: ~\nc: null\nd: Null\ne: true\nf: True\ng: yes\nh: -0.5e10\ni: 01\n"
              "j: \"1\"\nk: '2'\nl: 0x1F\nm: .5\nn: 2026-01-20\n",
              "{\"a\":null,\"b\":null,\"c\":null,\"d\":\"Null\",\"e\":true,\"f\":\"True\","
              "\"g\":\"yes\",\"h\":-0.5e10,\"i\":\"01\",\"j\":\"1\",\"k\":\"2\",\"l\":\"0x1F\","
              "\"m\":\".5\",\"n\":\"2026-01-20\"}");
  /* tags: !!str forces a string, !!binary decodes, unknown tags are ignored */
  expect_load("---\na: !!str 5\nb: !!binary aGk=\nc: !!str\nd: !foo 7\n",
              "{\"a\":\"5\",\"b\":\"aGk=\",\"c\":\"\",\"d\":7}");
  /* plain key text is kept as written */
  expect_load("---\n1: a\nnull: b\n~: c\ntrue: d\n", "{\"1\":\"a\",\"null\":\"b\",\"~\":\"c\",\"true\":\"d\"}");
  /* escapes as libyaml reads them */
  expect_load("--- \"\\0\\x41\\u00e9\\U0001F600\\N\\L\\P\\_\\t\\/\"\n",
              "\"\\u0000A\xc3\xa9\xf0\x9f\x98\x80\xc2\x85\\u2028\\u2029\xc2\xa0\\t/\"");
}

static void test_load_hand_written(void **st) {
  (void)st;
  /* literal and folded blocks, comments, flow style, single quotes, plain multi-line */
  expect_load("# a comment\n"
              "---\n"
              "type: note   # trailing comment\n"
              "payload:\n"
              "  text: |\n"
              "    line one\n"
              "    line two\n"
              "  folded: >-\n"
              "    a\n"
              "    b\n"
              "  keep: |+\n"
              "    x\n"
              "\n"
              "  flow: {a: 1, b: [x, \"y\", 'z''s']}\n"
              "  plain: multi\n"
              "    line\n"
              "  list:\n"
              "  - 1\n"
              "  - two\n"
              "offset: \"0000000000000007\"\n"
              "...\n",
              "{\"type\":\"note\",\"payload\":{\"text\":\"line one\\nline two\\n\",\"folded\":\"a b\","
              "\"keep\":\"x\\n\\n\",\"flow\":{\"a\":1,\"b\":[\"x\",\"y\",\"z's\"]},"
              "\"plain\":\"multi line\",\"list\":[1,\"two\"]},\"offset\":\"0000000000000007\"}");
  /* no explicit document start */
  expect_load("a: 1\n", "{\"a\":1}");
  expect_load("---\n", "null");
  expect_load("--- >\n  folded\n  text\n", "\"folded text\\n\"");
}

static void expect_load_err(const char *y, size_t n, const char *part) {
  const char *got = load_n(y, n);
  if (got) fail_msg("load unexpectedly succeeded: %s", got);
  if (part && !strstr(g_err, part)) fail_msg("error '%s' lacks '%s'", g_err, part);
}

static void test_load_errors(void **st) {
  (void)st;
  expect_load_err("---\na: &x 1\nb: *x\n", 0, NULL);
  expect_load_err("---\na: &x 1\nb: *x\n", 18, "line 2: anchors are not supported");
  expect_load_err("---\na: *x\n", 10, "line 2:");
  expect_load_err("---\na: &m {b: 1}\n", 17, "line 2: anchors");
  expect_load_err("---\na: &s [1]\n", 14, "anchors");
  expect_load_err("---\na: 1\n---\nb: 2\n", 17, "line 3: more than one document");
  expect_load_err("", 0, "line 1: no YAML document");
  expect_load_err(NULL, 0, "line 1: no YAML document");
  expect_load_err("# only a comment\n", 17, "no YAML document");
  expect_load_err("---\na: [1, 2\n", 13, "line ");
  expect_load_err("---\na: b: c\n", 11, "line 2:");
  expect_load_err("---\na: 1\n b: 2\n", 14, "line ");
  expect_load_err("---\n? [1, 2]\n: x\n", 16, "line 2: mapping keys must be scalars");
  expect_load_err("---\na: !!binary '!!!'\n", 21, "line 2: invalid base64");
  expect_load_err("---\na: \"\\ud800\"\n", 15, "line 2:");
  expect_load_err("---\na: \"x\x01\"\n", 11, "line ");
  expect_load_err("---\na: \"\xff\"\n", 10, "line ");
  expect_load_err("---\na: \"\xed\xa0\x80\"\n", 12, "line ");
  expect_load_err("---\na: x\0y\n", 10, "line ");
  expect_load_err("\t- x\n", 5, "line ");
  /* very deep flow nesting is refused, not a crash */
  static char deep[5000];
  memset(deep, '[', 2500);
  memset(deep + 2500, ']', 2500);
  expect_load_err(deep, sizeof deep, "nesting too deep");
}

static void test_load_garbage_no_crash(void **st) {
  (void)st;
  /* deterministic pseudo-random byte soup biased towards YAML syntax */
  static const char alphabet[] = "-:?[]{},#&*!|>'\"%@` \n\t\\abc01~.<=\xc3\xa9\xff\x00";
  uint64_t x = 0x9E3779B97F4A7C15ull;
  char buf[256];
  int ok = 0;
  for (int iter = 0; iter < 3000; iter++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    size_t n = (size_t)(x % sizeof buf);
    for (size_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[i] = alphabet[x % (sizeof alphabet - 1)];
    }
    if (load_n(buf, n)) ok++;
  }
  /* some inputs are valid YAML, most are not; neither may crash or leak */
  assert_true(ok > 0);
}

static void test_record_decode(void **st) {
  (void)st;
  ds_buf_t r = DS_BUF_INIT;
  uint64_t off = 0;
  const char *j = "---\njson:\n  a: [1, \"2\"]\noffset: \"0000000000000042\"\ncreatedAt: 2026-01-20T12:00:00.000Z\n";
  assert_int_equal(ds_record_decode_yaml(j, strlen(j), &r, &off, g_err, sizeof g_err), 0);
  assert_string_equal(ds_buf_cstr(&r), "{\"a\":[1,\"2\"]}");
  assert_int_equal(off, 42);

  ds_buf_reset(&r);
  const char *t = "---\ntext: \"line\\nnext \\0\"\noffset: \"0000000000000001\"\ncreatedAt: x\n";
  assert_int_equal(ds_record_decode_yaml(t, strlen(t), &r, &off, g_err, sizeof g_err), 0);
  assert_int_equal(r.len, 11);
  assert_memory_equal(r.data, "line\nnext \0", 11);
  assert_int_equal(off, 1);

  ds_buf_reset(&r);
  const char *bb = "---\nbytes: !!binary AAH+/w==\noffset: \"18446744073709551615\"\ncreatedAt: x\n";
  assert_int_equal(ds_record_decode_yaml(bb, strlen(bb), &r, &off, g_err, sizeof g_err), 0);
  assert_int_equal(r.len, 4);
  assert_memory_equal(r.data, "\x00\x01\xfe\xff", 4);
  assert_true(off == UINT64_MAX);

  const char *bad[] = {
      "---\njson: 1\ncreatedAt: x\n",                               /* no offset */
      "---\njson: 1\noffset: \"12a\"\n",                            /* bad offset */
      "---\njson: 1\noffset: \"18446744073709551616\"\n",           /* overflow */
      "---\njson: 1\noffset: \"\"\n",                               /* empty offset */
      "---\nother: 1\noffset: \"0000000000000000\"\n",              /* unknown kind */
      "---\ntext: 5\noffset: \"0000000000000000\"\n",               /* text not a string */
      "---\nbytes: abc\noffset: \"0000000000000000\"\n",            /* bytes not binary */
      "--- [1]\n",                                                  /* not a mapping */
      "--- {}\n",                                                   /* empty mapping */
      "---\ntype: x\noffset: \"0000000000000000\"\n---\ntype: y\n", /* two documents */
      "---\ntype: [\n",                                             /* torn */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ds_buf_reset(&r);
    g_err[0] = '\0';
    int rc = ds_record_decode_yaml(bad[i], strlen(bad[i]), &r, &off, g_err, sizeof g_err);
    if (rc != DS_ECORRUPT) fail_msg("case %zu accepted", i);
    assert_true(strlen(g_err) > 0);
  }
  ds_buf_free(&r);
}

/* Shapes the emitter never writes: the fast loader declines them or reads them exactly
 * as libyaml does ("a: yes" is the string "yes" either way), and ds_yaml_load_doc gives
 * libyaml's reading or its error. */
static void test_fast_loader_agrees(void **st) {
  (void)st;
  size_t declined = 0;
  static const char *const docs[] = {
      "---\na: yes\n", "---\na: ~\n", "---\na: b # c\n", "---\na:\nb: 1\n",
      "---\na: foo\n  bar\n", "---\na:\tb\n", "---\na:\n\t- 1\n", "---\na: [1, 2]\n",
      "---\na: 'x'\n", "---\n? a\n: b\n", "---\na: 1\n b: 2\n", "---\na:\n   b: 1\n",
      "---\na: \"\\e\"\n", "---\na: \"x\" y\n", "---\na: !!str 1\n", "---\na: &x 1\n",
      "---\na: 1", "---\n- 1\n", "--- 1\n", "---\n\"a\nb\": 1\n", "---\na: True\n",
      "---\na:  x\n", "---\na: x \n", "---\na: 1\n\nb: 2\n", "---\na: \"\\ud800\"\n",
      "---\nkey: !!binary ###\n", "---\na: {b: 1}\n", "---\na:\n- 1\n",
  };
  for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    size_t n = strlen(docs[i]);
    ds_value_t *v = NULL, *w = NULL, *f = NULL;
    int took = ds__yaml_load_doc_fast(&a, docs[i], n, &f);
    char e1[160], e2[160];
    int r1 = ds_yaml_load_doc(&a, docs[i], n, &v, e1, sizeof e1);
    int r2 = ds__yaml_load_doc_libyaml(&a, docs[i], n, &w, e2, sizeof e2);
    assert_int_equal(r1, r2);
    if (took && (r2 != 0 || !ds_value_equal(f, w))) fail_msg("fast loader misread:\n%s", docs[i]);
    if (r1 == 0) assert_true(ds_value_equal(v, w));
    else assert_string_equal(e1, e2);
    declined += !took;
    ds_arena_free(&a);
  }
  assert_int_equal(declined, sizeof docs / sizeof docs[0] - 2); /* all but "yes" and "True" */
  /* and the emitter's shapes it does take, read like libyaml does */
  static const char *const ok[] = {
      "---\na: 1\nb:\n  - x\n  - - 1\n    - {}\n  - c: \"\\x85\\u2028\\0\"\n    d: []\ne: !!binary \"\"\n",
      "---\n\"\\\"k\": null\nt: true\nf: false\nnum: -1.5e3\ns: a:b#c\nx: !!binary aGk=\n",
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    size_t n = strlen(ok[i]);
    ds_value_t *v = NULL, *w = NULL;
    char e[160];
    if (!ds__yaml_load_doc_fast(&a, ok[i], n, &v)) fail_msg("fast loader declined:\n%s", ok[i]);
    assert_int_equal(ds__yaml_load_doc_libyaml(&a, ok[i], n, &w, e, sizeof e), 0);
    assert_true(ds_value_equal(v, w));
    ds_arena_free(&a);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_contract_example), cmocka_unit_test(test_quoting_rule),
      cmocka_unit_test(test_emit_layout),      cmocka_unit_test(test_emit_binary),
      cmocka_unit_test(test_long_keys),        cmocka_unit_test(test_load_scalars),
      cmocka_unit_test(test_load_hand_written), cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_load_garbage_no_crash), cmocka_unit_test(test_record_decode),
      cmocka_unit_test(test_fast_loader_agrees),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
