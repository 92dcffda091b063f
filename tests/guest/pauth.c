/* Which pointer-authentication algorithm the CPU says it implements, from ID_AA64ISAR1_EL1
 * (the kernel, and qemu-user, emulate the MRS for user space): "apa N api M", where APA is the
 * architected QARMA5 cipher and API an implementation-defined one. Elsewhere: "none". */
#include <stdio.h>

int main(void) {
#ifdef __aarch64__
    unsigned long isar1;
    __asm__ volatile("mrs %0, ID_AA64ISAR1_EL1" : "=r"(isar1));
    printf("apa %lu api %lu\n", (isar1 >> 4) & 0xf, (isar1 >> 8) & 0xf);
#else
    puts("none");
#endif
    return 0;
}
