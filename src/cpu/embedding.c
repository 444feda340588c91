/* CPU reference of the token + position embedding, out[b, t] = wte[tokens[b, t]] + wpe[t]. */
#include "cpu/cpu_ops.h"

/* Columns per block in backward: each thread owns whole column blocks of dwte, so repeated token ids
 * need no atomics and the sums come out the same for any thread count. */
#define EMB_COL_BLOCK 64

fm_status fm_cpu_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe, int B, int T,
                                   int C, int V)
{
    /* Validate every id before writing anything, so a bad batch leaves out untouched. */
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int32_t id = tokens[(size_t)b * (size_t)T + (size_t)t];
            if (id < 0 || id >= V)
                return fm_error(FM_ERR_RANGE, "embedding: token id %d at (b=%d, t=%d) is outside [0, %d)", (int)id, b,
                                t, V);
        }
    }
    if (C <= 0)
        return FM_OK;
#pragma omp parallel for schedule(static) if ((size_t)B * (size_t)T * (size_t)C > 65536)
    for (size_t bt = 0; bt < (size_t)B * (size_t)T; bt++) {
        size_t t = bt % (size_t)T;
        const float *e = wte + (size_t)tokens[bt] * (size_t)C;
        const float *p = wpe + t * (size_t)C;
        float *y = out + bt * (size_t)C;
        for (int c = 0; c < C; c++)
            y[c] = e[c] + p[c];
    }
    return FM_OK;
}

void fm_cpu_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, int B, int T, int C)
{
    if (B <= 0 || T <= 0 || C <= 0)
        return;
    size_t BT = (size_t)B * (size_t)T;
    if (dwte) {
        int nblocks = (C + EMB_COL_BLOCK - 1) / EMB_COL_BLOCK;
#pragma omp parallel for schedule(static) if (BT * (size_t)C > 65536)
        for (int blk = 0; blk < nblocks; blk++) {
            size_t c0 = (size_t)blk * EMB_COL_BLOCK;
            size_t c1 = c0 + EMB_COL_BLOCK < (size_t)C ? c0 + EMB_COL_BLOCK : (size_t)C;
            for (size_t bt = 0; bt < BT; bt++) {
                float *g = dwte + (size_t)tokens[bt] * (size_t)C;
                const float *dy = dout + bt * (size_t)C;
                for (size_t c = c0; c < c1; c++)
                    g[c] += dy[c];
            }
        }
    }
    if (dwpe) {
#pragma omp parallel for schedule(static) if (BT * (size_t)C > 65536)
        for (int t = 0; t < T; t++) {
            float *g = dwpe + (size_t)t * (size_t)C;
            for (size_t b = 0; b < (size_t)B; b++) {
                const float *dy = dout + (b * (size_t)T + (size_t)t) * (size_t)C;
                for (size_t c = 0; c < (size_t)C; c++)
                    g[c] += dy[c];
            }
        }
    }
}
