/* protocol.h - the Durable Streams protocol front end (/v1/stream/...).
 *
 * Provides: every operation of the Durable Streams protocol (create, append, idempotent
 * producers, close, HEAD, DELETE, TTL/expiry, catch-up, long-poll, SSE, forks, the
 * reserved subscription APIs) on the same ds_streams_t as the /agents API, so one log has
 * two views (see ../shared/spec/durable-streams.md §6).
 * Must not: bypass ds_streams_t for appends (subscribers of both views must see every
 * record), or block the loop.
 */
#ifndef DS_PROTOCOL_PROTOCOL_H
#define DS_PROTOCOL_PROTOCOL_H

#include <stdbool.h>
#include <uv.h>

#include "http/http.h"
#include "stream/streams.h"

typedef struct ds_protocol_s ds_protocol_t;

typedef struct ds_protocol_opts_s {
  unsigned long_poll_timeout_ms; /* default 30000 */
  unsigned sse_reconnect_ms;     /* SSE responses end after this; default 60000 */
  int subscriptions;             /* enable the reserved subscription APIs; default 1 */
  const char *prefix;            /* URL prefix, default "/v1/stream" */
  const char *state_dir;         /* where subscriptions are kept durably (the YAML store's
                                    <data_dir>/subscriptions); NULL = in memory only */
  ds_fsync_t fsync;              /* the store's fsync policy, applied to subscription files:
                                    ALWAYS (the zero default) fsyncs before a change is
                                    acknowledged; INTERVAL renames without fsync and syncs
                                    from the threadpool every fsync_interval_ms; NEVER */
  unsigned fsync_interval_ms;    /* for DS_FSYNC_INTERVAL; default 1000 */
  const char *const *webhook_allow_networks; /* networks ("127.0.0.0/8", "::1/128") webhooks
                                    may reach although the egress deny list covers them
                                    (net/egress.h); read at creation; must be valid */
  size_t nwebhook_allow_networks;
} ds_protocol_opts_t;

ds_protocol_t *ds_protocol_new(uv_loop_t *loop, ds_streams_t *streams, const ds_protocol_opts_t *opts);
/** Handles any request whose path starts with the prefix (the router checks). */
void ds_protocol_handle(ds_protocol_t *p, ds_http_req_t *req);
/**
 * True for the requests that bring their own credential instead of one of the server's
 * bearer tokens: a subscription's callback, ack and release (POST
 * <prefix>/__ds/subscriptions/<id>/{callback,ack,release}), which carry the callback token a
 * wake handed out and are authorized by it alone. The router lets them through without a
 * bearer token, with a grant that allows nothing else.
 */
bool ds_protocol_self_authorized(const ds_protocol_t *p, const ds_http_req_t *req);
/** Ends live reads, stops timers; the caller runs the loop so handles close, then frees. */
void ds_protocol_shutdown(ds_protocol_t *p);
void ds_protocol_free(ds_protocol_t *p);

#endif
