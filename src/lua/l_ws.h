/* l_ws.h - the `ds.ws` Lua binding: outbound WebSocket connections for tasks.
 *
 * Provides: ds_l_ws_t, which owns one ds_ws_client_t (net/ws_client.h) on the host's loop,
 * and the Lua module table:
 *
 *   local ws, err, code, status = ds.ws.connect{url=, headers=, timeout_ms=, max_message=,
 *       idle_timeout_ms=, insecure=}
 *     yields until the connection is open; on failure nil, a one-line message, a stable
 *     code ("ECONNREFUSED", "EDNS", "EHANDSHAKE", "ETLS", "ETIMEDOUT", "ECLOSED", "EINVAL") and, for
 *     a rejected handshake, the HTTP status (e.g. 401).
 *   ws:send(text)        -> true | nil, msg, code        queued, never yields
 *   ws:receive(timeout_ms) -> message | nil, msg, code   yields while nothing is queued;
 *                           nil, "timeout", "timeout" when timeout_ms (default: none)
 *                           elapsed; after the connection ended, the queued messages
 *                           first, then nil, msg, code ("ECLOSED", "EIDLE", "ETOOBIG"...)
 *   ws:ping() -> true | nil, msg, code;  ws:pongs() -> count of pongs received
 *   ws:state() -> "connecting" | "open" | "closing" | "closed"
 *   ws:error() -> msg, code, http_status  (nil while alive)
 *   ws:set_idle(ms)      close the connection after ms without traffic (0 = never)
 *   ws:close(code?, reason?) clean close (default 1000); idempotent; also __close, __gc
 *   ds.ws.stats() -> {live = <connections held>}
 *
 * A WebSocket is an I/O object (habits.md §4): the userdata is a box pointing to a small C
 * struct that lives while the box or a waiting task needs it; close (by Lua or by host
 * shutdown) releases the C connection and clears the box, and every method then answers
 * nil, "closed", "closed".
 * Must not: call Lua from lws/uv callbacks (they only wake the waiting task); be used off
 * the loop thread.
 */
#ifndef DS_LUA_L_WS_H
#define DS_LUA_L_WS_H

#include <lua.h>
#include <uv.h>

typedef struct ds_l_ws_s ds_l_ws_t;

/** Creates the binding's state on `loop` (the lws context is created on first connect). */
ds_l_ws_t *ds_l_ws_new(uv_loop_t *loop);
/** Adds `connect` and `stats` to the table at the top of L's stack. `m` must outlive the
 *  Lua state. */
void ds_l_ws_open(lua_State *L, ds_l_ws_t *m);
/** Host shutdown, from the loop: closes every connection (boxes answer "closed") and
 *  starts the lws context destroy (stage 1). Idempotent. */
void ds_l_ws_shutdown(ds_l_ws_t *m);
/** After the Lua state is closed and the loop ran: stage 2 of the context destroy (runs the
 *  loop once more), then frees. Returns the connection structs leaked (logged). */
long ds_l_ws_free(ds_l_ws_t *m);

#endif
