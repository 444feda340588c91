/* CUDA twins of the CPU reference ops in src/cpu/cpu_ops.h: same names with fm_cuda_ for fm_cpu_, same
 * arguments (but returning fm_status), device pointers, launched on fedmm's stream. They return FM_ERR_CUDA (with file,
 * line and CUDA's message in fm_last_error()) if a launch fails. Declared here only for the ops that have a kernel; the
 * dispatcher in src/ops/ answers FM_ERR_UNSUPPORTED for CUDA tensors of the others. */
#ifndef FEDMM_CUDA_OPS_H
#define FEDMM_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/hparams.h"
#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

fm_status fm_cuda_residual_forward(float *out, const float *a, const float *b, size_t n);
fm_status fm_cuda_residual_backward(float *da, float *db, const float *dout, size_t n);
fm_status fm_cuda_gelu_forward(float *out, const float *inp, size_t n);
fm_status fm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
fm_status fm_cuda_quick_gelu_forward(float *out, const float *inp, size_t n);
fm_status fm_cuda_quick_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
fm_status fm_cuda_adamw_update(float *params, const float *grads, float *m, float *v, size_t n, fm_adamw_hparams hp,
                               int t);

/* ---- attention, losses, gradient clipping (kernels/attention.cu, infonce.cu, cross_entropy.cu, mse.cu,
 * clip_grad.cu). Where they differ from the CPU twins: scalars the CPU reads from host memory stay on
 * the device (logit_scale, loss, dlogit_scale); results the caller must see on the host (a bad target,
 * the gradient norm) are read back, which waits for fedmm's stream. */
/* Fused flash-attention forward / backward; head size C/NH ≤ 128, else FM_ERR_UNSUPPORTED. lengths is a
 * device pointer already checked to lie in [0, T]. */
fm_status fm_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                    const int32_t *lengths, int causal, int B, int T, int C, int NH);
fm_status fm_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse, const int32_t *lengths,
                                     int causal, int B, int T, int C, int NH);
/* logit_scale: a device scalar, read by the kernels (a NaN or Inf one gives NaN outputs, unchecked). */
fm_status fm_cuda_infonce_forward(float *loss, float *probs_i2t, float *probs_t2i, const float *img, const float *txt,
                                  const float *logit_scale, int N, int D);
fm_status fm_cuda_infonce_backward(float *dimg, float *dtxt, float *dlogit_scale, const float *img, const float *txt,
                                   const float *probs_i2t, const float *probs_t2i, const float *logit_scale, int N,
                                   int D, float dloss);
/* targets on the device; one outside [-1, C) gives FM_ERR_RANGE naming the first such row (loss, and in
 * backward dlogits, are then left as they were; forward's probs are written regardless). */
fm_status fm_cuda_cross_entropy_forward(float *loss, float *probs, const float *logits, const int32_t *targets, int N,
                                        int C);
fm_status fm_cuda_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *targets, int N, int C,
                                         float dloss);
fm_status fm_cuda_mse_forward(float *loss, const float *a, const float *b, size_t n);
fm_status fm_cuda_mse_backward(float *da, float *db, const float *a, const float *b, size_t n, float dloss);
/* Σ x², in double, deterministic for a given n; the result is copied to the host *out. */
fm_status fm_cuda_sum_squares(const float *x, size_t n, double *out);
/* Scales g by max_norm/‖g‖ when ‖g‖ > max_norm, deciding on the device; *norm (host) gets ‖g‖ before
 * clipping. A non-finite norm leaves g unchanged and returns FM_ERR_NOT_FINITE. */
fm_status fm_cuda_clip_grad_norm(float *g, size_t n, float max_norm, float *norm);

/* ---- linear, layernorm, softmax, embedding, patch embedding, L2 norm (kernels/linear.cu, layernorm.cu,
 * softmax.cu, embedding.cu, patch_embed.cu, l2norm.cu). Backward accumulates (+=), skips NULL gradients,
 * and sums over rows without float atomics (partials, then a fixed-order second pass) — except dwte. GEMMs
 * run in true fp32 through cuBLASLt (no TF32). Scratch for the partial sums is the cuBLAS(Lt) workspace,
 * used in stream order. */
fm_status fm_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C,
                                 int OC);
fm_status fm_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                  const float *weight, int N, int C, int OC);
fm_status fm_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                    const float *bias, int N, int C, float eps);
fm_status fm_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                     const float *weight, const float *mean, const float *rstd, int N, int C);
fm_status fm_cuda_softmax_forward(float *out, const float *inp, int N, int C);
fm_status fm_cuda_softmax_backward(float *dinp, const float *out, const float *dout, int N, int C);
/* tokens on the device, checked as they are read: an id outside [0, V) is never dereferenced and gives
 * FM_ERR_RANGE naming the first bad position (its row of out, or its dwte contribution, is skipped; the
 * other rows are done). Both read a flag back, which waits for fedmm's stream. Backward takes V, unlike its
 * CPU twin, to check the ids it scatters by; dwte is accumulated with float atomics (repeated ids: the
 * order of their additions, hence the last bits, may vary between runs); dwpe is deterministic. */
fm_status fm_cuda_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe, int B, int T,
                                    int C, int V);
fm_status fm_cuda_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, int B, int T,
                                     int C, int V);
fm_status fm_cuda_patch_embed_forward(float *out, float *cols, const float *img, const float *weight, const float *bias,
                                      int B, int Cin, int H, int W, int P, int C);
fm_status fm_cuda_patch_embed_backward(float *dweight, float *dbias, float *dimg, const float *dout, const float *cols,
                                       const float *weight, int B, int Cin, int H, int W, int P, int C);
fm_status fm_cuda_l2norm_forward(float *out, float *norm, const float *inp, int N, int C);
fm_status fm_cuda_l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N, int C);

/* ---- inverted dropout (kernels/dropout.cu): the mask of the CPU twin bit for bit (the same Philox-4x32-10
 * counter scheme and integer keep threshold); backward multiplies without FMA contraction, as the CPU. */
fm_status fm_cuda_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p, uint64_t seed,
                                  uint64_t stream);
fm_status fm_cuda_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n);

#ifdef __cplusplus
}
#endif
#endif
