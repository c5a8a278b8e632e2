/* clock.h - wall and monotonic time.
 *
 * Provides: milliseconds since the epoch, a monotonic millisecond clock, and the event
 * timestamp format of the contract (ISO-8601 UTC with milliseconds and Z).
 */
#ifndef DS_CORE_CLOCK_H
#define DS_CORE_CLOCK_H

#include <stdint.h>

#define DS_ISO8601_LEN 24 /* "2026-01-20T12:00:00.000Z" */

int64_t ds_clock_wall_ms(void);
uint64_t ds_clock_mono_ms(void);
uint64_t ds_clock_mono_ns(void);
/** Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" and a NUL into out (at least 25 bytes). */
void ds_clock_iso8601(int64_t wall_ms, char *out);
/** Parses an RFC 3339 timestamp ("2026-01-20T12:00:00Z", fractional seconds and
 *  numeric offsets allowed) into epoch milliseconds; returns 0 on success, -1 if invalid. */
int ds_clock_parse_rfc3339(const char *s, int64_t *out_ms);

#endif
