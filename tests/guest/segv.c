/* Dies of SIGSEGV by writing through a null pointer (raise() as a fallback). */
#include <signal.h>

int main(void)
{
    volatile int *volatile p = 0;
    *p = 42;
    raise(SIGSEGV);
    return 0;
}
