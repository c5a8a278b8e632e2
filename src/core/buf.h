/* buf.h - growable byte buffer.
 *
 * Provides: ds_buf_t, an owned, NUL-terminated-on-demand byte vector used everywhere bytes
 * are assembled (JSON, YAML, HTTP responses). Growth is geometric.
 * Must not: be shared between owners; it has no reference count (see core/rbuf.h).
 * Allocation failure aborts the process (out of memory is not recoverable here); this keeps
 * every append call site free of error paths.
 */
#ifndef DS_CORE_BUF_H
#define DS_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ds_buf_s {
  char *data; /* owned; NULL while cap == 0 */
  size_t len;
  size_t cap;
} ds_buf_t;

#define DS_BUF_INIT {NULL, 0, 0}

void ds_buf_init(ds_buf_t *b);
void ds_buf_free(ds_buf_t *b);
/** Ensures room for `extra` more bytes (plus a NUL). */
void ds_buf_reserve(ds_buf_t *b, size_t extra);
void ds_buf_append(ds_buf_t *b, const void *p, size_t n);
void ds_buf_puts(ds_buf_t *b, const char *s);
void ds_buf_putc(ds_buf_t *b, char c);
void ds_buf_printf(ds_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ds_buf_vprintf(ds_buf_t *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/** Writes a NUL after the data (not counted in len) and returns data ("" when empty). */
const char *ds_buf_cstr(ds_buf_t *b);
void ds_buf_reset(ds_buf_t *b); /* len = 0, keeps capacity */
/** Removes the first n bytes. */
void ds_buf_consume(ds_buf_t *b, size_t n);
/** Hands the storage to the caller (who frees it with free()); leaves b empty. */
char *ds_buf_detach(ds_buf_t *b, size_t *len);

/** Calls abort() with a message; used by every allocation wrapper. */
void ds_oom(void) __attribute__((noreturn));
void *ds_xmalloc(size_t n);
void *ds_xcalloc(size_t n, size_t sz);
void *ds_xrealloc(void *p, size_t n);
char *ds_xstrdup(const char *s);
char *ds_xstrndup(const char *s, size_t n);

#endif
