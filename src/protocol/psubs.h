/* psubs.h - internals shared by the subscription units of src/protocol.
 *
 * Provides: the in-memory model of subscriptions (ds__sub_t) and of the set of streams each
 * one is linked to (ds__links_t: hash index, dense array, and lists of the links with
 * pending data and of those not yet checked since start-up), and the entry points of the
 * three units: subs.c (requests, wakes, deliveries, stream events), sublinks.c (the link
 * set) and substore.c (files: the subscription file, the append-only link journal and its
 * compaction off the loop, the fsync policy, loading, signing keys).
 * Must not: be included outside the subscription units.
 */
#ifndef DS_PROTOCOL_PSUBS_H
#define DS_PROTOCOL_PSUBS_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/access.h"
#include "core/buf.h"
#include "net/egress.h"
#include "protocol/pinternal.h"
#include "protocol/pwhook.h"
#include "store/store.h"

#define DS__LEASE_MIN_MS 1000
#define DS__LEASE_MAX_MS 600000

/* ---- the link set (sublinks.c) ---- */

/* A link's pending state: CLEAN (acked up to the stream's tail), PENDING (data beyond the
 * acked offset: part of the next wake), UNKNOWN (loaded from disk, not yet compared with
 * its stream's tail: the start-up scan decides). */
enum { DS__L_CLEAN = 0, DS__L_PENDING, DS__L_UNKNOWN };

typedef struct ds__link_s ds__link_t;
struct ds__link_s {
  char *path;
  uint32_t hash;
  uint32_t idx;               /* position in the set's dense array */
  ds__link_t *hnext;          /* hash chain */
  ds__link_t *sprev, *snext;  /* list of its state (pending / unknown); unused when clean */
  uint8_t state;
  bool explicit_, glob;
  char acked[20];             /* "-1" or a 16-digit offset: data before it is processed */
};

typedef struct ds__links_s {
  ds__link_t **v;             /* dense array (order changes on removal) */
  size_t n, cap;
  ds__link_t **buckets;
  size_t nbuckets;
  ds__link_t *lists[3];       /* heads of the PENDING and UNKNOWN lists (CLEAN unused) */
  size_t counts[3];
  /* While a compaction encodes the array in slices, a removal that moves a link from at
   * or beyond `guard` to before it is reported, so the encoder does not miss it. */
  size_t guard;               /* SIZE_MAX: no compaction running */
  void (*moved)(void *ud, ds__link_t *l);
  void *moved_ud;
} ds__links_t;

uint32_t ds__links_hash(const char *path);
void ds__links_init(ds__links_t *s);
void ds__links_free(ds__links_t *s);
ds__link_t *ds__links_find(const ds__links_t *s, const char *path, uint32_t hash);
/** The link for path (created CLEAN with `acked` when new). */
ds__link_t *ds__links_add(ds__links_t *s, const char *path, uint32_t hash, const char *acked);
/** Removes and frees the link. */
void ds__links_remove(ds__links_t *s, ds__link_t *l);
void ds__links_set_state(ds__links_t *s, ds__link_t *l, int state);

/* ---- subscriptions ---- */

typedef struct ds__snap_s {
  char *path;
  char tail[20]; /* the stream's tail when the wake opened */
} ds__snap_t;

typedef struct ds__compact_s ds__compact_t;

/* The append-only link journal of one subscription (substore.c). */
typedef struct ds__journal_s {
  size_t lines;          /* entries in the file: compaction starts when they far exceed links */
  bool broken;           /* an append failed: nothing is appended until a rewrite succeeds */
  bool rewrite;          /* rewrite it from memory at the next chance (broken, migrated...) */
  bool failed_logged;
  ds__compact_t *compact; /* rewrite in progress */
} ds__journal_t;

typedef struct ds__sub_s ds__sub_t;
struct ds__sub_s {
  ds__sub_t *next;
  struct ds__subs_s *owner;
  char *id;
  bool webhook; /* else pull-wake */
  char *pattern, *url, *wake_stream, *description, *config;
  char *base_url;     /* http://host of the creating request, for callback/jwks URLs */
  char **scope;       /* URL prefixes of the creating token: glob links stay inside them */
  size_t nscope;      /* 0 with scope NULL: unconfined (created without authorization) */
  ds_access_t *confine; /* grant built from scope (NULL: unconfined) */
  long lease_ms;
  char created_at[32];
  bool failed;
  ds__links_t links;
  long generation;
  char wake_id[40];   /* "" when no wake */
  ds__snap_t *snapshot; /* the pending links and their tails when the wake opened */
  size_t nsnapshot;
  char *holder;
  uv_timer_t lease, retry;
  int retry_count;
  int handles_open;
  bool dead;
  bool dirty;         /* the subscription file's state changed and is not yet on disk */
  bool save_failed;   /* in a failure episode: logged once, retried by ss->save_timer */
  int save_rc;
  bool wake_deferred; /* a wake could not be saved (fsync always): made by the timer */
  bool scanning;      /* links not yet compared with their streams since start-up */
  size_t scan_snap;   /* snapshot entries already compared */
  char *file;         /* its subscription file, for messages */
  ds__journal_t jr;
};

/* Interval policy: files written on the loop without fsync are fsynced (with the
 * directory) from the threadpool at most once per interval (substore.c). */
typedef struct ds__syncer_s ds__syncer_t;

struct ds__subs_s {
  ds_protocol_t *p;
  ds__sub_t *subs;
  ds__whook_t *hooks;
  ds_egress_t *egress;  /* where webhooks may go */
  EVP_PKEY *key;
  char x[64];           /* base64url public key */
  char kid[64];
  unsigned char token_key[32];
  char *dir;            /* state directory; NULL keeps subscriptions in memory only */
  char **blocked;       /* files that were damaged and could not be moved aside */
  size_t nblocked;
  struct delivery_s *inflight; /* webhook POSTs awaiting their completion callback */
  struct put_s *puts;   /* PUTs waiting for their webhook URL check */
  ds_fsync_t policy;
  ds__syncer_t *sy;
  uv_timer_t *save_timer; /* back-off retry of failed saves and deferred wakes */
  uint64_t save_backoff_ms;
  uv_idle_t *bg;        /* background slices: start-up scan, journal compaction */
  ds__compact_t *compacts; /* journal rewrites in progress */
  bool bg_on;
  ds__sub_t *writing_wake; /* appending a wake event (of this subscription): no
                              subscription takes its records as news */
  bool stopping;
};

/* substore.c */
/** "<dir>/s_<id><ext>" for plain ids, else "<dir>/h_<sha256 hex><ext>". */
void ds__sub_file(struct ds__subs_s *ss, const char *id, const char *ext, ds_buf_t *out);
/** Writes the subscription file if its state changed (see subs.c for the policy). */
int ds__sub_flush(struct ds__subs_s *ss, ds__sub_t *sb);
/** Same from background paths: during a failure episode leaves it to the retry timer. */
int ds__sub_flush_bg(struct ds__subs_s *ss, ds__sub_t *sb);
int ds__sub_touch(struct ds__subs_s *ss, ds__sub_t *sb);
/** Removes the subscription's files (DELETE). 0 or DS_E* (logged). */
int ds__sub_unlink(struct ds__subs_s *ss, ds__sub_t *sb);
/** Writes a new subscription's files: the journal of its links, then the subscription
 *  file, durably per the policy. 0 or DS_E*. */
int ds__sub_create_files(struct ds__subs_s *ss, ds__sub_t *sb);
/** Journals the link's current state (removed: its removal). request: a request waits for
 *  the answer (under fsync `always` it is fsynced first). 0 or DS_E* (the state stays in
 *  memory; a rewrite from memory is retried). */
int ds__journal_link(struct ds__subs_s *ss, ds__sub_t *sb, const ds__link_t *l, bool request);
int ds__journal_unlink(struct ds__subs_s *ss, ds__sub_t *sb, const char *path, bool request);
/** One slice of background journal work (compactions); true if more remains. */
bool ds__journal_work(struct ds__subs_s *ss, uint64_t budget_us);
/** A subscription that goes away: its compaction is abandoned (files removed by unlink). */
void ds__journal_forget(struct ds__subs_s *ss, ds__sub_t *sb);
/** Shutdown: abandons compactions, and rewrites (synchronously) every journal that could
 *  not be appended to, so what is in memory is on disk. */
void ds__journal_shutdown(struct ds__subs_s *ss);
/** Loads every subscription of the state directory; returns how many. */
size_t ds__subs_load_all(struct ds__subs_s *ss);
void ds__keys_init(struct ds__subs_s *ss);
/** Syncer lifecycle (DS_FSYNC_INTERVAL with a state directory). */
void ds__syncer_start(struct ds__subs_s *ss);
void ds__syncer_stop(struct ds__subs_s *ss);
void ds__syncer_free(struct ds__subs_s *ss);
/** Frees what a subscription owns (not its timers). */
void ds__sub_free_mem(ds__sub_t *sb);
/** Parses a stored offset ("-1" or 16 digits). */
bool ds__offset_ok(const char *s);

/* subs.c */
ds__sub_t *ds__sub_find(struct ds__subs_s *ss, const char *id);
/** Arms the save retry timer (back-off). */
void ds__save_retry_arm(struct ds__subs_s *ss);
/** Starts the background idle handle (scan, compaction) if not running. */
void ds__bg_kick(struct ds__subs_s *ss);
/** The stream's tail as a 16-digit offset. */
void ds__tail_of(struct ds__subs_s *ss, const char *path, char out[20]);
/** Builds the confinement grant from sb->scope. */
void ds__sub_confine(ds__sub_t *sb);

#endif
