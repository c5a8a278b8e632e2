/* ws_client.c - WebSocket client: libwebsockets 4.1 on the server's (foreign) uv loop.
 *
 * Provides: the ds_ws_client_t / ds_ws_t implementation of ws_client.h and the pure
 * fragment reassembly queue ds_ws_rx_t.
 * Must not: call Lua, block, or destroy the lws context from inside an lws callback.
 * Ownership: a ds_ws_t lives while its owner holds it (until ds_ws_release) or lws still
 * points at it (opaque user data, cleared on detach); whichever lets go last frees it.
 * Its timer is a separate allocation closed with uv_close, freed in the close callback.
 */
#include <uv.h> /* before libwebsockets.h: lws_uv_* declarations need it */
#include <libwebsockets.h>

#include "net/ws_client.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_MAX_MESSAGE ((size_t)16 << 20)

/* ---------------- reassembly ---------------- */

void ds_ws_rx_init(ds_ws_rx_t *rx, size_t max_message) {
  memset(rx, 0, sizeof *rx);
  rx->max_message = max_message ? max_message : DEFAULT_MAX_MESSAGE;
}

int ds_ws_rx_feed(ds_ws_rx_t *rx, const void *p, size_t n, int final, int binary) {
  if (!rx->in_msg) {
    rx->in_msg = 1;
    rx->cur_binary = binary ? 1 : 0;
    rx->cur_len = 0;
  }
  if (n > rx->max_message - rx->cur_len) {
    /* drop the partial message; the stream is unusable from here, the caller closes */
    free(rx->cur);
    rx->cur = NULL;
    rx->cur_len = rx->cur_cap = 0;
    rx->in_msg = 0;
    return DS_ETOOBIG;
  }
  if (rx->cur_len + n + 1 > rx->cur_cap) {
    size_t cap = rx->cur_cap ? rx->cur_cap : 256;
    while (cap < rx->cur_len + n + 1) cap *= 2;
    rx->cur = ds_xrealloc(rx->cur, cap);
    rx->cur_cap = cap;
  }
  if (n) memcpy(rx->cur + rx->cur_len, p, n);
  rx->cur_len += n;
  if (!final) return 0;
  ds_ws_msg_t *m = ds_xmalloc(sizeof *m + rx->cur_len + 1);
  m->next = NULL;
  m->binary = rx->cur_binary;
  m->len = rx->cur_len;
  if (rx->cur_len) memcpy(m->data, rx->cur, rx->cur_len);
  m->data[rx->cur_len] = '\0';
  if (rx->tail) rx->tail->next = m; else rx->head = m;
  rx->tail = m;
  rx->count++;
  rx->bytes += m->len;
  rx->in_msg = 0;
  rx->cur_len = 0;
  /* keep a small buffer for the next message, give back a big one */
  if (rx->cur_cap > 65536) {
    free(rx->cur);
    rx->cur = NULL;
    rx->cur_cap = 0;
  }
  return 0;
}

ds_ws_msg_t *ds_ws_rx_pop(ds_ws_rx_t *rx) {
  ds_ws_msg_t *m = rx->head;
  if (!m) return NULL;
  rx->head = m->next;
  if (!rx->head) rx->tail = NULL;
  rx->count--;
  rx->bytes -= m->len;
  m->next = NULL;
  return m;
}

void ds_ws_rx_free(ds_ws_rx_t *rx) {
  ds_ws_msg_t *m;
  while ((m = ds_ws_rx_pop(rx))) free(m);
  free(rx->cur);
  rx->cur = NULL;
  rx->cur_len = rx->cur_cap = 0;
  rx->in_msg = 0;
}

/* ---------------- client and connection structs ---------------- */

typedef struct frame_s {
  struct frame_s *next;
  int ping;
  size_t len;
  unsigned char buf[]; /* LWS_PRE headroom + len bytes */
} frame_t;

struct ds_ws_client_s {
  uv_loop_t *loop;
  struct lws_context *ctx; /* NULL until the first connect; lws clears it when gone */
  int ctx_created;
  int shut;
  ds_ws_t *all; /* every connection struct not yet freed */
  long held;    /* connections not yet released by their owner */
};

struct ds_ws_s {
  ds_ws_client_t *c;
  ds_ws_t *prev, *next;
  struct lws *wsi; /* NULL once detached from lws */
  int state;
  int released;
  int in_connect; /* inside ds_ws_connect: no on_event yet */
  int insecure;
  uv_getaddrinfo_t *gai; /* name resolution in flight (it points at us) */
  ds_ws_event_fn on_event;
  void *ud;
  /* connect parameters (kept until free: lws may read them while connecting) */
  char *host, *path;
  int port, tls;
  char **hdr; /* "name:" and value, alternating */
  size_t nhdr;
  /* traffic */
  frame_t *txh, *txt;
  ds_ws_rx_t rx;
  uint64_t pongs;
  int close_requested;
  int close_code;
  char close_reason[124];
  /* how it ended (first end wins) */
  int ended;
  char code[16];
  char *msg;
  int http_status;
  int peer_close_code;
  /* timers */
  uv_timer_t *timer; /* connect timeout, then idle checks; NULL once closed */
  long connect_timeout_ms;
  long idle_ms;
  uint64_t last_activity;
  int waiting;
};

static void notify(ds_ws_t *ws) {
  if (!ws->released && !ws->in_connect && ws->on_event) ws->on_event(ws, ws->ud);
}

static void timer_free_cb(uv_handle_t *h) { free(h); }

static void timer_close(ds_ws_t *ws) {
  if (!ws->timer) return;
  uv_timer_stop(ws->timer);
  uv_close((uv_handle_t *)ws->timer, timer_free_cb);
  ws->timer = NULL;
}

static void ws_free(ds_ws_t *ws) {
  ds_ws_client_t *c = ws->c;
  if (c) {
    if (ws->prev) ws->prev->next = ws->next; else c->all = ws->next;
    if (ws->next) ws->next->prev = ws->prev;
  }
  timer_close(ws);
  while (ws->txh) {
    frame_t *f = ws->txh;
    ws->txh = f->next;
    free(f);
  }
  ds_ws_rx_free(&ws->rx);
  for (size_t i = 0; i < 2 * ws->nhdr; i++) free(ws->hdr[i]);
  free(ws->hdr);
  free(ws->host);
  free(ws->path);
  free(ws->msg);
  free(ws);
}

/* Records how the connection ended (first call wins). */
static void ws_end(ds_ws_t *ws, const char *code, const char *msg, int http_status) {
  if (ws->ended) return;
  ws->ended = 1;
  snprintf(ws->code, sizeof ws->code, "%s", code);
  ws->msg = ds_xstrdup(msg && *msg ? msg : code);
  for (char *p = ws->msg; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  ws->http_status = http_status;
}

/* lws is done with the connection: the struct no longer belongs to it. */
static void ws_detach(ds_ws_t *ws, const char *code, const char *msg) {
  if (ws->wsi) {
    lws_set_opaque_user_data(ws->wsi, NULL);
    ws->wsi = NULL;
  }
  ws_end(ws, code, msg, 0);
  ws->state = DS_WS_ENDED;
  timer_close(ws);
  if (ws->released) {
    if (!ws->gai) ws_free(ws); /* else on_resolved frees it */
    return;
  }
  notify(ws);
}

/* Asks lws to drop a connection soon (safe outside lws callbacks). */
static void ws_kill(ds_ws_t *ws) {
  if (ws->wsi) lws_set_timeout(ws->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* ---------------- timers ---------------- */

static void arm(ds_ws_t *ws, long ms);

static void on_timer(uv_timer_t *t) {
  ds_ws_t *ws = t->data;
  if (ws->state == DS_WS_CONNECTING) {
    char m[96];
    snprintf(m, sizeof m, "WebSocket connect timed out after %ld ms", ws->connect_timeout_ms);
    ws_end(ws, DS_WS_ETIMEDOUT, m, 0);
    ws->state = DS_WS_CLOSING;
    ws_kill(ws);
    notify(ws);
    return;
  }
  if (ws->state != DS_WS_OPEN || ws->idle_ms <= 0) return;
  uint64_t now = uv_now(ws->c->loop);
  if (ws->waiting || ws->txh || ws->rx.head) {
    arm(ws, ws->idle_ms);
    return;
  }
  uint64_t idle = now - ws->last_activity;
  if (idle < (uint64_t)ws->idle_ms) {
    arm(ws, (long)((uint64_t)ws->idle_ms - idle));
    return;
  }
  char m[96];
  snprintf(m, sizeof m, "WebSocket closed after %ld ms idle", ws->idle_ms);
  ws_end(ws, DS_WS_EIDLE, m, 0);
  ds_ws_close(ws, 1000, "idle");
  notify(ws);
}

static void arm(ds_ws_t *ws, long ms) {
  if (!ws->timer) return;
  uv_timer_start(ws->timer, on_timer, (uint64_t)(ms > 0 ? ms : 1), 0);
}

static void touch(ds_ws_t *ws) {
  if (ws->c && ws->c->loop) ws->last_activity = uv_now(ws->c->loop);
}

/* ---------------- lws callback: record, queue, notify; never Lua ---------------- */

static void classify_error(ds_ws_t *ws, struct lws *wsi, const char *in) {
  unsigned int status = lws_http_client_http_response(wsi);
  char m[256];
  const char *why = in && *in ? in : "connection failed";
  if (status && status != 101) {
    snprintf(m, sizeof m, "WebSocket handshake rejected: HTTP %u", status);
    ws_end(ws, DS_WS_EHANDSHAKE, m, (int)status);
  } else if (strncmp(why, "HS:", 3) == 0 || strstr(why, "upgrade") || strstr(why, "handshake") ||
             strstr(why, "101")) {
    snprintf(m, sizeof m, "WebSocket handshake failed: %s", why);
    ws_end(ws, DS_WS_EHANDSHAKE, m, 0);
  } else if (strcasestr(why, "ssl") || strcasestr(why, "tls") || strcasestr(why, "certificate")) {
    snprintf(m, sizeof m, "TLS failure: %s", why);
    ws_end(ws, DS_WS_ETLS, m, 0);
  } else {
    snprintf(m, sizeof m, "cannot connect to %s:%d: %s", ws->host, ws->port, why);
    ws_end(ws, DS_WS_ECONNREFUSED, m, 0);
  }
}

static int on_writeable(ds_ws_t *ws, struct lws *wsi) {
  frame_t *f = ws->txh;
  if (f) {
    ws->txh = f->next;
    if (!ws->txh) ws->txt = NULL;
    int n = lws_write(wsi, f->buf + LWS_PRE, f->len, f->ping ? LWS_WRITE_PING : LWS_WRITE_TEXT);
    int short_write = n < (int)f->len;
    free(f);
    if (short_write) {
      ws_end(ws, DS_WS_ECLOSED, "WebSocket write failed", 0);
      return -1;
    }
    if (ws->txh || ws->close_requested) lws_callback_on_writable(wsi);
    return 0;
  }
  if (ws->close_requested) {
    lws_close_reason(wsi, (enum lws_close_status)ws->close_code, (unsigned char *)ws->close_reason,
                     strlen(ws->close_reason));
    return -1;
  }
  return 0;
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  ds_ws_t *ws = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  if (!ws) return 0;
  switch (reason) {
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
    unsigned char **p = (unsigned char **)in, *end = (*p) + len;
    for (size_t i = 0; i < ws->nhdr; i++) {
      const char *v = ws->hdr[2 * i + 1];
      if (lws_add_http_header_by_name(wsi, (const unsigned char *)ws->hdr[2 * i], (const unsigned char *)v,
                                      (int)strlen(v), p, end))
        return -1;
    }
    return 0;
  }
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (ws->state == DS_WS_CONNECTING) ws->state = DS_WS_OPEN;
    touch(ws);
    if (ws->timer) {
      uv_timer_stop(ws->timer);
      if (ws->idle_ms > 0) arm(ws, ws->idle_ms);
    }
    if (ws->txh || ws->close_requested) lws_callback_on_writable(wsi);
    notify(ws);
    return 0;
  case LWS_CALLBACK_CLIENT_RECEIVE: {
    int final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
    touch(ws);
    if (ds_ws_rx_feed(&ws->rx, in, len, final, lws_frame_is_binary(wsi)) != 0) {
      char m[96];
      snprintf(m, sizeof m, "WebSocket message larger than %zu bytes", ws->rx.max_message);
      ws_end(ws, DS_WS_ETOOBIG, m, 0);
      lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
      notify(ws);
      return -1;
    }
    if (final) notify(ws);
    return 0;
  }
  case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
    ws->pongs++;
    touch(ws);
    notify(ws);
    return 0;
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    return on_writeable(ws, wsi);
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (in && len >= 2) {
      const unsigned char *b = in;
      ws->peer_close_code = (b[0] << 8) | b[1];
    }
    return 0;
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    classify_error(ws, wsi, in);
    ws_detach(ws, DS_WS_ECONNREFUSED, "connection failed");
    return 0;
  case LWS_CALLBACK_CLIENT_CLOSED:
  case LWS_CALLBACK_WSI_DESTROY: {
    char m[96];
    if (ws->close_requested) {
      ws_detach(ws, DS_WS_ELOCAL, "WebSocket closed by us");
    } else {
      if (ws->peer_close_code) snprintf(m, sizeof m, "WebSocket closed by the peer (code %d)", ws->peer_close_code);
      else snprintf(m, sizeof m, "WebSocket connection dropped");
      ws_detach(ws, DS_WS_ECLOSED, m);
    }
    return 0;
  }
  default:
    return 0;
  }
}

static const struct lws_protocols PROTOCOLS[] = {
    {"ds-ws", ws_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void lws_log_to_ds(int level, const char *line) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", line);
  size_t n = strlen(buf);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
  ds_debug("lws", "%s", buf);
}

static int ensure_context(ds_ws_client_t *c) {
  if (c->ctx) return 0;
  if (c->ctx_created) return DS_ECLOSED; /* destroyed: no second context per client */
  static int log_set;
  if (!log_set) {
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_to_ds);
    log_set = 1;
  }
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  void *foreign_loops[1] = {c->loop};
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = PROTOCOLS;
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.foreign_loops = foreign_loops;
  info.pcontext = &c->ctx;
  info.gid = -1;
  info.uid = -1;
  c->ctx = lws_create_context(&info);
  if (!c->ctx) {
    ds_error("ws", "cannot create the libwebsockets context (is libwebsockets-evlib-uv installed?)");
    return DS_EIO;
  }
  c->ctx_created = 1;
  return 0;
}

/* Hands the connection to lws, connecting to `address` (a numeric IP). */
static void start_lws(ds_ws_t *ws, const char *address) {
  ds_ws_client_t *c = ws->c;
  struct lws_client_connect_info cci;
  memset(&cci, 0, sizeof cci);
  cci.context = c->ctx;
  cci.address = address;
  cci.port = ws->port;
  cci.path = ws->path;
  cci.host = ws->host;
  cci.origin = ws->host;
  cci.local_protocol_name = PROTOCOLS[0].name;
  cci.opaque_user_data = ws;
  cci.pwsi = &ws->wsi;
  if (ws->tls) {
    cci.ssl_connection = LCCSCF_USE_SSL;
    if (ws->insecure) cci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
  }
  struct lws *w = lws_client_connect_via_info(&cci);
  if (!w) {
    /* failed synchronously: lws already called CONNECTION_ERROR (detached) or never
     * adopted the struct; either way it is no longer lws's */
    ws->wsi = NULL;
    if (!ws->ended) ws_end(ws, DS_WS_ECONNREFUSED, "cannot start the WebSocket connection", 0);
    ws->state = DS_WS_ENDED;
    timer_close(ws);
    notify(ws);
  }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  ds_ws_t *ws = req->data;
  free(req);
  ws->gai = NULL;
  char ip[64] = "";
  /* prefer IPv4 (what most hosts listen on when they listen on one family only) */
  for (int pass = 0; pass < 2 && !ip[0]; pass++) {
    for (struct addrinfo *a = status == 0 ? res : NULL; a && !ip[0]; a = a->ai_next) {
      if (a->ai_family == AF_INET && pass == 0)
        uv_ip4_name((const struct sockaddr_in *)a->ai_addr, ip, sizeof ip);
      else if (a->ai_family == AF_INET6 && pass == 1)
        uv_ip6_name((const struct sockaddr_in6 *)a->ai_addr, ip, sizeof ip);
    }
  }
  if (res) uv_freeaddrinfo(res);
  if (ws->released) { /* the owner left meanwhile (or the client shut down) */
    ws_free(ws);
    return;
  }
  if (ws->ended) { /* timed out, closed or shut down while resolving */
    ws->state = DS_WS_ENDED;
    timer_close(ws);
    return;
  }
  if (!ip[0]) {
    char m[256];
    snprintf(m, sizeof m, "cannot resolve %s: %s", ws->host, status ? uv_strerror(status) : "no address");
    ws_end(ws, DS_WS_EDNS, m, 0);
    ws->state = DS_WS_ENDED;
    timer_close(ws);
    notify(ws);
    return;
  }
  start_lws(ws, ip);
}

/* ---------------- public API ---------------- */

int ds_ws_client_new(uv_loop_t *loop, ds_ws_client_t **out) {
  ds_ws_client_t *c = calloc(1, sizeof *c);
  if (!c) return DS_ENOMEM;
  c->loop = loop;
  *out = c;
  return 0;
}

long ds_ws_client_live(const ds_ws_client_t *c) { return c ? c->held : 0; }

void ds_ws_client_close(ds_ws_client_t *c) {
  if (!c || c->shut) return;
  c->shut = 1;
  for (ds_ws_t *ws = c->all, *next; ws; ws = next) {
    next = ws->next;
    ws_detach(ws, DS_WS_ECLOSED, "WebSocket closed: server shutting down"); /* may free ws */
  }
  if (c->ctx) lws_context_destroy(c->ctx); /* stage 1 */
}

long ds_ws_client_free(ds_ws_client_t *c) {
  if (!c) return 0;
  if (!c->shut) ds_ws_client_close(c);
  if (c->ctx) { /* stage 2: required on a foreign loop, or ~1 MB stays allocated */
    lws_context_destroy(c->ctx);
    uv_run(c->loop, UV_RUN_DEFAULT);
  }
  long held = c->held;
  if (held) ds_warn("ws", "%ld WebSocket connection(s) still held at shutdown", held);
  for (ds_ws_t *ws = c->all; ws; ws = ws->next) ws->c = NULL; /* their release frees them alone */
  free(c);
  return held;
}

/* Splits ws[s]://host[:port][/path] into ws's fields. */
static int parse_url(ds_ws_t *ws, const char *url) {
  const char *p;
  if (strncasecmp(url, "ws://", 5) == 0) {
    p = url + 5;
    ws->tls = 0;
    ws->port = 80;
  } else if (strncasecmp(url, "wss://", 6) == 0) {
    p = url + 6;
    ws->tls = 1;
    ws->port = 443;
  } else {
    return DS_EINVAL;
  }
  const char *hend;
  if (*p == '[') {
    const char *rb = strchr(p, ']');
    if (!rb) return DS_EINVAL;
    ws->host = ds_xstrndup(p + 1, (size_t)(rb - p - 1));
    hend = rb + 1;
  } else {
    hend = p + strcspn(p, ":/?#");
    ws->host = ds_xstrndup(p, (size_t)(hend - p));
  }
  if (!*ws->host) return DS_EINVAL;
  if (*hend == ':') {
    char *e;
    long port = strtol(hend + 1, &e, 10);
    if (e == hend + 1 || port <= 0 || port > 65535) return DS_EINVAL;
    ws->port = (int)port;
    hend = e;
  }
  if (*hend == '/') ws->path = ds_xstrdup(hend);
  else if (*hend == '?') {
    size_t n = strlen(hend);
    ws->path = ds_xmalloc(n + 2);
    ws->path[0] = '/';
    memcpy(ws->path + 1, hend, n + 1);
  } else if (*hend == '\0') ws->path = ds_xstrdup("/");
  else return DS_EINVAL;
  char *hash = strchr(ws->path, '#');
  if (hash) *hash = '\0';
  return 0;
}

static int copy_headers(ds_ws_t *ws, const ds_ws_opts_t *o) {
  ws->hdr = ds_xcalloc(2 * o->nheaders + 1, sizeof *ws->hdr);
  for (size_t i = 0; i < o->nheaders; i++) {
    const char *line = o->headers[i];
    const char *colon = strchr(line, ':');
    if (!colon || colon == line || strpbrk(line, "\r\n")) return DS_EINVAL;
    size_t nl = (size_t)(colon - line);
    char *name = ds_xmalloc(nl + 2);
    for (size_t k = 0; k < nl; k++) name[k] = (char)(line[k] >= 'A' && line[k] <= 'Z' ? line[k] + 32 : line[k]);
    name[nl] = ':';
    name[nl + 1] = '\0';
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    ws->hdr[2 * ws->nhdr] = name;
    ws->hdr[2 * ws->nhdr + 1] = ds_xstrdup(v);
    ws->nhdr++;
  }
  return 0;
}

int ds_ws_connect(ds_ws_client_t *c, const ds_ws_opts_t *o, ds_ws_event_fn on_event, void *ud, ds_ws_t **out) {
  *out = NULL;
  if (c->shut) return DS_ECLOSED;
  if (!o || !o->url) return DS_EINVAL;
  ds_ws_t *ws = ds_xcalloc(1, sizeof *ws);
  ws->on_event = on_event;
  ws->ud = ud;
  ws->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  ws->idle_ms = o->idle_timeout_ms;
  ds_ws_rx_init(&ws->rx, o->max_message);
  int rc = parse_url(ws, o->url);
  if (rc == 0) rc = copy_headers(ws, o);
  if (rc == 0) rc = ensure_context(c);
  if (rc != 0) {
    ws_free(ws);
    return rc;
  }
  ws->c = c;
  ws->next = c->all;
  if (c->all) c->all->prev = ws;
  c->all = ws;
  ws->timer = ds_xmalloc(sizeof *ws->timer);
  uv_timer_init(c->loop, ws->timer);
  ws->timer->data = ws;
  touch(ws);

  ws->insecure = o->insecure;
  ws->state = DS_WS_CONNECTING;
  c->held++;
  arm(ws, ws->connect_timeout_ms); /* covers name resolution, TCP, TLS and the upgrade */
  unsigned char bin[16];
  if (uv_inet_pton(AF_INET, ws->host, bin) == 0 || uv_inet_pton(AF_INET6, ws->host, bin) == 0) {
    ws->in_connect = 1;
    start_lws(ws, ws->host);
    ws->in_connect = 0;
  } else {
    /* lws 4.1 here has no async DNS: its getaddrinfo would block the loop, so resolve on
     * the threadpool first and hand lws the address (the host name still goes into the
     * Host header, SNI and the certificate check) */
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    ws->gai = ds_xmalloc(sizeof *ws->gai);
    ws->gai->data = ws;
    int r = uv_getaddrinfo(c->loop, ws->gai, on_resolved, ws->host, NULL, &hints);
    if (r != 0) {
      free(ws->gai);
      ws->gai = NULL;
      char m[256];
      snprintf(m, sizeof m, "cannot resolve %s: %s", ws->host, uv_strerror(r));
      ws_end(ws, DS_WS_EDNS, m, 0);
      ws->state = DS_WS_ENDED;
      timer_close(ws);
    }
  }
  *out = ws;
  return 0;
}

int ds_ws_state(const ds_ws_t *ws) { return ws->state; }

const char *ds_ws_error(const ds_ws_t *ws, const char **msg, int *http_status, int *close_code) {
  if (msg) *msg = ws->ended ? ws->msg : NULL;
  if (http_status) *http_status = ws->http_status;
  if (close_code) *close_code = ws->peer_close_code;
  return ws->ended ? ws->code : NULL;
}

static int queue_frame(ds_ws_t *ws, const char *p, size_t n, int ping) {
  if (ws->state != DS_WS_CONNECTING && ws->state != DS_WS_OPEN) return DS_ECLOSED;
  if (ws->close_requested || ws->ended) return DS_ECLOSED;
  frame_t *f = ds_xmalloc(sizeof *f + LWS_PRE + n + 1);
  f->next = NULL;
  f->ping = ping;
  f->len = n;
  if (n) memcpy(f->buf + LWS_PRE, p, n);
  if (ws->txt) ws->txt->next = f; else ws->txh = f;
  ws->txt = f;
  touch(ws);
  if (ws->state == DS_WS_OPEN && ws->wsi) lws_callback_on_writable(ws->wsi);
  return 0;
}

int ds_ws_send_text(ds_ws_t *ws, const char *p, size_t n) { return queue_frame(ws, p, n, 0); }

int ds_ws_ping(ds_ws_t *ws) { return queue_frame(ws, "", 0, 1); }

uint64_t ds_ws_pongs(const ds_ws_t *ws) { return ws->pongs; }

size_t ds_ws_pending(const ds_ws_t *ws) { return ws->rx.count; }

ds_ws_msg_t *ds_ws_pop(ds_ws_t *ws) {
  ds_ws_msg_t *m = ds_ws_rx_pop(&ws->rx);
  if (m) touch(ws);
  return m;
}

void ds_ws_close(ds_ws_t *ws, int code, const char *reason) {
  if (ws->state == DS_WS_ENDED || ws->close_requested) return;
  ws->close_requested = 1;
  ws->close_code = code >= 1000 && code <= 4999 ? code : 1000;
  snprintf(ws->close_reason, sizeof ws->close_reason, "%s", reason ? reason : "");
  ws_end(ws, DS_WS_ELOCAL, "WebSocket closed by us", 0);
  if (ws->state == DS_WS_OPEN && ws->wsi) {
    ws->state = DS_WS_CLOSING;
    lws_callback_on_writable(ws->wsi);
  } else {
    ws->state = DS_WS_CLOSING;
    ws_kill(ws);
  }
  if (ws->timer) uv_timer_stop(ws->timer);
}

void ds_ws_set_idle(ds_ws_t *ws, long ms) {
  ws->idle_ms = ms > 0 ? ms : 0;
  touch(ws);
  if (ws->state == DS_WS_OPEN && ws->timer) {
    if (ws->idle_ms) arm(ws, ws->idle_ms);
    else uv_timer_stop(ws->timer);
  }
}

void ds_ws_set_waiting(ds_ws_t *ws, int waiting) {
  ws->waiting = waiting;
  touch(ws);
}

void ds_ws_release(ds_ws_t *ws) {
  if (!ws || ws->released) return;
  ws->released = 1;
  ws->on_event = NULL;
  if (ws->c) ws->c->held--;
  if (ws->gai) { /* resolving: on_resolved frees it */
    if (ws->state != DS_WS_ENDED) ds_ws_close(ws, 1000, "");
    return;
  }
  if (ws->state != DS_WS_ENDED && ws->wsi && ws->c) {
    ds_ws_close(ws, 1000, "");
    return; /* freed when lws lets go (detach) */
  }
  ws_free(ws);
}
