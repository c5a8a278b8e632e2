/* http_int.h - internals shared by the HTTP server's units (server, conn, response).
 *
 * Provides: the server, connection and request structures, the output segment queue and
 * the internal entry points the units call on each other (ds__ prefix). Also the
 * in-memory entry point used by the fuzzer (ds__http_server_new + ds__http_adopt_fd).
 * Must not: be included outside src/http and the http tests/fuzzers.
 *
 * Model (one loop thread):
 * - One shared 64 KiB read buffer per server; a connection copies only bytes it cannot
 *   parse yet (a pipelined request waiting for the previous response) into conn->in.
 * - At most one request per connection is with the handler at a time; llhttp is paused at
 *   each message end and resumed when the response is complete.
 * - Output is queued as segments (copied bytes or shared rbufs) and flushed once per loop
 *   iteration from a uv_prepare (a uv_idle is armed while anything is dirty so that poll
 *   does not block with unflushed output).
 * - A single server-wide sweep timer enforces header/body/idle/linger deadlines.
 */
#ifndef DS_HTTP_HTTP_INT_H
#define DS_HTTP_HTTP_INT_H

#include <llhttp.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "core/buf.h"
#include "core/rbuf.h"
#include "http/http.h"

typedef struct ds__conn_s ds__conn_t;
typedef struct ds__req_s ds__req_t;

/* One output segment: either a shared rbuf (rb != NULL) or owned bytes (own != NULL,
 * freed after writing). base/len is the unsent part. */
typedef struct ds__seg_s {
  ds_rbuf_t *rb;
  char *own;
  const char *base;
  size_t len;
} ds__seg_t;

typedef struct ds__wreq_s {
  uv_write_t req;
  ds__conn_t *conn;
  ds__seg_t *segs;
  size_t nsegs;
  size_t bytes;
} ds__wreq_t;

enum { DS__REQ_RECEIVING = 0, DS__REQ_ACTIVE, DS__REQ_STREAMING };

struct ds__req_s {
  ds_http_req_t pub; /* first: handlers get &pub, we cast back */
  ds__conn_t *conn;  /* NULL once detached (HEAD stream waiting for the caller's end) */
  ds_http_server_t *srv;
  ds_buf_t head;     /* target\0 name\0value\0 ... */
  uint32_t *hoff;    /* pairs of offsets into head: name, value */
  size_t nhoff, hoff_cap;
  ds_buf_t body;
  uint8_t state;
  uint8_t keep_alive;
  uint8_t is_head;
  uint8_t chunked_out; /* streaming with chunked framing */
  uint8_t field_open, value_open;
  uint8_t dying; /* close callback running: API calls on it are no-ops */
  void (*close_cb)(void *);
  void *close_ud;
  void (*drain_cb)(void *);
  void *drain_ud;
  char *peer;
};

enum { DS__T_NONE = 0, DS__T_HEADER, DS__T_BODY, DS__T_IDLE, DS__T_LINGER };

struct ds__conn_s {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  ds_http_server_t *srv;
  ds__conn_t *prev, *next;   /* server's list of all connections */
  ds__conn_t *dprev, *dnext; /* server's dirty list (process and/or flush pending) */
  llhttp_t parser;
  ds__req_t *req;    /* request being received or with the handler */
  ds_buf_t in;       /* unparsed input (pipelined bytes), consumed from in_off */
  size_t in_off;
  size_t head_count; /* head bytes of the current message before the current chunk */
  size_t tail_count; /* chunk-extension and trailer bytes of the current message */
  char prev_last;    /* last byte of the previous parsed chunk (obs-fold detection) */
  const char *chunk; /* start of the bytes being parsed (for head size accounting) */
  ds__seg_t *segs;   /* queued, not yet submitted */
  size_t nsegs, segs_cap;
  ds_buf_t stage;    /* small copied bytes being coalesced into the next segment */
  ds__wreq_t *wreq;  /* in-flight write, at most one */
  size_t backlog;    /* stage + segs + in-flight bytes */
  uint64_t deadline; /* uv_now() ms; meaningful when tkind != DS__T_NONE */
  int err_status;    /* set by parser callbacks to fail with this status */
  const char *err_msg;
  uint8_t tkind;
  uint8_t is_pipe;
  uint8_t dirty;
  uint8_t need_process;
  uint8_t in_dispatch;
  uint8_t headers_done;
  uint8_t close_after; /* close once output is flushed */
  uint8_t lingering;   /* shut down our side, discarding input until EOF or deadline */
  uint8_t closing;     /* uv_close issued */
  uint8_t read_stopped;
  uint8_t peer_eof;
  uint8_t discard_input;
  uint8_t ready;    /* a complete request waits for dispatch */
  uint8_t progress; /* bytes were written since the last sweep */
};

struct ds_http_server_s {
  uv_loop_t *loop;
  ds_http_opts_t opts;
  char host[256];
  ds_http_handler_fn handler;
  void *ud;
  ds_http_header_hook_fn header_hook;
  void *header_hook_ud;
  uv_tcp_t listener;
  int listening;
  uv_timer_t sweep;
  uv_prepare_t prepare;
  uv_idle_t idle;
  int idle_armed;
  llhttp_settings_t settings;
  ds__conn_t *conns;
  ds__conn_t *dirty;
  ds_http_stats_t stats;
  int port;
  int stopping;
  int handles_open;
  void (*done)(void *);
  void *done_ud;
  time_t date_sec;
  char date[40];
  char readbuf[65536];
};

/* server.c */
void ds__server_arm_flush(ds_http_server_t *srv);
void ds__server_conn_closed(ds_http_server_t *srv, ds__conn_t *c);
const char *ds__server_date(ds_http_server_t *srv);
/** Creates a server without a listener (for the fuzzer and tests); stop it as usual. */
int ds__http_server_new(uv_loop_t *loop, const ds_http_opts_t *opts, ds_http_handler_fn handler,
                        void *ud, ds_http_server_t **out);
/** Serves one connection on fd (an AF_UNIX socket, e.g. one end of a socketpair): the
 *  same connection code as TCP, without a listener. Returns 0 or a DS_E* code. */
int ds__http_adopt_fd(ds_http_server_t *srv, int fd);

/* conn.c */
void ds__conn_settings(llhttp_settings_t *s);
ds__conn_t *ds__conn_new(ds_http_server_t *srv, int is_pipe);
void ds__conn_start(ds__conn_t *c);
void ds__conn_mark_dirty(ds__conn_t *c);
void ds__conn_run_dirty(ds_http_server_t *srv);
void ds__conn_sweep(ds__conn_t *c, uint64_t now);
void ds__conn_close(ds__conn_t *c);
/** Closes after the queued output is written (graceful). */
void ds__conn_close_after(ds__conn_t *c);
void ds__conn_server_stop(ds__conn_t *c);
void ds__conn_queue_copy(ds__conn_t *c, const void *p, size_t n);
void ds__conn_queue_rbuf(ds__conn_t *c, ds_rbuf_t *rb);
/** Queues rb->data[off, off+len) (takes a reference to rb). */
void ds__conn_queue_rbuf_part(ds__conn_t *c, ds_rbuf_t *rb, size_t off, size_t len);
/** Sends an error response of this layer on the connection and closes it afterwards. */
void ds__conn_fail(ds__conn_t *c, int status, const char *msg);
/** The current request has its full response queued: free it and move on. */
void ds__req_complete(ds__req_t *r);
void ds__req_free(ds__req_t *r);
/** The connection's current request is done (freed or detached by the caller). */
void ds__conn_req_finished(ds__conn_t *c, int keep_alive);

/* response.c */
void ds__append_json_string(ds_buf_t *b, const char *s, size_t n);
/** Queues a complete error response (JSON body) on c. */
void ds__queue_error(ds__conn_t *c, int status, const char *msg, int closing, int is_head);

#endif
