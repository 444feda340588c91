/* The row gathers of the CLIP towers on the GPU (see kernels/model_ops.h), one launch each where the CPU path
 * loops over the batch: the vision tower's input rows (class token or patch, plus its position) and the one row
 * per sample that each tower pools (the class token, or the text's end-of-text position), with their backward
 * passes. The position and class gradients sum over the batch in order b = 0, 1, …, one thread per element,
 * as the CPU path does: no atomics, the same bits. */
#include "cuda/launch.cuh"
#include "kernels/model_ops.h"

static __global__ void vision_embed_forward_kernel(float *emb,           // (B, T, W)
                                                   const float *patches, // (B, T-1, W)
                                                   const float *cls,     // (W)
                                                   const float *pos,     // (T, W)
                                                   size_t B, size_t T, size_t W)
{
    for (FM_GRID_STRIDE(i, B * T * W)) {
        const size_t w = i % W, t = (i / W) % T, b = i / (W * T);
        const float v = t == 0 ? cls[w] : patches[(b * (T - 1) + (t - 1)) * W + w];
        emb[i] = v + pos[t * W + w];
    }
}

static __global__ void vision_embed_dpatches_kernel(float *dpatches,   // (B, T-1, W)
                                                    const float *demb, // (B, T, W)
                                                    size_t B, size_t T, size_t W)
{
    const size_t NP = T - 1;
    for (FM_GRID_STRIDE(i, B * NP * W)) {
        const size_t w = i % W, p = (i / W) % NP, b = i / (W * NP);
        dpatches[i] = demb[(b * T + p + 1) * W + w];
    }
}

/* dpos[t, w] += demb[0, t, w] + demb[1, t, w] + … (in that order); dcls[w] += the same sum at t = 0. */
static __global__ void vision_embed_dpos_kernel(float *dcls,       // (W) or NULL
                                                float *dpos,       // (T, W) or NULL
                                                const float *demb, // (B, T, W)
                                                size_t B, size_t T, size_t W)
{
    for (FM_GRID_STRIDE(i, T * W)) {
        const size_t t = i / W, w = i % W;
        if (dpos) {
            float acc = dpos[i];
            for (size_t b = 0; b < B; b++)
                acc += demb[b * T * W + i];
            dpos[i] = acc;
        }
        if (dcls && t == 0) {
            float acc = dcls[w];
            for (size_t b = 0; b < B; b++)
                acc += demb[b * T * W + w];
            dcls[w] = acc;
        }
    }
}

static __global__ void pool_rows_forward_kernel(float *pooled,      // (B, W)
                                                const float *x,     // (B, T, W)
                                                const int32_t *pos, // (B) or NULL
                                                size_t B, size_t T, size_t W)
{
    for (FM_GRID_STRIDE(i, B * W)) {
        const size_t b = i / W, w = i % W;
        const size_t t = pos ? (size_t)pos[b] : 0;
        pooled[i] = x[(b * T + t) * W + w];
    }
}

static __global__ void pool_rows_backward_kernel(float *dx,            // (B, T, W)
                                                 const float *dpooled, // (B, W)
                                                 const int32_t *pos,   // (B) or NULL
                                                 size_t B, size_t T, size_t W)
{
    for (FM_GRID_STRIDE(i, B * W)) {
        const size_t b = i / W, w = i % W;
        const size_t t = pos ? (size_t)pos[b] : 0;
        dx[(b * T + t) * W + w] = dpooled[i];
    }
}

static fm_status check_sizes(const char *fn, int B, int T, int W)
{
    if (B < 0 || T < 1 || W < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: bad sizes (B=%d, T=%d, W=%d)", fn, B, T, W);
    return FM_OK;
}

extern "C" fm_status fm_cuda_vision_embed_forward(float *emb, const float *patches, const float *cls, const float *pos,
                                                  int B, int T, int W)
{
    FM_TRY(check_sizes("vision_embed_forward", B, T, W));
    const size_t n = (size_t)B * (size_t)T * (size_t)W;
    if (n == 0)
        return FM_OK;
    if (!emb || !cls || !pos || (T > 1 && !patches))
        return fm_error(FM_ERR_INVALID_ARG, "cuda vision_embed_forward: NULL pointer");
    return FM_LAUNCH_1D(vision_embed_forward_kernel, n, emb, patches, cls, pos, (size_t)B, (size_t)T, (size_t)W);
}

extern "C" fm_status fm_cuda_vision_embed_backward(float *dpatches, float *dcls, float *dpos, const float *demb, int B,
                                                   int T, int W)
{
    FM_TRY(check_sizes("vision_embed_backward", B, T, W));
    if ((size_t)B * (size_t)T * (size_t)W == 0)
        return FM_OK;
    if (!demb)
        return fm_error(FM_ERR_INVALID_ARG, "cuda vision_embed_backward: NULL demb");
    if (dpatches)
        FM_TRY(FM_LAUNCH_1D(vision_embed_dpatches_kernel, (size_t)B * (size_t)(T - 1) * (size_t)W, dpatches, demb,
                            (size_t)B, (size_t)T, (size_t)W));
    if (dcls || dpos)
        FM_TRY(FM_LAUNCH_1D(vision_embed_dpos_kernel, (size_t)T * (size_t)W, dcls, dpos, demb, (size_t)B, (size_t)T,
                            (size_t)W));
    return FM_OK;
}

extern "C" fm_status fm_cuda_pool_rows_forward(float *pooled, const float *x, const int32_t *pos, int B, int T, int W)
{
    FM_TRY(check_sizes("pool_rows_forward", B, T, W));
    const size_t n = (size_t)B * (size_t)W;
    if (n == 0)
        return FM_OK;
    if (!pooled || !x)
        return fm_error(FM_ERR_INVALID_ARG, "cuda pool_rows_forward: NULL %s", !pooled ? "pooled" : "x");
    return FM_LAUNCH_1D(pool_rows_forward_kernel, n, pooled, x, pos, (size_t)B, (size_t)T, (size_t)W);
}

extern "C" fm_status fm_cuda_pool_rows_backward(float *dx, const float *dpooled, const int32_t *pos, int B, int T,
                                                int W)
{
    FM_TRY(check_sizes("pool_rows_backward", B, T, W));
    const size_t n = (size_t)B * (size_t)W;
    if (n == 0)
        return FM_OK;
    if (!dx || !dpooled)
        return fm_error(FM_ERR_INVALID_ARG, "cuda pool_rows_backward: NULL %s", !dx ? "dx" : "dpooled");
    return FM_LAUNCH_1D(pool_rows_backward_kernel, n, dx, dpooled, pos, (size_t)B, (size_t)T, (size_t)W);
}
