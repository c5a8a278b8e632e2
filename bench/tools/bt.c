/* bt.c - the shared epoll/HTTP client machinery of the dsbench-* tools (see bt.h).
 * It must stay scenario-agnostic and allocation-light: 10,000 idle subscribers must cost
 * only a few hundred bytes each, so reads go through one shared buffer. */
#define _GNU_SOURCE
#include "bt.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t bt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t bt_cpu_ns(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  uint64_t us = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ull +
                (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  return us * 1000ull;
}

double bt_ms(uint64_t ns) { return (double)ns / 1e6; }

int bt_parse_url(const char *url, bt_target_t *t) {
  memset(t, 0, sizeof(*t));
  const char *p = url;
  if (strncmp(p, "http://", 7) == 0) p += 7;
  const char *colon = strrchr(p, ':');
  if (!colon || colon == p) return -1;
  size_t hl = (size_t)(colon - p);
  if (hl >= sizeof(t->host)) return -1;
  memcpy(t->host, p, hl);
  char *end = NULL;
  long port = strtol(colon + 1, &end, 10);
  if (port <= 0 || port > 65535 || (*end && strcmp(end, "/") != 0)) return -1;
  t->port = (int)port;
  t->addr.sin_family = AF_INET;
  t->addr.sin_port = htons((uint16_t)port);
  const char *ip = strcmp(t->host, "localhost") == 0 ? "127.0.0.1" : t->host;
  if (inet_pton(AF_INET, ip, &t->addr.sin_addr) != 1) return -1;
  return 0;
}

long bt_raise_nofile(long want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  rlim_t target = (rlim_t)want;
  if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max) target = rl.rlim_max;
  if (target > rl.rlim_cur) {
    rl.rlim_cur = target;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return (long)rl.rlim_cur;
}

/* ---- histogram ----------------------------------------------------------------- */

static int hist_index(uint64_t v) {
  if (v < BT_HIST_SUB) return (int)v;
  int m = 63 - __builtin_clzll(v); /* >= 7 */
  if (m >= BT_HIST_MAXLOG) return BT_HIST_BUCKETS - 1;
  int sub = (int)((v >> (m - 7)) & (BT_HIST_SUB - 1));
  return BT_HIST_SUB + (m - 7) * BT_HIST_SUB + sub;
}

static uint64_t hist_mid(int idx) {
  if (idx < BT_HIST_SUB) return (uint64_t)idx;
  int m = 7 + (idx - BT_HIST_SUB) / BT_HIST_SUB;
  uint64_t sub = (uint64_t)((idx - BT_HIST_SUB) % BT_HIST_SUB);
  uint64_t lo = (BT_HIST_SUB + sub) << (m - 7);
  return lo + ((1ull << (m - 7)) >> 1);
}

void bt_hist_reset(bt_hist_t *h) {
  memset(h, 0, sizeof(*h));
  h->min = UINT64_MAX;
}

void bt_hist_add(bt_hist_t *h, uint64_t ns) {
  h->counts[hist_index(ns)]++;
  h->n++;
  if (ns > h->max) h->max = ns;
  if (ns < h->min) h->min = ns;
}

uint64_t bt_hist_pct(const bt_hist_t *h, double p) {
  if (h->n == 0) return 0;
  if (p >= 100.0) return h->max;
  uint64_t rank = (uint64_t)((p / 100.0) * (double)h->n + 0.999999);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < BT_HIST_BUCKETS; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = hist_mid(i);
      /* a bucket midpoint can overshoot the true extremes; clamp to them */
      if (v > h->max) v = h->max;
      if (v < h->min) v = h->min;
      return v;
    }
  }
  return h->max;
}

/* ---- loop and connections ------------------------------------------------------ */

static int g_epfd = -1;
static char g_rbuf[256 * 1024];
static llhttp_settings_t g_settings;

enum { H_NONE = 0, H_NEXT, H_OFFSET, H_UTD };

static int cb_message_begin(llhttp_t *p) {
  bt_conn_t *c = p->data;
  c->status = 0;
  c->up_to_date = 0;
  c->next_offset[0] = 0;
  c->offset[0] = 0;
  c->hname_len = 0;
  c->hval_len = 0;
  c->hwhich = H_NONE;
  return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t n) {
  bt_conn_t *c = p->data;
  for (size_t i = 0; i < n; i++) {
    if (c->hname_len < sizeof(c->hname) - 1)
      c->hname[c->hname_len] = (char)tolower((unsigned char)at[i]);
    if (c->hname_len < 255) c->hname_len++;
  }
  return 0;
}

static int cb_header_field_complete(llhttp_t *p) {
  bt_conn_t *c = p->data;
  c->hwhich = H_NONE;
  if (c->hname_len < sizeof(c->hname)) {
    c->hname[c->hname_len] = 0;
    if (strcmp(c->hname, "stream-next-offset") == 0) c->hwhich = H_NEXT;
    else if (strcmp(c->hname, "stream-offset") == 0) c->hwhich = H_OFFSET;
    else if (strcmp(c->hname, "stream-up-to-date") == 0) c->hwhich = H_UTD;
  }
  c->hname_len = 0;
  c->hval_len = 0;
  return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t n) {
  bt_conn_t *c = p->data;
  if (c->hwhich == H_NONE) return 0;
  for (size_t i = 0; i < n && c->hval_len < sizeof(c->hval) - 1; i++) c->hval[c->hval_len++] = at[i];
  return 0;
}

static int cb_header_value_complete(llhttp_t *p) {
  bt_conn_t *c = p->data;
  c->hval[c->hval_len] = 0;
  switch (c->hwhich) {
  case H_NEXT: snprintf(c->next_offset, sizeof(c->next_offset), "%s", c->hval); break;
  case H_OFFSET: snprintf(c->offset, sizeof(c->offset), "%s", c->hval); break;
  case H_UTD: c->up_to_date = strcasecmp(c->hval, "true") == 0; break;
  default: break;
  }
  c->hwhich = H_NONE;
  c->hval_len = 0;
  return 0;
}

static int cb_headers_complete(llhttp_t *p) {
  bt_conn_t *c = p->data;
  c->status = (uint16_t)llhttp_get_status_code(p);
  if (c->cbs->on_headers) c->cbs->on_headers(c);
  return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t n) {
  bt_conn_t *c = p->data;
  if (c->cbs->on_body) c->cbs->on_body(c, at, n);
  return 0;
}

static int cb_message_complete(llhttp_t *p) {
  bt_conn_t *c = p->data;
  if (c->cbs->on_complete) c->cbs->on_complete(c);
  return 0;
}

int bt_loop_init(void) {
  g_epfd = epoll_create1(EPOLL_CLOEXEC);
  if (g_epfd < 0) return -errno;
  llhttp_settings_init(&g_settings);
  g_settings.on_message_begin = cb_message_begin;
  g_settings.on_header_field = cb_header_field;
  g_settings.on_header_field_complete = cb_header_field_complete;
  g_settings.on_header_value = cb_header_value;
  g_settings.on_header_value_complete = cb_header_value_complete;
  g_settings.on_headers_complete = cb_headers_complete;
  g_settings.on_body = cb_body;
  g_settings.on_message_complete = cb_message_complete;
  return 0;
}

static void set_events(bt_conn_t *c, int want_out) {
  if (c->fd < 0) return;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
  c->out_armed = (uint8_t)(want_out != 0);
}

int bt_conn_open(bt_conn_t *c, const bt_target_t *t, const bt_conn_cbs_t *cbs) {
  c->cbs = cbs;
  c->target = t;
  c->out_len = c->out_off = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int r = connect(fd, (const struct sockaddr *)&t->addr, sizeof(t->addr));
  if (r != 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    return -e;
  }
  c->fd = fd;
  c->state = BT_CONNECTING;
  llhttp_init(&c->parser, HTTP_RESPONSE, &g_settings);
  c->parser.data = c;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    int e = errno;
    close(fd);
    c->fd = -1;
    c->state = BT_CLOSED;
    return -e;
  }
  c->out_armed = 1;
  return 0;
}

/* Writes queued bytes; returns 0 or -errno on a hard error. */
static int flush_out(bt_conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (w > 0) {
      c->out_off += (uint32_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c->out_armed) set_events(c, 1);
      return 0;
    }
    return -errno;
  }
  c->out_off = c->out_len = 0;
  if (c->out_armed) set_events(c, 0);
  return 0;
}

int bt_conn_send(bt_conn_t *c, const char *p, size_t n) {
  if (c->state == BT_CLOSED) return -ENOTCONN;
  if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  size_t need = c->out_len + n;
  if (need > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < need) cap *= 2;
    char *nb = realloc(c->out, cap);
    if (!nb) return -ENOMEM;
    c->out = nb;
    c->out_cap = (uint32_t)cap;
  }
  memcpy(c->out + c->out_len, p, n);
  c->out_len += (uint32_t)n;
  if (c->state != BT_OPEN) return 0;
  return flush_out(c);
}

void bt_conn_close(bt_conn_t *c, int reset) {
  if (c->fd >= 0) {
    epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (reset) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd);
  }
  c->fd = -1;
  c->state = BT_CLOSED;
  c->out_armed = 0;
  free(c->out);
  c->out = NULL;
  c->out_cap = c->out_len = c->out_off = 0;
}

static void fail(bt_conn_t *c, int err) {
  bt_conn_close(c, err != 0);
  if (c->cbs->on_close) c->cbs->on_close(c, err);
}

static void handle_read(bt_conn_t *c) {
  for (;;) {
    ssize_t r = recv(c->fd, g_rbuf, sizeof(g_rbuf), 0);
    if (r > 0) {
      llhttp_errno_t e = llhttp_execute(&c->parser, g_rbuf, (size_t)r);
      if (e != HPE_OK) {
        fprintf(stderr, "dsbench: HTTP parse error on connection %u: %s (%s)\n", c->id,
                llhttp_errno_name(e), llhttp_get_error_reason(&c->parser));
        fail(c, EPROTO);
        return;
      }
      if (c->state == BT_CLOSED) return; /* a callback closed it */
      if ((size_t)r < sizeof(g_rbuf)) return;
      continue;
    }
    if (r == 0) {
      /* EOF completes close-delimited bodies */
      llhttp_errno_t e = llhttp_finish(&c->parser);
      fail(c, e == HPE_OK ? 0 : EPROTO);
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    fail(c, errno);
    return;
  }
}

int bt_loop_poll(int timeout_ms) {
  struct epoll_event evs[512];
  int n = epoll_wait(g_epfd, evs, 512, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  for (int i = 0; i < n; i++) {
    bt_conn_t *c = evs[i].data.ptr;
    if (c->state == BT_CLOSED) continue;
    uint32_t ev = evs[i].events;
    if (c->state == BT_CONNECTING) {
      if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail(c, err);
          continue;
        }
        c->state = BT_OPEN;
        if (c->cbs->on_connect) c->cbs->on_connect(c);
        if (c->state != BT_OPEN) continue;
        int e = flush_out(c);
        if (e < 0) {
          fail(c, -e);
          continue;
        }
      }
      continue;
    }
    if (ev & EPOLLOUT) {
      int e = flush_out(c);
      if (e < 0) {
        fail(c, -e);
        continue;
      }
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) handle_read(c);
  }
  return n;
}

uint64_t bt_proc_cpu_ns(long pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  /* the command name may contain spaces: fields are counted after its closing ')' */
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  unsigned long long ut = 0, st = 0;
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return 0;
  long hz = sysconf(_SC_CLK_TCK);
  if (hz <= 0) hz = 100;
  return (uint64_t)(ut + st) * (1000000000ull / (uint64_t)hz);
}

double bt_server_cpu_share(long pid, uint64_t cpu0, uint64_t wall_ns) {
  if (pid <= 0 || wall_ns == 0) return -1;
  uint64_t cpu1 = bt_proc_cpu_ns(pid);
  if (cpu1 == 0 || cpu1 < cpu0) return -1;
  return (double)(cpu1 - cpu0) / (double)wall_ns;
}

uint64_t bt_proc_wait_ns(long pid) {
  char path[64];
  if (pid > 0) snprintf(path, sizeof(path), "/proc/%ld/schedstat", pid);
  else snprintf(path, sizeof(path), "/proc/self/schedstat");
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  unsigned long long run = 0, wait = 0;
  int n = fscanf(f, "%llu %llu", &run, &wait);
  fclose(f);
  return n == 2 ? (uint64_t)wait : 0;
}

long bt_rss_kb(long pid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%ld/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "VmRSS:", 6) == 0) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kb;
}

int bt_report_cpu(double share) {
  printf("generator cpu: %.0f%% of one core\n", share * 100.0);
  if (share > 0.90) {
    printf("NOTE: generator saturated (its own CPU > 90%% of one core): the server figures "
           "are a lower bound\n");
    return 1;
  }
  return 0;
}
