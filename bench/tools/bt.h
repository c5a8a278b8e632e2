/* bt.h - shared helpers for the dsbench-* load generators: one epoll loop, non-blocking
 * HTTP/1.1 client connections (responses parsed with llhttp), a log-bucket latency
 * histogram, CPU-share accounting and small utilities.
 * It must not know about any particular scenario; the tools own their request logic.
 * Single-threaded by design: nothing here is thread-safe. */
#ifndef BT_H
#define BT_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#include "llhttp.h"

/* ---- time and CPU -------------------------------------------------------------- */

uint64_t bt_now_ns(void);          /* CLOCK_MONOTONIC */
uint64_t bt_cpu_ns(void);          /* this process's user+system CPU time */
double bt_ms(uint64_t ns);

/* ---- target -------------------------------------------------------------------- */

typedef struct {
  char host[128];   /* as given, used for the Host header */
  int port;
  struct sockaddr_in addr;
} bt_target_t;

/* Parses http://HOST:PORT[/] (HOST an IPv4 literal or "localhost"). 0 or -1. */
int bt_parse_url(const char *url, bt_target_t *t);

/* Raises RLIMIT_NOFILE's soft limit towards want (at most the hard limit). Returns the
 * resulting soft limit. */
long bt_raise_nofile(long want);

/* ---- histogram ----------------------------------------------------------------- */

/* Log-linear buckets: 128 linear buckets per power of two (< 0.8 % relative error),
 * values in nanoseconds up to 2^41 ns (~36 min); larger values land in the top bucket. */
#define BT_HIST_SUB 128
#define BT_HIST_MAXLOG 41
#define BT_HIST_BUCKETS (BT_HIST_SUB + (BT_HIST_MAXLOG - 7) * BT_HIST_SUB)

typedef struct {
  uint64_t counts[BT_HIST_BUCKETS];
  uint64_t n;
  uint64_t max;
  uint64_t min;
} bt_hist_t;

void bt_hist_reset(bt_hist_t *h);
void bt_hist_add(bt_hist_t *h, uint64_t ns);
/* Value at percentile p (0..100), the bucket's midpoint; exact max for p >= 100. */
uint64_t bt_hist_pct(const bt_hist_t *h, double p);

/* ---- event loop and connections ------------------------------------------------ */

typedef struct bt_conn bt_conn_t;

typedef struct {
  void (*on_connect)(bt_conn_t *c);                       /* TCP established */
  void (*on_headers)(bt_conn_t *c);                       /* status + headers known */
  void (*on_body)(bt_conn_t *c, const char *p, size_t n); /* decoded body bytes */
  void (*on_complete)(bt_conn_t *c);                      /* one response finished */
  void (*on_close)(bt_conn_t *c, int err);                /* peer closed (err 0) or failed */
} bt_conn_cbs_t;

enum { BT_CLOSED = 0, BT_CONNECTING, BT_OPEN };

struct bt_conn {
  int fd;
  uint8_t state;
  uint8_t out_armed;       /* EPOLLOUT registered */
  uint8_t up_to_date;      /* Stream-Up-To-Date: true seen in this response */
  uint8_t hname_len;
  uint8_t hval_len;
  uint8_t hwhich;          /* which captured header the current value belongs to */
  uint16_t status;         /* status of the response being parsed */
  char hname[24];
  char hval[48];
  char next_offset[48];    /* Stream-Next-Offset of the current response */
  char offset[48];         /* Stream-Offset of the current response (agents API) */
  char *out;
  uint32_t out_len, out_off, out_cap;
  llhttp_t parser;
  const bt_conn_cbs_t *cbs;
  const bt_target_t *target;
  void *ud;
  uint32_t id;
};

/* Creates the epoll instance (once per process). */
int bt_loop_init(void);
/* Waits up to timeout_ms and dispatches events; returns the number handled. */
int bt_loop_poll(int timeout_ms);

/* Starts a non-blocking connect; callbacks fire from bt_loop_poll. 0 or -errno. */
int bt_conn_open(bt_conn_t *c, const bt_target_t *t, const bt_conn_cbs_t *cbs);
/* Queues bytes and writes what the socket takes now; the rest goes out on EPOLLOUT. */
int bt_conn_send(bt_conn_t *c, const char *p, size_t n);
/* Closes the socket (reset = drop it with RST so no TIME_WAIT piles up on our side).
 * Must not be called from inside on_headers/on_body/on_complete. */
void bt_conn_close(bt_conn_t *c, int reset);

/* ---- small helpers ------------------------------------------------------------- */

/* CPU time (user+system, ns) used so far by process pid, from /proc/<pid>/stat;
 * 0 when unreadable. Used to tell whether a server was CPU-bound during a run. */
uint64_t bt_proc_cpu_ns(long pid);
/* Share of one core that pid used since its CPU time was cpu0, over wall_ns of wall
 * time; -1 when pid <= 0 or unreadable. */
double bt_server_cpu_share(long pid, uint64_t cpu0, uint64_t wall_ns);

/* Run-queue wait time (ns) of pid's main thread so far, from /proc/<pid>/schedstat
 * (pid 0 = this process); 0 when unreadable. Time spent runnable but not running: a
 * large share means the machine's other work starved that process during a run. */
uint64_t bt_proc_wait_ns(long pid);

/* Reads VmRSS (kB) of pid from /proc; -1 on failure. */
long bt_rss_kb(long pid);
/* Prints "generator cpu: X% of one core" and the saturation note; returns 1 if >90 %. */
int bt_report_cpu(double share);

#endif
