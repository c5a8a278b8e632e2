/* value.c - arena-allocated value tree (see value.h).
 *
 * Provides: constructors, growth of arrays/objects, lookup and deep equality.
 * Must not: allocate outside the arena or free anything; a tree dies with its arena.
 *
 * Arrays and objects have no capacity field in ds_value_t (the public struct stays small
 * and read-only for consumers), so every item block carries a hidden 16-byte header in
 * front of it that records its capacity. Growth copies into a block twice as large; the
 * old block is simply abandoned in the arena (arenas are short-lived).
 */
#include "store/value.h"

#include <string.h>

#define DS__ITEMS_HDR 16 /* keeps the items 16-byte aligned like every arena block */

/* Returns an item block with room for cap items of size sz, its capacity recorded in the
 * header just before it. cap == 0 gives NULL (no block until the first push). */
static void *items_alloc(ds_arena_t *a, size_t cap, size_t sz) {
  if (cap == 0) return NULL;
  unsigned char *p = ds_arena_alloc(a, DS__ITEMS_HDR + cap * sz);
  memcpy(p, &cap, sizeof cap);
  return p + DS__ITEMS_HDR;
}

static size_t items_cap(const void *items) {
  size_t cap = 0;
  if (items) memcpy(&cap, (const unsigned char *)items - DS__ITEMS_HDR, sizeof cap);
  return cap;
}

/* Makes room for one more item; returns the (possibly moved) block. */
static void *items_grow(ds_arena_t *a, void *items, size_t len, size_t sz) {
  size_t cap = items_cap(items);
  if (len < cap) return items;
  size_t ncap = cap ? cap * 2 : 4;
  void *n = items_alloc(a, ncap, sz);
  if (len) memcpy(n, items, len * sz);
  return n;
}

static ds_value_t *node(ds_arena_t *a, ds_vtype_t t) {
  ds_value_t *v = ds_arena_alloc(a, sizeof *v);
  memset(v, 0, sizeof *v);
  v->type = t;
  return v;
}

ds_value_t *ds_value_null(ds_arena_t *a) { return node(a, DS_V_NULL); }

ds_value_t *ds_value_bool(ds_arena_t *a, bool b) {
  ds_value_t *v = node(a, DS_V_BOOL);
  v->u.b = b;
  return v;
}

static ds_value_t *strnode(ds_arena_t *a, ds_vtype_t t, const void *p, size_t len) {
  ds_value_t *v = node(a, t);
  v->u.str.s = ds_arena_strndup(a, p, len);
  v->u.str.len = len;
  return v;
}

ds_value_t *ds_value_number(ds_arena_t *a, const char *lexeme, size_t len) {
  return strnode(a, DS_V_NUMBER, lexeme, len);
}

ds_value_t *ds_value_string(ds_arena_t *a, const char *s, size_t len) {
  return strnode(a, DS_V_STRING, s, len);
}

ds_value_t *ds_value_binary(ds_arena_t *a, const void *p, size_t len) {
  return strnode(a, DS_V_BINARY, p, len);
}

ds_value_t *ds_value_array(ds_arena_t *a, size_t cap) {
  ds_value_t *v = node(a, DS_V_ARRAY);
  v->u.arr.items = items_alloc(a, cap, sizeof(ds_value_t *));
  return v;
}

ds_value_t *ds_value_object(ds_arena_t *a, size_t cap) {
  ds_value_t *v = node(a, DS_V_OBJECT);
  v->u.obj.items = items_alloc(a, cap, sizeof(ds_member_t));
  return v;
}

void ds_value_array_push(ds_arena_t *a, ds_value_t *arr, ds_value_t *item) {
  arr->u.arr.items = items_grow(a, arr->u.arr.items, arr->u.arr.len, sizeof(ds_value_t *));
  arr->u.arr.items[arr->u.arr.len++] = item;
}

void ds_value_object_add(ds_arena_t *a, ds_value_t *obj, const char *key, size_t klen,
                         ds_value_t *val) {
  obj->u.obj.items = items_grow(a, obj->u.obj.items, obj->u.obj.len, sizeof(ds_member_t));
  ds_member_t *m = &obj->u.obj.items[obj->u.obj.len++];
  m->key = ds_arena_strndup(a, key, klen);
  m->klen = klen;
  m->val = val;
}

ds_value_t *ds_value_get(const ds_value_t *obj, const char *key) {
  if (!obj || obj->type != DS_V_OBJECT) return NULL;
  size_t klen = strlen(key);
  for (size_t i = 0; i < obj->u.obj.len; i++) {
    const ds_member_t *m = &obj->u.obj.items[i];
    if (m->klen == klen && memcmp(m->key, key, klen) == 0) return m->val;
  }
  return NULL;
}

bool ds_value_equal(const ds_value_t *a, const ds_value_t *b) {
  if (a == b) return true;
  if (!a || !b || a->type != b->type) return false;
  switch (a->type) {
  case DS_V_NULL:
    return true;
  case DS_V_BOOL:
    return a->u.b == b->u.b;
  case DS_V_NUMBER:
  case DS_V_STRING:
  case DS_V_BINARY:
    return a->u.str.len == b->u.str.len &&
           (a->u.str.len == 0 || memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0);
  case DS_V_ARRAY:
    if (a->u.arr.len != b->u.arr.len) return false;
    for (size_t i = 0; i < a->u.arr.len; i++)
      if (!ds_value_equal(a->u.arr.items[i], b->u.arr.items[i])) return false;
    return true;
  case DS_V_OBJECT:
    if (a->u.obj.len != b->u.obj.len) return false;
    for (size_t i = 0; i < a->u.obj.len; i++) {
      const ds_member_t *x = &a->u.obj.items[i], *y = &b->u.obj.items[i];
      if (x->klen != y->klen || (x->klen && memcmp(x->key, y->key, x->klen) != 0)) return false;
      if (!ds_value_equal(x->val, y->val)) return false;
    }
    return true;
  }
  return false;
}
