/* store_int.h - internals shared by store.c, yaml_store.c and memory_store.c.
 *
 * Provides: the concrete store and stream structs, the backend operation table each kind
 * fills in, the path -> stream hash, the per-stream hot-tail cache and the sync-callback
 * queue. store.c owns everything kind-independent (handle cache, statistics, argument
 * checks); a backend only moves bytes.
 * Must not: be included outside src/store and the store tests.
 */
#ifndef DS_STORE_STORE_INT_H
#define DS_STORE_STORE_INT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "store/store.h"

/* One cached record (repr bytes, owned). */
typedef struct ds__crec_s {
  char *p;
  size_t n;
} ds__crec_t;

/* Hot tail: the repr of the newest records, always a suffix of the stream, i.e. it
 * covers offsets [first, first + count) with first + count == next offset. A ring so that
 * evicting the oldest record is O(1). */
typedef struct ds__cache_s {
  ds__crec_t *v;
  size_t cap, head, count;
  size_t bytes; /* record bytes plus a fixed per-record overhead (store.c) */
  uint64_t first;
} ds__cache_t;

void ds__cache_init(ds__cache_t *c, uint64_t next);
void ds__cache_free(ds__cache_t *c);
/** Adds the record at offset `off` (== first + count), evicting the oldest records until
 *  the cache holds at most `limit` bytes. A record larger than the limit empties it. */
void ds__cache_push(ds__cache_t *c, uint64_t off, const char *p, size_t n, size_t limit);
/** Drops the oldest cached record (the cache stays a suffix). */
void ds__cache_pop(ds__cache_t *c);
/** The cached record at `off`, or NULL when it is not cached. */
const ds__crec_t *ds__cache_get(const ds__cache_t *c, uint64_t off);

typedef struct ds__sync_cb_s {
  void (*cb)(void *ud, int status);
  void *ud;
} ds__sync_cb_t;

typedef struct ds__cbq_s {
  ds__sync_cb_t *v;
  size_t len, cap;
} ds__cbq_t;

void ds__cbq_push(ds__cbq_t *q, void (*cb)(void *, int), void *ud);
/** Runs and empties the queue (callbacks may push onto other queues meanwhile). */
void ds__cbq_run(ds__cbq_t *q, int status);
void ds__cbq_free(ds__cbq_t *q);

struct ds_store_stream_s {
  ds_store_t *st;
  char *path;
  size_t path_len;
  uint32_t hash;
  ds_store_stream_t *hnext; /* hash chain */
  uint64_t base, next;

  /* metadata cache (both kinds): meta_state 0 = not loaded, 1 = absent, 2 = present,
   * 3 = damaged (the yaml sidecar is not a JSON object) */
  int meta_state;
  char *meta;
  size_t meta_len;

  /* memory kind: every record's repr, index = offset - base */
  ds__crec_t *recs;
  size_t nrecs, caprecs;
  int yaml_dir; /* memory kind: counted in st->yaml_dirs (a directory segment ends in ".yaml") */

  /* yaml kind */
  char *file;                           /* "<root>/<path>.yaml" */
  int fd;                               /* -1 while closed (LRU) */
  ds_store_stream_t *lru_prev, *lru_next; /* open-descriptor list, MRU first */
  ds_store_stream_t *dirty_prev, *dirty_next;
  int in_dirty;                         /* appended since the last fsync snapshot */
  int need_dirsync;                     /* created since the last fsync: directory levels to sync */
  int broken;                           /* a failed append could not be truncated back */
  uint64_t *idx;                        /* file position of each document */
  size_t idx_len, idx_cap;
  size_t idx_flushed;                   /* entries already in the .idx file */
  uint64_t offset_written;              /* value the .offset sidecar holds (UINT64_MAX: unknown) */
  uint64_t size;                        /* bytes of complete documents in the .yaml */
  ds__cache_t cache;
  ds_store_stream_t *cache_prev, *cache_next; /* streams with a non-empty cache, newest append first */
  int in_cache_lru;
  struct ds__damage_s *damage; /* known damage (NULL: none known), see ds__damage_add */
};

/* Known damage of a stream (store.c keeps it, the yaml kind finds it): ranges sorted by
 * offset, never overlapping, at most DS__DAMAGE_MAX of them (more are still found by every
 * read; only the list stops growing). */
#define DS__DAMAGE_MAX 32
typedef struct ds__damage_s {
  ds_store_damage_t v[DS__DAMAGE_MAX];
  size_t n;
} ds__damage_t;
/** Records damage [offset, end) at byte pos, described by fmt. Returns 1 if it was not
 *  known yet (the caller then logs it), 0 if a known range covers it already. */
int ds__damage_add(ds_store_stream_t *s, uint64_t offset, uint64_t end, uint64_t pos,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/** The known range containing off, or NULL. */
const ds_store_damage_t *ds__damage_find(const ds_store_stream_t *s, uint64_t off);
/** The lowest known damaged offset at or above off, UINT64_MAX when none. */
uint64_t ds__damage_next(const ds_store_stream_t *s, uint64_t off);

typedef struct ds__store_ops_s {
  const char *name;
  int (*open)(ds_store_t *st, char *err, size_t errlen);
  void (*close)(ds_store_t *st);
  /* Loads (or with create, creates) the stream s->path into s; DS_ENOTFOUND if absent. */
  int (*load)(ds_store_t *st, ds_store_stream_t *s, int create, uint64_t base);
  void (*free_stream)(ds_store_t *st, ds_store_stream_t *s);
  int (*exists)(ds_store_t *st, const char *path);
  int (*append)(ds_store_stream_t *s, const ds_record_in_t *recs, size_t n);
  long (*read)(ds_store_stream_t *s, uint64_t from, size_t max_records, size_t max_bytes,
               ds_record_cb cb, void *ud);
  int (*sync)(ds_store_t *st, void (*cb)(void *ud, int status), void *ud);
  int (*meta_load)(ds_store_stream_t *s);  /* fills s->meta / meta_state */
  int (*meta_store)(ds_store_stream_t *s, const char *p, size_t n);
  /* Removes the stream's persistent state; s is the cached handle or NULL. */
  int (*remove)(ds_store_t *st, const char *path, ds_store_stream_t *s);
  int (*list)(ds_store_t *st, void (*cb)(void *ud, const char *path), void *ud);
} ds__store_ops_t;

extern const ds__store_ops_t ds__yaml_store_ops;
extern const ds__store_ops_t ds__memory_store_ops;

struct ds_store_s {
  const ds__store_ops_t *ops;
  ds_store_opts_t opts; /* copy; data_dir points at our own string */
  char *data_dir;
  char *root; /* yaml: "<data_dir>/streams" */
  uv_loop_t *loop;

  /* handle cache */
  ds_store_stream_t **buckets;
  size_t nbuckets, nstreams;

  ds_store_stats_t stats;

  /* yaml kind */
  ds_store_stream_t *lru_head, *lru_tail;
  unsigned nopen;
  ds_store_stream_t *dirty_head;
  uv_timer_t *timer;
  struct ds__fsync_job_s *job; /* running group fsync, NULL when idle */
  ds__cbq_t pending;           /* sync callbacks waiting for the next fsync */
  ds_buf_t scratch;
  int lock_fd; /* yaml kind: the streams directory, flock(LOCK_SH) while open (check.h) */
  /* yaml kind: cold reads' buffers, kept between reads (a catch-up is many reads of up to
   * READ_CHUNK; allocating them each time cost page faults); `reading` guards reentry */
  ds_buf_t read_raw, read_repr;
  int reading;
  /* yaml kind: all hot tails together stay within cache_budget (oldest records of the
   * least recently appended streams go first), so many streams cannot exhaust memory */
  size_t cache_total, cache_budget;
  ds_store_stream_t *cache_head, *cache_tail;
  /* memory kind: streams with a directory segment ending in ".yaml" ("x.yaml/b"); a create
   * looks for streams under "<path>.yaml/" (a name conflict, store.h) only while any exist */
  size_t yaml_dirs;
};

/** Iterates every cached stream (the callback must not add or remove streams). */
void ds__store_foreach(ds_store_t *st, void (*fn)(ds_store_stream_t *s, void *ud), void *ud);
/** Checks the stream path rules (defence in depth: callers validate already). */
int ds__store_path_ok(const char *path);

#endif
