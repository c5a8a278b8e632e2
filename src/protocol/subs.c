/* subs.c - the reserved subscription APIs under <prefix>/__ds/ (webhooks and pull-wake).
 *
 * Provides: subscriptions (PUT/GET/DELETE __ds/subscriptions/:id, explicit stream
 * membership, glob patterns where `*` is one segment and `**` any number), wakes with a
 * generation and wake_id that fence stale callbacks (409 FENCED), leases that expire and
 * re-wake, webhook delivery signed with Ed25519 (`Webhook-Signature: t=<unix>,kid=<kid>,
 * ed25519=<base64url sig over "<t>.<body>">`, public key at __ds/jwks.json), synchronous
 * `{done:true}` auto-acks, retries with backoff, SSRF checks on webhook URLs (plain http
 * only for localhost / 127.x, no private or IPv6 hosts over https), and pull-wake claims
 * / acks / releases whose wake events are appended to a JSON wake stream. Callback
 * tokens are stateless HMACs over (subscription, generation), so a token of an old
 * generation is recognised and fenced rather than rejected as unknown.
 * Persistence: with a state directory (the YAML store's <data_dir>/subscriptions, see
 * ds_protocol_opts_t.state_dir) every subscription is one JSON file there, rewritten
 * atomically (tmp + rename) whenever its durable state changes - configuration, stream
 * links and acked offsets, generation, the open wake (wake_id, snapshot, pull-wake holder)
 * and the failed flag - and before a request that changed it is answered, so anything
 * acknowledged survives kill -9. Power-loss durability follows the store's fsync policy:
 * `always` fsyncs the file and the directory before the change is acknowledged or a wake
 * announced (a wake that cannot be saved is not announced); `interval` fsyncs nothing on
 * the loop and lets the threadpool fsync the files written (and the directory) since the
 * last round, at most every fsync_interval_ms; `never` does not fsync. A save that fails
 * is logged once, kept dirty and retried from a back-off timer (not on every append).
 * At load, acked offsets and wake snapshots beyond a stream's recovered tail are pulled
 * back to it (logged). The Ed25519 signing key and the
 * callback-token key live in signing-keys.json (mode 0600), so JWKS, webhook signatures
 * and tokens handed out before a restart stay valid. At start-up the files are loaded;
 * leases restart in full, open webhook wakes are re-delivered and pending work wakes. A
 * file that cannot be read or decoded is logged by name and moved aside to
 * "<file>.damaged-<ms>" (never read again, never overwritten); if it cannot even be
 * moved, writes of that subscription id are refused (logged, 500) so it is never
 * silently replaced. Without a state directory (memory store) everything stays in memory.
 * Must not: block the loop beyond those small synchronous control-plane writes (webhooks
 * go through whook.c; fsyncs only under `always`), or write subscription files on the
 * stream append path unless a subscription's state changed.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "protocol/pappend.h"
#include "protocol/pinternal.h"
#include "protocol/pwhook.h"
#include "store/json.h"

#define LEASE_DEFAULT_MS 30000
#define LEASE_MIN_MS 1000
#define LEASE_MAX_MS 600000
#define RETRY_MAX_MS 60000

typedef struct link_s {
  char *path;
  bool explicit_, glob;
  char acked[20]; /* "-1" or a 16-digit offset */
} link_t;

typedef struct sub_s sub_t;
struct sub_s {
  sub_t *next;
  struct ds__subs_s *owner;
  char *id;
  bool webhook; /* else pull-wake */
  char *pattern, *url, *wake_stream, *description, *config;
  char *base_url; /* http://host of the creating request, for callback/jwks URLs */
  long lease_ms;
  char created_at[32];
  bool failed;
  link_t *links;
  size_t nlinks;
  long generation;
  char wake_id[40]; /* "" when no wake */
  link_t *snapshot; /* path + tail at wake time (acked field holds the tail) */
  size_t nsnapshot;
  char *holder;
  uv_timer_t lease, retry;
  int retry_count;
  int handles_open;
  bool dead;
  bool dirty; /* durable state changed and is not yet on disk */
  bool save_failed;   /* in a failure episode: logged once, retried by ss->save_timer */
  int save_rc;        /* the last save error while save_failed */
  bool wake_deferred; /* a wake could not be saved (fsync always): created by the timer */
};

/* Interval policy: files renamed on the loop without fsync are fsynced (with the
 * directory) from the threadpool, at most once per interval, only what changed since the
 * last round. Separately allocated: a round still running when the subscriptions are
 * freed owns it and frees it in its completion. */
typedef struct syncer_s {
  uv_loop_t *loop;
  char *dir;
  unsigned interval_ms;
  char **pending; /* paths renamed since the last round (no duplicates) */
  size_t npending;
  bool dir_pending; /* a directory entry changed (create, rename, unlink) */
  char **work;      /* the running round's paths; its failures are counted below */
  size_t nwork;
  bool work_dir;
  size_t work_failed;
  int work_rc;
  char *work_failed_path;
  int dir_rc;
  uv_work_t req;
  uv_timer_t *timer;
  bool busy, stopped, orphan;
} syncer_t;

struct ds__subs_s {
  ds_protocol_t *p;
  sub_t *subs;
  ds__whook_t *hooks;
  EVP_PKEY *key;
  char x[64];   /* base64url public key */
  char kid[64];
  unsigned char token_key[32];
  char *dir;            /* state directory; NULL keeps subscriptions in memory only */
  char **blocked;       /* files that were damaged and could not be moved aside */
  size_t nblocked;
  uv_timer_t *resume;   /* one-shot after start-up: re-deliver / wake loaded subscriptions */
  struct delivery_s *inflight; /* webhook POSTs awaiting their completion callback */
  ds_fsync_t policy;    /* the store's fsync policy, for subscription files */
  syncer_t *sy;         /* DS_FSYNC_INTERVAL with a state directory */
  uv_timer_t *save_timer; /* back-off retry of failed saves and deferred wakes */
  uint64_t save_backoff_ms;
  bool stopping;
};

typedef struct delivery_s delivery_t;
struct delivery_s {
  delivery_t *next, *prev; /* in ss->inflight: whook_close drops callbacks, shutdown frees */
  struct ds__subs_s *ss;
  char *sub_id;
  char wake_id[40];
};

/* ---- small helpers ---- */

static void b64url(ds_buf_t *out, const void *p, size_t n) {
  size_t start = out->len;
  ds_base64_encode(out, p, n);
  size_t j = start;
  for (size_t i = start; i < out->len; i++) {
    char c = out->data[i];
    if (c == '=') continue;
    out->data[j++] = c == '+' ? '-' : c == '/' ? '_' : c;
  }
  out->len = j;
}

static char *norm_rel(const char *s, size_t n) {
  while (n && *s == '/') {
    s++;
    n--;
  }
  while (n && s[n - 1] == '/') n--;
  return ds_xstrndup(s, n);
}

static size_t split_segs(const char *s, const char **segs, size_t *lens, size_t max) {
  size_t k = 0;
  while (*s && k < max) {
    while (*s == '/') s++;
    if (!*s) break;
    const char *e = strchr(s, '/');
    size_t l = e ? (size_t)(e - s) : strlen(s);
    segs[k] = s;
    lens[k++] = l;
    s += l;
  }
  return k;
}

static bool match_parts(const char **ps, size_t *pl, size_t pn, size_t pi, const char **ss,
                        size_t *sl, size_t sn, size_t si) {
  while (pi < pn && si < sn) {
    if (pl[pi] == 2 && memcmp(ps[pi], "**", 2) == 0) {
      for (size_t i = si; i <= sn; i++)
        if (match_parts(ps, pl, pn, pi + 1, ss, sl, sn, i)) return true;
      return false;
    }
    if (!(pl[pi] == 1 && ps[pi][0] == '*') &&
        (pl[pi] != sl[si] || memcmp(ps[pi], ss[si], sl[si]) != 0))
      return false;
    pi++;
    si++;
  }
  while (pi < pn && pl[pi] == 2 && memcmp(ps[pi], "**", 2) == 0) pi++;
  return pi == pn && si == sn;
}

bool ds__glob_match(const char *pattern, const char *path) {
  const char *ps[64], *ss[64];
  size_t pl[64], sl[64];
  size_t pn = split_segs(pattern, ps, pl, 64), sn = split_segs(path, ss, sl, 64);
  return match_parts(ps, pl, pn, 0, ss, sl, sn, 0);
}

static void tail_of(struct ds__subs_s *ss, const char *path, char out[20]) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_peek(ss->p, path, &s);
  ds_offset_format(st ? ds_stream_next_offset(s) : 0, out);
}

static link_t *link_find(sub_t *sb, const char *path) {
  for (size_t i = 0; i < sb->nlinks; i++)
    if (strcmp(sb->links[i].path, path) == 0) return &sb->links[i];
  return NULL;
}

static link_t *link_add(sub_t *sb, const char *path, bool explicit_, const char *acked) {
  link_t *l = link_find(sb, path);
  if (!l) {
    sb->links = ds_xrealloc(sb->links, (sb->nlinks + 1) * sizeof *sb->links);
    l = &sb->links[sb->nlinks++];
    memset(l, 0, sizeof *l);
    l->path = ds_xstrdup(path);
    snprintf(l->acked, sizeof l->acked, "%s", acked);
  }
  if (explicit_) l->explicit_ = true;
  else l->glob = true;
  return l;
}

static void link_remove(sub_t *sb, size_t i) {
  free(sb->links[i].path);
  sb->links[i] = sb->links[--sb->nlinks];
}

static bool has_pending(struct ds__subs_s *ss, sub_t *sb, const char **first) {
  for (size_t i = 0; i < sb->nlinks; i++) {
    char t[20];
    tail_of(ss, sb->links[i].path, t);
    if (strcmp(t, sb->links[i].acked) > 0) {
      if (first) *first = sb->links[i].path;
      return true;
    }
  }
  return false;
}

static void stream_infos(struct ds__subs_s *ss, sub_t *sb, ds_buf_t *b, bool full) {
  ds_buf_putc(b, '[');
  for (size_t i = 0; i < sb->nlinks; i++) {
    link_t *l = &sb->links[i];
    char t[20];
    tail_of(ss, l->path, t);
    if (i) ds_buf_putc(b, ',');
    ds_buf_puts(b, "{\"path\":");
    ds_json_write_string(b, l->path, strlen(l->path));
    ds_buf_printf(b, ",\"link_type\":\"%s\",\"acked_offset\":\"%s\"",
                  l->explicit_ ? "explicit" : "glob", l->acked);
    if (full)
      ds_buf_printf(b, ",\"tail_offset\":\"%s\",\"has_pending\":%s", t,
                    strcmp(t, l->acked) > 0 ? "true" : "false");
    ds_buf_putc(b, '}');
  }
  ds_buf_putc(b, ']');
}

static void make_token(struct ds__subs_s *ss, const char *id, long gen, ds_buf_t *out) {
  char msg[600];
  int n = snprintf(msg, sizeof msg, "subscription:%s:%ld", id, gen);
  unsigned char mac[32];
  unsigned int maclen = sizeof mac;
  HMAC(EVP_sha256(), ss->token_key, sizeof ss->token_key, (unsigned char *)msg, (size_t)n, mac,
       &maclen);
  ds_buf_printf(out, "%ld.", gen);
  b64url(out, mac, maclen);
}

/* Returns the generation the token was minted for, or -1 if it is not ours. */
static long check_token(struct ds__subs_s *ss, const char *id, const char *tok) {
  char *end = NULL;
  long gen = strtol(tok, &end, 10);
  if (end == tok || *end != '.' || gen < 0) return -1;
  ds_buf_t want = DS_BUF_INIT;
  make_token(ss, id, gen, &want);
  bool ok = strcmp(ds_buf_cstr(&want), tok) == 0;
  ds_buf_free(&want);
  return ok ? gen : -1;
}

/* ---- responses ---- */

static void respond_json(ds_http_req_t *req, int status, const char *body, size_t len) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds__hdrs_t h;
  ds__hdrs_init(&h, &a);
  if (status != 204) ds__hdr(&h, "Content-Type", "application/json");
  ds_http_respond(req, status, ds__hdrs_done(&h), status == 204 ? NULL : body,
                  status == 204 ? 0 : len);
  ds_arena_free(&a);
}

static void respond_code(ds_http_req_t *req, int status, const char *code, const char *msg) {
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_printf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", code);
  ds_json_write_string(&b, msg, strlen(msg));
  ds_buf_puts(&b, "}}");
  respond_json(req, status, b.data, b.len);
  ds_buf_free(&b);
}

/* ---- persistence (state directory) ---- */

/* File of a subscription: "s_<id>.json" when the id is plain ([A-Za-z0-9._-], not
 * starting with '.', short), else "h_<sha256 hex of id>.json"; the two prefixes never
 * collide. Loading takes the id from the content and checks it maps back to the name. */
static void sub_file(struct ds__subs_s *ss, const char *id, ds_buf_t *out) {
  size_t n = strlen(id);
  bool plain = n > 0 && n <= 160 && id[0] != '.';
  for (size_t i = 0; plain && i < n; i++) {
    unsigned char c = (unsigned char)id[i];
    plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-';
  }
  ds_buf_printf(out, "%s/", ss->dir);
  if (plain) {
    ds_buf_printf(out, "s_%s.json", id);
    return;
  }
  unsigned char dg[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)id, n, dg);
  ds_buf_puts(out, "h_");
  for (size_t i = 0; i < sizeof dg; i++) ds_buf_printf(out, "%02x", dg[i]);
  ds_buf_puts(out, ".json");
}

static void put_opt(ds_buf_t *b, const char *key, const char *val) {
  if (!val) return;
  ds_buf_printf(b, ",\"%s\":", key);
  ds_json_write_string(b, val, strlen(val));
}

static void sub_encode(const sub_t *sb, ds_buf_t *b) {
  ds_buf_puts(b, "{\"version\":1,\"id\":");
  ds_json_write_string(b, sb->id, strlen(sb->id));
  ds_buf_printf(b, ",\"type\":\"%s\"", sb->webhook ? "webhook" : "pull-wake");
  put_opt(b, "pattern", sb->pattern);
  put_opt(b, "webhook_url", sb->url);
  put_opt(b, "wake_stream", sb->wake_stream);
  put_opt(b, "description", sb->description);
  put_opt(b, "config", sb->config);
  put_opt(b, "base_url", sb->base_url);
  put_opt(b, "created_at", sb->created_at);
  ds_buf_printf(b, ",\"lease_ttl_ms\":%ld,\"failed\":%s,\"generation\":%ld", sb->lease_ms,
                sb->failed ? "true" : "false", sb->generation);
  if (sb->wake_id[0]) put_opt(b, "wake_id", sb->wake_id);
  put_opt(b, "holder", sb->holder);
  ds_buf_puts(b, ",\"streams\":[");
  for (size_t i = 0; i < sb->nlinks; i++) {
    const link_t *l = &sb->links[i];
    ds_buf_puts(b, i ? ",{\"path\":" : "{\"path\":");
    ds_json_write_string(b, l->path, strlen(l->path));
    ds_buf_printf(b, ",\"explicit\":%s,\"glob\":%s,\"acked_offset\":\"%s\"}",
                  l->explicit_ ? "true" : "false", l->glob ? "true" : "false", l->acked);
  }
  ds_buf_puts(b, "],\"wake_snapshot\":[");
  for (size_t i = 0; i < sb->nsnapshot; i++) {
    ds_buf_puts(b, i ? ",{\"path\":" : "{\"path\":");
    ds_json_write_string(b, sb->snapshot[i].path, strlen(sb->snapshot[i].path));
    ds_buf_printf(b, ",\"tail_offset\":\"%s\"}", sb->snapshot[i].acked);
  }
  ds_buf_puts(b, "]}\n");
}

static bool is_blocked(struct ds__subs_s *ss, const char *file) {
  for (size_t i = 0; i < ss->nblocked; i++)
    if (strcmp(ss->blocked[i], file) == 0) return true;
  return false;
}

/* ---- interval fsync rounds ---- */

static void sy_timer_cb(uv_timer_t *t);

static void sy_arm(syncer_t *sy) {
  if (sy->stopped || sy->busy || uv_is_active((uv_handle_t *)sy->timer)) return;
  if (sy->npending || sy->dir_pending) uv_timer_start(sy->timer, sy_timer_cb, sy->interval_ms, 0);
}

/* A file (path) or only a directory entry (path NULL) changed without fsync. */
static void sy_note(syncer_t *sy, const char *path) {
  sy->dir_pending = true;
  if (path) {
    bool have = false;
    for (size_t i = 0; i < sy->npending && !have; i++) have = strcmp(sy->pending[i], path) == 0;
    if (!have) {
      sy->pending = ds_xrealloc(sy->pending, (sy->npending + 1) * sizeof *sy->pending);
      sy->pending[sy->npending++] = ds_xstrdup(path);
    }
  }
  sy_arm(sy);
}

static void sy_free_list(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

/* Threadpool: fsync every file of the round (a file removed since needs nothing), then
 * the directory so the renames and unlinks are durable too. */
static void sy_work(uv_work_t *w) {
  syncer_t *sy = w->data;
  for (size_t i = 0; i < sy->nwork; i++) {
    int rc = ds_file_fsync(sy->work[i]);
    if (rc != 0 && rc != DS_ENOTFOUND) {
      if (!sy->work_failed++) {
        sy->work_rc = rc;
        sy->work_failed_path = ds_xstrdup(sy->work[i]);
      }
    }
  }
  sy->dir_rc = sy->work_dir ? ds_file_fsync_dir(sy->dir) : 0;
}

static void sy_free(syncer_t *sy) {
  sy_free_list(sy->pending, sy->npending);
  sy_free_list(sy->work, sy->nwork);
  free(sy->work_failed_path);
  free(sy->dir);
  free(sy);
}

static void sy_after(uv_work_t *w, int status) {
  syncer_t *sy = w->data;
  sy->busy = false;
  if (sy->orphan) {
    sy_free(sy);
    return;
  }
  bool failed = status != 0 || sy->work_failed || sy->dir_rc != 0;
  if (status != 0)
    ds_error("subscriptions", "%s: subscription fsync round not run: %s", sy->dir,
             uv_strerror(status));
  else if (sy->work_failed)
    ds_error("subscriptions", "%s: cannot fsync %zu subscription file%s (%s: %s); retrying",
             sy->dir, sy->work_failed, sy->work_failed == 1 ? "" : "s", sy->work_failed_path,
             ds_strerror(sy->work_rc));
  else if (sy->dir_rc != 0)
    ds_error("subscriptions", "%s: cannot fsync the subscription directory: %s; retrying",
             sy->dir, ds_strerror(sy->dir_rc));
  if (failed) { /* the whole round again: the page cache state of a failed file is unknown */
    for (size_t i = 0; i < sy->nwork; i++) sy_note(sy, sy->work[i]);
    if (sy->work_dir) sy->dir_pending = true;
  }
  sy_free_list(sy->work, sy->nwork);
  sy->work = NULL;
  sy->nwork = 0;
  free(sy->work_failed_path);
  sy->work_failed_path = NULL;
  sy->work_failed = 0;
  sy_arm(sy);
}

static void sy_timer_cb(uv_timer_t *t) {
  syncer_t *sy = t->data;
  if (sy->busy || sy->stopped || (!sy->npending && !sy->dir_pending)) return;
  sy->work = sy->pending;
  sy->nwork = sy->npending;
  sy->work_dir = sy->dir_pending;
  sy->pending = NULL;
  sy->npending = 0;
  sy->dir_pending = false;
  sy->work_failed = 0;
  sy->dir_rc = 0;
  sy->req.data = sy;
  if (uv_queue_work(sy->loop, &sy->req, sy_work, sy_after) == 0) {
    sy->busy = true;
    return;
  }
  for (size_t i = 0; i < sy->nwork; i++) sy_note(sy, sy->work[i]); /* cannot happen; keep */
  sy_free_list(sy->work, sy->nwork);
  sy->work = NULL;
  sy->nwork = 0;
}

/* Shutdown: what is still pending is fsynced now, synchronously (not on a hot path). */
static void sy_stop(syncer_t *sy) {
  sy->stopped = true;
  uv_timer_stop(sy->timer);
  int failed = 0;
  for (size_t i = 0; i < sy->npending; i++) {
    int rc = ds_file_fsync(sy->pending[i]);
    if (rc != 0 && rc != DS_ENOTFOUND && !failed++)
      ds_error("subscriptions", "%s: cannot fsync at shutdown: %s", sy->pending[i],
               ds_strerror(rc));
  }
  if (sy->dir_pending && ds_file_fsync_dir(sy->dir) != 0)
    ds_error("subscriptions", "%s: cannot fsync the subscription directory at shutdown",
             sy->dir);
  sy_free_list(sy->pending, sy->npending);
  sy->pending = NULL;
  sy->npending = 0;
  sy->dir_pending = false;
}

/* ---- saving subscriptions ---- */

#define SAVE_RETRY_MIN_MS 100
#define SAVE_RETRY_MAX_MS 10000

static void save_retry_cb(uv_timer_t *t);

static void save_retry_arm(struct ds__subs_s *ss) {
  if (ss->stopping || !ss->save_timer || uv_is_active((uv_handle_t *)ss->save_timer)) return;
  uv_timer_start(ss->save_timer, save_retry_cb, ss->save_backoff_ms, 0);
}

/* Writes the subscription's file if its state changed, following the fsync policy. 0, or a
 * DS_E* code; the state then stays dirty and ss->save_timer retries with back-off. A
 * failure is logged once per episode (and its end once), not once per attempt. */
/* DS_FILE_UNSYNCED (the change is in place, only the directory fsync failed) is logged and
 * taken as done: `what` says what was done to the file. Other results pass through. */
static int unsynced_ok(int rc, const char *file, const char *what) {
  if (rc != DS_FILE_UNSYNCED) return rc;
  ds_warn("subscriptions", "%s: %s, but fsyncing its directory failed (durability unknown)",
          file, what);
  return 0;
}

static int sub_flush(struct ds__subs_s *ss, sub_t *sb) {
  if (!ss->dir || !sb->dirty || sb->dead) return 0;
  ds_buf_t f = DS_BUF_INIT, b = DS_BUF_INIT;
  sub_file(ss, sb->id, &f);
  int rc;
  if (is_blocked(ss, ds_buf_cstr(&f))) {
    rc = DS_EEXISTS;
    if (!sb->save_failed)
      ds_error("subscriptions",
               "%s: refusing to save subscription %s over a damaged file that could not be "
               "moved aside; move or remove it by hand",
               f.data, sb->id);
  } else {
    sub_encode(sb, &b);
    rc = ds_file_write_atomic_opt(ds_buf_cstr(&f), b.data, b.len, 0644,
                                  ss->policy == DS_FSYNC_ALWAYS);
    rc = unsynced_ok(rc, f.data, "subscription saved");
    if (rc == 0 && ss->sy) sy_note(ss->sy, ds_buf_cstr(&f));
    if (rc != 0 && !sb->save_failed)
      ds_error("subscriptions", "%s: cannot save subscription %s: %s (retrying)", f.data,
               sb->id, ds_strerror(rc));
  }
  if (rc == 0) {
    sb->dirty = false;
    if (sb->save_failed)
      ds_info("subscriptions", "%s: subscription %s saved again", f.data, sb->id);
    sb->save_failed = false;
  } else {
    sb->save_failed = true;
    sb->save_rc = rc;
    save_retry_arm(ss);
  }
  ds_buf_free(&f);
  ds_buf_free(&b);
  return rc;
}

/* From background paths (appends, timers, webhook completions): a subscription in a save
 * failure episode is left to the back-off timer instead of being retried (and logged)
 * on every event. Returns 0 or the pending error. */
static int sub_flush_bg(struct ds__subs_s *ss, sub_t *sb) {
  if (!ss->dir || !sb->dirty || sb->dead) return 0;
  if (sb->save_failed) {
    save_retry_arm(ss);
    return sb->save_rc;
  }
  return sub_flush(ss, sb);
}

static int sub_touch(struct ds__subs_s *ss, sub_t *sb) {
  sb->dirty = true;
  return sub_flush_bg(ss, sb);
}

/* Removes the subscription's file (DELETE). 0 or DS_E* (logged). */
static int sub_unlink(struct ds__subs_s *ss, sub_t *sb) {
  if (!ss->dir) return 0;
  ds_buf_t f = DS_BUF_INIT;
  sub_file(ss, sb->id, &f);
  int rc = is_blocked(ss, ds_buf_cstr(&f))
               ? 0
               : ds_file_remove_opt(ds_buf_cstr(&f), ss->policy == DS_FSYNC_ALWAYS);
  rc = unsynced_ok(rc, ds_buf_cstr(&f), "subscription removed");
  if (rc == 0 && ss->sy) sy_note(ss->sy, NULL);
  if (rc < 0)
    ds_error("subscriptions", "%s: cannot remove subscription %s: %s", f.data, sb->id,
             ds_strerror(rc));
  ds_buf_free(&f);
  return rc;
}

static void respond_storage(ds_http_req_t *req, int rc) {
  respond_code(req, rc == DS_ENOSPC ? 507 : 500, "STORAGE_ERROR",
               rc == DS_ENOSPC ? "Subscription state could not be saved: no space left on device"
                               : "Subscription state could not be saved");
}

static void serialize(struct ds__subs_s *ss, sub_t *sb, ds_buf_t *b) {
  ds_buf_puts(b, "{\"id\":");
  ds_json_write_string(b, sb->id, strlen(sb->id));
  ds_buf_puts(b, ",\"subscription_id\":");
  ds_json_write_string(b, sb->id, strlen(sb->id));
  ds_buf_printf(b, ",\"type\":\"%s\"", sb->webhook ? "webhook" : "pull-wake");
  if (sb->pattern) {
    ds_buf_puts(b, ",\"pattern\":");
    ds_json_write_string(b, sb->pattern, strlen(sb->pattern));
  }
  ds_buf_puts(b, ",\"streams\":");
  stream_infos(ss, sb, b, false);
  if (sb->url) {
    ds_buf_puts(b, ",\"webhook\":{\"url\":");
    ds_json_write_string(b, sb->url, strlen(sb->url));
    ds_buf_printf(b, ",\"signing\":{\"alg\":\"ed25519\",\"kid\":\"%s\",\"jwks_url\":", ss->kid);
    ds_buf_t u = DS_BUF_INIT;
    ds_buf_printf(&u, "%s%s/__ds/jwks.json", sb->base_url, ss->p->prefix);
    ds_json_write_string(b, u.data, u.len);
    ds_buf_free(&u);
    ds_buf_puts(b, "}}");
  }
  if (sb->wake_stream) {
    ds_buf_puts(b, ",\"wake_stream\":");
    ds_json_write_string(b, sb->wake_stream, strlen(sb->wake_stream));
  }
  ds_buf_printf(b, ",\"lease_ttl_ms\":%ld,\"created_at\":\"%s\",\"status\":\"%s\"", sb->lease_ms,
                sb->created_at, sb->failed ? "failed" : "active");
  if (sb->description) {
    ds_buf_puts(b, ",\"description\":");
    ds_json_write_string(b, sb->description, strlen(sb->description));
  }
  ds_buf_putc(b, '}');
}

/* ---- wakes ---- */

static void clear_wake(sub_t *sb) {
  uv_timer_stop(&sb->lease);
  free(sb->holder);
  sb->holder = NULL;
  sb->wake_id[0] = 0;
  for (size_t i = 0; i < sb->nsnapshot; i++) free(sb->snapshot[i].path);
  free(sb->snapshot);
  sb->snapshot = NULL;
  sb->nsnapshot = 0;
}

static int create_wake(struct ds__subs_s *ss, sub_t *sb, const char *trigger, bool req);

/* Opens a wake if data is pending; true if one was opened (and announced). req: try the
 * save even during a failure episode (a request being answered, or the retry timer). */
static bool next_wake_if_pending(struct ds__subs_s *ss, sub_t *sb, bool req) {
  const char *first = NULL;
  if (!has_pending(ss, sb, &first)) return false;
  char *t = ds_xstrdup(first);
  int rc = create_wake(ss, sb, t, req);
  free(t);
  return rc == 0;
}

static void lease_cb(uv_timer_t *t) {
  sub_t *sb = t->data;
  clear_wake(sb);
  sb->dirty = true;
  next_wake_if_pending(sb->owner, sb, false);
  sub_flush_bg(sb->owner, sb);
}

/* Back-off retry: saves what is still dirty and opens the wakes that could not be saved;
 * the delay doubles while anything keeps failing and resets once all succeeded. */
static void save_retry_cb(uv_timer_t *t) {
  struct ds__subs_s *ss = t->data;
  bool failing = false;
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (sb->dirty && sub_flush(ss, sb) != 0) {
      failing = true;
      continue;
    }
    if (sb->wake_deferred) {
      sb->wake_deferred = false;
      if (!sb->wake_id[0] && !sb->holder) next_wake_if_pending(ss, sb, true); /* try now */
      if (sb->wake_deferred || sb->dirty) failing = true;
    }
  }
  if (failing) {
    ss->save_backoff_ms *= 2;
    if (ss->save_backoff_ms > SAVE_RETRY_MAX_MS) ss->save_backoff_ms = SAVE_RETRY_MAX_MS;
    uv_timer_stop(ss->save_timer); /* a failed save above armed it with the old delay */
    save_retry_arm(ss);
  } else {
    ss->save_backoff_ms = SAVE_RETRY_MIN_MS;
  }
}

static void extend_lease(sub_t *sb) {
  uv_timer_stop(&sb->lease);
  uv_timer_start(&sb->lease, lease_cb, (uint64_t)sb->lease_ms, 0);
}

static sub_t *sub_find(struct ds__subs_s *ss, const char *id) {
  for (sub_t *s = ss->subs; s; s = s->next)
    if (strcmp(s->id, id) == 0) return s;
  return NULL;
}

static void deliver(struct ds__subs_s *ss, sub_t *sb);

static void retry_cb(uv_timer_t *t) {
  sub_t *sb = t->data;
  if (sb->wake_id[0]) deliver(sb->owner, sb);
}

static void schedule_retry(sub_t *sb) {
  sb->retry_count++;
  if (!sb->failed) {
    sb->failed = true;
    sub_touch(sb->owner, sb); /* a failed save is retried by the save timer */
  }
  uint64_t base = 1000;
  for (int i = 1; i < sb->retry_count && base < RETRY_MAX_MS; i++) base *= 2;
  if (base > RETRY_MAX_MS) base = RETRY_MAX_MS;
  uint64_t jitter = base / 5;
  uint64_t delay = base - jitter + (uint64_t)(rand() % (int)(2 * jitter + 1));
  uv_timer_stop(&sb->retry);
  uv_timer_start(&sb->retry, retry_cb, delay, 0);
}

static void inflight_unlink(delivery_t *d) {
  if (d->prev) d->prev->next = d->next;
  else d->ss->inflight = d->next;
  if (d->next) d->next->prev = d->prev;
}

static void delivered(void *ud, int status, const char *body, size_t len) {
  delivery_t *d = ud;
  inflight_unlink(d);
  sub_t *sb = sub_find(d->ss, d->sub_id);
  if (sb && !sb->dead && strcmp(sb->wake_id, d->wake_id) == 0) {
    if (status < 200 || status >= 300) {
      schedule_retry(sb);
    } else {
      if (sb->failed) sb->dirty = true;
      sb->failed = false;
      sb->retry_count = 0;
      ds_arena_t a;
      ds_arena_init(&a);
      ds_value_t *v = NULL;
      char err[64];
      if (len && ds_json_parse(&a, body, len, 32, &v, err, sizeof err) == 0) {
        ds_value_t *done = ds_value_get(v, "done");
        if (done && done->type == DS_V_BOOL && done->u.b) {
          for (size_t i = 0; i < sb->nsnapshot; i++) {
            link_t *l = link_find(sb, sb->snapshot[i].path);
            if (l) snprintf(l->acked, sizeof l->acked, "%s", sb->snapshot[i].acked);
          }
          clear_wake(sb);
          sb->dirty = true;
          next_wake_if_pending(d->ss, sb, false);
        }
      }
      ds_arena_free(&a);
      sub_flush_bg(d->ss, sb);
    }
  }
  free(d->sub_id);
  free(d);
}

static void deliver(struct ds__subs_s *ss, sub_t *sb) {
  ds_buf_t body = DS_BUF_INIT, tok = DS_BUF_INIT;
  make_token(ss, sb->id, sb->generation, &tok);
  ds_buf_puts(&body, "{\"subscription_id\":");
  ds_json_write_string(&body, sb->id, strlen(sb->id));
  ds_buf_printf(&body, ",\"wake_id\":\"%s\",\"generation\":%ld,\"streams\":", sb->wake_id,
                sb->generation);
  stream_infos(ss, sb, &body, true);
  ds_buf_t cb = DS_BUF_INIT;
  ds_buf_printf(&cb, "%s%s/__ds/subscriptions/", sb->base_url, ss->p->prefix);
  for (const char *c = sb->id; *c; c++) {
    unsigned char u = (unsigned char)*c;
    if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') ||
        strchr("-_.!~*'()", u))
      ds_buf_putc(&cb, (char)u);
    else ds_buf_printf(&cb, "%%%02X", u);
  }
  ds_buf_puts(&cb, "/callback");
  ds_buf_puts(&body, ",\"callback_url\":");
  ds_json_write_string(&body, cb.data, cb.len);
  ds_buf_puts(&body, ",\"callback_token\":");
  ds_json_write_string(&body, tok.data, tok.len);
  ds_buf_putc(&body, '}');

  /* Webhook-Signature: t=<unix>,kid=<kid>,ed25519=<base64url(sign("<t>.<body>"))> */
  long long t = ds_clock_wall_ms() / 1000;
  ds_buf_t msg = DS_BUF_INIT;
  ds_buf_printf(&msg, "%lld.", t);
  ds_buf_append(&msg, body.data, body.len);
  unsigned char sig[64];
  size_t siglen = sizeof sig;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, ss->key) == 1 &&
           EVP_DigestSign(md, sig, &siglen, (unsigned char *)msg.data, msg.len) == 1;
  EVP_MD_CTX_free(md);
  ds_buf_t sh = DS_BUF_INIT;
  ds_buf_printf(&sh, "Webhook-Signature: t=%lld,kid=%s,ed25519=", t, ss->kid);
  if (ok) b64url(&sh, sig, siglen);
  const char *hdrs[] = {"Content-Type: application/json", ds_buf_cstr(&sh), NULL};
  delivery_t *d = ds_xcalloc(1, sizeof *d);
  d->ss = ss;
  d->sub_id = ds_xstrdup(sb->id);
  snprintf(d->wake_id, sizeof d->wake_id, "%s", sb->wake_id);
  if (!ok || ds__whook_post(ss->hooks, sb->url, body.data, body.len, hdrs, delivered, d) != 0) {
    free(d->sub_id);
    free(d);
    schedule_retry(sb);
  } else {
    d->next = ss->inflight;
    if (d->next) d->next->prev = d;
    ss->inflight = d;
  }
  ds_buf_free(&sh);
  ds_buf_free(&msg);
  ds_buf_free(&cb);
  ds_buf_free(&tok);
  ds_buf_free(&body);
}

static void write_pull_event(struct ds__subs_s *ss, sub_t *sb, const char *trigger) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_get(ss->p, sb->wake_stream, &s);
  if (!st || st->soft_deleted || st->closed || st->mode != DS__M_JSON) {
    ds_warn("subscriptions", "wake stream %s is not an open JSON stream", sb->wake_stream);
    return;
  }
  ds_buf_t ev = DS_BUF_INIT;
  ds_buf_puts(&ev, "{\"type\":\"wake\",\"subscription_id\":");
  ds_json_write_string(&ev, sb->id, strlen(sb->id));
  ds_buf_puts(&ev, ",\"stream\":");
  ds_json_write_string(&ev, trigger, strlen(trigger));
  ds_buf_printf(&ev, ",\"generation\":%ld,\"ts\":%lld}", sb->generation,
                (long long)ds_clock_wall_ms());
  ds__msgs_t m;
  ds__msgs_init(&m);
  char err[64];
  if (ds__msgs_prepare(&m, DS__M_JSON, ev.data, ev.len, false, err, sizeof err) == 0) {
    int rc = ds__msgs_commit(&m, s);
    if (rc != 0) ds_warn("subscriptions", "wake event append failed: %s", ds_strerror(rc));
  }
  ds__msgs_free(&m);
  ds_buf_free(&ev);
}

/* Opens a wake: new generation, wake_id and snapshot, saved before anyone can see it
 * (webhook POST, wake event). Under fsync `always` a wake that could not be saved is not
 * announced: the subscription is put back as it was and the save timer opens the wake
 * once saving works again (DS_E* returned). Under interval / never the save is a rename
 * without fsync, and a failed one is retried by the timer while the wake goes out. */
static int create_wake(struct ds__subs_s *ss, sub_t *sb, const char *trigger, bool req) {
  long old_gen = sb->generation;
  char old_wake[sizeof sb->wake_id];
  memcpy(old_wake, sb->wake_id, sizeof old_wake);
  link_t *old_snap = sb->snapshot;
  size_t old_nsnap = sb->nsnapshot;
  bool old_dirty = sb->dirty;
  sb->generation++;
  unsigned char rnd[12];
  RAND_bytes(rnd, sizeof rnd);
  char *w = sb->wake_id;
  w += sprintf(w, "w_");
  for (size_t i = 0; i < sizeof rnd; i++) w += sprintf(w, "%02x", rnd[i]);
  sb->snapshot = ds_xcalloc(sb->nlinks ? sb->nlinks : 1, sizeof *sb->snapshot);
  sb->nsnapshot = sb->nlinks;
  for (size_t i = 0; i < sb->nlinks; i++) {
    sb->snapshot[i].path = ds_xstrdup(sb->links[i].path);
    tail_of(ss, sb->links[i].path, sb->snapshot[i].acked);
  }
  sb->dirty = true;
  int rc = req ? sub_flush(ss, sb) : sub_flush_bg(ss, sb);
  if (rc != 0 && ss->policy == DS_FSYNC_ALWAYS) {
    for (size_t i = 0; i < sb->nsnapshot; i++) free(sb->snapshot[i].path);
    free(sb->snapshot);
    sb->snapshot = old_snap;
    sb->nsnapshot = old_nsnap;
    sb->generation = old_gen;
    memcpy(sb->wake_id, old_wake, sizeof old_wake);
    sb->dirty = old_dirty;
    sb->wake_deferred = true;
    save_retry_arm(ss);
    return rc;
  }
  for (size_t i = 0; i < old_nsnap; i++) free(old_snap[i].path);
  free(old_snap);
  if (sb->webhook) {
    extend_lease(sb);
    deliver(ss, sb);
  } else {
    write_pull_event(ss, sb, trigger);
  }
  return 0;
}

/* ---- stream events ---- */

void ds__subs_on_append(ds_protocol_t *p, const char *path) {
  struct ds__subs_s *ss = p->subs;
  if (!ss || p->shutting_down) return;
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (sb->pattern && ds__glob_match(sb->pattern, path)) {
      link_t *l = link_find(sb, path);
      if (!l || !l->glob) sb->dirty = true;
      link_add(sb, path, false, l ? l->acked : "-1");
    }
    /* a deferred wake (save failing) is opened by the save timer, not by every append */
    if (!sb->wake_deferred && link_find(sb, path) && !sb->wake_id[0] && !sb->holder &&
        has_pending(ss, sb, NULL))
      create_wake(ss, sb, path, false);
    if (sb->dirty) sub_flush_bg(ss, sb);
  }
}

void ds__subs_on_delete(ds_protocol_t *p, const char *path) {
  struct ds__subs_s *ss = p->subs;
  if (!ss) return;
  for (sub_t *sb = ss->subs; sb; sb = sb->next)
    for (size_t i = 0; i < sb->nlinks; i++)
      if (strcmp(sb->links[i].path, path) == 0) {
        link_remove(sb, i);
        sub_touch(ss, sb); /* a failed save is retried by the save timer */
        break;
      }
}

/* ---- lifecycle ---- */

/* ---- loading the state directory ---- */

static const char *vstr(const ds_value_t *o, const char *k) {
  const ds_value_t *v = ds_value_get(o, k);
  if (!v || v->type != DS_V_STRING || strlen(v->u.str.s) != v->u.str.len) return NULL;
  return v->u.str.s;
}

static bool vlong(const ds_value_t *o, const char *k, long *out) {
  const ds_value_t *v = ds_value_get(o, k);
  if (!v || v->type != DS_V_NUMBER) return false;
  char *end = NULL;
  errno = 0;
  *out = strtol(v->u.str.s, &end, 10);
  return errno == 0 && end && *end == 0 && end != v->u.str.s;
}

static bool vbool(const ds_value_t *o, const char *k, bool *out) {
  const ds_value_t *v = ds_value_get(o, k);
  if (!v || v->type != DS_V_BOOL) return false;
  *out = v->u.b;
  return true;
}

static bool offset_ok(const char *s) {
  if (!s) return false;
  if (strcmp(s, "-1") == 0) return true;
  size_t n = strlen(s);
  if (n != 16) return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

static char *dup_opt(const char *s) { return s ? ds_xstrdup(s) : NULL; }

static void sub_free_mem(sub_t *sb) {
  free(sb->id);
  free(sb->pattern);
  free(sb->url);
  free(sb->wake_stream);
  free(sb->description);
  free(sb->config);
  free(sb->base_url);
  free(sb->holder);
  for (size_t i = 0; i < sb->nlinks; i++) free(sb->links[i].path);
  free(sb->links);
  for (size_t i = 0; i < sb->nsnapshot; i++) free(sb->snapshot[i].path);
  free(sb->snapshot);
  free(sb);
}

/* Builds a subscription (timers not yet initialised) from a decoded file; NULL with the
 * reason in why when anything required is missing or out of range. */
static sub_t *sub_decode(struct ds__subs_s *ss, const ds_value_t *v, const char *file,
                         char *why, size_t whylen) {
  long version = 0, lease = 0, gen = 0;
  const char *id = vstr(v, "id"), *type = vstr(v, "type"), *config = vstr(v, "config");
  const char *base = vstr(v, "base_url"), *created = vstr(v, "created_at");
  const char *wake_id = vstr(v, "wake_id");
  const ds_value_t *links = ds_value_get(v, "streams"), *snap = ds_value_get(v, "wake_snapshot");
  bool failed = false;
  if (v->type != DS_V_OBJECT || !vlong(v, "version", &version) || version != 1) {
    snprintf(why, whylen, "not a version 1 subscription object");
    return NULL;
  }
  if (!id || !*id || !type || !config || !base || !created || strlen(created) >= 32 ||
      !vlong(v, "lease_ttl_ms", &lease) || !vlong(v, "generation", &gen) ||
      !vbool(v, "failed", &failed) || !links || links->type != DS_V_ARRAY || !snap ||
      snap->type != DS_V_ARRAY) {
    snprintf(why, whylen, "a required field is missing or has the wrong type");
    return NULL;
  }
  bool webhook = strcmp(type, "webhook") == 0;
  if (!webhook && strcmp(type, "pull-wake") != 0) {
    snprintf(why, whylen, "unknown type");
    return NULL;
  }
  if (lease < LEASE_MIN_MS || lease > LEASE_MAX_MS || gen < 0 ||
      (wake_id && (!*wake_id || strlen(wake_id) >= sizeof ((sub_t *)0)->wake_id)) ||
      (webhook && !vstr(v, "webhook_url")) || (!webhook && !vstr(v, "wake_stream")) ||
      (vstr(v, "holder") && !wake_id)) {
    snprintf(why, whylen, "inconsistent field values");
    return NULL;
  }
  ds_buf_t want = DS_BUF_INIT;
  sub_file(ss, id, &want);
  bool name_ok = strcmp(ds_buf_cstr(&want), file) == 0;
  ds_buf_free(&want);
  if (!name_ok) {
    snprintf(why, whylen, "the id inside does not belong to this file name");
    return NULL;
  }
  sub_t *sb = ds_xcalloc(1, sizeof *sb);
  sb->owner = ss;
  sb->id = ds_xstrdup(id);
  sb->webhook = webhook;
  sb->pattern = dup_opt(vstr(v, "pattern"));
  sb->url = dup_opt(vstr(v, "webhook_url"));
  sb->wake_stream = dup_opt(vstr(v, "wake_stream"));
  sb->description = dup_opt(vstr(v, "description"));
  sb->config = ds_xstrdup(config);
  sb->base_url = ds_xstrdup(base);
  sb->holder = dup_opt(vstr(v, "holder"));
  sb->lease_ms = lease;
  sb->generation = gen;
  sb->failed = failed;
  snprintf(sb->created_at, sizeof sb->created_at, "%s", created);
  if (wake_id) snprintf(sb->wake_id, sizeof sb->wake_id, "%s", wake_id);
  for (size_t i = 0; i < links->u.arr.len; i++) {
    const ds_value_t *l = links->u.arr.items[i];
    const char *path = vstr(l, "path"), *acked = vstr(l, "acked_offset");
    bool ex = false, gl = false;
    if (!path || !*path || !offset_ok(acked) || !vbool(l, "explicit", &ex) ||
        !vbool(l, "glob", &gl) || (!ex && !gl) || link_find(sb, path)) {
      snprintf(why, whylen, "stream link %zu is invalid", i);
      sub_free_mem(sb);
      return NULL;
    }
    link_t *nl = link_add(sb, path, ex, acked);
    if (ex && gl) nl->glob = true;
  }
  if (snap->u.arr.len) {
    sb->snapshot = ds_xcalloc(snap->u.arr.len, sizeof *sb->snapshot);
    for (size_t i = 0; i < snap->u.arr.len; i++) {
      const ds_value_t *l = snap->u.arr.items[i];
      const char *path = vstr(l, "path"), *tail = vstr(l, "tail_offset");
      if (!path || !*path || !offset_ok(tail)) {
        snprintf(why, whylen, "wake snapshot entry %zu is invalid", i);
        sub_free_mem(sb);
        return NULL;
      }
      sb->snapshot[i].path = ds_xstrdup(path);
      snprintf(sb->snapshot[i].acked, sizeof sb->snapshot[i].acked, "%s", tail);
      sb->nsnapshot++;
    }
  }
  return sb;
}

/* A state file that cannot be used: logged by name and moved aside so that nothing
 * overwrites it; if even that fails, its name is blocked against writes. */
static void set_aside(struct ds__subs_s *ss, const char *file, const char *what, const char *why) {
  char aside[4096];
  int rc = ds_file_move_aside(file, aside, sizeof aside);
  if (rc >= 0) { /* DS_FILE_UNSYNCED: moved; only its durability is unknown */
    ds_error("subscriptions", "%s: damaged %s file (%s); moved aside to %s and skipped", file,
             what, why, aside);
    return;
  }
  ds_error("subscriptions",
           "%s: damaged %s file (%s) that cannot be moved aside (%s); skipped, and writes to "
           "it are refused until it is moved or removed by hand",
           file, what, why, ds_strerror(rc));
  ss->blocked = ds_xrealloc(ss->blocked, (ss->nblocked + 1) * sizeof *ss->blocked);
  ss->blocked[ss->nblocked++] = ds_xstrdup(file);
}

static int cmp_name(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

static bool ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && memcmp(s + a - b, suf, b) == 0;
}

static void sub_arm(struct ds__subs_s *ss, sub_t *sb) {
  uv_timer_init(ss->p->loop, &sb->lease);
  uv_timer_init(ss->p->loop, &sb->retry);
  sb->lease.data = sb->retry.data = sb;
  sb->handles_open = 2;
}

/* After a power loss the stream logs (fsynced on their own interval) can be behind the
 * subscription file: an acked offset or wake snapshot beyond the recovered tail would
 * suppress wakes while new events reuse those offsets. Such offsets are pulled back to
 * the tail (logged); the file is rewritten by the resume pass. */
/* Pulls the acked offsets of links[0..n) back to their streams' tails; `what` names them
 * in the warning. */
static void clamp_links(struct ds__subs_s *ss, sub_t *sb, const char *file, link_t *links,
                        size_t n, const char *what) {
  for (size_t i = 0; i < n; i++) {
    char t[20];
    tail_of(ss, links[i].path, t);
    if (strcmp(links[i].acked, t) > 0) {
      ds_warn("subscriptions",
              "%s: subscription %s: %s %s of %s is beyond the stream's tail %s "
              "(stream data lost in a crash?); using the tail",
              file, sb->id, what, links[i].acked, links[i].path, t);
      snprintf(links[i].acked, sizeof links[i].acked, "%s", t);
      sb->dirty = true;
    }
  }
}

static void clamp_to_tails(struct ds__subs_s *ss, sub_t *sb, const char *file) {
  clamp_links(ss, sb, file, sb->links, sb->nlinks, "acked offset");
  clamp_links(ss, sb, file, sb->snapshot, sb->nsnapshot, "wake snapshot offset");
}

/* Loads every subscription file; returns how many were loaded. */
static size_t load_all(struct ds__subs_s *ss) {
  DIR *d = opendir(ss->dir);
  if (!d) {
    ds_error("subscriptions", "%s: cannot list the subscription directory: %s", ss->dir,
             strerror(errno));
    return 0;
  }
  char **names = NULL;
  size_t nn = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    names = ds_xrealloc(names, (nn + 1) * sizeof *names);
    names[nn++] = ds_xstrdup(e->d_name);
  }
  closedir(d);
  if (nn > 1) qsort(names, nn, sizeof *names, cmp_name);
  size_t loaded = 0;
  for (size_t i = 0; i < nn; i++) {
    const char *nm = names[i];
    ds_buf_t f = DS_BUF_INIT, content = DS_BUF_INIT;
    ds_buf_printf(&f, "%s/%s", ss->dir, nm);
    const char *file = ds_buf_cstr(&f);
    if (ends_with(nm, ".json.tmp")) {
      /* an interrupted replace: the file it was replacing is intact */
      if (unlink(file) == 0) ds_warn("subscriptions", "%s: removed an unfinished write", file);
    } else if ((strncmp(nm, "s_", 2) == 0 || strncmp(nm, "h_", 2) == 0) &&
               ends_with(nm, ".json")) {
      char why[160];
      sub_t *sb = NULL;
      int rc = ds_file_read_all(file, &content);
      if (rc != 0) {
        snprintf(why, sizeof why, "cannot read it: %s", ds_strerror(rc));
      } else {
        ds_arena_t a;
        ds_arena_init(&a);
        ds_value_t *v = NULL;
        char perr[128];
        if (ds_json_parse(&a, content.data ? content.data : "", content.len, 8, &v, perr,
                          sizeof perr) != 0)
          snprintf(why, sizeof why, "%s", perr);
        else sb = sub_decode(ss, v, file, why, sizeof why);
        ds_arena_free(&a);
      }
      if (!sb) {
        set_aside(ss, file, "subscription", why);
      } else if (sub_find(ss, sb->id)) {
        set_aside(ss, file, "subscription", "duplicate subscription id");
        sub_free_mem(sb);
      } else {
        clamp_to_tails(ss, sb, file);
        sub_arm(ss, sb);
        /* a lease restarts in full: the holder or webhook gets its whole lease again */
        if (sb->wake_id[0] && (sb->webhook || sb->holder)) extend_lease(sb);
        sb->next = ss->subs;
        ss->subs = sb;
        loaded++;
      }
    }
    ds_buf_free(&content);
    ds_buf_free(&f);
    free(names[i]);
  }
  free(names);
  return loaded;
}

/* After start-up, on the loop: open webhook wakes are delivered again (at least once),
 * and subscriptions with unacknowledged data and no open wake get one. */
static void resume_cb(uv_timer_t *t) {
  struct ds__subs_s *ss = t->data;
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (sb->wake_id[0]) {
      if (sb->webhook) deliver(ss, sb);
    } else {
      next_wake_if_pending(ss, sb, false);
    }
    sub_flush_bg(ss, sb);
  }
}

static void free_timer(uv_handle_t *h) { free(h); }

/* True if the state directory holds any subscription file (loaded or not). */
static bool any_sub_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return false;
  bool any = false;
  for (struct dirent *e; !any && (e = readdir(d));)
    any = (strncmp(e->d_name, "s_", 2) == 0 || strncmp(e->d_name, "h_", 2) == 0) &&
          strstr(e->d_name, ".json") != NULL;
  closedir(d);
  return any;
}

/* Ed25519 signing key and callback-token key: loaded from signing-keys.json, else made
 * and saved there (0600). A key file that was read and is damaged is moved aside and
 * replaced; one that merely cannot be read (EACCES, a transient EIO...) is never
 * replaced: the server runs on keys kept in memory only and logs an error. */
static void keys_init(struct ds__subs_s *ss) {
  ds_buf_t f = DS_BUF_INIT, content = DS_BUF_INIT;
  bool may_write = ss->dir != NULL;
  if (ss->dir) {
    ds_buf_printf(&f, "%s/signing-keys.json", ss->dir);
    int rc = ds_file_read_all(ds_buf_cstr(&f), &content);
    char why[160] = "";
    if (rc == 0) {
      ds_arena_t a;
      ds_arena_init(&a);
      ds_value_t *v = NULL;
      long version = 0;
      const char *pk = NULL, *tk = NULL;
      if (ds_json_parse(&a, content.data ? content.data : "", content.len, 4, &v, why,
                        sizeof why) == 0) {
        pk = vstr(v, "ed25519_private_key");
        tk = vstr(v, "callback_token_key");
        if (!vlong(v, "version", &version) || version != 1 || !pk || !tk)
          snprintf(why, sizeof why, "not a version 1 key file");
      }
      if (!why[0]) {
        ds_buf_t raw = DS_BUF_INIT, tok = DS_BUF_INIT;
        if (ds_base64_decode(&raw, pk, strlen(pk)) != 0 || raw.len != 32 ||
            ds_base64_decode(&tok, tk, strlen(tk)) != 0 || tok.len != sizeof ss->token_key)
          snprintf(why, sizeof why, "a key has the wrong encoding or length");
        else {
          ss->key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL,
                                                 (unsigned char *)raw.data, raw.len);
          if (!ss->key) snprintf(why, sizeof why, "the Ed25519 key is not usable");
          else memcpy(ss->token_key, tok.data, sizeof ss->token_key);
        }
        ds_buf_free(&raw);
        ds_buf_free(&tok);
      }
      ds_arena_free(&a);
    } else if (rc != DS_ENOTFOUND) {
      ds_error("subscriptions",
               "%s: cannot read the signing keys (%s); not replacing the file: running on "
               "temporary keys kept in memory only (webhook signatures and callback tokens "
               "change on the next restart unless the file becomes readable)",
               f.data, ds_strerror(rc));
      may_write = false;
    } else if (any_sub_files(ss->dir)) {
      ds_warn("subscriptions",
              "%s: missing while subscription files exist; new signing and callback-token "
              "keys are generated: webhook consumers must fetch the JWKS again, and tokens "
              "issued before are no longer accepted",
              f.data);
    }
    if (why[0]) {
      size_t before = ss->nblocked;
      set_aside(ss, ds_buf_cstr(&f), "signing key", why);
      may_write = ss->nblocked == before;
      ds_warn("subscriptions", "new webhook signing and callback-token keys: webhook "
                               "consumers must fetch the JWKS again, and tokens issued "
                               "before are no longer accepted");
    }
  }
  if (!ss->key) {
    RAND_bytes(ss->token_key, sizeof ss->token_key);
    EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!kc || EVP_PKEY_keygen_init(kc) != 1 || EVP_PKEY_keygen(kc, &ss->key) != 1)
      ds_error("subscriptions", "cannot generate the Ed25519 webhook signing key");
    EVP_PKEY_CTX_free(kc);
    unsigned char raw[32];
    size_t rawlen = sizeof raw;
    if (ss->key && may_write &&
        EVP_PKEY_get_raw_private_key(ss->key, raw, &rawlen) == 1 && rawlen == sizeof raw) {
      ds_buf_t b = DS_BUF_INIT;
      ds_buf_puts(&b, "{\"version\":1,\"ed25519_private_key\":\"");
      ds_base64_encode(&b, raw, rawlen);
      ds_buf_puts(&b, "\",\"callback_token_key\":\"");
      ds_base64_encode(&b, ss->token_key, sizeof ss->token_key);
      ds_buf_puts(&b, "\"}\n");
      int rc = ds_file_write_atomic(ds_buf_cstr(&f), b.data, b.len, 0600);
      rc = unsynced_ok(rc, f.data, "signing keys saved");
      if (rc != 0)
        ds_error("subscriptions",
                 "%s: cannot save the signing keys: %s (they change on the next restart)",
                 f.data, ds_strerror(rc));
      OPENSSL_cleanse(b.data, b.len);
      ds_buf_free(&b);
    }
    OPENSSL_cleanse(raw, sizeof raw);
  }
  if (content.data) OPENSSL_cleanse(content.data, content.len);
  ds_buf_free(&content);
  ds_buf_free(&f);
}

static void sub_handle_closed(uv_handle_t *h) {
  sub_t *sb = h->data;
  if (--sb->handles_open > 0) return;
  sub_free_mem(sb);
}

static void sub_destroy(struct ds__subs_s *ss, sub_t *sb) {
  for (sub_t **pp = &ss->subs; *pp; pp = &(*pp)->next)
    if (*pp == sb) {
      *pp = sb->next;
      break;
    }
  sb->dead = true;
  uv_timer_stop(&sb->lease);
  uv_timer_stop(&sb->retry);
  uv_close((uv_handle_t *)&sb->lease, sub_handle_closed);
  uv_close((uv_handle_t *)&sb->retry, sub_handle_closed);
}

struct ds__subs_s *ds__subs_new(ds_protocol_t *p) {
  struct ds__subs_s *ss = ds_xcalloc(1, sizeof *ss);
  ss->p = p;
  ss->hooks = ds__whook_new(p->loop);
  ss->policy = p->opts.fsync;
  ss->save_backoff_ms = SAVE_RETRY_MIN_MS;
  ss->save_timer = ds_xmalloc(sizeof *ss->save_timer);
  uv_timer_init(p->loop, ss->save_timer);
  ss->save_timer->data = ss;
  if (p->opts.state_dir) {
    ss->dir = ds_xstrdup(p->opts.state_dir);
    int rc = ds_file_mkdir_p(ss->dir, 0700);
    if (rc != 0)
      ds_error("subscriptions", "%s: cannot create the subscription directory: %s", ss->dir,
               ds_strerror(rc));
    if (ss->policy == DS_FSYNC_INTERVAL) {
      syncer_t *sy = ds_xcalloc(1, sizeof *sy);
      sy->loop = p->loop;
      sy->dir = ds_xstrdup(ss->dir);
      sy->interval_ms = p->opts.fsync_interval_ms ? p->opts.fsync_interval_ms : 1000;
      sy->timer = ds_xmalloc(sizeof *sy->timer);
      uv_timer_init(p->loop, sy->timer);
      sy->timer->data = sy;
      ss->sy = sy;
    }
  }
  keys_init(ss);
  if (ss->key) {
    unsigned char pub[32];
    size_t publen = sizeof pub;
    EVP_PKEY_get_raw_public_key(ss->key, pub, &publen);
    ds_buf_t b = DS_BUF_INIT;
    b64url(&b, pub, publen);
    snprintf(ss->x, sizeof ss->x, "%s", ds_buf_cstr(&b));
    ds_buf_reset(&b);
    /* RFC 7638 thumbprint input: required members in lexicographic order */
    ds_buf_printf(&b, "{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"%s\"}", ss->x);
    unsigned char dg[SHA256_DIGEST_LENGTH];
    SHA256((unsigned char *)b.data, b.len, dg);
    ds_buf_reset(&b);
    ds_buf_puts(&b, "ds_");
    b64url(&b, dg, sizeof dg);
    snprintf(ss->kid, sizeof ss->kid, "%s", ds_buf_cstr(&b));
    ds_buf_free(&b);
  }
  if (ss->dir) {
    size_t n = load_all(ss);
    ds_info("subscriptions", "%zu subscription%s loaded from %s", n, n == 1 ? "" : "s",
            ss->dir);
    if (n) {
      ss->resume = ds_xmalloc(sizeof *ss->resume);
      uv_timer_init(p->loop, ss->resume);
      ss->resume->data = ss;
      uv_timer_start(ss->resume, resume_cb, 0, 0);
    }
  }
  return ss;
}

void ds__subs_shutdown(struct ds__subs_s *ss) {
  if (ss->resume) {
    uv_close((uv_handle_t *)ss->resume, free_timer);
    ss->resume = NULL;
  }
  for (sub_t *sb = ss->subs; sb; sb = sb->next) sub_flush(ss, sb); /* retry failed saves */
  ss->stopping = true;
  if (ss->save_timer) {
    uv_close((uv_handle_t *)ss->save_timer, free_timer);
    ss->save_timer = NULL;
  }
  if (ss->sy && !ss->sy->stopped) {
    sy_stop(ss->sy); /* what is pending is fsynced now; a running round finishes alone */
    uv_close((uv_handle_t *)ss->sy->timer, free_timer);
    ss->sy->timer = NULL;
  }
  while (ss->subs) sub_destroy(ss, ss->subs);
  if (ss->hooks) ds__whook_close(ss->hooks, NULL, NULL);
  ss->hooks = NULL;
  while (ss->inflight) { /* abandoned by whook_close: no callback will come */
    delivery_t *d = ss->inflight;
    ss->inflight = d->next;
    free(d->sub_id);
    free(d);
  }
}

void ds__subs_free(struct ds__subs_s *ss) {
  if (!ss) return;
  if (ss->hooks || ss->subs || !ss->stopping) ds__subs_shutdown(ss);
  if (ss->sy) {
    if (ss->sy->busy) ss->sy->orphan = true; /* its completion frees it */
    else sy_free(ss->sy);
    ss->sy = NULL;
  }
  EVP_PKEY_free(ss->key);
  for (size_t i = 0; i < ss->nblocked; i++) free(ss->blocked[i]);
  free(ss->blocked);
  free(ss->dir);
  free(ss);
}

/* ---- request handling ---- */

typedef struct collect_s {
  struct ds__subs_s *ss;
  sub_t *sb;
} collect_t;

static void collect_stream(void *ud, const char *path) {
  collect_t *c = ud;
  if (strncmp(path, "__ds", 4) == 0 && (path[4] == 0 || path[4] == '/')) return;
  if (ds__glob_match(c->sb->pattern, path)) {
    char t[20];
    tail_of(c->ss, path, t);
    link_add(c->sb, path, false, t);
  }
}

static bool url_allowed(const char *url, const char **why) {
  const char *host;
  bool http = false;
  if (strncasecmp(url, "http://", 7) == 0) {
    http = true;
    host = url + 7;
  } else if (strncasecmp(url, "https://", 8) == 0) {
    host = url + 8;
  } else {
    *why = "webhook.url must use https";
    return false;
  }
  char h[256];
  size_t n = 0;
  if (*host == '[') {
    *why = http ? "http webhook URLs are only allowed for localhost or 127.0.0.x"
                : "IPv6 webhook hosts are not accepted";
    return false;
  }
  const char *at = NULL;
  for (const char *c = host; *c && *c != '/' && *c != '?' && *c != '#'; c++)
    if (*c == '@') at = c;
  if (at) host = at + 1;
  while (host[n] && host[n] != ':' && host[n] != '/' && host[n] != '?' && host[n] != '#' &&
         n + 1 < sizeof h) {
    h[n] = (char)((host[n] >= 'A' && host[n] <= 'Z') ? host[n] + 32 : host[n]);
    n++;
  }
  h[n] = 0;
  if (n == 0) {
    *why = "webhook.url must be a valid URL";
    return false;
  }
  unsigned a = 0, b = 0, c = 0, d = 0;
  char tail = 0;
  bool ipv4 = sscanf(h, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) == 4 && a < 256 && b < 256 &&
              c < 256 && d < 256;
  if (http) {
    if (strcmp(h, "localhost") == 0 || (ipv4 && a == 127)) return true;
    *why = "http webhook URLs are only allowed for localhost or 127.0.0.x";
    return false;
  }
  if (strcmp(h, "localhost") == 0) {
    *why = "localhost webhook URLs must use http for dev";
    return false;
  }
  if (ipv4 && (a == 10 || a == 127 || a == 0 || (a == 172 && b >= 16 && b <= 31) ||
               (a == 192 && b == 168) || (a == 169 && b == 254))) {
    *why = "webhook.url must not target private or link-local hosts";
    return false;
  }
  return true;
}

static int cmp_str(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

static void handle_put(struct ds__subs_s *ss, ds_http_req_t *req, const char *id) {
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  char err[160];
  char **streams = NULL;
  size_t nstreams = 0;
  char *pattern = NULL, *url = NULL, *wake = NULL, *desc = NULL;
  ds_buf_t cfg = DS_BUF_INIT;
  if (ds_json_parse(&a, req->body_len ? req->body : "{}", req->body_len ? req->body_len : 2, 32,
                    &v, err, sizeof err) != 0) {
    respond_code(req, 400, "INVALID_REQUEST", "Invalid JSON body");
    goto out;
  }
  if (v->type != DS_V_OBJECT) {
    respond_code(req, 400, "INVALID_REQUEST", "Request body must be a JSON object");
    goto out;
  }
  ds_value_t *type = ds_value_get(v, "type");
  bool webhook;
  if (type && type->type == DS_V_STRING && strcmp(type->u.str.s, "webhook") == 0) webhook = true;
  else if (type && type->type == DS_V_STRING && strcmp(type->u.str.s, "pull-wake") == 0)
    webhook = false;
  else {
    respond_code(req, 400, "INVALID_REQUEST", "type must be \"webhook\" or \"pull-wake\"");
    goto out;
  }
  ds_value_t *pv = ds_value_get(v, "pattern");
  if (pv && pv->type == DS_V_STRING && pv->u.str.len) pattern = norm_rel(pv->u.str.s, pv->u.str.len);
  ds_value_t *sv = ds_value_get(v, "streams");
  if (sv && sv->type == DS_V_ARRAY) {
    streams = ds_xcalloc(sv->u.arr.len + 1, sizeof *streams);
    for (size_t i = 0; i < sv->u.arr.len; i++) {
      ds_value_t *it = sv->u.arr.items[i];
      if (it->type != DS_V_STRING) {
        respond_code(req, 400, "INVALID_REQUEST", "streams must contain only strings");
        goto out;
      }
      streams[nstreams++] = norm_rel(it->u.str.s, it->u.str.len);
    }
  }
  if (!pattern && nstreams == 0) {
    respond_code(req, 400, "INVALID_REQUEST", "At least one of pattern or streams is required");
    goto out;
  }
  long lease = LEASE_DEFAULT_MS;
  ds_value_t *lv = ds_value_get(v, "lease_ttl_ms");
  if (lv) {
    char *end = NULL;
    lease = lv->type == DS_V_NUMBER ? strtol(lv->u.str.s, &end, 10) : -1;
    if (lv->type != DS_V_NUMBER || (end && *end) || lease < LEASE_MIN_MS || lease > LEASE_MAX_MS) {
      respond_code(req, 400, "INVALID_REQUEST", "lease_ttl_ms must be an integer from 1000 to 600000");
      goto out;
    }
  }
  if (webhook) {
    ds_value_t *wv = ds_value_get(v, "webhook");
    ds_value_t *uv = wv ? ds_value_get(wv, "url") : NULL;
    if (!uv || uv->type != DS_V_STRING || uv->u.str.len == 0) {
      respond_code(req, 400, "INVALID_REQUEST", "webhook subscriptions require webhook.url");
      goto out;
    }
    url = ds_xstrndup(uv->u.str.s, uv->u.str.len);
  }
  ds_value_t *wsv = ds_value_get(v, "wake_stream");
  if (wsv && wsv->type == DS_V_STRING && wsv->u.str.len) wake = norm_rel(wsv->u.str.s, wsv->u.str.len);
  if (!webhook && !wake) {
    respond_code(req, 400, "INVALID_REQUEST", "pull-wake subscriptions require wake_stream");
    goto out;
  }
  ds_value_t *dv = ds_value_get(v, "description");
  if (dv && dv->type == DS_V_STRING) desc = ds_xstrndup(dv->u.str.s, dv->u.str.len);

  /* canonical configuration, for idempotent re-confirmation */
  if (nstreams > 1) qsort(streams, nstreams, sizeof *streams, cmp_str);
  ds_buf_printf(&cfg, "%d|", webhook);
  ds_json_write_string(&cfg, pattern ? pattern : "", pattern ? strlen(pattern) : 0);
  for (size_t i = 0; i < nstreams; i++) {
    if (i && strcmp(streams[i], streams[i - 1]) == 0) continue;
    ds_json_write_string(&cfg, streams[i], strlen(streams[i]));
  }
  ds_buf_putc(&cfg, '|');
  ds_json_write_string(&cfg, url ? url : "", url ? strlen(url) : 0);
  ds_json_write_string(&cfg, wake ? wake : "", wake ? strlen(wake) : 0);
  ds_buf_printf(&cfg, "|%ld|", lease);
  ds_json_write_string(&cfg, desc ? desc : "", desc ? strlen(desc) : 0);

  sub_t *sb = sub_find(ss, id);
  int status = 201;
  if (sb) {
    if (strcmp(sb->config, ds_buf_cstr(&cfg)) != 0) {
      respond_code(req, 409, "SUBSCRIPTION_ALREADY_EXISTS",
                   "Subscription already exists with different configuration");
      goto out;
    }
    status = 200;
  } else {
    const char *why = NULL;
    if (webhook && !url_allowed(url, &why)) {
      respond_code(req, 400, "WEBHOOK_URL_REJECTED", why);
      goto out;
    }
    sb = ds_xcalloc(1, sizeof *sb);
    sb->owner = ss;
    sb->id = ds_xstrdup(id);
    sb->webhook = webhook;
    sb->pattern = pattern;
    sb->url = url;
    sb->wake_stream = wake;
    sb->description = desc;
    pattern = url = wake = desc = NULL;
    sb->config = ds_xstrdup(ds_buf_cstr(&cfg));
    const char *host = ds_http_req_header(req, "host");
    ds_buf_t bu = DS_BUF_INIT;
    ds_buf_printf(&bu, "http://%s", host ? host : "127.0.0.1");
    sb->base_url = ds_buf_detach(&bu, NULL);
    sb->lease_ms = lease;
    ds_clock_iso8601(ds_clock_wall_ms(), sb->created_at);
    sub_arm(ss, sb);
    for (size_t i = 0; i < nstreams; i++) {
      char t[20];
      tail_of(ss, streams[i], t);
      link_add(sb, streams[i], true, t);
    }
    if (sb->pattern) {
      collect_t c = {ss, sb};
      ds_store_list(ds_streams_store(ss->p->streams), collect_stream, &c);
    }
    sb->next = ss->subs;
    ss->subs = sb;
    sb->dirty = true;
    int rc = sub_flush(ss, sb);
    if (rc != 0) { /* not durable: not created */
      sub_unlink(ss, sb);
      sub_destroy(ss, sb);
      respond_storage(req, rc);
      goto out;
    }
  }
  ds_buf_t out = DS_BUF_INIT;
  serialize(ss, sb, &out);
  respond_json(req, status, out.data, out.len);
  ds_buf_free(&out);
out:
  for (size_t i = 0; i < nstreams; i++) free(streams[i]);
  free(streams);
  free(pattern);
  free(url);
  free(wake);
  free(desc);
  ds_buf_free(&cfg);
  ds_arena_free(&a);
}

static const char *bearer(ds_http_req_t *req) {
  const char *h = ds_http_req_header(req, "authorization");
  if (!h || strncmp(h, "Bearer ", 7) != 0) return NULL;
  return h + 7;
}

/* Validates token + fencing and applies acks. Returns true if it already responded. */
static bool fence_and_ack(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb, ds_value_t *v,
                          bool apply_acks) {
  const char *tok = bearer(req);
  if (!tok) {
    respond_code(req, 401, "TOKEN_INVALID", "Missing or malformed Authorization header");
    return true;
  }
  long gen = check_token(ss, sb->id, tok);
  if (gen < 0) {
    respond_code(req, 401, "TOKEN_INVALID", "Token invalid");
    return true;
  }
  ds_value_t *gv = ds_value_get(v, "generation");
  ds_value_t *wv = ds_value_get(v, "wake_id");
  bool gen_ok = gv && gv->type == DS_V_NUMBER && strtol(gv->u.str.s, NULL, 10) == sb->generation;
  bool wake_ok = sb->wake_id[0] && wv && wv->type == DS_V_STRING && strcmp(wv->u.str.s, sb->wake_id) == 0;
  if (gen != sb->generation || !gen_ok || !wake_ok) {
    respond_code(req, 409, "FENCED", "Wake generation is stale");
    return true;
  }
  if (!apply_acks) return false;
  ds_value_t *acks = ds_value_get(v, "acks");
  if (!acks || acks->type != DS_V_ARRAY) return false;
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < acks->u.arr.len; i++) {
      ds_value_t *ak = acks->u.arr.items[i];
      ds_value_t *sv = ds_value_get(ak, "stream");
      if (!sv) sv = ds_value_get(ak, "path");
      ds_value_t *ov = ds_value_get(ak, "offset");
      char *path = sv && sv->type == DS_V_STRING ? norm_rel(sv->u.str.s, sv->u.str.len) : NULL;
      link_t *l = path ? link_find(sb, path) : NULL;
      const char *off = ov && ov->type == DS_V_STRING ? ov->u.str.s : NULL;
      const char *bad = NULL;
      char t[20];
      if (!l || !off) bad = "Ack references an unknown subscription stream";
      else if (strcmp(off, "-1") == 0) bad = "Ack offset must not be -1";
      else if (strcmp(off, l->acked) < 0) bad = "Ack offset regresses the committed cursor";
      else {
        tail_of(ss, path, t);
        if (strcmp(off, t) > 0) bad = "Ack offset is beyond stream tail";
      }
      if (pass == 0 && bad) {
        free(path);
        respond_code(req, 409, "INVALID_OFFSET", bad);
        return true;
      }
      if (pass == 1 && strcmp(l->acked, off) != 0) {
        snprintf(l->acked, sizeof l->acked, "%s", off);
        sb->dirty = true;
      }
      free(path);
    }
  }
  return false;
}

static void respond_ok_wake(ds_http_req_t *req, bool next) {
  const char *b = next ? "{\"ok\":true,\"next_wake\":true}" : "{\"ok\":true,\"next_wake\":false}";
  respond_json(req, 200, b, strlen(b));
}

void ds__subs_handle(ds_protocol_t *p, ds_http_req_t *req, const char *rest, size_t rest_len) {
  struct ds__subs_s *ss = p->subs;
  const char *m = req->method;
  if (rest_len == 10 && memcmp(rest, "/jwks.json", 10) == 0) {
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
      ds__respond_err(req, 405, "Method not allowed");
      return;
    }
    ds_arena_t a;
    ds_arena_init(&a);
    ds__hdrs_t h;
    ds__hdrs_init(&h, &a);
    ds__hdr(&h, "Content-Type", "application/jwk-set+json");
    ds__hdr(&h, "Cache-Control", "public, max-age=300");
    ds_buf_t b = DS_BUF_INIT;
    ds_buf_printf(&b,
                  "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\",\"kid\":\"%s\","
                  "\"use\":\"sig\",\"alg\":\"EdDSA\"}]}",
                  ss->x, ss->kid);
    ds_http_respond(req, 200, ds__hdrs_done(&h), b.data, b.len);
    ds_buf_free(&b);
    ds_arena_free(&a);
    return;
  }
  static const char sp[] = "/subscriptions/";
  if (rest_len <= sizeof sp - 1 || memcmp(rest, sp, sizeof sp - 1) != 0) {
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Durable Streams control route not found");
    return;
  }
  const char *r = rest + sizeof sp - 1;
  size_t rn = rest_len - (sizeof sp - 1);
  const char *slash = memchr(r, '/', rn);
  size_t idlen = slash ? (size_t)(slash - r) : rn;
  char *id = NULL, *action = NULL;
  size_t dl = 0;
  if (idlen == 0 || ds_http_pct_decode(r, idlen, 0, &id, &dl) != 0 || dl == 0) {
    free(id);
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Durable Streams control route not found");
    return;
  }
  const char *tail = slash ? slash + 1 : NULL;
  size_t tn = slash ? rn - idlen - 1 : 0;
  if (tail) action = ds_xstrndup(tail, tn);
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  char err[128];
  sub_t *sb = sub_find(ss, id);

  if (!action) {
    if (strcmp(m, "PUT") == 0) handle_put(ss, req, id);
    else if (strcmp(m, "GET") == 0) {
      if (!sb) respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
      else {
        ds_buf_t out = DS_BUF_INIT;
        serialize(ss, sb, &out);
        respond_json(req, 200, out.data, out.len);
        ds_buf_free(&out);
      }
    } else if (strcmp(m, "DELETE") == 0) {
      int rc = sb ? sub_unlink(ss, sb) : 0;
      if (rc != 0) { /* it would come back after a restart: keep it */
        respond_storage(req, rc);
      } else {
        if (sb) sub_destroy(ss, sb);
        respond_json(req, 204, NULL, 0);
      }
    } else ds__respond_err(req, 405, "Method not allowed");
    goto out;
  }
  bool is_streams = strcmp(action, "streams") == 0;
  bool is_stream = strncmp(action, "streams/", 8) == 0;
  bool known = is_streams || is_stream || strcmp(action, "callback") == 0 ||
               strcmp(action, "claim") == 0 || strcmp(action, "ack") == 0 ||
               strcmp(action, "release") == 0;
  if (!known) {
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Durable Streams control route not found");
    goto out;
  }
  if (is_stream) {
    if (strcmp(m, "DELETE") != 0) {
      ds__respond_err(req, 405, "Method not allowed");
      goto out;
    }
    if (!sb) {
      respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
      goto out;
    }
    char *dec = NULL;
    size_t dn = 0;
    if (ds_http_pct_decode(action + 8, strlen(action + 8), 0, &dec, &dn) == 0) {
      char *path = norm_rel(dec, dn);
      for (size_t i = 0; i < sb->nlinks; i++)
        if (strcmp(sb->links[i].path, path) == 0) {
          sb->links[i].explicit_ = false;
          if (!sb->links[i].glob) link_remove(sb, i);
          sb->dirty = true;
          break;
        }
      free(path);
    }
    free(dec);
    int rc = sub_flush(ss, sb);
    if (rc != 0) respond_storage(req, rc);
    else respond_json(req, 204, NULL, 0);
    goto out;
  }
  if (strcmp(m, "POST") != 0) {
    ds__respond_err(req, 405, "Method not allowed");
    goto out;
  }
  if (ds_json_parse(&a, req->body_len ? req->body : "{}", req->body_len ? req->body_len : 2, 32,
                    &v, err, sizeof err) != 0 || v->type != DS_V_OBJECT) {
    respond_code(req, 400, "INVALID_REQUEST", "Invalid JSON body");
    goto out;
  }
  if (is_streams) {
    ds_value_t *st = ds_value_get(v, "streams");
    bool ok = st && st->type == DS_V_ARRAY;
    for (size_t i = 0; ok && i < st->u.arr.len; i++)
      ok = st->u.arr.items[i]->type == DS_V_STRING && st->u.arr.items[i]->u.str.len > 0;
    if (!ok) {
      respond_code(req, 400, "INVALID_REQUEST", "streams must be a non-empty string array");
      goto out;
    }
    if (!sb) {
      respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
      goto out;
    }
    for (size_t i = 0; i < st->u.arr.len; i++) {
      char *path = norm_rel(st->u.arr.items[i]->u.str.s, st->u.arr.items[i]->u.str.len);
      char t[20];
      tail_of(ss, path, t);
      link_t *l = link_find(sb, path);
      if (!l || !l->explicit_) sb->dirty = true;
      link_add(sb, path, true, t);
      free(path);
    }
    int rc = sub_flush(ss, sb);
    if (rc != 0) respond_storage(req, rc);
    else respond_json(req, 204, NULL, 0);
    goto out;
  }
  if (strcmp(action, "claim") == 0) {
    ds_value_t *w = ds_value_get(v, "worker");
    if (!w || w->type != DS_V_STRING || w->u.str.len == 0) {
      respond_code(req, 400, "INVALID_REQUEST", "worker must be a non-empty string");
      goto out;
    }
    if (!sb) {
      respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
      goto out;
    }
    if (sb->webhook) {
      respond_code(req, 400, "INVALID_REQUEST", "Subscription is not pull-wake");
      goto out;
    }
    ds_buf_t b = DS_BUF_INIT;
    if (sb->holder) {
      ds_buf_puts(&b, "{\"error\":{\"code\":\"ALREADY_CLAIMED\",\"current_holder\":");
      ds_json_write_string(&b, sb->holder, strlen(sb->holder));
      ds_buf_printf(&b, ",\"generation\":%ld}}", sb->generation);
      respond_json(req, 409, b.data, b.len);
      ds_buf_free(&b);
      goto out;
    }
    const char *first = NULL;
    if (!has_pending(ss, sb, &first)) {
      respond_code(req, 409, "NO_PENDING_WORK", "Subscription has no pending work");
      goto out;
    }
    if (!sb->wake_id[0]) {
      char *t = ds_xstrdup(first);
      int wrc = create_wake(ss, sb, t, true);
      free(t);
      if (wrc != 0 && !sb->wake_id[0]) { /* fsync always: a wake that is not saved */
        respond_storage(req, wrc);
        goto out;
      }
    }
    sb->holder = ds_xstrndup(w->u.str.s, w->u.str.len);
    sb->dirty = true;
    int rc = sub_flush(ss, sb);
    if (rc != 0) { /* the claim is not durable: not granted (the wake stays open) */
      free(sb->holder);
      sb->holder = NULL;
      respond_storage(req, rc);
      goto out;
    }
    extend_lease(sb);
    ds_buf_t tok = DS_BUF_INIT;
    make_token(ss, sb->id, sb->generation, &tok);
    ds_buf_printf(&b, "{\"wake_id\":\"%s\",\"generation\":%ld,\"token\":", sb->wake_id,
                  sb->generation);
    ds_json_write_string(&b, tok.data, tok.len);
    ds_buf_puts(&b, ",\"streams\":");
    stream_infos(ss, sb, &b, true);
    ds_buf_printf(&b, ",\"lease_ttl_ms\":%ld}", sb->lease_ms);
    respond_json(req, 200, b.data, b.len);
    ds_buf_free(&tok);
    ds_buf_free(&b);
    goto out;
  }
  /* callback, ack, release */
  bool is_cb = strcmp(action, "callback") == 0;
  if (!bearer(req)) {
    respond_code(req, 401, "TOKEN_INVALID", "Missing or malformed Authorization header");
    goto out;
  }
  if (!sb) {
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
    goto out;
  }
  if (!is_cb && sb->webhook) {
    respond_code(req, 400, "INVALID_REQUEST", "Subscription is not pull-wake");
    goto out;
  }
  bool is_release = strcmp(action, "release") == 0;
  if (fence_and_ack(ss, req, sb, v, !is_release)) goto out;
  if (is_release) {
    clear_wake(sb);
    sb->dirty = true;
    next_wake_if_pending(ss, sb, true);
    int rc = sub_flush(ss, sb);
    if (rc != 0) respond_storage(req, rc);
    else respond_json(req, 204, NULL, 0);
    goto out;
  }
  extend_lease(sb);
  bool next = false;
  ds_value_t *done = ds_value_get(v, "done");
  if (done && done->type == DS_V_BOOL && done->u.b) {
    clear_wake(sb);
    sb->dirty = true;
    next = next_wake_if_pending(ss, sb, true);
  }
  int rc = sub_flush(ss, sb);
  if (rc != 0) respond_storage(req, rc);
  else respond_ok_wake(req, next);
out:
  ds_arena_free(&a);
  free(id);
  free(action);
}
