/* l_http_client.h - the `ds.http` Lua binding: outbound streaming HTTP for tasks.
 *
 * Provides: ds_l_http_t, which owns one ds_http_client_t on the host's loop and builds the
 * Lua module table:
 *
 *   local res, err, code = ds.http.request{url=, method=, headers=, body=, sse=,
 *       connect_timeout_ms=, timeout_ms=, stall_timeout_ms=, max_event=}
 *     yields until the status line and headers arrived; on failure returns nil, a one-line
 *     message and a stable code ("ECONNREFUSED", "EDNS", "ETLS", "ETIMEDOUT", "ESTALLED",
 *     "ECLOSED", "EPROTO", "EIO", "EINVAL").
 *   res:status()   -> integer HTTP status
 *   res:headers()  -> table, lower-case names -> value (repeated headers joined by ", ")
 *   res:read()     -> next item, yielding while none is queued: with sse=true, a 2xx
 *                     status and a Content-Type of text/event-stream (or none) an event
 *                     table {event=, data=, id=}, otherwise a string chunk (so a server
 *                     that answers a stream request with a whole JSON document, or a proxy
 *                     with an HTML page, can be read and reported as what it is);
 *                     nil at the clean end; nil, msg, code on failure (then forever).
 *   res:events()   -> iterator over read() for a generic `for`; stops at the end or at a
 *                     failure, which res:error() then returns as msg, code.
 *   res:close()    -> cancels the transfer at once (the peer sees the connection close);
 *                     idempotent; also run by __close and, as a last resort, __gc.
 *   ds.http.stats() -> {live = <requests objects alive>, active = <transfers running>}
 *
 * A Response is an I/O object (habits.md §4): the userdata is a box pointing to a C struct
 * that also lives while its transfer or a waiting task needs it; a closed box answers
 * nil, "closed", "closed". Body data is queued in C until Lua reads it.
 * Must not: call Lua from curl/uv callbacks (they queue items and wake the waiting task);
 * be used off the loop thread.
 */
#ifndef DS_LUA_L_HTTP_CLIENT_H
#define DS_LUA_L_HTTP_CLIENT_H

#include <lua.h>
#include <uv.h>

typedef struct ds_l_http_s ds_l_http_t;

/** Creates the binding's state (and its HTTP client) on `loop`; NULL on failure. */
ds_l_http_t *ds_l_http_new(uv_loop_t *loop);

/** Adds `request` and `stats` to the table at the top of L's stack (the host's `ds.http`).
 *  The functions keep `h` as a light upvalue: `h` must outlive the Lua state (free it after
 *  closing the state). */
void ds_l_http_open(lua_State *L, ds_l_http_t *h);

/** Cancels every transfer (requests then read nil, "closed", "closed") and closes the
 *  client's handles; the caller runs the loop afterwards. Idempotent. */
void ds_l_http_shutdown(ds_l_http_t *h);

/** Requests objects still alive (not yet collected). */
long ds_l_http_live(const ds_l_http_t *h);

/** Frees the state once the loop ran after shutdown and the Lua state is closed (every
 *  Response collected). Returns the number of request objects leaked (logged). */
long ds_l_http_free(ds_l_http_t *h);

#endif
