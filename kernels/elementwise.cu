/* CUDA twins of src/cpu/residual.c and src/cpu/activations.c: residual add, exact GELU (erf) and CLIP's
 * QuickGELU, forward and backward, with the CPU reference's formulas. Backward accumulates (+=) into
 * the gradients it is given and skips NULL ones. Pointers may alias (in-place ops), hence no restrict. */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define QUICK_GELU_ALPHA 1.702f

/* ---- residual ------------------------------------------------------------------------------------ */

static __global__ void residual_forward_kernel(float *out,     // (n)
                                               const float *a, // (n)
                                               const float *b, // (n)
                                               size_t n)
{
    for (FM_GRID_STRIDE(i, n))
        out[i] = a[i] + b[i];
}

static __global__ void residual_backward_kernel(float *da,         // (n) or NULL
                                                float *db,         // (n) or NULL
                                                const float *dout, // (n)
                                                size_t n)
{
    for (FM_GRID_STRIDE(i, n)) {
        float d = dout[i];
        /* da and db may be the same buffer (out = x + x): two separate read-modify-writes add 2·dout. */
        if (da)
            da[i] += d;
        if (db)
            db[i] += d;
    }
}

extern "C" fm_status fm_cuda_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!out || !a || !b)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_forward: NULL %s", !out ? "out" : !a ? "a" : "b");
    return FM_LAUNCH_1D(residual_forward_kernel, n, out, a, b, n);
}

extern "C" fm_status fm_cuda_residual_backward(float *da, float *db, const float *dout, size_t n)
{
    if (n == 0 || (!da && !db))
        return FM_OK;
    if (!dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_backward: NULL dout");
    return FM_LAUNCH_1D(residual_backward_kernel, n, da, db, dout, n);
}

/* ---- GELU, exact: x·Φ(x) ------------------------------------------------------------------------- */

static __global__ void gelu_forward_kernel(float *out,       // (n)
                                           const float *inp, // (n)
                                           size_t n)
{
    for (FM_GRID_STRIDE(i, n)) {
        float x = inp[i];
        /* erfc(−x/√2) rather than 1 + erf(x/√2): no cancellation for x ≪ 0 (as the CPU reference). */
        out[i] = 0.5f * x * erfcf(-x * INV_SQRT2);
    }
}

static __global__ void gelu_backward_kernel(float *dinp,       // (n), accumulated
                                            const float *inp,  // (n)
                                            const float *dout, // (n)
                                            size_t n)
{
    for (FM_GRID_STRIDE(i, n)) {
        float x = inp[i];
        float cdf = 0.5f * erfcf(-x * INV_SQRT2);
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

extern "C" fm_status fm_cuda_gelu_forward(float *out, const float *inp, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!out || !inp)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gelu_forward: NULL %s", !out ? "out" : "inp");
    return FM_LAUNCH_1D(gelu_forward_kernel, n, out, inp, n);
}

extern "C" fm_status fm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (n == 0 || !dinp)
        return FM_OK;
    if (!inp || !dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gelu_backward: NULL %s", !inp ? "inp" : "dout");
    return FM_LAUNCH_1D(gelu_backward_kernel, n, dinp, inp, dout, n);
}

/* ---- QuickGELU: x·σ(1.702x) ---------------------------------------------------------------------- */

static __global__ void quick_gelu_forward_kernel(float *out,       // (n)
                                                 const float *inp, // (n)
                                                 size_t n)
{
    for (FM_GRID_STRIDE(i, n)) {
        float x = inp[i];
        /* expf overflows to +inf for x ≪ 0, giving exactly 0, the right limit. */
        out[i] = x / (1.0f + expf(-QUICK_GELU_ALPHA * x));
    }
}

static __global__ void quick_gelu_backward_kernel(float *dinp,       // (n), accumulated
                                                  const float *inp,  // (n)
                                                  const float *dout, // (n)
                                                  size_t n)
{
    for (FM_GRID_STRIDE(i, n)) {
        float x = inp[i];
        float sig = 1.0f / (1.0f + expf(-QUICK_GELU_ALPHA * x));
        dinp[i] += dout[i] * (sig + QUICK_GELU_ALPHA * x * sig * (1.0f - sig));
    }
}

extern "C" fm_status fm_cuda_quick_gelu_forward(float *out, const float *inp, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!out || !inp)
        return fm_error(FM_ERR_INVALID_ARG, "cuda quick_gelu_forward: NULL %s", !out ? "out" : "inp");
    return FM_LAUNCH_1D(quick_gelu_forward_kernel, n, out, inp, n);
}

extern "C" fm_status fm_cuda_quick_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (n == 0 || !dinp)
        return FM_OK;
    if (!inp || !dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda quick_gelu_backward: NULL %s", !inp ? "inp" : "dout");
    return FM_LAUNCH_1D(quick_gelu_backward_kernel, n, dinp, inp, dout, n);
}
