/* CPU reference of the fully connected layer, out = inp · Wᵀ + b, with OpenBLAS for the GEMMs. */
#include <string.h>

#include <cblas.h>

#include "cpu/cpu_ops.h"

void fm_cpu_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    if (N <= 0 || OC <= 0)
        return;
    float beta = 0.0f;
    if (bias) {
        /* Seed out with the bias so that the GEMM adds onto it (beta = 1) instead of a second pass. */
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)OC > 65536)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * (size_t)OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    if (C <= 0) {
        if (!bias)
            memset(out, 0, (size_t)N * (size_t)OC * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

void fm_cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, int N, int C, int OC)
{
    if (N <= 0 || OC <= 0)
        return;        /* no output, so nothing flows back */
    if (dinp && C > 0) /* dinp (N, C) += dout (N, OC) · W (OC, C) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    if (dweight && C > 0) /* dW (OC, C) += doutᵀ (OC, N) · inp (N, C) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) {
        /* Column sums in double, each column by one thread in a fixed order: deterministic. */
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)OC > 65536)
        for (int o = 0; o < OC; o++) {
            double s = 0.0;
            for (size_t n = 0; n < (size_t)N; n++)
                s += dout[n * (size_t)OC + (size_t)o];
            dbias[o] += (float)s;
        }
    }
}
