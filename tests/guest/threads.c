/* Exec from a multi-threaded process, or just run threads and join them.
 *
 *   threads_exec N PROG [ARG...]   starts N worker threads; once all are busy, worker 0 (not the
 *                                  main thread) calls execv(PROG, [PROG, ARG...]) while the
 *                                  others still run: the kernel's multi-threaded exec path.
 *   threads_join N                 (built with -DJOIN_ONLY) N threads each do some arithmetic,
 *                                  are joined, "joined N" is printed, exit status 0.
 *
 * A failed exec prints the error and exits 127.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_barrier_t started;
#ifndef JOIN_ONLY
static char **exec_argv;
#endif
static volatile unsigned long sink;

static unsigned long work(unsigned long seed)
{
    unsigned long x = seed;
    for (int i = 0; i < 2000000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static void *worker(void *arg)
{
    long id = (long)arg;
    sink += work((unsigned long)id);
    pthread_barrier_wait(&started);
#ifndef JOIN_ONLY
    if (id == 0) {
        execv(exec_argv[0], exec_argv);
        fprintf(stderr, "threads_exec: execv %s: %s\n", exec_argv[0], strerror(errno));
        _exit(127);
    }
    for (;;)
        sink += work((unsigned long)id);
#endif
    return NULL;
}

int main(int argc, char **argv)
{
#ifdef JOIN_ONLY
    if (argc != 2) {
        fprintf(stderr, "usage: %s N\n", argv[0]);
        return 2;
    }
#else
    if (argc < 3) {
        fprintf(stderr, "usage: %s N PROG [ARG...]\n", argv[0]);
        return 2;
    }
    exec_argv = argv + 2;
#endif
    long n = strtol(argv[1], NULL, 10);
    if (n < 1 || n > 256) {
        fprintf(stderr, "%s: N must be 1..256\n", argv[0]);
        return 2;
    }
    pthread_t *tids = calloc((size_t)n, sizeof *tids);
    pthread_barrier_init(&started, NULL, (unsigned)n);
    for (long i = 0; i < n; i++) {
        int rc = pthread_create(&tids[i], NULL, worker, (void *)i);
        if (rc != 0) {
            fprintf(stderr, "%s: pthread_create: %s\n", argv[0], strerror(rc));
            return 1;
        }
    }
    for (long i = 0; i < n; i++)
        pthread_join(tids[i], NULL);
    printf("joined %ld\n", n);
    return 0;
}
