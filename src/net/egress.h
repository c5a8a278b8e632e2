/* egress.h - where the server may connect on a client's behalf (webhooks), and the
 * asynchronous resolve-and-check whose result pins the connection.
 *
 * Provides: ds_egress_t, a destination policy: a built-in deny list of every address range
 * that is not the public Internet (unspecified, loopback, private, shared/CGNAT,
 * link-local and cloud metadata, multicast, broadcast and reserved, documentation and
 * benchmarking ranges; IPv6 unspecified, loopback, unique-local, link-local, site-local,
 * multicast, discard, documentation and IETF special ranges, and anything outside global
 * unicast 2000::/3; IPv4 carried in IPv6 - mapped ::ffff:a.b.c.d, compatible ::a.b.c.d,
 * NAT64 64:ff9b::/96 and 6to4 2002::/16 - is judged as that IPv4 address), plus the
 * networks an operator allows anyway (config.lua protocol.webhook_allow_networks, e.g. a
 * receiver on 127.0.0.1 in tests). ds_egress_check_url() parses a URL with libcurl's own
 * parser (so the host checked is the host libcurl would connect to: numeric forms such as
 * 2130706433, 0x7f.1 or 10.1 are read the same way by both), refuses the names libcurl
 * answers itself ("localhost", "*.localhost", with or without a trailing dot), resolves the
 * host on the threadpool (uv_getaddrinfo: never on the loop), checks every address it
 * resolves to and hands the checked set back; the caller pins the connection to exactly
 * that set (ds_http_request_t.pin), so no second resolution can swap the address (DNS
 * rebinding). Plain http is allowed only when every address lies in an allowed network.
 * Must not: connect anywhere itself, block the loop, or run callbacks synchronously.
 */
#ifndef DS_NET_EGRESS_H
#define DS_NET_EGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct ds_egress_s ds_egress_t;
typedef struct ds_egress_req_s ds_egress_req_t;

#define DS_EGRESS_MAX_ADDRS 16

/** A checked destination: every address the host resolved to (at most
 *  DS_EGRESS_MAX_ADDRS), each allowed by the policy. */
typedef struct ds_egress_dest_s {
  struct sockaddr_storage addrs[DS_EGRESS_MAX_ADDRS];
  size_t naddrs;
} ds_egress_dest_t;

/** A policy whose allowed networks are the CIDR strings in allow ("127.0.0.0/8",
 *  "::1/128"; a bare address means a single host). NULL with a one-line reason in err
 *  when an entry is malformed. */
ds_egress_t *ds_egress_new(const char *const *allow, size_t n, char *err, size_t errlen);
void ds_egress_free(ds_egress_t *e);

/** Checks one address (AF_INET or AF_INET6). Returns true when the server may connect to
 *  it; *listed (may be NULL) tells whether an allowed network matched (plain http is then
 *  acceptable). false with a reason in why ("127.0.0.1 is a loopback address"). */
bool ds_egress_check_addr(const ds_egress_t *e, const struct sockaddr *sa, bool *listed,
                          char *why, size_t whylen);

/** Result of ds_egress_check_url: ok, or why the destination was refused (a one-line
 *  reason; the URL is not repeated in it). dest is valid only during the call. */
typedef void (*ds_egress_cb)(void *ud, bool ok, const char *why, const ds_egress_dest_t *dest);

/**
 * Starts checking url (http or https). Returns 0 and later calls cb(ud, ...) exactly once
 * on the loop thread (never before returning) unless the request is cancelled; or returns
 * -1 at once, with the reason in why and no callback, for a URL that is malformed, not
 * http(s), or names a refused host without needing a lookup.
 */
int ds_egress_check_url(uv_loop_t *loop, const ds_egress_t *e, const char *url, ds_egress_cb cb,
                        void *ud, ds_egress_req_t **out, char *why, size_t whylen);
/** Cancels a pending check: its callback will not run. The policy must outlive every
 *  check that is still resolving (the threadpool result arrives later and is dropped). */
void ds_egress_cancel(ds_egress_req_t *r);

#endif
