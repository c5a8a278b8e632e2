/* authz.c - authorization of every stream a protocol request names.
 *
 * Provides: the protocol's side of core/access.h: the router has checked the request's own
 * URL; these helpers ask the same grant (req->access) about the other streams a request
 * names (a fork's source, a subscription's pattern, explicit streams, wake stream and
 * membership links), each as the URL this view gives it, and word the 403.
 * Must not: answer requests (callers answer in their own error format) or cache answers.
 */
#include "core/access.h"
#include "protocol/pinternal.h"

bool ds__may(ds_protocol_t *p, const ds_http_req_t *req, int scope, const char *path) {
  return ds_access_allows_stream(req->access, scope, p->prefix, path);
}

bool ds__may_glob(ds_protocol_t *p, const ds_http_req_t *req, int scope, const char *glob) {
  if (!req->access) return true;
  ds_buf_t cover = DS_BUF_INIT;
  ds_access_glob_cover(p->prefix, glob, &cover);
  bool ok = ds_access_allows(req->access, scope, cover.data, cover.len);
  ds_buf_free(&cover);
  return ok;
}

void ds__forbidden_msg(ds_protocol_t *p, int scope, const char *path, const char *what,
                       ds_buf_t *out) {
  ds_buf_printf(out, "token not allowed to %s %s/%.200s", scope == DS_SCOPE_READ ? "read" : "append to",
                p->prefix, path);
  if (what) ds_buf_printf(out, " (%s)", what);
}
