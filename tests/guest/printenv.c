/* Prints the environment twice: environ, one entry a line, then a line
 * "--- /proc/self/environ" and that file's entries, one a line. */
#include <stdio.h>

extern char **environ;

int main(void)
{
    for (char **e = environ; *e; e++)
        printf("%s\n", *e);
    printf("--- /proc/self/environ\n");
    FILE *f = fopen("/proc/self/environ", "r");
    if (!f) {
        perror("/proc/self/environ");
        return 1;
    }
    int c;
    while ((c = getc(f)) != EOF)
        putchar(c == '\0' ? '\n' : c);
    fclose(f);
    return 0;
}
