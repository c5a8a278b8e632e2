/* yaml_file.c - the shape of a stream's .yaml file (see yaml_file.h). */
#include "store/yaml_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/file.h"
#include "store/json.h"

static int is_digit(char c) { return c >= '0' && c <= '9'; }

int ds__yaml_created_line(const char *p) {
  static const char shape[] = "createdAt: 0000-00-00T00:00:00.000Z\n";
  for (size_t i = 0; i < DS__YAML_CREATED_LEN; i++) {
    if (shape[i] == '0') {
      if (!is_digit(p[i])) return 0;
    } else if (p[i] != shape[i]) {
      return 0;
    }
  }
  return 1;
}

int ds__yaml_doc_shape_ok(const char *doc, size_t len) {
  if (len < 4 + DS__YAML_CREATED_LEN || memcmp(doc, "---\n", 4) != 0) return 0;
  const char *last = doc + len - DS__YAML_CREATED_LEN;
  return last[-1] == '\n' && ds__yaml_created_line(last);
}

/* The line l[0..e) is `offset: "<digits>"` or `offset: <digits>`, ending there or at '\n'. */
static int offset_of_line(const char *l, const char *e, uint64_t *out) {
  if (e - l < 9 || memcmp(l, "offset: ", 8) != 0) return -1;
  const char *p = l + 8;
  int quoted = *p == '"';
  if (quoted) p++;
  const char *d0 = p;
  uint64_t v = 0;
  while (p < e && is_digit(*p)) {
    unsigned d = (unsigned)(*p - '0');
    if (p - d0 >= 20 || v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
    p++;
  }
  if (p == d0) return -1;
  if (quoted) {
    if (p == e || *p != '"') return -1;
    p++;
  }
  if (p != e && *p != '\n') return -1;
  *out = v;
  return 0;
}

int ds__yaml_offset_line(const char *buf, size_t len, int at_start, uint64_t *out) {
  size_t n = len;
  const char *end = buf + len;
  while (n > 0) {
    const char *nl = memrchr(buf, '\n', n);
    const char *l = nl ? nl + 1 : buf;
    if (l < end && (nl || at_start)) {
      const char *e = memchr(l, '\n', (size_t)(end - l));
      if (offset_of_line(l, e ? e : end, out) == 0) return 0;
    }
    if (!nl) break;
    n = (size_t)(nl - buf);
  }
  return -1;
}

int ds__yaml_meta_parse(const char *p, size_t n, int *fork, uint64_t *fork_off, char *err,
                        size_t errlen) {
  *fork = 0;
  ds_arena_t a;
  ds_arena_init(&a);
  ds_value_t *v = NULL;
  int rc = 0;
  if (ds_json_parse(&a, p ? p : "", n, DS_JSON_DEFAULT_MAX_DEPTH, &v, err, errlen) != 0) {
    rc = DS_ECORRUPT;
  } else if (v->type != DS_V_OBJECT) {
    snprintf(err, errlen, "not a JSON object");
    rc = DS_ECORRUPT;
  } else {
    const ds_value_t *fo = ds_value_get(ds_value_get(v, "fork"), "offset");
    if (fo && fo->type == DS_V_NUMBER && fo->u.str.s[0] != '-') {
      char *end = NULL;
      errno = 0;
      unsigned long long x = strtoull(fo->u.str.s, &end, 10);
      if (!errno && end && *end == '\0') {
        *fork = 1;
        *fork_off = (uint64_t)x;
      }
    }
  }
  ds_arena_free(&a);
  return rc;
}

int ds__yaml_save_aside(int fd, const uint64_t (*r)[2], size_t nr, const char *file,
                        char *aside, size_t asidelen) {
  char name[4096];
  int out = -1;
  int64_t ms = ds_clock_wall_ms();
  for (int tries = 0; tries < 1000 && out < 0; tries++, ms++) {
    if ((size_t)snprintf(name, sizeof name, "%s.damaged-%lld", file, (long long)ms) >= sizeof name)
      return DS_EINVAL;
    out = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0 && errno != EEXIST) return ds_err_from_errno(errno);
  }
  if (out < 0) return DS_EEXISTS;
  int rc = 0;
  char *buf = ds_xmalloc(1 << 16);
  for (size_t i = 0; i < nr && rc == 0; i++) {
    for (uint64_t at = r[i][0], to = r[i][1]; at < to && rc == 0;) {
      size_t want = to - at < (1 << 16) ? (size_t)(to - at) : (1 << 16);
      ssize_t got = pread(fd, buf, want, (off_t)at);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        rc = got < 0 ? ds_err_from_errno(errno) : DS_EIO;
        break;
      }
      for (ssize_t done = 0; done < got && rc == 0;) {
        ssize_t w = write(out, buf + done, (size_t)(got - done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) rc = w < 0 ? ds_err_from_errno(errno) : DS_ENOSPC;
        else done += w;
      }
      at += (uint64_t)got;
    }
  }
  free(buf);
  if (rc == 0 && fsync(out) < 0) rc = ds_err_from_errno(errno);
  close(out);
  if (rc == 0) {
    char *dir = ds_xstrdup(name);
    char *sl = strrchr(dir, '/');
    if (sl) *sl = '\0';
    if (ds_file_fsync_dir(sl ? dir : ".") < 0) rc = DS_EIO;
    free(dir);
  }
  if (rc < 0) {
    unlink(name);
    return rc;
  }
  if (aside && asidelen) snprintf(aside, asidelen, "%s", name);
  return 0;
}
