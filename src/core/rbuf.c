/* rbuf.c - reference-counted immutable byte buffers. */
#include "core/rbuf.h"

#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

ds_rbuf_t *ds_rbuf_alloc(size_t n) {
  ds_rbuf_t *b = ds_xmalloc(sizeof *b + n + 1);
  b->refs = 1;
  b->len = n;
  b->data[n] = '\0';
  return b;
}

ds_rbuf_t *ds_rbuf_new(const void *p, size_t n) {
  ds_rbuf_t *b = ds_rbuf_alloc(n);
  if (n) memcpy(b->data, p, n);
  return b;
}

void ds_rbuf_unref(ds_rbuf_t *b) {
  if (b && --b->refs == 0) free(b);
}
