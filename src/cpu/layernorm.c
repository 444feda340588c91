/* CPU reference of layer normalisation over the last dim (biased variance, as PyTorch), saving the mean
 * and reciprocal standard deviation of each row for backward. */
#include <math.h>

#include "cpu/cpu_ops.h"

/* Columns per block when reducing dweight / dbias over rows: each thread owns whole columns, so the sums
 * need no atomics and come out the same for any thread count. */
#define LN_COL_BLOCK 64

void fm_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                              const float *bias, int N, int C, float eps)
{
    if (N <= 0 || C <= 0)
        return;
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)C > 16384)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * (size_t)C;
        float *y = out + (size_t)n * (size_t)C;
        /* Two passes in double: one-pass E[x²] − E[x]² cancels badly when |mean| ≫ std. */
        double m = 0.0;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
        double v = 0.0;
        for (int c = 0; c < C; c++) {
            double d = x[c] - m;
            v += d * d;
        }
        v /= C;
        double s = 1.0 / sqrt(v + (double)eps);
        for (int c = 0; c < C; c++)
            y[c] = (float)((x[c] - m) * s * weight[c] + bias[c]);
        mean[n] = (float)m;
        rstd[n] = (float)s;
    }
}

void fm_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                               const float *weight, const float *mean, const float *rstd, int N, int C)
{
    if (N <= 0 || C <= 0)
        return;
    if (dinp) {
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)C > 16384)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * (size_t)C;
            const float *dy = dout + (size_t)n * (size_t)C;
            float *dx = dinp + (size_t)n * (size_t)C;
            double m = mean[n], s = rstd[n];
            /* dx = s · (g − mean(g) − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ w, x̂ the normalised input. */
            double g_mean = 0.0, gx_mean = 0.0;
            for (int c = 0; c < C; c++) {
                double g = (double)dy[c] * weight[c];
                g_mean += g;
                gx_mean += g * ((x[c] - m) * s);
            }
            g_mean /= C;
            gx_mean /= C;
            for (int c = 0; c < C; c++) {
                double g = (double)dy[c] * weight[c];
                double xhat = (x[c] - m) * s;
                dx[c] += (float)(s * (g - g_mean - xhat * gx_mean));
            }
        }
    }
    if (dweight || dbias) {
        int nblocks = (C + LN_COL_BLOCK - 1) / LN_COL_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)C > 16384)
        for (int blk = 0; blk < nblocks; blk++) {
            int c0 = blk * LN_COL_BLOCK;
            int c1 = c0 + LN_COL_BLOCK < C ? c0 + LN_COL_BLOCK : C;
            double dw[LN_COL_BLOCK] = {0}, db[LN_COL_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * (size_t)C;
                const float *dy = dout + (size_t)n * (size_t)C;
                double m = mean[n], s = rstd[n];
                for (int c = c0; c < c1; c++) {
                    dw[c - c0] += (double)dy[c] * ((x[c] - m) * s);
                    db[c - c0] += dy[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dweight)
                    dweight[c] += (float)dw[c - c0];
                if (dbias)
                    dbias[c] += (float)db[c - c0];
            }
        }
    }
}
