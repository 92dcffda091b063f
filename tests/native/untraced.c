/* Runs a program in a child made by clone(CLONE_UNTRACED), which a tracer does not follow.
 *
 * usage: untraced PROGRAM [ARGS...]   exits with the child's status (127: exec failed).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: untraced PROGRAM [ARGS...]\n"); return 2; }
    long pid = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) { perror("clone"); return 2; }
    if (pid == 0) {
        execv(argv[1], argv + 1);
        fprintf(stderr, "untraced: exec %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }
    int st;
    if (waitpid((pid_t)pid, &st, 0) < 0) { perror("waitpid"); return 2; }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
