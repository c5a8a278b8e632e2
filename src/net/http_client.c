/* http_client.c - libcurl multi-socket driven by libuv (see http_client.h).
 *
 * Provides: the curl <-> uv glue (socket_cb/timer_cb registering uv_poll and uv_timer
 * handles), per-transfer header/body delivery, stall detection and error classification.
 * Must not: call curl_multi_socket_action or curl_multi_remove_handle from inside a curl
 * callback (curl refuses recursive calls): cancellations and new requests made from a
 * callback are deferred until curl returns. Must not free memory a uv handle still uses:
 * every uv handle is freed from its close callback.
 */
#include "net/http_client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"

typedef struct ds_http_sock_s {
  uv_poll_t poll;
  curl_socket_t fd;
  ds_http_client_t *client;
  struct ds_http_sock_s *prev, *next; /* live sockets, for shutdown */
} ds_http_sock_t;

struct ds_http_xfer_s {
  ds_http_client_t *client;
  CURL *easy;
  uv_timer_t stall_timer; /* always initialised: its close callback frees the transfer */
  ds_http_xfer_cbs_t cbs;
  void *ud;
  struct curl_slist *req_headers;
  struct curl_slist *resolve;      /* CURLOPT_RESOLVE entry of a pinned transfer */
  struct sockaddr_storage *pin;    /* the only addresses a pinned transfer may connect to */
  size_t npin;
  char blocked[INET6_ADDRSTRLEN + 8]; /* an address the pin refused ("" if none) */
  char errbuf[CURL_ERROR_SIZE];
  /* headers of the current response block: "name\0value\0" pairs */
  ds_buf_t hdr_store;
  size_t nhdrs;
  long status;
  long stall_ms;
  uint64_t last_rx_ms;
  unsigned headers_done : 1;
  unsigned in_multi : 1;   /* added to the multi handle */
  unsigned cancelled : 1;  /* no more callbacks; removal may be pending */
  unsigned stalled : 1;
  unsigned released : 1;
  struct ds_http_xfer_s *prev, *next; /* client's transfer list */
};

struct ds_http_client_s {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  ds_http_xfer_t *xfers;    /* every unreleased transfer */
  ds_http_sock_t *socks;    /* every socket with a live uv_poll */
  size_t active;
  size_t open_handles;      /* uv handles initialised and not yet closed */
  int in_curl;              /* inside curl_multi_socket_action: curl callbacks may run */
  int deferred;             /* some transfer awaits add/remove after curl returns */
  int closing;
  void (*closed_cb)(void *arg);
  void *closed_arg;
};

static int g_curl_init_done;

/* ---- handle bookkeeping ---- */

static void client_maybe_free(ds_http_client_t *c) {
  if (!c->closing || c->open_handles > 0) return;
  void (*cb)(void *) = c->closed_cb;
  void *arg = c->closed_arg;
  free(c);
  if (cb) cb(arg);
}

static void on_timer_closed(uv_handle_t *h) {
  ds_http_client_t *c = h->data;
  c->open_handles--;
  client_maybe_free(c);
}

static void on_sock_closed(uv_handle_t *h) {
  ds_http_sock_t *s = h->data;
  ds_http_client_t *c = s->client;
  free(s);
  c->open_handles--;
  client_maybe_free(c);
}

static void on_xfer_closed(uv_handle_t *h) {
  ds_http_xfer_t *x = h->data;
  ds_http_client_t *c = x->client;
  ds_buf_free(&x->hdr_store);
  free(x);
  c->open_handles--;
  client_maybe_free(c);
}

static void sock_close(ds_http_sock_t *s) {
  ds_http_client_t *c = s->client;
  if (s->prev) s->prev->next = s->next; else c->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* Detaches the transfer from curl and from the client, then closes its timer (which frees
 * it). Safe only outside curl callbacks. */
static void xfer_release(ds_http_xfer_t *x) {
  ds_http_client_t *c = x->client;
  if (x->released) return;
  x->released = 1;
  if (x->in_multi) {
    curl_multi_remove_handle(c->multi, x->easy);
    x->in_multi = 0;
  }
  curl_easy_cleanup(x->easy);
  x->easy = NULL;
  curl_slist_free_all(x->req_headers);
  x->req_headers = NULL;
  curl_slist_free_all(x->resolve);
  x->resolve = NULL;
  free(x->pin);
  x->pin = NULL;
  if (x->prev) x->prev->next = x->next; else c->xfers = x->next;
  if (x->next) x->next->prev = x->prev;
  c->active--;
  uv_timer_stop(&x->stall_timer);
  uv_close((uv_handle_t *)&x->stall_timer, on_xfer_closed);
}

/* ---- curl -> uv ---- */

static void check_multi_info(ds_http_client_t *c);
static void run_deferred(ds_http_client_t *c);

static void socket_action(ds_http_client_t *c, curl_socket_t fd, int flags) {
  int running = 0;
  c->in_curl++;
  curl_multi_socket_action(c->multi, fd, flags, &running);
  c->in_curl--;
  if (c->in_curl == 0) {
    check_multi_info(c);
    if (!c->closing) run_deferred(c);
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  ds_http_sock_t *s = h->data;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  socket_action(s->client, s->fd, flags);
}

static void on_timeout(uv_timer_t *t) {
  ds_http_client_t *c = t->data;
  socket_action(c, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_SOCKETFUNCTION: only registers interest; never calls back into curl. */
static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  ds_http_client_t *c = userp;
  ds_http_sock_t *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      sock_close(s);
      curl_multi_assign(c->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = ds_xcalloc(1, sizeof *s);
    s->fd = fd;
    s->client = c;
    if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    c->open_handles++;
    s->poll.data = s;
    s->next = c->socks;
    if (c->socks) c->socks->prev = s;
    c->socks = s;
    curl_multi_assign(c->multi, fd, s);
  }
  int ev = 0;
  if (what & CURL_POLL_IN) ev |= UV_READABLE;
  if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: arms the single uv timer; a 0 ms timeout runs on the next loop
 * iteration, which is how curl_multi_add_handle kicks a transfer off. */
static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  ds_http_client_t *c = userp;
  if (c->closing) return 0;
  if (timeout_ms < 0) uv_timer_stop(&c->timer);
  else uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- per-transfer curl callbacks ---- */

static const char *classify(CURLcode rc) {
  switch (rc) {
  case CURLE_OK: return DS_HTTPC_OK;
  case CURLE_COULDNT_CONNECT: return DS_HTTPC_ECONNREFUSED;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: return DS_HTTPC_EDNS;
  case CURLE_OPERATION_TIMEDOUT: return DS_HTTPC_ETIMEDOUT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_USE_SSL_FAILED: return DS_HTTPC_ETLS;
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
  case CURLE_PARTIAL_FILE:
  case CURLE_GOT_NOTHING:
  case CURLE_HTTP2_STREAM: return DS_HTTPC_ECLOSED;
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_BAD_CONTENT_ENCODING:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_HTTP2: return DS_HTTPC_EPROTO;
  default: return DS_HTTPC_EIO;
  }
}

static void deliver_headers(ds_http_xfer_t *x) {
  ds_http_header_t stackv[32];
  ds_http_header_t *v = x->nhdrs <= 32 ? stackv : ds_xmalloc(x->nhdrs * sizeof *v);
  const char *p = x->hdr_store.data;
  for (size_t i = 0; i < x->nhdrs; i++) {
    v[i].name = p;
    p += strlen(p) + 1;
    v[i].value = p;
    p += strlen(p) + 1;
  }
  x->headers_done = 1;
  if (x->cbs.on_headers) x->cbs.on_headers(x, x->status, v, x->nhdrs, x->ud);
  if (v != stackv) free(v);
}

static size_t header_cb(char *p, size_t size, size_t nitems, void *ud) {
  ds_http_xfer_t *x = ud;
  size_t n = size * nitems;
  if (x->cancelled) return 0;
  x->last_rx_ms = uv_now(x->client->loop);
  size_t len = n;
  while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n')) len--;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    /* a new response block (1xx, then the final one): start over */
    ds_buf_reset(&x->hdr_store);
    x->nhdrs = 0;
    const char *sp = memchr(p, ' ', len);
    x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    return n;
  }
  if (len == 0) {
    if (x->status >= 200 && !x->headers_done) deliver_headers(x);
    return x->cancelled ? 0 : n;
  }
  const char *colon = memchr(p, ':', len);
  if (!colon) return n; /* obsolete folding or junk: ignored */
  size_t nlen = (size_t)(colon - p);
  const char *v = colon + 1, *end = p + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
  ds_buf_append(&x->hdr_store, p, nlen);
  ds_buf_putc(&x->hdr_store, '\0');
  ds_buf_append(&x->hdr_store, v, (size_t)(end - v));
  ds_buf_putc(&x->hdr_store, '\0');
  x->nhdrs++;
  return n;
}

static size_t write_cb(char *p, size_t size, size_t nitems, void *ud) {
  ds_http_xfer_t *x = ud;
  size_t n = size * nitems;
  if (x->cancelled) return 0;
  x->last_rx_ms = uv_now(x->client->loop);
  if (!x->headers_done) deliver_headers(x);
  if (x->cancelled) return 0;
  if (n > 0 && x->cbs.on_data) x->cbs.on_data(x, p, n, x->ud);
  return x->cancelled ? 0 : n;
}

static void finish(ds_http_xfer_t *x, const char *code, const char *msg) {
  if (x->in_multi) {
    curl_multi_remove_handle(x->client->multi, x->easy);
    x->in_multi = 0;
  }
  if (!x->cancelled) {
    if (strcmp(code, DS_HTTPC_OK) == 0 && !x->headers_done) {
      curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
      deliver_headers(x);
    }
    if (!x->cancelled && x->cbs.on_done) {
      x->cancelled = 1; /* on_done is the last callback */
      x->cbs.on_done(x, code, msg, x->ud);
    }
  }
  xfer_release(x);
}

static void check_multi_info(ds_http_client_t *c) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE) continue;
    ds_http_xfer_t *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    CURLcode rc = m->data.result;
    const char *code = classify(rc);
    char msg[CURL_ERROR_SIZE + 64];
    if (rc == CURLE_OK) snprintf(msg, sizeof msg, "ok");
    else if (x->blocked[0]) {
      code = DS_HTTPC_EBLOCKED;
      snprintf(msg, sizeof msg, "refused to connect to %s: not one of the checked addresses",
               x->blocked);
    } else snprintf(msg, sizeof msg, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    finish(x, code, msg);
    if (c->closing) return; /* on_done closed the client: the multi handle is gone */
  }
}

static void on_stall_timer(uv_timer_t *t) {
  ds_http_xfer_t *x = t->data;
  uint64_t now = uv_now(x->client->loop);
  uint64_t idle = now - x->last_rx_ms;
  if (idle < (uint64_t)x->stall_ms) {
    uv_timer_start(&x->stall_timer, on_stall_timer, (uint64_t)x->stall_ms - idle, 0);
    return;
  }
  char msg[96];
  snprintf(msg, sizeof msg, "no data received for %ld ms", x->stall_ms);
  x->stalled = 1;
  finish(x, DS_HTTPC_ESTALLED, msg);
}

/* Adds queued transfers and removes cancelled ones once curl is not on the stack. */
static void run_deferred(ds_http_client_t *c) {
  while (c->deferred) {
    c->deferred = 0;
    ds_http_xfer_t *x = c->xfers, *next;
    for (; x; x = next) {
      next = x->next;
      if (x->cancelled && !x->released) {
        xfer_release(x);
        c->deferred = 1; /* list changed: rescan */
        break;
      }
      if (!x->in_multi && !x->released) {
        if (curl_multi_add_handle(c->multi, x->easy) == CURLM_OK) {
          x->in_multi = 1;
        } else {
          finish(x, DS_HTTPC_EIO, "curl_multi_add_handle failed");
          c->deferred = 1;
          break;
        }
      }
    }
  }
}

/* ---- pinning ---- */

static bool same_addr(const struct sockaddr *a, const struct sockaddr_storage *pin) {
  if (a->sa_family != pin->ss_family) return false;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)pin;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)pin;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
  }
  return false;
}

static void addr_text(const struct sockaddr *a, char *out, size_t n) {
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (a->sa_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, ip, sizeof ip);
    port = ntohs(((const struct sockaddr_in *)a)->sin_port);
    snprintf(out, n, "%s:%d", ip, port);
  } else if (a->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, ip, sizeof ip);
    port = ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    snprintf(out, n, "[%s]:%d", ip, port);
  } else {
    snprintf(out, n, "?");
  }
}

/* CURLOPT_OPENSOCKETFUNCTION of a pinned transfer: whatever made curl pick an address (its
 * DNS cache, a literal in the URL, a proxy setting), only a pinned one gets a socket. */
static curl_socket_t pinned_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
  ds_http_xfer_t *x = clientp;
  if (purpose == CURLSOCKTYPE_IPCXN) {
    bool ok = false;
    for (size_t i = 0; i < x->npin && !ok; i++) ok = same_addr(&a->addr, &x->pin[i]);
    if (!ok) {
      addr_text(&a->addr, x->blocked, sizeof x->blocked);
      return CURL_SOCKET_BAD;
    }
  }
  return socket(a->family, a->socktype, a->protocol);
}

/* "host:port:addr[,addr...]" for CURLOPT_RESOLVE, so curl never resolves the name itself.
 * An IP literal in the URL is not resolved by curl anyway (pinned_socket checks it). */
static int pin_setup(ds_http_xfer_t *x, CURL *e, const char *url, const ds_http_request_t *req) {
  x->pin = ds_xcalloc(req->npin, sizeof *x->pin);
  memcpy(x->pin, req->pin, req->npin * sizeof *x->pin);
  x->npin = req->npin;
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, pinned_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
  curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL;
  int rc = DS_EINVAL;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    rc = 0;
    if (host[0] != '[') {
      ds_buf_t r = DS_BUF_INIT;
      ds_buf_printf(&r, "%s:%s:", host, port);
      for (size_t i = 0; i < x->npin; i++) {
        char ip[INET6_ADDRSTRLEN];
        const struct sockaddr_storage *p = &x->pin[i];
        if (i) ds_buf_putc(&r, ',');
        if (p->ss_family == AF_INET6) {
          inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)p)->sin6_addr, ip, sizeof ip);
          ds_buf_printf(&r, "[%s]", ip);
        } else {
          inet_ntop(AF_INET, &((const struct sockaddr_in *)p)->sin_addr, ip, sizeof ip);
          ds_buf_puts(&r, ip);
        }
      }
      x->resolve = curl_slist_append(NULL, ds_buf_cstr(&r));
      ds_buf_free(&r);
      if (!x->resolve) rc = DS_ENOMEM;
      else curl_easy_setopt(e, CURLOPT_RESOLVE, x->resolve);
    }
  }
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

/* ---- public API ---- */

int ds_http_client_new(uv_loop_t *loop, ds_http_client_t **out) {
  if (!g_curl_init_done) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return DS_EIO;
    g_curl_init_done = 1;
  }
  ds_http_client_t *c = ds_xcalloc(1, sizeof *c);
  c->loop = loop;
  c->multi = curl_multi_init();
  if (!c->multi) {
    free(c);
    return DS_ENOMEM;
  }
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->open_handles = 1;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  *out = c;
  return 0;
}

size_t ds_http_client_active(const ds_http_client_t *c) { return c->active; }

int ds_http_client_request(ds_http_client_t *c, const ds_http_request_t *req, const ds_http_xfer_cbs_t *cbs,
                           void *ud, ds_http_xfer_t **out) {
  if (c->closing) return DS_ECLOSED;
  if (!req || !req->url || !cbs) return DS_EINVAL;
  if (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0) return DS_EINVAL;
  CURL *e = curl_easy_init();
  if (!e) return DS_ENOMEM;
  ds_http_xfer_t *x = ds_xcalloc(1, sizeof *x);
  x->client = c;
  x->easy = e;
  x->cbs = *cbs;
  x->ud = ud;
  x->stall_ms = req->stall_timeout_ms > 0 ? req->stall_timeout_ms : 0;
  ds_buf_init(&x->hdr_store);

  curl_easy_setopt(e, CURLOPT_URL, req->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  /* HTTP/1.1: one connection per transfer, so cancelling closes it and the upstream stops
   * generating (and billing) at once. */
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  if (req->connect_timeout_ms > 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
  if (req->total_timeout_ms > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->total_timeout_ms);
  if (req->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body);
  }
  if (req->method) {
    if (strcmp(req->method, "GET") == 0 && !req->body) curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    else if (strcmp(req->method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (!(strcmp(req->method, "POST") == 0 && req->body)) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
  }
  /* never wait for "100 Continue": servers seldom send it and it costs a round trip */
  struct curl_slist *sl = curl_slist_append(NULL, "Expect:");
  for (size_t i = 0; i < req->nheaders && sl; i++) {
    struct curl_slist *n2 = curl_slist_append(sl, req->headers[i]);
    if (!n2) {
      curl_slist_free_all(sl);
      sl = NULL;
    } else {
      sl = n2;
    }
  }
  int prc = sl && req->npin ? pin_setup(x, e, req->url, req) : 0;
  if (!sl || prc != 0) {
    curl_slist_free_all(sl);
    curl_slist_free_all(x->resolve);
    free(x->pin);
    curl_easy_cleanup(e);
    ds_buf_free(&x->hdr_store);
    free(x);
    return sl ? prc : DS_ENOMEM;
  }
  x->req_headers = sl;
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, sl);

  uv_timer_init(c->loop, &x->stall_timer);
  x->stall_timer.data = x;
  c->open_handles++;
  x->last_rx_ms = uv_now(c->loop);
  if (x->stall_ms > 0) uv_timer_start(&x->stall_timer, on_stall_timer, (uint64_t)x->stall_ms, 0);

  x->next = c->xfers;
  if (c->xfers) c->xfers->prev = x;
  c->xfers = x;
  c->active++;
  if (c->in_curl) {
    c->deferred = 1; /* added once curl returns */
  } else if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
    x->cancelled = 1;
    xfer_release(x);
    return DS_EIO;
  } else {
    x->in_multi = 1;
  }
  *out = x;
  return 0;
}

void ds_http_xfer_cancel(ds_http_xfer_t *x) {
  if (!x || x->released) return;
  x->cancelled = 1;
  if (x->client->in_curl) x->client->deferred = 1;
  else xfer_release(x);
}

void ds_http_client_close(ds_http_client_t *c, void (*closed_cb)(void *arg), void *arg) {
  if (c->closing) return;
  c->closed_cb = closed_cb;
  c->closed_arg = arg;
  /* cancel every transfer silently; closing is not allowed from inside curl callbacks */
  while (c->xfers) {
    c->xfers->cancelled = 1;
    xfer_release(c->xfers);
  }
  c->closing = 1;
  curl_multi_cleanup(c->multi); /* closes pooled connections (may report CURL_POLL_REMOVE) */
  c->multi = NULL;
  while (c->socks) sock_close(c->socks);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
