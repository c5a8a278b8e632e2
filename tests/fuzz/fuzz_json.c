/* fuzz_json.c - libFuzzer target for the strict JSON parser and compact writer.
 *
 * Provides: LLVMFuzzerTestOneInput: parse arbitrary bytes; when they parse, the compact
 * rewrite must reparse to an equal tree and rewrite to identical bytes (the writer is a
 * fixed point), and the parser's verdict must agree with ds_utf8_valid on string bytes.
 * Must not: keep state between inputs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v, *w;
  char err[256];
  if (ds_json_parse(&a, (const char *)data, size, 0, &v, err, sizeof err) == 0) {
    ds_buf_t b1 = DS_BUF_INIT, b2 = DS_BUF_INIT;
    ds_json_write(&b1, v);
    if (!ds_utf8_valid(b1.data, b1.len)) abort();
    if (ds_json_parse(&a, b1.data, b1.len, 0, &w, err, sizeof err) != 0) abort();
    if (!ds_value_equal(v, w)) abort();
    ds_json_write(&b2, w);
    if (b1.len != b2.len || memcmp(b1.data, b2.data, b1.len) != 0) abort();
    ds_buf_free(&b1);
    ds_buf_free(&b2);
  } else if (err[0] == '\0') {
    abort(); /* every failure carries a message */
  }
  /* base64 decode must not crash either, and encode/decode must round-trip */
  ds_buf_t d = DS_BUF_INIT, e = DS_BUF_INIT, r = DS_BUF_INIT;
  ds_base64_decode(&d, (const char *)data, size);
  ds_base64_encode(&e, data, size);
  if (ds_base64_decode(&r, e.data, e.len) != 0 || r.len != size ||
      (size && memcmp(r.data, data, size) != 0))
    abort();
  ds_buf_free(&d);
  ds_buf_free(&e);
  ds_buf_free(&r);
  ds_arena_free(&a);
  return 0;
}
