/* Thread count for fedmm's CPU work (OpenMP loops and OpenBLAS). */
#ifndef FEDMM_THREADS_H
#define FEDMM_THREADS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Sets the number of CPU threads used by fedmm's loops and by OpenBLAS (n >= 1). */
void fm_set_num_threads(int n);
int fm_get_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif
