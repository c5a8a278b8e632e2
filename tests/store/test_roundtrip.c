/* test_roundtrip.c - seeded property test of the codec's round-trip law:
 *   JSON -> value -> YAML -> value -> JSON is byte-identical to the compact form,
 * and ds_value_equal holds at every step; plus the layout invariant the store relies on
 * (only `---` and top-level keys start at column 0; every value on one line).
 * Must not: be nondeterministic: the generator is a fixed-seed xorshift.
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

static uint64_t g_rng;
static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
static size_t g_fast_docs; /* documents the fast loader read */
static unsigned rn(unsigned n) { return (unsigned)(rnd() % n); }

/* Whole strings that are hard for a YAML emitter. */
static const char *const tricky[] = {
    "", " ", "  ", "~", "null", "Null", "NULL", "nULL", "true", "True", "TRUE", "false", "FALSE",
    "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
    "0", "-0", "1", "-1", "+1", "007", "0777", "0o17", "0x1F", "0b101", "1_000", "1:20",
    "190:20:30.15", "1.5", ".5", "1.", "-.5", "1e5", "1E+5", "1e-7", ".inf", "-.Inf", ".NaN",
    "1.2.3", ".", "5e-324", "9223372036854775807", "0000000000000000", "2026-01-20",
    "2026-01-20T12:00:00.000Z", "2001-12-14 21:59:43.10 -5", "12:30:45", "---", "...", "--- x",
    "... x", "- a", "-a", "? a", ":a", "a:", "a: b", "a #b", "#x", "&a", "*a", "!a", "!!binary",
    "|", ">", "'", "\"", "%YAML", "@a", "`a", "<<", "=", "[a]", "{a: 1}", ",", "a,b", "\\",
    "\\n", "tab\there", "line1\nline2", "\n", "\r\n", "trailing\n", " lead", "trail ",
    "\357\273\277bom", "nbsp\xc2\xa0", "\xc2\xa0", "caf\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87",
    "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xf0\x90\x80\x80", "nel\xc2\x85x", "\xe2\x80\xa8",
    "\xe2\x80\xa9", "\xef\xbf\xbe", "\xef\xbf\xbf", "\xc2\x80", "\xc2\x9f", "\x7f", "inf",
    "NaN", "Infinity", "iterate:agent:action:send-user-message:called", "agent/session-123",
};

/* Fragments for composed strings. */
static const char *const frag[] = {
    "a",  "Z",  "hello", " ",    "  ",   ": ",   " #",   "#",    ":",    "-",    "?",
    "\n", "\t", "\r",    "\"",   "\\",   "'",    "/",    "0",    "1",    ".",    "e",
    "~",  "[",  "]",     "{",    "}",    ",",    "&",    "*",    "!",    "|",    ">",
    "%",  "@",  "`",     "---",  "...",  "=",    "<<",   "\xc3\xa9", "\xe2\x82\xac",
    "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xc2\x85", "\xe2\x80\xa8", "\xe2\x80\xa9",
    "\xef\xbb\xbf", "\xef\xbf\xbe", "\xef\xbf\xbf", "\xc2\x80", "\xc2\x9f", "\xc2\xa0", "\x7f",
    "true", "null", "yes", "2026-01-20", "12:00",
};

static const char *const numbers[] = {
    "0", "-0", "-0.0", "0.0", "1", "-1", "0.1", "1e-7", "1E-7", "5e-324", "1.7976931348623157e308",
    "-1.7976931348623157e308", "2.2250738585072014e-308", "1e400", "-1e400", "1E+2", "1.5E-3",
    "9223372036854775807", "-9223372036854775808", "9223372036854775808", "18446744073709551615",
    "18446744073709551616", "123456789012345678901234567890", "3.141592653589793", "1.50",
    "100", "0e0", "0E-0", "-0e+00",
};

static ds_value_t *gen_string_value(ds_arena_t *a, int key);

static void gen_string(ds_arena_t *a, ds_buf_t *b) {
  (void)a;
  unsigned mode = rn(10);
  if (mode < 3) {
    ds_buf_puts(b, tricky[rn(sizeof tricky / sizeof tricky[0])]);
  } else if (mode < 4) {
    /* a tricky string with a prefix/suffix */
    if (rn(2)) ds_buf_puts(b, frag[rn(sizeof frag / sizeof frag[0])]);
    ds_buf_puts(b, tricky[rn(sizeof tricky / sizeof tricky[0])]);
    if (rn(2)) ds_buf_puts(b, frag[rn(sizeof frag / sizeof frag[0])]);
  } else if (mode < 5) {
    /* control characters including NUL */
    unsigned n = 1 + rn(6);
    for (unsigned i = 0; i < n; i++) {
      if (rn(2))
        ds_buf_putc(b, (char)rn(32));
      else
        ds_buf_puts(b, frag[rn(sizeof frag / sizeof frag[0])]);
    }
  } else if (mode < 6) {
    /* random code points of every length class */
    unsigned n = 1 + rn(8);
    for (unsigned i = 0; i < n; i++) {
      uint32_t cp;
      switch (rn(4)) {
      case 0: cp = rn(0x80); break;
      case 1: cp = 0x80 + rn(0x800 - 0x80); break;
      case 2: cp = 0x800 + rn(0x10000 - 0x800); if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xE000; break;
      default: cp = 0x10000 + rn(0x110000 - 0x10000); break;
      }
      char u[4];
      size_t k;
      if (cp < 0x80) { u[0] = (char)cp; k = 1; }
      else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 63)); k = 2; }
      else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 63));
        u[2] = (char)(0x80 | (cp & 63)); k = 3;
      } else {
        u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 63));
        u[2] = (char)(0x80 | ((cp >> 6) & 63)); u[3] = (char)(0x80 | (cp & 63)); k = 4;
      }
      ds_buf_append(b, u, k);
    }
  } else {
    unsigned n = 1 + rn(7);
    for (unsigned i = 0; i < n; i++) ds_buf_puts(b, frag[rn(sizeof frag / sizeof frag[0])]);
  }
}

static ds_value_t *gen_string_value(ds_arena_t *a, int key) {
  ds_buf_t b = DS_BUF_INIT;
  if (key && rn(500) == 0) {
    /* a key beyond YAML's simple-key limit */
    for (int i = 0; i < 1100; i++) ds_buf_putc(&b, (char)('a' + i % 26));
  }
  gen_string(a, &b);
  ds_value_t *v = ds_value_string(a, b.data ? b.data : "", b.len);
  ds_buf_free(&b);
  return v;
}

static ds_value_t *gen_number(ds_arena_t *a) {
  char tmp[64];
  int n;
  switch (rn(4)) {
  case 0:
  case 1: {
    const char *s = numbers[rn(sizeof numbers / sizeof numbers[0])];
    return ds_value_number(a, s, strlen(s));
  }
  case 2:
    n = snprintf(tmp, sizeof tmp, "%lld", (long long)(rnd() >> rn(64)) * (rn(2) ? -1 : 1));
    return ds_value_number(a, tmp, (size_t)n);
  default:
    n = snprintf(tmp, sizeof tmp, "%s%u.%0*u%s", rn(2) ? "-" : "", rn(1000), (int)rn(5) + 1, rn(100000),
                 rn(3) ? "" : (rn(2) ? "e-12" : "E+300"));
    return ds_value_number(a, tmp, (size_t)n);
  }
}

static ds_value_t *gen_value(ds_arena_t *a, int depth) {
  unsigned k = rn(depth > 6 ? 6 : 9);
  if (depth > 0 && rn(40) == 0) {
    /* a deep chain */
    ds_value_t *root = NULL, **slot = &root;
    unsigned d = 10 + rn(45);
    for (unsigned i = 0; i < d; i++) {
      ds_value_t *c;
      if (rn(2)) {
        c = ds_value_array(a, 1);
        ds_value_array_push(a, c, ds_value_null(a));
        *slot = c;
        slot = &c->u.arr.items[0];
      } else {
        c = ds_value_object(a, 1);
        ds_value_t *key = gen_string_value(a, 1);
        ds_value_object_add(a, c, key->u.str.s, key->u.str.len, ds_value_null(a));
        *slot = c;
        slot = &c->u.obj.items[0].val;
      }
    }
    *slot = gen_value(a, 99);
    return root;
  }
  switch (k) {
  case 0: return ds_value_null(a);
  case 1: return ds_value_bool(a, rn(2));
  case 2: return gen_number(a);
  case 3: case 4: case 5: return gen_string_value(a, 0);
  case 6: case 7: {
    unsigned n = rn(3) == 0 ? 0 : rn(6);
    ds_value_t *arr = ds_value_array(a, 0);
    for (unsigned i = 0; i < n; i++) ds_value_array_push(a, arr, gen_value(a, depth + 1));
    return arr;
  }
  default: {
    unsigned n = rn(4) == 0 ? 0 : rn(6);
    ds_value_t *obj = ds_value_object(a, 0);
    for (unsigned i = 0; i < n; i++) {
      ds_value_t *key = gen_string_value(a, 1);
      if (i && rn(10) == 0) key = ds_value_string(a, obj->u.obj.items[0].key, obj->u.obj.items[0].klen);
      ds_value_object_add(a, obj, key->u.str.s, key->u.str.len, gen_value(a, depth + 1));
    }
    return obj;
  }
  }
}

/* Checks the layout invariants of an emitted document for top-level value v. */
static void check_layout(const ds_buf_t *y, const ds_value_t *v) {
  assert_true(y->len >= 4 && y->data[y->len - 1] == '\n');
  assert_true(memcmp(y->data, "---", 3) == 0);
  size_t col0 = 0, explicit_keys = 0, line = 0;
  const char *p = y->data, *end = y->data + y->len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    assert_non_null(nl);
    size_t len = (size_t)(nl - p);
    if (line > 0) {
      if ((len == 3 && memcmp(p, "---", 3) == 0) || (len >= 3 && memcmp(p, "...", 3) == 0))
        fail_msg("document marker inside document:\n%.*s", (int)y->len, y->data);
      if (len == 0) fail_msg("empty line in document:\n%.*s", (int)y->len, y->data);
      if (p[0] != ' ') {
        col0++;
        if (p[0] == '?') explicit_keys++;
      }
    } else {
      if (!(len == 3 || (len > 4 && p[3] == ' '))) fail_msg("bad first line");
    }
    line++;
    p = nl + 1;
  }
  size_t expect_col0 = 0;
  if (v->type == DS_V_OBJECT && v->u.obj.len) expect_col0 = v->u.obj.len + explicit_keys;
  if (v->type == DS_V_ARRAY && v->u.arr.len) expect_col0 = v->u.arr.len;
  if (col0 != expect_col0)
    fail_msg("%zu column-0 lines, expected %zu:\n%.*s", col0, expect_col0, (int)y->len, y->data);
}

/* v as the JSON parser builds it: in every object a repeated key keeps its last value,
 * once, at its first position (JSON.parse). Written plainly (quadratic), independently of
 * the parser's own merge, which it checks. */
static ds_value_t *merged(ds_arena_t *a, const ds_value_t *v) {
  if (v->type == DS_V_ARRAY) {
    ds_value_t *arr = ds_value_array(a, v->u.arr.len);
    for (size_t i = 0; i < v->u.arr.len; i++) ds_value_array_push(a, arr, merged(a, v->u.arr.items[i]));
    return arr;
  }
  if (v->type != DS_V_OBJECT) return (ds_value_t *)v;
  ds_value_t *obj = ds_value_object(a, v->u.obj.len);
  for (size_t i = 0; i < v->u.obj.len; i++) {
    const ds_member_t *m = &v->u.obj.items[i];
    size_t k = 0;
    while (k < obj->u.obj.len &&
           !(obj->u.obj.items[k].klen == m->klen && memcmp(obj->u.obj.items[k].key, m->key, m->klen) == 0))
      k++;
    if (k < obj->u.obj.len) obj->u.obj.items[k].val = merged(a, m->val);
    else ds_value_object_add(a, obj, m->key, m->klen, merged(a, m->val));
  }
  return obj;
}

/* One full round trip; returns the YAML length (for statistics). */
static size_t roundtrip_one(ds_value_t *v) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_buf_t j1 = DS_BUF_INIT, y = DS_BUF_INIT, j2 = DS_BUF_INIT;
  char err[256];
  ds_json_write(&j1, v);
  ds_value_t *p, *back;
  if (ds_json_parse(&a, j1.data, j1.len, 1000, &p, err, sizeof err) != 0)
    fail_msg("compact JSON does not reparse: %s\n%.*s", err, (int)j1.len, j1.data);
  /* the generator repeats keys now and then; parsing merges them */
  assert_true(ds_value_equal(merged(&a, v), p));
  ds_buf_reset(&j1);
  ds_json_write(&j1, p);
  ds_yaml_emit_doc(&y, p);
  check_layout(&y, p);
  if (ds_yaml_load_doc(&a, y.data, y.len, &back, err, sizeof err) != 0)
    fail_msg("YAML does not load: %s\n%.*s", err, (int)y.len, y.data);
  ds_json_write(&j2, back);
  /* both loaders: the fast one must read every non-empty mapping the emitter writes
   * (unless it needed an explicit "? key"), and read it exactly as libyaml does */
  ds_value_t *fast = NULL, *slow = NULL;
  int took = ds__yaml_load_doc_fast(&a, y.data, y.len, &fast);
  if (ds__yaml_load_doc_libyaml(&a, y.data, y.len, &slow, err, sizeof err) != 0)
    fail_msg("libyaml does not load: %s\n%.*s", err, (int)y.len, y.data);
  const char *yc = ds_buf_cstr(&y);
  int explicit_key = memcmp(yc, "---\n? ", 6) == 0 || strstr(yc, "\n? ") != NULL ||
                     strstr(yc, "- ? ") != NULL || strstr(yc, " ? ") != NULL;
  if (p->type == DS_V_OBJECT && p->u.obj.len && !took && !explicit_key)
    fail_msg("the fast loader declined the emitter's own document:\n%.*s", (int)y.len, y.data);
  if (took && !ds_value_equal(fast, slow))
    fail_msg("fast and libyaml loaders differ on:\n%.*s", (int)y.len, y.data);
  if (took) g_fast_docs++;
  /* the transcoder takes the same documents and writes exactly ds_json_write's bytes */
  ds_buf_t j3 = DS_BUF_INIT;
  ds_buf_append(&j3, "x", 1); /* it appends: check it leaves what was there */
  ds__yaml_json_info_t info;
  int tj = ds__yaml_doc_to_json(y.data, y.len, &j3, "offset", 6, &info);
  if (tj != took) fail_msg("transcoder %s a document the fast loader %s:\n%.*s",
                           tj ? "took" : "declined", took ? "took" : "declined", (int)y.len, y.data);
  if (tj) {
    ds_buf_t jf = DS_BUF_INIT;
    ds_json_write(&jf, fast);
    if (j3.len != jf.len + 1 || memcmp(j3.data + 1, jf.data, jf.len) != 0)
      fail_msg("transcoder output differs:\n%.*s\nJSON  %.*s\nTRANS %.*s", (int)y.len, y.data,
               (int)jf.len, jf.data, (int)j3.len - 1, j3.data + 1);
    const ds_member_t *m0 = &fast->u.obj.items[0];
    ds_buf_t k0 = DS_BUF_INIT, v0 = DS_BUF_INIT;
    ds_json_write_string(&k0, m0->key, m0->klen);
    ds_json_write(&v0, m0->val);
    assert_int_equal(info.first.key_end - info.first.key_start, k0.len);
    assert_memory_equal(j3.data + info.first.key_start, k0.data, k0.len);
    assert_int_equal(info.first.val_end - info.first.val_start, v0.len);
    assert_memory_equal(j3.data + info.first.val_start, v0.data, v0.len);
    assert_int_equal(info.want_found, ds_value_get(fast, "offset") != NULL);
    ds_buf_free(&jf);
    ds_buf_free(&k0);
    ds_buf_free(&v0);
  } else {
    assert_int_equal(j3.len, 1);
  }
  ds_buf_free(&j3);
  if (!ds_value_equal(p, back) || j1.len != j2.len || memcmp(j1.data, j2.data, j1.len) != 0)
    fail_msg("round trip differs:\nJSON  %.*s\nYAML\n%.*s\nBACK  %.*s", (int)j1.len, j1.data,
             (int)y.len, y.data, (int)j2.len, j2.data);
  size_t n = y.len;
  ds_buf_free(&j1);
  ds_buf_free(&y);
  ds_buf_free(&j2);
  ds_arena_free(&a);
  return n;
}

static void test_random_values(void **st) {
  (void)st;
  g_rng = 0x243F6A8885A308D3ull;
  size_t total = 0;
  for (int i = 0; i < 6000; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    ds_value_t *v = gen_value(&a, i % 3 == 0 ? 0 : 1); /* every third one may be a scalar */
    total += roundtrip_one(v);
    ds_arena_free(&a);
  }
  assert_true(total > 100000); /* the generator really produced substantial documents */
  assert_true(g_fast_docs > 300); /* non-empty mappings (~1/11 of the values) took the fast path */
}

/* Record-shaped documents go through ds_record_decode_yaml as the store will do. */
static void test_random_records(void **st) {
  (void)st;
  g_rng = 0x13198A2E03707344ull;
  for (int i = 0; i < 1500; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    ds_value_t *rec = ds_value_object(&a, 6);
    char off[17];
    uint64_t o = rnd() % 10000000000000000ull;
    snprintf(off, sizeof off, "%016llu", (unsigned long long)o);
    unsigned kind = rn(3);
    ds_value_t *payload = gen_value(&a, 1);
    if (kind == 0) {
      ds_value_object_add(&a, rec, "type", 4, gen_string_value(&a, 0));
      ds_value_object_add(&a, rec, "payload", 7, payload);
      ds_value_object_add(&a, rec, "version", 7, ds_value_string(&a, "1", 1));
      ds_value_object_add(&a, rec, "path", 4, ds_value_string(&a, "agent/s-1", 9));
    } else if (kind == 1) {
      ds_value_object_add(&a, rec, "json", 4, payload);
    } else {
      ds_value_object_add(&a, rec, "text", 4, gen_string_value(&a, 0));
    }
    ds_value_object_add(&a, rec, "offset", 6, ds_value_string(&a, off, 16));
    ds_value_object_add(&a, rec, "createdAt", 9, ds_value_string(&a, "2026-01-20T12:00:00.000Z", 24));
    ds_buf_t y = DS_BUF_INIT, expect = DS_BUF_INIT, repr = DS_BUF_INIT;
    ds_yaml_emit_doc(&y, rec);
    check_layout(&y, rec);
    assert_non_null(strstr(ds_buf_cstr(&y), "\noffset: \""));
    if (kind == 0)
      ds_json_write(&expect, rec);
    else if (kind == 1)
      ds_json_write(&expect, payload);
    else
      ds_buf_append(&expect, rec->u.obj.items[0].val->u.str.s, rec->u.obj.items[0].val->u.str.len);
    uint64_t got_off = 0;
    char err[256];
    if (ds_record_decode_yaml(y.data, y.len, &repr, &got_off, err, sizeof err) != 0)
      fail_msg("decode failed: %s\n%.*s", err, (int)y.len, y.data);
    assert_true(got_off == o);
    assert_int_equal(repr.len, expect.len);
    if (repr.len) assert_memory_equal(repr.data, expect.data, repr.len);
    ds_buf_free(&y);
    ds_buf_free(&expect);
    ds_buf_free(&repr);
    ds_arena_free(&a);
  }
}

/* Every tricky string alone, as a value and as a key, at top level and nested. */
static void test_tricky_strings_exhaustive(void **st) {
  (void)st;
  for (size_t i = 0; i < sizeof tricky / sizeof tricky[0]; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    const char *s = tricky[i];
    size_t n = strlen(s);
    ds_value_t *str = ds_value_string(&a, s, n);
    roundtrip_one(str);
    ds_value_t *o = ds_value_object(&a, 0);
    ds_value_object_add(&a, o, s, n, str);
    ds_value_t *arr = ds_value_array(&a, 0);
    ds_value_t *inner = ds_value_object(&a, 0);
    ds_value_object_add(&a, inner, s, n, str);
    ds_value_array_push(&a, arr, str);
    ds_value_array_push(&a, arr, inner);
    ds_value_object_add(&a, o, "nested", 6, arr);
    roundtrip_one(o);
    roundtrip_one(arr);
    ds_arena_free(&a);
  }
  for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
    ds_arena_t a;
    ds_arena_init(&a);
    roundtrip_one(ds_value_number(&a, numbers[i], strlen(numbers[i])));
    ds_arena_free(&a);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tricky_strings_exhaustive),
      cmocka_unit_test(test_random_values),
      cmocka_unit_test(test_random_records),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
