/* pstate.c - per-stream protocol state: cache, metadata sidecar, expiry, cascading delete.
 *
 * Provides: the ds__pstream_t of each stream the protocol touched, loaded lazily from the
 * store's metadata sidecar (JSON) and written back atomically on every change, so
 * content type, TTL/expiry, closure, producer state, fork links, soft deletes and the
 * last Stream-Seq survive a restart. A stream without metadata is an /agents event
 * stream and reads as application/json. Expiry is lazy (checked on access, like the
 * reference servers): an expired stream is deleted, or soft-deleted while forks still
 * read through it; deleting the last fork of a soft-deleted stream deletes it too.
 * Must not: touch HTTP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "protocol/pinternal.h"
#include "store/json.h"

static size_t hash_str(const char *s) {
  size_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

static void pstream_free(ds__pstream_t *st) {
  free(st->path);
  free(st->ctype);
  free(st->expires_at);
  free(st->closed_by);
  for (size_t i = 0; i < st->nprods; i++) free(st->prods[i].id);
  free(st->prods);
  free(st->fork_from);
  free(st->seq);
  free(st);
}

static ds__pstream_t *tab_find(ds_protocol_t *p, const char *path) {
  for (ds__pstream_t *e = p->tab[hash_str(path) & (p->tab_cap - 1)]; e; e = e->hnext)
    if (strcmp(e->path, path) == 0) return e;
  return NULL;
}

static void tab_insert(ds_protocol_t *p, ds__pstream_t *st) {
  if (p->tab_len + 1 > p->tab_cap / 2) {
    size_t ncap = p->tab_cap * 2;
    ds__pstream_t **nt = ds_xcalloc(ncap, sizeof *nt);
    for (size_t i = 0; i < p->tab_cap; i++) {
      ds__pstream_t *e = p->tab[i];
      while (e) {
        ds__pstream_t *nx = e->hnext;
        size_t b = hash_str(e->path) & (ncap - 1);
        e->hnext = nt[b];
        nt[b] = e;
        e = nx;
      }
    }
    free(p->tab);
    p->tab = nt;
    p->tab_cap = ncap;
  }
  size_t b = hash_str(st->path) & (p->tab_cap - 1);
  st->hnext = p->tab[b];
  p->tab[b] = st;
  p->tab_len++;
}

void ds__state_forget(ds_protocol_t *p, const char *path) {
  ds__pstream_t **pp = &p->tab[hash_str(path) & (p->tab_cap - 1)];
  while (*pp) {
    if (strcmp((*pp)->path, path) == 0) {
      ds__pstream_t *e = *pp;
      *pp = e->hnext;
      pstream_free(e);
      p->tab_len--;
      return;
    }
    pp = &(*pp)->hnext;
  }
}

void ds__state_free_all(ds_protocol_t *p) {
  for (size_t i = 0; i < p->tab_cap; i++) {
    ds__pstream_t *e = p->tab[i];
    while (e) {
      ds__pstream_t *nx = e->hnext;
      pstream_free(e);
      e = nx;
    }
    p->tab[i] = NULL;
  }
  p->tab_len = 0;
}

void ds__media_type(const char *ctype, char *out, size_t outlen) {
  size_t j = 0;
  if (!ctype) ctype = "";
  while (*ctype == ' ' || *ctype == '\t') ctype++;
  for (; *ctype && *ctype != ';' && j + 1 < outlen; ctype++)
    out[j++] = (char)((*ctype >= 'A' && *ctype <= 'Z') ? *ctype + 32 : *ctype);
  while (j > 0 && (out[j - 1] == ' ' || out[j - 1] == '\t')) j--;
  out[j] = 0;
}

int ds__mode_of(const char *ctype) {
  char mt[128];
  ds__media_type(ctype, mt, sizeof mt);
  if (strcmp(mt, "application/json") == 0) return DS__M_JSON;
  if (strncmp(mt, "text/", 5) == 0) return DS__M_TEXT;
  return DS__M_BYTES;
}

ds__producer_t *ds__producer_find(ds__pstream_t *st, const char *id) {
  for (size_t i = 0; i < st->nprods; i++)
    if (strcmp(st->prods[i].id, id) == 0) return &st->prods[i];
  return NULL;
}

ds__producer_t *ds__producer_put(ds__pstream_t *st, const char *id) {
  ds__producer_t *pr = ds__producer_find(st, id);
  if (pr) return pr;
  st->prods = ds_xrealloc(st->prods, (st->nprods + 1) * sizeof *st->prods);
  pr = &st->prods[st->nprods++];
  pr->id = ds_xstrdup(id);
  pr->epoch = 0;
  pr->seq = -1;
  return pr;
}

bool ds__state_expired(const ds__pstream_t *st, int64_t now_ms) {
  if (st->expires_at && now_ms >= st->expires_ms) return true;
  if (st->has_ttl && now_ms >= st->access_ms + st->ttl_s * 1000) return true;
  return false;
}

/* ---- metadata (de)serialization ---- */

static int64_t num_of(const ds_value_t *v, int64_t dflt) {
  if (!v || v->type != DS_V_NUMBER) return dflt;
  return strtoll(v->u.str.s, NULL, 10);
}

static char *str_of(const ds_value_t *v) {
  if (!v || v->type != DS_V_STRING) return NULL;
  return ds_xstrndup(v->u.str.s, v->u.str.len);
}

static int state_load(ds__pstream_t *st, const char *json, size_t len) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  char err[128];
  if (ds_json_parse(&a, json, len, 16, &v, err, sizeof err) != 0 || v->type != DS_V_OBJECT) {
    ds_arena_free(&a);
    return DS_ECORRUPT;
  }
  st->ctype = str_of(ds_value_get(v, "contentType"));
  if (!st->ctype) st->ctype = ds_xstrdup("application/octet-stream");
  st->mode = ds__mode_of(st->ctype);
  const ds_value_t *ttl = ds_value_get(v, "ttl");
  if (ttl && ttl->type == DS_V_NUMBER) {
    st->has_ttl = true;
    st->ttl_s = num_of(ttl, 0);
  }
  st->expires_at = str_of(ds_value_get(v, "expiresAt"));
  if (st->expires_at && ds_clock_parse_rfc3339(st->expires_at, &st->expires_ms) != 0)
    st->expires_ms = 0;
  const ds_value_t *b = ds_value_get(v, "closed");
  st->closed = b && b->type == DS_V_BOOL && b->u.b;
  const ds_value_t *cb = ds_value_get(v, "closedBy");
  if (cb && cb->type == DS_V_OBJECT) {
    st->closed_by = str_of(ds_value_get(cb, "id"));
    st->closed_epoch = num_of(ds_value_get(cb, "epoch"), 0);
    st->closed_seq = num_of(ds_value_get(cb, "seq"), 0);
  }
  const ds_value_t *pr = ds_value_get(v, "producers");
  if (pr && pr->type == DS_V_OBJECT) {
    for (size_t i = 0; i < pr->u.obj.len; i++) {
      ds__producer_t *x = ds__producer_put(st, pr->u.obj.items[i].key);
      x->epoch = num_of(ds_value_get(pr->u.obj.items[i].val, "epoch"), 0);
      x->seq = num_of(ds_value_get(pr->u.obj.items[i].val, "seq"), 0);
    }
  }
  const ds_value_t *fk = ds_value_get(v, "fork");
  if (fk && fk->type == DS_V_OBJECT) {
    st->fork_from = str_of(ds_value_get(fk, "from"));
    st->fork_offset = (uint64_t)num_of(ds_value_get(fk, "offset"), 0);
    st->fork_sub = num_of(ds_value_get(fk, "sub"), 0);
  }
  b = ds_value_get(v, "softDeleted");
  st->soft_deleted = b && b->type == DS_V_BOOL && b->u.b;
  st->refs = (unsigned)num_of(ds_value_get(v, "refs"), 0);
  st->seq = str_of(ds_value_get(v, "seq"));
  ds_arena_free(&a);
  return 0;
}

int ds__state_save(ds_protocol_t *p, ds__pstream_t *st) {
  if (st->agents) return 0; /* /agents streams keep no protocol metadata */
  ds_stream_t *s = NULL;
  if (ds_streams_get(p->streams, st->path, 0, 0, &s) != 0) return DS_ENOTFOUND;
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_puts(&b, "{\"contentType\":");
  ds_json_write_string(&b, st->ctype, strlen(st->ctype));
  if (st->has_ttl) ds_buf_printf(&b, ",\"ttl\":%lld", (long long)st->ttl_s);
  if (st->expires_at) {
    ds_buf_puts(&b, ",\"expiresAt\":");
    ds_json_write_string(&b, st->expires_at, strlen(st->expires_at));
  }
  if (st->closed) ds_buf_puts(&b, ",\"closed\":true");
  if (st->closed_by) {
    ds_buf_puts(&b, ",\"closedBy\":{\"id\":");
    ds_json_write_string(&b, st->closed_by, strlen(st->closed_by));
    ds_buf_printf(&b, ",\"epoch\":%lld,\"seq\":%lld}", (long long)st->closed_epoch,
                  (long long)st->closed_seq);
  }
  if (st->nprods) {
    ds_buf_puts(&b, ",\"producers\":{");
    for (size_t i = 0; i < st->nprods; i++) {
      if (i) ds_buf_putc(&b, ',');
      ds_json_write_string(&b, st->prods[i].id, strlen(st->prods[i].id));
      ds_buf_printf(&b, ":{\"epoch\":%lld,\"seq\":%lld}", (long long)st->prods[i].epoch,
                    (long long)st->prods[i].seq);
    }
    ds_buf_putc(&b, '}');
  }
  if (st->fork_from) {
    ds_buf_puts(&b, ",\"fork\":{\"from\":");
    ds_json_write_string(&b, st->fork_from, strlen(st->fork_from));
    ds_buf_printf(&b, ",\"offset\":%llu,\"sub\":%lld}", (unsigned long long)st->fork_offset,
                  (long long)st->fork_sub);
  }
  if (st->soft_deleted) ds_buf_puts(&b, ",\"softDeleted\":true");
  if (st->refs) ds_buf_printf(&b, ",\"refs\":%u", st->refs);
  if (st->seq) {
    ds_buf_puts(&b, ",\"seq\":");
    ds_json_write_string(&b, st->seq, strlen(st->seq));
  }
  ds_buf_putc(&b, '}');
  int rc = ds_store_meta_set(ds_stream_store(s), b.data, b.len);
  if (rc != 0) ds_error("protocol", "saving metadata of %s: %s", st->path, ds_strerror(rc));
  ds_buf_free(&b);
  return rc;
}

ds__pstream_t *ds__state_new(ds_protocol_t *p, const char *path) {
  ds__state_forget(p, path);
  ds__pstream_t *st = ds_xcalloc(1, sizeof *st);
  st->path = ds_xstrdup(path);
  st->access_ms = ds_clock_wall_ms();
  tab_insert(p, st);
  return st;
}

ds__pstream_t *ds__state_peek(ds_protocol_t *p, const char *path, ds_stream_t **out_s) {
  ds_stream_t *s = NULL;
  if (ds_streams_get(p->streams, path, 0, 0, &s) != 0) {
    ds__state_forget(p, path);
    return NULL;
  }
  if (out_s) *out_s = s;
  ds__pstream_t *st = tab_find(p, path);
  if (st) return st;
  st = ds_xcalloc(1, sizeof *st);
  st->path = ds_xstrdup(path);
  st->access_ms = ds_clock_wall_ms();
  ds_buf_t b = DS_BUF_INIT;
  int rc = ds_store_meta_get(ds_stream_store(s), &b);
  /* DS_ECORRUPT: the store logged the damaged sidecar; until the state layer refuses such
   * a stream, it is read as before (unparsable metadata), not as a stream without any */
  if (rc == 0 || rc == DS_ECORRUPT) {
    if (rc != 0 || state_load(st, b.data ? b.data : "", b.len) != 0) {
      ds_warn("protocol", "unreadable metadata for %s; treating as octet-stream", path);
      if (!st->ctype) st->ctype = ds_xstrdup("application/octet-stream");
      st->mode = ds__mode_of(st->ctype);
    }
  } else {
    st->agents = true;
    st->ctype = ds_xstrdup("application/json");
    st->mode = DS__M_JSON;
  }
  ds_buf_free(&b);
  tab_insert(p, st);
  return st;
}

static void release_parent(ds_protocol_t *p, const char *parent_path) {
  ds__pstream_t *par = ds__state_peek(p, parent_path, NULL);
  if (!par) return;
  if (par->refs > 0) par->refs--;
  if (par->refs == 0 && par->soft_deleted) {
    ds__state_delete_cascade(p, parent_path);
    return;
  }
  ds__state_save(p, par);
}

void ds__state_delete_cascade(ds_protocol_t *p, const char *path) {
  ds__pstream_t *st = ds__state_peek(p, path, NULL);
  char *parent = st && st->fork_from ? ds_xstrdup(st->fork_from) : NULL;
  ds__state_forget(p, path);
  ds_streams_delete(p->streams, path);
  ds__subs_on_delete(p, path);
  if (parent) {
    release_parent(p, parent);
    free(parent);
  }
}

ds__pstream_t *ds__state_get(ds_protocol_t *p, const char *path, ds_stream_t **out_s) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_peek(p, path, &s);
  if (!st) return NULL;
  if (!st->soft_deleted && ds__state_expired(st, ds_clock_wall_ms())) {
    if (st->refs > 0) {
      st->soft_deleted = true;
      ds__state_save(p, st);
      ds_stream_notify_change(s, 2);
    } else {
      ds__state_delete_cascade(p, path);
      return NULL;
    }
  }
  if (out_s) *out_s = s;
  return st;
}

/* ---- periodic expiry ----
 * Reads and writes expire streams lazily; the sweep reclaims streams nobody touches any
 * more (their records would otherwise stay in the memory store forever). */

#define SWEEP_INTERVAL_MS 5000

static void sweep_cb(uv_timer_t *t) {
  ds_protocol_t *p = t->data;
  int64_t now = ds_clock_wall_ms();
  size_t n = 0, cap = 0;
  char **paths = NULL;
  for (size_t i = 0; i < p->tab_cap; i++)
    for (ds__pstream_t *e = p->tab[i]; e; e = e->hnext)
      if (!e->soft_deleted && ds__state_expired(e, now)) {
        if (n == cap) {
          cap = cap ? cap * 2 : 16;
          paths = ds_xrealloc(paths, cap * sizeof *paths);
        }
        paths[n++] = ds_xstrdup(e->path);
      }
  /* collected first: expiring one stream may delete others (cascading fork GC) */
  for (size_t i = 0; i < n; i++) {
    ds__state_get(p, paths[i], NULL);
    free(paths[i]);
  }
  free(paths);
}

void ds__sweep_start(ds_protocol_t *p) {
  p->sweep = ds_xcalloc(1, sizeof *p->sweep);
  uv_timer_init(p->loop, p->sweep);
  p->sweep->data = p;
  uv_timer_start(p->sweep, sweep_cb, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
  uv_unref((uv_handle_t *)p->sweep);
}

static void sweep_closed(uv_handle_t *h) { free(h); }

void ds__sweep_stop(ds_protocol_t *p) {
  if (!p->sweep) return;
  uv_timer_stop(p->sweep);
  uv_close((uv_handle_t *)p->sweep, sweep_closed);
  p->sweep = NULL;
}
