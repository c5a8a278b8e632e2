/* yaml_file.h - the shape of a stream's .yaml file and its .meta sidecar, shared by the
 * yaml store and the offline checker (store/check.c).
 *
 * Provides: the few facts about a stream file that recovery and checking rely on without
 * parsing YAML: every document starts with a "---" line (at byte 0 or after a newline),
 * ends with a top-level "createdAt: <ISO-8601 ms>Z" line and holds a top-level
 * `offset: "<digits>"` line; and the one way damaged bytes are kept: copied into a new
 * `<file>.damaged-<unix ms>` beside the stream file (fsynced, never overwritten, never
 * read again by the server). Of the .meta sidecar (the protocol layer's JSON object) only
 * whether it is one, and the fork point it names.
 * Must not: decode records (store/record.c does) or interpret metadata beyond that.
 */
#ifndef DS_STORE_YAML_FILE_H
#define DS_STORE_YAML_FILE_H

#include <stddef.h>
#include <stdint.h>

#define DS__YAML_CREATED_LEN 36 /* "createdAt: YYYY-MM-DDTHH:MM:SS.mmmZ\n" */

/** 1 if p[0..36) is exactly a createdAt line (digits where the shape has them). */
int ds__yaml_created_line(const char *p);
/** 1 if doc[0..len) has the outer shape of a stored document: "---\n" first, a createdAt
 *  line last (a document cut short, or merged with its neighbour, fails). */
int ds__yaml_doc_shape_ok(const char *doc, size_t len);
/** Finds the last top-level `offset: "<1-20 digits>"` (or unquoted) line of buf[0..len) that
 *  starts after a newline, or at byte 0 when at_start; the line must end there (a flipped
 *  byte inside the digits is not read as a shorter number). 0 and *out, or -1. */
int ds__yaml_offset_line(const char *buf, size_t len, int at_start, uint64_t *out);
/** Checks a .meta sidecar's bytes: 0 when they are one JSON object, with *fork = 1 and
 *  *fork_off when it names a fork point (`"fork":{"offset":N}`, written by the protocol
 *  layer for forks), else *fork = 0; DS_ECORRUPT (err says what and at which byte) when
 *  they are not. */
int ds__yaml_meta_parse(const char *p, size_t n, int *fork, uint64_t *fork_off, char *err,
                        size_t errlen);
/** Copies the byte ranges [r[i][0], r[i][1]) of fd, in order, into a new file
 *  "<file>.damaged-<unix ms>" (a later ms if that name exists), fsyncs it and its
 *  directory. 0 and the new name in aside (may be NULL), or a negative DS_E* (nothing is
 *  left behind then). */
int ds__yaml_save_aside(int fd, const uint64_t (*r)[2], size_t nr, const char *file,
                        char *aside, size_t asidelen);

#endif
