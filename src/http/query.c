/* query.c - query-string and percent-decoding helpers.
 *
 * Provides: ds_http_pct_decode and ds_http_query_get (http.h).
 * Must not: allocate anything the caller does not free, or know parameter meanings.
 */
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "http/http.h"

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

int ds_http_pct_decode(const char *s, size_t n, int plus_is_space, char **out, size_t *out_len) {
  char *o = ds_xmalloc(n + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '%') {
      int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
      int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        free(o);
        *out = NULL;
        if (out_len) *out_len = 0;
        return -1;
      }
      o[k++] = (char)(hi * 16 + lo);
      i += 2;
    } else if (ch == '+' && plus_is_space) {
      o[k++] = ' ';
    } else {
      o[k++] = ch;
    }
  }
  o[k] = '\0';
  *out = o;
  if (out_len) *out_len = k;
  return 0;
}

int ds_http_query_get(const char *query, const char *name, char **val, size_t *val_len) {
  *val = NULL;
  if (val_len) *val_len = 0;
  if (!query) return 0;
  size_t nlen = strlen(name);
  int count = 0;
  const char *p = query;
  while (*p) {
    const char *end = strchr(p, '&');
    size_t plen = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', plen);
    size_t klen = eq ? (size_t)(eq - p) : plen;
    /* names are compared decoded, so "a%62c" matches "abc" */
    int match = 0;
    if (klen == nlen && memcmp(p, name, nlen) == 0) {
      match = 1;
    } else if (memchr(p, '%', klen) || memchr(p, '+', klen)) {
      char *key = NULL;
      size_t kl = 0;
      match = ds_http_pct_decode(p, klen, 1, &key, &kl) == 0 && kl == nlen && memcmp(key, name, nlen) == 0;
      free(key);
    }
    if (match) {
      if (++count == 1) {
        const char *v = eq ? eq + 1 : p + plen;
        size_t vlen = eq ? plen - klen - 1 : 0;
        if (ds_http_pct_decode(v, vlen, 1, val, val_len) != 0) return -1;
      }
    }
    if (!end) break;
    p = end + 1;
  }
  return count;
}
