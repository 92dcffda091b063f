/* Drops to another uid, then execs a program; if the exec fails, says how, and whether the
 * process is dumpable (which a change of credentials clears, and which must stay so).
 *
 * usage: dropexec UID EXTRA PROGRAM [ARGS...]   EXTRA: how many 10-byte arguments to add
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: dropexec UID EXTRA PROGRAM [ARGS...]\n"); return 2; }
    uid_t uid = (uid_t)atoi(argv[1]);
    long extra = atol(argv[2]);
    char **args = calloc((size_t)(argc + extra), sizeof *args);
    int n = 0;
    for (int i = 3; i < argc; i++) args[n++] = argv[i];
    for (long i = 0; i < extra; i++) args[n++] = "xxxxxxxxxx";
    args[n] = NULL;
    if (setresgid(65534, 65534, 65534) || setresuid(uid, uid, uid)) { perror("setresuid"); return 2; }
    execv(args[0], args);
    printf("%s dumpable=%d\n", strerrorname_np(errno), prctl(PR_GET_DUMPABLE));
    return 1;
}
