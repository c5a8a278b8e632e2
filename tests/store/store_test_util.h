/* store_test_util.h - helpers shared by the store tests: temp dirs, hand-written record
 * documents in the contract's layout, loop polling with deadlines, record collection.
 * Must not: depend on the codec (documents are written by hand, repr alongside).
 */
#ifndef DS_TESTS_STORE_TEST_UTIL_H
#define DS_TESTS_STORE_TEST_UTIL_H

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/store.h"

/* One record rendered both ways, as the stream layer would. */
typedef struct {
  ds_buf_t yaml, repr;
} t_rec_t;

static inline void t_rec_make(t_rec_t *r, const char *path, uint64_t off, const char *text) {
  ds_buf_init(&r->yaml);
  ds_buf_init(&r->repr);
  ds_buf_printf(&r->yaml,
                "---\n"
                "type: test:event\n"
                "payload:\n"
                "  n: %" PRIu64 "\n"
                "  text: %s\n"
                "version: \"1\"\n"
                "path: %s\n"
                "offset: \"%016" PRIu64 "\"\n"
                "createdAt: 2026-01-20T12:00:00.000Z\n",
                off, text, path, off);
  ds_buf_printf(&r->repr,
                "{\"type\":\"test:event\",\"payload\":{\"n\":%" PRIu64 ",\"text\":\"%s\"},"
                "\"version\":\"1\",\"path\":\"%s\",\"offset\":\"%016" PRIu64 "\","
                "\"createdAt\":\"2026-01-20T12:00:00.000Z\"}",
                off, text, path, off);
}

static inline void t_rec_free(t_rec_t *r) {
  ds_buf_free(&r->yaml);
  ds_buf_free(&r->repr);
}

/* Appends n records (offsets next..next+n-1) with one ds_store_append call. */
static inline int t_append(ds_store_stream_t *s, size_t n, const char *text) {
  uint64_t next = ds_store_next_offset(s);
  t_rec_t *r = ds_xcalloc(n, sizeof *r);
  ds_record_in_t *in = ds_xcalloc(n, sizeof *in);
  for (size_t i = 0; i < n; i++) {
    t_rec_make(&r[i], ds_store_stream_path(s), next + i, text);
    in[i].yaml = r[i].yaml.data;
    in[i].yaml_len = r[i].yaml.len;
    in[i].repr = r[i].repr.data;
    in[i].repr_len = r[i].repr.len;
  }
  int rc = ds_store_append(s, in, n);
  for (size_t i = 0; i < n; i++) t_rec_free(&r[i]);
  free(r);
  free(in);
  return rc;
}

static inline char *t_expected_repr(const char *path, uint64_t off, const char *text) {
  t_rec_t r;
  t_rec_make(&r, path, off, text);
  ds_buf_free(&r.yaml);
  const char *c = ds_buf_cstr(&r.repr);
  (void)c;
  return ds_buf_detach(&r.repr, NULL);
}

/* Collected read results. */
typedef struct {
  uint64_t *offs;
  char **reprs;
  size_t n, cap;
  size_t stop_after; /* 0 = never stop early */
} t_coll_t;

static inline int t_collect(void *ud, uint64_t off, const char *repr, size_t len) {
  t_coll_t *c = ud;
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 16;
    c->offs = ds_xrealloc(c->offs, c->cap * sizeof *c->offs);
    c->reprs = ds_xrealloc(c->reprs, c->cap * sizeof *c->reprs);
  }
  c->offs[c->n] = off;
  c->reprs[c->n] = ds_xstrndup(repr, len);
  c->n++;
  return c->stop_after && c->n >= c->stop_after;
}

static inline void t_coll_free(t_coll_t *c) {
  for (size_t i = 0; i < c->n; i++) free(c->reprs[i]);
  free(c->offs);
  free(c->reprs);
  memset(c, 0, sizeof *c);
}

/* Temp directory under /tmp, removed recursively by t_rmrf. */
static inline char *t_mkdtemp(void) {
  char *d = ds_xstrdup("/tmp/ds-store-test-XXXXXX");
  if (!mkdtemp(d)) {
    perror("mkdtemp");
    abort();
  }
  return d;
}

static inline void t_rmrf(const char *path) {
  struct stat sb;
  if (lstat(path, &sb) < 0) return;
  if (S_ISDIR(sb.st_mode)) {
    DIR *d = opendir(path);
    if (d) {
      struct dirent *e;
      while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t n = strlen(path) + strlen(e->d_name) + 2;
        char *sub = ds_xmalloc(n);
        snprintf(sub, n, "%s/%s", path, e->d_name);
        t_rmrf(sub);
        free(sub);
      }
      closedir(d);
    }
    rmdir(path);
  } else {
    unlink(path);
  }
}

static inline char *t_path(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = ds_xmalloc(n);
  snprintf(p, n, "%s/%s", a, b);
  return p;
}

static inline long t_file_size(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 ? (long)sb.st_size : -1;
}

static inline int t_file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

static inline char *t_read_file(const char *p, size_t *len) {
  FILE *f = fopen(p, "rb");
  if (!f) return NULL;
  ds_buf_t b = DS_BUF_INIT;
  char tmp[8192];
  size_t n;
  while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) ds_buf_append(&b, tmp, n);
  fclose(f);
  ds_buf_cstr(&b);
  return ds_buf_detach(&b, len);
}

static inline void t_write_file(const char *p, const void *data, size_t n, const char *mode) {
  FILE *f = fopen(p, mode);
  if (!f) {
    perror(p);
    abort();
  }
  if (n) fwrite(data, 1, n, f);
  fclose(f);
}

/* Runs the loop until *flag is set or 10 s pass; a ref'd poll timer keeps it turning even
 * when only unref'd handles (the store's housekeeping timer) are active. */
static inline void t_poll_cb(uv_timer_t *t) { (void)t; }
static inline int t_run_until(uv_loop_t *loop, volatile int *flag) {
  uv_timer_t poll;
  uv_timer_init(loop, &poll);
  uv_timer_start(&poll, t_poll_cb, 2, 2);
  uint64_t deadline = uv_now(loop) + 10000;
  while (!*flag && uv_now(loop) < deadline) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&poll, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  return *flag;
}

/* Closes the store, lets close callbacks run and checks the loop is empty. */
static inline int t_close_store(ds_store_t *st, uv_loop_t *loop) {
  ds_store_close(st);
  return uv_run(loop, UV_RUN_DEFAULT);
}

#endif
