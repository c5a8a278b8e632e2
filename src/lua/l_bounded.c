/* l_bounded.c - the standard library functions of the state that could outrun a budget,
 * replaced by bounded ones (installed by ds_vm_new for every state, the host's and
 * config.lua's alike).
 *
 * Provides:
 *   * pcall and xpcall that let a kill through: when the current budget was killed (see
 *     vm.h) the error is raised again instead of being returned as false, msg - so no
 *     pcall, however nested, keeps runaway code alive (the hook raises on every line
 *     too; this makes it immediate, including for LUA_ERRMEM which no hook sees);
 *   * coroutine.resume and coroutine.wrap that tell the vm which thread runs (so a kill
 *     from the allocator re-arms it) and pass a kill on; coroutine.resume and
 *     coroutine.close refuse a thread the host owns (a task's coroutine: resuming it from
 *     Lua would resume a task behind the scheduler's back);
 *   * the C loops that run no instruction and allocate little, charged to the budget
 *     before they run: table.sort (n log n), table.move, table.insert and table.remove
 *     (the elements they shift), table.concat and table.unpack (the elements they visit),
 *     string.rep (its copies; `string.rep("", 2^62)` used to loop without allocating),
 *     utf8.len and utf8.offset (the bytes they scan).
 * Patterns (string.find/match/gmatch/gsub) are l_pattern.c's.
 * Must not: change what these functions return for code that stays within its budget.
 */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "lua/vm.h"

/* A thread whose extra space holds a pointer is the host's (sched.c keeps its task
 * there); threads made by Lua start with NULL (vm.c clears the main thread's copy). */
static int host_owned(lua_State *co) { return *(void **)lua_getextraspace(co) != NULL; }

/* ---- pcall / xpcall ---- */

/* Continuation and end of both: extra = how many slots below the results to keep out. */
static int finish_pcall(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (ds_vm_killed(L)) { /* the kill is not this pcall's to catch */
      ds_vm_push_kill(L);
      return lua_error(L);
    }
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

static int l_pcall(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1); /* [f args... true] */
  lua_insert(L, 1);      /* [true f args...] */
  int st = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
  return finish_pcall(L, st, 0);
}

int ds__xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1); /* [f h args... true] */
  lua_pushvalue(L, 1);   /* [f h args... true f] */
  lua_rotate(L, 3, 2);   /* [f h true f args...] */
  int st = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
  return finish_pcall(L, st, 2);
}

/* ---- coroutines ---- */

/* Threads that died of a kill thrown from the hook (vm.c): Lua left their hooks off
 * (it restores them only when a protected call catches the error), so their pending
 * __close handlers must never run - they would run unbounded. Weak keys: the set does
 * not keep them alive. */
static char KILLED_KEY;

static void mark_killed(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &KILLED_KEY); /* [.. set] */
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int is_marked(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &KILLED_KEY);
  lua_pushvalue(L, idx);
  int marked = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return marked;
}

/* Calls the function at index `base` with the values above it as arguments, with `co`
 * recorded as the running thread meanwhile; re-raises its error. Returns the number of
 * results (which start at base). */
static int call_running(lua_State *L, lua_State *co, int base) {
  ds_vm_t *vm = ds_vm_of(L);
  lua_State *prev = ds_vm_set_running(vm, co);
  int st = lua_pcall(L, lua_gettop(L) - base, LUA_MULTRET, 0);
  ds_vm_set_running(vm, prev);
  if (st != LUA_OK) {
    if (ds_vm_killed(L)) ds_vm_push_kill(L);
    return lua_error(L);
  }
  return lua_gettop(L) - base + 1;
}

/* After the library's resume returned false: when the budget was killed, the thread at
 * index `thread` died of it, and the kill goes on up. */
static void pass_kill(lua_State *L, int thread) {
  if (!ds_vm_killed(L)) return;
  mark_killed(L, thread);
  ds_vm_push_kill(L);
  lua_error(L);
}

/* coroutine.resume(co, ...): upvalue 1 is the library's own. */
static int l_co_resume(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  lua_State *co = lua_tothread(L, 1);
  if (host_owned(co)) return luaL_error(L, "cannot resume a task's coroutine (the scheduler resumes it)");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_rotate(L, 2, 2); /* [co resume co args...] */
  int n = call_running(L, co, 2); /* [co ok results...] */
  if (!lua_toboolean(L, 2)) pass_kill(L, 1);
  return n;
}

/* The function coroutine.wrap returns: upvalue 1 its thread, 2 the library's resume.
 * Like the library's own: results on success; on an error, the thread's to-be-closed
 * variables are closed and the error raised here (with this call's position). */
static int l_co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_rotate(L, 1, 2); /* [resume co args...] */
  int n = call_running(L, co, 1); /* [ok results...] */
  if (lua_toboolean(L, 1)) return n - 1;
  lua_settop(L, 2); /* [false err] */
  lua_pushvalue(L, lua_upvalueindex(1));
  pass_kill(L, -1);
  lua_pop(L, 1);
  int st = lua_status(co);
  if (st != LUA_OK && st != LUA_YIELD) { /* it died of that error: close it */
    st = lua_resetthread(co);
    lua_xmove(co, L, 1);
  }
  if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

/* coroutine.wrap(f): upvalue 1 is the library's create, 2 its resume. */
static int l_co_wrap(lua_State *L) {
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 1, 1);                     /* [co] */
  lua_pushvalue(L, lua_upvalueindex(2)); /* [co resume] */
  lua_pushcclosure(L, l_co_wrapped, 2);
  return 1;
}

/* coroutine.close(co): upvalue 1 is the library's own. */
static int l_co_close(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  if (host_owned(lua_tothread(L, 1))) return luaL_error(L, "cannot close a task's coroutine (cancel the task)");
  if (is_marked(L, 1)) { /* killed: nothing more of it runs */
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* ---- charged C loops ---- */

/* Elements from i to j (inclusive), 0 when empty; no overflow for any pair. */
static lua_Unsigned span(lua_Integer i, lua_Integer j) {
  if (j < i) return 0;
  return (lua_Unsigned)j - (lua_Unsigned)i + 1u;
}

static lua_Integer opt_int(lua_State *L, int idx, lua_Integer dflt) {
  int isnum = 0;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  return isnum ? v : dflt;
}

/* The length of a plain table at idx (no metamethod: a proxy's elements are reached
 * through Lua metamethods, which count instructions themselves); -1 for anything else. */
static lua_Integer plain_len(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, idx) : -1;
}

/* Charges the cost of a call, then calls the library's own function (upvalue 1). */
static int charged_call(lua_State *L, lua_Unsigned cost) {
  if (cost) ds_vm_charge(L, cost > (lua_Unsigned)INT64_MAX ? (uint64_t)INT64_MAX : (uint64_t)cost);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int l_sort(lua_State *L) {
  lua_Integer n = plain_len(L, 1);
  lua_Unsigned cost = 0;
  if (n > 1) {
    unsigned bits = 0;
    for (lua_Unsigned x = (lua_Unsigned)n; x; x >>= 1) bits++;
    cost = (lua_Unsigned)n * (bits + 1);
  }
  return charged_call(L, cost);
}

static int l_move(lua_State *L) {
  return charged_call(L, span(opt_int(L, 2, 1), opt_int(L, 3, 0)));
}

static int l_insert(lua_State *L) {
  lua_Integer n = plain_len(L, 1);
  lua_Unsigned cost = 1;
  if (n >= 0 && lua_gettop(L) >= 3) cost += span(opt_int(L, 2, n + 1), n);
  return charged_call(L, cost);
}

static int l_remove(lua_State *L) {
  lua_Integer n = plain_len(L, 1);
  lua_Unsigned cost = 1;
  if (n >= 0) cost += span(opt_int(L, 2, n), n);
  return charged_call(L, cost);
}

static int l_concat(lua_State *L) {
  lua_Integer n = plain_len(L, 1);
  return charged_call(L, span(opt_int(L, 3, 1), opt_int(L, 4, n < 0 ? 0 : n)));
}

static int l_unpack(lua_State *L) {
  lua_Integer n = plain_len(L, 1);
  return charged_call(L, span(opt_int(L, 2, 1), opt_int(L, 3, n < 0 ? 0 : n)));
}

static int l_rep(lua_State *L) {
  size_t l, lsep = 0;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0 || l + lsep == 0) { /* nothing to copy, however many times */
    lua_pushliteral(L, "");
    return 1;
  }
  return charged_call(L, (lua_Unsigned)n);
}

static int l_scan_bytes(lua_State *L) {
  size_t l = 0;
  if (lua_type(L, 1) == LUA_TSTRING) lua_tolstring(L, 1, &l);
  return charged_call(L, l / DS_VM_BYTES_PER_UNIT);
}

/* Replaces lib[name] (lib at the top) with fn, given the original as upvalue 1. */
static void wrap(lua_State *L, const char *name, lua_CFunction fn) {
  lua_getfield(L, -1, name); /* [lib orig] */
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

void ds__bounded_open(lua_State *L) {
  lua_pushcfunction(L, l_pcall);
  lua_setglobal(L, "pcall");
  lua_pushcfunction(L, ds__xpcall);
  lua_setglobal(L, "xpcall");
  lua_newtable(L); /* the set of threads killed from the hook, weak keys */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &KILLED_KEY);
  if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
    lua_getfield(L, -1, "create");
    lua_getfield(L, -2, "resume");
    lua_pushcclosure(L, l_co_wrap, 2);
    lua_setfield(L, -2, "wrap");
    wrap(L, "resume", l_co_resume);
    wrap(L, "close", l_co_close);
  }
  lua_pop(L, 1);
  if (lua_getglobal(L, "table") == LUA_TTABLE) {
    wrap(L, "sort", l_sort);
    wrap(L, "move", l_move);
    wrap(L, "insert", l_insert);
    wrap(L, "remove", l_remove);
    wrap(L, "concat", l_concat);
    wrap(L, "unpack", l_unpack);
  }
  lua_pop(L, 1);
  if (lua_getglobal(L, "string") == LUA_TTABLE) wrap(L, "rep", l_rep);
  lua_pop(L, 1);
  if (lua_getglobal(L, "utf8") == LUA_TTABLE) {
    wrap(L, "len", l_scan_bytes);
    wrap(L, "offset", l_scan_bytes);
  }
  lua_pop(L, 1);
}
