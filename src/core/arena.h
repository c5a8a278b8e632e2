/* arena.h - bump allocator for short-lived trees.
 *
 * Provides: ds_arena_t, which hands out memory that is all released at once by
 * ds_arena_free(). A parsed request body (a JSON value tree) lives in one arena, so
 * parsing costs no per-node free and can never leak a node.
 * Must not: be used for long-lived objects that are freed individually.
 */
#ifndef DS_CORE_ARENA_H
#define DS_CORE_ARENA_H

#include <stddef.h>

typedef struct ds_arena_chunk_s ds_arena_chunk_t;
typedef struct ds_arena_s {
  ds_arena_chunk_t *head;
  size_t used_total; /* bytes handed out, for limits and stats */
} ds_arena_t;

void ds_arena_init(ds_arena_t *a);
/** Releases every allocation made from the arena; the arena can be reused. */
void ds_arena_free(ds_arena_t *a);
/** 16-byte aligned memory valid until ds_arena_free(); never NULL (aborts on OOM). */
void *ds_arena_alloc(ds_arena_t *a, size_t n);
/** Copies n bytes plus a terminating NUL into the arena. */
char *ds_arena_strndup(ds_arena_t *a, const char *s, size_t n);

#endif
