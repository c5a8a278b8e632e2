/* event.h - the /agents event: validation of EventInput and rendering of the stored Event.
 *
 * Provides: one function that turns a POSTed body into the stored event, rendered once as
 * the YAML document (for disk) and the compact JSON (for readers), with the contract's key
 * order type, payload, version, path, offset, createdAt (agents-api.md §1).
 * Must not: store or publish anything (streams.c does), or keep references to the body.
 */
#ifndef DS_STREAM_EVENT_H
#define DS_STREAM_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/buf.h"

typedef struct ds_event_out_s {
  const char *type; /* in the arena, NUL-terminated */
  size_t type_len;
} ds_event_out_t;

/**
 * Validates body as an EventInput and appends the rendered Event to yaml and json.
 * Returns 0, or DS_EINVAL with a one-line reason in err (invalid JSON / UTF-8, not an
 * object, bad type / payload / version).
 * version: absent -> "1"; a string is kept; a number becomes its shortest decimal form
 * (2 -> "2", 1.5 -> "1.5"). Unknown top-level fields are ignored. When a key repeats, the
 * last occurrence wins (as JSON.parse does).
 */
int ds_event_render(ds_arena_t *a, const char *body, size_t len, int max_depth, const char *path,
                    uint64_t offset, int64_t created_ms, ds_buf_t *yaml, ds_buf_t *json,
                    ds_event_out_t *out, char *err, size_t errlen);

/** Shortest decimal string that reads back as the same double (JavaScript style:
 *  integers below 1e21 without exponent). Writes into out (at least 32 bytes). */
void ds_number_shortest(double v, char *out, size_t outlen);

#endif
