/* config.h - the server's configuration: config.lua, then command-line flags.
 *
 * Provides: ds_config_t with every built-in default, loading of config.lua (a Lua chunk
 * that returns a table) with type and range checks that name the key, the environment's
 * PORT over it, and the overrides of the command line (precedence: flag > PORT > file). A broken config.lua is refused with file:line (Lua's own message
 * for syntax and runtime errors) or with the offending key.
 * Must not: start anything; it only reads and checks values. The Lua host re-reads the
 * `agents` table itself, so this module only checks that it is a table.
 */
#ifndef DS_APP_CONFIG_H
#define DS_APP_CONFIG_H

#include <stddef.h>

#include "lua/vm.h"
#include "store/store.h"

typedef struct ds_config_s {
  char *config_path; /* NULL when running on built-in defaults */
  char *host;
  int port;
  char *data_dir;
  char *storage; /* "yaml" | "memory" */
  ds_fsync_t fsync;
  unsigned fsync_interval_ms;
  int log_level;
  /* limits */
  size_t max_body_bytes;
  size_t max_header_bytes;
  int max_json_depth;
  unsigned max_connections;
  unsigned header_timeout_ms;
  unsigned body_timeout_ms;
  unsigned idle_timeout_ms;
  size_t subscriber_backlog_bytes;
  size_t tail_cache_bytes;
  size_t tail_cache_total_bytes;
  unsigned max_open_files;
  /* sse */
  unsigned keepalive_ms;
  /* protocol (/v1/stream) */
  unsigned long_poll_timeout_ms;
  unsigned sse_reconnect_ms;
  int subscriptions;
  char **webhook_allow_networks; /* CIDRs webhooks may reach despite the egress deny list */
  size_t nwebhook_allow_networks;
  /* lua host */
  int agents_enabled;
} ds_config_t;

/** Fills every field with its built-in default. */
void ds_config_defaults(ds_config_t *c);
/** Loads config.lua at path over the current values. Returns 0, or -1 with a one-line
 *  message ("config.lua:12: ...") in err. */
int ds_config_load(ds_config_t *c, const char *path, char *err, size_t errlen);
void ds_config_free(ds_config_t *c);
/** Applies the environment over config.lua's values (the command line then overrides both):
 *  PORT, when set and not empty, must be an integer from 0 to 65535 (decimal digits only)
 *  and becomes the port. `getenv_fn` is getenv (tests pass their own). Returns 0, or -1
 *  with a one-line message in err. */
int ds_config_apply_env(ds_config_t *c, char *(*getenv_fn)(const char *name), char *err,
                        size_t errlen);
/* config.lua is a program: each evaluation (here, for auth settings, and the Lua host's)
 * runs bounded, so an endless loop or a runaway allocation refuses start-up with the
 * file's name instead of hanging it. */
#define DS_CONFIG_BUDGET 100000000u         /* work units (vm.h), about 0.3 s of CPU */
#define DS_CONFIG_MEM_LIMIT ((size_t)64 << 20)
#define DS_CONFIG_TIME_LIMIT_MS 2000u

/** Evaluates config.lua at path in a fresh Lua state under DS_CONFIG_BUDGET and
 *  DS_CONFIG_MEM_LIMIT; returns the state with the table it returned alone on its stack
 *  (free it with ds_vm_free), or NULL with a one-line message naming the file in err. */
ds_vm_t *ds_config_eval(const char *path, char *err, size_t errlen);
/** Parses an fsync policy name; -1 when unknown. */
int ds_fsync_parse(const char *s);

#endif
