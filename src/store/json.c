/* json.c - strict RFC 8259 parser, compact writer, base64 and UTF-8 validation.
 *
 * Provides: the implementation of json.h. The parser is a single recursive-descent pass
 * over the input with table-driven scanning of string bodies; a string without escapes
 * is copied once, straight from the input into the arena; array items and object members
 * are collected on one reusable scratch stack and copied into an exactly sized arena block
 * when the container closes, so no container is ever regrown.
 * Must not: accept anything RFC 8259 rejects (no comments, no trailing commas, no NaN, no
 * leading zeros, no BOM, no invalid UTF-8, no lone surrogates), allocate outside the
 * caller's arena (the scratch stacks are freed before returning), or recurse deeper than
 * the depth limit.
 */
#include "store/json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/swar.h"

/* Hard ceiling on the recursion depth whatever the caller asks for (C stack safety). */
#define DS__JSON_DEPTH_CEILING 4096

/* ---------------------------------------------------------------------------------- */
/* UTF-8                                                                              */

/* Length of the valid UTF-8 sequence at p (p < end, *p >= 0x80), or 0 if invalid. */
static inline size_t utf8_seq(const unsigned char *p, const unsigned char *end) {
  unsigned char c = p[0];
  size_t avail = (size_t)(end - p);
  if (c < 0xC2) return 0; /* continuation byte or overlong 2-byte lead */
  if (c < 0xE0) {
    if (avail < 2 || (p[1] & 0xC0) != 0x80) return 0;
    return 2;
  }
  if (c < 0xF0) {
    if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  /* overlong */
    if (c == 0xED && p[1] >= 0xA0) return 0; /* UTF-16 surrogate */
    return 3;
  }
  if (c < 0xF5) {
    if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;  /* overlong */
    if (c == 0xF4 && p[1] >= 0x90) return 0; /* > U+10FFFF */
    return 4;
  }
  return 0;
}

size_t ds__utf8_seq(const unsigned char *p, const unsigned char *end) { return utf8_seq(p, end); }

int ds_utf8_valid(const char *s, size_t n) {
  if (!n) return 1; /* also avoids arithmetic on a NULL pointer */
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  while (p < end) {
    /* ASCII fast path, 8 bytes at a time */
    while (end - p >= 8) {
      uint64_t w;
      memcpy(&w, p, 8);
      if (w & DS_SWAR_HIGH) break;
      p += 8;
    }
    if (p >= end) break;
    if (*p < 0x80) {
      p++;
      continue;
    }
    size_t k = utf8_seq(p, end);
    if (!k) return 0;
    p += k;
  }
  return 1;
}

/* ---------------------------------------------------------------------------------- */
/* Parser                                                                             */

typedef struct {
  const unsigned char *start, *p, *end;
  ds_arena_t *a;
  int depth, max_depth;
  char *err;
  size_t errlen;
  /* scratch stacks shared by all nesting levels */
  ds_value_t **vs;
  size_t vlen, vcap;
  ds_member_t *ms;
  size_t mlen, mcap;
  size_t *ix; /* scratch for duplicate-key detection in large objects */
  size_t ixcap;
} jp_t;

/* Character classes for string bodies: 0 = plain byte copied as is, 1 = '"', 2 = '\\',
 * 3 = control character (invalid), 4 = non-ASCII lead byte (validate as UTF-8). */
static const unsigned char str_class[256] = {
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
};

static const signed char hexval[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,
    ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14,
    ['e'] = 15, ['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15,
    ['F'] = 16,
}; /* value + 1, 0 = not a hex digit */

static int jp_fail_at(jp_t *j, const unsigned char *at, const char *what) {
  if (j->err && j->errlen)
    snprintf(j->err, j->errlen, "invalid JSON at byte %zu: %s", (size_t)(at - j->start), what);
  return DS_EINVAL;
}

static int jp_fail_utf8(jp_t *j, const unsigned char *at) {
  if (j->err && j->errlen)
    snprintf(j->err, j->errlen, "invalid UTF-8 at byte %zu", (size_t)(at - j->start));
  return DS_EINVAL;
}

static inline void jp_ws(jp_t *j) {
  const unsigned char *p = j->p, *end = j->end;
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
  j->p = p;
}

/* Reads 4 hex digits at p (caller checked there are 4 bytes); -1 if not hex. */
static inline long hex4(const unsigned char *p) {
  int a = hexval[p[0]], b = hexval[p[1]], c = hexval[p[2]], d = hexval[p[3]];
  if (!a || !b || !c || !d) return -1;
  return ((long)(a - 1) << 12) | ((b - 1) << 8) | ((c - 1) << 4) | (d - 1);
}

static inline size_t put_utf8(unsigned char *o, unsigned long cp) {
  if (cp < 0x80) {
    o[0] = (unsigned char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (unsigned char)(0xC0 | (cp >> 6));
    o[1] = (unsigned char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (unsigned char)(0xE0 | (cp >> 12));
    o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (unsigned char)(0xF0 | (cp >> 18));
  o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (unsigned char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string whose opening quote is at j->p. On success *s and *len give an arena copy
 * (NUL-terminated). The first pass validates everything and finds the closing quote;
 * only strings that contain escapes get a second (decoding) pass, which needs no checks
 * and never writes more bytes than it reads. */
static int jp_string(jp_t *j, const char **s, size_t *len) {
  const unsigned char *p = j->p + 1, *end = j->end, *body = p;
  int escaped = 0;
  for (;;) {
    /* plain bytes: the common case */
    while (p < end && str_class[*p] == 0) p++;
    if (p >= end) return jp_fail_at(j, j->p, "unterminated string");
    switch (str_class[*p]) {
    case 1:
      goto closed;
    case 2: {
      escaped = 1;
      if (end - p < 2) return jp_fail_at(j, j->p, "unterminated string");
      unsigned char e = p[1];
      if (e == 'u') {
        if (end - p < 6) return jp_fail_at(j, p, "invalid \\u escape");
        long cp = hex4(p + 2);
        if (cp < 0) return jp_fail_at(j, p, "invalid \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          long lo = (end - p >= 12 && p[6] == '\\' && p[7] == 'u') ? hex4(p + 8) : -1;
          if (lo < 0xDC00 || lo > 0xDFFF) return jp_fail_at(j, p, "lone surrogate in \\u escape");
          p += 12;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return jp_fail_at(j, p, "lone surrogate in \\u escape");
        } else {
          p += 6;
        }
      } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                 e == 'r' || e == 't') {
        p += 2;
      } else {
        return jp_fail_at(j, p, "invalid escape in string");
      }
      break;
    }
    case 3:
      return jp_fail_at(j, p, "control character in string");
    default: {
      size_t k = utf8_seq(p, end);
      if (!k) return jp_fail_utf8(j, p);
      p += k;
      break;
    }
    }
  }
closed:;
  size_t rawlen = (size_t)(p - body);
  j->p = p + 1;
  if (!escaped) {
    *s = ds_arena_strndup(j->a, (const char *)body, rawlen);
    *len = rawlen;
    return 0;
  }
  unsigned char *o = ds_arena_alloc(j->a, rawlen + 1), *w = o;
  const unsigned char *q = body;
  while (q < p) {
    const unsigned char *run = q;
    while (q < p && *q != '\\') q++;
    if (q > run) {
      memcpy(w, run, (size_t)(q - run));
      w += q - run;
    }
    if (q >= p) break;
    unsigned char e = q[1];
    switch (e) {
    case 'b': *w++ = '\b'; q += 2; break;
    case 'f': *w++ = '\f'; q += 2; break;
    case 'n': *w++ = '\n'; q += 2; break;
    case 'r': *w++ = '\r'; q += 2; break;
    case 't': *w++ = '\t'; q += 2; break;
    case 'u': {
      unsigned long cp = (unsigned long)hex4(q + 2);
      q += 6;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        unsigned long lo = (unsigned long)hex4(q + 2);
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        q += 6;
      }
      w += put_utf8(w, cp);
      break;
    }
    default: *w++ = e; q += 2; break; /* '"', '\\', '/' */
    }
  }
  *w = '\0';
  *s = (const char *)o;
  *len = (size_t)(w - o);
  return 0;
}

static int jp_number(jp_t *j, ds_value_t **out) {
  const unsigned char *p = j->p, *end = j->end, *st = p;
  if (p < end && *p == '-') p++;
  if (p >= end) return jp_fail_at(j, p, "invalid number");
  if (*p == '0') {
    p++;
    if (p < end && *p >= '0' && *p <= '9') return jp_fail_at(j, st, "invalid number (leading zero)");
  } else if (*p >= '1' && *p <= '9') {
    while (p < end && *p >= '0' && *p <= '9') p++;
  } else {
    return jp_fail_at(j, p, "invalid number");
  }
  if (p < end && *p == '.') {
    p++;
    if (p >= end || *p < '0' || *p > '9') return jp_fail_at(j, p, "invalid number (digit expected after '.')");
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p >= end || *p < '0' || *p > '9') return jp_fail_at(j, p, "invalid number (digit expected in exponent)");
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  j->p = p;
  *out = ds_value_number(j->a, (const char *)st, (size_t)(p - st));
  return 0;
}

static void vs_push(jp_t *j, ds_value_t *v) {
  if (j->vlen == j->vcap) {
    j->vcap = j->vcap ? j->vcap * 2 : 64;
    j->vs = ds_xrealloc(j->vs, j->vcap * sizeof *j->vs);
  }
  j->vs[j->vlen++] = v;
}

static ds_member_t *ms_push(jp_t *j) {
  if (j->mlen == j->mcap) {
    j->mcap = j->mcap ? j->mcap * 2 : 32;
    j->ms = ds_xrealloc(j->ms, j->mcap * sizeof *j->ms);
  }
  return &j->ms[j->mlen++];
}

static int jp_value(jp_t *j, ds_value_t **out);

static int jp_depth_fail(jp_t *j) {
  if (j->err && j->errlen) snprintf(j->err, j->errlen, "nesting deeper than %d", j->max_depth);
  return DS_EINVAL;
}

static int jp_array(jp_t *j, ds_value_t **out) {
  if (++j->depth > j->max_depth) return jp_depth_fail(j);
  j->p++; /* '[' */
  size_t base = j->vlen;
  jp_ws(j);
  if (j->p < j->end && *j->p == ']') {
    j->p++;
  } else {
    for (;;) {
      ds_value_t *item;
      int rc = jp_value(j, &item);
      if (rc) return rc;
      vs_push(j, item);
      jp_ws(j);
      if (j->p >= j->end) return jp_fail_at(j, j->p, "unexpected end of input, expected ',' or ']'");
      if (*j->p == ',') {
        j->p++;
        continue;
      }
      if (*j->p == ']') {
        j->p++;
        break;
      }
      return jp_fail_at(j, j->p, "expected ',' or ']'");
    }
  }
  size_t n = j->vlen - base;
  ds_value_t *arr = ds_value_array(j->a, n);
  if (n) memcpy(arr->u.arr.items, j->vs + base, n * sizeof *j->vs);
  arr->u.arr.len = n;
  j->vlen = base;
  j->depth--;
  *out = arr;
  return 0;
}

/* ---- duplicate keys ---- */

static inline int key_eq(const ds_member_t *a, const ds_member_t *b) {
  return a->klen == b->klen && memcmp(a->key, b->key, a->klen) == 0;
}

/* Orders member indexes by key, then by position (so a run of equal keys is in input
 * order); ctx is the member array. */
static int ix_cmp(const void *pa, const void *pb, void *ctx) {
  const ds_member_t *ms = ctx;
  size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
  const ds_member_t *x = &ms[a], *y = &ms[b];
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = n ? memcmp(x->key, y->key, n) : 0;
  if (c) return c;
  if (x->klen != y->klen) return x->klen < y->klen ? -1 : 1;
  return a < b ? -1 : a > b;
}

/* A key repeated in one object keeps its LAST value, once, at the position of its FIRST
 * occurrence: what JavaScript's JSON.parse builds, and what a YAML mapping (which cannot
 * repeat a key) can hold. ms[0..n) are the members in input order; returns the new count.
 * Small objects compare pairwise; larger ones sort an index (O(n log n) whatever the keys:
 * no hash an attacker could flood). Keys compare by decoded bytes ("x" == "\u0078"). */
static size_t jp_dedupe(jp_t *j, ds_member_t *ms, size_t n) {
  if (n < 2) return n;
  size_t out = 0;
  if (n <= 16) {
    for (size_t i = 0; i < n; i++) {
      size_t k = 0;
      while (k < out && !key_eq(&ms[k], &ms[i])) k++;
      if (k < out) ms[k].val = ms[i].val;
      else ms[out++] = ms[i];
    }
    return out;
  }
  if (j->ixcap < n) {
    j->ixcap = n;
    j->ix = ds_xrealloc(j->ix, n * sizeof *j->ix);
  }
  for (size_t i = 0; i < n; i++) j->ix[i] = i;
  qsort_r(j->ix, n, sizeof *j->ix, ix_cmp, ms); /* glibc / musl signature (_GNU_SOURCE) */
  int dup = 0;
  for (size_t r = 0; r < n;) {
    size_t e = r + 1;
    while (e < n && key_eq(&ms[j->ix[r]], &ms[j->ix[e]])) e++;
    if (e - r > 1) { /* ix[r] is the first occurrence, ix[e - 1] the last */
      dup = 1;
      ms[j->ix[r]].val = ms[j->ix[e - 1]].val;
      for (size_t k = r + 1; k < e; k++) ms[j->ix[k]].key = NULL; /* dropped */
    }
    r = e;
  }
  if (!dup) return n;
  for (size_t i = 0; i < n; i++)
    if (ms[i].key) ms[out++] = ms[i];
  return out;
}

static int jp_object(jp_t *j, ds_value_t **out) {
  if (++j->depth > j->max_depth) return jp_depth_fail(j);
  j->p++; /* '{' */
  size_t base = j->mlen;
  jp_ws(j);
  if (j->p < j->end && *j->p == '}') {
    j->p++;
  } else {
    for (;;) {
      jp_ws(j);
      if (j->p >= j->end) return jp_fail_at(j, j->p, "unexpected end of input, expected a key");
      if (*j->p != '"') return jp_fail_at(j, j->p, "expected a string key");
      const char *k;
      size_t klen;
      int rc = jp_string(j, &k, &klen);
      if (rc) return rc;
      jp_ws(j);
      if (j->p >= j->end) return jp_fail_at(j, j->p, "unexpected end of input, expected ':'");
      if (*j->p != ':') return jp_fail_at(j, j->p, "expected ':'");
      j->p++;
      ds_value_t *v;
      rc = jp_value(j, &v);
      if (rc) return rc;
      ds_member_t *m = ms_push(j);
      m->key = k;
      m->klen = klen;
      m->val = v;
      jp_ws(j);
      if (j->p >= j->end) return jp_fail_at(j, j->p, "unexpected end of input, expected ',' or '}'");
      if (*j->p == ',') {
        j->p++;
        continue;
      }
      if (*j->p == '}') {
        j->p++;
        break;
      }
      return jp_fail_at(j, j->p, "expected ',' or '}'");
    }
  }
  size_t n = j->mlen - base;
  if (n > 1) n = jp_dedupe(j, j->ms + base, n); /* (j->ms is NULL while no object had a member) */
  ds_value_t *obj = ds_value_object(j->a, n);
  if (n) memcpy(obj->u.obj.items, j->ms + base, n * sizeof *j->ms);
  obj->u.obj.len = n;
  j->mlen = base;
  j->depth--;
  *out = obj;
  return 0;
}

static int jp_literal(jp_t *j, const char *word, size_t n) {
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
    return jp_fail_at(j, j->p, "unexpected character");
  j->p += n;
  return 0;
}

static int jp_value(jp_t *j, ds_value_t **out) {
  jp_ws(j);
  if (j->p >= j->end) return jp_fail_at(j, j->p, "unexpected end of input, expected a value");
  int rc;
  switch (*j->p) {
  case '{':
    return jp_object(j, out);
  case '[':
    return jp_array(j, out);
  case '"': {
    const char *s;
    size_t len;
    if ((rc = jp_string(j, &s, &len))) return rc;
    ds_value_t *v = ds_arena_alloc(j->a, sizeof *v);
    memset(v, 0, sizeof *v);
    v->type = DS_V_STRING;
    v->u.str.s = s;
    v->u.str.len = len;
    *out = v;
    return 0;
  }
  case 't':
    if ((rc = jp_literal(j, "true", 4))) return rc;
    *out = ds_value_bool(j->a, true);
    return 0;
  case 'f':
    if ((rc = jp_literal(j, "false", 5))) return rc;
    *out = ds_value_bool(j->a, false);
    return 0;
  case 'n':
    if ((rc = jp_literal(j, "null", 4))) return rc;
    *out = ds_value_null(j->a);
    return 0;
  case '-': case '0': case '1': case '2': case '3': case '4':
  case '5': case '6': case '7': case '8': case '9':
    return jp_number(j, out);
  default:
    if (*j->p >= 0x80 && !utf8_seq(j->p, j->end)) return jp_fail_utf8(j, j->p);
    return jp_fail_at(j, j->p, "unexpected character");
  }
}

int ds_json_parse(ds_arena_t *a, const char *s, size_t n, int max_depth, ds_value_t **out,
                  char *err, size_t errlen) {
  jp_t j;
  memset(&j, 0, sizeof j);
  if (!s) s = ""; /* (NULL, 0): no arithmetic on a NULL pointer */
  j.start = j.p = (const unsigned char *)s;
  j.end = j.p + n;
  j.a = a;
  j.max_depth = max_depth <= 0 ? DS_JSON_DEFAULT_MAX_DEPTH : max_depth;
  if (j.max_depth > DS__JSON_DEPTH_CEILING) j.max_depth = DS__JSON_DEPTH_CEILING;
  j.err = err;
  j.errlen = errlen;
  if (err && errlen) err[0] = '\0';
  ds_value_t *v = NULL;
  int rc = jp_value(&j, &v);
  if (!rc) {
    jp_ws(&j);
    if (j.p < j.end) rc = jp_fail_at(&j, j.p, "unexpected data after the value");
  }
  free(j.vs);
  free(j.ms);
  free(j.ix);
  if (rc) return rc;
  *out = v;
  return 0;
}

/* ---------------------------------------------------------------------------------- */
/* Writer                                                                             */

/* 0 = copy as is; 1 = escape; 2 = 0xE2, which starts U+2028/U+2029 */
static const unsigned char wr_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static const char hexdig[] = "0123456789abcdef";

/* Nonzero if one of the 8 bytes in x is not copied as is into a JSON string. */
static inline uint64_t json_special8(uint64_t x) {
  return (x & DS_SWAR_HIGH) | ds_swar_has_less(x, 0x20) | ds_swar_has_byte(x, '"') |
         ds_swar_has_byte(x, '\\') | ds_swar_has_byte(x, 0x7f);
}

void ds_json_write_string(ds_buf_t *b, const char *s, size_t n) {
  if (!s) s = "";
  const unsigned char *p = (const unsigned char *)s, *end = p + n, *run = p;
  /* Worst case is 6 output bytes per input byte; reserve for the common case only. */
  ds_buf_reserve(b, n + 2);
  b->data[b->len++] = '"';
  const unsigned char *stop = p;
  while (p < end) {
    if (p >= stop) {
      /* 8 bytes at a time while none needs a look (no control, quote, backslash, DEL or
       * non-ASCII byte); a block with one goes through the byte loop below */
      if (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        if (!json_special8(x)) {
          p += 8;
          continue;
        }
      }
      stop = end - p >= 8 ? p + 8 : end;
    }
    unsigned char c = *p;
    unsigned char k = wr_class[c];
    if (!k) {
      p++;
      continue;
    }
    if (k == 2 && !(end - p >= 3 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9))) {
      p++;
      continue;
    }
    if (p > run) ds_buf_append(b, run, (size_t)(p - run));
    char e[6];
    size_t el = 2;
    e[0] = '\\';
    switch (c) {
    case '"': e[1] = '"'; break;
    case '\\': e[1] = '\\'; break;
    case '\n': e[1] = 'n'; break;
    case '\t': e[1] = 't'; break;
    case '\r': e[1] = 'r'; break;
    case '\b': e[1] = 'b'; break;
    case '\f': e[1] = 'f'; break;
    case 0xE2: /* U+2028 / U+2029 */
      memcpy(e, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
      el = 6;
      p += 2;
      break;
    default: /* other C0 controls and DEL */
      e[1] = 'u';
      e[2] = '0';
      e[3] = '0';
      e[4] = hexdig[c >> 4];
      e[5] = hexdig[c & 15];
      el = 6;
      break;
    }
    ds_buf_append(b, e, el);
    p++;
    run = p;
  }
  if (p > run) ds_buf_append(b, run, (size_t)(p - run));
  ds_buf_putc(b, '"');
}

void ds_json_write(ds_buf_t *b, const ds_value_t *v) {
  switch (v->type) {
  case DS_V_NULL:
    ds_buf_append(b, "null", 4);
    return;
  case DS_V_BOOL:
    if (v->u.b)
      ds_buf_append(b, "true", 4);
    else
      ds_buf_append(b, "false", 5);
    return;
  case DS_V_NUMBER:
    ds_buf_append(b, v->u.str.s, v->u.str.len);
    return;
  case DS_V_STRING:
    ds_json_write_string(b, v->u.str.s, v->u.str.len);
    return;
  case DS_V_BINARY:
    ds_buf_putc(b, '"');
    ds_base64_encode(b, v->u.str.s, v->u.str.len);
    ds_buf_putc(b, '"');
    return;
  case DS_V_ARRAY:
    ds_buf_putc(b, '[');
    for (size_t i = 0; i < v->u.arr.len; i++) {
      if (i) ds_buf_putc(b, ',');
      ds_json_write(b, v->u.arr.items[i]);
    }
    ds_buf_putc(b, ']');
    return;
  case DS_V_OBJECT:
    ds_buf_putc(b, '{');
    for (size_t i = 0; i < v->u.obj.len; i++) {
      const ds_member_t *m = &v->u.obj.items[i];
      if (i) ds_buf_putc(b, ',');
      ds_json_write_string(b, m->key, m->klen);
      ds_buf_putc(b, ':');
      ds_json_write(b, m->val);
    }
    ds_buf_putc(b, '}');
    return;
  }
}

/* ---------------------------------------------------------------------------------- */
/* Base64                                                                             */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void ds_base64_encode(ds_buf_t *b, const void *p, size_t n) {
  const unsigned char *s = p;
  ds_buf_reserve(b, (n + 2) / 3 * 4);
  char *o = b->data + b->len;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
    *o++ = b64chars[v >> 18];
    *o++ = b64chars[(v >> 12) & 63];
    *o++ = b64chars[(v >> 6) & 63];
    *o++ = b64chars[v & 63];
  }
  if (n - i == 1) {
    unsigned v = (unsigned)s[i] << 16;
    *o++ = b64chars[v >> 18];
    *o++ = b64chars[(v >> 12) & 63];
    *o++ = '=';
    *o++ = '=';
  } else if (n - i == 2) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
    *o++ = b64chars[v >> 18];
    *o++ = b64chars[(v >> 12) & 63];
    *o++ = b64chars[(v >> 6) & 63];
    *o++ = '=';
  }
  b->len = (size_t)(o - b->data);
}

/* value + 1 of each base64 digit; 0 = not a digit */
static const unsigned char b64dec[256] = {
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8,
    ['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15,
    ['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22,
    ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29,
    ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36,
    ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42, ['q'] = 43,
    ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49, ['x'] = 50,
    ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57,
    ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64,
};

int ds_base64_decode(ds_buf_t *out, const char *s, size_t n) {
  if (!s) s = "";
  size_t start = out->len;
  ds_buf_reserve(out, n / 4 * 3 + 3);
  unsigned acc = 0;
  int bits = 0, pad = 0;
  size_t digits = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      pad++;
      continue;
    }
    int d = b64dec[c] - 1;
    if (d < 0 || pad) goto bad; /* unknown character, or data after padding */
    acc = (acc << 6) | (unsigned)d;
    bits += 6;
    digits++;
    if (bits >= 8) {
      bits -= 8;
      out->data[out->len++] = (char)((acc >> bits) & 0xFF);
    }
  }
  /* A lone final digit carries no byte; padding, when present, must complete the quad. */
  if (digits % 4 == 1 || (pad && ((digits + (size_t)pad) % 4 != 0 || pad > 2))) goto bad;
  return 0;
bad:
  out->len = start;
  return DS_EINVAL;
}
