/* CPU reference of softmax cross-entropy over classes, averaged over the rows whose target is not -1
 * (ignored rows, as PyTorch's ignore_index). A batch with every row ignored has loss 0 and no gradient.
 * The per-row losses are summed through fixed chunks in order: the same bits with any thread count. */
#include <math.h>

#include "cpu/cpu_ops.h"

enum { CE_CHUNKS = 64 };

fm_status fm_cpu_cross_entropy_forward(float *loss, float *probs, const float *logits, const int32_t *targets, int N,
                                       int C)
{
    const size_t Ns = (size_t)N, Cs = (size_t)C;
    for (size_t i = 0; i < Ns; i++)
        if (targets[i] < -1 || targets[i] >= C)
            return fm_error(FM_ERR_RANGE, "cross_entropy: targets[%zu] = %d is outside [-1, %d)", i, (int)targets[i],
                            C);

    double part[CE_CHUNKS] = {0};
    size_t count[CE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < CE_CHUNKS; ch++) {
        const size_t lo = Ns * (size_t)ch / CE_CHUNKS, hi = Ns * (size_t)(ch + 1) / CE_CHUNKS;
        double s = 0.0;
        size_t cnt = 0;
        for (size_t i = lo; i < hi; i++) {
            const float *x = logits + i * Cs;
            float *p = probs + i * Cs;
            float maxv = -INFINITY;
            for (size_t c = 0; c < Cs; c++)
                if (x[c] > maxv)
                    maxv = x[c];
            double sum = 0.0;
            for (size_t c = 0; c < Cs; c++) {
                p[c] = expf(x[c] - maxv);
                sum += p[c];
            }
            const float inv = (float)(1.0 / sum);
            for (size_t c = 0; c < Cs; c++)
                p[c] *= inv;
            if (targets[i] >= 0) {
                /* lse − x[t], finite even where p[t] underflows */
                s += log(sum) - ((double)x[targets[i]] - maxv);
                cnt++;
            }
        }
        part[ch] = s;
        count[ch] = cnt;
    }
    double total = 0.0;
    size_t n_used = 0;
    for (int ch = 0; ch < CE_CHUNKS; ch++) {
        total += part[ch];
        n_used += count[ch];
    }
    *loss = n_used ? (float)(total / (double)n_used) : 0.0f;
    return FM_OK;
}

void fm_cpu_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *targets, int N, int C,
                                   float dloss)
{
    if (!dlogits)
        return;
    const size_t Ns = (size_t)N, Cs = (size_t)C;
    size_t n_used = 0;
    for (size_t i = 0; i < Ns; i++)
        n_used += targets[i] >= 0;
    if (!n_used)
        return;
    const float scale = (float)((double)dloss / (double)n_used);
#pragma omp parallel for schedule(static)
    for (int ii = 0; ii < N; ii++) {
        const size_t i = (size_t)ii;
        if (targets[i] < 0)
            continue;
        const float *p = probs + i * Cs;
        float *dx = dlogits + i * Cs;
        for (size_t c = 0; c < Cs; c++)
            dx[c] += scale * (p[c] - ((int32_t)c == targets[i] ? 1.0f : 0.0f));
    }
}
