/* value.h - the value model shared by JSON, YAML and the store.
 *
 * Provides: ds_value_t, an immutable tree of JSON-like values (plus binary, for the
 * Durable Streams protocol's `!!binary` messages) allocated in a ds_arena_t. Numbers keep
 * their exact source lexeme (so int64 extremes, 1e400 and 0.1 round-trip byte for byte),
 * strings are decoded UTF-8 bytes with an explicit length (they may contain NUL), and
 * objects keep key order.
 * Must not: own memory outside its arena; every node and string lives as long as the
 * arena it was built in.
 */
#ifndef DS_STORE_VALUE_H
#define DS_STORE_VALUE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/arena.h"

typedef enum {
  DS_V_NULL = 0,
  DS_V_BOOL,
  DS_V_NUMBER, /* str = the JSON number lexeme, e.g. "-12.50e3" */
  DS_V_STRING, /* str = UTF-8 bytes */
  DS_V_BINARY, /* str = raw bytes (YAML !!binary; never produced by the JSON parser) */
  DS_V_ARRAY,
  DS_V_OBJECT
} ds_vtype_t;

typedef struct ds_value_s ds_value_t;
typedef struct ds_member_s {
  const char *key; /* UTF-8, NUL-terminated too, but may contain NUL: use klen */
  size_t klen;
  ds_value_t *val;
} ds_member_t;

struct ds_value_s {
  ds_vtype_t type;
  union {
    bool b;
    struct {
      const char *s; /* NUL-terminated copy, length len */
      size_t len;
    } str;
    struct {
      ds_value_t **items;
      size_t len;
    } arr;
    struct {
      ds_member_t *items;
      size_t len;
    } obj;
  } u;
};

/* Constructors: every result lives in the arena. Strings are copied. */
ds_value_t *ds_value_null(ds_arena_t *a);
ds_value_t *ds_value_bool(ds_arena_t *a, bool b);
ds_value_t *ds_value_number(ds_arena_t *a, const char *lexeme, size_t len);
ds_value_t *ds_value_string(ds_arena_t *a, const char *s, size_t len);
ds_value_t *ds_value_binary(ds_arena_t *a, const void *p, size_t len);
/** New array/object with room for `cap` items (grows as needed). */
ds_value_t *ds_value_array(ds_arena_t *a, size_t cap);
ds_value_t *ds_value_object(ds_arena_t *a, size_t cap);
void ds_value_array_push(ds_arena_t *a, ds_value_t *arr, ds_value_t *item);
/** Appends a member (does not check for duplicates). The key is copied. */
void ds_value_object_add(ds_arena_t *a, ds_value_t *obj, const char *key, size_t klen, ds_value_t *val);

/** Member lookup by key (first match), NULL if absent or obj is not an object. */
ds_value_t *ds_value_get(const ds_value_t *obj, const char *key);
/** Deep equality (numbers compare by lexeme; key order matters). */
bool ds_value_equal(const ds_value_t *a, const ds_value_t *b);

#endif
