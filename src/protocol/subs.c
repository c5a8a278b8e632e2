/* subs.c - the reserved subscription APIs under <prefix>/__ds/ (webhooks and pull-wake).
 *
 * Provides: subscriptions (PUT/GET/DELETE __ds/subscriptions/:id, explicit stream
 * membership, glob patterns where `*` is one segment and `**` any number), wakes with a
 * generation and wake_id that fence stale callbacks (409 FENCED), leases that expire and
 * re-wake, webhook delivery signed with Ed25519 (`Webhook-Signature: t=<unix>,kid=<kid>,
 * ed25519=<base64url sig over "<t>.<body>">`, public key at __ds/jwks.json), synchronous
 * `{done:true}` auto-acks, retries with backoff, and pull-wake claims / acks / releases
 * whose wake events are appended to a JSON wake stream. Callback tokens are stateless
 * HMACs over (subscription, generation), so a token of an old generation is recognised and
 * fenced rather than rejected as unknown.
 * Scale: a glob subscription never enumerates the store. Creating one stores the pattern;
 * a stream becomes linked when its first record after that is stored (a streams observer
 * sees every record of both views): acked at that record's offset for a stream that
 * existed before (what was there is not news), at "-1" for a stream that starts there.
 * Links live in a hash with a list of those holding pending data, so an append, a wake
 * and an ack cost O(1) / O(pending), whatever the number of streams; wakes and claims list
 * the pending streams. After a restart every loaded link is compared with its stream's
 * tail in slices from the loop's idle phase (an acked offset beyond a tail after a power
 * loss is pulled back, with a warning); a subscription wakes once its slice is done.
 * Authorization (with bearer tokens): every stream a request names is checked with the
 * caller's grant as the URL this view gives it (core/access.h): a pattern needs read on
 * its literal leading segments, explicit and added streams read, the wake stream append
 * (403 FORBIDDEN, nothing created). A subscription may be read (GET) and changed (PUT
 * again, DELETE, membership, claim) only by a token that could create it: read on its
 * pattern and explicit streams, read (GET) or append on its wake stream; answers list only
 * streams the caller may read. Glob links stay inside the prefixes of the token that
 * created the subscription (kept with it). Callback, ack and release are authorized by the
 * callback token alone. Webhook URLs are checked at creation and at every delivery by the
 * egress policy (net/egress.h), and deliveries are pinned to the checked addresses.
 * Persistence (state directory, the fsync policy, damaged files): substore.c.
 * Must not: block the loop beyond small control-plane writes (fsyncs only under `always`),
 * enumerate every stream, or rewrite a subscription's links on the append path.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "protocol/pappend.h"
#include "protocol/psubs.h"
#include "store/json.h"

#define LEASE_DEFAULT_MS 30000
#define RETRY_MAX_MS 60000
#define SAVE_RETRY_MIN_MS 100
#define SAVE_RETRY_MAX_MS 10000
#define BG_SLICE_US 3000 /* background work per loop iteration */

typedef ds__sub_t sub_t;
typedef ds__link_t link_t;

typedef struct delivery_s delivery_t;
struct delivery_s {
  delivery_t *next, *prev; /* in ss->inflight: whook_close drops callbacks, shutdown frees */
  struct ds__subs_s *ss;
  char *sub_id;
  char wake_id[40];
};

/* A PUT whose webhook URL is being checked (its host resolved off the loop). */
typedef struct put_s put_t;
struct put_s {
  put_t *prev, *next;
  struct ds__subs_s *ss;
  ds_http_req_t *req;      /* NULL once the client went away */
  ds_egress_req_t *check;
  sub_t *sb;               /* the subscription to create, not yet listed */
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

static bool is_control_path(const char *path) {
  return strncmp(path, "__ds", 4) == 0 && (path[4] == 0 || path[4] == '/');
}

void ds__tail_of(struct ds__subs_s *ss, const char *path, char out[20]) {
  ds_stream_t *s = NULL;
  ds__pstream_t *st = ds__state_peek(ss->p, path, &s);
  ds_offset_format(st ? ds_stream_next_offset(s) : 0, out);
}

static link_t *link_find(sub_t *sb, const char *path) {
  return ds__links_find(&sb->links, path, ds__links_hash(path));
}

/* Pending or clean, from the stream's tail. */
static void link_recheck(struct ds__subs_s *ss, sub_t *sb, link_t *l) {
  char t[20];
  ds__tail_of(ss, l->path, t);
  ds__links_set_state(&sb->links, l, strcmp(t, l->acked) > 0 ? DS__L_PENDING : DS__L_CLEAN);
}

static bool has_pending(sub_t *sb, const char **first) {
  link_t *l = sb->links.lists[DS__L_PENDING];
  if (l && first) *first = l->path;
  return l != NULL;
}

static bool readable(struct ds__subs_s *ss, const ds_access_t *who, const char *path) {
  return ds_access_allows_stream(who, DS_SCOPE_READ, ss->p->prefix, path);
}

static void link_info(struct ds__subs_s *ss, const link_t *l, ds_buf_t *b, bool full, bool comma) {
  if (comma) ds_buf_putc(b, ',');
  ds_buf_puts(b, "{\"path\":");
  ds_json_write_string(b, l->path, strlen(l->path));
  ds_buf_printf(b, ",\"link_type\":\"%s\",\"acked_offset\":\"%s\"",
                l->explicit_ ? "explicit" : "glob", l->acked);
  if (full) {
    char t[20];
    ds__tail_of(ss, l->path, t);
    ds_buf_printf(b, ",\"tail_offset\":\"%s\",\"has_pending\":%s", t,
                  strcmp(t, l->acked) > 0 ? "true" : "false");
  }
  ds_buf_putc(b, '}');
}

/* full: the streams with pending data, with their tails (wakes, claims); else every
 * link. Only streams `who` may read are listed (NULL: all). */
static void stream_infos(struct ds__subs_s *ss, sub_t *sb, ds_buf_t *b, bool full,
                         const ds_access_t *who) {
  ds_buf_putc(b, '[');
  size_t k = 0;
  if (full) {
    for (link_t *l = sb->links.lists[DS__L_PENDING]; l; l = l->snext)
      if (readable(ss, who, l->path)) link_info(ss, l, b, true, k++ > 0);
  } else {
    for (size_t i = 0; i < sb->links.n; i++)
      if (readable(ss, who, sb->links.v[i]->path)) link_info(ss, sb->links.v[i], b, false, k++ > 0);
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

static void respond_storage(ds_http_req_t *req, int rc) {
  respond_code(req, rc == DS_ENOSPC ? 507 : 500, "STORAGE_ERROR",
               rc == DS_ENOSPC ? "Subscription state could not be saved: no space left on device"
                               : "Subscription state could not be saved");
}

static void respond_forbidden(struct ds__subs_s *ss, ds_http_req_t *req, int scope,
                              const char *path, const char *what) {
  ds_buf_t m = DS_BUF_INIT;
  ds__forbidden_msg(ss->p, scope, path, what, &m);
  respond_code(req, 403, "FORBIDDEN", ds_buf_cstr(&m));
  ds_buf_free(&m);
}

static void serialize(struct ds__subs_s *ss, sub_t *sb, ds_buf_t *b, const ds_access_t *who) {
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
  stream_infos(ss, sb, b, false, who);
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

/* ---- authorization ---- */

/* May the caller of req read (write: also change) the subscription? Only a caller that
 * could have created it: read on its pattern and explicit streams, and read (or, to
 * change it, append) on its wake stream. Answers 403 itself when not. */
static bool may_manage(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb, bool write) {
  if (!req->access) return true;
  const char *path = NULL, *what = NULL;
  int scope = DS_SCOPE_READ;
  if (sb->pattern && !ds__may_glob(ss->p, req, DS_SCOPE_READ, sb->pattern)) {
    path = sb->pattern;
    what = "the subscription's pattern";
  }
  for (size_t i = 0; !path && i < sb->links.n; i++)
    if (sb->links.v[i]->explicit_ && !ds__may(ss->p, req, DS_SCOPE_READ, sb->links.v[i]->path)) {
      path = sb->links.v[i]->path;
      what = "a stream of the subscription";
    }
  int ws = write ? DS_SCOPE_APPEND : DS_SCOPE_READ;
  if (!path && sb->wake_stream && !ds__may(ss->p, req, ws, sb->wake_stream)) {
    path = sb->wake_stream;
    what = "the subscription's wake stream";
    scope = ws;
  }
  if (!path) return true;
  ds_buf_t m = DS_BUF_INIT;
  ds_buf_printf(&m, "subscription %s is not this token's: ", sb->id);
  ds__forbidden_msg(ss->p, scope, path, what, &m);
  respond_code(req, 403, "FORBIDDEN", ds_buf_cstr(&m));
  ds_buf_free(&m);
  return false;
}

/* The prefixes of the caller's grant that can cover this view's URLs: the glob links of a
 * subscription it creates stay inside them. */
static void set_scope(struct ds__subs_s *ss, sub_t *sb, const ds_access_t *who) {
  if (!who) return;
  char root[80]; /* "/v1/stream/": a prefix matters if it covers part of what lies below */
  snprintf(root, sizeof root, "%s/", ss->p->prefix);
  size_t n = ds_access_count(who), rl = strlen(root);
  sb->scope = ds_xcalloc(n + 1, sizeof *sb->scope);
  if (!(ds_access_scopes(who) & DS_SCOPE_READ)) return; /* reads nothing: confined to nothing */
  for (size_t i = 0; i < n; i++) {
    const char *pr = ds_access_prefix(who, i);
    size_t l = strlen(pr);
    if (strncmp(pr, root, l < rl ? l : rl) == 0) sb->scope[sb->nscope++] = ds_xstrdup(pr);
  }
}

void ds__sub_confine(sub_t *sb) {
  ds_access_free(sb->confine);
  sb->confine = sb->scope ? ds_access_new(DS_SCOPE_READ, (const char *const *)sb->scope, sb->nscope)
                          : NULL;
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
 * save even during a failure episode (a request being answered, or the retry timer). A
 * subscription still being compared with its streams after a start-up wakes when that
 * is done. */
static bool next_wake_if_pending(struct ds__subs_s *ss, sub_t *sb, bool req) {
  const char *first = NULL;
  if (sb->scanning || !has_pending(sb, &first)) return false;
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
  ds__sub_flush_bg(sb->owner, sb);
}

static void save_retry_cb(uv_timer_t *t);

void ds__save_retry_arm(struct ds__subs_s *ss) {
  if (ss->stopping || !ss->save_timer || uv_is_active((uv_handle_t *)ss->save_timer)) return;
  uv_timer_start(ss->save_timer, save_retry_cb, ss->save_backoff_ms, 0);
}

/* Back-off retry: saves what is still dirty and opens the wakes that could not be saved;
 * the delay doubles while anything keeps failing and resets once all succeeded. */
static void save_retry_cb(uv_timer_t *t) {
  struct ds__subs_s *ss = t->data;
  bool failing = false;
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (sb->dirty && ds__sub_flush(ss, sb) != 0) {
      failing = true;
      continue;
    }
    if (sb->wake_deferred) {
      sb->wake_deferred = false;
      if (!sb->wake_id[0] && !sb->holder) next_wake_if_pending(ss, sb, true); /* try now */
      if (sb->wake_deferred || sb->dirty) failing = true;
    }
    if (sb->jr.rewrite && !sb->jr.compact) { /* a link journal to rewrite from memory */
      ds__bg_kick(ss);
      if (sb->jr.broken) failing = true;
    }
  }
  if (failing) {
    ss->save_backoff_ms *= 2;
    if (ss->save_backoff_ms > SAVE_RETRY_MAX_MS) ss->save_backoff_ms = SAVE_RETRY_MAX_MS;
    uv_timer_stop(ss->save_timer); /* a failed save above armed it with the old delay */
    ds__save_retry_arm(ss);
  } else {
    ss->save_backoff_ms = SAVE_RETRY_MIN_MS;
  }
}

static void extend_lease(sub_t *sb) {
  uv_timer_stop(&sb->lease);
  uv_timer_start(&sb->lease, lease_cb, (uint64_t)sb->lease_ms, 0);
}

sub_t *ds__sub_find(struct ds__subs_s *ss, const char *id) {
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
    ds__sub_touch(sb->owner, sb); /* a failed save is retried by the save timer */
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

/* A link acked up to `off` (never backwards); journaled, then pending re-decided. */
static int ack_link(struct ds__subs_s *ss, sub_t *sb, link_t *l, const char *off, bool req) {
  if (strcmp(off, l->acked) <= 0) return 0;
  snprintf(l->acked, sizeof l->acked, "%s", off);
  int rc = ds__journal_link(ss, sb, l, req);
  link_recheck(ss, sb, l);
  return rc;
}

static void delivered(void *ud, int status, const char *body, size_t len) {
  delivery_t *d = ud;
  inflight_unlink(d);
  sub_t *sb = ds__sub_find(d->ss, d->sub_id);
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
            if (l) ack_link(d->ss, sb, l, sb->snapshot[i].tail, false);
          }
          clear_wake(sb);
          sb->dirty = true;
          next_wake_if_pending(d->ss, sb, false);
        }
      }
      ds_arena_free(&a);
      ds__sub_flush_bg(d->ss, sb);
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
  stream_infos(ss, sb, &body, true, NULL); /* its own endpoint: every link was authorized */
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
    /* a wake event is a control message, news for no subscription: a glob over a wake
     * stream would wake itself for ever, or wake the others writing there in turn */
    ss->writing_wake = sb;
    int rc = ds__msgs_commit(&m, s);
    ss->writing_wake = NULL;
    if (rc != 0) ds_warn("subscriptions", "wake event append failed: %s", ds_strerror(rc));
  }
  ds__msgs_free(&m);
  ds_buf_free(&ev);
}

/* Opens a wake: new generation, wake_id and snapshot of the pending streams, saved before
 * anyone can see it (webhook POST, wake event). Under fsync `always` a wake that could not
 * be saved is not announced: the subscription is put back as it was and the save timer
 * opens the wake once saving works again (DS_E* returned). Under interval / never the save
 * is a rename without fsync, and a failed one is retried by the timer while the wake goes
 * out. */
static int create_wake(struct ds__subs_s *ss, sub_t *sb, const char *trigger, bool req) {
  long old_gen = sb->generation;
  char old_wake[sizeof sb->wake_id];
  memcpy(old_wake, sb->wake_id, sizeof old_wake);
  ds__snap_t *old_snap = sb->snapshot;
  size_t old_nsnap = sb->nsnapshot;
  bool old_dirty = sb->dirty;
  sb->generation++;
  unsigned char rnd[12];
  RAND_bytes(rnd, sizeof rnd);
  char *w = sb->wake_id;
  w += sprintf(w, "w_");
  for (size_t i = 0; i < sizeof rnd; i++) w += sprintf(w, "%02x", rnd[i]);
  size_t np = sb->links.counts[DS__L_PENDING];
  sb->snapshot = ds_xcalloc(np ? np : 1, sizeof *sb->snapshot);
  sb->nsnapshot = 0;
  for (link_t *l = sb->links.lists[DS__L_PENDING]; l; l = l->snext) {
    ds__snap_t *e = &sb->snapshot[sb->nsnapshot++];
    e->path = ds_xstrdup(l->path);
    ds__tail_of(ss, l->path, e->tail);
  }
  sb->dirty = true;
  int rc = req ? ds__sub_flush(ss, sb) : ds__sub_flush_bg(ss, sb);
  if (rc != 0 && ss->policy == DS_FSYNC_ALWAYS) {
    for (size_t i = 0; i < sb->nsnapshot; i++) free(sb->snapshot[i].path);
    free(sb->snapshot);
    sb->snapshot = old_snap;
    sb->nsnapshot = old_nsnap;
    sb->generation = old_gen;
    memcpy(sb->wake_id, old_wake, sizeof old_wake);
    sb->dirty = old_dirty;
    sb->wake_deferred = true;
    ds__save_retry_arm(ss);
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

/* Every stored record of both views. A record on a linked stream makes the link pending;
 * the first record on a stream a glob subscription matches (and may see) links it: acked
 * at that record (what the stream held before is not news), or "-1" when the record is
 * the stream's first (a stream that starts now: all of it is news, inherited fork data
 * included). Runs inside the append: only memory and one journal line per new link. */
static void on_record(void *ud, const ds_published_t *rec) {
  struct ds__subs_s *ss = ud;
  if (ss->writing_wake || ss->stopping || !ss->subs || is_control_path(rec->path)) return;
  uint32_t h = ds__links_hash(rec->path);
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (sb->dead) continue;
    link_t *l = ds__links_find(&sb->links, rec->path, h);
    if (l && l->glob) {
      if (l->state == DS__L_CLEAN) ds__links_set_state(&sb->links, l, DS__L_PENDING);
      continue;
    }
    bool matches = sb->pattern && ds__glob_match(sb->pattern, rec->path) &&
                   readable(ss, sb->confine, rec->path);
    if (!l && !matches) continue;
    if (!l) {
      char acked[20];
      if (rec->offset == ds_stream_first_offset(rec->stream)) snprintf(acked, sizeof acked, "-1");
      else ds_offset_format(rec->offset, acked);
      l = ds__links_add(&sb->links, rec->path, h, acked);
    }
    if (matches) {
      l->glob = true;
      ds__journal_link(ss, sb, l, false); /* a failure is logged; a rewrite is retried */
    }
    if (l->state == DS__L_CLEAN) ds__links_set_state(&sb->links, l, DS__L_PENDING);
  }
}

void ds__subs_on_append(ds_protocol_t *p, const char *path) {
  struct ds__subs_s *ss = p->subs;
  if (!ss || p->shutting_down) return;
  uint32_t h = ds__links_hash(path);
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (sb->dead || sb->scanning) continue;
    link_t *l = ds__links_find(&sb->links, path, h);
    /* a deferred wake (save failing) is opened by the save timer, not by every append */
    if (l && l->state == DS__L_PENDING && !sb->wake_deferred && !sb->wake_id[0] && !sb->holder)
      create_wake(ss, sb, path, false);
    if (sb->dirty) ds__sub_flush_bg(ss, sb);
  }
}

void ds__subs_on_delete(ds_protocol_t *p, const char *path) {
  struct ds__subs_s *ss = p->subs;
  if (!ss) return;
  uint32_t h = ds__links_hash(path);
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    link_t *l = ds__links_find(&sb->links, path, h);
    if (!l) continue;
    ds__links_remove(&sb->links, l);
    ds__journal_unlink(ss, sb, path, false); /* a failure is logged; a rewrite is retried */
  }
}

/* ---- background work: the start-up comparison, journal compaction ---- */

static void resume_sub(struct ds__subs_s *ss, sub_t *sb) {
  sb->scanning = false;
  if (sb->wake_id[0]) {
    if (sb->webhook) deliver(ss, sb); /* the open wake again: at least once */
  } else {
    next_wake_if_pending(ss, sb, false);
  }
  ds__sub_flush_bg(ss, sb);
}

/* After a power loss the stream logs (fsynced on their own schedule) can be behind the
 * subscription's files: an acked offset or wake snapshot beyond the recovered tail would
 * suppress wakes while new events reuse those offsets. Such offsets are pulled back to the
 * tail, with a warning. */
static void clamp(struct ds__subs_s *ss, sub_t *sb, const char *what, const char *path,
                  char *off, const char *tail) {
  ds_warn("subscriptions",
          "%s: subscription %s: %s %s of %s is beyond the stream's tail %s "
          "(stream data lost in a crash?); using the tail",
          sb->file ? sb->file : sb->id, sb->id, what, off, path, tail);
  snprintf(off, 20, "%s", tail);
}

/* Compares sb's loaded snapshot and links with their streams until the deadline; true
 * once the subscription is done. */
static bool scan_sub(struct ds__subs_s *ss, sub_t *sb, uint64_t deadline_ns) {
  unsigned n = 0;
  while (sb->scan_snap < sb->nsnapshot) {
    ds__snap_t *e = &sb->snapshot[sb->scan_snap++];
    char t[20];
    ds__tail_of(ss, e->path, t);
    if (strcmp(e->tail, t) > 0) {
      clamp(ss, sb, "wake snapshot offset", e->path, e->tail, t);
      sb->dirty = true;
    }
    if ((++n & 63) == 0 && uv_hrtime() > deadline_ns) return false;
  }
  link_t *l;
  while ((l = sb->links.lists[DS__L_UNKNOWN])) {
    char t[20];
    ds__tail_of(ss, l->path, t);
    if (strcmp(l->acked, t) > 0) {
      clamp(ss, sb, "acked offset", l->path, l->acked, t);
      ds__journal_link(ss, sb, l, false);
    }
    ds__links_set_state(&sb->links, l, strcmp(t, l->acked) > 0 ? DS__L_PENDING : DS__L_CLEAN);
    if ((++n & 63) == 0 && uv_hrtime() > deadline_ns) return false;
  }
  return true;
}

static bool scan_step(struct ds__subs_s *ss, uint64_t deadline_ns) {
  for (sub_t *sb = ss->subs; sb; sb = sb->next) {
    if (!sb->scanning || sb->dead) continue;
    if (!scan_sub(ss, sb, deadline_ns)) return true;
    resume_sub(ss, sb);
    if (uv_hrtime() > deadline_ns) return true; /* the next one in the next slice */
  }
  return false;
}

/* A request that needs the whole truth now (a claim) finishes the comparison first. */
static void scan_now(struct ds__subs_s *ss, sub_t *sb) {
  if (!sb->scanning) return;
  scan_sub(ss, sb, UINT64_MAX);
  resume_sub(ss, sb);
}

static void bg_cb(uv_idle_t *h) {
  struct ds__subs_s *ss = h->data;
  uint64_t deadline = uv_hrtime() + (uint64_t)BG_SLICE_US * 1000;
  bool more = scan_step(ss, deadline);
  uint64_t now = uv_hrtime();
  uint64_t left = now < deadline ? (deadline - now) / 1000 : 0;
  more = ds__journal_work(ss, left ? left : 200) || more;
  if (!more) {
    uv_idle_stop(h);
    ss->bg_on = false;
  }
}

void ds__bg_kick(struct ds__subs_s *ss) {
  if (ss->bg_on || ss->stopping || !ss->bg) return;
  ss->bg_on = true;
  uv_idle_start(ss->bg, bg_cb);
}

/* ---- lifecycle ---- */

static void sub_arm(struct ds__subs_s *ss, sub_t *sb) {
  uv_timer_init(ss->p->loop, &sb->lease);
  uv_timer_init(ss->p->loop, &sb->retry);
  sb->lease.data = sb->retry.data = sb;
  sb->handles_open = 2;
}

static void free_handle(uv_handle_t *h) { free(h); }

static void sub_handle_closed(uv_handle_t *h) {
  sub_t *sb = h->data;
  if (--sb->handles_open > 0) return;
  ds__sub_free_mem(sb);
}

static void sub_unlist(struct ds__subs_s *ss, sub_t *sb) {
  for (sub_t **pp = &ss->subs; *pp; pp = &(*pp)->next)
    if (*pp == sb) {
      *pp = sb->next;
      break;
    }
}

static void sub_destroy(struct ds__subs_s *ss, sub_t *sb) {
  sub_unlist(ss, sb);
  ds__journal_forget(ss, sb);
  sb->dead = true;
  uv_timer_stop(&sb->lease);
  uv_timer_stop(&sb->retry);
  uv_close((uv_handle_t *)&sb->lease, sub_handle_closed);
  uv_close((uv_handle_t *)&sb->retry, sub_handle_closed);
}

struct ds__subs_s *ds__subs_new(ds_protocol_t *p) {
  struct ds__subs_s *ss = ds_xcalloc(1, sizeof *ss);
  ss->p = p;
  char err[256];
  ss->egress = ds_egress_new(p->opts.webhook_allow_networks, p->opts.nwebhook_allow_networks,
                             err, sizeof err);
  if (!ss->egress) { /* the configuration was checked at start-up: allow nothing extra */
    ds_error("subscriptions", "webhook_allow_networks: %s", err);
    ss->egress = ds_egress_new(NULL, 0, err, sizeof err);
  }
  ss->hooks = ds__whook_new(p->loop, ss->egress);
  ss->policy = p->opts.fsync;
  ss->save_backoff_ms = SAVE_RETRY_MIN_MS;
  ss->save_timer = ds_xmalloc(sizeof *ss->save_timer);
  uv_timer_init(p->loop, ss->save_timer);
  ss->save_timer->data = ss;
  ss->bg = ds_xmalloc(sizeof *ss->bg);
  uv_idle_init(p->loop, ss->bg);
  ss->bg->data = ss;
  if (p->opts.state_dir) {
    ss->dir = ds_xstrdup(p->opts.state_dir);
    int rc = ds_file_mkdir_p(ss->dir, 0700);
    if (rc != 0)
      ds_error("subscriptions", "%s: cannot create the subscription directory: %s", ss->dir,
               ds_strerror(rc));
    ds__syncer_start(ss);
  }
  ds__keys_init(ss);
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
    size_t n = ds__subs_load_all(ss);
    size_t links = 0;
    for (sub_t *sb = ss->subs; sb; sb = sb->next) {
      sub_arm(ss, sb);
      links += sb->links.n;
      /* a lease restarts in full: the holder or webhook gets its whole lease again */
      if (sb->wake_id[0] && (sb->webhook || sb->holder)) extend_lease(sb);
    }
    ds_info("subscriptions", "%zu subscription%s loaded from %s (%zu stream link%s)", n,
            n == 1 ? "" : "s", ss->dir, links, links == 1 ? "" : "s");
    if (n) ds__bg_kick(ss); /* compare the links with their streams, then wake */
  }
  ds_streams_add_observer(p->streams, on_record, ss);
  return ss;
}

static void put_free(put_t *pt);

void ds__subs_shutdown(struct ds__subs_s *ss) {
  if (ss->stopping) return;
  ds_streams_remove_observer(ss->p->streams, on_record, ss);
  while (ss->puts) { /* their clients get a clear answer; the subscription is not made */
    put_t *pt = ss->puts;
    if (pt->check) ds_egress_cancel(pt->check);
    pt->check = NULL;
    if (pt->req) respond_code(pt->req, 503, "UNAVAILABLE", "Server shutting down");
    put_free(pt);
  }
  for (sub_t *sb = ss->subs; sb; sb = sb->next) ds__sub_flush(ss, sb); /* retry failed saves */
  ss->stopping = true;
  ds__journal_shutdown(ss);
  if (ss->bg) {
    uv_idle_stop(ss->bg);
    uv_close((uv_handle_t *)ss->bg, free_handle);
    ss->bg = NULL;
  }
  if (ss->save_timer) {
    uv_close((uv_handle_t *)ss->save_timer, free_handle);
    ss->save_timer = NULL;
  }
  ds__syncer_stop(ss); /* what is pending is fsynced now; a running round finishes alone */
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
  if (!ss->stopping) ds__subs_shutdown(ss);
  ds__syncer_free(ss);
  ds_egress_free(ss->egress);
  EVP_PKEY_free(ss->key);
  for (size_t i = 0; i < ss->nblocked; i++) free(ss->blocked[i]);
  free(ss->blocked);
  free(ss->dir);
  free(ss);
}

/* ---- creating ---- */

static int cmp_str(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

static void put_unlist(put_t *pt) {
  if (pt->prev) pt->prev->next = pt->next;
  else pt->ss->puts = pt->next;
  if (pt->next) pt->next->prev = pt->prev;
}

static void put_free(put_t *pt) {
  put_unlist(pt);
  if (pt->sb) ds__sub_free_mem(pt->sb);
  free(pt);
}

static void put_req_gone(void *ud) {
  put_t *pt = ud;
  pt->req = NULL;
}

/* A subscription with this id exists: the same configuration confirms it (200), another
 * is a conflict (409). */
static void confirm_existing(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb,
                             const char *config) {
  if (!may_manage(ss, req, sb, true)) return;
  if (strcmp(sb->config, config) != 0) {
    respond_code(req, 409, "SUBSCRIPTION_ALREADY_EXISTS",
                 "Subscription already exists with different configuration");
    return;
  }
  ds_buf_t out = DS_BUF_INIT;
  serialize(ss, sb, &out, req->access);
  respond_json(req, 200, out.data, out.len);
  ds_buf_free(&out);
}

/* Lists a new subscription (built by handle_put, not yet listed) and saves it; answers. */
static void create_now(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb) {
  sub_t *old = ds__sub_find(ss, sb->id);
  if (old) { /* made by another request while this one checked its webhook URL */
    confirm_existing(ss, req, old, sb->config);
    ds__sub_free_mem(sb);
    return;
  }
  if (ss->dir) {
    ds_buf_t f = DS_BUF_INIT;
    ds__sub_file(ss, sb->id, ".json", &f);
    sb->file = ds_buf_detach(&f, NULL);
  }
  sub_arm(ss, sb);
  sb->next = ss->subs;
  ss->subs = sb;
  int rc = ds__sub_create_files(ss, sb);
  if (rc != 0) { /* not durable: not created */
    sub_destroy(ss, sb);
    respond_storage(req, rc);
    return;
  }
  ds_buf_t out = DS_BUF_INIT;
  serialize(ss, sb, &out, req->access);
  respond_json(req, 201, out.data, out.len);
  ds_buf_free(&out);
}

static void on_url_checked(void *ud, bool ok, const char *why, const ds_egress_dest_t *dest) {
  put_t *pt = ud;
  pt->check = NULL;
  ds_http_req_t *req = pt->req;
  if (req) {
    ds_http_req_on_close(req, NULL, NULL);
    if (!ok) {
      ds_buf_t m = DS_BUF_INIT;
      ds_buf_printf(&m, "webhook.url rejected: %s", why);
      respond_code(req, 400, "WEBHOOK_URL_REJECTED", ds_buf_cstr(&m));
      ds_buf_free(&m);
    } else {
      sub_t *sb = pt->sb;
      pt->sb = NULL;
      create_now(pt->ss, req, sb);
    }
  }
  put_free(pt);
}

/* A stream path named in a subscription request must be a valid stream path. */
static char *req_path(ds_http_req_t *req, const ds_value_t *v, const char *what, bool glob) {
  char err[128] = "";
  char *p = strlen(v->u.str.s) == v->u.str.len ? norm_rel(v->u.str.s, v->u.str.len) : NULL;
  if (!p || !*p || ds_path_validate(p, strlen(p), err, sizeof err) != 0 ||
      (!glob && is_control_path(p))) {
    ds_buf_t m = DS_BUF_INIT;
    ds_buf_printf(&m, "%s is not a valid stream path%s%s", what, err[0] ? ": " : "", err);
    respond_code(req, 400, "INVALID_REQUEST", ds_buf_cstr(&m));
    ds_buf_free(&m);
    free(p);
    return NULL;
  }
  return p;
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
  if (pv && pv->type == DS_V_STRING && pv->u.str.len && !(pattern = req_path(req, pv, "pattern", true)))
    goto out;
  ds_value_t *sv = ds_value_get(v, "streams");
  if (sv && sv->type == DS_V_ARRAY) {
    streams = ds_xcalloc(sv->u.arr.len + 1, sizeof *streams);
    for (size_t i = 0; i < sv->u.arr.len; i++) {
      ds_value_t *it = sv->u.arr.items[i];
      if (it->type != DS_V_STRING) {
        respond_code(req, 400, "INVALID_REQUEST", "streams must contain only strings");
        goto out;
      }
      if (!(streams[nstreams] = req_path(req, it, "a stream in streams", false))) goto out;
      nstreams++;
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
    if (lv->type != DS_V_NUMBER || (end && *end) || lease < DS__LEASE_MIN_MS ||
        lease > DS__LEASE_MAX_MS) {
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
  if (wsv && wsv->type == DS_V_STRING && wsv->u.str.len &&
      !(wake = req_path(req, wsv, "wake_stream", false)))
    goto out;
  if (!webhook && !wake) {
    respond_code(req, 400, "INVALID_REQUEST", "pull-wake subscriptions require wake_stream");
    goto out;
  }
  ds_value_t *dv = ds_value_get(v, "description");
  if (dv && dv->type == DS_V_STRING) desc = ds_xstrndup(dv->u.str.s, dv->u.str.len);

  /* every stream the request names, before anything is looked up or created */
  if (pattern && !ds__may_glob(ss->p, req, DS_SCOPE_READ, pattern)) {
    respond_forbidden(ss, req, DS_SCOPE_READ, pattern, "pattern");
    goto out;
  }
  for (size_t i = 0; i < nstreams; i++)
    if (!ds__may(ss->p, req, DS_SCOPE_READ, streams[i])) {
      respond_forbidden(ss, req, DS_SCOPE_READ, streams[i], "streams");
      goto out;
    }
  if (wake && !ds__may(ss->p, req, DS_SCOPE_APPEND, wake)) {
    respond_forbidden(ss, req, DS_SCOPE_APPEND, wake, "wake_stream");
    goto out;
  }

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

  sub_t *old = ds__sub_find(ss, id);
  if (old) {
    confirm_existing(ss, req, old, ds_buf_cstr(&cfg));
    goto out;
  }
  sub_t *sb = ds_xcalloc(1, sizeof *sb);
  sb->owner = ss;
  ds__links_init(&sb->links);
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
  set_scope(ss, sb, req->access);
  ds__sub_confine(sb);
  for (size_t i = 0; i < nstreams; i++) {
    char t[20];
    ds__tail_of(ss, streams[i], t);
    link_t *l = ds__links_add(&sb->links, streams[i], ds__links_hash(streams[i]), t);
    l->explicit_ = true;
  }
  if (!webhook) {
    create_now(ss, req, sb);
    goto out;
  }
  /* the webhook URL: parsed as libcurl will, resolved off the loop, every address checked */
  put_t *pt = ds_xcalloc(1, sizeof *pt);
  pt->ss = ss;
  pt->req = req;
  pt->sb = sb;
  pt->next = ss->puts;
  if (pt->next) pt->next->prev = pt;
  ss->puts = pt;
  char why[256];
  if (ds_egress_check_url(ss->p->loop, ss->egress, sb->url, on_url_checked, pt, &pt->check, why,
                          sizeof why) != 0) {
    ds_buf_t m = DS_BUF_INIT;
    ds_buf_printf(&m, "webhook.url rejected: %s", why);
    respond_code(req, 400, "WEBHOOK_URL_REJECTED", ds_buf_cstr(&m));
    ds_buf_free(&m);
    put_free(pt);
    goto out;
  }
  ds_http_req_on_close(req, put_req_gone, pt);
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

/* ---- the other requests ---- */

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
        ds__tail_of(ss, path, t);
        if (strcmp(off, t) > 0) bad = "Ack offset is beyond stream tail";
      }
      if (pass == 0 && bad) {
        free(path);
        respond_code(req, 409, "INVALID_OFFSET", bad);
        return true;
      }
      if (pass == 1) ack_link(ss, sb, l, off, true);
      free(path);
    }
  }
  return false;
}

static void respond_ok_wake(ds_http_req_t *req, bool next) {
  const char *b = next ? "{\"ok\":true,\"next_wake\":true}" : "{\"ok\":true,\"next_wake\":false}";
  respond_json(req, 200, b, strlen(b));
}

/* A journal append a request waits for: its failure answers 500/507 (the change is kept in
 * memory and saved by the rewrite that the failure scheduled). */
static int links_saved(struct ds__subs_s *ss, sub_t *sb, int rc) {
  if (rc != 0) return rc;
  return sb->jr.broken ? DS_EIO : 0;
}

static void handle_streams_add(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb,
                               ds_value_t *v) {
  ds_value_t *st = ds_value_get(v, "streams");
  bool ok = st && st->type == DS_V_ARRAY;
  for (size_t i = 0; ok && i < st->u.arr.len; i++)
    ok = st->u.arr.items[i]->type == DS_V_STRING && st->u.arr.items[i]->u.str.len > 0;
  if (!ok) {
    respond_code(req, 400, "INVALID_REQUEST", "streams must be a non-empty string array");
    return;
  }
  if (!sb) {
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
    return;
  }
  if (!may_manage(ss, req, sb, true)) return;
  char **paths = ds_xcalloc(st->u.arr.len + 1, sizeof *paths);
  size_t n = 0;
  for (; n < st->u.arr.len; n++) {
    if (!(paths[n] = req_path(req, st->u.arr.items[n], "a stream in streams", false))) goto out;
    if (!ds__may(ss->p, req, DS_SCOPE_READ, paths[n])) {
      respond_forbidden(ss, req, DS_SCOPE_READ, paths[n], "streams");
      n++;
      goto out;
    }
  }
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t h = ds__links_hash(paths[i]);
    link_t *l = ds__links_find(&sb->links, paths[i], h);
    if (l && l->explicit_) continue;
    if (!l) {
      char t[20];
      ds__tail_of(ss, paths[i], t);
      l = ds__links_add(&sb->links, paths[i], h, t);
    }
    l->explicit_ = true;
    int r = ds__journal_link(ss, sb, l, true);
    if (r && !rc) rc = r;
  }
  rc = links_saved(ss, sb, rc);
  if (rc != 0) respond_storage(req, rc);
  else respond_json(req, 204, NULL, 0);
out:
  for (size_t i = 0; i < n; i++) free(paths[i]);
  free(paths);
}

static void handle_stream_remove(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb,
                                 const char *enc) {
  if (!sb) {
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
    return;
  }
  if (!may_manage(ss, req, sb, true)) return;
  char *dec = NULL;
  size_t dn = 0;
  int rc = 0;
  if (ds_http_pct_decode(enc, strlen(enc), 0, &dec, &dn) == 0) {
    char *path = norm_rel(dec, dn);
    if (!ds__may(ss->p, req, DS_SCOPE_READ, path)) {
      respond_forbidden(ss, req, DS_SCOPE_READ, path, "membership link");
      free(path);
      free(dec);
      return;
    }
    link_t *l = link_find(sb, path);
    if (l && l->explicit_) {
      l->explicit_ = false;
      if (!l->glob) {
        ds__links_remove(&sb->links, l);
        rc = ds__journal_unlink(ss, sb, path, true);
      } else {
        rc = ds__journal_link(ss, sb, l, true);
      }
    }
    free(path);
  }
  free(dec);
  rc = links_saved(ss, sb, rc);
  if (rc != 0) respond_storage(req, rc);
  else respond_json(req, 204, NULL, 0);
}

static void handle_claim(struct ds__subs_s *ss, ds_http_req_t *req, sub_t *sb, ds_value_t *v) {
  ds_value_t *w = ds_value_get(v, "worker");
  if (!w || w->type != DS_V_STRING || w->u.str.len == 0) {
    respond_code(req, 400, "INVALID_REQUEST", "worker must be a non-empty string");
    return;
  }
  if (!sb) {
    respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
    return;
  }
  if (!may_manage(ss, req, sb, true)) return;
  if (sb->webhook) {
    respond_code(req, 400, "INVALID_REQUEST", "Subscription is not pull-wake");
    return;
  }
  ds_buf_t b = DS_BUF_INIT;
  if (sb->holder) {
    ds_buf_puts(&b, "{\"error\":{\"code\":\"ALREADY_CLAIMED\",\"current_holder\":");
    ds_json_write_string(&b, sb->holder, strlen(sb->holder));
    ds_buf_printf(&b, ",\"generation\":%ld}}", sb->generation);
    respond_json(req, 409, b.data, b.len);
    ds_buf_free(&b);
    return;
  }
  scan_now(ss, sb);
  const char *first = NULL;
  if (!has_pending(sb, &first)) {
    respond_code(req, 409, "NO_PENDING_WORK", "Subscription has no pending work");
    return;
  }
  if (!sb->wake_id[0]) {
    char *t = ds_xstrdup(first);
    int wrc = create_wake(ss, sb, t, true);
    free(t);
    if (wrc != 0 && !sb->wake_id[0]) { /* fsync always: a wake that is not saved */
      respond_storage(req, wrc);
      return;
    }
  }
  sb->holder = ds_xstrndup(w->u.str.s, w->u.str.len);
  sb->dirty = true;
  int rc = ds__sub_flush(ss, sb);
  if (rc != 0) { /* the claim is not durable: not granted (the wake stays open) */
    free(sb->holder);
    sb->holder = NULL;
    respond_storage(req, rc);
    return;
  }
  extend_lease(sb);
  ds_buf_t tok = DS_BUF_INIT;
  make_token(ss, sb->id, sb->generation, &tok);
  ds_buf_printf(&b, "{\"wake_id\":\"%s\",\"generation\":%ld,\"token\":", sb->wake_id,
                sb->generation);
  ds_json_write_string(&b, tok.data, tok.len);
  ds_buf_puts(&b, ",\"streams\":");
  stream_infos(ss, sb, &b, true, req->access);
  ds_buf_printf(&b, ",\"lease_ttl_ms\":%ld}", sb->lease_ms);
  respond_json(req, 200, b.data, b.len);
  ds_buf_free(&tok);
  ds_buf_free(&b);
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
  if (idlen == 0 || ds_http_pct_decode(r, idlen, 0, &id, &dl) != 0 || dl == 0 ||
      strlen(id) != dl) {
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
  sub_t *sb = ds__sub_find(ss, id);

  if (!action) {
    if (strcmp(m, "PUT") == 0) handle_put(ss, req, id);
    else if (strcmp(m, "GET") == 0) {
      if (!sb) respond_code(req, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found");
      else if (may_manage(ss, req, sb, false)) {
        ds_buf_t out = DS_BUF_INIT;
        serialize(ss, sb, &out, req->access);
        respond_json(req, 200, out.data, out.len);
        ds_buf_free(&out);
      }
    } else if (strcmp(m, "DELETE") == 0) {
      if (sb && !may_manage(ss, req, sb, true)) goto out;
      int rc = sb ? ds__sub_unlink(ss, sb) : 0;
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
    if (strcmp(m, "DELETE") != 0) ds__respond_err(req, 405, "Method not allowed");
    else handle_stream_remove(ss, req, sb, action + 8);
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
    handle_streams_add(ss, req, sb, v);
    goto out;
  }
  if (strcmp(action, "claim") == 0) {
    handle_claim(ss, req, sb, v);
    goto out;
  }
  /* callback, ack, release: the callback token is the credential */
  bool is_cb = strcmp(action, "callback") == 0;
  if (!bearer(req)) {
    respond_code(req, 401, "TOKEN_INVALID", "Missing or malformed Authorization header");
    goto out;
  }
  /* with bearer tokens on, these routes skip them: a caller without a valid callback
   * token learns nothing, not even whether the subscription exists */
  if (req->access && check_token(ss, id, bearer(req)) < 0) {
    respond_code(req, 401, "TOKEN_INVALID", "Token invalid");
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
    int rc = ds__sub_flush(ss, sb);
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
  int rc = ds__sub_flush(ss, sb);
  if (rc == 0) rc = links_saved(ss, sb, 0);
  if (rc != 0) respond_storage(req, rc);
  else respond_ok_wake(req, next);
out:
  ds_arena_free(&a);
  free(id);
  free(action);
}
