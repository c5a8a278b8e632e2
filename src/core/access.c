/* access.c - grants (scopes + URL-path prefixes) and the one check on them. */
#include "core/access.h"

#include <stdlib.h>
#include <string.h>

struct ds_access_s {
  int scopes;
  char **prefixes;
  size_t *lens;
  size_t n;
};

ds_access_t *ds_access_new(int scopes, const char *const *prefixes, size_t nprefixes) {
  ds_access_t *a = ds_xcalloc(1, sizeof *a);
  a->scopes = scopes;
  a->prefixes = ds_xcalloc(nprefixes ? nprefixes : 1, sizeof *a->prefixes);
  a->lens = ds_xcalloc(nprefixes ? nprefixes : 1, sizeof *a->lens);
  for (size_t i = 0; i < nprefixes; i++) {
    a->prefixes[i] = ds_xstrdup(prefixes[i]);
    a->lens[i] = strlen(prefixes[i]);
  }
  a->n = nprefixes;
  return a;
}

void ds_access_free(ds_access_t *a) {
  if (!a) return;
  for (size_t i = 0; i < a->n; i++) free(a->prefixes[i]);
  free(a->prefixes);
  free(a->lens);
  free(a);
}

bool ds_access_allows(const ds_access_t *a, int scope, const char *path, size_t n) {
  if (!a) return true;
  if ((a->scopes & scope) != scope || scope == 0) return false;
  for (size_t i = 0; i < a->n; i++)
    if (a->lens[i] <= n && memcmp(a->prefixes[i], path, a->lens[i]) == 0) return true;
  return false;
}

bool ds_access_allows_stream(const ds_access_t *a, int scope, const char *view_prefix,
                             const char *stream_path) {
  if (!a) return true;
  ds_buf_t u = DS_BUF_INIT;
  ds_buf_puts(&u, view_prefix);
  ds_buf_putc(&u, '/');
  ds_buf_puts(&u, stream_path);
  bool ok = ds_access_allows(a, scope, u.data, u.len);
  ds_buf_free(&u);
  return ok;
}

static bool is_wild(const char *s, size_t n) {
  return (n == 1 && s[0] == '*') || (n == 2 && s[0] == '*' && s[1] == '*');
}

void ds_access_glob_cover(const char *view_prefix, const char *glob, ds_buf_t *out) {
  ds_buf_puts(out, view_prefix);
  ds_buf_putc(out, '/');
  size_t literal = 0; /* literal leading segments written */
  bool wild = false;
  for (const char *s = glob; *s && !wild;) {
    while (*s == '/') s++;
    if (!*s) break;
    const char *e = strchr(s, '/');
    size_t l = e ? (size_t)(e - s) : strlen(s);
    if (is_wild(s, l)) {
      wild = true;
      break;
    }
    if (literal++) ds_buf_putc(out, '/');
    ds_buf_append(out, s, l);
    s += l;
  }
  /* deeper matches lie under "<literal>/"; a glob without wildcards names one stream */
  if (wild && literal) ds_buf_putc(out, '/');
}

int ds_access_scopes(const ds_access_t *a) { return a ? a->scopes : 0; }
size_t ds_access_count(const ds_access_t *a) { return a ? a->n : 0; }
const char *ds_access_prefix(const ds_access_t *a, size_t i) {
  return a && i < a->n ? a->prefixes[i] : NULL;
}
