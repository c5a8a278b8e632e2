/* file.c - whole-file helpers (see file.h).
 *
 * Provides: mkdir -p, read-all, atomic durable replace, durable remove, move-aside.
 * Must not: keep descriptors open between calls or retry silently: every failure is
 * returned as a DS_E* code for the caller to log with its own context.
 */
#include "core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"

static int fsync_dir_of(const char *path) {
  const char *sl = strrchr(path, '/');
  char *dir = sl ? ds_xstrndup(path, (size_t)(sl - path)) : ds_xstrdup(".");
  if (!*dir) {
    free(dir);
    dir = ds_xstrdup("/");
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0) return ds_err_from_errno(errno);
  int rc = fsync(fd) < 0 ? ds_err_from_errno(errno) : 0;
  close(fd);
  return rc;
}

int ds_file_mkdir_p(const char *dir, int mode) {
  char *p = ds_xstrdup(dir);
  int rc = 0;
  for (char *q = p + 1;; q++) {
    if (*q == '/' || *q == '\0') {
      char c = *q;
      *q = '\0';
      if (mkdir(p, c == '\0' ? (mode_t)mode : 0755) != 0 && errno != EEXIST) {
        rc = ds_err_from_errno(errno);
        break;
      }
      *q = c;
      if (c == '\0') break;
    }
  }
  free(p);
  return rc;
}

int ds_file_read_all(const char *path, ds_buf_t *out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? DS_ENOTFOUND : ds_err_from_errno(errno);
  char tmp[4096];
  int rc = 0;
  for (;;) {
    ssize_t r = read(fd, tmp, sizeof tmp);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = ds_err_from_errno(errno);
      break;
    }
    if (r == 0) break;
    ds_buf_append(out, tmp, (size_t)r);
  }
  close(fd);
  return rc;
}

int ds_file_write_atomic(const char *path, const void *data, size_t n, int mode) {
  size_t pl = strlen(path);
  char *tmp = ds_xmalloc(pl + 5);
  memcpy(tmp, path, pl);
  memcpy(tmp + pl, ".tmp", 5);
  int rc = 0;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
  if (fd < 0) {
    rc = ds_err_from_errno(errno);
  } else {
    const char *p = data;
    size_t done = 0;
    while (rc == 0 && done < n) {
      ssize_t w = write(fd, p + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) rc = ds_err_from_errno(errno);
      else done += (size_t)w;
    }
    if (rc == 0 && fsync(fd) < 0) rc = ds_err_from_errno(errno);
    if (close(fd) < 0 && rc == 0) rc = ds_err_from_errno(errno);
    if (rc == 0 && rename(tmp, path) < 0) rc = ds_err_from_errno(errno);
    if (rc < 0) unlink(tmp);
  }
  if (rc == 0) rc = fsync_dir_of(path);
  free(tmp);
  if (rc == DS_ENOTFOUND) rc = DS_EIO; /* a missing directory is an I/O failure here */
  return rc;
}

int ds_file_remove(const char *path) {
  if (unlink(path) < 0) {
    if (errno == ENOENT) return 0;
    return ds_err_from_errno(errno);
  }
  return fsync_dir_of(path);
}

int ds_file_move_aside(const char *path, char *aside, size_t asidelen) {
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_printf(&b, "%s.damaged-%lld", path, (long long)ds_clock_wall_ms());
  int rc = 0;
  if (rename(path, ds_buf_cstr(&b)) < 0) rc = ds_err_from_errno(errno);
  else rc = fsync_dir_of(path);
  if (aside && asidelen) snprintf(aside, asidelen, "%s", ds_buf_cstr(&b));
  ds_buf_free(&b);
  return rc;
}
