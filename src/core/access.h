/* access.h - what the caller of a request may do: the one authorization question.
 *
 * Provides: ds_access_t, the grant of an authenticated caller (its scopes and the URL-path
 * prefixes it may use), and ds_access_allows(), the single check every layer asks before
 * it touches a resource on a caller's behalf: "may this caller <read|append> at URL path
 * P?". The router asks it for the request's own path; the views ask it again for every
 * other stream a request names (a fork's source, a subscription's pattern, streams and
 * wake stream, membership links), and any later feature that reaches streams for a
 * caller (a listing, a plugin reading streams) asks the same function, so no request can
 * reach a stream its own URL would not be allowed to.
 * A stream named inside a view is checked as the URL that view gives it (the protocol's
 * "team-a/x" is "/v1/stream/team-a/x"); a glob is checked as the longest literal path
 * every match starts with (see ds_access_glob_cover()).
 * Lifetime: a grant belongs to the policy that made it (app/auth.c) and lives as long as
 * it; requests carry a borrowed pointer (ds_http_req_t.access). A NULL grant means no
 * authorization is configured: everything is allowed.
 * Must not: know tokens, routes or streams; it only compares paths.
 */
#ifndef DS_CORE_ACCESS_H
#define DS_CORE_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

typedef struct ds_access_s ds_access_t;

/* Scopes: read (GET/HEAD) and append (every method that changes something). */
enum { DS_SCOPE_READ = 1, DS_SCOPE_APPEND = 2 };

/** A grant of `scopes` under URL-path `prefixes` (copied). A grant with no prefixes allows
 *  nothing (a deny-all grant for requests that carry their own credentials). */
ds_access_t *ds_access_new(int scopes, const char *const *prefixes, size_t nprefixes);
void ds_access_free(ds_access_t *a);

/** May the holder of `a` do `scope` (one DS_SCOPE_*) at URL path path[0..n)? True when the
 *  grant has the scope and one of its prefixes is a prefix of the path (byte-wise, as
 *  given: end prefixes with '/' so "/x/team-a" does not also cover "/x/team-a-evil").
 *  Always true for a NULL grant (authorization off). */
bool ds_access_allows(const ds_access_t *a, int scope, const char *path, size_t n);

/** The same for the stream `stream_path` of a view whose URLs are "<view_prefix>/<path>". */
bool ds_access_allows_stream(const ds_access_t *a, int scope, const char *view_prefix,
                             const char *stream_path);

/**
 * How a subscription glob is authorized: appends to out the URL path its literal leading
 * segments (those before the first `*` or `**` segment; globs match whole segments) must
 * lie inside: "<view_prefix>/<literal segments>/", or the exact "<view_prefix>/<path>" for
 * a glob without wildcards, or "<view_prefix>/" for a glob that starts with one. A caller
 * may use a glob when ds_access_allows(out) is true. A trailing `**` also matches the
 * literal path itself (the glob "team-a" + "**" matches the stream "team-a", outside the
 * prefix "/v1/stream/team-a/"): subscriptions are therefore also confined to the prefixes
 * of the token that created them (see ds_access_prefix()), which never lets them see such
 * a stream.
 */
void ds_access_glob_cover(const char *view_prefix, const char *glob, ds_buf_t *out);

/** The grant's scopes (DS_SCOPE_* bits), and its prefixes one by one (i < count): what a
 *  subscription keeps to stay confined to what its creator could read. NULL: 0 / none. */
int ds_access_scopes(const ds_access_t *a);
size_t ds_access_count(const ds_access_t *a);
const char *ds_access_prefix(const ds_access_t *a, size_t i);

#endif
