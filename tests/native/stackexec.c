/* Exec a program again and again from the very bottom of a small stack.
 *
 * usage: stackexec COUNT PROGRAM [ARGS...]
 * Each round starts a thread with a 64 KiB stack, uses all of it but 1 to 4.5
 * KiB (varying from round to round), and from there forks, vforks or posix_spawns PROGRAM,
 * whose exit status must be 0. A fork or vfork child goes down to 64..576 bytes above the
 * bottom before it execs. Mappings left behind in this process count as a failed round. Prints the number of failed rounds; exits 1 if there was one.
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static char **child_argv;
static void *stack_lo;  /* the bottom of the current round's thread stack */
static int round_no;

/* execve with no stack of its own (the libc wrapper would need some). */
static inline __attribute__((always_inline)) long raw_execve(char *p, char **a, char **e) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(59), "D"(p), "S"(a), "d"(e)
                     : "rcx", "r11", "memory");
    return ret;
}

/* In a fork or vfork child: use the stack down to 64..576 bytes above its bottom, then exec. */
static void __attribute__((noinline)) tight_exec(void) {
    char here;
    size_t left = (size_t)((uintptr_t)&here - (uintptr_t)stack_lo);
    size_t tight = 64 + (size_t)(round_no * 53 % 512);
    if (left > tight) {
        volatile char *p = alloca(left - tight);
        p[0] = 1;
    }
    raw_execve(child_argv[0], child_argv, environ);
    _exit(127);
}

struct round { int n; int status; };

static int run(int how) {
    pid_t pid;
    if (how == 0) {
        pid = fork();
        if (pid == 0) tight_exec();
    } else if (how == 1) {
        pid = vfork();
        if (pid == 0) tight_exec();
    } else {
        if (posix_spawn(&pid, child_argv[0], NULL, NULL, child_argv, environ) != 0) return 127;
    }
    if (pid < 0) return 126;
    int st;
    if (waitpid(pid, &st, 0) < 0) return 125;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void *thread(void *arg) {
    struct round *r = arg;
    pthread_attr_t attr;
    void *lo;
    size_t size;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &lo, &size);
    pthread_attr_destroy(&attr);
    stack_lo = lo;
    round_no = r->n;
    char here;
    size_t slack = 1024 + (size_t)(r->n * 97 % 3584);  /* 1 .. 4.5 KiB left */
    size_t used = (size_t)((uintptr_t)&here - (uintptr_t)lo);
    if (used > slack) {
        volatile char *p = alloca(used - slack);
        p[0] = 1;
    }
    r->status = run(r->n % 3);
    return NULL;
}

static int mappings(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;
    if (!f) return -1;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: stackexec COUNT PROGRAM [ARGS...]\n"); return 2; }
    int count = atoi(argv[1]), failed = 0;
    child_argv = argv + 2;
    int before = -1;  /* counted after the first round, which sets up thread stacks and arenas */
    for (int i = 0; i < count; i++) {
        pthread_attr_t attr;
        pthread_t t;
        struct round r = { i, -1 };
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        if (pthread_create(&t, &attr, thread, &r) != 0) { perror("pthread_create"); return 2; }
        pthread_join(t, NULL);
        if (i == 0) before = mappings();
        if (r.status != 0) {
            failed++;
            fprintf(stderr, "round %d (%s): status %d\n", i,
                    (const char *[]){"fork", "vfork", "posix_spawn"}[i % 3], r.status);
        }
    }
    /* Nothing the children's execs needed may stay behind in this process's memory. */
    int grown = mappings() - before;
    if (grown > 2) {
        fprintf(stderr, "%d more mappings than at the start\n", grown);
        failed++;
    }
    printf("%d failed\n", failed);
    return failed != 0;
}
