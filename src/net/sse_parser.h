/* sse_parser.h - incremental Server-Sent Events parser (WHATWG "event stream" rules).
 *
 * Provides: ds_sse_parser_t, a value object fed with arbitrary slices of a text/event-stream
 * body (split at any byte, even inside a CRLF or the BOM) that hands each complete event to
 * a callback: `event:` type (default "message"), `data:` lines joined with "\n", the last
 * `id:` and `retry:`. Comments (":" lines) are skipped; CRLF, LF and CR all end lines; a
 * UTF-8 BOM at the very start is dropped. The buffered size of one event is bounded.
 * Used by the OpenAI transport (Responses and Chat Completions streams).
 * Must not: allocate per event beyond its growing buffers, or keep pointers to the input.
 */
#ifndef DS_NET_SSE_PARSER_H
#define DS_NET_SSE_PARSER_H

#include <stddef.h>

#include "core/buf.h"

typedef struct ds_sse_event_s {
  const char *type; /* NUL-terminated; "message" when no event: field was given */
  size_t type_len;
  const char *data; /* NUL-terminated; data lines joined with '\n' */
  size_t data_len;
  const char *id; /* NUL-terminated last event id ("" if none so far) */
  size_t id_len;
  long retry; /* retry: value given in this event, or -1 */
} ds_sse_event_t;

/** Receives one event; the pointers are valid only during the call. Returning non-zero
 *  stops the current feed, which then returns that value. */
typedef int (*ds_sse_event_cb)(const ds_sse_event_t *ev, void *ud);

typedef struct ds_sse_parser_s {
  ds_sse_event_cb cb;
  void *ud;
  size_t max_event; /* bound on line + type + data bytes buffered for one event */
  ds_buf_t line;    /* the current incomplete line */
  ds_buf_t type;
  ds_buf_t data;
  ds_buf_t id;
  long retry;
  unsigned char bom_seen; /* bytes of the leading BOM matched so far (0..3), or 4 when decided */
  unsigned char cr_pending; /* the last byte fed was CR: a following LF belongs to it */
  unsigned char has_data;   /* a data: field was seen in the current event */
  unsigned char failed;     /* an event exceeded max_event: the parser is dead */
  unsigned long events;     /* events delivered */
  unsigned long comments;   /* comment lines skipped */
} ds_sse_parser_t;

/** Initialises `p` (an empty event stream). max_event 0 means 1 MiB. */
void ds_sse_parser_init(ds_sse_parser_t *p, size_t max_event, ds_sse_event_cb cb, void *ud);

/**
 * Parses the next slice of the stream, calling cb for each event it completes.
 * Returns 0, the callback's non-zero value if it stopped parsing (the rest of this slice is
 * dropped), or DS_ETOOBIG once an event or line exceeds max_event (then every later feed
 * fails too).
 */
int ds_sse_parser_feed(ds_sse_parser_t *p, const char *data, size_t n);

/** 1 if part of an event (or a line) is buffered: the stream ended mid-event. */
int ds_sse_parser_pending(const ds_sse_parser_t *p);

/** Frees the buffers; `p` may be re-initialised afterwards. */
void ds_sse_parser_free(ds_sse_parser_t *p);

#endif
