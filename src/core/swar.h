/* swar.h - word-at-a-time byte tests ("SIMD within a register") on 8 bytes in a uint64_t.
 *
 * Provides: DS_SWAR_ONES / DS_SWAR_HIGH and the two classic tests, exact as "is there any
 * such byte in the word" (the JSON writer's and the YAML fast loader's scans use them; the
 * position of a match is only exact for the lowest flagged byte).
 * Must not: load memory (callers memcpy their 8 bytes, so alignment and bounds stay theirs).
 */
#ifndef DS_CORE_SWAR_H
#define DS_CORE_SWAR_H

#include <stdint.h>

#define DS_SWAR_ONES UINT64_C(0x0101010101010101)
#define DS_SWAR_HIGH UINT64_C(0x8080808080808080)

/* Nonzero if some byte of x is below n (n <= 128). */
static inline uint64_t ds_swar_has_less(uint64_t x, unsigned n) {
  return (x - DS_SWAR_ONES * n) & ~x & DS_SWAR_HIGH;
}

/* Nonzero if some byte of x equals c. */
static inline uint64_t ds_swar_has_byte(uint64_t x, unsigned c) {
  uint64_t y = x ^ (DS_SWAR_ONES * c);
  return (y - DS_SWAR_ONES) & ~y & DS_SWAR_HIGH;
}

#endif
