/* file.h - small whole-file helpers for state kept beside the stream logs.
 *
 * Provides: mkdir -p, reading a whole file, replacing a file atomically and durably
 * (write a temp file, fsync it, rename over the target, fsync the directory), removing a
 * file durably, and moving a damaged file aside under a unique name.
 * Must not: be used on the append hot path (every call is synchronous and may fsync).
 */
#ifndef DS_CORE_FILE_H
#define DS_CORE_FILE_H

#include <stddef.h>

#include "core/buf.h"

/** Creates dir and its missing parents (mode 0755 or `mode` for the last level). 0 or DS_E*. */
int ds_file_mkdir_p(const char *dir, int mode);
/** Appends the whole content of path to out. DS_ENOTFOUND if absent, else 0 or DS_E*. */
int ds_file_read_all(const char *path, ds_buf_t *out);
/** Replaces path with data atomically: "<path>.tmp" written with `mode`, fsynced, renamed
 *  over path, then the directory fsynced. On failure the old file is untouched and the
 *  temp file removed. 0 or DS_E* (DS_ENOSPC for a full disk). */
int ds_file_write_atomic(const char *path, const void *data, size_t n, int mode);
/** Unlinks path and fsyncs its directory. 0 (also when it was already absent) or DS_E*. */
int ds_file_remove(const char *path);
/** Renames path to "<path>.damaged-<unix ms>" (kept for inspection, never read again) and
 *  fsyncs the directory; the new name is written into aside (may be NULL). 0 or DS_E*. */
int ds_file_move_aside(const char *path, char *aside, size_t asidelen);

#endif
