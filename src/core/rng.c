/* Philox-4x32-10 counter-based generator. Draw k of a fill uses block (offset + k/4), word k%4; the fill
 * then advances offset past the blocks it used, so results do not depend on how the loop is split. */
#include "fedmm/rng.h"

#include <math.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t *hi)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

void fm_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
    uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = mulhilo(PHILOX_M0, c0, &hi0);
        uint32_t lo1 = mulhilo(PHILOX_M1, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

fm_rng fm_rng_make(uint64_t seed, uint64_t stream) { return (fm_rng){.seed = seed, .stream = stream, .offset = 0}; }

static inline float u32_to_unit_float(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

void fm_rng_uniform(fm_rng *rng, float *out, size_t n)
{
    const uint64_t base = rng->offset;
    const size_t blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (blocks > 4096)
    for (size_t b = 0; b < blocks; b++) {
        uint32_t w[4];
        fm_philox4x32(rng->seed, rng->stream, base + b, w);
        for (size_t j = 0; j < 4 && 4 * b + j < n; j++)
            out[4 * b + j] = u32_to_unit_float(w[j]);
    }
    rng->offset += blocks;
}

void fm_rng_normal(fm_rng *rng, float *out, size_t n, float mean, float std)
{
    /* Each block of four words gives two Box–Muller pairs (32-bit uniforms: tails to about 6.6 σ). */
    const uint64_t base = rng->offset;
    const size_t blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (blocks > 4096)
    for (size_t b = 0; b < blocks; b++) {
        uint32_t w[4];
        fm_philox4x32(rng->seed, rng->stream, base + b, w);
        double z[4];
        for (int p = 0; p < 2; p++) {
            double u1 = ((double)w[2 * p] + 1.0) / 4294967297.0; /* (0, 1): log is finite */
            double u2 = (double)w[2 * p + 1] / 4294967296.0;
            double r = sqrt(-2.0 * log(u1));
            z[2 * p] = r * cos(2.0 * M_PI * u2);
            z[2 * p + 1] = r * sin(2.0 * M_PI * u2);
        }
        for (size_t j = 0; j < 4 && 4 * b + j < n; j++)
            out[4 * b + j] = (float)(mean + std * z[j]);
    }
    rng->offset += blocks;
}

uint64_t fm_rng_u64(fm_rng *rng)
{
    uint32_t w[4];
    fm_philox4x32(rng->seed, rng->stream, rng->offset++, w);
    return ((uint64_t)w[0] << 32) | w[1];
}

uint64_t fm_rng_below(fm_rng *rng, uint64_t n)
{
    if (n <= 1)
        return 0;
    /* Rejection sampling removes the modulo bias. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = fm_rng_u64(rng);
    } while (x >= limit);
    return x % n;
}

double fm_rng_double(fm_rng *rng) { return (double)(fm_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0); }

double fm_rng_gaussian(fm_rng *rng)
{
    double u1 = ((double)(fm_rng_u64(rng) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = fm_rng_double(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void fm_rng_permutation(fm_rng *rng, int32_t *perm, size_t n)
{
    for (size_t i = 0; i < n; i++)
        perm[i] = (int32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)fm_rng_below(rng, i);
        int32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}
