/* read.c - the read side: catch-up, long-poll and SSE reads, stitched across forks.
 *
 * Provides: GET /v1/stream/<path> in its three modes. Catch-up returns a bounded chunk
 * from the offset (a JSON array for JSON streams, the concatenated bytes otherwise) with
 * Stream-Next-Offset, Stream-Up-To-Date, ETag (304 on If-None-Match) and caching
 * headers; long-poll waits on the stream's subscriber list until data, closure or the
 * timeout; SSE sends one `data` event per batch (JSON arrays, base64 for binary content
 * types, every payload line prefixed so CR/LF injection stays data) each followed by a
 * `control` event, keeps idle connections alive with control events and ends the
 * response after the reconnect interval. Fork reads stitch the inherited range (read
 * through the source chain, even soft-deleted sources) with the fork's own records.
 * Publications only mark a waiter ready; the work runs from a zero timer, never inside
 * the publisher's call stack. The one exception is the live SSE fast path: a subscriber
 * already at the tail gets the new record as a frame encoded once and shared (refcounted)
 * by every subscriber in the same position, queued without any store read.
 * Must not: write to streams.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "protocol/pinternal.h"
#include "store/json.h"

#define CHUNK_BYTES (1u << 20)
#define SSE_BACKLOG_PAUSE (1u << 20)

/* ---- stitched range reads ---- */

typedef struct range_ctx_s {
  ds__rec_fn cb;
  void *ud;
  uint64_t to;
  size_t max_bytes, bytes;
  long count;
  bool full;
} range_ctx_t;

static int range_rec(void *ud, uint64_t off, const char *repr, size_t len) {
  range_ctx_t *c = ud;
  if (off >= c->to) return 1;
  if (c->count > 0 && c->bytes + len > c->max_bytes) {
    c->full = true;
    return 1;
  }
  c->bytes += len;
  c->count++;
  if (c->cb(c->ud, off, repr, len)) {
    c->full = true;
    return 1;
  }
  return 0;
}

static int range_read(ds_protocol_t *p, ds__pstream_t *st, ds_stream_t *s, uint64_t from,
                      uint64_t to, range_ctx_t *c, int depth) {
  if (depth > 64) return DS_ECORRUPT;
  if (st->fork_from && from < st->fork_offset) {
    ds_stream_t *ps = NULL;
    ds__pstream_t *par = ds__state_peek(p, st->fork_from, &ps);
    if (par) {
      uint64_t cap = to < st->fork_offset ? to : st->fork_offset;
      int rc = range_read(p, par, ps, from, cap, c, depth + 1);
      if (rc < 0) return rc;
      if (c->full) return 0;
    }
    from = st->fork_offset;
  }
  if (from >= to) return 0;
  uint64_t saved = c->to;
  if (to < c->to) c->to = to;
  long n = ds_store_read(ds_stream_store(s), from, SIZE_MAX, SIZE_MAX, range_rec, c);
  c->to = saved;
  return n < 0 ? (int)n : 0;
}

long ds__read_range(ds_protocol_t *p, ds__pstream_t *st, ds_stream_t *s, uint64_t from,
                    uint64_t to, size_t max_bytes, ds__rec_fn cb, void *ud) {
  range_ctx_t c = {cb, ud, to, max_bytes, 0, 0, false};
  int rc = range_read(p, st, s, from, to, &c, 0);
  return rc < 0 ? rc : c.count;
}

/* ---- body assembly ---- */

typedef struct body_s {
  ds_buf_t b;
  long n;
  uint64_t last;
  bool json;
} body_t;

static int body_rec(void *ud, uint64_t off, const char *repr, size_t len) {
  body_t *bd = ud;
  if (bd->json && bd->n > 0) ds_buf_putc(&bd->b, ',');
  ds_buf_append(&bd->b, repr, len);
  bd->n++;
  bd->last = off;
  return 0;
}

/* Reads one chunk from `from`; JSON bodies come back wrapped in [ ]. */
static long read_chunk(ds_protocol_t *p, ds__pstream_t *st, ds_stream_t *s, uint64_t from,
                       body_t *bd) {
  ds_buf_init(&bd->b);
  bd->n = 0;
  bd->last = 0;
  bd->json = st->mode == DS__M_JSON;
  if (bd->json) ds_buf_putc(&bd->b, '[');
  long n = ds__read_range(p, st, s, from, UINT64_MAX, CHUNK_BYTES, body_rec, bd);
  if (bd->json) ds_buf_putc(&bd->b, ']');
  return n;
}

static void etag_for(ds_buf_t *et, const char *path, const char *start, const char *end, bool c) {
  ds_buf_putc(et, '"');
  ds_base64_encode(et, path, strlen(path));
  ds_buf_printf(et, ":%s:%s%s\"", start, end, c ? ":c" : "");
}

/* Sends a 200 data response for [from, ...); cursor only for long-poll. */
static void respond_data(ds_protocol_t *p, ds_http_req_t *req, ds__pstream_t *st,
                         ds_stream_t *s, uint64_t from, const char *start_str,
                         const char *cursor_in, bool longpoll) {
  body_t bd;
  long n = read_chunk(p, st, s, from, &bd);
  if (n < 0) {
    ds_buf_free(&bd.b);
    /* the records before a damaged one were the previous answer; this read starts at it */
    ds_store_damage_t dmg;
    if (n == DS_ECORRUPT && ds_stream_store(s) && ds_store_damage_at(ds_stream_store(s), from, &dmg)) {
      char msg[320];
      snprintf(msg, sizeof msg, "Read error: the stored message at this offset is damaged (%s)",
               dmg.what);
      ds__respond_err(req, 500, msg);
    } else {
      ds__respond_err(req, 500, "Read error");
    }
    return;
  }
  uint64_t tail = ds_stream_next_offset(s);
  uint64_t next = n > 0 ? bd.last + 1 : (from > tail ? from : tail);
  if (n == 0 && from < tail) next = tail;
  bool uptodate = next >= tail;
  bool closed = st->closed && uptodate;
  char off[17];
  ds_offset_format(next, off);
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  ds_buf_t et = DS_BUF_INIT;
  etag_for(&et, st->path, start_str, off, closed);
  const char *inm = ds_http_req_header(req, "if-none-match");
  if (inm && strcmp(inm, ds_buf_cstr(&et)) == 0) {
    ds__hdr(&h, "ETag", ds_buf_cstr(&et));
    ds_http_respond(req, 304, ds__hdrs_done(&h), NULL, 0);
    goto out;
  }
  ds__hdr(&h, "Content-Type", st->ctype);
  ds__hdr(&h, "Stream-Next-Offset", off);
  if (longpoll) {
    char cur[32];
    ds__cursor(cursor_in, cur);
    ds__hdr(&h, "Stream-Cursor", cur);
  }
  if (uptodate) ds__hdr(&h, "Stream-Up-To-Date", "true");
  if (closed) ds__hdr(&h, "Stream-Closed", "true");
  ds__hdr(&h, "ETag", ds_buf_cstr(&et));
  ds__hdr(&h, "Cache-Control", (!uptodate || closed) ? "public, max-age=60, stale-while-revalidate=300"
                                                     : "no-cache");
  ds_http_respond(req, 200, ds__hdrs_done(&h), bd.b.data, bd.b.len);
out:
  ds_buf_free(&et);
  ds_buf_free(&bd.b);
  ds_arena_free(&a);
}

static void respond_lp_empty(ds_http_req_t *req, uint64_t next, const char *cursor_in,
                             bool closed) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  char off[17], cur[32];
  ds_offset_format(next, off);
  ds__cursor(cursor_in, cur);
  ds__hdr(&h, "Stream-Next-Offset", off);
  ds__hdr(&h, "Stream-Up-To-Date", "true");
  ds__hdr(&h, "Stream-Cursor", cur);
  if (closed) ds__hdr(&h, "Stream-Closed", "true");
  ds_http_respond(req, 204, ds__hdrs_done(&h), NULL, 0);
  ds_arena_free(&a);
}

/* ---- live waiters ---- */

enum { W_LONGPOLL = 1, W_SSE = 2 };

struct ds__waiter_s {
  ds__waiter_t *prev, *next;
  ds_protocol_t *p;
  ds_http_req_t *req;
  ds_sub_t sub;
  uv_timer_t timer;
  int kind;
  char *path;
  char *cursor;
  char *start_str;
  uint64_t next_off;
  uint64_t deadline;   /* long-poll timeout / SSE reconnect (monotonic ms) */
  uint64_t keepalive;  /* SSE: next idle control event */
  int mode;            /* DS__M_* of the stream (fixed for its lifetime) */
  bool wake_pending, subscribed, finished, deleted, base64, draining, broken;
};

static void waiter_free_cb(uv_handle_t *h) {
  ds__waiter_t *w = h->data;
  free(w->path);
  free(w->cursor);
  free(w->start_str);
  free(w);
}

/* Detaches everything; the response must already be complete or the peer gone. */
static void waiter_finish(ds__waiter_t *w) {
  if (w->finished) return;
  w->finished = true;
  if (w->subscribed) ds_stream_unsubscribe(&w->sub);
  w->subscribed = false;
  ds_protocol_t *p = w->p;
  if (w->prev) w->prev->next = w->next;
  else p->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  uv_timer_stop(&w->timer);
  uv_close((uv_handle_t *)&w->timer, waiter_free_cb);
}

static void waiter_on_close(void *ud) {
  ds__waiter_t *w = ud;
  w->req = NULL;
  waiter_finish(w);
}

static void waiter_timer_cb(uv_timer_t *t);

static void waiter_wake(ds__waiter_t *w) {
  if (w->finished || w->wake_pending) return;
  w->wake_pending = true;
  uv_timer_stop(&w->timer);
  uv_timer_start(&w->timer, waiter_timer_cb, 0, 0);
}

static void sse_on_drain(void *ud);
static ds_rbuf_t *shared_frame(ds_protocol_t *p, const ds_published_t *rec, int enc,
                               const char *cur);

static void waiter_on_publish(ds_sub_t *sub, const ds_published_t *rec) {
  ds__waiter_t *w = sub->ud;
  /* live SSE subscriber exactly at the tail: queue the shared frame now */
  if (w->kind == W_SSE && w->req && !w->finished && !w->wake_pending && !w->draining &&
      !w->broken && w->next_off == rec->offset &&
      rec->offset + 1 == ds_stream_next_offset(rec->stream)) {
    char cur[32];
    ds__cursor(w->cursor, cur);
    ds_rbuf_t *f = shared_frame(w->p, rec, w->base64 ? DS__M_BYTES : w->mode, cur);
    if (ds_http_stream_write_chunk(w->req, f) != 0) {
      w->broken = true; /* dropped from the timer, outside the publisher's stack */
      waiter_wake(w);
      return;
    }
    w->next_off = rec->offset + 1;
    w->keepalive = ds_clock_mono_ms() + w->p->opts.long_poll_timeout_ms;
    if (ds_http_stream_backlog(w->req) > SSE_BACKLOG_PAUSE) {
      w->draining = true;
      ds_http_stream_on_drain(w->req, sse_on_drain, w);
    }
    return;
  }
  waiter_wake(w);
}

static void waiter_on_change(ds_sub_t *sub, int what) {
  ds__waiter_t *w = sub->ud;
  if (what == 1) {
    w->deleted = true;
    w->subscribed = false; /* the registry detached us */
  }
  waiter_wake(w);
}

static void waiter_arm(ds__waiter_t *w) {
  uint64_t now = ds_clock_mono_ms();
  uint64_t at = w->deadline;
  if (w->kind == W_SSE && w->keepalive < at) at = w->keepalive;
  uv_timer_stop(&w->timer);
  uv_timer_start(&w->timer, waiter_timer_cb, at > now ? at - now : 0, 0);
}

static ds__waiter_t *waiter_new(ds_protocol_t *p, ds_http_req_t *req, ds_stream_t *s,
                                const char *path, int kind, uint64_t next_off,
                                const char *cursor, const char *start_str) {
  ds__waiter_t *w = ds_xcalloc(1, sizeof *w);
  w->p = p;
  w->req = req;
  w->kind = kind;
  w->path = ds_xstrdup(path);
  w->cursor = cursor ? ds_xstrdup(cursor) : NULL;
  w->start_str = ds_xstrdup(start_str);
  w->next_off = next_off;
  uv_timer_init(p->loop, &w->timer);
  w->timer.data = w;
  w->sub.on_publish = waiter_on_publish;
  w->sub.on_change = waiter_on_change;
  w->sub.ud = w;
  ds_stream_subscribe(s, &w->sub);
  w->subscribed = true;
  w->next = p->waiters;
  if (p->waiters) p->waiters->prev = w;
  p->waiters = w;
  ds_http_req_on_close(req, waiter_on_close, w);
  return w;
}

/* ---- long-poll ---- */

static void longpoll_step(ds__waiter_t *w) {
  ds_protocol_t *p = w->p;
  ds_stream_t *s = NULL;
  ds__pstream_t *st = w->deleted ? NULL : ds__state_peek(p, w->path, &s);
  ds_http_req_t *req = w->req;
  if (!st || st->soft_deleted || p->shutting_down) {
    respond_lp_empty(req, w->next_off, w->cursor, false);
    waiter_finish(w);
    return;
  }
  uint64_t tail = ds_stream_next_offset(s);
  if (w->next_off < tail) {
    st->access_ms = ds_clock_wall_ms();
    respond_data(p, req, st, s, w->next_off, w->start_str, w->cursor, true);
    waiter_finish(w);
    return;
  }
  if (st->closed) {
    respond_lp_empty(req, tail, w->cursor, true);
    waiter_finish(w);
    return;
  }
  if (ds_clock_mono_ms() >= w->deadline) {
    respond_lp_empty(req, w->next_off, w->cursor, false);
    waiter_finish(w);
    return;
  }
  waiter_arm(w);
}

/* ---- SSE ---- */

static void sse_data_lines(ds_buf_t *out, const char *s, size_t n) {
  /* every CR, LF or CRLF ends a line; each line gets its own data: prefix */
  size_t i = 0, start = 0;
  ds_buf_puts(out, "data:");
  while (i < n) {
    char c = s[i];
    if (c == '\r' || c == '\n') {
      ds_buf_append(out, s + start, i - start);
      ds_buf_puts(out, "\ndata:");
      if (c == '\r' && i + 1 < n && s[i + 1] == '\n') i++;
      start = i + 1;
    }
    i++;
  }
  ds_buf_append(out, s + start, n - start);
  ds_buf_puts(out, "\n\n");
}

static void sse_control_cur(ds_buf_t *out, uint64_t next, const char *cur, bool uptodate,
                            bool closed) {
  char off[17];
  ds_offset_format(next, off);
  ds_buf_printf(out, "event: control\ndata:{\"streamNextOffset\":\"%s\"", off);
  if (closed) {
    ds_buf_puts(out, ",\"streamClosed\":true");
  } else {
    ds_buf_printf(out, ",\"streamCursor\":\"%s\"", cur);
    if (uptodate) ds_buf_puts(out, ",\"upToDate\":true");
  }
  ds_buf_puts(out, "}\n\n");
}

static void sse_control(ds_buf_t *out, uint64_t next, const char *cursor_in, bool uptodate,
                        bool closed) {
  char cur[32];
  ds__cursor(cursor_in, cur);
  sse_control_cur(out, next, cur, uptodate, closed);
}

/* One data event (payload encoded per the stream's mode) and its control event. */
static void sse_frame(ds_buf_t *out, int enc, const char *data, size_t len) {
  ds_buf_puts(out, "event: data\n");
  if (enc == DS__M_BYTES) {
    ds_buf_t b64 = DS_BUF_INIT;
    ds_base64_encode(&b64, data, len);
    sse_data_lines(out, b64.data ? b64.data : "", b64.len);
    ds_buf_free(&b64);
  } else {
    sse_data_lines(out, data, len);
  }
}

void ds__reads_free(ds_protocol_t *p) {
  if (p->fcache.frame) ds_rbuf_unref(p->fcache.frame);
  memset(&p->fcache, 0, sizeof p->fcache);
}

/* The shared frame for record `rec` as seen by a subscriber with cursor `cur`, already in
 * chunked framing (ds_http_chunk_new): each subscriber then queues one reference, with no
 * per-subscriber chunk header to format and copy. */
static ds_rbuf_t *shared_frame(ds_protocol_t *p, const ds_published_t *rec, int enc,
                               const char *cur) {
  struct ds__fcache_s *c = &p->fcache;
  if (c->frame && c->s == rec->stream && c->off == rec->offset && c->enc == enc &&
      strcmp(c->cursor, cur) == 0)
    return c->frame;
  ds_buf_t out = DS_BUF_INIT;
  if (enc == DS__M_JSON) {
    ds_buf_t arr = DS_BUF_INIT;
    ds_buf_putc(&arr, '[');
    ds_buf_append(&arr, rec->repr, rec->repr_len);
    ds_buf_putc(&arr, ']');
    sse_frame(&out, enc, arr.data, arr.len);
    ds_buf_free(&arr);
  } else {
    sse_frame(&out, enc, rec->repr, rec->repr_len);
  }
  sse_control_cur(&out, rec->offset + 1, cur, true, false);
  if (c->frame) ds_rbuf_unref(c->frame);
  c->frame = ds_http_chunk_new(out.data, out.len);
  ds_buf_free(&out);
  c->s = rec->stream;
  c->off = rec->offset;
  c->enc = enc;
  snprintf(c->cursor, sizeof c->cursor, "%s", cur);
  return c->frame;
}

static void sse_on_drain(void *ud) {
  ds__waiter_t *w = ud;
  w->draining = false;
  waiter_wake(w);
}

static void sse_end(ds__waiter_t *w) {
  if (w->req) ds_http_stream_end(w->req);
  w->req = NULL;
  waiter_finish(w);
}

/* Sends whatever is available from next_off, then waits (or ends). */
static void sse_step(ds__waiter_t *w, bool first) {
  ds_protocol_t *p = w->p;
  ds_stream_t *s = NULL;
  ds__pstream_t *st = w->deleted ? NULL : ds__state_peek(p, w->path, &s);
  if (!st || st->soft_deleted || p->shutting_down) {
    sse_end(w);
    return;
  }
  if (w->draining) return;
  ds_buf_t out = DS_BUF_INIT;
  bool sent_any = false;
  for (;;) {
    body_t bd;
    long n = read_chunk(p, st, s, w->next_off, &bd);
    if (n < 0) { /* what was read is in `out`; then one comment names the error */
      ds_buf_free(&bd.b);
      char off[17];
      ds_offset_format(w->next_off, off);
      ds_buf_printf(&out, ": error: reading the stored message at offset %s failed: %s\n\n", off,
                    n == DS_ECORRUPT ? "it is damaged (the server log names the file)" : ds_strerror((int)n));
      ds_http_stream_write_copy(w->req, out.data, out.len);
      ds_buf_free(&out);
      sse_end(w);
      return;
    }
    uint64_t tail = ds_stream_next_offset(s);
    if (n == 0) {
      ds_buf_free(&bd.b);
      if (w->next_off < tail) w->next_off = tail;
      break;
    }
    w->next_off = bd.last + 1;
    sse_frame(&out, w->base64 ? DS__M_BYTES : w->mode, bd.b.data, bd.b.len);
    ds_buf_free(&bd.b);
    bool at_tail = w->next_off >= tail;
    sse_control(&out, w->next_off, w->cursor, at_tail, at_tail && st->closed);
    sent_any = true;
    if (at_tail) break;
    if (out.len >= SSE_BACKLOG_PAUSE) break;
  }
  uint64_t tail = ds_stream_next_offset(s);
  bool at_tail = w->next_off >= tail;
  if (!sent_any && (first || (at_tail && st->closed))) {
    sse_control(&out, w->next_off, w->cursor, at_tail, at_tail && st->closed);
    sent_any = true;
  }
  uint64_t now = ds_clock_mono_ms();
  if (!sent_any && now >= w->keepalive) {
    sse_control(&out, w->next_off, w->cursor, at_tail, false);
    sent_any = true;
  }
  if (sent_any) {
    w->keepalive = now + p->opts.long_poll_timeout_ms;
    int rc = ds_http_stream_write_copy(w->req, out.data, out.len);
    ds_buf_free(&out);
    if (rc != 0) {
      if (w->req) ds_http_stream_abort(w->req);
      w->req = NULL;
      waiter_finish(w);
      return;
    }
  } else {
    ds_buf_free(&out);
  }
  st->access_ms = ds_clock_wall_ms();
  if (at_tail && st->closed) {
    sse_end(w);
    return;
  }
  if (now >= w->deadline) {
    sse_end(w);
    return;
  }
  if (!at_tail) {
    if (ds_http_stream_backlog(w->req) > SSE_BACKLOG_PAUSE) {
      w->draining = true;
      ds_http_stream_on_drain(w->req, sse_on_drain, w);
      waiter_arm(w);
    } else {
      waiter_wake(w);
    }
    return;
  }
  waiter_arm(w);
}

static void waiter_timer_cb(uv_timer_t *t) {
  ds__waiter_t *w = t->data;
  w->wake_pending = false;
  if (w->finished || !w->req) return;
  if (w->broken) {
    ds_http_stream_abort(w->req); /* does not call on_close */
    w->req = NULL;
    waiter_finish(w);
    return;
  }
  if (w->kind == W_LONGPOLL) longpoll_step(w);
  else sse_step(w, false);
}

void ds__reads_shutdown(ds_protocol_t *p) {
  while (p->waiters) {
    ds__waiter_t *w = p->waiters;
    if (w->req) {
      if (w->kind == W_LONGPOLL) respond_lp_empty(w->req, w->next_off, w->cursor, false);
      else ds_http_stream_end(w->req);
    }
    w->req = NULL;
    waiter_finish(w);
  }
}

/* ---- GET ---- */

void ds__op_get(ds_protocol_t *p, ds_http_req_t *req, const char *path) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_get(p, path, &s);
  if (!st) {
    ds__respond_err(req, 404, "Stream not found");
    return;
  }
  if (st->soft_deleted) {
    ds__respond_err(req, 410, "Stream is gone");
    return;
  }
  char *offv = NULL, *live = NULL, *cursor = NULL;
  size_t offlen = 0, tmp = 0;
  int cnt = ds_http_query_get(req->query, "offset", &offv, &offlen);
  uint64_t from = 0;
  int sentinel = -1;
  if (cnt < 0) {
    ds__respond_err(req, 400, "Invalid offset parameter");
    goto out;
  }
  if (cnt > 1) {
    ds__respond_err(req, 400, "Multiple offset parameters not allowed");
    goto out;
  }
  if (cnt == 1) {
    if (offlen == 0) {
      ds__respond_err(req, 400, "Empty offset parameter");
      goto out;
    }
    if (strlen(offv) != offlen || ds__offset_parse_req(offv, offlen, &from, &sentinel) != 0) {
      ds__respond_err(req, 400, "Invalid offset format");
      goto out;
    }
  }
  if (ds_http_query_get(req->query, "live", &live, &tmp) < 0 ||
      ds_http_query_get(req->query, "cursor", &cursor, &tmp) < 0) {
    ds__respond_err(req, 400, "Invalid query parameter");
    goto out;
  }
  bool lp = live && strcmp(live, "long-poll") == 0;
  bool sse = live && strcmp(live, "sse") == 0;
  if ((lp || sse) && cnt == 0) {
    ds__respond_err(req, 400, sse ? "SSE requires offset parameter" : "Long-poll requires offset parameter");
    goto out;
  }
  uint64_t tail = ds_stream_next_offset(s);
  if (sentinel == 1) from = tail;
  else if (sentinel == -1) from = 0;
  const char *start_str = cnt == 1 ? offv : "-1";
  st->access_ms = ds_clock_wall_ms();
  ds_store_damage_t dmg; /* a read that would fail before its first message: 500, not an empty 200 */
  if (from < tail && from >= ds_stream_first_offset(s) && ds_stream_store(s) &&
      ds_store_damage_at(ds_stream_store(s), from, &dmg)) {
    char msg[320];
    snprintf(msg, sizeof msg, "Read error: the stored message at this offset is damaged (%s)",
             dmg.what);
    ds__respond_err(req, 500, msg);
    goto out;
  }

  if (sse) {
    ds_arena_t a;
    ds_arena_init(&a);
    ds__hdrs_t h;
    ds__hdrs_init(&h, &a);
    ds__hdr(&h, "Content-Type", "text/event-stream");
    ds__hdr(&h, "Cache-Control", "no-cache");
    bool b64 = st->mode == DS__M_BYTES;
    if (b64) ds__hdr(&h, "Stream-SSE-Data-Encoding", "base64");
    ds_http_stream_start(req, 200, ds__hdrs_done(&h));
    ds_arena_free(&a);
    ds__waiter_t *w = waiter_new(p, req, s, path, W_SSE, from, cursor, start_str);
    w->base64 = b64;
    w->mode = st->mode;
    uint64_t now = ds_clock_mono_ms();
    w->deadline = now + p->opts.sse_reconnect_ms;
    w->keepalive = now + p->opts.long_poll_timeout_ms;
    sse_step(w, true);
    goto out;
  }
  if (sentinel == 1 && !lp) {
    ds_arena_t a;
    ds_arena_init(&a);
    ds__hdrs_t h;
    ds__hdrs_init(&h, &a);
    char off[17];
    ds_offset_format(tail, off);
    ds__hdr(&h, "Content-Type", st->ctype);
    ds__hdr(&h, "Stream-Next-Offset", off);
    ds__hdr(&h, "Stream-Up-To-Date", "true");
    ds__hdr(&h, "Cache-Control", "no-store");
    if (st->closed) ds__hdr(&h, "Stream-Closed", "true");
    const char *body = st->mode == DS__M_JSON ? "[]" : "";
    ds_http_respond(req, 200, ds__hdrs_done(&h), body, strlen(body));
    ds_arena_free(&a);
    goto out;
  }
  if (lp && from >= tail) {
    if (st->closed) {
      respond_lp_empty(req, tail, cursor, true);
      goto out;
    }
    ds__waiter_t *w = waiter_new(p, req, s, path, W_LONGPOLL, from, cursor, start_str);
    w->deadline = ds_clock_mono_ms() + p->opts.long_poll_timeout_ms;
    waiter_arm(w);
    goto out;
  }
  respond_data(p, req, st, s, from, start_str, cursor, lp);
out:
  free(offv);
  free(live);
  free(cursor);
}
