/* fuzz_yaml_load.c - libFuzzer target for the YAML loader and the record decoder.
 *
 * Provides: LLVMFuzzerTestOneInput: ds_yaml_load_doc and ds_record_decode_yaml on
 * arbitrary bytes must return 0 or DS_ECORRUPT with a "line N: ..." message, never crash
 * or leak; a loaded tree must survive the emitter and load back equal. Differential: what
 * the fast loader takes, libyaml must read to an equal tree, and the JSON transcoder must
 * take exactly the same documents and write ds_json_write's bytes of that tree (with the
 * spans of the first and the `offset` member right).
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

/* The JSON at j[sp) must be the member's key and value as ds_json_write writes them. */
static void check_span(const char *j, const ds__yaml_span_t *sp, const ds_member_t *m) {
  ds_buf_t k = DS_BUF_INIT, v = DS_BUF_INIT;
  ds_json_write_string(&k, m->key, m->klen);
  ds_json_write(&v, m->val);
  if (sp->key_end - sp->key_start != k.len || memcmp(j + sp->key_start, k.data, k.len) != 0)
    abort();
  if (sp->val_end - sp->val_start != v.len || memcmp(j + sp->val_start, v.data, v.len) != 0)
    abort();
  ds_buf_free(&k);
  ds_buf_free(&v);
}

static void check_fast_loaders(ds_arena_t *a, const char *s, size_t n) {
  ds_value_t *f = NULL, *l = NULL;
  char err[256];
  int took = ds__yaml_load_doc_fast(a, s, n, &f);
  int lr = ds__yaml_load_doc_libyaml(a, s, n, &l, err, sizeof err);
  if (took && (lr != 0 || !ds_value_equal(f, l))) abort();
  ds_buf_t j = DS_BUF_INIT;
  ds_buf_append(&j, "x", 1); /* it appends: what was there must stay */
  ds__yaml_json_info_t info;
  int tj = ds__yaml_doc_to_json(s, n, &j, "offset", 6, &info);
  if (tj != took) abort();
  if (tj) {
    ds_buf_t w = DS_BUF_INIT;
    ds_json_write(&w, f);
    if (j.len != w.len + 1 || j.data[0] != 'x' || memcmp(j.data + 1, w.data, w.len) != 0) abort();
    ds_buf_free(&w);
    check_span(j.data, &info.first, &f->u.obj.items[0]);
    const ds_member_t *want = NULL;
    for (size_t i = 0; i < f->u.obj.len && !want; i++)
      if (f->u.obj.items[i].klen == 6 && memcmp(f->u.obj.items[i].key, "offset", 6) == 0)
        want = &f->u.obj.items[i];
    if (info.want_found != (want != NULL)) abort();
    if (want) check_span(j.data, &info.want, want);
  } else if (j.len != 1) {
    abort();
  }
  ds_buf_free(&j);
}

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
  check_fast_loaders(&a, (const char *)data, size);
  ds_buf_t repr = DS_BUF_INIT;
  uint64_t off;
  rc = ds_record_decode_yaml((const char *)data, size, &repr, &off, err, sizeof err);
  if (rc != 0 && rc != DS_ECORRUPT) abort();
  ds_buf_free(&repr);
  ds_arena_free(&a);
  return 0;
}
