/* vm.h - the Lua state of the host: accounted allocator, budgets that bound every piece
 * of Lua, the one protected gateway, counted registry references.
 *
 * Provides: ds_vm_t, one lua_State with an allocator that counts bytes against a cap
 * (an allocation past the cap fails, which Lua turns into LUA_ERRMEM for the code that
 * asked), ds_vm_pcall() - the only way host code calls into Lua, always with a message
 * handler adding a traceback - and ds_vm_ref()/ds_vm_unref(), luaL_ref wrappers whose
 * live count is reported at shutdown (a leaked ref is a waiting coroutine or callback
 * that was never released).
 *
 * Budgets (ds_budget_t): whoever runs Lua (the scheduler for a task's resume, the host
 * for the load phase, config.c for config.lua) enters a budget first; the code running
 * then spends it, in "work units":
 *   * VM instructions, counted by a count hook that every thread of the state carries
 *     (set on the main thread at creation; Lua copies a thread's hook into each thread
 *     it creates, so coroutines made by coroutine.create/wrap are counted too);
 *   * bytes allocated (one unit per DS_VM_BYTES_PER_UNIT), so an instruction that copies
 *     a large string (concatenation, string.rep, upper...) costs what it does;
 *   * C loops that neither run instructions nor allocate, which charge their steps with
 *     ds_vm_charge (pattern matching, table.sort/move/insert/remove, plain find...).
 * Units are deterministic (tests rely on them) but only approximate time: a unit of
 * allocation-heavy code (a table growing, its garbage collector's work, tostring) costs
 * ten times what a unit of a plain loop does. So a budget may also carry a time limit,
 * checked by the same hook (every DS_VM_HOOK_STEP instructions) and by ds_vm_charge:
 * that is what bounds how long one run holds the loop. It counts the loop thread's CPU
 * time, not the wall clock (which is only the cheap first check): on a busy machine the
 * time other processes take must not kill code that did nothing wrong.
 * Past the limit, or when an allocation stays refused at the memory cap, the budget is
 * killed: the running thread raises "file:line: <what> exceeded", the hook is re-armed on
 * every line and instruction (Redis' luaMaskCountHook) of the running thread and of the
 * budget's root, so any further instruction raises again, and the state's pcall, xpcall,
 * coroutine.resume and coroutine.wrap pass a kill on instead of catching it. Lua runs the
 * message handler of an error raised in a hook with hooks off (one that loops would
 * never stop), so when an xpcall is on the stack the hook throws the kill as a memory
 * error, which runs no handler (at the cost of one emergency collection);
 * ds_vm_push_kill gives the real message to whoever catches it. A thread that dies of a
 * kill raised in the hook keeps its hooks off (Lua restores them only in a protected
 * call), so its pending __close handlers never run (sched.c, l_bounded.c). Other __close
 * handlers run under the budget; __gc metamethods run with hooks off in Lua, so plugins
 * may not set them (lua/boot.lua's sandbox refuses them).
 * Must not: know about tasks, streams or HTTP; exit() on any error.
 */
#ifndef DS_LUA_VM_H
#define DS_LUA_VM_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ds_vm_s ds_vm_t;

/* The count hook fires every DS_VM_HOOK_STEP instructions. */
#define DS_VM_HOOK_STEP 1000
/* Bytes allocated per work unit (an instruction costs one unit, about 3 ns; copying or
 * touching 16 fresh bytes costs about as much). */
#define DS_VM_BYTES_PER_UNIT 16

enum { DS_BUDGET_LIVE = 0, DS_BUDGET_EXCEEDED, DS_BUDGET_MEMORY, DS_BUDGET_TIME };

/** A budget: the bound of one run of Lua code. Plain struct, owned by whoever runs it. */
typedef struct ds_budget_s {
  const char *what; /* names it in the kill message: "instruction budget" */
  uint64_t limit;   /* work units per entry; 0 = unlimited (memory kills still apply) */
  uint64_t left;
  uint64_t deadline_ns; /* monotonic; 0 = none (ds_budget_set_time) */
  uint64_t time_ms;     /* the time it was given */
  uint64_t cpu_start_ns; /* the thread's CPU clock at the first hook of this run; 0 = not yet */
  int killed;       /* DS_BUDGET_LIVE, or why it was killed */
  lua_State *root;  /* the thread the code started on (may be NULL) */
} ds_budget_t;

/** Creates a state with the standard libraries open (their looping functions bounded,
 *  see l_bounded.c and l_pattern.c). mem_limit 0 = no cap. NULL on OOM. */
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
 *  lua_resume) onto L. Runs no Lua (an error object's __tostring is not called: it could
 *  loop outside every budget). */
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
/** Counts C memory held on behalf of Lua (task structs, queued events) against the same
 *  cap: bytes > 0 is refused (returns -1, nothing counted) when it would pass the cap;
 *  bytes < 0 gives it back. */
int ds_vm_account(ds_vm_t *vm, ptrdiff_t bytes);

/* ---- budgets ---- */

/** Fills b: `limit` units, no time limit, not killed; root is re-armed with the running
 *  thread on a kill. */
void ds_budget_init(ds_budget_t *b, const char *what, uint64_t limit, lua_State *root);
/** Gives b a time limit of ms of the loop thread's CPU time from now (0 = none). */
void ds_budget_set_time(ds_budget_t *b, uint64_t ms);
/** Makes b the budget of the code run from now on; returns the one it replaces (give it
 *  back to ds_vm_leave). NULL means "no budget": host code between runs. */
ds_budget_t *ds_vm_enter(ds_vm_t *vm, ds_budget_t *b);
void ds_vm_leave(ds_vm_t *vm, ds_budget_t *prev);
ds_budget_t *ds_vm_budget(const ds_vm_t *vm);
/** The thread running now (set by whoever resumes one: the scheduler, coroutine.resume
 *  and coroutine.wrap of the state); a kill from the allocator re-arms it. Returns the
 *  previous value, to restore after the resume. */
lua_State *ds_vm_set_running(ds_vm_t *vm, lua_State *co);
/** Spends `units` of the current budget from a C function called by L; raises the kill
 *  when it is exhausted (or already killed). A no-op without a budget. Call it before
 *  holding anything a raise would leak. */
void ds_vm_charge(lua_State *L, uint64_t units);
/** 1 when the current budget was killed (a protected call must let the error through). */
int ds_vm_killed(lua_State *L);
/** Raises the kill of the current budget (file:line of the running Lua code first). */
int ds_vm_raise_kill(lua_State *L);
/** Pushes the message of the last kill. A kill raised from the hook reaches pcall and
 *  lua_resume as a memory error ("not enough memory"): whoever catches the error of a
 *  killed budget reports this instead. */
void ds_vm_push_kill(lua_State *L);

/* internal: installed by ds_vm_new */
void ds__bounded_open(lua_State *L); /* l_bounded.c */
int ds__xpcall(lua_State *L);        /* l_bounded.c: the state's xpcall */
void ds__pattern_open(lua_State *L); /* l_pattern.c */

#endif
