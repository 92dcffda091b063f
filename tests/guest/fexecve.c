/* Runs a program from a file descriptor instead of a path.
 *
 *   fexecve PATH [ARG...]          open(PATH), then glibc's fexecve(3): execveat(fd, "", ...,
 *                                  AT_EMPTY_PATH), and when the kernel or emulator answers ENOSYS
 *                                  (qemu-user 7.2 has no execveat), execve("/proc/self/fd/N").
 *   execveat_empty PATH [ARG...]   (-DRAW_EMPTY_PATH) the raw syscall only:
 *                                  execveat(fd, "", argv, envp, AT_EMPTY_PATH)
 *   execveat_dirfd PATH [ARG...]   (-DVIA_DIRFD) the raw syscall with a directory fd:
 *                                  execveat(open(dirname(PATH)), basename(PATH), argv, envp, 0)
 *
 * The new program gets argv = [PATH, ARG...]. If the exec fails, prints the error and exits
 * 127 (ENOENT) or 126 (anything else, e.g. ENOSYS from an emulator without execveat).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH [ARG...]\n", argv[0]);
        return 2;
    }
#ifdef VIA_DIRFD
    char *dircopy = strdup(argv[1]), *basecopy = strdup(argv[1]);
    int fd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY);
#else
    int fd = open(argv[1], O_RDONLY);
#endif
    if (fd < 0) {
        fprintf(stderr, "%s: open %s: %s\n", argv[0], argv[1], strerror(errno));
        return 127;
    }
#if defined(VIA_DIRFD)
    syscall(SYS_execveat, fd, basename(basecopy), argv + 1, environ, 0);
#elif defined(RAW_EMPTY_PATH)
    syscall(SYS_execveat, fd, "", argv + 1, environ, AT_EMPTY_PATH);
#else
    fexecve(fd, argv + 1, environ);
#endif
    int err = errno;
    fprintf(stderr, "%s: exec %s: %s\n", argv[0], argv[1], strerror(err));
    return err == ENOENT ? 127 : 126;
}
