/* CUDA twin of the per-row arithmetic of src/fl/creamfl_ensemble.c (see kernels/creamfl_ensemble.h): the online
 * log-sum-exp over a tile of scores, the row's own score minus it, the softmax over the sites and the weighted
 * fusion, plus padded bf16 copies of representations for the bf16 score tiles. The tile products themselves are
 * cuBLASLt GEMMs issued by the host loop (src/fl/creamfl_ensemble_cuda.c). Reductions are fixed trees
 * (kernels/reduce.cuh): the same inputs give the same bits on every run. */
#include <cuda_bf16.h>
#include <math.h>

#include "cuda/launch.cuh"
#include "kernels/creamfl_ensemble.h"
#include "kernels/reduce.cuh"
#include "kernels/rows_cols.cuh"

/* One block per row of the tile: the row's maximum, then its terms under the new running maximum. */
static __global__ void __launch_bounds__(FM_RED_BLOCK) lse_tile_kernel(float *run_max,    // (rows)
                                                                       double *run_sum,   // (rows)
                                                                       const float *tile, // (rows, cols)
                                                                       size_t cols, int first)
{
    __shared__ float shf[FM_RED_BLOCK];
    __shared__ double shd[FM_RED_BLOCK];
    const size_t row = blockIdx.x;
    const float *x = tile + row * cols;
    float mx = -INFINITY;
    for (size_t j = threadIdx.x; j < cols; j += FM_RED_BLOCK)
        mx = fmaxf(mx, x[j]);
    mx = fm_block_max<FM_RED_BLOCK>(mx, shf);
    const float old_m = first ? -INFINITY : run_max[row];
    const float m = fmaxf(old_m, mx);
    double part = 0.0; /* float terms, double sum, as the CPU */
    for (size_t j = threadIdx.x; j < cols; j += FM_RED_BLOCK)
        part += (double)expf(x[j] - m);
    part = fm_block_sum<FM_RED_BLOCK>(part, shd);
    if (threadIdx.x == 0) {
        /* rescale what was summed under the old maximum (nothing on the first tile) */
        run_sum[row] = first ? part : run_sum[row] * exp((double)old_m - (double)m) + part;
        run_max[row] = m;
    }
}

static __device__ __forceinline__ double warp_sum_double(double v)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* One warp per row: the own score R[i]·G[i] in double, minus the log-sum-exp. */
static __global__ void finish_kernel(float *scores,         // (rows)
                                     const float *R,        // (rows, d)
                                     const float *G,        // (rows, d)
                                     const float *run_max,  // (rows)
                                     const double *run_sum, // (rows)
                                     size_t rows, size_t d)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= rows)
        return;
    const float *a = R + row * d, *b = G + row * d;
    double s = 0.0;
    for (size_t e = threadIdx.x; e < d; e += FM_WARP)
        s += (double)a[e] * (double)b[e];
    s = warp_sum_double(s);
    if (threadIdx.x == 0)
        scores[row] = (float)(s - ((double)run_max[row] + log(run_sum[row])));
}

/* One thread per sample: the softmax over the K sites of its scores, in double, as fm_creamfl_fuse. */
static __global__ void site_softmax_kernel(float *w, // (K, n)
                                           size_t K, size_t n)
{
    for (FM_GRID_STRIDE(p, n)) {
        double mx = -INFINITY, sum = 0.0;
        for (size_t k = 0; k < K; k++) {
            const double v = w[k * n + p];
            mx = v > mx ? v : mx;
        }
        for (size_t k = 0; k < K; k++)
            sum += exp((double)w[k * n + p] - mx);
        for (size_t k = 0; k < K; k++)
            w[k * n + p] = (float)(exp((double)w[k * n + p] - mx) / sum);
    }
}

/* One thread per element of agg: the weighted sum over the sites, the CPU's float operations one at a time. */
static __global__ void fuse_kernel(float *agg,               // (n, d)
                                   const float *const *reps, // K device pointers to (n, d)
                                   const float *w,           // (K, n) or NULL
                                   float mean, size_t K, size_t n, size_t d)
{
    for (FM_GRID_STRIDE(i, n * d)) {
        const size_t p = i / d;
        float out = 0.0f;
        for (size_t k = 0; k < K; k++) {
            const float wk = w ? w[k * n + p] : mean;
            out = __fadd_rn(out, __fmul_rn(wk, reps[k][i]));
        }
        agg[i] = out;
    }
}

static __global__ void rows_bf16_kernel(uint16_t *dst,    // (rows, ld)
                                        const float *src, // (rows, d)
                                        size_t rows, size_t d, size_t ld)
{
    for (FM_GRID_STRIDE(i, rows * ld)) {
        const size_t r = i / ld, e = i % ld;
        dst[i] = e < d ? __bfloat16_as_ushort(__float2bfloat16_rn(src[r * d + e])) : (uint16_t)0;
    }
}

extern "C" fm_status fm_cuda_creamfl_lse_tile(float *run_max, double *run_sum, const float *tile, size_t rows,
                                              size_t cols, int first)
{
    if (rows == 0 || cols == 0)
        return FM_OK;
    if (!run_max || !run_sum || !tile)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl lse_tile: NULL %s",
                        !run_max   ? "run_max"
                        : !run_sum ? "run_sum"
                                   : "tile");
    if (rows > 0x7fffffffu)
        return fm_error(FM_ERR_RANGE, "cuda creamfl lse_tile: %zu rows is too many for one grid", rows);
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    lse_tile_kernel<<<(unsigned)rows, FM_RED_BLOCK, 0, stream>>>(run_max, run_sum, tile, cols, first);
    return FM_CUDA_LAUNCH_CHECK("lse_tile_kernel");
}

extern "C" fm_status fm_cuda_creamfl_finish(float *scores, const float *R, const float *G, const float *run_max,
                                            const double *run_sum, size_t rows, size_t d)
{
    if (rows == 0)
        return FM_OK;
    if (!scores || !R || !G || !run_max || !run_sum)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl finish: NULL %s",
                        !scores    ? "scores"
                        : !R       ? "R"
                        : !G       ? "G"
                        : !run_max ? "run_max"
                                   : "run_sum");
    return FM_LAUNCH_ROWS(finish_kernel, rows, scores, R, G, run_max, run_sum, rows, d);
}

extern "C" fm_status fm_cuda_creamfl_site_softmax(float *w, size_t K, size_t n)
{
    if (K == 0 || n == 0)
        return FM_OK;
    if (!w)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl site_softmax: NULL w");
    return FM_LAUNCH_1D(site_softmax_kernel, n, w, K, n);
}

extern "C" fm_status fm_cuda_creamfl_fuse(float *agg, const float *const *reps, const float *w, float mean, size_t K,
                                          size_t n, size_t d)
{
    if (n == 0 || d == 0)
        return FM_OK;
    if (!agg || !reps || K == 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl fuse: %s", !agg ? "NULL agg" : !reps ? "NULL reps" : "K = 0");
    return FM_LAUNCH_1D(fuse_kernel, n * d, agg, reps, w, mean, K, n, d);
}

extern "C" fm_status fm_cuda_creamfl_rows_bf16(uint16_t *dst, const float *src, size_t rows, size_t d, size_t ld)
{
    if (ld < d)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl rows_bf16: leading dimension %zu < d = %zu", ld, d);
    if (rows == 0 || ld == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl rows_bf16: NULL %s", !dst ? "dst" : "src");
    return FM_LAUNCH_1D(rows_bf16_kernel, rows * ld, dst, src, rows, d, ld);
}
