/* CreamFL's site regularisers on L2-normalised embeddings, with their gradients: the inter-modal contrast
 * L_inter (each local embedding against all of P's global representations of the other modality, streamed in
 * tiles with an online softmax so no B×|P| matrix beyond one tile is kept) and the intra-modal contrast
 * L_intra (global representation as positive, the site's round-start representation as negative). */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/creamfl.h"

#define INTER_TILE_COLS 1024

fm_status fm_creamfl_inter_loss(const float *z, int B, size_t d, const float *U, size_t n, const int64_t *pos,
                                float tau, float scale, float *dz, float *loss)
{
    if (!z || !U || !pos || !loss)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl L_inter: NULL embeddings, representations, positives or loss");
    if (B < 1 || d < 1 || n < 1)
        return fm_error(FM_ERR_SHAPE, "creamfl L_inter: empty input (B = %d, d = %zu, |P| = %zu)", B, d, n);
    if (n > INT_MAX || d > INT_MAX)
        return fm_error(FM_ERR_RANGE, "creamfl L_inter: |P| = %zu or d = %zu exceeds the BLAS int range", n, d);
    if (!(tau > 0.0f) || !isfinite(tau))
        return fm_error(FM_ERR_INVALID_ARG, "creamfl L_inter: temperature %g must be positive", (double)tau);
    for (int b = 0; b < B; b++)
        if (pos[b] < 0 || (size_t)pos[b] >= n)
            return fm_error(FM_ERR_RANGE, "creamfl L_inter: positive %lld of row %d outside [0, %zu)",
                            (long long)pos[b], b, n);
    const size_t Bs = (size_t)B, TC = n < INTER_TILE_COLS ? n : INTER_TILE_COLS;
    float *tile = malloc(Bs * TC * sizeof(float)), *acc = calloc(Bs * d, sizeof(float));
    double *run_max = malloc(Bs * sizeof(double)), *run_sum = calloc(Bs, sizeof(double));
    if (!tile || !acc || !run_max || !run_sum) {
        free(tile);
        free(acc);
        free(run_max);
        free(run_sum);
        return fm_error(FM_ERR_NO_MEMORY, "creamfl L_inter: out of memory (B = %d, tile %zu)", B, TC);
    }
    for (size_t b = 0; b < Bs; b++)
        run_max[b] = -INFINITY;
    const float inv_tau = 1.0f / tau;
    for (size_t j0 = 0; j0 < n; j0 += TC) {
        const size_t c = n - j0 < TC ? n - j0 : TC;
        /* logits (B, c) = z · U[j0 : j0+c]ᵀ / τ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, (int)c, (int)d, inv_tau, z, (int)d, U + j0 * d, (int)d,
                    0.0f, tile, (int)c);
        for (size_t b = 0; b < Bs; b++) {
            float *row = tile + b * c;
            float mx = row[0];
            for (size_t j = 1; j < c; j++)
                mx = row[j] > mx ? row[j] : mx;
            const double m = run_max[b] > (double)mx ? run_max[b] : (double)mx;
            const double rescale = exp(run_max[b] - m);
            double part = 0.0;
            for (size_t j = 0; j < c; j++) {
                row[j] = expf(row[j] - (float)m);
                part += row[j];
            }
            run_sum[b] = run_sum[b] * rescale + part;
            run_max[b] = m;
            for (size_t e = 0; e < d; e++)
                acc[b * d + e] *= (float)rescale;
        }
        /* acc (B, d) += exp(logits − max) · U[j0 : j0+c] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, (int)d, (int)c, 1.0f, tile, (int)c, U + j0 * d,
                    (int)d, 1.0f, acc, (int)d);
    }
    double total = 0.0;
    const double g = (double)scale / ((double)B * (double)tau);
    for (size_t b = 0; b < Bs; b++) {
        const float *zb = z + b * d, *up = U + (size_t)pos[b] * d;
        double positive = 0.0;
        for (size_t e = 0; e < d; e++)
            positive += (double)zb[e] * (double)up[e];
        total += run_max[b] + log(run_sum[b]) - positive / (double)tau;
        if (dz)
            for (size_t e = 0; e < d; e++) /* dL/dz_b = (E_softmax[U] − U_pos) / (τ·B) */
                dz[b * d + e] += (float)(g * ((double)acc[b * d + e] / run_sum[b] - (double)up[e]));
    }
    *loss = (float)(total / (double)B);
    free(tile);
    free(acc);
    free(run_max);
    free(run_sum);
    return FM_OK;
}

fm_status fm_creamfl_intra_loss(const float *z, const float *zg, const float *zold, int B, size_t d, float tau,
                                float scale, float *dz, float *loss)
{
    if (!z || !zg || !zold || !loss)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl L_intra: NULL embeddings or loss");
    if (B < 1 || d < 1)
        return fm_error(FM_ERR_SHAPE, "creamfl L_intra: empty input (B = %d, d = %zu)", B, d);
    if (!(tau > 0.0f) || !isfinite(tau))
        return fm_error(FM_ERR_INVALID_ARG, "creamfl L_intra: temperature %g must be positive", (double)tau);
    double total = 0.0;
    const double g = (double)scale / ((double)B * (double)tau);
    for (size_t b = 0; b < (size_t)B; b++) {
        const float *zb = z + b * d, *gb = zg + b * d, *ob = zold + b * d;
        double a = 0.0, o = 0.0;
        for (size_t e = 0; e < d; e++) {
            a += (double)zb[e] * (double)gb[e];
            o += (double)zb[e] * (double)ob[e];
        }
        /* −log(e^a / (e^a + e^o)) with a, o over τ = softplus((o − a)/τ) */
        const double x = (o - a) / (double)tau;
        total += x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x));
        if (dz) {
            const double sig = 1.0 / (1.0 + exp(-x));
            for (size_t e = 0; e < d; e++)
                dz[b * d + e] += (float)(g * sig * ((double)ob[e] - (double)gb[e]));
        }
    }
    *loss = (float)(total / (double)B);
    return FM_OK;
}
