/* test_egress.c - the webhook destination policy.
 *
 * Provides: the deny list checked on the addresses the system resolver really returns for
 * every host form of the SSRF report (2130706433, 2852039166, 10.1, 0x0a000001, 0, and
 * more: 0x7f.1, 127.1, IPv4-mapped / compatible / NAT64 / 6to4 IPv6, ULA, link-local,
 * multicast, CGNAT...), the configured allow list (an IPv4 network also covers the same
 * address mapped into IPv6), CIDR parsing, and ds_egress_check_url end to end on a loop:
 * refusals (with the reason), names libcurl answers itself (localhost., x.localhost),
 * plain http only inside an allowed network, and the checked addresses handed back.
 * Every test ends with uv_loop_close() == 0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "net/egress.h"

/* The addresses getaddrinfo (numeric forms only: no DNS) gives for host; true if every one
 * is allowed. why gets the first refusal. */
static bool host_allowed(const ds_egress_t *e, const char *host, char *why, size_t n) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  int rc = getaddrinfo(host, "443", &hints, &res);
  assert_int_equal(rc, 0);
  bool ok = true;
  for (struct addrinfo *ai = res; ai && ok; ai = ai->ai_next)
    ok = ds_egress_check_addr(e, ai->ai_addr, NULL, why, n);
  freeaddrinfo(res);
  return ok;
}

static void test_numeric_forms_refused(void **state) {
  (void)state;
  char err[128], why[256];
  ds_egress_t *e = ds_egress_new(NULL, 0, err, sizeof err);
  assert_non_null(e);
  static const struct {
    const char *host, *reason;
  } refused[] = {
      {"2130706433", "127.0.0.1 is a loopback"},
      {"2852039166", "169.254.169.254 is a link-local"},
      {"10.1", "10.0.0.1 is a private"},
      {"0x0a000001", "10.0.0.1 is a private"},
      {"0", "0.0.0.0 is in 0.0.0.0/8"},
      {"0x7f.1", "127.0.0.1 is a loopback"},
      {"127.1", "127.0.0.1 is a loopback"},
      {"017700000001", "127.0.0.1 is a loopback"},
      {"172.20.1.1", "private"},
      {"192.168.1.1", "private"},
      {"100.64.0.1", "carrier-grade NAT"},
      {"224.0.0.1", "multicast"},
      {"255.255.255.255", "broadcast"},
      {"198.18.0.1", "benchmarking"},
      {"192.0.2.1", "documentation"},
      {"::", "unspecified"},
      {"::1", "loopback"},
      {"::ffff:127.0.0.1", "(carrying 127.0.0.1) is a loopback"},
      {"::ffff:169.254.169.254", "(carrying 169.254.169.254) is a link-local"},
      {"::127.0.0.1", "(carrying 127.0.0.1) is a loopback"},
      {"64:ff9b::a9fe:a9fe", "(carrying 169.254.169.254) is a link-local"},
      {"2002:7f00:1::", "(carrying 127.0.0.1) is a loopback"},
      {"fd00::1", "unique-local"},
      {"fe80::1", "link-local"},
      {"fec0::1", "site-local"},
      {"ff02::1", "multicast"},
      {"2001:db8::1", "documentation"},
      {"2001::1", "IETF special-purpose"},
      {"100::1", "discard"},
      {"4000::1", "outside 2000::/3"},
  };
  for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
    why[0] = 0;
    if (host_allowed(e, refused[i].host, why, sizeof why))
      fail_msg("%s was allowed", refused[i].host);
    if (!strstr(why, refused[i].reason))
      fail_msg("%s: reason \"%s\" lacks \"%s\"", refused[i].host, why, refused[i].reason);
  }
  const char *allowed[] = {"93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8",
                           "64:ff9b::808:808", "2002:808:808::"};
  for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
    if (!host_allowed(e, allowed[i], why, sizeof why)) fail_msg("%s refused: %s", allowed[i], why);
  ds_egress_free(e);
}

static void test_allow_networks(void **state) {
  (void)state;
  char err[200], why[256];
  const char *nets[] = {"127.0.0.0/8", "10.1.2.3", "fd12::/16"};
  ds_egress_t *e = ds_egress_new(nets, 3, err, sizeof err);
  assert_non_null(e);
  struct sockaddr_in a4;
  uv_ip4_addr("127.0.0.1", 80, &a4);
  bool listed = false;
  assert_true(ds_egress_check_addr(e, (struct sockaddr *)&a4, &listed, why, sizeof why));
  assert_true(listed);
  assert_true(host_allowed(e, "2130706433", why, sizeof why)); /* the same address */
  assert_true(host_allowed(e, "::ffff:127.0.0.1", why, sizeof why));
  assert_true(host_allowed(e, "10.1.2.3", why, sizeof why));
  assert_false(host_allowed(e, "10.1.2.4", why, sizeof why));
  assert_true(host_allowed(e, "fd12::5", why, sizeof why));
  assert_false(host_allowed(e, "fd13::5", why, sizeof why));
  assert_false(host_allowed(e, "::1", why, sizeof why)); /* not listed: IPv6 loopback */
  assert_false(host_allowed(e, "169.254.169.254", why, sizeof why));
  struct sockaddr_in pub;
  uv_ip4_addr("8.8.8.8", 80, &pub);
  assert_true(ds_egress_check_addr(e, (struct sockaddr *)&pub, &listed, why, sizeof why));
  assert_false(listed);
  ds_egress_free(e);
  const char *bad[] = {"127.0.0.0/33", "10.0.0.0/", "localhost", "1.2.3.4/-1", "", "::1/129",
                       "10.0.0.0/8x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err[0] = 0;
    assert_null(ds_egress_new(&bad[i], 1, err, sizeof err));
    assert_non_null(strstr(err, "is not a network"));
  }
}

typedef struct {
  int calls;
  bool ok;
  char why[256];
  size_t naddrs;
  char first[INET6_ADDRSTRLEN];
} res_t;

static void on_checked(void *ud, bool ok, const char *why, const ds_egress_dest_t *dest) {
  res_t *r = ud;
  r->calls++;
  r->ok = ok;
  snprintf(r->why, sizeof r->why, "%s", why ? why : "");
  if (dest) {
    r->naddrs = dest->naddrs;
    const struct sockaddr *sa = (const struct sockaddr *)&dest->addrs[0];
    if (sa->sa_family == AF_INET)
      inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->first, sizeof r->first);
    else
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->first, sizeof r->first);
  }
}

/* Runs one URL through the asynchronous check; returns the synchronous result (0 / -1). */
static int check(const ds_egress_t *e, const char *url, res_t *r, char *why, size_t n) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  memset(r, 0, sizeof *r);
  ds_egress_req_t *q = NULL;
  int rc = ds_egress_check_url(&loop, e, url, on_checked, r, &q, why, n);
  assert_int_equal(r->calls, 0); /* never before returning */
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(r->calls, rc == 0 ? 1 : 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  return rc;
}

static void test_check_url(void **state) {
  (void)state;
  char err[200], why[256];
  res_t r;
  ds_egress_t *e = ds_egress_new(NULL, 0, err, sizeof err);
  /* every form from the report, refused after resolution */
  const char *urls[] = {"https://2130706433:18443/", "https://2852039166/", "https://10.1/",
                        "https://0x0a000001/",       "https://0/",          "https://0x7f.1/x",
                        "https://[::ffff:127.0.0.1]/", "https://[::1]:8443/", "http://127.0.0.1:9/",
                        "https://user@2130706433/"};
  for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
    int rc = check(e, urls[i], &r, why, sizeof why);
    if (rc == 0 && r.ok) fail_msg("%s was allowed", urls[i]);
  }
  /* refused without a lookup */
  const char *sync[] = {"https://localhost./", "https://LOCALHOST/", "https://a.localhost/",
                        "ftp://example.com/", "not a url", "https://", "file:///etc/passwd"};
  for (size_t i = 0; i < sizeof sync / sizeof *sync; i++) {
    why[0] = 0;
    if (check(e, sync[i], &r, why, sizeof why) != -1) fail_msg("%s was not refused at once", sync[i]);
    assert_true(why[0] != 0);
  }
  /* a public literal is fine over https, not over plain http */
  assert_int_equal(check(e, "https://8.8.8.8:8443/hook", &r, why, sizeof why), 0);
  assert_true(r.ok);
  assert_int_equal(r.naddrs, 1);
  assert_string_equal(r.first, "8.8.8.8");
  assert_int_equal(check(e, "http://8.8.8.8/hook", &r, why, sizeof why), 0);
  assert_false(r.ok);
  assert_non_null(strstr(r.why, "plain http"));
  ds_egress_free(e);
  /* an allowed network: the test receiver case, http included */
  const char *nets[] = {"127.0.0.0/8"};
  e = ds_egress_new(nets, 1, err, sizeof err);
  assert_int_equal(check(e, "http://127.0.0.1:9/hook", &r, why, sizeof why), 0);
  assert_true(r.ok);
  assert_string_equal(r.first, "127.0.0.1");
  assert_int_equal(check(e, "http://2130706433:9/", &r, why, sizeof why), 0);
  assert_true(r.ok); /* the same address, allowed by the same rule */
  assert_int_equal(check(e, "https://2852039166/", &r, why, sizeof why), 0);
  assert_false(r.ok); /* the allow list is not a bypass for other ranges */
  assert_int_equal(check(e, "https://localhost/", &r, why, sizeof why), -1);
  ds_egress_free(e);
}

static void test_cancel(void **state) {
  (void)state;
  char err[200], why[256];
  ds_egress_t *e = ds_egress_new(NULL, 0, err, sizeof err);
  uv_loop_t loop;
  uv_loop_init(&loop);
  res_t r;
  memset(&r, 0, sizeof r);
  ds_egress_req_t *q = NULL;
  assert_int_equal(ds_egress_check_url(&loop, e, "https://8.8.4.4/", on_checked, &r, &q, why, sizeof why), 0);
  ds_egress_cancel(q);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(r.calls, 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  ds_egress_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_numeric_forms_refused),
      cmocka_unit_test(test_allow_networks),
      cmocka_unit_test(test_check_url),
      cmocka_unit_test(test_cancel),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
