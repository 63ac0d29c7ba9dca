#ifndef D2L_THREAD_AFFINITY_H
#define D2L_THREAD_AFFINITY_H

/* The calling thread's CPU affinity (sched_setaffinity(2)), kept apart from other C modules:
   the glibc declarations need _GNU_SOURCE, which changes other shared types (fd_set) and so
   cannot be defined in a header that Swift modules share. */

/* Room for a cpu_set_t (1024 CPUs). */
#define D2L_CPU_MASK_BYTES 128

/* Saves the calling thread's CPU mask in `saved` and pins the thread to the lowest CPU in it.
   Returns 0, or -1 with errno set (the thread's mask is then unchanged). */
int d2l_pin_thread_to_first_cpu(unsigned char saved[D2L_CPU_MASK_BYTES]);

/* Gives the calling thread back the mask `saved` by d2l_pin_thread_to_first_cpu. Returns 0 or -1 with errno. */
int d2l_restore_thread_cpus(const unsigned char saved[D2L_CPU_MASK_BYTES]);

#endif
