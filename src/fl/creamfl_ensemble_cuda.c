/* CreamFL's ensemble by device: fm_creamfl_ensemble_dev / fm_creamfl_ensemble_staged (include/fedmm/creamfl.h) send
 * the CPU to fm_creamfl_ensemble unchanged and CUDA here: the host loop of the GPU path over sites, blocks of rows
 * and tiles of columns, with the score tiles from fm_cuda_gemm (cuBLASLt) and the per-row arithmetic from
 * kernels/creamfl_ensemble.cu. The loop is the CPU's (src/fl/creamfl_ensemble.c) with larger tiles; no |P|×|P|
 * matrix exists at any time. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>

#include "fedmm/creamfl.h"
#include "fedmm/device.h"

#ifdef FEDMM_WITH_CUDA
#include "cuda/runtime.h"
#include "fl/creamfl_cuda.h"
#include "kernels/creamfl_ensemble.h"
#include "kernels/model_ops.h"
#endif

static fm_status check_precision(fm_creamfl_precision precision)
{
    if (precision != FM_CREAMFL_FP32 && precision != FM_CREAMFL_BF16)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble: unknown precision %d (fp32 0, bf16 1)", (int)precision);
    return FM_OK;
}

/* The CPU twin's checks (check_inputs in creamfl_ensemble.c), with its messages. */
static fm_status check_inputs(const float *const *reps, int K, const float *global, size_t n, size_t d, const void *out)
{
    if (!reps || !global || !out)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble: NULL reps, global representations or output");
    if (K < 1)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble: %d sites (need at least 1)", K);
    for (int k = 0; k < K; k++)
        if (!reps[k])
            return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble: representations of site %d are NULL", k);
    if (n < 1 || d < 1)
        return fm_error(FM_ERR_SHAPE, "creamfl ensemble: empty representations (|P| = %zu, d = %zu)", n, d);
    if (n > INT_MAX || d > INT_MAX)
        return fm_error(FM_ERR_RANGE, "creamfl ensemble: |P| = %zu or d = %zu exceeds the BLAS int range", n, d);
    return FM_OK;
}

#ifdef FEDMM_WITH_CUDA

struct fm_creamfl_cuda_ws {
    int max_sites;
    size_t n, d, rows, cols;
    size_t ld16; /* leading dimension of the bf16 copies: d rounded up to 8 (16-byte rows); 0 under FP32 */
    fm_creamfl_precision precision;
    void *block; /* the one allocation, carved below */
    size_t bytes;
    float *tile;        /* (rows, cols) */
    float *run_max;     /* (rows) */
    double *run_sum;    /* (rows) */
    float *weights;     /* (max_sites, n) */
    const float **ptrs; /* (max_sites) device pointers, for the fusion */
    uint16_t *g16;      /* (n, ld16) the global representations in bf16 */
    uint16_t *r16;      /* (n, ld16) the current site's */
};

/* *out = a·b, or 0 when the product overflows. */
static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

/* Appends `bytes` at 256-byte alignment to a running total (the carving of the one allocation). */
static size_t carve(size_t *total, size_t bytes)
{
    const size_t at = (*total + 255) / 256 * 256;
    *total = at + bytes;
    return at;
}

fm_status fm_creamfl_cuda_ws_create(fm_creamfl_cuda_ws **out, int max_sites, size_t n, size_t d, fm_creamfl_tiles tiles,
                                    fm_creamfl_precision precision)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble on cuda: NULL workspace pointer");
    *out = NULL;
    FM_TRY(check_precision(precision));
    if (max_sites < 1)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble on cuda: %d sites (need at least 1)", max_sites);
    if (n < 1 || d < 1)
        return fm_error(FM_ERR_SHAPE, "creamfl ensemble: empty representations (|P| = %zu, d = %zu)", n, d);
    const size_t ld16 = precision == FM_CREAMFL_BF16 ? (d + 7) / 8 * 8 : 0;
    if (n > INT_MAX || d > INT_MAX || ld16 > INT_MAX)
        return fm_error(FM_ERR_RANGE, "creamfl ensemble: |P| = %zu or d = %zu exceeds the BLAS int range", n, d);
    const size_t want_r = tiles.rows ? tiles.rows : FM_CREAMFL_CUDA_TILE_ROWS;
    const size_t want_c = tiles.cols ? tiles.cols : FM_CREAMFL_CUDA_TILE_COLS;
    const size_t rows = want_r < n ? want_r : n, cols = want_c < n ? want_c : n;
    size_t tile_floats = 0, w_floats = 0, mat16 = 0;
    if (!mul_ok(rows, cols, &tile_floats) || !mul_ok((size_t)max_sites, n, &w_floats) || !mul_ok(n, ld16, &mat16) ||
        tile_floats > SIZE_MAX / 8 || w_floats > SIZE_MAX / 8 || mat16 > SIZE_MAX / 8)
        return fm_error(FM_ERR_RANGE,
                        "creamfl ensemble on cuda: a %zu x %zu tile for %d sites of |P| = %zu is too large", rows, cols,
                        max_sites, n);
    char why[256] = "";
    if (fm_cuda_device_count(why, sizeof why) <= 0)
        return fm_error(FM_ERR_DEVICE, "creamfl ensemble on cuda: no usable GPU: %s", why);
    fm_creamfl_cuda_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return fm_error(FM_ERR_NO_MEMORY, "creamfl ensemble on cuda: no memory");
    ws->max_sites = max_sites;
    ws->n = n;
    ws->d = d;
    ws->rows = rows;
    ws->cols = cols;
    ws->ld16 = ld16;
    ws->precision = precision;
    size_t total = 0;
    const size_t o_tile = carve(&total, tile_floats * sizeof(float));
    const size_t o_max = carve(&total, rows * sizeof(float));
    const size_t o_sum = carve(&total, rows * sizeof(double));
    const size_t o_w = carve(&total, w_floats * sizeof(float));
    const size_t o_ptrs = carve(&total, (size_t)max_sites * sizeof(float *));
    const size_t o_g16 = carve(&total, mat16 * sizeof(uint16_t));
    const size_t o_r16 = carve(&total, mat16 * sizeof(uint16_t));
    fm_status st = fm_cuda_malloc(&ws->block, total);
    if (st != FM_OK) {
        free(ws);
        return st;
    }
    ws->bytes = total;
    char *b = ws->block;
    ws->tile = (float *)(void *)(b + o_tile);
    ws->run_max = (float *)(void *)(b + o_max);
    ws->run_sum = (double *)(void *)(b + o_sum);
    ws->weights = (float *)(void *)(b + o_w);
    ws->ptrs = (const float **)(void *)(b + o_ptrs);
    ws->g16 = ld16 ? (uint16_t *)(void *)(b + o_g16) : NULL;
    ws->r16 = ld16 ? (uint16_t *)(void *)(b + o_r16) : NULL;
    *out = ws;
    return FM_OK;
}

void fm_creamfl_cuda_ws_destroy(fm_creamfl_cuda_ws *ws)
{
    if (!ws)
        return;
    fm_cuda_free(ws->block);
    free(ws);
}

size_t fm_creamfl_cuda_ws_bytes(const fm_creamfl_cuda_ws *ws) { return ws ? ws->bytes : 0; }

void fm_creamfl_cuda_ws_tiles(const fm_creamfl_cuda_ws *ws, size_t *rows, size_t *cols)
{
    *rows = ws ? ws->rows : 0;
    *cols = ws ? ws->cols : 0;
}

static fm_status check_sites(const fm_creamfl_cuda_ws *ws, const float *const *reps, int K, const char *what)
{
    if (!ws)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl %s on cuda: NULL workspace", what);
    if (!reps)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl %s on cuda: NULL reps", what);
    if (K < 1 || K > ws->max_sites)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl %s on cuda: %d sites, the workspace holds 1 to %d", what, K,
                        ws->max_sites);
    for (int k = 0; k < K; k++)
        if (!reps[k])
            return fm_error(FM_ERR_INVALID_ARG, "creamfl %s on cuda: representations of site %d are NULL", what, k);
    return FM_OK;
}

fm_status fm_creamfl_cuda_scores(fm_creamfl_cuda_ws *ws, const float *const *reps, int K, const float *global,
                                 float *scores)
{
    FM_TRY(check_sites(ws, reps, K, "ensemble"));
    if (!global || !scores)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble on cuda: NULL %s", !global ? "global" : "scores");
    const size_t n = ws->n, d = ws->d, TR = ws->rows, TC = ws->cols, ld = ws->ld16;
    const int bf16 = ws->precision == FM_CREAMFL_BF16;
    if (bf16)
        FM_TRY(fm_cuda_creamfl_rows_bf16(ws->g16, global, n, d, ld));
    for (int k = 0; k < K; k++) {
        const float *R = reps[k];
        if (bf16) /* one site's copy at a time: stream order keeps the previous site's tiles before it */
            FM_TRY(fm_cuda_creamfl_rows_bf16(ws->r16, R, n, d, ld));
        for (size_t p0 = 0; p0 < n; p0 += TR) {
            const size_t r = n - p0 < TR ? n - p0 : TR;
            for (size_t j0 = 0; j0 < n; j0 += TC) {
                const size_t c = n - j0 < TC ? n - j0 : TC;
                /* tile (r, c) = R[p0 : p0+r] · G[j0 : j0+c]ᵀ: op 'N', X the site's rows, Y the global rows */
                if (bf16)
                    FM_TRY(fm_cuda_gemm('N', (int)r, (int)c, (int)ld, 1.0f, ws->r16 + p0 * ld, ws->g16 + j0 * ld,
                                        FM_GEMM_BF16, 0.0f, ws->tile, FM_GEMM_F32, NULL));
                else
                    FM_TRY(fm_cuda_gemm('N', (int)r, (int)c, (int)d, 1.0f, R + p0 * d, global + j0 * d, FM_GEMM_F32,
                                        0.0f, ws->tile, FM_GEMM_F32, NULL));
                FM_TRY(fm_cuda_creamfl_lse_tile(ws->run_max, ws->run_sum, ws->tile, r, c, j0 == 0));
            }
            FM_TRY(fm_cuda_creamfl_finish(scores + (size_t)k * n + p0, R + p0 * d, global + p0 * d, ws->run_max,
                                          ws->run_sum, r, d));
        }
    }
    return FM_OK;
}

/* The site pointers into the workspace's device array (a copy that waits for the stream: the previous fusion
 * has read the array before it is overwritten). */
static fm_status upload_ptrs(fm_creamfl_cuda_ws *ws, const float *const *reps, int K)
{
    return fm_cuda_memcpy((void *)ws->ptrs, (const void *)reps, (size_t)K * sizeof(float *), 0);
}

fm_status fm_creamfl_cuda_fuse(fm_creamfl_cuda_ws *ws, const float *const *reps, int K, float *scores, float *agg)
{
    FM_TRY(check_sites(ws, reps, K, "fuse"));
    if (!agg)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl fuse on cuda: NULL output");
    FM_TRY(upload_ptrs(ws, reps, K));
    if (scores)
        FM_TRY(fm_cuda_creamfl_site_softmax(scores, (size_t)K, ws->n));
    return fm_cuda_creamfl_fuse(agg, ws->ptrs, scores, 1.0f / (float)K, (size_t)K, ws->n, ws->d);
}

fm_status fm_creamfl_cuda_ensemble(fm_creamfl_cuda_ws *ws, const float *const *reps, int K, const float *global,
                                   int plain_mean, float *agg, float *weights)
{
    FM_TRY(check_sites(ws, reps, K, "ensemble"));
    if (!global || !agg)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble on cuda: NULL %s", !global ? "global" : "output");
    const size_t n = ws->n;
    /* first, while the device may still be idle: the copy waits for the stream */
    FM_TRY(upload_ptrs(ws, reps, K));
    if (plain_mean) {
        if (weights) { /* w = 1/K everywhere, as the CPU writes them */
            float *host = malloc((size_t)K * n * sizeof(float));
            if (!host)
                return fm_error(FM_ERR_NO_MEMORY, "creamfl ensemble: out of memory for %d x %zu weights", K, n);
            for (size_t i = 0; i < (size_t)K * n; i++)
                host[i] = 1.0f / (float)K;
            fm_status st = fm_cuda_memcpy(weights, host, (size_t)K * n * sizeof(float), 0);
            free(host);
            FM_TRY(st);
        }
        return fm_cuda_creamfl_fuse(agg, ws->ptrs, NULL, 1.0f / (float)K, (size_t)K, n, ws->d);
    }
    float *w = weights ? weights : ws->weights;
    FM_TRY(fm_creamfl_cuda_scores(ws, reps, K, global, w));
    FM_TRY(fm_cuda_creamfl_site_softmax(w, (size_t)K, n));
    return fm_cuda_creamfl_fuse(agg, ws->ptrs, w, 1.0f / (float)K, (size_t)K, n, ws->d);
}

static fm_status cuda_ensemble(fm_creamfl_precision precision, const float *const *reps, int K, const float *global,
                               size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean, float *agg, float *weights)
{
    fm_creamfl_cuda_ws *ws = NULL;
    FM_TRY(fm_creamfl_cuda_ws_create(&ws, K, n, d, tiles, precision));
    fm_status st = fm_creamfl_cuda_ensemble(ws, reps, K, global, plain_mean, agg, weights);
    if (st == FM_OK)
        st = fm_cuda_synchronize(); /* the results are in place, and a fault of the kernels surfaces here */
    fm_creamfl_cuda_ws_destroy(ws);
    return st;
}

/* Host buffers through device copies: one allocation for the K sites, the global representations, agg and the
 * weights. */
static fm_status cuda_staged(fm_creamfl_precision precision, const float *const *reps, int K, const float *global,
                             size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean, float *agg, float *weights)
{
    size_t nd = 0, all = 0, kn = 0;
    if (!mul_ok(n, d, &nd) || !mul_ok((size_t)K + 2, nd, &all) || !mul_ok((size_t)K, n, &kn) || all > SIZE_MAX - kn ||
        all + kn > SIZE_MAX / sizeof(float))
        return fm_error(FM_ERR_RANGE, "creamfl ensemble on cuda: %d sites of %zu x %zu floats are too many", K, n, d);
    float *dev = NULL;
    FM_TRY(fm_cuda_malloc((void **)&dev, (all + kn) * sizeof(float)));
    float *dglobal = dev + (size_t)K * nd, *dagg = dglobal + nd, *dw = dagg + nd;
    const float **dreps = malloc((size_t)K * sizeof(float *));
    fm_status st = dreps ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "creamfl ensemble: out of memory for %d sites", K);
    for (int k = 0; st == FM_OK && k < K; k++) {
        float *site = dev + (size_t)k * nd;
        dreps[k] = site;
        st = fm_cuda_memcpy(site, reps[k], nd * sizeof(float), 0);
    }
    if (st == FM_OK && !plain_mean)
        st = fm_cuda_memcpy(dglobal, global, nd * sizeof(float), 0);
    if (st == FM_OK)
        st = cuda_ensemble(precision, dreps, K, dglobal, n, d, tiles, plain_mean, dagg, weights ? dw : NULL);
    if (st == FM_OK)
        st = fm_cuda_memcpy(agg, dagg, nd * sizeof(float), 1);
    if (st == FM_OK && weights)
        st = fm_cuda_memcpy(weights, dw, kn * sizeof(float), 1);
    free(dreps);
    fm_cuda_free(dev);
    return st;
}

#endif /* FEDMM_WITH_CUDA */

/* The device-independent part of both entry points: the checks, and the CPU. *done = 1 when the CPU answered. */
static fm_status dispatch(fm_device device, fm_creamfl_precision precision, const float *const *reps, int K,
                          const float *global, size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean, float *agg,
                          float *weights, int *done)
{
    *done = 0;
    FM_TRY(check_precision(precision));
    if (device == FM_DEVICE_CPU) {
        if (precision != FM_CREAMFL_FP32)
            return fm_error(FM_ERR_UNSUPPORTED,
                            "creamfl ensemble: bf16 score tiles run on CUDA only (the CPU multiplies in fp32)");
        *done = 1;
        return fm_creamfl_ensemble(reps, K, global, n, d, tiles, plain_mean, agg, weights);
    }
    if (device != FM_DEVICE_CUDA)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl ensemble: unknown device %d", (int)device);
    FM_TRY(check_inputs(reps, K, global, n, d, agg));
#ifdef FEDMM_WITH_CUDA
    char why[256] = "";
    if (fm_cuda_device_count(why, sizeof why) <= 0) /* before any CUDA call: a plain answer, not a CUDA error */
        return fm_error(FM_ERR_DEVICE, "creamfl ensemble on cuda: no usable GPU: %s", why);
#endif
    return FM_OK;
}

fm_status fm_creamfl_ensemble_dev(fm_device device, fm_creamfl_precision precision, const float *const *reps, int K,
                                  const float *global, size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean,
                                  float *agg, float *weights)
{
    int done = 0;
    fm_status st = dispatch(device, precision, reps, K, global, n, d, tiles, plain_mean, agg, weights, &done);
    if (st != FM_OK || done)
        return st;
#ifdef FEDMM_WITH_CUDA
    return cuda_ensemble(precision, reps, K, global, n, d, tiles, plain_mean, agg, weights);
#else
    return fm_error(FM_ERR_DEVICE, "creamfl ensemble on cuda: this fedmm was built without the CUDA backend");
#endif
}

fm_status fm_creamfl_ensemble_staged(fm_device device, fm_creamfl_precision precision, const float *const *reps, int K,
                                     const float *global, size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean,
                                     float *agg, float *weights)
{
    int done = 0;
    fm_status st = dispatch(device, precision, reps, K, global, n, d, tiles, plain_mean, agg, weights, &done);
    if (st != FM_OK || done)
        return st;
#ifdef FEDMM_WITH_CUDA
    return cuda_staged(precision, reps, K, global, n, d, tiles, plain_mean, agg, weights);
#else
    return fm_error(FM_ERR_DEVICE, "creamfl ensemble on cuda: this fedmm was built without the CUDA backend");
#endif
}
