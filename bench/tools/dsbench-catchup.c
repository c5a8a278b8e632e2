/* dsbench-catchup.c - catch-up read benchmark.
 * Seeds one stream with N events (pipelined POSTs over several connections) unless it
 * already holds exactly N, then measures
 *   (a) full non-live reads of all N events (events/s, MB/s of response body; median of
 *       --reads runs). agents: GET /agents/<p> (history, then the response ends);
 *       protocol: GET /v1/stream/<p>?offset=-1, then follow Stream-Next-Offset until a
 *       response says Stream-Up-To-Date: true;
 *   (b) reads of only the last --tail events (agents: offset=<N-tail-1>, exclusive;
 *       protocol: the offset at which event N-tail starts, inclusive), --tail-reads times:
 *       median, p90 and min latency. This is what shows whether the server indexes its
 *       streams: the cost must not grow with N.
 * Every read is checked: a read that returns the wrong number of events is reported as
 * an error, never as a figure. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bt.h"

#define SEED_DEPTH_MAX 64

typedef struct {
  bt_conn_t c;
  unsigned inflight;
  int dead;
} sconn_t;

static struct {
  bt_target_t target;
  int protocol;
  long events, tail;
  int reads, tail_reads, seed_conns, seed_depth, pad_bytes;
  char path[300];
  char *pad;
  /* seeding */
  sconn_t *sc;
  long to_send, sent, acked, seed_errors;
  char (*top)[48]; /* the tail+1 largest Stream-Next-Offsets seen while seeding */
  int ntop;
  /* reads */
  bt_conn_t rc;
  int rc_done, rc_failed;
  uint64_t body_bytes, counted;
  int line_pos;      /* SSE: match position of "data:" at line start, -1 = not matching */
  int depth, in_str, esc; /* JSON array scanner */
  char known_next[48];     /* a Stream-Next-Offset seen outside seeding */
  long server_pid;
} G;

static const char *prefix(void) { return G.protocol ? "/v1/stream/" : "/agents/"; }

/* ---- counting response bodies -------------------------------------------------- */

/* Counts "data:" lines. memchr jumps from line to line (the generator must not be the
 * bottleneck: a byte-at-a-time loop here capped a full read at about 1M events/s). A line
 * start may be split across reads: line_pos carries the match across. */
static void count_sse(const char *p, size_t n) {
  static const char key[] = "data:";
  const char *end = p + n;
  while (p < end) {
    if (G.line_pos < 0) { /* inside a line that is not a data line: skip to its end */
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      if (!nl) return;
      p = nl + 1;
      G.line_pos = 0;
      continue;
    }
    char ch = *p++;
    if (ch == '\n') {
      G.line_pos = 0;
    } else if (ch == key[G.line_pos]) {
      if (++G.line_pos == 5) {
        G.counted++;
        G.line_pos = -1;
      }
    } else {
      G.line_pos = -1;
    }
  }
}

/* Counts the elements of a top-level JSON array of objects (our messages). Inside a
 * string only '"' and '\\' matter, so the scan jumps to the next of them. */
static void count_json(const char *p, size_t n) {
  const char *end = p + n;
  while (p < end) {
    if (G.in_str) {
      if (G.esc) {
        G.esc = 0;
        p++;
        continue;
      }
      const char *dq = memchr(p, '"', (size_t)(end - p));
      const char *lim = dq ? dq : end;
      const char *bs = memchr(p, '\\', (size_t)(lim - p));
      const char *q = bs ? bs : lim;
      if (q == end) return;
      if (*q == '\\') G.esc = 1;
      else G.in_str = 0;
      p = q + 1;
      continue;
    }
    char ch = *p++;
    switch (ch) {
    case '"': G.in_str = 1; break;
    case '{':
    case '[':
      if (G.depth == 1 && ch == '{') G.counted++;
      G.depth++;
      break;
    case '}':
    case ']': G.depth--; break;
    default: break;
    }
  }
}

static void rc_body(bt_conn_t *c, const char *p, size_t n) {
  (void)c;
  G.body_bytes += n;
  if (G.protocol) count_json(p, n);
  else count_sse(p, n);
}

static void rc_complete(bt_conn_t *c) {
  (void)c;
  G.rc_done = 1;
}

static void rc_close(bt_conn_t *c, int err) {
  (void)c;
  (void)err;
  G.rc_failed = 1;
}

static const bt_conn_cbs_t RC_CBS = {.on_body = rc_body, .on_complete = rc_complete, .on_close = rc_close};

/* One GET on the read connection (reconnecting if needed); waits for the whole response.
 * Returns the HTTP status or -1. Counts stay in G.counted / G.body_bytes. */
static int do_get(const char *query) {
  if (G.rc.state == BT_CLOSED) {
    G.rc.fd = -1;
    if (bt_conn_open(&G.rc, &G.target, &RC_CBS) < 0) return -1;
  }
  char req[1024];
  int n = snprintf(req, sizeof(req), "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", prefix(),
                   G.path, query, G.target.host, G.target.port);
  G.rc_done = G.rc_failed = 0;
  G.line_pos = 0;
  G.depth = G.in_str = G.esc = 0;
  if (bt_conn_send(&G.rc, req, (size_t)n) < 0) return -1;
  uint64_t dl = bt_now_ns() + 300ull * 1000000000ull;
  while (!G.rc_done && !G.rc_failed && bt_now_ns() < dl) bt_loop_poll(100);
  if (!G.rc_done) {
    bt_conn_close(&G.rc, 1);
    return -1;
  }
  return G.rc.status;
}

/* ---- seeding ------------------------------------------------------------------- */

static void keep_top(const char *off) {
  /* keep the ntop largest, sorted ascending; offsets are lexicographically ordered */
  int cap = (int)G.tail + 1;
  if (G.ntop == cap && strcmp(off, G.top[0]) <= 0) return;
  int i;
  if (G.ntop < cap) {
    i = G.ntop++;
  } else {
    i = cap - 1;
    memmove(G.top[0], G.top[1], sizeof(G.top[0]) * (size_t)(cap - 1));
  }
  /* insert at the right place among [0, i] */
  while (i > 0 && strcmp(G.top[i - 1], off) > 0) {
    memcpy(G.top[i], G.top[i - 1], sizeof(G.top[0]));
    i--;
  }
  snprintf(G.top[i], sizeof(G.top[0]), "%s", off);
}

static int seed_send(sconn_t *s) {
  char body[2048], req[4096];
  int bl = snprintf(body, sizeof(body),
                    "{\"type\":\"bench:catchup\",\"payload\":{\"i\":%ld,\"text\":\"%s\"}}", G.sent,
                    G.pad);
  int n = snprintf(req, sizeof(req),
                   "POST %s%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n%s",
                   prefix(), G.path, G.target.host, G.target.port, bl, body);
  G.sent++;
  s->inflight++;
  return bt_conn_send(&s->c, req, (size_t)n);
}

static void seed_fill(sconn_t *s) {
  while (!s->dead && s->c.state != BT_CLOSED && (int)s->inflight < G.seed_depth &&
         G.sent < G.to_send)
    if (seed_send(s) < 0) s->dead = 1;
}

static void seed_complete(bt_conn_t *c) {
  sconn_t *s = (sconn_t *)c;
  if (s->inflight) s->inflight--;
  if (c->status >= 200 && c->status <= 299) {
    G.acked++;
    if (c->next_offset[0]) keep_top(c->next_offset);
  } else if (G.seed_errors++ == 0) {
    fprintf(stderr, "dsbench-catchup: seeding append got HTTP %d\n", c->status);
  }
  seed_fill(s);
}

static void seed_close(bt_conn_t *c, int err) {
  sconn_t *s = (sconn_t *)c;
  G.seed_errors += 1 + s->inflight;
  s->inflight = 0;
  s->dead = 1;
  fprintf(stderr, "dsbench-catchup: seeding connection lost: %s\n", err ? strerror(err) : "closed");
}

static const bt_conn_cbs_t SEED_CBS = {.on_complete = seed_complete, .on_close = seed_close};

static int seed(long n) {
  G.to_send = n;
  G.sent = G.acked = G.seed_errors = 0;
  G.sc = calloc((size_t)G.seed_conns, sizeof(sconn_t));
  for (int i = 0; i < G.seed_conns; i++) {
    G.sc[i].c.id = (uint32_t)(100 + i);
    if (bt_conn_open(&G.sc[i].c, &G.target, &SEED_CBS) < 0) return -1;
    seed_fill(&G.sc[i]);
  }
  uint64_t t0 = bt_now_ns(), last_report = t0;
  for (;;) {
    bt_loop_poll(50);
    int alive = 0, busy = 0;
    for (int i = 0; i < G.seed_conns; i++) {
      if (!G.sc[i].dead) alive++;
      if (G.sc[i].inflight) busy++;
    }
    if (G.acked + G.seed_errors >= n || (!busy && G.sent >= n) || alive == 0) break;
    uint64_t now = bt_now_ns();
    if (now - last_report > 5000000000ull) {
      fprintf(stderr, "dsbench-catchup: seeding %ld/%ld\n", G.acked, n);
      last_report = now;
    }
  }
  double secs = (double)(bt_now_ns() - t0) / 1e9;
  printf("seeded %ld events in %.1f s (%.0f events/s, %ld errors)\n", G.acked, secs,
         (double)G.acked / secs, G.seed_errors);
  for (int i = 0; i < G.seed_conns; i++) bt_conn_close(&G.sc[i].c, 0);
  free(G.sc);
  G.sc = NULL;
  return G.seed_errors || G.acked != n ? -1 : 0;
}

/* A simple one-off request on the read connection with a body (PUT/POST). */
static int do_request(const char *method, const char *body) {
  if (G.rc.state == BT_CLOSED) {
    G.rc.fd = -1;
    if (bt_conn_open(&G.rc, &G.target, &RC_CBS) < 0) return -1;
  }
  char req[2048];
  int n = snprintf(req, sizeof(req),
                   "%s %s%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n%s",
                   method, prefix(), G.path, G.target.host, G.target.port, strlen(body), body);
  G.rc_done = G.rc_failed = 0;
  if (bt_conn_send(&G.rc, req, (size_t)n) < 0) return -1;
  uint64_t dl = bt_now_ns() + 30ull * 1000000000ull;
  while (!G.rc_done && !G.rc_failed && bt_now_ns() < dl) bt_loop_poll(100);
  return G.rc_done ? G.rc.status : -1;
}

/* ---- full and tail reads ------------------------------------------------------- */

/* Reads everything from the start; returns elapsed ns or 0 on error. */
static uint64_t full_read(uint64_t *events, uint64_t *bytes) {
  G.counted = G.body_bytes = 0;
  uint64_t t0 = bt_now_ns();
  if (!G.protocol) {
    int st = do_get("");
    if (st != 200) {
      fprintf(stderr, "dsbench-catchup: full read got %d\n", st);
      return 0;
    }
  } else {
    char q[128] = "?offset=-1";
    for (int pages = 0;; pages++) {
      uint64_t before = G.counted;
      int st = do_get(q);
      if (st != 200) {
        fprintf(stderr, "dsbench-catchup: full read page %d got %d\n", pages, st);
        return 0;
      }
      if (G.rc.up_to_date) break;
      if (G.counted == before || !G.rc.next_offset[0]) {
        fprintf(stderr, "dsbench-catchup: full read made no progress and is not up to date\n");
        return 0;
      }
      snprintf(q, sizeof(q), "?offset=%s", G.rc.next_offset);
    }
  }
  *events = G.counted;
  *bytes = G.body_bytes;
  return bt_now_ns() - t0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void usage(void) {
  fprintf(stderr,
          "usage: dsbench-catchup --url http://HOST:PORT [--kind agents|protocol] [--events N]\n"
          "         [--path P] [--reads R] [--tail T] [--tail-reads K] [--seed-conns C]\n"
          "         [--seed-depth D] [--pad-bytes B] [--server-pid PID]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *url = NULL;
  G.events = 100000;
  G.reads = 3;
  G.tail = 10;
  G.tail_reads = 50;
  G.seed_conns = 8;
  G.seed_depth = 16;
  G.pad_bytes = 100;
  G.path[0] = 0;
  static const struct option opts[] = {
      {"url", 1, 0, 'u'},        {"kind", 1, 0, 'k'},       {"events", 1, 0, 'n'},
      {"path", 1, 0, 'p'},       {"reads", 1, 0, 'r'},      {"tail", 1, 0, 't'},
      {"tail-reads", 1, 0, 'T'}, {"seed-conns", 1, 0, 'c'}, {"seed-depth", 1, 0, 'D'},
      {"pad-bytes", 1, 0, 'b'},  {"server-pid", 1, 0, 'S'}, {"help", 0, 0, 'h'},
      {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "u:k:n:p:r:t:T:c:D:b:S:h", opts, NULL)) != -1) {
    switch (o) {
    case 'u': url = optarg; break;
    case 'k':
      if (strcmp(optarg, "agents") == 0) G.protocol = 0;
      else if (strcmp(optarg, "protocol") == 0) G.protocol = 1;
      else usage();
      break;
    case 'n': G.events = atol(optarg); break;
    case 'p': snprintf(G.path, sizeof(G.path), "%s", optarg); break;
    case 'r': G.reads = atoi(optarg); break;
    case 't': G.tail = atol(optarg); break;
    case 'T': G.tail_reads = atoi(optarg); break;
    case 'c': G.seed_conns = atoi(optarg); break;
    case 'D': G.seed_depth = atoi(optarg); break;
    case 'b': G.pad_bytes = atoi(optarg); break;
    case 'S': G.server_pid = atol(optarg); break;
    default: usage();
    }
  }
  if (!url || bt_parse_url(url, &G.target) != 0 || G.tail < 1 || G.events < G.tail + 1 ||
      G.reads < 0 || G.tail_reads < 0 || G.seed_conns < 1 || G.seed_depth < 1 ||
      G.seed_depth > SEED_DEPTH_MAX || G.pad_bytes < 0 || G.pad_bytes > 1500)
    usage();
  if (!G.path[0]) snprintf(G.path, sizeof(G.path), "bench/catchup-%ld", G.events);
  G.pad = malloc((size_t)G.pad_bytes + 1);
  memset(G.pad, 'y', (size_t)G.pad_bytes);
  G.pad[G.pad_bytes] = 0;
  G.top = calloc((size_t)G.tail + 1, sizeof(G.top[0]));
  bt_raise_nofile(G.seed_conns + 64);
  if (bt_loop_init() != 0) return 1;
  G.rc.fd = -1;
  G.rc.id = 1;
  printf("dsbench-catchup: kind=%s target=%s:%d path=%s events=%ld\n",
         G.protocol ? "protocol" : "agents", G.target.host, G.target.port, G.path, G.events);

  /* how many events are there already? */
  long existing = 0;
  if (!G.protocol) {
    char q[64];
    snprintf(q, sizeof(q), "?offset=%ld", G.events - 2);
    G.counted = 0;
    int st = do_get(q);
    if (st != 200) {
      fprintf(stderr, "dsbench-catchup: probe read got %d\n", st);
      return 1;
    }
    if (G.counted == 1) {
      existing = G.events; /* exactly one event after offset N-2: the stream holds N */
    } else if (G.counted > 1) {
      fprintf(stderr, "dsbench-catchup: %s already holds more than %ld events; use --path\n",
                      G.path, G.events);
      return 1;
    } else {
      /* learn the count from where one more event lands */
      int st2 = do_request("POST", "{\"type\":\"bench:catchup\",\"payload\":{\"probe\":true}}");
      if (st2 < 200 || st2 > 299 || !G.rc.offset[0]) {
        fprintf(stderr, "dsbench-catchup: probe append got %d (Stream-Offset '%s')\n", st2,
                G.rc.offset);
        return 1;
      }
      existing = atol(G.rc.offset) + 1;
    }
  } else {
    int st = do_request("PUT", "");
    snprintf(G.known_next, sizeof(G.known_next), "%s", G.rc.next_offset);
    if (st == 201) {
      existing = 0;
    } else if (st == 200) {
      uint64_t ev = 0, by = 0;
      if (!full_read(&ev, &by)) return 1;
      existing = (long)ev;
    } else {
      fprintf(stderr, "dsbench-catchup: PUT create got %d\n", st);
      return 1;
    }
  }
  if (existing > G.events) {
    fprintf(stderr, "dsbench-catchup: %s already holds %ld > %ld events; use --path\n", G.path,
            existing, G.events);
    return 1;
  }
  int seeded_now = 0;
  if (existing < G.events) {
    if (seed(G.events - existing) != 0) {
      fprintf(stderr, "dsbench-catchup: seeding failed\n");
      return 1;
    }
    seeded_now = 1;
  } else {
    printf("stream already holds %ld events: not seeding\n", G.events);
  }

  /* (a) full reads */
  double med_eps = 0, med_mbps = 0, med_s = 0;
  double server_cpu = -1, server_wait = -1, gen_wait = -1, gen_cpu = -1;
  int gen_sat = 0;
  int full_ok = 0;
  if (G.reads > 0) {
    /* CPU use and run-queue waits over all full reads: was anyone starved? */
    uint64_t w0 = bt_now_ns(), scpu0 = 0, swait0 = 0, gwait0 = bt_proc_wait_ns(0), gcpu0 = bt_cpu_ns();
    if (G.server_pid > 0) {
      scpu0 = bt_proc_cpu_ns(G.server_pid);
      swait0 = bt_proc_wait_ns(G.server_pid);
    }
    double *eps = calloc((size_t)G.reads, sizeof(double));
    double *mbps = calloc((size_t)G.reads, sizeof(double));
    double *secs = calloc((size_t)G.reads, sizeof(double));
    for (int i = 0; i < G.reads; i++) {
      uint64_t ev = 0, by = 0;
      uint64_t ns = full_read(&ev, &by);
      if (!ns) return 1;
      if ((long)ev != G.events) {
        fprintf(stderr, "dsbench-catchup: full read returned %llu events, expected %ld\n",
                (unsigned long long)ev, G.events);
        return 1;
      }
      secs[i] = (double)ns / 1e9;
      eps[i] = (double)ev / secs[i];
      mbps[i] = (double)by / 1e6 / secs[i];
      printf("full read %d: %llu events, %.1f MB in %.3f s (%.0f events/s, %.1f MB/s)\n", i + 1,
             (unsigned long long)ev, (double)by / 1e6, secs[i], eps[i], mbps[i]);
    }
    /* median by events/s; MB/s and time taken from the same run */
    int idx[64];
    int nr = G.reads < 64 ? G.reads : 64;
    for (int i = 0; i < nr; i++) idx[i] = i;
    for (int i = 0; i < nr; i++)
      for (int j = i + 1; j < nr; j++)
        if (eps[idx[j]] < eps[idx[i]]) {
          int t = idx[i];
          idx[i] = idx[j];
          idx[j] = t;
        }
    uint64_t wall = bt_now_ns() - w0;
    gen_wait = (double)(bt_proc_wait_ns(0) - gwait0) / (double)wall;
    if (G.server_pid > 0) {
      server_cpu = bt_server_cpu_share(G.server_pid, scpu0, wall);
      server_wait = (double)(bt_proc_wait_ns(G.server_pid) - swait0) / (double)wall;
      printf("full reads: server cpu %.0f%% of one core, it waited for a CPU %.0f%% of the time\n",
             server_cpu * 100.0, server_wait * 100.0);
    }
    printf("full reads: generator waited for a CPU %.0f%% of the time\n", gen_wait * 100.0);
    gen_cpu = (double)(bt_cpu_ns() - gcpu0) / (double)wall;
    gen_sat = bt_report_cpu(gen_cpu);
    int m = idx[nr / 2];
    med_eps = eps[m];
    med_mbps = mbps[m];
    med_s = secs[m];
    full_ok = 1;
    free(eps);
    free(mbps);
    free(secs);
  }

  /* (b) tail reads */
  char tail_q[96] = "";
  if (!G.protocol) {
    snprintf(tail_q, sizeof(tail_q), "?offset=%ld", G.events - G.tail - 1);
  } else {
    /* our server's offsets are 16-digit sequence numbers (message k starts at offset k);
     * the reference's are opaque, so there we use the Stream-Next-Offset acknowledged after
     * event N-tail while seeding (the tail+1-th largest one) */
    const char *sample = G.ntop ? G.top[G.ntop - 1] : G.known_next;
    int numeric = strlen(sample) == 16 && strspn(sample, "0123456789") == 16;
    if (numeric)
      snprintf(tail_q, sizeof(tail_q), "?offset=%016ld", G.events - G.tail);
    else if (seeded_now && G.ntop == G.tail + 1 && G.events - existing >= G.tail + 1)
      snprintf(tail_q, sizeof(tail_q), "?offset=%s", G.top[0]);
  }
  uint64_t tmed = 0, tp90 = 0, tmin = 0;
  int tail_ok = 0;
  if (G.tail_reads > 0 && tail_q[0]) {
    uint64_t *lat = calloc((size_t)G.tail_reads, sizeof(uint64_t));
    int good = 1;
    do_get(tail_q); /* one untimed read: opens the connection */
    for (int i = 0; i < G.tail_reads && good; i++) {
      G.counted = G.body_bytes = 0;
      uint64_t t0 = bt_now_ns();
      int st = do_get(tail_q);
      lat[i] = bt_now_ns() - t0;
      if (st != 200 || (long)G.counted != G.tail) {
        fprintf(stderr, "dsbench-catchup: tail read %s got HTTP %d with %llu events (want %ld)\n",
                tail_q, st, (unsigned long long)G.counted, G.tail);
        good = 0;
      }
    }
    if (good) {
      qsort(lat, (size_t)G.tail_reads, sizeof(uint64_t), cmp_u64);
      tmed = lat[G.tail_reads / 2];
      tp90 = lat[(G.tail_reads * 9) / 10 < G.tail_reads ? (G.tail_reads * 9) / 10 : G.tail_reads - 1];
      tmin = lat[0];
      tail_ok = 1;
      printf("tail read (last %ld of %ld, %s): median %.3f ms  p90 %.3f ms  min %.3f ms over %d "
             "reads\n",
             G.tail, G.events, tail_q, bt_ms(tmed), bt_ms(tp90), bt_ms(tmin), G.tail_reads);
    }
    free(lat);
  } else if (G.tail_reads > 0) {
    printf("tail read: skipped (the stream's opaque offsets were not recorded in this run)\n");
  }
  bt_conn_close(&G.rc, 0);

  printf("RESULT tool=catchup kind=%s events=%ld full_ok=%d full_eps=%.0f full_mbps=%.1f "
         "full_s=%.3f tail_ok=%d tail=%ld tail_med_ms=%.3f tail_p90_ms=%.3f tail_min_ms=%.3f "
         "server_cpu=%.2f server_wait=%.2f gen_wait=%.2f gen_cpu=%.2f saturated=%d\n",
         G.protocol ? "protocol" : "agents", G.events, full_ok, med_eps, med_mbps, med_s, tail_ok,
         G.tail, bt_ms(tmed), bt_ms(tp90), bt_ms(tmin), server_cpu, server_wait, gen_wait,
         gen_cpu, gen_sat);
  free(G.pad);
  free(G.top);
  return (G.reads > 0 && !full_ok) || (G.tail_reads > 0 && tail_q[0] && !tail_ok) ? 1 : 0;
}
