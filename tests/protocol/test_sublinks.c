/* test_sublinks.c - the link set of a subscription (protocol/sublinks.c): lookups through
 * the hash at every size, the pending / unknown lists and their counts, removal from the
 * middle, and the report of a link a removal moves behind a compaction's cursor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "protocol/psubs.h"

static ds__link_t *add(ds__links_t *s, const char *p, const char *acked) {
  return ds__links_add(s, p, ds__links_hash(p), acked);
}

static ds__link_t *find(ds__links_t *s, const char *p) {
  return ds__links_find(s, p, ds__links_hash(p));
}

static size_t list_len(const ds__links_t *s, int state) {
  size_t n = 0;
  for (ds__link_t *l = s->lists[state]; l; l = l->snext) {
    assert_int_equal(l->state, state);
    n++;
  }
  return n;
}

static void test_many_links(void **state) {
  (void)state;
  ds__links_t s;
  ds__links_init(&s);
  char p[64];
  for (int i = 0; i < 20000; i++) {
    snprintf(p, sizeof p, "team/s%d", i);
    ds__link_t *l = add(&s, p, i % 2 ? "-1" : "0000000000000007");
    assert_string_equal(l->path, p);
    assert_ptr_equal(add(&s, p, "-1"), l); /* the same link again */
  }
  assert_int_equal(s.n, 20000);
  assert_int_equal(s.counts[DS__L_CLEAN], 20000);
  for (int i = 0; i < 20000; i += 997) {
    snprintf(p, sizeof p, "team/s%d", i);
    ds__link_t *l = find(&s, p);
    assert_non_null(l);
    assert_string_equal(l->acked, i % 2 ? "-1" : "0000000000000007");
    assert_ptr_equal(s.v[l->idx], l);
  }
  assert_null(find(&s, "team/s20000"));
  /* states: pending and unknown lists, counts kept exact */
  for (int i = 0; i < 300; i++) {
    snprintf(p, sizeof p, "team/s%d", i);
    ds__links_set_state(&s, find(&s, p), i < 100 ? DS__L_PENDING : DS__L_UNKNOWN);
  }
  assert_int_equal(s.counts[DS__L_PENDING], 100);
  assert_int_equal(s.counts[DS__L_UNKNOWN], 200);
  assert_int_equal(s.counts[DS__L_CLEAN], 19700);
  assert_int_equal(list_len(&s, DS__L_PENDING), 100);
  assert_int_equal(list_len(&s, DS__L_UNKNOWN), 200);
  ds__links_set_state(&s, find(&s, "team/s5"), DS__L_CLEAN);
  ds__links_set_state(&s, find(&s, "team/s150"), DS__L_PENDING);
  assert_int_equal(list_len(&s, DS__L_PENDING), 100);
  assert_int_equal(list_len(&s, DS__L_UNKNOWN), 199);
  /* removal from the middle of the array and of a list */
  ds__links_remove(&s, find(&s, "team/s7"));
  ds__links_remove(&s, find(&s, "team/s19999"));
  ds__links_remove(&s, find(&s, "team/s250"));
  assert_null(find(&s, "team/s7"));
  assert_null(find(&s, "team/s250"));
  assert_int_equal(s.n, 19997);
  assert_int_equal(s.counts[DS__L_PENDING] + s.counts[DS__L_UNKNOWN] + s.counts[DS__L_CLEAN], 19997);
  assert_int_equal(list_len(&s, DS__L_PENDING), s.counts[DS__L_PENDING]);
  assert_int_equal(list_len(&s, DS__L_UNKNOWN), s.counts[DS__L_UNKNOWN]);
  for (size_t i = 0; i < s.n; i++) assert_int_equal(s.v[i]->idx, i);
  ds__links_free(&s);
}

typedef struct {
  int calls;
  const ds__link_t *last;
} moved_t;

static void on_moved(void *ud, ds__link_t *l) {
  moved_t *m = ud;
  m->calls++;
  m->last = l;
}

static void test_moved_behind_guard(void **state) {
  (void)state;
  ds__links_t s;
  ds__links_init(&s);
  char p[32];
  for (int i = 0; i < 10; i++) {
    snprintf(p, sizeof p, "s%d", i);
    add(&s, p, "-1");
  }
  moved_t m = {0};
  s.guard = 5; /* a compaction has encoded v[0..5) */
  s.moved = on_moved;
  s.moved_ud = &m;
  ds__links_remove(&s, find(&s, "s7")); /* s9 moves to 7: still ahead of the cursor */
  assert_int_equal(m.calls, 0);
  ds__links_remove(&s, find(&s, "s2")); /* s8 moves to 2: behind it, reported */
  assert_int_equal(m.calls, 1);
  assert_string_equal(m.last->path, "s8");
  ds__links_remove(&s, find(&s, "s9")); /* the last one: nothing moves */
  assert_int_equal(m.calls, 1);
  ds__links_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_links),
      cmocka_unit_test(test_moved_behind_guard),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
