/* fuzz_roundtrip.c - libFuzzer target for the codec's round-trip law.
 *
 * Provides: LLVMFuzzerTestOneInput: arbitrary bytes that parse as JSON must survive
 * JSON -> value -> YAML -> value -> JSON byte for byte (compact form), and the YAML must
 * keep the layout the store relies on (only `---` and top-level keys at column 0, no
 * document marker lines inside). The fast loader must take every non-empty mapping the
 * emitter writes without an explicit `? key`, and the JSON transcoder must turn that YAML
 * back into the very same compact JSON. Any mismatch abort()s.
 * Must not: keep state between inputs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/json.h"
#include "store/yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_layout(const ds_buf_t *y, const ds_value_t *v) {
  if (y->len < 4 || y->data[y->len - 1] != '\n' || memcmp(y->data, "---", 3) != 0) abort();
  size_t col0 = 0, explicit_keys = 0, line = 0;
  const char *p = y->data, *end = y->data + y->len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) abort();
    size_t len = (size_t)(nl - p);
    if (line > 0) {
      if (len == 0) abort();
      if (len >= 3 && (memcmp(p, "---", 3) == 0 || memcmp(p, "...", 3) == 0)) abort();
      if (p[0] != ' ') {
        col0++;
        if (p[0] == '?') explicit_keys++;
      }
    }
    line++;
    p = nl + 1;
  }
  size_t expect = 0;
  if (v->type == DS_V_OBJECT && v->u.obj.len) expect = v->u.obj.len + explicit_keys;
  if (v->type == DS_V_ARRAY && v->u.arr.len) expect = v->u.arr.len;
  if (col0 != expect) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v, *w;
  char err[256];
  if (ds_json_parse(&a, (const char *)data, size, 0, &v, err, sizeof err) == 0) {
    ds_buf_t j1 = DS_BUF_INIT, y = DS_BUF_INIT, j2 = DS_BUF_INIT;
    ds_json_write(&j1, v);
    ds_yaml_emit_doc(&y, v);
    check_layout(&y, v);
    if (ds_yaml_load_doc(&a, y.data, y.len, &w, err, sizeof err) != 0) abort();
    if (!ds_value_equal(v, w)) abort();
    ds_json_write(&j2, w);
    if (j1.len != j2.len || memcmp(j1.data, j2.data, j1.len) != 0) abort();
    ds_value_t *f = NULL;
    int took = ds__yaml_load_doc_fast(&a, y.data, y.len, &f);
    const char *yc = ds_buf_cstr(&y);
    int explicit_key = strstr(yc, "? ") != NULL; /* (generous: a "? " inside a value too) */
    if (v->type == DS_V_OBJECT && v->u.obj.len && !took && !explicit_key) abort();
    ds_buf_t j3 = DS_BUF_INIT;
    ds__yaml_json_info_t info;
    if (ds__yaml_doc_to_json(y.data, y.len, &j3, "offset", 6, &info) != took) abort();
    if (took && (j3.len != j1.len || memcmp(j3.data, j1.data, j1.len) != 0)) abort();
    ds_buf_free(&j3);
    ds_buf_free(&j1);
    ds_buf_free(&y);
    ds_buf_free(&j2);
  }
  ds_arena_free(&a);
  return 0;
}
