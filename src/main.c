/* main.c - durable-stream command line.
 *
 * durable-stream [--config FILE] [--host H] [--port N] [--data-dir DIR]
 *                [--storage yaml|memory] [--fsync always|interval|never]
 *                [--long-poll-timeout MS] [--log-level L]
 * Flags override the PORT environment variable, which overrides config.lua; without
 * --config, ./config.lua is used when it exists.
 * durable-stream check [--repair] DATA_DIR: the offline checker (app/check.h).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/app.h"
#include "app/check.h"
#include "app/config.h"
#include "core/buf.h"
#include "core/log.h"

static void usage(FILE *f) {
  fputs("usage: durable-stream [--config FILE] [--host H] [--port N] [--data-dir DIR]\n"
        "                      [--storage yaml|memory] [--fsync always|interval|never]\n"
        "                      [--long-poll-timeout MS] [--log-level debug|info|warn|error]\n"
        "Flags override config.lua (default: ./config.lua when present); the PORT\n"
        "environment variable overrides config.lua's port, --port overrides PORT.\n"
        "--port 0 picks a free port; the line `listening on http://HOST:PORT` is printed\n"
        "on stdout once the server is ready.\n"
        "       durable-stream check [--repair] DATA_DIR   (verify / repair stored streams;\n"
        "                                                  see durable-stream check --help)\n",
        f);
}

static int parse_uint(const char *s, long max, long *out) {
  char *end;
  if (!*s) return -1;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v > max) return -1;
  *out = v;
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "check") == 0) return ds_check_main(argc - 1, argv + 1);
  enum { OPT_CONFIG = 1, OPT_HOST, OPT_PORT, OPT_DATA, OPT_STORAGE, OPT_FSYNC, OPT_LP, OPT_LOG, OPT_HELP };
  static const struct option opts[] = {{"config", required_argument, NULL, OPT_CONFIG},
                                       {"host", required_argument, NULL, OPT_HOST},
                                       {"port", required_argument, NULL, OPT_PORT},
                                       {"data-dir", required_argument, NULL, OPT_DATA},
                                       {"storage", required_argument, NULL, OPT_STORAGE},
                                       {"fsync", required_argument, NULL, OPT_FSYNC},
                                       {"long-poll-timeout", required_argument, NULL, OPT_LP},
                                       {"log-level", required_argument, NULL, OPT_LOG},
                                       {"help", no_argument, NULL, OPT_HELP},
                                       {NULL, 0, NULL, 0}};
  const char *config = NULL, *host = NULL, *port = NULL, *data = NULL, *storage = NULL,
             *fsync = NULL, *lp = NULL, *loglevel = NULL;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case OPT_CONFIG: config = optarg; break;
    case OPT_HOST: host = optarg; break;
    case OPT_PORT: port = optarg; break;
    case OPT_DATA: data = optarg; break;
    case OPT_STORAGE: storage = optarg; break;
    case OPT_FSYNC: fsync = optarg; break;
    case OPT_LP: lp = optarg; break;
    case OPT_LOG: loglevel = optarg; break;
    case OPT_HELP: usage(stdout); return 0;
    default:
      fprintf(stderr, "durable-stream: unknown or incomplete option '%s'\n", argv[optind - 1]);
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "durable-stream: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }

  ds_config_t cfg;
  ds_config_defaults(&cfg);
  char err[512];
  if (!config && access("config.lua", F_OK) == 0) config = "config.lua";
  if (config && ds_config_load(&cfg, config, err, sizeof err) != 0) {
    fprintf(stderr, "durable-stream: refusing to start: %s\n", err);
    ds_config_free(&cfg);
    return 1;
  }
  /* the environment's PORT beats config.lua; --port beats both (then PORT is not read) */
  if (!port && ds_config_apply_env(&cfg, getenv, err, sizeof err) != 0) {
    fprintf(stderr, "durable-stream: refusing to start: %s\n", err);
    ds_config_free(&cfg);
    return 2;
  }
  long v;
  if (host) {
    free(cfg.host);
    cfg.host = ds_xstrdup(host);
  }
  if (port) {
    if (parse_uint(port, 65535, &v) != 0) {
      fprintf(stderr, "durable-stream: --port must be 0-65535, got '%s'\n", port);
      ds_config_free(&cfg);
      return 2;
    }
    cfg.port = (int)v;
  }
  if (data) {
    free(cfg.data_dir);
    cfg.data_dir = ds_xstrdup(data);
  }
  if (storage) {
    if (strcmp(storage, "yaml") != 0 && strcmp(storage, "memory") != 0) {
      fprintf(stderr, "durable-stream: --storage must be yaml or memory, got '%s'\n", storage);
      ds_config_free(&cfg);
      return 2;
    }
    free(cfg.storage);
    cfg.storage = ds_xstrdup(storage);
  }
  if (fsync) {
    int f = ds_fsync_parse(fsync);
    if (f < 0) {
      fprintf(stderr, "durable-stream: --fsync must be always, interval or never, got '%s'\n", fsync);
      ds_config_free(&cfg);
      return 2;
    }
    cfg.fsync = (ds_fsync_t)f;
  }
  if (lp) {
    if (parse_uint(lp, 86400000, &v) != 0 || v == 0) {
      fprintf(stderr, "durable-stream: --long-poll-timeout must be 1-86400000 ms, got '%s'\n", lp);
      ds_config_free(&cfg);
      return 2;
    }
    cfg.long_poll_timeout_ms = (unsigned)v;
  }
  if (loglevel) {
    int l = ds_log_level_parse(loglevel);
    if (l < 0) {
      fprintf(stderr, "durable-stream: --log-level must be debug, info, warn, error or off\n");
      ds_config_free(&cfg);
      return 2;
    }
    cfg.log_level = l;
  }
  ds_log_set_level((ds_log_level_t)cfg.log_level);
  int status = ds_app_run(&cfg);
  ds_config_free(&cfg);
  return status;
}
