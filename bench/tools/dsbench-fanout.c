/* dsbench-fanout.c - SSE fan-out latency and completeness benchmark.
 * Opens S live SSE subscribers on one fresh stream path (agents: GET /agents/<p>?offset=-1
 * &live=sse; protocol: PUT-create, then GET /v1/stream/<p>?offset=-1&live=sse), waits until
 * every subscriber has its response headers, then appends at a fixed rate R for D seconds
 * from a few writer connections. Each event carries its sequence number and the monotonic
 * send time in ns; each subscriber parses the frames it receives and records delivery
 * latency (receive time - send time, same clock, same process), duplicates and gaps.
 * Reports p50/p99/max, delivered/expected, missed and duplicated counts, the writer's
 * actual rate, subscriber drops, and whether this generator itself saturated a core.
 * It must keep per-subscriber memory small (10,000 subscribers): reads go through the
 * shared buffer in bt.c and only a partial line is kept per connection.
 * --procs P spreads the subscribers over P reader processes (forked before any connection;
 * this process then only writes and collects): one process reading 1,000 sockets at 200
 * events/s uses about a whole core on a small machine, and a saturated reader would add its
 * own queueing to the latencies. Timestamps are CLOCK_MONOTONIC, the same clock in every
 * process; readers send back their counts and latency histograms over a pipe. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bt.h"

typedef struct {
  bt_conn_t c;
  uint8_t headers_ok;
  uint8_t done_connecting; /* headers seen or failed */
  uint8_t closed;
  char *line;              /* partial line carried between reads */
  uint16_t line_len, line_cap;
  uint8_t *seen;           /* bitmap over sequence numbers */
  uint32_t unique, dups;
} sub_t;

typedef struct {
  bt_conn_t c;
  int busy;
  int dead;
  uint32_t seq; /* event in flight */
} writer_t;

static struct {
  bt_target_t target;
  int protocol;
  int nsubs, nwriters;
  double rate, duration, drain, connect_timeout, warmup;
  int batch;
  char path[300];
  sub_t *subs;
  writer_t *writers;
  uint32_t total;          /* events planned = rate * (warmup + duration) */
  uint32_t warm;           /* the first `warm` events only warm the server up: not counted */
  uint32_t next_seq;
  uint32_t acked, write_errors;
  int opened, outstanding, connected, connect_failed, dropped;
  uint64_t unique_total, dups_total, out_of_range;
  int setup_state;         /* protocol PUT: 0 idle, 1 sent, 2 done, -1 failed */
  long server_pid;
  bt_hist_t hist;
  int procs;               /* reader processes (0 = subscribers read in this process) */
  int first, count;        /* this process's subscribers: [first, first + count) */
} G;

/* ---- reader processes (--procs) ------------------------------------------------ */

enum { MSG_GO = 1, MSG_DRAIN = 2 };
typedef struct {
  uint32_t kind, acked;
} ctl_msg_t;
typedef struct {
  int connected, failed;
  double conn_secs;
} ready_msg_t;
typedef struct {
  uint64_t unique, dups, out_of_range;
  int dropped, live;
  uint64_t cpu_ns, wait_ns, wall_ns;
  bt_hist_t hist;
} result_msg_t;

static int write_full(int fd, const void *p, size_t n) {
  const char *b = p;
  while (n) {
    ssize_t w = write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads exactly n bytes, waiting at most timeout_ms overall (-1 = no limit). */
static int read_full(int fd, void *p, size_t n, int timeout_ms) {
  char *b = p;
  uint64_t dl = timeout_ms < 0 ? 0 : bt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
  while (n) {
    if (timeout_ms >= 0) {
      uint64_t now = bt_now_ns();
      if (now >= dl) return -1;
      struct pollfd pf = {.fd = fd, .events = POLLIN};
      int pr = poll(&pf, 1, (int)((dl - now) / 1000000ull) + 1);
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) return -1;
    }
    ssize_t r = read(fd, b, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

/* ---- subscribers --------------------------------------------------------------- */

static uint64_t parse_u64(const char *p, const char *end, const char **out) {
  uint64_t v = 0;
  while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
  *out = p;
  return v;
}

/* Scans one data line for every "seq":N ... "ts":T pair (a frame may batch messages). */
static void scan_data(sub_t *s, const char *p, const char *end, uint64_t now) {
  static const char kseq[] = "\"seq\":", kts[] = "\"ts\":";
  while (p < end) {
    const char *q = memmem(p, (size_t)(end - p), kseq, sizeof(kseq) - 1);
    if (!q) return;
    q += sizeof(kseq) - 1;
    uint64_t seq = parse_u64(q, end, &q);
    const char *t = memmem(q, (size_t)(end - q), kts, sizeof(kts) - 1);
    if (!t) return;
    t += sizeof(kts) - 1;
    uint64_t ts = parse_u64(t, end, &p);
    if (seq >= G.total) {
      G.out_of_range++;
      continue;
    }
    if (seq < G.warm) continue;
    uint32_t i = (uint32_t)seq - G.warm;
    uint8_t bit = (uint8_t)(1u << (i & 7));
    if (s->seen[i >> 3] & bit) {
      s->dups++;
      G.dups_total++;
      continue;
    }
    s->seen[i >> 3] |= bit;
    s->unique++;
    G.unique_total++;
    bt_hist_add(&G.hist, now > ts ? now - ts : 0);
  }
}

static void handle_line(sub_t *s, const char *p, size_t n, uint64_t now) {
  if (n > 0 && p[n - 1] == '\r') n--;
  if (n >= 5 && memcmp(p, "data:", 5) == 0) scan_data(s, p + 5, p + n, now);
}

static void sub_body(bt_conn_t *c, const char *p, size_t n) {
  sub_t *s = (sub_t *)c;
  uint64_t now = bt_now_ns();
  const char *end = p + n;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) {
      size_t rest = (size_t)(end - p);
      size_t need = s->line_len + rest;
      if (need > 65535) { /* a runaway line: drop it, it cannot be one of our frames */
        s->line_len = 0;
        return;
      }
      if (need > s->line_cap) {
        size_t cap = s->line_cap ? s->line_cap : 128;
        while (cap < need) cap *= 2;
        if (cap > 65535) cap = 65535;
        s->line = realloc(s->line, cap);
        s->line_cap = (uint16_t)cap;
      }
      memcpy(s->line + s->line_len, p, rest);
      s->line_len = (uint16_t)need;
      return;
    }
    if (s->line_len) {
      size_t part = (size_t)(nl - p);
      size_t need = s->line_len + part;
      if (need <= 65535) {
        if (need > s->line_cap) {
          size_t cap = s->line_cap;
          while (cap < need) cap *= 2;
          if (cap > 65535) cap = 65535;
          s->line = realloc(s->line, cap);
          s->line_cap = (uint16_t)cap;
        }
        memcpy(s->line + s->line_len, p, part);
        handle_line(s, s->line, need, now);
      }
      s->line_len = 0;
    } else {
      handle_line(s, p, (size_t)(nl - p), now);
    }
    p = nl + 1;
  }
}

static void sub_headers(bt_conn_t *c) {
  sub_t *s = (sub_t *)c;
  if (s->done_connecting) return;
  s->done_connecting = 1;
  G.outstanding--;
  if (c->status == 200) {
    s->headers_ok = 1;
    G.connected++;
  } else {
    if (G.connect_failed++ == 0)
      fprintf(stderr, "dsbench-fanout: subscriber got HTTP %d\n", c->status);
  }
}

static void sub_close(bt_conn_t *c, int err) {
  sub_t *s = (sub_t *)c;
  (void)err;
  s->closed = 1;
  if (!s->done_connecting) {
    s->done_connecting = 1;
    G.outstanding--;
    if (G.connect_failed++ == 0)
      fprintf(stderr, "dsbench-fanout: subscriber connection failed: %s\n",
              err ? strerror(err) : "closed by server");
  } else if (s->headers_ok) {
    G.dropped++;
  }
}

static const bt_conn_cbs_t SUB_CBS = {
    .on_headers = sub_headers, .on_body = sub_body, .on_close = sub_close};

static int sub_open(sub_t *s) {
  int r = bt_conn_open(&s->c, &G.target, &SUB_CBS);
  if (r < 0) return r;
  char req[512];
  int n = snprintf(req, sizeof(req),
                   "GET %s%s?offset=-1&live=sse HTTP/1.1\r\nHost: %s:%d\r\n"
                   "Accept: text/event-stream\r\n\r\n",
                   G.protocol ? "/v1/stream/" : "/agents/", G.path, G.target.host, G.target.port);
  return bt_conn_send(&s->c, req, (size_t)n);
}

/* ---- writers ------------------------------------------------------------------- */

static void writer_complete(bt_conn_t *c) {
  writer_t *w = (writer_t *)c;
  w->busy = 0;
  if (G.setup_state == 1) {
    G.setup_state = (c->status >= 200 && c->status <= 299) ? 2 : -1;
    if (G.setup_state < 0) fprintf(stderr, "dsbench-fanout: PUT create got HTTP %d\n", c->status);
    return;
  }
  if (c->status >= 200 && c->status <= 299) {
    if (w->seq >= G.warm) G.acked++;
  } else if (G.write_errors++ == 0) fprintf(stderr, "dsbench-fanout: append got HTTP %d\n", c->status);
}

static void writer_close(bt_conn_t *c, int err) {
  writer_t *w = (writer_t *)c;
  if (w->busy) G.write_errors++;
  w->busy = 0;
  w->dead = 1;
  fprintf(stderr, "dsbench-fanout: writer connection lost: %s\n", err ? strerror(err) : "closed");
}

static const bt_conn_cbs_t WRITER_CBS = {.on_complete = writer_complete, .on_close = writer_close};

static int writer_send_event(writer_t *w, uint32_t seq) {
  char body[256], req[1024];
  int bl = snprintf(body, sizeof(body),
                    "{\"type\":\"bench:fanout\",\"payload\":{\"seq\":%u,\"ts\":%llu}}", seq,
                    (unsigned long long)bt_now_ns());
  int n = snprintf(req, sizeof(req),
                   "POST %s%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n%s",
                   G.protocol ? "/v1/stream/" : "/agents/", G.path, G.target.host, G.target.port,
                   bl, body);
  w->busy = 1;
  w->seq = seq;
  return bt_conn_send(&w->c, req, (size_t)n);
}

static writer_t *idle_writer(void) {
  for (int i = 0; i < G.nwriters; i++)
    if (!G.writers[i].busy && !G.writers[i].dead && G.writers[i].c.state == BT_OPEN)
      return &G.writers[i];
  return NULL;
}

/* Connects this process's subscribers [G.first, G.first + G.count) in batches (so the
 * server's accept backlog never overflows) and waits for their response headers. */
static void connect_subscribers(double *conn_secs) {
  size_t bitmap_bytes = (G.total - G.warm + 7) / 8;
  G.subs = calloc((size_t)G.count, sizeof(sub_t));
  for (int i = 0; i < G.count; i++) G.subs[i].c.fd = -1;
  uint64_t t_conn0 = bt_now_ns();
  uint64_t conn_deadline = t_conn0 + (uint64_t)(G.connect_timeout * 1e9);
  while (G.connected + G.connect_failed < G.count && bt_now_ns() < conn_deadline) {
    while (G.opened < G.count && G.outstanding < G.batch) {
      sub_t *s = &G.subs[G.opened];
      s->c.id = (uint32_t)(G.first + G.opened);
      s->c.fd = -1;
      s->seen = calloc(bitmap_bytes, 1);
      G.opened++;
      G.outstanding++;
      int r = sub_open(s);
      if (r < 0) {
        s->done_connecting = 1;
        s->closed = 1;
        G.outstanding--;
        if (G.connect_failed++ == 0)
          fprintf(stderr, "dsbench-fanout: subscriber connect: %s\n", strerror(-r));
      }
    }
    bt_loop_poll(10);
  }
  *conn_secs = (double)(bt_now_ns() - t_conn0) / 1e9;
}

static void close_subscribers(void) {
  for (int i = 0; i < G.count; i++) {
    bt_conn_close(&G.subs[i].c, 1);
    free(G.subs[i].line);
    free(G.subs[i].seen);
  }
  free(G.subs);
  G.subs = NULL;
}

/* One reader process: waits for MSG_GO, connects its share of the subscribers, settles,
 * reports ready, reads until MSG_DRAIN's deliveries are in (or the drain time is up) and
 * sends its counts and histogram back. Never returns. */
static void reader_main(int idx, int ctl_fd, int res_fd) {
  ctl_msg_t m;
  if (read_full(ctl_fd, &m, sizeof m, -1) != 0 || m.kind != MSG_GO) _exit(1);
  if (bt_loop_init() != 0) _exit(1);
  G.first = (int)((long long)idx * G.nsubs / G.procs);
  G.count = (int)((long long)(idx + 1) * G.nsubs / G.procs) - G.first;
  ready_msg_t rd = {0, 0, 0};
  connect_subscribers(&rd.conn_secs);
  uint64_t settle = bt_now_ns() + 300000000ull;
  while (bt_now_ns() < settle) bt_loop_poll(10);
  G.dropped = 0;
  rd.connected = G.connected;
  rd.failed = G.connect_failed;
  if (write_full(res_fd, &rd, sizeof rd) != 0) _exit(1);
  uint64_t t0 = bt_now_ns(), cpu0 = bt_cpu_ns(), wait0 = bt_proc_wait_ns(0), dl = 0;
  int draining = 0;
  uint32_t acked = 0;
  for (;;) {
    bt_loop_poll(5);
    if (!draining) {
      struct pollfd pf = {.fd = ctl_fd, .events = POLLIN};
      if (poll(&pf, 1, 0) == 1) {
        if (read_full(ctl_fd, &m, sizeof m, 1000) != 0) _exit(1); /* the writer is gone */
        if (m.kind == MSG_DRAIN) {
          draining = 1;
          acked = m.acked;
          dl = bt_now_ns() + (uint64_t)(G.drain * 1e9);
        }
      }
    }
    if (draining) {
      int live_now = G.connected - G.dropped;
      if (G.unique_total >= (uint64_t)acked * (uint64_t)(live_now > 0 ? live_now : 0)) break;
      if (bt_now_ns() >= dl) break;
    }
  }
  result_msg_t *res = calloc(1, sizeof *res);
  res->unique = G.unique_total;
  res->dups = G.dups_total;
  res->out_of_range = G.out_of_range;
  res->dropped = G.dropped;
  res->live = G.connected;
  res->wall_ns = bt_now_ns() - t0;
  res->cpu_ns = bt_cpu_ns() - cpu0;
  res->wait_ns = bt_proc_wait_ns(0) - wait0;
  res->hist = G.hist;
  int rc = write_full(res_fd, res, sizeof *res);
  free(res);
  close_subscribers();
  _exit(rc == 0 ? 0 : 1);
}

#define MAX_PROCS 16
static pid_t reader_pid[MAX_PROCS];
static int reader_ctl[MAX_PROCS], reader_res[MAX_PROCS];

/* Forks the reader processes (before this process opens anything). 0 or -1. */
static int fork_readers(void) {
  fflush(stdout);
  fflush(stderr);
  for (int i = 0; i < G.procs; i++) {
    int ctl[2], res[2];
    if (pipe(ctl) != 0 || pipe(res) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
      close(ctl[1]);
      close(res[0]);
      for (int k = 0; k < i; k++) {
        close(reader_ctl[k]);
        close(reader_res[k]);
      }
      reader_main(i, ctl[0], res[1]);
    }
    close(ctl[0]);
    close(res[1]);
    reader_pid[i] = pid;
    reader_ctl[i] = ctl[1];
    reader_res[i] = res[0];
  }
  return 0;
}

static void send_readers(uint32_t kind, uint32_t acked) {
  ctl_msg_t m = {kind, acked};
  for (int i = 0; i < G.procs; i++) write_full(reader_ctl[i], &m, sizeof m);
}

/* Lets the readers connect; sums their connected/failed counts. 0 or -1. */
static int start_readers(double *conn_secs) {
  send_readers(MSG_GO, 0);
  for (int i = 0; i < G.procs; i++) {
    ready_msg_t rd;
    if (read_full(reader_res[i], &rd, sizeof rd, (int)(G.connect_timeout * 1000) + 10000) != 0) {
      fprintf(stderr, "dsbench-fanout: reader process %d did not report its subscribers\n", i);
      return -1;
    }
    G.connected += rd.connected;
    G.connect_failed += rd.failed;
    if (rd.conn_secs > *conn_secs) *conn_secs = rd.conn_secs;
  }
  return 0;
}

/* Sends the acknowledged count, collects every reader's result and merges it into G;
 * the largest CPU and run-queue shares of the readers go to *cpu_max / *wait_max. */
static int collect_readers(uint32_t acked, double *cpu_max, double *wait_max) {
  send_readers(MSG_DRAIN, acked);
  result_msg_t *res = calloc(1, sizeof *res);
  int rc = 0;
  G.dropped = 0;
  for (int i = 0; i < G.procs; i++) {
    if (read_full(reader_res[i], res, sizeof *res, (int)(G.drain * 1000) + 10000) != 0) {
      fprintf(stderr, "dsbench-fanout: reader process %d sent no result\n", i);
      rc = -1;
      continue;
    }
    G.unique_total += res->unique;
    G.dups_total += res->dups;
    G.out_of_range += res->out_of_range;
    G.dropped += res->dropped;
    for (int b = 0; b < BT_HIST_BUCKETS; b++) G.hist.counts[b] += res->hist.counts[b];
    if (res->hist.n) {
      if (res->hist.min < G.hist.min) G.hist.min = res->hist.min;
      if (res->hist.max > G.hist.max) G.hist.max = res->hist.max;
    }
    G.hist.n += res->hist.n;
    if (res->wall_ns) {
      double c = (double)res->cpu_ns / (double)res->wall_ns;
      double w = (double)res->wait_ns / (double)res->wall_ns;
      if (c > *cpu_max) *cpu_max = c;
      if (w > *wait_max) *wait_max = w;
    }
  }
  free(res);
  for (int i = 0; i < G.procs; i++) {
    close(reader_ctl[i]);
    close(reader_res[i]);
    waitpid(reader_pid[i], NULL, 0);
  }
  return rc;
}

static void usage(void) {
  fprintf(stderr,
          "usage: dsbench-fanout --url http://HOST:PORT [--kind agents|protocol] [-s SUBSCRIBERS]\n"
          "         [-r EVENTS_PER_S] [-d SECONDS] [--writers W] [--path P] [--drain S]\n"
          "         [--connect-timeout S] [--connect-batch N] [--warmup S] [--server-pid PID]\n"
          "         [--procs P]   (P reader processes share the subscribers; 0 = this one)\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *url = NULL;
  G.nsubs = 100;
  G.nwriters = 4;
  G.rate = 200;
  G.duration = 10;
  G.drain = 5;
  G.connect_timeout = 120;
  G.batch = 256;
  G.warmup = 1;
  snprintf(G.path, sizeof(G.path), "bench/fanout-%ld-%ld", (long)getpid(), (long)(bt_now_ns() % 1000000));
  static const struct option opts[] = {
      {"url", 1, 0, 'u'},     {"kind", 1, 0, 'k'},      {"subscribers", 1, 0, 's'},
      {"rate", 1, 0, 'r'},    {"duration", 1, 0, 'd'},  {"writers", 1, 0, 'W'},
      {"path", 1, 0, 'p'},    {"drain", 1, 0, 'D'},     {"connect-timeout", 1, 0, 'T'},
      {"connect-batch", 1, 0, 'B'}, {"warmup", 1, 0, 'w'},   {"server-pid", 1, 0, 'S'},
      {"procs", 1, 0, 'P'},
      {"help", 0, 0, 'h'},
      {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "u:k:s:r:d:W:p:D:T:B:w:S:P:h", opts, NULL)) != -1) {
    switch (o) {
    case 'u': url = optarg; break;
    case 'k':
      if (strcmp(optarg, "agents") == 0) G.protocol = 0;
      else if (strcmp(optarg, "protocol") == 0) G.protocol = 1;
      else usage();
      break;
    case 's': G.nsubs = atoi(optarg); break;
    case 'r': G.rate = atof(optarg); break;
    case 'd': G.duration = atof(optarg); break;
    case 'W': G.nwriters = atoi(optarg); break;
    case 'p': snprintf(G.path, sizeof(G.path), "%s", optarg); break;
    case 'D': G.drain = atof(optarg); break;
    case 'T': G.connect_timeout = atof(optarg); break;
    case 'B': G.batch = atoi(optarg); break;
    case 'w': G.warmup = atof(optarg); break;
    case 'S': G.server_pid = atol(optarg); break;
    case 'P': G.procs = atoi(optarg); break;
    default: usage();
    }
  }
  if (!url || bt_parse_url(url, &G.target) != 0 || G.nsubs < 1 || G.nwriters < 1 ||
      G.rate <= 0 || G.duration <= 0 || G.batch < 1 || G.warmup < 0 || G.procs < 0 ||
      G.procs > MAX_PROCS || G.procs > G.nsubs)
    usage();
  G.first = 0;
  G.count = G.nsubs;
  double total_d = G.rate * G.duration;
  if (total_d < 1 || total_d > 100000000) usage();
  G.warm = (uint32_t)(G.rate * G.warmup + 0.5);
  G.total = G.warm + (uint32_t)(total_d + 0.5);
  long lim = bt_raise_nofile(G.nsubs + G.nwriters + 64);
  if (lim < G.nsubs + G.nwriters + 16) {
    fprintf(stderr, "dsbench-fanout: RLIMIT_NOFILE is %ld, too low for %d subscribers\n", lim,
            G.nsubs);
    return 1;
  }
  bt_hist_reset(&G.hist);
  if (G.procs && fork_readers() != 0) {
    fprintf(stderr, "dsbench-fanout: cannot start the reader processes: %s\n", strerror(errno));
    return 1;
  }
  if (bt_loop_init() != 0) return 1;
  printf("dsbench-fanout: kind=%s target=%s:%d path=%s subscribers=%d rate=%.0f/s duration=%.1fs "
         "(after %.1fs warm-up) writers=%d reader-processes=%d\n",
         G.protocol ? "protocol" : "agents", G.target.host, G.target.port, G.path, G.nsubs,
         G.rate, G.duration, G.warmup, G.nwriters, G.procs);

  G.writers = calloc((size_t)G.nwriters, sizeof(writer_t));
  for (int i = 0; i < G.nwriters; i++) {
    G.writers[i].c.id = (uint32_t)(1000000 + i);
    if (bt_conn_open(&G.writers[i].c, &G.target, &WRITER_CBS) < 0) {
      fprintf(stderr, "dsbench-fanout: writer connect failed\n");
      return 1;
    }
  }
  /* protocol streams must exist before anyone can subscribe */
  if (G.protocol) {
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "PUT /v1/stream/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: 0\r\n\r\n",
                     G.path, G.target.host, G.target.port);
    G.setup_state = 1;
    G.writers[0].busy = 1;
    bt_conn_send(&G.writers[0].c, req, (size_t)n);
    uint64_t dl = bt_now_ns() + 10000000000ull;
    while (G.setup_state == 1 && bt_now_ns() < dl) bt_loop_poll(10);
    if (G.setup_state != 2) {
      fprintf(stderr, "dsbench-fanout: could not create the stream\n");
      return 1;
    }
  }

  double conn_secs = 0;
  if (!G.procs) {
    connect_subscribers(&conn_secs);
  } else if (start_readers(&conn_secs) != 0) {
    return 1;
  }
  int subs_live = G.connected;
  printf("subscribers: %d of %d connected (headers received) in %.2f s, %d failed\n", G.connected,
         G.nsubs, conn_secs, G.connect_failed);
  if (G.connected == 0) {
    printf("RESULT tool=fanout kind=%s subs=%d connected=0 error=no_subscribers\n",
           G.protocol ? "protocol" : "agents", G.nsubs);
    return 1;
  }
  /* let the server finish whatever it does right after the headers (history replay);
   * reader processes have settled before reporting */
  if (!G.procs) {
    uint64_t settle = bt_now_ns() + 300000000ull;
    while (bt_now_ns() < settle) bt_loop_poll(10);
    G.dropped = 0;
  }

  uint64_t interval = (uint64_t)(1e9 / G.rate);
  uint64_t t0 = bt_now_ns(), cpu0 = bt_cpu_ns();
  uint64_t scpu0 = G.server_pid > 0 ? bt_proc_cpu_ns(G.server_pid) : 0;
  uint64_t swait0 = G.server_pid > 0 ? bt_proc_wait_ns(G.server_pid) : 0;
  uint64_t gwait0 = bt_proc_wait_ns(0);
  uint64_t write_deadline = t0 + (uint64_t)((G.warmup + G.duration) * 1.5e9) + 2000000000ull;
  uint64_t t_last_send = t0, max_lag = 0, t_measure = 0;
  while (G.next_seq < G.total && bt_now_ns() < write_deadline) {
    uint64_t now = bt_now_ns();
    while (G.next_seq < G.total && t0 + (uint64_t)G.next_seq * interval <= now) {
      writer_t *w = idle_writer();
      if (!w) break; /* every writer busy: we fall behind schedule, measured as lag */
      uint64_t lag = now - (t0 + (uint64_t)G.next_seq * interval);
      if (G.next_seq == G.warm) t_measure = now;
      if (G.next_seq >= G.warm && lag > max_lag) max_lag = lag;
      writer_send_event(w, G.next_seq++);
      t_last_send = now;
    }
    uint64_t due = t0 + (uint64_t)G.next_seq * interval;
    /* behind schedule with every writer busy: wait for an acknowledgement, do not spin */
    int tmo = due > now ? (int)((due - now) / 1000000) : (idle_writer() ? 0 : 1);
    if (tmo > 1) tmo = 1;
    bt_loop_poll(tmo);
  }
  uint32_t sent = G.next_seq > G.warm ? G.next_seq - G.warm : 0;
  uint32_t planned = G.total - G.warm;
  /* wait for outstanding acknowledgements and deliveries */
  uint64_t t_write_end = bt_now_ns();
  uint64_t drain_deadline = t_write_end + (uint64_t)(G.drain * 1e9);
  for (;;) {
    int busy = 0;
    for (int i = 0; i < G.nwriters; i++) busy |= G.writers[i].busy;
    int live_now = subs_live - G.dropped;
    if (!busy && (G.procs ||
                  G.unique_total >= (uint64_t)G.acked * (uint64_t)(live_now > 0 ? live_now : 0)))
      break;
    if (bt_now_ns() >= drain_deadline) break;
    bt_loop_poll(5);
  }
  double readers_cpu = 0, readers_wait = 0;
  if (G.procs && collect_readers(G.acked, &readers_cpu, &readers_wait) != 0) return 1;
  uint64_t t_done = bt_now_ns();
  double cpu_share = (double)(bt_cpu_ns() - cpu0) / (double)(t_done - t0);
  /* with reader processes, the busiest generator process is what could saturate */
  if (readers_cpu > cpu_share) cpu_share = readers_cpu;
  double server_cpu = bt_server_cpu_share(G.server_pid, scpu0, t_done - t0);
  double server_wait = G.server_pid > 0
                           ? (double)(bt_proc_wait_ns(G.server_pid) - swait0) / (double)(t_done - t0)
                           : -1;
  double gen_wait = (double)(bt_proc_wait_ns(0) - gwait0) / (double)(t_done - t0);
  if (readers_wait > gen_wait) gen_wait = readers_wait;

  double span = t_measure ? (double)(t_last_send - t_measure) / 1e9 + 1.0 / G.rate : 0;
  double actual_rate = (double)sent / (span > G.duration ? span : G.duration);
  int sustained = sent == planned && G.write_errors == 0 && actual_rate >= 0.95 * G.rate;
  uint64_t expected = (uint64_t)G.acked * (uint64_t)subs_live;
  uint64_t missed = expected > G.unique_total ? expected - G.unique_total : 0;

  printf("writer: %u of %u events sent, %u acknowledged, %u errors; actual rate %.1f/s "
         "(target %.1f/s): %s; max schedule lag %.1f ms\n",
         sent, planned, G.acked, G.write_errors, actual_rate, G.rate,
         sustained ? "sustained" : "NOT sustained", bt_ms(max_lag));
  printf("delivery: %llu of %llu expected (%.2f%%), %llu missed, %llu duplicated, %d subscribers "
         "dropped by the server\n",
         (unsigned long long)G.unique_total, (unsigned long long)expected,
         expected ? 100.0 * (double)G.unique_total / (double)expected : 0.0,
         (unsigned long long)missed, (unsigned long long)G.dups_total, G.dropped);
  if (G.hist.n)
    printf("latency: p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", bt_ms(bt_hist_pct(&G.hist, 50)),
           bt_ms(bt_hist_pct(&G.hist, 99)), bt_ms(bt_hist_pct(&G.hist, 100)));
  else
    printf("latency: no samples\n");
  int sat = bt_report_cpu(cpu_share);
  /* no latency fields at all when nothing was delivered: 0 would read as a measurement */
  char lat[128] = "";
  if (G.hist.n)
    snprintf(lat, sizeof(lat), "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f ",
             bt_ms(bt_hist_pct(&G.hist, 50)), bt_ms(bt_hist_pct(&G.hist, 99)),
             bt_ms(bt_hist_pct(&G.hist, 100)));
  if (server_cpu >= 0)
    printf("server cpu: %.0f%% of one core (pid %ld); it waited for a CPU %.0f%% of the time\n",
           server_cpu * 100.0, G.server_pid, server_wait * 100.0);
  printf("generator waited for a CPU %.0f%% of the time\n", gen_wait * 100.0);
  printf("RESULT tool=fanout kind=%s subs=%d connected=%d rate=%.1f actual_rate=%.1f sustained=%d "
         "sent=%u acked=%u expected=%llu delivered=%llu missed=%llu dups=%llu dropped=%d "
         "%sconnect_s=%.2f gen_cpu=%.2f saturated=%d "
         "server_cpu=%.2f server_wait=%.2f gen_wait=%.2f\n",
         G.protocol ? "protocol" : "agents", G.nsubs, subs_live, G.rate, actual_rate, sustained,
         sent, G.acked, (unsigned long long)expected, (unsigned long long)G.unique_total,
         (unsigned long long)missed, (unsigned long long)G.dups_total, G.dropped,
         lat, conn_secs, cpu_share, sat, server_cpu, server_wait, gen_wait);

  if (!G.procs) close_subscribers();
  for (int i = 0; i < G.nwriters; i++) bt_conn_close(&G.writers[i].c, 0);
  free(G.writers);
  return 0;
}
