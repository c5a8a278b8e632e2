/* yaml.c - the YAML document form of stored records: hand-written emitter, libyaml loader.
 *
 * Provides: ds_yaml_emit_doc() and ds_yaml_load_doc() (see yaml.h), plus
 * ds_yaml_scalar_plain_ok(), the quoting rule, exposed for tests.
 * The emitter is hand-written rather than libyaml's because the file layout is part of the
 * contract (grep recipes, `tail -f`, the store's document boundary scan): every value stays
 * on one line, nested content is indented by 2 per level so that only top-level keys start
 * at column 0, and a string is plain unless some YAML reader (1.1 or 1.2) could read the
 * plain form back as something else.
 * Must not: emit a line that is exactly `---` or `...` inside a document, emit multi-line
 * scalars, accept aliases/anchors or a second document, or crash on arbitrary bytes
 * (libyaml validates the input encoding; every structural surprise becomes DS_ECORRUPT).
 */
#include "store/yaml.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/err.h"
#include "core/swar.h"
#include "store/json.h"

/* Implicit (simple) keys are limited to 1024 characters by YAML; longer keys use the
 * explicit `? key` form. Bytes >= characters, so measuring bytes is conservative. */
#define DS__YAML_SIMPLE_KEY_MAX 1000
/* Deepest nesting the loader accepts; the emitter, writer and equality are recursive. */
#define DS__YAML_MAX_DEPTH 1000

/* ---------------------------------------------------------------------------------- */
/* Quoting rule                                                                       */

static inline int lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static int ieq(const unsigned char *s, size_t n, const char *w) {
  size_t wl = strlen(w);
  if (n != wl) return 0;
  for (size_t i = 0; i < n; i++)
    if (lower(s[i]) != (unsigned char)w[i]) return 0;
  return 1;
}

static inline int isdig(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int ishex(unsigned char c) {
  return isdig(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* True if s could be resolved as an int or float by YAML 1.1 or 1.2 (or is a JSON
 * number). Deliberately generous: a false positive only costs a pair of quotes. */
static int looks_numeric(const unsigned char *s, size_t n) {
  size_t i = 0;
  if (i < n && (s[i] == '+' || s[i] == '-')) i++;
  const unsigned char *r = s + i;
  size_t m = n - i;
  if (m == 0) return 0;
  if (r[0] == '.' && m == 4 && (ieq(r + 1, 3, "inf") || ieq(r + 1, 3, "nan"))) return 1;
  if (m == 1 && r[0] == '.') return 1;
  if (m > 2 && r[0] == '0' && (lower(r[1]) == 'x' || lower(r[1]) == 'o' || lower(r[1]) == 'b')) {
    size_t k = 2;
    while (k < m && (ishex(r[k]) || r[k] == '_')) k++;
    if (k == m) return 1;
  }
  if (!isdig(r[0]) && r[0] != '.') return 0;
  size_t k = 0;
  int digits = 0;
  while (k < m && (isdig(r[k]) || r[k] == '_')) digits |= isdig(r[k++]);
  if (k < m && r[k] == ':' && digits) { /* sexagesimal 1:20, 190:20:30.15 */
    while (k < m && r[k] == ':') {
      k++;
      size_t d = 0;
      while (k < m && isdig(r[k]) && d < 2) k++, d++;
      if (d == 0) return 0;
    }
    if (k < m && r[k] == '.') {
      k++;
      while (k < m && (isdig(r[k]) || r[k] == '_')) k++;
    }
    return k == m;
  }
  if (k < m && r[k] == '.') {
    k++;
    while (k < m && (isdig(r[k]) || r[k] == '_' || r[k] == '.')) digits |= isdig(r[k++]);
  }
  if (!digits) return 0;
  if (k < m && (r[k] == 'e' || r[k] == 'E')) {
    k++;
    if (k < m && (r[k] == '+' || r[k] == '-')) k++;
    if (k >= m || !isdig(r[k])) return 0;
    while (k < m && isdig(r[k])) k++;
  }
  return k == m;
}

/* Words some YAML reader resolves to null/bool (any case form), the merge key and the
 * YAML 1.1 value key. */
static int special_word(const unsigned char *s, size_t n) {
  static const struct {
    const char *w;
    size_t n;
  } words[] = {{"null", 4}, {"~", 1},  {"true", 4}, {"false", 5}, {"yes", 3}, {"no", 2},
               {"on", 2},   {"off", 3}, {"y", 1},   {"n", 1},     {"<<", 2},  {"=", 1}};
  if (n > 5) return 0;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (words[i].n == n && lower(s[0]) == (unsigned char)words[i].w[0] && ieq(s, n, words[i].w))
      return 1;
  return 0;
}

/* Bytes that cannot appear raw in any scalar we emit: C0 controls (tab and line breaks
 * too, so that every value stays on one line), DEL. Non-ASCII leads are checked apart. */
static const unsigned char yesc_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
}; /* 1 = control, 2 = '"' or '\\' (fine plain, escaped when quoted), 3 = C2/E2/EF lead */

/* Length (3 or 2) of a multi-byte character at p that must be escaped: C1 controls
 * (U+0080..U+009F, including NEL U+0085), U+2028, U+2029, U+FEFF, U+FFFE, U+FFFF; 0 if the
 * character can stay raw. */
static inline size_t special_mb(const unsigned char *p, const unsigned char *end) {
  size_t avail = (size_t)(end - p);
  if (p[0] == 0xC2) return (avail >= 2 && p[1] >= 0x80 && p[1] <= 0x9F) ? 2 : 0;
  if (avail < 3) return 0;
  if (p[0] == 0xE2) return (p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) ? 3 : 0;
  if (p[0] == 0xEF)
    return ((p[1] == 0xBB && p[2] == 0xBF) || (p[1] == 0xBF && (p[2] == 0xBE || p[2] == 0xBF)))
               ? 3
               : 0;
  return 0;
}

/* plain_syntax_ok's byte classes: yesc_class with '"' and '\\' ordinary (fine in a plain
 * scalar), plus 4 = ':' and 5 = ' ' (which matter only before ' ' and '#'), so that an
 * ordinary byte costs one lookup. */
static const unsigned char plain_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};


/* The syntactic half of the quoting rule: s[0..n) read as a plain scalar on one line
 * (after "key: " or "- ", or as a key before ": ") is exactly these bytes. */
static int plain_syntax_ok(const char *str, size_t n) {
  if (n == 0) return 0;
  const unsigned char *s = (const unsigned char *)str, *end = s + n;
  if (s[0] == ' ' || s[n - 1] == ' ' || s[n - 1] == ':') return 0;
  switch (s[0]) {
  case '-': case '?': case ':': case ',': case '[': case ']': case '{': case '}':
  case '#': case '&': case '*': case '!': case '|': case '>': case '\'': case '"':
  case '%': case '@': case '`':
    return 0;
  default:
    break;
  }
  if (n >= 3 && memcmp(s, "...", 3) == 0) return 0;
  const unsigned char *stop = s;
  for (const unsigned char *p = s; p < end; p++) {
    if (p >= stop) {
      /* 8 bytes at a time while none is a control, DEL or non-ASCII; ':' and ' ' only
       * matter before ' ' and '#', so the flagged positions are checked one by one (a
       * flag may be false above a true one, never missing: each is verified) */
      while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        if ((x & DS_SWAR_HIGH) | ds_swar_has_less(x, 0x20) | ds_swar_has_byte(x, 0x7f)) break;
        uint64_t m = ds_swar_has_byte(x, ':') | ds_swar_has_byte(x, ' ');
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
        if (m) break; /* flag positions below assume byte 0 is the low byte */
#endif
        while (m) {
          const unsigned char *q = p + (__builtin_ctzll(m) >> 3);
          if (q + 1 < end && ((*q == ':' && q[1] == ' ') || (*q == ' ' && q[1] == '#'))) return 0;
          m &= m - 1;
        }
        p += 8;
      }
      if (p >= end) break;
      stop = end - p >= 8 ? p + 8 : end;
    }
    unsigned char k = plain_class[*p];
    if (!k) continue;
    if (k == 4) {
      if (p + 1 < end && p[1] == ' ') return 0;
    } else if (k == 5) {
      if (p + 1 < end && p[1] == '#') return 0;
    } else if (k == 1 || special_mb(p, end)) {
      return 0;
    }
  }
  return 1;
}

int ds_yaml_scalar_plain_ok(const char *str, size_t n) {
  /* ... and the resolution half: no YAML reader may take it for anything but a string */
  const unsigned char *s = (const unsigned char *)str;
  return plain_syntax_ok(str, n) && !special_word(s, n) && !looks_numeric(s, n);
}

/* ---------------------------------------------------------------------------------- */
/* Emitter                                                                            */

static const char hexu[] = "0123456789ABCDEF";

static void emit_quoted(ds_buf_t *b, const unsigned char *s, size_t n) {
  const unsigned char *p = s, *end = s + n, *run = s;
  ds_buf_reserve(b, n + 2);
  b->data[b->len++] = '"';
  while (p < end) {
    unsigned char k = yesc_class[*p];
    if (!k) {
      p++;
      continue;
    }
    size_t mb = 0;
    if (k == 3) {
      mb = special_mb(p, end);
      if (!mb) {
        p++;
        continue;
      }
    }
    if (p > run) ds_buf_append(b, run, (size_t)(p - run));
    char e[8];
    size_t el = 2;
    e[0] = '\\';
    if (mb == 2) { /* C1 control U+0080..U+009F: \xNN names the code point */
      e[1] = 'x';
      e[2] = hexu[p[1] >> 4];
      e[3] = hexu[p[1] & 15];
      el = 4;
    } else if (mb == 3) {
      unsigned cp = ((unsigned)(p[0] & 0x0F) << 12) | ((unsigned)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
      e[1] = 'u';
      e[2] = hexu[cp >> 12];
      e[3] = hexu[(cp >> 8) & 15];
      e[4] = hexu[(cp >> 4) & 15];
      e[5] = hexu[cp & 15];
      el = 6;
    } else {
      switch (*p) {
      case '"': e[1] = '"'; break;
      case '\\': e[1] = '\\'; break;
      case '\0': e[1] = '0'; break;
      case '\t': e[1] = 't'; break;
      case '\n': e[1] = 'n'; break;
      case '\r': e[1] = 'r'; break;
      default:
        e[1] = 'x';
        e[2] = hexu[*p >> 4];
        e[3] = hexu[*p & 15];
        el = 4;
        break;
      }
      mb = 1;
    }
    ds_buf_append(b, e, el);
    p += mb;
    run = p;
  }
  if (p > run) ds_buf_append(b, run, (size_t)(p - run));
  ds_buf_putc(b, '"');
}

static void emit_string(ds_buf_t *b, const char *s, size_t n) {
  if (ds_yaml_scalar_plain_ok(s, n))
    ds_buf_append(b, s, n);
  else
    emit_quoted(b, (const unsigned char *)s, n);
}

static inline void emit_indent(ds_buf_t *b, int indent) {
  ds_buf_reserve(b, (size_t)indent);
  memset(b->data + b->len, ' ', (size_t)indent);
  b->len += (size_t)indent;
}

static inline int is_inline(const ds_value_t *v) {
  return !((v->type == DS_V_OBJECT && v->u.obj.len) || (v->type == DS_V_ARRAY && v->u.arr.len));
}

/* Writes a scalar or empty container on the current line (no newline). */
static void emit_inline(ds_buf_t *b, const ds_value_t *v) {
  switch (v->type) {
  case DS_V_NULL: ds_buf_append(b, "null", 4); break;
  case DS_V_BOOL: v->u.b ? ds_buf_append(b, "true", 4) : ds_buf_append(b, "false", 5); break;
  case DS_V_NUMBER: ds_buf_append(b, v->u.str.s, v->u.str.len); break;
  case DS_V_STRING: emit_string(b, v->u.str.s, v->u.str.len); break;
  case DS_V_BINARY:
    ds_buf_append(b, "!!binary ", 9);
    if (v->u.str.len)
      ds_base64_encode(b, v->u.str.s, v->u.str.len);
    else
      ds_buf_append(b, "\"\"", 2);
    break;
  case DS_V_ARRAY: ds_buf_append(b, "[]", 2); break;
  case DS_V_OBJECT: ds_buf_append(b, "{}", 2); break;
  }
}

static void emit_members(ds_buf_t *b, const ds_value_t *obj, int indent, int first_inline);
static void emit_items(ds_buf_t *b, const ds_value_t *arr, int indent, int first_inline);

/* After "key:" (cursor right after the colon): the value, ending with a newline. */
static void emit_after_key(ds_buf_t *b, const ds_value_t *v, int indent) {
  if (is_inline(v)) {
    ds_buf_putc(b, ' ');
    emit_inline(b, v);
    ds_buf_putc(b, '\n');
  } else if (v->type == DS_V_OBJECT) {
    ds_buf_putc(b, '\n');
    emit_members(b, v, indent + 2, 0);
  } else {
    ds_buf_putc(b, '\n');
    emit_items(b, v, indent + 2, 0);
  }
}

static void emit_members(ds_buf_t *b, const ds_value_t *obj, int indent, int first_inline) {
  for (size_t i = 0; i < obj->u.obj.len; i++) {
    const ds_member_t *m = &obj->u.obj.items[i];
    if (i || !first_inline) emit_indent(b, indent);
    size_t kstart = b->len;
    emit_string(b, m->key, m->klen);
    if (b->len - kstart > DS__YAML_SIMPLE_KEY_MAX) {
      /* explicit key: "? key\n<indent>: value" */
      ds_buf_reserve(b, 2);
      memmove(b->data + kstart + 2, b->data + kstart, b->len - kstart);
      b->data[kstart] = '?';
      b->data[kstart + 1] = ' ';
      b->len += 2;
      ds_buf_putc(b, '\n');
      emit_indent(b, indent);
    }
    ds_buf_putc(b, ':');
    emit_after_key(b, m->val, indent);
  }
}

static void emit_items(ds_buf_t *b, const ds_value_t *arr, int indent, int first_inline) {
  for (size_t i = 0; i < arr->u.arr.len; i++) {
    const ds_value_t *v = arr->u.arr.items[i];
    if (i || !first_inline) emit_indent(b, indent);
    ds_buf_append(b, "- ", 2);
    if (is_inline(v)) {
      emit_inline(b, v);
      ds_buf_putc(b, '\n');
    } else if (v->type == DS_V_OBJECT) {
      emit_members(b, v, indent + 2, 1);
    } else {
      emit_items(b, v, indent + 2, 1);
    }
  }
}

void ds_yaml_emit_doc(ds_buf_t *b, const ds_value_t *doc) {
  if (is_inline(doc)) {
    ds_buf_append(b, "--- ", 4);
    emit_inline(b, doc);
    ds_buf_putc(b, '\n');
  } else if (doc->type == DS_V_OBJECT) {
    ds_buf_append(b, "---\n", 4);
    emit_members(b, doc, 0, 0);
  } else {
    ds_buf_append(b, "---\n", 4);
    emit_items(b, doc, 0, 0);
  }
}

/* ---------------------------------------------------------------------------------- */
/* Loader                                                                             */

/* True if s[0..n) matches the JSON number grammar exactly. */
static int is_json_number(const unsigned char *s, size_t n) {
  size_t i = 0;
  if (i < n && s[i] == '-') i++;
  if (i >= n) return 0;
  if (s[i] == '0') {
    i++;
  } else if (s[i] >= '1' && s[i] <= '9') {
    while (i < n && isdig(s[i])) i++;
  } else {
    return 0;
  }
  if (i < n && s[i] == '.') {
    i++;
    if (i >= n || !isdig(s[i])) return 0;
    while (i < n && isdig(s[i])) i++;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= n || !isdig(s[i])) return 0;
    while (i < n && isdig(s[i])) i++;
  }
  return i == n;
}

typedef struct {
  ds_value_t *v;   /* the open container */
  char *key;       /* mapping: pending key (arena), NULL when a key is expected next */
  size_t klen;
} lframe_t;

typedef struct {
  ds_arena_t *a;
  char *err;
  size_t errlen;
  lframe_t *st;
  size_t depth, cap;
  ds_value_t *root;
} loader_t;

static int lfail(loader_t *L, size_t line0, const char *what) {
  if (L->err && L->errlen) snprintf(L->err, L->errlen, "line %zu: %s", line0 + 1, what);
  return DS_ECORRUPT;
}

#define DS__TAG_BINARY "tag:yaml.org,2002:binary"
#define DS__TAG_STR "tag:yaml.org,2002:str"

static int scalar_value(loader_t *L, const yaml_event_t *ev, ds_value_t **out) {
  const char *s = (const char *)ev->data.scalar.value;
  size_t n = ev->data.scalar.length;
  const char *tag = (const char *)ev->data.scalar.tag;
  if (tag && strcmp(tag, DS__TAG_BINARY) == 0) {
    ds_buf_t raw = DS_BUF_INIT;
    if (ds_base64_decode(&raw, s, n) != 0) {
      ds_buf_free(&raw);
      return lfail(L, ev->start_mark.line, "invalid base64 in !!binary scalar");
    }
    *out = ds_value_binary(L->a, raw.data ? raw.data : "", raw.len);
    ds_buf_free(&raw);
    return 0;
  }
  if (tag && (strcmp(tag, DS__TAG_STR) == 0 || strcmp(tag, "!") == 0)) {
    *out = ds_value_string(L->a, s, n);
    return 0;
  }
  if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
    if (n == 0 || (n == 1 && s[0] == '~') || (n == 4 && memcmp(s, "null", 4) == 0)) {
      *out = ds_value_null(L->a);
      return 0;
    }
    if (n == 4 && memcmp(s, "true", 4) == 0) {
      *out = ds_value_bool(L->a, true);
      return 0;
    }
    if (n == 5 && memcmp(s, "false", 5) == 0) {
      *out = ds_value_bool(L->a, false);
      return 0;
    }
    if (is_json_number((const unsigned char *)s, n)) {
      *out = ds_value_number(L->a, s, n);
      return 0;
    }
  }
  *out = ds_value_string(L->a, s, n);
  return 0;
}

/* Attaches a finished value (scalar or a just-opened container) to its parent. */
static int attach(loader_t *L, const yaml_event_t *ev, ds_value_t *v) {
  if (L->depth == 0) {
    L->root = v;
    return 0;
  }
  lframe_t *f = &L->st[L->depth - 1];
  if (f->v->type == DS_V_ARRAY) {
    ds_value_array_push(L->a, f->v, v);
    return 0;
  }
  if (!f->key) {
    /* key position: keys are strings; a plain scalar's text is taken as written */
    if (ev->type != YAML_SCALAR_EVENT)
      return lfail(L, ev->start_mark.line, "mapping keys must be scalars");
    f->klen = ev->data.scalar.length;
    f->key = ds_arena_strndup(L->a, (const char *)ev->data.scalar.value, f->klen);
    return 0;
  }
  ds_value_object_add(L->a, f->v, f->key, f->klen, v);
  f->key = NULL;
  return 0;
}

static int open_container(loader_t *L, const yaml_event_t *ev, ds_value_t *c) {
  if (L->depth >= DS__YAML_MAX_DEPTH) return lfail(L, ev->start_mark.line, "nesting too deep");
  int rc = attach(L, ev, c);
  if (rc) return rc;
  if (L->depth == L->cap) {
    L->cap = L->cap ? L->cap * 2 : 16;
    L->st = ds_xrealloc(L->st, L->cap * sizeof *L->st);
  }
  lframe_t *f = &L->st[L->depth++];
  f->v = c;
  f->key = NULL;
  f->klen = 0;
  return 0;
}

int ds__yaml_load_doc_libyaml(ds_arena_t *a, const char *s, size_t n, ds_value_t **out,
                              char *err, size_t errlen) {
  loader_t L;
  memset(&L, 0, sizeof L);
  L.a = a;
  L.err = err;
  L.errlen = errlen;
  if (err && errlen) err[0] = '\0';

  if (!s) s = "";
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) ds_oom();
  yaml_parser_set_input_string(&p, (const unsigned char *)s, n);
  yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);

  int rc = 0, docs = 0, done = 0;
  while (!done && !rc) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) {
      if (p.error == YAML_MEMORY_ERROR) ds_oom();
      char what[200];
      snprintf(what, sizeof what, "%s%s%s", p.problem ? p.problem : "syntax error",
               p.context ? " " : "", p.context ? p.context : "");
      rc = lfail(&L, p.problem_mark.line, what);
      break;
    }
    switch (ev.type) {
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
      break;
    case YAML_STREAM_END_EVENT:
      done = 1;
      break;
    case YAML_DOCUMENT_START_EVENT:
      if (++docs > 1) rc = lfail(&L, ev.start_mark.line, "more than one document");
      break;
    case YAML_ALIAS_EVENT:
      rc = lfail(&L, ev.start_mark.line, "aliases are not supported");
      break;
    case YAML_SCALAR_EVENT: {
      if (ev.data.scalar.anchor) {
        rc = lfail(&L, ev.start_mark.line, "anchors are not supported");
        break;
      }
      ds_value_t *v = NULL;
      /* in key position the text is used as is, so skip resolution (and base64) there */
      int keypos = L.depth && L.st[L.depth - 1].v->type == DS_V_OBJECT && !L.st[L.depth - 1].key;
      if (!keypos) rc = scalar_value(&L, &ev, &v);
      if (!rc) rc = attach(&L, &ev, v);
      break;
    }
    case YAML_SEQUENCE_START_EVENT:
      if (ev.data.sequence_start.anchor)
        rc = lfail(&L, ev.start_mark.line, "anchors are not supported");
      else
        rc = open_container(&L, &ev, ds_value_array(a, 0));
      break;
    case YAML_MAPPING_START_EVENT:
      if (ev.data.mapping_start.anchor)
        rc = lfail(&L, ev.start_mark.line, "anchors are not supported");
      else
        rc = open_container(&L, &ev, ds_value_object(a, 0));
      break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      if (L.depth) L.depth--;
      break;
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  free(L.st);
  if (rc) return rc;
  if (!docs || !L.root) {
    if (err && errlen) snprintf(err, errlen, "line 1: no YAML document");
    return DS_ECORRUPT;
  }
  *out = L.root;
  return 0;
}

/* ---------------------------------------------------------------------------------- */
/* Fast loader: the emitter's own layout, without libyaml                             */
/*
 * Catch-up reads decode every cold record, and libyaml (a general parser that allocates
 * per document, per token and per event) made that the dominant cost of a read. This
 * loader accepts exactly the shapes ds_yaml_emit_doc writes for a non-empty mapping
 * document: 2-space block indentation, keys plain (ds_yaml_scalar_plain_ok) or
 * double-quoted with the emitter's escapes, values on the key's line, `- ` items, `{}`,
 * `[]`, `!!binary`. Anything else (a hand-edited file, a comment, a tab, `~`, an explicit
 * `? key`, ...) makes it decline, and the libyaml loader reads the document instead (and
 * reports errors), so the result never depends on which loader ran: each accepted shape
 * is valid YAML that libyaml reads to the same tree (tests/store/test_roundtrip.c checks
 * both loaders on every generated document).
 * The same code also transcodes such a document straight to compact JSON (no tree, no
 * arena): what a catch-up read sends is ds_json_write of the loaded tree, and writing it
 * while parsing gives the same bytes at a fraction of the cost.
 * Every scalar is read in one pass: plain_scan finds where a plain key or value ends,
 * applies the quoting rule's byte checks, validates UTF-8 and (JSON mode) writes the JSON
 * string at once, a 16-byte block at a time; quoted_run does the same for the raw runs of
 * double-quoted scalars. Every byte the loader consumes goes through one of them or is
 * matched literally (indentation, "- ", ": ", literals, base64), so there is no separate
 * UTF-8 pass over the document: invalid UTF-8 anywhere makes it decline, and libyaml
 * reports it.
 */

typedef struct {
  const unsigned char *p, *end;
  const unsigned char *start; /* the document's first byte (scanners may look back to it) */
  ds_arena_t *a;   /* tree mode: values are built here */
  ds_buf_t *json;  /* JSON mode (a != NULL is tree mode): compact JSON is written here */
  ds_buf_t *tmp;   /* decoded quoted scalars */
  int depth;
  const unsigned char *eol; /* fl_eol's last answer */
  /* JSON mode, top-level members: spans of the first one and of the first `want` one */
  const char *want;
  size_t want_len;
  ds__yaml_json_info_t *info;
} fl_t;

enum { FL_OK = 0, FL_DECLINE = -1 };

/* ds_buf_putc without the call (JSON mode writes many single bytes). */
static inline void jputc(ds_buf_t *b, char c) {
  if (b->len + 2 > b->cap) ds_buf_reserve(b, 1);
  b->data[b->len++] = c;
}

/* Byte classes of the fused plain-scalar scanner: 0 ordinary, 1 control or DEL (refused),
 * 2 '"' or '\\' (fine in a plain scalar, escaped in JSON), 3 non-ASCII (validated as
 * UTF-8, and the characters special_mb names refused), 4 ':', 5 ' ' (which matter only
 * before ' ' and '#'), 6 '\n' (ends a value's line; refused inside a key). */
static const unsigned char scan_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
};

/* Length of the character at p (p < end, *p >= 0x80) if it is valid UTF-8 that may stand
 * raw in a scalar the emitter writes (not one special_mb names), else 0. */
static size_t fl_mb_ok(const unsigned char *p, const unsigned char *end) {
  size_t k = ds__utf8_seq(p, end);
  return k && !special_mb(p, end) ? k : 0;
}

/* The fast loader's scanners look at a block of bytes at a time and get two masks: `sp`,
 * the bytes that end a run of plain copying (controls, line breaks, DEL, non-ASCII, '"'
 * and '\\'), and `cs`, the ':' and ' ' bytes (which matter only before ' ', '\n' or '#').
 * With SSE2 (every x86-64) a block is 16 bytes and the masks are exact, one bit per byte;
 * elsewhere it is 8 bytes of SWAR tests with one flag per byte at bit 8i+7, where the
 * lowest `sp` flag is exact and higher ones may be false (so only the lowest is used and
 * every `cs` flag is verified). BLK_POS gives a flag's byte index. */
#if defined(__SSE2__)
#define BLK 16
#define BLK_POS(m) ((size_t)__builtin_ctz(m))
#define BLK_BELOW(k) ((1u << (k)) - 1u)
#define BLK_SHIFT(m, k) ((m) >> (k)) /* drops the flags of the first k bytes */
typedef unsigned blk_mask_t;
static inline blk_mask_t blk_masks(const unsigned char *p, char *o, blk_mask_t *cs) {
  __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
  if (o) _mm_storeu_si128((__m128i *)(void *)o, v);
  /* signed compare: bytes >= 0x80 are negative, so "< 0x20" takes them too */
  __m128i sp = _mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                            _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)));
  sp = _mm_or_si128(sp, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                     _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
  if (cs)
    *cs = (blk_mask_t)_mm_movemask_epi8(
        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(':')), _mm_cmpeq_epi8(v, _mm_set1_epi8(' '))));
  return (blk_mask_t)_mm_movemask_epi8(sp);
}
#else
#define BLK 8
#define BLK_POS(m) ((size_t)__builtin_ctzll(m) >> 3)
#define BLK_BELOW(k) ((UINT64_C(1) << ((k) * 8)) - 1)
#define BLK_SHIFT(m, k) ((m) >> ((k) * 8))
typedef uint64_t blk_mask_t;
static inline blk_mask_t blk_masks(const unsigned char *p, char *o, blk_mask_t *cs) {
  uint64_t x;
  memcpy(&x, p, 8);
  if (o) memcpy(o, &x, 8);
  uint64_t sp = (x & DS_SWAR_HIGH) | ds_swar_has_less(x, 0x20) | ds_swar_has_byte(x, 0x7f) |
                ds_swar_has_byte(x, '"') | ds_swar_has_byte(x, '\\');
  if (cs) *cs = ds_swar_has_byte(x, ':') | ds_swar_has_byte(x, ' ');
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
  /* flag positions assume byte 0 is the low byte: make the block look special at byte 0 */
  if (sp || (cs && *cs)) {
    sp = 0x80;
    if (cs) *cs = 0;
  }
#endif
  return sp;
}
#endif

/* Copies n < BLK bytes with a few overlapping fixed-size moves (no memcpy call). */
static inline void copy_small(char *o, const unsigned char *p, size_t n) {
  if (n >= 8) {
    memcpy(o, p, 8);
    memcpy(o + n - 8, p + n - 8, 8);
  } else if (n >= 4) {
    memcpy(o, p, 4);
    memcpy(o + n - 4, p + n - 4, 4);
  } else {
    for (size_t i = 0; i < n; i++) o[i] = (char)p[i];
  }
}

/* The fused plain-scalar scanner: one pass over a plain scalar at p that finds where it
 * ends, checks every byte as plain_syntax_ok does (no control, no DEL, no ": ", no " #",
 * no special_mb character) and that the bytes are valid UTF-8, and with `emit` writes the
 * scalar as a JSON string to J at the same time (it must have room for 2 * (end - p) + BLK
 * + 2 more bytes, jroom). A value (key == 0) ends at the line's '\n'; a key ends at the first ':'
 * followed by ' ' or '\n' (a line break before it refuses). Returns the end or NULL when
 * the scalar is not one the fast loader takes. Its first and last bytes are the caller's
 * to check (plain_edges_ok): a value may still turn out a number or a literal.
 * Needs end[-1] == '\n' (whole documents always end so): then every byte before a '\n'
 * has a successor inside the document, and the scan stops by the last byte at the latest.
 * A block at a time (blk_masks) while there is nothing to escape or check: the first
 * byte of any other class in a block is found exactly, and ':'/' ' before it are each
 * verified. */
/* plain_scan's check of the ':' and ' ' bytes flagged in m (all before the block's first
 * special byte) at block position p: 0 if none matters, -1 if one makes the scalar one the
 * fast loader does not take, 1 if a key ends at *q. */
static inline __attribute__((always_inline)) int cs_check(const unsigned char *p, blk_mask_t m,
                                                         int key, const unsigned char **q) {
  while (m) {
    const unsigned char *c = p + BLK_POS(m);
    if (*c == ':') {
      if (key && (c[1] == ' ' || c[1] == '\n')) {
        *q = c;
        return 1;
      }
      if (!key && c[1] == ' ') return -1;
    } else if (*c == ' ' && c[1] == '#') {
      return -1;
    }
    m &= m - 1;
  }
  return 0;
}

static inline __attribute__((always_inline)) const unsigned char *
plain_scan(const unsigned char *lo, const unsigned char *p, const unsigned char *end, ds_buf_t *J,
           int emit, int key) {
  char *o = emit ? J->data + J->len : NULL;
  const unsigned char *q;
  blk_mask_t m, sp;
  size_t k;
  int r;
  if (emit) *o++ = '"';
  for (;;) {
    while (end - p >= BLK) {
      sp = blk_masks(p, o, &m); /* (o: copies the block, room is reserved) */
      k = BLK;
      if (sp) {
        k = BLK_POS(sp);
        m &= BLK_BELOW(k); /* only the bytes before it */
      }
      if (m && (r = cs_check(p, m, key, &q)) != 0) {
        if (r < 0) return NULL;
        if (emit) o += q - p;
        goto key_done;
      }
      if (emit) o += k; /* only k of the bytes copied count */
      p += k;
      if (k < BLK) goto one_byte;
    }
#if defined(__SSE2__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (!key && end - lo >= BLK) {
      /* the document's last bytes: the block that ends with the document, its flags moved
       * to start at p (the last byte is a '\n', so one is always left; with SWAR the lowest
       * may now be false, which the byte step below takes as an ordinary byte). Values
       * only: a key is never at the end of a document, its value follows. */
      size_t sh = (size_t)(p - (end - BLK));
      sp = blk_masks(end - BLK, NULL, &m);
      sp = BLK_SHIFT(sp, sh);
      m = BLK_SHIFT(m, sh);
      k = BLK_POS(sp);
      m &= BLK_BELOW(k);
      if (m && (r = cs_check(p, m, key, &q)) != 0) {
        if (r < 0) return NULL;
        if (emit) {
          copy_small(o, p, (size_t)(q - p));
          o += q - p;
        }
        goto key_done;
      }
      if (emit) {
        copy_small(o, p, k);
        o += k;
      }
      p += k;
    }
#endif
  one_byte:;
    /* one byte: the first special byte of a word, or the last few of the document */
    unsigned char c = *p;
    switch (scan_class[c]) {
    case 0:
      break;
    case 1:
      return NULL;
    case 2:
      if (emit) *o++ = '\\';
      break;
    case 3: {
      size_t mb = fl_mb_ok(p, end);
      if (!mb) return NULL;
      if (emit) {
        copy_small(o, p, mb);
        o += mb;
      }
      p += mb;
      continue;
    }
    case 4:
      if (key && (p[1] == ' ' || p[1] == '\n')) goto done;
      if (!key && p[1] == ' ') return NULL;
      break;
    case 5:
      if (p[1] == '#') return NULL;
      break;
    default: /* '\n' */
      if (key) return NULL;
      goto done;
    }
    if (emit) *o++ = (char)c;
    p++;
  }
done:
  if (emit) {
    *o++ = '"';
    J->len = (size_t)(o - J->data);
  }
  return p;
key_done: /* a key ended at q, and o is where its bytes end */
  if (emit) {
    *o++ = '"';
    J->len = (size_t)(o - J->data);
  }
  return q;
}

static inline __attribute__((always_inline)) const unsigned char *scan_value_json(const unsigned char *lo, const unsigned char *p,
                                            const unsigned char *end, ds_buf_t *J) {
  return plain_scan(lo, p, end, J, 1, 0);
}
static const unsigned char *scan_value(const unsigned char *lo, const unsigned char *p,
                                       const unsigned char *end) {
  return plain_scan(lo, p, end, NULL, 0, 0);
}
static inline __attribute__((always_inline)) const unsigned char *scan_key_json(const unsigned char *lo, const unsigned char *p,
                                          const unsigned char *end, ds_buf_t *J) {
  return plain_scan(lo, p, end, J, 1, 1);
}
static const unsigned char *scan_key(const unsigned char *lo, const unsigned char *p,
                                     const unsigned char *end) {
  return plain_scan(lo, p, end, NULL, 0, 1);
}

/* First bytes a plain scalar may not start with: the indicators plain_syntax_ok refuses,
 * and ' '. */
static const unsigned char lead_bad[256] = {
    [' '] = 1, ['-'] = 1, ['?'] = 1, [':'] = 1, [','] = 1, ['['] = 1, [']'] = 1, ['{'] = 1,
    ['}'] = 1, ['#'] = 1, ['&'] = 1, ['*'] = 1, ['!'] = 1, ['|'] = 1, ['>'] = 1, ['\''] = 1,
    ['"'] = 1, ['%'] = 1, ['@'] = 1, ['`'] = 1,
};

/* The rest of plain_syntax_ok, for a scalar plain_scan took: its first and last bytes. */
static inline int plain_edges_ok(const unsigned char *s, size_t n) {
  if (n == 0 || lead_bad[s[0]] || s[n - 1] == ' ' || s[n - 1] == ':') return 0;
  return !(n >= 3 && s[0] == '.' && s[1] == '.' && s[2] == '.');
}

/* Room for a plain scalar that starts at p: plain_scan writes at most 2 bytes per input
 * byte up to the document's end, plus quotes and one block of overhang. */
static inline void jroom(ds_buf_t *J, const unsigned char *p, const unsigned char *end) {
  size_t need = 2 * (size_t)(end - p) + BLK + 2;
  if (J->cap - J->len <= need) ds_buf_reserve(J, need);
}

static int fl_members(fl_t *F, ds_value_t *obj, int indent, int first_inline);
static int fl_items(fl_t *F, ds_value_t *arr, int indent, int first_inline);

static void fl_put_cp(ds_buf_t *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else {
    u[0] = (char)(0xE0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  }
  ds_buf_append(b, u, n);
}

static int fl_hex(const unsigned char *p, int n, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < n; i++) {
    unsigned char c = p[i];
    if (!ishex(c)) return -1;
    v = v * 16 + (unsigned)(isdig(c) ? c - '0' : lower(c) - 'a' + 10);
  }
  *out = v;
  return 0;
}

/* The raw bytes of a double-quoted scalar from p: returns the first '"' or '\\', or NULL
 * when a byte the emitter never leaves raw comes first: a control (line breaks included),
 * DEL, invalid UTF-8 or a special_mb character. A block at a time while all are ordinary
 * ASCII. */
static inline __attribute__((always_inline)) const unsigned char *quoted_run(const unsigned char *p,
                                                                           const unsigned char *end) {
  for (;;) {
    while (end - p >= BLK) {
      blk_mask_t sp = blk_masks(p, NULL, NULL);
      if (sp) {
        p += BLK_POS(sp);
        break;
      }
      p += BLK;
    }
    if (p >= end) return NULL;
    unsigned char c = *p;
    if (c == '"' || c == '\\') return p;
    if (c < 0x20 || c == 0x7f) return NULL;
    if (c < 0x80) {
      p++;
      continue;
    }
    size_t k = fl_mb_ok(p, end);
    if (!k) return NULL;
    p += k;
  }
}

/* A double-quoted scalar at F->p (on the opening quote), decoded into F->tmp; F->p ends
 * after the closing quote. Only the escapes the emitter writes are accepted. */
static int fl_quoted(fl_t *F) {
  const unsigned char *p = F->p + 1, *end = F->end, *run = p;
  ds_buf_reset(F->tmp);
  for (;;) {
    p = quoted_run(p, end);
    if (!p) return FL_DECLINE;
    if (*p == '"') break;
    if (p > run) ds_buf_append(F->tmp, run, (size_t)(p - run));
    if (p + 1 >= end) return FL_DECLINE;
    unsigned cp;
    switch (p[1]) {
    case '"': ds_buf_putc(F->tmp, '"'); p += 2; break;
    case '\\': ds_buf_putc(F->tmp, '\\'); p += 2; break;
    case '0': ds_buf_putc(F->tmp, '\0'); p += 2; break;
    case 't': ds_buf_putc(F->tmp, '\t'); p += 2; break;
    case 'n': ds_buf_putc(F->tmp, '\n'); p += 2; break;
    case 'r': ds_buf_putc(F->tmp, '\r'); p += 2; break;
    case 'x':
      if (end - p < 4 || fl_hex(p + 2, 2, &cp) != 0) return FL_DECLINE;
      fl_put_cp(F->tmp, cp); /* YAML's \xNN names the code point U+00NN */
      p += 4;
      break;
    case 'u':
      if (end - p < 6 || fl_hex(p + 2, 4, &cp) != 0) return FL_DECLINE;
      if (cp >= 0xD800 && cp <= 0xDFFF) return FL_DECLINE; /* libyaml rejects these */
      fl_put_cp(F->tmp, cp);
      p += 6;
      break;
    default:
      return FL_DECLINE;
    }
    run = p;
  }
  if (p > run) ds_buf_append(F->tmp, run, (size_t)(p - run));
  F->p = p + 1;
  return FL_OK;
}

/* JSON mode: the double-quoted scalar at F->p written to F->json as a JSON string; F->p
 * ends after the closing quote. Without escapes its raw bytes are already the JSON
 * string's body (quoted_run refused everything ds_json_write_string escapes: controls,
 * DEL, U+2028/U+2029, and a raw '"' or '\\' cannot occur), so they are copied once; with
 * escapes it is decoded (fl_quoted) and written by ds_json_write_string. */
static inline __attribute__((always_inline)) int fl_quoted_json(fl_t *F) {
  const unsigned char *s = F->p + 1, *q = quoted_run(s, F->end);
  if (!q) return FL_DECLINE;
  if (*q == '\\') {
    if (fl_quoted(F) != FL_OK) return FL_DECLINE;
    ds_json_write_string(F->json, F->tmp->data ? F->tmp->data : "", F->tmp->len);
    return FL_OK;
  }
  ds_buf_t *J = F->json;
  size_t n = (size_t)(q - s);
  if (J->cap - J->len <= n + 2) ds_buf_reserve(J, n + 2);
  char *o = J->data + J->len;
  o[0] = '"';
  if (n < BLK) copy_small(o + 1, s, n);
  else memcpy(o + 1, s, n);
  o[n + 1] = '"';
  J->len += n + 2;
  F->p = q + 1;
  return FL_OK;
}

/* End of the current line (the '\n'), or NULL if the document ends without one. */
static const unsigned char *fl_eol(fl_t *F) {
  /* p only moves forward, so a newline found earlier at or after p is still the first */
  if (F->eol && F->eol >= F->p) return F->eol;
  F->eol = memchr(F->p, '\n', (size_t)(F->end - F->p));
  return F->eol;
}

/* A key at F->p: plain or quoted, followed by ':'. On success *k and *kl hold the key
 * (in the document or in tmp; tree mode copies it) and F->p is on the ':'. JSON mode
 * has also written the key to F->json as a JSON string. */
static inline __attribute__((always_inline)) int fl_key(fl_t *F, const char **k, size_t *kl) {
  const unsigned char *start = F->p;
  ds_buf_t *J = F->json;
  if (*start == '"') {
    /* fl_quoted refuses a raw line break, so a ':' right after it is on the key's line */
    if (fl_quoted(F) != FL_OK || F->p >= F->end || *F->p != ':') return FL_DECLINE;
    if ((size_t)(F->p - start) > DS__YAML_SIMPLE_KEY_MAX) return FL_DECLINE;
    *kl = F->tmp->len;
    const char *t = F->tmp->data ? F->tmp->data : "";
    /* tree mode copies it (tmp is reused by the value); JSON mode writes it at once */
    if (J) ds_json_write_string(J, t, *kl);
    *k = J ? t : ds_arena_strndup(F->a, t, *kl);
    return FL_OK;
  }
  const unsigned char *q;
  if (J) {
    jroom(J, start, F->end);
    q = scan_key_json(F->start, start, F->end, J);
  } else {
    q = scan_key(F->start, start, F->end);
  }
  if (!q) return FL_DECLINE;
  size_t n = (size_t)(q - start);
  /* libyaml takes a key's text as written (no resolution), so syntax is all that matters */
  if (n > DS__YAML_SIMPLE_KEY_MAX || !plain_edges_ok(start, n)) return FL_DECLINE;
  *k = (const char *)start;
  *kl = n;
  F->p = q;
  return FL_OK;
}

static int fl_is_b64(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = s[i];
    if (!(isdig(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' || c == '/' ||
          c == '='))
      return 0;
  }
  return 1;
}

/* A `!!binary` value at F->p, to the end of the line (F->p ends there). */
static int fl_binary(fl_t *F, ds_value_t **out) {
  const unsigned char *eol = fl_eol(F);
  if (!eol) return FL_DECLINE;
  const unsigned char *s = F->p;
  size_t n = (size_t)(eol - s);
  ds_buf_t *J = F->json;
  if (!(n >= 9 && memcmp(s, "!!binary ", 9) == 0)) return FL_DECLINE;
  const unsigned char *b = s + 9;
  size_t bn = n - 9;
  ds_buf_reset(F->tmp);
  if (!(bn == 2 && b[0] == '"' && b[1] == '"')) {
    if (!bn || !fl_is_b64(b, bn)) return FL_DECLINE;
    if (ds_base64_decode(F->tmp, (const char *)b, bn) != 0) return FL_DECLINE;
  }
  if (J) { /* as ds_json_write writes DS_V_BINARY: re-encoded (canonical) base64 */
    jputc(J, '"');
    ds_base64_encode(J, F->tmp->data, F->tmp->len);
    jputc(J, '"');
  } else {
    *out = ds_value_binary(F->a, F->tmp->data ? F->tmp->data : "", F->tmp->len);
  }
  F->p = eol;
  return FL_OK;
}

/* An inline value from F->p to the end of the line; F->p ends after the '\n'.
 * A plain value is scanned (and in JSON mode written as a string) in one pass that also
 * finds the line's end; the few that resolve to something else (null, true, false, a
 * number, [] and {}) are then rewritten in place, which costs less than looking for the
 * line's end first. */
static inline __attribute__((always_inline)) int fl_inline(fl_t *F, ds_value_t **out) {
  const unsigned char *s = F->p, *end = F->end;
  ds_buf_t *J = F->json;
  *out = NULL;
  if (s >= end) return FL_DECLINE;
  unsigned char c = *s;
  if (c == '"') {
    if (J) {
      if (fl_quoted_json(F) != FL_OK) return FL_DECLINE;
    } else {
      if (fl_quoted(F) != FL_OK) return FL_DECLINE;
      *out = ds_value_string(F->a, F->tmp->data ? F->tmp->data : "", F->tmp->len);
    }
  } else if (c == '!') {
    if (fl_binary(F, out) != FL_OK) return FL_DECLINE;
  } else {
    size_t mark = 0;
    const unsigned char *eol;
    if (J) {
      mark = J->len;
      jroom(J, s, end);
      eol = scan_value_json(F->start, s, end, J);
    } else {
      eol = scan_value(F->start, s, end);
    }
    if (!eol) return FL_DECLINE;
    size_t n = (size_t)(eol - s);
    const char *lit = NULL; /* what replaces the string just written (JSON mode) */
    size_t litn = n;
    switch (c) { /* the few plain values that are not strings */
    case '[':
    case '{':
      if (n == 2 && s[1] == (c == '[' ? ']' : '}')) {
        lit = c == '[' ? "[]" : "{}";
        if (!J) *out = c == '[' ? ds_value_array(F->a, 0) : ds_value_object(F->a, 0);
      }
      break;
    case 'n':
      if (n == 4 && memcmp(s, "null", 4) == 0) {
        lit = "null";
        if (!J) *out = ds_value_null(F->a);
      }
      break;
    case 't':
      if (n == 4 && memcmp(s, "true", 4) == 0) {
        lit = "true";
        if (!J) *out = ds_value_bool(F->a, true);
      }
      break;
    case 'f':
      if (n == 5 && memcmp(s, "false", 5) == 0) {
        lit = "false";
        if (!J) *out = ds_value_bool(F->a, false);
      }
      break;
    case '-': case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
    case '8': case '9':
      if (is_json_number(s, n)) {
        lit = (const char *)s; /* the lexeme, as ds_json_write writes numbers */
        if (!J) *out = ds_value_number(F->a, (const char *)s, n);
      }
      break;
    default:
      break;
    }
    if (!lit) {
      /* the loader resolves only null/~/true/false/numbers (handled above; "~" declined):
       * any other plain text is a string, whatever YAML 1.1 would make of it */
      if (!plain_edges_ok(s, n) || (n == 1 && c == '~')) return FL_DECLINE;
      if (!J) *out = ds_value_string(F->a, (const char *)s, n);
    }
    if (J && lit) { /* (the string written was n + 2 bytes: room enough) */
      if (litn < BLK) copy_small(J->data + mark, (const unsigned char *)lit, litn);
      else memcpy(J->data + mark, lit, litn);
      J->len = mark + litn;
    }
    F->p = eol;
  }
  if (F->p >= end || *F->p != '\n') return FL_DECLINE;
  F->p++;
  return FL_OK;
}

/* Consumes exactly `indent` spaces at the start of a line. Returns 1 if the line is
 * indented so, 0 if it is less indented or the document ended (the block is over), and
 * FL_DECLINE if it is indented more. */
static int fl_indent(fl_t *F, int indent) {
  const unsigned char *q = F->p;
  while (q < F->end && *q == ' ') q++;
  if (q == F->end) return 0;
  int k = (int)(q - F->p);
  if (k < indent) return 0;
  if (k > indent) return FL_DECLINE;
  F->p = q;
  return 1;
}

/* The value of a key whose ':' is at F->p. */
static inline __attribute__((always_inline)) int fl_after_key(fl_t *F, int indent, ds_value_t **out) {
  F->p++; /* ':' */
  if (F->p < F->end && *F->p == ' ') {
    F->p++;
    return fl_inline(F, out);
  }
  if (F->p >= F->end || *F->p != '\n') return FL_DECLINE;
  F->p++;
  /* a non-empty block, exactly 2 deeper */
  const unsigned char *q = F->p;
  while (q < F->end && *q == ' ') q++;
  if ((int)(q - F->p) != indent + 2 || q >= F->end) return FL_DECLINE;
  if (++F->depth > DS__YAML_MAX_DEPTH / 2) return FL_DECLINE;
  int rc;
  *out = NULL;
  if (q + 1 < F->end && q[0] == '-' && q[1] == ' ') {
    if (F->json) jputc(F->json, '[');
    else *out = ds_value_array(F->a, 0);
    rc = fl_items(F, *out, indent + 2, 0);
    if (F->json) jputc(F->json, ']');
  } else {
    if (F->json) jputc(F->json, '{');
    else *out = ds_value_object(F->a, 4);
    rc = fl_members(F, *out, indent + 2, 0);
    if (F->json) jputc(F->json, '}');
  }
  F->depth--;
  return rc;
}

static int fl_members(fl_t *F, ds_value_t *obj, int indent, int first_inline) {
  ds_buf_t *J = F->json;
  int top = F->depth == 0 && F->info; /* (the depth is back to this one after each value) */
  for (int i = 0;; i++) {
    if (i || !first_inline) {
      int r = fl_indent(F, indent);
      if (r == 0 && i) return FL_OK;
      if (r != 1) return FL_DECLINE;
    }
    const char *k;
    size_t kl;
    ds_value_t *v = NULL;
    if (!J) {
      if (fl_key(F, &k, &kl) != FL_OK || fl_after_key(F, indent, &v) != FL_OK)
        return FL_DECLINE;
      ds_value_object_add(F->a, obj, k, kl, v);
      continue;
    }
    if (i) jputc(J, ',');
    ds__yaml_span_t sp;
    sp.key_start = J->len;
    if (fl_key(F, &k, &kl) != FL_OK) return FL_DECLINE;
    sp.key_end = J->len;
    /* (k may point into tmp, which the value reuses: use it before the value) */
    int is_want = top && !F->info->want_found && kl == F->want_len && F->want &&
                  memcmp(k, F->want, kl) == 0;
    jputc(J, ':');
    sp.val_start = J->len;
    if (fl_after_key(F, indent, &v) != FL_OK) return FL_DECLINE;
    sp.val_end = J->len;
    if (top && i == 0) F->info->first = sp;
    if (is_want) {
      F->info->want_found = 1;
      F->info->want = sp;
    }
  }
}

/* True if the line at F->p starts a mapping (a key followed by ':'), not a scalar. */
static int fl_line_is_key(fl_t *F) {
  const unsigned char *eol = fl_eol(F);
  if (!eol) return 0;
  if (*F->p == '"') {
    const unsigned char *q = F->p + 1;
    while (q < eol && *q != '"') q += *q == '\\' ? 2 : 1;
    return q + 1 < eol && q[1] == ':';
  }
  for (const unsigned char *q = F->p; q < eol; q++)
    if (*q == ':' && (q + 1 == eol || q[1] == ' ')) return 1;
  return 0;
}

static int fl_items(fl_t *F, ds_value_t *arr, int indent, int first_inline) {
  for (int i = 0;; i++) {
    if (i || !first_inline) {
      int r = fl_indent(F, indent);
      if (r == 0 && i) return FL_OK;
      if (r != 1) return FL_DECLINE;
    }
    if (F->end - F->p < 2 || F->p[0] != '-' || F->p[1] != ' ') return FL_DECLINE;
    F->p += 2;
    ds_buf_t *J = F->json;
    if (J && i) jputc(J, ',');
    ds_value_t *v = NULL;
    int rc;
    if (F->end - F->p >= 2 && F->p[0] == '-' && F->p[1] == ' ') {
      if (++F->depth > DS__YAML_MAX_DEPTH / 2) return FL_DECLINE;
      if (J) jputc(J, '[');
      else v = ds_value_array(F->a, 0);
      rc = fl_items(F, v, indent + 2, 1);
      if (J) jputc(J, ']');
      F->depth--;
    } else if (fl_line_is_key(F)) {
      if (++F->depth > DS__YAML_MAX_DEPTH / 2) return FL_DECLINE;
      if (J) jputc(J, '{');
      else v = ds_value_object(F->a, 4);
      rc = fl_members(F, v, indent + 2, 1);
      if (J) jputc(J, '}');
      F->depth--;
    } else {
      rc = fl_inline(F, &v);
    }
    if (rc != FL_OK) return FL_DECLINE;
    if (!J) ds_value_array_push(F->a, arr, v);
  }
}

int ds__yaml_load_doc_fast(ds_arena_t *a, const char *s, size_t n, ds_value_t **out) {
  if (!s || n < 5 || memcmp(s, "---\n", 4) != 0 || s[n - 1] != '\n') return 0;
  /* (no UTF-8 pass first: the scanners validate every byte they take, and whatever they
   * refuse, libyaml reads and reports) */
  ds_buf_t tmp = DS_BUF_INIT;
  fl_t F = {.p = (const unsigned char *)s + 4,
            .end = (const unsigned char *)s + n,
            .start = (const unsigned char *)s,
            .a = a,
            .tmp = &tmp};
  if (F.p < F.end && (*F.p == ' ' || (F.end - F.p >= 2 && F.p[0] == '-' && F.p[1] == ' '))) {
    ds_buf_free(&tmp);
    return 0;
  }
  ds_value_t *root = ds_value_object(a, 8);
  int rc = fl_members(&F, root, 0, 0);
  ds_buf_free(&tmp);
  if (rc != FL_OK || F.p != F.end) return 0;
  *out = root;
  return 1;
}

int ds__yaml_doc_to_json(const char *s, size_t n, ds_buf_t *out, const char *want,
                         size_t want_len, ds__yaml_json_info_t *info) {
  if (!s || n < 5 || memcmp(s, "---\n", 4) != 0 || s[n - 1] != '\n') return 0;
  const unsigned char *p = (const unsigned char *)s + 4;
  if (*p == ' ' || (n >= 6 && p[0] == '-' && p[1] == ' ')) return 0;
  memset(info, 0, sizeof *info);
  ds_buf_t tmp = DS_BUF_INIT;
  size_t base = out->len;
  /* The JSON is about as long as the YAML; reserving twice that once means the plain
   * scalars' room checks (jroom) never grow the buffer for an ordinary document. */
  if (out->cap - out->len <= 2 * n + 64) ds_buf_reserve(out, 2 * n + 64);
  fl_t F = {.p = p,
            .end = (const unsigned char *)s + n,
            .start = (const unsigned char *)s,
            .json = out,
            .tmp = &tmp,
            .want = want,
            .want_len = want_len,
            .info = info};
  jputc(out, '{');
  int rc = fl_members(&F, NULL, 0, 0);
  jputc(out, '}');
  if (tmp.data) ds_buf_free(&tmp); /* (only escapes and binary values use it) */
  if (rc != FL_OK || F.p != F.end) {
    out->len = base;
    if (out->data) out->data[base] = '\0';
    return 0;
  }
  return 1;
}

int ds_yaml_load_doc(ds_arena_t *a, const char *s, size_t n, ds_value_t **out, char *err,
                     size_t errlen) {
  if (ds__yaml_load_doc_fast(a, s, n, out)) {
    if (err && errlen) err[0] = '\0';
    return 0;
  }
  return ds__yaml_load_doc_libyaml(a, s, n, out, err, errlen);
}
