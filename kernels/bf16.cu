/* fp32 ↔ bf16 conversions for mixed precision (see kernels/model_ops.h): the bf16 copies of the weights and
 * of the activations that feed GEMMs. Round to nearest even (__float2bfloat16_rn); NaN and ±Inf are kept. bf16
 * travels as uint16_t outside this file so that C callers need no CUDA header. */
#include <cuda_bf16.h>

#include "cuda/launch.cuh"
#include "kernels/model_ops.h"

static __global__ void f32_to_bf16_kernel(uint16_t *dst,    // (n)
                                          const float *src, // (n)
                                          size_t n)
{
    for (FM_GRID_STRIDE(i, n))
        dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

static __global__ void bf16_to_f32_kernel(float *dst,          // (n)
                                          const uint16_t *src, // (n)
                                          size_t n)
{
    for (FM_GRID_STRIDE(i, n))
        dst[i] = __bfloat162float(__ushort_as_bfloat16(src[i]));
}

extern "C" fm_status fm_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "cuda f32_to_bf16: NULL %s", !dst ? "dst" : "src");
    return FM_LAUNCH_1D(f32_to_bf16_kernel, n, dst, src, n);
}

extern "C" fm_status fm_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    if (n == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "cuda bf16_to_f32: NULL %s", !dst ? "dst" : "src");
    return FM_LAUNCH_1D(bf16_to_f32_kernel, n, dst, src, n);
}
