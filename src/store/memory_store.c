/* memory_store.c - the in-memory store kind (`--storage memory`, tests).
 *
 * Provides: the same observable behaviour as the yaml kind without files: each stream
 * keeps every record's repr in a vector (index = offset - base) and its metadata in memory.
 * A stream exists exactly while its handle is cached, so the handle cache in store.c is
 * the whole namespace. Syncs complete at once: nothing here survives the process.
 * Must not: keep the YAML documents (only repr is ever read back) or touch the disk.
 */
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/store_int.h"

static int mem_open(ds_store_t *st, char *err, size_t errlen) { return 0; }

static void mem_close(ds_store_t *st) {}

/* Finds the next directory segment (not the last one) of path[0..n) ending in ".yaml",
 * searching from *pos: returns the length of the stream name "x" of that "x.yaml/" and moves
 * *pos past it, or returns -1 when there is none. */
static int next_yaml_dir(const char *path, size_t n, size_t *pos) {
  for (size_t i = *pos; i < n; i++) {
    if (path[i] != '/') continue;
    if (i > 5 && memcmp(path + i - 5, ".yaml", 5) == 0 && path[i - 6] != '/') {
      *pos = i + 1;
      return (int)i - 5; /* the stream "x" of "x.yaml/": path[0, i - 5) */
    }
  }
  return -1;
}

/* The yaml kind's name conflicts (store.h), kept here so both kinds answer alike: "x.yaml/..."
 * cannot be created beside a stream "x", nor "x" beside streams under "x.yaml/". */
typedef struct {
  const char *prefix;
  size_t n;
  int found;
} under_ctx_t;

static void find_under(ds_store_stream_t *s, void *ud) {
  under_ctx_t *u = ud;
  if (s->path_len > u->n && memcmp(s->path, u->prefix, u->n) == 0) u->found = 1;
}

static int mem_conflict(ds_store_t *st, ds_store_stream_t *s) {
  size_t pos = 0;
  int cut;
  while ((cut = next_yaml_dir(s->path, s->path_len, &pos)) >= 0) {
    char *x = ds_xstrndup(s->path, (size_t)cut);
    int taken = ds_store_exists(st, x);
    free(x);
    if (taken) return 1;
  }
  if (st->yaml_dirs == 0) return 0;
  char *prefix = ds_xmalloc(s->path_len + sizeof ".yaml/");
  memcpy(prefix, s->path, s->path_len);
  memcpy(prefix + s->path_len, ".yaml/", sizeof ".yaml/");
  under_ctx_t u = {prefix, s->path_len + 6, 0};
  ds__store_foreach(st, find_under, &u);
  free(prefix);
  return u.found;
}

static int mem_load(ds_store_t *st, ds_store_stream_t *s, int create, uint64_t base) {
  if (!create) return DS_ENOTFOUND; /* not cached = never created (or deleted) */
  if (mem_conflict(st, s)) return DS_ECONFLICT;
  size_t pos = 0;
  s->yaml_dir = next_yaml_dir(s->path, s->path_len, &pos) >= 0;
  st->yaml_dirs += (size_t)s->yaml_dir;
  s->base = s->next = base;
  s->meta_state = 1;
  return 0;
}

static void mem_free_stream(ds_store_t *st, ds_store_stream_t *s) {
  st->yaml_dirs -= (size_t)s->yaml_dir;
  s->yaml_dir = 0;
  for (size_t i = 0; i < s->nrecs; i++) free(s->recs[i].p);
  free(s->recs);
  s->recs = NULL;
  s->nrecs = s->caprecs = 0;
}

static int mem_exists(ds_store_t *st, const char *path) { return 0; }

static int mem_append(ds_store_stream_t *s, const ds_record_in_t *recs, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!recs[i].repr && recs[i].repr_len) return DS_EINVAL;
  if (s->nrecs + n > s->caprecs) {
    size_t cap = s->caprecs ? s->caprecs : 64;
    while (cap < s->nrecs + n) cap *= 2;
    s->recs = ds_xrealloc(s->recs, cap * sizeof *s->recs);
    s->caprecs = cap;
  }
  for (size_t i = 0; i < n; i++) {
    ds__crec_t *r = &s->recs[s->nrecs + i];
    r->n = recs[i].repr_len;
    r->p = ds_xmalloc(r->n ? r->n : 1);
    if (r->n) memcpy(r->p, recs[i].repr, r->n);
  }
  s->nrecs += n;
  s->next += n;
  return 0;
}

static long mem_read(ds_store_stream_t *s, uint64_t from, size_t max_records, size_t max_bytes,
                     ds_record_cb cb, void *ud) {
  ds_store_t *st = s->st;
  long delivered = 0;
  size_t bytes = 0;
  for (uint64_t off = from; off < s->next && (size_t)delivered < max_records; off++) {
    const ds__crec_t *r = &s->recs[off - s->base];
    if (delivered > 0 && (bytes >= max_bytes || r->n > max_bytes - bytes)) break;
    bytes += r->n;
    delivered++;
    st->stats.records_read++;
    st->stats.cache_hits++;
    if (cb(ud, off, r->p, r->n)) break;
  }
  return delivered;
}

static int mem_sync(ds_store_t *st, void (*cb)(void *ud, int status), void *ud) {
  cb(ud, 0);
  return 0;
}

static int mem_meta_load(ds_store_stream_t *s) {
  s->meta_state = 1;
  return 0;
}

static int mem_meta_store(ds_store_stream_t *s, const char *p, size_t n) { return 0; }

static int mem_remove(ds_store_t *st, const char *path, ds_store_stream_t *s) {
  return s ? 0 : DS_ENOTFOUND;
}

typedef struct {
  void (*cb)(void *ud, const char *path);
  void *ud;
} list_ctx_t;

static void list_one(ds_store_stream_t *s, void *ud) {
  list_ctx_t *c = ud;
  c->cb(c->ud, s->path);
}

static int mem_list(ds_store_t *st, void (*cb)(void *ud, const char *path), void *ud) {
  list_ctx_t c = {cb, ud};
  ds__store_foreach(st, list_one, &c);
  return 0;
}

const ds__store_ops_t ds__memory_store_ops = {
    .name = "memory",
    .open = mem_open,
    .close = mem_close,
    .load = mem_load,
    .free_stream = mem_free_stream,
    .exists = mem_exists,
    .append = mem_append,
    .read = mem_read,
    .sync = mem_sync,
    .meta_load = mem_meta_load,
    .meta_store = mem_meta_store,
    .remove = mem_remove,
    .list = mem_list,
};
