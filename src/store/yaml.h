/* yaml.h - the YAML document form of stored records.
 *
 * Provides: the emitter that writes one record as one YAML document in the contract's
 * exact layout (a `---` line, block style, 2-space indentation, keys in insertion order,
 * strings plain unless plain would read back as something else, then double-quoted with
 * escapes; `{}` and `[]` for empty containers; DS_V_BINARY as `!!binary <base64>`), and the
 * loader that reads such a document back into an identical ds_value_t tree (a fast path for
 * the emitter's own layout, libyaml for anything else).
 *
 * Round-trip law: for every value v the JSON parser can produce,
 *   ds_yaml_load_doc(ds_yaml_emit_doc(v)) equals v (ds_value_equal), including number
 *   lexemes, strings that look like numbers/bools/null/dates, control characters, astral
 *   unicode, empty containers and key order.
 * Loader scalar resolution (plain scalars only; quoted scalars are always strings):
 *   "", "~", "null" -> null; "true"/"false" -> bool; a scalar matching the JSON number
 *   grammar -> number (lexeme kept); `!!binary` tag -> binary; everything else -> string.
 * Must not: accept aliases/anchors or multiple documents in ds_yaml_load_doc (reported as
 * errors, never a crash).
 */
#ifndef DS_STORE_YAML_H
#define DS_STORE_YAML_H

#include <stddef.h>

#include "core/buf.h"
#include "store/value.h"

/**
 * Appends "---\n" and the block-style document for `doc` to b. `doc` is normally an
 * object (a stored record); a scalar or array document is emitted as `--- <scalar>` /
 * a block sequence. The output always ends with '\n'.
 */
void ds_yaml_emit_doc(ds_buf_t *b, const ds_value_t *doc);

/**
 * Parses exactly one YAML document from s[0..n) into arena `a`.
 * Returns 0 and *out, or DS_ECORRUPT with a one-line reason ("line 3: ...") in err.
 */
int ds_yaml_load_doc(ds_arena_t *a, const char *s, size_t n, ds_value_t **out, char *err,
                     size_t errlen);

/** The two loaders behind ds_yaml_load_doc, exposed for tests: the fast one reads only
 *  the emitter's own layout of a non-empty mapping and returns 1 (and *out) or 0 when it
 *  declines; the libyaml one reads any single document (same contract as ds_yaml_load_doc).
 *  ds_yaml_load_doc tries the fast one first. */
int ds__yaml_load_doc_fast(ds_arena_t *a, const char *s, size_t n, ds_value_t **out);
/** Spans (byte offsets into the output buffer) of one top-level member's JSON. */
typedef struct {
  size_t key_start, key_end; /* the key as a JSON string, quotes included */
  size_t val_start, val_end; /* its value's JSON */
} ds__yaml_span_t;
typedef struct {
  ds__yaml_span_t first; /* the first member */
  int want_found;
  ds__yaml_span_t want; /* the first member whose key is `want` */
} ds__yaml_json_info_t;
/** Transcodes a document the fast loader would take straight to compact JSON, appended to
 *  out: the same bytes as ds_json_write of what ds_yaml_load_doc returns. Returns 1, or 0
 *  (out unchanged) when the fast loader would decline. */
int ds__yaml_doc_to_json(const char *s, size_t n, ds_buf_t *out, const char *want,
                         size_t want_len, ds__yaml_json_info_t *info);
int ds__yaml_load_doc_libyaml(ds_arena_t *a, const char *s, size_t n, ds_value_t **out,
                              char *err, size_t errlen);

/** Returns 1 if the string s[0..n) may be written as a plain scalar (the emitter's quoting
 *  rule: 0 means it is double-quoted). Exposed for tests and tools. */
int ds_yaml_scalar_plain_ok(const char *s, size_t n);

#endif
