/* CPU reference of the symmetric InfoNCE (CLIP) loss with a learnable temperature: logits =
 * exp(logit_scale)·img·txtᵀ, loss = (CE(logits, diag) + CE(logitsᵀ, diag)) / 2. Both softmaxes are kept
 * for backward. Reductions go through fixed chunks summed in order, so the loss and dlogit_scale are
 * the same bits with any thread count. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "cpu/cpu_ops.h"

enum { INFONCE_CHUNKS = 64 };

/* Softmax of one row in place; returns −log softmax(row)[target], computed as lse − row[target] so
 * that it stays finite where the probability underflows. */
static double softmax_row_nll(float *row, size_t n, size_t target)
{
    float maxv = -INFINITY;
    for (size_t j = 0; j < n; j++)
        if (row[j] > maxv)
            maxv = row[j];
    const double picked = (double)row[target] - maxv;
    double sum = 0.0;
    for (size_t j = 0; j < n; j++) {
        row[j] = expf(row[j] - maxv);
        sum += row[j];
    }
    const float inv = (float)(1.0 / sum);
    for (size_t j = 0; j < n; j++)
        row[j] *= inv;
    return log(sum) - picked;
}

void fm_cpu_infonce_forward(float *loss, float *probs_i2t, float *probs_t2i, const float *img, const float *txt,
                            float logit_scale, int N, int D)
{
    if (N <= 0) {
        *loss = 0.0f;
        return;
    }
    const size_t Ns = (size_t)N;
    const float scale = expf(logit_scale);
    if (D > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, D, scale, img, D, txt, D, 0.0f, probs_i2t, N);
    else
        memset(probs_i2t, 0, Ns * Ns * sizeof(float));

#pragma omp parallel for schedule(static)
    for (int j = 0; j < N; j++)
        for (size_t i = 0; i < Ns; i++)
            probs_t2i[(size_t)j * Ns + i] = probs_i2t[i * Ns + (size_t)j];

    double part[INFONCE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int c = 0; c < INFONCE_CHUNKS; c++) {
        const size_t lo = Ns * (size_t)c / INFONCE_CHUNKS, hi = Ns * (size_t)(c + 1) / INFONCE_CHUNKS;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) {
            s += softmax_row_nll(probs_i2t + i * Ns, Ns, i);
            s += softmax_row_nll(probs_t2i + i * Ns, Ns, i);
        }
        part[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < INFONCE_CHUNKS; c++)
        total += part[c];
    *loss = (float)(0.5 * total / (double)N);
}

void fm_cpu_infonce_backward(float *dimg, float *dtxt, float *dlogit_scale, const float *img, const float *txt,
                             const float *probs_i2t, const float *probs_t2i, float logit_scale, int N, int D,
                             float dloss)
{
    if (N <= 0)
        return;
    const size_t Ns = (size_t)N, Ds = (size_t)D;
    const float scale = expf(logit_scale);
    /* dL/dlogits_ij = dloss/(2N)·(P_i2t[i,j] − δij + P_t2i[j,i] − δij) */
    const float c = dloss * 0.5f / (float)N;
#define INFONCE_G(i, j) (c * (probs_i2t[(i)*Ns + (j)] + probs_t2i[(j)*Ns + (i)] - ((i) == (j) ? 2.0f : 0.0f)))

    if (dimg) {
#pragma omp parallel for schedule(static)
        for (int ii = 0; ii < N; ii++) {
            const size_t i = (size_t)ii;
            for (size_t d = 0; d < Ds; d++) {
                float acc = 0.0f;
                for (size_t j = 0; j < Ns; j++)
                    acc += INFONCE_G(i, j) * txt[j * Ds + d];
                dimg[i * Ds + d] += scale * acc;
            }
        }
    }
    if (dtxt) {
#pragma omp parallel for schedule(static)
        for (int jj = 0; jj < N; jj++) {
            const size_t j = (size_t)jj;
            for (size_t d = 0; d < Ds; d++) {
                float acc = 0.0f;
                for (size_t i = 0; i < Ns; i++)
                    acc += INFONCE_G(i, j) * img[i * Ds + d];
                dtxt[j * Ds + d] += scale * acc;
            }
        }
    }
    if (dlogit_scale) {
        /* d logits_ij / d logit_scale = logits_ij = scale·img_i·txt_j */
        double part[INFONCE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
        for (int ch = 0; ch < INFONCE_CHUNKS; ch++) {
            const size_t lo = Ns * (size_t)ch / INFONCE_CHUNKS, hi = Ns * (size_t)(ch + 1) / INFONCE_CHUNKS;
            double s = 0.0;
            for (size_t i = lo; i < hi; i++)
                for (size_t j = 0; j < Ns; j++) {
                    double dot = 0.0;
                    for (size_t d = 0; d < Ds; d++)
                        dot += (double)img[i * Ds + d] * txt[j * Ds + d];
                    s += (double)INFONCE_G(i, j) * dot;
                }
            part[ch] = s;
        }
        double total = 0.0;
        for (int ch = 0; ch < INFONCE_CHUNKS; ch++)
            total += part[ch];
        *dlogit_scale += (float)(scale * total);
    }
#undef INFONCE_G
}
