/* agents.c - the /agents HTTP API: append, history + live SSE, keep-alive comments.
 *
 * Every GET answers its headers and, at once, an SSE comment (": open"), so a buffering
 * proxy passes the response on before any event exists. Keep-alives are per connection: a
 * live reader gets ": keepalive" keepalive_ms after the last bytes queued on its response.
 * Live readers sit in one list ordered by that time (a reader that writes moves to the
 * tail, O(1)), so the list is sorted by deadline and one uv timer, armed for the head,
 * serves them all: no timer per connection (100,000 idle readers are a target).
 *
 * A GET becomes a reader: it subscribes to the stream at once (so nothing published
 * while it works can be missed), then pumps history from the store in batches, paced by
 * the connection's drain callback, until it reaches the stream's next offset; from then
 * on (if live) it forwards published frames whose offset equals the one it needs next.
 * One loop thread means no event can slip between "caught up" and "live".
 */
#include "api/agents.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/rbuf.h"
#include "store/json.h"

#define CATCHUP_BATCH_RECORDS 512
#define CATCHUP_BATCH_BYTES (256 * 1024)
#define CATCHUP_HIGH_WATER (64 * 1024)

typedef struct reader_s reader_t;

struct ds_agents_api_s {
  uv_loop_t *loop;
  ds_streams_t *streams;
  ds_agents_opts_t opts;
  uv_timer_t keepalive; /* one-shot, armed for live_head's keep-alive deadline */
  int timer_open;
  /* readers in live mode, ordered by last_out: head = silent the longest */
  reader_t *live_head, *live_tail;
  reader_t *all_head;  /* every open reader, for shutdown */
  ds_rbuf_t *keepalive_frame; /* chunk-framed (ds_http_chunk_new) */
  ds_rbuf_t *open_frame;      /* ": open", the first body bytes of every GET; chunk-framed */
  /* The chunk-framed copy of the last published frame: publish calls every subscriber
   * with the same frame, so it is framed once, not once per subscriber. The source is
   * referenced so its address cannot be reused by a later frame while cached. */
  ds_rbuf_t *chunk_src, *chunk;
  /* A catch-up batch is built here (kept between batches: a fresh 256 KiB buffer per
   * batch cost page faults); batch_busy guards against reentry. */
  ds_buf_t batch;
  int batch_busy;
  ds_agents_stats_t stats;
};

struct reader_s {
  ds_sub_t sub;
  ds_agents_api_t *api;
  ds_http_req_t *req;
  ds_stream_t *stream;
  uint64_t next; /* next offset this reader needs */
  uint64_t last_out; /* uv_now() when bytes were last queued on the response */
  unsigned live : 1;
  unsigned in_live : 1; /* caught up and forwarding published frames */
  unsigned pumping : 1;
  reader_t *lprev, *lnext; /* live list */
  reader_t *aprev, *anext; /* all list */
};

/* ------------------------------------------------------------------ paths */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char *ds_agents_decode_path(const char *raw, size_t n, char *err, size_t errlen) {
  /* An encoded '/' or '\' would let one path name two different files or escape a
   * segment check; the contract rejects them before decoding. */
  for (size_t i = 0; i < n; i++) {
    if (raw[i] != '%') continue;
    if (i + 2 >= n) {
      snprintf(err, errlen, "stream path has a malformed percent escape");
      return NULL;
    }
    int h = hexval(raw[i + 1]), l = hexval(raw[i + 2]);
    if (h < 0 || l < 0) {
      snprintf(err, errlen, "stream path has a malformed percent escape");
      return NULL;
    }
    int c = h * 16 + l;
    if (c == '/' || c == '\\') {
      snprintf(err, errlen, "stream path contains an encoded '%c'", c);
      return NULL;
    }
  }
  char *out = NULL;
  size_t out_len = 0;
  if (ds_http_pct_decode(raw, n, 0, &out, &out_len) != 0) {
    snprintf(err, errlen, "stream path has a malformed percent escape");
    return NULL;
  }
  if (memchr(out, '\0', out_len)) {
    snprintf(err, errlen, "stream path contains a NUL byte");
    free(out);
    return NULL;
  }
  if (ds_path_validate(out, out_len, err, errlen) != 0) {
    free(out);
    return NULL;
  }
  return out;
}

/* ------------------------------------------------------------------ readers */

static uint64_t ka_deadline(const reader_t *r) { return r->last_out + r->api->opts.keepalive_ms; }

static void on_keepalive(uv_timer_t *t);

/* Arms the timer for the head's deadline, unless it already runs (an earlier deadline, or
 * one that turns out early: on_keepalive re-arms for the head it then finds). */
static void ka_arm(ds_agents_api_t *api) {
  if (!api->timer_open || !api->live_head || uv_is_active((uv_handle_t *)&api->keepalive)) return;
  uint64_t now = uv_now(api->loop), due = ka_deadline(api->live_head);
  uv_timer_start(&api->keepalive, on_keepalive, due > now ? due - now : 0, 0);
}

static void live_append(reader_t *r) {
  ds_agents_api_t *api = r->api;
  r->lnext = NULL;
  r->lprev = api->live_tail;
  if (api->live_tail) api->live_tail->lnext = r;
  else api->live_head = r;
  api->live_tail = r;
}

static void live_unlink(reader_t *r) {
  if (!r->in_live) return;
  ds_agents_api_t *api = r->api;
  if (r->lprev) r->lprev->lnext = r->lnext;
  else api->live_head = r->lnext;
  if (r->lnext) r->lnext->lprev = r->lprev;
  else api->live_tail = r->lprev;
  r->lprev = r->lnext = NULL;
  r->in_live = 0;
}

/* The reader caught up: it joins the tail (now is the latest time any reader wrote, so
 * the order holds; its last bytes went out now or were just drained). */
static void live_link(reader_t *r) {
  r->last_out = uv_now(r->api->loop);
  live_append(r);
  r->in_live = 1;
  ka_arm(r->api);
}

/* Bytes were queued on r's response: its keep-alive deadline moves to keepalive_ms from
 * now, and it moves to the tail of the live list (which keeps the list in deadline order). */
static void touch(reader_t *r) {
  r->last_out = uv_now(r->api->loop);
  if (r->in_live && r != r->api->live_tail) {
    live_unlink(r);
    live_append(r);
    r->in_live = 1;
  }
}

static void reader_destroy(reader_t *r) {
  ds_agents_api_t *api = r->api;
  live_unlink(r);
  if (r->aprev) r->aprev->anext = r->anext;
  else api->all_head = r->anext;
  if (r->anext) r->anext->aprev = r->aprev;
  ds_stream_unsubscribe(&r->sub); /* may forget a never-written watched stream */
  api->stats.readers_open--;
  free(r);
}

static void on_req_close(void *ud) {
  reader_t *r = ud;
  reader_destroy(r);
}

/* Ends the response normally (history read, stream deleted, shutdown). */
static void reader_finish(reader_t *r) {
  ds_http_req_t *req = r->req;
  reader_destroy(r);
  ds_http_stream_end(req);
}

/* Drops a reader whose client does not keep up: the connection is closed at once, its
 * unsent output discarded (the client resumes by offset). ds_http_stream_abort frees the
 * request without calling the close callback, so the reader is freed here. */
static void reader_drop(reader_t *r, const char *why) {
  ds_http_req_t *req = r->req;
  r->api->stats.readers_dropped++;
  ds_info("agents", "dropping reader of %s at offset %llu: %s", ds_stream_path(r->stream),
          (unsigned long long)r->next, why);
  reader_destroy(r);
  ds_http_stream_abort(req);
}

/* A read failed at r->next (the stream's file is damaged there, see ds_store_damage_t, or
 * unreadable): everything before it has been sent; one SSE comment names the error, then
 * the response ends normally. Clients ignore comments, so a history read simply stops;
 * a client resuming from r->next is answered 500 before any header (handle_get), which
 * also stops a browser's EventSource from reconnecting forever. */
static void reader_fail(reader_t *r, int rc) {
  char off[17], line[512];
  ds_offset_format(r->next, off);
  ds_store_damage_t d;
  ds_store_stream_t *st = ds_stream_store(r->stream);
  int n;
  if (rc == DS_ECORRUPT && st && ds_store_damage_at(st, r->next, &d))
    n = snprintf(line, sizeof line, ": error: stored event %s is damaged (%s); the events "
                 "after it cannot be sent until the stream is repaired\n\n", off, d.what);
  else
    n = snprintf(line, sizeof line, ": error: reading stored event %s failed: %s\n\n", off,
                 ds_strerror(rc));
  if (n < 2 || (size_t)n >= sizeof line) n = (int)sizeof line - 1;
  for (int i = 0; i < n - 2; i++) /* one comment line whatever the reason's text holds */
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  line[n - 2] = line[n - 1] = '\n';
  ds_http_req_t *req = r->req;
  if (ds_http_stream_write_copy(req, line, (size_t)n) != 0) {
    reader_drop(r, "write failed");
    return;
  }
  reader_finish(r);
}

typedef struct {
  reader_t *r;
  ds_buf_t *out;
} batch_ctx_t;

static int batch_cb(void *ud, uint64_t offset, const char *repr, size_t len) {
  batch_ctx_t *b = ud;
  /* one reservation, then the frame is written in place (once per event sent) */
  static const char mid[] = "\nevent: data\ndata: ";
  ds_buf_reserve(b->out, len + 4 + 16 + (sizeof mid - 1) + 2);
  char *o = b->out->data + b->out->len;
  memcpy(o, "id: ", 4);
  char off[17];
  ds_offset_format(offset, off);
  memcpy(o + 4, off, 16);
  o += 20;
  memcpy(o, mid, sizeof mid - 1);
  o += sizeof mid - 1;
  if (len) memcpy(o, repr, len);
  o += len;
  o[0] = '\n';
  o[1] = '\n';
  b->out->len = (size_t)(o + 2 - b->out->data);
  b->r->next = offset + 1;
  return 0;
}

static void pump(reader_t *r);
static void pump_cb(void *ud) { pump(ud); }

static void pump_release(ds_agents_api_t *api, int shared, ds_buf_t *local) {
  ds_buf_free(local);
  if (!shared) return;
  api->batch_busy = 0;
  ds_buf_reset(&api->batch);
  if (api->batch.cap > 2 * CATCHUP_BATCH_BYTES) ds_buf_free(&api->batch); /* an outsized record */
}

static void pump(reader_t *r) {
  if (r->pumping || r->in_live) return;
  r->pumping = 1;
  ds_agents_api_t *api = r->api;
  ds_buf_t local = DS_BUF_INIT;
  int shared = !api->batch_busy;
  ds_buf_t *outp = shared ? &api->batch : &local;
  api->batch_busy = 1;
  for (;;) {
    uint64_t tail = ds_stream_next_offset(r->stream);
    ds_store_stream_t *st = ds_stream_store(r->stream);
    if (!st || r->next >= tail) {
      r->pumping = 0;
      pump_release(api, shared, &local);
      if (!r->live) {
        reader_finish(r);
      } else {
        live_link(r);
      }
      return;
    }
    if (ds_http_stream_backlog(r->req) >= CATCHUP_HIGH_WATER) {
      ds_http_stream_on_drain(r->req, pump_cb, r);
      break;
    }
    ds_buf_reset(outp);
    batch_ctx_t ctx = {r, outp};
    long n = ds_store_read(st, r->next, CATCHUP_BATCH_RECORDS, CATCHUP_BATCH_BYTES, batch_cb, &ctx);
    if (n < 0) {
      ds_error("agents", "reading %s from offset %llu failed: %s", ds_stream_path(r->stream),
               (unsigned long long)r->next, ds_strerror((int)n));
      r->pumping = 0;
      pump_release(api, shared, &local);
      reader_fail(r, (int)n);
      return;
    }
    if (n == 0) { /* the store has nothing from here: treat as caught up */
      r->next = tail;
      continue;
    }
    /* framed once into a buffer the connection sends by reference (no second copy) */
    ds_rbuf_t *chunk = ds_http_chunk_new(outp->data, outp->len);
    int wrc = ds_http_stream_write_chunk(r->req, chunk);
    ds_rbuf_unref(chunk);
    r->last_out = uv_now(api->loop); /* not in the live list while catching up */
    if (wrc != 0) {
      r->pumping = 0;
      pump_release(api, shared, &local);
      reader_drop(r, "write failed");
      return;
    }
  }
  r->pumping = 0;
  pump_release(api, shared, &local);
}

static void on_publish(ds_sub_t *sub, const ds_published_t *rec) {
  reader_t *r = sub->ud;
  if (!r->in_live) return; /* catching up: the pump reads it from the store */
  if (rec->offset < r->next) return;
  if (rec->offset > r->next) {
    /* cannot happen on one loop thread; recover by reading from the store */
    live_unlink(r);
    pump(r);
    return;
  }
  int rc = 0;
  ds_agents_api_t *api = r->api;
  if (rec->agents_frame && rec->agents_frame->len) {
    if (api->chunk_src != rec->agents_frame) {
      ds_rbuf_unref(api->chunk_src);
      ds_rbuf_unref(api->chunk);
      api->chunk_src = ds_rbuf_ref(rec->agents_frame);
      api->chunk = ds_http_chunk_new(rec->agents_frame->data, rec->agents_frame->len);
    }
    rc = ds_http_stream_write_chunk(r->req, api->chunk);
  }
  if (rc == 0) {
    r->next = rec->offset + 1;
    touch(r);
    if (ds_http_stream_backlog(r->req) > r->api->opts.subscriber_backlog_bytes)
      reader_drop(r, "backlog limit exceeded");
  } else {
    reader_drop(r, rc == DS_ETOOBIG ? "backlog limit exceeded" : "write failed");
  }
}

static void on_change(ds_sub_t *sub, int what) {
  reader_t *r = sub->ud;
  if (what == 1) reader_finish(r); /* deleted: nothing more will come */
}

/* Sends ": keepalive" to every live reader silent for keepalive_ms (they are at the head),
 * then re-arms for the next deadline. A reader with bytes still queued is not silent (its
 * client is slow, the bytes are on their way): its deadline just moves on. */
static void on_keepalive(uv_timer_t *t) {
  ds_agents_api_t *api = t->data;
  uint64_t now = uv_now(api->loop);
  reader_t *r;
  while ((r = api->live_head) != NULL && ka_deadline(r) <= now) {
    if (ds_http_stream_backlog(r->req) == 0 &&
        ds_http_stream_write_chunk(r->req, api->keepalive_frame) != 0) {
      reader_drop(r, "keep-alive write failed");
      continue;
    }
    touch(r);
  }
  ka_arm(api);
}

/* ------------------------------------------------------------------ handlers */

static void respond_400(ds_http_req_t *req, const char *msg) {
  ds_http_respond_error(req, 400, NULL, "%s", msg);
}

/* A stream that does not exist yet cannot be created under this name (store.h, the name
 * mapping): DS_ECONFLICT from the store on creation. */
#define CONFLICT_MSG                                                                      \
  "cannot create stream: a stream x and streams under x.yaml/ cannot both exist (their " \
  "files would share a name)"

/* Errors of ds_streams_get(): the store refused the name (400, 409) or failed (507, 500). */
static void respond_open_error(ds_http_req_t *req, int rc) {
  if (rc == DS_ECONFLICT) ds_http_respond_error(req, 409, NULL, "%s", CONFLICT_MSG);
  else if (rc == DS_EINVAL) ds_http_respond_error(req, 400, NULL, "invalid stream path");
  else ds_http_respond_error(req, rc == DS_ENOSPC ? 507 : 500, NULL, "cannot open stream: %s", ds_strerror(rc));
}

/* Where a read starts: from the first event, from "now", or after offset `last`. */
typedef struct {
  int from_start, from_now;
  uint64_t last;
} resume_t;

/* Parses a resume point: "" / "-1" = from the first event, "now", or 1-16 decimal digits
 * naming the last offset seen (exclusive). Returns 0, or -1 after answering 400 (`what`
 * names the source in the message: "offset" or "Last-Event-ID"). */
static int parse_resume(ds_http_req_t *req, const char *what, const char *src, size_t sl, resume_t *out) {
  memset(out, 0, sizeof *out);
  if (!src || sl == 0 || (sl == 2 && memcmp(src, "-1", 2) == 0)) {
    out->from_start = 1;
  } else if (sl == 3 && memcmp(src, "now", 3) == 0) {
    out->from_now = 1;
  } else if (ds_offset_parse(src, sl, &out->last) != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "invalid %s '%.*s': expected -1, now, or 1-16 decimal digits", what,
             (int)(sl > 40 ? 40 : sl), src);
    for (char *p = msg; *p; p++)
      if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    respond_400(req, msg);
    return -1;
  }
  return 0;
}

static void handle_get(ds_agents_api_t *api, ds_http_req_t *req, const char *path) {
  /* offset: exclusive; absent / "" / "-1" = from the start; "now"; 1-16 digits */
  char *ov = NULL;
  size_t ol = 0;
  int oc = ds_http_query_get(req->query, "offset", &ov, &ol);
  if (oc < 0) {
    respond_400(req, "invalid offset: malformed percent escape");
    return;
  }
  if (oc > 1) {
    free(ov);
    respond_400(req, "offset given more than once");
    return;
  }
  resume_t from;
  int bad = parse_resume(req, "offset", ov, ol, &from);
  free(ov);
  if (bad) return;
  /* Last-Event-ID, when present and not empty, is the resume point and wins over the URL's
   * offset (agents-api.md §3): a browser reconnects an EventSource with the very same URL
   * plus this header, so letting `offset` win replayed everything (offset=-1) or lost the
   * gap (offset=now). Validated like offset; an empty one (EventSource never sends that)
   * is no resume point. Both are checked, so a malformed URL is a 400 either way. */
  int lc = ds_http_req_header_count(req, "last-event-id");
  const char *lei = ds_http_req_header(req, "last-event-id");
  if (lc > 1) {
    respond_400(req, "Last-Event-ID given more than once");
    return;
  }
  if (lei && *lei && parse_resume(req, "Last-Event-ID", lei, strlen(lei), &from) != 0) return;

  char *lv = NULL;
  size_t ll = 0;
  int live = ds_http_query_get(req->query, "live", &lv, &ll) > 0 && lv &&
             (strcmp(lv, "sse") == 0 || strcmp(lv, "true") == 0);
  free(lv);

  static const ds_http_header_t sse_headers[] = {{"Content-Type", "text/event-stream"},
                                                 {"Cache-Control", "no-cache"},
                                                 {"Connection", "keep-alive"},
                                                 {"X-Accel-Buffering", "no"},
                                                 {NULL, NULL}};
  if (strcmp(req->method, "HEAD") == 0) {
    ds_http_stream_start(req, 200, sse_headers);
    ds_http_stream_end(req);
    return;
  }
  ds_stream_t *s = NULL;
  int rc = ds_streams_get(api->streams, path, DS_STREAMS_WATCH, 0, &s);
  if (rc != 0) {
    respond_open_error(req, rc);
    return;
  }
  uint64_t start = from.from_now     ? ds_stream_next_offset(s)
                   : from.from_start ? ds_stream_first_offset(s)
                                     : from.last + 1;
  ds_store_damage_t dmg;
  ds_store_stream_t *sst = ds_stream_store(s);
  if (sst && start < ds_stream_next_offset(s) && ds_store_damage_at(sst, start, &dmg)) {
    /* the read would fail before its first event: say so instead of an empty 200 */
    char off[17];
    ds_offset_format(start, off);
    ds_error("agents", "reading %s from offset %s refused: its stored event %s is damaged (%s)",
             path, off, off, dmg.what);
    ds_streams_release(s);
    ds_http_respond_error(req, 500, NULL, "stored event %s of this stream is damaged (%s); "
                          "the server log names the file", off, dmg.what);
    return;
  }
  reader_t *r = ds_xcalloc(1, sizeof *r);
  r->api = api;
  r->req = req;
  r->stream = s;
  r->live = (unsigned)live;
  r->sub.on_publish = on_publish;
  r->sub.on_change = on_change;
  r->sub.ud = r;
  r->next = start;
  ds_stream_subscribe(s, &r->sub);
  r->anext = api->all_head;
  if (api->all_head) api->all_head->aprev = r;
  api->all_head = r;
  api->stats.readers_open++;
  ds_http_req_on_close(req, on_req_close, r);
  ds_http_stream_start(req, 200, sse_headers);
  /* The first body bytes, at once (agents-api.md §3): a buffering proxy holds a response
   * with headers only until body bytes come, which used to be the first event or keepalive. */
  if (ds_http_stream_write_chunk(req, api->open_frame) != 0) {
    reader_drop(r, "write failed");
    return;
  }
  r->last_out = uv_now(api->loop);
  pump(r);
}

typedef struct {
  ds_http_req_t *req;
  char off[17], next[17];
} pending_ack_t;

static void ack_closed(void *ud) {
  pending_ack_t *p = ud;
  p->req = NULL;
}

static void send_ack(ds_http_req_t *req, const char *off, const char *next) {
  ds_http_header_t h[] = {{"Stream-Offset", off}, {"Stream-Next-Offset", next}, {NULL, NULL}};
  ds_http_respond(req, 204, h, NULL, 0);
}

static void on_synced(void *ud, int status) {
  pending_ack_t *p = ud;
  if (p->req) {
    if (status == 0) send_ack(p->req, p->off, p->next);
    else ds_http_respond_error(p->req, status == DS_ENOSPC ? 507 : 500, NULL,
                               "storage sync failed: %s", ds_strerror(status));
  }
  free(p);
}

static void handle_post(ds_agents_api_t *api, ds_http_req_t *req, const char *path) {
  ds_stream_t *s = NULL;
  int rc = ds_streams_get(api->streams, path, DS_STREAMS_WATCH, 0, &s);
  if (rc != 0) {
    api->stats.append_errors++;
    respond_open_error(req, rc);
    return;
  }
  char err[256];
  uint64_t off = 0;
  int existed = ds_stream_exists(s);
  rc = ds_stream_append_event(s, req->body, req->body_len, &off, err, sizeof err);
  if (rc == DS_ECONFLICT && !existed) snprintf(err, sizeof err, "%s", CONFLICT_MSG);
  if (rc != 0) {
    api->stats.append_errors++;
    ds_streams_release(s);
    int status = rc == DS_EINVAL      ? 400
                 : rc == DS_ETOOBIG   ? 413
                 : rc == DS_ECONFLICT ? 409
                 : rc == DS_EGONE     ? 410
                 : rc == DS_ENOSPC    ? 507
                                      : 500;
    if (status >= 500) ds_error("agents", "append to %s failed: %s", path, err);
    ds_http_respond_error(req, status, NULL, "%s", err);
    return;
  }
  api->stats.appends++;
  pending_ack_t *p = ds_xmalloc(sizeof *p);
  p->req = req;
  ds_offset_format(off, p->off);
  ds_offset_format(off + 1, p->next);
  ds_http_req_on_close(req, ack_closed, p);
  /* Acknowledge once durable under the fsync policy (at once unless "always"). */
  rc = ds_store_sync(ds_streams_store(api->streams), on_synced, p);
  if (rc != 0) on_synced(p, rc);
}

void ds_agents_api_handle(ds_agents_api_t *api, ds_http_req_t *req) {
  const char *raw = req->path + 7; /* after "/agents" */
  size_t n = req->path_len - 7;
  if (n > 0) {
    raw++;
    n--;
  }
  int is_get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
  int is_post = strcmp(req->method, "POST") == 0;
  if (n == 0) {
    ds_http_respond_error(req, 404, NULL, "empty stream path: use /agents/<path>");
    return;
  }
  if (!is_get && !is_post) {
    ds_http_respond_error(req, 404, NULL, "no route for %s /agents/<path> (use GET, HEAD or POST)",
                          req->method);
    return;
  }
  char err[160];
  char *path = ds_agents_decode_path(raw, n, err, sizeof err);
  if (!path) {
    respond_400(req, err);
    return;
  }
  if (is_post) handle_post(api, req, path);
  else handle_get(api, req, path);
  free(path);
}

/* ------------------------------------------------------------------ lifecycle */

ds_agents_api_t *ds_agents_api_new(uv_loop_t *loop, ds_streams_t *streams, const ds_agents_opts_t *opts) {
  ds_agents_api_t *api = ds_xcalloc(1, sizeof *api);
  api->loop = loop;
  api->streams = streams;
  if (opts) api->opts = *opts;
  if (!api->opts.keepalive_ms) api->opts.keepalive_ms = 15000;
  if (!api->opts.subscriber_backlog_bytes) api->opts.subscriber_backlog_bytes = 4u << 20;
  api->keepalive_frame = ds_http_chunk_new(": keepalive\n\n", 13);
  api->open_frame = ds_http_chunk_new(": open\n\n", 8);
  uv_timer_init(loop, &api->keepalive);
  api->keepalive.data = api;
  api->timer_open = 1;
  uv_unref((uv_handle_t *)&api->keepalive); /* started by ka_arm() while live readers exist */
  return api;
}

void ds_agents_api_shutdown(ds_agents_api_t *api) {
  while (api->all_head) reader_finish(api->all_head);
  if (api->timer_open) {
    api->timer_open = 0;
    uv_close((uv_handle_t *)&api->keepalive, NULL);
  }
}

void ds_agents_api_free(ds_agents_api_t *api) {
  if (!api) return;
  ds_rbuf_unref(api->keepalive_frame);
  ds_rbuf_unref(api->open_frame);
  ds_rbuf_unref(api->chunk_src);
  ds_rbuf_unref(api->chunk);
  ds_buf_free(&api->batch);
  free(api);
}

void ds_agents_api_stats(const ds_agents_api_t *api, ds_agents_stats_t *out) { *out = api->stats; }
