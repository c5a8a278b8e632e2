/* append.c - turning request bodies into stored protocol messages.
 *
 * Provides: ds__msgs_prepare (validation: JSON parsed strictly and an outer array
 * flattened by exactly one level, text kept as UTF-8 strings, anything else as bytes)
 * and ds__msgs_commit (renders each message once as its YAML document
 * `---\n<kind>: <value>\noffset: "<16 digits>"\ncreatedAt: <ISO>\n` plus its repr, and
 * appends them all atomically through ds_stream_append_records so every subscriber of
 * both views sees them).
 * Must not: decide HTTP statuses (callers map the DS_E* codes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "protocol/pappend.h"
#include "store/json.h"
#include "store/yaml.h"

void ds__msgs_init(ds__msgs_t *m) {
  memset(m, 0, sizeof *m);
  ds_arena_init(&m->a);
}

void ds__msgs_free(ds__msgs_t *m) {
  ds_arena_free(&m->a);
  free(m->items);
  ds_buf_free(&m->reprs);
  memset(m, 0, sizeof *m);
}

static void push(ds__msgs_t *m, ds_value_t *v, const char *repr, size_t len) {
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 8;
    m->items = ds_xrealloc(m->items, m->cap * sizeof *m->items);
  }
  m->items[m->n].v = v;
  m->items[m->n].repr_off = m->reprs.len;
  m->items[m->n].repr_len = len;
  ds_buf_append(&m->reprs, repr, len);
  m->n++;
}

static void push_json(ds__msgs_t *m, ds_value_t *v) {
  size_t start = m->reprs.len;
  ds_json_write(&m->reprs, v);
  size_t len = m->reprs.len - start;
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 8;
    m->items = ds_xrealloc(m->items, m->cap * sizeof *m->items);
  }
  m->items[m->n].v = v;
  m->items[m->n].repr_off = start;
  m->items[m->n].repr_len = len;
  m->n++;
}

int ds__msgs_prepare(ds__msgs_t *m, int mode, const char *body, size_t len, bool is_create,
                     char *err, size_t errlen) {
  if (mode == DS__M_JSON) {
    m->kind = DS_REC_JSON;
    if (len == 0) return 0;
    ds_value_t *v = NULL;
    if (ds_json_parse(&m->a, body, len, 128, &v, err, errlen) != 0) return DS_EINVAL;
    if (v->type == DS_V_ARRAY) {
      if (v->u.arr.len == 0) {
        if (is_create) return 0;
        snprintf(err, errlen, "Empty arrays are not allowed");
        return DS_EINVAL;
      }
      for (size_t i = 0; i < v->u.arr.len; i++) push_json(m, v->u.arr.items[i]);
    } else {
      push_json(m, v);
    }
    return 0;
  }
  if (len == 0) return 0;
  if (mode == DS__M_TEXT && ds_utf8_valid(body, len)) {
    m->kind = DS_REC_TEXT;
    push(m, ds_value_string(&m->a, body, len), body, len);
  } else {
    m->kind = DS_REC_BYTES;
    push(m, ds_value_binary(&m->a, body, len), body, len);
  }
  return 0;
}

void ds__msgs_add_raw(ds__msgs_t *m, int mode, const char *repr, size_t len) {
  if (mode == DS__M_JSON) {
    ds_value_t *v = NULL;
    char err[64];
    if (ds_json_parse(&m->a, repr, len, 128, &v, err, sizeof err) != 0)
      v = ds_value_string(&m->a, repr, len);
    m->kind = DS_REC_JSON;
    push(m, v, repr, len);
  } else if (mode == DS__M_TEXT && ds_utf8_valid(repr, len)) {
    m->kind = DS_REC_TEXT;
    push(m, ds_value_string(&m->a, repr, len), repr, len);
  } else {
    m->kind = DS_REC_BYTES;
    push(m, ds_value_binary(&m->a, repr, len), repr, len);
  }
}

int ds__msgs_commit(ds__msgs_t *m, ds_stream_t *s) {
  if (m->n == 0) return 0;
  const char *key = m->kind == DS_REC_JSON ? "json" : m->kind == DS_REC_TEXT ? "text" : "bytes";
  char iso[32];
  ds_clock_iso8601(ds_clock_wall_ms(), iso);
  uint64_t next = ds_stream_next_offset(s);
  ds_buf_t yaml = DS_BUF_INIT;
  size_t *yoff = ds_xmalloc((m->n + 1) * sizeof *yoff);
  ds_arena_t a;
  ds_arena_init(&a);
  for (size_t i = 0; i < m->n; i++) {
    char off[17];
    ds_offset_format(next + i, off);
    ds_value_t *doc = ds_value_object(&a, 3);
    ds_value_object_add(&a, doc, key, strlen(key), m->items[i].v);
    ds_value_object_add(&a, doc, "offset", 6, ds_value_string(&a, off, 16));
    ds_value_object_add(&a, doc, "createdAt", 9, ds_value_string(&a, iso, strlen(iso)));
    yoff[i] = yaml.len;
    ds_yaml_emit_doc(&yaml, doc);
  }
  yoff[m->n] = yaml.len;
  ds_record_in_t *recs = ds_xmalloc(m->n * sizeof *recs);
  for (size_t i = 0; i < m->n; i++) {
    recs[i].yaml = yaml.data + yoff[i];
    recs[i].yaml_len = yoff[i + 1] - yoff[i];
    recs[i].repr = m->reprs.data + m->items[i].repr_off;
    recs[i].repr_len = m->items[i].repr_len;
  }
  int rc = ds_stream_append_records(s, m->kind, recs, m->n);
  free(recs);
  free(yoff);
  ds_buf_free(&yaml);
  ds_arena_free(&a);
  return rc;
}
