/* server.c - the HTTP server object: listen, accept, connection limit, sweep timer,
 * per-iteration output flush, stats and shutdown.
 *
 * Provides: ds_http_server_start/port/stop/stats and the fuzzer's listener-less entry
 * points. Connection behaviour (parsing, timeouts, writes) lives in conn.c.
 * Must not: parse HTTP or build responses itself.
 */
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/err.h"
#include "core/log.h"
#include "http/http_int.h"

static void on_handle_closed(uv_handle_t *h);

static void alloc_defaults(ds_http_opts_t *o, const ds_http_opts_t *in) {
  memset(o, 0, sizeof *o);
  if (in) *o = *in;
  if (!o->host || !*o->host) o->host = "127.0.0.1";
  if (!o->max_header_bytes) o->max_header_bytes = 16 * 1024;
  if (!o->max_body_bytes) o->max_body_bytes = 1024 * 1024;
  if (!o->header_timeout_ms) o->header_timeout_ms = 10000;
  if (!o->body_timeout_ms) o->body_timeout_ms = 30000;
  if (!o->idle_timeout_ms) o->idle_timeout_ms = 60000;
  if (!o->max_connections) o->max_connections = 16384;
  if (!o->stream_backlog_limit) o->stream_backlog_limit = 4 * 1024 * 1024;
}

/* The sweep period: fine enough for the shortest timeout (tests use 100-200 ms), at most
 * once a second for production values; one timer for every connection. */
static uint64_t sweep_period(const ds_http_opts_t *o) {
  unsigned m = o->header_timeout_ms;
  if (o->body_timeout_ms < m) m = o->body_timeout_ms;
  if (o->idle_timeout_ms < m) m = o->idle_timeout_ms;
  uint64_t p = m / 4;
  if (p < 10) p = 10;
  if (p > 1000) p = 1000;
  return p;
}

static void on_sweep(uv_timer_t *t) {
  ds_http_server_t *srv = t->data;
  uint64_t now = uv_now(srv->loop);
  for (ds__conn_t *c = srv->conns, *n; c; c = n) {
    n = c->next;
    ds__conn_sweep(c, now);
  }
}

static void on_prepare(uv_prepare_t *p) {
  ds_http_server_t *srv = p->data;
  ds__conn_run_dirty(srv);
  if (srv->idle_armed && !srv->dirty) {
    srv->idle_armed = 0;
    uv_idle_stop(&srv->idle);
  }
}

static void on_idle(uv_idle_t *i) {
  /* Only exists to keep poll from blocking while output is queued; the flush happens in
   * the prepare callback that follows in the same iteration. */
}

void ds__server_arm_flush(ds_http_server_t *srv) {
  if (srv->idle_armed || srv->stopping == 2) return;
  srv->idle_armed = 1;
  uv_idle_start(&srv->idle, on_idle);
}

const char *ds__server_date(ds_http_server_t *srv) {
  time_t now = time(NULL);
  if (now != srv->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(srv->date, sizeof srv->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    srv->date_sec = now;
  }
  return srv->date;
}

static void on_connection(uv_stream_t *ls, int status) {
  ds_http_server_t *srv = ls->data;
  if (status < 0) {
    ds_warn("http", "accept: %s", uv_strerror(status));
    return;
  }
  if (srv->stopping) return;
  ds__conn_t *c = ds__conn_new(srv, 0);
  if (uv_accept(ls, &c->h.stream) != 0) {
    ds__conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->h.tcp, 1);
  if (srv->stats.connections_open > srv->opts.max_connections) {
    c->discard_input = 1;
    ds__queue_error(c, 503, "too many connections", 1, 0);
    ds__conn_close_after(c);
    ds__conn_start(c);
    return;
  }
  ds__conn_start(c);
}

static int server_init(uv_loop_t *loop, const ds_http_opts_t *opts, ds_http_handler_fn handler,
                       void *ud, ds_http_server_t **out) {
  ds_http_server_t *srv = ds_xcalloc(1, sizeof *srv);
  srv->loop = loop;
  alloc_defaults(&srv->opts, opts);
  snprintf(srv->host, sizeof srv->host, "%s", srv->opts.host);
  srv->opts.host = srv->host;
  srv->handler = handler;
  srv->ud = ud;
  uv_timer_init(loop, &srv->sweep);
  srv->sweep.data = srv;
  uv_prepare_init(loop, &srv->prepare);
  srv->prepare.data = srv;
  uv_idle_init(loop, &srv->idle);
  srv->idle.data = srv;
  srv->handles_open = 3;
  uint64_t per = sweep_period(&srv->opts);
  uv_timer_start(&srv->sweep, on_sweep, per, per);
  uv_unref((uv_handle_t *)&srv->sweep);
  uv_prepare_start(&srv->prepare, on_prepare);
  uv_unref((uv_handle_t *)&srv->prepare);
  uv_unref((uv_handle_t *)&srv->idle);
  ds__conn_settings(&srv->settings);
  *out = srv;
  return 0;
}

int ds__http_server_new(uv_loop_t *loop, const ds_http_opts_t *opts, ds_http_handler_fn handler,
                        void *ud, ds_http_server_t **out) {
  return server_init(loop, opts, handler, ud, out);
}

int ds__http_adopt_fd(ds_http_server_t *srv, int fd) {
  if (srv->stopping) return DS_ECLOSED;
  ds__conn_t *c = ds__conn_new(srv, 1);
  int rc = uv_pipe_open(&c->h.pipe, fd);
  if (rc != 0) {
    ds__conn_close(c);
    return DS_EIO;
  }
  ds__conn_start(c);
  return 0;
}

int ds_http_server_start(uv_loop_t *loop, const ds_http_opts_t *opts, ds_http_handler_fn handler,
                         void *ud, ds_http_server_t **out, char *err, size_t errlen) {
  ds_http_server_t *srv;
  *out = NULL;
  /* A peer closing mid-write must cost an EPIPE, not the process. Only the default
   * disposition is replaced, so an application's own handler stays. */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  server_init(loop, opts, handler, ud, &srv);

  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", srv->opts.port);
  int grc = getaddrinfo(srv->host, portstr, &hints, &res);
  int rc = 0;
  if (grc != 0 || !res) {
    snprintf(err, errlen, "cannot resolve %s: %s", srv->host, gai_strerror(grc));
    rc = DS_EINVAL;
  } else {
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    srv->handles_open++;
    srv->listening = 1;
    rc = uv_tcp_bind(&srv->listener, res->ai_addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    if (rc != 0) {
      snprintf(err, errlen, "cannot listen on %s:%d: %s", srv->host, srv->opts.port, uv_strerror(rc));
      rc = ds_err_from_errno(-rc);
    } else {
      struct sockaddr_storage ss;
      int sl = sizeof ss;
      uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &sl);
      srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    }
  }
  if (res) freeaddrinfo(res);
  if (rc != 0) {
    /* Tear down synchronously enough for the caller: handles close on the next loop run;
     * the server frees itself in the last close callback. */
    ds_http_server_stop(srv, NULL, NULL);
    return rc;
  }
  *out = srv;
  return 0;
}

int ds_http_server_port(const ds_http_server_t *srv) { return srv->port; }

void ds_http_server_stats(const ds_http_server_t *srv, ds_http_stats_t *out) { *out = srv->stats; }

static void finish_stop(ds_http_server_t *srv) {
  if (srv->conns || srv->stopping != 1) return;
  srv->stopping = 2;
  uv_timer_stop(&srv->sweep);
  uv_close((uv_handle_t *)&srv->sweep, on_handle_closed);
  uv_close((uv_handle_t *)&srv->prepare, on_handle_closed);
  uv_close((uv_handle_t *)&srv->idle, on_handle_closed);
}

static void on_handle_closed(uv_handle_t *h) {
  ds_http_server_t *srv = h->data;
  if (--srv->handles_open > 0) return;
  void (*done)(void *) = srv->done;
  void *ud = srv->done_ud;
  free(srv);
  if (done) done(ud);
}

void ds__server_conn_closed(ds_http_server_t *srv, ds__conn_t *c) {
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->stats.connections_open--;
  if (srv->stopping == 1) finish_stop(srv);
}

void ds_http_server_stop(ds_http_server_t *srv, void (*done)(void *ud), void *ud) {
  if (srv->stopping) return;
  srv->stopping = 1;
  srv->done = done;
  srv->done_ud = ud;
  if (srv->listening) {
    srv->listening = 0;
    uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
  }
  /* Connections unlink themselves only in their close callbacks, so the list stays
   * walkable even when a close callback of the application ends other requests. */
  for (ds__conn_t *c = srv->conns; c; c = c->next) ds__conn_server_stop(c);
  finish_stop(srv);
}
