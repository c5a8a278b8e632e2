/* file.h - small whole-file helpers for state kept beside the stream logs.
 *
 * Provides: mkdir -p (durable: each created level's parent directory is fsynced), reading
 * a whole file, replacing a file atomically (write a temp file, rename over the target)
 * either durably (fsync the temp file before and the directory after the rename) or
 * without any fsync for callers that sync later (ds_file_fsync / ds_file_fsync_dir, e.g.
 * from a worker thread), removing a file (durably or not), and moving a damaged file aside
 * under a unique name.
 * Must not: be used on the append hot path with fsync (every call is synchronous); keep
 * descriptors open between calls.
 */
#ifndef DS_CORE_FILE_H
#define DS_CORE_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

/** Positive result of ds_file_write_atomic{,_opt} / ds_file_remove{,_opt} with sync: the
 *  new file is in place (or the old one gone), but fsyncing the directory failed, so
 *  whether the change survives a power loss is unknown. Not an error: callers treat it as
 *  "written, durability unknown" (log it; the data is what readers now see). */
#define DS_FILE_UNSYNCED 1

/** Creates dir and its missing parents (mode 0755 or `mode` for the last level), fsyncing
 *  the parent directory of every level it created so the new entries survive a power
 *  loss. DS_EINVAL for "" or NULL. 0 or DS_E*. */
int ds_file_mkdir_p(const char *dir, int mode);
/** Appends the whole content of path to out. DS_ENOTFOUND if absent, else 0 or DS_E*. */
int ds_file_read_all(const char *path, ds_buf_t *out);
/** Replaces path with data atomically: "<path>.tmp" (opened with O_NOFOLLOW, so a symlink
 *  planted there is never followed) written with `mode`, fsynced, renamed over path, then
 *  the directory fsynced. Returns 0; DS_FILE_UNSYNCED when only the final directory fsync
 *  failed (the new file is already in place); or a negative DS_E* (DS_ENOSPC for a full
 *  disk), in which case the old file is untouched and the temp file removed. */
int ds_file_write_atomic(const char *path, const void *data, size_t n, int mode);
/** As ds_file_write_atomic; with sync false nothing is fsynced (the renamed file is in the
 *  page cache: it survives a crash of the process, not a power loss, until the caller has
 *  fsynced the file and its directory). */
int ds_file_write_atomic_opt(const char *path, const void *data, size_t n, int mode, bool sync);
/** Unlinks path and fsyncs its directory. 0 (also when it was already absent),
 *  DS_FILE_UNSYNCED (unlinked, directory fsync failed) or DS_E*. */
int ds_file_remove(const char *path);
/** As ds_file_remove; with sync false the directory is not fsynced. */
int ds_file_remove_opt(const char *path, bool sync);
/** fsyncs the file at path (opened read-only). 0, DS_ENOTFOUND if absent, or DS_E*. */
int ds_file_fsync(const char *path);
/** fsyncs the directory dir. 0 or DS_E*. */
int ds_file_fsync_dir(const char *dir);
/** Renames path to "<path>.damaged-<unix ms>" (kept for inspection, never read again) and
 *  fsyncs the directory; the new name is written into aside (may be NULL). 0,
 *  DS_FILE_UNSYNCED (moved, directory fsync failed) or DS_E* (not moved). */
int ds_file_move_aside(const char *path, char *aside, size_t asidelen);

#endif
