/* A CPU stand-in for fedmm's CUDA entry points (cuda/runtime.h, kernels/cuda_ops.h, kernels/model_ops.h), so that
 * the model's device path — src/model/clip_cuda.c, the CUDA branches of src/model/clip_forward.c, the host logic of
 * kernels/lora.cu, bf16 mixed precision with its exact roundings — runs on a machine without a GPU (see
 * tests/gpu/emu/run.sh). "Device" memory is host memory; each per-op kernel is its CPU twin; the GEMM (summing in
 * double, then rounding; with the bias gradient: the column sums of the operand as read), the bf16 casts (round to
 * nearest even) and the row gathers are written out here from their documented contracts; the fused kernels are
 * the CPU twins of the ops they fuse, then the rounding to bf16 where they write bf16; CreamFL's ensemble kernels
 * (kernels/creamfl_ensemble.h) likewise, so that its host loop runs too, and the weighted sum of kernels/aggregate.cu
 * (the weight average's update). What this cannot check: the CUDA kernels and
 * cuBLASLt calls themselves, which only the gpu tests on a GPU do. Not part of the build. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "cuda/runtime.h"
#include "kernels/cuda_ops.h"
#include "kernels/aggregate.h"
#include "kernels/creamfl_ensemble.h"
#include "kernels/model_ops.h"

int fm_cuda_probe(char *why, size_t why_len)
{
    if (why && why_len)
        why[0] = 0;
    return 1;
}
fm_status fm_cuda_malloc(void **ptr, size_t bytes)
{
    *ptr = NULL;
    if (!bytes)
        return FM_OK;
    if (posix_memalign(ptr, 256, (bytes + 255) / 256 * 256))
        return fm_error(FM_ERR_NO_MEMORY, "emu malloc");
    memset(*ptr, 0xA5, bytes); /* garbage, as cudaMalloc's memory is */
    return FM_OK;
}
void fm_cuda_free(void *ptr) { free(ptr); }
fm_status fm_cuda_memcpy(void *dst, const void *src, size_t bytes, int kind)
{
    (void)kind;
    if (bytes)
        memmove(dst, src, bytes);
    return FM_OK;
}
fm_status fm_cuda_memset(void *ptr, int value, size_t bytes)
{
    if (bytes)
        memset(ptr, value, bytes);
    return FM_OK;
}
fm_status fm_cuda_synchronize(void) { return FM_OK; }
fm_status fm_cuda_shutdown(void) { return FM_OK; }
fm_status fm_cuda_check_at(int err, const char *call, const char *file, int line)
{
    (void)call;
    (void)file;
    (void)line;
    return err ? FM_ERR_CUDA : FM_OK;
}
fm_status fm_cuda_check_launch_at(const char *k, const char *f, int l)
{
    (void)k;
    (void)f;
    (void)l;
    return FM_OK;
}
unsigned fm_cuda_grid_1d(size_t n, unsigned block) { return (unsigned)((n + block - 1) / block); }

fm_status fm_cuda_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    fm_cpu_residual_forward(out, a, b, n);
    return FM_OK;
}
fm_status fm_cuda_residual_backward(float *da, float *db, const float *dout, size_t n)
{
    fm_cpu_residual_backward(da, db, dout, n);
    return FM_OK;
}
fm_status fm_cuda_gelu_forward(float *out, const float *inp, size_t n)
{
    fm_cpu_gelu_forward(out, inp, n);
    return FM_OK;
}
fm_status fm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    fm_cpu_gelu_backward(dinp, inp, dout, n);
    return FM_OK;
}
fm_status fm_cuda_quick_gelu_forward(float *out, const float *inp, size_t n)
{
    fm_cpu_quick_gelu_forward(out, inp, n);
    return FM_OK;
}
fm_status fm_cuda_quick_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    fm_cpu_quick_gelu_backward(dinp, inp, dout, n);
    return FM_OK;
}
fm_status fm_cuda_adamw_update(float *p, const float *g, float *m, float *v, size_t n, fm_adamw_hparams hp, int t)
{
    fm_cpu_adamw_update(p, g, m, v, n, hp, t);
    return FM_OK;
}
fm_status fm_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                    const int32_t *lengths, int causal, int B, int T, int C, int NH)
{
    fm_cpu_attention_forward(out, lse, q, k, v, lengths, causal, B, T, C, NH);
    return FM_OK;
}
fm_status fm_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse, const int32_t *lengths,
                                     int causal, int B, int T, int C, int NH)
{
    fm_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, lengths, causal, B, T, C, NH);
    return FM_OK;
}
fm_status fm_cuda_infonce_forward(float *loss, float *pi, float *pt, const float *img, const float *txt,
                                  const float *ls, int N, int D)
{
    fm_cpu_infonce_forward(loss, pi, pt, img, txt, *ls, N, D);
    return FM_OK;
}
fm_status fm_cuda_infonce_backward(float *dimg, float *dtxt, float *dls, const float *img, const float *txt,
                                   const float *pi, const float *pt, const float *ls, int N, int D, float dloss)
{
    fm_cpu_infonce_backward(dimg, dtxt, dls, img, txt, pi, pt, *ls, N, D, dloss);
    return FM_OK;
}
fm_status fm_cuda_cross_entropy_forward(float *loss, float *probs, const float *logits, const int32_t *targets, int N,
                                        int C)
{
    return fm_cpu_cross_entropy_forward(loss, probs, logits, targets, N, C);
}
fm_status fm_cuda_cross_entropy_backward(float *dl, const float *probs, const int32_t *targets, int N, int C,
                                         float dloss)
{
    fm_cpu_cross_entropy_backward(dl, probs, targets, N, C, dloss);
    return FM_OK;
}
fm_status fm_cuda_mse_forward(float *loss, const float *a, const float *b, size_t n)
{
    fm_cpu_mse_forward(loss, a, b, n);
    return FM_OK;
}
fm_status fm_cuda_mse_backward(float *da, float *db, const float *a, const float *b, size_t n, float dloss)
{
    fm_cpu_mse_backward(da, db, a, b, n, dloss);
    return FM_OK;
}
fm_status fm_cuda_sum_squares(const float *x, size_t n, double *out)
{
    *out = fm_cpu_sum_squares(x, n);
    return FM_OK;
}
fm_status fm_cuda_clip_grad_norm(float *g, size_t n, float max_norm, float *norm)
{
    double s = fm_cpu_sum_squares(g, n);
    if (!isfinite(s)) {
        *norm = (float)sqrt(s);
        return fm_error(FM_ERR_NOT_FINITE, "emu clip: non-finite");
    }
    *norm = fm_cpu_clip_grad_norm(g, n, max_norm);
    return FM_OK;
}
fm_status fm_cuda_linear_forward(float *out, const float *inp, const float *w, const float *b, int N, int C, int OC)
{
    fm_cpu_linear_forward(out, inp, w, b, N, C, OC);
    return FM_OK;
}
fm_status fm_cuda_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                  const float *w, int N, int C, int OC)
{
    fm_cpu_linear_backward(dinp, dw, db, dout, inp, w, N, C, OC);
    return FM_OK;
}
fm_status fm_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                    const float *b, int N, int C, float eps)
{
    fm_cpu_layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps);
    return FM_OK;
}
fm_status fm_cuda_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                     const float *w, const float *mean, const float *rstd, int N, int C)
{
    fm_cpu_layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    return FM_OK;
}
fm_status fm_cuda_softmax_forward(float *out, const float *inp, int N, int C)
{
    fm_cpu_softmax_forward(out, inp, N, C);
    return FM_OK;
}
fm_status fm_cuda_softmax_backward(float *dinp, const float *out, const float *dout, int N, int C)
{
    fm_cpu_softmax_backward(dinp, out, dout, N, C);
    return FM_OK;
}
fm_status fm_cuda_embedding_forward(float *out, const int32_t *t, const float *wte, const float *wpe, int B, int T,
                                    int C, int V)
{
    return fm_cpu_embedding_forward(out, t, wte, wpe, B, T, C, V);
}
fm_status fm_cuda_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *t, int B, int T, int C,
                                     int V)
{
    (void)V;
    fm_cpu_embedding_backward(dwte, dwpe, dout, t, B, T, C);
    return FM_OK;
}
fm_status fm_cuda_patch_embed_forward(float *out, float *cols, const float *img, const float *w, const float *b, int B,
                                      int Cin, int H, int W, int P, int C)
{
    fm_cpu_patch_embed_forward(out, cols, img, w, b, B, Cin, H, W, P, C);
    return FM_OK;
}
fm_status fm_cuda_patch_embed_backward(float *dw, float *db, float *dimg, const float *dout, const float *cols,
                                       const float *w, int B, int Cin, int H, int W, int P, int C)
{
    fm_cpu_patch_embed_backward(dw, db, dimg, dout, cols, w, B, Cin, H, W, P, C);
    return FM_OK;
}
fm_status fm_cuda_l2norm_forward(float *out, float *norm, const float *inp, int N, int C)
{
    fm_cpu_l2norm_forward(out, norm, inp, N, C);
    return FM_OK;
}
fm_status fm_cuda_l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N, int C)
{
    fm_cpu_l2norm_backward(dinp, dout, out, norm, N, C);
    return FM_OK;
}
fm_status fm_cuda_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p, uint64_t seed,
                                  uint64_t stream)
{
    fm_cpu_dropout_forward(out, mask, inp, n, p, seed, stream);
    return FM_OK;
}
fm_status fm_cuda_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n)
{
    fm_cpu_dropout_backward(dinp, dout, mask, n);
    return FM_OK;
}

/* ---- model_ops.h ---- */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
fm_status fm_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    if (n && (!dst || !src))
        return fm_error(FM_ERR_INVALID_ARG, "cuda f32_to_bf16: NULL %s", !dst ? "dst" : "src");
    for (size_t i = 0; i < n; i++)
        dst[i] = to_bf16(src[i]);
    return FM_OK;
}
fm_status fm_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = from_bf16(src[i]);
    return FM_OK;
}

static float ld(const void *p, fm_gemm_type t, size_t i)
{
    return t == FM_GEMM_BF16 ? from_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
fm_status fm_cuda_gemm(char op, int M, int N, int K, float alpha, const void *X, const void *Y, fm_gemm_type in,
                       float beta, void *D, fm_gemm_type out, const float *bias)
{
    /* the argument checks of kernels/gemm.cu, with its messages */
    if (op != 'N' && op != 'A' && op != 'W')
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: op '%c' is not N (x·Yᵀ), A (x·Y) or W (xᵀ·Y)", op);
    if (M < 0 || N < 0 || K < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: negative size (M=%d, N=%d, K=%d)", M, N, K);
    if ((in != FM_GEMM_F32 && in != FM_GEMM_BF16) || (out != FM_GEMM_F32 && out != FM_GEMM_BF16))
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: unknown operand type %d or %d", (int)in, (int)out);
    if (out == FM_GEMM_BF16 && (beta != 0.0f || bias))
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: a bf16 output takes beta = 0 and no bias");
    if (bias && op != 'N')
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: a bias only with op N (the forward of a linear)");
    if ((size_t)M * (size_t)N > 0 && !D)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: NULL D");
    if ((size_t)M * (size_t)N * (size_t)K > 0 && (!X || !Y))
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: NULL %s", !X ? "X" : "Y");
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                float x = op == 'W' ? ld(X, in, (size_t)k * M + i) : ld(X, in, (size_t)i * K + k);
                float y = op == 'N' ? ld(Y, in, (size_t)j * K + k) : ld(Y, in, (size_t)k * N + j);
                s += (double)x * y;
            }
            size_t o = (size_t)i * N + j;
            float v = (float)(alpha * s);
            if (out == FM_GEMM_BF16) {
                ((uint16_t *)D)[o] = to_bf16(v);
            } else {
                float *d = D;
                float prev = beta != 0.0f ? beta * d[o] : 0.0f;
                d[o] = v + prev + (bias ? bias[j] : 0.0f);
            }
        }
    return FM_OK;
}

fm_status fm_cuda_gemm_dbias(int M, int N, int K, const void *X, const void *Y, fm_gemm_type in, float beta, float *D,
                             float *dbias)
{
    if (M > 0 && !dbias)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm_dbias: NULL dbias (use fm_cuda_gemm without a bias gradient)");
    FM_TRY(fm_cuda_gemm('W', M, N, K, 1.0f, X, Y, in, beta, D, FM_GEMM_F32, NULL));
    /* the bias gradient of the epilogue: the column sums of X as the GEMM reads it (bf16 values under bf16) */
    for (int i = 0; i < M; i++) {
        double s = 0.0;
        for (int k = 0; k < K; k++)
            s += ld(X, in, (size_t)k * M + i);
        dbias[i] += (float)s;
    }
    return FM_OK;
}

/* ---- the fused kernels (kernels/residual_norm.cu, act_cast.cu): the CPU twins of the ops they fuse, then the
 * rounding to bf16 where the kernel writes bf16 — what the unfused path computed here before ---- */
fm_status fm_cuda_residual_layernorm_forward(float *h, void *out, fm_gemm_type out_type, float *mean, float *rstd,
                                             const float *a, const float *b, const float *w, const float *bias, int N,
                                             int C, float eps)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_forward: negative size (N=%d, C=%d)", N, C);
    if (out_type != FM_GEMM_F32 && out_type != FM_GEMM_BF16)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_forward: unknown output type %d", (int)out_type);
    if (N == 0 || C == 0)
        return FM_OK;
    if (!out || !mean || !rstd || !a || !w || !bias || (b && !h))
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_forward: NULL %s",
                        !out    ? "out"
                        : !mean ? "mean"
                        : !rstd ? "rstd"
                        : !a    ? "a"
                        : !w    ? "weight"
                        : !bias ? "bias"
                                : "h (a residual add needs somewhere to write a + b)");
    const size_t n = (size_t)N * (size_t)C;
    if (b)
        fm_cpu_residual_forward(h, a, b, n);
    const float *x = b ? h : a;
    if (out_type == FM_GEMM_F32) {
        fm_cpu_layernorm_forward(out, mean, rstd, x, w, bias, N, C, eps);
        return FM_OK;
    }
    float *tmp = malloc(n * sizeof *tmp);
    if (!tmp)
        return fm_error(FM_ERR_NO_MEMORY, "emu layernorm");
    fm_cpu_layernorm_forward(tmp, mean, rstd, x, w, bias, N, C, eps);
    fm_cuda_f32_to_bf16(out, tmp, n);
    free(tmp);
    return FM_OK;
}
fm_status fm_cuda_residual_layernorm_backward(float *dres, uint16_t *dres_lp, float *dw, float *db, const float *dout,
                                              const float *h, const float *w, const float *mean, const float *rstd,
                                              int N, int C)
{
    if (N < 0 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_backward: negative size (N=%d, C=%d)", N, C);
    if (N == 0 || C == 0)
        return FM_OK;
    if (!dres || !dout || !h || !w || !mean || !rstd)
        return fm_error(FM_ERR_INVALID_ARG, "cuda residual_layernorm_backward: NULL %s",
                        !dres   ? "dres (the residual stream's gradient)"
                        : !dout ? "dout"
                        : !h    ? "h"
                        : !w    ? "weight"
                        : !mean ? "mean"
                                : "rstd");
    fm_cpu_layernorm_backward(dres, dw, db, dout, h, w, mean, rstd, N, C);
    return dres_lp ? fm_cuda_f32_to_bf16(dres_lp, dres, (size_t)N * (size_t)C) : FM_OK;
}
static fm_status emu_act(int backward, void *dst, fm_gemm_type type, const float *inp, const float *dout, size_t n,
                         fm_cuda_act act)
{
    const char *fn = backward ? "act_backward" : "act_forward";
    if (type != FM_GEMM_F32 && type != FM_GEMM_BF16)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: unknown output type %d", fn, (int)type);
    if (act != FM_CUDA_ACT_QUICK_GELU && act != FM_CUDA_ACT_GELU)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: unknown activation %d", fn, (int)act);
    if (n == 0)
        return FM_OK;
    if (!dst || !inp || (backward && !dout))
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: NULL %s", fn,
                        !dst   ? (backward ? "dinp" : "out")
                        : !inp ? "inp"
                               : "dout");
    float *tmp = calloc(n, sizeof *tmp);
    if (!tmp)
        return fm_error(FM_ERR_NO_MEMORY, "emu act");
    if (backward && act == FM_CUDA_ACT_QUICK_GELU)
        fm_cpu_quick_gelu_backward(tmp, inp, dout, n);
    else if (backward)
        fm_cpu_gelu_backward(tmp, inp, dout, n);
    else if (act == FM_CUDA_ACT_QUICK_GELU)
        fm_cpu_quick_gelu_forward(tmp, inp, n);
    else
        fm_cpu_gelu_forward(tmp, inp, n);
    if (type == FM_GEMM_BF16)
        fm_cuda_f32_to_bf16(dst, tmp, n);
    else
        memcpy(dst, tmp, n * sizeof *tmp);
    free(tmp);
    return FM_OK;
}
fm_status fm_cuda_act_forward(void *out, fm_gemm_type out_type, const float *inp, size_t n, fm_cuda_act act)
{
    return emu_act(0, out, out_type, inp, NULL, n, act);
}
fm_status fm_cuda_act_backward(void *dinp, fm_gemm_type dinp_type, const float *inp, const float *dout, size_t n,
                               fm_cuda_act act)
{
    return emu_act(1, dinp, dinp_type, inp, dout, n, act);
}

fm_status fm_cuda_vision_embed_forward(float *emb, const float *patches, const float *cls, const float *pos, int B,
                                       int T, int W)
{
    if (!emb || !cls || !pos || (T > 1 && !patches))
        return fm_error(FM_ERR_INVALID_ARG, "cuda vision_embed_forward: NULL pointer");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int w = 0; w < W; w++) {
                float v = t == 0 ? cls[w] : patches[((size_t)b * (T - 1) + (t - 1)) * W + w];
                emb[((size_t)b * T + t) * W + w] = v + pos[(size_t)t * W + w];
            }
    return FM_OK;
}
fm_status fm_cuda_vision_embed_backward(float *dpatches, float *dcls, float *dpos, const float *demb, int B, int T,
                                        int W)
{
    if (dpatches)
        for (int b = 0; b < B; b++)
            for (int t = 1; t < T; t++)
                for (int w = 0; w < W; w++)
                    dpatches[((size_t)b * (T - 1) + (t - 1)) * W + w] = demb[((size_t)b * T + t) * W + w];
    for (size_t i = 0; i < (size_t)T * W; i++) {
        if (dpos) {
            float a = dpos[i];
            for (int b = 0; b < B; b++)
                a += demb[(size_t)b * T * W + i];
            dpos[i] = a;
        }
        if (dcls && i < (size_t)W) {
            float a = dcls[i];
            for (int b = 0; b < B; b++)
                a += demb[(size_t)b * T * W + i];
            dcls[i] = a;
        }
    }
    return FM_OK;
}
fm_status fm_cuda_pool_rows_forward(float *pooled, const float *x, const int32_t *pos, int B, int T, int W)
{
    if (B < 0 || T < 1 || W < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda pool_rows_forward: bad sizes (B=%d, T=%d, W=%d)", B, T, W);
    for (int b = 0; b < B; b++)
        memcpy(pooled + (size_t)b * W, x + ((size_t)b * T + (pos ? pos[b] : 0)) * W, (size_t)W * 4);
    return FM_OK;
}
fm_status fm_cuda_pool_rows_backward(float *dx, const float *dp, const int32_t *pos, int B, int T, int W)
{
    for (int b = 0; b < B; b++)
        memcpy(dx + ((size_t)b * T + (pos ? pos[b] : 0)) * W, dp + (size_t)b * W, (size_t)W * 4);
    return FM_OK;
}

fm_status fm_cuda_site_correct_grad(float *grad, const float *params, const float *anchor, float prox_mu,
                                    const float *prox_weight, const float *c_global, const float *c_local, size_t n);
fm_status fm_cuda_site_correct_grad(float *grad, const float *params, const float *anchor, float prox_mu,
                                    const float *prox_weight, const float *c_global, const float *c_local, size_t n)
{
    if (anchor && params && (prox_weight || prox_mu != 0.0f))
        for (size_t i = 0; i < n; i++)
            grad[i] += (prox_weight ? prox_weight[i] : prox_mu) * (params[i] - anchor[i]);
    if (c_global && c_local)
        for (size_t i = 0; i < n; i++)
            grad[i] += c_global[i] - c_local[i];
    return FM_OK;
}

/* ---- creamfl_ensemble.h: the per-row arithmetic written out from its contracts, so that the host loop of the GPU
 * path (src/fl/creamfl_ensemble_cuda.c: tiles, offsets, leading dimensions, bf16 padding, the workspace, staging)
 * runs here against the CPU ensemble. ---- */
fm_status fm_cuda_creamfl_lse_tile(float *run_max, double *run_sum, const float *tile, size_t rows, size_t cols,
                                   int first)
{
    if (rows && cols && (!run_max || !run_sum || !tile))
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl lse_tile: NULL argument");
    for (size_t i = 0; i < rows && cols; i++) {
        const float *x = tile + i * cols;
        float mx = x[0];
        for (size_t j = 1; j < cols; j++)
            mx = x[j] > mx ? x[j] : mx;
        const float m = first || mx > run_max[i] ? mx : run_max[i];
        double part = 0.0;
        for (size_t j = 0; j < cols; j++)
            part += (double)expf(x[j] - m);
        run_sum[i] = first ? part : run_sum[i] * exp((double)run_max[i] - (double)m) + part;
        run_max[i] = m;
    }
    return FM_OK;
}
fm_status fm_cuda_creamfl_finish(float *scores, const float *R, const float *G, const float *run_max,
                                 const double *run_sum, size_t rows, size_t d)
{
    if (rows && (!scores || !R || !G || !run_max || !run_sum))
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl finish: NULL argument");
    for (size_t i = 0; i < rows; i++) {
        double s = 0.0;
        for (size_t e = 0; e < d; e++)
            s += (double)R[i * d + e] * (double)G[i * d + e];
        scores[i] = (float)(s - ((double)run_max[i] + log(run_sum[i])));
    }
    return FM_OK;
}
fm_status fm_cuda_creamfl_site_softmax(float *w, size_t K, size_t n)
{
    for (size_t p = 0; p < n && K; p++) {
        double mx = -INFINITY, sum = 0.0;
        for (size_t k = 0; k < K; k++)
            mx = w[k * n + p] > mx ? w[k * n + p] : mx;
        for (size_t k = 0; k < K; k++)
            sum += exp((double)w[k * n + p] - mx);
        for (size_t k = 0; k < K; k++)
            w[k * n + p] = (float)(exp((double)w[k * n + p] - mx) / sum);
    }
    return FM_OK;
}
fm_status fm_cuda_creamfl_fuse(float *agg, const float *const *reps, const float *w, float mean, size_t K, size_t n,
                               size_t d)
{
    if (n && d && (!agg || !reps || !K))
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl fuse: bad argument");
    for (size_t i = 0; i < n * d; i++) {
        float out = 0.0f;
        for (size_t k = 0; k < K; k++) {
            const float prod = (w ? w[k * n + i / d] : mean) * reps[k][i];
            out += prod;
        }
        agg[i] = out;
    }
    return FM_OK;
}
fm_status fm_cuda_creamfl_rows_bf16(uint16_t *dst, const float *src, size_t rows, size_t d, size_t ld)
{
    if (ld < d)
        return fm_error(FM_ERR_INVALID_ARG, "cuda creamfl rows_bf16: leading dimension %zu < d = %zu", ld, d);
    for (size_t r = 0; r < rows; r++)
        for (size_t e = 0; e < ld; e++)
            dst[r * ld + e] = e < d ? to_bf16(src[r * d + e]) : 0;
    return FM_OK;
}
/* kernels/aggregate.cu's weighted sum (the weight average's update): fp32, k in order, each product rounded */
fm_status fm_cuda_agg_weighted_sum(float *out, const float *const *x, const float *w, size_t k, size_t n,
                                   int accumulate)
{
    if (!out || !x || !w || k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda weighted_sum: NULL argument or no updates (k = %zu)", k);
    for (size_t j = 0; j < n; j++) {
        float acc = accumulate ? out[j] : 0.0f;
        for (size_t q = 0; q < k; q++) {
            volatile float prod = w[q] * x[q][j];
            acc += prod;
        }
        out[j] = acc;
    }
    return FM_OK;
}
