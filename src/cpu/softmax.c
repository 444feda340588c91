/* CPU reference of the softmax over the last dim, max-shifted so that large logits do not overflow. */
#include <math.h>

#include "cpu/cpu_ops.h"

void fm_cpu_softmax_forward(float *out, const float *inp, int N, int C)
{
    if (N <= 0 || C <= 0)
        return;
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)C > 16384)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * (size_t)C;
        float *y = out + (size_t)n * (size_t)C;
        float mx = x[0];
        for (int c = 1; c < C; c++)
            mx = x[c] > mx ? x[c] : mx;
        double sum = 0.0;
        for (int c = 0; c < C; c++) {
            y[c] = expf(x[c] - mx);
            sum += y[c];
        }
        float inv = (float)(1.0 / sum);
        for (int c = 0; c < C; c++)
            y[c] *= inv;
    }
}

void fm_cpu_softmax_backward(float *dinp, const float *out, const float *dout, int N, int C)
{
    if (N <= 0 || C <= 0)
        return;
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)C > 16384)
    for (int n = 0; n < N; n++) {
        const float *y = out + (size_t)n * (size_t)C;
        const float *dy = dout + (size_t)n * (size_t)C;
        float *dx = dinp + (size_t)n * (size_t)C;
        /* dx = y ⊙ (dy − ⟨y, dy⟩) */
        double dot = 0.0;
        for (int c = 0; c < C; c++)
            dot += (double)y[c] * dy[c];
        for (int c = 0; c < C; c++)
            dx[c] += (float)(y[c] * (dy[c] - dot));
    }
}
