/* dsbench-idle.c - memory cost of idle live SSE connections on the server.
 * Reads the server's VmRSS (/proc/<pid>/status; the server must run on this machine),
 * opens C live SSE subscriptions on one stream path (agents: GET /agents/<p>?offset=-1
 * &live=sse; protocol: PUT-create, then GET /v1/stream/<p>?offset=-1&live=sse), waits until
 * every one has its response headers, lets the server settle, reads VmRSS again and
 * reports the delta per connection; then closes them all and reports how much came back.
 * It must only read the server's memory figures, never signal or otherwise touch the
 * server process. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bt.h"

typedef struct {
  bt_conn_t c;
  uint8_t done_connecting, headers_ok;
} iconn_t;

static struct {
  bt_target_t target;
  int protocol;
  int nconns, batch;
  long pid;
  double settle, connect_timeout;
  char path[300];
  iconn_t *conns;
  int opened, outstanding, connected, failed, dropped;
  int put_done, put_status;
} G;

static void on_headers(bt_conn_t *c) {
  iconn_t *s = (iconn_t *)c;
  if (s->done_connecting) return;
  s->done_connecting = 1;
  G.outstanding--;
  if (c->status == 200) {
    s->headers_ok = 1;
    G.connected++;
  } else if (G.failed++ == 0) {
    fprintf(stderr, "dsbench-idle: subscription got HTTP %d\n", c->status);
  }
}

static void on_close(bt_conn_t *c, int err) {
  iconn_t *s = (iconn_t *)c;
  if (!s->done_connecting) {
    s->done_connecting = 1;
    G.outstanding--;
    if (G.failed++ == 0)
      fprintf(stderr, "dsbench-idle: connection failed: %s\n", err ? strerror(err) : "closed");
  } else if (s->headers_ok) {
    G.dropped++;
  }
}

static const bt_conn_cbs_t CBS = {.on_headers = on_headers, .on_close = on_close};

static void put_complete(bt_conn_t *c) {
  G.put_done = 1;
  G.put_status = c->status;
}

static const bt_conn_cbs_t PUT_CBS = {.on_complete = put_complete};

static void wait_secs(double s) {
  uint64_t dl = bt_now_ns() + (uint64_t)(s * 1e9);
  while (bt_now_ns() < dl) bt_loop_poll(20);
}

static void usage(void) {
  fprintf(stderr,
          "usage: dsbench-idle --url http://HOST:PORT --pid SERVER_PID [--kind agents|protocol]\n"
          "         [-c CONNECTIONS] [--settle S] [--path P] [--connect-batch N]\n"
          "         [--connect-timeout S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *url = NULL;
  G.nconns = 1000;
  G.batch = 256;
  G.settle = 2;
  G.connect_timeout = 120;
  G.pid = -1;
  snprintf(G.path, sizeof(G.path), "bench/idle-%ld-%ld", (long)getpid(), (long)(bt_now_ns() % 1000000));
  static const struct option opts[] = {
      {"url", 1, 0, 'u'},    {"kind", 1, 0, 'k'},          {"connections", 1, 0, 'c'},
      {"pid", 1, 0, 'P'},    {"settle", 1, 0, 's'},        {"path", 1, 0, 'p'},
      {"connect-batch", 1, 0, 'B'}, {"connect-timeout", 1, 0, 'T'}, {"help", 0, 0, 'h'},
      {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "u:k:c:P:s:p:B:T:h", opts, NULL)) != -1) {
    switch (o) {
    case 'u': url = optarg; break;
    case 'k':
      if (strcmp(optarg, "agents") == 0) G.protocol = 0;
      else if (strcmp(optarg, "protocol") == 0) G.protocol = 1;
      else usage();
      break;
    case 'c': G.nconns = atoi(optarg); break;
    case 'P': G.pid = atol(optarg); break;
    case 's': G.settle = atof(optarg); break;
    case 'p': snprintf(G.path, sizeof(G.path), "%s", optarg); break;
    case 'B': G.batch = atoi(optarg); break;
    case 'T': G.connect_timeout = atof(optarg); break;
    default: usage();
    }
  }
  if (!url || bt_parse_url(url, &G.target) != 0 || G.nconns < 1 || G.pid <= 0 || G.settle < 0 ||
      G.batch < 1)
    usage();
  long lim = bt_raise_nofile(G.nconns + 64);
  if (lim < G.nconns + 16) {
    fprintf(stderr, "dsbench-idle: RLIMIT_NOFILE is %ld, too low for %d connections\n", lim,
            G.nconns);
    return 1;
  }
  if (bt_rss_kb(G.pid) < 0) {
    fprintf(stderr, "dsbench-idle: cannot read /proc/%ld/status\n", G.pid);
    return 1;
  }
  if (bt_loop_init() != 0) return 1;
  printf("dsbench-idle: kind=%s target=%s:%d pid=%ld connections=%d path=%s settle=%.1fs\n",
         G.protocol ? "protocol" : "agents", G.target.host, G.target.port, G.pid, G.nconns, G.path,
         G.settle);

  if (G.protocol) {
    bt_conn_t pc = {.fd = -1};
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "PUT /v1/stream/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: 0\r\n\r\n",
                     G.path, G.target.host, G.target.port);
    if (bt_conn_open(&pc, &G.target, &PUT_CBS) < 0) return 1;
    bt_conn_send(&pc, req, (size_t)n);
    uint64_t dl = bt_now_ns() + 10000000000ull;
    while (!G.put_done && bt_now_ns() < dl) bt_loop_poll(10);
    bt_conn_close(&pc, 0);
    if (G.put_status < 200 || G.put_status > 299) {
      fprintf(stderr, "dsbench-idle: PUT create got %d\n", G.put_status);
      return 1;
    }
  }

  wait_secs(G.settle);
  long rss0 = bt_rss_kb(G.pid);

  G.conns = calloc((size_t)G.nconns, sizeof(iconn_t));
  for (int i = 0; i < G.nconns; i++) G.conns[i].c.fd = -1;
  uint64_t t0 = bt_now_ns();
  uint64_t dl = t0 + (uint64_t)(G.connect_timeout * 1e9);
  while (G.connected + G.failed < G.nconns && bt_now_ns() < dl) {
    while (G.opened < G.nconns && G.outstanding < G.batch) {
      iconn_t *s = &G.conns[G.opened];
      s->c.id = (uint32_t)G.opened;
      G.opened++;
      G.outstanding++;
      char req[512];
      int n = snprintf(req, sizeof(req),
                       "GET %s%s?offset=-1&live=sse HTTP/1.1\r\nHost: %s:%d\r\n"
                       "Accept: text/event-stream\r\n\r\n",
                       G.protocol ? "/v1/stream/" : "/agents/", G.path, G.target.host,
                       G.target.port);
      int r = bt_conn_open(&s->c, &G.target, &CBS);
      if (r == 0) r = bt_conn_send(&s->c, req, (size_t)n);
      if (r < 0) {
        s->done_connecting = 1;
        G.outstanding--;
        if (G.failed++ == 0) fprintf(stderr, "dsbench-idle: connect: %s\n", strerror(-r));
      }
    }
    bt_loop_poll(10);
  }
  double conn_secs = (double)(bt_now_ns() - t0) / 1e9;
  wait_secs(G.settle);
  long rss1 = bt_rss_kb(G.pid);
  int held = G.connected - G.dropped;
  for (int i = 0; i < G.nconns; i++) bt_conn_close(&G.conns[i].c, 1);
  wait_secs(G.settle);
  long rss2 = bt_rss_kb(G.pid);

  double per_conn = held > 0 ? (double)(rss1 - rss0) * 1024.0 / held : 0;
  printf("connections: %d of %d connected in %.2f s, %d failed, %d dropped by the server before "
         "the reading\n",
         G.connected, G.nconns, conn_secs, G.failed, G.dropped);
  printf("server VmRSS: %ld kB before, %ld kB with %d idle SSE connections, %ld kB after closing "
         "them\n",
         rss0, rss1, held, rss2);
  printf("per connection: %.0f bytes (RSS delta / connections held)\n", per_conn);
  printf("RESULT tool=idle kind=%s conns=%d held=%d failed=%d rss_before_kb=%ld rss_after_kb=%ld "
         "rss_closed_kb=%ld per_conn_bytes=%.0f connect_s=%.2f\n",
         G.protocol ? "protocol" : "agents", G.nconns, held, G.failed, rss0, rss1, rss2, per_conn,
         conn_secs);
  free(G.conns);
  return held == G.nconns ? 0 : 1;
}
