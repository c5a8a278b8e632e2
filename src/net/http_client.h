/* http_client.h - outbound streaming HTTP(S) client on the server's uv loop.
 *
 * Provides: ds_http_client_t, one libcurl multi handle driven by the uv loop through the
 * multi-socket interface (one uv_poll per socket curl opens, one uv_timer for curl's
 * timeouts), and ds_http_xfer_t, one request whose answer is delivered as it arrives:
 * status and headers first, then body chunks, then exactly one completion with a
 * classified error. Many transfers run concurrently on one loop; each can be cancelled at
 * any time and the peer then sees its connection close at once. TLS uses the system CAs.
 * Used by the Lua binding (lua/l_http_client.c) for the OpenAI transport.
 * Must not: call Lua or block. Callbacks run from uv/curl callbacks, so a caller that
 * talks to Lua only copies the data and schedules a task. Must not free any uv or curl
 * object outside its close callback.
 */
#ifndef DS_NET_HTTP_CLIENT_H
#define DS_NET_HTTP_CLIENT_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "http/http.h"

typedef struct ds_http_client_s ds_http_client_t;
typedef struct ds_http_xfer_s ds_http_xfer_t;

/* Response headers are handed over as ds_http_header_t {name, value} (http/http.h): name
 * as received, value with leading and trailing blanks removed. */

/* Stable error codes handed to on_done (the `code` argument). An HTTP error status is not
 * an error here: the caller sees the status in on_headers and decides. */
#define DS_HTTPC_OK "OK"                     /* the answer arrived complete */
#define DS_HTTPC_ECONNREFUSED "ECONNREFUSED" /* could not connect (refused / unreachable) */
#define DS_HTTPC_EDNS "EDNS"                 /* host name did not resolve */
#define DS_HTTPC_ETLS "ETLS"                 /* TLS handshake or certificate failure */
#define DS_HTTPC_ETIMEDOUT "ETIMEDOUT"       /* connect or total timeout elapsed */
#define DS_HTTPC_ESTALLED "ESTALLED"         /* no byte received for stall_timeout_ms */
#define DS_HTTPC_ECLOSED "ECLOSED"           /* connection closed or reset mid-answer */
#define DS_HTTPC_EPROTO "EPROTO"             /* the peer did not speak valid HTTP */
#define DS_HTTPC_EIO "EIO"                   /* any other transfer failure */
#define DS_HTTPC_EBLOCKED "EBLOCKED"         /* a pinned transfer would have connected to an
                                                address other than the pinned ones */

/**
 * Callbacks of one transfer. `ud` is the pointer given to ds_http_client_request. All
 * pointers passed in are valid only during the call: copy what you keep.
 * A callback may call ds_http_xfer_cancel on its own transfer (then no further callback
 * runs, not even on_done).
 */
typedef struct ds_http_xfer_cbs_s {
  /** The final (non-1xx) status line and its headers arrived. Called at most once. */
  void (*on_headers)(ds_http_xfer_t *x, long status, const ds_http_header_t *hdrs, size_t n, void *ud);
  /** A piece of the (de-chunked) body, in arrival order. */
  void (*on_data)(ds_http_xfer_t *x, const char *p, size_t n, void *ud);
  /**
   * The transfer ended: code is DS_HTTPC_OK or one of the error codes above, msg a one-line
   * human description (never NULL). Called exactly once unless cancelled. The transfer is
   * released when this returns; `x` must not be used afterwards.
   */
  void (*on_done)(ds_http_xfer_t *x, const char *code, const char *msg, void *ud);
} ds_http_xfer_cbs_t;

typedef struct ds_http_request_s {
  const char *method;          /* "GET", "POST", ...; NULL means GET, or POST with a body */
  const char *url;             /* http:// or https:// */
  const char *const *headers;  /* "Name: value" lines, copied */
  size_t nheaders;
  const char *body;            /* copied; may be NULL */
  size_t body_len;
  long connect_timeout_ms;     /* 0 = curl's default (300 s) */
  long total_timeout_ms;       /* 0 = none */
  long stall_timeout_ms;       /* 0 = none: max silence between two received bytes */
  /* Pinning (webhooks: the addresses ds_egress_check_url() checked). With npin > 0 the
   * URL's host name is not resolved again: the connection goes to one of these addresses
   * (port included; TLS still verifies the name), no proxy is used, and a socket to any
   * other address is refused before it connects (DS_HTTPC_EBLOCKED), so a DNS answer that
   * changes after the check (rebinding) cannot redirect the transfer. Copied. */
  const struct sockaddr_storage *pin;
  size_t npin;
} ds_http_request_t;

/** Creates a client on `loop`. Returns 0 or a negative DS_E* code. */
int ds_http_client_new(uv_loop_t *loop, ds_http_client_t **out);

/**
 * Starts a transfer. On success *out is the transfer handle (valid until on_done returns or
 * ds_http_xfer_cancel) and 0 is returned; no callback runs before this returns. Returns
 * DS_EINVAL for a bad request, DS_ECLOSED once the client is closing.
 */
int ds_http_client_request(ds_http_client_t *c, const ds_http_request_t *req, const ds_http_xfer_cbs_t *cbs,
                           void *ud, ds_http_xfer_t **out);

/**
 * Aborts a transfer now: its connection is closed (the peer sees EOF/RST) and no further
 * callback runs. The handle is invalid afterwards. Must not be called after on_done.
 */
void ds_http_xfer_cancel(ds_http_xfer_t *x);

/** Number of transfers not yet done or cancelled. */
size_t ds_http_client_active(const ds_http_client_t *c);

/**
 * Cancels every transfer (no callbacks) and closes every uv handle. Must not be called
 * from on_headers/on_data (curl is on the stack); from on_done it is allowed. The client memory is
 * freed from the last close callback; `closed_cb` (may be NULL) runs then. The caller keeps
 * running the loop until it is idle.
 */
void ds_http_client_close(ds_http_client_t *c, void (*closed_cb)(void *arg), void *arg);

#endif
