/* app.h - the assembled server: store, streams, HTTP, APIs, Lua host, signals.
 *
 * Provides: ds_app_run(), which builds every component from a ds_config_t, prints the
 * `listening on http://HOST:PORT` line once ready, serves until SIGINT/SIGTERM, and then
 * shuts down in order (stop accepting, end live readers, let in-flight appends finish,
 * flush and fsync the store, close every handle) before returning the exit status.
 * Also the request router (which module answers which path).
 * Must not: implement any API itself.
 */
#ifndef DS_APP_APP_H
#define DS_APP_APP_H

#include "app/config.h"

/** Runs the server; returns the process exit status (0 after a clean shutdown). */
int ds_app_run(const ds_config_t *cfg);

#endif
