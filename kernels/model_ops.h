/* CUDA kernels written for the CLIP model's device path (src/model/clip_cuda.c), beside the per-op twins of
 * kernels/cuda_ops.h: a cuBLASLt GEMM over fp32 or bf16 operands with alpha, beta and an optional bias, the
 * LoRA-adapted projection with the low-rank path accumulated into the base GEMM's output, fp32 → bf16 casts,
 * and the gathers of the towers (class token + patches + positions, the pooled row of each sample). Device
 * pointers, fedmm's stream; every CUDA and cuBLAS call is checked and a failure is FM_ERR_CUDA with file and
 * line in fm_last_error(). */
#ifndef FEDMM_KERNELS_MODEL_OPS_H
#define FEDMM_KERNELS_MODEL_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of GEMM operands: fp32, or bf16 (stored as uint16_t, the upper half of an fp32). */
typedef enum fm_gemm_type { FM_GEMM_F32 = 0, FM_GEMM_BF16 = 1 } fm_gemm_type;

/* Row-major GEMMs through cuBLASLt, accumulating in fp32 (CUBLAS_COMPUTE_32F: true fp32 for fp32 operands, no
 * TF32; bf16 operands on the tensor cores). X and Y share one type `in`; D has type `out` (fp32, or bf16 only
 * with beta = 0 and no bias). Plans (descriptors, layouts, the heuristic's algorithm) are cached per shape,
 * types and alignment.
 *   op 'N' (NT): D (M, N) = alpha·X (M, K)·Yᵀ, Y (N, K)   + beta·D [+ bias (N) on every row]
 *   op 'A' (NN): D (M, N) = alpha·X (M, K)·Y (K, N)       + beta·D
 *   op 'W' (TN): D (M, N) = alpha·Xᵀ·Y, X (K, M), Y (K, N) + beta·D
 * The names say what the op is for in a linear layer y = x·Wᵀ: 'N' the forward, 'A' the input gradient
 * dx = dy·W, 'W' the weight gradient dW = dyᵀ·x. bias (fp32) only with 'N' and out = fp32. M, N, K ≥ 0; K = 0
 * gives D = beta·D (+ bias). */
fm_status fm_cuda_gemm(char op, int M, int N, int K, float alpha, const void *X, const void *Y, fm_gemm_type in,
                       float beta, void *D, fm_gemm_type out, const float *bias);

/* The weight-gradient GEMM of a linear layer with its bias gradient: op 'W' with alpha = 1,
 *   D (M, N) = Xᵀ·Y + beta·D,  X (K, M), Y (K, N), D fp32,   and   dbias (M) += Σ_k X[k, ·]  (accumulated),
 * i.e. dW += dyᵀ·x and db += Σ_n dy with X = dy. The column sum is cuBLASLt's BGRADB epilogue on the same GEMM (into
 * stream-ordered scratch, then added), so dy is read once; it sums X as the GEMM reads it (the bf16 values under
 * bf16). Where the heuristic offers no algorithm with that epilogue, the plain GEMM and a deterministic column-sum
 * kernel do it. Both are deterministic (cuBLASLt's bits for one algorithm, GPU and library version). */
fm_status fm_cuda_gemm_dbias(int M, int N, int K, const void *X, const void *Y, fm_gemm_type in, float beta, float *D,
                             float *dbias);

/* A LoRA-adapted linear layer (kernels/lora.cu), s = alpha/r:
 *   forward:  y (N, OC) = x (N, C)·Wᵀ + b, then y += s·t·Bᵀ with t = xa·Aᵀ (N, r) kept for backward, both by
 *             GEMMs into y itself (beta = 1): no (N, OC) temporary. xa is x, or its dropped copy (LoRA dropout).
 *   backward: dt = s·dy·B (N, r, into `dt`, scratch), dB += s·dyᵀ·t, dA += dtᵀ·xa, dx += dt·A (beta = 1), plus
 *             the base layer's dx += dy·W, dW += dyᵀ·x, db += Σ dy (with dW: by the dW GEMM's epilogue,
 *             fm_cuda_gemm_dbias); the only temporaries are (N, r).
 * `in` is the type of x, xa, W, A, B, t and dt, and of dy_lp; y, dx, dy, bias and the gradients dW, db, dA, dB are
 * fp32. With in = bf16, the caller passes dy_lp (N, OC) bf16 scratch that backward fills with dy; with fp32 it is
 * NULL (dy is used). Under bf16 dy may be NULL: dy_lp then already holds dy rounded (written by the kernel that
 * produced it), and db needs dW (it is summed by dW's GEMM). NULL gradients are skipped; A and B NULL (no adapter)
 * leaves only the base layer. dx_lora, when not NULL, receives dt·A (fp32, overwritten) instead of dx getting it (LoRA
 * dropout multiplies it by the mask afterwards). */
typedef struct fm_cuda_lora_args {
    int N, C, OC, r;
    float scaling;
    fm_gemm_type in;
    const void *W;     /* (OC, C) */
    const float *bias; /* (OC) or NULL */
    const void *A;     /* (r, C) or NULL */
    const void *B;     /* (OC, r) or NULL */
} fm_cuda_lora_args;

fm_status fm_cuda_lora_forward(const fm_cuda_lora_args *a, float *y, void *t, const void *x, const void *xa);
fm_status fm_cuda_lora_backward(const fm_cuda_lora_args *a, float *dx, float *dx_lora, float *dW, float *db, float *dA,
                                float *dB, void *dt, void *dy_lp, const float *dy, const void *x, const void *xa,
                                const void *t);

/* ---- fused residual + layernorm (kernels/residual_norm.cu) ---------------------------------------------------
 * The pre-LN block's "h = x + branch, then LN(h)" in one pass over the row, one warp per row as
 * kernels/layernorm.cu, with its arithmetic (fp32, two-pass mean and variance, the same expressions and order). */
/* h (N, C) = a + b, then out (N, C) = LN(h)·weight + bias, written in `out_type` (fp32, or bf16 rounded to nearest
 * even from the fp32 value: no separate cast), mean and rstd (N) saved for backward. b NULL: no add, LN(a) (h is
 * then not written and may be NULL). h may be a itself (in place). */
fm_status fm_cuda_residual_layernorm_forward(float *h, void *out, fm_gemm_type out_type, float *mean, float *rstd,
                                             const float *a, const float *b, const float *weight, const float *bias,
                                             int N, int C, float eps);
/* Backward of the above into the residual stream's gradient: dres (N, C) holds dL/dh through the skip path on entry
 * and gets += LN's input gradient from dout (N, C) — which is then dL/dh, the gradient of both a and b — with
 * dweight, dbias (C) += their column sums (deterministic: per-block partial sums of a fixed grid, then a
 * fixed-order pass; no atomics) in the same pass over the rows. dres_lp (N, C) bf16, when not NULL, gets the updated
 * dres rounded to bf16, for the GEMMs that read it next. Rows longer than 1024: the layernorm kernels of
 * kernels/layernorm.cu and a cast (two to three launches instead of one or two). */
fm_status fm_cuda_residual_layernorm_backward(float *dres, uint16_t *dres_lp, float *dweight, float *dbias,
                                              const float *dout, const float *h, const float *weight, const float *mean,
                                              const float *rstd, int N, int C);

/* ---- the MLP's activation with its cast (kernels/act_cast.cu) ------------------------------------------------
 * The fc1 GEMM adds the bias in its cuBLASLt epilogue and the LoRA term after it (beta = 1), so the activation is
 * the one step left: out = act(inp), written in `out_type` (fp32, or bf16 rounded from the fp32 value, the input of
 * the fc2 GEMM). Backward writes dinp = act'(inp)·dout (not accumulated: no zeroing pass), fp32 or bf16 (the input
 * of fc1's backward GEMMs). The formulas of kernels/elementwise.cu, written the same way. */
typedef enum fm_cuda_act { FM_CUDA_ACT_QUICK_GELU = 0, FM_CUDA_ACT_GELU = 1 } fm_cuda_act;
fm_status fm_cuda_act_forward(void *out, fm_gemm_type out_type, const float *inp, size_t n, fm_cuda_act act);
fm_status fm_cuda_act_backward(void *dinp, fm_gemm_type dinp_type, const float *inp, const float *dout, size_t n,
                               fm_cuda_act act);

/* ---- fp32 ↔ bf16 (kernels/bf16.cu): round to nearest even; NaN stays NaN ---------------------------------- */
fm_status fm_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n);
fm_status fm_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n);

/* ---- the towers' gathers (kernels/clip_rows.cu) ------------------------------------------------------------- */
/* emb[b, 0] = cls + pos[0], emb[b, t] = patches[b, t − 1] + pos[t] for t ≥ 1: emb (B, T, W), patches (B, T−1, W),
 * cls (W), pos (T, W). */
fm_status fm_cuda_vision_embed_forward(float *emb, const float *patches, const float *cls, const float *pos, int B,
                                       int T, int W);
/* dpatches[b, t − 1] = demb[b, t] (written), dcls += Σ_b demb[b, 0], dpos[t] += Σ_b demb[b, t] (b in order, as the
 * CPU path sums them); any of the three may be NULL. */
fm_status fm_cuda_vision_embed_backward(float *dpatches, float *dcls, float *dpos, const float *demb, int B, int T,
                                        int W);
/* pooled[b] = x[b, pos[b]] (pos NULL: position 0 for every b): x (B, T, W), pooled (B, W), pos (B) i32 on the
 * device, already checked to lie in [0, T). */
fm_status fm_cuda_pool_rows_forward(float *pooled, const float *x, const int32_t *pos, int B, int T, int W);
/* dx[b, pos[b]] = dpooled[b] (written; the caller zeroed dx). */
fm_status fm_cuda_pool_rows_backward(float *dx, const float *dpooled, const int32_t *pos, int B, int T, int W);

#ifdef __cplusplus
}
#endif
#endif
