/* The MLP's activation with the cast to the next GEMM's operand type fused in (see kernels/model_ops.h): forward
 * g = act(h) and backward dh = act'(h)·dg, each one elementwise pass writing fp32 or bf16. fc1's bias is not here:
 * cuBLASLt adds it in the GEMM's epilogue (kernels/gemm.cu), and under LoRA the low-rank term lands on h after
 * that, so the activation is the first point where h is complete. (cuBLASLt's own GELU epilogues are the tanh
 * approximation, neither CLIP's quick-GELU x·σ(1.702x) nor the erf GELU.)
 *
 * The formulas are kernels/elementwise.cu's, written the same way, so fp32 outputs are expected to carry the bits of
 * fm_cuda_quick_gelu_* / fm_cuda_gelu_* (backward: up to the sign of a zero, which those add to a zeroed gradient);
 * the gpu tests hold them to a float64 reference, not to those bits. */
#include <cuda_bf16.h>

#include "cuda/launch.cuh"
#include "kernels/model_ops.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define QUICK_GELU_ALPHA 1.702f

static __device__ __forceinline__ void store(void *dst, int bf16, size_t i, float v)
{
    if (bf16)
        ((uint16_t *)dst)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else
        ((float *)dst)[i] = v;
}

static __global__ void act_forward_kernel(void *out,        // (n) fp32 or bf16
                                          const float *inp, // (n)
                                          size_t n, int bf16, int quick)
{
    for (FM_GRID_STRIDE(i, n)) {
        const float x = inp[i];
        /* quick: expf overflows to +inf for x ≪ 0, giving exactly 0; erf GELU: erfc(−x/√2), no cancellation */
        store(out, bf16, i, quick ? x / (1.0f + expf(-QUICK_GELU_ALPHA * x)) : 0.5f * x * erfcf(-x * INV_SQRT2));
    }
}

static __global__ void act_backward_kernel(void *dinp,        // (n) fp32 or bf16, written
                                           const float *inp,  // (n)
                                           const float *dout, // (n)
                                           size_t n, int bf16, int quick)
{
    for (FM_GRID_STRIDE(i, n)) {
        const float x = inp[i];
        float d;
        if (quick) {
            const float sig = 1.0f / (1.0f + expf(-QUICK_GELU_ALPHA * x));
            d = dout[i] * (sig + QUICK_GELU_ALPHA * x * sig * (1.0f - sig));
        } else {
            const float cdf = 0.5f * erfcf(-x * INV_SQRT2);
            const float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
            d = dout[i] * (cdf + x * pdf);
        }
        store(dinp, bf16, i, d);
    }
}

static fm_status check(const char *fn, fm_gemm_type type, fm_cuda_act act)
{
    if (type != FM_GEMM_F32 && type != FM_GEMM_BF16)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: unknown output type %d", fn, (int)type);
    if (act != FM_CUDA_ACT_QUICK_GELU && act != FM_CUDA_ACT_GELU)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: unknown activation %d", fn, (int)act);
    return FM_OK;
}

extern "C" fm_status fm_cuda_act_forward(void *out, fm_gemm_type out_type, const float *inp, size_t n, fm_cuda_act act)
{
    FM_TRY(check("act_forward", out_type, act));
    if (n == 0)
        return FM_OK;
    if (!out || !inp)
        return fm_error(FM_ERR_INVALID_ARG, "cuda act_forward: NULL %s", !out ? "out" : "inp");
    return FM_LAUNCH_1D(act_forward_kernel, n, out, inp, n, (int)(out_type == FM_GEMM_BF16),
                        (int)(act == FM_CUDA_ACT_QUICK_GELU));
}

extern "C" fm_status fm_cuda_act_backward(void *dinp, fm_gemm_type dinp_type, const float *inp, const float *dout,
                                          size_t n, fm_cuda_act act)
{
    FM_TRY(check("act_backward", dinp_type, act));
    if (n == 0)
        return FM_OK;
    if (!dinp || !inp || !dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda act_backward: NULL %s", !dinp ? "dinp" : !inp ? "inp" : "dout");
    return FM_LAUNCH_1D(act_backward_kernel, n, dinp, inp, dout, n, (int)(dinp_type == FM_GEMM_BF16),
                        (int)(act == FM_CUDA_ACT_QUICK_GELU));
}
