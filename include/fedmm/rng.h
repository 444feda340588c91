/* Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011). Element i of a fill depends only
 * on (seed, stream offset, i), so the same seed gives the same bits with any thread count, on any
 * device, and a stream can be skipped forward without generating what it skips. */
#ifndef FEDMM_RNG_H
#define FEDMM_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_rng {
    uint64_t seed;   /* the Philox key */
    uint64_t stream; /* high 64 bits of the counter: independent streams never overlap */
    uint64_t offset; /* low 64 bits: the next block of 4 words; advanced by every draw */
} fm_rng;

/* One Philox-4x32-10 block: four 32-bit words for (key, counter). */
void fm_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]);

/* A generator for `seed`, stream `stream` (independent streams for sites, layers, ...). */
fm_rng fm_rng_make(uint64_t seed, uint64_t stream);

/* n uniform floats in [0, 1) (24-bit resolution). Parallel over threads, thread-count independent. */
void fm_rng_uniform(fm_rng *rng, float *out, size_t n);
/* n normal floats with the given mean and standard deviation (Box–Muller). */
void fm_rng_normal(fm_rng *rng, float *out, size_t n, float mean, float std);
/* One uniform 64-bit integer. */
uint64_t fm_rng_u64(fm_rng *rng);
/* One integer uniform in [0, n), n > 0, without modulo bias. */
uint64_t fm_rng_below(fm_rng *rng, uint64_t n);
/* One double uniform in [0, 1) (53-bit resolution). */
double fm_rng_double(fm_rng *rng);
/* One standard normal double. */
double fm_rng_gaussian(fm_rng *rng);
/* A uniformly random permutation of 0..n-1 into perm (Fisher–Yates). */
void fm_rng_permutation(fm_rng *rng, int32_t *perm, size_t n);

#ifdef __cplusplus
}
#endif
#endif
