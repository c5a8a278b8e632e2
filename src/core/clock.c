/* clock.c - wall/monotonic clocks and ISO-8601 formatting. */
#include "core/clock.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t ds_clock_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t ds_clock_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ds_clock_mono_ms(void) { return ds_clock_mono_ns() / 1000000u; }

void ds_clock_iso8601(int64_t wall_ms, char *out) {
  time_t secs = (time_t)(wall_ms / 1000);
  int ms = (int)(wall_ms % 1000);
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  struct tm tm;
  gmtime_r(&secs, &tm);
  /* format into a roomy buffer: the compiler cannot know tm's fields are small */
  char tmp[64];
  snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  memcpy(out, tmp, DS_ISO8601_LEN);
  out[DS_ISO8601_LEN] = '\0';
}

static int digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) return -1;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 0;
}

int ds_clock_parse_rfc3339(const char *s, int64_t *out_ms) {
  int Y, M, D, h, m, sec;
  size_t n = strlen(s);
  if (n < 20) return -1;
  if (digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) || s[7] != '-' ||
      digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &m) || s[16] != ':' ||
      digits(s + 17, 2, &sec))
    return -1;
  if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) return -1;
  const char *p = s + 19;
  int frac_ms = 0;
  if (*p == '.') {
    p++;
    int nd = 0;
    while (isdigit((unsigned char)*p)) {
      if (nd < 3) frac_ms = frac_ms * 10 + (*p - '0');
      nd++;
      p++;
    }
    if (nd == 0) return -1;
    while (nd < 3) {
      frac_ms *= 10;
      nd++;
    }
  }
  int off_min = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int oh, om;
    int sign = *p == '-' ? -1 : 1;
    if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om)) return -1;
    if (oh > 23 || om > 59) return -1;
    off_min = sign * (oh * 60 + om);
    p += 6;
  } else {
    return -1;
  }
  if (*p) return -1;
  /* days from civil (Howard Hinnant's algorithm) */
  int y = Y - (M <= 2);
  int era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (unsigned)((153 * (M + (M > 2 ? -3 : 9)) + 2) / 5 + D - 1);
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  int64_t days = (int64_t)era * 146097 + (int64_t)doe - 719468;
  int64_t t = days * 86400 + h * 3600 + m * 60 + sec - (int64_t)off_min * 60;
  *out_ms = t * 1000 + frac_ms;
  return 0;
}
