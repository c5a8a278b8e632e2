/* json.h - strict JSON parser and compact writer over ds_value_t.
 *
 * Provides: RFC 8259 parsing with the checks an append endpoint needs (valid UTF-8, no
 * lone surrogates, no trailing garbage, a nesting depth limit) and a compact writer whose
 * output is the contract's SSE `data:` form: no insignificant whitespace, raw UTF-8 (no
 * \u escapes except for control characters, U+2028/U+2029 and DEL), `"` and `\` escaped,
 * numbers written as their original lexeme.
 * Must not: allocate outside the caller's arena (parse) or buffer (write).
 */
#ifndef DS_STORE_JSON_H
#define DS_STORE_JSON_H

#include <stddef.h>

#include "core/buf.h"
#include "store/value.h"

#define DS_JSON_DEFAULT_MAX_DEPTH 64

/**
 * Parses s[0..n) into a value tree in arena `a`.
 * Returns 0 and sets *out, or DS_EINVAL with a one-line reason in err (for example
 * "invalid JSON at byte 12: expected ':'", "invalid UTF-8 at byte 5", "nesting deeper
 * than 64"). A key repeated in one object keeps its last value, once, at the position
 * of its first occurrence (as JavaScript's JSON.parse; agents-api.md §1), so every value
 * the parser builds can be written as YAML, whose mappings cannot repeat a key.
 */
int ds_json_parse(ds_arena_t *a, const char *s, size_t n, int max_depth, ds_value_t **out,
                  char *err, size_t errlen);

/** Appends the compact JSON encoding of v to b. DS_V_BINARY is written as a base64 string. */
void ds_json_write(ds_buf_t *b, const ds_value_t *v);
/** Appends s[0..n) as a JSON string literal (with quotes), using the writer's escaping. */
void ds_json_write_string(ds_buf_t *b, const char *s, size_t n);

/** Standard base64 (with padding) of p[0..n) appended to b. */
void ds_base64_encode(ds_buf_t *b, const void *p, size_t n);
/** Decodes standard base64 (padding optional, whitespace ignored); 0 or DS_EINVAL. */
int ds_base64_decode(ds_buf_t *out, const char *s, size_t n);

/** Returns 1 if s[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int ds_utf8_valid(const char *s, size_t n);
/** Length (2..4) of the valid UTF-8 sequence at p (p < end, *p >= 0x80), 0 if invalid.
 *  For scanners that validate as they go (the YAML fast loader). */
size_t ds__utf8_seq(const unsigned char *p, const unsigned char *end);

#endif
