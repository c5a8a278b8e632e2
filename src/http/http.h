/* http.h - the HTTP/1.1 server: connections, requests, responses, streaming responses.
 *
 * Provides: a libuv + llhttp server that hands each complete request (headers and the
 * whole body, de-chunked) to one handler, and the response calls the handler (or code it
 * defers to) uses: a whole response, or a streaming response (SSE, long-poll) fed with
 * shared reference-counted buffers. Keep-alive and pipelining (requests answered strictly
 * in order; parsing of the next request waits until the current response is complete),
 * chunked request bodies, `Expect: 100-continue`, limits on header and body size (431 /
 * 413 with JSON errors; a chunked body gets its 413 as soon as a chunk header announces a
 * size the limit cannot hold), a header timeout (slowloris), an idle keep-alive timeout, a
 * connection limit, and bounded write backlogs.
 * Every error response this layer produces itself carries `Content-Type:
 * application/json` and `{"error": "<one line>"}`.
 *
 * Lifetime: a ds_http_req_t is valid from the handler call until the response is complete
 * (ds_http_respond / ds_http_stream_end) or until its close callback has run, whichever
 * comes first. Handlers may answer later (from another callback); the connection waits.
 * Threading: loop thread only. ds_http_server_start sets SIGPIPE to SIG_IGN if it still
 * has the default disposition (a peer closing mid-write must not kill the process).
 * A failed start leaves handles closing on the loop: run the loop before uv_loop_close.
 * Must not: know routes or stream semantics (see http/router and the API modules).
 */
#ifndef DS_HTTP_HTTP_H
#define DS_HTTP_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "core/rbuf.h"

typedef struct ds_http_server_s ds_http_server_t;
typedef struct ds_http_req_s ds_http_req_t;

typedef struct ds_http_header_s {
  const char *name;  /* request headers: lowercased */
  const char *value; /* leading/trailing whitespace trimmed */
} ds_http_header_t;

typedef struct ds_http_opts_s {
  const char *host;            /* default "127.0.0.1" */
  int port;                    /* 0 picks a free port */
  size_t max_header_bytes;     /* request line + headers; default 16 KiB -> 431 */
  size_t max_body_bytes;       /* default 1 MiB -> 413 */
  unsigned header_timeout_ms;  /* whole head must arrive within; default 10000 -> 408 + close */
  unsigned body_timeout_ms;    /* body must progress within; default 30000 */
  unsigned idle_timeout_ms;    /* keep-alive idle; default 60000 -> close */
  unsigned max_connections;    /* default 16384; beyond: accept, 503 JSON, close */
  size_t stream_backlog_limit; /* streaming responses: unsent bytes before DS_ETOOBIG; default 4 MiB */
} ds_http_opts_t;

typedef void (*ds_http_handler_fn)(void *ud, ds_http_req_t *req);

/** Binds, listens and starts accepting. On success *out is the server and the bound port
 *  is available from ds_http_server_port(). Returns 0 or a DS_E* code with reason in err. */
int ds_http_server_start(uv_loop_t *loop, const ds_http_opts_t *opts, ds_http_handler_fn handler,
                         void *ud, ds_http_server_t **out, char *err, size_t errlen);
int ds_http_server_port(const ds_http_server_t *srv);
/** Stops accepting, ends every connection (streaming responses are ended cleanly with
 *  their final chunk, close callbacks run), then frees the server and calls done(ud) once
 *  every handle is closed. */
void ds_http_server_stop(ds_http_server_t *srv, void (*done)(void *ud), void *ud);

/**
 * Optional hook that adds headers to every response this server sends, the layer's own
 * error responses included (security and CORS headers belong here). It appends complete
 * "Name: value\r\n" lines to `out`. `req` is NULL for errors raised before a request was
 * parsed; `hdrs` is the handler's own header list (may be NULL): the hook should not
 * repeat a header named there (see ds_http_headers_have()).
 */
typedef void (*ds_http_header_hook_fn)(void *ud, const ds_http_req_t *req,
                                       const ds_http_header_t *hdrs, ds_buf_t *out);
void ds_http_server_set_header_hook(ds_http_server_t *srv, ds_http_header_hook_fn fn, void *ud);
/** 1 if the NULL-terminated header list has a header with that name (case-insensitive). */
int ds_http_headers_have(const ds_http_header_t *hdrs, const char *name);

typedef struct ds_http_stats_s {
  uint64_t connections_open, connections_total, requests_total, streams_open;
  uint64_t bytes_queued; /* unsent bytes over all connections */
} ds_http_stats_t;
void ds_http_server_stats(const ds_http_server_t *srv, ds_http_stats_t *out);

/* ---- the request (read-only for handlers) ---- */
struct ds_http_req_s {
  const char *method;      /* "GET", "POST", ... */
  const char *target;      /* raw request-target as received */
  const char *path;        /* target up to '?' (still percent-encoded) */
  size_t path_len;
  const char *query;       /* after '?', or NULL when there was none */
  ds_http_header_t *headers;
  size_t nheaders;
  const char *body;        /* de-chunked body (NUL-terminated), "" when empty */
  size_t body_len;
  int http_minor;          /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
  void *user;              /* free for the handler's use */
  /* The caller's grant (core/access.h), set by the router once the request's token is
   * known and asked by every handler about each further stream the request names; NULL
   * when no authorization is configured. Borrowed: lives as long as the auth policy. */
  const struct ds_access_s *access;
};

/** First header with that lowercase name, or NULL. */
const char *ds_http_req_header(const ds_http_req_t *req, const char *lname);
/** Number of headers with that lowercase name. */
int ds_http_req_header_count(const ds_http_req_t *req, const char *lname);
/** Peer address as text ("127.0.0.1"), for logs. */
const char *ds_http_req_peer(const ds_http_req_t *req);
/** The server a request arrived on. */
ds_http_server_t *ds_http_req_server(const ds_http_req_t *req);

/**
 * Query string helper: finds parameter `name` in `query` (may be NULL), percent-decodes
 * its value ('+' as space) into a newly malloc'd NUL-terminated string in *val (caller
 * frees; *val_len gets the decoded length, which may include NULs). Returns the number
 * of occurrences of `name` (0: *val = NULL; > 1: *val is the first). Returns -1 when the
 * first value holds an invalid percent escape.
 */
int ds_http_query_get(const char *query, const char *name, char **val, size_t *val_len);

/**
 * Percent-decodes s[0..n) into out (malloc'd, NUL-terminated, *out_len set). Returns 0,
 * or -1 on a malformed escape. `plus_is_space` selects form decoding.
 */
int ds_http_pct_decode(const char *s, size_t n, int plus_is_space, char **out, size_t *out_len);

/* ---- responses ---- */

/** Response header list: pairs, terminated by {NULL, NULL}. Names are sent as given. */

/**
 * Sends a whole response. Adds Content-Length, Date and (HTTP/1.0 or closing) Connection
 * headers itself. For HEAD requests the body is not sent but Content-Length is (unless a
 * header list already carries Content-Length). The request is complete afterwards.
 */
void ds_http_respond(ds_http_req_t *req, int status, const ds_http_header_t *hdrs,
                     const char *body, size_t len);
/** Sends `{"error":"<message>"}` (message JSON-escaped) with Content-Type
 *  application/json and the extra headers (may be NULL). */
void ds_http_respond_error(ds_http_req_t *req, int status, const ds_http_header_t *hdrs,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/**
 * Starts a streaming response: the status line and headers are written at once (HTTP/1.1:
 * Transfer-Encoding: chunked; HTTP/1.0: close-delimited). For HEAD the stream ends
 * immediately after the headers and the close callback is not called: the connection
 * moves on, later writes are accepted and dropped, and the caller still ends the request
 * with ds_http_stream_end/abort, which frees it (the same code path as GET).
 */
void ds_http_stream_start(ds_http_req_t *req, int status, const ds_http_header_t *hdrs);
/** Queues a shared buffer (takes a reference). Returns 0, DS_ETOOBIG when the unsent
 *  backlog would pass the limit (nothing queued; the caller should end or abort), or
 *  DS_ECLOSED when the peer is gone. A buffer is always accepted while the backlog is
 *  zero, so one buffer larger than the limit cannot wedge a stream. Empty buffers are
 *  skipped (an empty chunk would end the stream). */
int ds_http_stream_write(ds_http_req_t *req, ds_rbuf_t *buf);
/** Frames p[0..n) (n > 0) once for sending on many streaming responses: a new rbuf (one
 *  reference) holding "<hex n>\r\n" p "\r\n", the chunked transfer coding's framing, for
 *  ds_http_stream_write_chunk. A fan-out of one event to N subscribers then costs one
 *  encoding and N references, not N framings and copies. */
ds_rbuf_t *ds_http_chunk_new(const void *p, size_t n);
/** ds_http_stream_write for a buffer from ds_http_chunk_new: queued whole (no copy) on a
 *  chunked response, without its framing on a close-delimited (HTTP/1.0) one. */
int ds_http_stream_write_chunk(ds_http_req_t *req, ds_rbuf_t *chunk);
/** Same as ds_http_stream_write for bytes copied from p. */
int ds_http_stream_write_copy(ds_http_req_t *req, const void *p, size_t n);
/** Unsent bytes queued on this response. */
size_t ds_http_stream_backlog(const ds_http_req_t *req);
/** cb(ud) runs (once per registration) when the backlog falls to zero; use it to pace
 *  catch-up reads. Replaces a previous registration. */
void ds_http_stream_on_drain(ds_http_req_t *req, void (*cb)(void *ud), void *ud);
/** Ends the response (final chunk); the connection continues with the next request. */
void ds_http_stream_end(ds_http_req_t *req);
/** Ends the response by closing the connection at once, dropping unsent output (used to
 *  drop a slow subscriber). The request is freed; its close callback is not called. */
void ds_http_stream_abort(ds_http_req_t *req);

/**
 * Registers cb(ud) to run if the connection goes away (peer closed, reset, timeout,
 * server stop) before the response completed. It runs at most once; afterwards req is
 * invalid. Not called after a normal completion. EOF from the client while a response is
 * pending counts as going away (a half-closed client is not served). On server stop,
 * streaming responses get their final chunk first, then the callback runs.
 */
void ds_http_req_on_close(ds_http_req_t *req, void (*cb)(void *ud), void *ud);

/** Reason phrase for a status code ("Not Found"). */
const char *ds_http_status_text(int status);

#endif
