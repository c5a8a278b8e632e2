/* l_pattern.c - string.find, string.match, string.gmatch and string.gsub with Lua 5.4's
 * pattern language, matched by a backtracking matcher that pays for its steps.
 *
 * Why a matcher of our own: Lua's lstrlib matcher runs in C, where the count hook never
 * fires, and backtracks exponentially on patterns such as ("a*"):rep(20) .. "b" against
 * ("a"):rep(30) (hours of CPU for one call; its only limit is a recursion depth).
 * Limiting subject or pattern sizes does not help (that example is 31 bytes against 41),
 * so this one counts steps - every item tried, every repetition expanded or given back,
 * every start position - and charges them to the running budget (ds_vm_charge) every
 * STEP_BATCH steps: a pathological match is killed like any runaway loop, while an
 * ordinary one costs a few units per subject byte. Written for this project from the
 * language's definition (reference manual §6.4.1); same results and error messages
 * as the library's for everything the manual defines.
 * Must not: allocate while matching (a kill unwinds with longjmp; captures live in the
 * match state on the C stack).
 */
#include <ctype.h>
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "lua/vm.h"

#define ESC '%'
#define MAX_CAPTURES 32
#define MAX_DEPTH 200    /* nested matches (captures, '?', expansions) before "too complex" */
#define STEP_BATCH 4096  /* steps charged together */
#define STEP_UNITS 3     /* work units per step (a step costs about three VM instructions) */
#define CAP_OPEN (-1)    /* capture started, not closed yet */
#define CAP_POSITION (-2) /* "()": captures a position */
#define SPECIALS "^$*+?.([%-"

typedef struct {
  lua_State *L;
  const char *src, *src_end; /* the subject */
  const char *pat_end;
  int depth_left;
  int ncap;
  unsigned steps; /* not yet charged */
  struct {
    const char *at;
    ptrdiff_t len; /* or CAP_OPEN, CAP_POSITION */
  } cap[MAX_CAPTURES];
} matcher_t;

static void step(matcher_t *m) {
  if (++m->steps >= STEP_BATCH) {
    m->steps = 0;
    ds_vm_charge(m->L, (uint64_t)STEP_BATCH * STEP_UNITS);
  }
}

static void settle(matcher_t *m) {
  if (m->steps) ds_vm_charge(m->L, (uint64_t)m->steps * STEP_UNITS);
  m->steps = 0;
}

static void matcher_init(matcher_t *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
  m->L = L;
  m->src = s;
  m->src_end = s + ls;
  m->pat_end = p + lp;
  m->steps = 0;
}

static void matcher_reset(matcher_t *m) {
  m->ncap = 0;
  m->depth_left = MAX_DEPTH;
}

/* ---- single items ---- */

/* Does byte c belong to class letter cl (%a, %d, ...; an upper-case letter is the
 * complement; any other character stands for itself)? */
static int in_class(int c, int cl) {
  int yes;
  switch (tolower(cl)) {
    case 'a': yes = isalpha(c); break;
    case 'c': yes = iscntrl(c); break;
    case 'd': yes = isdigit(c); break;
    case 'g': yes = isgraph(c); break;
    case 'l': yes = islower(c); break;
    case 'p': yes = ispunct(c); break;
    case 's': yes = isspace(c); break;
    case 'u': yes = isupper(c); break;
    case 'w': yes = isalnum(c); break;
    case 'x': yes = isxdigit(c); break;
    default: return cl == c;
  }
  if (isupper(cl)) yes = !yes;
  return yes != 0;
}

/* Does byte c belong to the set [..] that starts at open ('[') and ends at close (']')? */
static int in_set(int c, const char *open, const char *close) {
  const char *q = open + 1;
  int negate = *q == '^';
  if (negate) q++;
  for (; q < close; q++) {
    if (*q == ESC && q + 1 < close) {
      q++;
      if (in_class(c, (unsigned char)*q)) return !negate;
    } else if (q + 2 < close && q[1] == '-') {
      if ((unsigned char)q[0] <= c && c <= (unsigned char)q[2]) return !negate;
      q += 2;
    } else if ((unsigned char)*q == c) {
      return !negate;
    }
  }
  return negate;
}

/* The end of the single item starting at p (one past it). */
static const char *item_end(matcher_t *m, const char *p) {
  if (*p == ESC) {
    if (p + 1 >= m->pat_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
    return p + 2;
  }
  if (*p == '[') {
    const char *q = p + 1;
    if (q < m->pat_end && *q == '^') q++;
    /* the first character of a set is itself even when it is ']' */
    do {
      if (q >= m->pat_end) luaL_error(m->L, "malformed pattern (missing ']')");
      if (*q == ESC && q + 1 < m->pat_end) q++;
      q++;
    } while (q >= m->pat_end || *q != ']');
    return q + 1;
  }
  return p + 1;
}

/* Does the subject byte at s match the single item p..ep? */
static int item_matches(const matcher_t *m, const char *s, const char *p, const char *ep) {
  if (s >= m->src_end) return 0;
  int c = (unsigned char)*s;
  switch (*p) {
    case '.': return 1;
    case ESC: return in_class(c, (unsigned char)p[1]);
    case '[': return in_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
  }
}

/* ---- the matcher ---- */

static const char *match_here(matcher_t *m, const char *s, const char *p);

/* Greedy repetition (* and +): the longest run first, giving back one at a time. */
static const char *repeat_greedy(matcher_t *m, const char *s, const char *p, const char *ep) {
  size_t n = 0;
  while (item_matches(m, s + n, p, ep)) {
    step(m);
    n++;
  }
  for (;;) {
    step(m);
    const char *r = match_here(m, s + n, ep + 1);
    if (r) return r;
    if (n == 0) return NULL;
    n--;
  }
}

/* Lazy repetition (-): the shortest run first, taking one more at a time. */
static const char *repeat_lazy(matcher_t *m, const char *s, const char *p, const char *ep) {
  for (;;) {
    step(m);
    const char *r = match_here(m, s, ep + 1);
    if (r) return r;
    if (!item_matches(m, s, p, ep)) return NULL;
    s++;
  }
}

static const char *open_capture(matcher_t *m, const char *s, const char *p, ptrdiff_t kind) {
  if (m->ncap >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
  m->cap[m->ncap].at = s;
  m->cap[m->ncap].len = kind;
  m->ncap++;
  const char *r = match_here(m, s, p);
  if (!r) m->ncap--; /* undo: the capture was not part of a match */
  return r;
}

static const char *close_capture(matcher_t *m, const char *s, const char *p) {
  int i = m->ncap - 1;
  while (i >= 0 && m->cap[i].len != CAP_OPEN) i--;
  if (i < 0) luaL_error(m->L, "invalid pattern capture");
  m->cap[i].len = s - m->cap[i].at;
  const char *r = match_here(m, s, p);
  if (!r) m->cap[i].len = CAP_OPEN;
  return r;
}

/* %bxy at s: a balanced run from x to its matching y. p points at x. */
static const char *balanced(matcher_t *m, const char *s, const char *p) {
  if (p + 1 >= m->pat_end) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= m->src_end || *s != *p) return NULL;
  char open = p[0], close = p[1];
  int depth = 1;
  for (const char *q = s + 1; q < m->src_end; q++) {
    step(m);
    if (*q == close) {
      if (--depth == 0) return q + 1;
    } else if (*q == open) {
      depth++;
    }
  }
  return NULL;
}

/* %1..%9 at s: the same text as that (closed) capture. */
static const char *back_reference(matcher_t *m, const char *s, int digit) {
  int i = digit - '1';
  if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN) luaL_error(m->L, "invalid capture index %%%d", i + 1);
  size_t len = (size_t)m->cap[i].len;
  if ((size_t)(m->src_end - s) >= len && memcmp(m->cap[i].at, s, len) == 0) {
    m->steps += (unsigned)(len / DS_VM_BYTES_PER_UNIT);
    return s + len;
  }
  return NULL;
}

/* Matches pattern p (to its end) at subject position s; returns the end of the match or
 * NULL. Recurses for captures and repetitions, iterates along single items. */
static const char *match_here(matcher_t *m, const char *s, const char *p) {
  if (m->depth_left-- == 0) luaL_error(m->L, "pattern too complex");
  for (;;) {
    step(m);
    if (p >= m->pat_end) break;
    if (*p == '(') {
      s = (p + 1 < m->pat_end && p[1] == ')') ? open_capture(m, s, p + 2, CAP_POSITION)
                                               : open_capture(m, s, p + 1, CAP_OPEN);
      break;
    }
    if (*p == ')') {
      s = close_capture(m, s, p + 1);
      break;
    }
    if (*p == '$' && p + 1 == m->pat_end) { /* anchored end; elsewhere '$' is itself */
      if (s != m->src_end) s = NULL;
      break;
    }
    if (*p == ESC && p + 1 < m->pat_end) {
      char k = p[1];
      if (k == 'b') {
        s = balanced(m, s, p + 2);
        if (!s) break;
        p += 4;
        continue;
      }
      if (k == 'f') {
        p += 2;
        if (p >= m->pat_end || *p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
        const char *ep = item_end(m, p);
        int before = s == m->src ? 0 : (unsigned char)s[-1];
        int here = s < m->src_end ? (unsigned char)*s : 0;
        if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) {
          s = NULL;
          break;
        }
        p = ep;
        continue;
      }
      if (k >= '0' && k <= '9') {
        s = back_reference(m, s, k);
        if (!s) break;
        p += 2;
        continue;
      }
    }
    /* a single item, maybe followed by a repetition mark */
    const char *ep = item_end(m, p);
    int hit = item_matches(m, s, p, ep);
    char mark = ep < m->pat_end ? *ep : '\0';
    if (mark == '?') {
      const char *r;
      if (hit && (r = match_here(m, s + 1, ep + 1)) != NULL) {
        s = r;
        break;
      }
      p = ep + 1;
      continue;
    }
    if (mark == '+') {
      s = hit ? repeat_greedy(m, s + 1, p, ep) : NULL;
      break;
    }
    if (mark == '*') {
      s = repeat_greedy(m, s, p, ep);
      break;
    }
    if (mark == '-') {
      s = repeat_lazy(m, s, p, ep);
      break;
    }
    if (!hit) {
      s = NULL;
      break;
    }
    s++;
    p = ep;
  }
  m->depth_left++;
  return s;
}

/* ---- captures to Lua ---- */

/* Pushes capture i (the whole match s..e when there is none and i == 0). */
static void push_capture(matcher_t *m, int i, const char *s, const char *e) {
  if (i >= m->ncap) {
    if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
    lua_pushlstring(m->L, s, (size_t)(e - s));
    return;
  }
  ptrdiff_t len = m->cap[i].len;
  if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
  if (len == CAP_POSITION) lua_pushinteger(m->L, (lua_Integer)(m->cap[i].at - m->src) + 1);
  else lua_pushlstring(m->L, m->cap[i].at, (size_t)len);
}

/* Pushes every capture (or the whole match, when whole is set and there is none). */
static int push_captures(matcher_t *m, const char *s, const char *e, int whole) {
  int n = (m->ncap == 0 && whole) ? 1 : m->ncap;
  luaL_checkstack(m->L, n, "too many captures");
  for (int i = 0; i < n; i++) push_capture(m, i, s, e);
  return n;
}

/* ---- find / match ---- */

/* Lua's rule for a start position: negative counts from the end, too small is 1. */
static size_t start_index(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos;
  if (pos == 0) return 1;
  if (pos < -(lua_Integer)len) return 1;
  return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp) {
  size_t i = 0;
  while (i < lp) { /* strpbrk stops at an embedded NUL: look piece by piece */
    if (strpbrk(p + i, SPECIALS)) return 1;
    i += strlen(p + i) + 1;
  }
  return 0;
}

static int find_or_match(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    ds_vm_charge(L, (ls - init) / DS_VM_BYTES_PER_UNIT + 1);
    const char *hit = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
    if (!hit) {
      luaL_pushfail(L);
      return 1;
    }
    lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
    lua_pushinteger(L, (lua_Integer)(hit - s) + (lua_Integer)lp);
    return 2;
  }
  int anchored = lp > 0 && *p == '^';
  if (anchored) {
    p++;
    lp--;
  }
  matcher_t m;
  matcher_init(&m, L, s, ls, p, lp);
  const char *at = s + init;
  for (;;) {
    matcher_reset(&m);
    const char *e = match_here(&m, at, p);
    if (e) {
      settle(&m);
      if (!find) return push_captures(&m, at, e, 1);
      lua_pushinteger(L, (lua_Integer)(at - s) + 1);
      lua_pushinteger(L, (lua_Integer)(e - s));
      return push_captures(&m, NULL, NULL, 0) + 2;
    }
    if (anchored || at >= m.src_end) break;
    at++;
  }
  settle(&m);
  luaL_pushfail(L);
  return 1;
}

static int l_find(lua_State *L) { return find_or_match(L, 1); }
static int l_match(lua_State *L) { return find_or_match(L, 0); }

/* ---- gmatch ---- */

typedef struct {
  size_t next;      /* where the next search starts */
  ptrdiff_t last;   /* end of the last match (an empty match there is skipped), -1: none */
} gmatch_t;

/* The iterator: upvalues subject, pattern, state. */
static int gmatch_next(lua_State *L) {
  size_t ls, lp;
  const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
  const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
  gmatch_t *g = lua_touserdata(L, lua_upvalueindex(3));
  matcher_t m;
  matcher_init(&m, L, s, ls, p, lp);
  for (size_t at = g->next; at <= ls; at++) {
    matcher_reset(&m);
    const char *e = match_here(&m, s + at, p);
    if (e && (e - s) != g->last) {
      settle(&m);
      g->next = (size_t)(e - s);
      g->last = e - s;
      return push_captures(&m, s + at, e, 1);
    }
  }
  settle(&m);
  g->next = ls + 1;
  return 0;
}

static int l_gmatch(lua_State *L) {
  size_t ls;
  luaL_checklstring(L, 1, &ls);
  luaL_checkstring(L, 2);
  size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
  lua_settop(L, 2);
  gmatch_t *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->next = init > ls ? ls + 1 : init;
  g->last = -1;
  lua_pushcclosure(L, gmatch_next, 3);
  return 1;
}

/* ---- gsub ---- */

/* Appends the replacement for the match s..e to b: the string form expands %0-%9 and %%. */
static void add_string_repl(matcher_t *m, luaL_Buffer *b, const char *s, const char *e) {
  size_t lr;
  const char *r = lua_tolstring(m->L, 3, &lr);
  const char *end = r + lr;
  for (;;) {
    const char *pct = memchr(r, ESC, (size_t)(end - r));
    if (!pct) break;
    luaL_addlstring(b, r, (size_t)(pct - r));
    pct++;
    if (pct < end && *pct == ESC) {
      luaL_addchar(b, ESC);
    } else if (pct < end && *pct == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else if (pct < end && isdigit((unsigned char)*pct)) {
      push_capture(m, *pct - '1', s, e);
      luaL_tolstring(m->L, -1, NULL); /* positions are numbers */
      lua_remove(m->L, -2);
      luaL_addvalue(b);
    } else {
      luaL_error(m->L, "invalid use of '%c' in replacement string", ESC);
    }
    r = pct + 1;
  }
  luaL_addlstring(b, r, (size_t)(end - r));
}

/* Appends the replacement for s..e; returns 0 when the match was kept as it was. */
static int add_replacement(matcher_t *m, luaL_Buffer *b, const char *s, const char *e, int kind) {
  lua_State *L = m->L;
  if (kind == LUA_TSTRING || kind == LUA_TNUMBER) {
    add_string_repl(m, b, s, e);
    return 1;
  }
  if (kind == LUA_TFUNCTION) {
    lua_pushvalue(L, 3);
    int n = push_captures(m, s, e, 1);
    lua_call(L, n, 1);
  } else { /* table */
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
  }
  if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return 0;
  }
  if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return 1;
}

static int l_gsub(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int kind = lua_type(L, 3);
  lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  luaL_argexpected(L, kind == LUA_TNUMBER || kind == LUA_TSTRING || kind == LUA_TFUNCTION || kind == LUA_TTABLE,
                   3, "string/function/table");
  int anchored = lp > 0 && *p == '^';
  if (anchored) {
    p++;
    lp--;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  matcher_t m;
  matcher_init(&m, L, s, ls, p, lp);
  const char *at = s, *last = NULL;
  lua_Integer count = 0;
  int changed = 0;
  while (count < max) {
    matcher_reset(&m);
    const char *e = match_here(&m, at, p);
    if (e && e != last) {
      count++;
      changed |= add_replacement(&m, &b, at, e, kind);
      at = last = e;
    } else if (at < m.src_end) {
      luaL_addchar(&b, *at++);
    } else {
      break;
    }
    if (anchored) break;
  }
  settle(&m);
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, at, (size_t)(m.src_end - at));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, count);
  return 2;
}

void ds__pattern_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL}};
  if (lua_getglobal(L, "string") == LUA_TTABLE) luaL_setfuncs(L, fns, 0);
  lua_pop(L, 1);
}
