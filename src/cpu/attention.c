/* CPU reference of the multi-head self-attention core: softmax(q·kᵀ/√hs + mask)·v per (batch, head),
 * with a key-padding mask (lengths) and an optional causal mask. Flash-attention style: forward keeps only
 * the log-sum-exp of each query row (lse, B·NH·T floats) and backward recomputes the probabilities from
 * q, k and lse, so no B×NH×T×T tensor is ever stored. The order of operations matches kernels/attention.cu
 * (one key at a time with an online softmax), the CUDA twin that the GPU tests hold to this file. */
#include <math.h>

#include "cpu/cpu_ops.h"

/* Keys that a query may see form a prefix [0, nkeys): padding removes the tail j ≥ lengths[b] and the
 * causal mask removes j > i, so one count describes both masks. */
static size_t visible_keys(size_t i, size_t valid, int causal)
{
    if (causal && i + 1 < valid)
        return i + 1;
    return valid;
}

/* q_i·k_j/√hs; forward and backward share it so that backward's scores are forward's, bit for bit. */
static float score(const float *qi, const float *kj, size_t hs, float scale)
{
    float s = 0.0f;
    for (size_t d = 0; d < hs; d++)
        s += qi[d] * kj[d];
    return s * scale;
}

void fm_cpu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *lengths, int causal, int B, int T, int C, int NH)
{
    const size_t Ts = (size_t)T, Cs = (size_t)C, hs = (size_t)(C / NH), nh = (size_t)NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const long long nbh = (long long)B * NH;

#pragma omp parallel for schedule(static)
    for (long long bh = 0; bh < nbh; bh++) {
        const size_t b = (size_t)bh / nh, h = (size_t)bh % nh;
        const size_t valid = lengths ? (size_t)lengths[b] : Ts;
        for (size_t i = 0; i < Ts; i++) {
            const float *qi = q + (b * Ts + i) * Cs + h * hs;
            float *oi = out + (b * Ts + i) * Cs + h * hs;
            const size_t nkeys = visible_keys(i, valid, causal);
            for (size_t d = 0; d < hs; d++)
                oi[d] = 0.0f;

            /* Online softmax: m is the running maximum, l = Σ exp(s_j − m) and oi = Σ exp(s_j − m)·v_j;
             * both are rescaled when m grows, so one pass over the keys needs no row of scores. */
            float m = -INFINITY, l = 0.0f;
            for (size_t j = 0; j < nkeys; j++) {
                const size_t jo = (b * Ts + j) * Cs + h * hs;
                const float s = score(qi, k + jo, hs, scale);
                if (s > m) {
                    const float corr = expf(m - s); /* 0 for the first key (m = −inf) */
                    l *= corr;
                    for (size_t d = 0; d < hs; d++)
                        oi[d] *= corr;
                    m = s;
                }
                const float p = expf(s - m);
                l += p;
                for (size_t d = 0; d < hs; d++)
                    oi[d] += p * v[jo + d];
            }
            float *lse_i = lse + (size_t)bh * Ts + i;
            if (nkeys == 0) {
                *lse_i = -INFINITY; /* every key masked: zeros out, and backward skips the row */
                continue;
            }
            const float inv = 1.0f / l;
            for (size_t d = 0; d < hs; d++)
                oi[d] *= inv;
            *lse_i = m + logf(l);
        }
    }
}

void fm_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *lengths, int causal,
                               int B, int T, int C, int NH)
{
    if (!dq && !dk && !dv)
        return;
    const size_t Ts = (size_t)T, Cs = (size_t)C, hs = (size_t)(C / NH), nh = (size_t)NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const long long nbh = (long long)B * NH;

    /* One thread owns a (b, h): it alone touches columns [h·hs, (h+1)·hs) of batch b's gradients. */
#pragma omp parallel for schedule(static)
    for (long long bh = 0; bh < nbh; bh++) {
        const size_t b = (size_t)bh / nh, h = (size_t)bh % nh;
        const size_t valid = lengths ? (size_t)lengths[b] : Ts;
        for (size_t i = 0; i < Ts; i++) {
            const size_t io = (b * Ts + i) * Cs + h * hs;
            const float *doi = dout + io, *qi = q + io, *oi = out + io;
            const float lse_i = lse[(size_t)bh * Ts + i];
            const size_t nkeys = visible_keys(i, valid, causal);
            if (nkeys == 0 || !isfinite(lse_i))
                continue; /* a row that saw no key output constant zeros: no gradient flows through it */

            /* Softmax backward needs D_i = Σ_j p_ij·(dout_i·v_j), which equals dout_i·out_i: one dot
             * product instead of a pass over the keys. */
            float D = 0.0f;
            for (size_t d = 0; d < hs; d++)
                D += doi[d] * oi[d];
            for (size_t j = 0; j < nkeys; j++) {
                const size_t jo = (b * Ts + j) * Cs + h * hs;
                const float p = expf(score(qi, k + jo, hs, scale) - lse_i);
                float dp = 0.0f;
                for (size_t d = 0; d < hs; d++)
                    dp += doi[d] * v[jo + d];
                if (dv) {
                    for (size_t d = 0; d < hs; d++)
                        dv[jo + d] += p * doi[d];
                }
                const float ds = p * (dp - D) * scale;
                if (dq) {
                    float *dqi = dq + io;
                    for (size_t d = 0; d < hs; d++)
                        dqi[d] += ds * k[jo + d];
                }
                if (dk) {
                    for (size_t d = 0; d < hs; d++)
                        dk[jo + d] += ds * qi[d];
                }
            }
        }
    }
}
