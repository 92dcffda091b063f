/* exitcode N: exits with status N (0..255). */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s N\n", argv[0]);
        return 2;
    }
    return atoi(argv[1]) & 0xff;
}
