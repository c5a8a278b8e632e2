/* event.c - EventInput validation and Event rendering (JSON + YAML in one pass each). */
#include "stream/event.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "store/json.h"
#include "store/yaml.h"
#include "stream/streams.h"

/* Last member with that key: JSON.parse keeps the last duplicate, and so do we. */
static ds_value_t *get_last(const ds_value_t *obj, const char *key) {
  size_t kl = strlen(key);
  for (size_t i = obj->u.obj.len; i-- > 0;) {
    const ds_member_t *m = &obj->u.obj.items[i];
    if (m->klen == kl && memcmp(m->key, key, kl) == 0) return m->val;
  }
  return NULL;
}

void ds_number_shortest(double v, char *out, size_t outlen) {
  if (v == 0) {
    snprintf(out, outlen, "0"); /* JavaScript prints -0 as "0" too */
    return;
  }
  if (!isfinite(v)) {
    snprintf(out, outlen, "%s", isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity"));
    return;
  }
  if (v == floor(v) && fabs(v) < 1e21) {
    snprintf(out, outlen, "%.0f", v);
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(out, outlen, "%.*g", prec, v);
    if (strtod(out, NULL) == v) return;
  }
}

/* createdAt for wall_ms: ds_clock_iso8601 (gmtime_r + snprintf) cost as much as the rest
 * of an event's rendering, and appends come many per second, so the formatted second is
 * cached and only the milliseconds are patched in. One loop thread renders events; the
 * cache is only an optimisation (a stale entry is never used: the second is compared). */
static void created_at(int64_t wall_ms, char out[DS_ISO8601_LEN + 1]) {
  static int64_t cached_sec = INT64_MIN;
  static char cached[DS_ISO8601_LEN + 1];
  int64_t sec = wall_ms / 1000, ms = wall_ms % 1000;
  if (ms < 0) {
    ms += 1000;
    sec -= 1;
  }
  if (sec != cached_sec) {
    ds_clock_iso8601(sec * 1000, cached);
    /* the layout is fixed ("...SS.000Z") for years 0000-9999; otherwise do not cache */
    if (cached[19] != '.' || cached[23] != 'Z') {
      ds_clock_iso8601(wall_ms, out);
      return;
    }
    cached_sec = sec;
  }
  memcpy(out, cached, DS_ISO8601_LEN + 1);
  out[20] = (char)('0' + ms / 100);
  out[21] = (char)('0' + ms / 10 % 10);
  out[22] = (char)('0' + ms % 10);
}

static int fail(char *err, size_t errlen, const char *msg) {
  snprintf(err, errlen, "%s", msg);
  return DS_EINVAL;
}

int ds_event_render(ds_arena_t *a, const char *body, size_t len, int max_depth, const char *path,
                    uint64_t offset, int64_t created_ms, ds_buf_t *yaml, ds_buf_t *json,
                    ds_event_out_t *out, char *err, size_t errlen) {
  ds_value_t *in = NULL;
  char perr[200];
  if (ds_json_parse(a, body, len, max_depth, &in, perr, sizeof perr) != 0) {
    snprintf(err, errlen, "%s", perr);
    return DS_EINVAL;
  }
  if (in->type != DS_V_OBJECT) return fail(err, errlen, "body must be a JSON object");
  ds_value_t *type = get_last(in, "type");
  if (!type) return fail(err, errlen, "missing field: type");
  if (type->type != DS_V_STRING) return fail(err, errlen, "type must be a string");
  if (type->u.str.len == 0) return fail(err, errlen, "type must not be empty");
  ds_value_t *payload = get_last(in, "payload");
  if (!payload) return fail(err, errlen, "missing field: payload");
  if (payload->type != DS_V_OBJECT) return fail(err, errlen, "payload must be a JSON object");
  ds_value_t *version = get_last(in, "version");
  ds_value_t *ver;
  if (!version) {
    ver = ds_value_string(a, "1", 1);
  } else if (version->type == DS_V_STRING) {
    ver = version;
  } else if (version->type == DS_V_NUMBER) {
    char num[40];
    double d = strtod(version->u.str.s, NULL);
    if (!isfinite(d)) return fail(err, errlen, "version must be a finite number or a string");
    ds_number_shortest(d, num, sizeof num);
    ver = ds_value_string(a, num, strlen(num));
  } else {
    return fail(err, errlen, "version must be a string or a number");
  }

  char off[17];
  ds_offset_format(offset, off);
  char ts[DS_ISO8601_LEN + 1];
  created_at(created_ms, ts);

  ds_value_t *ev = ds_value_object(a, 6);
  ds_value_object_add(a, ev, "type", 4, type);
  ds_value_object_add(a, ev, "payload", 7, payload);
  ds_value_object_add(a, ev, "version", 7, ver);
  ds_value_object_add(a, ev, "path", 4, ds_value_string(a, path, strlen(path)));
  ds_value_object_add(a, ev, "offset", 6, ds_value_string(a, off, 16));
  ds_value_object_add(a, ev, "createdAt", 9, ds_value_string(a, ts, DS_ISO8601_LEN));

  ds_yaml_emit_doc(yaml, ev);
  ds_json_write(json, ev);
  if (out) {
    out->type = type->u.str.s;
    out->type_len = type->u.str.len;
  }
  return 0;
}
