/* vm.c - the Lua state, its accounted allocator, the pcall gateway and counted refs.
 * See vm.h. Must not: call into Lua except through ds_vm_pcall. */
#include "lua/vm.h"

#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

struct ds_vm_s {
  lua_State *L;
  size_t used, peak, limit;
  long refs;
};

/* The allocator: counts live bytes; refuses growth past the cap (Lua then raises a
 * memory error in the code that allocated, never aborts the process). Shrinks and frees
 * always succeed. */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  ds_vm_t *vm = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    vm->used -= old;
    return NULL;
  }
  if (vm->limit && nsize > old && vm->used - old + nsize > vm->limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  vm->used = vm->used - old + nsize;
  if (vm->used > vm->peak) vm->peak = vm->used;
  return p;
}

static int open_libs(lua_State *L) {
  luaL_openlibs(L);
  return 0;
}

static int vm_panic(lua_State *L) {
  ds_error("lua", "unprotected error: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
  return 0; /* lua aborts after this; only reachable by a host bug */
}

ds_vm_t *ds_vm_new(size_t mem_limit) {
  ds_vm_t *vm = calloc(1, sizeof *vm);
  if (!vm) return NULL;
  vm->limit = mem_limit;
  vm->L = lua_newstate(vm_alloc, vm);
  if (!vm->L) {
    free(vm);
    return NULL;
  }
  lua_atpanic(vm->L, vm_panic);
  /* Threads copy the main thread's extra space, which Lua leaves uninitialised; the
   * scheduler keeps a task pointer there, so every thread must start with NULL. */
  memset(lua_getextraspace(vm->L), 0, LUA_EXTRASPACE);
  /* open the libraries in protected mode: they allocate */
  lua_pushcfunction(vm->L, open_libs);
  lua_pushcfunction(vm->L, ds_vm_msghandler);
  lua_insert(vm->L, -2);
  if (lua_pcall(vm->L, 0, 0, -2) != LUA_OK) {
    lua_close(vm->L);
    free(vm);
    return NULL;
  }
  lua_pop(vm->L, 1);
  return vm;
}

long ds_vm_free(ds_vm_t *vm) {
  if (!vm) return 0;
  long leaked = vm->refs;
  if (leaked) ds_warn("lua", "%ld Lua registry reference(s) leaked at shutdown", leaked);
  lua_close(vm->L);
  free(vm);
  return leaked;
}

lua_State *ds_vm_state(ds_vm_t *vm) { return vm->L; }

ds_vm_t *ds_vm_of(lua_State *L) {
  void *ud = NULL;
  lua_getallocf(L, &ud);
  return ud;
}

int ds_vm_msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int ds_vm_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs; /* the function's index */
  lua_pushcfunction(L, ds_vm_msghandler);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return rc;
}

void ds_vm_push_traceback(lua_State *L, lua_State *co) {
  const char *msg = lua_tostring(co, -1);
  if (msg == NULL) {
    if (luaL_callmeta(co, -1, "__tostring") && lua_type(co, -1) == LUA_TSTRING) {
      msg = lua_tostring(co, -1);
    } else {
      msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
    }
  }
  luaL_traceback(L, co, msg, 0);
}

int ds_vm_ref(lua_State *L) {
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (ref != LUA_REFNIL && ref != LUA_NOREF) ds_vm_of(L)->refs++;
  return ref;
}

void ds_vm_unref(lua_State *L, int ref) {
  if (ref == LUA_REFNIL || ref == LUA_NOREF) return;
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  ds_vm_of(L)->refs--;
}

long ds_vm_ref_count(const ds_vm_t *vm) { return vm->refs; }
size_t ds_vm_mem_used(const ds_vm_t *vm) { return vm->used; }
size_t ds_vm_mem_peak(const ds_vm_t *vm) { return vm->peak; }
void ds_vm_set_mem_limit(ds_vm_t *vm, size_t limit) { vm->limit = limit; }
size_t ds_vm_mem_limit(const ds_vm_t *vm) { return vm->limit; }
