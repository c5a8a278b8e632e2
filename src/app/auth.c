/* auth.c - bearer tokens with scopes per URL prefix, and the browser origins allowed to
 * call the server (the CSRF rule and CORS). */
#include "app/auth.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app/config.h"
#include "core/buf.h"

typedef struct {
  char *token;
  size_t token_len;
  int scopes;
  char **prefixes;
  size_t nprefixes;
  ds_access_t *grant; /* what requests presenting this token may do */
} token_t;

struct ds_auth_s {
  token_t *tokens;
  size_t ntokens;
  int cors_any;   /* "*" configured: every origin, "null" included */
  char **origins; /* exact origins ("https://app.example"), "scheme://host:*" (any port or
                     none) and "null"; the loopback patterns unless configured */
  size_t norigins;
};

/* Allowed when cors.allowed_origins is not set: pages served from this machine (a local UI
 * on any port). Any other site, and a sandboxed iframe or file:// page ("null"), is not. */
static const char *const DEFAULT_ORIGINS[] = {"http://localhost:*", "http://127.0.0.1:*",
                                              "http://[::1]:*"};

int ds_auth_enabled(const ds_auth_t *a) { return a && a->ntokens > 0; }

int ds_auth_ct_equal(const char *a, size_t an, const char *b, size_t bn) {
  /* Compare over the longer length so the time depends only on lengths. */
  size_t n = an > bn ? an : bn;
  unsigned char diff = (unsigned char)(an != bn);
  for (size_t i = 0; i < n; i++) {
    unsigned char x = i < an ? (unsigned char)a[i] : 0;
    unsigned char y = i < bn ? (unsigned char)b[i] : 0;
    diff |= (unsigned char)(x ^ y);
  }
  return diff == 0;
}

int ds_auth_scope_for_method(const char *method) {
  if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0)
    return DS_SCOPE_READ;
  return DS_SCOPE_APPEND;
}

int ds_auth_authenticate(const ds_auth_t *a, const char *authorization, const char *query_token,
                         const ds_access_t **grant) {
  *grant = NULL;
  if (!ds_auth_enabled(a)) return 0;
  const char *tok = NULL;
  size_t tl = 0;
  if (authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
    tok = authorization + 7;
    while (*tok == ' ') tok++;
    tl = strlen(tok);
  } else if (query_token) {
    tok = query_token;
    tl = strlen(tok);
  }
  if (!tok || tl == 0) return 401;
  const token_t *found = NULL;
  for (size_t i = 0; i < a->ntokens; i++) /* no early exit: same work for every token */
    if (ds_auth_ct_equal(tok, tl, a->tokens[i].token, a->tokens[i].token_len) && !found)
      found = &a->tokens[i];
  if (!found) return 401;
  *grant = found->grant;
  return 0;
}

int ds_auth_check(const ds_auth_t *a, const char *method, const char *path, size_t path_len,
                  const char *authorization, const char *query_token) {
  const ds_access_t *grant = NULL;
  int rc = ds_auth_authenticate(a, authorization, query_token, &grant);
  if (rc != 0) return rc;
  return ds_access_allows(grant, ds_auth_scope_for_method(method), path, path_len) ? 0 : 403;
}

/* Length of "scheme://host" at the start of s (the host a name, or an IPv6 literal in
 * brackets) followed by an optional ":port" (1-5 digits <= 65535) or, with
 * allow_wild, ":*"; 0 when s is not exactly that. *wild is set for ":*". An origin is
 * what browsers send: no path, no trailing '/', no userinfo. */
static size_t origin_shape(const char *s, int allow_wild, int *wild) {
  const char *p = s;
  *wild = 0;
  if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) return 0;
  while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
         *p == '+' || *p == '-' || *p == '.')
    p++;
  if (strncmp(p, "://", 3) != 0) return 0;
  p += 3;
  const char *host = p;
  if (*p == '[') {
    p++;
    while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') ||
           *p == ':' || *p == '.')
      p++;
    if (*p != ']' || p == host + 1) return 0;
    p++;
  } else {
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
           *p == '-' || *p == '.' || *p == '_')
      p++;
    if (p == host) return 0;
  }
  size_t hostpart = (size_t)(p - s);
  if (*p == '\0') return hostpart;
  if (*p != ':') return 0;
  p++;
  if (allow_wild && strcmp(p, "*") == 0) {
    *wild = 1;
    return hostpart;
  }
  size_t d = strspn(p, "0123456789");
  if (d == 0 || d > 5 || p[d] != '\0' || atol(p) > 65535) return 0;
  return hostpart;
}

/* One allowed-origins entry against a request's Origin: scheme and host compare
 * case-insensitively (browsers send them lowercase); "scheme://host:*" matches that host
 * with any port or none. */
static int origin_match(const char *pat, const char *origin) {
  if (strcmp(pat, "null") == 0) return strcmp(origin, "null") == 0;
  int wild = 0, owild = 0;
  size_t ph = origin_shape(pat, 1, &wild);
  if (!wild) return strcasecmp(pat, origin) == 0 && origin_shape(origin, 0, &owild) != 0;
  size_t oh = origin_shape(origin, 0, &owild);
  return oh == ph && strncasecmp(pat, origin, ph) == 0;
}

int ds_auth_origin_allowed(const ds_auth_t *a, const char *origin) {
  if (!origin) return 1;
  if (a && a->cors_any) return 1;
  if (!a) return 0;
  for (size_t i = 0; i < a->norigins; i++)
    if (origin_match(a->origins[i], origin)) return 1;
  return 0;
}

const char *ds_auth_cors_origin(const ds_auth_t *a, const char *origin) {
  if (!origin || !ds_auth_origin_allowed(a, origin)) return NULL;
  return a && a->cors_any ? "*" : origin;
}

static void set_default_origins(ds_auth_t *a) {
  size_t n = sizeof DEFAULT_ORIGINS / sizeof *DEFAULT_ORIGINS;
  a->origins = ds_xcalloc(n, sizeof *a->origins);
  for (size_t i = 0; i < n; i++) a->origins[i] = ds_xstrdup(DEFAULT_ORIGINS[i]);
  a->norigins = n;
}

static void free_origins(ds_auth_t *a) {
  for (size_t i = 0; i < a->norigins; i++) free(a->origins[i]);
  free(a->origins);
  a->origins = NULL;
  a->norigins = 0;
}

void ds_auth_free(ds_auth_t *a) {
  if (!a) return;
  for (size_t i = 0; i < a->ntokens; i++) {
    /* scrub secrets before returning the memory */
    memset(a->tokens[i].token, 0, a->tokens[i].token_len);
    free(a->tokens[i].token);
    for (size_t j = 0; j < a->tokens[i].nprefixes; j++) free(a->tokens[i].prefixes[j]);
    free(a->tokens[i].prefixes);
    ds_access_free(a->tokens[i].grant);
  }
  free(a->tokens);
  free_origins(a);
  free(a);
}

static int fail(char *err, size_t errlen, const char *path, const char *msg) {
  snprintf(err, errlen, "%s: %s", path, msg);
  return -1;
}

/* [.., list] -> array of strings */
static int string_list(lua_State *L, char ***out, size_t *n) {
  if (lua_type(L, -1) == LUA_TSTRING) {
    *out = ds_xcalloc(1, sizeof **out);
    (*out)[0] = ds_xstrdup(lua_tostring(L, -1));
    *n = 1;
    return 0;
  }
  if (!lua_istable(L, -1)) return -1;
  size_t len = lua_rawlen(L, -1);
  *out = ds_xcalloc(len ? len : 1, sizeof **out);
  *n = 0;
  for (size_t i = 1; i <= len; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i);
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      return -1;
    }
    (*out)[(*n)++] = ds_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return 0;
}

static int load_tokens(lua_State *L, ds_auth_t *a, const char *path, char *err, size_t errlen) {
  /* [.., auth] */
  lua_getfield(L, -1, "tokens");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) return fail(err, errlen, path, "auth.tokens must be a list of tables");
  size_t n = lua_rawlen(L, -1);
  a->tokens = ds_xcalloc(n ? n : 1, sizeof *a->tokens);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i); /* [.., auth, tokens, t] */
    char msg[128];
    if (!lua_istable(L, -1)) {
      snprintf(msg, sizeof msg, "auth.tokens[%zu] must be a table", i);
      return fail(err, errlen, path, msg);
    }
    token_t *t = &a->tokens[a->ntokens];
    lua_getfield(L, -1, "token");
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) < 8) {
      snprintf(msg, sizeof msg, "auth.tokens[%zu].token must be a string of at least 8 bytes", i);
      return fail(err, errlen, path, msg);
    }
    size_t tl;
    const char *tv = lua_tolstring(L, -1, &tl);
    t->token = ds_xstrndup(tv, tl);
    t->token_len = tl;
    a->ntokens++;
    lua_pop(L, 1);
    lua_getfield(L, -1, "scopes");
    char **sc = NULL;
    size_t nsc = 0;
    if (lua_isnil(L, -1)) {
      t->scopes = DS_SCOPE_READ | DS_SCOPE_APPEND;
    } else if (string_list(L, &sc, &nsc) != 0) {
      for (size_t j = 0; j < nsc; j++) free(sc[j]);
      free(sc);
      snprintf(msg, sizeof msg, "auth.tokens[%zu].scopes must be a list of \"read\"/\"append\"", i);
      return fail(err, errlen, path, msg);
    }
    int bad = 0;
    for (size_t j = 0; j < nsc; j++) {
      if (strcmp(sc[j], "read") == 0) t->scopes |= DS_SCOPE_READ;
      else if (strcmp(sc[j], "append") == 0) t->scopes |= DS_SCOPE_APPEND;
      else bad = 1;
      free(sc[j]);
    }
    free(sc);
    lua_pop(L, 1);
    if (bad) {
      snprintf(msg, sizeof msg, "auth.tokens[%zu].scopes must be a list of \"read\"/\"append\"", i);
      return fail(err, errlen, path, msg);
    }
    lua_getfield(L, -1, "prefixes");
    if (lua_isnil(L, -1)) {
      t->prefixes = ds_xcalloc(1, sizeof *t->prefixes);
      t->prefixes[0] = ds_xstrdup("/");
      t->nprefixes = 1;
    } else if (string_list(L, &t->prefixes, &t->nprefixes) != 0) {
      snprintf(msg, sizeof msg, "auth.tokens[%zu].prefixes must be a list of URL path prefixes", i);
      return fail(err, errlen, path, msg);
    }
    t->grant = ds_access_new(t->scopes, (const char *const *)t->prefixes, t->nprefixes);
    lua_pop(L, 2); /* prefixes, t */
  }
  lua_pop(L, 1); /* tokens */
  return 0;
}

ds_auth_t *ds_auth_load(const char *config_path, char *err, size_t errlen) {
  ds_auth_t *a = ds_xcalloc(1, sizeof *a);
  set_default_origins(a);
  if (!config_path) return a;
  /* bounded like every evaluation of config.lua (config.h) */
  ds_vm_t *vm = ds_config_eval(config_path, err, errlen);
  if (!vm) {
    ds_auth_free(a);
    return NULL;
  }
  lua_State *L = ds_vm_state(vm);
  int rc = 0;
  lua_getfield(L, -1, "auth");
  if (lua_istable(L, -1)) rc = load_tokens(L, a, config_path, err, errlen);
  else if (!lua_isnil(L, -1)) rc = fail(err, errlen, config_path, "auth must be a table");
  lua_settop(L, 1);
  if (rc == 0) {
    lua_getfield(L, -1, "cors");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "allowed_origins");
      if (!lua_isnil(L, -1)) {
        free_origins(a); /* a configured list replaces the loopback default */
        if (string_list(L, &a->origins, &a->norigins) != 0) {
          rc = fail(err, errlen, config_path, "cors.allowed_origins must be \"*\" or a list of origins");
        } else {
          for (size_t i = 0; i < a->norigins && rc == 0; i++) {
            const char *o = a->origins[i];
            int wild;
            if (strcmp(o, "*") == 0) {
              a->cors_any = 1;
            } else if (strcmp(o, "null") != 0 && !origin_shape(o, 1, &wild)) {
              /* a typo ("https://app.example/") would silently never match */
              char msg[200];
              snprintf(msg, sizeof msg,
                       "cors.allowed_origins[%zu] '%.60s' is not an origin (scheme://host[:port], "
                       "scheme://host:*, \"null\" or \"*\")", i + 1, o);
              rc = fail(err, errlen, config_path, msg);
            }
          }
        }
      }
    } else if (!lua_isnil(L, -1)) {
      rc = fail(err, errlen, config_path, "cors must be a table");
    }
  }
  ds_vm_free(vm);
  if (rc != 0) {
    ds_auth_free(a);
    return NULL;
  }
  return a;
}
