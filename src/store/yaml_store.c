/* yaml_store.c - the on-disk store kind: one YAML file per stream plus small sidecars.
 *
 * Provides, for stream <path> under <data_dir>/streams (nested paths = nested dirs):
 *   <path>.yaml         the records, one YAML document each, appended with one write(2)
 *                       on an O_APPEND descriptor (so `tail -f` shows whole events). The
 *                       source of truth: everything below is derived from it on open.
 *   <path>.yaml.offset  the next offset, bare decimal. Also how an EMPTY stream remembers
 *                       its base (a fork created at K holds "K" until its first record);
 *                       for a non-empty stream base = next - number of documents, since
 *                       offsets are gap-free.
 *   <path>.yaml.idx     8-byte little-endian file position of each document
 *                       (entry i = offset - base), kept in memory while the stream is open.
 *   <path>.yaml.meta    opaque metadata, replaced atomically (tmp + fsync + rename + dir
 *                       fsync).
 * Sidecar writes are lazy: an append is ONE write(2) to the .yaml and nothing else; the
 * .idx tail and the .offset value are written when the stream is flushed (each fsync
 * round, each timer tick, when its descriptor is evicted, and at close). They are advisory:
 * open verifies them against the documents and repairs them (torn tail truncated and
 * logged, idx verified and extended by scanning from its last good entry, or rebuilt).
 *
 * Durability (ds_fsync_t): ALWAYS = group commit: ds_store_sync() callbacks queue; one
 * threadpool job fdatasyncs every .yaml written since the previous round (and the parent
 * directory of newly created files), then runs them all; callbacks arriving meanwhile get
 * the next round. INTERVAL = a timer starts such a round every fsync_interval_ms (at most
 * one interval of acknowledged records is at risk on power loss; kill -9 loses nothing);
 * sync callbacks run at once. NEVER = no fsync (the kernel writes back eventually).
 * Open descriptors are bounded by max_open_files (LRU). fsync rounds reopen each file by
 * name in the worker (fsync flushes the file, not the descriptor), so eviction, deletion
 * and the worker never share a descriptor and a round needs at most one extra one.
 * Memory: each stream's hot tail holds at most tail_cache_bytes (32 MiB by default), and all
 * of them together at most tail_cache_total_bytes (256 MiB): past that, the oldest cached records of the
 * least recently appended streams are dropped (they are read from disk when needed).
 * Full disk: ENOSPC/EDQUOT/EFBIG on append -> DS_ENOSPC after truncating the partial write
 * away, so stored data is never damaged and appends work again once space returns.
 * Must not: parse whole files on the hot path, block the loop on fsync (except at close
 * and on atomic meta replacement), or interpret records beyond the `offset:` and
 * `createdAt:` lines recovery needs.
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "store/store_int.h"
#include "store/yaml_file.h"

#define SCAN_CHUNK ((size_t)1 << 16)  /* recovery scans read this much at a time */
#define READ_CHUNK ((uint64_t)1 << 18) /* a cold read preads up to this much per batch */
#define CREATED_LINE_LEN DS__YAML_CREATED_LEN /* "createdAt: YYYY-MM-DDTHH:MM:SS.mmmZ\n" */
#define OFFSET_MAX UINT64_C(9999999999999999)    /* offsets are written with 16 digits */

typedef struct ds__fsync_job_s {
  uv_work_t req;
  ds_store_t *st; /* NULL once the store closed; the job then only finishes itself */
  char **files;   /* .yaml files to fdatasync */
  size_t nfiles, capfiles;
  char **dirs;
  size_t ndirs, capdirs;
  int status;
  ds__cbq_t cbs;
} ds__fsync_job_t;

/* ---- small file helpers ---- */

static int map_errno(int e) {
  if (e == ENOSPC || e == EDQUOT || e == EFBIG) return DS_ENOSPC;
  if (e == ENOENT) return DS_ENOTFOUND;
  if (e == ENAMETOOLONG) return DS_EINVAL; /* a segment longer than the file system allows */
  if (e == ENOTDIR || e == EISDIR) return DS_ECONFLICT; /* "a" vs "a.yaml/b" on disk */
  return DS_EIO;
}

static ssize_t pread_full(int fd, void *buf, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

static int pwrite_full(int fd, const void *buf, size_t n, uint64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) {
      errno = ENOSPC;
      return -1;
    }
    done += (size_t)w;
  }
  return 0;
}

/* mkdir -p; *created (optional) counts the directories it had to create. Not
 * ds_file_mkdir_p (core/file.h): that fsyncs each new level's parent on the spot, while a
 * new stream's directories are made durable by the next fsync round, off the loop
 * (need_dirsync). */
static int mkdir_p(const char *dir, int *created) {
  char *p = ds_xstrdup(dir);
  int rc = 0;
  if (created) *created = 0;
  for (char *q = p + 1;; q++) {
    if (*q == '/' || *q == '\0') {
      char c = *q;
      *q = '\0';
      if (mkdir(p, 0755) == 0) {
        if (created) (*created)++;
      } else if (errno != EEXIST) {
        rc = map_errno(errno);
        break;
      }
      *q = c;
      if (c == '\0') break;
    }
  }
  free(p);
  return rc;
}

static char *parent_dir(const char *file) {
  const char *sl = strrchr(file, '/');
  return sl ? ds_xstrndup(file, (size_t)(sl - file)) : ds_xstrdup(".");
}

/* "<file><suffix>" into a malloc'd string. */
static char *sidecar(const char *file, const char *suffix) {
  size_t a = strlen(file), b = strlen(suffix);
  char *p = ds_xmalloc(a + b + 1);
  memcpy(p, file, a);
  memcpy(p + a, suffix, b + 1);
  return p;
}

static char *stream_file(ds_store_t *st, const char *path) {
  size_t a = strlen(st->root), b = strlen(path);
  char *p = ds_xmalloc(a + 1 + b + 6);
  memcpy(p, st->root, a);
  p[a] = '/';
  memcpy(p + a + 1, path, b);
  memcpy(p + a + 1 + b, ".yaml", 6);
  return p;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* ---- descriptor LRU and dirty list ---- */

static void lru_unlink(ds_store_t *st, ds_store_stream_t *s) {
  if (s->lru_prev) s->lru_prev->lru_next = s->lru_next;
  else st->lru_head = s->lru_next;
  if (s->lru_next) s->lru_next->lru_prev = s->lru_prev;
  else st->lru_tail = s->lru_prev;
  s->lru_prev = s->lru_next = NULL;
}

static void lru_push_front(ds_store_t *st, ds_store_stream_t *s) {
  s->lru_prev = NULL;
  s->lru_next = st->lru_head;
  if (st->lru_head) st->lru_head->lru_prev = s;
  st->lru_head = s;
  if (!st->lru_tail) st->lru_tail = s;
}

static void lru_touch(ds_store_t *st, ds_store_stream_t *s) {
  if (st->lru_head == s) return;
  lru_unlink(st, s);
  lru_push_front(st, s);
}

static void dirty_add(ds_store_t *st, ds_store_stream_t *s) {
  if (s->in_dirty) return;
  s->in_dirty = 1;
  s->dirty_prev = NULL;
  s->dirty_next = st->dirty_head;
  if (st->dirty_head) st->dirty_head->dirty_prev = s;
  st->dirty_head = s;
}

static void dirty_remove(ds_store_t *st, ds_store_stream_t *s) {
  if (!s->in_dirty) return;
  if (s->dirty_prev) s->dirty_prev->dirty_next = s->dirty_next;
  else st->dirty_head = s->dirty_next;
  if (s->dirty_next) s->dirty_next->dirty_prev = s->dirty_prev;
  s->dirty_prev = s->dirty_next = NULL;
  s->in_dirty = 0;
}

/* ---- store-wide cache budget ---- */

static void cache_lru_unlink(ds_store_t *st, ds_store_stream_t *s) {
  if (!s->in_cache_lru) return;
  if (s->cache_prev) s->cache_prev->cache_next = s->cache_next;
  else st->cache_head = s->cache_next;
  if (s->cache_next) s->cache_next->cache_prev = s->cache_prev;
  else st->cache_tail = s->cache_prev;
  s->cache_prev = s->cache_next = NULL;
  s->in_cache_lru = 0;
}

static void cache_lru_front(ds_store_t *st, ds_store_stream_t *s) {
  if (st->cache_head == s) return;
  cache_lru_unlink(st, s);
  s->cache_next = st->cache_head;
  if (st->cache_head) st->cache_head->cache_prev = s;
  st->cache_head = s;
  if (!st->cache_tail) st->cache_tail = s;
  s->in_cache_lru = 1;
}

/* Accounts for a change of s's cache and trims the least recently appended caches. */
static void cache_account(ds_store_t *st, ds_store_stream_t *s, size_t before) {
  st->cache_total = st->cache_total - before + s->cache.bytes;
  if (s->cache.count) cache_lru_front(st, s);
  else cache_lru_unlink(st, s);
  while (st->cache_total > st->cache_budget && st->cache_tail) {
    ds_store_stream_t *v = st->cache_tail;
    while (v->cache.count && st->cache_total > st->cache_budget) {
      size_t b = v->cache.bytes;
      ds__cache_pop(&v->cache);
      st->cache_total -= b - v->cache.bytes;
    }
    if (!v->cache.count) cache_lru_unlink(st, v);
  }
}

/* ---- sidecars ---- */

/* The number in sidecar <file><suffix> (".offset", ".base"): 0 and *out; DS_ENOTFOUND
 * when there is no sidecar; DS_ECORRUPT when it is not a number. */
static int read_num_sidecar(const char *file, const char *suffix, uint64_t *out) {
  char *p = sidecar(file, suffix);
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  free(p);
  if (fd < 0) return errno == ENOENT ? DS_ENOTFOUND : DS_EIO;
  char buf[32];
  ssize_t n = pread_full(fd, buf, sizeof buf - 1, 0);
  close(fd);
  if (n < 0) return DS_EIO;
  if (n == 0) return DS_ECORRUPT;
  uint64_t v = 0;
  ssize_t i = 0;
  for (; i < n && is_digit(buf[i]); i++) {
    if (v > (UINT64_MAX - 9) / 10) return DS_ECORRUPT;
    v = v * 10 + (uint64_t)(buf[i] - '0');
  }
  if (i == 0) return DS_ECORRUPT;
  for (; i < n; i++)
    if (buf[i] != '\n' && buf[i] != ' ' && buf[i] != '\r') return DS_ECORRUPT;
  *out = v;
  return 0;
}

static int write_offset_sidecar(ds_store_stream_t *s) {
  char *p = sidecar(s->file, ".offset");
  int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  free(p);
  if (fd < 0) return map_errno(errno);
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%" PRIu64, s->next);
  int rc = 0;
  if (pwrite_full(fd, buf, (size_t)n, 0) < 0 || ftruncate(fd, n) < 0) rc = map_errno(errno);
  close(fd);
  if (rc == 0) s->offset_written = s->next;
  return rc;
}

/* A fork's first offset, written once when it is created: durable (file fsynced; the
 * directory entry is covered by the create's directory sync) and never rewritten. */
static int write_base_sidecar(const char *file, uint64_t base) {
  char *p = sidecar(file, ".base");
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%" PRIu64, base);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int rc = fd < 0 ? map_errno(errno) : 0;
  if (rc == 0 && (pwrite_full(fd, buf, (size_t)n, 0) < 0 || fsync(fd) < 0)) rc = map_errno(errno);
  if (fd >= 0) close(fd);
  free(p);
  return rc;
}

/* Writes the .idx entries not yet on disk (all of them, truncating, when idx_flushed is 0). */
static int write_idx_sidecar(ds_store_stream_t *s) {
  if (s->idx_flushed >= s->idx_len && s->idx_flushed != 0) return 0;
  char *p = sidecar(s->file, ".idx");
  int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC | (s->idx_flushed == 0 ? O_TRUNC : 0), 0644);
  free(p);
  if (fd < 0) return map_errno(errno);
  size_t n = s->idx_len - s->idx_flushed;
  int rc = 0;
  if (n) {
    uint64_t *le = ds_xmalloc(n * sizeof *le);
    for (size_t i = 0; i < n; i++) le[i] = htole64(s->idx[s->idx_flushed + i]);
    if (pwrite_full(fd, le, n * sizeof *le, (uint64_t)s->idx_flushed * 8) < 0)
      rc = map_errno(errno);
    free(le);
  }
  close(fd);
  if (rc == 0) s->idx_flushed = s->idx_len;
  return rc;
}

/* Brings both sidecars up to date; failures (a full disk) are retried at the next flush and
 * are harmless meanwhile because open repairs the sidecars from the documents. */
static void flush_sidecars(ds_store_stream_t *s) {
  if (s->idx_flushed < s->idx_len) write_idx_sidecar(s);
  if (s->offset_written != s->next) write_offset_sidecar(s);
}

static void idx_push(ds_store_stream_t *s, uint64_t pos) {
  if (s->idx_len == s->idx_cap) {
    s->idx_cap = s->idx_cap ? s->idx_cap * 2 : 64;
    s->idx = ds_xrealloc(s->idx, s->idx_cap * sizeof *s->idx);
  }
  s->idx[s->idx_len++] = pos;
}

/* ---- descriptors ---- */

static void close_fd_of(ds_store_t *st, ds_store_stream_t *s) {
  if (s->fd < 0) return;
  lru_unlink(st, s);
  st->nopen--;
  close(s->fd); /* still in the dirty list if it needs an fsync: the round reopens it */
  s->fd = -1;
}

/* Eviction only closes: the sidecars do not need the descriptor and a dirty stream stays in
 * the dirty list, so the next flush or fsync round still covers it. */
static void make_room(ds_store_t *st) {
  while (st->nopen >= st->opts.max_open_files && st->lru_tail) close_fd_of(st, st->lru_tail);
}

static void attach_fd(ds_store_t *st, ds_store_stream_t *s, int fd) {
  s->fd = fd;
  lru_push_front(st, s);
  st->nopen++;
}

static int ensure_fd(ds_store_t *st, ds_store_stream_t *s) {
  if (s->fd >= 0) {
    lru_touch(st, s);
    return 0;
  }
  make_room(st);
  int fd = open(s->file, O_RDWR | O_APPEND | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    ds_error("store", "%s: cannot reopen: %s", s->file, strerror(e));
    return e == ENOENT ? DS_EIO : map_errno(e);
  }
  attach_fd(st, s, fd);
  return 0;
}

/* ---- recovery ---- */

/* End of the last complete document: just past the last column-0 createdAt line. Scans
 * backwards, so a healthy file costs one small read. */
static int find_good_end(int fd, uint64_t size, uint64_t *out) {
  char *buf = ds_xmalloc(SCAN_CHUNK + 64);
  uint64_t hi = size;
  *out = 0;
  while (hi > 0) {
    uint64_t lo = hi > SCAN_CHUNK ? hi - SCAN_CHUNK : 0;
    uint64_t rend = hi + 64 < size ? hi + 64 : size;
    ssize_t got = pread_full(fd, buf, (size_t)(rend - lo), lo);
    if (got < 0) {
      free(buf);
      return map_errno(errno);
    }
    rend = lo + (uint64_t)got;
    size_t len = (size_t)(hi - lo);
    while (len > 0) {
      char *nl = memrchr(buf, '\n', len);
      if (!nl) break;
      uint64_t q = lo + (uint64_t)(nl - buf); /* a line starts at q + 1 */
      if (q + 1 + CREATED_LINE_LEN <= rend && ds__yaml_created_line(nl + 1)) {
        *out = q + 1 + CREATED_LINE_LEN;
        free(buf);
        return 0;
      }
      len = (size_t)(nl - buf);
    }
    hi = lo;
  }
  free(buf);
  return 0;
}

/* Appends to s->idx the start of every document beginning after position `from` (the
 * '\n' ending a "---" line at `from`+3 or later is not a start) and before `end`. */
static int scan_docs(ds_store_stream_t *s, int fd, uint64_t from, uint64_t end) {
  char *buf = ds_xmalloc(SCAN_CHUNK + 8);
  for (uint64_t lo = from; lo < end; lo += SCAN_CHUNK) {
    uint64_t rend = lo + SCAN_CHUNK + 4 < end ? lo + SCAN_CHUNK + 4 : end;
    ssize_t got = pread_full(fd, buf, (size_t)(rend - lo), lo);
    if (got < 0) {
      free(buf);
      return map_errno(errno);
    }
    size_t n = (size_t)got;
    size_t limit = n < SCAN_CHUNK ? n : SCAN_CHUNK; /* '\n' positions owned by this chunk */
    const char *p = buf;
    while ((size_t)(p - buf) < limit) {
      const char *hit = memmem(p, n - (size_t)(p - buf), "\n---\n", 5);
      if (!hit || (size_t)(hit - buf) >= limit) break;
      idx_push(s, lo + (uint64_t)(hit - buf) + 1);
      p = hit + 1;
    }
  }
  free(buf);
  return 0;
}

static int is_doc_start(int fd, uint64_t pos, uint64_t end) {
  if (pos + 4 > end) return 0;
  char b[5];
  uint64_t at = pos ? pos - 1 : 0;
  size_t want = pos ? 5 : 4;
  if (pread_full(fd, b, want, at) != (ssize_t)want) return 0;
  const char *d = pos ? b + 1 : b;
  if (pos && b[0] != '\n') return 0;
  return memcmp(d, "---\n", 4) == 0;
}

/* Parses the top-level `offset: "<digits>"` line of the document [pos, end): it is the
 * second-last line, so the last 4 KiB normally hold it; else the whole document is read. */
static int doc_offset(int fd, uint64_t pos, uint64_t end, uint64_t *out) {
  uint64_t doclen = end - pos;
  uint64_t want = doclen < 4096 ? doclen : 4096;
  for (int pass = 0; pass < 2; pass++) {
    char *buf = ds_xmalloc((size_t)want + 1);
    if (pread_full(fd, buf, (size_t)want, end - want) != (ssize_t)want) {
      free(buf);
      return DS_EIO;
    }
    int found = ds__yaml_offset_line(buf, (size_t)want, want == doclen, out) == 0;
    free(buf);
    if (found) return *out <= OFFSET_MAX ? 0 : DS_ECORRUPT;
    if (want == doclen) break;
    want = doclen;
  }
  return DS_ECORRUPT;
}

/* Fills s->idx with the start of every document in [0, good_end) by scanning the file. A
 * file whose first bytes are not a "---" line but which holds documents after them keeps
 * those bytes as document 0 (damaged: reads fail there, never silently skip it); a file
 * with no document start at all is not a stream file (DS_ECORRUPT). */
static int scan_all_docs(ds_store_stream_t *s, int fd, uint64_t good_end) {
  s->idx_len = 0;
  if (good_end == 0) return 0;
  int start = is_doc_start(fd, 0, good_end);
  idx_push(s, 0);
  int rc = scan_docs(s, fd, start ? 3 : 0, good_end);
  if (rc == 0 && !start && s->idx_len == 1) rc = DS_ECORRUPT;
  if (rc < 0) s->idx_len = 0;
  return rc;
}

static int load_idx_file(ds_store_stream_t *s, uint64_t good_end, int fd, int *repaired) {
  char *p = sidecar(s->file, ".idx");
  int ifd = open(p, O_RDONLY | O_CLOEXEC);
  free(p);
  size_t n = 0;
  int partial = 0; /* a torn last entry (a power loss cut the sidecar's append): rewrite */
  if (ifd >= 0) {
    struct stat sb;
    int ok = fstat(ifd, &sb) == 0;
    partial = ok && sb.st_size % 8 != 0;
    if (ok && sb.st_size >= 8) {
      n = (size_t)sb.st_size / 8;
      s->idx_cap = n + 64;
      s->idx = ds_xmalloc(s->idx_cap * sizeof *s->idx);
      ssize_t got = pread_full(ifd, s->idx, n * 8, 0);
      n = got > 0 ? (size_t)got / 8 : 0;
    }
    close(ifd);
  }
  /* Longest plausible prefix: starts at 0, strictly increasing, inside the good bytes. */
  size_t k = 0;
  while (k < n) {
    uint64_t v = le64toh(s->idx[k]);
    if (v >= good_end || (k == 0 ? v != 0 : v <= s->idx[k - 1])) break;
    s->idx[k++] = v;
  }
  size_t bad = k; /* the first entry that cannot be right; n: none */
  if (k > 0 && !is_doc_start(fd, s->idx[k - 1], good_end)) { /* lies: rebuild */
    bad = k - 1;
    k = 0;
  }
  *repaired = k != n || partial || (ifd < 0 && good_end > 0);
  if (bad != n) /* entries that cannot be right, not merely missing ones (those are lag) */
    ds_warn("store", "%s.idx: damaged at entry %zu of %zu (byte %zu): rebuilt from the "
            "documents", s->file, bad, n, bad * 8);
  s->idx_len = k;
  int rc;
  if (k == 0) {
    rc = scan_all_docs(s, fd, good_end);
  } else {
    rc = scan_docs(s, fd, s->idx[k - 1] + 3, good_end);
  }
  if (rc == 0 && s->idx_len != k) *repaired = 1;
  return rc;
}

/* ---- damage found on open ---- */

/* The first offset the stream must start at: a fork's fork point, kept in its .base
 * sidecar since it was created (written once, fsynced); for a fork created before .base
 * existed, the fork point its metadata names; else 0. Unknown (returns 0) when .base or
 * the metadata is damaged: the documents are then trusted. Asked only when the first
 * document does not hold 0, or the stream is empty: one or two small reads. */
static int expected_base(const char *file, uint64_t *out) {
  *out = 0;
  int rc = read_num_sidecar(file, ".base", out);
  if (rc == 0) return 1;
  if (rc != DS_ENOTFOUND) {
    ds_warn("store", "%s.base: damaged: the stream's first offset is taken from its documents",
            file);
    return 0;
  }
  char *p = sidecar(file, ".meta");
  ds_buf_t b = DS_BUF_INIT;
  rc = ds_file_read_all(p, &b);
  free(p);
  int fork = 0, known = rc == DS_ENOTFOUND;
  char err[160];
  if (rc == 0 && ds__yaml_meta_parse(b.data, b.len, &fork, out, err, sizeof err) == 0) known = 1;
  ds_buf_free(&b);
  if (!fork) *out = 0;
  return known;
}

/* The offset document i holds (its offset line), 0 or DS_ECORRUPT / DS_EIO. */
static int doc_off(const ds_store_stream_t *s, int fd, size_t i, uint64_t *out) {
  uint64_t end = i + 1 < s->idx_len ? s->idx[i + 1] : s->size;
  return doc_offset(fd, s->idx[i], end, out);
}

static int doc_at_ok(const ds_store_stream_t *s, int fd, size_t i, uint64_t base) {
  uint64_t o;
  return doc_off(s, fd, i, &o) == 0 && o == base + i;
}

/* Records and logs that nothing from document d on can be located: documents are missing,
 * duplicated or unreadable there (the offsets stop agreeing with the positions). */
static void damage_from_doc(ds_store_stream_t *s, int fd, size_t d, uint64_t base,
                            uint64_t last, int last_ok) {
  uint64_t want = base + d, got = 0;
  char what[160];
  if (doc_off(s, fd, d, &got) != 0)
    snprintf(what, sizeof what, "it has no readable offset line");
  else if (got == want + 1)
    snprintf(what, sizeof what, "it holds offset %" PRIu64 ": offset %" PRIu64 " is missing",
             got, want);
  else if (got > want)
    snprintf(what, sizeof what, "it holds offset %" PRIu64 ": offsets %" PRIu64 "..%" PRIu64
             " are missing", got, want, got - 1);
  else if (d > 0 && got + 1 == want)
    snprintf(what, sizeof what, "it holds offset %" PRIu64 " again (a duplicate)", got);
  else
    snprintf(what, sizeof what, "it holds offset %" PRIu64 " (out of order)", got);
  ds__damage_add(s, want, UINT64_MAX, s->idx[d],
                 "document at byte %" PRIu64 " should hold offset %" PRIu64 ", but %s", s->idx[d],
                 want, what);
  char lastbuf[24] = "?";
  if (last_ok) snprintf(lastbuf, sizeof lastbuf, "%" PRIu64, last);
  ds_error("store", "%s: damaged at byte %" PRIu64 ": document %zu should hold offset %" PRIu64
           ", but %s (%zu documents, first offset %" PRIu64 ", last %s); reads stop at offset %"
           PRIu64 " and appends are refused until `durable-stream check --repair`", s->file,
           s->idx[d], d, want, what, s->idx_len, base, lastbuf, want);
}

/* Sets base and next from the documents and checks that they agree with each other: the
 * first document holds the stream's first offset (0, or a fork's fork point: see
 * expected_base), the last one base + count - 1. That costs two small reads, and finds documents missing,
 * duplicated or unreadable anywhere in the file without parsing it. On disagreement the
 * index is rebuilt by a scan (it may be what lies), then the first document whose offset
 * is not base + its position is found by bisection over offset lines (O(log n) reads) and
 * everything from it on is recorded as damage. An empty stream's first offset lives only
 * in the .offset sidecar (side_rc says whether it could be read). */
static int settle_offsets(ds_store_stream_t *s, int fd, int side_rc, uint64_t side,
                          int *repaired) {
  uint64_t want = 0;
  int known = -1; /* expected_base(), asked only when the documents do not say 0 */
  if (s->idx_len == 0) {
    known = expected_base(s->file, &want);
    if (known || side_rc == 0) {
      s->base = s->next = known ? want : side;
      if (side_rc == DS_ECORRUPT)
        ds_warn("store", "%s.offset: damaged; the stream is empty and its first offset is %"
                PRIu64 " (%s): rewritten", s->file, want, want ? "its fork point" : "no fork");
      return 0;
    }
    s->base = s->next = 0;
    ds__damage_add(s, 0, UINT64_MAX, 0,
                   "the stream is empty and its .offset sidecar is %s, so its first offset "
                   "(a fork's fork point) is unknown", side_rc == DS_ENOTFOUND ? "missing" : "damaged");
    ds_error("store", "%s.offset: %s and the stream is empty: its first offset (a fork's fork "
             "point) is unknown; appends are refused until `durable-stream check --repair`",
             s->file, side_rc == DS_ENOTFOUND ? "missing" : "damaged");
    return 0;
  }
  for (int pass = 0;; pass++) {
    size_t n = s->idx_len;
    uint64_t f = 0, l = 0, base;
    int f_ok = doc_off(s, fd, 0, &f) == 0, l_ok = doc_off(s, fd, n - 1, &l) == 0;
    if (known < 0 && (!f_ok || f != 0)) known = expected_base(s->file, &want);
    if (known > 0) base = want;
    else if (f_ok) base = f;
    else if (l_ok && l >= n - 1) base = l - (n - 1);
    else if (side_rc == 0 && side >= n) base = side - n;
    else base = 0;
    if (f_ok && l_ok && f == base && l >= f && l - f == n - 1) {
      s->base = base;
      s->next = l + 1;
      return 0;
    }
    if (pass == 0) { /* maybe the index lies (its last entry was all open checked) */
      int rc = scan_all_docs(s, fd, s->size);
      if (rc < 0) return rc;
      *repaired = 1;
      if (s->idx_len != n)
        ds_warn("store", "%s.idx: damaged: %zu entries, but the file holds %zu documents: "
                "rebuilt from the documents", s->file, n, s->idx_len);
      continue;
    }
    /* doc 0 is bad unless it holds base; otherwise doc n-1 is: bisect between them */
    size_t d = 0;
    if (f_ok && f == base) {
      size_t lo = 0, hi = n - 1;
      while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (doc_at_ok(s, fd, mid, base)) lo = mid;
        else hi = mid;
      }
      d = hi;
    }
    s->base = base;
    s->next = l_ok && l >= base + d ? l + 1 : base + n; /* reads must reach the damage */
    damage_from_doc(s, fd, d, base, l, l_ok);
    return 0;
  }
}

static int recover(ds_store_t *st, ds_store_stream_t *s, int fd) {
  struct stat sb;
  if (fstat(fd, &sb) < 0) return map_errno(errno);
  if (!S_ISREG(sb.st_mode)) return DS_EIO;
  uint64_t size = (uint64_t)sb.st_size, good_end;
  int rc = find_good_end(fd, size, &good_end);
  if (rc < 0) return rc;
  int tail_kept = 0; /* a torn tail that could not be saved aside stays, appends refused */
  if (good_end < size) {
    /* Kept, not thrown away: the bytes may be a complete record whose last line was
     * damaged rather than a write cut short by a crash. */
    char aside[4200];
    const uint64_t tail[1][2] = {{good_end, size}};
    int arc = ds__yaml_save_aside(fd, tail, 1, s->file, aside, sizeof aside);
    if (arc < 0) {
      ds_error("store", "%s: torn tail of %" PRIu64 " bytes after byte %" PRIu64 " cannot be "
               "saved aside (%s): left in place, appends are refused until a restart can "
               "truncate it", s->file, size - good_end, good_end, ds_strerror(arc));
      tail_kept = 1;
    } else {
      ds_warn("store", "%s: torn tail: truncating %" PRIu64 " bytes after the last complete "
              "document (%" PRIu64 " -> %" PRIu64 "); the bytes are kept in %s", s->file,
              size - good_end, size, good_end, aside);
      if (ftruncate(fd, (off_t)good_end) < 0) {
        ds_error("store", "%s: cannot truncate torn tail: %s", s->file, strerror(errno));
        return DS_EIO;
      }
    }
  }
  s->size = good_end;
  int repaired = 0;
  rc = load_idx_file(s, good_end, fd, &repaired);
  if (rc < 0) {
    ds_error("store", "%s: not a stream file (no document start found)", s->file);
    return rc;
  }
  uint64_t side = 0;
  int side_rc = read_num_sidecar(s->file, ".offset", &side);
  int have_side = side_rc == 0;
  rc = settle_offsets(s, fd, side_rc, side, &repaired);
  if (rc < 0) return rc;
  if (tail_kept)
    ds__damage_add(s, s->next, UINT64_MAX, good_end,
                   "a torn tail after byte %" PRIu64 " could not be saved aside and truncated",
                   good_end);
  if (repaired) {
    ds_info("store", "%s: index repaired (%zu documents)", s->file, s->idx_len);
    s->idx_flushed = 0;
    write_idx_sidecar(s);
  } else {
    s->idx_flushed = s->idx_len;
  }
  if (s->damage) { /* next is a guess: leave the .offset sidecar as evidence (and unwritten) */
    s->offset_written = s->next;
    return 0;
  }
  if (have_side) s->offset_written = side;
  if (!have_side || side != s->next) {
    if (have_side)
      ds_info("store", "%s: offset sidecar said %" PRIu64 ", documents say %" PRIu64, s->file,
              side, s->next);
    else if (side_rc == DS_ECORRUPT && s->idx_len > 0)
      ds_warn("store", "%s.offset: damaged: rewritten from the documents (next offset %" PRIu64
              ")", s->file, s->next);
    write_offset_sidecar(s);
  }
  return 0;
}

/* ---- store ops ---- */

static void on_timer(uv_timer_t *t);
static int sync_file(const char *file);

static int y_open(ds_store_t *st, char *err, size_t errlen) {
  size_t n = strlen(st->data_dir);
  st->root = ds_xmalloc(n + sizeof "/streams");
  memcpy(st->root, st->data_dir, n);
  memcpy(st->root + n, "/streams", sizeof "/streams");
  int rc = mkdir_p(st->root, NULL);
  if (rc < 0) {
    if (err && errlen) snprintf(err, errlen, "cannot create %s: %s", st->root, strerror(errno));
    return rc;
  }
  if (access(st->root, W_OK | X_OK) < 0) {
    if (err && errlen) snprintf(err, errlen, "%s is not writable: %s", st->root, strerror(errno));
    return DS_EIO;
  }
  /* `durable-stream check --repair` must not rewrite files under a running server: it
   * takes this lock exclusively (store/check.c), the server shares it */
  st->lock_fd = open(st->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (st->lock_fd >= 0 && flock(st->lock_fd, LOCK_SH | LOCK_NB) < 0) {
    int e = errno;
    close(st->lock_fd);
    st->lock_fd = -1;
    if (e == EWOULDBLOCK) {
      if (err && errlen)
        snprintf(err, errlen, "%s is locked by `durable-stream check`: wait for it to finish",
                 st->root);
      return DS_EBUSY;
    }
  }
  st->cache_budget = st->opts.tail_cache_total_bytes;
  st->timer = ds_xmalloc(sizeof *st->timer);
  uv_timer_init(st->loop, st->timer);
  st->timer->data = st;
  uv_timer_start(st->timer, on_timer, st->opts.fsync_interval_ms, st->opts.fsync_interval_ms);
  uv_unref((uv_handle_t *)st->timer); /* housekeeping must not keep the loop alive */
  return 0;
}

static void y_free_stream(ds_store_t *st, ds_store_stream_t *s) {
  if (s->fd >= 0) {
    lru_unlink(st, s);
    st->nopen--;
    close(s->fd);
    s->fd = -1;
  }
  dirty_remove(st, s);
  st->cache_total -= s->cache.bytes; /* store.c frees the records themselves */
  cache_lru_unlink(st, s);
  free(s->idx);
  s->idx = NULL;
  free(s->file);
  s->file = NULL;
}

static int y_load(ds_store_t *st, ds_store_stream_t *s, int create, uint64_t base) {
  s->file = stream_file(st, s->path);
  make_room(st);
  int fd = open(s->file, O_RDWR | O_APPEND | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (!create) return DS_ENOTFOUND;
    char *dir = parent_dir(s->file);
    int created = 0;
    int rc = mkdir_p(dir, &created);
    free(dir);
    if (rc < 0) return rc == DS_ENOTFOUND ? DS_EIO : rc;
    s->base = s->next = base;
    s->size = 0;
    s->idx_flushed = 0;
    /* Sidecars first, the .yaml (whose existence is the stream's) last: an interrupted
     * create leaves no stream. A fork's base lives only in the .offset sidecar until its
     * first record, so that one is fsynced (forks are rare; plain creates stay cheap), and
     * for good in the .base sidecar, which open checks the first document against. */
    /* A delete unlinks the .yaml first: one interrupted after it leaves the old stream's
     * metadata (content type, closure, producers, TTL) behind, which must not become this
     * stream's (found by tests/crash/explore.py) */
    static const char *const stale[] = {".meta", ".meta.tmp"};
    for (size_t i = 0; i < sizeof stale / sizeof *stale; i++) {
      char *p = sidecar(s->file, stale[i]);
      unlink(p);
      free(p);
    }
    if (base != 0) {
      rc = write_base_sidecar(s->file, base);
    } else { /* a .base left by an interrupted delete must not become this stream's start */
      char *p = sidecar(s->file, ".base");
      unlink(p);
      free(p);
    }
    if (rc == 0 && (rc = write_offset_sidecar(s)) == 0 && base != 0) {
      char *p = sidecar(s->file, ".offset");
      rc = sync_file(p);
      free(p);
    }
    if (rc == 0) rc = write_idx_sidecar(s);
    if (rc == 0) {
      fd = open(s->file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) rc = map_errno(errno) == DS_ENOTFOUND ? DS_EIO : map_errno(errno);
    }
    if (rc < 0) {
      char *p = sidecar(s->file, ".offset");
      unlink(p);
      free(p);
      p = sidecar(s->file, ".idx");
      unlink(p);
      free(p);
      p = sidecar(s->file, ".base");
      unlink(p);
      free(p);
      return rc;
    }
    s->need_dirsync = 1 + created; /* the parent, and the parent of each new directory */
    dirty_add(st, s);
  } else if (fd < 0 && (errno == ENOTDIR || errno == EISDIR)) {
    /* "x.yaml/..." beside a stream "x" (store.h, the name mapping): an ancestor is x's
     * file, or this stream's file name is taken by the directory of streams under it.
     * No stream lives here; creating one would need the name another stream holds. */
    return create ? DS_ECONFLICT : DS_ENOTFOUND;
  } else if (fd < 0) {
    return map_errno(errno) == DS_ENOTFOUND ? DS_EIO : map_errno(errno);
  } else {
    int rc = recover(st, s, fd);
    if (rc < 0) {
      close(fd);
      free(s->idx);
      s->idx = NULL;
      s->idx_len = s->idx_cap = 0;
      return rc;
    }
  }
  attach_fd(st, s, fd);
  ds__cache_init(&s->cache, s->next);
  s->meta_state = 0;
  return 0;
}

static int y_exists(ds_store_t *st, const char *path) {
  char *f = stream_file(st, path);
  struct stat sb;
  int ok = stat(f, &sb) == 0 && S_ISREG(sb.st_mode);
  free(f);
  return ok;
}

static int check_doc(const ds_record_in_t *r) {
  if (!r->yaml || r->yaml_len < 4 + CREATED_LINE_LEN) return 0;
  if (memcmp(r->yaml, "---\n", 4) != 0) return 0;
  const char *last = r->yaml + r->yaml_len - CREATED_LINE_LEN;
  if (last[-1] != '\n' || !ds__yaml_created_line(last)) return 0;
  if (!r->repr && r->repr_len) return 0;
  return 1;
}

static int y_append(ds_store_stream_t *s, const ds_record_in_t *recs, size_t n) {
  ds_store_t *st = s->st;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (!check_doc(&recs[i])) return DS_EINVAL;
    total += recs[i].yaml_len;
  }
  /* Nothing is added behind damage: the repair moves it and everything after it aside
   * (logged when found; ds_store_damage() tells the caller what it is). */
  if (s->damage) return DS_ECORRUPT;
  int rc = ensure_fd(st, s);
  if (rc < 0) return rc;
  if (s->broken) { /* an earlier failed append left bytes we could not remove: retry */
    if (ftruncate(s->fd, (off_t)s->size) < 0) return map_errno(errno) == DS_ENOSPC ? DS_ENOSPC : DS_EIO;
    s->broken = 0;
  }
  const char *data;
  if (n == 1) {
    data = recs[0].yaml;
  } else {
    ds_buf_reset(&st->scratch);
    ds_buf_reserve(&st->scratch, total);
    for (size_t i = 0; i < n; i++) ds_buf_append(&st->scratch, recs[i].yaml, recs[i].yaml_len);
    data = st->scratch.data;
  }
  size_t done = 0;
  int err = 0;
  while (done < total) { /* normally one iteration: one write(2) for the whole batch */
    ssize_t w = write(s->fd, data + done, total - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (w == 0) {
      err = ENOSPC;
      break;
    }
    done += (size_t)w;
  }
  if (err) {
    if (done > 0 && ftruncate(s->fd, (off_t)s->size) < 0) {
      ds_error("store", "%s: cannot remove a partial append (%zu bytes): %s", s->file, done,
               strerror(errno));
      s->broken = 1;
    }
    if (map_errno(err) == DS_ENOSPC)
      ds_warn("store", "%s: append of %zu bytes failed: %s", s->file, total, strerror(err));
    else
      ds_error("store", "%s: append of %zu bytes failed: %s", s->file, total, strerror(err));
    return map_errno(err) == DS_ENOSPC ? DS_ENOSPC : DS_EIO;
  }
  uint64_t pos = s->size;
  size_t cache_before = s->cache.bytes;
  for (size_t i = 0; i < n; i++) {
    idx_push(s, pos);
    pos += recs[i].yaml_len;
    ds__cache_push(&s->cache, s->next + i, recs[i].repr, recs[i].repr_len,
                   st->opts.tail_cache_bytes);
  }
  s->size = pos;
  s->next += n;
  cache_account(st, s, cache_before);
  dirty_add(st, s);
  return 0;
}

/* Rebuilds the in-memory index from the documents when a read found it lying (an entry
 * not pointing at the document of its offset: open only verifies the last entry). */
static int rebuild_index(ds_store_t *st, ds_store_stream_t *s) {
  int rc = ensure_fd(st, s);
  if (rc < 0) return rc;
  size_t old_len = s->idx_len;
  uint64_t *old = ds_xmalloc((old_len ? old_len : 1) * sizeof *old);
  if (old_len) memcpy(old, s->idx, old_len * sizeof *old);
  s->idx_len = 0;
  if (s->size > 0) {
    if (!is_doc_start(s->fd, 0, s->size)) rc = DS_ECORRUPT;
    else {
      idx_push(s, 0);
      rc = scan_docs(s, s->fd, 3, s->size);
    }
  }
  int mismatch = rc == 0 && s->idx_len != old_len;
  if (mismatch) rc = DS_ECORRUPT; /* documents do not match offsets */
  if (rc < 0 && !mismatch) ds_error("store", "%s: index rebuild failed: %s", s->file, ds_strerror(rc));
  int same = rc == 0 && memcmp(old, s->idx, old_len * sizeof *old) == 0;
  if (rc < 0 || same) { /* keep the old index; the document itself is the problem */
    free(s->idx);
    s->idx = old;
    s->idx_len = s->idx_cap = old_len;
    return DS_ECORRUPT;
  }
  free(old);
  ds_warn("store", "%s: index did not match the documents; rebuilt (%zu documents)", s->file,
          s->idx_len);
  s->idx_flushed = 0;
  write_idx_sidecar(s);
  return 0;
}

/* Records and logs (once) that document i, found by a read, cannot be delivered. */
static void damage_found(ds_store_stream_t *s, size_t i, const char *why) {
  uint64_t want = s->base + i;
  if (ds__damage_add(s, want, want + 1, s->idx[i],
                     "document at byte %" PRIu64 " should hold offset %" PRIu64 ", but %s",
                     s->idx[i], want, why))
    ds_error("store", "%s: damaged at byte %" PRIu64 ": the document that should hold offset %"
             PRIu64 " is unreadable: %s; reads stop there and appends are refused until "
             "`durable-stream check --repair`", s->file, s->idx[i], want, why);
}

static uint64_t doc_end(const ds_store_stream_t *s, size_t i) {
  return i + 1 < s->idx_len ? s->idx[i + 1] : s->size;
}

static long y_read(ds_store_stream_t *s, uint64_t from, size_t max_records, size_t max_bytes,
                   ds_record_cb cb, void *ud) {
  ds_store_t *st = s->st;
  long delivered = 0;
  size_t bytes = 0;
  uint64_t off = from;
  ds_buf_t lraw = DS_BUF_INIT, lrepr = DS_BUF_INIT;
  int shared = !st->reading; /* a read from inside a read's callback uses its own */
  ds_buf_t *rawp = shared ? &st->read_raw : &lraw, *reprp = shared ? &st->read_repr : &lrepr;
  st->reading = 1;
  long rc = 0;
  int stop = 0, healed = 0;
  while (!stop && off < s->next && (size_t)delivered < max_records) {
    if (s->damage && ds__damage_find(s, off)) { /* known: never skipped, never re-logged */
      rc = DS_ECORRUPT;
      break;
    }
    const ds__crec_t *r = ds__cache_get(&s->cache, off);
    if (r) {
      if (delivered > 0 && (bytes >= max_bytes || r->n > max_bytes - bytes)) break;
      bytes += r->n;
      delivered++;
      st->stats.records_read++;
      st->stats.cache_hits++;
      stop = cb(ud, off, r->p, r->n) != 0;
      off++;
      continue;
    }
    /* Cold: the records [off, lim) are on disk only (the cache is a suffix). */
    uint64_t lim = s->cache.count ? s->cache.first : s->next;
    if (lim - off > max_records - (size_t)delivered) lim = off + (max_records - (size_t)delivered);
    if (s->damage && lim > ds__damage_next(s, off)) lim = ds__damage_next(s, off);
    size_t i0 = (size_t)(off - s->base), iend = (size_t)(lim - s->base);
    if (iend > s->idx_len) { /* cannot happen: damage on open bounds reads within the index */
      ds_error("store", "%s: index holds %zu documents, a read needs %zu", s->file, s->idx_len,
               iend);
      rc = DS_ECORRUPT;
      break;
    }
    if ((rc = ensure_fd(st, s)) < 0) break;
    uint64_t start = s->idx[i0];
    /* Largest j in (i0, iend] whose bytes fit READ_CHUNK (at least one document). */
    size_t lo = i0 + 1, hi = iend;
    while (lo < hi) {
      size_t mid = lo + (hi - lo + 1) / 2;
      if (doc_end(s, mid - 1) - start <= READ_CHUNK) lo = mid;
      else hi = mid - 1;
    }
    size_t j = lo;
    uint64_t end = doc_end(s, j - 1);
    ds_buf_reset(rawp);
    ds_buf_reserve(rawp, (size_t)(end - start));
    if (pread_full(s->fd, rawp->data, (size_t)(end - start), start) != (ssize_t)(end - start)) {
      ds_error("store", "%s: short read at %" PRIu64, s->file, start);
      rc = DS_EIO;
      break;
    }
    for (size_t i = i0; i < j; i++) {
      const char *doc = rawp->data + (s->idx[i] - start);
      size_t len = (size_t)(doc_end(s, i) - s->idx[i]);
      uint64_t got_off = 0;
      char err[160];
      ds_buf_reset(reprp);
      st->stats.cache_misses++;
      int bad = !ds__yaml_doc_shape_ok(doc, len);
      if (bad) snprintf(err, sizeof err, "it is cut short or merged with the next one (it does "
                        "not end with its createdAt line)");
      else if (ds_record_decode_yaml(doc, len, reprp, &got_off, err, sizeof err) < 0) bad = 1;
      else if (got_off != s->base + i) {
        bad = 1;
        snprintf(err, sizeof err, "it holds offset %" PRIu64, got_off);
      }
      if (bad) {
        if (!healed) { /* maybe the index lies: rebuild it once and retry from here */
          healed = 1;
          st->stats.cache_misses--;
          if (rebuild_index(st, s) == 0) break;
        }
        damage_found(s, i, err);
        rc = DS_ECORRUPT;
        stop = 1;
        break;
      }
      if (delivered > 0 && (bytes >= max_bytes || reprp->len > max_bytes - bytes)) {
        stop = 1;
        break;
      }
      bytes += reprp->len;
      delivered++;
      st->stats.records_read++;
      off = s->base + i + 1;
      if (cb(ud, s->base + i, reprp->data ? reprp->data : "", reprp->len)) {
        stop = 1;
        break;
      }
    }
  }
  if (shared) {
    st->reading = 0;
    /* keep them for the next read unless an outsized record made them large */
    if (st->read_raw.cap > 4 * READ_CHUNK) ds_buf_free(&st->read_raw);
    if (st->read_repr.cap > 4 * READ_CHUNK) ds_buf_free(&st->read_repr);
  }
  ds_buf_free(&lraw);
  ds_buf_free(&lrepr);
  /* Records already handed over stay delivered; the error surfaces on the next read. */
  if (rc < 0 && delivered == 0) return rc;
  return delivered;
}

/* ---- fsync rounds ---- */

/* fdatasync of a file by name; a file deleted meanwhile needs no sync. */
/* A round syncs what was written since the previous one, by name, in a worker, while the
 * loop goes on: a stream deleted meanwhile has nothing left to sync. Its file is gone
 * (ENOENT), or its directory "x.yaml" was removed and a stream "x" now holds that name as a
 * file (ENOTDIR; store.h, the name mapping). */
static int sync_file(const char *file) {
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || errno == ENOTDIR ? 0 : DS_EIO;
  int rc = 0;
  if (fdatasync(fd) < 0) rc = map_errno(errno) == DS_ENOSPC ? DS_ENOSPC : DS_EIO;
  close(fd);
  return rc;
}

static void job_work(uv_work_t *req) {
  ds__fsync_job_t *job = req->data;
  for (size_t i = 0; i < job->nfiles; i++) {
    int rc = sync_file(job->files[i]);
    if (rc < 0 && job->status == 0) job->status = rc;
  }
  for (size_t i = 0; i < job->ndirs; i++) {
    int rc = ds_file_fsync_dir(job->dirs[i]);
    struct stat sb; /* gone, or now a stream's file (see sync_file): nothing to sync */
    int gone = rc < 0 && (stat(job->dirs[i], &sb) != 0 || !S_ISDIR(sb.st_mode));
    if (rc < 0 && rc != DS_ENOTFOUND && !gone && job->status == 0) job->status = DS_EIO;
  }
}

static void job_free(ds__fsync_job_t *job) {
  for (size_t i = 0; i < job->ndirs; i++) free(job->dirs[i]);
  free(job->dirs);
  for (size_t i = 0; i < job->nfiles; i++) free(job->files[i]);
  free(job->files);
  ds__cbq_free(&job->cbs);
  free(job);
}

static void start_round(ds_store_t *st);

static void job_done(uv_work_t *req, int status) {
  ds__fsync_job_t *job = req->data;
  ds_store_t *st = job->st;
  if (status < 0 && job->status == 0) job->status = DS_EIO;
  if (job->status < 0) ds_error("store", "fsync failed: %s", ds_strerror(job->status));
  if (st) {
    st->job = NULL;
    st->stats.fsyncs++;
    /* Start the next round before running callbacks: they may close the store. */
    if (st->pending.len) start_round(st);
  }
  ds__cbq_run(&job->cbs, job->status);
  job_free(job);
}

static void job_add_file(ds__fsync_job_t *job, const char *file) {
  if (job->nfiles == job->capfiles) {
    job->capfiles = job->capfiles ? job->capfiles * 2 : 16;
    job->files = ds_xrealloc(job->files, job->capfiles * sizeof *job->files);
  }
  job->files[job->nfiles++] = ds_xstrdup(file);
}

static void job_add_dir(ds__fsync_job_t *job, char *dir) {
  for (size_t i = 0; i < job->ndirs; i++)
    if (strcmp(job->dirs[i], dir) == 0) {
      free(dir);
      return;
    }
  if (job->ndirs == job->capdirs) {
    job->capdirs = job->capdirs ? job->capdirs * 2 : 8;
    job->dirs = ds_xrealloc(job->dirs, job->capdirs * sizeof *job->dirs);
  }
  job->dirs[job->ndirs++] = dir;
}

/* Snapshots the set of files written since the last round and fsyncs them off the loop
 * (by name: no descriptor is shared with the loop thread). The pending callbacks ride on
 * this round. */
static void start_round(ds_store_t *st) {
  ds__fsync_job_t *job = ds_xcalloc(1, sizeof *job);
  job->st = st;
  job->req.data = job;
  while (st->dirty_head) {
    ds_store_stream_t *s = st->dirty_head;
    flush_sidecars(s);
    job_add_file(job, s->file);
    char *dir = s->need_dirsync ? parent_dir(s->file) : NULL;
    for (int lv = 0; lv < s->need_dirsync; lv++) {
      char *up = parent_dir(dir);
      job_add_dir(job, dir);
      dir = up;
    }
    free(dir);
    s->need_dirsync = 0;
    dirty_remove(st, s);
  }
  job->cbs = st->pending;
  memset(&st->pending, 0, sizeof st->pending);
  st->job = job;
  int rc = uv_queue_work(st->loop, &job->req, job_work, job_done);
  if (rc < 0) { /* cannot happen with a live loop; do the work inline to keep the promise */
    job_work(&job->req);
    job_done(&job->req, 0);
  }
}

static int has_dirty(const ds_store_t *st) { return st->dirty_head != NULL; }

static int y_sync(ds_store_t *st, void (*cb)(void *ud, int status), void *ud) {
  if (st->opts.fsync != DS_FSYNC_ALWAYS) {
    cb(ud, 0);
    return 0;
  }
  if (!has_dirty(st)) {
    if (st->job) ds__cbq_push(&st->job->cbs, cb, ud); /* the running round covers it */
    else cb(ud, 0);
    return 0;
  }
  ds__cbq_push(&st->pending, cb, ud);
  if (!st->job) start_round(st);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  ds_store_t *st = t->data;
  switch (st->opts.fsync) {
  case DS_FSYNC_INTERVAL:
    if (!st->job && has_dirty(st)) start_round(st);
    else
      for (ds_store_stream_t *s = st->dirty_head; s; s = s->dirty_next) flush_sidecars(s);
    break;
  case DS_FSYNC_NEVER:
    while (st->dirty_head) {
      ds_store_stream_t *s = st->dirty_head;
      flush_sidecars(s);
      s->need_dirsync = 0;
      dirty_remove(st, s);
    }
    break;
  case DS_FSYNC_ALWAYS: /* fsync only when asked; keep the sidecars fresh */
    for (ds_store_stream_t *s = st->dirty_head; s; s = s->dirty_next) flush_sidecars(s);
    break;
  }
}

static void flush_one(ds_store_stream_t *s, void *ud) { flush_sidecars(s); }

static void free_timer(uv_handle_t *h) { free(h); }

static void y_close(ds_store_t *st) {
  int status = 0;
  ds__store_foreach(st, flush_one, NULL);
  int do_sync = st->opts.fsync != DS_FSYNC_NEVER;
  while (st->dirty_head) {
    ds_store_stream_t *s = st->dirty_head;
    if (do_sync && (s->fd >= 0 ? fdatasync(s->fd) : sync_file(s->file)) < 0) status = DS_EIO;
    char *dir = do_sync && s->need_dirsync ? parent_dir(s->file) : NULL;
    for (int lv = 0; dir && lv < s->need_dirsync; lv++) {
      if (ds_file_fsync_dir(dir) < 0) status = DS_EIO;
      char *up = parent_dir(dir);
      free(dir);
      dir = up;
    }
    free(dir);
    s->need_dirsync = 0;
    dirty_remove(st, s);
  }
  if (st->job) st->job->st = NULL; /* it finishes on the loop and runs its own callbacks */
  st->job = NULL;
  ds__cbq_run(&st->pending, status);
  if (st->timer) {
    uv_timer_stop(st->timer);
    uv_close((uv_handle_t *)st->timer, free_timer);
    st->timer = NULL;
  }
  if (st->lock_fd >= 0) close(st->lock_fd); /* releases the flock */
  st->lock_fd = -1;
}

/* ---- metadata ---- */

static int y_meta_load(ds_store_stream_t *s) {
  char *p = sidecar(s->file, ".meta");
  ds_buf_t b = DS_BUF_INIT;
  int rc = ds_file_read_all(p, &b);
  free(p);
  if (rc != 0) {
    ds_buf_free(&b);
    if (rc != DS_ENOTFOUND) return DS_EIO;
    s->meta_state = 1;
    return 0;
  }
  char err[160];
  int fork;
  uint64_t fork_off;
  if (ds__yaml_meta_parse(b.data, b.len, &fork, &fork_off, err, sizeof err) < 0) {
    ds_error("store", "%s.meta: damaged metadata sidecar (%zu bytes: %s): the stream's "
             "content type, lifetime and state are unknown; left as it is for `durable-stream "
             "check`", s->file, b.len, err);
    ds_buf_free(&b);
    s->meta_state = 3;
    return 0;
  }
  free(s->meta);
  s->meta_len = b.len;
  ds_buf_cstr(&b);
  s->meta = ds_buf_detach(&b, NULL);
  if (!s->meta) s->meta = ds_xstrdup("");
  s->meta_state = 2;
  return 0;
}

static int y_meta_store(ds_store_stream_t *s, const char *data, size_t n) {
  char *dst = sidecar(s->file, ".meta"); /* written through "<dst>.tmp" */
  int rc = ds_file_write_atomic(dst, data, n, 0644);
  free(dst);
  if (rc == DS_FILE_UNSYNCED) {
    ds_warn("store", "%s: metadata updated, but fsyncing its directory failed", s->file);
    rc = 0;
  }
  if (rc < 0) ds_error("store", "%s: metadata update failed: %s", s->file, ds_strerror(rc));
  return rc;
}

/* ---- delete / list ---- */

static int y_remove(ds_store_t *st, const char *path, ds_store_stream_t *s) {
  char *f = stream_file(st, path);
  int rc = 0;
  if (unlink(f) < 0) {
    if (errno != ENOENT) rc = DS_EIO;
    else if (!s) rc = DS_ENOTFOUND;
  }
  if (rc == 0) {
    static const char *const sides[] = {".offset", ".idx", ".base", ".meta", ".meta.tmp"};
    for (size_t i = 0; i < sizeof sides / sizeof *sides; i++) {
      char *p = sidecar(f, sides[i]);
      unlink(p);
      free(p);
    }
    /* Drop now-empty parent directories (rmdir refuses non-empty ones). */
    size_t rootlen = strlen(st->root);
    char *d = parent_dir(f);
    while (strlen(d) > rootlen && rmdir(d) == 0) {
      char *up = parent_dir(d);
      free(d);
      d = up;
    }
    free(d);
  }
  free(f);
  return rc;
}

static int ends_with(const char *s, size_t n, const char *suf) {
  size_t k = strlen(suf);
  return n >= k && memcmp(s + n - k, suf, k) == 0;
}

static int walk(ds_store_t *st, ds_buf_t *rel, void (*cb)(void *, const char *), void *ud,
                int depth) {
  if (depth > 300) return 0; /* paths are at most 512 bytes: deeper is not ours */
  size_t rootlen = strlen(st->root);
  ds_buf_t dirp = DS_BUF_INIT;
  ds_buf_append(&dirp, st->root, rootlen);
  if (rel->len) {
    ds_buf_putc(&dirp, '/');
    ds_buf_append(&dirp, rel->data, rel->len);
  }
  DIR *d = opendir(ds_buf_cstr(&dirp));
  if (!d) {
    ds_buf_free(&dirp);
    return errno == ENOENT ? 0 : DS_EIO;
  }
  struct dirent *e;
  size_t base = rel->len;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    size_t nl = strlen(e->d_name);
    int is_dir = e->d_type == DT_DIR, is_reg = e->d_type == DT_REG;
    if (e->d_type == DT_UNKNOWN) {
      struct stat sb;
      ds_buf_t full = DS_BUF_INIT;
      ds_buf_append(&full, dirp.data, dirp.len);
      ds_buf_putc(&full, '/');
      ds_buf_append(&full, e->d_name, nl);
      if (stat(ds_buf_cstr(&full), &sb) == 0) {
        is_dir = S_ISDIR(sb.st_mode);
        is_reg = S_ISREG(sb.st_mode);
      }
      ds_buf_free(&full);
    }
    rel->len = base;
    if (base) ds_buf_putc(rel, '/');
    if (is_dir) {
      ds_buf_append(rel, e->d_name, nl);
      walk(st, rel, cb, ud, depth + 1);
    } else if (is_reg && ends_with(e->d_name, nl, ".yaml") && nl > 5) {
      ds_buf_append(rel, e->d_name, nl - 5);
      const char *p = ds_buf_cstr(rel);
      if (ds__store_path_ok(p)) cb(ud, p);
    }
  }
  rel->len = base;
  closedir(d);
  ds_buf_free(&dirp);
  return 0;
}

static int y_list(ds_store_t *st, void (*cb)(void *ud, const char *path), void *ud) {
  ds_buf_t rel = DS_BUF_INIT;
  int rc = walk(st, &rel, cb, ud, 0);
  ds_buf_free(&rel);
  return rc;
}

const ds__store_ops_t ds__yaml_store_ops = {
    .name = "yaml",
    .open = y_open,
    .close = y_close,
    .load = y_load,
    .free_stream = y_free_stream,
    .exists = y_exists,
    .append = y_append,
    .read = y_read,
    .sync = y_sync,
    .meta_load = y_meta_load,
    .meta_store = y_meta_store,
    .remove = y_remove,
    .list = y_list,
};
