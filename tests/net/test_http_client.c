/* test_http_client.c - cmocka tests of the curl-on-uv streaming HTTP client.
 *
 * Provides: a tiny scripted HTTP server on 127.0.0.1 written directly on libuv (so it
 * shares nothing with the client under test), and tests for incremental streaming, 50
 * concurrent transfers, cancellation seen by the peer, refused port, DNS failure, TLS
 * failure, total timeout, stall, truncated/reset/garbage answers, HTTP error statuses, and
 * pinned transfers (webhooks): no lookup of the name, no connection that follows a resolver
 * answer other than the checked one (rebinding), no socket to an unpinned address.
 * Every test ends with all handles closed and uv_loop_close() == 0.
 * Must not: assert on timings; waits poll the loop with deadlines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

extern char **environ;

#include "core/buf.h"
#include "net/http_client.h"

/* ---------------- scripted server ---------------- */

typedef struct srv_s srv_t;

typedef struct conn_s {
  uv_tcp_t tcp;
  srv_t *srv;
  ds_buf_t req;
  int responded;
  int streaming;     /* chunks still to send on pacer ticks */
  int sent;          /* chunks sent so far */
  int gated;         /* send chunk i only once the client saw chunk i-1 */
  int closing;
  struct conn_s *prev, *next;
} conn_t;

struct srv_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_timer_t pacer;
  int port;
  int accepted;
  int peer_closed; /* connections on which the client hung up first */
  int open_conns;
  int open_handles;
  int client_seen; /* for gated streams: chunks the client reported */
  conn_t *conns;
};

typedef struct {
  uv_write_t w;
  char *data;
} wreq_t;

static void on_handle_closed_srv(uv_handle_t *h) {
  srv_t *s = h->data;
  s->open_handles--;
}

static void on_conn_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  c->srv->open_handles--;
  c->srv->open_conns--;
  ds_buf_free(&c->req);
  free(c);
}

static void conn_close(conn_t *c, int reset) {
  if (c->closing) return;
  c->closing = 1;
  srv_t *s = c->srv;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (reset) uv_tcp_close_reset(&c->tcp, on_conn_closed);
  else uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_written(uv_write_t *w, int status) {
  wreq_t *r = (wreq_t *)w;
  free(r->data);
  free(r);
}

static void on_written_close(uv_write_t *w, int status) {
  conn_t *c = w->data;
  on_written(w, status);
  conn_close(c, 0);
}

static void conn_send(conn_t *c, const char *data, size_t n, int close_after) {
  if (c->closing) return;
  wreq_t *r = ds_xcalloc(1, sizeof *r);
  r->data = ds_xmalloc(n ? n : 1);
  memcpy(r->data, data, n);
  uv_buf_t b = uv_buf_init(r->data, (unsigned)n);
  r->w.data = c;
  uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, close_after ? on_written_close : on_written);
}

static void conn_sends(conn_t *c, const char *s, int close_after) { conn_send(c, s, strlen(s), close_after); }

static void send_chunk(conn_t *c, const char *payload) {
  char hdr[32];
  ds_buf_t b = DS_BUF_INIT;
  snprintf(hdr, sizeof hdr, "%zx\r\n", strlen(payload));
  ds_buf_puts(&b, hdr);
  ds_buf_puts(&b, payload);
  ds_buf_puts(&b, "\r\n");
  conn_send(c, b.data, b.len, 0);
  ds_buf_free(&b);
}

static const char *CHUNKED_HDR =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

static void respond(conn_t *c, const char *path) {
  c->responded = 1;
  if (strcmp(path, "/ok") == 0) {
    conn_sends(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test:  yes \r\nConnection: close\r\n\r\nhello", 1);
  } else if (strncmp(path, "/stream/", 8) == 0 || strncmp(path, "/gated/", 7) == 0) {
    c->gated = path[1] == 'g';
    c->streaming = atoi(strrchr(path, '/') + 1);
    conn_sends(c, "HTTP/1.1 100 Continue\r\n\r\n", 0);
    conn_sends(c, CHUNKED_HDR, 0);
  } else if (strcmp(path, "/hold") == 0) {
    conn_sends(c, CHUNKED_HDR, 0);
    send_chunk(c, "first");
  } else if (strcmp(path, "/partial") == 0) {
    conn_sends(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 1);
  } else if (strcmp(path, "/reset") == 0) {
    conn_sends(c, CHUNKED_HDR, 0);
    send_chunk(c, "some data");
    c->streaming = -1; /* reset on the next pacer tick, after the data left */
  } else if (strcmp(path, "/garbage") == 0) {
    conn_sends(c, "\x01\x02 garbage, not HTTP\r\n\r\n", 1);
  } else if (strcmp(path, "/status/429") == 0) {
    const char *body = "{\"error\":{\"message\":\"Rate limit exceeded\",\"type\":\"requests\"}}";
    char head[256];
    snprintf(head, sizeof head,
             "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n",
             strlen(body));
    ds_buf_t b = DS_BUF_INIT;
    ds_buf_puts(&b, head);
    ds_buf_puts(&b, body);
    conn_send(c, b.data, b.len, 1);
    ds_buf_free(&b);
  } else if (strcmp(path, "/silent") == 0) {
    /* never answers */
  } else {
    conn_sends(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 1);
  }
}

static void on_pacer(uv_timer_t *t) {
  srv_t *s = t->data;
  conn_t *c = s->conns, *next;
  for (; c; c = next) {
    next = c->next;
    if (c->streaming < 0) {
      c->streaming = 0;
      conn_close(c, 1);
      continue;
    }
    if (c->streaming == 0) continue;
    if (c->gated && s->client_seen < c->sent) continue;
    char payload[64];
    snprintf(payload, sizeof payload, "chunk-%d\n", c->sent);
    send_chunk(c, payload);
    c->sent++;
    if (--c->streaming == 0) conn_sends(c, "0\r\n\r\n", 1);
  }
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  b->base = ds_xmalloc(4096);
  b->len = 4096;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  conn_t *c = st->data;
  if (n < 0) {
    c->srv->peer_closed++;
    free(b->base);
    conn_close(c, 0);
    return;
  }
  if (n > 0 && !c->responded) {
    ds_buf_append(&c->req, b->base, (size_t)n);
    const char *req = ds_buf_cstr(&c->req);
    if ((unsigned char)req[0] == 0x16) {
      /* a TLS ClientHello: answer in plain HTTP like a misconfigured upstream would */
      c->responded = 1;
      conn_sends(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 1);
    } else if (strstr(req, "\r\n\r\n")) {
      char path[128] = "";
      sscanf(req, "%*s %127s", path);
      respond(c, path);
    }
  }
  free(b->base);
}

static void on_conn(uv_stream_t *l, int status) {
  srv_t *s = l->data;
  assert_int_equal(status, 0);
  conn_t *c = ds_xcalloc(1, sizeof *c);
  c->srv = s;
  ds_buf_init(&c->req);
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  s->open_handles++;
  s->open_conns++;
  s->accepted++;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void srv_start(srv_t *s, uv_loop_t *loop) {
  memset(s, 0, sizeof *s);
  s->loop = loop;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
  s->listener.data = s;
  s->open_handles++;
  assert_int_equal(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 128, on_conn), 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
  s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  uv_timer_init(loop, &s->pacer);
  s->pacer.data = s;
  s->open_handles++;
  uv_timer_start(&s->pacer, on_pacer, 2, 2);
}

static void srv_stop(srv_t *s) {
  while (s->conns) conn_close(s->conns, 0);
  uv_close((uv_handle_t *)&s->listener, on_handle_closed_srv);
  uv_timer_stop(&s->pacer);
  uv_close((uv_handle_t *)&s->pacer, on_handle_closed_srv);
}

/* ---------------- client side bookkeeping ---------------- */

typedef struct {
  srv_t *srv;
  ds_http_xfer_t *x;
  long status;
  int headers_calls;
  int data_calls;
  int done_calls;
  int saw_x_test;
  ds_buf_t body;
  char code[32];
  char msg[512];
  int cancel_on_data; /* cancel from inside on_data */
} xres_t;

static void cb_headers(ds_http_xfer_t *x, long status, const ds_http_header_t *h, size_t n, void *ud) {
  xres_t *r = ud;
  r->status = status;
  r->headers_calls++;
  for (size_t i = 0; i < n; i++)
    if (strcmp(h[i].name, "X-Test") == 0 && strcmp(h[i].value, "yes") == 0) r->saw_x_test = 1;
}

static void cb_data(ds_http_xfer_t *x, const char *p, size_t n, void *ud) {
  xres_t *r = ud;
  r->data_calls++;
  ds_buf_append(&r->body, p, n);
  if (r->srv) {
    /* count complete chunk lines the client has seen, releasing the gated server */
    int lines = 0;
    for (size_t i = 0; i < r->body.len; i++) lines += r->body.data[i] == '\n';
    r->srv->client_seen = lines;
  }
  if (r->cancel_on_data) {
    ds_http_xfer_cancel(x);
    r->x = NULL;
  }
}

static void cb_done(ds_http_xfer_t *x, const char *code, const char *msg, void *ud) {
  xres_t *r = ud;
  r->done_calls++;
  snprintf(r->code, sizeof r->code, "%s", code);
  snprintf(r->msg, sizeof r->msg, "%s", msg);
  r->x = NULL;
}

static const ds_http_xfer_cbs_t CBS = {cb_headers, cb_data, cb_done};

typedef struct {
  uv_loop_t loop;
  srv_t srv;
  ds_http_client_t *client;
  int client_closed;
} fx_t;

static int run_until(uv_loop_t *loop, int (*cond)(void *), void *arg, uint64_t deadline_ms) {
  uint64_t end = uv_now(loop) + deadline_ms;
  while (!cond(arg)) {
    if (uv_now(loop) > end) return 0;
    uv_run(loop, UV_RUN_ONCE);
    uv_update_time(loop);
  }
  return 1;
}

static int cond_done(void *a) { return ((xres_t *)a)->done_calls > 0; }

static void on_client_closed(void *arg) { *(int *)arg = 1; }

static int setup(void **state) {
  fx_t *f = ds_xcalloc(1, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  srv_start(&f->srv, &f->loop);
  assert_int_equal(ds_http_client_new(&f->loop, &f->client), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  ds_http_client_close(f->client, on_client_closed, &f->client_closed);
  srv_stop(&f->srv);
  uint64_t end = uv_now(&f->loop) + 5000;
  while (uv_run(&f->loop, UV_RUN_NOWAIT) != 0 && uv_now(&f->loop) < end) uv_update_time(&f->loop);
  assert_int_equal(f->client_closed, 1);
  assert_int_equal(f->srv.open_handles, 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

static void url(fx_t *f, char *buf, size_t n, const char *path) {
  snprintf(buf, n, "http://127.0.0.1:%d%s", f->srv.port, path);
}

static void start(fx_t *f, xres_t *r, const char *path, long stall_ms, long total_ms) {
  char u[128];
  url(f, u, sizeof u, path);
  const char *hdrs[] = {"Authorization: Bearer k", "Content-Type: application/json"};
  ds_http_request_t req = {.method = "POST", .url = u, .headers = hdrs, .nheaders = 2,
                           .body = "{\"a\":1}", .body_len = 7, .connect_timeout_ms = 5000,
                           .total_timeout_ms = total_ms, .stall_timeout_ms = stall_ms};
  ds_buf_init(&r->body);
  assert_int_equal(ds_http_client_request(f->client, &req, &CBS, r, &r->x), 0);
}

/* ---------------- tests ---------------- */

static void test_simple_ok(void **state) {
  fx_t *f = *state;
  xres_t r = {0};
  start(f, &r, "/ok", 0, 0);
  assert_true(run_until(&f->loop, cond_done, &r, 10000));
  assert_string_equal(r.code, "OK");
  assert_int_equal(r.status, 200);
  assert_int_equal(r.headers_calls, 1);
  assert_int_equal(r.done_calls, 1);
  assert_true(r.saw_x_test);
  assert_int_equal(r.body.len, 5);
  assert_memory_equal(r.body.data, "hello", 5);
  assert_int_equal(ds_http_client_active(f->client), 0);
  ds_buf_free(&r.body);
}

static void test_stream_incremental(void **state) {
  fx_t *f = *state;
  xres_t r = {0};
  r.srv = &f->srv;
  /* the server sends chunk i+1 only after the client reported chunk i: the transfer can only
   * complete if every chunk is delivered before the next one exists */
  start(f, &r, "/gated/8", 0, 0);
  assert_true(run_until(&f->loop, cond_done, &r, 10000));
  assert_string_equal(r.code, "OK");
  assert_int_equal(r.status, 200);
  assert_int_equal(r.headers_calls, 1);
  assert_true(r.data_calls >= 8);
  const char *want = "chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\nchunk-5\nchunk-6\nchunk-7\n";
  assert_int_equal(r.body.len, strlen(want));
  assert_memory_equal(r.body.data, want, strlen(want));
  ds_buf_free(&r.body);
}

#define NCONC 50
static xres_t g_many[NCONC];
static int cond_all_done(void *a) {
  for (int i = 0; i < NCONC; i++)
    if (!g_many[i].done_calls) return 0;
  return 1;
}

static void test_concurrent_50(void **state) {
  fx_t *f = *state;
  memset(g_many, 0, sizeof g_many);
  for (int i = 0; i < NCONC; i++) start(f, &g_many[i], "/stream/20", 0, 0);
  assert_int_equal(ds_http_client_active(f->client), NCONC);
  assert_true(run_until(&f->loop, cond_all_done, NULL, 30000));
  ds_buf_t want = DS_BUF_INIT;
  for (int i = 0; i < 20; i++) ds_buf_printf(&want, "chunk-%d\n", i);
  for (int i = 0; i < NCONC; i++) {
    assert_string_equal(g_many[i].code, "OK");
    assert_int_equal(g_many[i].status, 200);
    assert_int_equal(g_many[i].done_calls, 1);
    assert_int_equal(g_many[i].body.len, want.len);
    assert_memory_equal(g_many[i].body.data, want.data, want.len);
    ds_buf_free(&g_many[i].body);
  }
  ds_buf_free(&want);
  assert_int_equal(f->srv.accepted, NCONC);
  assert_int_equal(ds_http_client_active(f->client), 0);
}

static int cond_got_data(void *a) { return ((xres_t *)a)->data_calls > 0; }
static int cond_peer_closed(void *a) { return ((fx_t *)a)->srv.peer_closed > 0; }

static void test_cancel_mid_stream(void **state) {
  fx_t *f = *state;
  xres_t r = {0};
  start(f, &r, "/hold", 0, 0);
  assert_true(run_until(&f->loop, cond_got_data, &r, 10000));
  assert_int_equal(f->srv.peer_closed, 0);
  ds_http_xfer_cancel(r.x);
  assert_int_equal(ds_http_client_active(f->client), 0);
  /* the server must see the connection go away */
  assert_true(run_until(&f->loop, cond_peer_closed, f, 10000));
  assert_int_equal(r.done_calls, 0);
  assert_memory_equal(r.body.data, "first", 5);
  ds_buf_free(&r.body);
}

static void test_cancel_inside_callback(void **state) {
  fx_t *f = *state;
  xres_t r = {0};
  r.cancel_on_data = 1;
  start(f, &r, "/hold", 0, 0);
  assert_true(run_until(&f->loop, cond_peer_closed, f, 10000));
  assert_int_equal(r.data_calls, 1);
  assert_int_equal(r.done_calls, 0);
  assert_int_equal(ds_http_client_active(f->client), 0);
  ds_buf_free(&r.body);
}

static void expect_failure(fx_t *f, const char *u, long stall_ms, long total_ms, const char *code) {
  xres_t r = {0};
  ds_http_request_t req = {.url = u, .connect_timeout_ms = 5000, .total_timeout_ms = total_ms,
                           .stall_timeout_ms = stall_ms};
  ds_buf_init(&r.body);
  assert_int_equal(ds_http_client_request(f->client, &req, &CBS, &r, &r.x), 0);
  assert_true(run_until(&f->loop, cond_done, &r, 20000));
  if (strcmp(r.code, code) != 0) fail_msg("%s: expected %s, got %s (%s)", u, code, r.code, r.msg);
  assert_int_equal(r.done_calls, 1);
  assert_true(strlen(r.msg) > 0);
  assert_null(strchr(r.msg, '\n'));
  ds_buf_free(&r.body);
}

static void test_refused(void **state) {
  fx_t *f = *state;
  /* a port that was just free: bind, read its number, close it */
  uv_tcp_t t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&f->loop, &t);
  uv_tcp_bind(&t, (const struct sockaddr *)&a, 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
  int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/x", port);
  expect_failure(f, u, 0, 0, DS_HTTPC_ECONNREFUSED);
}

static void test_dns(void **state) {
  expect_failure(*state, "http://no-such-host.invalid/v1/responses", 0, 0, DS_HTTPC_EDNS);
}

static void test_tls(void **state) {
  fx_t *f = *state;
  char u[64];
  snprintf(u, sizeof u, "https://127.0.0.1:%d/ok", f->srv.port); /* plain HTTP behind https */
  expect_failure(f, u, 0, 0, DS_HTTPC_ETLS);
}

/* A TLS server with a self-signed certificate (made with the openssl CLI) in a Python
 * child: peer verification against the system CAs must refuse it. */
static const char *TLS_SERVER_PY =
    "import ssl, socket, sys\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', 0))\n"
    "s.listen(8)\n"
    "print(s.getsockname()[1], flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    try:\n"
    "        t = ctx.wrap_socket(c, server_side=True)\n"
    "        t.recv(4096)\n"
    "        t.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
    "        t.close()\n"
    "    except Exception:\n"
    "        c.close()\n";

static void test_tls_untrusted(void **state) {
  fx_t *f = *state;
  char dir[] = "/tmp/ds-test-tls-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char cmd[512], cert[128], key[128];
  snprintf(cert, sizeof cert, "%s/cert.pem", dir);
  snprintf(key, sizeof key, "%s/key.pem", dir);
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s "
           "-days 1 -subj /CN=127.0.0.1 >/dev/null 2>&1",
           key, cert);
  assert_int_equal(system(cmd), 0);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  char *argv[] = {"/usr/bin/python3", "-c", (char *)TLS_SERVER_PY, cert, key, NULL};
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, argv[0], &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  char line[32] = "";
  size_t n = 0;
  while (n < sizeof line - 1 && read(fds[0], line + n, 1) == 1 && line[n] != '\n') n++;
  line[n] = '\0';
  close(fds[0]);
  char u[64];
  snprintf(u, sizeof u, "https://127.0.0.1:%d/", atoi(line));
  xres_t r = {0};
  ds_http_request_t req = {.url = u, .connect_timeout_ms = 5000};
  ds_buf_init(&r.body);
  int rc = atoi(line) > 0 ? ds_http_client_request(f->client, &req, &CBS, &r, &r.x) : -1;
  if (rc == 0) run_until(&f->loop, cond_done, &r, 20000);
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(rc, 0);
  if (strcmp(r.code, DS_HTTPC_ETLS) != 0) fail_msg("expected ETLS, got %s (%s)", r.code, r.msg);
  assert_non_null(strstr(r.msg, "certificate"));
  assert_int_equal(r.headers_calls, 0);
  ds_buf_free(&r.body);
}

static void test_timeout(void **state) {
  fx_t *f = *state;
  char u[64];
  url(f, u, sizeof u, "/silent");
  expect_failure(f, u, 0, 300, DS_HTTPC_ETIMEDOUT);
}

static void test_stall(void **state) {
  fx_t *f = *state;
  char u[64];
  url(f, u, sizeof u, "/hold");
  expect_failure(f, u, 200, 0, DS_HTTPC_ESTALLED);
  /* stalling closes the connection just like a cancel */
  assert_true(run_until(&f->loop, cond_peer_closed, f, 10000));
}

static void test_partial(void **state) {
  fx_t *f = *state;
  char u[64];
  url(f, u, sizeof u, "/partial");
  expect_failure(f, u, 0, 0, DS_HTTPC_ECLOSED);
}

static void test_reset(void **state) {
  fx_t *f = *state;
  char u[64];
  url(f, u, sizeof u, "/reset");
  expect_failure(f, u, 0, 0, DS_HTTPC_ECLOSED);
}

static void test_garbage(void **state) {
  fx_t *f = *state;
  char u[64];
  url(f, u, sizeof u, "/garbage");
  expect_failure(f, u, 0, 0, DS_HTTPC_EPROTO);
}

static void test_http_status(void **state) {
  fx_t *f = *state;
  xres_t r = {0};
  start(f, &r, "/status/429", 0, 0);
  assert_true(run_until(&f->loop, cond_done, &r, 10000));
  assert_string_equal(r.code, "OK");
  assert_int_equal(r.status, 429);
  assert_non_null(strstr(ds_buf_cstr(&r.body), "Rate limit exceeded"));
  ds_buf_free(&r.body);
}

static void test_bad_url(void **state) {
  fx_t *f = *state;
  xres_t r = {0};
  ds_http_request_t req = {.url = "ftp://127.0.0.1/"};
  ds_http_xfer_t *x = NULL;
  assert_int_equal(ds_http_client_request(f->client, &req, &CBS, &r, &x) < 0, 1);
  assert_null(x);
}

static void test_close_with_active(void **state) {
  /* teardown closes the client while transfers are still streaming: no callback may run
   * and every handle must still be closed */
  fx_t *f = *state;
  static xres_t r[5];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 5; i++) start(f, &r[i], "/hold", 0, 0);
  for (int i = 0; i < 5; i++) assert_true(run_until(&f->loop, cond_got_data, &r[i], 10000));
  ds_http_client_close(f->client, on_client_closed, &f->client_closed);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(r[i].done_calls, 0);
    ds_buf_free(&r[i].body);
  }
  /* a closing client refuses new work */
  xres_t r2 = {0};
  ds_http_request_t req = {.url = "http://127.0.0.1:1/"};
  ds_http_xfer_t *x = NULL;
  assert_true(ds_http_client_request(f->client, &req, &CBS, &r2, &x) < 0);
}

/* ---- pinning (webhooks): the transfer goes to the checked addresses only ---- */

static void pinned(fx_t *f, xres_t *r, const char *u, const char *pin_ip, int pin_port) {
  struct sockaddr_storage pin;
  memset(&pin, 0, sizeof pin);
  if (strchr(pin_ip, ':')) uv_ip6_addr(pin_ip, pin_port, (struct sockaddr_in6 *)&pin);
  else uv_ip4_addr(pin_ip, pin_port, (struct sockaddr_in *)&pin);
  ds_http_request_t req = {.method = "POST", .url = u, .body = "{}", .body_len = 2,
                           .connect_timeout_ms = 5000, .pin = &pin, .npin = 1};
  ds_buf_init(&r->body);
  assert_int_equal(ds_http_client_request(f->client, &req, &CBS, r, &r->x), 0);
  assert_true(run_until(&f->loop, cond_done, r, 10000));
}

static void test_pin_uses_checked_address(void **state) {
  /* a name nothing resolves: the transfer succeeds only if curl never looks it up */
  fx_t *f = *state;
  xres_t r = {0};
  char u[128];
  snprintf(u, sizeof u, "http://pinned.invalid:%d/ok", f->srv.port);
  pinned(f, &r, u, "127.0.0.1", f->srv.port);
  if (strcmp(r.code, "OK") != 0) fail_msg("pinned transfer: %s (%s)", r.code, r.msg);
  assert_int_equal(r.status, 200);
  assert_int_equal(f->srv.accepted, 1);
  ds_buf_free(&r.body);
}

static void test_pin_outlives_rebinding(void **state) {
  /* DNS rebinding: the name resolves (now) to the address where the server listens, but
   * the check saw another address; the connection goes only to the checked one */
  fx_t *f = *state;
  xres_t r = {0};
  char u[128];
  snprintf(u, sizeof u, "http://localhost:%d/ok", f->srv.port);
  pinned(f, &r, u, "127.0.0.2", f->srv.port);
  if (strcmp(r.code, "OK") == 0) fail_msg("the transfer followed the resolver: %s", r.msg);
  assert_int_equal(f->srv.accepted, 0);
  ds_buf_free(&r.body);
}

static void test_pin_refuses_other_socket(void **state) {
  /* whatever makes curl pick another address (a literal in the URL here), no socket is
   * opened to it: EBLOCKED, before any connection attempt */
  fx_t *f = *state;
  xres_t r = {0};
  char u[128];
  snprintf(u, sizeof u, "http://[::1]:%d/ok", f->srv.port);
  pinned(f, &r, u, "127.0.0.1", f->srv.port);
  if (strcmp(r.code, DS_HTTPC_EBLOCKED) != 0) fail_msg("expected EBLOCKED, got %s (%s)", r.code, r.msg);
  assert_non_null(strstr(r.msg, "[::1]"));
  /* the wrong port is another destination too */
  xres_t r2 = {0};
  snprintf(u, sizeof u, "http://127.0.0.1:%d/ok", f->srv.port);
  pinned(f, &r2, u, "127.0.0.1", f->srv.port == 1 ? 2 : 1);
  if (strcmp(r2.code, "OK") == 0) fail_msg("connected to an unpinned port");
  assert_int_equal(f->srv.accepted, 0);
  ds_buf_free(&r.body);
  ds_buf_free(&r2.body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_simple_ok, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_incremental, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_50, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_mid_stream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_inside_callback, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dns, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls_untrusted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stall, setup, teardown),
      cmocka_unit_test_setup_teardown(test_partial, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
      cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
      cmocka_unit_test_setup_teardown(test_http_status, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_url, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_with_active, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pin_uses_checked_address, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pin_outlives_rebinding, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pin_refuses_other_socket, setup, teardown),
  };
  return cmocka_run_group_tests_name("http_client", tests, NULL, NULL);
}
