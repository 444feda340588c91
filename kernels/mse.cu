/* CUDA twin of src/cpu/mse.c: mean((a − b)²), the CreamFL distillation loss, and its gradient. The sum
 * runs in double through a deterministic two-pass reduction (a fixed number of blocks for a given n,
 * then one block over their partial sums), so the loss is the same bits on every run. */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/reduce.cuh"

/* At most this many partial sums: enough blocks to fill an H200 a few times over. */
#define MSE_MAX_BLOCKS 1024u

static __global__ void __launch_bounds__(FM_RED_BLOCK)
    mse_partial_kernel(double *partial,  // (gridDim.x)
                       const float *a,   // (n)
                       const float *b,   // (n)
                       size_t n)
{
    __shared__ double sh[FM_RED_BLOCK];
    double s = 0.0;
    for (FM_GRID_STRIDE(i, n)) {
        const double d = (double)a[i] - b[i];
        s += d * d;
    }
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

static __global__ void __launch_bounds__(FM_RED_BLOCK)
    mse_final_kernel(float *loss,            // scalar
                     const double *partial,  // (nparts)
                     unsigned nparts, size_t n)
{
    __shared__ double sh[FM_RED_BLOCK];
    double s = 0.0;
    for (unsigned p = threadIdx.x; p < nparts; p += FM_RED_BLOCK)
        s += partial[p];
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x == 0)
        *loss = (float)(s / (double)n);
}

static __global__ void mse_backward_kernel(float *da,       // (n) or NULL, accumulated
                                           float *db,       // (n) or NULL, accumulated
                                           const float *a,  // (n)
                                           const float *b,  // (n)
                                           size_t n, float scale)
{
    for (FM_GRID_STRIDE(i, n)) {
        const float g = scale * (a[i] - b[i]);
        if (da)
            da[i] += g;
        if (db)
            db[i] -= g;
    }
}

extern "C" fm_status fm_cuda_mse_forward(float *loss, const float *a, const float *b, size_t n)
{
    if (!loss)
        return fm_error(FM_ERR_INVALID_ARG, "cuda mse_forward: NULL loss");
    if (n == 0)
        return fm_cuda_memset(loss, 0, sizeof(float)); /* as the CPU twin: no elements, loss 0 */
    if (!a || !b)
        return fm_error(FM_ERR_INVALID_ARG, "cuda mse_forward: NULL %s", !a ? "a" : "b");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    const size_t need = (n + FM_RED_BLOCK - 1) / FM_RED_BLOCK;
    const unsigned nparts = (unsigned)(need < MSE_MAX_BLOCKS ? need : MSE_MAX_BLOCKS);
    double *partial = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&partial, nparts * sizeof(double), stream));
    mse_partial_kernel<<<nparts, FM_RED_BLOCK, 0, stream>>>(partial, a, b, n);
    fm_status st = FM_CUDA_LAUNCH_CHECK("mse_partial_kernel");
    if (st == FM_OK) {
        mse_final_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(loss, partial, nparts, n);
        st = FM_CUDA_LAUNCH_CHECK("mse_final_kernel");
    }
    return fm_scratch_free(partial, stream, st);
}

extern "C" fm_status fm_cuda_mse_backward(float *da, float *db, const float *a, const float *b, size_t n, float dloss)
{
    if (n == 0 || (!da && !db))
        return FM_OK;
    if (!a || !b)
        return fm_error(FM_ERR_INVALID_ARG, "cuda mse_backward: NULL %s", !a ? "a" : "b");
    /* the CPU twin's scale, computed the same way on the host */
    const float scale = (float)(2.0 * (double)dloss / (double)n);
    return FM_LAUNCH_1D(mse_backward_kernel, n, da, db, a, b, n, scale);
}
