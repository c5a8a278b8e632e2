/* l_marks.c - ds.marks: small named sets of key -> value marks that survive a restart,
 * for the Lua layer's own bookkeeping (the agent keeps "a request is open on this path"
 * there, so a restart finds its orphans without reading every stream).
 *
 *   ds.marks.set(set, key, value) -> true | nil, msg, code    (replaces an existing mark)
 *   ds.marks.remove(set, key)     -> true                     (absent is fine)
 *   ds.marks.list(set)            -> { {key = k, value = v}, ... }  (in no particular order)
 * set is a name of letters, digits, '-' and '_'; key and value are strings (key at most
 * 4 KiB, value at most 64 KiB). Synchronous; allowed in the run phase, outside tasks too
 * (shutdown handlers).
 *
 * With a state directory (the YAML store: <data_dir>/agents), each mark is a file
 * <dir>/<set>/<sha256(key) in hex> holding key, NUL, value, replaced atomically (temp file
 * + rename) and removed with unlink: one small write or unlink per change, and listing a
 * set reads only the marks present. Nothing is fsynced: a mark survives a crash or kill of
 * the process (the page cache has it) but maybe not a power loss - whoever uses marks
 * must cope with a missing one (the agent then closes its orphan lazily, on the path's
 * next event). Without a directory (the memory store) the sets live in memory, like the
 * streams.
 * Must not: be used for anything large or frequent (one file per mark), or block on fsync.
 */
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "lua/lhost.h"

#define MAX_KEY 4096
#define MAX_VALUE 65536

static char MEM_KEY; /* registry: set name -> {key = value} when there is no directory */

static const char *check_set(lua_State *L, int idx) {
  size_t n;
  const char *s = luaL_checklstring(L, idx, &n);
  if (n == 0 || n > 64) luaL_argerror(L, idx, "a set name is 1 to 64 characters");
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
      luaL_argerror(L, idx, "a set name is letters, digits, '-' and '_'");
  }
  return s;
}

static ds_lua_host_t *check_phase(lua_State *L, const char *what) {
  ds_lua_host_t *h = ds__host_of(L);
  if (h->phase != DS_PHASE_RUN) luaL_error(L, "%s is not allowed in the load phase", what);
  return h;
}

/* <dir>/<set>/<hex sha256 of key> into b */
static void mark_path(ds_buf_t *b, const char *dir, const char *set, const char *key, size_t kl) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdl = 0;
  EVP_Digest(key, kl, md, &mdl, EVP_sha256(), NULL);
  ds_buf_printf(b, "%s/%s/", dir, set);
  for (unsigned i = 0; i < mdl; i++) ds_buf_printf(b, "%02x", md[i]);
}

/* The in-memory table of a set: pushed (created when asked). */
static int push_mem_set(lua_State *L, const char *set, int create) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &MEM_KEY); /* [sets] */
  if (lua_getfield(L, -1, set) == LUA_TTABLE || !create) { /* [sets set|nil] */
    lua_remove(L, -2);
    return lua_istable(L, -1);
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, set);
  lua_remove(L, -2);
  return 1;
}

static int fail(lua_State *L, int rc, const char *what) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, ds_strerror(rc));
  lua_pushstring(L, ds_err_name(rc));
  return 3;
}

static int l_set(lua_State *L) {
  ds_lua_host_t *h = check_phase(L, "ds.marks.set");
  const char *set = check_set(L, 1);
  size_t kl, vl;
  const char *key = luaL_checklstring(L, 2, &kl);
  const char *val = luaL_checklstring(L, 3, &vl);
  luaL_argcheck(L, kl > 0 && kl <= MAX_KEY, 2, "a key is 1 to 4096 bytes");
  luaL_argcheck(L, vl <= MAX_VALUE, 3, "a value is at most 64 KiB");
  if (!h->marks_dir) {
    push_mem_set(L, set, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    lua_pushboolean(L, 1);
    return 1;
  }
  ds_buf_t path = DS_BUF_INIT, data = DS_BUF_INIT;
  ds_buf_printf(&path, "%s/%s", h->marks_dir, set);
  int rc = ds_file_mkdir_p(ds_buf_cstr(&path), 0755);
  if (rc == 0) {
    ds_buf_reset(&path);
    mark_path(&path, h->marks_dir, set, key, kl);
    ds_buf_append(&data, key, kl);
    ds_buf_putc(&data, '\0');
    ds_buf_append(&data, val, vl);
    rc = ds_file_write_atomic_opt(ds_buf_cstr(&path), data.data, data.len, 0644, false);
  }
  ds_buf_free(&path);
  ds_buf_free(&data);
  if (rc < 0) return fail(L, rc, "ds.marks.set");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_remove(lua_State *L) {
  ds_lua_host_t *h = check_phase(L, "ds.marks.remove");
  const char *set = check_set(L, 1);
  size_t kl;
  const char *key = luaL_checklstring(L, 2, &kl);
  if (!h->marks_dir) {
    if (push_mem_set(L, set, 0)) {
      lua_pushvalue(L, 2);
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  ds_buf_t path = DS_BUF_INIT;
  mark_path(&path, h->marks_dir, set, key, kl);
  int rc = ds_file_remove_opt(ds_buf_cstr(&path), false);
  ds_buf_free(&path);
  if (rc < 0 && rc != DS_ENOTFOUND) return fail(L, rc, "ds.marks.remove");
  lua_pushboolean(L, 1);
  return 1;
}

static void push_mark(lua_State *L, int list, lua_Integer *n, const char *k, size_t kl, const char *v, size_t vl) {
  lua_createtable(L, 0, 2);
  lua_pushlstring(L, k, kl);
  lua_setfield(L, -2, "key");
  lua_pushlstring(L, v, vl);
  lua_setfield(L, -2, "value");
  lua_rawseti(L, list, ++*n);
}

/* Protected: [list all(lightuserdata)] pushes the marks read from files (key NUL value,
 * each record preceded by its length as a size_t) into list. */
static int push_read_marks(lua_State *L) {
  ds_buf_t *all = lua_touserdata(L, 2);
  lua_Integer n = 0;
  for (size_t at = 0; at + sizeof(size_t) <= all->len;) {
    size_t len;
    memcpy(&len, all->data + at, sizeof len);
    at += sizeof len;
    const char *rec = all->data + at;
    const char *nul = memchr(rec, '\0', len);
    size_t kl = (size_t)(nul - rec);
    push_mark(L, 1, &n, rec, kl, nul + 1, len - kl - 1);
    at += len;
  }
  return 0;
}

static int l_list(lua_State *L) {
  ds_lua_host_t *h = check_phase(L, "ds.marks.list");
  const char *set = check_set(L, 1);
  lua_settop(L, 1);
  lua_newtable(L); /* [set list] */
  if (!h->marks_dir) {
    lua_Integer n = 0;
    if (push_mem_set(L, set, 0)) { /* [set list mem] */
      lua_pushnil(L);
      while (lua_next(L, 3)) {
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl);
        const char *v = lua_tolstring(L, -1, &vl);
        push_mark(L, 2, &n, k, kl, v, vl);
        lua_pop(L, 1);
      }
    }
    lua_settop(L, 2);
    return 1;
  }
  /* read everything first (no Lua call may raise while a directory or buffer is held),
   * then push it in a protected call */
  ds_buf_t dirp = DS_BUF_INIT, file = DS_BUF_INIT, data = DS_BUF_INIT, all = DS_BUF_INIT;
  ds_buf_printf(&dirp, "%s/%s", h->marks_dir, set);
  DIR *d = opendir(ds_buf_cstr(&dirp));
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (strlen(e->d_name) != 64) continue; /* "." "..", a temp file of an interrupted set */
      ds_buf_reset(&file);
      ds_buf_printf(&file, "%s/%s", ds_buf_cstr(&dirp), e->d_name);
      ds_buf_reset(&data);
      if (ds_file_read_all(ds_buf_cstr(&file), &data) != 0) continue;
      const char *nul = data.len ? memchr(data.data, '\0', data.len) : NULL;
      if (!nul || nul == data.data) {
        ds_warn("lua", "ds.marks: ignoring damaged mark %s", ds_buf_cstr(&file));
        continue;
      }
      ds_buf_append(&all, &data.len, sizeof data.len);
      ds_buf_append(&all, data.data, data.len);
    }
    closedir(d);
  }
  ds_buf_free(&dirp);
  ds_buf_free(&file);
  ds_buf_free(&data);
  lua_pushcfunction(L, push_read_marks);
  lua_pushvalue(L, 2);
  lua_pushlightuserdata(L, &all);
  int rc = lua_pcall(L, 2, 0, 0);
  ds_buf_free(&all);
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

static const luaL_Reg funcs[] = {{"set", l_set}, {"remove", l_remove}, {"list", l_list}, {NULL, NULL}};

void ds__marks_open(lua_State *L) {
  /* [ds] */
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &MEM_KEY);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "marks");
}
