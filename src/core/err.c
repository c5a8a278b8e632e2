/* err.c - names and messages of DS_E* codes. */
#include "core/err.h"

#include <errno.h>

const char *ds_err_name(int code) {
  switch (code) {
  case DS_OK: return "OK";
#define X(name, msg) case DS_E##name: return "E" #name;
    DS_ERR_MAP(X)
#undef X
  default: return "EUNKNOWN";
  }
}

const char *ds_strerror(int code) {
  switch (code) {
  case DS_OK: return "success";
#define X(name, msg) case DS_E##name: return msg;
    DS_ERR_MAP(X)
#undef X
  default: return "unknown error";
  }
}

int ds_err_from_errno(int err) {
  switch (err) {
  case 0: return DS_OK;
  case ENOSPC:
  case EDQUOT: return DS_ENOSPC;
  case ENOMEM: return DS_ENOMEM;
  case ENOENT: return DS_ENOTFOUND;
  case EEXIST: return DS_EEXISTS;
  case EFBIG: return DS_ETOOBIG;
  case EINVAL: return DS_EINVAL;
  default: return DS_EIO;
  }
}
