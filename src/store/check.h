/* check.h - offline verification and repair of the streams of a data directory (the engine
 * of `durable-stream check [--repair] DATA_DIR`, see app/check.h).
 *
 * Provides: ds_store_check(), which walks <data_dir>/streams and verifies every stream:
 * each document has the stored shape and decodes; offsets are in order and gap-free from
 * the stream's first offset (a fork's fork point: its .base sidecar, else the `fork.offset`
 * of its metadata; 0 otherwise); the .idx, .offset and .base sidecars agree with the
 * documents; the .meta sidecar is a JSON object; nothing is torn at the end; no stray
 * temporary or orphaned sidecar files. Each finding is one line on `out`:
 *   <file>: byte <n>: <what>
 * With repair it also fixes what can be fixed without losing acknowledged data, printing
 * one line per action (`<file>: repaired: ...`), then verifies the stream again:
 *   - an exact duplicate of the previous document (same offset, same bytes) is removed;
 *   - from the first other damaged document (or a torn tail) on, every byte is moved
 *     into a new `<file>.damaged-<unix ms>` beside it (fsynced before the stream file is
 *     cut; never deleted) and the stream continues at its last intact offset: offsets must
 *     stay gap-free and a damaged record cannot be rebuilt, so the intact prefix is the only
 *     stream that neither invents records nor leaves a gap;
 *   - .idx, .offset and .base are rewritten from the documents (atomically);
 *   - stray temporary files and orphaned .idx/.offset/.base sidecars are removed, an
 *     orphaned .meta is moved aside (a new stream at that path would inherit it);
 *   - a damaged .meta is NOT repaired (content type, lifetime and producer state cannot
 *     be derived from the documents): reported as left.
 * It refuses (DS_EBUSY) while a server has the directory open: the server holds a shared
 * flock on <data_dir>/streams, the checker takes it exclusively (and a server does not
 * start while a check runs).
 * Must not: follow symlinks, or delete bytes of a stream file (they are moved aside).
 */
#ifndef DS_STORE_CHECK_H
#define DS_STORE_CHECK_H

#include <stddef.h>
#include <stdio.h>

typedef struct ds_check_result_s {
  size_t streams;    /* stream files checked */
  size_t damaged;    /* streams (or stray files) with at least one finding */
  size_t findings;   /* finding lines printed */
  size_t repaired;   /* streams / files whose findings are all gone after the repair */
  size_t left;       /* streams / files still with findings (not repaired or not repairable) */
  size_t notes;      /* informational lines (kept .damaged files, unknown files) */
} ds_check_result_t;

/** Checks (and with repair != 0 repairs) data_dir. Returns 0 when it could walk the whole
 *  directory, or a negative DS_E* when it could not (message printed on out); the outcome
 *  is in *res. */
int ds_store_check(const char *data_dir, int repair, FILE *out, ds_check_result_t *res);

#endif
