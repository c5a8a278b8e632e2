/* log.c - leveled log lines on stderr. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/clock.h"

static ds_log_level_t g_level = DS_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void ds_log_set_level(ds_log_level_t lvl) { g_level = lvl; }
ds_log_level_t ds_log_get_level(void) { return g_level; }

int ds_log_level_parse(const char *name) {
  for (int i = 0; i <= DS_LOG_OFF; i++)
    if (strcasecmp(name, level_names[i]) == 0) return i;
  return -1;
}

void ds_log(ds_log_level_t lvl, const char *subsystem, const char *fmt, ...) {
  if (lvl < g_level || lvl >= DS_LOG_OFF) return;
  char line[2048];
  char ts[32];
  ds_clock_iso8601(ds_clock_wall_ms(), ts);
  int n = snprintf(line, sizeof line, "%s %s %s: ", ts, level_names[lvl], subsystem);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof line - 2) len = sizeof line - 2;
  /* one record is one line: fold embedded newlines */
  for (size_t i = (size_t)n; i < len; i++)
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  line[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}
