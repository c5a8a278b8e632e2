/* store.h - durable per-path record logs behind one interface (yaml | memory).
 *
 * Provides: the storage mechanism under every stream. A store holds many streams, each an
 * append-only sequence of records addressed by a 64-bit offset. A record is handed over as
 * two renderings made once by the caller:
 *   - `yaml`: the exact YAML document written to disk ("---\n" ... ending with the
 *     top-level line "createdAt: <ISO-8601>\n"), see store/yaml.h;
 *   - `repr`: the bytes readers get back (an event's compact JSON, or a protocol
 *     message's bytes).
 * The yaml kind keeps `<dir>/streams/<path>.yaml` (source of truth), `<path>.yaml.offset`
 * (next offset, bare decimal), `<path>.yaml.idx` (8-byte little-endian file position of
 * each document, so a read from any offset seeks instead of parsing) and, when set,
 * `<path>.yaml.meta` (opaque metadata of the protocol layer, replaced atomically).
 * Recent records are kept as repr in a per-stream hot-tail cache.
 *
 * Record kinds on disk (decided by the first key of the document, so files are
 * self-describing):
 *   type:  an /agents event; repr = compact JSON of the whole mapping;
 *   json:  a protocol message of a JSON stream; repr = compact JSON of the value;
 *   text:  a protocol message of a text stream; repr = the string's UTF-8 bytes;
 *   bytes: a protocol message of a binary stream (!!binary); repr = the raw bytes.
 * Each kind is followed by `offset: "<16 digits>"` and ends with `createdAt:`.
 *
 * Durability: ds_store_append() returns after the bytes are in the kernel (write(2)
 * completed), which survives kill -9. Power-loss durability follows the fsync policy;
 * ds_store_sync() reports when everything appended so far is durable under it.
 * Recovery: on open, a torn final document (anything after the last complete
 * `createdAt:` line) is copied aside into `<path>.yaml.damaged-<unix ms>`, truncated away
 * and logged; the idx and offset sidecars are repaired from the documents, which always
 * win. Open also checks that the first and last documents' offsets agree with the number of
 * documents (a cheap check: two small reads), which finds documents missing or duplicated
 * in the middle of the file without parsing it; reads check each document they decode.
 * Damage (see ds_store_damage_t) is never skipped over: reads stop at it and appends are
 * refused until `durable-stream check --repair` (store/check.h) has moved it aside.
 *
 * Threading: loop thread only. All calls are synchronous except ds_store_sync().
 * Must not: know about HTTP, events' meaning or subscribers; it stores bytes in order.
 */
#ifndef DS_STORE_STORE_H
#define DS_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"

typedef enum { DS_FSYNC_ALWAYS = 0, DS_FSYNC_INTERVAL, DS_FSYNC_NEVER } ds_fsync_t;

typedef struct ds_store_opts_s {
  const char *kind;              /* "yaml" (default) or "memory" */
  const char *data_dir;          /* yaml: streams live under <data_dir>/streams */
  ds_fsync_t fsync;              /* default DS_FSYNC_INTERVAL */
  unsigned fsync_interval_ms;    /* for DS_FSYNC_INTERVAL; default 1000 */
  size_t tail_cache_bytes;       /* per-stream hot tail; default 32 MiB */
  size_t tail_cache_total_bytes; /* all hot tails together; default 256 MiB */
  unsigned max_open_files;       /* yaml: descriptors kept open (LRU); default 512 */
  uv_loop_t *loop;               /* required: timers and threadpool fsyncs run on it */
} ds_store_opts_t;

typedef struct ds_store_s ds_store_t;
typedef struct ds_store_stream_s ds_store_stream_t;

typedef struct ds_record_in_s {
  const char *yaml;
  size_t yaml_len;
  const char *repr;
  size_t repr_len;
} ds_record_in_t;

/** Opens (creating directories as needed) a store. Returns 0 or a DS_E* code with a
 *  one-line reason in err. */
int ds_store_open(const ds_store_opts_t *opts, ds_store_t **out, char *err, size_t errlen);
/** Flushes and fsyncs everything, closes files and the store's uv handles, frees the
 *  store. The caller runs the loop afterwards so that handle close callbacks complete. */
void ds_store_close(ds_store_t *st);
const char *ds_store_kind(const ds_store_t *st);

/* The name mapping, the same for every kind (so both behave identically through the API):
 * stream "a/b/c" is directory "a/b" holding "c.yaml" and the sidecars "c.yaml.<suffix>".
 * - A segment is at most DS_STORE_SEGMENT_MAX bytes: file names are limited to 255 bytes and
 *   the longest the store makes is "<segment>.yaml.meta.tmp" (14 more).
 * - Names of the form "<x>.yaml.<y>" (DS_STORE_RESERVED_MARK, ASCII case-insensitive) are the
 *   store's own (sidecars, temporary and set-aside files): a segment holding the mark is
 *   refused before it reaches a store (ds_path_validate), so no directory can take the name
 *   of another stream's sidecar, now or when a sidecar is added.
 * - A stream "x" and a directory "x.yaml" (streams under "x.yaml/") would share one name:
 *   creating the second of them fails with DS_ECONFLICT; reads see no stream. */
#define DS_STORE_SEGMENT_MAX 241
#define DS_STORE_RESERVED_MARK ".yaml."

/** Checks path[0..n) against the name mapping above: 0 when every segment fits, else
 *  DS_ETOOBIG (a segment longer than DS_STORE_SEGMENT_MAX) or DS_EINVAL (a segment holding
 *  DS_STORE_RESERVED_MARK, ASCII case-insensitively). ds_store_get() refuses to create a
 *  stream whose name fails it, whatever route named it; the API validates first
 *  (ds_path_validate) to say why. */
int ds_store_name_check(const char *path, size_t n);

/**
 * Returns the stream for `path` (a validated stream path: segments joined by '/', no
 * "." / ".." / empty segment). Handles are owned and cached by the store and stay valid
 * until ds_store_delete() of that path or ds_store_close().
 * When the stream does not exist: with create == 0 returns DS_ENOTFOUND; otherwise
 * creates it empty with its first offset at `base_offset` (0 for ordinary streams, the
 * fork point for forks), or returns DS_ECONFLICT when its name collides with an existing
 * stream's, DS_EINVAL when it fails ds_store_name_check() (see the name mapping above).
 */
int ds_store_get(ds_store_t *st, const char *path, int create, uint64_t base_offset,
                 ds_store_stream_t **out);
/** Returns 1 if a stream exists at path (without creating or caching it). */
int ds_store_exists(ds_store_t *st, const char *path);
const char *ds_store_stream_path(const ds_store_stream_t *s);
uint64_t ds_store_first_offset(const ds_store_stream_t *s); /* base */
uint64_t ds_store_next_offset(const ds_store_stream_t *s);   /* offset the next record gets */

/**
 * Appends n records (offsets next .. next+n-1; the caller rendered those offsets into
 * the documents) with one write. All or nothing: on failure (DS_ENOSPC for a full disk,
 * DS_EIO otherwise) the file is truncated back and no offset is consumed. DS_ECORRUPT,
 * writing nothing, while the stream has known damage (ds_store_damage()).
 */
int ds_store_append(ds_store_stream_t *s, const ds_record_in_t *recs, size_t n);

/** Calls cb(ud, status) once every record appended before this call is durable under the
 *  fsync policy: at once for never/interval, after a group fsync for always. */
int ds_store_sync(ds_store_t *st, void (*cb)(void *ud, int status), void *ud);

/** Called for each record read, in order; return non-zero to stop early. */
typedef int (*ds_record_cb)(void *ud, uint64_t offset, const char *repr, size_t len);

/**
 * Reads records with offsets >= from, in order, until the tail, `max_records`, or once
 * `max_bytes` of repr have been delivered (always at least one record when one exists).
 * Returns the number of records delivered (0 at the tail) or a negative DS_E* code
 * (DS_ECORRUPT at damage: see ds_store_damage_t). `from` below the first offset reads from
 * the first offset. max_records == 0 / max_bytes == 0 mean "no limit"; a record is only
 * delivered if it keeps the delivered bytes within max_bytes (the first one always is).
 * If records were delivered before a failure, their count is returned and the error
 * surfaces on the next read. The callback must not delete the stream or close the store.
 */
long ds_store_read(ds_store_stream_t *s, uint64_t from, size_t max_records, size_t max_bytes,
                   ds_record_cb cb, void *ud);

/** Opaque per-stream metadata (the protocol layer's JSON object). DS_ENOTFOUND when unset;
 *  DS_ECORRUPT when the sidecar exists but is not a JSON object (damaged: logged once with
 *  the file name; the caller must not fall back to defaults, which would change the
 *  stream's content type or lifetime silently). */
int ds_store_meta_get(ds_store_stream_t *s, ds_buf_t *out);
/** Replaces the metadata atomically (write temp file, fsync, rename). */
int ds_store_meta_set(ds_store_stream_t *s, const char *p, size_t n);

/**
 * Damage the store knows about in a stream's file: a document that does not decode, does
 * not end with its createdAt line or does not hold the offset its position says (found by
 * a read), or documents missing, duplicated or unreadable in the middle (found on open).
 * While a stream has damage:
 *   - reads deliver every record before it, then fail with DS_ECORRUPT at it (a read that
 *     starts there fails at once): no record after a gap is ever presented as contiguous;
 *   - appends fail with DS_ECORRUPT: the repair (`durable-stream check --repair`) moves the
 *     damaged document and everything after it aside, so nothing may be added behind it;
 *   - the file, byte position and expected offset were logged once, when it was found.
 * A damaged document is one offset wide ([offset, offset + 1)); where documents are
 * missing or duplicated no later record can be located and the range is open-ended.
 */
typedef struct ds_store_damage_s {
  uint64_t offset; /* first offset that cannot be read */
  uint64_t end;    /* reads of offsets in [offset, end) fail; UINT64_MAX: all from offset */
  uint64_t pos;    /* byte position of the damage in the stream's .yaml file */
  char what[224];  /* one line (no file name): for error bodies and logs */
} ds_store_damage_t;

/** The known damage with the lowest offset: 0 and *out (may be NULL), DS_ENOTFOUND when
 *  none is known. Appends are refused while this returns 0. */
int ds_store_damage(const ds_store_stream_t *s, ds_store_damage_t *out);
/** 1 (and *out, may be NULL) if a read starting at `off` is known to fail at once; else 0. */
int ds_store_damage_at(const ds_store_stream_t *s, uint64_t off, ds_store_damage_t *out);

/** Removes the stream and its sidecars; its handle becomes invalid. DS_ENOTFOUND if
 *  absent. */
int ds_store_delete(ds_store_t *st, const char *path);

/** Calls cb for each existing stream path (in no particular order). */
int ds_store_list(ds_store_t *st, void (*cb)(void *ud, const char *path), void *ud);

/** Statistics for /debug and tests. appends = records appended; records_read = records
 *  delivered by reads; cache_hits = records served from memory, cache_misses = records
 *  decoded from disk (a read decodes only what it returns, plus at most one record that
 *  did not fit max_bytes); fsyncs = completed fsync rounds (one group commit = one round); open_files =
 *  stream descriptors currently open; streams = cached stream handles; cache_bytes = what
 *  the hot tails of all streams hold now (record bytes plus bookkeeping; yaml kind). */
typedef struct ds_store_stats_s {
  uint64_t appends, records_read, cache_hits, cache_misses, fsyncs, open_files, streams;
  uint64_t cache_bytes;
} ds_store_stats_t;
void ds_store_get_stats(const ds_store_t *st, ds_store_stats_t *out);

/* Decoding helper shared by both stores and the fuzzers: turns one stored YAML document
 * into its repr (see the record kinds above) and its offset. Returns 0 or DS_ECORRUPT. */
int ds_record_decode_yaml(const char *doc, size_t len, ds_buf_t *repr, uint64_t *offset,
                          char *err, size_t errlen);

#endif
