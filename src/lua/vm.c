/* vm.c - the Lua state, its accounted allocator, budgets and their hook, the pcall
 * gateway and counted refs. See vm.h.
 * Must not: call into Lua except through ds_vm_pcall (and the state's own library
 * set-up); raise from the allocator (a kill there is only recorded and armed: the next
 * instruction raises it). */
#include "lua/vm.h"

#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"

struct ds_vm_s {
  lua_State *L;
  size_t used, peak, limit;
  long refs;
  ds_budget_t *current; /* the budget of the code running now; NULL between runs */
  lua_State *running;   /* the thread running now, as far as resumers told us */
  size_t byte_acc;      /* allocated bytes not yet turned into whole units */
  /* the last refused growth: Lua retries it once after an emergency collection, and
   * only a refusal that survives the retry is a real "past the cap" */
  int refusing;
  void *refused_ptr;
  size_t refused_size;
  int throwing;         /* refuse the next KILL_ALLOC growth: see throw_kill */
  char kill_msg[256];   /* the message of the last kill raised */
};

/* The size of the allocation a kill raised from the hook asks for, to be refused. */
#define KILL_ALLOC ((size_t)0x3ffff000)

static void vm_hook(lua_State *L, lua_Debug *ar);
static void format_kill(lua_State *L);

/* Every line and every instruction of L raises from now on (until the hook finds the
 * budget live again). lua_sethook is safe anywhere, even inside an allocation: lua.c
 * calls it from a signal handler for the same purpose. */
static void arm_kill(lua_State *L) {
  if (L) lua_sethook(L, vm_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
}

static void kill(ds_vm_t *vm, ds_budget_t *b, int why) {
  if (!b->killed) {
    b->killed = why;
    vm->kill_msg[0] = '\0';
    /* where it happened (reading debug info allocates nothing, so this is safe from
     * the allocator too); whoever raises it may refine it */
    if (vm->running) format_kill(vm->running);
  }
  b->left = 0;
  arm_kill(b->root);
  arm_kill(vm->running);
}

/* Spends n bytes of allocation from the current budget (no raise: see the file header). */
static void spend_bytes(ds_vm_t *vm, size_t n) {
  ds_budget_t *b = vm->current;
  if (!b || !b->limit || b->killed) return;
  vm->byte_acc += n;
  uint64_t units = vm->byte_acc / DS_VM_BYTES_PER_UNIT;
  vm->byte_acc %= DS_VM_BYTES_PER_UNIT;
  if (b->left > units) b->left -= units;
  else kill(vm, b, DS_BUDGET_EXCEEDED);
}

static void refused(ds_vm_t *vm, void *ptr, size_t nsize) {
  if (vm->refusing && vm->refused_ptr == ptr && vm->refused_size == nsize) {
    /* the retry after Lua's emergency collection failed too: the code asking is past
     * the cap, and its run ends here (a pcall around it must not let it try again, each
     * try being a full collection) */
    vm->refusing = 0;
    if (vm->current) kill(vm, vm->current, DS_BUDGET_MEMORY);
    return;
  }
  vm->refusing = 1;
  vm->refused_ptr = ptr;
  vm->refused_size = nsize;
}

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
  if (nsize > old) {
    if (vm->throwing && nsize >= KILL_ALLOC && nsize < KILL_ALLOC + 4096) return NULL;
    if (vm->limit && vm->used - old + nsize > vm->limit) {
      refused(vm, ptr, nsize);
      return NULL;
    }
    spend_bytes(vm, nsize - old);
  }
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  vm->used = vm->used - old + nsize;
  if (vm->used > vm->peak) vm->peak = vm->used;
  if (nsize > old) vm->refusing = 0;
  return p;
}

/* Writes "file:line: <what> exceeded" for the kill of the current budget to kill_msg. */
static void format_kill(lua_State *L) {
  ds_vm_t *vm = ds_vm_of(L);
  ds_budget_t *b = vm->current;
  char what[160];
  if (b && b->killed == DS_BUDGET_MEMORY)
    snprintf(what, sizeof what, "memory limit exceeded (an allocation past the cap failed)");
  else if (b && b->killed == DS_BUDGET_TIME)
    snprintf(what, sizeof what, "time limit exceeded (ran %llu ms of CPU without yielding)",
             (unsigned long long)b->time_ms);
  else
    snprintf(what, sizeof what, "%s exceeded (runaway code without yielding)",
             b && b->what ? b->what : "instruction budget");
  /* file:line of the Lua code running (level 0 is a C function when charged from C) */
  lua_Debug ar;
  for (int level = 0; level < 2; level++) {
    if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
      snprintf(vm->kill_msg, sizeof vm->kill_msg, "%s:%d: %s", ar.short_src, ar.currentline, what);
      return;
    }
  }
  snprintf(vm->kill_msg, sizeof vm->kill_msg, "%s", what);
}

int ds_vm_raise_kill(lua_State *L) {
  format_kill(L);
  lua_pushstring(L, ds_vm_of(L)->kill_msg);
  return lua_error(L);
}

void ds_vm_push_kill(lua_State *L) {
  ds_vm_t *vm = ds_vm_of(L);
  if (!vm->kill_msg[0]) format_kill(L);
  lua_pushstring(L, vm->kill_msg);
}

/* Whether an xpcall of the state is running on L's stack (its message handler would run
 * for an error raised now). */
static int in_xpcall(lua_State *L) {
  lua_Debug ar;
  for (int level = 0; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "f", &ar)) continue; /* [.. f] */
    int found = lua_tocfunction(L, -1) == ds__xpcall;
    lua_pop(L, 1);
    if (found) return 1;
  }
  return 0;
}

/* Raises the kill from inside the hook. An error raised with lua_error there would run
 * the message handler of an enclosing xpcall while hooks are off (Lua disables them for
 * the hook's duration), so a handler that loops would never be stopped. When one is on
 * the stack, a memory error is thrown instead, which runs no handler: the hook asks for
 * an allocation the allocator refuses (twice: Lua retries after an emergency collection,
 * which is the price of this path), and the error object is replaced by the kill message
 * wherever the error is caught (ds_vm_push_kill). */
static void throw_kill(lua_State *L) {
  ds_vm_t *vm = ds_vm_of(L);
  if (!in_xpcall(L)) ds_vm_raise_kill(L);
  format_kill(L);
  vm->throwing = 1;
  lua_newuserdatauv(L, KILL_ALLOC, 0); /* does not return */
  vm->throwing = 0;                    /* (only if memory was found after all) */
  lua_pop(L, 1);
  ds_vm_raise_kill(L);
}

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether b's time is up. The monotonic clock is the cheap check (every hook); the
 * thread's CPU clock (a system call) is read at the first hook of the run and when the
 * wall-clock deadline passes: if the thread was not on the CPU all that time, the
 * deadline moves by what is left. */
static int time_up(ds_budget_t *b) {
  if (!b->deadline_ns) return 0;
  if (!b->cpu_start_ns) b->cpu_start_ns = thread_cpu_ns() | 1;
  uint64_t now = ds_clock_mono_ns();
  if (now <= b->deadline_ns) return 0;
  uint64_t used = thread_cpu_ns() - b->cpu_start_ns, limit = b->time_ms * 1000000u;
  if (used >= limit) return 1;
  b->deadline_ns = now + (limit - used);
  return 0;
}

static void vm_hook(lua_State *L, lua_Debug *ar) {
  ds_vm_t *vm = ds_vm_of(L);
  ds_budget_t *b = vm->current;
  if (b && b->killed) {
    arm_kill(L);
    throw_kill(L);
  }
  int count = lua_gethookcount(L);
  if (lua_gethookmask(L) != LUA_MASKCOUNT || count != DS_VM_HOOK_STEP) {
    /* re-armed under a budget that was killed; this thread now runs under a live one */
    lua_sethook(L, vm_hook, LUA_MASKCOUNT, DS_VM_HOOK_STEP);
  }
  if (!b || ar->event != LUA_HOOKCOUNT) return;
  int why = DS_BUDGET_LIVE;
  if (time_up(b)) why = DS_BUDGET_TIME;
  else if (!b->limit) return;
  else if (b->left > (uint64_t)count) b->left -= (uint64_t)count;
  else why = DS_BUDGET_EXCEEDED;
  if (why == DS_BUDGET_LIVE) return;
  kill(vm, b, why);
  arm_kill(L);
  throw_kill(L);
}

static int open_libs(lua_State *L) {
  luaL_openlibs(L);
  ds__bounded_open(L);
  ds__pattern_open(L);
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
  /* the budget hook, inherited by every thread created from now on */
  lua_sethook(vm->L, vm_hook, LUA_MASKCOUNT, DS_VM_HOOK_STEP);
  return vm;
}

long ds_vm_free(ds_vm_t *vm) {
  if (!vm) return 0;
  long leaked = vm->refs;
  if (leaked) ds_warn("lua", "%ld Lua registry reference(s) leaked at shutdown", leaked);
  vm->current = NULL;
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
    /* __tostring is Lua code: only under a budget, which bounds it */
    if (ds_vm_of(L)->current && luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
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
  if (rc != LUA_OK && ds_vm_killed(L)) { /* report the kill, not the memory error it was thrown as */
    lua_pop(L, 1);
    ds_vm_push_kill(L);
  }
  return rc;
}

void ds_vm_push_traceback(lua_State *L, lua_State *co) {
  const char *msg;
  int t = lua_type(co, -1);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) msg = lua_tostring(co, -1);
  else msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
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

int ds_vm_account(ds_vm_t *vm, ptrdiff_t bytes) {
  if (bytes > 0 && vm->limit && vm->used + (size_t)bytes > vm->limit) return -1;
  vm->used = (size_t)((ptrdiff_t)vm->used + bytes);
  if (vm->used > vm->peak) vm->peak = vm->used;
  return 0;
}

/* ---- budgets ---- */

void ds_budget_init(ds_budget_t *b, const char *what, uint64_t limit, lua_State *root) {
  b->what = what;
  b->limit = limit;
  b->left = limit;
  b->deadline_ns = 0;
  b->time_ms = 0;
  b->cpu_start_ns = 0;
  b->killed = DS_BUDGET_LIVE;
  b->root = root;
}

void ds_budget_set_time(ds_budget_t *b, uint64_t ms) {
  b->time_ms = ms;
  b->deadline_ns = ms ? ds_clock_mono_ns() + ms * 1000000u : 0;
  b->cpu_start_ns = 0;
}

ds_budget_t *ds_vm_enter(ds_vm_t *vm, ds_budget_t *b) {
  ds_budget_t *prev = vm->current;
  vm->current = b;
  vm->refusing = 0;
  vm->throwing = 0;
  return prev;
}

void ds_vm_leave(ds_vm_t *vm, ds_budget_t *prev) {
  vm->current = prev;
  vm->refusing = 0;
  vm->throwing = 0;
}

ds_budget_t *ds_vm_budget(const ds_vm_t *vm) { return vm->current; }

lua_State *ds_vm_set_running(ds_vm_t *vm, lua_State *co) {
  lua_State *prev = vm->running;
  vm->running = co;
  return prev;
}

void ds_vm_charge(lua_State *L, uint64_t units) {
  ds_vm_t *vm = ds_vm_of(L);
  ds_budget_t *b = vm->current;
  if (!b) return;
  if (b->killed) {
    arm_kill(L);
    ds_vm_raise_kill(L);
  }
  int why = DS_BUDGET_LIVE;
  if (time_up(b)) why = DS_BUDGET_TIME;
  else if (!b->limit) return;
  else if (b->left > units) b->left -= units;
  else why = DS_BUDGET_EXCEEDED;
  if (why == DS_BUDGET_LIVE) return;
  kill(vm, b, why);
  arm_kill(L);
  ds_vm_raise_kill(L);
}

int ds_vm_killed(lua_State *L) {
  ds_budget_t *b = ds_vm_of(L)->current;
  return b && b->killed;
}
