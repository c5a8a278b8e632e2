/* dsbench-append.c - closed-loop append load generator for durable-stream and the
 * Durable Streams reference server.
 * N keep-alive connections each keep `pipeline` appends in flight (1 = strictly closed
 * loop) for a fixed duration, spread over one or K stream paths, and report requests/s,
 * p50/p99/max latency, error and non-2xx counts, and whether this generator was itself
 * the bottleneck. Kinds: `agents` = POST /agents/<p>; `protocol` = PUT /v1/stream/<p>
 * (application/json) once per path, then POST appends; `health` = GET /health, no storage
 * and no body: the server's own HTTP ceiling, measured by the same generator.
 * It must not measure set-up work (path creation) and never reports a figure it did not
 * observe: the throughput is the responses completed inside the measured window divided by
 * the window's length. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bt.h"

#define MAXDEPTH 64

typedef struct {
  bt_conn_t c;
  uint64_t sent_ts[MAXDEPTH];
  unsigned head, count;
  int reconnect;
} aconn_t;

enum { PH_SETUP, PH_RUN, PH_DRAIN, PH_DONE };

static struct {
  bt_target_t target;
  int protocol;
  int health; /* --kind health: GET /health instead of appends */
  int nconn, depth, npaths, payload_bytes;
  double duration, warmup;
  char prefix[200];
  char *pad;
  aconn_t *conns;
  int phase;
  int setup_next, setup_done, setup_failed;
  uint64_t rr;
  uint64_t t_measure, t_end;
  uint64_t ok, non2xx, errors, status_counts[600];
  uint64_t sent_total;
  long server_pid;
  uint64_t scpu0, swait0, gwait0;
  double server_cpu, server_wait, gen_wait;
  bt_hist_t hist;
} G;

static const char *kind_prefix(void) { return G.protocol ? "/v1/stream/" : "/agents/"; }

static void path_of(int idx, char *out, size_t n) {
  snprintf(out, n, "%s%s/p%04d", kind_prefix(), G.prefix, idx);
}

static int send_health(aconn_t *a) {
  char req[256];
  int n = snprintf(req, sizeof(req), "GET /health HTTP/1.1\r\nHost: %s:%d\r\n\r\n", G.target.host,
                   G.target.port);
  G.sent_total++;
  return bt_conn_send(&a->c, req, (size_t)n);
}

static int send_setup(aconn_t *a, int idx) {
  if (G.health) return send_health(a); /* nothing to create */
  char path[300], req[1024];
  path_of(idx, path, sizeof(path));
  int n;
  if (G.protocol) {
    n = snprintf(req, sizeof(req),
                 "PUT %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                 "Content-Length: 0\r\n\r\n",
                 path, G.target.host, G.target.port);
  } else {
    static const char body[] = "{\"type\":\"bench:setup\",\"payload\":{}}";
    n = snprintf(req, sizeof(req),
                 "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 path, G.target.host, G.target.port, sizeof(body) - 1, body);
  }
  return bt_conn_send(&a->c, req, (size_t)n);
}

static int send_append(aconn_t *a) {
  if (G.health) return send_health(a);
  char path[300], body[8192 + 256], req[8192 + 1024];
  path_of((int)(G.rr++ % (uint64_t)G.npaths), path, sizeof(path));
  /* the same bytes for both kinds: an agents EventInput is also a valid JSON message */
  int bl = snprintf(body, sizeof(body),
                    "{\"type\":\"bench:append\",\"payload\":{\"conn\":%u,\"seq\":%llu,\"pad\":\"%s\"}}",
                    a->c.id, (unsigned long long)G.sent_total, G.pad);
  int n = snprintf(req, sizeof(req),
                   "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n%s",
                   path, G.target.host, G.target.port, bl, body);
  G.sent_total++;
  return bt_conn_send(&a->c, req, (size_t)n);
}

static void push_ts(aconn_t *a, uint64_t ts) {
  a->sent_ts[(a->head + a->count) % MAXDEPTH] = ts;
  a->count++;
}

static uint64_t pop_ts(aconn_t *a) {
  uint64_t ts = a->sent_ts[a->head];
  a->head = (a->head + 1) % MAXDEPTH;
  a->count--;
  return ts;
}

static void fill(aconn_t *a) {
  if (a->c.state == BT_CLOSED || a->reconnect) return;
  while ((int)a->count < G.depth) {
    uint64_t now = bt_now_ns();
    int r;
    if (G.phase == PH_SETUP) {
      if (G.setup_next >= G.npaths) return;
      r = send_setup(a, G.setup_next++);
    } else if (G.phase == PH_RUN) {
      if (now >= G.t_end) return;
      r = send_append(a);
    } else {
      return;
    }
    if (r < 0) {
      a->reconnect = 1;
      return;
    }
    push_ts(a, now);
  }
}

static void on_complete(bt_conn_t *c) {
  aconn_t *a = (aconn_t *)c;
  if (a->count == 0) {
    G.errors++; /* a response we never asked for */
    return;
  }
  uint64_t ts = pop_ts(a);
  uint64_t now = bt_now_ns();
  int st = c->status;
  if (G.phase == PH_SETUP) {
    G.setup_done++;
    if (st < 200 || st > 299) {
      if (G.setup_failed++ == 0) fprintf(stderr, "dsbench-append: path set-up got HTTP %d\n", st);
    }
  } else if (now >= G.t_measure && now <= G.t_end) {
    /* every response completed inside the window counts, also one sent just before it */
    bt_hist_add(&G.hist, now - ts);
    if (st >= 200 && st <= 299) G.ok++;
    else G.non2xx++;
    if (st > 0 && st < 600) G.status_counts[st]++;
  }
  fill(a);
}

static void on_close(bt_conn_t *c, int err) {
  aconn_t *a = (aconn_t *)c;
  (void)err;
  G.errors += 1 + a->count; /* the connection and whatever was in flight on it */
  a->count = 0;
  a->head = 0;
  a->reconnect = 1;
}

static const bt_conn_cbs_t CBS = {.on_complete = on_complete, .on_close = on_close};

static void usage(void) {
  fprintf(stderr,
          "usage: dsbench-append --url http://HOST:PORT [--kind agents|protocol|health]\n"
          "         [-c CONNS]\n"
          "         [-d SECONDS] [--warmup SECONDS] [--paths K] [--pipeline DEPTH]\n"
          "         [--prefix NAME] [--payload-bytes B] [--server-pid PID]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *url = NULL;
  G.nconn = 16;
  G.depth = 1;
  G.npaths = 1;
  G.duration = 5;
  G.warmup = 1;
  G.payload_bytes = 64;
  snprintf(G.prefix, sizeof(G.prefix), "bench/append-%ld", (long)getpid());
  static const struct option opts[] = {
      {"url", 1, 0, 'u'},      {"kind", 1, 0, 'k'},          {"connections", 1, 0, 'c'},
      {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},        {"paths", 1, 0, 'p'},
      {"pipeline", 1, 0, 'P'}, {"prefix", 1, 0, 'x'},        {"payload-bytes", 1, 0, 'b'},
      {"server-pid", 1, 0, 'S'}, {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "u:k:c:d:w:p:P:x:b:S:h", opts, NULL)) != -1) {
    switch (o) {
    case 'u': url = optarg; break;
    case 'k':
      if (strcmp(optarg, "agents") == 0) G.protocol = 0;
      else if (strcmp(optarg, "protocol") == 0) G.protocol = 1;
      else if (strcmp(optarg, "health") == 0) G.health = 1;
      else usage();
      break;
    case 'c': G.nconn = atoi(optarg); break;
    case 'd': G.duration = atof(optarg); break;
    case 'w': G.warmup = atof(optarg); break;
    case 'p': G.npaths = atoi(optarg); break;
    case 'P': G.depth = atoi(optarg); break;
    case 'x': snprintf(G.prefix, sizeof(G.prefix), "%s", optarg); break;
    case 'b': G.payload_bytes = atoi(optarg); break;
    case 'S': G.server_pid = atol(optarg); break;
    default: usage();
    }
  }
  if (!url || bt_parse_url(url, &G.target) != 0 || G.nconn < 1 || G.depth < 1 ||
      G.depth > MAXDEPTH || G.npaths < 1 || G.duration <= 0 || G.warmup < 0 ||
      G.payload_bytes < 0 || G.payload_bytes > 8000)
    usage();
  G.pad = malloc((size_t)G.payload_bytes + 1);
  memset(G.pad, 'x', (size_t)G.payload_bytes);
  G.pad[G.payload_bytes] = 0;
  bt_raise_nofile(G.nconn + 64);
  bt_hist_reset(&G.hist);
  if (bt_loop_init() != 0) return 1;

  G.conns = calloc((size_t)G.nconn, sizeof(aconn_t));
  for (int i = 0; i < G.nconn; i++) {
    G.conns[i].c.id = (uint32_t)i;
    G.conns[i].c.fd = -1;
    int r = bt_conn_open(&G.conns[i].c, &G.target, &CBS);
    if (r < 0) {
      fprintf(stderr, "dsbench-append: connect: %s\n", strerror(-r));
      return 1;
    }
  }
  printf("dsbench-append: kind=%s target=%s:%d connections=%d pipeline=%d paths=%d "
         "duration=%.1fs warmup=%.1fs\n",
         G.health ? "health" : G.protocol ? "protocol" : "agents", G.target.host, G.target.port, G.nconn, G.depth,
         G.npaths, G.duration, G.warmup);

  G.phase = PH_SETUP;
  for (int i = 0; i < G.nconn; i++) fill(&G.conns[i]);
  uint64_t t_setup0 = bt_now_ns(), cpu0 = 0, wall0 = 0, t_drain_deadline = 0;
  while (G.phase != PH_DONE) {
    bt_loop_poll(5);
    uint64_t now = bt_now_ns();
    for (int i = 0; i < G.nconn; i++) {
      aconn_t *a = &G.conns[i];
      if (!a->reconnect || G.phase == PH_DRAIN) continue;
      a->reconnect = 0;
      bt_conn_close(&a->c, 1);
      if (bt_conn_open(&a->c, &G.target, &CBS) == 0) fill(a);
      else a->reconnect = 1;
    }
    if (G.phase == PH_SETUP) {
      if (G.setup_done + (int)G.errors >= G.npaths && G.setup_next >= G.npaths) {
        if (G.setup_failed || G.errors) {
          fprintf(stderr, "dsbench-append: path set-up failed (%d non-2xx, %llu errors)\n",
                    G.setup_failed, (unsigned long long)G.errors);
          return 1;
        }
        G.phase = PH_RUN;
        G.t_measure = now + (uint64_t)(G.warmup * 1e9);
        G.t_end = G.t_measure + (uint64_t)(G.duration * 1e9);
        G.errors = 0;
        for (int i = 0; i < G.nconn; i++) fill(&G.conns[i]);
      } else if (now - t_setup0 > 60ull * 1000000000ull) {
        fprintf(stderr, "dsbench-append: path set-up did not finish within 60 s\n");
        return 1;
      }
    } else if (G.phase == PH_RUN) {
      if (wall0 == 0 && now >= G.t_measure) {
        wall0 = now;
        cpu0 = bt_cpu_ns();
        if (G.server_pid > 0) G.scpu0 = bt_proc_cpu_ns(G.server_pid);
        if (G.server_pid > 0) G.swait0 = bt_proc_wait_ns(G.server_pid);
        G.gwait0 = bt_proc_wait_ns(0);
        G.errors = 0; /* only errors inside the window count */
      }
      if (now >= G.t_end) {
        G.server_cpu = bt_server_cpu_share(G.server_pid, G.scpu0, now - wall0);
        G.server_wait = G.server_pid > 0 ? (double)(bt_proc_wait_ns(G.server_pid) - G.swait0) / (double)(now - wall0) : -1;
        G.gen_wait = (double)(bt_proc_wait_ns(0) - G.gwait0) / (double)(now - wall0);
        G.phase = PH_DRAIN;
        t_drain_deadline = now + 5000000000ull;
      }
    } else if (G.phase == PH_DRAIN) {
      int inflight = 0;
      for (int i = 0; i < G.nconn; i++) inflight += (int)G.conns[i].count;
      if (inflight == 0 || now >= t_drain_deadline) G.phase = PH_DONE;
    }
  }
  double wall = (double)(G.t_end - wall0) / 1e9;
  double cpu_share = (double)(bt_cpu_ns() - cpu0) / 1e9 / wall;
  for (int i = 0; i < G.nconn; i++) bt_conn_close(&G.conns[i].c, 0);

  uint64_t done = G.ok + G.non2xx;
  double rps = (double)done / G.duration;
  printf("requests: %llu completed in %.1fs (%llu 2xx, %llu non-2xx, %llu errors)\n",
         (unsigned long long)done, G.duration, (unsigned long long)G.ok,
         (unsigned long long)G.non2xx, (unsigned long long)G.errors);
  for (int s = 0; s < 600; s++)
    if (G.status_counts[s] && (s < 200 || s > 299))
      printf("  HTTP %d: %llu\n", s, (unsigned long long)G.status_counts[s]);
  printf("throughput: %.1f req/s\n", rps);
  if (G.hist.n)
    printf("latency: p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", bt_ms(bt_hist_pct(&G.hist, 50)),
           bt_ms(bt_hist_pct(&G.hist, 99)), bt_ms(bt_hist_pct(&G.hist, 100)));
  else
    printf("latency: no samples\n");
  int sat = bt_report_cpu(cpu_share);
  /* no latency fields at all when nothing completed: 0 would read as a measurement */
  char lat[128] = "";
  if (G.hist.n)
    snprintf(lat, sizeof(lat), "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f ",
             bt_ms(bt_hist_pct(&G.hist, 50)), bt_ms(bt_hist_pct(&G.hist, 99)),
             bt_ms(bt_hist_pct(&G.hist, 100)));
  if (G.server_cpu >= 0 && G.server_pid > 0)
    printf("server cpu: %.0f%% of one core (pid %ld); it waited for a CPU %.0f%% of the time\n",
           G.server_cpu * 100.0, G.server_pid, G.server_wait * 100.0);
  printf("generator waited for a CPU %.0f%% of the time\n", G.gen_wait * 100.0);
  printf("RESULT tool=append kind=%s conns=%d pipeline=%d paths=%d rps=%.1f %s"
         "ok=%llu non2xx=%llu errors=%llu gen_cpu=%.2f saturated=%d "
         "server_cpu=%.2f server_wait=%.2f gen_wait=%.2f\n",
         G.health ? "health" : G.protocol ? "protocol" : "agents", G.nconn, G.depth, G.npaths, rps, lat,
         (unsigned long long)G.ok,
         (unsigned long long)G.non2xx, (unsigned long long)G.errors, cpu_share, sat,
         G.server_pid > 0 ? G.server_cpu : -1.0, G.server_pid > 0 ? G.server_wait : -1.0,
         G.gen_wait);
  free(G.conns);
  free(G.pad);
  return 0;
}
