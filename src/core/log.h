/* log.h - the server's log.
 *
 * Provides: leveled, single-line log records on stderr ("2026-01-20T12:00:00.000Z warn
 * store: message"). One line per call, written with one write(2) so lines from a crash
 * are never interleaved.
 * Must not: log secrets (tokens, API keys): callers redact before calling.
 */
#ifndef DS_CORE_LOG_H
#define DS_CORE_LOG_H

typedef enum { DS_LOG_DEBUG = 0, DS_LOG_INFO, DS_LOG_WARN, DS_LOG_ERROR, DS_LOG_OFF } ds_log_level_t;

void ds_log_set_level(ds_log_level_t lvl);
ds_log_level_t ds_log_get_level(void);
/** Parses "debug|info|warn|error|off"; returns -1 on an unknown name. */
int ds_log_level_parse(const char *name);
void ds_log(ds_log_level_t lvl, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define ds_debug(sub, ...) ds_log(DS_LOG_DEBUG, sub, __VA_ARGS__)
#define ds_info(sub, ...) ds_log(DS_LOG_INFO, sub, __VA_ARGS__)
#define ds_warn(sub, ...) ds_log(DS_LOG_WARN, sub, __VA_ARGS__)
#define ds_error(sub, ...) ds_log(DS_LOG_ERROR, sub, __VA_ARGS__)

#endif
