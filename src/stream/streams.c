/* streams.c - live stream registry: serialized appends, publication, observers.
 *
 * A ds_stream_t pairs a path with its store stream (NULL until first written, for
 * streams that are only watched) and its subscriber list. Everything runs on the loop
 * thread, so an append (render, store, publish) is never interleaved with another: that
 * is what makes offsets gap-free and unique, and what lets readers switch from history to
 * live without a gap or a duplicate (see streams.h).
 */
#include "stream/streams.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "store/json.h"
#include "stream/event.h"

struct ds_stream_s {
  ds_streams_t *reg;
  char *path;
  size_t path_len;
  uint32_t hash;
  ds_stream_t *hnext;     /* hash chain */
  ds_store_stream_t *st;  /* NULL while only watched */
  ds_sub_t subs;          /* sentinel of the circular subscriber list */
  size_t nsubs;
  unsigned publishing;    /* > 0 while subscribers are being called */
  int dead;               /* deleted while publishing: free when done */
};

struct ds_streams_s {
  ds_store_t *store;
  ds_streams_opts_t opts;
  ds_stream_t **buckets;
  size_t nbuckets, count;
  struct {
    ds_streams_observer_fn fn;
    void *ud;
  } observers[DS_STREAMS_MAX_OBSERVERS];
  size_t nobservers;
  ds_streams_guard_fn guard;
  void *guard_ud;
  ds_buf_t yaml, json; /* scratch buffers reused by every append */
  ds_arena_t arena;
  ds_streams_stats_t stats;
};

/* ---------------------------------------------------------------- helpers */

/* Two digits at a time (catch-up formats one offset per event sent). */
static const char digits2[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                              "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                              "8081828384858687888990919293949596979899";

/* 8 decimal digits of v (< 10^8), two at a time in 32-bit arithmetic (divisions by
 * constants become multiplications; 64-bit ones cost more). */
static inline void fmt8(uint32_t v, char *o) {
  uint32_t hi = v / 10000, lo = v % 10000;
  memcpy(o, digits2 + 2 * (hi / 100), 2);
  memcpy(o + 2, digits2 + 2 * (hi % 100), 2);
  memcpy(o + 4, digits2 + 2 * (lo / 100), 2);
  memcpy(o + 6, digits2 + 2 * (lo % 100), 2);
}

void ds_offset_format(uint64_t off, char out[17]) {
  off %= UINT64_C(10000000000000000); /* 16 digits, as the loop it replaces kept */
  fmt8((uint32_t)(off / 100000000), out);
  fmt8((uint32_t)(off % 100000000), out + 8);
  out[16] = '\0';
}

int ds_offset_parse(const char *s, size_t n, uint64_t *out) {
  if (n == 0 || n > 16) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return 0;
}

/* The code point of a path character refused although it is valid UTF-8, or 0. These are
 * invisible or layout-changing: C1 controls (U+0080..U+009F), the Unicode Bidi_Control set
 * (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069: they can make two different
 * paths, or a log line, display alike: "Trojan Source") and the line and paragraph
 * separators U+2028/U+2029 (line breaks to YAML 1.1 readers, JavaScript and log viewers).
 * *len gets the sequence's length. */
static unsigned path_forbidden_cp(const unsigned char *p, const unsigned char *end, size_t *len) {
  if (p[0] == 0xC2 && end - p >= 2 && p[1] >= 0x80 && p[1] <= 0x9F) {
    *len = 2;
    return 0x80u + (p[1] - 0x80u);
  }
  if (p[0] == 0xD8 && end - p >= 2 && p[1] == 0x9C) {
    *len = 2;
    return 0x061C;
  }
  if (p[0] == 0xE2 && end - p >= 3) {
    unsigned cp = ((unsigned)(p[0] & 0x0F) << 12) | ((unsigned)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    *len = 3;
    if (cp == 0x200E || cp == 0x200F || (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069))
      return cp;
  }
  return 0;
}

int ds_path_validate(const char *p, size_t n, char *err, size_t errlen) {
  if (n == 0) {
    snprintf(err, errlen, "empty stream path");
    return -1;
  }
  if (n > 512) {
    snprintf(err, errlen, "stream path longer than 512 bytes");
    return -1;
  }
  if (!ds_utf8_valid(p, n)) {
    snprintf(err, errlen, "stream path is not valid UTF-8");
    return -1;
  }
  size_t seg = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i == n || p[i] == '/') {
      size_t len = i - seg;
      if (len == 0) {
        snprintf(err, errlen, "stream path has an empty segment");
        return -1;
      }
      if ((len == 1 && p[seg] == '.') || (len == 2 && p[seg] == '.' && p[seg + 1] == '.')) {
        snprintf(err, errlen, "stream path segment '.' or '..' is not allowed");
        return -1;
      }
      /* Every segment becomes a file or directory name (see the name mapping in store.h):
       * both views and both store kinds refuse the same names. */
      int nc = ds_store_name_check(p + seg, len);
      if (nc == DS_ETOOBIG) {
        snprintf(err, errlen, "stream path segment of %zu bytes: at most %d bytes per segment (file-name limit)",
                 len, DS_STORE_SEGMENT_MAX);
        return -1;
      }
      if (nc != 0) {
        snprintf(err, errlen, "stream path segment contains '%s': names like <x>%s<y> are reserved for the store's files",
                 DS_STORE_RESERVED_MARK, DS_STORE_RESERVED_MARK);
        return -1;
      }
      seg = i + 1;
      continue;
    }
    unsigned char c = (unsigned char)p[i];
    if (c < 0x20 || c == 0x7f) {
      snprintf(err, errlen, "stream path contains a control character");
      return -1;
    }
    if (c == '\\') {
      snprintf(err, errlen, "stream path contains a backslash");
      return -1;
    }
    if (c >= 0x80) {
      size_t k = 1;
      unsigned cp = path_forbidden_cp((const unsigned char *)p + i, (const unsigned char *)p + n, &k);
      if (cp) {
        snprintf(err, errlen, "stream path contains the %s U+%04X",
                 cp <= 0x9F ? "C1 control character" : cp >= 0x2028 && cp <= 0x2029 ? "line or paragraph separator"
                                                                           : "bidirectional control character",
                 cp);
        return -1;
      }
    }
  }
  return 0;
}

static uint32_t hash_path(const char *p, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 16777619u;
  }
  return h;
}

/* ---------------------------------------------------------------- registry */

ds_streams_t *ds_streams_new(ds_store_t *store, const ds_streams_opts_t *opts) {
  ds_streams_t *ss = ds_xcalloc(1, sizeof *ss);
  ss->store = store;
  if (opts) ss->opts = *opts;
  if (ss->opts.max_json_depth <= 0) ss->opts.max_json_depth = 64;
  if (ss->opts.max_event_bytes == 0) ss->opts.max_event_bytes = 1 << 20;
  ss->nbuckets = 256;
  ss->buckets = ds_xcalloc(ss->nbuckets, sizeof *ss->buckets);
  ds_arena_init(&ss->arena);
  return ss;
}

ds_store_t *ds_streams_store(ds_streams_t *ss) { return ss->store; }

int ds_streams_add_observer(ds_streams_t *ss, ds_streams_observer_fn fn, void *ud) {
  if (ss->nobservers == DS_STREAMS_MAX_OBSERVERS) return DS_EBUSY;
  ss->observers[ss->nobservers].fn = fn;
  ss->observers[ss->nobservers].ud = ud;
  ss->nobservers++;
  return 0;
}

void ds_streams_remove_observer(ds_streams_t *ss, ds_streams_observer_fn fn, void *ud) {
  for (size_t i = 0; i < ss->nobservers; i++) {
    if (ss->observers[i].fn == fn && ss->observers[i].ud == ud) {
      memmove(&ss->observers[i], &ss->observers[i + 1],
              (ss->nobservers - i - 1) * sizeof ss->observers[0]);
      ss->nobservers--;
      return;
    }
  }
}

void ds_streams_set_append_guard(ds_streams_t *ss, ds_streams_guard_fn fn, void *ud) {
  ss->guard = fn;
  ss->guard_ud = ud;
}

static void detach_all(ds_stream_t *s) {
  while (s->subs.next != &s->subs) {
    ds_sub_t *sub = s->subs.next;
    ds_stream_unsubscribe(sub);
  }
}

static void stream_free(ds_stream_t *s) {
  free(s->path);
  free(s);
}

static void unlink_stream(ds_streams_t *ss, ds_stream_t *s) {
  ds_stream_t **pp = &ss->buckets[s->hash & (ss->nbuckets - 1)];
  while (*pp && *pp != s) pp = &(*pp)->hnext;
  if (*pp) *pp = s->hnext;
  ss->count--;
}

void ds_streams_free(ds_streams_t *ss) {
  if (!ss) return;
  for (size_t i = 0; i < ss->nbuckets; i++) {
    ds_stream_t *s = ss->buckets[i];
    while (s) {
      ds_stream_t *n = s->hnext;
      detach_all(s);
      stream_free(s);
      s = n;
    }
  }
  free(ss->buckets);
  ds_buf_free(&ss->yaml);
  ds_buf_free(&ss->json);
  ds_arena_free(&ss->arena);
  free(ss);
}

static void grow(ds_streams_t *ss) {
  size_t nb = ss->nbuckets * 2;
  ds_stream_t **b = ds_xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < ss->nbuckets; i++) {
    ds_stream_t *s = ss->buckets[i];
    while (s) {
      ds_stream_t *n = s->hnext;
      s->hnext = b[s->hash & (nb - 1)];
      b[s->hash & (nb - 1)] = s;
      s = n;
    }
  }
  free(ss->buckets);
  ss->buckets = b;
  ss->nbuckets = nb;
}

static ds_stream_t *lookup(ds_streams_t *ss, const char *path, size_t n, uint32_t h) {
  for (ds_stream_t *s = ss->buckets[h & (ss->nbuckets - 1)]; s; s = s->hnext)
    if (s->hash == h && s->path_len == n && memcmp(s->path, path, n) == 0) return s;
  return NULL;
}

int ds_streams_get(ds_streams_t *ss, const char *path, int mode, uint64_t base_offset,
                   ds_stream_t **out) {
  size_t n = strlen(path);
  uint32_t h = hash_path(path, n);
  ds_stream_t *s = lookup(ss, path, n, h);
  if (!s || !s->st) {
    ds_store_stream_t *st = NULL;
    int rc = ds_store_get(ss->store, path, mode == DS_STREAMS_CREATE, base_offset, &st);
    if (rc == DS_ENOTFOUND && mode == DS_STREAMS_WATCH) {
      st = NULL;
    } else if (rc != 0) {
      return rc;
    }
    if (!s) {
      s = ds_xcalloc(1, sizeof *s);
      s->reg = ss;
      s->path = ds_xstrndup(path, n);
      s->path_len = n;
      s->hash = h;
      s->subs.next = s->subs.prev = &s->subs;
      s->hnext = ss->buckets[h & (ss->nbuckets - 1)];
      ss->buckets[h & (ss->nbuckets - 1)] = s;
      if (++ss->count > ss->nbuckets) grow(ss);
    }
    s->st = st;
  }
  *out = s;
  return 0;
}

int ds_streams_delete(ds_streams_t *ss, const char *path) {
  size_t n = strlen(path);
  ds_stream_t *s = lookup(ss, path, n, hash_path(path, n));
  int rc = ds_store_delete(ss->store, path);
  if (s) {
    s->st = NULL;
    /* tell subscribers, then detach them; the object stays (watchers may come back) */
    ds_sub_t *sub = s->subs.next;
    while (sub != &s->subs) {
      ds_sub_t *next = sub->next;
      ds_stream_unsubscribe(sub);
      if (sub->on_change) sub->on_change(sub, 1);
      sub = next;
    }
    if (s->nsubs == 0 && !s->publishing) {
      unlink_stream(ss, s);
      stream_free(s);
    }
  }
  return rc;
}

const char *ds_stream_path(const ds_stream_t *s) { return s->path; }
int ds_stream_exists(const ds_stream_t *s) { return s->st != NULL; }
ds_store_stream_t *ds_stream_store(ds_stream_t *s) { return s->st; }
ds_streams_t *ds_stream_registry(ds_stream_t *s) { return s->reg; }
uint64_t ds_stream_next_offset(const ds_stream_t *s) { return s->st ? ds_store_next_offset(s->st) : 0; }
uint64_t ds_stream_first_offset(const ds_stream_t *s) { return s->st ? ds_store_first_offset(s->st) : 0; }
size_t ds_stream_subscriber_count(const ds_stream_t *s) { return s->nsubs; }

void ds_stream_subscribe(ds_stream_t *s, ds_sub_t *sub) {
  sub->stream = s;
  sub->prev = s->subs.prev;
  sub->next = &s->subs;
  s->subs.prev->next = sub;
  s->subs.prev = sub;
  s->nsubs++;
  s->reg->stats.subscribers++;
}

/* A watched stream that was never written and has no subscriber left is forgotten, so
 * GETs on random paths do not grow the registry. */
static void maybe_forget(ds_stream_t *s) {
  if (s->nsubs == 0 && !s->st && !s->publishing) {
    unlink_stream(s->reg, s);
    stream_free(s);
  }
}

void ds_streams_release(ds_stream_t *s) { maybe_forget(s); }

void ds_stream_unsubscribe(ds_sub_t *sub) {
  ds_stream_t *s = sub->stream;
  if (!s) return;
  sub->prev->next = sub->next;
  sub->next->prev = sub->prev;
  sub->next = sub->prev = NULL;
  sub->stream = NULL;
  s->nsubs--;
  s->reg->stats.subscribers--;
  maybe_forget(s);
}

void ds_stream_notify_change(ds_stream_t *s, int what) {
  s->publishing++;
  ds_sub_t *sub = s->subs.next;
  while (sub != &s->subs) {
    ds_sub_t *next = sub->next; /* the callback may unsubscribe itself */
    if (sub->on_change) sub->on_change(sub, what);
    sub = next;
  }
  s->publishing--;
  maybe_forget(s);
}

/* Calls every subscriber, then the observer. A subscriber may unsubscribe itself (a
 * dropped slow reader) but not others; `next` is saved before each call. */
static void publish(ds_stream_t *s, ds_published_t *rec) {
  ds_streams_t *ss = s->reg;
  s->publishing++;
  ds_sub_t *sub = s->subs.next;
  while (sub != &s->subs) {
    ds_sub_t *next = sub->next;
    sub->on_publish(sub, rec);
    sub = next;
  }
  s->publishing--;
  ss->stats.events_published++;
  for (size_t i = 0; i < ss->nobservers; i++) ss->observers[i].fn(ss->observers[i].ud, rec);
}

static ds_rbuf_t *agents_frame(uint64_t offset, const char *json, size_t n) {
  /* "id: <16>\nevent: data\ndata: <json>\n\n" */
  ds_rbuf_t *f = ds_rbuf_alloc(4 + 16 + 1 + 12 + 6 + n + 2);
  char *p = f->data;
  memcpy(p, "id: ", 4);
  p += 4;
  ds_offset_format(offset, p);
  p += 16;
  memcpy(p, "\nevent: data\ndata: ", 19);
  p += 19;
  memcpy(p, json, n);
  p += n;
  *p++ = '\n';
  *p++ = '\n';
  f->len = (size_t)(p - f->data);
  *p = '\0';
  return f;
}

static int ensure_store(ds_stream_t *s) {
  if (s->st) return 0;
  return ds_store_get(s->reg->store, s->path, 1, 0, &s->st);
}

int ds_stream_append_event(ds_stream_t *s, const char *body, size_t len, uint64_t *offset,
                           char *err, size_t errlen) {
  ds_streams_t *ss = s->reg;
  if (len > ss->opts.max_event_bytes) {
    snprintf(err, errlen, "event larger than %zu bytes", ss->opts.max_event_bytes);
    return DS_ETOOBIG;
  }
  if (ss->guard && s->st) {
    int grc = ss->guard(ss->guard_ud, s, err, errlen);
    if (grc != 0) return grc;
  }
  /* Validate and render before touching the store, so that an invalid event never
   * creates a file. A never-written stream starts at offset 0. */
  uint64_t off = s->st ? ds_store_next_offset(s->st) : 0;
  ds_buf_reset(&ss->yaml);
  ds_buf_reset(&ss->json);
  ds_event_out_t ev;
  int rc = ds_event_render(&ss->arena, body, len, ss->opts.max_json_depth, s->path, off,
                           ds_clock_wall_ms(), &ss->yaml, &ss->json, &ev, err, errlen);
  if (rc != 0) {
    ds_arena_free(&ss->arena);
    return rc;
  }
  if (!s->st) {
    rc = ensure_store(s);
    if (rc != 0) {
      ds_arena_free(&ss->arena);
      snprintf(err, errlen, "cannot create stream: %s", ds_strerror(rc));
      return rc;
    }
  }
  ds_record_in_t rec = {ss->yaml.data, ss->yaml.len, ss->json.data, ss->json.len};
  rc = ds_store_append(s->st, &rec, 1);
  if (rc != 0) {
    ds_arena_free(&ss->arena);
    ds_store_damage_t d; /* appends are refused behind damage: name it */
    if (rc == DS_ECORRUPT && ds_store_damage(s->st, &d) == 0)
      snprintf(err, errlen, "storage failure: the stream's file is damaged (%s); appends are "
               "refused until it is repaired", d.what);
    else
      snprintf(err, errlen, "storage failure: %s", ds_strerror(rc));
    return rc;
  }
  ss->stats.events_appended++;
  if (offset) *offset = off;
  ds_published_t pub = {.stream = s,
                        .path = s->path,
                        .offset = off,
                        .kind = DS_REC_EVENT,
                        .repr = ss->json.data,
                        .repr_len = ss->json.len,
                        .type = ev.type,
                        .type_len = ev.type_len,
                        .agents_frame = NULL};
  if (s->nsubs) pub.agents_frame = agents_frame(off, ss->json.data, ss->json.len);
  publish(s, &pub);
  if (pub.agents_frame) ds_rbuf_unref(pub.agents_frame);
  ds_arena_free(&ss->arena);
  return 0;
}

int ds_stream_append_records(ds_stream_t *s, ds_rec_kind_t kind, const ds_record_in_t *recs,
                             size_t n) {
  int rc = ensure_store(s);
  if (rc != 0) return rc;
  uint64_t off = ds_store_next_offset(s->st);
  rc = ds_store_append(s->st, recs, n);
  if (rc != 0) return rc;
  s->reg->stats.events_appended += n;
  for (size_t i = 0; i < n; i++) {
    ds_published_t pub = {.stream = s,
                          .path = s->path,
                          .offset = off + i,
                          .kind = kind,
                          .repr = recs[i].repr,
                          .repr_len = recs[i].repr_len,
                          .type = NULL,
                          .type_len = 0,
                          .agents_frame = NULL};
    if (s->nsubs) pub.agents_frame = agents_frame(off + i, recs[i].repr, recs[i].repr_len);
    publish(s, &pub);
    if (pub.agents_frame) ds_rbuf_unref(pub.agents_frame);
  }
  return 0;
}

void ds_streams_get_stats(const ds_streams_t *ss, ds_streams_stats_t *out) {
  *out = ss->stats;
  out->streams_live = ss->count;
}
