/* rbuf.h - reference-counted immutable byte buffers.
 *
 * Provides: ds_rbuf_t, a buffer encoded once and shared by every writer that sends it (an
 * SSE frame fanned out to a thousand subscribers is one allocation, not a thousand).
 * Must not: be modified after it is shared; there is no locking (one loop thread).
 */
#ifndef DS_CORE_RBUF_H
#define DS_CORE_RBUF_H

#include <stddef.h>

typedef struct ds_rbuf_s {
  unsigned refs;
  size_t len;
  char data[]; /* len bytes, followed by a NUL */
} ds_rbuf_t;

/** New buffer with one reference, holding a copy of p[0..n). */
ds_rbuf_t *ds_rbuf_new(const void *p, size_t n);
/** New buffer of n uninitialised bytes (fill before sharing). */
ds_rbuf_t *ds_rbuf_alloc(size_t n);
static inline ds_rbuf_t *ds_rbuf_ref(ds_rbuf_t *b) {
  b->refs++;
  return b;
}
void ds_rbuf_unref(ds_rbuf_t *b);

#endif
