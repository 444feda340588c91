/* CPU reference of the multi-head self-attention core: softmax(q·kᵀ/√hs + mask)·v per (batch, head),
 * with a key-padding mask (lengths) and an optional causal mask. The probabilities are materialised in
 * att (B, NH, T, T) and are all that backward needs: masked keys hold exactly 0 there. */
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

void fm_cpu_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                              const int32_t *lengths, int causal, int B, int T, int C, int NH)
{
    const size_t Ts = (size_t)T, Cs = (size_t)C, hs = (size_t)(C / NH), nh = (size_t)NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const long long nbh = (long long)B * NH;

#pragma omp parallel for schedule(static)
    for (long long bh = 0; bh < nbh; bh++) {
        const size_t b = (size_t)bh / nh, h = (size_t)bh % nh;
        const size_t valid = lengths ? (size_t)lengths[b] : Ts;
        float *att_bh = att + (size_t)bh * Ts * Ts;
        for (size_t i = 0; i < Ts; i++) {
            const float *qi = q + (b * Ts + i) * Cs + h * hs;
            float *oi = out + (b * Ts + i) * Cs + h * hs;
            float *arow = att_bh + i * Ts;
            const size_t nkeys = visible_keys(i, valid, causal);

            float maxv = -INFINITY;
            for (size_t j = 0; j < nkeys; j++) {
                const float *kj = k + (b * Ts + j) * Cs + h * hs;
                float s = 0.0f;
                for (size_t d = 0; d < hs; d++)
                    s += qi[d] * kj[d];
                s *= scale;
                arow[j] = s;
                if (s > maxv)
                    maxv = s;
            }
            float sum = 0.0f;
            for (size_t j = 0; j < nkeys; j++) {
                arow[j] = expf(arow[j] - maxv);
                sum += arow[j];
            }
            for (size_t j = nkeys; j < Ts; j++)
                arow[j] = 0.0f;
            for (size_t d = 0; d < hs; d++)
                oi[d] = 0.0f;
            if (nkeys == 0)
                continue; /* every key masked: the row outputs zeros, and att's zeros give it zero gradient */

            const float inv = 1.0f / sum;
            for (size_t j = 0; j < nkeys; j++) {
                const float p = arow[j] * inv;
                const float *vj = v + (b * Ts + j) * Cs + h * hs;
                arow[j] = p;
                for (size_t d = 0; d < hs; d++)
                    oi[d] += p * vj[d];
            }
        }
    }
}

void fm_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *att, int B, int T, int C, int NH)
{
    const size_t Ts = (size_t)T, Cs = (size_t)C, hs = (size_t)(C / NH), nh = (size_t)NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const long long nbh = (long long)B * NH;

    /* One thread owns a (b, h): it alone touches columns [h·hs, (h+1)·hs) of batch b's gradients. */
#pragma omp parallel for schedule(static)
    for (long long bh = 0; bh < nbh; bh++) {
        const size_t b = (size_t)bh / nh, h = (size_t)bh % nh;
        const float *att_bh = att + (size_t)bh * Ts * Ts;
        for (size_t i = 0; i < Ts; i++) {
            const float *arow = att_bh + i * Ts;
            const float *doi = dout + (b * Ts + i) * Cs + h * hs;
            const float *qi = q + (b * Ts + i) * Cs + h * hs;

            /* softmax backward needs Σ_j p_ij·datt_ij first; datt_ij = dout_i·v_j is recomputed in the
             * second pass instead of kept, so backward needs no scratch memory. */
            float delta = 0.0f;
            for (size_t j = 0; j < Ts; j++) {
                if (arow[j] == 0.0f)
                    continue;
                const float *vj = v + (b * Ts + j) * Cs + h * hs;
                float datt = 0.0f;
                for (size_t d = 0; d < hs; d++)
                    datt += doi[d] * vj[d];
                delta += arow[j] * datt;
            }
            for (size_t j = 0; j < Ts; j++) {
                const float p = arow[j];
                if (p == 0.0f)
                    continue; /* masked key (or underflow): contributes nothing to any gradient */
                const size_t jo = (b * Ts + j) * Cs + h * hs;
                const float *vj = v + jo;
                float datt = 0.0f;
                for (size_t d = 0; d < hs; d++)
                    datt += doi[d] * vj[d];
                if (dv) {
                    for (size_t d = 0; d < hs; d++)
                        dv[jo + d] += p * doi[d];
                }
                const float dpre = p * (datt - delta) * scale;
                if (dq) {
                    float *dqi = dq + (b * Ts + i) * Cs + h * hs;
                    for (size_t d = 0; d < hs; d++)
                        dqi[d] += dpre * k[jo + d];
                }
                if (dk) {
                    for (size_t d = 0; d < hs; d++)
                        dk[jo + d] += dpre * qi[d];
                }
            }
        }
    }
}
