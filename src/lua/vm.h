/* vm.h - the Lua state of the host: accounted allocator, the one protected gateway,
 * counted registry references.
 *
 * Provides: ds_vm_t, one lua_State with an allocator that counts bytes against a cap
 * (an allocation past the cap fails, which Lua turns into LUA_ERRMEM for the code that
 * asked), ds_vm_pcall() - the only way host code calls into Lua, always with a message
 * handler adding a traceback - and ds_vm_ref()/ds_vm_unref(), luaL_ref wrappers whose
 * live count is reported at shutdown (a leaked ref is a waiting coroutine or callback
 * that was never released).
 * Must not: know about tasks, streams or HTTP; exit() on any error.
 */
#ifndef DS_LUA_VM_H
#define DS_LUA_VM_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>

typedef struct ds_vm_s ds_vm_t;

/** Creates a state with the standard libraries open. mem_limit 0 = no cap. NULL on OOM. */
ds_vm_t *ds_vm_new(size_t mem_limit);
/** Closes the state; returns the number of refs still held (each logged with ds_warn). */
long ds_vm_free(ds_vm_t *vm);
lua_State *ds_vm_state(ds_vm_t *vm);
/** The vm owning any thread of its state (kept as the allocator's userdata). */
ds_vm_t *ds_vm_of(lua_State *L);

/** Calls the function below nargs arguments like lua_pcall, with a traceback handler.
 *  On error the message (with traceback) is left on the stack and the status returned. */
int ds_vm_pcall(lua_State *L, int nargs, int nresults);
/** Message handler usable with lua_pcall / after lua_resume: adds a traceback, converts
 *  non-string errors via __tostring. */
int ds_vm_msghandler(lua_State *L);
/** Pushes "msg\ntraceback" for an error object at the top of co's stack (after a failed
 *  lua_resume) onto L. */
void ds_vm_push_traceback(lua_State *L, lua_State *co);

/** luaL_ref(L, LUA_REGISTRYINDEX) on the value at the top (popped), counted. */
int ds_vm_ref(lua_State *L);
/** Releases a ref from ds_vm_ref (LUA_NOREF is ignored). */
void ds_vm_unref(lua_State *L, int ref);
long ds_vm_ref_count(const ds_vm_t *vm);

size_t ds_vm_mem_used(const ds_vm_t *vm);
size_t ds_vm_mem_peak(const ds_vm_t *vm);
void ds_vm_set_mem_limit(ds_vm_t *vm, size_t limit);
size_t ds_vm_mem_limit(const ds_vm_t *vm);

#endif
