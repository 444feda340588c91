/* CPU reference of global-norm gradient clipping. The sum of squares runs in double through fixed
 * chunks added in order, so the norm is the same bits with any thread count. */
#include <math.h>

#include "cpu/cpu_ops.h"

enum { CLIP_CHUNKS = 64 };

double fm_cpu_sum_squares(const float *x, size_t n)
{
    double part[CLIP_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < CLIP_CHUNKS; ch++) {
        const size_t lo = n * (size_t)ch / CLIP_CHUNKS, hi = n * (size_t)(ch + 1) / CLIP_CHUNKS;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++)
            s += (double)x[i] * x[i];
        part[ch] = s;
    }
    double total = 0.0;
    for (int ch = 0; ch < CLIP_CHUNKS; ch++)
        total += part[ch];
    return total;
}

float fm_cpu_clip_grad_norm(float *g, size_t n, float max_norm)
{
    const double norm = sqrt(fm_cpu_sum_squares(g, n));
    const float normf = (float)norm;
    /* A NaN/Inf gradient (or a norm too large for a float) leaves g alone: scaling would spread the
     * NaN, or zero every gradient, and the caller is told through the non-finite return value. */
    if (!isfinite(normf))
        return normf;
    if (norm > (double)max_norm) {
        const float s = (float)((double)max_norm / norm);
        const long long nn = (long long)n;
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < nn; i++)
            g[i] *= s;
    }
    return normf;
}
