/* file.c - whole-file helpers (see file.h).
 *
 * Provides: durable mkdir -p, read-all, atomic replace (durable or not), remove, explicit
 * file / directory fsync, move-aside.
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

int ds_file_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ds_err_from_errno(errno);
  int rc = fsync(fd) < 0 ? ds_err_from_errno(errno) : 0;
  close(fd);
  return rc;
}

int ds_file_fsync(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return errno == ENOENT ? DS_ENOTFOUND : ds_err_from_errno(errno);
  int rc = fsync(fd) < 0 ? ds_err_from_errno(errno) : 0;
  close(fd);
  return rc;
}

/* fsyncs the directory holding path ("." for a bare name, "/" for "/name") */
static int fsync_dir_of(const char *path) {
  const char *sl = strrchr(path, '/');
  char *dir = sl ? ds_xstrndup(path, (size_t)(sl - path)) : ds_xstrdup(".");
  if (!*dir) {
    free(dir);
    dir = ds_xstrdup("/");
  }
  int rc = ds_file_fsync_dir(dir);
  free(dir);
  return rc;
}

int ds_file_mkdir_p(const char *dir, int mode) {
  if (!dir || !*dir) return DS_EINVAL;
  char *p = ds_xstrdup(dir);
  size_t n = strlen(p);
  while (n > 1 && p[n - 1] == '/') p[--n] = '\0'; /* "a/b/": b is the last level */
  int rc = 0;
  for (char *q = p + 1;; q++) {
    if (*q == '/' || *q == '\0') {
      char c = *q;
      *q = '\0';
      if (mkdir(p, c == '\0' ? (mode_t)mode : 0755) == 0) {
        /* the new entry lives in the parent: without this it can vanish on power loss */
        rc = fsync_dir_of(p);
        if (rc != 0) break;
      } else if (errno != EEXIST) {
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

int ds_file_write_atomic_opt(const char *path, const void *data, size_t n, int mode,
                             bool sync) {
  size_t pl = strlen(path);
  char *tmp = ds_xmalloc(pl + 5);
  memcpy(tmp, path, pl);
  memcpy(tmp + pl, ".tmp", 5);
  int rc = 0;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
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
    if (rc == 0 && sync && fsync(fd) < 0) rc = ds_err_from_errno(errno);
    if (close(fd) < 0 && rc == 0) rc = ds_err_from_errno(errno);
    if (rc == 0 && rename(tmp, path) < 0) rc = ds_err_from_errno(errno);
    if (rc < 0) unlink(tmp);
  }
  /* the rename is done: a failing directory fsync no longer means "old file kept" */
  if (rc == 0 && sync && fsync_dir_of(path) != 0) rc = DS_FILE_UNSYNCED;
  free(tmp);
  if (rc == DS_ENOTFOUND) rc = DS_EIO; /* a missing directory is an I/O failure here */
  return rc;
}

int ds_file_write_atomic(const char *path, const void *data, size_t n, int mode) {
  return ds_file_write_atomic_opt(path, data, n, mode, true);
}

int ds_file_remove_opt(const char *path, bool sync) {
  if (unlink(path) < 0) {
    if (errno == ENOENT) return 0;
    return ds_err_from_errno(errno);
  }
  return sync && fsync_dir_of(path) != 0 ? DS_FILE_UNSYNCED : 0;
}

int ds_file_remove(const char *path) { return ds_file_remove_opt(path, true); }

int ds_file_move_aside(const char *path, char *aside, size_t asidelen) {
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_printf(&b, "%s.damaged-%lld", path, (long long)ds_clock_wall_ms());
  int rc = 0;
  if (rename(path, ds_buf_cstr(&b)) < 0) rc = ds_err_from_errno(errno);
  else if (fsync_dir_of(path) != 0) rc = DS_FILE_UNSYNCED; /* moved all the same */
  if (aside && asidelen) snprintf(aside, asidelen, "%s", ds_buf_cstr(&b));
  ds_buf_free(&b);
  return rc;
}
