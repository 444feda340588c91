/* CreamFL's global–local cross-modal ensemble on the CPU, as a streaming tiled computation: each site's
 * log-sum-exp over all of P is accumulated tile by tile (an online max and sum per row, as in flash
 * attention), so no |P|×|P| matrix is ever formed: memory is the inputs plus one rows×cols tile. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/creamfl.h"

#define DEFAULT_TILE_ROWS 256
#define DEFAULT_TILE_COLS 2048

static fm_status check_inputs(const float *const *reps, int K, const float *global, size_t n, size_t d, const void *out,
                              const char *what)
{
    if (!reps || !global || !out)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL reps, global representations or output", what);
    if (K < 1)
        return fm_error(FM_ERR_INVALID_ARG, "%s: %d sites (need at least 1)", what, K);
    for (int k = 0; k < K; k++)
        if (!reps[k])
            return fm_error(FM_ERR_INVALID_ARG, "%s: representations of site %d are NULL", what, k);
    if (n < 1 || d < 1)
        return fm_error(FM_ERR_SHAPE, "%s: empty representations (|P| = %zu, d = %zu)", what, n, d);
    if (n > INT_MAX || d > INT_MAX)
        return fm_error(FM_ERR_RANGE, "%s: |P| = %zu or d = %zu exceeds the BLAS int range", what, n, d);
    return FM_OK;
}

static size_t pick(size_t want, size_t dflt, size_t n) { return (want ? want : dflt) < n ? (want ? want : dflt) : n; }

fm_status fm_creamfl_ensemble_scores(const float *const *reps, int K, const float *global, size_t n, size_t d,
                                     fm_creamfl_tiles tiles, float *scores)
{
    FM_TRY(check_inputs(reps, K, global, n, d, scores, "creamfl ensemble"));
    const size_t TR = pick(tiles.rows, DEFAULT_TILE_ROWS, n), TC = pick(tiles.cols, DEFAULT_TILE_COLS, n);
    float *tile = malloc(TR * TC * sizeof(float));
    double *run_max = malloc(TR * sizeof(double)), *run_sum = malloc(TR * sizeof(double));
    if (!tile || !run_max || !run_sum) {
        free(tile);
        free(run_max);
        free(run_sum);
        return fm_error(FM_ERR_NO_MEMORY, "creamfl ensemble: out of memory for a %zu x %zu tile", TR, TC);
    }
    for (int k = 0; k < K; k++) {
        const float *R = reps[k];
        for (size_t p0 = 0; p0 < n; p0 += TR) {
            const size_t r = n - p0 < TR ? n - p0 : TR;
            for (size_t i = 0; i < r; i++) {
                run_max[i] = -INFINITY;
                run_sum[i] = 0.0;
            }
            for (size_t j0 = 0; j0 < n; j0 += TC) {
                const size_t c = n - j0 < TC ? n - j0 : TC;
                /* tile (r, c) = R[p0 : p0+r] · G[j0 : j0+c]ᵀ */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, (int)c, (int)d, 1.0f, R + p0 * d, (int)d,
                            global + j0 * d, (int)d, 0.0f, tile, (int)c);
                /* the tile product dominates (2·d flops per exponential) and OpenBLAS threads it; an OpenMP loop
                 * here made the two thread pools spin against each other (3x slower on 2 cores) */
                for (size_t i = 0; i < r; i++) {
                    const float *row = tile + i * c;
                    float mx = row[0];
                    for (size_t j = 1; j < c; j++)
                        mx = row[j] > mx ? row[j] : mx;
                    double m = run_max[i] > (double)mx ? run_max[i] : (double)mx;
                    /* rescale what was summed under the old maximum */
                    double s = run_sum[i] * exp(run_max[i] - m);
                    const float mf = (float)m;
                    double part = 0.0; /* float terms, double sum: 2048 float additions would lose digits */
                    for (size_t j = 0; j < c; j++)
                        part += (double)expf(row[j] - mf);
                    run_max[i] = m;
                    run_sum[i] = s + part;
                }
            }
            for (size_t i = 0; i < r; i++) {
                const float *a = R + (p0 + i) * d, *b = global + (p0 + i) * d;
                double diag = 0.0;
                for (size_t e = 0; e < d; e++)
                    diag += (double)a[e] * (double)b[e];
                scores[(size_t)k * n + p0 + i] = (float)(diag - (run_max[i] + log(run_sum[i])));
            }
        }
    }
    free(tile);
    free(run_max);
    free(run_sum);
    return FM_OK;
}

fm_status fm_creamfl_fuse(const float *const *reps, int K, size_t n, size_t d, float *scores, float *agg)
{
    if (!reps || !agg)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl fuse: NULL representations or output");
    if (K < 1)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl fuse: %d sites (need at least 1)", K);
    for (int k = 0; k < K; k++)
        if (!reps[k])
            return fm_error(FM_ERR_INVALID_ARG, "creamfl fuse: representations of site %d are NULL", k);
    if (n < 1 || d < 1)
        return fm_error(FM_ERR_SHAPE, "creamfl fuse: empty representations (|P| = %zu, d = %zu)", n, d);
    float *w = scores;
    if (w) {
        /* softmax over the sites, per sample, in place */
        for (size_t p = 0; p < n; p++) {
            double mx = -INFINITY, sum = 0.0;
            for (int k = 0; k < K; k++)
                mx = w[(size_t)k * n + p] > mx ? w[(size_t)k * n + p] : mx;
            for (int k = 0; k < K; k++)
                sum += exp(w[(size_t)k * n + p] - mx);
            for (int k = 0; k < K; k++)
                w[(size_t)k * n + p] = (float)(exp(w[(size_t)k * n + p] - mx) / sum);
        }
    }
    const float mean = 1.0f / (float)K;
#pragma omp parallel for schedule(static) if (n * d > 65536)
    for (size_t p = 0; p < n; p++) {
        float *out = agg + p * d;
        for (size_t e = 0; e < d; e++)
            out[e] = 0.0f;
        for (int k = 0; k < K; k++) {
            const float wk = w ? w[(size_t)k * n + p] : mean, *r = reps[k] + p * d;
            for (size_t e = 0; e < d; e++)
                out[e] += wk * r[e];
        }
    }
    return FM_OK;
}

fm_status fm_creamfl_ensemble(const float *const *reps, int K, const float *global, size_t n, size_t d,
                              fm_creamfl_tiles tiles, int plain_mean, float *agg, float *weights)
{
    FM_TRY(check_inputs(reps, K, global, n, d, agg, "creamfl ensemble"));
    float *w = weights;
    if (!w) {
        w = calloc((size_t)K * n, sizeof(float)); /* zeroed: the analyzer cannot follow the scores pass */
        if (!w)
            return fm_error(FM_ERR_NO_MEMORY, "creamfl ensemble: out of memory for %d x %zu weights", K, n);
    }
    fm_status st = FM_OK;
    if (plain_mean) {
        for (size_t i = 0; i < (size_t)K * n; i++)
            w[i] = 1.0f / (float)K;
        st = fm_creamfl_fuse(reps, K, n, d, NULL, agg);
    } else {
        st = fm_creamfl_ensemble_scores(reps, K, global, n, d, tiles, w);
        if (st == FM_OK)
            st = fm_creamfl_fuse(reps, K, n, d, w, agg);
    }
    if (!weights)
        free(w);
    return st;
}

void fm_creamfl_round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) /* NaN stays NaN */
            u |= 0x00400000u;
        else
            u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest, ties to even */
        u &= 0xFFFF0000u;
        memcpy(&x[i], &u, sizeof u);
    }
}
