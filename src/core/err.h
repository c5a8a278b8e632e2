/* err.h - status codes of the C core.
 *
 * Provides: the negative DS_E* codes every core function returns (0 = success), libuv
 * style, with a stable short name and a human message for each.
 * Must not: carry context; callers put detail into their own message buffers.
 */
#ifndef DS_CORE_ERR_H
#define DS_CORE_ERR_H

#define DS_ERR_MAP(X)                                              \
  X(INVAL, "invalid argument")                                     \
  X(NOMEM, "out of memory")                                        \
  X(IO, "I/O error")                                               \
  X(NOSPC, "no space left on device")                              \
  X(TOOBIG, "too large")                                           \
  X(NOTFOUND, "not found")                                         \
  X(EXISTS, "already exists")                                      \
  X(CORRUPT, "corrupt data")                                       \
  X(CLOSED, "closed")                                              \
  X(BUSY, "busy")                                                  \
  X(TIMEOUT, "timed out")                                          \
  X(CONFLICT, "conflict")                                          \
  X(GONE, "gone")

enum {
  DS_OK = 0,
#define X(name, msg) DS_E##name,
  DS_ERR_FIRST_ = -1000,
  DS_ERR_MAP(X)
#undef X
};

/** Short stable name of a code ("EINVAL"...); "OK" for 0; never NULL. */
const char *ds_err_name(int code);
/** Human message of a code; never NULL. */
const char *ds_strerror(int code);
/** Maps an errno value (positive) to a DS_E* code. */
int ds_err_from_errno(int err);

#endif
