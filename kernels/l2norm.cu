/* CUDA twin of src/cpu/l2norm.c: row-wise L2 normalisation out = x / max(‖x‖, 1e-12), as
 * torch.nn.functional.normalize, one warp per row, keeping each row's norm for backward. */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/rows_cols.cuh"

/* The clamp of the CPU reference; the comparisons below are done in double, as there, so that both sides
 * take the same branch for a norm near it. */
#define L2NORM_EPS 1e-12

static __global__ void l2norm_forward_kernel(float *out,       // (N, C)
                                             float *norm,      // (N)
                                             const float *inp, // (N, C)
                                             size_t N, size_t C)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const float *x = inp + row * C;
    float *y = out + row * C;
    float ss = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        ss += x[c] * x[c];
    const float nr = sqrtf(fm_warp_sum(ss));
    const float denom = (double)nr > L2NORM_EPS ? nr : (float)L2NORM_EPS;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        y[c] = x[c] / denom;
    if (threadIdx.x == 0)
        norm[row] = nr;
}

static __global__ void l2norm_backward_kernel(float *dinp,       // (N, C), accumulated
                                              const float *dout, // (N, C)
                                              const float *out,  // (N, C)
                                              const float *norm, // (N)
                                              size_t N, size_t C)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const float *y = out + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    const float nr = norm[row];
    if (!((double)nr > L2NORM_EPS)) {
        /* the clamp is active: out = x / eps is linear in x */
        for (size_t c = threadIdx.x; c < C; c += FM_WARP)
            dx[c] += dy[c] / (float)L2NORM_EPS;
        return;
    }
    /* d(x/‖x‖) = (dy − y·(y·dy)) / ‖x‖ */
    float dot = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        dot += y[c] * dy[c];
    dot = fm_warp_sum(dot);
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        dx[c] += (dy[c] - y[c] * dot) / nr;
}

extern "C" fm_status fm_cuda_l2norm_forward(float *out, float *norm, const float *inp, int N, int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda l2norm_forward: negative size (N=%d, C=%d)", N, C);
    if (N == 0)
        return FM_OK;
    if (!norm || (C > 0 && (!out || !inp)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda l2norm_forward: NULL %s", !norm ? "norm" : !out ? "out" : "inp");
    /* C = 0 still writes the norms (zeros), as the CPU reference does. */
    return FM_LAUNCH_ROWS(l2norm_forward_kernel, N, out, norm, inp, (size_t)N, (size_t)C);
}

extern "C" fm_status fm_cuda_l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N,
                                             int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda l2norm_backward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0 || !dinp)
        return FM_OK;
    if (!dout || !out || !norm)
        return fm_error(FM_ERR_INVALID_ARG, "cuda l2norm_backward: NULL %s", !dout ? "dout" : !out ? "out" : "norm");
    return FM_LAUNCH_ROWS(l2norm_backward_kernel, N, dinp, dout, out, norm, (size_t)N, (size_t)C);
}
