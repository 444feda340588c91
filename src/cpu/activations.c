/* CPU reference of the elementwise activations: exact GELU (with erf, as nn.GELU()) and CLIP's QuickGELU,
 * x·σ(1.702x). */
#include <math.h>

#include "cpu/cpu_ops.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define QUICK_GELU_ALPHA 1.702f

/* Below this many elements the OpenMP fork costs more than the loop. */
#define ACT_PAR_MIN 32768

void fm_cpu_gelu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n > ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        /* 0.5·x·erfc(−x/√2) equals 0.5·x·(1 + erf(x/√2)) but keeps its relative precision for x ≪ 0, where
         * 1 + erf(·) would cancel. */
        out[i] = 0.5f * x * erfcf(-x * INV_SQRT2);
    }
}

void fm_cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
#pragma omp parallel for schedule(static) if (n > ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * erfcf(-x * INV_SQRT2);
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

void fm_cpu_quick_gelu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n > ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        /* expf overflows to +inf for very negative x, giving σ = 0 exactly — the right limit. */
        out[i] = x / (1.0f + expf(-QUICK_GELU_ALPHA * x));
    }
}

void fm_cpu_quick_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
#pragma omp parallel for schedule(static) if (n > ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float sig = 1.0f / (1.0f + expf(-QUICK_GELU_ALPHA * x));
        dinp[i] += dout[i] * (sig + QUICK_GELU_ALPHA * x * sig * (1.0f - sig));
    }
}
