/* fuzz_http.c - libFuzzer target for the HTTP server's connection code.
 *
 * Design: one uv loop and one listener-less server (ds__http_server_new) live for the
 * whole run. Each input gets a fresh AF_UNIX socketpair; one end is adopted as a server
 * connection (ds__http_adopt_fd, the same conn.c code path as TCP: shared read buffer,
 * llhttp, pipelining, limits, output queue, linger close), the other end receives the
 * input followed by a write shutdown, and its output is drained and discarded. The loop
 * runs until the connection is gone. Small limits make the 413/431 paths reachable.
 * The handler answers by path: whole responses, JSON errors, streams (ended or
 * aborted), and responses deferred to a 0 ms timer, so all response paths run.
 *
 * Build: CC=clang cmake -S . -B build-fuzz -DDS_FUZZ=ON -DDS_SANITIZE=ON
 * Run:   build-fuzz/fuzz/fuzz_http tests/fuzz/corpus/fuzz_http -max_total_time=60
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/rbuf.h"
#include "http/http.h"
#include "http/http_int.h"

static uv_loop_t loop;
static ds_http_server_t *srv;

typedef struct later_s {
  uv_timer_t t;
  ds_http_req_t *req;
} later_t;

static void later_free(uv_handle_t *h) { free(h->data); }

static void later_fire(uv_timer_t *t) {
  later_t *l = t->data;
  ds_http_respond(l->req, 200, NULL, "later", 5);
  uv_close((uv_handle_t *)&l->t, later_free);
}

static void later_closed(void *ud) {
  later_t *l = ud;
  uv_timer_stop(&l->t);
  uv_close((uv_handle_t *)&l->t, later_free);
}

static void handler(void *ud, ds_http_req_t *req) {
  char c = req->path_len > 1 ? req->path[1] : '/';
  static const ds_http_header_t hdrs[] = {{"Content-Type", "text/plain"}, {"X-A", "b"}, {NULL, NULL}};
  switch (c) {
  case 's': {
    ds_http_stream_start(req, 200, hdrs);
    ds_rbuf_t *rb = ds_rbuf_new(req->body, req->body_len);
    ds_http_stream_write(req, rb);
    ds_http_stream_write_copy(req, req->target, strlen(req->target));
    ds_rbuf_unref(rb);
    ds_http_stream_end(req);
    break;
  }
  case 'a':
    ds_http_stream_start(req, 200, NULL);
    ds_http_stream_write_copy(req, "x", 1);
    ds_http_stream_abort(req);
    break;
  case 'e':
    ds_http_respond_error(req, 404, hdrs, "no %.*s", (int)req->path_len, req->path);
    break;
  case 'l': {
    later_t *l = ds_xcalloc(1, sizeof *l);
    l->req = req;
    uv_timer_init(&loop, &l->t);
    l->t.data = l;
    uv_timer_start(&l->t, later_fire, 0, 0);
    ds_http_req_on_close(req, later_closed, l);
    break;
  }
  default: {
    ds_buf_t b = DS_BUF_INIT;
    ds_buf_printf(&b, "%s %s %zu ", req->method, req->target, req->nheaders);
    for (size_t i = 0; i < req->nheaders; i++)
      ds_buf_printf(&b, "%s=%s;", req->headers[i].name, req->headers[i].value);
    ds_buf_append(&b, req->body, req->body_len);
    ds_http_respond(req, 200, hdrs, b.data, b.len);
    ds_buf_free(&b);
  }
  }
}

static void drain_peer(uv_poll_t *p, int status, int events) {
  char buf[65536];
  int fd = (int)(intptr_t)p->data;
  while (read(fd, buf, sizeof buf) > 0) {
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  ds_log_set_level(DS_LOG_OFF);
  uv_loop_init(&loop);
  ds_http_opts_t o = {.max_header_bytes = 1024, .max_body_bytes = 4096, .stream_backlog_limit = 8192};
  ds__http_server_new(&loop, &o, handler, NULL, &srv);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  if (ds__http_adopt_fd(srv, sv[0]) != 0) abort();
  uv_poll_t poll;
  uv_poll_init(&loop, &poll, sv[1]);
  poll.data = (void *)(intptr_t)sv[1];
  uv_poll_start(&poll, UV_READABLE, drain_peer);
  size_t off = 0;
  int shut = 0;
  ds_http_stats_t st;
  for (;;) {
    while (off < size) { /* feed as much as the socket takes; the loop makes room */
      ssize_t w = send(sv[1], data + off, size - off, MSG_NOSIGNAL);
      if (w <= 0) break;
      off += (size_t)w;
    }
    if (off == size && !shut) {
      shutdown(sv[1], SHUT_WR);
      shut = 1;
    }
    ds_http_server_stats(srv, &st);
    if (st.connections_open == 0) break;
    uv_run(&loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&poll, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  close(sv[1]);
  return 0;
}
