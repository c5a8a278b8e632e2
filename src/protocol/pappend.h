/* pappend.h - prepared protocol messages (see append.c).
 *
 * Provides: ds__msgs_t, the messages of one request validated before anything is
 * created or stored, then rendered and appended in one atomic call.
 * Must not: be included outside src/protocol.
 */
#ifndef DS_PROTOCOL_PAPPEND_H
#define DS_PROTOCOL_PAPPEND_H

#include "protocol/pinternal.h"
#include "store/value.h"

typedef struct ds__msg_s {
  ds_value_t *v;
  size_t repr_off, repr_len;
} ds__msg_t;

typedef struct ds__msgs_s {
  ds_arena_t a;
  ds__msg_t *items;
  size_t n, cap;
  ds_buf_t reprs;
  ds_rec_kind_t kind;
} ds__msgs_t;

void ds__msgs_init(ds__msgs_t *m);
void ds__msgs_free(ds__msgs_t *m);
/** Validates and splits a body. DS_EINVAL with a reason for invalid JSON / empty array
 *  (an empty array is allowed when is_create: it creates an empty stream). */
int ds__msgs_prepare(ds__msgs_t *m, int mode, const char *body, size_t len, bool is_create,
                     char *err, size_t errlen);
/** Adds one message given by its repr (fork prefixes copied from the source). */
void ds__msgs_add_raw(ds__msgs_t *m, int mode, const char *repr, size_t len);
/** Renders and appends all messages at the stream's tail; 0 or DS_E*. */
int ds__msgs_commit(ds__msgs_t *m, ds_stream_t *s);

#endif
