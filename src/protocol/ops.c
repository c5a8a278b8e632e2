/* ops.c - the write-side operations: create (PUT, forks included), append and close
 * (POST, idempotent producers, Stream-Seq), metadata (HEAD) and delete (DELETE).
 *
 * Provides: the status codes and headers of the protocol's §4-§5 operations, in the
 * reference order of checks (closed, then content type, then producer, then Stream-Seq).
 * Producer validation never mutates state until the append succeeded. Everything runs on
 * the loop thread, so validate-then-append is serialized per stream by construction.
 * Must not: read message ranges for clients (read.c does).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "protocol/pappend.h"
#include "protocol/pinternal.h"
#include "store/json.h"

#define MAX_SAFE_INT 9007199254740991LL

static bool hdr_true(const char *v) { return v && strcasecmp(v, "true") == 0; }

static bool all_digits(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return false;
  return true;
}

/* ^(0|[1-9]\d*)$ */
static bool canonical_uint(const char *s) {
  if (!all_digits(s)) return false;
  return !(s[0] == '0' && s[1] != 0);
}

static bool valid_ctype(const char *ct) {
  /* ^[\w-]+/[\w-]+ */
  if (!ct) return false;
  const char *p = ct;
  while (*p && (isalnum((unsigned char)*p) || *p == '_' || *p == '-')) p++;
  if (p == ct || *p != '/') return false;
  const char *q = ++p;
  while (*p && (isalnum((unsigned char)*p) || *p == '_' || *p == '-')) p++;
  return p > q;
}

static bool same_media(const char *a, const char *b) {
  char ma[128], mb[128];
  ds__media_type(a, ma, sizeof ma);
  ds__media_type(b, mb, sizeof mb);
  if (!*ma) snprintf(ma, sizeof ma, "application/octet-stream");
  if (!*mb) snprintf(mb, sizeof mb, "application/octet-stream");
  return strcmp(ma, mb) == 0;
}

static void fmt_off(uint64_t o, char out[17]) { ds_offset_format(o, out); }

/* Stream-Next-Offset: the stream's tail, on every answer that changes or describes it. */
static void next_offset_hdr(ds__hdrs_t *h, ds_stream_t *s) {
  char off[17];
  fmt_off(ds_stream_next_offset(s), off);
  ds__hdr(h, "Stream-Next-Offset", off);
}

static char *fork_source_path(ds_protocol_t *p, const char *hv) {
  const char *s = hv;
  size_t n = strlen(s);
  /* full URLs: keep the path part */
  const char *scheme = strstr(s, "://");
  if (scheme) {
    const char *slash = strchr(scheme + 3, '/');
    if (!slash) return NULL;
    s = slash;
    n = strlen(s);
  }
  if (n >= p->prefix_len && memcmp(s, p->prefix, p->prefix_len) == 0 &&
      s[p->prefix_len] == '/') {
    s += p->prefix_len + 1;
    n -= p->prefix_len + 1;
  } else if (*s == '/') {
    s++;
    n--;
  }
  char err[128];
  return ds__stream_path(p, s, n, err, sizeof err);
}

typedef struct recbuf_s {
  ds_buf_t data;
  long count;
  uint64_t first_off;
  ds__msgs_t *copy_to;
  int mode;
} recbuf_t;

static int copy_rec(void *ud, uint64_t off, const char *repr, size_t len) {
  recbuf_t *rb = ud;
  if (rb->count == 0) rb->first_off = off;
  rb->count++;
  if (rb->copy_to) ds__msgs_add_raw(rb->copy_to, rb->mode, repr, len);
  else ds_buf_append(&rb->data, repr, len);
  return 0;
}

static void respond_created(ds_protocol_t *p, ds_http_req_t *req, ds__pstream_t *st,
                            ds_stream_t *s, int status) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  ds__hdr(&h, "Content-Type", st->ctype);
  next_offset_hdr(&h, s);
  if (status == 201) {
    const char *host = ds_http_req_header(req, "host");
    ds_buf_t loc = DS_BUF_INIT;
    ds_buf_printf(&loc, "http://%s", host ? host : "localhost");
    ds_buf_append(&loc, req->path, req->path_len);
    ds__hdr(&h, "Location", ds_buf_cstr(&loc));
    ds_buf_free(&loc);
  }
  if (st->closed) ds__hdr(&h, "Stream-Closed", "true");
  ds__respond_durable(p, req, status, &h);
  ds_arena_free(&a);
}

void ds__op_put(ds_protocol_t *p, ds_http_req_t *req, const char *path) {
  const char *ct = ds_http_req_header(req, "content-type");
  const char *forked = ds_http_req_header(req, "stream-forked-from");
  const char *fork_off_h = ds_http_req_header(req, "stream-fork-offset");
  const char *sub_h = ds_http_req_header(req, "stream-fork-sub-offset");
  const char *ttl_h = ds_http_req_header(req, "stream-ttl");
  const char *exp_h = ds_http_req_header(req, "stream-expires-at");
  bool closed = hdr_true(ds_http_req_header(req, "stream-closed"));
  if (forked && !*forked) forked = NULL;
  if (!ct || !*ct || !valid_ctype(ct)) ct = forked ? NULL : "application/octet-stream";

  if (ttl_h && exp_h) {
    ds__respond_err(req, 400, "Cannot specify both Stream-TTL and Stream-Expires-At");
    return;
  }
  int64_t ttl = 0;
  if (ttl_h) {
    if (!canonical_uint(ttl_h) || strlen(ttl_h) > 15) {
      ds__respond_err(req, 400, "Invalid Stream-TTL value");
      return;
    }
    ttl = strtoll(ttl_h, NULL, 10);
  }
  int64_t exp_ms = 0;
  if (exp_h && ds_clock_parse_rfc3339(exp_h, &exp_ms) != 0) {
    ds__respond_err(req, 400, "Invalid Stream-Expires-At timestamp");
    return;
  }
  uint64_t fork_off = 0;
  int sentinel = 0;
  if (fork_off_h && (ds__offset_parse_req(fork_off_h, strlen(fork_off_h), &fork_off, &sentinel) != 0 ||
                     sentinel != 0)) {
    ds__respond_err(req, 400, "Invalid Stream-Fork-Offset format");
    return;
  }
  int64_t sub = 0;
  if (sub_h) {
    if (!forked) {
      ds__respond_err(req, 400, "Stream-Fork-Sub-Offset requires Stream-Forked-From");
      return;
    }
    if (!canonical_uint(sub_h) || strlen(sub_h) > 15) {
      ds__respond_err(req, 400, "Invalid Stream-Fork-Sub-Offset format");
      return;
    }
    sub = strtoll(sub_h, NULL, 10);
  }
  char *src_path = NULL;
  if (forked) {
    src_path = fork_source_path(p, forked);
    if (!src_path) {
      ds__respond_err(req, 400, "Invalid Stream-Forked-From path");
      return;
    }
    /* a fork reads (and pins) its source: the caller must be allowed to read it, checked
     * before anything is looked up, created or referenced */
    if (!ds__may(p, req, DS_SCOPE_READ, src_path)) {
      ds_buf_t m = DS_BUF_INIT;
      ds__forbidden_msg(p, DS_SCOPE_READ, src_path, "Stream-Forked-From", &m);
      ds__respond_err(req, 403, ds_buf_cstr(&m));
      ds_buf_free(&m);
      free(src_path);
      return;
    }
  }

  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_get(p, path, &s);
  if (st) {
    if (st->soft_deleted) {
      ds__respond_err(req, 409, "Stream was deleted but still has active forks");
      goto out;
    }
    bool ok = true;
    if (ct || !forked) ok = ok && same_media(ct ? ct : "application/octet-stream", st->ctype);
    ok = ok && (ttl_h ? (st->has_ttl && st->ttl_s == ttl) : !st->has_ttl);
    ok = ok && (exp_h ? (st->expires_at && strcmp(st->expires_at, exp_h) == 0) : !st->expires_at);
    ok = ok && closed == st->closed;
    ok = ok && (src_path ? (st->fork_from && strcmp(st->fork_from, src_path) == 0) : !st->fork_from);
    ok = ok && (!fork_off_h || (st->fork_from && st->fork_offset == fork_off));
    ok = ok && sub == st->fork_sub;
    if (!ok) {
      ds__respond_err(req, 409, "Stream already exists with different configuration");
      goto out;
    }
    respond_created(p, req, st, s, 200);
    goto out;
  }

  /* new stream: validate everything before creating anything */
  ds__pstream_t *src = NULL;
  ds_stream_t *src_s = NULL;
  const char *eff_ct = ct;
  if (src_path) {
    src = ds__state_get(p, src_path, &src_s);
    if (!src) {
      ds__respond_err(req, 404, "Source stream not found");
      goto out;
    }
    if (src->soft_deleted) {
      ds__respond_err(req, 409, "Source stream was deleted but still has active forks");
      goto out;
    }
    if (ct && !same_media(ct, src->ctype)) {
      ds__respond_err(req, 409, "Content type mismatch with source stream");
      goto out;
    }
    if (!ct) eff_ct = src->ctype;
    uint64_t tail = ds_stream_next_offset(src_s);
    if (!fork_off_h) fork_off = tail;
    if (fork_off > tail) {
      ds__respond_err(req, 400, "Fork offset beyond source stream length");
      goto out;
    }
  }
  int mode = ds__mode_of(eff_ct);
  ds__msgs_t msgs;
  ds__msgs_init(&msgs);
  char err[160];
  if (src && sub > 0) {
    recbuf_t rb = {DS_BUF_INIT, 0, 0, NULL, mode};
    if (mode == DS__M_JSON) {
      rb.copy_to = &msgs;
      long n = ds__read_range(p, src, src_s, fork_off, fork_off + (uint64_t)sub, SIZE_MAX,
                              copy_rec, &rb);
      if (n < sub) {
        ds__msgs_free(&msgs);
        ds__respond_err(req, 400, "Invalid fork sub-offset: overshoots source message count");
        goto out;
      }
    } else {
      long n = ds__read_range(p, src, src_s, fork_off, fork_off + 1, SIZE_MAX, copy_rec, &rb);
      if (n < 1 || (size_t)sub > rb.data.len) {
        ds_buf_free(&rb.data);
        ds__msgs_free(&msgs);
        ds__respond_err(req, 400, "Invalid fork sub-offset: overshoots source message length");
        goto out;
      }
      ds__msgs_add_raw(&msgs, mode, rb.data.data, (size_t)sub);
      ds_buf_free(&rb.data);
    }
  }
  size_t nprefix = msgs.n;
  ds__msgs_t body;
  ds__msgs_init(&body);
  if (ds__msgs_prepare(&body, mode, req->body, req->body_len, true, err, sizeof err) != 0) {
    ds__msgs_free(&msgs);
    ds__msgs_free(&body);
    ds__respond_err(req, 400, err);
    goto out;
  }

  int rc = ds_streams_get(p->streams, path, 1, src ? fork_off : 0, &s);
  if (rc != 0) {
    ds__msgs_free(&msgs);
    ds__msgs_free(&body);
    /* DS_ECONFLICT: "x" and streams under "x.yaml/" cannot both exist (store.h) */
    if (rc == DS_ECONFLICT)
      ds__respond_err(req, 409, "Cannot create stream: a stream x and streams under x.yaml/ cannot both exist");
    else
      ds__respond_err(req, rc == DS_ENOSPC ? 507 : 500, "Cannot create stream");
    goto out;
  }
  st = ds__state_new(p, path);
  st->ctype = ds_xstrdup(eff_ct);
  st->mode = mode;
  if (src) {
    st->fork_from = ds_xstrdup(src_path);
    st->fork_offset = fork_off;
    st->fork_sub = sub;
    /* forks get their own lifetime: explicit TTL/expiry, else the source's */
    if (!ttl_h && !exp_h) {
      if (src->has_ttl) {
        st->has_ttl = true;
        st->ttl_s = src->ttl_s;
      } else if (src->expires_at) {
        st->expires_at = ds_xstrdup(src->expires_at);
        st->expires_ms = src->expires_ms;
      }
    }
    src->refs++;
    ds__state_save(p, src);
  }
  if (ttl_h) {
    st->has_ttl = true;
    st->ttl_s = ttl;
  }
  if (exp_h) {
    st->expires_at = ds_xstrdup(exp_h);
    st->expires_ms = exp_ms;
  }
  ds__state_save(p, st);
  rc = 0;
  if (nprefix) rc = ds__msgs_commit(&msgs, s);
  if (rc == 0 && body.n) rc = ds__msgs_commit(&body, s);
  size_t appended = nprefix + body.n;
  ds__msgs_free(&msgs);
  ds__msgs_free(&body);
  if (rc != 0) {
    ds__state_delete_cascade(p, path);
    ds__respond_err(req, rc == DS_ENOSPC ? 507 : 500, "Storage error");
    goto out;
  }
  if (closed) {
    st->closed = true;
    ds__state_save(p, st);
  }
  respond_created(p, req, st, s, 201);
  if (appended) ds__subs_on_append(p, path);
out:
  free(src_path);
}

static void producer_headers(ds__hdrs_t *h, int64_t epoch, int64_t seq) {
  ds__hdrf(h, "Producer-Epoch", "%lld", (long long)epoch);
  ds__hdrf(h, "Producer-Seq", "%lld", (long long)seq);
}

/* A producer that repeats the exact (id, epoch, seq) that closed the stream gets the same
 * 204 again (idempotent close), whether it retries the close or an append-and-close. */
static bool repeat_of_close(ds_http_req_t *req, ds_stream_t *s, const ds__pstream_t *st,
                            const char *pid, int64_t epoch, int64_t pseqv) {
  if (!st->closed_by || strcmp(st->closed_by, pid) != 0 || st->closed_epoch != epoch ||
      st->closed_seq != pseqv)
    return false;
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  next_offset_hdr(&h, s);
  ds__hdr(&h, "Stream-Closed", "true");
  producer_headers(&h, epoch, pseqv);
  ds_http_respond(req, 204, ds__hdrs_done(&h), NULL, 0);
  ds_arena_free(&a);
  return true;
}

static void respond_closed_conflict(ds_http_req_t *req, ds_stream_t *s) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  ds__hdr(&h, "Stream-Closed", "true");
  next_offset_hdr(&h, s);
  ds__respond_err_h(req, &h, 409, "Stream is closed");
  ds_arena_free(&a);
}

enum { PR_ACCEPT, PR_DUP, PR_STALE, PR_BADEPOCH, PR_GAP };

static int producer_check(ds__pstream_t *st, const char *id, int64_t epoch, int64_t seq,
                          int64_t *aux) {
  ds__producer_t *pr = ds__producer_find(st, id);
  if (!pr) {
    if (seq != 0) {
      *aux = 0;
      return PR_GAP;
    }
    return PR_ACCEPT;
  }
  if (epoch < pr->epoch) {
    *aux = pr->epoch;
    return PR_STALE;
  }
  if (epoch > pr->epoch) return seq == 0 ? PR_ACCEPT : PR_BADEPOCH;
  if (seq <= pr->seq) {
    *aux = pr->seq;
    return PR_DUP;
  }
  if (seq == pr->seq + 1) return PR_ACCEPT;
  *aux = pr->seq + 1;
  return PR_GAP;
}

/* Responds to a non-accepting producer result; returns true if it responded. */
static bool producer_reject(ds_http_req_t *req, int r, int64_t aux, int64_t epoch, int64_t seq,
                            bool closed_hdr) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  bool done = true;
  switch (r) {
  case PR_DUP:
    producer_headers(&h, epoch, aux);
    if (closed_hdr) ds__hdr(&h, "Stream-Closed", "true");
    ds_http_respond(req, 204, ds__hdrs_done(&h), NULL, 0);
    break;
  case PR_STALE:
    ds__hdrf(&h, "Producer-Epoch", "%lld", (long long)aux);
    ds__respond_err_h(req, &h, 403, "Stale producer epoch");
    break;
  case PR_BADEPOCH:
    ds__respond_err_h(req, &h, 400, "New epoch must start with sequence 0");
    break;
  case PR_GAP:
    ds__hdrf(&h, "Producer-Expected-Seq", "%lld", (long long)aux);
    ds__hdrf(&h, "Producer-Received-Seq", "%lld", (long long)seq);
    ds__respond_err_h(req, &h, 409, "Producer sequence gap");
    break;
  default:
    done = false;
  }
  ds_arena_free(&a);
  return done;
}

static void producer_commit(ds__pstream_t *st, const char *id, int64_t epoch, int64_t seq) {
  ds__producer_t *pr = ds__producer_put(st, id);
  pr->epoch = epoch;
  pr->seq = seq;
}

void ds__op_post(ds_protocol_t *p, ds_http_req_t *req, const char *path) {
  const char *ct = ds_http_req_header(req, "content-type");
  const char *seq_h = ds_http_req_header(req, "stream-seq");
  bool close = hdr_true(ds_http_req_header(req, "stream-closed"));
  const char *pid = ds_http_req_header(req, "producer-id");
  const char *pep = ds_http_req_header(req, "producer-epoch");
  const char *pseq = ds_http_req_header(req, "producer-seq");
  bool anyp = pid || pep || pseq, allp = pid && pep && pseq;
  if (anyp && !allp) {
    ds__respond_err(req, 400, "All producer headers (Producer-Id, Producer-Epoch, Producer-Seq) must be provided together");
    return;
  }
  int64_t epoch = 0, pseqv = 0;
  if (allp) {
    if (!*pid) {
      ds__respond_err(req, 400, "Invalid Producer-Id: must not be empty");
      return;
    }
    if (!all_digits(pep) || strlen(pep) > 16 || (epoch = strtoll(pep, NULL, 10)) > MAX_SAFE_INT) {
      ds__respond_err(req, 400, "Invalid Producer-Epoch: must be a non-negative integer");
      return;
    }
    if (!all_digits(pseq) || strlen(pseq) > 16 || (pseqv = strtoll(pseq, NULL, 10)) > MAX_SAFE_INT) {
      ds__respond_err(req, 400, "Invalid Producer-Seq: must be a non-negative integer");
      return;
    }
  }
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_get(p, path, &s);
  if (!st) {
    ds__respond_err(req, 404, "Stream not found");
    return;
  }
  if (st->soft_deleted) {
    ds__respond_err(req, 410, "Stream is gone");
    return;
  }
  st->access_ms = ds_clock_wall_ms();
  ds_arena_t a;
  ds__hdrs_t h;

  if (req->body_len == 0 && close) {
    if (st->closed) {
      if (allp && repeat_of_close(req, s, st, pid, epoch, pseqv)) return;
      if (allp) {
        respond_closed_conflict(req, s);
        return;
      }
    } else if (allp) {
      int64_t aux = 0;
      int r = producer_check(st, pid, epoch, pseqv, &aux);
      if (producer_reject(req, r, aux, epoch, pseqv, false)) return;
      producer_commit(st, pid, epoch, pseqv);
      free(st->closed_by);
      st->closed_by = ds_xstrdup(pid);
      st->closed_epoch = epoch;
      st->closed_seq = pseqv;
    }
    if (!st->closed) {
      st->closed = true;
      ds__state_save(p, st);
      ds_stream_notify_change(s, 2);
    }
    ds_arena_init(&a);
    ds__hdrs_init(&h, &a);
    next_offset_hdr(&h, s);
    ds__hdr(&h, "Stream-Closed", "true");
    if (allp) producer_headers(&h, epoch, pseqv);
    ds__respond_durable(p, req, 204, &h);
    ds_arena_free(&a);
    return;
  }
  if (req->body_len == 0) {
    ds__respond_err(req, 400, "Empty body");
    return;
  }
  if (!ct || !*ct) {
    ds__respond_err(req, 400, "Content-Type header is required");
    return;
  }
  if (st->closed) {
    if (allp && repeat_of_close(req, s, st, pid, epoch, pseqv)) return;
    respond_closed_conflict(req, s);
    return;
  }
  if (!same_media(ct, st->ctype)) {
    ds__respond_err(req, 409, "Content-type mismatch");
    return;
  }
  if (allp) {
    int64_t aux = 0;
    int r = producer_check(st, pid, epoch, pseqv, &aux);
    if (producer_reject(req, r, aux, epoch, pseqv, false)) return;
  }
  if (seq_h && st->seq && strcmp(seq_h, st->seq) <= 0) {
    ds__respond_err(req, 409, "Sequence conflict");
    return;
  }
  ds__msgs_t msgs;
  ds__msgs_init(&msgs);
  char err[160];
  if (ds__msgs_prepare(&msgs, st->mode, req->body, req->body_len, false, err, sizeof err) != 0) {
    ds__msgs_free(&msgs);
    ds__respond_err(req, 400, err);
    return;
  }
  int rc = ds__msgs_commit(&msgs, s);
  ds__msgs_free(&msgs);
  ds_store_damage_t dmg; /* appends are refused behind damage: name it */
  if (rc == DS_ECORRUPT && ds_stream_store(s) && ds_store_damage(ds_stream_store(s), &dmg) == 0) {
    char msg[320];
    snprintf(msg, sizeof msg, "Storage error: the stream's file is damaged (%s); appends are "
             "refused until it is repaired", dmg.what);
    ds__respond_err(req, 500, msg);
    return;
  }
  if (rc != 0) {
    ds__respond_err(req, rc == DS_ENOSPC ? 507 : rc == DS_ETOOBIG ? 413 : 500, "Storage error");
    return;
  }
  bool dirty = false;
  if (allp) {
    producer_commit(st, pid, epoch, pseqv);
    dirty = true;
  }
  if (seq_h) {
    free(st->seq);
    st->seq = ds_xstrdup(seq_h);
    dirty = true;
  }
  if (close) {
    st->closed = true;
    if (allp) {
      free(st->closed_by);
      st->closed_by = ds_xstrdup(pid);
      st->closed_epoch = epoch;
      st->closed_seq = pseqv;
    }
    dirty = true;
  }
  if (dirty) ds__state_save(p, st);
  if (close) ds_stream_notify_change(s, 2);
  ds_arena_init(&a);
  ds__hdrs_init(&h, &a);
  next_offset_hdr(&h, s);
  if (allp) producer_headers(&h, epoch, pseqv);
  if (close) ds__hdr(&h, "Stream-Closed", "true");
  ds__respond_durable(p, req, allp ? 200 : 204, &h);
  ds_arena_free(&a);
  ds__subs_on_append(p, path);
}

void ds__op_head(ds_protocol_t *p, ds_http_req_t *req, const char *path) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_get(p, path, &s);
  if (!st) {
    ds__respond_err(req, 404, "Stream not found");
    return;
  }
  if (st->soft_deleted) {
    ds__respond_err(req, 410, "Stream is gone");
    return;
  }
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  char off[17];
  fmt_off(ds_stream_next_offset(s), off);
  ds__hdr(&h, "Content-Type", st->ctype);
  ds__hdr(&h, "Stream-Next-Offset", off);
  ds__hdr(&h, "Cache-Control", "no-store");
  if (st->closed) ds__hdr(&h, "Stream-Closed", "true");
  if (st->has_ttl) ds__hdrf(&h, "Stream-TTL", "%lld", (long long)st->ttl_s);
  if (st->expires_at) ds__hdr(&h, "Stream-Expires-At", st->expires_at);
  ds_buf_t et = DS_BUF_INIT;
  ds_buf_putc(&et, '"');
  ds_base64_encode(&et, path, strlen(path));
  ds_buf_printf(&et, ":-1:%s%s\"", off, st->closed ? ":c" : "");
  ds__hdr(&h, "ETag", ds_buf_cstr(&et));
  ds_buf_free(&et);
  ds_http_respond(req, 200, ds__hdrs_done(&h), NULL, 0);
  ds_arena_free(&a);
}

void ds__op_delete(ds_protocol_t *p, ds_http_req_t *req, const char *path) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_get(p, path, &s);
  if (!st) {
    ds__respond_err(req, 404, "Stream not found");
    return;
  }
  if (st->soft_deleted) {
    ds__respond_err(req, 410, "Stream is gone");
    return;
  }
  if (st->refs > 0) {
    st->soft_deleted = true;
    ds__state_save(p, st);
    ds_stream_notify_change(s, 2);
    ds__subs_on_delete(p, path);
  } else {
    ds__state_delete_cascade(p, path);
  }
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  ds_http_respond(req, 204, ds__hdrs_done(&h), NULL, 0);
  ds_arena_free(&a);
}
