/* whook.c - outbound webhook POSTs for the subscription APIs (libcurl multi on libuv).
 *
 * Provides: ds__whook_t, a small asynchronous HTTP client that POSTs a JSON body with
 * extra headers and reports (status, response body) or a transport error to a callback
 * on the loop thread. curl's socket and timer callbacks only (re)arm uv handles; all
 * curl_multi_socket_action calls run from uv callbacks, never from inside curl.
 * Must not: know subscription semantics (subs.c decides what a response means).
 */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/log.h"
#include "protocol/pwhook.h"

struct ds__whook_s {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  bool closing;
  int pending_handles; /* uv handles not yet closed */
  void (*closed_cb)(void *ud);
  void *closed_ud;
  struct req_s *reqs; /* in flight */
};

typedef struct req_s {
  struct req_s *prev, *next;
  ds__whook_t *h;
  CURL *easy;
  struct curl_slist *hdrs;
  char *body;
  ds_buf_t resp;
  ds__whook_done_fn done;
  void *ud;
} req_t;

typedef struct sock_s {
  uv_poll_t poll;
  curl_socket_t fd;
  ds__whook_t *h;
} sock_t;

static void maybe_closed(ds__whook_t *h) {
  if (h->closing && h->pending_handles == 0) {
    void (*cb)(void *) = h->closed_cb;
    void *ud = h->closed_ud;
    free(h);
    if (cb) cb(ud);
  }
}

static void req_free(req_t *r) {
  if (r->prev) r->prev->next = r->next;
  else r->h->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  curl_slist_free_all(r->hdrs);
  free(r->body);
  ds_buf_free(&r->resp);
  free(r);
}

static void check_done(ds__whook_t *h) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *e = m->easy_handle;
    req_t *r = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    CURLcode res = m->data.result;
    curl_multi_remove_handle(h->multi, e);
    curl_easy_cleanup(e);
    if (res != CURLE_OK) {
      ds_warn("subscriptions", "webhook delivery failed: %s", curl_easy_strerror(res));
      code = -1;
    }
    r->done(r->ud, (int)code, r->resp.data ? r->resp.data : "", r->resp.len);
    req_free(r);
  }
}

static void sock_close_cb(uv_handle_t *hd) {
  sock_t *s = hd->data;
  ds__whook_t *h = s->h;
  free(s);
  h->pending_handles--;
  maybe_closed(h);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_t *s = p->data;
  int flags = status < 0 ? CURL_CSELECT_ERR : 0, running;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  ds__whook_t *h = s->h;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  check_done(h);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)e;
  ds__whook_t *h = userp;
  sock_t *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      h->pending_handles++;
      uv_close((uv_handle_t *)&s->poll, sock_close_cb);
      curl_multi_assign(h->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = ds_xcalloc(1, sizeof *s);
    s->fd = fd;
    s->h = h;
    uv_poll_init_socket(h->loop, &s->poll, fd);
    s->poll.data = s;
    curl_multi_assign(h->multi, fd, s);
  }
  int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static void on_timeout(uv_timer_t *t) {
  ds__whook_t *h = t->data;
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  (void)m;
  ds__whook_t *h = userp;
  if (h->closing) return 0;
  if (timeout_ms < 0) uv_timer_stop(&h->timer);
  else uv_timer_start(&h->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

static size_t write_cb(char *p, size_t sz, size_t n, void *ud) {
  req_t *r = ud;
  if (r->resp.len + sz * n > 65536) return 0; /* responses are tiny JSON acks */
  ds_buf_append(&r->resp, p, sz * n);
  return sz * n;
}

ds__whook_t *ds__whook_new(uv_loop_t *loop) {
  static int global_done;
  if (!global_done) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    global_done = 1;
  }
  ds__whook_t *h = ds_xcalloc(1, sizeof *h);
  h->loop = loop;
  h->multi = curl_multi_init();
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  return h;
}

int ds__whook_post(ds__whook_t *h, const char *url, const char *body, size_t len,
                   const char *const *headers, ds__whook_done_fn done, void *ud) {
  if (h->closing) return -1;
  req_t *r = ds_xcalloc(1, sizeof *r);
  r->h = h;
  r->done = done;
  r->ud = ud;
  r->body = ds_xmalloc(len + 1);
  memcpy(r->body, body, len);
  r->body[len] = 0;
  for (size_t i = 0; headers && headers[i]; i++) r->hdrs = curl_slist_append(r->hdrs, headers[i]);
  r->hdrs = curl_slist_append(r->hdrs, "Expect:");
  CURL *e = curl_easy_init();
  r->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)len);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  r->next = h->reqs;
  if (h->reqs) h->reqs->prev = r;
  h->reqs = r;
  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    curl_easy_cleanup(e);
    req_free(r);
    return -1;
  }
  return 0;
}

static void timer_close_cb(uv_handle_t *hd) {
  ds__whook_t *h = hd->data;
  h->pending_handles--;
  maybe_closed(h);
}

void ds__whook_close(ds__whook_t *h, void (*closed)(void *ud), void *ud) {
  if (!h) return;
  h->closing = true;
  h->closed_cb = closed;
  h->closed_ud = ud;
  /* abandon in-flight requests; their callbacks are not called */
  while (h->reqs) {
    req_t *r = h->reqs;
    curl_multi_remove_handle(h->multi, r->easy);
    curl_easy_cleanup(r->easy);
    req_free(r);
  }
  curl_multi_cleanup(h->multi); /* CURL_POLL_REMOVE closes the polls */
  h->multi = NULL;
  uv_timer_stop(&h->timer);
  h->pending_handles++;
  uv_close((uv_handle_t *)&h->timer, timer_close_cb);
}
