/* protocol.c - the Durable Streams front end: lifecycle, routing, common headers.
 *
 * Provides: ds_protocol_new/handle/shutdown/free; routes /v1/stream/<path> by method to
 * the operation units and /v1/stream/__ds/... to the subscription APIs; builds every
 * response's browser security headers (X-Content-Type-Options: nosniff and
 * Cross-Origin-Resource-Policy on all responses, errors included) and answers
 * origin-less OPTIONS (the application answers CORS preflights and adds CORS headers).
 * Must not: implement operations itself (ops.c, read.c, subs.c do).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "protocol/pinternal.h"
#include "store/json.h"

void ds__hdrs_init(ds__hdrs_t *h, ds_arena_t *a) {
  h->n = 0;
  h->a = a;
  /* CORS (allowed origins, exposed headers) is the application's policy (app.c adds it
   * to every response); these two the protocol requires on every response regardless. */
  ds__hdr(h, "X-Content-Type-Options", "nosniff");
  ds__hdr(h, "Cross-Origin-Resource-Policy", "cross-origin");
}

void ds__hdr(ds__hdrs_t *h, const char *name, const char *value) {
  if (h->n >= DS__MAX_HDRS) {
    ds_error("protocol", "response header list full, dropping %s", name);
    return;
  }
  h->h[h->n].name = name;
  h->h[h->n].value = ds_arena_strndup(h->a, value, strlen(value));
  h->n++;
}

void ds__hdrf(ds__hdrs_t *h, const char *name, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  ds__hdr(h, name, tmp);
}

const ds_http_header_t *ds__hdrs_done(ds__hdrs_t *h) {
  h->h[h->n].name = NULL;
  h->h[h->n].value = NULL;
  return h->h;
}

/* Errors use the server-wide form {"error": "<one line>"} on both views. */
void ds__respond_err_h(ds_http_req_t *req, ds__hdrs_t *h, int status, const char *msg) {
  ds__hdr(h, "Content-Type", "application/json");
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_puts(&b, "{\"error\":");
  ds_json_write_string(&b, msg, strlen(msg));
  ds_buf_putc(&b, '}');
  ds_http_respond(req, status, ds__hdrs_done(h), b.data, b.len);
  ds_buf_free(&b);
}

void ds__respond_err(ds_http_req_t *req, int status, const char *msg) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  ds__respond_err_h(req, &h, status, msg);
  ds_arena_free(&a);
}

typedef struct durable_s {
  ds_http_req_t *req;
  int status;
  ds_arena_t a;
  ds__hdrs_t h;
} durable_t;

static void durable_closed(void *ud) {
  durable_t *d = ud;
  d->req = NULL;
}

static void durable_synced(void *ud, int rc) {
  durable_t *d = ud;
  if (d->req) {
    if (rc == 0) ds_http_respond(d->req, d->status, ds__hdrs_done(&d->h), NULL, 0);
    else ds__respond_err(d->req, rc == DS_ENOSPC ? 507 : 500, "Storage sync failed");
  }
  ds_arena_free(&d->a);
  free(d);
}

void ds__respond_durable(ds_protocol_t *p, ds_http_req_t *req, int status, ds__hdrs_t *h) {
  durable_t *d = ds_xcalloc(1, sizeof *d);
  d->req = req;
  d->status = status;
  ds_arena_init(&d->a);
  d->h.a = &d->a;
  for (size_t i = 0; i < h->n; i++) ds__hdr(&d->h, h->h[i].name, h->h[i].value);
  ds_http_req_on_close(req, durable_closed, d);
  int rc = ds_store_sync(ds_streams_store(p->streams), durable_synced, d);
  if (rc != 0) durable_synced(d, rc);
}

/* ---- /agents appends: closure guard and subscription wake-ups ---- */

/* Appends through /agents respect what the protocol says about the stream: a closed
 * stream takes no more events, a soft-deleted one is gone, and only a JSON stream can hold
 * events. */
static int agents_guard(void *ud, ds_stream_t *s, char *err, size_t errlen) {
  ds_protocol_t *p = ud;
  ds__pstream_t *st = ds__state_peek(p, ds_stream_path(s), NULL);
  if (!st || st->agents) return 0;
  if (st->soft_deleted) {
    snprintf(err, errlen, "stream was deleted");
    return DS_EGONE;
  }
  if (st->closed) {
    snprintf(err, errlen, "stream is closed");
    return DS_ECONFLICT;
  }
  if (st->mode != DS__M_JSON) {
    snprintf(err, errlen, "stream content type is %s, not application/json", st->ctype);
    return DS_ECONFLICT;
  }
  return 0;
}

static void wake_run(uv_timer_t *t) {
  ds_protocol_t *p = t->data;
  /* take the queue first: waking may append, which may queue more */
  char **paths = p->wake_paths;
  size_t n = p->nwake;
  p->wake_paths = NULL;
  p->nwake = p->wake_cap = 0;
  for (size_t i = 0; i < n; i++) {
    if (!p->shutting_down) ds__subs_on_append(p, paths[i]);
    free(paths[i]);
  }
  free(paths);
}

static void on_record(void *ud, const ds_published_t *rec) {
  ds_protocol_t *p = ud;
  /* protocol appends wake subscriptions themselves (ops.c); events come from /agents */
  if (rec->kind != DS_REC_EVENT || !p->subs || p->shutting_down) return;
  for (size_t i = 0; i < p->nwake; i++)
    if (strcmp(p->wake_paths[i], rec->path) == 0) return;
  if (p->nwake == p->wake_cap) {
    p->wake_cap = p->wake_cap ? p->wake_cap * 2 : 8;
    p->wake_paths = ds_xrealloc(p->wake_paths, p->wake_cap * sizeof *p->wake_paths);
  }
  p->wake_paths[p->nwake++] = ds_xstrdup(rec->path);
  if (!uv_is_active((uv_handle_t *)p->wake_timer)) uv_timer_start(p->wake_timer, wake_run, 0, 0);
}

static void free_handle(uv_handle_t *h) { free(h); }

ds_protocol_t *ds_protocol_new(uv_loop_t *loop, ds_streams_t *streams,
                               const ds_protocol_opts_t *opts) {
  ds_protocol_t *p = ds_xcalloc(1, sizeof *p);
  p->loop = loop;
  p->streams = streams;
  if (opts) p->opts = *opts;
  else p->opts.subscriptions = 1;
  if (!p->opts.long_poll_timeout_ms) p->opts.long_poll_timeout_ms = 30000;
  if (!p->opts.sse_reconnect_ms) p->opts.sse_reconnect_ms = 60000;
  const char *prefix = p->opts.prefix ? p->opts.prefix : "/v1/stream";
  snprintf(p->prefix, sizeof p->prefix, "%s", prefix);
  p->prefix_len = strlen(p->prefix);
  while (p->prefix_len > 0 && p->prefix[p->prefix_len - 1] == '/') p->prefix[--p->prefix_len] = 0;
  p->opts.prefix = p->prefix;
  p->tab_cap = 256;
  p->tab = ds_xcalloc(p->tab_cap, sizeof *p->tab);
  if (p->opts.subscriptions) p->subs = ds__subs_new(p);
  p->opts.state_dir = NULL; /* read once above (subs.c keeps a copy); the caller's string may go */
  p->wake_timer = ds_xmalloc(sizeof *p->wake_timer);
  uv_timer_init(loop, p->wake_timer);
  p->wake_timer->data = p;
  ds_streams_add_observer(streams, on_record, p);
  ds_streams_set_append_guard(streams, agents_guard, p);
  ds__sweep_start(p);
  return p;
}

void ds_protocol_shutdown(ds_protocol_t *p) {
  if (p->wake_timer) {
    ds_streams_remove_observer(p->streams, on_record, p);
    ds_streams_set_append_guard(p->streams, NULL, NULL);
    uv_close((uv_handle_t *)p->wake_timer, free_handle);
    p->wake_timer = NULL;
  }
  p->shutting_down = true;
  ds__sweep_stop(p);
  ds__reads_shutdown(p);
  if (p->subs) ds__subs_shutdown(p->subs);
}

void ds_protocol_free(ds_protocol_t *p) {
  if (!p) return;
  ds__sweep_stop(p); /* normally done by ds_protocol_shutdown; the caller runs the loop */
  if (p->wake_timer) { /* freed without a shutdown: detach, the loop frees the handle */
    ds_streams_remove_observer(p->streams, on_record, p);
    ds_streams_set_append_guard(p->streams, NULL, NULL);
    uv_close((uv_handle_t *)p->wake_timer, free_handle);
    p->wake_timer = NULL;
  }
  for (size_t i = 0; i < p->nwake; i++) free(p->wake_paths[i]);
  free(p->wake_paths);
  if (p->subs) ds__subs_free(p->subs);
  ds__reads_free(p);
  ds__state_free_all(p);
  free(p->tab);
  free(p);
}

bool ds_protocol_self_authorized(const ds_protocol_t *p, const ds_http_req_t *req) {
  static const char sp[] = "/__ds/subscriptions/";
  size_t n = req->path_len, pl = p->prefix_len, sl = sizeof sp - 1;
  if (!p->subs || strcmp(req->method, "POST") != 0 || n <= pl + sl ||
      memcmp(req->path, p->prefix, pl) != 0 || memcmp(req->path + pl, sp, sl) != 0)
    return false;
  const char *id = req->path + pl + sl, *end = req->path + n;
  const char *slash = memchr(id, '/', (size_t)(end - id));
  if (!slash || slash == id) return false;
  size_t al = (size_t)(end - slash - 1);
  const char *action = slash + 1;
  return (al == 8 && memcmp(action, "callback", 8) == 0) || (al == 3 && memcmp(action, "ack", 3) == 0) ||
         (al == 7 && memcmp(action, "release", 7) == 0);
}

void ds_protocol_handle(ds_protocol_t *p, ds_http_req_t *req) {
  const char *path = req->path;
  size_t n = req->path_len;
  if (n < p->prefix_len || memcmp(path, p->prefix, p->prefix_len) != 0 ||
      (n > p->prefix_len && path[p->prefix_len] != '/')) {
    ds__respond_err(req, 404, "Not found");
    return;
  }
  const char *rest = path + p->prefix_len;
  size_t rest_len = n - p->prefix_len;
  const char *m = req->method;

  if (strcmp(m, "OPTIONS") == 0) {
    ds_arena_t a;
    ds_arena_init(&a);
    ds__hdrs_t h;
    ds__hdrs_init(&h, &a);
    ds__hdr(&h, "Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, HEAD, OPTIONS");
    ds__hdr(&h, "Access-Control-Allow-Headers",
            "content-type, authorization, if-none-match, Stream-Seq, Stream-TTL, "
            "Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, "
            "Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset");
    ds__hdr(&h, "Access-Control-Max-Age", "600");
    ds_http_respond(req, 204, ds__hdrs_done(&h), NULL, 0);
    ds_arena_free(&a);
    return;
  }
  if (rest_len >= 5 && memcmp(rest, "/__ds", 5) == 0 && (rest_len == 5 || rest[5] == '/')) {
    if (!p->subs) {
      ds__respond_err(req, 404, "Subscriptions are disabled");
      return;
    }
    ds__subs_handle(p, req, rest + 5, rest_len - 5);
    return;
  }
  if (rest_len <= 1) {
    ds__respond_err(req, 404, "Stream path required");
    return;
  }
  char err[128];
  char *sp = ds__stream_path(p, rest + 1, rest_len - 1, err, sizeof err);
  if (!sp) {
    ds__respond_err(req, 400, err);
    return;
  }
  if (strcmp(m, "PUT") == 0) ds__op_put(p, req, sp);
  else if (strcmp(m, "POST") == 0) ds__op_post(p, req, sp);
  else if (strcmp(m, "GET") == 0) ds__op_get(p, req, sp);
  else if (strcmp(m, "HEAD") == 0) ds__op_head(p, req, sp);
  else if (strcmp(m, "DELETE") == 0) ds__op_delete(p, req, sp);
  else ds__respond_err(req, 405, "Method not allowed");
  free(sp);
}
