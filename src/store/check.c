/* check.c - offline verification and repair of a data directory's streams (see check.h).
 *
 * Each stream file is mapped read-only and analysed in one pass: the document boundaries
 * (a "---" line at byte 0 or after a newline), the end of the last complete document (its
 * createdAt line; anything after it is a torn tail), and for every document its shape, its
 * decoding (store/record.c, the same decoder reads use) and its offset against the one
 * expected at its place. Sidecars are compared with what the documents say. A repair
 * rewrites only what the analysis proved wrong, keeps every byte it takes out of a stream
 * file in a `.damaged-<ms>` file (written and fsynced before the stream file changes), and
 * analyses the stream again to report what is left.
 * The streams directory is locked exclusively (flock) for the whole walk; a running server
 * holds it shared, so neither runs while the other does.
 * Must not: open the store (its open-time recovery would change files while checking),
 * parse the metadata beyond "is it a JSON object, and its fork.offset".
 */
#include "store/check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/file.h"
#include "store/store.h"
#include "store/store_int.h"
#include "store/yaml_file.h"

typedef struct {
  FILE *out;
  int repair;
  ds_check_result_t *res;
  size_t unit_findings; /* findings of the stream or file being checked */
  int quiet;            /* re-analysis after a repair: count, do not print */
} ctx_t;

static void vline(ctx_t *c, const char *file, const char *kind, uint64_t byte, int with_byte,
                  const char *fmt, va_list ap) __attribute__((format(printf, 6, 0)));
static void vline(ctx_t *c, const char *file, const char *kind, uint64_t byte, int with_byte,
                  const char *fmt, va_list ap) {
  if (c->quiet) return;
  fprintf(c->out, "%s: ", file);
  if (with_byte) fprintf(c->out, "byte %" PRIu64 ": ", byte);
  if (kind) fprintf(c->out, "%s: ", kind);
  vfprintf(c->out, fmt, ap);
  fputc('\n', c->out);
}

/* Something wrong: one line "<file>: byte <n>: <what>". */
static void finding(ctx_t *c, const char *file, uint64_t byte, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finding(ctx_t *c, const char *file, uint64_t byte, const char *fmt, ...) {
  c->unit_findings++;
  if (!c->quiet) c->res->findings++;
  va_list ap;
  va_start(ap, fmt);
  vline(c, file, NULL, byte, 1, fmt, ap);
  va_end(ap);
}

/* What a repair did (or could not do). */
static void action(ctx_t *c, const char *file, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void action(ctx_t *c, const char *file, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vline(c, file, kind, 0, 0, fmt, ap);
  va_end(ap);
}

static void note(ctx_t *c, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note(ctx_t *c, const char *file, const char *fmt, ...) {
  if (!c->quiet) c->res->notes++;
  va_list ap;
  va_start(ap, fmt);
  vline(c, file, "note", 0, 0, fmt, ap);
  va_end(ap);
}

/* A file name built from a format (a stream file plus a sidecar suffix, mostly). */
static char *path_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path_of(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = ds_xmalloc((size_t)(n > 0 ? n : 0) + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)(n > 0 ? n : 0) + 1, fmt, ap);
  va_end(ap);
  return p;
}

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), k = strlen(suf);
  return n >= k && memcmp(s + n - k, suf, k) == 0;
}

static int is_file(const char *p) {
  struct stat sb;
  return lstat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* A decimal sidecar (.offset, .base): 1 = value, 0 = absent, -1 = damaged. */
static int read_num(const char *path, uint64_t *out) {
  ds_buf_t b = DS_BUF_INIT;
  int rc = ds_file_read_all(path, &b);
  if (rc == DS_ENOTFOUND) return 0;
  int ok = rc == 0 && b.len > 0 && b.len < 24;
  uint64_t v = 0;
  size_t i = 0;
  for (; ok && i < b.len && b.data[i] >= '0' && b.data[i] <= '9'; i++) {
    unsigned d = (unsigned)(b.data[i] - '0');
    if (v > (UINT64_MAX - d) / 10) ok = 0;
    v = v * 10 + d;
  }
  if (i == 0) ok = 0;
  for (; ok && i < b.len; i++)
    if (b.data[i] != '\n' && b.data[i] != ' ' && b.data[i] != '\r') ok = 0;
  ds_buf_free(&b);
  if (!ok) return -1;
  *out = v;
  return 1;
}

static int write_num(const char *path, uint64_t v) {
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%" PRIu64, v);
  int rc = ds_file_write_atomic(path, buf, (size_t)n, 0644);
  return rc == DS_FILE_UNSYNCED ? 0 : rc;
}

/* ---- analysis of one stream ---- */

typedef struct {
  uint64_t start, end; /* the document's bytes */
  uint64_t off;        /* the offset it holds, when decoded */
  int decoded;         /* stored shape and decodes */
  int dup;             /* an exact copy of the document before it */
} doc_t;

typedef struct {
  char *file; /* ".../<path>.yaml" */
  int fd;
  const char *map;
  uint64_t size, good_end;
  doc_t *docs;
  size_t n, cap;
  int junk;          /* bytes, but no document start anywhere */
  int meta;          /* 0 absent, 1 a JSON object, -1 damaged */
  int has_fork;
  uint64_t fork_off; /* the metadata's fork.offset */
  int base_side;     /* read_num of .base */
  uint64_t base_val;
  int off_side;      /* read_num of .offset */
  uint64_t off_val;
  uint64_t base;     /* the first offset the documents must start at */
  size_t first_bad;  /* first damaged document that is not an exact duplicate; n: none */
  uint64_t next;     /* the next offset once the damage is cut away */
  int docs_changed_needed; /* the .yaml needs a repair (damage, duplicates or torn tail) */
} sfile_t;

static void doc_push(sfile_t *f, uint64_t start) {
  if (f->n == f->cap) {
    f->cap = f->cap ? f->cap * 2 : 64;
    f->docs = ds_xrealloc(f->docs, f->cap * sizeof *f->docs);
  }
  memset(&f->docs[f->n], 0, sizeof f->docs[0]);
  f->docs[f->n++].start = start;
}

static void sfile_free(sfile_t *f) {
  if (f->map) munmap((void *)f->map, (size_t)f->size);
  if (f->fd >= 0) close(f->fd);
  free(f->docs);
  f->map = NULL;
  f->fd = -1;
  f->docs = NULL;
  f->n = f->cap = 0;
}

/* The metadata: whether it is a JSON object, and its fork.offset. */
static void check_meta(ctx_t *c, sfile_t *f) {
  char *p = path_of("%s.meta", f->file);
  ds_buf_t b = DS_BUF_INIT;
  int rc = ds_file_read_all(p, &b);
  if (rc == DS_ENOTFOUND) {
    f->meta = 0;
  } else if (rc < 0) {
    f->meta = -1;
    finding(c, p, 0, "cannot be read: %s", ds_strerror(rc));
  } else {
    char err[160];
    if (ds__yaml_meta_parse(b.data, b.len, &f->has_fork, &f->fork_off, err, sizeof err) < 0) {
      const char *q = strstr(err, "at byte ");
      f->meta = -1;
      finding(c, p, q ? strtoull(q + 8, NULL, 10) : 0, "damaged metadata (%zu bytes): %s; the "
              "stream's content type, lifetime and state are unknown", b.len, err);
    } else {
      f->meta = 1;
    }
  }
  ds_buf_free(&b);
  free(p);
}

/* Describes document i's offset against the one expected there. */
static void doc_finding(ctx_t *c, sfile_t *f, size_t i, uint64_t want) {
  doc_t *d = &f->docs[i];
  const char *doc = f->map + d->start;
  size_t len = (size_t)(d->end - d->start);
  if (!d->decoded) {
    if (!ds__yaml_doc_shape_ok(doc, len)) {
      uint64_t o;
      int has = ds__yaml_offset_line(doc, len, 1, &o) == 0;
      finding(c, f->file, d->start, "document %zu (expected offset %" PRIu64 ") %s%s", i, want,
              len >= 4 && memcmp(doc, "---\n", 4) == 0
                  ? "is cut short or merged with the next one: it does not end with its "
                    "createdAt line"
                  : "does not start with a '---' line",
              has ? "" : ", and has no offset line");
    } else {
      ds_buf_t repr = DS_BUF_INIT;
      uint64_t o;
      char err[160] = "";
      ds_record_decode_yaml(doc, len, &repr, &o, err, sizeof err);
      ds_buf_free(&repr);
      finding(c, f->file, d->start, "document %zu (expected offset %" PRIu64 ") does not "
              "decode: %s", i, want, err);
    }
    return;
  }
  if (d->off > want) {
    char gap[64];
    if (d->off == want + 1) snprintf(gap, sizeof gap, "offset %" PRIu64 " is", want);
    else snprintf(gap, sizeof gap, "offsets %" PRIu64 "..%" PRIu64 " are", want, d->off - 1);
    finding(c, f->file, d->start, "document %zu holds offset %" PRIu64 ", expected %" PRIu64
            ": %s missing", i, d->off, want, gap);
  }
  else if (i > 0 && f->docs[i - 1].decoded && f->docs[i - 1].off == d->off)
    finding(c, f->file, d->start, "document %zu holds offset %" PRIu64 " again, expected %"
            PRIu64 " (a duplicate that differs from the document at byte %" PRIu64 ")", i,
            d->off, want, f->docs[i - 1].start);
  else
    finding(c, f->file, d->start, "document %zu holds offset %" PRIu64 ", expected %" PRIu64
            " (out of order)", i, d->off, want);
}

static uint64_t idx_entry(const ds_buf_t *b, size_t k) {
  uint64_t v = 0;
  for (int j = 7; j >= 0; j--) v = (v << 8) | (unsigned char)b->data[k * 8 + (size_t)j];
  return v;
}

static void check_idx(ctx_t *c, sfile_t *f) {
  char *p = path_of("%s.idx", f->file);
  ds_buf_t b = DS_BUF_INIT;
  int rc = ds_file_read_all(p, &b);
  if (rc == DS_ENOTFOUND) {
    if (f->n) finding(c, p, 0, "missing (start-up rebuilds it; --repair writes it)");
  } else if (rc < 0) {
    finding(c, p, 0, "cannot be read: %s", ds_strerror(rc));
  } else {
    size_t k = 0, m = b.len / 8;
    while (k < m && k < f->n && idx_entry(&b, k) == f->docs[k].start) k++;
    if (k < m && k < f->n)
      finding(c, p, (uint64_t)k * 8, "entry %zu says byte %" PRIu64 ", but document %zu starts "
              "at byte %" PRIu64, k, idx_entry(&b, k), k, f->docs[k].start);
    else if (b.len % 8)
      finding(c, p, (uint64_t)m * 8, "ends with a partial entry (%zu bytes)", b.len % 8);
    else if (m > f->n)
      finding(c, p, (uint64_t)f->n * 8, "holds %zu entries for %zu documents", m, f->n);
    else if (m < f->n)
      finding(c, p, (uint64_t)m * 8, "holds %zu entries for %zu documents (behind: start-up "
              "extends it)", m, f->n);
  }
  ds_buf_free(&b);
  free(p);
}

/* Reads a stream file and reports every finding about it and its sidecars. 0, or a
 * negative DS_E* when the file could not be read at all (reported). */
static int analyze(ctx_t *c, sfile_t *f) {
  f->fd = open(f->file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (f->fd < 0) {
    finding(c, f->file, 0, "cannot be opened: %s", strerror(errno));
    return DS_EIO;
  }
  struct stat sb;
  if (fstat(f->fd, &sb) < 0) {
    finding(c, f->file, 0, "cannot be examined: %s", strerror(errno));
    return DS_EIO;
  }
  f->size = (uint64_t)sb.st_size;
  if (f->size) {
    void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (m == MAP_FAILED) {
      finding(c, f->file, 0, "cannot be mapped: %s", strerror(errno));
      return DS_EIO;
    }
    f->map = m;
  }
  const char *p = f->map;
  /* end of the last complete document: just past the last createdAt line */
  f->good_end = 0;
  for (size_t len = (size_t)f->size; len > 0;) {
    const char *nl = memrchr(p, '\n', len);
    if (!nl) break;
    uint64_t ls = (uint64_t)(nl - p) + 1;
    if (ls + DS__YAML_CREATED_LEN <= f->size && ds__yaml_created_line(nl + 1)) {
      f->good_end = ls + DS__YAML_CREATED_LEN;
      break;
    }
    len = (size_t)(nl - p);
  }
  /* document starts */
  if (f->good_end > 0) {
    int at0 = f->good_end >= 4 && memcmp(p, "---\n", 4) == 0;
    doc_push(f, 0);
    for (uint64_t from = at0 ? 3 : 0; from < f->good_end;) {
      const char *hit = memmem(p + from, (size_t)(f->good_end - from), "\n---\n", 5);
      if (!hit) break;
      uint64_t st = (uint64_t)(hit - p) + 1;
      if (st >= f->good_end) break;
      doc_push(f, st);
      from = st;
    }
    if (!at0 && f->n == 1) { /* no document anywhere: not a stream file */
      f->junk = 1;
      f->n = 0;
    }
    for (size_t i = 0; i < f->n; i++)
      f->docs[i].end = i + 1 < f->n ? f->docs[i + 1].start : f->good_end;
  }
  /* the first offset: .base, else the metadata's fork point, else (empty) .offset, else 0 */
  check_meta(c, f);
  char *bp = path_of("%s.base", f->file), *op = path_of("%s.offset", f->file);
  f->base_side = read_num(bp, &f->base_val);
  f->off_side = read_num(op, &f->off_val);
  if (f->base_side == 1) f->base = f->base_val;
  else if (f->has_fork) f->base = f->fork_off;
  else if (f->n == 0 && f->off_side == 1) f->base = f->off_val;
  else f->base = 0;
  if (f->base_side < 0)
    finding(c, bp, 0, "damaged (a fork's first offset)%s", f->has_fork ? "" : " and the metadata "
            "names no fork point");
  else if (f->base_side == 1 && f->has_fork && f->base_val != f->fork_off)
    finding(c, bp, 0, "says %" PRIu64 ", the metadata's fork point is %" PRIu64, f->base_val,
            f->fork_off);
  else if (f->base_side == 0 && f->base != 0)
    finding(c, bp, 0, "missing: the stream is a fork at %" PRIu64 " (--repair writes it, so "
            "that start-up can check the first document)", f->base);
  /* the documents */
  if (f->junk)
    finding(c, f->file, 0, "not a stream file: no document ('---' line) in its %" PRIu64
            " bytes", f->size);
  uint64_t want = f->base;
  f->first_bad = f->n;
  for (size_t i = 0; i < f->n; i++) {
    doc_t *d = &f->docs[i];
    const char *doc = p + d->start;
    size_t len = (size_t)(d->end - d->start);
    if (ds__yaml_doc_shape_ok(doc, len)) {
      ds_buf_t repr = DS_BUF_INIT;
      char err[160];
      d->decoded = ds_record_decode_yaml(doc, len, &repr, &d->off, err, sizeof err) == 0;
      ds_buf_free(&repr);
    }
    doc_t *prev = i ? &f->docs[i - 1] : NULL;
    if (d->decoded && prev && prev->decoded && prev->off == d->off &&
        prev->end - prev->start == len && memcmp(p + prev->start, doc, len) == 0) {
      d->dup = 1;
      finding(c, f->file, d->start, "document %zu is an exact duplicate of the document at byte %"
              PRIu64 " (offset %" PRIu64 ")", i, prev->start, d->off);
      continue;
    }
    if (!d->decoded || d->off != want) {
      doc_finding(c, f, i, want);
      if (f->first_bad == f->n) f->first_bad = i;
      want = d->decoded ? d->off + 1 : want + 1; /* resynchronise, to report what follows */
      continue;
    }
    want++;
  }
  size_t kept = 0;
  for (size_t i = 0; i < f->first_bad; i++) kept += !f->docs[i].dup;
  f->next = f->base + kept;
  if (f->good_end < f->size)
    finding(c, f->file, f->good_end, "torn tail: %" PRIu64 " bytes after the last complete "
            "document (start-up moves them aside and truncates them)", f->size - f->good_end);
  f->docs_changed_needed = f->junk || f->first_bad < f->n || f->good_end < f->size || kept != f->first_bad;
  /* the sidecars */
  check_idx(c, f);
  if (f->off_side < 0) {
    finding(c, op, 0, "damaged: not a decimal number");
  } else if (f->off_side == 0) {
    if (f->n || f->base) finding(c, op, 0, "missing (the next offset)");
  } else if (!f->docs_changed_needed && f->off_val != f->next) {
    finding(c, op, 0, "says %" PRIu64 ", the documents say %" PRIu64 "%s", f->off_val, f->next,
            f->off_val < f->next ? " (behind: start-up rewrites it)" : "");
  }
  free(bp);
  free(op);
  return 0;
}

/* ---- repair of one stream ---- */

static int write_idx(const char *file, const uint64_t *starts, size_t n) {
  char *p = path_of("%s.idx", file);
  unsigned char *b = ds_xmalloc(n * 8 + 1);
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 8; k++) b[i * 8 + (size_t)k] = (unsigned char)(starts[i] >> (8 * k));
  int rc = ds_file_write_atomic(p, b, n * 8, 0644);
  free(b);
  free(p);
  return rc == DS_FILE_UNSYNCED ? 0 : rc;
}

static int fsync_dir_of(const char *file) {
  char *d = ds_xstrdup(file);
  char *sl = strrchr(d, '/');
  if (sl) *sl = '\0';
  int rc = ds_file_fsync_dir(sl ? d : ".");
  free(d);
  return rc;
}

/* Writes the kept documents ([0, cut) without the duplicates) as the new stream file:
 * a temporary file, fsynced, renamed over it. */
static int rewrite_without(sfile_t *f, uint64_t cut) {
  char *tmp = path_of("%s.repair.tmp", f->file);
  int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  int rc = out < 0 ? ds_err_from_errno(errno) : 0;
  for (size_t i = 0; rc == 0 && i < f->n && f->docs[i].start < cut; i++) {
    if (f->docs[i].dup) continue;
    const char *q = f->map + f->docs[i].start;
    size_t len = (size_t)(f->docs[i].end - f->docs[i].start);
    while (len && rc == 0) {
      ssize_t w = write(out, q, len);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) rc = w < 0 ? ds_err_from_errno(errno) : DS_ENOSPC;
      else {
        q += w;
        len -= (size_t)w;
      }
    }
  }
  if (rc == 0 && fsync(out) < 0) rc = ds_err_from_errno(errno);
  if (out >= 0) close(out);
  if (rc == 0 && rename(tmp, f->file) < 0) rc = ds_err_from_errno(errno);
  if (rc < 0) unlink(tmp);
  else fsync_dir_of(f->file);
  free(tmp);
  return rc;
}

static void describe_range(sfile_t *f, size_t from, char *buf, size_t n) {
  size_t cnt = 0;
  uint64_t lo = UINT64_MAX, hi = 0;
  for (size_t i = from; i < f->n; i++) {
    cnt++;
    if (f->docs[i].decoded) {
      if (f->docs[i].off < lo) lo = f->docs[i].off;
      if (f->docs[i].off > hi) hi = f->docs[i].off;
    }
  }
  if (lo == UINT64_MAX) snprintf(buf, n, "%zu documents, none readable", cnt);
  else snprintf(buf, n, "%zu documents; the readable ones hold offsets %" PRIu64 "..%" PRIu64,
                cnt, lo, hi);
}

static void repair(ctx_t *c, sfile_t *f) {
  char *bp = path_of("%s.base", f->file), *op = path_of("%s.offset", f->file);
  int failed = 0;
  if (f->docs_changed_needed) {
    uint64_t cut = f->junk ? 0 : f->first_bad < f->n ? f->docs[f->first_bad].start : f->good_end;
    size_t nr = 0;
    uint64_t(*r)[2] = ds_xmalloc((f->n + 1) * sizeof *r);
    for (size_t i = 0; i < f->n && f->docs[i].start < cut; i++)
      if (f->docs[i].dup) {
        r[nr][0] = f->docs[i].start;
        r[nr++][1] = f->docs[i].end;
      }
    size_t ndup = nr;
    if (cut < f->size) {
      r[nr][0] = cut;
      r[nr++][1] = f->size;
    }
    char aside[4200] = "";
    int rc = nr ? ds__yaml_save_aside(f->fd, (const uint64_t(*)[2])r, nr, f->file, aside,
                                      sizeof aside)
                : 0;
    free(r);
    if (rc < 0) {
      action(c, f->file, "NOT repaired", "cannot save the damaged bytes aside: %s (nothing "
             "changed)", ds_strerror(rc));
      failed = 1;
    } else {
      if (ndup) rc = rewrite_without(f, cut);
      else {
        int wfd = open(f->file, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        rc = wfd < 0 ? ds_err_from_errno(errno) : 0;
        if (rc == 0 && (ftruncate(wfd, (off_t)cut) < 0 || fsync(wfd) < 0))
          rc = ds_err_from_errno(errno);
        if (wfd >= 0) close(wfd);
      }
      if (rc < 0) {
        action(c, f->file, "NOT repaired", "the damaged bytes are saved in %s, but the stream "
               "file could not be rewritten: %s", aside, ds_strerror(rc));
        failed = 1;
      } else {
        for (size_t i = 0; i < f->n && f->docs[i].start < cut; i++)
          if (f->docs[i].dup)
            action(c, f->file, "repaired", "removed document %zu at byte %" PRIu64 ", an exact "
                   "duplicate of offset %" PRIu64 " (a copy is in %s)", i, f->docs[i].start,
                   f->docs[i].off, aside);
        if (cut < f->size) {
          char what[160];
          if (f->junk || f->first_bad == f->n) snprintf(what, sizeof what, "the torn tail");
          else describe_range(f, f->first_bad, what, sizeof what);
          char last[64] = "it is now empty";
          if (f->next > f->base)
            snprintf(last, sizeof last, "its last offset is now %" PRIu64, f->next - 1);
          action(c, f->file, "repaired", "moved bytes %" PRIu64 "..%" PRIu64 " (%s) to %s; %s, "
                 "appends continue at %" PRIu64, cut, f->size, what, aside, last, f->next);
        }
      }
    }
  }
  if (!failed) {
    /* sidecars from the documents that are now in the file */
    uint64_t *starts = ds_xmalloc((f->n + 1) * sizeof *starts);
    size_t k = 0;
    uint64_t pos = 0;
    for (size_t i = 0; i < f->first_bad && !f->junk; i++) {
      if (f->docs[i].dup) continue;
      starts[k++] = pos;
      pos += f->docs[i].end - f->docs[i].start;
    }
    int rc = write_idx(f->file, starts, k);
    free(starts);
    if (rc == 0) rc = write_num(op, f->next);
    if (rc == 0 && f->base != 0 && (f->base_side != 1 || f->base_val != f->base)) {
      rc = write_num(bp, f->base);
      if (rc == 0) action(c, bp, "repaired", "written: %" PRIu64, f->base);
    } else if (rc == 0 && f->base == 0 && f->base_side != 0) {
      rc = ds_file_remove(bp) < 0 ? DS_EIO : 0;
      if (rc == 0) action(c, bp, "repaired", "removed (the stream starts at 0)");
    }
    if (rc < 0) action(c, f->file, "NOT repaired", "rewriting its sidecars failed: %s",
                       ds_strerror(rc));
    else action(c, f->file, "repaired", "sidecars rewritten: .idx (%zu entries), .offset (%"
                PRIu64 ")", k, f->next);
  }
  if (f->meta < 0)
    action(c, f->file, "NOT repaired", "its metadata (.meta) cannot be rebuilt from the "
           "documents: restore it from a backup or write it by hand (e.g. "
           "{\"contentType\":\"application/json\"}); until then the server refuses the stream");
  free(bp);
  free(op);
}

/* ---- the walk ---- */

static int is_stream_name(const char *name) { return ends_with(name, ".yaml") && strlen(name) > 5; }

static void check_stream(ctx_t *c, const char *file, const char *rel) {
  c->res->streams++;
  c->unit_findings = 0;
  if (!ds__store_path_ok(rel)) {
    note(c, file, "not a valid stream path: not checked (the server never reads it)");
    return;
  }
  sfile_t f = {0};
  f.fd = -1;
  f.file = ds_xstrdup(file);
  int rc = analyze(c, &f);
  size_t found = c->unit_findings;
  if (found && c->repair && rc == 0) {
    repair(c, &f);
    sfile_free(&f);
    free(f.file);
    memset(&f, 0, sizeof f);
    f.fd = -1;
    f.file = ds_xstrdup(file);
    c->quiet = 1;
    c->unit_findings = 0;
    analyze(c, &f);
    c->quiet = 0;
    if (c->unit_findings)
      action(c, file, "NOT repaired", "%zu finding%s left (see above)", c->unit_findings,
             c->unit_findings == 1 ? "" : "s");
  }
  if (found) {
    c->res->damaged++;
    if (c->repair && rc == 0 && c->unit_findings == 0) c->res->repaired++;
    else c->res->left++;
  }
  sfile_free(&f);
  free(f.file);
}

/* A file in the streams tree that is not a stream file: a sidecar (checked with its
 * stream, or orphaned), a temporary file, a kept .damaged file, or something unknown. */
static void check_other(ctx_t *c, const char *dir, const char *name) {
  char *full = ds_xmalloc(strlen(dir) + strlen(name) + 2);
  sprintf(full, "%s/%s", dir, name);
  static const char *const sides[] = {".yaml.offset", ".yaml.idx", ".yaml.base", ".yaml.meta"};
  for (size_t i = 0; i < sizeof sides / sizeof *sides; i++) {
    if (!ends_with(name, sides[i]) || strlen(name) == strlen(sides[i])) continue;
    size_t keep = strlen(full) - strlen(sides[i]) + 5; /* "<...>.yaml" */
    char *stream = ds_xstrndup(full, keep);
    int has = is_file(stream);
    free(stream);
    if (!has) {
      c->unit_findings = 0;
      finding(c, full, 0, "orphaned sidecar: there is no stream file beside it");
      c->res->damaged++;
      int rc;
      if (!c->repair) {
        c->res->left++;
      } else if (i == 3) { /* a new stream at this path would take it for its own */
        char aside[4200];
        rc = ds_file_move_aside(full, aside, sizeof aside);
        if (rc < 0) action(c, full, "NOT repaired", "cannot move it aside: %s", ds_strerror(rc));
        else action(c, full, "repaired", "moved to %s", aside);
        if (rc < 0) c->res->left++;
        else c->res->repaired++;
      } else {
        rc = ds_file_remove(full);
        if (rc < 0) action(c, full, "NOT repaired", "cannot remove it: %s", ds_strerror(rc));
        else action(c, full, "repaired", "removed");
        if (rc < 0) c->res->left++;
        else c->res->repaired++;
      }
    }
    free(full);
    return;
  }
  if (strstr(name, ".damaged-")) {
    note(c, full, "damaged bytes kept by an earlier repair or start-up (not read; delete it "
         "once inspected)");
  } else if (ends_with(name, ".tmp")) {
    finding(c, full, 0, "stray temporary file (an interrupted write)");
    c->res->damaged++;
    if (c->repair) {
      int rc = ds_file_remove(full);
      if (rc < 0) action(c, full, "NOT repaired", "cannot remove it: %s", ds_strerror(rc));
      else action(c, full, "repaired", "removed");
      if (rc < 0) c->res->left++;
      else c->res->repaired++;
    } else {
      c->res->left++;
    }
  } else {
    note(c, full, "unknown file: not part of any stream, left alone");
  }
  free(full);
}

static int walk(ctx_t *c, const char *root, ds_buf_t *rel, int depth) {
  if (depth > 300) return 0;
  ds_buf_t dirp = DS_BUF_INIT;
  ds_buf_puts(&dirp, root);
  if (rel->len) {
    ds_buf_putc(&dirp, '/');
    ds_buf_append(&dirp, rel->data, rel->len);
  }
  const char *dir = ds_buf_cstr(&dirp);
  DIR *d = opendir(dir);
  if (!d) {
    int e = errno;
    ds_buf_free(&dirp);
    if (e == ENOENT && depth == 0) return 0;
    fprintf(c->out, "%s: cannot be read: %s\n", dir, strerror(e));
    return DS_EIO;
  }
  /* names first, sorted: the report is stable and streams come before their sidecars */
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (n == cap) names = ds_xrealloc(names, (cap = cap ? cap * 2 : 32) * sizeof *names);
    names[n++] = ds_xstrdup(e->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof *names, (int (*)(const void *, const void *))strcmp);
  int rc = 0;
  size_t base = rel->len;
  for (size_t i = 0; i < n; i++) {
    ds_buf_t full = DS_BUF_INIT;
    ds_buf_printf(&full, "%s/%s", dir, names[i]);
    struct stat sb;
    if (lstat(ds_buf_cstr(&full), &sb) < 0) {
      ds_buf_free(&full);
      continue;
    }
    rel->len = base;
    if (base) ds_buf_putc(rel, '/');
    if (S_ISDIR(sb.st_mode)) {
      ds_buf_puts(rel, names[i]);
      if (walk(c, root, rel, depth + 1) < 0) rc = DS_EIO;
    } else if (!S_ISREG(sb.st_mode)) {
      note(c, ds_buf_cstr(&full), "not a regular file (a symlink?): not followed");
    } else if (is_stream_name(names[i])) {
      ds_buf_append(rel, names[i], strlen(names[i]) - 5);
      check_stream(c, ds_buf_cstr(&full), ds_buf_cstr(rel));
    } else {
      check_other(c, dir, names[i]);
    }
    ds_buf_free(&full);
  }
  rel->len = base;
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  ds_buf_free(&dirp);
  return rc;
}

int ds_store_check(const char *data_dir, int repair, FILE *out, ds_check_result_t *res) {
  memset(res, 0, sizeof *res);
  ctx_t c = {out, repair, res, 0, 0};
  struct stat sb;
  if (stat(data_dir, &sb) < 0) {
    fprintf(out, "%s: cannot be read: %s\n", data_dir, strerror(errno));
    return DS_ENOTFOUND;
  }
  if (!S_ISDIR(sb.st_mode)) {
    fprintf(out, "%s: not a directory\n", data_dir);
    return DS_ENOTFOUND;
  }
  char *root = path_of("%s/streams", data_dir);
  /* a running server holds a shared lock on the streams directory (yaml_store.c): files
   * it is appending to would look torn, and a repair would cut what it writes */
  int lock = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) < 0) {
    int e = errno;
    close(lock);
    fprintf(out, "%s: %s\n", root, e == EWOULDBLOCK ? "in use by a running server: stop it first"
                                                      : strerror(e));
    free(root);
    return DS_EBUSY;
  }
  ds_buf_t rel = DS_BUF_INIT;
  int rc = walk(&c, root, &rel, 0);
  ds_buf_free(&rel);
  if (lock >= 0) close(lock);
  free(root);
  return rc;
}
