/* whook.c - outbound webhook POSTs for the subscription APIs.
 *
 * Provides: ds__whook_t: each POST first checks its URL against the egress policy
 * (net/egress.h: libcurl's URL parser, uv_getaddrinfo on the threadpool, every address
 * against the deny list), then runs on the shared curl-on-uv client (net/http_client.h)
 * pinned to the checked addresses, so neither a numeric host form nor a DNS answer that
 * changes after the check can reach an internal address. Reports (status, response body)
 * or -1 (transport error, refused destination: logged) to a callback on the loop.
 * Must not: know subscription semantics (subs.c decides what a response means).
 */
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/log.h"
#include "net/http_client.h"
#include "protocol/pwhook.h"

#define RESP_MAX 65536 /* answers are tiny JSON acks */

typedef struct hreq_s hreq_t;

struct ds__whook_s {
  uv_loop_t *loop;
  const ds_egress_t *policy;
  ds_http_client_t *client;
  hreq_t *reqs; /* resolving or in flight */
  void (*closed_cb)(void *ud);
  void *closed_ud;
};

struct hreq_s {
  hreq_t *prev, *next;
  ds__whook_t *h;
  ds_egress_req_t *check; /* while resolving */
  ds_http_xfer_t *xfer;   /* once started */
  char *url;
  ds_buf_t body;
  char **headers;
  size_t nheaders;
  long status;
  ds_buf_t resp;
  bool too_big;
  ds__whook_done_fn done;
  void *ud;
};

static void hreq_free(hreq_t *r) {
  ds__whook_t *h = r->h;
  if (r->prev) r->prev->next = r->next;
  else h->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  free(r->url);
  ds_buf_free(&r->body);
  for (size_t i = 0; i < r->nheaders; i++) free(r->headers[i]);
  free(r->headers);
  ds_buf_free(&r->resp);
  free(r);
}

static void finish(hreq_t *r, int status) {
  r->done(r->ud, status, r->resp.data ? r->resp.data : "", r->resp.len);
  hreq_free(r);
}

static void on_headers(ds_http_xfer_t *x, long status, const ds_http_header_t *hdrs, size_t n,
                       void *ud) {
  hreq_t *r = ud;
  r->status = status;
}

static void on_data(ds_http_xfer_t *x, const char *p, size_t n, void *ud) {
  hreq_t *r = ud;
  if (r->resp.len + n > RESP_MAX) {
    r->too_big = true; /* keep the status; the body is not an ack we can read */
    return;
  }
  ds_buf_append(&r->resp, p, n);
}

static void on_done(ds_http_xfer_t *x, const char *code, const char *msg, void *ud) {
  hreq_t *r = ud;
  r->xfer = NULL;
  if (strcmp(code, DS_HTTPC_OK) != 0) {
    ds_warn("subscriptions", "webhook delivery to %s failed: %s (%s)", r->url, msg, code);
    finish(r, -1);
    return;
  }
  if (r->too_big) ds_buf_reset(&r->resp);
  finish(r, (int)r->status);
}

static void on_checked(void *ud, bool ok, const char *why, const ds_egress_dest_t *dest) {
  hreq_t *r = ud;
  r->check = NULL;
  if (!ok) {
    ds_warn("subscriptions", "webhook delivery to %s refused: %s", r->url, why);
    finish(r, -1);
    return;
  }
  ds_http_request_t hr = {.method = "POST",
                          .url = r->url,
                          .headers = (const char *const *)r->headers,
                          .nheaders = r->nheaders,
                          .body = r->body.data ? r->body.data : "",
                          .body_len = r->body.len,
                          .connect_timeout_ms = 5000,
                          .total_timeout_ms = 10000,
                          .pin = dest->addrs,
                          .npin = dest->naddrs};
  static const ds_http_xfer_cbs_t cbs = {on_headers, on_data, on_done};
  if (ds_http_client_request(r->h->client, &hr, &cbs, r, &r->xfer) != 0) {
    ds_warn("subscriptions", "webhook delivery to %s could not start", r->url);
    r->xfer = NULL;
    finish(r, -1);
  }
}

ds__whook_t *ds__whook_new(uv_loop_t *loop, const ds_egress_t *policy) {
  ds__whook_t *h = ds_xcalloc(1, sizeof *h);
  h->loop = loop;
  h->policy = policy;
  if (ds_http_client_new(loop, &h->client) != 0) {
    free(h);
    return NULL;
  }
  return h;
}

int ds__whook_post(ds__whook_t *h, const char *url, const char *body, size_t len,
                   const char *const *headers, ds__whook_done_fn done, void *ud) {
  if (!h) return -1;
  hreq_t *r = ds_xcalloc(1, sizeof *r);
  r->h = h;
  r->done = done;
  r->ud = ud;
  r->url = ds_xstrdup(url);
  ds_buf_append(&r->body, body, len);
  for (size_t i = 0; headers && headers[i]; i++) r->nheaders++;
  r->headers = ds_xcalloc(r->nheaders + 1, sizeof *r->headers);
  for (size_t i = 0; i < r->nheaders; i++) r->headers[i] = ds_xstrdup(headers[i]);
  r->next = h->reqs;
  if (h->reqs) h->reqs->prev = r;
  h->reqs = r;
  char why[256];
  if (ds_egress_check_url(h->loop, h->policy, url, on_checked, r, &r->check, why, sizeof why) != 0) {
    ds_warn("subscriptions", "webhook delivery to %s refused: %s", url, why);
    hreq_free(r);
    return -1;
  }
  return 0;
}

static void client_closed(void *arg) {
  ds__whook_t *h = arg;
  void (*cb)(void *) = h->closed_cb;
  void *ud = h->closed_ud;
  free(h);
  if (cb) cb(ud);
}

void ds__whook_close(ds__whook_t *h, void (*closed)(void *ud), void *ud) {
  if (!h) return;
  h->closed_cb = closed;
  h->closed_ud = ud;
  /* abandon everything in flight; no callbacks */
  while (h->reqs) {
    hreq_t *r = h->reqs;
    if (r->check) ds_egress_cancel(r->check);
    if (r->xfer) ds_http_xfer_cancel(r->xfer);
    hreq_free(r);
  }
  ds_http_client_close(h->client, client_closed, h);
}
