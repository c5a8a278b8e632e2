/* buf.c - growable byte buffer and allocation wrappers. */
#include "core/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ds_oom(void) {
  fputs("durable-stream: out of memory\n", stderr);
  abort();
}

void *ds_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) ds_oom();
  return p;
}

void *ds_xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz ? sz : 1);
  if (!p) ds_oom();
  return p;
}

void *ds_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) ds_oom();
  return q;
}

char *ds_xstrdup(const char *s) { return ds_xstrndup(s, strlen(s)); }

char *ds_xstrndup(const char *s, size_t n) {
  char *p = ds_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void ds_buf_init(ds_buf_t *b) {
  b->data = NULL;
  b->len = b->cap = 0;
}

void ds_buf_free(ds_buf_t *b) {
  free(b->data);
  ds_buf_init(b);
}

void ds_buf_reserve(ds_buf_t *b, size_t extra) {
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap *= 2;
  b->data = ds_xrealloc(b->data, cap);
  b->cap = cap;
}

void ds_buf_append(ds_buf_t *b, const void *p, size_t n) {
  if (n == 0) return;
  ds_buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

void ds_buf_puts(ds_buf_t *b, const char *s) { ds_buf_append(b, s, strlen(s)); }

void ds_buf_putc(ds_buf_t *b, char c) {
  ds_buf_reserve(b, 1);
  b->data[b->len++] = c;
}

void ds_buf_vprintf(ds_buf_t *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  ds_buf_reserve(b, 64);
  int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
  if (n < 0) {
    va_end(ap2);
    return;
  }
  if ((size_t)n >= b->cap - b->len) {
    ds_buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap2);
  }
  b->len += (size_t)n;
  va_end(ap2);
}

void ds_buf_printf(ds_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ds_buf_vprintf(b, fmt, ap);
  va_end(ap);
}

const char *ds_buf_cstr(ds_buf_t *b) {
  ds_buf_reserve(b, 0);
  b->data[b->len] = '\0';
  return b->data;
}

void ds_buf_reset(ds_buf_t *b) { b->len = 0; }

void ds_buf_consume(ds_buf_t *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

char *ds_buf_detach(ds_buf_t *b, size_t *len) {
  ds_buf_reserve(b, 0);
  b->data[b->len] = '\0';
  char *p = b->data;
  if (len) *len = b->len;
  ds_buf_init(b);
  return p;
}
