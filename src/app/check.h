/* check.h - the `durable-stream check [--repair] DATA_DIR` subcommand.
 *
 * Provides: ds_check_main(), the command line around the offline checker (store/check.h):
 * arguments, help, the closing summary line and the exit status, which follows fsck(8):
 *   0  no damage found
 *   1  damage found and all of it repaired (--repair)
 *   4  damage found and left (without --repair, or not repairable)
 *   8  operational error (the directory cannot be read, or a server is using it)
 *   16 usage error
 * Must not: run against a directory a server uses (it refuses: exit 8).
 */
#ifndef DS_APP_CHECK_H
#define DS_APP_CHECK_H

/** argv[0] is "check". Returns the process exit status. */
int ds_check_main(int argc, char **argv);

#endif
