/* check.c - `durable-stream check [--repair] DATA_DIR` (see check.h). */
#include "app/check.h"

#include <stdio.h>
#include <string.h>

#include "store/check.h"

static void usage(FILE *f) {
  fputs("usage: durable-stream check [--repair] DATA_DIR\n"
        "Verifies every stream under DATA_DIR/streams with the server stopped: each document\n"
        "decodes, offsets are gap-free and in order from the stream's first offset, the .idx,\n"
        ".offset and .base sidecars agree with the documents, the .meta sidecar is a JSON\n"
        "object, nothing is torn at the end, no stray temporary or orphaned files.\n"
        "One line per finding: FILE: byte N: WHAT.\n"
        "--repair  also fix what can be fixed without losing acknowledged data: remove exact\n"
        "          duplicate documents, move the first damaged document and everything after\n"
        "          it (or a torn tail) into FILE.damaged-<unix ms> (kept, never deleted) so the\n"
        "          stream continues at its last intact offset, rewrite the sidecars, remove\n"
        "          stray files. A damaged .meta is reported, not repaired. Prints each action.\n"
        "It refuses to run while a server has DATA_DIR open (and a server does not start\n"
        "while it runs).\n"
        "Exit status (as fsck): 0 clean, 1 damage found and repaired, 4 damage left,\n"
        "8 operational error (unreadable, or in use by a server), 16 usage error.\n",
        f);
}

int ds_check_main(int argc, char **argv) {
  int repair = 0;
  const char *dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(argv[i], "--repair") == 0) {
      repair = 1;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      fprintf(stderr, "durable-stream check: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 16;
    } else if (dir) {
      fprintf(stderr, "durable-stream check: more than one DATA_DIR ('%s', '%s')\n", dir, argv[i]);
      usage(stderr);
      return 16;
    } else {
      dir = argv[i];
    }
  }
  if (!dir) {
    fprintf(stderr, "durable-stream check: DATA_DIR missing\n");
    usage(stderr);
    return 16;
  }
  ds_check_result_t r;
  int rc = ds_store_check(dir, repair, stdout, &r);
  int status = rc < 0 ? 8 : r.left ? 4 : r.repaired ? 1 : 0;
  printf("durable-stream check: %s: %zu streams, %zu with findings (%zu findings)", dir, r.streams,
         r.damaged, r.findings);
  if (repair) printf(", %zu repaired, %zu left", r.repaired, r.left);
  if (r.notes) printf(", %zu notes", r.notes);
  printf("%s\n", status == 0   ? ": clean"
                 : status == 1 ? ": repaired"
                 : status == 4 ? (repair ? ": damage left" : ": damaged (--repair fixes what it can)")
                               : ": could not check everything");
  fflush(stdout);
  return status;
}
