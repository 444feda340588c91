/* CUDA twins of the server aggregation (src/fl/strategy.c, strategy_robust.c) and the site corrections
 * (src/fl/strategy_site.c): weighted sums of K flat vectors, coordinate-wise median and trimmed mean, Krum's
 * pairwise distances, the per-update finiteness check and norm, the server rules and the site-side gradient
 * corrections. Declared and specified in kernels/aggregate.h.
 *
 * Bit-for-bit agreement with the CPU is designed in where the CPU's arithmetic allows it: float expressions are
 * written with __fadd_rn / __fmul_rn / __fdiv_rn / __fsqrt_rn, so that nvcc cannot contract them into FMAs the
 * CPU build does not use (C11 without extensions compiles with -ffp-contract=off), and sums keep the CPU's order.
 * Reductions over coordinates (norms, distances) sum in double in a fixed order of their own. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/launch.cuh"
#include "kernels/aggregate.h"
#include "kernels/reduce.cuh"

#define SORT_REG_BLOCK 128u
#define SORT_SMEM_BLOCK 256u
#define DIST_TC 32        /* coordinates per tile of the distance kernel */
#define DIST_BLOCKS 256u  /* fixed: the partial sums, hence the result's bits, do not depend on the GPU */
#define DIST_THREADS 256u
#define CHECK_MAX_BLOCKS 1024u

/* ---- the list of K updates on the device ---------------------------------------------------------------- */

/* Copies k device pointers (then k weights when w != NULL) to stream-ordered scratch. The copy waits for the
 * stream (fm_cuda_memcpy), so the host staging buffer is released at once. *mem is NULL on failure. */
static fm_status list_upload(const char *who, const float *const *x, const float *w, size_t k, cudaStream_t stream,
                             void **mem)
{
    *mem = nullptr;
    for (size_t i = 0; i < k; i++)
        if (!x[i])
            return fm_error(FM_ERR_INVALID_ARG, "%s: update %zu is a NULL pointer", who, i);
    const size_t pbytes = k * sizeof(const float *);
    const size_t bytes = pbytes + (w ? k * sizeof(float) : 0);
    unsigned char *host = (unsigned char *)malloc(bytes);
    if (!host)
        return fm_error(FM_ERR_NO_MEMORY, "%s: no host memory for a list of %zu updates", who, k);
    memcpy(host, x, pbytes);
    if (w)
        memcpy(host + pbytes, w, k * sizeof(float));
    fm_status st = fm_scratch_alloc(mem, bytes, stream);
    if (st == FM_OK)
        st = fm_cuda_memcpy(*mem, host, bytes, 0);
    free(host);
    if (st != FM_OK) {
        st = fm_scratch_free(*mem, stream, st);
        *mem = nullptr;
    }
    return st;
}

/* The common argument checks of the list kernels (n == 0 is valid: no work). */
static fm_status list_args(const char *who, const void *out, const float *const *x, size_t k, size_t n)
{
    if (!x || k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "%s: no updates (k = %zu)", who, k);
    if (!out && n > 0)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL output for %zu coordinates", who, n);
    return FM_OK;
}

/* ---- weighted sum and plain mean -------------------------------------------------------------------------- */

/* One thread per coordinate; the K loads of a group of 8 are issued before their adds, so that enough bytes are
 * in flight, while the adds keep the order k = 0 … K−1. */
static __global__ void weighted_sum_kernel(float *out,                         // (n)
                                           const float *const *__restrict__ x, // (k) pointers to (n)
                                           const float *__restrict__ w,        // (k)
                                           unsigned k, size_t n, int accumulate)
{
    for (FM_GRID_STRIDE(j, n)) {
        float acc = accumulate ? out[j] : 0.0f;
        unsigned q = 0;
        for (; q + 8 <= k; q += 8) {
            float v[8];
#pragma unroll
            for (unsigned u = 0; u < 8; u++)
                v[u] = x[q + u][j];
#pragma unroll
            for (unsigned u = 0; u < 8; u++)
                acc = __fadd_rn(acc, __fmul_rn(w[q + u], v[u]));
        }
        for (; q < k; q++)
            acc = __fadd_rn(acc, __fmul_rn(w[q], x[q][j]));
        out[j] = acc;
    }
}

static __global__ void mean_kernel(float *out,                         // (n)
                                   const float *const *__restrict__ x, // (k) pointers to (n)
                                   unsigned k, size_t n)
{
    for (FM_GRID_STRIDE(j, n)) {
        double s = 0.0;
        for (unsigned q = 0; q < k; q++)
            s += (double)x[q][j];
        out[j] = (float)(s / (double)k);
    }
}

/* The weights of a list laid out by list_upload or fm_cuda_agg_list_create: after the k pointers. */
static const float *list_weights(const void *mem, size_t k)
{
    return (const float *)((const unsigned char *)mem + k * sizeof(const float *));
}

extern "C" fm_status fm_cuda_agg_weighted_sum(float *out, const float *const *x, const float *w, size_t k, size_t n,
                                              int accumulate)
{
    FM_TRY(list_args("cuda weighted_sum", out, x, k, n));
    if (!w)
        return fm_error(FM_ERR_INVALID_ARG, "cuda weighted_sum: NULL weights");
    if (k > UINT32_MAX)
        return fm_error(FM_ERR_INVALID_ARG, "cuda weighted_sum: k = %zu updates", k);
    if (n == 0)
        return FM_OK;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    void *mem = nullptr;
    FM_TRY(list_upload("cuda weighted_sum", x, w, k, stream, &mem));
    fm_status st = FM_LAUNCH_1D(weighted_sum_kernel, n, out, (const float *const *)mem, list_weights(mem, k),
                                (unsigned)k, n, accumulate);
    return fm_scratch_free(mem, stream, st);
}

extern "C" fm_status fm_cuda_agg_mean(float *out, const float *const *x, size_t k, size_t n)
{
    FM_TRY(list_args("cuda mean", out, x, k, n));
    if (k > UINT32_MAX)
        return fm_error(FM_ERR_INVALID_ARG, "cuda mean: k = %zu updates", k);
    if (n == 0)
        return FM_OK;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    void *mem = nullptr;
    FM_TRY(list_upload("cuda mean", x, nullptr, k, stream, &mem));
    fm_status st = FM_LAUNCH_1D(mean_kernel, n, out, (const float *const *)mem, (unsigned)k, n);
    return fm_scratch_free(mem, stream, st);
}

/* ---- coordinate-wise sorted rules (median, trimmed mean) -------------------------------------------------- */

/* Ascending bitonic sort of NP (a power of two) values held in registers: with every loop unrolled, each index
 * is a constant and the array never leaves the register file. */
template <int NP> static __device__ __forceinline__ void bitonic_sort_regs(float (&v)[NP])
{
#pragma unroll
    for (int size = 2; size <= NP; size *= 2) {
#pragma unroll
        for (int stride = size / 2; stride > 0; stride /= 2) {
#pragma unroll
            for (int i = 0; i < NP; i++) {
                const int p = i ^ stride;
                if (p > i) {
                    const float a = v[i], b = v[p];
                    const float lo = fminf(a, b), hi = fmaxf(a, b);
                    const bool up = (i & size) == 0;
                    v[i] = up ? lo : hi;
                    v[p] = up ? hi : lo;
                }
            }
        }
    }
}

/* K ≤ NP ≤ 64: one thread per coordinate; the column, padded with +∞ (after every finite value), is sorted in
 * registers and the ranks [lo, hi) summed in double in ascending order, as the CPU does. */
template <int NP>
static __global__ void __launch_bounds__(SORT_REG_BLOCK)
    sorted_mean_reg_kernel(float *out,                         // (n)
                           const float *const *__restrict__ x, // (k) pointers to (n)
                           int k, int lo, int hi, size_t n)
{
    for (FM_GRID_STRIDE(j, n)) {
        float v[NP];
#pragma unroll
        for (int i = 0; i < NP; i++)
            v[i] = i < k ? x[i][j] : INFINITY;
        bitonic_sort_regs<NP>(v);
        double s = 0.0;
#pragma unroll
        for (int i = 0; i < NP; i++)
            if (i >= lo && i < hi)
                s += (double)v[i];
        out[j] = (float)(s / (double)(hi - lo));
    }
}

/* K ≤ NP ≤ 1024: a block sorts COLS columns at once in shared memory (column c at sh[c·(NP+1)], the +1 keeping
 * the transposing load free of bank conflicts), each compare-exchange step of the bitonic network spread over the
 * block; then one thread per column sums its ranks [lo, hi) in ascending order. */
template <int NP, int COLS>
static __global__ void __launch_bounds__(SORT_SMEM_BLOCK)
    sorted_mean_smem_kernel(float *out,                         // (n)
                            const float *const *__restrict__ x, // (k) pointers to (n)
                            int k, int lo, int hi, size_t n)
{
    extern __shared__ float col_sh[]; // (COLS, NP + 1)
    constexpr int LD = NP + 1;
    constexpr int HALF = NP / 2;
    const size_t ntiles = (n + COLS - 1) / COLS;
    for (size_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const size_t j0 = tile * COLS;
        const int ncols = (int)(n - j0 < (size_t)COLS ? n - j0 : (size_t)COLS);
        /* consecutive threads read consecutive coordinates of one update: coalesced */
        for (int e = threadIdx.x; e < COLS * NP; e += blockDim.x) {
            const int r = e / COLS, c = e % COLS;
            col_sh[c * LD + r] = (r < k && c < ncols) ? x[r][j0 + c] : INFINITY;
        }
        __syncthreads();
        for (int size = 2; size <= NP; size *= 2) {
            for (int stride = size / 2; stride > 0; stride /= 2) {
                for (int t = threadIdx.x; t < COLS * HALF; t += blockDim.x) {
                    const int c = t / HALF, q = t % HALF;
                    const int i = (q / stride) * 2 * stride + q % stride; /* bit `stride` of i is 0 */
                    float *col = col_sh + c * LD;
                    const float a = col[i], b = col[i + stride];
                    const bool up = (i & size) == 0;
                    if ((a > b) == up) {
                        col[i] = b;
                        col[i + stride] = a;
                    }
                }
                __syncthreads();
            }
        }
        if ((int)threadIdx.x < ncols) {
            const float *col = col_sh + threadIdx.x * LD;
            double s = 0.0;
            for (int i = lo; i < hi; i++)
                s += (double)col[i];
            out[j0 + threadIdx.x] = (float)(s / (double)(hi - lo));
        }
        __syncthreads(); /* the next tile overwrites col_sh */
    }
}

template <int NP>
static fm_status launch_sorted_reg(cudaStream_t stream, float *out, const float *const *dx, int k, int lo, int hi,
                                   size_t n)
{
    const unsigned grid = fm_cuda_grid_1d(n, SORT_REG_BLOCK);
    sorted_mean_reg_kernel<NP><<<grid, SORT_REG_BLOCK, 0, stream>>>(out, dx, k, lo, hi, n);
    return FM_CUDA_LAUNCH_CHECK("sorted_mean_reg_kernel");
}

template <int NP, int COLS>
static fm_status launch_sorted_smem(cudaStream_t stream, float *out, const float *const *dx, int k, int lo, int hi,
                                    size_t n)
{
    const size_t ntiles = (n + COLS - 1) / COLS;
    const unsigned grid = fm_cuda_grid_1d(ntiles * SORT_SMEM_BLOCK, SORT_SMEM_BLOCK);
    const size_t smem = (size_t)COLS * (NP + 1) * sizeof(float); /* ≤ 33 KiB: no opt-in above 48 KiB needed */
    sorted_mean_smem_kernel<NP, COLS><<<grid, SORT_SMEM_BLOCK, smem, stream>>>(out, dx, k, lo, hi, n);
    return FM_CUDA_LAUNCH_CHECK("sorted_mean_smem_kernel");
}

static size_t pow2_at_least(size_t k, size_t floor_value)
{
    size_t p = floor_value;
    while (p < k)
        p *= 2;
    return p;
}

/* The checks of the sorted rules' arguments; resolves AUTO into the path that will run. */
static fm_status sorted_args(size_t k, size_t lo, size_t hi, fm_cuda_agg_sort_path *path)
{
    if (k > FM_CUDA_AGG_SORT_MAX_K)
        return fm_error(FM_ERR_UNSUPPORTED,
                        "cuda median / trimmed mean: %zu updates; the GPU kernels sort at most %d per coordinate", k,
                        FM_CUDA_AGG_SORT_MAX_K);
    if (!(lo < hi && hi <= k))
        return fm_error(FM_ERR_INVALID_ARG, "cuda sorted_mean: ranks [%zu, %zu) are not inside [0, %zu)", lo, hi, k);
    if (*path == FM_CUDA_AGG_SORT_AUTO)
        *path = k <= FM_CUDA_AGG_SORT_REG_MAX_K ? FM_CUDA_AGG_SORT_REGISTERS : FM_CUDA_AGG_SORT_SHARED;
    if (*path == FM_CUDA_AGG_SORT_REGISTERS && k > FM_CUDA_AGG_SORT_REG_MAX_K)
        return fm_error(FM_ERR_INVALID_ARG, "cuda sorted_mean: the register path sorts at most %d values, not %zu",
                        FM_CUDA_AGG_SORT_REG_MAX_K, k);
    if (*path != FM_CUDA_AGG_SORT_REGISTERS && *path != FM_CUDA_AGG_SORT_SHARED)
        return fm_error(FM_ERR_INVALID_ARG, "cuda sorted_mean: sort path %d", (int)*path);
    return FM_OK;
}

/* Launches the sorted rule for a device list dx of k pointers; arguments checked by sorted_args. */
static fm_status sorted_launch(cudaStream_t stream, float *out, const float *const *dx, size_t k, size_t n, size_t lo,
                               size_t hi, fm_cuda_agg_sort_path path)
{
    const int ik = (int)k, ilo = (int)lo, ihi = (int)hi;
    fm_status st = FM_OK;
    if (path == FM_CUDA_AGG_SORT_REGISTERS) {
        switch (pow2_at_least(k, 2)) {
        case 2: st = launch_sorted_reg<2>(stream, out, dx, ik, ilo, ihi, n); break;
        case 4: st = launch_sorted_reg<4>(stream, out, dx, ik, ilo, ihi, n); break;
        case 8: st = launch_sorted_reg<8>(stream, out, dx, ik, ilo, ihi, n); break;
        case 16: st = launch_sorted_reg<16>(stream, out, dx, ik, ilo, ihi, n); break;
        case 32: st = launch_sorted_reg<32>(stream, out, dx, ik, ilo, ihi, n); break;
        default: st = launch_sorted_reg<64>(stream, out, dx, ik, ilo, ihi, n); break;
        }
    } else {
        switch (pow2_at_least(k, 32)) {
        case 32: st = launch_sorted_smem<32, 32>(stream, out, dx, ik, ilo, ihi, n); break;
        case 64: st = launch_sorted_smem<64, 32>(stream, out, dx, ik, ilo, ihi, n); break;
        case 128: st = launch_sorted_smem<128, 32>(stream, out, dx, ik, ilo, ihi, n); break;
        case 256: st = launch_sorted_smem<256, 16>(stream, out, dx, ik, ilo, ihi, n); break;
        case 512: st = launch_sorted_smem<512, 8>(stream, out, dx, ik, ilo, ihi, n); break;
        default: st = launch_sorted_smem<1024, 8>(stream, out, dx, ik, ilo, ihi, n); break;
        }
    }
    return st;
}

extern "C" fm_status fm_cuda_agg_sorted_mean(float *out, const float *const *x, size_t k, size_t n, size_t lo,
                                             size_t hi, fm_cuda_agg_sort_path path)
{
    FM_TRY(list_args("cuda sorted_mean", out, x, k, n));
    FM_TRY(sorted_args(k, lo, hi, &path));
    if (n == 0)
        return FM_OK;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    void *mem = nullptr;
    FM_TRY(list_upload("cuda sorted_mean", x, nullptr, k, stream, &mem));
    fm_status st = sorted_launch(stream, out, (const float *const *)mem, k, n, lo, hi, path);
    return fm_scratch_free(mem, stream, st);
}

extern "C" fm_status fm_cuda_agg_median(float *out, const float *const *x, size_t k, size_t n)
{
    if (k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda median: no updates (k = 0)");
    /* odd k: the middle one; even k: the mean of the two middle ones (fm_agg_median) */
    return fm_cuda_agg_sorted_mean(out, x, k, n, (k - 1) / 2, k / 2 + 1, FM_CUDA_AGG_SORT_AUTO);
}

extern "C" fm_status fm_cuda_agg_trimmed_mean(float *out, const float *const *x, size_t k, size_t n,
                                              double trim_ratio)
{
    if (k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda trimmed_mean: no updates (k = 0)");
    if (!(trim_ratio >= 0.0 && trim_ratio < 0.5))
        return fm_error(FM_ERR_INVALID_ARG, "cuda trimmed_mean: trim_ratio %g is outside [0, 0.5)", trim_ratio);
    size_t t = (size_t)floor(trim_ratio * (double)k); /* as fm_agg_trimmed_mean */
    if (2 * t >= k)
        t = (k - 1) / 2;
    return fm_cuda_agg_sorted_mean(out, x, k, n, t, k - t, FM_CUDA_AGG_SORT_AUTO);
}

/* ---- lists kept on the device ------------------------------------------------------------------------------ */

struct fm_cuda_agg_list {
    void *mem; /* k device pointers, then k weights when has_w (the layout of list_upload) */
    size_t k;
    int has_w;
};

extern "C" fm_status fm_cuda_agg_list_create(fm_cuda_agg_list **out, const float *const *x, const float *w, size_t k)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "cuda agg_list_create: NULL out");
    *out = nullptr;
    if (!x || k == 0 || k > UINT32_MAX)
        return fm_error(FM_ERR_INVALID_ARG, "cuda agg_list_create: no updates or k = %zu", k);
    for (size_t i = 0; i < k; i++)
        if (!x[i])
            return fm_error(FM_ERR_INVALID_ARG, "cuda agg_list_create: update %zu is a NULL pointer", i);
    fm_cuda_agg_list *l = (fm_cuda_agg_list *)calloc(1, sizeof *l);
    const size_t pbytes = k * sizeof(const float *), bytes = pbytes + (w ? k * sizeof(float) : 0);
    unsigned char *host = (unsigned char *)malloc(bytes);
    fm_status st = l && host ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "cuda agg_list_create: no host memory");
    if (st == FM_OK) {
        memcpy(host, x, pbytes);
        if (w)
            memcpy(host + pbytes, w, k * sizeof(float));
        st = fm_cuda_malloc(&l->mem, bytes);
    }
    if (st == FM_OK)
        st = fm_cuda_memcpy(l->mem, host, bytes, 0);
    free(host);
    if (st != FM_OK) {
        if (l)
            fm_cuda_free(l->mem);
        free(l);
        return st;
    }
    l->k = k;
    l->has_w = w != nullptr;
    *out = l;
    return FM_OK;
}

extern "C" void fm_cuda_agg_list_destroy(fm_cuda_agg_list *list)
{
    if (!list)
        return;
    fm_cuda_free(list->mem);
    free(list);
}

extern "C" fm_status fm_cuda_agg_weighted_sum_list(float *out, const fm_cuda_agg_list *list, size_t n,
                                                   int accumulate)
{
    if (!list || !list->has_w)
        return fm_error(FM_ERR_INVALID_ARG, "cuda weighted_sum_list: %s", list ? "the list has no weights" : "NULL list");
    if (n == 0)
        return FM_OK;
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "cuda weighted_sum_list: NULL output for %zu coordinates", n);
    return FM_LAUNCH_1D(weighted_sum_kernel, n, out, (const float *const *)list->mem, list_weights(list->mem, list->k),
                        (unsigned)list->k, n, accumulate);
}

extern "C" fm_status fm_cuda_agg_sorted_mean_list(float *out, const fm_cuda_agg_list *list, size_t n, size_t lo,
                                                  size_t hi, fm_cuda_agg_sort_path path)
{
    if (!list)
        return fm_error(FM_ERR_INVALID_ARG, "cuda sorted_mean_list: NULL list");
    FM_TRY(sorted_args(list->k, lo, hi, &path));
    if (n == 0)
        return FM_OK;
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "cuda sorted_mean_list: NULL output for %zu coordinates", n);
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    return sorted_launch(stream, out, (const float *const *)list->mem, list->k, n, lo, hi, path);
}

/* ---- pairwise squared distances (Krum) -------------------------------------------------------------------- */

/* Pairs (i, j), i < j, are numbered row by row: row i holds k−1−i of them. Moves (i, pos) forward until pos lies
 * inside row i. */
static __device__ __forceinline__ void pair_seek(int k, int *i, int *pos)
{
    while (*i < k - 1 && *pos >= k - 1 - *i) {
        *pos -= k - 1 - *i;
        (*i)++;
    }
}

/* Block b owns row b of `partial` (npairs doubles) and, inside it, thread t the pairs p ≡ t (mod blockDim): each
 * slot has one writer, so the sums need no atomics. Tiles of DIST_TC coordinates go to the blocks round-robin. */
static __global__ void __launch_bounds__(DIST_THREADS)
    sqdist_partial_kernel(double *partial,                    // (DIST_BLOCKS, npairs)
                          const float *const *__restrict__ x, // (k) pointers to full vectors
                          int k, size_t off, size_t len, int first)
{
    extern __shared__ float tile_sh[]; // (k, DIST_TC + 1)
    constexpr int LD = DIST_TC + 1;
    const int npairs = k * (k - 1) / 2;
    double *mine = partial + (size_t)blockIdx.x * npairs;
    if (first)
        for (int p = threadIdx.x; p < npairs; p += blockDim.x)
            mine[p] = 0.0;
    const size_t ntiles = (len + DIST_TC - 1) / DIST_TC;
    for (size_t t = blockIdx.x; t < ntiles; t += gridDim.x) {
        const size_t c0 = t * DIST_TC;
        const int nc = (int)(len - c0 < (size_t)DIST_TC ? len - c0 : (size_t)DIST_TC);
        __syncthreads(); /* the previous tile has been read by every thread */
        for (int e = threadIdx.x; e < k * DIST_TC; e += blockDim.x) {
            const int r = e / DIST_TC, c = e % DIST_TC;
            tile_sh[r * LD + c] = c < nc ? x[r][off + c0 + c] : 0.0f; /* padding adds (0 − 0)² = 0 */
        }
        __syncthreads();
        int i = 0, pos = (int)threadIdx.x;
        pair_seek(k, &i, &pos);
        for (int p = threadIdx.x; p < npairs; p += blockDim.x) {
            const float *a = tile_sh + i * LD, *b = tile_sh + (i + 1 + pos) * LD;
            double s = 0.0;
#pragma unroll 8
            for (int c = 0; c < DIST_TC; c++) {
                const double d = (double)a[c] - (double)b[c];
                s += d * d;
            }
            mine[p] += s;
            pos += (int)blockDim.x;
            pair_seek(k, &i, &pos);
        }
    }
}

static __global__ void sqdist_final_kernel(double *dist,          // (npairs)
                                           const double *partial, // (nblocks, npairs)
                                           size_t npairs, unsigned nblocks)
{
    for (FM_GRID_STRIDE(p, npairs)) {
        double s = 0.0;
        for (unsigned b = 0; b < nblocks; b++)
            s += partial[(size_t)b * npairs + p];
        dist[p] = s;
    }
}

extern "C" fm_status fm_cuda_agg_pairwise_sqdist(double *dist, const float *const *x, size_t k, const size_t *offs,
                                                 const size_t *lens, size_t nr)
{
    if (!dist || !x || (nr > 0 && (!offs || !lens)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda pairwise_sqdist: NULL argument");
    if (k < 2 || k > FM_CUDA_AGG_DIST_MAX_K)
        return fm_error(k < 2 ? FM_ERR_INVALID_ARG : FM_ERR_UNSUPPORTED,
                        "cuda pairwise_sqdist: %zu updates; the GPU kernel takes 2 to %d", k, FM_CUDA_AGG_DIST_MAX_K);
    const size_t npairs = k * (k - 1) / 2;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    void *mem = nullptr;
    FM_TRY(list_upload("cuda pairwise_sqdist", x, nullptr, k, stream, &mem));
    double *partial = nullptr, *dd = nullptr;
    fm_status st = fm_scratch_alloc((void **)&partial, (size_t)DIST_BLOCKS * npairs * sizeof(double), stream);
    if (st == FM_OK)
        st = fm_scratch_alloc((void **)&dd, npairs * sizeof(double), stream);
    const size_t smem = k * (DIST_TC + 1) * sizeof(float); /* ≤ 33 KiB for k ≤ 256 */
    int first = 1;
    for (size_t r = 0; r < nr && st == FM_OK; r++) {
        if (lens[r] == 0)
            continue;
        sqdist_partial_kernel<<<DIST_BLOCKS, DIST_THREADS, smem, stream>>>(partial, (const float *const *)mem, (int)k,
                                                                          offs[r], lens[r], first);
        st = FM_CUDA_LAUNCH_CHECK("sqdist_partial_kernel");
        first = 0;
    }
    if (st == FM_OK && first) /* no coordinates at all: every distance is 0 */
        st = fm_cuda_memset(partial, 0, (size_t)DIST_BLOCKS * npairs * sizeof(double));
    if (st == FM_OK)
        st = FM_LAUNCH_1D(sqdist_final_kernel, npairs, dd, (const double *)partial, npairs, DIST_BLOCKS);
    double *host = st == FM_OK ? (double *)malloc(npairs * sizeof(double)) : nullptr;
    if (st == FM_OK && !host)
        st = fm_error(FM_ERR_NO_MEMORY, "cuda pairwise_sqdist: no host memory for %zu distances", npairs);
    if (st == FM_OK)
        st = fm_cuda_memcpy(host, dd, npairs * sizeof(double), 1);
    if (st == FM_OK) {
        size_t p = 0;
        for (size_t i = 0; i < k; i++) {
            dist[i * k + i] = 0.0;
            for (size_t j = i + 1; j < k; j++, p++) {
                dist[i * k + j] = host[p];
                dist[j * k + i] = host[p];
            }
        }
    }
    free(host);
    st = fm_scratch_free(dd, stream, st);
    st = fm_scratch_free(partial, stream, st);
    return fm_scratch_free(mem, stream, st);
}

/* ---- finiteness and norm of one update ------------------------------------------------------------------- */

typedef struct check_state {
    double sumsq;
    unsigned long long first_bad; /* ULLONG_MAX: none */
} check_state;

template <unsigned BLOCK>
static __device__ __forceinline__ unsigned long long block_min_u64(unsigned long long x, unsigned long long *sh)
{
    sh[threadIdx.x] = x;
    __syncthreads();
    for (unsigned s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && sh[threadIdx.x + s] < sh[threadIdx.x])
            sh[threadIdx.x] = sh[threadIdx.x + s];
        __syncthreads();
    }
    const unsigned long long r = sh[0];
    __syncthreads();
    return r;
}

static __global__ void __launch_bounds__(FM_RED_BLOCK)
    check_partial_kernel(check_state *partial, // (gridDim.x)
                         const float *x,       // (n)
                         size_t n)
{
    __shared__ double shd[FM_RED_BLOCK];
    __shared__ unsigned long long shu[FM_RED_BLOCK];
    double s = 0.0;
    unsigned long long bad = ULLONG_MAX;
    for (FM_GRID_STRIDE(i, n)) {
        const float v = x[i];
        if (!isfinite(v) && bad == ULLONG_MAX)
            bad = i; /* a thread visits increasing i: its first is its smallest */
        s += (double)v * v;
    }
    s = fm_block_sum<FM_RED_BLOCK>(s, shd);
    bad = block_min_u64<FM_RED_BLOCK>(bad, shu);
    if (threadIdx.x == 0) {
        partial[blockIdx.x].sumsq = s;
        partial[blockIdx.x].first_bad = bad;
    }
}

static __global__ void __launch_bounds__(FM_RED_BLOCK)
    check_final_kernel(check_state *state, const check_state *partial, unsigned nparts)
{
    __shared__ double shd[FM_RED_BLOCK];
    __shared__ unsigned long long shu[FM_RED_BLOCK];
    double s = 0.0;
    unsigned long long bad = ULLONG_MAX;
    for (unsigned p = threadIdx.x; p < nparts; p += FM_RED_BLOCK) {
        s += partial[p].sumsq;
        bad = partial[p].first_bad < bad ? partial[p].first_bad : bad;
    }
    s = fm_block_sum<FM_RED_BLOCK>(s, shd);
    bad = block_min_u64<FM_RED_BLOCK>(bad, shu);
    if (threadIdx.x == 0) {
        state->sumsq = s;
        state->first_bad = bad;
    }
}

extern "C" fm_status fm_cuda_agg_check_norm(const float *x, size_t n, size_t *first_bad, double *sumsq)
{
    if (!first_bad || !sumsq)
        return fm_error(FM_ERR_INVALID_ARG, "cuda check_norm: NULL output");
    *first_bad = SIZE_MAX;
    *sumsq = 0.0;
    if (n == 0)
        return FM_OK;
    if (!x)
        return fm_error(FM_ERR_INVALID_ARG, "cuda check_norm: NULL x");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    /* the number of blocks depends on n only: the same n gives the same summation order on every GPU */
    const size_t need = (n + FM_RED_BLOCK - 1) / FM_RED_BLOCK;
    const unsigned nparts = (unsigned)(need < CHECK_MAX_BLOCKS ? need : CHECK_MAX_BLOCKS);
    check_state *partial = nullptr, *state = nullptr;
    fm_status st = fm_scratch_alloc((void **)&partial, (size_t)nparts * sizeof(check_state), stream);
    if (st == FM_OK)
        st = fm_scratch_alloc((void **)&state, sizeof(check_state), stream);
    if (st == FM_OK) {
        check_partial_kernel<<<nparts, FM_RED_BLOCK, 0, stream>>>(partial, x, n);
        st = FM_CUDA_LAUNCH_CHECK("check_partial_kernel");
    }
    if (st == FM_OK) {
        check_final_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(state, partial, nparts);
        st = FM_CUDA_LAUNCH_CHECK("check_final_kernel");
    }
    check_state host;
    memset(&host, 0, sizeof host);
    if (st == FM_OK)
        st = fm_cuda_memcpy(&host, state, sizeof host, 1);
    if (st == FM_OK) {
        *first_bad = host.first_bad == ULLONG_MAX ? SIZE_MAX : (size_t)host.first_bad;
        *sumsq = host.sumsq;
    }
    st = fm_scratch_free(state, stream, st);
    return fm_scratch_free(partial, stream, st);
}

/* ---- elementwise: scaling, server rules, site corrections, benchmark inputs ------------------------------- */

static __global__ void scale_copy_kernel(float *dst, const float *src, double scale, size_t n)
{
    for (FM_GRID_STRIDE(i, n))
        dst[i] = (float)__dmul_rn(scale, (double)src[i]);
}

static __global__ void scale_f32_kernel(float *dst, const float *src, float s, size_t n)
{
    for (FM_GRID_STRIDE(i, n))
        dst[i] = __fmul_rn(src[i], s);
}

extern "C" fm_status fm_cuda_agg_scale_copy(float *dst, const float *src, double scale, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "cuda scale_copy: NULL pointer");
    return FM_LAUNCH_1D(scale_copy_kernel, n, dst, src, scale, n);
}

extern "C" fm_status fm_cuda_agg_scale_f32(float *dst, const float *src, float s, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "cuda scale_f32: NULL pointer");
    return FM_LAUNCH_1D(scale_f32_kernel, n, dst, src, s, n);
}

/* The CPU's loops of fm_strategy_finish_round, one expression at a time (see the file comment). */
static __global__ void server_rule_kernel(int rule, float *w, float *m, float *v, float *c, const float *acc_c,
                                          const float *d, size_t n, fm_cuda_rule_params p)
{
    const float omb1 = 1.0f - p.beta1, omb2 = 1.0f - p.beta2, ombeta = 1.0f - p.momentum;
    for (FM_GRID_STRIDE(i, n)) {
        switch (rule) {
        case FM_CUDA_RULE_AVGM: {
            const float mi = __fadd_rn(__fmul_rn(p.momentum, m[i]), __fmul_rn(ombeta, d[i]));
            m[i] = mi;
            w[i] = __fadd_rn(w[i], __fmul_rn(p.eta, mi));
            break;
        }
        case FM_CUDA_RULE_ADAGRAD:
        case FM_CUDA_RULE_ADAM:
        case FM_CUDA_RULE_YOGI: {
            const float g = d[i], g2 = __fmul_rn(g, g);
            const float mi = __fadd_rn(__fmul_rn(p.beta1, m[i]), __fmul_rn(omb1, g));
            float vi = v[i];
            if (rule == FM_CUDA_RULE_ADAGRAD) {
                vi = __fadd_rn(vi, g2);
            } else if (rule == FM_CUDA_RULE_ADAM) {
                vi = __fadd_rn(__fmul_rn(p.beta2, vi), __fmul_rn(omb2, g2));
            } else {
                const float diff = __fsub_rn(vi, g2);
                const float sgn = (float)((diff > 0.0f) - (diff < 0.0f));
                vi = __fsub_rn(vi, __fmul_rn(__fmul_rn(omb2, g2), sgn));
            }
            m[i] = mi;
            v[i] = vi;
            w[i] = __fadd_rn(w[i], __fdiv_rn(__fmul_rn(p.eta, mi), __fadd_rn(__fsqrt_rn(vi), p.tau)));
            break;
        }
        case FM_CUDA_RULE_SCAFFOLD:
            w[i] = __fadd_rn(w[i], __fmul_rn(p.eta, d[i]));
            c[i] = __fadd_rn(c[i], __fmul_rn(acc_c[i], p.inv_sites));
            break;
        default: w[i] = __fadd_rn(w[i], __fmul_rn(p.eta, d[i])); break;
        }
    }
}

extern "C" fm_status fm_cuda_agg_server_rule(fm_cuda_server_rule rule, float *w, float *m, float *v, float *c,
                                             const float *acc_c, const float *d, size_t n, fm_cuda_rule_params p)
{
    if (n == 0)
        return FM_OK;
    const int needs_m = rule == FM_CUDA_RULE_AVGM || rule == FM_CUDA_RULE_ADAGRAD || rule == FM_CUDA_RULE_ADAM ||
                        rule == FM_CUDA_RULE_YOGI;
    const int needs_v = needs_m && rule != FM_CUDA_RULE_AVGM;
    if ((int)rule < FM_CUDA_RULE_PLAIN || (int)rule > FM_CUDA_RULE_SCAFFOLD)
        return fm_error(FM_ERR_INVALID_ARG, "cuda server_rule: rule %d", (int)rule);
    if (!w || !d || (needs_m && !m) || (needs_v && !v) || (rule == FM_CUDA_RULE_SCAFFOLD && (!c || !acc_c)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda server_rule: a state vector of rule %d is NULL", (int)rule);
    return FM_LAUNCH_1D(server_rule_kernel, n, (int)rule, w, m, v, c, acc_c, d, n, p);
}

static __global__ void site_correct_kernel(float *grad, const float *params, const float *anchor, float mu,
                                           const float *pw, const float *cg, const float *cl, size_t n)
{
    for (FM_GRID_STRIDE(i, n)) {
        float g = grad[i];
        if (anchor)
            g = __fadd_rn(g, __fmul_rn(pw ? pw[i] : mu, __fsub_rn(params[i], anchor[i])));
        if (cg)
            g = __fadd_rn(g, __fsub_rn(cg[i], cl[i]));
        grad[i] = g;
    }
}

extern "C" fm_status fm_cuda_site_correct_grad(float *grad, const float *params, const float *anchor, float prox_mu,
                                               const float *prox_weight, const float *c_global, const float *c_local,
                                               size_t n)
{
    /* the CPU adds the proximal term only when it has a weight (prox_weight, or prox_mu ≠ 0) */
    if (!params || !(prox_weight || prox_mu != 0.0f))
        anchor = nullptr;
    if (!c_global || !c_local)
        c_global = c_local = nullptr;
    if (n == 0 || (!anchor && !c_global))
        return FM_OK;
    if (!grad)
        return fm_error(FM_ERR_INVALID_ARG, "cuda site_correct_grad: NULL grad");
    return FM_LAUNCH_1D(site_correct_kernel, n, grad, params, anchor, prox_mu, prox_weight, c_global, c_local, n);
}

static __device__ __forceinline__ uint64_t splitmix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static __global__ void fill_uniform_kernel(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    for (FM_GRID_STRIDE(i, n)) {
        const float u = (float)(splitmix64(seed ^ splitmix64(i)) >> 40) * (1.0f / 16777216.0f);
        x[i] = lo + (hi - lo) * u;
    }
}

extern "C" fm_status fm_cuda_agg_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    if (n == 0)
        return FM_OK;
    if (!x)
        return fm_error(FM_ERR_INVALID_ARG, "cuda fill_uniform: NULL x");
    return FM_LAUNCH_1D(fill_uniform_kernel, n, x, n, seed, lo, hi);
}
