/* store.c - the kind-independent half of the store: open/close dispatch, the handle cache,
 * argument checks, statistics, the hot-tail cache and the sync-callback queues.
 *
 * Conventions fixed here for both kinds:
 *   - ds_store_read(): max_records == 0 or max_bytes == 0 means "no limit"; a record is
 *     delivered only if it keeps the delivered repr bytes within max_bytes, except the
 *     first one (a single record larger than the limit is still delivered).
 *   - stats.appends counts records appended, records_read counts records delivered,
 *     cache_hits / cache_misses count delivered records served from memory / decoded from
 *     disk, fsyncs counts fsync rounds (one group commit = one round, however many files).
 * Must not: touch files or know a kind's layout; backends do that.
 */
#include "store/store_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

/* ---- hot-tail cache ---- */

/* What one cached record costs beyond its bytes (its ring slot and the allocator's header):
 * counted against the limits, so that a budget of small records is a budget of memory. */
#define CREC_OVERHEAD (sizeof(ds__crec_t) + 16)

void ds__cache_init(ds__cache_t *c, uint64_t next) {
  memset(c, 0, sizeof *c);
  c->first = next;
}

/* Moves the ring into an array of ncap slots (>= count), oldest record first. */
static void cache_resize(ds__cache_t *c, size_t ncap) {
  ds__crec_t *nv = ds_xmalloc(ncap * sizeof *nv);
  for (size_t i = 0; i < c->count; i++) nv[i] = c->v[(c->head + i) % c->cap];
  free(c->v);
  c->v = nv;
  c->cap = ncap;
  c->head = 0;
}

void ds__cache_pop(ds__cache_t *c) {
  ds__crec_t *r = &c->v[c->head];
  c->bytes -= r->n + CREC_OVERHEAD;
  free(r->p);
  r->p = NULL;
  c->head = (c->head + 1) % c->cap;
  c->count--;
  c->first++;
  /* The ring gives its slots back as it empties (the store-wide budget evicts whole
   * caches): a stream that once held 400,000 small records must not keep an 8 MiB slot
   * array. Halving at a quarter full leaves room to grow again without thrashing. */
  if (c->count == 0) {
    free(c->v);
    c->v = NULL;
    c->cap = 0;
    c->head = 0;
  } else if (c->cap > 16 && c->count < c->cap / 4) {
    cache_resize(c, c->cap / 2);
  }
}

void ds__cache_free(ds__cache_t *c) {
  while (c->count) ds__cache_pop(c); /* the last pop frees the slots */
}

void ds__cache_push(ds__cache_t *c, uint64_t off, const char *p, size_t n, size_t limit) {
  if (n + CREC_OVERHEAD > limit) { /* cannot be cached: the suffix restarts after it */
    while (c->count) ds__cache_pop(c);
    c->first = off + 1;
    c->head = 0;
    return;
  }
  while (c->count && c->bytes + n + CREC_OVERHEAD > limit) ds__cache_pop(c);
  if (c->count == 0) {
    c->first = off;
    c->head = 0;
  }
  if (c->count == c->cap) cache_resize(c, c->cap ? c->cap * 2 : 16); /* grow, unrolling */
  ds__crec_t *r = &c->v[(c->head + c->count) % c->cap];
  r->p = ds_xmalloc(n ? n : 1);
  if (n) memcpy(r->p, p, n);
  r->n = n;
  c->count++;
  c->bytes += n + CREC_OVERHEAD;
}

const ds__crec_t *ds__cache_get(const ds__cache_t *c, uint64_t off) {
  if (off < c->first || off - c->first >= c->count) return NULL;
  return &c->v[(c->head + (size_t)(off - c->first)) % c->cap];
}

/* ---- sync-callback queues ---- */

void ds__cbq_push(ds__cbq_t *q, void (*cb)(void *, int), void *ud) {
  if (q->len == q->cap) {
    q->cap = q->cap ? q->cap * 2 : 8;
    q->v = ds_xrealloc(q->v, q->cap * sizeof *q->v);
  }
  q->v[q->len].cb = cb;
  q->v[q->len].ud = ud;
  q->len++;
}

void ds__cbq_run(ds__cbq_t *q, int status) {
  /* Detach first: a callback may call ds_store_sync() again, which must queue for a later
   * round, not be run (or lost) by this loop. */
  ds__cbq_t run = *q;
  memset(q, 0, sizeof *q);
  for (size_t i = 0; i < run.len; i++) run.v[i].cb(run.v[i].ud, status);
  free(run.v);
}

void ds__cbq_free(ds__cbq_t *q) {
  free(q->v);
  memset(q, 0, sizeof *q);
}

/* ---- known damage ---- */

int ds__damage_add(ds_store_stream_t *s, uint64_t offset, uint64_t end, uint64_t pos,
                   const char *fmt, ...) {
  if (end <= offset) end = offset + 1;
  ds__damage_t *d = s->damage;
  if (!d) d = s->damage = ds_xcalloc(1, sizeof *d);
  size_t i = 0;
  while (i < d->n && d->v[i].end <= offset) i++;
  if (i < d->n && d->v[i].offset <= offset) return 0; /* inside a known range */
  if (end == UINT64_MAX) { /* open-ended: hides every range after it, and must be kept */
    d->n = i;
    if (d->n == DS__DAMAGE_MAX) i = --d->n; /* drop a one-record range below it instead */
  } else {
    if (i < d->n && d->v[i].offset < end) end = d->v[i].offset;
    /* full: not listed, but every read that reaches the record decodes it and fails again,
     * and appends stay refused because the list is not empty */
    if (d->n == DS__DAMAGE_MAX) return 1;
  }
  memmove(&d->v[i + 1], &d->v[i], (d->n - i) * sizeof d->v[0]);
  ds_store_damage_t *x = &d->v[i];
  x->offset = offset;
  x->end = end;
  x->pos = pos;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(x->what, sizeof x->what, fmt, ap);
  va_end(ap);
  d->n++;
  return 1;
}

const ds_store_damage_t *ds__damage_find(const ds_store_stream_t *s, uint64_t off) {
  if (!s->damage) return NULL;
  for (size_t i = 0; i < s->damage->n; i++) {
    const ds_store_damage_t *x = &s->damage->v[i];
    if (off < x->offset) return NULL;
    if (off < x->end) return x;
  }
  return NULL;
}

uint64_t ds__damage_next(const ds_store_stream_t *s, uint64_t off) {
  if (!s->damage) return UINT64_MAX;
  for (size_t i = 0; i < s->damage->n; i++)
    if (s->damage->v[i].end > off) return s->damage->v[i].offset > off ? s->damage->v[i].offset : off;
  return UINT64_MAX;
}

/* ---- handle cache ---- */

static uint32_t path_hash(const char *s, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

static ds_store_stream_t *lookup(ds_store_t *st, const char *path, size_t n, uint32_t h) {
  for (ds_store_stream_t *s = st->buckets[h & (st->nbuckets - 1)]; s; s = s->hnext)
    if (s->hash == h && s->path_len == n && memcmp(s->path, path, n) == 0) return s;
  return NULL;
}

static void insert(ds_store_t *st, ds_store_stream_t *s) {
  if (st->nstreams + 1 > st->nbuckets) { /* keep load factor <= 1 */
    size_t nb = st->nbuckets * 2;
    ds_store_stream_t **b = ds_xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < st->nbuckets; i++) {
      ds_store_stream_t *x = st->buckets[i];
      while (x) {
        ds_store_stream_t *nx = x->hnext;
        x->hnext = b[x->hash & (nb - 1)];
        b[x->hash & (nb - 1)] = x;
        x = nx;
      }
    }
    free(st->buckets);
    st->buckets = b;
    st->nbuckets = nb;
  }
  s->hnext = st->buckets[s->hash & (st->nbuckets - 1)];
  st->buckets[s->hash & (st->nbuckets - 1)] = s;
  st->nstreams++;
}

static void unlink_stream(ds_store_t *st, ds_store_stream_t *s) {
  ds_store_stream_t **pp = &st->buckets[s->hash & (st->nbuckets - 1)];
  while (*pp && *pp != s) pp = &(*pp)->hnext;
  if (*pp) {
    *pp = s->hnext;
    st->nstreams--;
  }
}

static void free_stream(ds_store_t *st, ds_store_stream_t *s) {
  st->ops->free_stream(st, s);
  ds__cache_free(&s->cache);
  free(s->damage);
  free(s->meta);
  free(s->path);
  free(s);
}

void ds__store_foreach(ds_store_t *st, void (*fn)(ds_store_stream_t *s, void *ud), void *ud) {
  for (size_t i = 0; i < st->nbuckets; i++)
    for (ds_store_stream_t *s = st->buckets[i]; s; s = s->hnext) fn(s, ud);
}

int ds__store_path_ok(const char *path) {
  size_t n = strlen(path);
  if (n == 0 || n > 512 || path[0] == '/' || path[n - 1] == '/') return 0;
  const char *seg = path;
  for (size_t i = 0; i <= n; i++) {
    if (i == n || path[i] == '/') {
      size_t len = (size_t)(path + i - seg);
      if (len == 0) return 0;
      if (len == 1 && seg[0] == '.') return 0;
      if (len == 2 && seg[0] == '.' && seg[1] == '.') return 0;
      seg = path + i + 1;
    } else if ((unsigned char)path[i] < 0x20 || path[i] == '\\' || path[i] == 0x7f) {
      return 0;
    }
  }
  return 1;
}

/* 1 if seg[0..n) holds DS_STORE_RESERVED_MARK, ASCII case-insensitively (the mark is
 * lowercase letters and dots, so OR-ing 0x20 folds only what matters). */
static int segment_reserved(const char *seg, size_t n) {
  static const char mark[] = DS_STORE_RESERVED_MARK;
  size_t k = sizeof mark - 1;
  for (size_t i = 0; i + k <= n; i++) {
    size_t j = 0;
    while (j < k && (seg[i + j] | 0x20) == mark[j]) j++;
    if (j == k) return 1;
  }
  return 0;
}

int ds_store_name_check(const char *path, size_t n) {
  size_t seg = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n && path[i] != '/') continue;
    if (i - seg > DS_STORE_SEGMENT_MAX) return DS_ETOOBIG;
    if (segment_reserved(path + seg, i - seg)) return DS_EINVAL;
    seg = i + 1;
  }
  return 0;
}

/* ---- public API ---- */

int ds_store_open(const ds_store_opts_t *opts, ds_store_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (err && errlen) err[0] = '\0';
  const char *kind = opts->kind ? opts->kind : "yaml";
  const ds__store_ops_t *ops;
  if (strcmp(kind, "yaml") == 0) {
    ops = &ds__yaml_store_ops;
  } else if (strcmp(kind, "memory") == 0) {
    ops = &ds__memory_store_ops;
  } else {
    if (err && errlen) snprintf(err, errlen, "unknown storage kind '%s'", kind);
    return DS_EINVAL;
  }
  if (!opts->loop) {
    if (err && errlen) snprintf(err, errlen, "store: no event loop given");
    return DS_EINVAL;
  }
  ds_store_t *st = ds_xcalloc(1, sizeof *st);
  st->ops = ops;
  st->opts = *opts;
  st->opts.kind = ops->name;
  if (st->opts.fsync > DS_FSYNC_NEVER) st->opts.fsync = DS_FSYNC_INTERVAL;
  if (!st->opts.fsync_interval_ms) st->opts.fsync_interval_ms = 1000;
  if (!st->opts.tail_cache_bytes) st->opts.tail_cache_bytes = (size_t)32 << 20;
  if (!st->opts.tail_cache_total_bytes) st->opts.tail_cache_total_bytes = (size_t)256 << 20;
  if (!st->opts.max_open_files) st->opts.max_open_files = 512;
  st->data_dir = ds_xstrdup(opts->data_dir ? opts->data_dir : ".data");
  st->opts.data_dir = st->data_dir;
  st->loop = opts->loop;
  st->nbuckets = 64;
  st->buckets = ds_xcalloc(st->nbuckets, sizeof *st->buckets);
  int rc = ops->open(st, err, errlen);
  if (rc < 0) {
    free(st->buckets);
    free(st->data_dir);
    free(st->root);
    free(st);
    return rc;
  }
  *out = st;
  return 0;
}

void ds_store_close(ds_store_t *st) {
  if (!st) return;
  /* The backend flushes and syncs every stream while they are all still cached. */
  st->ops->close(st);
  for (size_t i = 0; i < st->nbuckets; i++) {
    ds_store_stream_t *s = st->buckets[i];
    while (s) {
      ds_store_stream_t *nx = s->hnext;
      free_stream(st, s);
      s = nx;
    }
  }
  free(st->buckets);
  free(st->data_dir);
  free(st->root);
  ds_buf_free(&st->scratch);
  ds_buf_free(&st->read_raw);
  ds_buf_free(&st->read_repr);
  free(st);
}

const char *ds_store_kind(const ds_store_t *st) { return st->ops->name; }

int ds_store_get(ds_store_t *st, const char *path, int create, uint64_t base_offset,
                 ds_store_stream_t **out) {
  *out = NULL;
  if (!path || !ds__store_path_ok(path)) return DS_EINVAL;
  size_t n = strlen(path);
  uint32_t h = path_hash(path, n);
  ds_store_stream_t *s = lookup(st, path, n, h);
  if (s) {
    *out = s;
    return 0;
  }
  /* Names that do not fit the mapping are never created, whichever route named them
   * (subscription wake streams, forks, Lua...), so no directory can take a sidecar's name. */
  if (create && ds_store_name_check(path, n) != 0) return DS_EINVAL;
  s = ds_xcalloc(1, sizeof *s);
  s->st = st;
  s->path = ds_xstrndup(path, n);
  s->path_len = n;
  s->hash = h;
  s->fd = -1;
  s->offset_written = UINT64_MAX;
  int rc = st->ops->load(st, s, create, base_offset);
  if (rc < 0) {
    free_stream(st, s);
    return rc;
  }
  insert(st, s);
  st->stats.streams = st->nstreams;
  *out = s;
  return 0;
}

int ds_store_exists(ds_store_t *st, const char *path) {
  if (!path || !ds__store_path_ok(path)) return 0;
  size_t n = strlen(path);
  if (lookup(st, path, n, path_hash(path, n))) return 1;
  return st->ops->exists(st, path);
}

const char *ds_store_stream_path(const ds_store_stream_t *s) { return s->path; }
uint64_t ds_store_first_offset(const ds_store_stream_t *s) { return s->base; }
uint64_t ds_store_next_offset(const ds_store_stream_t *s) { return s->next; }

int ds_store_append(ds_store_stream_t *s, const ds_record_in_t *recs, size_t n) {
  if (n == 0) return 0;
  if (!recs) return DS_EINVAL;
  int rc = s->st->ops->append(s, recs, n);
  if (rc == 0) s->st->stats.appends += n;
  return rc;
}

int ds_store_sync(ds_store_t *st, void (*cb)(void *ud, int status), void *ud) {
  if (!cb) return DS_EINVAL;
  return st->ops->sync(st, cb, ud);
}

long ds_store_read(ds_store_stream_t *s, uint64_t from, size_t max_records, size_t max_bytes,
                   ds_record_cb cb, void *ud) {
  if (!cb) return DS_EINVAL;
  if (from < s->base) from = s->base;
  if (from >= s->next) return 0;
  if (max_records == 0) max_records = SIZE_MAX;
  if (max_bytes == 0) max_bytes = SIZE_MAX;
  return s->st->ops->read(s, from, max_records, max_bytes, cb, ud);
}

int ds_store_meta_get(ds_store_stream_t *s, ds_buf_t *out) {
  if (s->meta_state == 0) {
    int rc = s->st->ops->meta_load(s);
    if (rc < 0) return rc;
  }
  if (s->meta_state == 3) return DS_ECORRUPT; /* logged once, by the load */
  if (s->meta_state != 2) return DS_ENOTFOUND;
  ds_buf_reset(out);
  ds_buf_append(out, s->meta, s->meta_len);
  return 0;
}

int ds_store_meta_set(ds_store_stream_t *s, const char *p, size_t n) {
  if (!p && n) return DS_EINVAL;
  int rc = s->st->ops->meta_store(s, p, n);
  if (rc < 0) return rc;
  char *copy = ds_xmalloc(n + 1);
  if (n) memcpy(copy, p, n);
  copy[n] = '\0';
  free(s->meta);
  s->meta = copy;
  s->meta_len = n;
  s->meta_state = 2;
  return 0;
}

int ds_store_damage(const ds_store_stream_t *s, ds_store_damage_t *out) {
  if (!s->damage || s->damage->n == 0) return DS_ENOTFOUND;
  if (out) *out = s->damage->v[0];
  return 0;
}

int ds_store_damage_at(const ds_store_stream_t *s, uint64_t off, ds_store_damage_t *out) {
  const ds_store_damage_t *x = ds__damage_find(s, off < s->base ? s->base : off);
  if (!x) return 0;
  if (out) *out = *x;
  return 1;
}

int ds_store_delete(ds_store_t *st, const char *path) {
  if (!path || !ds__store_path_ok(path)) return DS_EINVAL;
  size_t n = strlen(path);
  ds_store_stream_t *s = lookup(st, path, n, path_hash(path, n));
  int rc = st->ops->remove(st, path, s);
  if (s) {
    unlink_stream(st, s);
    free_stream(st, s);
    st->stats.streams = st->nstreams;
  }
  return rc;
}

int ds_store_list(ds_store_t *st, void (*cb)(void *ud, const char *path), void *ud) {
  if (!cb) return DS_EINVAL;
  return st->ops->list(st, cb, ud);
}

void ds_store_get_stats(const ds_store_t *st, ds_store_stats_t *out) {
  *out = st->stats;
  out->streams = st->nstreams;
  out->open_files = st->nopen;
  out->cache_bytes = st->cache_total;
}
