/* pinternal.h - shared internals of the Durable Streams front end (src/protocol).
 *
 * Provides: the per-stream protocol state (content type, TTL/expiry, closure, producers,
 * fork link, soft delete, Stream-Seq) cached in memory and persisted as the store's
 * metadata sidecar; the response header builder that adds the CORS and security headers
 * every response carries; offset and cursor helpers; the stitched fork reader; and the
 * entry points of each unit (ops, reads, subscriptions).
 * Must not: be included outside src/protocol.
 */
#ifndef DS_PROTOCOL_PINTERNAL_H
#define DS_PROTOCOL_PINTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/access.h"
#include "core/arena.h"
#include "core/buf.h"
#include "http/http.h"
#include "protocol/protocol.h"
#include "stream/streams.h"

enum { DS__M_JSON = 0, DS__M_TEXT, DS__M_BYTES };

typedef struct ds__producer_s {
  char *id;
  int64_t epoch;
  int64_t seq; /* highest accepted */
} ds__producer_t;

typedef struct ds__pstream_s ds__pstream_t;
struct ds__pstream_s {
  ds__pstream_t *hnext;
  char *path;      /* stream path (after the prefix, decoded) */
  bool agents;     /* no protocol metadata: an /agents event stream (application/json) */
  char *ctype;     /* content type as created */
  int mode;        /* DS__M_* */
  bool has_ttl;
  int64_t ttl_s;
  char *expires_at; /* as given; NULL when none */
  int64_t expires_ms;
  int64_t access_ms; /* last read/write (sliding TTL) */
  bool closed;
  char *closed_by; /* producer that closed it, NULL if none */
  int64_t closed_epoch, closed_seq;
  ds__producer_t *prods;
  size_t nprods;
  char *fork_from; /* fork parent path, NULL for ordinary streams */
  uint64_t fork_offset;
  int64_t fork_sub;
  bool soft_deleted;
  unsigned refs; /* live forks pointing at this stream */
  char *seq;     /* last Stream-Seq, NULL if none */
};

typedef struct ds__waiter_s ds__waiter_t;

struct ds_protocol_s {
  uv_loop_t *loop;
  ds_streams_t *streams;
  ds_protocol_opts_t opts;
  char prefix[64];
  size_t prefix_len;
  ds__pstream_t **tab;
  size_t tab_cap, tab_len;
  ds__waiter_t *waiters; /* live reads (long-poll and SSE), for shutdown */
  bool shutting_down;
  struct ds__subs_s *subs; /* reserved subscription APIs (NULL when disabled) */
  struct ds__fcache_s {    /* the last live SSE frame, shared by every subscriber at the tail */
    const ds_stream_t *s;
    uint64_t off;
    int enc; /* DS__M_* of the payload, DS__M_BYTES = base64 */
    char cursor[32];
    ds_rbuf_t *frame;
  } fcache;
  /* /agents appends wake subscriptions too: paths queued by the streams observer, handled
   * from a zero timer because waking may append (pull-wake events) */
  uv_timer_t *wake_timer;  /* owns itself once closing, like sweep */
  char **wake_paths;
  size_t nwake, wake_cap;
  uv_timer_t *sweep;       /* periodic expiry of cached TTL / Expires-At streams; owns itself
                              once closing so ds_protocol_free never races its close */
};

/* ---- response headers ---- */
#define DS__MAX_HDRS 40
typedef struct ds__hdrs_s {
  ds_http_header_t h[DS__MAX_HDRS + 1];
  size_t n;
  ds_arena_t *a;
} ds__hdrs_t;
/** Starts a header list with the CORS and security headers of every response. */
void ds__hdrs_init(ds__hdrs_t *h, ds_arena_t *a);
void ds__hdr(ds__hdrs_t *h, const char *name, const char *value);
void ds__hdrf(ds__hdrs_t *h, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** NULL-terminated list for ds_http_* calls. */
const ds_http_header_t *ds__hdrs_done(ds__hdrs_t *h);
/** Sends a body-less success response once everything appended so far is durable under
 *  the store's fsync policy (at once unless "always"), like the /agents acks. The header
 *  names in h must be string literals (values are copied). */
void ds__respond_durable(ds_protocol_t *p, ds_http_req_t *req, int status, ds__hdrs_t *h);
/** Plain-text error with the common headers. */
void ds__respond_err(ds_http_req_t *req, int status, const char *msg);
/** Same with extra headers already in h. */
void ds__respond_err_h(ds_http_req_t *req, ds__hdrs_t *h, int status, const char *msg);

/* ---- state (pstate.c) ---- */
/** The state of a live stream, loaded from metadata on first use; NULL if the stream
 *  does not exist. Expiry is applied here: an expired stream is deleted (or soft-deleted
 *  when forks still read through it) and reported absent / soft-deleted. */
ds__pstream_t *ds__state_get(ds_protocol_t *p, const char *path, ds_stream_t **out_s);
/** Looks up without expiry handling (fork parents: forks read through soft-deleted and
 *  expired sources). */
ds__pstream_t *ds__state_peek(ds_protocol_t *p, const char *path, ds_stream_t **out_s);
/** Creates state for a newly created stream (not yet saved). */
ds__pstream_t *ds__state_new(ds_protocol_t *p, const char *path);
/** Persists the state as the stream's metadata sidecar. */
int ds__state_save(ds_protocol_t *p, ds__pstream_t *st);
/** Forgets the cached state (after the stream was deleted). */
void ds__state_forget(ds_protocol_t *p, const char *path);
void ds__state_free_all(ds_protocol_t *p);
/** Starts / stops the periodic expiry sweep over cached states. */
void ds__sweep_start(ds_protocol_t *p);
void ds__sweep_stop(ds_protocol_t *p);
/** Deletes a stream for good and releases its fork parent (cascading through
 *  soft-deleted parents whose last fork went away). */
void ds__state_delete_cascade(ds_protocol_t *p, const char *path);
/** Expired now? */
bool ds__state_expired(const ds__pstream_t *st, int64_t now_ms);
int ds__mode_of(const char *ctype);
/** Lowercased media type without parameters, into out. */
void ds__media_type(const char *ctype, char *out, size_t outlen);
ds__producer_t *ds__producer_find(ds__pstream_t *st, const char *id);
ds__producer_t *ds__producer_put(ds__pstream_t *st, const char *id);

/* ---- offsets and cursors (util.c) ---- */
/** Parses a request offset: "-1" -> 0 with *sentinel=-1, "now" -> *sentinel=1, digits
 *  (16-digit form, or the reference "<n>_<m>" form, first part) -> value. 0 or -1. */
int ds__offset_parse_req(const char *s, size_t n, uint64_t *out, int *sentinel);
/** Response cursor per the protocol (interval number, strictly above the client's). */
void ds__cursor(const char *client, char out[32]);
/** Turns a decoded request path into the stream path; NULL if not a valid path. */
char *ds__stream_path(ds_protocol_t *p, const char *raw, size_t n, char *err, size_t errlen);

/* ---- stitched reads (read.c) ---- */
typedef int (*ds__rec_fn)(void *ud, uint64_t offset, const char *repr, size_t len);
/** Reads records [from, to) of a stream, following fork links for the inherited part.
 *  Stops after max_bytes (at least one record). Returns records delivered or < 0. */
long ds__read_range(ds_protocol_t *p, ds__pstream_t *st, ds_stream_t *s, uint64_t from,
                    uint64_t to, size_t max_bytes, ds__rec_fn cb, void *ud);

/* ---- authorization of the streams a request names (authz.c) ---- */
/** May the request's caller do `scope` (DS_SCOPE_*) on the stream `path` of this view? It is
 *  checked as the URL <prefix>/<path>, exactly like a request's own path (core/access.h). */
bool ds__may(ds_protocol_t *p, const ds_http_req_t *req, int scope, const char *path);
/** The same for every stream a subscription glob can match (ds_access_glob_cover()). */
bool ds__may_glob(ds_protocol_t *p, const ds_http_req_t *req, int scope, const char *glob);
/** Appends "token not allowed to read <prefix>/<path> (<what>)" to out (what may be NULL). */
void ds__forbidden_msg(ds_protocol_t *p, int scope, const char *path, const char *what,
                       ds_buf_t *out);

/* ---- unit entry points ---- */
void ds__op_put(ds_protocol_t *p, ds_http_req_t *req, const char *path);
void ds__op_post(ds_protocol_t *p, ds_http_req_t *req, const char *path);
void ds__op_head(ds_protocol_t *p, ds_http_req_t *req, const char *path);
void ds__op_delete(ds_protocol_t *p, ds_http_req_t *req, const char *path);
void ds__op_get(ds_protocol_t *p, ds_http_req_t *req, const char *path);
void ds__reads_shutdown(ds_protocol_t *p);
void ds__reads_free(ds_protocol_t *p);


/* subscriptions (subs.c) */
struct ds__subs_s *ds__subs_new(ds_protocol_t *p);
void ds__subs_free(struct ds__subs_s *s);
void ds__subs_shutdown(struct ds__subs_s *s);
/** Handles /__ds/... requests; rest is the path after the prefix + "/__ds". */
void ds__subs_handle(ds_protocol_t *p, ds_http_req_t *req, const char *rest, size_t rest_len);
/** A stream received data (subscriptions wake their consumers). */
void ds__subs_on_append(ds_protocol_t *p, const char *path);
void ds__subs_on_delete(ds_protocol_t *p, const char *path);
/** Subscription glob: `*` matches one path segment, `**` any number (also none). */
bool ds__glob_match(const char *pattern, const char *path);

#endif
