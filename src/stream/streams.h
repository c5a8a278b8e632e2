/* streams.h - live streams: ordered appends, publication to subscribers, observers.
 *
 * Provides: ds_streams_t, the registry of live per-path streams on top of a ds_store_t.
 * An append is validated, stored (one write), then published synchronously to the
 * stream's subscribers and finally shown to the observer (the Lua decorator chain).
 * Because everything runs on the one loop thread, appends to a path are serialized by
 * construction: offsets are gap-free and unique under any concurrency.
 * Exactly-once reading: a reader keeps `next` (the next offset it needs); it reads
 * history from the store until next == ds_stream_next_offset(), then subscribes; from
 * then on every published record has offset == next. ds_sub_t does this bookkeeping for
 * SSE writers (see http/sse.h).
 * Must not: know HTTP; the API modules translate DS_E* codes to statuses.
 */
#ifndef DS_STREAM_STREAMS_H
#define DS_STREAM_STREAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/rbuf.h"
#include "store/store.h"

typedef struct ds_streams_s ds_streams_t;
typedef struct ds_stream_s ds_stream_t;

typedef enum { DS_REC_EVENT = 0, DS_REC_JSON, DS_REC_TEXT, DS_REC_BYTES } ds_rec_kind_t;

/** One stored record as published to subscribers and observers. Valid only during the
 *  callback; take a reference to `frame` or copy what you keep. */
typedef struct ds_published_s {
  ds_stream_t *stream;
  const char *path;
  uint64_t offset;
  ds_rec_kind_t kind;
  const char *repr; /* event JSON / message bytes */
  size_t repr_len;
  const char *type; /* events: the event type (NUL-terminated); NULL otherwise */
  size_t type_len;
  ds_rbuf_t *agents_frame; /* events: the /agents SSE frame, encoded once, shared */
} ds_published_t;

typedef struct ds_sub_s ds_sub_t;
struct ds_sub_s {
  /** Called for each record published on the stream, in offset order. Must not append
   *  to any stream from inside the call (defer instead). */
  void (*on_publish)(ds_sub_t *sub, const ds_published_t *rec);
  /** Called when the stream is deleted or its metadata changes (closure); may be NULL.
   *  what: 1 = deleted, 2 = metadata changed. */
  void (*on_change)(ds_sub_t *sub, int what);
  void *ud;
  /* private */
  ds_sub_t *prev, *next;
  ds_stream_t *stream;
};

/** Observer of every stored record (the Lua decorator chain, the protocol's
 *  subscriptions). Runs after subscribers. Like subscribers it must not append
 *  synchronously (copy what it needs, defer). */
typedef void (*ds_streams_observer_fn)(void *ud, const ds_published_t *rec);

/** Guard consulted before an /agents event is appended (not protocol records): returns 0
 *  to allow, or a DS_E* code (DS_ECONFLICT: closed stream -> 409, DS_EGONE -> 410) with a
 *  one-line reason in err. The protocol uses it so that /agents respects closure. */
typedef int (*ds_streams_guard_fn)(void *ud, ds_stream_t *s, char *err, size_t errlen);

typedef struct ds_streams_opts_s {
  int max_json_depth;      /* default 64 */
  size_t max_event_bytes;  /* default 1 MiB */
} ds_streams_opts_t;

ds_streams_t *ds_streams_new(ds_store_t *store, const ds_streams_opts_t *opts);
/** Ends every subscription (their on_change is not called) and frees the registry. The
 *  store is not closed. */
void ds_streams_free(ds_streams_t *ss);
ds_store_t *ds_streams_store(ds_streams_t *ss);
/** Adds an observer (at most DS_STREAMS_MAX_OBSERVERS; returns DS_EBUSY beyond).
 *  Observers run in the order they were added. */
#define DS_STREAMS_MAX_OBSERVERS 8
int ds_streams_add_observer(ds_streams_t *ss, ds_streams_observer_fn fn, void *ud);
/** Removes the observer registered with exactly (fn, ud); a no-op if absent. */
void ds_streams_remove_observer(ds_streams_t *ss, ds_streams_observer_fn fn, void *ud);
void ds_streams_set_append_guard(ds_streams_t *ss, ds_streams_guard_fn fn, void *ud);

/** Modes of ds_streams_get(). */
enum {
  DS_STREAMS_EXISTING = 0, /* only a stream that exists in the store (else DS_ENOTFOUND) */
  DS_STREAMS_CREATE = 1,   /* create it in the store when missing (at base_offset) */
  DS_STREAMS_WATCH = 2     /* a live object to subscribe to, even if nothing was ever
                              written; the store stream is created by the first append */
};

/**
 * Returns the live stream for a validated path in the given mode. base_offset is used
 * only when creating (forks). The handle stays valid until ds_streams_delete() of that
 * path, ds_streams_free(), or (for a watched stream never written) until its last
 * subscriber leaves: callers hold a handle only while subscribed or within one call.
 */
int ds_streams_get(ds_streams_t *ss, const char *path, int mode, uint64_t base_offset,
                   ds_stream_t **out);
/** Forgets a watched stream that was never written and has no subscriber (call after
 *  using a DS_STREAMS_WATCH handle without subscribing, e.g. after a failed append).
 *  The handle may be invalid afterwards. */
void ds_streams_release(ds_stream_t *s);
/** 1 if the stream exists in the store (has been created or written). */
int ds_stream_exists(const ds_stream_t *s);
/** Deletes the stream (store files included); subscribers get on_change(1) and are
 *  detached. DS_ENOTFOUND if absent. */
int ds_streams_delete(ds_streams_t *ss, const char *path);

const char *ds_stream_path(const ds_stream_t *s);
uint64_t ds_stream_next_offset(const ds_stream_t *s);
uint64_t ds_stream_first_offset(const ds_stream_t *s);
/** The store stream, or NULL for a watched stream that was never written. */
ds_store_stream_t *ds_stream_store(ds_stream_t *s);
ds_streams_t *ds_stream_registry(ds_stream_t *s);

/**
 * Appends one /agents event: `body` is the POSTed JSON (EventInput). Validates it (400
 * reasons come back in err as DS_EINVAL; oversize is DS_ETOOBIG), assigns offset and
 * createdAt, renders YAML + JSON once, stores, publishes. *offset receives the assigned
 * offset. Storage failures return DS_ENOSPC / DS_EIO and consume nothing.
 */
int ds_stream_append_event(ds_stream_t *s, const char *body, size_t len, uint64_t *offset,
                           char *err, size_t errlen);

/** Appends protocol messages (already rendered, offsets next..next+n-1) and publishes
 *  each with the given kind. */
int ds_stream_append_records(ds_stream_t *s, ds_rec_kind_t kind, const ds_record_in_t *recs,
                             size_t n);

/** Notifies subscribers of a metadata change (e.g. the stream was closed). */
void ds_stream_notify_change(ds_stream_t *s, int what);

void ds_stream_subscribe(ds_stream_t *s, ds_sub_t *sub);
/** Idempotent. */
void ds_stream_unsubscribe(ds_sub_t *sub);
size_t ds_stream_subscriber_count(const ds_stream_t *s);

/** Formats an offset as 16 zero-padded digits plus NUL into out[17]. */
void ds_offset_format(uint64_t off, char out[17]);
/** Parses 1-16 decimal digits; returns 0 or -1. */
int ds_offset_parse(const char *s, size_t n, uint64_t *out);

/** Validates a decoded stream path per the contract (1-512 bytes of UTF-8, '/'-separated
 *  non-empty segments, no "." or "..", no NUL/control characters, no backslash) and the
 *  store's name mapping (store.h: segments of at most DS_STORE_SEGMENT_MAX bytes, none
 *  holding the reserved ".yaml."), without C1 controls, Unicode bidi controls or U+2028/
 *  U+2029. Returns 0, or -1 with a one-line reason (under 128 bytes) in err. */
int ds_path_validate(const char *p, size_t n, char *err, size_t errlen);

typedef struct ds_streams_stats_s {
  uint64_t streams_live, subscribers, events_appended, events_published;
} ds_streams_stats_t;
void ds_streams_get_stats(const ds_streams_t *ss, ds_streams_stats_t *out);

#endif
