/* Tensor-level ops. Each call checks dtypes (f32 unless stated), contiguity, devices (all on one) and
 * shapes, then runs the CPU reference (src/cpu/) or the CUDA kernel (kernels/) by the tensors'
 * device. The sizes come from the shapes. Backward functions ACCUMULATE into the gradients given;
 * a NULL gradient tensor is skipped. A CUDA tensor reaching an op without a CUDA kernel gets
 * FM_ERR_UNSUPPORTED (FM_ERR_DEVICE in a build without the CUDA backend), never a silent CPU fallback on
 * device memory. */
#ifndef FEDMM_OPS_H
#define FEDMM_OPS_H

#include "fedmm/hparams.h"
#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out (N, OC) = inp (N, C) · weight (OC, C)ᵀ + bias (OC, optional). Leading dims of inp/out may be
 * several (e.g. (B, T, C)); they are flattened into N. */
fm_status fm_linear_forward(fm_tensor *out, const fm_tensor *inp, const fm_tensor *weight, const fm_tensor *bias);
fm_status fm_linear_backward(fm_tensor *dinp, fm_tensor *dweight, fm_tensor *dbias, const fm_tensor *dout,
                             const fm_tensor *inp, const fm_tensor *weight);

/* Layernorm over the last dim C; mean and rstd are (N) with N the product of the leading dims. */
fm_status fm_layernorm_forward(fm_tensor *out, fm_tensor *mean, fm_tensor *rstd, const fm_tensor *inp,
                               const fm_tensor *weight, const fm_tensor *bias, float eps);
fm_status fm_layernorm_backward(fm_tensor *dinp, fm_tensor *dweight, fm_tensor *dbias, const fm_tensor *dout,
                                const fm_tensor *inp, const fm_tensor *weight, const fm_tensor *mean,
                                const fm_tensor *rstd);

/* Multi-head self-attention core. q, k, v, out (B, T, C); lse (B, NH, T) f32, the log-sum-exp of each
 * query row's scaled scores, saved for backward (−inf for a row whose keys are all masked; it outputs
 * zeros); lengths (B) i32 in [0, T] or NULL. No B×NH×T×T probabilities are stored: backward recomputes
 * them from q, k and lse, so it takes forward's out, lse, lengths and causal. */
fm_status fm_attention_forward(fm_tensor *out, fm_tensor *lse, const fm_tensor *q, const fm_tensor *k,
                               const fm_tensor *v, const fm_tensor *lengths, int causal, int num_heads);
fm_status fm_attention_backward(fm_tensor *dq, fm_tensor *dk, fm_tensor *dv, const fm_tensor *dout, const fm_tensor *q,
                                const fm_tensor *k, const fm_tensor *v, const fm_tensor *out, const fm_tensor *lse,
                                const fm_tensor *lengths, int causal, int num_heads);

/* Elementwise activations; out / dinp have inp's shape. */
fm_status fm_gelu_forward(fm_tensor *out, const fm_tensor *inp);
fm_status fm_gelu_backward(fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout);
fm_status fm_quick_gelu_forward(fm_tensor *out, const fm_tensor *inp);
fm_status fm_quick_gelu_backward(fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout);

/* Softmax over the last dim. */
fm_status fm_softmax_forward(fm_tensor *out, const fm_tensor *inp);
fm_status fm_softmax_backward(fm_tensor *dinp, const fm_tensor *out, const fm_tensor *dout);

/* out = a + b (same shapes). */
fm_status fm_residual_forward(fm_tensor *out, const fm_tensor *a, const fm_tensor *b);
fm_status fm_residual_backward(fm_tensor *da, fm_tensor *db, const fm_tensor *dout);

/* tokens (B, T) i32, wte (V, C), wpe (T_max ≥ T, C), out (B, T, C). */
fm_status fm_embedding_forward(fm_tensor *out, const fm_tensor *tokens, const fm_tensor *wte, const fm_tensor *wpe);
fm_status fm_embedding_backward(fm_tensor *dwte, fm_tensor *dwpe, const fm_tensor *dout, const fm_tensor *tokens);

/* img (B, Cin, H, W), weight (C, Cin, P, P), bias (C) or NULL, cols (B·NP, Cin·P·P), out (B, NP, C). */
fm_status fm_patch_embed_forward(fm_tensor *out, fm_tensor *cols, const fm_tensor *img, const fm_tensor *weight,
                                 const fm_tensor *bias);
fm_status fm_patch_embed_backward(fm_tensor *dweight, fm_tensor *dbias, fm_tensor *dimg, const fm_tensor *dout,
                                  const fm_tensor *cols, const fm_tensor *weight);

/* Rows of the last dim normalised to unit L2 norm; norm (N). */
fm_status fm_l2norm_forward(fm_tensor *out, fm_tensor *norm, const fm_tensor *inp);
fm_status fm_l2norm_backward(fm_tensor *dinp, const fm_tensor *dout, const fm_tensor *out, const fm_tensor *norm);

/* img, txt (N, D); probs (N, N) each; loss and logit_scale are 0-dim or (1) tensors. */
fm_status fm_infonce_forward(fm_tensor *loss, fm_tensor *probs_i2t, fm_tensor *probs_t2i, const fm_tensor *img,
                             const fm_tensor *txt, const fm_tensor *logit_scale);
fm_status fm_infonce_backward(fm_tensor *dimg, fm_tensor *dtxt, fm_tensor *dlogit_scale, const fm_tensor *img,
                              const fm_tensor *txt, const fm_tensor *probs_i2t, const fm_tensor *probs_t2i,
                              const fm_tensor *logit_scale, float dloss);

/* logits (N, C), targets (N) i32 in [-1, C), probs (N, C), loss scalar. */
fm_status fm_cross_entropy_forward(fm_tensor *loss, fm_tensor *probs, const fm_tensor *logits,
                                   const fm_tensor *targets);
fm_status fm_cross_entropy_backward(fm_tensor *dlogits, const fm_tensor *probs, const fm_tensor *targets, float dloss);

/* loss = mean((a − b)²). */
fm_status fm_mse_forward(fm_tensor *loss, const fm_tensor *a, const fm_tensor *b);
fm_status fm_mse_backward(fm_tensor *da, fm_tensor *db, const fm_tensor *a, const fm_tensor *b, float dloss);

/* One AdamW step t ≥ 1 on params with grads, moments m and v (all the same shape). */
fm_status fm_adamw_update(fm_tensor *params, const fm_tensor *grads, fm_tensor *m, fm_tensor *v, fm_adamw_hparams hp,
                          int t);

/* Clips g in place to global L2 norm max_norm (> 0); *norm_before gets the norm before clipping. A
 * non-finite norm returns FM_ERR_NOT_FINITE and leaves g unchanged. */
fm_status fm_clip_grad_norm(fm_tensor *g, float max_norm, float *norm_before);

/* Inverted dropout, as torch.nn.Dropout in training: out = inp·mask with mask (inp's shape, f32) = 1/(1 − p)
 * where an element is kept (probability 1 − p) and 0 elsewhere; p in [0, 1) (FM_ERR_INVALID_ARG otherwise),
 * 0 gives out = inp. The mask depends only on (seed, stream, element index) — Philox-4x32-10 with key seed
 * and counter (stream, i/4), word i%4 — so it is the same for any thread count and on either device; use a
 * different stream for every independent draw. out may be inp. Backward: dinp += dout·mask. */
fm_status fm_dropout_forward(fm_tensor *out, fm_tensor *mask, const fm_tensor *inp, float p, uint64_t seed,
                             uint64_t stream);
fm_status fm_dropout_backward(fm_tensor *dinp, const fm_tensor *dout, const fm_tensor *mask);

#ifdef __cplusplus
}
#endif
#endif
