/* CUDA twin of src/cpu/layernorm.c: layer normalisation over the last dim (biased variance, as PyTorch), one
 * warp per row in fp32 with a two-pass mean and variance, saving mean and rstd for backward. dweight and dbias
 * are column sums over rows, done deterministically (kernels/rows_cols.cuh): no float atomics. */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/rows_cols.cuh"

static __global__ void layernorm_forward_kernel(float *out,          // (N, C)
                                                float *mean,         // (N)
                                                float *rstd,         // (N)
                                                const float *inp,    // (N, C)
                                                const float *weight, // (C)
                                                const float *bias,   // (C)
                                                size_t N, size_t C, float eps)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const float *x = inp + row * C;
    float *y = out + row * C;
    /* Two passes, as the CPU reference: one-pass E[x²] − E[x]² cancels badly when |mean| ≫ std. */
    float s = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        s += x[c];
    const float m = fm_warp_sum(s) / (float)C;
    float v = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP) {
        float d = x[c] - m;
        v += d * d;
    }
    /* 1/sqrtf rather than rsqrtf: both IEEE-rounded, where rsqrtf errs by up to 2 ulp. */
    const float r = 1.0f / sqrtf(fm_warp_sum(v) / (float)C + eps);
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        y[c] = (x[c] - m) * r * weight[c] + bias[c];
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

static __global__ void layernorm_backward_dinp_kernel(float *dinp,         // (N, C), accumulated
                                                      const float *dout,   // (N, C)
                                                      const float *inp,    // (N, C)
                                                      const float *weight, // (C)
                                                      const float *mean,   // (N)
                                                      const float *rstd,   // (N)
                                                      size_t N, size_t C)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const float *x = inp + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    const float m = mean[row], s = rstd[row];
    /* dx = s · (g − mean(g) − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ w, x̂ the normalised input. */
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP) {
        float g = dy[c] * weight[c];
        g_sum += g;
        gx_sum += g * ((x[c] - m) * s);
    }
    const float g_mean = fm_warp_sum(g_sum) / (float)C, gx_mean = fm_warp_sum(gx_sum) / (float)C;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP) {
        float g = dy[c] * weight[c];
        float xhat = (x[c] - m) * s;
        dx[c] += s * (g - g_mean - xhat * gx_mean);
    }
}

/* dweight[c] += Σ_n dout[n, c]·x̂[n, c] and dbias[c] += Σ_n dout[n, c] */
struct layernorm_param_grads {
    static constexpr int kOut = 2;
    const float *dout, *inp, *mean, *rstd; // (N, C), (N, C), (N), (N)
    size_t C;
    __device__ void operator()(size_t n, size_t c, float *v) const
    {
        float dy = dout[n * C + c];
        v[0] = dy * ((inp[n * C + c] - mean[n]) * rstd[n]);
        v[1] = dy;
    }
};

extern "C" fm_status fm_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                               const float *weight, const float *bias, int N, int C, float eps)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda layernorm_forward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0)
        return FM_OK;
    if (!out || !mean || !rstd || !inp || !weight || !bias)
        return fm_error(FM_ERR_INVALID_ARG, "cuda layernorm_forward: NULL %s",
                        !out      ? "out"
                        : !mean   ? "mean"
                        : !rstd   ? "rstd"
                        : !inp    ? "inp"
                        : !weight ? "weight"
                                  : "bias");
    return FM_LAUNCH_ROWS(layernorm_forward_kernel, N, out, mean, rstd, inp, weight, bias, (size_t)N, (size_t)C, eps);
}

extern "C" fm_status fm_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                                const float *inp, const float *weight, const float *mean,
                                                const float *rstd, int N, int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda layernorm_backward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0 || (!dinp && !dweight && !dbias))
        return FM_OK;
    if (!dout || !inp || !weight || !mean || !rstd)
        return fm_error(FM_ERR_INVALID_ARG, "cuda layernorm_backward: NULL %s",
                        !dout     ? "dout"
                        : !inp    ? "inp"
                        : !weight ? "weight"
                        : !mean   ? "mean"
                                  : "rstd");
    if (dinp)
        FM_TRY(FM_LAUNCH_ROWS(layernorm_backward_dinp_kernel, N, dinp, dout, inp, weight, mean, rstd, (size_t)N,
                              (size_t)C));
    if (dweight || dbias)
        FM_TRY(fm_colsum("layernorm dweight/dbias", dweight, dbias,
                         layernorm_param_grads{dout, inp, mean, rstd, (size_t)C}, (size_t)N, (size_t)C));
    return FM_OK;
}
