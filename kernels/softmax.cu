/* CUDA twin of src/cpu/softmax.c: softmax over the last dim, max-shifted so that large logits do not
 * overflow, one warp per row; backward dx += y ⊙ (dy − ⟨y, dy⟩). */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/rows_cols.cuh"

static __global__ void softmax_forward_kernel(float *out,       // (N, C)
                                              const float *inp, // (N, C)
                                              size_t N, size_t C)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const float *x = inp + row * C;
    float *y = out + row * C;
    float mx = -INFINITY;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        mx = fmaxf(mx, x[c]);
    mx = fm_warp_max(mx);
    float sum = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP) {
        float e = expf(x[c] - mx);
        y[c] = e;
        sum += e;
    }
    /* Each lane rescales the values it wrote itself: no other lane's writes need to be visible. */
    const float inv = 1.0f / fm_warp_sum(sum);
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        y[c] *= inv;
}

static __global__ void softmax_backward_kernel(float *dinp,       // (N, C), accumulated
                                               const float *out,  // (N, C)
                                               const float *dout, // (N, C)
                                               size_t N, size_t C)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const float *y = out + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    float dot = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        dot += y[c] * dy[c];
    dot = fm_warp_sum(dot);
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        dx[c] += y[c] * (dy[c] - dot);
}

extern "C" fm_status fm_cuda_softmax_forward(float *out, const float *inp, int N, int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda softmax_forward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0)
        return FM_OK;
    if (!out || !inp)
        return fm_error(FM_ERR_INVALID_ARG, "cuda softmax_forward: NULL %s", !out ? "out" : "inp");
    return FM_LAUNCH_ROWS(softmax_forward_kernel, N, out, inp, (size_t)N, (size_t)C);
}

extern "C" fm_status fm_cuda_softmax_backward(float *dinp, const float *out, const float *dout, int N, int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda softmax_backward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0 || !dinp)
        return FM_OK;
    if (!out || !dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda softmax_backward: NULL %s", !out ? "out" : "dout");
    return FM_LAUNCH_ROWS(softmax_backward_kernel, N, dinp, out, dout, (size_t)N, (size_t)C);
}
