/* auth.h - optional bearer-token authorization and CORS policy for every route.
 *
 * Provides: the policy read from config.lua's `auth` and `cors` tables, and the checks the
 * router applies before any handler runs: a request needs a token (Authorization: Bearer
 * <token>, or ?access_token= for browsers' EventSource, which cannot set headers) whose
 * scopes include what the method does (read: GET/HEAD; append: POST/PUT/DELETE/PATCH) and
 * one of whose URL-path prefixes matches. Tokens are compared in constant time and never
 * logged. Origins: which browser origins may call the server at all (a request from any
 * other is refused before it is routed: cross-site request forgery) and the CORS answer.
 * Must not: know routes beyond the URL path, or hold request state.
 */
#ifndef DS_APP_AUTH_H
#define DS_APP_AUTH_H

#include <stddef.h>

#include "core/access.h"

typedef struct ds_auth_s ds_auth_t;

/** Loads `auth` and `cors` from the config file (NULL: auth off, loopback origins only).
 *  Returns NULL with a one-line reason in err on a malformed table or origin. */
ds_auth_t *ds_auth_load(const char *config_path, char *err, size_t errlen);
void ds_auth_free(ds_auth_t *a);
int ds_auth_enabled(const ds_auth_t *a);

/** Scope needed by an HTTP method. */
int ds_auth_scope_for_method(const char *method);

/**
 * Finds the token a request presents: `authorization` is the Authorization header (may be
 * NULL), `query_token` the decoded access_token parameter (may be NULL). Returns 0 with
 * *grant set to that token's grant (valid as long as `a`; NULL when auth is off), or 401
 * when no valid token was presented. What the grant allows is ds_access_allows()'s answer
 * (core/access.h), asked for the request's path and for every other stream it names.
 */
int ds_auth_authenticate(const ds_auth_t *a, const char *authorization, const char *query_token,
                         const ds_access_t **grant);

/**
 * Checks a request's own path: `authorization` is the Authorization header (may be NULL),
 * `query_token` the decoded access_token parameter (may be NULL). Returns 0 when allowed,
 * 401 when no valid token was presented, 403 when the token lacks the scope or prefix.
 */
int ds_auth_check(const ds_auth_t *a, const char *method, const char *path, size_t path_len,
                  const char *authorization, const char *query_token);

/**
 * The CSRF rule: 1 if a request with this Origin header (NULL: none) may be served. Allowed
 * are requests without Origin (curl, servers: no browser is involved), and the origins of
 * config.lua's `cors.allowed_origins` (exact origins, "scheme://host:*" for any port,
 * "null" for sandboxed iframes and file:// pages, "*" for every origin); without that key,
 * the loopback origins http://localhost:*, http://127.0.0.1:* and http://[::1]:*.
 */
int ds_auth_origin_allowed(const ds_auth_t *a, const char *origin);
/** The Access-Control-Allow-Origin value for a request's Origin header ("*" when every
 *  origin is allowed, else the origin itself, which is valid while the request is), or NULL
 *  when the origin is not allowed or there was none. */
const char *ds_auth_cors_origin(const ds_auth_t *a, const char *origin);

/** Constant-time comparison of two byte strings (length differences leak only length). */
int ds_auth_ct_equal(const char *a, size_t an, const char *b, size_t bn);

#endif
