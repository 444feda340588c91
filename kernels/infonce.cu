/* CUDA twin of src/cpu/infonce.c: the symmetric InfoNCE (CLIP) loss with a learnable temperature,
 * logits = exp(logit_scale)·img·txtᵀ, loss = (CE(logits, diag) + CE(logitsᵀ, diag)) / 2. logit_scale,
 * the loss and dlogit_scale are device scalars: the kernels read and write them, nothing waits for the
 * host. Reductions (the loss, dlogit_scale) are deterministic: per-row terms in double, then one block
 * sums them in a fixed tree.
 *
 * The logits are one plain dot product per thread (N² threads, D FMAs each): correct and simple for the
 * batch sizes a site trains with (N ≤ a few thousand); a cuBLAS GEMM with a device-side alpha is the
 * upgrade when the loss shows up in profiles. */
#include <math.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/reduce.cuh"

/* logits[i][j] into probs_i2t and, transposed, probs_t2i. */
static __global__ void infonce_logits_kernel(float *probs_i2t,         // (N, N)
                                             float *probs_t2i,         // (N, N)
                                             const float *img,         // (N, D)
                                             const float *txt,         // (N, D)
                                             const float *logit_scale, // scalar
                                             size_t N, size_t D)
{
    const float scale = expf(*logit_scale);
    for (FM_GRID_STRIDE(idx, N * N)) {
        const size_t i = idx / N, j = idx % N;
        float dot = 0.0f;
        for (size_t d = 0; d < D; d++)
            dot += img[i * D + d] * txt[j * D + d];
        const float x = scale * dot;
        probs_i2t[idx] = x;
        probs_t2i[j * N + i] = x;
    }
}

/* Block r < N: row r of probs_i2t; block N + r: row r of probs_t2i; target r, softmax in place. */
static __global__ void __launch_bounds__(FM_RED_BLOCK)
    infonce_rows_kernel(double *row_nll,   // (2N)
                        float *probs_i2t,  // (N, N)
                        float *probs_t2i,  // (N, N)
                        size_t N)
{
    __shared__ float shf[FM_RED_BLOCK];
    __shared__ double shd[FM_RED_BLOCK];
    const size_t r = blockIdx.x % N;
    float *row = (blockIdx.x < N ? probs_i2t : probs_t2i) + r * N;
    const double nll = fm_softmax_row<FM_RED_BLOCK>(row, row, N, (long long)r, shf, shd);
    if (threadIdx.x == 0)
        row_nll[blockIdx.x] = nll;
}

/* One block: out = factor·Σ terms (assigned), or out += (float)(exp(logit_scale)·Σ terms) (accumulated). */
static __global__ void __launch_bounds__(FM_RED_BLOCK)
    infonce_total_kernel(float *out, const double *terms, size_t n, double factor, const float *logit_scale)
{
    __shared__ double sh[FM_RED_BLOCK];
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += FM_RED_BLOCK)
        s += terms[i];
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x != 0)
        return;
    if (logit_scale)
        *out += (float)((double)expf(*logit_scale) * s);
    else
        *out = (float)(factor * s);
}

/* dL/dlogits_ij = c·(P_i2t[i,j] + P_t2i[j,i] − 2δij), c = dloss/(2N) — as the CPU's INFONCE_G. */
static __device__ __forceinline__ float infonce_g(const float *pi2t, const float *pt2i, size_t i, size_t j, size_t N,
                                                  float c)
{
    return c * (pi2t[i * N + j] + pt2i[j * N + i] - (i == j ? 2.0f : 0.0f));
}

/* dimg[i,d] += scale·Σ_j G(i,j)·txt[j,d] (wrt_txt = 0), or dtxt[j,d] += scale·Σ_i G(i,j)·img[i,d]. */
static __global__ void infonce_dx_kernel(float *dx,                // (N, D), accumulated
                                         const float *other,       // (N, D): txt for dimg, img for dtxt
                                         const float *pi2t,        // (N, N)
                                         const float *pt2i,        // (N, N)
                                         const float *logit_scale, // scalar
                                         size_t N, size_t D, float c, int wrt_txt)
{
    const float scale = expf(*logit_scale);
    for (FM_GRID_STRIDE(idx, N * D)) {
        const size_t row = idx / D, d = idx % D;
        float acc = 0.0f;
        for (size_t m = 0; m < N; m++) {
            const float g = wrt_txt ? infonce_g(pi2t, pt2i, m, row, N, c) : infonce_g(pi2t, pt2i, row, m, N, c);
            acc += g * other[m * D + d];
        }
        dx[idx] += scale * acc;
    }
}

/* Row i's share of dlogit_scale / exp(logit_scale): Σ_j G(i,j)·(img_i·txt_j), dots in double. */
static __global__ void __launch_bounds__(FM_RED_BLOCK)
    infonce_dscale_rows_kernel(double *row_terms,  // (N)
                               const float *img,   // (N, D)
                               const float *txt,   // (N, D)
                               const float *pi2t, const float *pt2i, size_t N, size_t D, float c)
{
    __shared__ double sh[FM_RED_BLOCK];
    const size_t i = blockIdx.x;
    double s = 0.0;
    for (size_t j = threadIdx.x; j < N; j += FM_RED_BLOCK) {
        double dot = 0.0;
        for (size_t d = 0; d < D; d++)
            dot += (double)img[i * D + d] * txt[j * D + d];
        s += (double)infonce_g(pi2t, pt2i, i, j, N, c) * dot;
    }
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x == 0)
        row_terms[i] = s;
}

extern "C" fm_status fm_cuda_infonce_forward(float *loss, float *probs_i2t, float *probs_t2i, const float *img,
                                             const float *txt, const float *logit_scale, int N, int D)
{
    if (N < 0 || D < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda infonce_forward: N = %d, D = %d", N, D);
    if (!loss)
        return fm_error(FM_ERR_INVALID_ARG, "cuda infonce_forward: NULL loss");
    if (N == 0)
        return fm_cuda_memset(loss, 0, sizeof(float));
    if (!probs_i2t || !probs_t2i || !logit_scale || (D > 0 && (!img || !txt)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda infonce_forward: NULL %s",
                        !probs_i2t ? "probs_i2t" : !probs_t2i ? "probs_t2i" : !logit_scale ? "logit_scale"
                                                                                           : !img ? "img" : "txt");
    const size_t Ns = (size_t)N, Ds = (size_t)D;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    FM_TRY(FM_LAUNCH_1D(infonce_logits_kernel, Ns * Ns, probs_i2t, probs_t2i, img, txt, logit_scale, Ns, Ds));
    double *row_nll = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&row_nll, 2 * Ns * sizeof(double), stream));
    infonce_rows_kernel<<<(unsigned)(2 * Ns), FM_RED_BLOCK, 0, stream>>>(row_nll, probs_i2t, probs_t2i, Ns);
    fm_status st = FM_CUDA_LAUNCH_CHECK("infonce_rows_kernel");
    if (st == FM_OK) {
        infonce_total_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(loss, row_nll, 2 * Ns, 0.5 / (double)N, nullptr);
        st = FM_CUDA_LAUNCH_CHECK("infonce_total_kernel");
    }
    return fm_scratch_free(row_nll, stream, st);
}

extern "C" fm_status fm_cuda_infonce_backward(float *dimg, float *dtxt, float *dlogit_scale, const float *img,
                                              const float *txt, const float *probs_i2t, const float *probs_t2i,
                                              const float *logit_scale, int N, int D, float dloss)
{
    if (N < 0 || D < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda infonce_backward: N = %d, D = %d", N, D);
    if (N == 0 || (!dimg && !dtxt && !dlogit_scale))
        return FM_OK;
    if (!probs_i2t || !probs_t2i || !logit_scale || (D > 0 && (!img || !txt)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda infonce_backward: NULL %s",
                        !probs_i2t ? "probs_i2t" : !probs_t2i ? "probs_t2i" : !logit_scale ? "logit_scale"
                                                                                           : !img ? "img" : "txt");
    const size_t Ns = (size_t)N, Ds = (size_t)D;
    const float c = dloss * 0.5f / (float)N; /* as the CPU twin */
    if (dimg)
        FM_TRY(FM_LAUNCH_1D(infonce_dx_kernel, Ns * Ds, dimg, txt, probs_i2t, probs_t2i, logit_scale, Ns, Ds, c, 0));
    if (dtxt)
        FM_TRY(FM_LAUNCH_1D(infonce_dx_kernel, Ns * Ds, dtxt, img, probs_i2t, probs_t2i, logit_scale, Ns, Ds, c, 1));
    if (!dlogit_scale)
        return FM_OK;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    double *terms = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&terms, Ns * sizeof(double), stream));
    infonce_dscale_rows_kernel<<<(unsigned)Ns, FM_RED_BLOCK, 0, stream>>>(terms, img, txt, probs_i2t, probs_t2i, Ns,
                                                                          Ds, c);
    fm_status st = FM_CUDA_LAUNCH_CHECK("infonce_dscale_rows_kernel");
    if (st == FM_OK) {
        infonce_total_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(dlogit_scale, terms, Ns, 0.0, logit_scale);
        st = FM_CUDA_LAUNCH_CHECK("infonce_total_kernel");
    }
    return fm_scratch_free(terms, stream, st);
}
