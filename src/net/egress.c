/* egress.c - the destination policy (deny list + allowed networks) and the asynchronous
 * resolve-and-check of a URL (see egress.h). */
#include "net/egress.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"

typedef struct net_s {
  int family; /* AF_INET / AF_INET6 */
  unsigned char addr[16];
  unsigned len; /* prefix length in bits */
} net_t;

struct ds_egress_s {
  net_t *allow;
  size_t nallow;
};

struct ds_egress_req_s {
  uv_getaddrinfo_t gai;
  const ds_egress_t *e;
  ds_egress_cb cb;
  void *ud;
  bool https;
  bool cancelled;
  char host[256]; /* for messages */
  char port[8];
};

/* ---- networks ---- */

static bool in_net(const unsigned char *a, const unsigned char *net, unsigned len) {
  unsigned full = len / 8, rest = len % 8;
  if (memcmp(a, net, full) != 0) return false;
  if (!rest) return true;
  unsigned char mask = (unsigned char)(0xff << (8 - rest));
  return (a[full] & mask) == (net[full] & mask);
}

static int parse_net(const char *s, net_t *out) {
  char buf[64];
  const char *slash = strchr(s, '/');
  size_t al = slash ? (size_t)(slash - s) : strlen(s);
  if (al == 0 || al >= sizeof buf) return -1;
  memcpy(buf, s, al);
  buf[al] = 0;
  memset(out, 0, sizeof *out);
  unsigned max;
  if (inet_pton(AF_INET, buf, out->addr) == 1) {
    out->family = AF_INET;
    max = 32;
  } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
    out->family = AF_INET6;
    max = 128;
  } else {
    return -1;
  }
  out->len = max;
  if (slash) {
    char *end = NULL;
    long l = strtol(slash + 1, &end, 10);
    if (!slash[1] || *end || l < 0 || (unsigned long)l > max) return -1;
    out->len = (unsigned)l;
  }
  return 0;
}

ds_egress_t *ds_egress_new(const char *const *allow, size_t n, char *err, size_t errlen) {
  ds_egress_t *e = ds_xcalloc(1, sizeof *e);
  e->allow = ds_xcalloc(n ? n : 1, sizeof *e->allow);
  for (size_t i = 0; i < n; i++) {
    if (parse_net(allow[i], &e->allow[i]) != 0) {
      snprintf(err, errlen, "\"%s\" is not a network (an address, or address/prefix-length)",
               allow[i]);
      ds_egress_free(e);
      return NULL;
    }
  }
  e->nallow = n;
  return e;
}

void ds_egress_free(ds_egress_t *e) {
  if (!e) return;
  free(e->allow);
  free(e);
}

/* ---- the deny list ---- */

typedef struct {
  uint32_t net;
  unsigned len;
  const char *what;
} v4range_t;

static const v4range_t V4_DENY[] = {
    {0x00000000, 8, "in 0.0.0.0/8 (\"this network\")"},
    {0x0a000000, 8, "a private address (10.0.0.0/8)"},
    {0x64400000, 10, "a shared (carrier-grade NAT) address (100.64.0.0/10)"},
    {0x7f000000, 8, "a loopback address"},
    {0xa9fe0000, 16, "a link-local address (169.254.0.0/16, cloud metadata)"},
    {0xac100000, 12, "a private address (172.16.0.0/12)"},
    {0xc0000000, 24, "an IETF protocol assignment (192.0.0.0/24)"},
    {0xc0000200, 24, "a documentation address (192.0.2.0/24)"},
    {0xc0586300, 24, "a 6to4 relay anycast address (192.88.99.0/24)"},
    {0xc0a80000, 16, "a private address (192.168.0.0/16)"},
    {0xc6120000, 15, "a benchmarking address (198.18.0.0/15)"},
    {0xc6336400, 24, "a documentation address (198.51.100.0/24)"},
    {0xcb007100, 24, "a documentation address (203.0.113.0/24)"},
    {0xe0000000, 4, "a multicast address"},
    {0xf0000000, 4, "a reserved or broadcast address (240.0.0.0/4)"},
};

static const char *v4_denied(const unsigned char b[4]) {
  uint32_t a = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
  for (size_t i = 0; i < sizeof V4_DENY / sizeof V4_DENY[0]; i++) {
    uint32_t mask = V4_DENY[i].len ? ~(uint32_t)0 << (32 - V4_DENY[i].len) : 0;
    if ((a & mask) == V4_DENY[i].net) return V4_DENY[i].what;
  }
  return NULL;
}

typedef struct {
  unsigned char net[16];
  unsigned len;
  const char *what; /* NULL: the IPv4 address embedded at byte `v4at` decides */
  int v4at;
} v6range_t;

static const v6range_t V6_RANGES[] = {
    {{0}, 128, "the unspecified address", 0},
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "a loopback address", 0},
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 96, NULL, 12},       /* IPv4-mapped */
    {{0}, 96, NULL, 12},                                              /* IPv4-compatible */
    {{0, 0x64, 0xff, 0x9b}, 96, NULL, 12},                            /* NAT64 */
    {{0, 0x64, 0xff, 0x9b, 0, 1}, 48, "a local-use NAT64 address (64:ff9b:1::/48)", 0},
    {{0x01, 0x00}, 64, "a discard-only address (100::/64)", 0},
    {{0x20, 0x01, 0x0d, 0xb8}, 32, "a documentation address (2001:db8::/32)", 0},
    {{0x20, 0x01}, 23, "an IETF special-purpose address (2001::/23, Teredo included)", 0},
    {{0x20, 0x02}, 16, NULL, 2},                                      /* 6to4 */
    {{0x3f, 0xff}, 20, "a documentation address (3fff::/20)", 0},
    {{0x5f, 0x00}, 16, "a segment-routing address (5f00::/16)", 0},
    {{0xfc}, 7, "a unique-local address (fc00::/7)", 0},
    {{0xfe, 0x80}, 10, "a link-local address (fe80::/10)", 0},
    {{0xfe, 0xc0}, 10, "a site-local address (fec0::/10)", 0},
    {{0xff}, 8, "a multicast address", 0},
};

/* The reason an address is refused, or NULL. For IPv4 carried in IPv6, *v4 points at the
 * embedded address (also for allow-list matching). */
static const char *v6_denied(const unsigned char a[16], const unsigned char **v4) {
  *v4 = NULL;
  for (size_t i = 0; i < sizeof V6_RANGES / sizeof V6_RANGES[0]; i++) {
    if (!in_net(a, V6_RANGES[i].net, V6_RANGES[i].len)) continue;
    if (V6_RANGES[i].what) return V6_RANGES[i].what;
    *v4 = a + V6_RANGES[i].v4at;
    return v4_denied(*v4);
  }
  if ((a[0] & 0xe0) != 0x20) return "not a global unicast address (outside 2000::/3)";
  return NULL;
}

static bool listed_in(const ds_egress_t *e, int family, const unsigned char *a) {
  for (size_t i = 0; e && i < e->nallow; i++)
    if (e->allow[i].family == family && in_net(a, e->allow[i].addr, e->allow[i].len)) return true;
  return false;
}

bool ds_egress_check_addr(const ds_egress_t *e, const struct sockaddr *sa, bool *listed,
                          char *why, size_t whylen) {
  char text[INET6_ADDRSTRLEN + 32] = "?";
  const char *denied = NULL;
  bool in_allow = false;
  if (sa->sa_family == AF_INET) {
    const unsigned char *b = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
    inet_ntop(AF_INET, b, text, sizeof text);
    in_allow = listed_in(e, AF_INET, b);
    denied = v4_denied(b);
  } else if (sa->sa_family == AF_INET6) {
    const unsigned char *b = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    const unsigned char *v4 = NULL;
    inet_ntop(AF_INET6, b, text, sizeof text);
    denied = v6_denied(b, &v4);
    in_allow = listed_in(e, AF_INET6, b) || (v4 && listed_in(e, AF_INET, v4));
    if (v4) { /* name the IPv4 address it carries: that is what the reason is about */
      char t4[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, v4, t4, sizeof t4);
      size_t l = strlen(text);
      snprintf(text + l, sizeof text - l, " (carrying %s)", t4);
    }
  } else {
    denied = "not an IP address";
  }
  if (listed) *listed = in_allow;
  if (in_allow) return true;
  if (denied) {
    snprintf(why, whylen, "%s is %s", text, denied);
    return false;
  }
  return true;
}

/* ---- URLs ---- */

/* Names libcurl resolves by itself to loopback, whatever DNS says. */
static bool is_localhost_name(const char *h) {
  size_t n = strlen(h);
  if (n && h[n - 1] == '.') n--;
  if (n == 9 && strncasecmp(h, "localhost", 9) == 0) return true;
  return n > 10 && strncasecmp(h + n - 10, ".localhost", 10) == 0;
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  ds_egress_req_t *r = g->data;
  if (r->cancelled) {
    uv_freeaddrinfo(res);
    free(r);
    return;
  }
  char why[512] = "";
  ds_egress_dest_t dest;
  memset(&dest, 0, sizeof dest);
  bool ok = status == 0;
  if (!ok) {
    snprintf(why, sizeof why, "%s does not resolve (%s)", r->host, uv_strerror(status));
  }
  bool all_listed = true;
  for (struct addrinfo *ai = res; ok && ai; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    bool listed = false;
    if (!ds_egress_check_addr(r->e, ai->ai_addr, &listed, why, sizeof why)) {
      ok = false;
      break;
    }
    all_listed = all_listed && listed;
    bool dup = false;
    for (size_t i = 0; i < dest.naddrs && !dup; i++)
      dup = memcmp(&dest.addrs[i], ai->ai_addr, ai->ai_addrlen) == 0;
    if (!dup && dest.naddrs < DS_EGRESS_MAX_ADDRS)
      memcpy(&dest.addrs[dest.naddrs++], ai->ai_addr, ai->ai_addrlen);
  }
  if (ok && dest.naddrs == 0) {
    ok = false;
    snprintf(why, sizeof why, "%s has no IPv4 or IPv6 address", r->host);
  }
  if (ok && !r->https && !all_listed) {
    ok = false;
    snprintf(why, sizeof why, "plain http is only allowed to networks listed in "
                              "protocol.webhook_allow_networks; use https");
  }
  uv_freeaddrinfo(res);
  r->cb(r->ud, ok, why, ok ? &dest : NULL);
  free(r);
}

int ds_egress_check_url(uv_loop_t *loop, const ds_egress_t *e, const char *url, ds_egress_cb cb,
                        void *ud, ds_egress_req_t **out, char *why, size_t whylen) {
  *out = NULL;
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int rc = -1;
  if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
    snprintf(why, whylen, "webhook.url must be a valid http(s) URL");
    goto done;
  }
  bool https = strcasecmp(scheme, "https") == 0;
  if (!https && strcasecmp(scheme, "http") != 0) {
    snprintf(why, whylen, "webhook.url must use https");
    goto done;
  }
  /* IPv6 literals come back in brackets; getaddrinfo wants them bare */
  char name[256];
  size_t hl = strlen(host);
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    hl -= 2;
    if (hl >= sizeof name) hl = sizeof name - 1;
    memcpy(name, host + 1, hl);
    name[hl] = 0;
  } else {
    snprintf(name, sizeof name, "%s", host);
  }
  if (!*name || strlen(host) >= sizeof name) {
    snprintf(why, whylen, "webhook.url must be a valid http(s) URL");
    goto done;
  }
  if (is_localhost_name(name)) {
    snprintf(why, whylen, "%s is a loopback name", name);
    goto done;
  }
  ds_egress_req_t *r = ds_xcalloc(1, sizeof *r);
  r->e = e;
  r->cb = cb;
  r->ud = ud;
  r->https = https;
  snprintf(r->host, sizeof r->host, "%s", name);
  snprintf(r->port, sizeof r->port, "%s", port);
  r->gai.data = r;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int ur = uv_getaddrinfo(loop, &r->gai, on_resolved, r->host, r->port, &hints);
  if (ur != 0) {
    snprintf(why, whylen, "cannot resolve %s: %s", name, uv_strerror(ur));
    free(r);
    goto done;
  }
  *out = r;
  rc = 0;
done:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

void ds_egress_cancel(ds_egress_req_t *r) {
  if (!r) return;
  r->cancelled = true;
  uv_cancel((uv_req_t *)&r->gai); /* if it already runs, on_resolved drops the result */
}
