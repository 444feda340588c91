/* CUDA twin of src/cpu/dropout.c: inverted dropout whose mask is the CPU's bit for bit. Each thread draws one
 * Philox-4x32-10 block (key seed, counter (stream, b)) for elements 4b..4b+3, exactly as the CPU loop does,
 * and keeps an element iff its word is ≥ ⌈p·2³²⌉ (an integer threshold computed once on the host, so no
 * float comparison can differ between the devices). */
#include <math.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* src/core/rng.c's fm_philox4x32, word for word (host-callable too, so it can be checked without a GPU). */
static __host__ __device__ inline void philox4x32_10(uint64_t key, uint64_t counter_hi, uint64_t counter_lo,
                                                     uint32_t out[4])
{
    uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
    uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
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

/* As src/cpu/dropout.c's dropout_threshold. */
static uint32_t dropout_threshold(float p)
{
    if (!(p > 0.0f))
        return 0;
    double t = ceil((double)p * 4294967296.0);
    return t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
}

static __global__ void dropout_forward_kernel(float *out,       // (n), may be inp
                                              float *mask,      // (n)
                                              const float *inp, // (n)
                                              size_t n, size_t blocks, uint32_t thr, float scale, uint64_t seed,
                                              uint64_t stream)
{
    for (FM_GRID_STRIDE(b, blocks)) {
        uint32_t w[4];
        philox4x32_10(seed, stream, (uint64_t)b, w);
        for (size_t j = 0; j < 4 && 4 * b + j < n; j++) {
            size_t i = 4 * b + j;
            float s = w[j] >= thr ? scale : 0.0f;
            mask[i] = s;
            out[i] = __fmul_rn(inp[i], s);
        }
    }
}

static __global__ void dropout_backward_kernel(float *dinp,       // (n), accumulated
                                               const float *dout, // (n)
                                               const float *mask, // (n)
                                               size_t n)
{
    /* __fmul_rn keeps nvcc from contracting into an FMA: the CPU rounds the product, then the sum. */
    for (FM_GRID_STRIDE(i, n))
        dinp[i] += __fmul_rn(dout[i], mask[i]);
}

extern "C" fm_status fm_cuda_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p,
                                             uint64_t seed, uint64_t stream)
{
    if (n == 0)
        return FM_OK;
    if (!out || !mask || !inp)
        return fm_error(FM_ERR_INVALID_ARG, "cuda dropout_forward: NULL %s", !out ? "out" : !mask ? "mask" : "inp");
    if (!(p >= 0.0f && p < 1.0f))
        return fm_error(FM_ERR_INVALID_ARG, "cuda dropout_forward: p = %g, expected [0, 1)", (double)p);
    size_t blocks = (n + 3) / 4;
    return FM_LAUNCH_1D(dropout_forward_kernel, blocks, out, mask, inp, n, blocks, dropout_threshold(p),
                        1.0f / (1.0f - p), seed, stream);
}

extern "C" fm_status fm_cuda_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n)
{
    if (n == 0 || !dinp)
        return FM_OK;
    if (!dout || !mask)
        return fm_error(FM_ERR_INVALID_ARG, "cuda dropout_backward: NULL %s", !dout ? "dout" : "mask");
    return FM_LAUNCH_1D(dropout_backward_kernel, n, dinp, dout, mask, n);
}
