/* fuzz_yaml_load.c - libFuzzer target for the YAML loader and the record decoder.
 *
 * Provides: LLVMFuzzerTestOneInput: ds_yaml_load_doc and ds_record_decode_yaml on
 * arbitrary bytes must return 0 or DS_ECORRUPT with a "line N: ..." message, never crash
 * or leak; a loaded tree must survive the emitter and load back equal.
 * Must not: keep state between inputs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "store/json.h"
#include "store/store.h"
#include "store/yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v, *w;
  char err[256];
  int rc = ds_yaml_load_doc(&a, (const char *)data, size, &v, err, sizeof err);
  if (rc == 0) {
    /* whatever was loaded must survive the emitter exactly, when its strings are UTF-8
     * (a loaded tree always is, libyaml validates its input) */
    ds_buf_t y = DS_BUF_INIT;
    ds_yaml_emit_doc(&y, v);
    if (ds_yaml_load_doc(&a, y.data, y.len, &w, err, sizeof err) != 0) abort();
    if (!ds_value_equal(v, w)) abort();
    ds_buf_free(&y);
  } else if (rc != DS_ECORRUPT || strncmp(err, "line ", 5) != 0) {
    abort();
  }
  ds_buf_t repr = DS_BUF_INIT;
  uint64_t off;
  rc = ds_record_decode_yaml((const char *)data, size, &repr, &off, err, sizeof err);
  if (rc != 0 && rc != DS_ECORRUPT) abort();
  ds_buf_free(&repr);
  ds_arena_free(&a);
  return 0;
}
