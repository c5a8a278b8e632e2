/* pwhook.h - outbound webhook client (see whook.c).
 *
 * Provides: asynchronous JSON POSTs on the loop with a completion callback, each to a
 * destination checked against the egress policy and pinned to the checked addresses.
 * Must not: be included outside src/protocol.
 */
#ifndef DS_PROTOCOL_PWHOOK_H
#define DS_PROTOCOL_PWHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "net/egress.h"

typedef struct ds__whook_s ds__whook_t;
/** status: HTTP status, or -1 on a transport error or a refused destination. */
typedef void (*ds__whook_done_fn)(void *ud, int status, const char *body, size_t len);

/** policy: the egress policy every destination is checked against (borrowed; must
 *  outlive the client). */
ds__whook_t *ds__whook_new(uv_loop_t *loop, const ds_egress_t *policy);
/** headers: NULL-terminated "Name: value" strings. Returns 0 (done runs later, on the
 *  loop) or -1. */
int ds__whook_post(ds__whook_t *h, const char *url, const char *body, size_t len,
                   const char *const *headers, ds__whook_done_fn done, void *ud);
/** Abandons in-flight requests (no callbacks), closes handles, frees the client and
 *  then calls closed(ud) (may be NULL). */
void ds__whook_close(ds__whook_t *h, void (*closed)(void *ud), void *ud);

#endif
