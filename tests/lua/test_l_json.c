/* test_l_json.c - ds.json: int64 exactness, key order, floats stay floats, [] vs {},
 * null, and encode errors (cycles, inf, functions) that do not raise through C.
 * Must not: depend on the server; it drives the binding on a bare VM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lhost.h"

static lua_State *L;
static ds_vm_t *vm;

static int setup(void **state) {
  (void)state;
  vm = ds_vm_new(0);
  L = ds_vm_state(vm);
  lua_newtable(L);
  ds__json_open(L);
  lua_setglobal(L, "ds");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  assert_int_equal(lua_gettop(L), 0);
  assert_int_equal(ds_vm_free(vm), 0);
  return 0;
}

/* decode then encode: must give back the same bytes */
static void roundtrip(const char *json) {
  char err[200];
  assert_int_equal(ds__json_push(L, json, strlen(json), err, sizeof err), 0);
  ds_buf_t b = DS_BUF_INIT;
  assert_int_equal(ds__json_encode(L, -1, &b), 0);
  lua_pop(L, 1);
  ds_buf_putc(&b, 0);
  if (strcmp(b.data, json) != 0) fail_msg("round trip of %s gave %s", json, b.data);
  ds_buf_free(&b);
}

static void run_lua(const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fail_msg("lua: %s", lua_tostring(L, -1));
  }
}

static void test_roundtrips(void **state) {
  (void)state;
  roundtrip("{\"b\":1,\"a\":2,\"c\":{\"z\":[],\"y\":{}}}");
  roundtrip("[9223372036854775807,-9223372036854775808,0,-1]");
  roundtrip("{\"f\":1.5,\"g\":1.0,\"h\":0.1,\"i\":1e+300,\"j\":-2.5e-07}");
  roundtrip("{\"s\":\"a\\\"b\\\\c\\n\\u0001\",\"u\":\"h\xc3\xa9llo\",\"n\":null,\"t\":true,\"f\":false}");
  roundtrip("[[],{},[{}],\"\"]");
}

static void test_integers_are_lua_integers(void **state) {
  (void)state;
  run_lua("local v = ds.json.decode('{\"big\":9223372036854775807,\"f\":2.0,\"huge\":18446744073709551616}')\n"
          "assert(math.type(v.big) == 'integer' and v.big == math.maxinteger)\n"
          "assert(math.type(v.f) == 'float' and v.f == 2.0)\n"
          "assert(math.type(v.huge) == 'float')\n"
          "assert(ds.json.encode(v.f) == '2.0')\n"
          "assert(ds.json.encode(3) == '3')\n");
}

static void test_order_and_added_keys(void **state) {
  (void)state;
  run_lua("local v = ds.json.decode('{\"z\":1,\"a\":2}')\n"
          "v.m = 3; v.b = 4; v.z = nil\n"
          "assert(ds.json.encode(v) == '{\"a\":2,\"b\":4,\"m\":3}', ds.json.encode(v))\n"
          "local o = ds.json.obj('type', 'x', 'id', 'y', 'skip', nil, 'delta', 'z')\n"
          "assert(ds.json.encode(o) == '{\"type\":\"x\",\"id\":\"y\",\"delta\":\"z\"}')\n"
          "assert(ds.json.encode({b = 1, a = {}}) == '{\"a\":{},\"b\":1}')\n"
          "assert(ds.json.encode(ds.json.array()) == '[]')\n"
          "assert(ds.json.encode({1, 2, 3}) == '[1,2,3]')\n"
          "assert(ds.json.encode(ds.json.null) == 'null')\n"
          "local d = ds.json.decode('{\"k\":null}')\n"
          "assert(d.k == ds.json.null and ds.json.encode(d) == '{\"k\":null}')\n");
}

static void test_duplicate_keys_written_once(void **state) {
  (void)state;
  run_lua("local v = ds.json.decode('{\"a\":1,\"a\":2}')\n"
          "assert(ds.json.encode(v) == '{\"a\":2}', ds.json.encode(v))\n");
}

static void test_errors(void **state) {
  (void)state;
  run_lua("local v, err = ds.json.decode('{\"a\":')\n"
          "assert(v == nil and type(err) == 'string')\n"
          "local t = {}; t.self = t\n"
          "local ok, e = pcall(ds.json.encode, t)\n"
          "assert(not ok and e:find('cycle'))\n"
          "ok, e = pcall(ds.json.encode, {x = 1/0})\n"
          "assert(not ok and e:find('inf'))\n"
          "ok, e = pcall(ds.json.encode, {f = print})\n"
          "assert(not ok and e:find('function'))\n"
          "assert(ds.json.encode({1, nil, 3, n = 1}) == '{\"1\":1,\"3\":3,\"n\":1}')\n"
          "local a = ds.json.array(1); a[3] = 3\n"
          "ok, e = pcall(ds.json.encode, a)\n"
          "assert(not ok and e:find('holes'))\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_roundtrips, setup, teardown),
      cmocka_unit_test_setup_teardown(test_integers_are_lua_integers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_and_added_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(test_duplicate_keys_written_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
