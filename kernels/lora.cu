/* The LoRA-adapted linear layer on the GPU (see kernels/model_ops.h): the low-rank path is two thin GEMMs, the
 * second accumulating into the base GEMM's output (cuBLASLt beta = 1), so neither forward nor backward holds an
 * (N, OC) or (N, C) temporary for the adapter; the only scratch is t and dt, (N, r).
 *
 * Forward, s = alpha/r:              Backward (dy (N, OC)):
 *   y  = x·Wᵀ + b      (GEMM, bias)    dW += dyᵀ·x, db += Σ_n dy (beta 1; db by the GEMM's BGRADB epilogue)
 *   t  = xa·Aᵀ         (N, r)          dx += dy·W               (beta 1)      (db without dW: a column sum)
 *   y += s·t·Bᵀ        (beta 1)        dB += s·dyᵀ·t            (beta 1)      dt  = s·dy·B  (N, r)
 *                                      dA += dtᵀ·xa             (beta 1)      dx += dt·A    (beta 1)
 * The CPU reference (src/model/clip_forward.c on the CPU) computes t·S with S = s·I and a full (N, OC)
 * u = ts·Bᵀ added to y; both are the same sums, rounded in another order. With bf16 operands every GEMM reads
 * bf16 and accumulates in fp32; t and dt are stored in bf16 (they feed GEMMs only), y, dx and every parameter
 * gradient stay fp32, and dy is rounded to bf16 once into the caller's scratch — or arrives there already rounded
 * (dy NULL) from the kernel that produced it (the fused layernorm and activation backward, kernels/model_ops.h). db,
 * summed by the epilogue from the operand the GEMM reads, then sums the bf16 values. */
#include "kernels/cuda_ops.h"
#include "kernels/model_ops.h"

static fm_status check(const char *fn, const fm_cuda_lora_args *a)
{
    if (!a)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: NULL arguments", fn);
    if (a->N < 0 || a->C < 0 || a->OC < 0 || a->r < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: negative size (N=%d, C=%d, OC=%d, r=%d)", fn, a->N, a->C, a->OC,
                        a->r);
    if (a->in != FM_GEMM_F32 && a->in != FM_GEMM_BF16)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: unknown operand type %d", fn, (int)a->in);
    if (!a->W)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: NULL W", fn);
    if ((a->A != NULL) != (a->B != NULL))
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: an adapter needs both A and B", fn);
    if (a->A && a->r < 1)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: an adapter of rank %d", fn, a->r);
    return FM_OK;
}

extern "C" fm_status fm_cuda_lora_forward(const fm_cuda_lora_args *a, float *y, void *t, const void *x, const void *xa)
{
    FM_TRY(check("lora_forward", a));
    if (!y || !x)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_forward: NULL %s", !y ? "y" : "x");
    FM_TRY(fm_cuda_gemm('N', a->N, a->OC, a->C, 1.0f, x, a->W, a->in, 0.0f, y, FM_GEMM_F32, a->bias));
    if (!a->A)
        return FM_OK;
    if (!t)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_forward: NULL t (the adapter's (N, r) activations)");
    /* t (N, r) = xa·Aᵀ, stored in the operand type: it only feeds the next GEMM and backward's dB */
    FM_TRY(fm_cuda_gemm('N', a->N, a->r, a->C, 1.0f, xa ? xa : x, a->A, a->in, 0.0f, t, a->in, NULL));
    /* y += s·t·Bᵀ, into y itself */
    return fm_cuda_gemm('N', a->N, a->OC, a->r, a->scaling, t, a->B, a->in, 1.0f, y, FM_GEMM_F32, NULL);
}

extern "C" fm_status fm_cuda_lora_backward(const fm_cuda_lora_args *a, float *dx, float *dx_lora, float *dW, float *db,
                                           float *dA, float *dB, void *dt, void *dy_lp, const float *dy, const void *x,
                                           const void *xa, const void *t)
{
    FM_TRY(check("lora_backward", a));
    const int bf16 = a->in == FM_GEMM_BF16;
    if (!dy && !bf16)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_backward: NULL dy");
    if ((dW || (a->A && dA)) && !x)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_backward: NULL x");
    if (bf16 && !dy_lp)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_backward: bf16 operands need the dy_lp scratch");
    if (!dy && db && !dW)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_backward: db without dW needs dy in fp32 (dy is NULL)");
    /* db by itself (no weight gradient to ride on) first: its partial sums use the cuBLAS workspace, which the GEMMs
     * below then reuse (stream order) */
    if (db && !dW)
        FM_TRY(fm_cuda_linear_backward(NULL, NULL, db, dy, NULL, NULL, a->N, a->C, a->OC));
    const void *g = dy; /* dy in the operand type */
    if (bf16) {
        if (dy) /* else the kernel that made dy wrote it rounded into dy_lp */
            FM_TRY(fm_cuda_f32_to_bf16((uint16_t *)dy_lp, dy, (size_t)a->N * (size_t)a->OC));
        g = dy_lp;
    }
    if (dx)
        FM_TRY(fm_cuda_gemm('A', a->N, a->C, a->OC, 1.0f, g, a->W, a->in, 1.0f, dx, FM_GEMM_F32, NULL));
    /* dW, and db with it by the GEMM's bias-gradient epilogue: dy is read once for both */
    if (dW && db)
        FM_TRY(fm_cuda_gemm_dbias(a->OC, a->C, a->N, g, x, a->in, 1.0f, dW, db));
    else if (dW)
        FM_TRY(fm_cuda_gemm('W', a->OC, a->C, a->N, 1.0f, g, x, a->in, 1.0f, dW, FM_GEMM_F32, NULL));
    if (!a->A)
        return FM_OK;
    if (!t || !dt)
        return fm_error(FM_ERR_INVALID_ARG, "cuda lora_backward: NULL %s", !t ? "t" : "dt");
    if (dB)
        FM_TRY(fm_cuda_gemm('W', a->OC, a->r, a->N, a->scaling, g, t, a->in, 1.0f, dB, FM_GEMM_F32, NULL));
    if (!dA && !dx && !dx_lora)
        return FM_OK;
    FM_TRY(fm_cuda_gemm('A', a->N, a->r, a->OC, a->scaling, g, a->B, a->in, 0.0f, dt, a->in, NULL));
    if (dA)
        FM_TRY(fm_cuda_gemm('W', a->r, a->C, a->N, 1.0f, dt, xa ? xa : x, a->in, 1.0f, dA, FM_GEMM_F32, NULL));
    if (dx_lora)
        return fm_cuda_gemm('A', a->N, a->C, a->r, 1.0f, dt, a->A, a->in, 0.0f, dx_lora, FM_GEMM_F32, NULL);
    if (dx)
        return fm_cuda_gemm('A', a->N, a->C, a->r, 1.0f, dt, a->A, a->in, 1.0f, dx, FM_GEMM_F32, NULL);
    return FM_OK;
}
