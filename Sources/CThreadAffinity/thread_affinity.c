#define _GNU_SOURCE
#include <sched.h>
#include <string.h>
#include <errno.h>
#include "thread_affinity.h"

_Static_assert(sizeof(cpu_set_t) <= D2L_CPU_MASK_BYTES, "cpu_set_t is larger than the saved mask");

int d2l_pin_thread_to_first_cpu(unsigned char saved[D2L_CPU_MASK_BYTES]) {
    cpu_set_t allowed, first;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
    memcpy(saved, &allowed, sizeof allowed);
    CPU_ZERO(&first);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &allowed)) {
            CPU_SET(cpu, &first);
            return sched_setaffinity(0, sizeof first, &first);
        }
    }
    errno = ESRCH;
    return -1;
}

int d2l_restore_thread_cpus(const unsigned char saved[D2L_CPU_MASK_BYTES]) {
    cpu_set_t allowed;
    memcpy(&allowed, saved, sizeof allowed);
    return sched_setaffinity(0, sizeof allowed, &allowed);
}
