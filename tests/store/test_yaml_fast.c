/* test_yaml_fast.c - unit tests of the YAML fast loader's scalar scanners (the fused
 * plain-scalar scanner and the quoted-scalar run) against libyaml.
 *
 * Every case is a scalar placed as a value, a nested value, a sequence item, a key and a
 * nested key, with padding before and/or after it so that the byte that matters falls on
 * every position of a scanner block (16 bytes with SSE2, 8 without) and on the document's
 * last line (where the scanners finish byte by byte). For each document: the fast loader
 * either declines or reads what libyaml reads; the JSON transcoder takes exactly the same
 * documents and writes ds_json_write's bytes of that tree; ds_yaml_load_doc answers as
 * libyaml does; ds_record_decode_yaml's repr is ds_json_write of libyaml's tree. Where
 * the case says so, the fast loader must take (or must decline) the document.
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

enum { TAKE = 1, DECLINE = 0, EITHER = -1 };

static size_t g_docs, g_taken;

/* Checks one document; expect is TAKE, DECLINE or EITHER for the fast loader. */
static void check_doc(const char *s, size_t n, int expect) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *f = NULL, *l = NULL, *v = NULL;
  char e1[256], e2[256];
  int took = ds__yaml_load_doc_fast(&a, s, n, &f);
  int lr = ds__yaml_load_doc_libyaml(&a, s, n, &l, e2, sizeof e2);
  if (expect != EITHER && took != expect)
    fail_msg("fast loader %s (expected to %s):\n%.*s", took ? "took" : "declined",
             expect ? "take" : "decline", (int)n, s);
  if (took && (lr != 0 || !ds_value_equal(f, l)))
    fail_msg("fast loader and libyaml differ (libyaml: %s):\n%.*s", lr ? e2 : "ok", (int)n, s);
  /* the transcoder: same documents, ds_json_write's bytes, appended after what was there */
  ds_buf_t j = DS_BUF_INIT;
  ds_buf_append(&j, "x", 1);
  ds__yaml_json_info_t info;
  int tj = ds__yaml_doc_to_json(s, n, &j, "offset", 6, &info);
  if (tj != took) fail_msg("transcoder and fast loader disagree on:\n%.*s", (int)n, s);
  if (tj) {
    ds_buf_t w = DS_BUF_INIT;
    ds_json_write(&w, f);
    if (j.len != w.len + 1 || j.data[0] != 'x' || memcmp(j.data + 1, w.data, w.len) != 0)
      fail_msg("transcoder wrote\n%.*s\ninstead of\n%.*s\nfor\n%.*s", (int)j.len - 1, j.data + 1,
               (int)w.len, w.data, (int)n, s);
    ds_buf_free(&w);
  } else {
    assert_int_equal(j.len, 1);
  }
  ds_buf_free(&j);
  /* the public loader reads as libyaml does, or fails as it does */
  int r = ds_yaml_load_doc(&a, s, n, &v, e1, sizeof e1);
  assert_int_equal(r, lr);
  if (r == 0) assert_true(ds_value_equal(v, l));
  else assert_string_equal(e1, e2);
  g_docs++;
  g_taken += (size_t)took;
  ds_arena_free(&a);
}

/* A record document with the scalar as a member value: the catch-up read's repr must be
 * ds_json_write of libyaml's reading, whichever loader ran. */
static void check_record(const char *sc, size_t scn) {
  ds_buf_t d = DS_BUF_INIT, repr = DS_BUF_INIT, w = DS_BUF_INIT;
  ds_buf_append(&d, "---\ntype: t\nv: ", 15);
  ds_buf_append(&d, sc, scn);
  ds_buf_puts(&d, "\noffset: \"0000000000000007\"\n");
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *l = NULL;
  char err[256];
  int lr = ds__yaml_load_doc_libyaml(&a, d.data, d.len, &l, err, sizeof err);
  uint64_t off = 0;
  int rc = ds_record_decode_yaml(d.data, d.len, &repr, &off, err, sizeof err);
  if (lr == 0) {
    if (rc != 0) fail_msg("record not decoded (%s):\n%.*s", err, (int)d.len, d.data);
    assert_int_equal(off, 7);
    ds_json_write(&w, l);
    if (repr.len != w.len || memcmp(repr.data, w.data, w.len) != 0)
      fail_msg("repr\n%.*s\ninstead of\n%.*s", (int)repr.len, repr.data, (int)w.len, w.data);
  } else {
    assert_int_equal(rc, DS_ECORRUPT);
  }
  ds_arena_free(&a);
  ds_buf_free(&d);
  ds_buf_free(&repr);
  ds_buf_free(&w);
}

/* The scalar in every position; vexp/kexp: what the fast loader must do with it as a
 * value / as a key (sequence items are only checked for agreement: "- a: b" is a map). */
static void check_scalar(const char *sc, size_t scn, int vexp, int kexp) {
  static const char *const pos[][2] = {
      {"---\nk: ", "\n"},                 /* value, on the document's last line */
      {"---\nk:\n  a: ", "\n  b: 1\n"},   /* nested value, not last */
      {"---\nk:\n  - ", "\n  - x\n"},     /* sequence item */
      {"---\n", ": v\n"},                 /* key */
      {"---\nk:\n  ", ": 1\nz: 2\n"},     /* nested key */
  };
  for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
    ds_buf_t d = DS_BUF_INIT;
    ds_buf_puts(&d, pos[i][0]);
    ds_buf_append(&d, sc, scn);
    ds_buf_puts(&d, pos[i][1]);
    check_doc(d.data, d.len, i < 2 ? vexp : i == 2 ? EITHER : kexp);
    ds_buf_free(&d);
  }
  check_record(sc, scn);
}

/* Where a case's bytes go: anywhere inside (padded both sides), first (padded after), last
 * (padded before) or alone (exactly these bytes). */
enum { MID, LEAD, TRAIL, WHOLE };

typedef struct {
  const char *s;
  int where, vexp, kexp;
} scase_t;

static void run_cases(const scase_t *cs, size_t ncs) {
  static const size_t pads[] = {0, 1, 2, 6, 7, 8, 9, 13, 14, 15, 16, 17, 23, 31, 32, 33, 47};
  for (size_t c = 0; c < ncs; c++) {
    size_t xn = strlen(cs[c].s);
    if (cs[c].where == WHOLE) {
      check_scalar(cs[c].s, xn, cs[c].vexp, cs[c].kexp);
      continue;
    }
    for (size_t i = 0; i < sizeof pads / sizeof pads[0]; i++) {
      size_t pre = cs[c].where == LEAD ? 0 : pads[i] + 1; /* at least one ordinary byte */
      size_t post = cs[c].where == TRAIL ? 0 : (pads[i] * 7) % 19 + 1;
      char buf[128];
      assert_true(pre + xn + post < sizeof buf);
      for (size_t k = 0; k < pre; k++) buf[k] = (char)('a' + k % 26);
      memcpy(buf + pre, cs[c].s, xn);
      for (size_t k = 0; k < post; k++) buf[pre + xn + k] = (char)('A' + k % 26);
      check_scalar(buf, pre + xn + post, cs[c].vexp, cs[c].kexp);
    }
  }
}

/* Bytes inside a plain scalar that make it fall back to libyaml, and ones it keeps. */
static void test_plain_inner_bytes(void **st) {
  (void)st;
  static const scase_t cs[] = {
      {" #", MID, DECLINE, DECLINE},          /* a comment starts */
      {": ", MID, DECLINE, DECLINE},          /* a mapping value starts (key: ends early) */
      {"\t", MID, DECLINE, DECLINE},          {"\r", MID, DECLINE, DECLINE},
      {"\x01", MID, DECLINE, DECLINE},        {"\x7f", MID, DECLINE, DECLINE},
      {"\xff", MID, DECLINE, DECLINE},        /* not UTF-8 */
      {"\x80", MID, DECLINE, DECLINE},        /* a lone continuation byte */
      {"\xc0\xaf", MID, DECLINE, DECLINE},    /* overlong */
      {"\xc3", MID, DECLINE, DECLINE},        /* truncated */
      {"\xe6\x97", MID, DECLINE, DECLINE},    /* truncated */
      {"\xed\xa0\x80", MID, DECLINE, DECLINE}, /* a UTF-16 surrogate */
      {"\xf4\x90\x80\x80", MID, DECLINE, DECLINE}, /* above U+10FFFF */
      {"\xc2\x85", MID, DECLINE, DECLINE},    /* NEL */
      {"\xc2\x9f", MID, DECLINE, DECLINE},    /* a C1 control */
      {"\xe2\x80\xa8", MID, DECLINE, DECLINE}, {"\xe2\x80\xa9", MID, DECLINE, DECLINE},
      {"\xef\xbb\xbf", MID, DECLINE, DECLINE}, {"\xef\xbf\xbe", MID, DECLINE, DECLINE},
      {":", MID, TAKE, TAKE},                 {"#", MID, TAKE, TAKE},
      {" ", MID, TAKE, TAKE},                 {"  ", MID, TAKE, TAKE},
      {"\"", MID, TAKE, TAKE},                {"\\", MID, TAKE, TAKE},
      {"\\\"\\", MID, TAKE, TAKE},            {"'", MID, TAKE, TAKE},
      {"- ", MID, TAKE, TAKE},                {"-:#", MID, TAKE, TAKE},
      {"\xc3\xa9", MID, TAKE, TAKE},          {"\xe6\x97\xa5\xe6\x9c\xac", MID, TAKE, TAKE},
      {"\xf0\x9f\x98\x80", MID, TAKE, TAKE},  {"\xc2\xa0", MID, TAKE, TAKE},
      {"\xe2\x82\xac", MID, TAKE, TAKE},      {"\xef\xbc\xa1", MID, TAKE, TAKE},
  };
  run_cases(cs, sizeof cs / sizeof cs[0]);
}

/* A plain scalar's first and last bytes. */
static void test_plain_edges(void **st) {
  (void)st;
  static const scase_t cs[] = {
      {"-", LEAD, DECLINE, DECLINE},  {"?", LEAD, DECLINE, DECLINE},  {":", LEAD, DECLINE, DECLINE},
      {",", LEAD, DECLINE, DECLINE},  {"[", LEAD, DECLINE, DECLINE},  {"]", LEAD, DECLINE, DECLINE},
      {"{", LEAD, DECLINE, DECLINE},  {"}", LEAD, DECLINE, DECLINE},  {"#", LEAD, DECLINE, DECLINE},
      {"&", LEAD, DECLINE, DECLINE},  {"*", LEAD, DECLINE, DECLINE},  {"!", LEAD, DECLINE, DECLINE},
      {"|", LEAD, DECLINE, DECLINE},  {">", LEAD, DECLINE, DECLINE},  {"'", LEAD, DECLINE, DECLINE},
      {"%", LEAD, DECLINE, DECLINE},  {"@", LEAD, DECLINE, DECLINE},  {"`", LEAD, DECLINE, DECLINE},
      {" ", LEAD, DECLINE, DECLINE},  {"...", LEAD, DECLINE, DECLINE},
      {"..", LEAD, TAKE, TAKE},       {".", LEAD, TAKE, TAKE},        {"~", LEAD, TAKE, TAKE},
      {"=", LEAD, TAKE, TAKE},        {"<<", LEAD, TAKE, TAKE},       {"\xc3\xa9", LEAD, TAKE, TAKE},
      {" ", TRAIL, DECLINE, DECLINE}, {":", TRAIL, DECLINE, DECLINE}, {"#", TRAIL, TAKE, TAKE},
      {"-", TRAIL, TAKE, TAKE},       {"\xf0\x9f\x98\x80", TRAIL, TAKE, TAKE},
      {"\xe6\x97", TRAIL, DECLINE, DECLINE}, /* truncated right before the line break */
  };
  run_cases(cs, sizeof cs / sizeof cs[0]);
}

/* Whole scalars: literals, numbers, and strings that only look like something else (the
 * loaders resolve null/true/false and the JSON number grammar; the rest are strings). */
static void test_plain_resolution(void **st) {
  (void)st;
  static const scase_t cs[] = {
      {"~", WHOLE, DECLINE, TAKE},       {"", WHOLE, DECLINE, DECLINE},
      {"null", WHOLE, TAKE, TAKE},       {"true", WHOLE, TAKE, TAKE},
      {"false", WHOLE, TAKE, TAKE},      {"[]", WHOLE, TAKE, DECLINE},
      {"{}", WHOLE, TAKE, DECLINE},      {"[1]", WHOLE, DECLINE, DECLINE},
      {"0", WHOLE, TAKE, TAKE},          {"-1", WHOLE, TAKE, DECLINE},
      {"-0.0", WHOLE, TAKE, DECLINE},    {"1.5e-3", WHOLE, TAKE, TAKE},
      {"12345678901234567890123", WHOLE, TAKE, TAKE},
      {"1E+30", WHOLE, TAKE, TAKE},      {"01", WHOLE, TAKE, TAKE},
      {"1.", WHOLE, TAKE, TAKE},         {".5", WHOLE, TAKE, TAKE},
      {"+1", WHOLE, TAKE, TAKE},         {"0x1F", WHOLE, TAKE, TAKE},
      {"1_000", WHOLE, TAKE, TAKE},      {"1:20", WHOLE, TAKE, TAKE},
      {".inf", WHOLE, TAKE, TAKE},       {"-.inf", WHOLE, DECLINE, DECLINE},
      {"yes", WHOLE, TAKE, TAKE},        {"True", WHOLE, TAKE, TAKE},
      {"NULL", WHOLE, TAKE, TAKE},       {"Null", WHOLE, TAKE, TAKE},
      {"nul", WHOLE, TAKE, TAKE},        {"nulls", WHOLE, TAKE, TAKE},
      {"2026-11-25T00:10:38.453Z", WHOLE, TAKE, TAKE},
      {"bench:catchup", WHOLE, TAKE, TAKE},
      {"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
       "yyyyyyyyyy",
       WHOLE, TAKE, TAKE},
  };
  run_cases(cs, sizeof cs / sizeof cs[0]);
}

/* Double-quoted scalars: raw bytes are checked as in plain ones (and UTF-8 validated);
 * the escapes the emitter writes are decoded; anything else falls back. */
static void test_quoted(void **st) {
  (void)st;
  static const scase_t cs[] = {
      {"\"\"", WHOLE, TAKE, TAKE},
      {"\"abc\"", WHOLE, TAKE, TAKE},
      {"\"0000000000000001\"", WHOLE, TAKE, TAKE},
      {"\"a: b # c\"", WHOLE, TAKE, TAKE},
      {"\"\\\"\\\\\\0\\t\\n\\r\\x85\\u2028\"", WHOLE, TAKE, TAKE},
      {"\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\\u00e9yyyyyyyyyyyyyyyyyyyyyy\"", WHOLE, TAKE, TAKE},
      {"\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\xc3\xa9yyyyyyyyyyyyy\"", WHOLE, TAKE, TAKE},
      {"\"yyyyyyyyyyyyyyyyyyyyyyyyy\xff yyyyyyyyyyyyyyyyyy\"", WHOLE, DECLINE, DECLINE},
      {"\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\xed\xa0\x80yyyy\"", WHOLE, DECLINE, DECLINE},
      {"\"yyyyyyyyyyyyyyyyyy\xe2\x80\xa8yyyyyyyyyyyyyyyyyyyyyyyyyy\"", WHOLE, DECLINE, DECLINE},
      {"\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\x7fyyy\"", WHOLE, DECLINE, DECLINE},
      {"\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\tyy\"", WHOLE, DECLINE, DECLINE},
      {"\"\\e\"", WHOLE, DECLINE, DECLINE},
      {"\"\\ud800\"", WHOLE, DECLINE, DECLINE},
      {"\"\\x4\"", WHOLE, DECLINE, DECLINE},
      {"\"abc", WHOLE, DECLINE, DECLINE},
      {"\"abc\" ", WHOLE, DECLINE, DECLINE},
      {"\"abc\"x", WHOLE, DECLINE, DECLINE},
      {"\"abc\" #", WHOLE, DECLINE, DECLINE},
  };
  run_cases(cs, sizeof cs / sizeof cs[0]);
}

/* Keys: the implicit-key length limit, and keys whose ':' is not followed by a space. */
static void test_keys(void **st) {
  (void)st;
  char k[1100];
  memset(k, 'k', sizeof k);
  static const size_t lens[] = {999, 1000, 1001, 1050};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    char d[1200];
    int n = snprintf(d, sizeof d, "---\n%.*s: v\n", (int)lens[i], k);
    check_doc(d, (size_t)n, lens[i] <= 1000 ? TAKE : DECLINE);
  }
  static const char *const docs[][2] = {
      {"---\na:b: c\n", "t"},           {"---\na:b:c: d\n", "t"},
      {"---\na::\n  b: 1\n", "d"},      {"---\na:\n  b:c: 1\n", "t"},
      {"---\na b: c\n", "t"},           {"---\na #b: c\n", "d"},
      {"---\na\n", "d"},                {"---\na:b\n", "d"},
      {"---\nab:", "d"},                {"---\nk: v\nab", "d"},
      {"---\nk: v\n\xff: 1\n", "d"},    {"---\n\"k\": v\n", "t"},
      {"---\n\"k\\n\": v\n", "t"},      {"---\n\"k\" : v\n", "d"},
  };
  for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++)
    check_doc(docs[i][0], strlen(docs[i][0]), docs[i][1][0] == 't' ? TAKE : DECLINE);
}

/* The emitter's own record layout, as the catch-up benchmark writes it, read through the
 * record decoder: repr and offset exactly as the general path gives them. */
static void test_record_layout(void **st) {
  (void)st;
  static const char doc[] = "---\ntype: bench:catchup\npayload:\n  i: 12\n  text: "
                            "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
                            "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\nversion: \"1\"\npath: bench/c\n"
                            "offset: \"0000000000000013\"\ncreatedAt: 2026-11-25T00:10:38.455Z\n";
  check_doc(doc, sizeof doc - 1, TAKE);
  ds_buf_t repr = DS_BUF_INIT;
  uint64_t off = 0;
  char err[160];
  assert_int_equal(ds_record_decode_yaml(doc, sizeof doc - 1, &repr, &off, err, sizeof err), 0);
  assert_int_equal(off, 13);
  static const char want[] =
      "{\"type\":\"bench:catchup\",\"payload\":{\"i\":12,\"text\":\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
      "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\"},\"version\":"
      "\"1\",\"path\":\"bench/c\",\"offset\":\"0000000000000013\",\"createdAt\":"
      "\"2026-11-25T00:10:38.455Z\"}";
  assert_int_equal(repr.len, sizeof want - 1);
  assert_memory_equal(repr.data, want, sizeof want - 1);
  /* offsets: 20 digits at most, no overflow, digits only */
  static const char *const offs[][2] = {
      {"\"18446744073709551615\"", "18446744073709551615"},
      {"\"18446744073709551616\"", NULL},
      {"\"99999999999999999999\"", NULL},
      {"\"9999999999999999999\"", "9999999999999999999"},
      {"\"000000000000000000001\"", NULL},
      {"\"00000000000000000001\"", "1"},
      {"\"\"", NULL},
      {"\"12a\"", NULL},
      {"42", "42"},
      {"-1", NULL},
  };
  for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
    char d[200];
    int n = snprintf(d, sizeof d, "---\ntype: t\noffset: %s\n", offs[i][0]);
    ds_buf_reset(&repr);
    off = 0;
    int rc = ds_record_decode_yaml(d, (size_t)n, &repr, &off, err, sizeof err);
    if (!offs[i][1]) {
      assert_int_equal(rc, DS_ECORRUPT);
      continue;
    }
    assert_int_equal(rc, 0);
    char got[24];
    snprintf(got, sizeof got, "%llu", (unsigned long long)off);
    assert_string_equal(got, offs[i][1]);
  }
  ds_buf_free(&repr);
}

static void test_counts(void **st) {
  (void)st;
  /* the cases above did run, and the fast loader took a fair share of them */
  assert_true(g_docs > 3000);
  assert_true(g_taken > g_docs / 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_inner_bytes), cmocka_unit_test(test_plain_edges),
      cmocka_unit_test(test_plain_resolution),  cmocka_unit_test(test_quoted),
      cmocka_unit_test(test_keys),              cmocka_unit_test(test_record_layout),
      cmocka_unit_test(test_counts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
