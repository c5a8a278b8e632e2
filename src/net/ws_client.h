/* ws_client.h - outbound WebSocket (ws:// and wss://) client on the server's uv loop.
 *
 * Provides: ds_ws_client_t, one libwebsockets context per server, created lazily on the
 * first connection, client-only, running on the server's own (foreign) uv loop; and
 * ds_ws_t, one connection: connect with extra handshake headers and a connect timeout,
 * text frames queued and written when the socket is writeable, incoming messages
 * reassembled from their fragments (bounded size) and queued until the owner pops them,
 * ping/pong, close with a status code, and an optional idle timeout. Every way a
 * connection ends (refused, handshake rejected, TLS failure, timeout, peer close, local
 * close, shutdown) is recorded once as a stable code and reported through on_event.
 * Also ds_ws_rx_t, the pure fragment-reassembly queue (fuzzed by tests/fuzz).
 * Used by the Lua binding (lua/l_ws.c) for the Grok realtime transport.
 * Must not: call Lua or block: on_event only says "something changed" and the owner
 * reads the state later, outside the lws callback. Must not destroy the lws context from
 * inside an lws callback (shutdown is a uv-side call). Loop thread only.
 *
 * Lifecycle: ds_ws_client_new -> connections -> ds_ws_client_close (stage 1 of the lws
 * context destroy, from the loop: every connection ends with ECLOSED) -> the owner runs
 * the loop until idle -> ds_ws_client_free (stage 2: destroys what the foreign-loop
 * context left, runs the loop once more, frees). Without stage 2 about 1 MB leaks.
 */
#ifndef DS_NET_WS_CLIENT_H
#define DS_NET_WS_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ds_ws_client_s ds_ws_client_t;
typedef struct ds_ws_s ds_ws_t;

/* Stable end codes (ds_ws_error). */
#define DS_WS_ECONNREFUSED "ECONNREFUSED" /* TCP connect failed (refused, unreachable) */
#define DS_WS_EDNS "EDNS"                 /* the host name did not resolve */
#define DS_WS_EHANDSHAKE "EHANDSHAKE"     /* the HTTP upgrade was not answered with 101 */
#define DS_WS_ETLS "ETLS"                 /* TLS handshake or certificate failure */
#define DS_WS_ETIMEDOUT "ETIMEDOUT"       /* the connect timeout elapsed */
#define DS_WS_ECLOSED "ECLOSED"           /* the peer closed or the connection dropped */
#define DS_WS_ELOCAL "ELOCAL"             /* closed by ds_ws_close (our side) */
#define DS_WS_EIDLE "EIDLE"               /* closed by the idle timeout */
#define DS_WS_ETOOBIG "ETOOBIG"           /* an incoming message exceeded max_message */
#define DS_WS_EINVAL "EINVAL"             /* bad URL or options */

/* ---------------- message reassembly (pure; no I/O) ---------------- */

typedef struct ds_ws_msg_s {
  struct ds_ws_msg_s *next;
  int binary;
  size_t len;
  char data[]; /* len bytes plus a NUL */
} ds_ws_msg_t;

typedef struct ds_ws_rx_s {
  char *cur; /* the message being assembled */
  size_t cur_len, cur_cap;
  int in_msg, cur_binary;
  size_t max_message;
  ds_ws_msg_t *head, *tail;
  size_t count, bytes; /* queued messages and their payload bytes */
} ds_ws_rx_t;

void ds_ws_rx_init(ds_ws_rx_t *rx, size_t max_message);
/** Adds a piece of the incoming stream: `final` is 1 when it completes a message; `binary`
 *  is read on the first piece of a message. Returns 0, or DS_ETOOBIG when the message grew
 *  past max_message (the partial message is dropped; the queue is kept). */
int ds_ws_rx_feed(ds_ws_rx_t *rx, const void *p, size_t n, int final, int binary);
/** Takes the oldest complete message (caller frees it with free()), or NULL. */
ds_ws_msg_t *ds_ws_rx_pop(ds_ws_rx_t *rx);
void ds_ws_rx_free(ds_ws_rx_t *rx);

/* ---------------- client ---------------- */

/** Creates the client (no lws context yet). Returns 0 or a negative DS_E* code. */
int ds_ws_client_new(uv_loop_t *loop, ds_ws_client_t **out);
/** Stage 1 (call from the loop, never from an lws callback): ends every connection with
 *  ECLOSED "shutting down", refuses new ones, starts destroying the lws context.
 *  Idempotent. */
void ds_ws_client_close(ds_ws_client_t *c);
/** Stage 2, after the loop ran idle: finishes the context destroy (runs the loop once
 *  more) and frees the client. Connections still held by their owner are detached (their
 *  later release only frees memory). Returns the connections still held (leaks). */
long ds_ws_client_free(ds_ws_client_t *c);
/** Connections not yet released by their owner. */
long ds_ws_client_live(const ds_ws_client_t *c);

typedef struct ds_ws_opts_s {
  const char *url;            /* ws://host[:port]/path?query or wss://... */
  const char *const *headers; /* "Name: value" lines sent with the upgrade (copied) */
  size_t nheaders;
  long connect_timeout_ms;    /* 0 = 10000 */
  size_t max_message;         /* 0 = 16 MiB */
  long idle_timeout_ms;       /* 0 = none (see ds_ws_set_idle) */
  int insecure;               /* wss: accept self-signed certificates (tests only) */
} ds_ws_opts_t;

/** Called (from lws or uv callbacks) when the state changed: opened, message queued, pong,
 *  or ended. Must not call back into this module except the getters and ds_ws_pop. */
typedef void (*ds_ws_event_fn)(ds_ws_t *ws, void *ud);

/**
 * Starts a connection. On success *out is the handle, owned by the caller until
 * ds_ws_release, and 0 is returned; no callback runs before this returns. A connection
 * that cannot even start (bad URL) returns DS_EINVAL; after ds_ws_client_close,
 * DS_ECLOSED.
 */
int ds_ws_connect(ds_ws_client_t *c, const ds_ws_opts_t *o, ds_ws_event_fn on_event, void *ud, ds_ws_t **out);

enum { DS_WS_CONNECTING = 0, DS_WS_OPEN, DS_WS_CLOSING, DS_WS_ENDED };
int ds_ws_state(const ds_ws_t *ws);
/** Once ended: the code (DS_WS_*), a one-line message, the HTTP status of a rejected
 *  handshake (0 otherwise) and the peer's close code (0 if none). NULL code while alive. */
const char *ds_ws_error(const ds_ws_t *ws, const char **msg, int *http_status, int *close_code);

/** Queues a text frame (copied). DS_ECLOSED unless connecting or open (frames queued
 *  while connecting go out once open). */
int ds_ws_send_text(ds_ws_t *ws, const char *p, size_t n);
/** Queues a ping; pongs are counted (ds_ws_pongs). */
int ds_ws_ping(ds_ws_t *ws);
uint64_t ds_ws_pongs(const ds_ws_t *ws);
/** Complete messages queued, not yet popped. */
size_t ds_ws_pending(const ds_ws_t *ws);
/** Takes the oldest received message (free() it), or NULL. Messages that arrived before
 *  the end stay readable after it. */
ds_ws_msg_t *ds_ws_pop(ds_ws_t *ws);
/** Starts a clean close with `code` (1000 normal) after the queued frames; the end code
 *  is ELOCAL. Idempotent; a connection still connecting is abandoned at once. */
void ds_ws_close(ds_ws_t *ws, int code, const char *reason);
/** The idle timeout: when nothing was sent or received for ms and the owner is not
 *  waiting (ds_ws_set_waiting), the connection is closed (code 1000, end EIDLE).
 *  0 disables it. */
void ds_ws_set_idle(ds_ws_t *ws, long ms);
void ds_ws_set_waiting(ds_ws_t *ws, int waiting);
/** Ends the owner's interest: closes if still open (no more on_event) and frees the
 *  handle once lws is done with it. The handle must not be used afterwards. */
void ds_ws_release(ds_ws_t *ws);

#endif
