/* util.c - small protocol helpers: request offsets, cursors, stream paths.
 *
 * Provides: parsing of the `offset` query parameter and fork offsets (sentinels -1 and
 * now, our 16-digit offsets, and the reference servers' "<seq>_<bytes>" form so offsets
 * minted by other servers such as "0000000000000000_0000000000000000" mean the same
 * position), the CDN cursor (interval number since 2024-10-09T00:00Z in 20 s steps,
 * strictly above an echoed client cursor), and the URL-to-stream-path mapping.
 * Must not: keep state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "protocol/pinternal.h"

int ds__offset_parse_req(const char *s, size_t n, uint64_t *out, int *sentinel) {
  *sentinel = 0;
  *out = 0;
  if (n == 2 && memcmp(s, "-1", 2) == 0) {
    *sentinel = -1;
    return 0;
  }
  if (n == 3 && memcmp(s, "now", 3) == 0) {
    *sentinel = 1;
    return 0;
  }
  size_t i = 0;
  while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  if (i == 0 || i > 16) return -1;
  if (i < n) {
    /* "<seq>_<bytes>": the reference servers' form; the second part must be digits */
    if (s[i] != '_' || i + 1 == n) return -1;
    for (size_t j = i + 1; j < n; j++)
      if (s[j] < '0' || s[j] > '9') return -1;
  }
  uint64_t v = 0;
  for (size_t j = 0; j < i; j++) v = v * 10 + (uint64_t)(s[j] - '0');
  *out = v;
  return 0;
}

#define DS__CURSOR_EPOCH_MS 1728432000000LL /* 2024-10-09T00:00:00Z */
#define DS__CURSOR_INTERVAL_S 20

void ds__cursor(const char *client, char out[32]) {
  long long cur = (ds_clock_wall_ms() - DS__CURSOR_EPOCH_MS) / (DS__CURSOR_INTERVAL_S * 1000);
  if (client && *client) {
    char *end = NULL;
    long long c = strtoll(client, &end, 10);
    if (end != client && c >= cur) {
      /* jitter of 1..3600 s, in whole intervals, keeps echoed cursors moving forward */
      long long jitter_s = 1 + (long long)(rand() % 3600);
      long long k = (jitter_s + DS__CURSOR_INTERVAL_S - 1) / DS__CURSOR_INTERVAL_S;
      if (k < 1) k = 1;
      cur = c + k;
    }
  }
  snprintf(out, 32, "%lld", cur);
}

char *ds__stream_path(ds_protocol_t *p, const char *raw, size_t n, char *err, size_t errlen) {
  (void)p;
  char *dec = NULL;
  size_t dlen = 0;
  if (ds_http_pct_decode(raw, n, 0, &dec, &dlen) != 0) {
    snprintf(err, errlen, "Invalid percent-encoding in path");
    return NULL;
  }
  if (strlen(dec) != dlen || ds_path_validate(dec, dlen, err, errlen) != 0) {
    if (strlen(dec) != dlen) snprintf(err, errlen, "Invalid stream path");
    free(dec);
    return NULL;
  }
  return dec;
}
