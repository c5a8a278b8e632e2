/* fsrec.c - LD_PRELOAD recorder of a process's file-system operations under one directory,
 * for the crash-state explorer (tests/crash/explore.py).
 *
 * Provides: interposed libc entry points that log, in one global order, every operation
 * that changes or makes durable the files under $DS_FSREC_ROOT (the server's data dir):
 * creation and truncation by open/openat/creat, write/pwrite/writev/pwritev (with the
 * bytes and the file offset they landed at), ftruncate/truncate, rename/renameat/renameat2,
 * link/linkat, unlink/unlinkat, mkdir/mkdirat, rmdir, close, and the durability barriers
 * fsync/fdatasync/sync_file_range/syncfs/sync (logged twice: when called and when they
 * return, so concurrent writes are never credited to a barrier that may not cover them).
 * It also logs "ack" markers: the first bytes of every HTTP response written to a socket,
 * tagged with the request id (`X-Crash-Req: N` header) last read on that socket.
 *
 * Ordering (why the log order is sound): a mutating operation runs under the log mutex and
 * takes its sequence number after it returned, so log order is the order in which the
 * effects happened; a barrier takes its "begin" number before the call and its "end" number
 * after, outside the mutex; an ack takes its number before the socket write starts, so a
 * crash point after an ack may assume the client saw it (the strict reading).
 *
 * Log format ($DS_FSREC_LOG): one header line per record,
 *   "<seq> <tid> <ns> <op> key=value ... len=<n>\n" followed by n raw bytes and "\n";
 * paths are relative to the root (percent-encoded when they hold spaces or bytes < 0x21).
 * Operations on the root that cannot be modelled (a writable shared mmap, copy_file_range,
 * fallocate, an fd beyond the table, a raw syscall(2) other than close) are logged as
 * "unsupported" so the explorer fails loudly instead of missing them.
 *
 * Must not: change what the calls do, or log anything outside the root (other than acks).
 * It is a test tool: built as a shared library by CMake, never linked into the server.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536
#define CARRY 48 /* bytes of a socket's previous read kept to find a header split across reads */

enum { FD_UNKNOWN = 0, FD_DATA, FD_SOCK, FD_OTHER };

typedef struct {
  int kind;
  dev_t dev;
  ino_t ino;
  char *path; /* FD_DATA: relative to the root ("" = the root itself) */
  long req;   /* FD_SOCK: last request id read on it, -1 none */
  char carry[CARRY];
  size_t ncarry;
} fdent_t;

static fdent_t *g_fds;
static char g_root[PATH_MAX];
static size_t g_rootlen;
static int g_log = -1;
static unsigned long long g_seq;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static __thread int t_in; /* re-entry guard: our own calls are never recorded */

#define REAL(name) static __typeof__(name) *real_##name
REAL(open); REAL(open64); REAL(openat); REAL(openat64); REAL(creat); REAL(creat64);
REAL(write); REAL(pwrite); REAL(pwrite64); REAL(writev); REAL(pwritev); REAL(pwritev2);
REAL(ftruncate); REAL(ftruncate64); REAL(truncate); REAL(truncate64);
REAL(fsync); REAL(fdatasync); REAL(sync_file_range); REAL(syncfs); REAL(sync);
REAL(rename); REAL(renameat); REAL(renameat2); REAL(link); REAL(linkat);
REAL(unlink); REAL(unlinkat); REAL(mkdir); REAL(mkdirat); REAL(rmdir);
REAL(close); REAL(read); REAL(readv); REAL(recv); REAL(recvfrom);
REAL(send); REAL(sendto); REAL(sendmsg); REAL(accept); REAL(accept4);
REAL(dup); REAL(dup2); REAL(dup3); REAL(mmap); REAL(mmap64); REAL(copy_file_range);
REAL(fallocate); REAL(posix_fallocate);
static long (*real_syscall)(long, ...);

static void resolve(void) {
  real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
#define R(n) real_##n = (__typeof__(real_##n))dlsym(RTLD_NEXT, #n)
  R(open); R(open64); R(openat); R(openat64); R(creat); R(creat64);
  R(write); R(pwrite); R(pwrite64); R(writev); R(pwritev); R(pwritev2);
  R(ftruncate); R(ftruncate64); R(truncate); R(truncate64);
  R(fsync); R(fdatasync); R(sync_file_range); R(syncfs); R(sync);
  R(rename); R(renameat); R(renameat2); R(link); R(linkat);
  R(unlink); R(unlinkat); R(mkdir); R(mkdirat); R(rmdir);
  R(close); R(read); R(readv); R(recv); R(recvfrom);
  R(send); R(sendto); R(sendmsg); R(accept); R(accept4);
  R(dup); R(dup2); R(dup3); R(mmap); R(mmap64); R(copy_file_range);
  R(fallocate); R(posix_fallocate);
#undef R
}

/* Opens the log once the environment can be read: a sanitizer runtime calls open() and
 * read() while it starts, before libc has set up environ, so that must not decide "off". */
extern char **environ;
static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static volatile int g_state; /* 0: not decided yet, 1: recording, -1: off */

static void init_log(void) {
  pthread_mutex_lock(&g_init_mu);
  if (g_state == 0 && environ) {
    const char *root = getenv("DS_FSREC_ROOT"), *log = getenv("DS_FSREC_LOG");
    fdent_t *fds = root && log ? calloc(MAXFD, sizeof *fds) : NULL;
    if (fds) {
      for (int i = 0; i < MAXFD; i++) fds[i].req = -1;
      snprintf(g_root, sizeof g_root, "%s", root);
      g_rootlen = strlen(g_root);
      while (g_rootlen > 1 && g_root[g_rootlen - 1] == '/') g_root[--g_rootlen] = 0;
      g_log = (int)real_syscall(SYS_open, log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      g_fds = fds;
    }
    g_state = g_log >= 0 ? 1 : -1;
  }
  pthread_mutex_unlock(&g_init_mu);
}

static int on(void) {
  pthread_once(&g_once, resolve);
  if (g_state == 0 && !t_in) init_log();
  return g_state > 0 && !t_in;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void raw_write_all(const char *p, size_t n) {
  while (n > 0) {
    long w = real_syscall(SYS_write, g_log, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}

/* Emits one record; the caller holds g_mu. `iov` is the payload (may be NULL). */
static void emit_locked(const char *op, const char *fields, const struct iovec *iov, int iovcnt,
                        size_t total) {
  char head[PATH_MAX * 3 + 512];
  int n = snprintf(head, sizeof head, "%llu %ld %llu %s %s len=%zu\n", ++g_seq,
                   real_syscall(SYS_gettid), (unsigned long long)now_ns(), op, fields, total);
  if (n < 0) return;
  if ((size_t)n >= sizeof head) n = (int)sizeof head - 1;
  raw_write_all(head, (size_t)n);
  size_t left = total;
  for (int i = 0; i < iovcnt && left > 0; i++) {
    size_t k = iov[i].iov_len < left ? iov[i].iov_len : left;
    raw_write_all(iov[i].iov_base, k);
    left -= k;
  }
  raw_write_all("\n", 1);
}

static void emit1_locked(const char *op, const char *fields, const void *p, size_t n) {
  struct iovec v = {(void *)p, n};
  emit_locked(op, fields, &v, 1, p ? n : 0);
}

static void emit(const char *op, const char *fields, const void *p, size_t n) {
  pthread_mutex_lock(&g_mu);
  emit1_locked(op, fields, p, n);
  pthread_mutex_unlock(&g_mu);
}

/* ---- paths ---- */

/* Lexically normalises an absolute path in place (no symlink resolution). */
static void normalise(char *p) {
  char out[PATH_MAX * 3];
  size_t o = 0;
  const char *s = p;
  while (*s) {
    while (*s == '/') s++;
    if (!*s) break;
    const char *e = strchr(s, '/');
    size_t len = e ? (size_t)(e - s) : strlen(s);
    if (len == 1 && s[0] == '.') {
    } else if (len == 2 && s[0] == '.' && s[1] == '.') {
      while (o > 0 && out[o - 1] != '/') o--;
      if (o > 0) o--;
    } else if (o + len + 2 < sizeof out) {
      out[o++] = '/';
      memcpy(out + o, s, len);
      o += len;
    }
    s += len;
  }
  if (o == 0) out[o++] = '/';
  out[o] = 0;
  memcpy(p, out, o + 1);
}

/* Resolves (dirfd, path) to a path relative to the root: 1 and *rel set (owned by the
 * caller) when inside the root, 0 otherwise. */
static int rel_of(int dirfd, const char *path, char **rel) {
  if (!path) return 0;
  char abs[PATH_MAX * 3];
  if (path[0] == '/') {
    snprintf(abs, sizeof abs, "%s", path);
  } else if (dirfd == AT_FDCWD) {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return 0;
    snprintf(abs, sizeof abs, "%s/%s", cwd, path);
  } else if (dirfd >= 0 && dirfd < MAXFD && g_fds[dirfd].kind == FD_DATA) {
    snprintf(abs, sizeof abs, "%s%s%s/%s", g_root, g_fds[dirfd].path[0] ? "/" : "",
             g_fds[dirfd].path, path);
  } else {
    return 0; /* a directory descriptor outside the root (or unknown): not ours */
  }
  normalise(abs);
  if (strncmp(abs, g_root, g_rootlen) != 0) return 0;
  if (abs[g_rootlen] != 0 && abs[g_rootlen] != '/') return 0;
  const char *r = abs + g_rootlen;
  while (*r == '/') r++;
  *rel = strdup(r);
  return *rel != NULL;
}

/* Appends key=<encoded value> to buf. */
static void field(char *buf, size_t cap, const char *key, const char *v) {
  size_t n = strlen(buf);
  n += (size_t)snprintf(buf + n, cap > n ? cap - n : 0, "%s%s=", n ? " " : "", key);
  for (const unsigned char *s = (const unsigned char *)v; *s && n + 4 < cap; s++) {
    if (*s <= 0x20 || *s == '%' || *s >= 0x7f) n += (size_t)snprintf(buf + n, cap - n, "%%%02X", *s);
    else buf[n++] = (char)*s;
  }
  if (!*v && n + 4 < cap) { /* the root itself */
    buf[n++] = '.';
  }
  buf[n < cap ? n : cap - 1] = 0;
}

static void fieldf(char *buf, size_t cap, const char *fmt, ...) {
  size_t n = strlen(buf);
  if (n && n + 1 < cap) buf[n++] = ' ', buf[n] = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + n, cap > n ? cap - n : 0, fmt, ap);
  va_end(ap);
}

/* ---- descriptor table ---- */

static void fd_forget(int fd) {
  if (fd < 0 || fd >= MAXFD) return;
  free(g_fds[fd].path);
  memset(&g_fds[fd], 0, sizeof g_fds[fd]);
  g_fds[fd].req = -1;
}

static void fd_set_data(int fd, const char *rel) {
  if (fd < 0 || fd >= MAXFD) return;
  fd_forget(fd);
  struct stat sb;
  if (fstat(fd, &sb) == 0) {
    g_fds[fd].dev = sb.st_dev;
    g_fds[fd].ino = sb.st_ino;
  }
  g_fds[fd].kind = FD_DATA;
  g_fds[fd].path = strdup(rel);
}

/* The table entry of a data descriptor, verified against the inode (a descriptor closed
 * behind our back, e.g. by syscall(SYS_close) in libuv, and reused must not be mistaken
 * for the old file). NULL when fd is not a data descriptor. */
static fdent_t *data_fd(int fd) {
  if (fd < 0 || fd >= MAXFD || g_fds[fd].kind != FD_DATA) return NULL;
  struct stat sb;
  if (fstat(fd, &sb) != 0 || sb.st_dev != g_fds[fd].dev || sb.st_ino != g_fds[fd].ino) {
    fd_forget(fd);
    return NULL;
  }
  return &g_fds[fd];
}

static int is_sock(int fd) {
  if (fd < 0 || fd >= MAXFD) return 0;
  if (g_fds[fd].kind == FD_SOCK) return 1;
  if (g_fds[fd].kind != FD_UNKNOWN) return 0;
  struct stat sb;
  if (fstat(fd, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
    g_fds[fd].kind = FD_SOCK;
    g_fds[fd].req = -1;
    return 1;
  }
  g_fds[fd].kind = FD_OTHER;
  return 0;
}

static void base_fields(char *b, size_t cap, const char *op_path_key, fdent_t *e, int fd) {
  b[0] = 0;
  fieldf(b, cap, "fd=%d", fd);
  field(b, cap, op_path_key, e->path);
  fieldf(b, cap, "ino=%llu", (unsigned long long)e->ino);
}

/* Every hook follows one shape: resolve what the call is about before it runs; run a
 * mutating call under g_mu and log it (when it succeeded and touches the root) before
 * releasing g_mu, so the log order is the order of the effects. */
#define LEAVE(r, e) \
  t_in = 0;        \
  errno = e;       \
  return r;
#define FB (PATH_MAX * 6 + 256)

/* ---- open / creat ---- */

static int open_common(int dirfd, const char *path, int flags, mode_t mode,
                       int (*call)(int, const char *, int, mode_t)) {
  if (!on()) return call(dirfd, path, flags, mode);
  t_in = 1;
  char *rel = NULL;
  int ours = rel_of(dirfd, path, &rel);
  int mut = ours && (flags & (O_CREAT | O_TRUNC));
  if (mut) pthread_mutex_lock(&g_mu);
  int fd = call(dirfd, path, flags, mode);
  int e = errno;
  if (fd >= 0 && fd < MAXFD) fd_forget(fd);
  if (ours && fd >= 0) {
    char *b = malloc(FB);
    b[0] = 0;
    if (fd >= MAXFD) {
      field(b, FB, "path", rel);
      if (!mut) pthread_mutex_lock(&g_mu);
      emit1_locked("unsupported", b, "fd beyond table", 15);
      if (!mut) pthread_mutex_unlock(&g_mu);
    } else {
      fd_set_data(fd, rel);
      struct stat sb;
      memset(&sb, 0, sizeof sb);
      fstat(fd, &sb);
      fieldf(b, FB, "fd=%d", fd);
      field(b, FB, "path", rel);
      fieldf(b, FB, "ino=%llu flags=%d mode=%o dir=%d size=%lld", (unsigned long long)sb.st_ino,
             flags, (unsigned)mode, S_ISDIR(sb.st_mode) ? 1 : 0, (long long)sb.st_size);
      if (mut) emit1_locked("open", b, NULL, 0); /* may have created or truncated */
      else emit("openro", b, NULL, 0);
    }
    free(b);
  }
  if (mut) pthread_mutex_unlock(&g_mu);
  free(rel);
  LEAVE(fd, e)
}

static int c_open(int d, const char *p, int f, mode_t m) { (void)d; return real_open(p, f, m); }
static int c_open64(int d, const char *p, int f, mode_t m) { (void)d; return real_open64(p, f, m); }
static int c_openat(int d, const char *p, int f, mode_t m) { return real_openat(d, p, f, m); }
static int c_openat64(int d, const char *p, int f, mode_t m) { return real_openat64(d, p, f, m); }

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t m = mode_arg(flags, ap);
  va_end(ap);
  pthread_once(&g_once, resolve);
  return open_common(AT_FDCWD, path, flags, m, c_open);
}
int open64(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t m = mode_arg(flags, ap);
  va_end(ap);
  pthread_once(&g_once, resolve);
  return open_common(AT_FDCWD, path, flags, m, c_open64);
}
int openat(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t m = mode_arg(flags, ap);
  va_end(ap);
  pthread_once(&g_once, resolve);
  return open_common(dirfd, path, flags, m, c_openat);
}
int openat64(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t m = mode_arg(flags, ap);
  va_end(ap);
  pthread_once(&g_once, resolve);
  return open_common(dirfd, path, flags, m, c_openat64);
}
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }
int creat(const char *path, mode_t mode) { return open(path, O_WRONLY | O_CREAT | O_TRUNC, mode); }
int creat64(const char *path, mode_t mode) {
  return open64(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

/* ---- writes to files ---- */

/* Logs a completed write of `r` bytes that ended at file position `end` (or started at
 * `off` when off >= 0). Caller holds g_mu. */
static void log_write_locked(fdent_t *e, int fd, const char *op, long long off, ssize_t r,
                             const struct iovec *iov, int n) {
  char *b = malloc(FB);
  base_fields(b, FB, "path", e, fd);
  fieldf(b, FB, "off=%lld", off);
  emit_locked(op, b, iov, n, (size_t)r);
  free(b);
}

static void ack_check(int fd, const struct iovec *iov, int n);

static ssize_t write_common(int fd, const struct iovec *iov, int n, long long off, int flags,
                            const char *op, ssize_t (*call)(int, const struct iovec *, int, long long, int)) {
  if (!on()) return call(fd, iov, n, off, flags);
  t_in = 1;
  fdent_t *e = data_fd(fd);
  if (!e) {
    if (is_sock(fd)) ack_check(fd, iov, n);
    ssize_t r = call(fd, iov, n, off, flags);
    int er = errno;
    LEAVE(r, er)
  }
  pthread_mutex_lock(&g_mu);
  ssize_t r = call(fd, iov, n, off, flags);
  int er = errno;
  if (r > 0) {
    long long at = off;
    if (off < 0) { /* write/writev: the position after the write tells where it landed */
      off_t pos = lseek(fd, 0, SEEK_CUR);
      at = pos >= 0 ? (long long)pos - r : -1;
    }
    log_write_locked(e, fd, op, at, r, iov, n);
  }
  pthread_mutex_unlock(&g_mu);
  LEAVE(r, er)
}

static ssize_t c_write(int fd, const struct iovec *v, int n, long long o, int f) {
  (void)n, (void)o, (void)f;
  return real_write(fd, v[0].iov_base, v[0].iov_len);
}
static ssize_t c_pwrite(int fd, const struct iovec *v, int n, long long o, int f) {
  (void)n, (void)f;
  return real_pwrite(fd, v[0].iov_base, v[0].iov_len, (off_t)o);
}
static ssize_t c_pwrite64(int fd, const struct iovec *v, int n, long long o, int f) {
  (void)n, (void)f;
  return real_pwrite64(fd, v[0].iov_base, v[0].iov_len, (off64_t)o);
}
static ssize_t c_writev(int fd, const struct iovec *v, int n, long long o, int f) {
  (void)o, (void)f;
  return real_writev(fd, v, n);
}
static ssize_t c_pwritev(int fd, const struct iovec *v, int n, long long o, int f) {
  (void)f;
  return real_pwritev(fd, v, n, (off_t)o);
}
static ssize_t c_pwritev2(int fd, const struct iovec *v, int n, long long o, int f) {
  return real_pwritev2(fd, v, n, (off_t)o, f);
}

ssize_t write(int fd, const void *buf, size_t n) {
  struct iovec v = {(void *)buf, n};
  pthread_once(&g_once, resolve);
  return write_common(fd, &v, 1, -1, 0, "write", c_write);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  struct iovec v = {(void *)buf, n};
  pthread_once(&g_once, resolve);
  return write_common(fd, &v, 1, off, 0, "write", c_pwrite);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
  struct iovec v = {(void *)buf, n};
  pthread_once(&g_once, resolve);
  return write_common(fd, &v, 1, off, 0, "write", c_pwrite64);
}
ssize_t writev(int fd, const struct iovec *iov, int n) {
  pthread_once(&g_once, resolve);
  return write_common(fd, iov, n, -1, 0, "write", c_writev);
}
ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
  pthread_once(&g_once, resolve);
  return write_common(fd, iov, n, off, 0, "write", c_pwritev);
}
ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags) {
  pthread_once(&g_once, resolve);
  /* offset -1 means "at the file position", as write(2) */
  return write_common(fd, iov, n, off, flags, "write", c_pwritev2);
}

/* ---- truncation ---- */

static int ftrunc_common(int fd, long long len, int (*call)(int, long long)) {
  if (!on()) return call(fd, len);
  t_in = 1;
  fdent_t *e = data_fd(fd);
  if (e) pthread_mutex_lock(&g_mu);
  int r = call(fd, len);
  int er = errno;
  if (e) {
    if (r == 0) {
      char *b = malloc(FB);
      base_fields(b, FB, "path", e, fd);
      fieldf(b, FB, "size=%lld", len);
      emit1_locked("truncate", b, NULL, 0);
      free(b);
    }
    pthread_mutex_unlock(&g_mu);
  }
  LEAVE(r, er)
}
static int c_ftruncate(int fd, long long l) { return real_ftruncate(fd, (off_t)l); }
static int c_ftruncate64(int fd, long long l) { return real_ftruncate64(fd, (off64_t)l); }
int ftruncate(int fd, off_t len) {
  pthread_once(&g_once, resolve);
  return ftrunc_common(fd, len, c_ftruncate);
}
int ftruncate64(int fd, off64_t len) {
  pthread_once(&g_once, resolve);
  return ftrunc_common(fd, len, c_ftruncate64);
}

static int trunc_common(const char *path, long long len, int is64) {
  if (!on()) return is64 ? real_truncate64(path, len) : real_truncate(path, len);
  t_in = 1;
  char *rel = NULL;
  int ours = rel_of(AT_FDCWD, path, &rel);
  if (ours) pthread_mutex_lock(&g_mu);
  int r = is64 ? real_truncate64(path, len) : real_truncate(path, len);
  int er = errno;
  if (ours) {
    if (r == 0) {
      char *b = malloc(FB);
      b[0] = 0;
      field(b, FB, "path", rel);
      fieldf(b, FB, "fd=-1 size=%lld", len);
      emit1_locked("truncate", b, NULL, 0);
      free(b);
    }
    pthread_mutex_unlock(&g_mu);
  }
  free(rel);
  LEAVE(r, er)
}
int truncate(const char *path, off_t len) {
  pthread_once(&g_once, resolve);
  return trunc_common(path, len, 0);
}
int truncate64(const char *path, off64_t len) {
  pthread_once(&g_once, resolve);
  return trunc_common(path, len, 1);
}

/* ---- barriers: logged when called and when they return, outside the mutex ---- */

static int barrier_fd(int fd, const char *op, long long a, long long b2, unsigned fl,
                      int (*call)(int, long long, long long, unsigned)) {
  if (!on()) return call(fd, a, b2, fl);
  t_in = 1;
  fdent_t *e = data_fd(fd);
  char *b = NULL;
  if (e) {
    b = malloc(FB);
    base_fields(b, FB, "path", e, fd);
    fieldf(b, FB, "off=%lld nbytes=%lld flags=%u", a, b2, fl);
    char op2[64];
    snprintf(op2, sizeof op2, "%s_begin", op);
    emit(op2, b, NULL, 0);
  }
  int r = call(fd, a, b2, fl);
  int er = errno;
  if (e) {
    char op2[64];
    snprintf(op2, sizeof op2, "%s_end", op);
    fieldf(b, FB, "rc=%d", r);
    emit(op2, b, NULL, 0);
    free(b);
  }
  LEAVE(r, er)
}
static int c_fsync(int fd, long long a, long long b, unsigned f) { (void)a, (void)b, (void)f; return real_fsync(fd); }
static int c_fdatasync(int fd, long long a, long long b, unsigned f) {
  (void)a, (void)b, (void)f;
  return real_fdatasync(fd);
}
static int c_sfr(int fd, long long a, long long b, unsigned f) {
  return real_sync_file_range(fd, (off64_t)a, (off64_t)b, f);
}
static int c_syncfs(int fd, long long a, long long b, unsigned f) { (void)a, (void)b, (void)f; return real_syncfs(fd); }

int fsync(int fd) {
  pthread_once(&g_once, resolve);
  return barrier_fd(fd, "fsync", 0, 0, 0, c_fsync);
}
int fdatasync(int fd) {
  pthread_once(&g_once, resolve);
  return barrier_fd(fd, "fdatasync", 0, 0, 0, c_fdatasync);
}
int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
  pthread_once(&g_once, resolve);
  return barrier_fd(fd, "sync_file_range", off, n, flags, c_sfr);
}
int syncfs(int fd) {
  pthread_once(&g_once, resolve);
  if (!on()) return real_syncfs(fd);
  /* syncfs on any descriptor of the file system: a global barrier for the root */
  t_in = 1;
  emit("sync_begin", "fd=-1", NULL, 0);
  int r = c_syncfs(fd, 0, 0, 0);
  int er = errno;
  emit("sync_end", "fd=-1", NULL, 0);
  LEAVE(r, er)
}
void sync(void) {
  pthread_once(&g_once, resolve);
  if (!on()) {
    real_sync();
    return;
  }
  t_in = 1;
  emit("sync_begin", "fd=-1", NULL, 0);
  real_sync();
  emit("sync_end", "fd=-1", NULL, 0);
  t_in = 0;
}

/* ---- namespace ---- */

/* One or two paths; logged as op when at least one is inside the root (a rename across
 * the root's boundary is "unsupported": the explorer cannot model it). */
static int ns_common(const char *op, int d1, const char *p1, int d2, const char *p2,
                     long long extra, int (*call)(void *), void *ctx) {
  if (!on()) return call(ctx);
  t_in = 1;
  char *r1 = NULL, *r2 = NULL;
  int o1 = rel_of(d1, p1, &r1), o2 = p2 ? rel_of(d2, p2, &r2) : 0;
  int ours = o1 || o2;
  if (ours) pthread_mutex_lock(&g_mu);
  int r = call(ctx);
  int er = errno;
  if (ours) {
    if (r == 0) {
      char *b = malloc(FB);
      b[0] = 0;
      if (p2 && o1 != o2) {
        field(b, FB, "path", o1 ? r1 : r2);
        emit1_locked("unsupported", b, op, strlen(op));
      } else {
        field(b, FB, "path", r1);
        if (p2) field(b, FB, "path2", r2);
        struct stat sb;
        char abs[PATH_MAX * 3];
        /* the inode a new or renamed name now refers to */
        snprintf(abs, sizeof abs, "%s/%s", g_root, p2 ? r2 : r1);
        if (lstat(abs, &sb) == 0) fieldf(b, FB, "ino=%llu", (unsigned long long)sb.st_ino);
        fieldf(b, FB, "x=%lld", extra);
        emit1_locked(op, b, NULL, 0);
      }
      free(b);
    }
    pthread_mutex_unlock(&g_mu);
  }
  free(r1);
  free(r2);
  LEAVE(r, er)
}

typedef struct {
  int d1, d2;
  const char *p1, *p2;
  unsigned fl;
  mode_t mode;
} nsctx_t;

static int k_rename(void *c) { nsctx_t *x = c; return real_rename(x->p1, x->p2); }
static int k_renameat(void *c) { nsctx_t *x = c; return real_renameat(x->d1, x->p1, x->d2, x->p2); }
static int k_renameat2(void *c) {
  nsctx_t *x = c;
  return real_renameat2(x->d1, x->p1, x->d2, x->p2, x->fl);
}
static int k_link(void *c) { nsctx_t *x = c; return real_link(x->p1, x->p2); }
static int k_linkat(void *c) { nsctx_t *x = c; return real_linkat(x->d1, x->p1, x->d2, x->p2, (int)x->fl); }
static int k_unlink(void *c) { nsctx_t *x = c; return real_unlink(x->p1); }
static int k_unlinkat(void *c) { nsctx_t *x = c; return real_unlinkat(x->d1, x->p1, (int)x->fl); }
static int k_mkdir(void *c) { nsctx_t *x = c; return real_mkdir(x->p1, x->mode); }
static int k_mkdirat(void *c) { nsctx_t *x = c; return real_mkdirat(x->d1, x->p1, x->mode); }
static int k_rmdir(void *c) { nsctx_t *x = c; return real_rmdir(x->p1); }

int rename(const char *a, const char *b) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {AT_FDCWD, AT_FDCWD, a, b, 0, 0};
  return ns_common("rename", AT_FDCWD, a, AT_FDCWD, b, 0, k_rename, &x);
}
int renameat(int da, const char *a, int db, const char *b) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {da, db, a, b, 0, 0};
  return ns_common("rename", da, a, db, b, 0, k_renameat, &x);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned int flags) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {da, db, a, b, flags, 0};
  /* RENAME_EXCHANGE swaps two names: the explorer refuses to guess (flags logged as x) */
  return ns_common(flags & 2 ? "unsupported_exchange" : "rename", da, a, db, b, flags,
                   k_renameat2, &x);
}
int link(const char *a, const char *b) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {AT_FDCWD, AT_FDCWD, a, b, 0, 0};
  return ns_common("link", AT_FDCWD, a, AT_FDCWD, b, 0, k_link, &x);
}
int linkat(int da, const char *a, int db, const char *b, int flags) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {da, db, a, b, (unsigned)flags, 0};
  return ns_common("link", da, a, db, b, flags, k_linkat, &x);
}
int unlink(const char *a) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {AT_FDCWD, AT_FDCWD, a, NULL, 0, 0};
  return ns_common("unlink", AT_FDCWD, a, AT_FDCWD, NULL, 0, k_unlink, &x);
}
int unlinkat(int d, const char *a, int flags) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {d, AT_FDCWD, a, NULL, (unsigned)flags, 0};
  return ns_common(flags & AT_REMOVEDIR ? "rmdir" : "unlink", d, a, AT_FDCWD, NULL, 0,
                   k_unlinkat, &x);
}
int mkdir(const char *a, mode_t mode) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {AT_FDCWD, AT_FDCWD, a, NULL, 0, mode};
  return ns_common("mkdir", AT_FDCWD, a, AT_FDCWD, NULL, mode, k_mkdir, &x);
}
int mkdirat(int d, const char *a, mode_t mode) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {d, AT_FDCWD, a, NULL, 0, mode};
  return ns_common("mkdir", d, a, AT_FDCWD, NULL, mode, k_mkdirat, &x);
}
int rmdir(const char *a) {
  pthread_once(&g_once, resolve);
  nsctx_t x = {AT_FDCWD, AT_FDCWD, a, NULL, 0, 0};
  return ns_common("rmdir", AT_FDCWD, a, AT_FDCWD, NULL, 0, k_rmdir, &x);
}

/* ---- descriptors ---- */

int close(int fd) {
  pthread_once(&g_once, resolve);
  if (!on()) return real_close(fd);
  t_in = 1;
  /* forgotten before the number is released: another thread may get it the moment it is */
  fdent_t *e = data_fd(fd);
  if (e) {
    pthread_mutex_lock(&g_mu);
    char *b = malloc(FB);
    base_fields(b, FB, "path", e, fd);
    emit1_locked("close", b, NULL, 0);
    free(b);
  }
  if (fd >= 0 && fd < MAXFD) fd_forget(fd);
  int r = real_close(fd);
  int er = errno;
  if (e) pthread_mutex_unlock(&g_mu);
  LEAVE(r, er)
}

static void dup_copy(int from, int to) {
  if (to < 0 || to >= MAXFD) return;
  fd_forget(to);
  fdent_t *e = data_fd(from);
  if (!e) return;
  g_fds[to] = *e;
  g_fds[to].path = strdup(e->path);
  char *b = malloc(FB);
  base_fields(b, FB, "path", e, to);
  fieldf(b, FB, "from=%d", from);
  emit("dup", b, NULL, 0);
  free(b);
}
int dup(int fd) {
  pthread_once(&g_once, resolve);
  if (!on()) return real_dup(fd);
  t_in = 1;
  int r = real_dup(fd);
  int er = errno;
  if (r >= 0) dup_copy(fd, r);
  LEAVE(r, er)
}
int dup2(int fd, int to) {
  pthread_once(&g_once, resolve);
  if (!on()) return real_dup2(fd, to);
  t_in = 1;
  int r = real_dup2(fd, to);
  int er = errno;
  if (r >= 0 && fd != to) dup_copy(fd, r);
  LEAVE(r, er)
}
int dup3(int fd, int to, int flags) {
  pthread_once(&g_once, resolve);
  if (!on()) return real_dup3(fd, to, flags);
  t_in = 1;
  int r = real_dup3(fd, to, flags);
  int er = errno;
  if (r >= 0) dup_copy(fd, r);
  LEAVE(r, er)
}

/* libuv closes with syscall(SYS_close); anything else that bypasses libc on a data
 * descriptor is reported. */
long syscall(long nr, ...) {
  va_list ap;
  va_start(ap, nr);
  long a[6];
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  pthread_once(&g_once, resolve);
  if (on() && nr == SYS_close) {
    int fd = (int)a[0];
    if (fd >= 0 && fd < MAXFD && g_fds[fd].kind == FD_DATA) return close(fd);
    if (fd >= 0 && fd < MAXFD) fd_forget(fd); /* before the number is released */
  } else if (on() && (nr == SYS_write || nr == SYS_pwrite64 || nr == SYS_writev ||
                      nr == SYS_pwritev || nr == SYS_fsync || nr == SYS_fdatasync ||
                      nr == SYS_ftruncate) &&
             a[0] >= 0 && a[0] < MAXFD && g_fds[a[0]].kind == FD_DATA) {
    char b[64];
    snprintf(b, sizeof b, "fd=%ld nr=%ld", a[0], nr);
    emit("unsupported", b, "raw syscall", 11);
  }
  return real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* Writable shared mappings, copy_file_range and fallocate change files without a write(2):
 * not modelled, so reported. */
static void unsupported_fd(int fd, const char *what) {
  if (!on()) return;
  t_in = 1;
  fdent_t *e = data_fd(fd);
  if (e) {
    char *b = malloc(FB);
    base_fields(b, FB, "path", e, fd);
    emit("unsupported", b, what, strlen(what));
    free(b);
  }
  t_in = 0;
}
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  pthread_once(&g_once, resolve);
  if ((prot & PROT_WRITE) && (flags & MAP_SHARED) && fd >= 0) unsupported_fd(fd, "mmap");
  return real_mmap(addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off) {
  pthread_once(&g_once, resolve);
  if ((prot & PROT_WRITE) && (flags & MAP_SHARED) && fd >= 0) unsupported_fd(fd, "mmap");
  return real_mmap64(addr, len, prot, flags, fd, off);
}
ssize_t copy_file_range(int in, off64_t *oin, int out, off64_t *oout, size_t n, unsigned f) {
  pthread_once(&g_once, resolve);
  unsupported_fd(out, "copy_file_range");
  return real_copy_file_range(in, oin, out, oout, n, f);
}
int fallocate(int fd, int mode, off_t off, off_t len) {
  pthread_once(&g_once, resolve);
  unsupported_fd(fd, "fallocate");
  return real_fallocate(fd, mode, off, len);
}
int posix_fallocate(int fd, off_t off, off_t len) {
  pthread_once(&g_once, resolve);
  unsupported_fd(fd, "posix_fallocate");
  return real_posix_fallocate(fd, off, len);
}

/* ---- sockets: request ids in, acks out ---- */

int accept(int fd, struct sockaddr *a, socklen_t *l) {
  pthread_once(&g_once, resolve);
  int r = real_accept(fd, a, l);
  if (r >= 0 && r < MAXFD && on()) {
    fd_forget(r);
    g_fds[r].kind = FD_SOCK;
  }
  return r;
}
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) {
  pthread_once(&g_once, resolve);
  int r = real_accept4(fd, a, l, flags);
  if (r >= 0 && r < MAXFD && on()) {
    fd_forget(r);
    g_fds[r].kind = FD_SOCK;
  }
  return r;
}

/* Finds "X-Crash-Req: <digits>" in what was read (with the carried tail of the previous
 * read, for a header split across two reads). */
static void scan_req(int fd, const char *p, size_t n) {
  fdent_t *e = &g_fds[fd];
  static const char key[] = "\nX-Crash-Req: ";
  size_t kl = sizeof key - 1;
  char buf[CARRY + 4096];
  size_t done = 0;
  while (done < n) {
    size_t take = n - done < 4096 ? n - done : 4096;
    memcpy(buf, e->carry, e->ncarry);
    memcpy(buf + e->ncarry, p + done, take);
    size_t len = e->ncarry + take;
    for (size_t i = 0; i + kl < len; i++) {
      if ((buf[i] == '\n') && strncasecmp(buf + i, key, kl) == 0) {
        size_t j = i + kl;
        long v = 0;
        int digits = 0;
        while (j < len && buf[j] >= '0' && buf[j] <= '9') v = v * 10 + (buf[j++] - '0'), digits++;
        if (digits && j < len && e->req != v) { /* complete (a terminator follows) */
          e->req = v;
          char b[64];
          snprintf(b, sizeof b, "fd=%d req=%ld", fd, v);
          emit("req", b, NULL, 0); /* the request has arrived: its effects may start now */
        }
      }
    }
    size_t keep = len < CARRY ? len : CARRY;
    memmove(e->carry, buf + len - keep, keep);
    e->ncarry = keep;
    done += take;
  }
}

static void after_read(int fd, const void *p, ssize_t r) {
  if (r > 0 && is_sock(fd)) scan_req(fd, p, (size_t)r);
}

ssize_t read(int fd, void *buf, size_t n) {
  pthread_once(&g_once, resolve);
  ssize_t r = real_read(fd, buf, n);
  int er = errno;
  if (on()) {
    t_in = 1;
    after_read(fd, buf, r);
    t_in = 0;
  }
  errno = er;
  return r;
}
ssize_t readv(int fd, const struct iovec *iov, int cnt) {
  pthread_once(&g_once, resolve);
  ssize_t r = real_readv(fd, iov, cnt);
  int er = errno;
  if (on() && r > 0) {
    t_in = 1;
    size_t left = (size_t)r;
    for (int i = 0; i < cnt && left; i++) {
      size_t k = iov[i].iov_len < left ? iov[i].iov_len : left;
      after_read(fd, iov[i].iov_base, (ssize_t)k);
      left -= k;
    }
    t_in = 0;
  }
  errno = er;
  return r;
}
ssize_t recv(int fd, void *buf, size_t n, int flags) {
  pthread_once(&g_once, resolve);
  ssize_t r = real_recv(fd, buf, n, flags);
  int er = errno;
  if (on() && !(flags & MSG_PEEK)) {
    t_in = 1;
    after_read(fd, buf, r);
    t_in = 0;
  }
  errno = er;
  return r;
}
ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *a, socklen_t *l) {
  pthread_once(&g_once, resolve);
  ssize_t r = real_recvfrom(fd, buf, n, flags, a, l);
  int er = errno;
  if (on() && !(flags & MSG_PEEK)) {
    t_in = 1;
    after_read(fd, buf, r);
    t_in = 0;
  }
  errno = er;
  return r;
}

/* A response starts with "HTTP/1.1 ": log its head as an ack of the socket's last request
 * id, numbered before the bytes leave (a crash point after it counts it as seen). */
static void ack_check(int fd, const struct iovec *iov, int n) {
  char head[2048];
  size_t h = 0;
  for (int i = 0; i < n && h < sizeof head; i++) {
    size_t k = iov[i].iov_len < sizeof head - h ? iov[i].iov_len : sizeof head - h;
    memcpy(head + h, iov[i].iov_base, k);
    h += k;
  }
  if (h < 9 || memcmp(head, "HTTP/1.", 7) != 0) return;
  void *end = memmem(head, h, "\r\n\r\n", 4);
  if (end) h = (size_t)((char *)end - head) + 4;
  char b[64];
  snprintf(b, sizeof b, "fd=%d req=%ld", fd, g_fds[fd].req);
  g_fds[fd].req = -1;
  g_fds[fd].ncarry = 0; /* the request was read whole: its header must not be found again */
  emit("ack", b, head, h);
}

static ssize_t send_common(int fd, const struct iovec *iov, int n, ssize_t (*call)(void *), void *ctx) {
  if (on()) {
    t_in = 1;
    if (is_sock(fd)) ack_check(fd, iov, n);
    t_in = 0;
  }
  return call(ctx);
}
typedef struct {
  int fd;
  const void *buf;
  size_t n;
  int flags;
  const struct sockaddr *a;
  socklen_t l;
  const struct msghdr *m;
} sctx_t;
static ssize_t k_send(void *c) { sctx_t *x = c; return real_send(x->fd, x->buf, x->n, x->flags); }
static ssize_t k_sendto(void *c) { sctx_t *x = c; return real_sendto(x->fd, x->buf, x->n, x->flags, x->a, x->l); }
static ssize_t k_sendmsg(void *c) { sctx_t *x = c; return real_sendmsg(x->fd, x->m, x->flags); }

ssize_t send(int fd, const void *buf, size_t n, int flags) {
  pthread_once(&g_once, resolve);
  struct iovec v = {(void *)buf, n};
  sctx_t x = {fd, buf, n, flags, NULL, 0, NULL};
  return send_common(fd, &v, 1, k_send, &x);
}
ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *a, socklen_t l) {
  pthread_once(&g_once, resolve);
  struct iovec v = {(void *)buf, n};
  sctx_t x = {fd, buf, n, flags, a, l, NULL};
  return send_common(fd, &v, 1, k_sendto, &x);
}
ssize_t sendmsg(int fd, const struct msghdr *m, int flags) {
  pthread_once(&g_once, resolve);
  sctx_t x = {fd, NULL, 0, flags, NULL, 0, m};
  return send_common(fd, m->msg_iov, (int)m->msg_iovlen, k_sendmsg, &x);
}
