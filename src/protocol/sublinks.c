/* sublinks.c - the set of streams a subscription is linked to.
 *
 * Provides: ds__links_t, a hash index (path -> link) over a dense array of links, plus one
 * intrusive list per non-clean state, so that finding a link, the first link with pending
 * data and every pending link all cost O(1) / O(pending) however many streams a glob
 * subscription has linked. See psubs.h.
 * Must not: know files, streams or requests.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/psubs.h"

uint32_t ds__links_hash(const char *path) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (const unsigned char *p = (const unsigned char *)path; *p; p++) h = (h ^ *p) * 16777619u;
  return h;
}

void ds__links_init(ds__links_t *s) {
  memset(s, 0, sizeof *s);
  s->guard = SIZE_MAX;
}

void ds__links_free(ds__links_t *s) {
  for (size_t i = 0; i < s->n; i++) {
    free(s->v[i]->path);
    free(s->v[i]);
  }
  free(s->v);
  free(s->buckets);
  ds__links_init(s);
}

ds__link_t *ds__links_find(const ds__links_t *s, const char *path, uint32_t hash) {
  if (!s->nbuckets) return NULL;
  for (ds__link_t *l = s->buckets[hash & (s->nbuckets - 1)]; l; l = l->hnext)
    if (l->hash == hash && strcmp(l->path, path) == 0) return l;
  return NULL;
}

static void rehash(ds__links_t *s, size_t nb) {
  ds__link_t **b = ds_xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < s->n; i++) {
    ds__link_t *l = s->v[i];
    l->hnext = b[l->hash & (nb - 1)];
    b[l->hash & (nb - 1)] = l;
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = nb;
}

/* Takes the link out of its state's list and count. */
static void state_leave(ds__links_t *s, ds__link_t *l) {
  s->counts[l->state]--;
  if (l->state == DS__L_CLEAN) return;
  if (l->sprev) l->sprev->snext = l->snext;
  else s->lists[l->state] = l->snext;
  if (l->snext) l->snext->sprev = l->sprev;
  l->sprev = l->snext = NULL;
}

void ds__links_set_state(ds__links_t *s, ds__link_t *l, int state) {
  if (l->state == state) return;
  state_leave(s, l);
  l->state = (uint8_t)state;
  s->counts[state]++;
  if (state == DS__L_CLEAN) return;
  /* appended at the tail would need a tail pointer; the head is as good: wakes list the
   * pending set, and "the first pending link" only names a trigger */
  l->snext = s->lists[state];
  if (l->snext) l->snext->sprev = l;
  s->lists[state] = l;
}

ds__link_t *ds__links_add(ds__links_t *s, const char *path, uint32_t hash, const char *acked) {
  ds__link_t *l = ds__links_find(s, path, hash);
  if (l) return l;
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 8;
    s->v = ds_xrealloc(s->v, s->cap * sizeof *s->v);
  }
  if (s->n + 1 > s->nbuckets) rehash(s, s->nbuckets ? s->nbuckets * 2 : 16);
  l = ds_xcalloc(1, sizeof *l);
  l->path = ds_xstrdup(path);
  l->hash = hash;
  l->idx = (uint32_t)s->n;
  size_t al = strlen(acked);
  if (al >= sizeof l->acked) al = sizeof l->acked - 1;
  memcpy(l->acked, acked, al);
  s->v[s->n++] = l;
  l->hnext = s->buckets[hash & (s->nbuckets - 1)];
  s->buckets[hash & (s->nbuckets - 1)] = l;
  s->counts[DS__L_CLEAN]++;
  return l;
}

void ds__links_remove(ds__links_t *s, ds__link_t *l) {
  for (ds__link_t **pp = &s->buckets[l->hash & (s->nbuckets - 1)]; *pp; pp = &(*pp)->hnext)
    if (*pp == l) {
      *pp = l->hnext;
      break;
    }
  state_leave(s, l);
  size_t i = l->idx, last = s->n - 1;
  if (i != last) {
    ds__link_t *m = s->v[last];
    s->v[i] = m;
    m->idx = (uint32_t)i;
    if (i < s->guard && last >= s->guard && s->moved) s->moved(s->moved_ud, m);
  }
  s->n--;
  free(l->path);
  free(l);
}
