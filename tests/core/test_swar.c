/* test_swar.c - core/swar.h: the word-at-a-time tests agree with a byte loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "core/swar.h"

static uint64_t word(const unsigned char b[8]) {
  uint64_t x;
  memcpy(&x, b, 8);
  return x;
}

static void test_against_byte_loop(void **state) {
  (void)state;
  /* every byte value in every position, on a background of each of a few fillers */
  const unsigned char fill[] = {'a', 0x20, 0x7f, 0x80, 0xff, 0x00};
  const unsigned probes_less[] = {1, 0x20, 0x7f, 0x80};
  const unsigned probes_byte[] = {0, '"', '\\', ':', ' ', 0x7f, 0xff};
  for (size_t f = 0; f < sizeof fill; f++)
    for (unsigned pos = 0; pos < 8; pos++)
      for (unsigned v = 0; v < 256; v++) {
        unsigned char b[8];
        memset(b, fill[f], 8);
        b[pos] = (unsigned char)v;
        uint64_t x = word(b);
        for (size_t k = 0; k < sizeof probes_less / sizeof *probes_less; k++) {
          int any = 0;
          for (int i = 0; i < 8; i++) any |= b[i] < probes_less[k];
          assert_int_equal(ds_swar_has_less(x, probes_less[k]) != 0, any);
        }
        for (size_t k = 0; k < sizeof probes_byte / sizeof *probes_byte; k++) {
          int any = 0;
          for (int i = 0; i < 8; i++) any |= b[i] == probes_byte[k];
          assert_int_equal(ds_swar_has_byte(x, probes_byte[k]) != 0, any);
        }
        int high = 0;
        for (int i = 0; i < 8; i++) high |= b[i] >= 0x80;
        assert_int_equal((x & DS_SWAR_HIGH) != 0, high);
      }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_against_byte_loop)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
