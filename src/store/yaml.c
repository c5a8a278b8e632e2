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

#include "core/err.h"
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
  static const char *const words[] = {"null", "~", "true", "false", "yes", "no",
                                      "on",   "off", "y",   "n",     "<<",  "="};
  if (n > 5) return 0;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (ieq(s, n, words[i])) return 1;
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

int ds_yaml_scalar_plain_ok(const char *str, size_t n) {
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
  for (const unsigned char *p = s; p < end; p++) {
    unsigned char k = yesc_class[*p];
    if (!k) {
      if (*p == ':' && p + 1 < end && p[1] == ' ') return 0;
      if (*p == ' ' && p + 1 < end && p[1] == '#') return 0;
      continue;
    }
    if (k == 1) return 0;
    if (k == 3 && special_mb(p, end)) return 0;
  }
  if (special_word(s, n) || looks_numeric(s, n)) return 0;
  return 1;
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

int ds_yaml_load_doc(ds_arena_t *a, const char *s, size_t n, ds_value_t **out, char *err,
                     size_t errlen) {
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
