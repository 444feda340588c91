/* CUDA twin of src/cpu/linear.c: out = inp · Wᵀ + b, backward as two accumulating GEMMs (beta = 1), dbias by the
 * weight-gradient GEMM's bias-gradient epilogue (fm_cuda_gemm_dbias), or without dweight by a deterministic column
 * sum (kernels/rows_cols.cuh). The GEMMs are fm_cuda_gemm's (kernels/gemm.cu:
 * cuBLASLt, fp32 compute without TF32, the bias by the epilogue, plans cached per shape and alignment) — the
 * ops 'N' (forward), 'A' (dinp = dout·W) and 'W' (dW = doutᵀ·inp) are named after these three uses. */
#include <stddef.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/model_ops.h"
#include "kernels/rows_cols.cuh"

/* dbias[o] += Σ_n dout[n, o] */
struct dout_column {
    static constexpr int kOut = 1;
    const float *dout; // (N, OC)
    size_t OC;
    __device__ void operator()(size_t n, size_t c, float *v) const { v[0] = dout[n * OC + c]; }
};

/* ---- entry points -------------------------------------------------------------------------------------------- */

static fm_status check_sizes(const char *op, int N, int C, int OC)
{
    if (N < 0 || C < 0 || OC < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: negative size (N=%d, C=%d, OC=%d)", op, N, C, OC);
    return FM_OK;
}

extern "C" fm_status fm_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                                            int C, int OC)
{
    FM_TRY(check_sizes("linear_forward", N, C, OC));
    if (N == 0 || OC == 0)
        return FM_OK;
    if (!out || (C > 0 && (!inp || !weight)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda linear_forward: NULL %s", !out ? "out" : !inp ? "inp" : "weight");
    /* C = 0: no products, out is the bias on every row (or zeros) */
    return fm_cuda_gemm('N', N, OC, C, 1.0f, inp, weight, FM_GEMM_F32, 0.0f, out, FM_GEMM_F32, bias);
}

extern "C" fm_status fm_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                             const float *inp, const float *weight, int N, int C, int OC)
{
    FM_TRY(check_sizes("linear_backward", N, C, OC));
    if (N == 0 || OC == 0)
        return FM_OK; /* no output, so nothing flows back */
    if (!dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda linear_backward: NULL dout");
    if (C > 0 && ((dinp && !weight) || (dweight && !inp)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda linear_backward: NULL %s", dinp && !weight ? "weight" : "inp");
    const int wgrad = dweight && C > 0;
    /* dbias alone first: its partials use the workspace, which the GEMMs below may then reuse (stream order). With
     * dweight it rides on the weight-gradient GEMM (the BGRADB epilogue): dout is read once for both. */
    if (dbias && !wgrad)
        FM_TRY(fm_colsum("linear dbias", dbias, (float *)NULL, dout_column{dout, (size_t)OC}, (size_t)N, (size_t)OC));
    if (dinp && C > 0)
        FM_TRY(fm_cuda_gemm('A', N, C, OC, 1.0f, dout, weight, FM_GEMM_F32, 1.0f, dinp, FM_GEMM_F32, NULL));
    if (wgrad && dbias)
        return fm_cuda_gemm_dbias(OC, C, N, dout, inp, FM_GEMM_F32, 1.0f, dweight, dbias);
    if (wgrad)
        return fm_cuda_gemm('W', OC, C, N, 1.0f, dout, inp, FM_GEMM_F32, 1.0f, dweight, FM_GEMM_F32, NULL);
    return FM_OK;
}
