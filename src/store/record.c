/* record.c - decoding of one stored YAML document into its repr and offset.
 *
 * Provides: ds_record_decode_yaml() (declared in store.h), shared by both store kinds and
 * the fuzzers. The record kind is the document's FIRST key (files are self-describing):
 *   type  -> repr = compact JSON of the whole mapping (an /agents event);
 *   json  -> repr = compact JSON of that key's value;
 *   text  -> repr = the string's raw UTF-8 bytes;
 *   bytes -> repr = the raw bytes of the !!binary value.
 * The `offset` key (a string of decimal digits, normally 16) gives *offset.
 * Must not: know about files, offsets' meaning or streams; it only decodes one document.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "store/json.h"
#include "store/store.h"
#include "store/value.h"
#include "store/yaml.h"

static int rfail(char *err, size_t errlen, const char *what) {
  if (err && errlen) snprintf(err, errlen, "%s", what);
  return DS_ECORRUPT;
}

/* Decimal digits only (1..20), no overflow. Accepts the quoted string form the emitter
 * writes and, for hand-edited files, a bare number. */
static int parse_digits(const char *s, size_t n, uint64_t *out) {
  if (n == 0 || n > 20) return -1;
  uint64_t x = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned d = (unsigned)(unsigned char)s[i] - '0';
    if (d > 9) return -1;
    x = x * 10 + d; /* (wraps only for a 20-digit value refused below) */
  }
  /* 19 digits cannot overflow; 20 digits fit up to UINT64_MAX, compared as text */
  if (n == 20 && memcmp(s, "18446744073709551615", 20) > 0) return -1;
  *out = x;
  return 0;
}

static int parse_offset(const ds_value_t *v, uint64_t *out) {
  if (!v || (v->type != DS_V_STRING && v->type != DS_V_NUMBER)) return -1;
  return parse_digits(v->u.str.s, v->u.str.len, out);
}

/* parse_offset for the JSON text of the value (a string of digits or a bare number). */
static int parse_offset_json(const char *j, size_t n, uint64_t *out) {
  if (n >= 2 && j[0] == '"' && j[n - 1] == '"') {
    j++;
    n -= 2;
  }
  return parse_digits(j, n, out);
}

/* The fast path for the two kinds that are JSON anyway (/agents events and protocol JSON
 * messages): the document is transcoded straight into repr, without a value tree. Returns
 * 1 if it decoded the record, 0 to use the general path (repr left as it was). */
static int decode_json_kinds(const char *doc, size_t len, ds_buf_t *repr, uint64_t *offset) {
  size_t base = repr->len;
  ds__yaml_json_info_t info;
  if (!ds__yaml_doc_to_json(doc, len, repr, "offset", 6, &info)) return 0;
  const char *j = repr->data + base;
  const ds__yaml_span_t *f = &info.first;
  size_t kn = f->key_end - f->key_start;
  uint64_t off;
  /* JSON string encoding is one-to-one, so comparing encoded keys compares keys */
  int is_type = kn == 6 && memcmp(j + f->key_start - base, "\"type\"", 6) == 0;
  int is_json = kn == 6 && memcmp(j + f->key_start - base, "\"json\"", 6) == 0;
  if ((!is_type && !is_json) || !info.want_found ||
      parse_offset_json(j + info.want.val_start - base, info.want.val_end - info.want.val_start,
                        &off) != 0) {
    repr->len = base; /* other kinds and errors: the general path decides */
    repr->data[base] = '\0';
    return 0;
  }
  if (is_json) { /* repr = the first member's value */
    size_t vn = f->val_end - f->val_start;
    memmove(repr->data + base, repr->data + f->val_start, vn);
    repr->len = base + vn;
    repr->data[repr->len] = '\0';
  }
  *offset = off;
  return 1;
}

int ds_record_decode_yaml(const char *doc, size_t len, ds_buf_t *repr, uint64_t *offset,
                          char *err, size_t errlen) {
  if (decode_json_kinds(doc, len, repr, offset)) {
    if (err && errlen) err[0] = '\0';
    return 0;
  }
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  int rc = ds_yaml_load_doc(&a, doc, len, &v, err, errlen);
  if (rc) goto out;
  if (v->type != DS_V_OBJECT || v->u.obj.len == 0) {
    rc = rfail(err, errlen, "record is not a non-empty mapping");
    goto out;
  }
  uint64_t off;
  if (parse_offset(ds_value_get(v, "offset"), &off) != 0) {
    rc = rfail(err, errlen, "record has no valid offset");
    goto out;
  }
  const ds_member_t *first = &v->u.obj.items[0];
  const ds_value_t *fv = first->val;
#define KEY_IS(lit) (first->klen == sizeof(lit) - 1 && memcmp(first->key, lit, sizeof(lit) - 1) == 0)
  if (KEY_IS("type")) {
    ds_json_write(repr, v);
  } else if (KEY_IS("json")) {
    ds_json_write(repr, fv);
  } else if (KEY_IS("text")) {
    if (fv->type != DS_V_STRING) {
      rc = rfail(err, errlen, "text record value is not a string");
      goto out;
    }
    ds_buf_append(repr, fv->u.str.s, fv->u.str.len);
  } else if (KEY_IS("bytes")) {
    if (fv->type != DS_V_BINARY) {
      rc = rfail(err, errlen, "bytes record value is not !!binary");
      goto out;
    }
    ds_buf_append(repr, fv->u.str.s, fv->u.str.len);
  } else {
    rc = rfail(err, errlen, "record kind (first key) is not type, json, text or bytes");
    goto out;
  }
#undef KEY_IS
  *offset = off;
out:
  ds_arena_free(&a);
  return rc;
}
