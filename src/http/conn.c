/* conn.c - one HTTP connection: reading, llhttp parsing, request assembly, dispatch to the
 * handler, deadlines, the output queue and closing.
 *
 * Provides: the ds__conn_* and ds__req_* internals of http_int.h and the request
 * accessors of http.h (ds_http_req_header...).
 * Must not: format responses (response.c) or own the listener (server.c).
 *
 * Flow: bytes arrive in the server's shared read buffer and are parsed in place when the
 * connection is ready for a new request; llhttp pauses at each message end, the remainder
 * is copied into conn->in and the request goes to the handler. When the response is
 * complete the connection is marked dirty and the next buffered request is parsed from
 * the prepare callback (never from inside the caller's respond call, so handlers are not
 * re-entered). While a request is with the handler the socket is still read, so that a
 * disconnect is noticed; pipelined bytes are buffered up to header+body limits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "core/err.h"
#include "core/log.h"
#include "http/http_int.h"

#define DS__LINGER_MS 2000 /* how long a closing connection waits for its output and EOF */
#define DS__STOP_MS 1000   /* how long server stop waits for a connection's output */
#define DS__SEGS_KEEP 8    /* segment array capacity kept across flushes */

static void on_closed(uv_handle_t *h);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_process(ds__conn_t *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* ---- small helpers ---- */

static void set_deadline(ds__conn_t *c, int kind, uint64_t ms) {
  c->tkind = (uint8_t)kind;
  c->deadline = kind == DS__T_NONE ? 0 : uv_now(c->srv->loop) + ms;
}

static void dirty_unlink(ds__conn_t *c) {
  if (!c->dirty) return;
  ds_http_server_t *srv = c->srv;
  if (c->dprev) c->dprev->dnext = c->dnext;
  else srv->dirty = c->dnext;
  if (c->dnext) c->dnext->dprev = c->dprev;
  c->dprev = c->dnext = NULL;
  c->dirty = 0;
}

void ds__conn_mark_dirty(ds__conn_t *c) {
  if (c->dirty || c->closing) return;
  ds_http_server_t *srv = c->srv;
  c->dirty = 1;
  c->dprev = NULL;
  c->dnext = srv->dirty;
  if (srv->dirty) srv->dirty->dprev = c;
  srv->dirty = c;
  ds__server_arm_flush(srv);
}

static void seg_release(ds__seg_t *s) {
  if (s->rb) ds_rbuf_unref(s->rb);
  free(s->own);
  s->rb = NULL;
  s->own = NULL;
}

static void backlog_sub(ds__conn_t *c, size_t n) {
  c->backlog -= n;
  c->srv->stats.bytes_queued -= n;
}

static ds__seg_t *seg_push(ds__conn_t *c) {
  if (c->nsegs == c->segs_cap) {
    c->segs_cap = c->segs_cap ? c->segs_cap * 2 : 4;
    c->segs = ds_xrealloc(c->segs, c->segs_cap * sizeof *c->segs);
  }
  ds__seg_t *s = &c->segs[c->nsegs++];
  memset(s, 0, sizeof *s);
  return s;
}

static void stage_to_seg(ds__conn_t *c) {
  if (!c->stage.len) return;
  ds__seg_t *s = seg_push(c);
  s->own = ds_buf_detach(&c->stage, &s->len);
  s->base = s->own;
}

void ds__conn_queue_copy(ds__conn_t *c, const void *p, size_t n) {
  if (!n || c->closing) return;
  ds_buf_append(&c->stage, p, n);
  c->backlog += n;
  c->srv->stats.bytes_queued += n;
  ds__conn_mark_dirty(c);
}

void ds__conn_queue_rbuf_part(ds__conn_t *c, ds_rbuf_t *rb, size_t off, size_t len) {
  if (!len || c->closing) return;
  stage_to_seg(c);
  ds__seg_t *s = seg_push(c);
  s->rb = ds_rbuf_ref(rb);
  s->base = rb->data + off;
  s->len = len;
  c->backlog += len;
  c->srv->stats.bytes_queued += len;
  ds__conn_mark_dirty(c);
}

void ds__conn_queue_rbuf(ds__conn_t *c, ds_rbuf_t *rb) { ds__conn_queue_rbuf_part(c, rb, 0, rb->len); }

static void in_append(ds__conn_t *c, const char *p, size_t n) {
  if (c->in_off && c->in_off == c->in.len) {
    ds_buf_reset(&c->in);
    c->in_off = 0;
  } else if (c->in_off > 4096 && c->in_off > c->in.len / 2) {
    ds_buf_consume(&c->in, c->in_off);
    c->in_off = 0;
  }
  ds_buf_append(&c->in, p, n);
}

static size_t in_pending(const ds__conn_t *c) { return c->in.len - c->in_off; }

/* ---- requests ---- */

void ds__req_free(ds__req_t *r) {
  if (!r) return;
  ds_buf_free(&r->head);
  ds_buf_free(&r->body);
  free(r->hoff);
  free(r->pub.headers);
  free(r->peer);
  free(r);
}

/* Runs the request's close callback (at most once) and frees it. */
static void req_abandon(ds__req_t *r) {
  void (*cb)(void *) = r->close_cb;
  void *ud = r->close_ud;
  r->close_cb = NULL;
  r->drain_cb = NULL;
  r->dying = 1;
  if (r->state != DS__REQ_RECEIVING && cb) cb(ud);
  ds__req_free(r);
}

static void req_detach_from_conn(ds__conn_t *c) {
  ds__req_t *r = c->req;
  if (!r) return;
  c->req = NULL;
  c->ready = 0;
  if (r->state == DS__REQ_STREAMING) c->srv->stats.streams_open--;
  req_abandon(r);
}

void ds__req_complete(ds__req_t *r) {
  ds__conn_t *c = r->conn;
  if (r->state == DS__REQ_STREAMING) c->srv->stats.streams_open--;
  int keep = r->keep_alive;
  ds__req_free(r);
  ds__conn_req_finished(c, keep);
}

void ds__conn_req_finished(ds__conn_t *c, int keep) {
  c->req = NULL;
  keep = keep && !c->srv->stopping && !c->close_after;
  if (c->closing) return;
  if (!keep) {
    ds__conn_close_after(c);
    return;
  }
  set_deadline(c, DS__T_IDLE, c->srv->opts.idle_timeout_ms);
  c->need_process = 1;
  ds__conn_mark_dirty(c);
}

/* ---- llhttp callbacks ---- */

static int fail_cb(ds__conn_t *c, int status, const char *msg) {
  if (!c->err_status) {
    c->err_status = status;
    c->err_msg = msg;
  }
  return -1;
}

/* Head size so far, counting every byte of the current message up to `end`. */
static int head_over(ds__conn_t *c, const char *end) {
  return c->head_count + (size_t)(end - c->chunk) > c->srv->opts.max_header_bytes;
}

/* Trailers and chunk extensions are parsed but never stored; they still count against
 * max_header_bytes so a client cannot stream them forever within the body timeout. */
static int tail_bytes(ds__conn_t *c, size_t len, int status, const char *msg) {
  c->tail_count += len;
  if (c->tail_count > c->srv->opts.max_header_bytes) return fail_cb(c, status, msg);
  return 0;
}

static int on_chunk_extension(llhttp_t *p, const char *at, size_t len) {
  (void)at;
  return tail_bytes(p->data, len, 400, "malformed request: chunk extensions too large");
}

/* An obs-fold continuation line (RFC 9112 5.2) reaches us as a second value span that
 * directly follows a line break; the RFC lets a server reject it, and a folded
 * Transfer-Encoding or Content-Length is a smuggling vector, so every fold gets 400. */
static int is_obs_fold(const ds__conn_t *c, const char *at) {
  char before = at > c->chunk ? at[-1] : c->prev_last;
  return before == '\n';
}

static int on_message_begin(llhttp_t *p) {
  ds__conn_t *c = p->data;
  if (c->req) ds__req_free(c->req); /* cannot happen: parsing waits for completion */
  ds__req_t *r = ds_xcalloc(1, sizeof *r);
  r->conn = c;
  r->srv = c->srv;
  c->req = r;
  c->headers_done = 0;
  c->head_count = 0;
  c->tail_count = 0;
  if (c->tkind != DS__T_HEADER) set_deadline(c, DS__T_HEADER, c->srv->opts.header_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  ds__conn_t *c = p->data;
  if (head_over(c, at + len)) return fail_cb(c, 431, "request header fields too large");
  ds_buf_append(&c->req->head, at, len);
  return 0;
}

static int on_url_complete(llhttp_t *p) {
  ds__conn_t *c = p->data;
  ds_buf_putc(&c->req->head, '\0');
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  ds__conn_t *c = p->data;
  ds__req_t *r = c->req;
  if (c->headers_done) return tail_bytes(c, len, 431, "request trailer fields too large");
  if (head_over(c, at + len)) return fail_cb(c, 431, "request header fields too large");
  if (r->value_open) { /* the previous value was empty and got no complete callback */
    r->value_open = 0;
    ds_buf_putc(&r->head, '\0');
  }
  if (!r->field_open) {
    if (r->nhoff + 2 > r->hoff_cap) {
      r->hoff_cap = r->hoff_cap ? r->hoff_cap * 2 : 32;
      r->hoff = ds_xrealloc(r->hoff, r->hoff_cap * sizeof *r->hoff);
    }
    r->hoff[r->nhoff++] = (uint32_t)r->head.len;
    r->field_open = 1;
  }
  ds_buf_append(&r->head, at, len);
  return 0;
}

static int is_tchar(unsigned char ch) {
  if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) return 1;
  return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int on_header_field_complete(llhttp_t *p) {
  ds__conn_t *c = p->data;
  ds__req_t *r = c->req;
  if (c->headers_done) return 0;
  if (!r->field_open) return fail_cb(c, 400, "malformed request: empty header name");
  r->field_open = 0;
  /* llhttp 8.1 reports ": x" as a zero-length name */
  if (r->hoff[r->nhoff - 1] == r->head.len) return fail_cb(c, 400, "malformed request: empty header name");
  for (size_t i = r->hoff[r->nhoff - 1]; i < r->head.len; i++) {
    char ch = r->head.data[i];
    /* RFC 9112 5.1: no whitespace between name and colon ("X : y" is a smuggling
     * vector that llhttp 8.1 accepts); names are tokens */
    if (!is_tchar((unsigned char)ch)) return fail_cb(c, 400, "malformed request: invalid header name");
    if (ch >= 'A' && ch <= 'Z') r->head.data[i] = (char)(ch + 32);
  }
  ds_buf_putc(&r->head, '\0');
  r->hoff[r->nhoff++] = (uint32_t)r->head.len; /* value starts here (may stay empty) */
  r->value_open = 1;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  ds__conn_t *c = p->data;
  if (c->headers_done) return tail_bytes(c, len, 431, "request trailer fields too large");
  if (head_over(c, at + len)) return fail_cb(c, 431, "request header fields too large");
  if (!c->req->value_open) return fail_cb(c, 400, "malformed request: header value without name");
  if (len && is_obs_fold(c, at)) return fail_cb(c, 400, "malformed request: obsolete line folding");
  ds_buf_append(&c->req->head, at, len);
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  ds__conn_t *c = p->data;
  ds__req_t *r = c->req;
  if (c->headers_done) return 0;
  if (!r->value_open) {
    /* llhttp skips the value callbacks entirely for an empty value */
    return fail_cb(c, 400, "malformed request: header value without name");
  }
  r->value_open = 0;
  size_t start = r->hoff[r->nhoff - 1], end = r->head.len;
  for (size_t i = start; i < end; i++) {
    unsigned char ch = (unsigned char)r->head.data[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return fail_cb(c, 400, "malformed request: invalid character in header value");
  }
  while (start < end && (r->head.data[start] == ' ' || r->head.data[start] == '\t')) start++;
  while (end > start && (r->head.data[end - 1] == ' ' || r->head.data[end - 1] == '\t')) end--;
  if (start != r->hoff[r->nhoff - 1]) {
    memmove(r->head.data + r->hoff[r->nhoff - 1], r->head.data + start, end - start);
    end -= start - r->hoff[r->nhoff - 1];
  }
  r->head.len = end;
  ds_buf_putc(&r->head, '\0');
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  ds__conn_t *c = p->data;
  ds__req_t *r = c->req;
  ds_http_server_t *srv = c->srv;
  if (head_over(c, c->chunk)) return fail_cb(c, 431, "request header fields too large");
  /* llhttp accepts HTTP/0.9-style request lines ("GET /x" without a version) */
  if (p->http_major != 1) return fail_cb(c, 400, "malformed request: unsupported HTTP version");
  if (r->field_open || r->value_open) {
    /* a name whose value callbacks never ran: close it as an empty value */
    if (r->field_open) on_header_field_complete(p);
    if (r->value_open) {
      r->value_open = 0;
      ds_buf_putc(&r->head, '\0');
    }
  }
  c->headers_done = 1;
  if (!r->head.len) ds_buf_putc(&r->head, '\0');
  /* pointers into head are stable from here on: head is never appended to again, so
   * trim it to size (a long-lived streaming request keeps it) */
  r->head.data = ds_xrealloc(r->head.data, r->head.len + 1);
  r->head.cap = r->head.len + 1;
  size_t nh = r->nhoff / 2;
  r->pub.headers = nh ? ds_xmalloc(nh * sizeof *r->pub.headers) : NULL;
  r->pub.nheaders = nh;
  for (size_t i = 0; i < nh; i++) {
    r->pub.headers[i].name = r->head.data + r->hoff[2 * i];
    r->pub.headers[i].value = r->head.data + r->hoff[2 * i + 1];
  }
  free(r->hoff);
  r->hoff = NULL;
  r->nhoff = r->hoff_cap = 0;
  r->pub.method = llhttp_method_name((llhttp_method_t)p->method);
  r->pub.target = r->head.data;
  const char *q = strchr(r->pub.target, '?');
  r->pub.path = r->pub.target;
  r->pub.path_len = q ? (size_t)(q - r->pub.target) : strlen(r->pub.target);
  r->pub.query = q ? q + 1 : NULL;
  r->pub.http_minor = p->http_minor;
  r->pub.body = "";
  r->is_head = p->method == HTTP_HEAD;
  p->upgrade = 0; /* no upgrades: CONNECT and Upgrade requests are ordinary requests */

  /* Request smuggling: one framing only, and only "chunked" as transfer coding. llhttp
   * 8.1 (strict) already rejects CL+TE and duplicate Content-Length; these checks also
   * hold if leniency is ever enabled. */
  int te_n = ds_http_req_header_count(&r->pub, "transfer-encoding");
  int cl_n = ds_http_req_header_count(&r->pub, "content-length");
  if (te_n || (p->flags & F_TRANSFER_ENCODING)) {
    if (cl_n) return fail_cb(c, 400, "malformed request: both Content-Length and Transfer-Encoding");
    const char *te = ds_http_req_header(&r->pub, "transfer-encoding");
    if (te_n != 1 || !te || strcasecmp(te, "chunked") != 0)
      return fail_cb(c, 400, "malformed request: unsupported Transfer-Encoding");
  }
  if (cl_n > 1) {
    const char *first = NULL;
    for (size_t i = 0; i < nh; i++) {
      if (strcmp(r->pub.headers[i].name, "content-length") != 0) continue;
      if (!first) first = r->pub.headers[i].value;
      else if (strcmp(first, r->pub.headers[i].value) != 0)
        return fail_cb(c, 400, "malformed request: conflicting Content-Length");
    }
  }
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > srv->opts.max_body_bytes)
    return fail_cb(c, 413, "request body too large");
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)
    ds_buf_reserve(&r->body, (size_t)p->content_length);
  if (has_body && p->http_major == 1 && p->http_minor >= 1) {
    const char *ex = ds_http_req_header(&r->pub, "expect");
    if (ex && strcasecmp(ex, "100-continue") == 0) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      ds__conn_queue_copy(c, cont, sizeof cont - 1);
    }
  }
  if (has_body) set_deadline(c, DS__T_BODY, srv->opts.body_timeout_ms);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  ds__conn_t *c = p->data;
  ds__req_t *r = c->req;
  if (r->body.len + len > c->srv->opts.max_body_bytes) return fail_cb(c, 413, "request body too large");
  ds_buf_append(&r->body, at, len);
  set_deadline(c, DS__T_BODY, c->srv->opts.body_timeout_ms);
  return 0;
}

/* A chunk announces its size before its data: one that cannot fit within the body limit
 * is refused here, at once, instead of reading (or waiting the body timeout for) data that
 * on_body would refuse anyway. Written as a subtraction: the size may be up to 2^64 - 1. */
static int on_chunk_header(llhttp_t *p) {
  ds__conn_t *c = p->data;
  size_t max = c->srv->opts.max_body_bytes, have = c->req->body.len;
  if (p->content_length > (uint64_t)(max - have)) return fail_cb(c, 413, "request body too large");
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  ds__conn_t *c = p->data;
  ds__req_t *r = c->req;
  if (!c->headers_done) return fail_cb(c, 400, "malformed request: incomplete head");
  r->pub.body = r->body.len ? ds_buf_cstr(&r->body) : "";
  r->pub.body_len = r->body.len;
  r->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
  r->state = DS__REQ_ACTIVE;
  c->ready = 1;
  c->srv->stats.requests_total++;
  set_deadline(c, DS__T_NONE, 0);
  return HPE_PAUSED; /* one request at a time: resume once its response is complete */
}

void ds__conn_settings(llhttp_settings_t *s) {
  llhttp_settings_init(s);
  s->on_message_begin = on_message_begin;
  s->on_url = on_url;
  s->on_url_complete = on_url_complete;
  s->on_header_field = on_header_field;
  s->on_header_field_complete = on_header_field_complete;
  s->on_header_value = on_header_value;
  s->on_header_value_complete = on_header_value_complete;
  s->on_headers_complete = on_headers_complete;
  s->on_body = on_body;
  s->on_chunk_header = on_chunk_header;
  s->on_message_complete = on_message_complete;
  s->on_chunk_extension_name = on_chunk_extension;
  s->on_chunk_extension_value = on_chunk_extension;
}

/* ---- parsing and dispatch ---- */

/* Parses data[0..n) and returns how many bytes were consumed (less than n only when a
 * request completed and the parser paused). On a parse error the connection fails. */
static size_t parse_some(ds__conn_t *c, const char *data, size_t n) {
  c->chunk = data;
  llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
  if (n) c->prev_last = data[n - 1];
  if (e == HPE_OK) {
    if (c->req && !c->headers_done) c->head_count += n;
    return n;
  }
  if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
    const char *pos = llhttp_get_error_pos(&c->parser);
    size_t used = pos && pos >= data && pos <= data + n ? (size_t)(pos - data) : n;
    if (used) c->prev_last = data[used - 1];
    if (e == HPE_PAUSED_UPGRADE) llhttp_resume_after_upgrade(&c->parser);
    else llhttp_resume(&c->parser);
    return used;
  }
  char msg[200];
  int status = c->err_status ? c->err_status : 400;
  if (c->err_msg) snprintf(msg, sizeof msg, "%s", c->err_msg);
  else snprintf(msg, sizeof msg, "malformed request: %s", llhttp_get_error_reason(&c->parser));
  ds__conn_fail(c, status, msg);
  return n;
}

static void dispatch(ds__conn_t *c) {
  c->ready = 0;
  ds__req_t *r = c->req;
  c->in_dispatch = 1;
  c->srv->handler(c->srv->ud, &r->pub);
  c->in_dispatch = 0;
}

static size_t in_limit(const ds__conn_t *c) {
  return c->srv->opts.max_header_bytes + c->srv->opts.max_body_bytes;
}

static void conn_process(ds__conn_t *c) {
  if (c->in_dispatch) return; /* the dispatching frame continues the loop */
  for (;;) {
    if (c->closing || c->close_after) break;
    if (c->ready) {
      dispatch(c);
      continue;
    }
    if (c->req && c->req->state != DS__REQ_RECEIVING) break; /* waiting for the response */
    size_t avail = in_pending(c);
    if (!avail) break;
    size_t used = parse_some(c, c->in.data + c->in_off, avail);
    if (c->close_after || c->closing) break;
    c->in_off += used;
    if (c->in_off >= c->in.len) {
      ds_buf_free(&c->in);
      c->in_off = 0;
    }
  }
  if (c->closing) return;
  if (!in_pending(c) && c->in.cap) {
    ds_buf_free(&c->in);
    c->in_off = 0;
  }
  if (c->peer_eof && !c->req && !in_pending(c) && !c->close_after) ds__conn_close_after(c);
  if (c->read_stopped && in_pending(c) < in_limit(c) && !c->peer_eof) {
    c->read_stopped = 0;
    uv_read_start(&c->h.stream, on_alloc, on_read) == 0 ? (void)0 : ds__conn_close(c);
  }
}

/* ---- writing ---- */

static void on_write(uv_write_t *wr, int status) {
  ds__wreq_t *w = (ds__wreq_t *)wr;
  ds__conn_t *c = w->conn;
  for (size_t i = 0; i < w->nsegs; i++) seg_release(&w->segs[i]);
  free(w->segs);
  backlog_sub(c, w->bytes);
  c->wreq = NULL;
  free(w);
  if (c->closing) return;
  if (status < 0) {
    ds__conn_close(c);
    return;
  }
  c->progress = 1;
  ds__conn_mark_dirty(c);
}

/* Writes what the socket takes now, without blocking: bytes written, UV_EAGAIN, or a
 * negative UV error. Only called while libuv's own write queue is empty (no c->wreq), so
 * going around uv_try_write cannot reorder bytes. Why not uv_try_write: it uses
 * write()/writev(), whose VFS layer costs a measurable share of each delivery when one
 * event goes to 1,000 subscribers (server CPU at 1,000 subscribers x 100 events/s: 0.71 ->
 * 0.65 of a core, bench/RESULTS.md); send()/sendmsg() go straight to the socket layer.
 * Every connection is a TCP or AF_UNIX stream socket (server.c accepts or adopts them). */
static int conn_try_send(ds__conn_t *c, uv_buf_t *bufs, size_t n) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->h.stream, &fd) != 0) return UV_EBADF;
  if (n > IOV_MAX) n = IOV_MAX;
  ssize_t w;
  do {
    if (n == 1) {
      w = send(fd, bufs[0].base, bufs[0].len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      /* uv_buf_t is laid out as struct iovec on Unix (documented by libuv) */
      struct msghdr m = {.msg_iov = (struct iovec *)bufs, .msg_iovlen = n};
      w = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
  } while (w < 0 && errno == EINTR);
  if (w >= 0) return (int)w; /* queued output is bounded far below INT_MAX (backlog limits) */
  if (errno == EAGAIN || errno == EWOULDBLOCK) return UV_EAGAIN;
  return uv_translate_sys_error(errno);
}

static void conn_flush(ds__conn_t *c) {
  if (c->wreq || c->closing) return;
  stage_to_seg(c);
  size_t n = c->nsegs;
  if (!n) return;
  uv_buf_t sbufs[16], *bufs = n <= 16 ? sbufs : ds_xmalloc(n * sizeof *bufs);
  for (size_t i = 0; i < n; i++) bufs[i] = uv_buf_init((char *)c->segs[i].base, (unsigned)c->segs[i].len);
  int wrote = conn_try_send(c, bufs, n);
  if (wrote == UV_EAGAIN || wrote == UV_ENOSYS) wrote = 0;
  if (wrote < 0) {
    if (bufs != sbufs) free(bufs);
    ds__conn_close(c);
    return;
  }
  if (wrote > 0) c->progress = 1;
  backlog_sub(c, (size_t)wrote);
  size_t rem = (size_t)wrote, i = 0;
  while (i < n && rem >= c->segs[i].len) {
    rem -= c->segs[i].len;
    seg_release(&c->segs[i]);
    i++;
  }
  if (i == n) {
    /* everything went out (the common case): keep a small segment array for the next
     * flush, so a live stream does not malloc/free it per event; a large one (after a
     * burst) is given back, so an idle connection stays small */
    c->nsegs = 0;
    if (c->segs_cap > DS__SEGS_KEEP) {
      free(c->segs);
      c->segs = NULL;
      c->segs_cap = 0;
    }
    if (bufs != sbufs) free(bufs);
    return;
  }
  c->segs[i].base += rem;
  c->segs[i].len -= rem;
  bufs[i] = uv_buf_init((char *)c->segs[i].base, (unsigned)c->segs[i].len);
  ds__wreq_t *w = ds_xmalloc(sizeof *w);
  w->conn = c;
  w->nsegs = n - i;
  w->bytes = 0;
  if (i) memmove(c->segs, c->segs + i, (n - i) * sizeof *c->segs);
  for (size_t k = 0; k < n - i; k++) w->bytes += c->segs[k].len;
  w->segs = c->segs;
  c->segs = NULL;
  c->nsegs = c->segs_cap = 0;
  c->wreq = w;
  int rc = uv_write(&w->req, &c->h.stream, bufs + i, (unsigned)(n - i), on_write);
  if (bufs != sbufs) free(bufs);
  if (rc != 0) {
    c->wreq = NULL;
    for (size_t k = 0; k < w->nsegs; k++) seg_release(&w->segs[k]);
    backlog_sub(c, w->bytes);
    free(w->segs);
    free(w);
    ds__conn_close(c);
  }
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
  ds__conn_t *c = sr->data;
  free(sr);
  if (c->closing) return;
  /* On server stop there is no point waiting for the peer's EOF. */
  if (status < 0 || c->peer_eof || c->srv->stopping) ds__conn_close(c);
}

static void start_linger(ds__conn_t *c) {
  c->lingering = 1;
  ds_buf_free(&c->in);
  c->in_off = 0;
  if (c->peer_eof) {
    ds__conn_close(c);
    return;
  }
  /* Half-close and drain the peer's input before closing: closing with unread input
   * would send RST, which can destroy the error response before the client reads it. */
  uv_shutdown_t *sr = ds_xmalloc(sizeof *sr);
  sr->data = c;
  if (uv_shutdown(sr, &c->h.stream, on_shutdown) != 0) {
    free(sr);
    ds__conn_close(c);
    return;
  }
  if (c->tkind != DS__T_LINGER) set_deadline(c, DS__T_LINGER, DS__LINGER_MS);
  if (c->read_stopped) {
    c->read_stopped = 0;
    if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) ds__conn_close(c);
  }
}

/* After a flush: drain callbacks, and graceful close once everything is out. */
static void after_output(ds__conn_t *c) {
  if (c->closing || c->backlog || c->wreq) return;
  ds__req_t *r = c->req;
  if (r && r->drain_cb && !r->dying) {
    void (*cb)(void *) = r->drain_cb;
    void *ud = r->drain_ud;
    r->drain_cb = NULL;
    cb(ud);
    /* look again (close_after, a new registration) once cb's output is flushed */
    ds__conn_mark_dirty(c);
    return;
  }
  if (c->close_after && !c->lingering) start_linger(c);
}

void ds__conn_run_dirty(ds_http_server_t *srv) {
  while (srv->dirty) {
    ds__conn_t *c = srv->dirty;
    dirty_unlink(c);
    if (c->need_process) {
      c->need_process = 0;
      conn_process(c);
    }
    if (c->closing) continue;
    conn_flush(c);
    after_output(c);
  }
}

/* ---- lifecycle ---- */

ds__conn_t *ds__conn_new(ds_http_server_t *srv, int is_pipe) {
  ds__conn_t *c = ds_xcalloc(1, sizeof *c);
  c->srv = srv;
  c->is_pipe = (uint8_t)is_pipe;
  if (is_pipe) uv_pipe_init(srv->loop, &c->h.pipe, 0);
  else uv_tcp_init(srv->loop, &c->h.tcp);
  c->h.handle.data = c;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->stats.connections_open++;
  srv->stats.connections_total++;
  llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
  c->parser.data = c;
  set_deadline(c, DS__T_HEADER, srv->opts.header_timeout_ms);
  return c;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  ds__conn_t *c = h->data;
  /* One buffer for the whole server: read_cb consumes or copies it before returning. */
  *buf = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

void ds__conn_start(ds__conn_t *c) {
  if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) ds__conn_close(c);
}

static void on_peer_gone(ds__conn_t *c, ssize_t nread) {
  c->peer_eof = 1;
  if (c->req && c->req->state != DS__REQ_RECEIVING) {
    ds__conn_close(c); /* a pending response: the client went away (close callback runs) */
    return;
  }
  if (nread != UV_EOF || c->lingering) {
    ds__conn_close(c);
    return;
  }
  uv_read_stop(&c->h.stream);
  if (c->req) { /* a partial request can never complete now */
    ds__req_free(c->req);
    c->req = NULL;
  }
  if (in_pending(c) && !c->close_after) {
    /* pipelined requests already received are still answered, then we close */
    c->need_process = 1;
    ds__conn_mark_dirty(c);
    return;
  }
  if (c->backlog || c->wreq) ds__conn_close_after(c);
  else ds__conn_close(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  ds__conn_t *c = s->data;
  if (c->closing) return;
  if (nread < 0) {
    on_peer_gone(c, nread);
    return;
  }
  if (nread == 0) return;
  if (c->lingering || c->discard_input || c->close_after) return;
  if ((c->req && c->req->state != DS__REQ_RECEIVING) || in_pending(c)) {
    in_append(c, buf->base, (size_t)nread);
    if (in_pending(c) > in_limit(c)) {
      uv_read_stop(s);
      c->read_stopped = 1;
    }
    if (!c->req || c->req->state == DS__REQ_RECEIVING) conn_process(c);
    return;
  }
  size_t used = parse_some(c, buf->base, (size_t)nread);
  if (c->closing || c->close_after) return;
  if (used < (size_t)nread) in_append(c, buf->base + used, (size_t)nread - used);
  conn_process(c);
}

void ds__conn_close(ds__conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  dirty_unlink(c);
  req_detach_from_conn(c);
  if (!uv_is_closing(&c->h.handle)) {
    uv_read_stop(&c->h.stream);
    uv_close(&c->h.handle, on_closed);
  }
}

void ds__conn_close_after(ds__conn_t *c) {
  if (c->closing) return;
  if (!c->close_after) {
    c->close_after = 1;
    if (c->tkind != DS__T_LINGER) set_deadline(c, DS__T_IDLE, c->srv->opts.idle_timeout_ms);
  }
  ds__conn_mark_dirty(c);
}

static void on_closed(uv_handle_t *h) {
  ds__conn_t *c = h->data;
  for (size_t i = 0; i < c->nsegs; i++) seg_release(&c->segs[i]);
  size_t pending = c->stage.len;
  for (size_t i = 0; i < c->nsegs; i++) pending += c->segs[i].len;
  backlog_sub(c, pending);
  free(c->segs);
  ds_buf_free(&c->stage);
  ds_buf_free(&c->in);
  ds__server_conn_closed(c->srv, c);
  free(c);
}

void ds__conn_fail(ds__conn_t *c, int status, const char *msg) {
  if (c->closing || c->close_after) return;
  if (c->req && c->req->state == DS__REQ_RECEIVING) {
    ds__req_free(c->req);
    c->req = NULL;
  }
  c->ready = 0;
  ds_buf_free(&c->in);
  c->in_off = 0;
  ds__queue_error(c, status, msg, 1, 0);
  set_deadline(c, DS__T_LINGER, DS__LINGER_MS);
  ds__conn_close_after(c);
}

void ds__conn_sweep(ds__conn_t *c, uint64_t now) {
  if (c->closing || c->tkind == DS__T_NONE || now < c->deadline) return;
  switch (c->tkind) {
  case DS__T_HEADER:
    if (c->req) ds__conn_fail(c, 408, "request header timeout");
    else ds__conn_close(c);
    break;
  case DS__T_BODY:
    ds__conn_fail(c, 408, "request body timeout");
    break;
  case DS__T_IDLE:
    if ((c->backlog || c->wreq) && c->progress) { /* still writing: not idle */
      c->progress = 0;
      set_deadline(c, DS__T_IDLE, c->srv->opts.idle_timeout_ms);
      break;
    }
    ds__conn_close(c);
    break;
  default:
    ds__conn_close(c);
    break;
  }
}

void ds__conn_server_stop(ds__conn_t *c) {
  if (c->closing) return;
  ds__req_t *r = c->req;
  if (r && r->state != DS__REQ_RECEIVING && c->in_dispatch) {
    /* The handler of this very request stopped the server and still holds req: let it
     * answer (with Connection: close); the stop deadline bounds the wait. */
    ds__conn_close_after(c);
    set_deadline(c, DS__T_LINGER, DS__STOP_MS);
    return;
  }
  if (r && r->state == DS__REQ_STREAMING && r->chunked_out) ds__conn_queue_copy(c, "0\r\n\r\n", 5);
  if (r && r->state == DS__REQ_RECEIVING) {
    c->req = NULL;
    ds__req_free(r);
  } else if (r) {
    req_detach_from_conn(c);
  }
  c->ready = 0;
  ds__conn_close_after(c);
  set_deadline(c, DS__T_LINGER, DS__STOP_MS);
}

/* ---- request accessors ---- */

const char *ds_http_req_header(const ds_http_req_t *req, const char *lname) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, lname) == 0) return req->headers[i].value;
  return NULL;
}

int ds_http_req_header_count(const ds_http_req_t *req, const char *lname) {
  int n = 0;
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, lname) == 0) n++;
  return n;
}

const char *ds_http_req_peer(const ds_http_req_t *req) {
  ds__req_t *r = (ds__req_t *)req;
  if (r->peer) return r->peer;
  char name[INET6_ADDRSTRLEN] = "unknown";
  ds__conn_t *c = r->conn;
  if (c && c->is_pipe) {
    snprintf(name, sizeof name, "local");
  } else if (c) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) == 0) {
      if (ss.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&ss, name, sizeof name);
      else uv_ip4_name((struct sockaddr_in *)&ss, name, sizeof name);
    }
  }
  r->peer = ds_xstrdup(name);
  return r->peer;
}

ds_http_server_t *ds_http_req_server(const ds_http_req_t *req) { return ((const ds__req_t *)req)->srv; }
