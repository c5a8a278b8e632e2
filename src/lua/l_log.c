/* l_log.c - ds.log.{debug,info,warn,error}(fmt, ...): the server log from Lua.
 * A single argument is logged as is; more arguments go through string.format. Each
 * record names the plugin that logged it ("lua:<plugin>").
 * Must not: log anything the script did not pass (no implicit payload dumps). */
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "lua/lhost.h"

static int do_log(lua_State *L, ds_log_level_t lvl) {
  if (lvl < ds_log_get_level()) return 0;
  int n = lua_gettop(L);
  const char *msg;
  if (n > 1) {
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_remove(L, -2);
    lua_insert(L, 1);
    lua_call(L, n, 1);
    msg = lua_tostring(L, -1);
  } else {
    msg = luaL_tolstring(L, 1, NULL);
  }
  ds_lua_host_t *h = ds__host_of(L);
  int p = ds__current_plugin(L);
  char sub[80];
  snprintf(sub, sizeof sub, "lua:%s", (h && p >= 0 && (size_t)p < h->nplugins) ? h->plugins[p].name : "?");
  ds_log(lvl, sub, "%s", msg ? msg : "");
  return 0;
}

static int l_debug(lua_State *L) { return do_log(L, DS_LOG_DEBUG); }
static int l_info(lua_State *L) { return do_log(L, DS_LOG_INFO); }
static int l_warn(lua_State *L) { return do_log(L, DS_LOG_WARN); }
static int l_error(lua_State *L) { return do_log(L, DS_LOG_ERROR); }

static const luaL_Reg funcs[] = {
    {"debug", l_debug}, {"info", l_info}, {"warn", l_warn}, {"error", l_error}, {NULL, NULL}};

void ds__log_open(lua_State *L) {
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "log");
}
