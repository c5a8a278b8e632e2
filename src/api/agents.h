/* agents.h - the /agents HTTP API (agents-api.md §2-§4).
 *
 * Provides: POST /agents/<path> (append one event, 204 + Stream-Offset), GET and HEAD
 * /agents/<path>?offset&live (history as SSE, then live; Last-Event-ID wins over offset),
 * with the contract's validation and uniform JSON errors; the first body bytes (": open")
 * right after the headers and per-connection keep-alive comments; and statistics.
 * Must not: parse or store events itself (stream/streams.h does), or know other routes.
 */
#ifndef DS_API_AGENTS_H
#define DS_API_AGENTS_H

#include <stddef.h>
#include <uv.h>

#include "http/http.h"
#include "stream/streams.h"

typedef struct ds_agents_api_s ds_agents_api_t;

typedef struct ds_agents_opts_s {
  unsigned keepalive_ms;            /* ": keepalive" this long after a live reader's last bytes; default 15000 */
  size_t subscriber_backlog_bytes;  /* unsent bytes before a live reader is dropped; default 4 MiB */
} ds_agents_opts_t;

ds_agents_api_t *ds_agents_api_new(uv_loop_t *loop, ds_streams_t *streams, const ds_agents_opts_t *opts);
/** Handles a request whose path is "/agents" or starts with "/agents/". */
void ds_agents_api_handle(ds_agents_api_t *api, ds_http_req_t *req);
/** Ends every open SSE response (final chunk) and closes the keep-alive timer. The caller
 *  runs the loop so the timer closes, then calls ds_agents_api_free(). */
void ds_agents_api_shutdown(ds_agents_api_t *api);
void ds_agents_api_free(ds_agents_api_t *api);

typedef struct ds_agents_stats_s {
  uint64_t readers_open, readers_dropped, appends, append_errors;
} ds_agents_stats_t;
void ds_agents_api_stats(const ds_agents_api_t *api, ds_agents_stats_t *out);

/** Decodes and validates the stream path of a request target (raw, percent-encoded,
 *  without query): rejects encoded '/' and '\\', then decodes once and validates per
 *  agents-api.md §4. Returns a malloc'd path or NULL with the reason in err. */
char *ds_agents_decode_path(const char *raw, size_t n, char *err, size_t errlen);

#endif
