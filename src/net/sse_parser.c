/* sse_parser.c - incremental SSE parser (see sse_parser.h).
 *
 * Provides: line splitting across arbitrary slices and the field rules of the WHATWG
 * "event stream interpretation" algorithm.
 * Must not: look ahead beyond the bytes it was given: a CR at the end of a slice is
 * remembered (cr_pending) so an LF starting the next slice is not read as an empty line.
 */
#include "net/sse_parser.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"

static const unsigned char BOM[3] = {0xEF, 0xBB, 0xBF};

void ds_sse_parser_init(ds_sse_parser_t *p, size_t max_event, ds_sse_event_cb cb, void *ud) {
  memset(p, 0, sizeof *p);
  p->cb = cb;
  p->ud = ud;
  p->max_event = max_event ? max_event : (size_t)1 << 20;
  p->retry = -1;
  ds_buf_init(&p->line);
  ds_buf_init(&p->type);
  ds_buf_init(&p->data);
  ds_buf_init(&p->id);
}

void ds_sse_parser_free(ds_sse_parser_t *p) {
  ds_buf_free(&p->line);
  ds_buf_free(&p->type);
  ds_buf_free(&p->data);
  ds_buf_free(&p->id);
}

int ds_sse_parser_pending(const ds_sse_parser_t *p) {
  return p->line.len > 0 || p->has_data || p->type.len > 0 || (p->bom_seen > 0 && p->bom_seen < 4);
}

static size_t buffered(const ds_sse_parser_t *p) { return p->line.len + p->type.len + p->data.len; }

static int dispatch(ds_sse_parser_t *p) {
  int rc = 0;
  if (p->has_data) {
    /* the data buffer holds every line followed by '\n': drop the last one */
    if (p->data.len > 0) p->data.len--;
    ds_sse_event_t ev;
    ev.type = p->type.len ? ds_buf_cstr(&p->type) : "message";
    ev.type_len = p->type.len ? p->type.len : 7;
    ev.data = ds_buf_cstr(&p->data);
    ev.data_len = p->data.len;
    ev.id = ds_buf_cstr(&p->id);
    ev.id_len = p->id.len;
    ev.retry = p->retry;
    p->events++;
    rc = p->cb ? p->cb(&ev, p->ud) : 0;
  }
  ds_buf_reset(&p->type);
  ds_buf_reset(&p->data);
  p->has_data = 0;
  p->retry = -1;
  return rc;
}

/* One complete line (without its terminator). */
static int process_line(ds_sse_parser_t *p, const char *s, size_t n) {
  if (n == 0) return dispatch(p);
  if (s[0] == ':') {
    p->comments++;
    return 0;
  }
  const char *colon = memchr(s, ':', n);
  size_t flen = colon ? (size_t)(colon - s) : n;
  const char *v = colon ? colon + 1 : s + n;
  size_t vlen = (size_t)(s + n - v);
  if (vlen > 0 && v[0] == ' ') {
    v++;
    vlen--;
  }
  if (flen == 5 && memcmp(s, "event", 5) == 0) {
    ds_buf_reset(&p->type);
    ds_buf_append(&p->type, v, vlen);
  } else if (flen == 4 && memcmp(s, "data", 4) == 0) {
    ds_buf_append(&p->data, v, vlen);
    ds_buf_putc(&p->data, '\n');
    p->has_data = 1;
  } else if (flen == 2 && memcmp(s, "id", 2) == 0) {
    if (!memchr(v, '\0', vlen)) { /* ids containing NUL are ignored (WHATWG) */
      ds_buf_reset(&p->id);
      ds_buf_append(&p->id, v, vlen);
    }
  } else if (flen == 5 && memcmp(s, "retry", 5) == 0) {
    long r = 0;
    size_t i = 0;
    for (; i < vlen && v[i] >= '0' && v[i] <= '9' && r < 100000000L; i++) r = r * 10 + (v[i] - '0');
    if (vlen > 0 && i == vlen) p->retry = r;
  }
  /* other fields are ignored */
  if (buffered(p) > p->max_event) {
    p->failed = 1;
    return DS_ETOOBIG;
  }
  return 0;
}

int ds_sse_parser_feed(ds_sse_parser_t *p, const char *data, size_t n) {
  if (p->failed) return DS_ETOOBIG;
  const char *s = data, *end = data + n;
  /* the BOM may itself arrive split across slices */
  while (p->bom_seen < 3 && s < end) {
    if ((unsigned char)*s != BOM[p->bom_seen]) {
      /* not a BOM after all: the bytes matched so far are ordinary input */
      unsigned char seen = p->bom_seen;
      p->bom_seen = 4;
      if (seen > 0) {
        int rc = ds_sse_parser_feed(p, (const char *)BOM, seen);
        if (rc) return rc;
      }
      break;
    }
    p->bom_seen++;
    s++;
  }
  if (p->bom_seen == 3) p->bom_seen = 4;
  if (p->bom_seen < 3 && s == end) return 0; /* still possibly inside a BOM */

  while (s < end) {
    if (p->cr_pending) {
      p->cr_pending = 0;
      if (*s == '\n') {
        s++;
        continue;
      }
    }
    const char *t = s;
    while (t < end && *t != '\n' && *t != '\r') t++;
    if (t == end) {
      ds_buf_append(&p->line, s, (size_t)(end - s));
      if (buffered(p) > p->max_event) {
        p->failed = 1;
        return DS_ETOOBIG;
      }
      break;
    }
    int rc;
    if (p->line.len) {
      ds_buf_append(&p->line, s, (size_t)(t - s));
      rc = process_line(p, p->line.data, p->line.len);
      ds_buf_reset(&p->line);
    } else {
      rc = process_line(p, s, (size_t)(t - s));
    }
    if (*t == '\r') p->cr_pending = 1;
    s = t + 1;
    if (rc) return rc;
  }
  return 0;
}
