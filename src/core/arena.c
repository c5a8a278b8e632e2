/* arena.c - bump allocator. */
#include "core/arena.h"

#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

struct ds_arena_chunk_s {
  ds_arena_chunk_t *next;
  size_t cap, used;
  _Alignas(16) unsigned char mem[];
};

#define DS_ARENA_CHUNK 8192

void ds_arena_init(ds_arena_t *a) {
  a->head = NULL;
  a->used_total = 0;
}

void ds_arena_free(ds_arena_t *a) {
  ds_arena_chunk_t *c = a->head;
  while (c) {
    ds_arena_chunk_t *n = c->next;
    free(c);
    c = n;
  }
  ds_arena_init(a);
}

void *ds_arena_alloc(ds_arena_t *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n == 0) n = 16;
  ds_arena_chunk_t *c = a->head;
  if (!c || c->cap - c->used < n) {
    size_t cap = n > DS_ARENA_CHUNK / 2 ? n : DS_ARENA_CHUNK;
    c = ds_xmalloc(sizeof *c + cap);
    c->cap = cap;
    c->used = 0;
    if (n > DS_ARENA_CHUNK / 2 && a->head) {
      /* big block: keep the current chunk at the head for further small allocations */
      c->next = a->head->next;
      a->head->next = c;
    } else {
      c->next = a->head;
      a->head = c;
    }
  }
  void *p = c->mem + c->used;
  c->used += n;
  a->used_total += n;
  return p;
}

char *ds_arena_strndup(ds_arena_t *a, const char *s, size_t n) {
  char *p = ds_arena_alloc(a, n + 1);
  if (n) memcpy(p, s, n);
  p[n] = '\0';
  return p;
}
