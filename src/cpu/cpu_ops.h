/* The CPU reference ops: plain C (OpenBLAS for GEMM), float32, row-major, contiguous, deterministic
 * for a given thread count. Every op has a CUDA twin in kernels/ with the same signature (fm_cuda_*)
 * and the tensor-level dispatcher in include/fedmm/ops.h picks one by the tensors' device.
 *
 * Conventions (as llm.c): shapes in a comment beside each pointer; sizes are ints, index arithmetic
 * is size_t; backward functions ACCUMULATE (+=) into every gradient they are given, and skip any
 * gradient pointer that is NULL. Shapes are validated by the dispatcher, not here. */
#ifndef FEDMM_CPU_OPS_H
#define FEDMM_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/hparams.h"
#include "fedmm/status.h"

/* ---- linear: out = inp · Wᵀ + b ---------------------------------------------------------------- */
void fm_cpu_linear_forward(float *out,          /* (N, OC) */
                           const float *inp,    /* (N, C) */
                           const float *weight, /* (OC, C), PyTorch layout */
                           const float *bias,   /* (OC) or NULL */
                           int N, int C, int OC);
void fm_cpu_linear_backward(float *dinp,         /* (N, C) or NULL */
                            float *dweight,      /* (OC, C) or NULL */
                            float *dbias,        /* (OC) or NULL */
                            const float *dout,   /* (N, OC) */
                            const float *inp,    /* (N, C) */
                            const float *weight, /* (OC, C) */
                            int N, int C, int OC);

/* ---- layernorm over the last dim ---------------------------------------------------------------- */
void fm_cpu_layernorm_forward(float *out,          /* (N, C) */
                              float *mean,         /* (N) saved for backward */
                              float *rstd,         /* (N) saved for backward */
                              const float *inp,    /* (N, C) */
                              const float *weight, /* (C) */
                              const float *bias,   /* (C) */
                              int N, int C, float eps);
void fm_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, /* (N,C), (C), (C) */
                               const float *dout, const float *inp,       /* (N, C) */
                               const float *weight,                       /* (C) */
                               const float *mean, const float *rstd,      /* (N) */
                               int N, int C);

/* ---- multi-head self-attention core: softmax(q·kᵀ/√hs + mask)·v per head ------------------------
 * q, k, v, out are (B, T, C) with C = NH·hs, head h in columns [h·hs, (h+1)·hs). Keys j ≥ lengths[b]
 * are masked (lengths NULL: all T valid); causal masks keys j > query i. A query row whose keys are
 * all masked outputs zeros and has lse = −inf. No probabilities are kept: lse holds each row's
 * log Σ_j exp(q_i·k_j/√hs) and backward recomputes p_ij = exp(q_i·k_j/√hs − lse_i) (flash attention);
 * backward takes forward's out, lengths and causal as well. */
void fm_cpu_attention_forward(float *out,                                     /* (B, T, C) */
                              float *lse,                                     /* (B, NH, T) saved */
                              const float *q, const float *k, const float *v, /* (B, T, C) */
                              const int32_t *lengths,                         /* (B) or NULL */
                              int causal, int B, int T, int C, int NH);
void fm_cpu_attention_backward(float *dq, float *dk, float *dv,                /* (B, T, C) or NULL */
                               const float *dout,                              /* (B, T, C) */
                               const float *q, const float *k, const float *v, /* (B, T, C) */
                               const float *out,                               /* (B, T, C) forward's */
                               const float *lse,                               /* (B, NH, T) forward's */
                               const int32_t *lengths,                         /* (B) or NULL */
                               int causal, int B, int T, int C, int NH);

/* ---- activations, elementwise over n ----------------------------------------------------------- */
void fm_cpu_gelu_forward(float *out, const float *inp, size_t n); /* exact, erf */
void fm_cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
void fm_cpu_quick_gelu_forward(float *out, const float *inp, size_t n); /* x·σ(1.702x) */
void fm_cpu_quick_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* ---- softmax over the last dim ----------------------------------------------------------------- */
void fm_cpu_softmax_forward(float *out, const float *inp, int N, int C); /* (N, C) */
void fm_cpu_softmax_backward(float *dinp, const float *out, const float *dout, int N, int C);

/* ---- residual add ------------------------------------------------------------------------------ */
void fm_cpu_residual_forward(float *out, const float *a, const float *b, size_t n);
void fm_cpu_residual_backward(float *da, float *db, const float *dout, size_t n);

/* ---- token + position embedding: out[b,t] = wte[tokens[b,t]] + wpe[t] ---------------------------
 * Returns FM_ERR_RANGE (with the offending position) if a token id is outside [0, V). */
fm_status fm_cpu_embedding_forward(float *out,            /* (B, T, C) */
                                   const int32_t *tokens, /* (B, T) */
                                   const float *wte,      /* (V, C) */
                                   const float *wpe,      /* (T_max ≥ T, C) */
                                   int B, int T, int C, int V);
void fm_cpu_embedding_backward(float *dwte, float *dwpe, /* (V, C), (T_max, C); either may be NULL */
                               const float *dout,        /* (B, T, C) */
                               const int32_t *tokens,    /* (B, T), already validated */
                               int B, int T, int C);

/* ---- patch embedding: a P×P, stride-P convolution as im2col + GEMM ------------------------------
 * img is NCHW (B, Cin, H, W), H and W multiples of P; NP = (H/P)·(W/P) patches in row-major order;
 * cols (B·NP, Cin·P·P) is the unfolded input, saved for backward; weight (C, Cin, P, P) as PyTorch. */
void fm_cpu_patch_embed_forward(float *out,          /* (B, NP, C) */
                                float *cols,         /* (B·NP, Cin·P·P) saved */
                                const float *img,    /* (B, Cin, H, W) */
                                const float *weight, /* (C, Cin, P, P) */
                                const float *bias,   /* (C) or NULL (CLIP has none) */
                                int B, int Cin, int H, int W, int P, int C);
void fm_cpu_patch_embed_backward(float *dweight,      /* (C, Cin·P·P) or NULL */
                                 float *dbias,        /* (C) or NULL */
                                 float *dimg,         /* (B, Cin, H, W) or NULL */
                                 const float *dout,   /* (B, NP, C) */
                                 const float *cols,   /* (B·NP, Cin·P·P) */
                                 const float *weight, /* (C, Cin·P·P) */
                                 int B, int Cin, int H, int W, int P, int C);

/* ---- L2 normalisation of rows: out = x / max(‖x‖, 1e-12) ---------------------------------------- */
void fm_cpu_l2norm_forward(float *out, float *norm, const float *inp, int N, int C); /* norm: (N) saved */
void fm_cpu_l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N, int C);

/* ---- symmetric InfoNCE (CLIP loss) with a learnable logit scale ---------------------------------
 * logits = exp(logit_scale)·img·txtᵀ (N×N); loss = (CE(logits, diag) + CE(logitsᵀ, diag)) / 2.
 * img and txt are (N, D), normally L2-normalised; probs are saved for backward. */
void fm_cpu_infonce_forward(float *loss,                        /* scalar */
                            float *probs_i2t,                   /* (N, N) row softmax of logits, saved */
                            float *probs_t2i,                   /* (N, N) row softmax of logitsᵀ, saved */
                            const float *img, const float *txt, /* (N, D) */
                            float logit_scale, int N, int D);
void fm_cpu_infonce_backward(float *dimg, float *dtxt, /* (N, D) or NULL */
                             float *dlogit_scale,      /* scalar or NULL */
                             const float *img, const float *txt, const float *probs_i2t, const float *probs_t2i,
                             float logit_scale, int N, int D, float dloss);

/* ---- cross-entropy over classes, mean over rows with target ≥ 0 (target -1 = ignored) ----------- */
fm_status fm_cpu_cross_entropy_forward(float *loss,            /* scalar */
                                       float *probs,           /* (N, C) softmax, saved */
                                       const float *logits,    /* (N, C) */
                                       const int32_t *targets, /* (N) in [-1, C) else FM_ERR_RANGE */
                                       int N, int C);
void fm_cpu_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *targets, int N, int C,
                                   float dloss);

/* ---- mean squared error: mean((a − b)²) over n --------------------------------------------------- */
void fm_cpu_mse_forward(float *loss, const float *a, const float *b, size_t n);
void fm_cpu_mse_backward(float *da, float *db, const float *a, const float *b, size_t n, float dloss);

/* ---- AdamW (decoupled weight decay, bias-corrected; Loshchilov & Hutter) ------------------------- */
/* One step t ≥ 1 over n parameters; m and v are the first and second moments. */
void fm_cpu_adamw_update(float *params, const float *grads, float *m, float *v, size_t n, fm_adamw_hparams hp, int t);

/* ---- global-norm gradient clipping ------------------------------------------------------------- */
/* Sum of squares of n values, accumulated in double. */
double fm_cpu_sum_squares(const float *x, size_t n);
/* Scales g by max_norm/‖g‖ when ‖g‖ > max_norm. Returns ‖g‖ before clipping. */
float fm_cpu_clip_grad_norm(float *g, size_t n, float max_norm);

/* ---- inverted dropout: out = inp·mask, mask = 1/(1 − p) (kept) or 0 ------------------------------------
 * Element i is kept iff word i%4 of the Philox-4x32-10 block with key `seed` and counter (stream, i/4) is
 * ≥ ⌈p·2³²⌉: the mask depends only on (seed, stream, i), whatever the thread count, and the CUDA twin draws
 * the same one. The kept scale is the float 1.0f/(1.0f − p); p in [0, 1) (0: out = inp, mask all 1). mask
 * is saved for backward; out may be inp. Backward: dinp += dout·mask. */
void fm_cpu_dropout_forward(float *out,       /* (n) */
                            float *mask,      /* (n) saved */
                            const float *inp, /* (n) */
                            size_t n, float p, uint64_t seed, uint64_t stream);
void fm_cpu_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n); /* (n) each */

#endif
