/* test_json.c - unit tests of the strict JSON parser, compact writer, base64 and UTF-8
 * validation (store/json.h) and of the value tree (store/value.h).
 * Must not: depend on anything but the codec; no I/O.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/json.h"

/* Parses s and returns the compact rewrite (static buffer), or NULL on error (err set). */
static char g_err[256];
static ds_buf_t g_out;

static const char *rt_n(const char *s, size_t n, int depth) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  int rc = ds_json_parse(&a, s, n, depth, &v, g_err, sizeof g_err);
  ds_buf_reset(&g_out);
  const char *res = NULL;
  if (rc == 0) {
    ds_json_write(&g_out, v);
    res = ds_buf_cstr(&g_out);
  } else {
    assert_int_equal(rc, DS_EINVAL);
    assert_true(strlen(g_err) > 0);
    assert_null(strchr(g_err, '\n'));
  }
  ds_arena_free(&a);
  return res;
}

static const char *rt(const char *s) { return rt_n(s, strlen(s), 0); }

static void expect_rt(const char *in, const char *out) {
  const char *got = rt(in);
  if (!got) fail_msg("parse of %s failed: %s", in, g_err);
  assert_string_equal(got, out);
}

static void expect_err(const char *in, const char *msg_part) {
  const char *got = rt(in);
  if (got) fail_msg("parse of '%s' unexpectedly succeeded: %s", in, got);
  if (msg_part && !strstr(g_err, msg_part)) fail_msg("error '%s' lacks '%s'", g_err, msg_part);
}

static void test_valid_scalars(void **st) {
  (void)st;
  expect_rt("null", "null");
  expect_rt(" true ", "true");
  expect_rt("\n\t\rfalse", "false");
  expect_rt("0", "0");
  expect_rt("-0", "-0");
  expect_rt("-0.0", "-0.0");
  expect_rt("1e400", "1e400");
  expect_rt("-1E-400", "-1E-400");
  expect_rt("9223372036854775807", "9223372036854775807");
  expect_rt("-9223372036854775808", "-9223372036854775808");
  expect_rt("18446744073709551616", "18446744073709551616");
  expect_rt("0.1", "0.1");
  expect_rt("1.50", "1.50");
  expect_rt("12.5e+3", "12.5e+3");
  expect_rt("5e-324", "5e-324");
  expect_rt("1.7976931348623157e308", "1.7976931348623157e308");
  expect_rt("\"\"", "\"\"");
  expect_rt("\"abc\"", "\"abc\"");
}

static void test_valid_containers(void **st) {
  (void)st;
  expect_rt("{}", "{}");
  expect_rt("[]", "[]");
  expect_rt(" { \"a\" : [ 1 , 2 , { } , [ ] ] , \"b\" : null } ", "{\"a\":[1,2,{},[]],\"b\":null}");
  /* a repeated key keeps its last value at its first position, once (JSON.parse) */
  expect_rt("{\"a\":1,\"a\":2,\"b\":3,\"a\":4}", "{\"a\":4,\"b\":3}");
  expect_rt("[[[[]]]]", "[[[[]]]]");
}

/* Duplicate keys everywhere a value is built: nested objects, objects inside arrays, keys
 * equal only after decoding escapes, keys with NUL bytes, many members (the sorted path),
 * and a value replaced by one of another type. */
static void test_duplicate_keys(void **st) {
  (void)st;
  expect_rt("{\"x\":1,\"x\":2}", "{\"x\":2}");
  expect_rt("{\"a\":{\"k\":1,\"k\":2},\"a\":{\"k\":3,\"j\":0,\"k\":4}}", "{\"a\":{\"k\":4,\"j\":0}}");
  expect_rt("[{\"a\":1,\"a\":2},{\"a\":[1],\"b\":0,\"a\":null}]", "[{\"a\":2},{\"a\":null,\"b\":0}]");
  expect_rt("{\"x\":1,\"\\u0078\":2,\"y\":3}", "{\"x\":2,\"y\":3}");
  expect_rt("{\"a\\u0000b\":1,\"a\":2,\"a\\u0000b\":3,\"a\\u0000\":4}",
            "{\"a\\u0000b\":3,\"a\":2,\"a\\u0000\":4}");
  expect_rt("{\"\":1,\"\":2}", "{\"\":2}");
  expect_rt("{\"a\":1,\"b\":2}", "{\"a\":1,\"b\":2}");
  /* 300 members, keys k0..k99 three times: the last round's values, first round's order */
  ds_buf_t in = DS_BUF_INIT, want = DS_BUF_INIT;
  ds_buf_putc(&in, '{');
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 100; i++) ds_buf_printf(&in, "%s\"k%d\":%d", round || i ? "," : "", i, round * 1000 + i);
  ds_buf_puts(&in, ",\"tail\":true}");
  ds_buf_putc(&want, '{');
  for (int i = 0; i < 100; i++) ds_buf_printf(&want, "%s\"k%d\":%d", i ? "," : "", i, 2000 + i);
  ds_buf_puts(&want, ",\"tail\":true}");
  expect_rt(ds_buf_cstr(&in), ds_buf_cstr(&want));
  /* 5000 distinct keys: none dropped */
  ds_buf_reset(&in);
  ds_buf_putc(&in, '{');
  for (int i = 0; i < 5000; i++) ds_buf_printf(&in, "%s\"%d\":%d", i ? "," : "", 4999 - i, i);
  ds_buf_putc(&in, '}');
  expect_rt(ds_buf_cstr(&in), ds_buf_cstr(&in));
  ds_buf_free(&in);
  ds_buf_free(&want);
}

static void test_escapes(void **st) {
  (void)st;
  /* solidus unescaped on output, standard escapes kept short */
  expect_rt("\"\\/\\\"\\\\\\b\\f\\n\\r\\t\"", "\"/\\\"\\\\\\b\\f\\n\\r\\t\"");
  /* \u escapes decode to raw UTF-8 */
  expect_rt("\"\\u0041\\u00e9\\u20AC\"", "\"A\xc3\xa9\xe2\x82\xac\"");
  /* surrogate pair -> astral code point (U+1F600) */
  expect_rt("\"\\ud83d\\ude00\"", "\"\xf0\x9f\x98\x80\"");
  expect_rt("\"\\uDBFF\\uDFFF\"", "\"\xf4\x8f\xbf\xbf\"");
  /* control characters, DEL, U+2028/2029 are escaped on output */
  expect_rt("\"\\u0000\\u0001\\u001f\\u007f\"", "\"\\u0000\\u0001\\u001f\\u007f\"");
  expect_rt("\"\\u2028\\u2029\"", "\"\\u2028\\u2029\"");
  expect_rt("\"\xe2\x80\xa8x\xe2\x80\xa9\"", "\"\\u2028x\\u2029\"");
  /* other 0xE2 sequences stay raw */
  expect_rt("\"\xe2\x82\xac\xe2\x80\xa7\"", "\"\xe2\x82\xac\xe2\x80\xa7\"");
  /* raw DEL in input is legal JSON, escaped on output */
  expect_rt("\"a\x7f\"", "\"a\\u007f\"");
  /* keys are escaped like values */
  expect_rt("{\"\\n\\u0000k\":1}", "{\"\\n\\u0000k\":1}");
}

static void test_nul_inside_string(void **st) {
  (void)st;
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v;
  assert_int_equal(ds_json_parse(&a, "\"a\\u0000b\"", 10, 0, &v, NULL, 0), 0);
  assert_int_equal(v->type, DS_V_STRING);
  assert_int_equal(v->u.str.len, 3);
  assert_memory_equal(v->u.str.s, "a\0b", 4);
  ds_arena_free(&a);
}

static void test_invalid_syntax(void **st) {
  (void)st;
  expect_err("", "byte 0");
  expect_err("   ", "unexpected end");
  expect_err("nul", "byte 0");
  expect_err("True", "unexpected character");
  expect_err("nullx", "after the value");
  expect_err("1 2", "byte 2: unexpected data after the value");
  expect_err("{\"a\":1}}", "after the value");
  expect_err("[1,]", "byte 3");
  expect_err("[1 2]", "expected ',' or ']'");
  expect_err("{\"a\" 1}", "expected ':'");
  expect_err("{\"a\":1,}", "expected a string key");
  expect_err("{a:1}", "expected a string key");
  expect_err("{'a':1}", "expected a string key");
  expect_err("{\"a\":1", "expected ',' or '}'");
  expect_err("[", "unexpected end");
  expect_err("[1", "expected ',' or ']'");
  expect_err("{", "expected a key");
  expect_err("{\"a\"", "expected ':'");
  expect_err("{\"a\":", "expected a value");
  expect_err("// c\n1", "unexpected character");
  expect_err("[1]/*x*/", "after the value");
  expect_err("NaN", "unexpected character");
  expect_err("Infinity", "unexpected character");
  expect_err("\xef\xbb\xbf{}", NULL); /* BOM */
}

static void test_invalid_numbers(void **st) {
  (void)st;
  expect_err("01", "leading zero");
  expect_err("-01", "leading zero");
  expect_err("-", "invalid number");
  expect_err("-a", "invalid number");
  expect_err("+1", "unexpected character");
  expect_err(".5", "unexpected character");
  expect_err("1.", "digit expected after '.'");
  expect_err("1.e5", "digit expected after '.'");
  expect_err("1e", "exponent");
  expect_err("1e+", "exponent");
  expect_err("0x10", "after the value");
  expect_err("1_000", "after the value");
}

static void test_invalid_strings(void **st) {
  (void)st;
  expect_err("\"abc", "unterminated string");
  expect_err("\"abc\\", "unterminated string");
  expect_err("\"a\nb\"", "byte 2: control character in string");
  expect_err("\"a\tb\"", "control character");
  expect_err("\"\x01\"", "control character");
  expect_err("\"\\x41\"", "invalid escape");
  expect_err("\"\\'\"", "invalid escape");
  expect_err("\"\\u12\"", "invalid \\u escape");
  expect_err("\"\\u12G4\"", "invalid \\u escape");
  expect_err("\"\\ud800\"", "lone surrogate");
  expect_err("\"\\ud800x\"", "lone surrogate");
  expect_err("\"\\udc00\"", "lone surrogate");
  expect_err("\"\\ud800\\u0041\"", "lone surrogate");
  expect_err("\"\\ud800\\ud800\"", "lone surrogate");
  expect_err("\"\\udc00\\ud800\"", "lone surrogate");
}

static void test_invalid_utf8(void **st) {
  (void)st;
  expect_err("\"\x80\"", "invalid UTF-8 at byte 1");
  expect_err("\"\xc0\xaf\"", "invalid UTF-8"); /* overlong '/' */
  expect_err("\"\xc1\xbf\"", "invalid UTF-8");
  expect_err("\"\xe0\x80\xaf\"", "invalid UTF-8");     /* overlong 3-byte */
  expect_err("\"\xf0\x80\x80\xaf\"", "invalid UTF-8"); /* overlong 4-byte */
  expect_err("\"\xed\xa0\x80\"", "invalid UTF-8");     /* encoded surrogate U+D800 */
  expect_err("\"\xed\xbf\xbf\"", "invalid UTF-8");     /* U+DFFF */
  expect_err("\"\xf4\x90\x80\x80\"", "invalid UTF-8"); /* U+110000 */
  expect_err("\"\xf5\x80\x80\x80\"", "invalid UTF-8");
  expect_err("\"\xff\"", "invalid UTF-8");
  expect_err("\"\xc3\"", "invalid UTF-8");     /* truncated at the quote */
  expect_err("\"\xe2\x82\"", "invalid UTF-8"); /* truncated */
  expect_err("\"ab\xe2\x82", "invalid UTF-8");
  expect_err("\xc3\xa9", "byte 0: unexpected character"); /* valid UTF-8, invalid JSON */
  expect_err("\xff", "invalid UTF-8 at byte 0");
  /* boundaries that are valid */
  expect_rt("\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\"",
            "\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\"");
  expect_rt("\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"", "\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"");
}

static void test_utf8_valid(void **st) {
  (void)st;
  assert_true(ds_utf8_valid(NULL, 0));
  {
    ds_arena_t a;
    ds_arena_init(&a);
    ds_value_t *v;
    char e[64];
    assert_int_equal(ds_json_parse(&a, NULL, 0, 0, &v, e, sizeof e), DS_EINVAL);
    ds_buf_t b = DS_BUF_INIT;
    ds_json_write_string(&b, NULL, 0);
    assert_int_equal(ds_base64_decode(&b, NULL, 0), 0);
    assert_string_equal(ds_buf_cstr(&b), "\"\"");
    ds_buf_free(&b);
    ds_arena_free(&a);
  }
  assert_true(ds_utf8_valid("", 0));
  assert_true(ds_utf8_valid("hello world, this is longer than 8", 34));
  assert_true(ds_utf8_valid("a\0b", 3));
  assert_true(ds_utf8_valid("\xf0\x9f\x98\x80", 4));
  assert_false(ds_utf8_valid("abcdefghij\x80", 11));
  assert_false(ds_utf8_valid("\xed\xa0\x80", 3));
  assert_false(ds_utf8_valid("\xf0\x9f\x98", 3));
  assert_false(ds_utf8_valid("\xc0\x80", 2));
}

static void test_depth_limit(void **st) {
  (void)st;
  char buf[400];
  for (int d = 1; d <= 66; d++) {
    for (int i = 0; i < d; i++) buf[i] = '[';
    for (int i = 0; i < d; i++) buf[d + i] = ']';
    const char *got = rt_n(buf, (size_t)(2 * d), 0);
    if (d <= DS_JSON_DEFAULT_MAX_DEPTH)
      assert_non_null(got);
    else {
      assert_null(got);
      assert_string_equal(g_err, "nesting deeper than 64");
    }
  }
  /* objects count too, and a custom limit applies */
  expect_rt("{\"a\":{\"b\":[1]}}", "{\"a\":{\"b\":[1]}}");
  assert_null(rt_n("{\"a\":{\"b\":[1]}}", 15, 2));
  assert_string_equal(g_err, "nesting deeper than 2");
  assert_non_null(rt_n("{\"a\":{\"b\":[1]}}", 15, 3));
  /* very deep input with a large limit is capped, not a stack overflow */
  static char deep[200000];
  memset(deep, '[', 100000);
  memset(deep + 100000, ']', 100000);
  assert_null(rt_n(deep, sizeof deep, 1000000));
  assert_non_null(strstr(g_err, "nesting deeper than"));
}

static void test_write_string_and_binary(void **st) {
  (void)st;
  ds_buf_t b = DS_BUF_INIT;
  ds_json_write_string(&b, "a\"b\\c\x1b/", 7);
  assert_string_equal(ds_buf_cstr(&b), "\"a\\\"b\\\\c\\u001b/\"");
  ds_buf_reset(&b);
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *o = ds_value_object(&a, 0);
  ds_value_object_add(&a, o, "bin", 3, ds_value_binary(&a, "\x00\xff\x10", 3));
  ds_value_object_add(&a, o, "t", 1, ds_value_bool(&a, true));
  ds_json_write(&b, o);
  assert_string_equal(ds_buf_cstr(&b), "{\"bin\":\"AP8Q\",\"t\":true}");
  ds_arena_free(&a);
  ds_buf_free(&b);
}

static void test_base64(void **st) {
  (void)st;
  static const struct {
    const char *raw, *enc;
  } v[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},        {"foo", "Zm9v"},
           {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  ds_buf_t b = DS_BUF_INIT;
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    ds_buf_reset(&b);
    ds_base64_encode(&b, v[i].raw, strlen(v[i].raw));
    assert_int_equal(b.len, strlen(v[i].enc));
    assert_memory_equal(b.data, v[i].enc, b.len);
    ds_buf_reset(&b);
    assert_int_equal(ds_base64_decode(&b, v[i].enc, strlen(v[i].enc)), 0);
    assert_int_equal(b.len, strlen(v[i].raw));
    if (b.len) assert_memory_equal(b.data, v[i].raw, b.len);
  }
  /* padding optional, whitespace ignored */
  ds_buf_reset(&b);
  assert_int_equal(ds_base64_decode(&b, "Zm9v\nYmE", 8), 0);
  assert_int_equal(b.len, 5);
  assert_memory_equal(b.data, "fooba", 5);
  /* all 256 byte values */
  unsigned char all[256];
  for (int i = 0; i < 256; i++) all[i] = (unsigned char)i;
  ds_buf_t e = DS_BUF_INIT;
  ds_base64_encode(&e, all, 256);
  ds_buf_reset(&b);
  assert_int_equal(ds_base64_decode(&b, e.data, e.len), 0);
  assert_int_equal(b.len, 256);
  assert_memory_equal(b.data, all, 256);
  ds_buf_free(&e);
  /* invalid input leaves the buffer as it was */
  const char *bad[] = {"Z", "Zm9vY", "Zg=", "Zg===", "Zg==Zg==", "Zm9v!", "Zm-v", "=", "Z==="};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ds_buf_reset(&b);
    ds_buf_puts(&b, "keep");
    if (ds_base64_decode(&b, bad[i], strlen(bad[i])) != DS_EINVAL) fail_msg("accepted %s", bad[i]);
    assert_int_equal(b.len, 4);
  }
  ds_buf_free(&b);
}

static void test_value_api(void **st) {
  (void)st;
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *arr = ds_value_array(&a, 1);
  for (int i = 0; i < 100; i++) {
    char n[8];
    int len = snprintf(n, sizeof n, "%d", i);
    ds_value_array_push(&a, arr, ds_value_number(&a, n, (size_t)len));
  }
  assert_int_equal(arr->u.arr.len, 100);
  assert_string_equal(arr->u.arr.items[57]->u.str.s, "57");
  ds_value_t *o = ds_value_object(&a, 0);
  for (int i = 0; i < 40; i++) {
    char k[8];
    int len = snprintf(k, sizeof k, "k%d", i);
    ds_value_object_add(&a, o, k, (size_t)len, ds_value_bool(&a, i % 2));
  }
  ds_value_object_add(&a, o, "k3", 2, ds_value_null(&a));
  assert_int_equal(o->u.obj.len, 41);
  assert_true(ds_value_get(o, "k3")->u.b); /* first match wins */
  assert_null(ds_value_get(o, "nope"));
  assert_null(ds_value_get(arr, "k3"));
  /* parsed containers can keep growing */
  ds_value_t *p;
  assert_int_equal(ds_json_parse(&a, "[1,2]", 5, 0, &p, NULL, 0), 0);
  for (int i = 0; i < 10; i++) ds_value_array_push(&a, p, ds_value_null(&a));
  assert_int_equal(p->u.arr.len, 12);
  assert_string_equal(p->u.arr.items[1]->u.str.s, "2");

  ds_value_t *x, *y;
  assert_int_equal(ds_json_parse(&a, "{\"a\":[1,\"s\",null,true,{}]}", 26, 0, &x, NULL, 0), 0);
  assert_int_equal(ds_json_parse(&a, "{ \"a\" : [1,\"s\",null,true,{}]}", 29, 0, &y, NULL, 0), 0);
  assert_true(ds_value_equal(x, y));
  const char *diff[] = {"{\"a\":[1.0,\"s\",null,true,{}]}", "{\"a\":[1,\"s\",null,false,{}]}",
                        "{\"b\":[1,\"s\",null,true,{}]}", "{\"a\":[1,\"s\",null,true,[]]}",
                        "{\"a\":[1,\"s\",null,true]}", "{\"a\":[1,\"s\\u0000\",null,true,{}]}"};
  for (size_t i = 0; i < sizeof diff / sizeof diff[0]; i++) {
    assert_int_equal(ds_json_parse(&a, diff[i], strlen(diff[i]), 0, &y, NULL, 0), 0);
    assert_false(ds_value_equal(x, y));
  }
  assert_false(ds_value_equal(ds_value_string(&a, "1", 1), ds_value_number(&a, "1", 1)));
  assert_false(ds_value_equal(ds_value_string(&a, "1", 1), ds_value_binary(&a, "1", 1)));
  ds_arena_free(&a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_scalars),     cmocka_unit_test(test_valid_containers),
      cmocka_unit_test(test_duplicate_keys),
      cmocka_unit_test(test_escapes),           cmocka_unit_test(test_nul_inside_string),
      cmocka_unit_test(test_invalid_syntax),    cmocka_unit_test(test_invalid_numbers),
      cmocka_unit_test(test_invalid_strings),   cmocka_unit_test(test_invalid_utf8),
      cmocka_unit_test(test_utf8_valid),        cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_write_string_and_binary), cmocka_unit_test(test_base64),
      cmocka_unit_test(test_value_api),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  ds_buf_free(&g_out);
  return rc;
}
