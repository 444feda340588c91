/* What the loss and norm kernels share (CUDA C++ only): deterministic block reductions — a fixed tree
 * over a power-of-two block, so the same inputs give the same bits on every run — and stream-ordered
 * scratch memory for per-row partial results (cudaMallocAsync from the runtime's pool: no device-wide
 * synchronisation, unlike cudaMalloc / cudaFree). */
#ifndef FEDMM_KERNELS_REDUCE_CUH
#define FEDMM_KERNELS_REDUCE_CUH

#include <cuda_runtime.h>

#include "cuda/runtime.h"

#define FM_RED_BLOCK 256u

/* Sum over the block of x, in double; every thread gets the result. sh holds BLOCK doubles. All threads
 * of the block must call it (it synchronises). */
template <unsigned BLOCK> static __device__ __forceinline__ double fm_block_sum(double x, double *sh)
{
    static_assert((BLOCK & (BLOCK - 1)) == 0, "block size must be a power of two");
    sh[threadIdx.x] = x;
    __syncthreads();
    for (unsigned s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    const double r = sh[0];
    __syncthreads(); /* sh may be reused right after */
    return r;
}

/* Maximum over the block (order does not matter for a maximum; NaN-free inputs assumed). */
template <unsigned BLOCK> static __device__ __forceinline__ float fm_block_max(float x, float *sh)
{
    sh[threadIdx.x] = x;
    __syncthreads();
    for (unsigned s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    const float r = sh[0];
    __syncthreads();
    return r;
}

/* Softmax of one row of n logits into out (may be x itself), with the CPU references' arithmetic: float
 * max, float exp, double sum, probabilities scaled by the float 1/sum. Returns, in every thread,
 * −log softmax(x)[target] = log Σ − (x[target] − max) in double, finite where the probability
 * underflows; 0 when target < 0. One block per row; shf and shd hold BLOCK floats and doubles. */
template <unsigned BLOCK>
static __device__ double fm_softmax_row(float *out, const float *x, size_t n, long long target, float *shf,
                                       double *shd)
{
    /* read before any thread writes out, which may be x itself (fm_block_max synchronises first) */
    const float picked = target >= 0 ? x[target] : 0.0f;
    float m = -INFINITY;
    for (size_t c = threadIdx.x; c < n; c += BLOCK)
        m = fmaxf(m, x[c]);
    m = fm_block_max<BLOCK>(m, shf);
    double s = 0.0;
    for (size_t c = threadIdx.x; c < n; c += BLOCK) {
        const float e = expf(x[c] - m);
        out[c] = e; /* the same thread rescales it below */
        s += e;
    }
    s = fm_block_sum<BLOCK>(s, shd);
    const float inv = (float)(1.0 / s);
    for (size_t c = threadIdx.x; c < n; c += BLOCK)
        out[c] *= inv;
    return target >= 0 ? log(s) - ((double)picked - m) : 0.0;
}

/* Scratch on fedmm's stream: usable by work queued after the call, released after the work queued
 * before the free. */
static inline fm_status fm_scratch_alloc(void **ptr, size_t bytes, cudaStream_t stream)
{
    *ptr = nullptr;
    cudaError_t err = cudaMallocAsync(ptr, bytes, stream);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return fm_error(FM_ERR_NO_MEMORY, "scratch of %zu bytes: out of device memory", bytes);
    }
    return fm_cuda_check_at((int)err, "cudaMallocAsync(ptr, bytes, stream)", __FILE__, __LINE__);
}

/* Frees scratch; keeps `st` (the first failure) unless the free itself is the first one. */
static inline fm_status fm_scratch_free(void *ptr, cudaStream_t stream, fm_status st)
{
    if (!ptr)
        return st;
    fm_status fst = FM_CUDA_CHECK(cudaFreeAsync(ptr, stream));
    return st != FM_OK ? st : fst;
}

#endif
