/* Asks to be traced by its parent, as strace's and gdb's children do: prints "0" or the errno.
 *
 * usage: traceme
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>

int main(void) {
    if (ptrace(PTRACE_TRACEME, 0, 0, 0) == 0) {
        puts("0");
        return 0;
    }
    puts(errno == EPERM ? "EPERM" : strerror(errno));
    return 1;
}
