#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* sched_getaffinity(2), sched_setaffinity(2) */
#endif
#include <sched.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

/* The calling thread's CPU affinity, as a byte mask (bit N of byte N/8: CPU N); see sched_setaffinity(2). */
static inline int d2l_get_thread_affinity(cpu_set_t *set) { return sched_getaffinity(0, sizeof(cpu_set_t), set); }
static inline int d2l_set_thread_affinity(const cpu_set_t *set) { return sched_setaffinity(0, sizeof(cpu_set_t), set); }
