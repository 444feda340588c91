/* CUDA twin of src/cpu/clip_grad.c: the sum of squares and global-norm gradient clipping. The sum runs in
 * double through a deterministic two-pass reduction (a fixed number of blocks for a given n, then one
 * block over their partial sums); the decision to scale is taken on the device, so clipping queues three
 * kernels and reads back only the norm the caller asked for. */
#include <math.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/reduce.cuh"

#define CLIP_MAX_BLOCKS 1024u

/* What the final pass leaves on the device. */
typedef struct clip_state {
    double sumsq;
    float norm;  /* ‖g‖ rounded to float, as the CPU twin returns it */
    float scale; /* 1: leave g alone */
} clip_state;

static __global__ void __launch_bounds__(FM_RED_BLOCK)
    sumsq_partial_kernel(double *partial,  // (gridDim.x)
                         const float *x,   // (n)
                         size_t n)
{
    __shared__ double sh[FM_RED_BLOCK];
    double s = 0.0;
    for (FM_GRID_STRIDE(i, n))
        s += (double)x[i] * x[i];
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

/* One block: the total, the norm, and whether (and by how much) to scale, with the CPU's rules. */
static __global__ void __launch_bounds__(FM_RED_BLOCK)
    sumsq_final_kernel(clip_state *state, const double *partial, unsigned nparts, float max_norm)
{
    __shared__ double sh[FM_RED_BLOCK];
    double s = 0.0;
    for (unsigned p = threadIdx.x; p < nparts; p += FM_RED_BLOCK)
        s += partial[p];
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x != 0)
        return;
    const double norm = sqrt(s);
    const float normf = (float)norm;
    state->sumsq = s;
    state->norm = normf;
    /* a non-finite norm leaves g alone (the dispatcher reports it) */
    state->scale = isfinite(normf) && norm > (double)max_norm ? (float)((double)max_norm / norm) : 1.0f;
}

static __global__ void clip_scale_kernel(float *g,                  // (n), scaled in place
                                         const clip_state *state,   // scalar
                                         size_t n)
{
    const float s = state->scale;
    if (s == 1.0f)
        return;
    for (FM_GRID_STRIDE(i, n))
        g[i] *= s;
}

/* Queues both reduction passes into *state (scratch owned by the caller). */
static fm_status sumsq_launch(cudaStream_t stream, clip_state *state, const float *x, size_t n, float max_norm)
{
    const size_t need = (n + FM_RED_BLOCK - 1) / FM_RED_BLOCK;
    const unsigned nparts = n == 0 ? 1u : (unsigned)(need < CLIP_MAX_BLOCKS ? need : CLIP_MAX_BLOCKS);
    double *partial = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&partial, nparts * sizeof(double), stream));
    sumsq_partial_kernel<<<nparts, FM_RED_BLOCK, 0, stream>>>(partial, x, n);
    fm_status st = FM_CUDA_LAUNCH_CHECK("sumsq_partial_kernel");
    if (st == FM_OK) {
        sumsq_final_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(state, partial, nparts, max_norm);
        st = FM_CUDA_LAUNCH_CHECK("sumsq_final_kernel");
    }
    return fm_scratch_free(partial, stream, st);
}

extern "C" fm_status fm_cuda_sum_squares(const float *x, size_t n, double *out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "cuda sum_squares: NULL out");
    *out = 0.0;
    if (n == 0)
        return FM_OK;
    if (!x)
        return fm_error(FM_ERR_INVALID_ARG, "cuda sum_squares: NULL x");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    clip_state *state = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&state, sizeof *state, stream));
    fm_status st = sumsq_launch(stream, state, x, n, INFINITY);
    clip_state host;
    if (st == FM_OK)
        st = fm_cuda_memcpy(&host, state, sizeof host, 1);
    if (st == FM_OK)
        *out = host.sumsq;
    return fm_scratch_free(state, stream, st);
}

extern "C" fm_status fm_cuda_clip_grad_norm(float *g, size_t n, float max_norm, float *norm)
{
    if (!norm)
        return fm_error(FM_ERR_INVALID_ARG, "cuda clip_grad_norm: NULL norm");
    *norm = 0.0f;
    if (!(max_norm > 0.0f) || isnan(max_norm))
        return fm_error(FM_ERR_INVALID_ARG, "cuda clip_grad_norm: max_norm = %g, expected > 0", (double)max_norm);
    if (n == 0)
        return FM_OK;
    if (!g)
        return fm_error(FM_ERR_INVALID_ARG, "cuda clip_grad_norm: NULL g");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    clip_state *state = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&state, sizeof *state, stream));
    fm_status st = sumsq_launch(stream, state, g, n, max_norm);
    if (st == FM_OK)
        st = FM_LAUNCH_1D(clip_scale_kernel, n, g, (const clip_state *)state, n);
    clip_state host;
    if (st == FM_OK)
        st = fm_cuda_memcpy(&host, state, sizeof host, 1);
    st = fm_scratch_free(state, stream, st);
    if (st != FM_OK)
        return st;
    *norm = host.norm;
    if (!isfinite(host.norm))
        return fm_error(FM_ERR_NOT_FINITE, "cuda clip_grad_norm: the gradient norm is %g (a NaN or Inf gradient); g "
                        "left unchanged", (double)host.norm);
    return FM_OK;
}
