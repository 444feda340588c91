/* CPU reference of inverted dropout (as torch.nn.Dropout in training): each element is kept with probability
 * 1 − p and scaled by 1/(1 − p), or zeroed. The mask comes from the counter-based Philox generator, so
 * element i depends only on (seed, stream, i): any thread count, and the CUDA twin in kernels/dropout.cu,
 * draw the same mask. */
#include <math.h>

#include "cpu/cpu_ops.h"
#include "fedmm/rng.h"

/* Below this many Philox blocks (4 elements each) the OpenMP fork costs more than the loop. */
#define DROPOUT_PAR_MIN_BLOCKS 8192

static uint32_t dropout_threshold(float p)
{
    /* kernels/dropout.cu computes the same. Keep iff the 32-bit word is ≥ ⌈p·2³²⌉: P(keep) = 1 − p to 2⁻³², in integers
     * so both devices agree exactly. p < 1 as a float is at most 1 − 2⁻²⁴, so the product stays below 2³². */
    if (!(p > 0.0f))
        return 0;
    double t = ceil((double)p * 4294967296.0);
    return t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
}

static float dropout_scale(float p) { return 1.0f / (1.0f - p); }

void fm_cpu_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p, uint64_t seed,
                            uint64_t stream)
{
    const uint32_t thr = dropout_threshold(p);
    const float scale = dropout_scale(p);
    const size_t blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (blocks > DROPOUT_PAR_MIN_BLOCKS)
    for (size_t b = 0; b < blocks; b++) {
        uint32_t w[4];
        fm_philox4x32(seed, stream, (uint64_t)b, w);
        for (size_t j = 0; j < 4 && 4 * b + j < n; j++) {
            size_t i = 4 * b + j;
            float s = w[j] >= thr ? scale : 0.0f;
            mask[i] = s;
            out[i] = inp[i] * s; /* read before the write: out may be inp */
        }
    }
}

void fm_cpu_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 4 * (size_t)DROPOUT_PAR_MIN_BLOCKS)
    for (size_t i = 0; i < n; i++)
        dinp[i] += dout[i] * mask[i];
}
