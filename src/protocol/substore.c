/* substore.c - where subscriptions live on disk (the YAML store's <data_dir>/subscriptions).
 *
 * Provides: per subscription two files. "s_<id>.json" (or "h_<sha256 of id>.json" for ids
 * that are not plain file names) holds its configuration and wake state (generation,
 * wake_id, the wake's snapshot of pending streams, pull-wake holder, failed flag); it is
 * small and replaced atomically (temp file, rename) whenever that state changes.
 * "<same base>.links" is the append-only journal of its stream links, one JSON line per
 * change ({"path","explicit","glob","acked_offset"}, or {"path","removed":true}); the last
 * line for a path wins. A new glob-matched stream or an ack therefore costs one appended
 * line, never a rewrite of every link. When the journal holds far more lines than live
 * links it is compacted: the links are encoded in slices from the loop's idle phase (a
 * removal that moves a link behind the encoder reports it), written to "<journal>.tmp"
 * and fsynced on the threadpool, then the lines appended meanwhile are added and the file
 * renamed over the journal. A failed append (full disk) stops appends to that journal
 * (a torn line is never followed by another) and schedules the same rewrite from memory,
 * retried with back-off. Both files follow the store's fsync policy: `always` fsyncs on
 * the loop before a change is acknowledged (what the README promises), `interval` has the
 * threadpool fsync what changed (files and the directory) at most every interval, `never`
 * leaves it to the kernel. Loading: version 1 files (links inside the subscription file)
 * are migrated (journal written first, then the file replaced); a journal's torn last
 * line is ignored; a damaged line in the middle is logged with its byte offset and
 * skipped, the journal kept aside and rewritten; a subscription file that cannot be read
 * is logged by name and moved aside with its journal ("<file>.damaged-<ms>"), or if even
 * that fails its id is blocked against writes; a journal without its subscription file
 * (a create that was never acknowledged) is removed. Also the Ed25519 signing key and the
 * callback-token key (signing-keys.json, mode 0600).
 * Must not: fsync on the loop except under `always`; rewrite a journal on the loop; read
 * any stream (subs.c compares links with their streams).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "protocol/psubs.h"
#include "store/json.h"

#define COMPACT_MIN_LINES 1024

/* ---- the interval syncer ---- */

struct ds__syncer_s {
  uv_loop_t *loop;
  char *dir;
  unsigned interval_ms;
  char **pending; /* paths changed since the last round (no duplicates) */
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
};

static void sy_timer_cb(uv_timer_t *t);

static void sy_arm(ds__syncer_t *sy) {
  if (sy->stopped || sy->busy || uv_is_active((uv_handle_t *)sy->timer)) return;
  if (sy->npending || sy->dir_pending) uv_timer_start(sy->timer, sy_timer_cb, sy->interval_ms, 0);
}

/* A file (path) or only a directory entry (path NULL) changed without fsync. */
static void sy_note(ds__syncer_t *sy, const char *path) {
  if (!sy) return;
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
  ds__syncer_t *sy = w->data;
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

static void sy_free(ds__syncer_t *sy) {
  sy_free_list(sy->pending, sy->npending);
  sy_free_list(sy->work, sy->nwork);
  free(sy->work_failed_path);
  free(sy->dir);
  free(sy);
}

static void sy_after(uv_work_t *w, int status) {
  ds__syncer_t *sy = w->data;
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
  ds__syncer_t *sy = t->data;
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

static void free_timer(uv_handle_t *h) { free(h); }

void ds__syncer_start(struct ds__subs_s *ss) {
  if (!ss->dir || ss->policy != DS_FSYNC_INTERVAL) return;
  ds__syncer_t *sy = ds_xcalloc(1, sizeof *sy);
  sy->loop = ss->p->loop;
  sy->dir = ds_xstrdup(ss->dir);
  sy->interval_ms = ss->p->opts.fsync_interval_ms ? ss->p->opts.fsync_interval_ms : 1000;
  sy->timer = ds_xmalloc(sizeof *sy->timer);
  uv_timer_init(ss->p->loop, sy->timer);
  sy->timer->data = sy;
  ss->sy = sy;
}

/* Shutdown: what is still pending is fsynced now, synchronously (not on a hot path). */
void ds__syncer_stop(struct ds__subs_s *ss) {
  ds__syncer_t *sy = ss->sy;
  if (!sy || sy->stopped) return;
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
  uv_close((uv_handle_t *)sy->timer, free_timer);
  sy->timer = NULL;
}

void ds__syncer_free(struct ds__subs_s *ss) {
  if (!ss->sy) return;
  if (ss->sy->busy) ss->sy->orphan = true; /* its completion frees it */
  else sy_free(ss->sy);
  ss->sy = NULL;
}

/* ---- file names ---- */

void ds__sub_file(struct ds__subs_s *ss, const char *id, const char *ext, ds_buf_t *out) {
  size_t n = strlen(id);
  bool plain = n > 0 && n <= 160 && id[0] != '.';
  for (size_t i = 0; plain && i < n; i++) {
    unsigned char c = (unsigned char)id[i];
    plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-';
  }
  ds_buf_printf(out, "%s/", ss->dir);
  if (plain) {
    ds_buf_printf(out, "s_%s%s", id, ext);
    return;
  }
  unsigned char dg[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)id, n, dg);
  ds_buf_puts(out, "h_");
  for (size_t i = 0; i < sizeof dg; i++) ds_buf_printf(out, "%02x", dg[i]);
  ds_buf_puts(out, ext);
}

static bool is_blocked(struct ds__subs_s *ss, const char *file) {
  for (size_t i = 0; i < ss->nblocked; i++)
    if (strcmp(ss->blocked[i], file) == 0) return true;
  return false;
}

/* DS_FILE_UNSYNCED (the change is in place, only the directory fsync failed) is logged and
 * taken as done: `what` says what was done to the file. Other results pass through. */
static int unsynced_ok(int rc, const char *file, const char *what) {
  if (rc != DS_FILE_UNSYNCED) return rc;
  ds_warn("subscriptions", "%s: %s, but fsyncing its directory failed (durability unknown)",
          file, what);
  return 0;
}

/* ---- the subscription file ---- */

static void put_opt(ds_buf_t *b, const char *key, const char *val) {
  if (!val) return;
  ds_buf_printf(b, ",\"%s\":", key);
  ds_json_write_string(b, val, strlen(val));
}

static void sub_encode(const ds__sub_t *sb, ds_buf_t *b) {
  ds_buf_puts(b, "{\"version\":2,\"id\":");
  ds_json_write_string(b, sb->id, strlen(sb->id));
  ds_buf_printf(b, ",\"type\":\"%s\"", sb->webhook ? "webhook" : "pull-wake");
  put_opt(b, "pattern", sb->pattern);
  put_opt(b, "webhook_url", sb->url);
  put_opt(b, "wake_stream", sb->wake_stream);
  put_opt(b, "description", sb->description);
  put_opt(b, "config", sb->config);
  put_opt(b, "base_url", sb->base_url);
  put_opt(b, "created_at", sb->created_at);
  if (sb->scope) {
    ds_buf_puts(b, ",\"scope\":[");
    for (size_t i = 0; i < sb->nscope; i++) {
      if (i) ds_buf_putc(b, ',');
      ds_json_write_string(b, sb->scope[i], strlen(sb->scope[i]));
    }
    ds_buf_putc(b, ']');
  }
  ds_buf_printf(b, ",\"lease_ttl_ms\":%ld,\"failed\":%s,\"generation\":%ld", sb->lease_ms,
                sb->failed ? "true" : "false", sb->generation);
  if (sb->wake_id[0]) put_opt(b, "wake_id", sb->wake_id);
  put_opt(b, "holder", sb->holder);
  ds_buf_puts(b, ",\"wake_snapshot\":[");
  for (size_t i = 0; i < sb->nsnapshot; i++) {
    ds_buf_puts(b, i ? ",{\"path\":" : "{\"path\":");
    ds_json_write_string(b, sb->snapshot[i].path, strlen(sb->snapshot[i].path));
    ds_buf_printf(b, ",\"tail_offset\":\"%s\"}", sb->snapshot[i].tail);
  }
  ds_buf_puts(b, "]}\n");
}

/* Writes the subscription's file if its state changed, following the fsync policy. 0, or a
 * DS_E* code; the state then stays dirty and ss->save_timer retries with back-off. A
 * failure is logged once per episode (and its end once), not once per attempt. */
int ds__sub_flush(struct ds__subs_s *ss, ds__sub_t *sb) {
  if (!ss->dir || !sb->dirty || sb->dead) return 0;
  ds_buf_t f = DS_BUF_INIT, b = DS_BUF_INIT;
  ds__sub_file(ss, sb->id, ".json", &f);
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
    if (rc == 0) sy_note(ss->sy, ds_buf_cstr(&f));
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
    ds__save_retry_arm(ss);
  }
  ds_buf_free(&f);
  ds_buf_free(&b);
  return rc;
}

int ds__sub_flush_bg(struct ds__subs_s *ss, ds__sub_t *sb) {
  if (!ss->dir || !sb->dirty || sb->dead) return 0;
  if (sb->save_failed) {
    ds__save_retry_arm(ss);
    return sb->save_rc;
  }
  return ds__sub_flush(ss, sb);
}

int ds__sub_touch(struct ds__subs_s *ss, ds__sub_t *sb) {
  sb->dirty = true;
  return ds__sub_flush_bg(ss, sb);
}

/* ---- the link journal ---- */

static void link_line(ds_buf_t *b, const char *path, const ds__link_t *l) {
  ds_buf_puts(b, "{\"path\":");
  ds_json_write_string(b, path, strlen(path));
  if (!l) {
    ds_buf_puts(b, ",\"removed\":true}\n");
    return;
  }
  ds_buf_printf(b, ",\"explicit\":%s,\"glob\":%s,\"acked_offset\":\"%s\"}\n",
                l->explicit_ ? "true" : "false", l->glob ? "true" : "false", l->acked);
}

struct ds__compact_s {
  ds__compact_t *next;
  struct ds__subs_s *ss;
  ds__sub_t *sb;      /* NULL once the subscription went away: the result is dropped */
  ds_buf_t data;      /* the encoded links, written by the threadpool */
  size_t encoded;     /* lines in data */
  ds_buf_t post;      /* lines journaled since the start: appended before the rename */
  size_t post_lines;
  size_t cursor;
  bool writing;       /* in the threadpool */
  bool sync;
  char *path, *tmp;
  int rc;
  uv_work_t work;
};

static void journal_path(struct ds__subs_s *ss, ds__sub_t *sb, ds_buf_t *out) {
  ds__sub_file(ss, sb->id, ".links", out);
}

static void journal_fail(struct ds__subs_s *ss, ds__sub_t *sb, const char *file, int rc) {
  sb->jr.broken = true;
  sb->jr.rewrite = true;
  if (!sb->jr.failed_logged)
    ds_error("subscriptions", "%s: cannot append to the stream links of subscription %s: %s "
                              "(rewriting them from memory, with back-off)",
             file, sb->id, ds_strerror(rc));
  sb->jr.failed_logged = true;
  ds__save_retry_arm(ss); /* the retry timer starts the rewrite */
}

/* Appends line (a complete "...\n") to the journal file. */
static int journal_append(struct ds__subs_s *ss, ds__sub_t *sb, const ds_buf_t *line) {
  ds_buf_t f = DS_BUF_INIT;
  journal_path(ss, sb, &f);
  const char *file = ds_buf_cstr(&f);
  int rc = 0;
  bool created = false;
  int fd = open(file, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    created = fd >= 0;
  }
  if (fd < 0) rc = ds_err_from_errno(errno);
  size_t off = 0;
  while (rc == 0 && off < line->len) {
    ssize_t w = write(fd, line->data + off, line->len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      rc = ds_err_from_errno(errno);
    } else {
      off += (size_t)w;
    }
  }
  if (rc == 0 && ss->policy == DS_FSYNC_ALWAYS && fdatasync(fd) != 0) rc = ds_err_from_errno(errno);
  if (fd >= 0) close(fd);
  if (rc == 0 && created && ss->policy == DS_FSYNC_ALWAYS) {
    int drc = ds_file_fsync_dir(ss->dir);
    if (drc != 0)
      ds_warn("subscriptions", "%s: created, but fsyncing its directory failed (durability "
                               "unknown)", file);
  }
  if (rc == 0) {
    sb->jr.lines++;
    if (ss->policy == DS_FSYNC_INTERVAL) sy_note(ss->sy, file);
  } else {
    journal_fail(ss, sb, file, rc);
  }
  ds_buf_free(&f);
  return rc;
}

static void compact_maybe(struct ds__subs_s *ss, ds__sub_t *sb) {
  if (sb->jr.compact || sb->jr.rewrite) return;
  size_t live = sb->links.n;
  if (sb->jr.lines > COMPACT_MIN_LINES && sb->jr.lines > 2 * live + 64) {
    sb->jr.rewrite = true;
    ds__bg_kick(ss);
  }
}

static int journal_put(struct ds__subs_s *ss, ds__sub_t *sb, const char *path,
                       const ds__link_t *l) {
  ds_buf_t line = DS_BUF_INIT;
  link_line(&line, path, l);
  if (sb->jr.compact) {
    ds_buf_append(&sb->jr.compact->post, line.data, line.len);
    sb->jr.compact->post_lines++;
  }
  int rc = 0;
  if (ss->dir && !sb->dead) {
    if (sb->jr.broken) rc = DS_EIO; /* in memory; the rewrite will carry it */
    else rc = journal_append(ss, sb, &line);
    if (rc == 0) compact_maybe(ss, sb);
  }
  ds_buf_free(&line);
  return rc;
}

int ds__journal_link(struct ds__subs_s *ss, ds__sub_t *sb, const ds__link_t *l, bool request) {
  (void)request; /* every append follows the policy; requests see the result */
  return journal_put(ss, sb, l->path, l);
}

int ds__journal_unlink(struct ds__subs_s *ss, ds__sub_t *sb, const char *path, bool request) {
  (void)request;
  return journal_put(ss, sb, path, NULL);
}

/* A link moved behind the encoder's cursor by a removal: journal its state in `post`. */
static void compact_moved(void *ud, ds__link_t *l) {
  ds__compact_t *c = ud;
  link_line(&c->post, l->path, l);
  c->post_lines++;
}

static void compact_free(ds__compact_t *c) {
  ds_buf_free(&c->data);
  ds_buf_free(&c->post);
  free(c->path);
  free(c->tmp);
  free(c);
}

static void compact_unlist(struct ds__subs_s *ss, ds__compact_t *c) {
  for (ds__compact_t **pp = &ss->compacts; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      return;
    }
}

static void compact_detach(ds__compact_t *c) {
  if (!c->sb) return;
  c->sb->links.guard = SIZE_MAX;
  c->sb->links.moved = NULL;
  c->sb->links.moved_ud = NULL;
  c->sb->jr.compact = NULL;
  c->sb = NULL;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ds_err_from_errno(errno);
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Threadpool: the encoded links into "<journal>.tmp", fsynced unless the policy is never. */
static void compact_work(uv_work_t *w) {
  ds__compact_t *c = w->data;
  int fd = open(c->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) {
    c->rc = ds_err_from_errno(errno);
    return;
  }
  c->rc = write_all(fd, c->data.data ? c->data.data : "", c->data.len);
  if (c->rc == 0 && c->sync && fsync(fd) != 0) c->rc = ds_err_from_errno(errno);
  if (close(fd) != 0 && c->rc == 0) c->rc = ds_err_from_errno(errno);
}

/* Loop: the lines journaled meanwhile go after the encoded ones, then the rename. */
static void compact_after(uv_work_t *w, int status) {
  ds__compact_t *c = w->data;
  struct ds__subs_s *ss = c->ss;
  ds__sub_t *sb = c->sb;
  if (ss) compact_unlist(ss, c);
  if (!sb) { /* the subscription (or the server) went away meanwhile */
    unlink(c->tmp);
    compact_free(c);
    return;
  }
  int rc = status != 0 ? DS_EIO : c->rc;
  if (rc == 0) {
    int fd = open(c->tmp, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
    rc = fd < 0 ? ds_err_from_errno(errno) : write_all(fd, c->post.data ? c->post.data : "", c->post.len);
    if (rc == 0 && ss->policy == DS_FSYNC_ALWAYS && fdatasync(fd) != 0) rc = ds_err_from_errno(errno);
    if (fd >= 0) close(fd);
  }
  if (rc == 0 && rename(c->tmp, c->path) != 0) rc = ds_err_from_errno(errno);
  compact_detach(c);
  if (rc != 0) {
    unlink(c->tmp);
    if (!sb->jr.failed_logged)
      ds_error("subscriptions", "%s: cannot rewrite the stream links of subscription %s: %s "
                                "(retrying)", c->path, sb->id, ds_strerror(rc));
    sb->jr.failed_logged = true;
    sb->jr.rewrite = true;
    ds__save_retry_arm(ss); /* tried again from the back-off timer, not at once */
    compact_free(c);
    return;
  }
  if (ss->policy == DS_FSYNC_ALWAYS) {
    if (ds_file_fsync_dir(ss->dir) != 0)
      ds_warn("subscriptions", "%s: rewritten, but fsyncing its directory failed "
                               "(durability unknown)", c->path);
  } else {
    sy_note(ss->sy, c->path);
  }
  if (sb->jr.failed_logged)
    ds_info("subscriptions", "%s: stream links of subscription %s saved again", c->path, sb->id);
  sb->jr.failed_logged = false;
  sb->jr.broken = false;
  sb->jr.lines = c->encoded + c->post_lines;
  compact_free(c);
  compact_maybe(ss, sb);
}

static void compact_start(struct ds__subs_s *ss, ds__sub_t *sb) {
  ds__compact_t *c = ds_xcalloc(1, sizeof *c);
  c->ss = ss;
  c->sb = sb;
  ds_buf_t f = DS_BUF_INIT;
  journal_path(ss, sb, &f);
  c->path = ds_buf_detach(&f, NULL);
  ds_buf_printf(&f, "%s.tmp", c->path);
  c->tmp = ds_buf_detach(&f, NULL);
  c->sync = ss->policy != DS_FSYNC_NEVER;
  sb->jr.compact = c;
  sb->jr.rewrite = false;
  sb->links.guard = 0;
  sb->links.moved = compact_moved;
  sb->links.moved_ud = c;
  c->next = ss->compacts;
  ss->compacts = c;
}

/* Encodes links until the budget is spent; queues the write once all are encoded. */
static void compact_step(struct ds__subs_s *ss, ds__compact_t *c, uint64_t deadline_ns) {
  ds__sub_t *sb = c->sb;
  while (c->cursor < sb->links.n) {
    ds__link_t *l = sb->links.v[c->cursor++];
    link_line(&c->data, l->path, l);
    c->encoded++;
    if ((c->cursor & 255) == 0 && uv_hrtime() > deadline_ns) break;
  }
  sb->links.guard = c->cursor;
  if (c->cursor < sb->links.n) return;
  /* every link is encoded; later changes are in post */
  sb->links.guard = SIZE_MAX;
  sb->links.moved = NULL;
  c->writing = true;
  c->work.data = c;
  if (uv_queue_work(ss->p->loop, &c->work, compact_work, compact_after) != 0) {
    c->writing = false; /* cannot happen; try again later */
    compact_unlist(ss, c);
    compact_detach(c);
    sb->jr.rewrite = true;
    compact_free(c);
  }
}

bool ds__journal_work(struct ds__subs_s *ss, uint64_t budget_us) {
  if (!ss->dir) return false;
  uint64_t deadline = uv_hrtime() + budget_us * 1000;
  bool more = false;
  for (ds__sub_t *sb = ss->subs; sb; sb = sb->next)
    if (sb->jr.rewrite && !sb->jr.compact && !sb->dead) compact_start(ss, sb);
  for (ds__compact_t *c = ss->compacts, *next; c; c = next) {
    next = c->next;
    if (c->writing || !c->sb) continue;
    if (uv_hrtime() > deadline) {
      more = true;
      break;
    }
    compact_step(ss, c, deadline);
    if (!c->writing) more = true;
  }
  return more;
}

void ds__journal_forget(struct ds__subs_s *ss, ds__sub_t *sb) {
  ds__compact_t *c = sb->jr.compact;
  if (!c) return;
  bool writing = c->writing;
  compact_detach(c);
  if (!writing) { /* still encoding on the loop: nothing else refers to it */
    compact_unlist(ss, c);
    compact_free(c);
  }
}

/* Rewrites the journal from memory now, on the calling thread (start-up repairs and
 * shutdown only: O(links)). 0 or DS_E* (logged with `when`). */
static int journal_rewrite_now(struct ds__subs_s *ss, ds__sub_t *sb, const char *when) {
  ds_buf_t jf = DS_BUF_INIT, b = DS_BUF_INIT;
  journal_path(ss, sb, &jf);
  for (size_t i = 0; i < sb->links.n; i++) link_line(&b, sb->links.v[i]->path, sb->links.v[i]);
  int rc = unsynced_ok(ds_file_write_atomic_opt(ds_buf_cstr(&jf), b.data ? b.data : "", b.len,
                                                0644, ss->policy != DS_FSYNC_NEVER),
                       jf.data, "links written");
  if (rc != 0) {
    ds_error("subscriptions", "%s: cannot save the stream links of subscription %s %s: %s",
             jf.data, sb->id, when, ds_strerror(rc));
    sb->jr.broken = sb->jr.rewrite = true; /* nothing appended until a rewrite succeeds */
  } else {
    sb->jr.rewrite = sb->jr.broken = false;
    sb->jr.lines = sb->links.n;
  }
  ds_buf_free(&jf);
  ds_buf_free(&b);
  return rc;
}

void ds__journal_shutdown(struct ds__subs_s *ss) {
  while (ss->compacts) {
    ds__compact_t *c = ss->compacts;
    ss->compacts = c->next;
    bool writing = c->writing;
    ds__sub_t *sb = c->sb;
    compact_detach(c);
    /* an unfinished rewrite of a journal that could not be appended to is done below */
    if (sb && sb->jr.broken) sb->jr.rewrite = true;
    c->ss = NULL;
    if (!writing) compact_free(c); /* else its completion frees it */
  }
  if (!ss->dir) return;
  for (ds__sub_t *sb = ss->subs; sb; sb = sb->next)
    if (sb->jr.rewrite && !sb->dead) journal_rewrite_now(ss, sb, "at shutdown");
}

/* ---- creating and removing a subscription's files ---- */

int ds__sub_create_files(struct ds__subs_s *ss, ds__sub_t *sb) {
  if (!ss->dir) return 0;
  ds_buf_t f = DS_BUF_INIT, b = DS_BUF_INIT, jf = DS_BUF_INIT;
  ds__sub_file(ss, sb->id, ".json", &f);
  int rc = 0;
  if (is_blocked(ss, ds_buf_cstr(&f))) {
    ds_error("subscriptions",
             "%s: refusing to save subscription %s over a damaged file that could not be "
             "moved aside; move or remove it by hand",
             f.data, sb->id);
    rc = DS_EEXISTS;
    goto out;
  }
  /* the journal first: a crash before the subscription file leaves only an orphan
   * journal, removed at the next start */
  journal_path(ss, sb, &jf);
  for (size_t i = 0; i < sb->links.n; i++) link_line(&b, sb->links.v[i]->path, sb->links.v[i]);
  rc = ds_file_write_atomic_opt(ds_buf_cstr(&jf), b.data ? b.data : "", b.len, 0644,
                                ss->policy == DS_FSYNC_ALWAYS);
  rc = unsynced_ok(rc, jf.data, "subscription links saved");
  if (rc != 0) {
    ds_error("subscriptions", "%s: cannot save the stream links of subscription %s: %s",
             jf.data, sb->id, ds_strerror(rc));
    goto out;
  }
  sy_note(ss->sy, ds_buf_cstr(&jf));
  sb->jr.lines = sb->links.n;
  sb->dirty = true;
  rc = ds__sub_flush(ss, sb);
out:
  ds_buf_free(&f);
  ds_buf_free(&b);
  ds_buf_free(&jf);
  return rc;
}

int ds__sub_unlink(struct ds__subs_s *ss, ds__sub_t *sb) {
  if (!ss->dir) return 0;
  ds__journal_forget(ss, sb);
  ds_buf_t f = DS_BUF_INIT, jf = DS_BUF_INIT;
  ds__sub_file(ss, sb->id, ".json", &f);
  journal_path(ss, sb, &jf);
  bool sync = ss->policy == DS_FSYNC_ALWAYS;
  int rc = 0;
  if (!is_blocked(ss, ds_buf_cstr(&f))) {
    /* the journal first: a crash in between leaves a subscription without links, which a
     * repeated DELETE removes; never links without their subscription's configuration */
    rc = unsynced_ok(ds_file_remove_opt(ds_buf_cstr(&jf), false), jf.data, "links removed");
    if (rc == 0)
      rc = unsynced_ok(ds_file_remove_opt(ds_buf_cstr(&f), sync), f.data, "subscription removed");
  }
  if (rc == 0) sy_note(ss->sy, NULL);
  if (rc < 0)
    ds_error("subscriptions", "%s: cannot remove subscription %s: %s", f.data, sb->id,
             ds_strerror(rc));
  ds_buf_free(&f);
  ds_buf_free(&jf);
  return rc;
}

/* ---- loading ---- */

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

bool ds__offset_ok(const char *s) {
  if (!s) return false;
  if (strcmp(s, "-1") == 0) return true;
  size_t n = strlen(s);
  if (n != 16) return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

static char *dup_opt(const char *s) { return s ? ds_xstrdup(s) : NULL; }

void ds__sub_free_mem(ds__sub_t *sb) {
  free(sb->id);
  free(sb->pattern);
  free(sb->url);
  free(sb->wake_stream);
  free(sb->description);
  free(sb->config);
  free(sb->base_url);
  free(sb->holder);
  free(sb->file);
  for (size_t i = 0; i < sb->nscope; i++) free(sb->scope[i]);
  free(sb->scope);
  ds_access_free(sb->confine);
  ds__links_free(&sb->links);
  for (size_t i = 0; i < sb->nsnapshot; i++) free(sb->snapshot[i].path);
  free(sb->snapshot);
  free(sb);
}

/* One link record ({"path","explicit","glob","acked_offset"} or {"path","removed":true})
 * applied to the set; false when it is not one. Loaded links are UNKNOWN: the start-up
 * scan compares them with their streams. */
static bool apply_link(ds__sub_t *sb, const ds_value_t *l) {
  const char *path = vstr(l, "path");
  if (!path || !*path) return false;
  uint32_t h = ds__links_hash(path);
  bool removed = false;
  if (vbool(l, "removed", &removed) && removed) {
    ds__link_t *old = ds__links_find(&sb->links, path, h);
    if (old) ds__links_remove(&sb->links, old);
    return true;
  }
  const char *acked = vstr(l, "acked_offset");
  bool ex = false, gl = false;
  if (!ds__offset_ok(acked) || !vbool(l, "explicit", &ex) || !vbool(l, "glob", &gl) || (!ex && !gl))
    return false;
  ds__link_t *nl = ds__links_add(&sb->links, path, h, acked);
  snprintf(nl->acked, sizeof nl->acked, "%s", acked);
  nl->explicit_ = ex;
  nl->glob = gl;
  ds__links_set_state(&sb->links, nl, DS__L_UNKNOWN);
  return true;
}

/* Builds a subscription (timers not yet initialised) from a decoded file; NULL with the
 * reason in why when anything required is missing or out of range. *v1 tells whether it
 * was a version 1 file (links inside). */
static ds__sub_t *sub_decode(struct ds__subs_s *ss, const ds_value_t *v, const char *file,
                             bool *v1, char *why, size_t whylen) {
  long version = 0, lease = 0, gen = 0;
  const char *id = vstr(v, "id"), *type = vstr(v, "type"), *config = vstr(v, "config");
  const char *base = vstr(v, "base_url"), *created = vstr(v, "created_at");
  const char *wake_id = vstr(v, "wake_id");
  const ds_value_t *links = ds_value_get(v, "streams"), *snap = ds_value_get(v, "wake_snapshot");
  const ds_value_t *scope = ds_value_get(v, "scope");
  bool failed = false;
  if (v->type != DS_V_OBJECT || !vlong(v, "version", &version) || (version != 1 && version != 2)) {
    snprintf(why, whylen, "not a version 1 or 2 subscription object");
    return NULL;
  }
  *v1 = version == 1;
  if (!id || !*id || !type || !config || !base || !created || strlen(created) >= 32 ||
      !vlong(v, "lease_ttl_ms", &lease) || !vlong(v, "generation", &gen) ||
      !vbool(v, "failed", &failed) || (*v1 && (!links || links->type != DS_V_ARRAY)) || !snap ||
      snap->type != DS_V_ARRAY || (scope && scope->type != DS_V_ARRAY)) {
    snprintf(why, whylen, "a required field is missing or has the wrong type");
    return NULL;
  }
  bool webhook = strcmp(type, "webhook") == 0;
  if (!webhook && strcmp(type, "pull-wake") != 0) {
    snprintf(why, whylen, "unknown type");
    return NULL;
  }
  if (lease < DS__LEASE_MIN_MS || lease > DS__LEASE_MAX_MS || gen < 0 ||
      (wake_id && (!*wake_id || strlen(wake_id) >= sizeof((ds__sub_t *)0)->wake_id)) ||
      (webhook && !vstr(v, "webhook_url")) || (!webhook && !vstr(v, "wake_stream")) ||
      (vstr(v, "holder") && !wake_id)) {
    snprintf(why, whylen, "inconsistent field values");
    return NULL;
  }
  ds_buf_t want = DS_BUF_INIT;
  ds__sub_file(ss, id, ".json", &want);
  bool name_ok = strcmp(ds_buf_cstr(&want), file) == 0;
  ds_buf_free(&want);
  if (!name_ok) {
    snprintf(why, whylen, "the id inside does not belong to this file name");
    return NULL;
  }
  ds__sub_t *sb = ds_xcalloc(1, sizeof *sb);
  sb->owner = ss;
  ds__links_init(&sb->links);
  sb->id = ds_xstrdup(id);
  sb->file = ds_xstrdup(file);
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
  if (scope) {
    sb->scope = ds_xcalloc(scope->u.arr.len + 1, sizeof *sb->scope);
    for (size_t i = 0; i < scope->u.arr.len; i++) {
      const ds_value_t *e = scope->u.arr.items[i];
      if (e->type != DS_V_STRING || strlen(e->u.str.s) != e->u.str.len) {
        snprintf(why, whylen, "scope entry %zu is invalid", i);
        ds__sub_free_mem(sb);
        return NULL;
      }
      sb->scope[sb->nscope++] = ds_xstrdup(e->u.str.s);
    }
  }
  for (size_t i = 0; *v1 && i < links->u.arr.len; i++) {
    const ds_value_t *l = links->u.arr.items[i];
    const char *path = vstr(l, "path");
    if (!path || (path && ds__links_find(&sb->links, path, ds__links_hash(path))) ||
        !apply_link(sb, l)) {
      snprintf(why, whylen, "stream link %zu is invalid", i);
      ds__sub_free_mem(sb);
      return NULL;
    }
  }
  if (snap->u.arr.len) {
    sb->snapshot = ds_xcalloc(snap->u.arr.len, sizeof *sb->snapshot);
    for (size_t i = 0; i < snap->u.arr.len; i++) {
      const ds_value_t *l = snap->u.arr.items[i];
      const char *path = vstr(l, "path"), *tail = vstr(l, "tail_offset");
      if (!path || !*path || !ds__offset_ok(tail)) {
        snprintf(why, whylen, "wake snapshot entry %zu is invalid", i);
        ds__sub_free_mem(sb);
        return NULL;
      }
      sb->snapshot[i].path = ds_xstrdup(path);
      snprintf(sb->snapshot[i].tail, sizeof sb->snapshot[i].tail, "%s", tail);
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

/* Replays "<base>.links" into sb: every complete line in order. A torn last line (an
 * append cut short) is ignored; a damaged line elsewhere is logged with its byte offset
 * and skipped, and the journal is moved aside and rewritten from memory. */
static void replay_journal(struct ds__subs_s *ss, ds__sub_t *sb) {
  ds_buf_t jf = DS_BUF_INIT, content = DS_BUF_INIT;
  journal_path(ss, sb, &jf);
  bool repair = false; /* the file is rewritten from what was read, before any append */
  int rc = ds_file_read_all(ds_buf_cstr(&jf), &content);
  if (rc == DS_ENOTFOUND) {
    ds_warn("subscriptions", "%s: subscription %s has no stream links file; starting with none",
            jf.data, sb->id);
    repair = true;
    goto out;
  }
  if (rc != 0) {
    ds_error("subscriptions", "%s: cannot read the stream links of subscription %s: %s; "
                              "starting without them (the file is kept)", jf.data, sb->id,
             ds_strerror(rc));
    set_aside(ss, ds_buf_cstr(&jf), "subscription links", ds_strerror(rc));
    repair = true;
    goto out;
  }
  size_t pos = 0, lines = 0, bad = 0;
  const char *d = content.data ? content.data : "";
  while (pos < content.len) {
    const char *nl = memchr(d + pos, '\n', content.len - pos);
    if (!nl) {
      ds_warn("subscriptions", "%s: ignoring an unfinished last line at byte %zu (a write cut "
                               "short)", jf.data, pos);
      repair = true; /* never append after a partial line */
      break;
    }
    size_t len = (size_t)(nl - (d + pos));
    ds_arena_t a;
    ds_arena_init(&a);
    ds_value_t *v = NULL;
    char perr[96];
    if (len && (ds_json_parse(&a, d + pos, len, 4, &v, perr, sizeof perr) != 0 ||
                v->type != DS_V_OBJECT || !apply_link(sb, v))) {
      if (!bad++)
        ds_error("subscriptions", "%s: damaged stream link record at byte %zu; skipped (the "
                                  "file is kept aside and rewritten)", jf.data, pos);
    }
    ds_arena_free(&a);
    lines++;
    pos += len + 1;
  }
  sb->jr.lines = lines;
  if (bad) {
    set_aside(ss, ds_buf_cstr(&jf), "subscription links", "damaged records");
    repair = true;
  }
out:
  if (repair) journal_rewrite_now(ss, sb, "after loading");
  ds_buf_free(&jf);
  ds_buf_free(&content);
}

static int cmp_name(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

static bool ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && memcmp(s + a - b, suf, b) == 0;
}

static bool sub_name(const char *nm, const char *ext) {
  return (strncmp(nm, "s_", 2) == 0 || strncmp(nm, "h_", 2) == 0) && ends_with(nm, ext);
}

/* A version 1 file kept every link inside it: write the journal, then the file as
 * version 2 (in that order: a crash between leaves the version 1 file, read again). */
static void migrate(struct ds__subs_s *ss, ds__sub_t *sb) {
  ds_buf_t jf = DS_BUF_INIT;
  journal_path(ss, sb, &jf);
  int rc = journal_rewrite_now(ss, sb, "for the version 2 layout");
  if (rc == 0) {
    sb->dirty = true;
    rc = ds__sub_flush(ss, sb);
  }
  if (rc == 0)
    ds_info("subscriptions", "%s: subscription %s moved to the version 2 layout (%zu stream "
                             "links in %s)", sb->file, sb->id, sb->links.n, jf.data);
  else /* the version 1 file stays; this runs again at the next start */
    ds_error("subscriptions", "%s: cannot move subscription %s to the version 2 layout: %s",
             sb->file, sb->id, ds_strerror(rc));
  ds_buf_free(&jf);
}

size_t ds__subs_load_all(struct ds__subs_s *ss) {
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
    if (ends_with(nm, ".json.tmp") || ends_with(nm, ".links.tmp")) {
      /* an interrupted replace: the file it was replacing is intact */
      if (unlink(file) == 0) ds_warn("subscriptions", "%s: removed an unfinished write", file);
    } else if (sub_name(nm, ".json")) {
      char why[160];
      ds__sub_t *sb = NULL;
      bool v1 = false;
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
        else sb = sub_decode(ss, v, file, &v1, why, sizeof why);
        ds_arena_free(&a);
      }
      if (!sb) {
        set_aside(ss, file, "subscription", why);
        ds_buf_t jf = DS_BUF_INIT; /* its links go aside with it */
        ds_buf_append(&jf, file, strlen(file) - 5);
        ds_buf_puts(&jf, ".links");
        if (access(ds_buf_cstr(&jf), F_OK) == 0) set_aside(ss, ds_buf_cstr(&jf), "subscription links", "its subscription file is damaged");
        ds_buf_free(&jf);
      } else if (ds__sub_find(ss, sb->id)) {
        set_aside(ss, file, "subscription", "duplicate subscription id");
        ds__sub_free_mem(sb);
      } else {
        if (v1) migrate(ss, sb);
        else replay_journal(ss, sb);
        ds__sub_confine(sb);
        sb->scanning = true;
        sb->next = ss->subs;
        ss->subs = sb;
        loaded++;
      }
    }
    ds_buf_free(&content);
    ds_buf_free(&f);
  }
  /* journals whose subscription file is gone: a create that was never acknowledged */
  for (size_t i = 0; i < nn; i++) {
    if (sub_name(names[i], ".links")) {
      ds_buf_t f = DS_BUF_INIT, jf = DS_BUF_INIT;
      ds_buf_printf(&f, "%s/%.*s.json", ss->dir, (int)(strlen(names[i]) - 6), names[i]);
      ds_buf_printf(&jf, "%s/%s", ss->dir, names[i]);
      if (access(ds_buf_cstr(&f), F_OK) != 0 && !is_blocked(ss, ds_buf_cstr(&f)) &&
          unlink(ds_buf_cstr(&jf)) == 0)
        ds_warn("subscriptions", "%s: removed stream links without a subscription file (a "
                                 "create that did not finish)", jf.data);
      ds_buf_free(&f);
      ds_buf_free(&jf);
    }
    free(names[i]);
  }
  free(names);
  return loaded;
}

/* ---- signing keys ---- */

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
void ds__keys_init(struct ds__subs_s *ss) {
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
