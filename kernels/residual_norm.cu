/* The pre-LN block's residual add fused with the layernorm that follows it (see kernels/model_ops.h): one warp per
 * row computes h = a + b, writes h, and normalises it while the row is still in registers, writing the output in
 * fp32 or straight in bf16 (the input of the next GEMMs under bf16: no cast kernel). Backward adds layernorm's input
 * gradient into the residual stream's gradient and sums dweight and dbias in the same pass over the rows.
 *
 * The arithmetic is kernels/layernorm.cu's (fp32, two passes for mean and variance, 1/sqrtf, the same expressions
 * and the same per-lane order c = lane, lane + 32, …, then the warp's butterfly), so h, mean, rstd, the fp32 output
 * and the input gradient are expected to carry the bits of the residual kernel followed by the layernorm kernels
 * (gpu.fused_kernels counts the elements that differ; it holds both to a float64 reference); dweight and
 * dbias are the same sums in another fixed order (each lane owns the columns c ≡ lane mod 32 of every row it sees,
 * so it keeps their running sums in registers across rows: partial sums per block of a fixed grid, then a
 * fixed-order second pass — deterministic, no atomics).
 *
 * A row of up to 32·NPER floats lives in registers, NPER ∈ {4, 8, 16, 24, 32} chosen per call (C ≤ 1024: every
 * CLIP width up to ViT-L). Longer rows: forward re-reads a and b in each of its three passes (no registers), and
 * backward runs kernels/layernorm.cu's two kernels and a cast. */
#include <cuda_bf16.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/model_ops.h"
#include "kernels/rows_cols.cuh"

#define RN_MAX_NPER 32
/* The backward grid: a fixed number of blocks (not the GPU's SM count), so that dweight and dbias sum their
 * partials in the same order on every GPU. 256 blocks of 8 warps fill an H200 (132 SMs, two blocks each) once. */
#define RN_BWD_BLOCKS 256u

static __device__ __forceinline__ void store_out(float *out, uint16_t *out_lp, size_t i, float y)
{
    if (out_lp)
        out_lp[i] = __bfloat16_as_ushort(__float2bfloat16_rn(y));
    else
        out[i] = y;
}

/* ---- forward ---------------------------------------------------------------------------------------------- */

template <int NPER>
static __global__ void __launch_bounds__(FM_WARP *FM_ROWS_PER_BLOCK)
    residual_layernorm_forward_kernel(float *h,            // (N, C) or NULL
                                      float *out,          // (N, C) fp32, or NULL when out_lp
                                      uint16_t *out_lp,    // (N, C) bf16, or NULL
                                      float *mean,         // (N)
                                      float *rstd,         // (N)
                                      const float *a,      // (N, C)
                                      const float *b,      // (N, C) or NULL
                                      const float *weight, // (C)
                                      const float *bias,   // (C)
                                      size_t N, size_t C, float eps)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const size_t o = row * C;
    float x[NPER];
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < NPER; t++) {
        const size_t c = threadIdx.x + (size_t)FM_WARP * t;
        x[t] = 0.0f;
        if (c < C) {
            x[t] = b ? a[o + c] + b[o + c] : a[o + c];
            if (h) /* after a is read: h may be a itself */
                h[o + c] = x[t];
            s += x[t];
        }
    }
    const float m = fm_warp_sum(s) / (float)C;
    float v = 0.0f;
#pragma unroll
    for (int t = 0; t < NPER; t++) {
        const size_t c = threadIdx.x + (size_t)FM_WARP * t;
        if (c < C) {
            float d = x[t] - m;
            v += d * d;
        }
    }
    const float r = 1.0f / sqrtf(fm_warp_sum(v) / (float)C + eps); /* IEEE-rounded, as layernorm.cu */
#pragma unroll
    for (int t = 0; t < NPER; t++) {
        const size_t c = threadIdx.x + (size_t)FM_WARP * t;
        if (c < C)
            store_out(out, out_lp, o + c, (x[t] - m) * r * weight[c] + bias[c]);
    }
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

/* Rows longer than 32·RN_MAX_NPER: the same sums, re-reading a and b in each pass; h is written in the last pass,
 * after which a is not read again (in place stays correct). */
static __global__ void residual_layernorm_forward_long_kernel(float *h, float *out, uint16_t *out_lp, float *mean,
                                                              float *rstd, const float *a, const float *b,
                                                              const float *weight, const float *bias, size_t N,
                                                              size_t C, float eps)
{
    const size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= N)
        return;
    const size_t o = row * C;
    float s = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP)
        s += b ? a[o + c] + b[o + c] : a[o + c];
    const float m = fm_warp_sum(s) / (float)C;
    float v = 0.0f;
    for (size_t c = threadIdx.x; c < C; c += FM_WARP) {
        float d = (b ? a[o + c] + b[o + c] : a[o + c]) - m;
        v += d * d;
    }
    const float r = 1.0f / sqrtf(fm_warp_sum(v) / (float)C + eps);
    for (size_t c = threadIdx.x; c < C; c += FM_WARP) {
        const float x = b ? a[o + c] + b[o + c] : a[o + c];
        if (h)
            h[o + c] = x;
        store_out(out, out_lp, o + c, (x - m) * r * weight[c] + bias[c]);
    }
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

/* ---- backward --------------------------------------------------------------------------------------------- */

/* Warp w of block blk takes rows blk·8 + w, then + 8·gridDim.x, …: dres += s·(g − mean(g) − x̂·mean(g·x̂)) with
 * g = dout·weight, x̂ = (h − mean)·rstd. Each lane sums dout·x̂ and dout of its columns over its rows; the block's 8
 * warps are then added in order into partial[blockIdx.x] = (dweight, dbias) for the finishing pass. */
template <int NPER>
static __global__ void __launch_bounds__(FM_WARP *FM_ROWS_PER_BLOCK)
    residual_layernorm_backward_kernel(float *dres,         // (N, C), accumulated
                                       uint16_t *dres_lp,   // (N, C) or NULL: the updated dres in bf16
                                       float *partial,      // (gridDim.x, 2, C), or NULL: no parameter gradients
                                       const float *dout,   // (N, C)
                                       const float *h,      // (N, C)
                                       const float *weight, // (C)
                                       const float *mean,   // (N)
                                       const float *rstd,   // (N)
                                       size_t N, size_t C)
{
    __shared__ float sh[2][FM_ROWS_PER_BLOCK][FM_WARP];
    const unsigned lane = threadIdx.x, warp = threadIdx.y;
    float accw[NPER], accb[NPER];
#pragma unroll
    for (int t = 0; t < NPER; t++)
        accw[t] = accb[t] = 0.0f;
    const size_t stride = (size_t)gridDim.x * FM_ROWS_PER_BLOCK;
    for (size_t row = (size_t)blockIdx.x * FM_ROWS_PER_BLOCK + warp; row < N; row += stride) {
        const size_t o = row * C;
        const float m = mean[row], s = rstd[row];
        float xh[NPER], g[NPER];
        float g_sum = 0.0f, gx_sum = 0.0f;
#pragma unroll
        for (int t = 0; t < NPER; t++) {
            const size_t c = lane + (size_t)FM_WARP * t;
            xh[t] = g[t] = 0.0f;
            if (c < C) {
                const float dy = dout[o + c];
                xh[t] = (h[o + c] - m) * s;
                g[t] = dy * weight[c];
                g_sum += g[t];
                gx_sum += g[t] * xh[t];
                accw[t] += dy * xh[t];
                accb[t] += dy;
            }
        }
        const float g_mean = fm_warp_sum(g_sum) / (float)C, gx_mean = fm_warp_sum(gx_sum) / (float)C;
#pragma unroll
        for (int t = 0; t < NPER; t++) {
            const size_t c = lane + (size_t)FM_WARP * t;
            if (c < C) {
                const float d = dres[o + c] + s * (g[t] - g_mean - xh[t] * gx_mean);
                dres[o + c] = d;
                if (dres_lp)
                    dres_lp[o + c] = __bfloat16_as_ushort(__float2bfloat16_rn(d));
            }
        }
    }
    if (!partial) /* uniform over the grid */
        return;
#pragma unroll
    for (int t = 0; t < NPER; t++) {
        sh[0][warp][lane] = accw[t];
        sh[1][warp][lane] = accb[t];
        __syncthreads();
        const size_t c = lane + (size_t)FM_WARP * t;
        if (warp < 2 && c < C) { /* warp 0 sums dweight, warp 1 dbias, each over the 8 warps in order */
            float sum = 0.0f;
            for (unsigned w = 0; w < FM_ROWS_PER_BLOCK; w++)
                sum += sh[warp][w][lane];
            partial[((size_t)blockIdx.x * 2 + warp) * C + c] = sum;
        }
        __syncthreads();
    }
}

/* ---- launchers -------------------------------------------------------------------------------------------- */

/* Registers per lane for a row of C: the smallest instantiated NPER ≥ ⌈C/32⌉, or 0 when the row is too long. */
static int nper_for(size_t C)
{
    const size_t need = (C + FM_WARP - 1) / FM_WARP;
    static const int sizes[] = {4, 8, 16, 24, RN_MAX_NPER};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (need <= (size_t)sizes[i])
            return sizes[i];
    return 0;
}

extern "C" fm_status fm_cuda_residual_layernorm_forward(float *h, void *out, fm_gemm_type out_type, float *mean,
                                                        float *rstd, const float *a, const float *b,
                                                        const float *weight, const float *bias, int N, int C, float eps)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_forward: negative size (N=%d, C=%d)", N, C);
    if (out_type != FM_GEMM_F32 && out_type != FM_GEMM_BF16)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_forward: unknown output type %d", (int)out_type);
    if (N == 0 || C == 0)
        return FM_OK;
    if (!out || !mean || !rstd || !a || !weight || !bias || (b && !h))
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_forward: NULL %s",
                        !out      ? "out"
                        : !mean   ? "mean"
                        : !rstd   ? "rstd"
                        : !a      ? "a"
                        : !weight ? "weight"
                        : !bias   ? "bias"
                                  : "h (a residual add needs somewhere to write a + b)");
    float *o32 = out_type == FM_GEMM_F32 ? (float *)out : NULL;
    uint16_t *o16 = out_type == FM_GEMM_BF16 ? (uint16_t *)out : NULL;
    float *hw = b ? h : NULL; /* without an add there is no new h to write */
    const size_t n = (size_t)N, c = (size_t)C;
    switch (nper_for(c)) {
    case 4:
        return FM_LAUNCH_ROWS(residual_layernorm_forward_kernel<4>, n, hw, o32, o16, mean, rstd, a, b, weight, bias, n,
                              c, eps);
    case 8:
        return FM_LAUNCH_ROWS(residual_layernorm_forward_kernel<8>, n, hw, o32, o16, mean, rstd, a, b, weight, bias, n,
                              c, eps);
    case 16:
        return FM_LAUNCH_ROWS(residual_layernorm_forward_kernel<16>, n, hw, o32, o16, mean, rstd, a, b, weight, bias, n,
                              c, eps);
    case 24:
        return FM_LAUNCH_ROWS(residual_layernorm_forward_kernel<24>, n, hw, o32, o16, mean, rstd, a, b, weight, bias, n,
                              c, eps);
    case RN_MAX_NPER:
        return FM_LAUNCH_ROWS(residual_layernorm_forward_kernel<RN_MAX_NPER>, n, hw, o32, o16, mean, rstd, a, b, weight,
                              bias, n, c, eps);
    default:
        return FM_LAUNCH_ROWS(residual_layernorm_forward_long_kernel, n, hw, o32, o16, mean, rstd, a, b, weight, bias,
                              n, c, eps);
    }
}

template <int NPER>
static fm_status backward_launch(unsigned blocks, cudaStream_t stream, float *dres, uint16_t *dres_lp, float *partial,
                                 const float *dout, const float *h, const float *weight, const float *mean,
                                 const float *rstd, size_t N, size_t C)
{
    residual_layernorm_backward_kernel<NPER><<<blocks, dim3(FM_WARP, FM_ROWS_PER_BLOCK), 0, stream>>>(
        dres, dres_lp, partial, dout, h, weight, mean, rstd, N, C);
    return FM_CUDA_LAUNCH_CHECK("residual_layernorm_backward_kernel");
}

extern "C" fm_status fm_cuda_residual_layernorm_backward(float *dres, uint16_t *dres_lp, float *dweight, float *dbias,
                                                         const float *dout, const float *h, const float *weight,
                                                         const float *mean, const float *rstd, int N, int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_backward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0)
        return FM_OK;
    if (!dres || !dout || !h || !weight || !mean || !rstd)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_backward: NULL %s",
                        !dres     ? "dres (the residual stream's gradient)"
                        : !dout   ? "dout"
                        : !h      ? "h"
                        : !weight ? "weight"
                        : !mean   ? "mean"
                                  : "rstd");
    const size_t n = (size_t)N, c = (size_t)C;
    const int nper = nper_for(c);
    if (nper == 0) { /* long rows: the two layernorm kernels, then the cast */
        FM_TRY(fm_cuda_layernorm_backward(dres, dweight, dbias, dout, h, weight, mean, rstd, N, C));
        return dres_lp ? fm_cuda_f32_to_bf16(dres_lp, dres, n * c) : FM_OK;
    }
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    struct cublasLtContext *lt = nullptr;
    void *ws = nullptr;
    size_t ws_bytes = 0;
    size_t blocks = (n + FM_ROWS_PER_BLOCK - 1) / FM_ROWS_PER_BLOCK;
    blocks = blocks < RN_BWD_BLOCKS ? blocks : RN_BWD_BLOCKS;
    float *partial = nullptr;
    if (dweight || dbias) {
        /* The partials live in the cuBLAS(Lt) workspace, as fm_colsum's (rows_cols.cuh): used in stream order and
         * read only by the finishing pass below, so later GEMMs may reuse it. */
        FM_TRY(fm_cuda_get_cublaslt(&lt, &ws, &ws_bytes));
        const size_t fit = ws_bytes / (2 * c * sizeof(float));
        if (fit < 1)
            return fm_error(FM_ERR_INTERNAL, "cuda residual_layernorm_backward: workspace of %zu bytes", ws_bytes);
        blocks = blocks < fit ? blocks : fit;
        partial = (float *)ws;
    }
    const unsigned g = (unsigned)blocks;
    switch (nper) {
    case 4: FM_TRY(backward_launch<4>(g, stream, dres, dres_lp, partial, dout, h, weight, mean, rstd, n, c)); break;
    case 8: FM_TRY(backward_launch<8>(g, stream, dres, dres_lp, partial, dout, h, weight, mean, rstd, n, c)); break;
    case 16: FM_TRY(backward_launch<16>(g, stream, dres, dres_lp, partial, dout, h, weight, mean, rstd, n, c)); break;
    case 24: FM_TRY(backward_launch<24>(g, stream, dres, dres_lp, partial, dout, h, weight, mean, rstd, n, c)); break;
    default:
        FM_TRY(backward_launch<RN_MAX_NPER>(g, stream, dres, dres_lp, partial, dout, h, weight, mean, rstd, n, c));
        break;
    }
    if (!partial)
        return FM_OK;
    /* dweight[c] += Σ_blk partial[blk][0][c], dbias likewise, blocks in order (rows_cols.cuh's second pass) */
    return FM_LAUNCH_1D(fm_colsum_finish_kernel, 2 * c, dweight, dbias, (const float *)partial, blocks, 2, c);
}
