/* CPU reference of row-wise L2 normalisation, out = x / max(‖x‖, 1e-12) as torch.nn.functional.normalize:
 * the embeddings fed to the contrastive losses. The norm of each row is kept for backward. */
#include <math.h>

#include "cpu/cpu_ops.h"

#define L2NORM_EPS 1e-12

void fm_cpu_l2norm_forward(float *out, float *norm, const float *inp, int N, int C)
{
    const size_t Cs = (size_t)C;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * Cs;
        float *o = out + (size_t)n * Cs;
        double ss = 0.0;
        for (size_t c = 0; c < Cs; c++)
            ss += (double)x[c] * x[c];
        const double nr = sqrt(ss);
        const double denom = nr > L2NORM_EPS ? nr : L2NORM_EPS;
        norm[n] = (float)nr;
        for (size_t c = 0; c < Cs; c++)
            o[c] = (float)(x[c] / denom);
    }
}

void fm_cpu_l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N, int C)
{
    if (!dinp)
        return;
    const size_t Cs = (size_t)C;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *dy = dout + (size_t)n * Cs;
        const float *y = out + (size_t)n * Cs;
        float *dx = dinp + (size_t)n * Cs;
        if (!((double)norm[n] > L2NORM_EPS)) {
            /* the clamp is active: out = x / eps is linear in x */
            for (size_t c = 0; c < Cs; c++)
                dx[c] += (float)(dy[c] / L2NORM_EPS);
            continue;
        }
        /* d(x/‖x‖) = (dy − y·(y·dy)) / ‖x‖ */
        double dot = 0.0;
        for (size_t c = 0; c < Cs; c++)
            dot += (double)y[c] * dy[c];
        const double inv = 1.0 / norm[n];
        for (size_t c = 0; c < Cs; c++)
            dx[c] += (float)((dy[c] - y[c] * dot) * inv);
    }
}
