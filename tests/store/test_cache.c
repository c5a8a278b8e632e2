/* test_cache.c - the hot-tail ring (store.c ds__cache_*): suffix semantics, limits counted
 * with per-record overhead, and the slot array shrinking as the ring empties. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "store/store_int.h"

static void push_n(ds__cache_t *c, uint64_t from, size_t n, size_t limit) {
  char rec[32];
  for (size_t i = 0; i < n; i++) {
    int len = snprintf(rec, sizeof rec, "r%llu", (unsigned long long)(from + i));
    ds__cache_push(c, from + i, rec, (size_t)len, limit);
  }
}

static void expect_rec(const ds__cache_t *c, uint64_t off) {
  char want[32];
  int len = snprintf(want, sizeof want, "r%llu", (unsigned long long)off);
  const ds__crec_t *r = ds__cache_get(c, off);
  assert_non_null(r);
  assert_int_equal(r->n, (size_t)len);
  assert_memory_equal(r->p, want, (size_t)len);
}

static void test_suffix_and_limit(void **state) {
  (void)state;
  ds__cache_t c;
  ds__cache_init(&c, 0);
  push_n(&c, 0, 1000, 4096);
  /* a suffix ending at the newest record, within the limit counting the overhead */
  assert_true(c.count > 0 && c.count < 1000);
  assert_int_equal(c.first + c.count, 1000);
  assert_true(c.bytes <= 4096);
  assert_null(ds__cache_get(&c, c.first - 1));
  assert_null(ds__cache_get(&c, 1000));
  for (uint64_t o = c.first; o < 1000; o++) expect_rec(&c, o);
  /* a record larger than the limit empties it; the suffix restarts after it */
  char big[5000];
  memset(big, 'x', sizeof big);
  ds__cache_push(&c, 1000, big, sizeof big, 4096);
  assert_int_equal(c.count, 0);
  assert_int_equal(c.first, 1001);
  push_n(&c, 1001, 3, 4096);
  for (uint64_t o = 1001; o < 1004; o++) expect_rec(&c, o);
  ds__cache_free(&c);
  assert_null(c.v);
}

static void test_slots_shrink_as_it_empties(void **state) {
  (void)state;
  ds__cache_t c;
  ds__cache_init(&c, 0);
  push_n(&c, 0, 100000, (size_t)1 << 30);
  assert_int_equal(c.count, 100000);
  size_t big_cap = c.cap;
  assert_true(big_cap >= 100000);
  /* evicting down to a few records (what the store-wide budget does) gives slots back */
  while (c.count > 10) ds__cache_pop(&c);
  assert_true(c.cap <= 64);
  assert_true(c.cap >= c.count);
  for (uint64_t o = c.first; o < 100000; o++) expect_rec(&c, o);
  /* it still grows and wraps correctly afterwards */
  push_n(&c, 100000, 500, (size_t)1 << 30);
  assert_int_equal(c.first + c.count, 100500);
  for (uint64_t o = c.first; o < 100500; o++) expect_rec(&c, o);
  /* emptied entirely: no slot array is kept */
  while (c.count) ds__cache_pop(&c);
  assert_null(c.v);
  assert_int_equal(c.cap, 0);
  assert_int_equal(c.bytes, 0);
  push_n(&c, 100500, 2, (size_t)1 << 30);
  expect_rec(&c, 100501);
  ds__cache_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_suffix_and_limit),
      cmocka_unit_test(test_slots_shrink_as_it_empties),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
