/* CreamFL's ensemble on the GPU (src/fl/creamfl_ensemble_cuda.c, kernels/creamfl_ensemble.cu) against the CPU
 * implementation (fm_creamfl_ensemble, src/fl/creamfl_ensemble.c) and, for small |P|, against a float64 reference
 * that forms the whole |P|×|P| logit matrix (as tests/unit/test_creamfl_ensemble.c does for the CPU). Fresh random
 * inputs of norm 1 and 3 (logits up to 9); odd |P| and d; tiles that do and do not divide |P| (1×1 up to the GPU
 * defaults, with |P| = 2053 and 4099 just past the default 2048 × 4096); federations where some sites lack a
 * modality (image-only and text-only sites: each modality is fused over the sites that sent it, and a modality
 * nobody sent is refused); the plain mean; bf16 score tiles; the host-staged entry point; a reused workspace giving
 * the same bits twice. Every output starts as NaN, so an element left unwritten fails.
 *
 * Bounds: GPU against CPU fp32 ≤ 1e-5 relative (scores and fused representations also 1e-6 absolute: a score near 0
 * when |P| = 1, fused elements that cancel; weights 1e-7); against the float64 reference the CPU test's bounds. The
 * number of elements that are not bit-identical to the CPU's is printed: the fusion repeats the CPU's float
 * operations, the scores differ by the tile products' order. bf16 score tiles: on bf16-valued representations (what
 * travels with rep_dtype: bf16) the fp32 bounds; on other fp32 inputs scores within 2e-3 absolute (the rounding of
 * the operands), the maximum printed. Argument checks run without a GPU; the rest skips (exit 77) without one, and
 * fails with FEDMM_REQUIRE_GPU=1. */
#include "gpu_test.h"

#include <math.h>
#include <stdint.h>

#ifndef FEDMM_WITH_CUDA

int main(void)
{
    return fm_gpu_test_no_device("gpu.creamfl_ensemble", "this fedmm was built without the CUDA backend");
}

#else

#include "creamfl_ref.h"
#include "fedmm/creamfl.h"
#include "fl/creamfl_cuda.h"

#include "../../cuda/runtime.h"

#define RTOL 1e-5
#define ATOL_SCORE 1e-6
#define ATOL_W 1e-7
#define ATOL_AGG 1e-6
#define NAIVE_MAX_N 128 /* the float64 reference forms n×n logits per site */
#define BF16_SCORE_ATOL 2e-3

/* ---- helpers ---------------------------------------------------------------------------------------------- */

/* got (host copy of the GPU's) against the CPU's float results; prints how many differ in any bit. */
static void expect_cpu(const char *what, const float *got, const float *cpu, size_t n, double rtol, double atol)
{
    double *want = fm_test_alloc(n * sizeof(double));
    fm_test_to_double(want, cpu, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += !fm_test_same_bits(got[i], cpu[i]);
    const double rel = fm_test_assert_close(what, got, want, n, rtol, atol);
    printf("  %-78s %7zu of %7zu not bit-identical, max rel %.2g\n", what, differ, n, rel);
    free(want);
}

/* One modality's ensemble of K sites (host reps, host global) on the GPU three ways — fm_creamfl_ensemble_dev, the
 * workspace's scores then fusion, fm_creamfl_ensemble_staged — against the CPU (and the float64 reference for small
 * n). precision BF16 on fp32 inputs (inexact = 1) gets the looser score bound and no comparison of the rest. */
static void check_modality(const float *const *reps, int K, const float *g, size_t n, size_t d, fm_creamfl_tiles t,
                           fm_creamfl_precision prec, int inexact, const char *what)
{
    const size_t kn = (size_t)K * n, nd = n * d;
    char label[200];
    /* the CPU */
    float *c_scores = fm_test_alloc(kn * sizeof(float)), *c_w = fm_test_alloc(kn * sizeof(float));
    float *c_agg = fm_test_alloc(nd * sizeof(float));
    FM_CHECK_OK(fm_creamfl_ensemble_scores(reps, K, g, n, d, t, c_scores));
    FM_CHECK_OK(fm_creamfl_ensemble(reps, K, g, n, d, t, 0, c_agg, c_w));
    /* the device copies */
    const float *d_reps[16];
    assert_true(K <= 16);
    for (int k = 0; k < K; k++)
        d_reps[k] = fm_test_dev_upload(reps[k], nd);
    float *d_g = fm_test_dev_upload(g, nd);
    const char *pn = prec == FM_CREAMFL_BF16 ? "bf16" : "fp32";

    /* 1. fm_creamfl_ensemble_dev */
    float *d_agg = fm_test_dev_poisoned(nd), *d_w = fm_test_dev_poisoned(kn);
    FM_CHECK_OK(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, prec, d_reps, K, d_g, n, d, t, 0, d_agg, d_w));
    float *agg = fm_test_dev_download(d_agg, nd), *w = fm_test_dev_download(d_w, kn);
    /* 2. the workspace: scores alone, then the fusion turning them into weights */
    fm_creamfl_cuda_ws *ws = NULL;
    FM_CHECK_OK(fm_creamfl_cuda_ws_create(&ws, K, n, d, t, prec));
    float *d_s = fm_test_dev_poisoned(kn);
    FM_CHECK_OK(fm_creamfl_cuda_scores(ws, d_reps, K, d_g, d_s));
    float *scores = fm_test_dev_download(d_s, kn);
    FM_CHECK_OK(fm_cuda_memset(d_agg, 0xff, nd * sizeof(float)));
    FM_CHECK_OK(fm_creamfl_cuda_fuse(ws, d_reps, K, d_s, d_agg));
    float *w2 = fm_test_dev_download(d_s, kn), *agg2 = fm_test_dev_download(d_agg, nd);
    fm_creamfl_cuda_ws_destroy(ws);
    if (inexact) {
        double worst = 0.0;
        for (size_t i = 0; i < kn; i++) {
            const double e = fabs((double)scores[i] - (double)c_scores[i]);
            worst = e > worst || isnan(e) ? e : worst;
        }
        printf("  %s bf16 tiles on fp32 inputs (K %d, n %zu, d %zu): scores within %.2g of fp32\n", what, K, n, d,
               worst);
        assert_true(worst <= BF16_SCORE_ATOL);
        /* the weights are still a distribution, the fusion their weighted sum */
        for (size_t p = 0; p < n; p++) {
            double s = 0.0;
            for (int k = 0; k < K; k++)
                s += w[(size_t)k * n + p];
            assert_true(fabs(s - 1.0) < 1e-5);
        }
        assert_memory_equal(w2, w, kn * sizeof(float));
        assert_memory_equal(agg2, agg, nd * sizeof(float));
    } else {
        snprintf(label, sizeof label, "%s %s scores (K %d, n %zu, d %zu, tile %zux%zu)", what, pn, K, n, d, t.rows,
                 t.cols);
        expect_cpu(label, scores, c_scores, kn, RTOL, ATOL_SCORE);
        snprintf(label, sizeof label, "%s %s weights (K %d, n %zu, d %zu, tile %zux%zu)", what, pn, K, n, d, t.rows,
                 t.cols);
        expect_cpu(label, w, c_w, kn, RTOL, ATOL_W);
        snprintf(label, sizeof label, "%s %s fused (K %d, n %zu, d %zu, tile %zux%zu)", what, pn, K, n, d, t.rows,
                 t.cols);
        expect_cpu(label, agg, c_agg, nd, RTOL, ATOL_AGG);
        /* the two device paths are the same computation: the same bits */
        assert_memory_equal(w2, w, kn * sizeof(float));
        assert_memory_equal(agg2, agg, nd * sizeof(float));
        if (n <= NAIVE_MAX_N) {
            double *ws_ = fm_test_alloc(kn * sizeof(double)), *ww = fm_test_alloc(kn * sizeof(double));
            double *wa = fm_test_alloc(nd * sizeof(double));
            fm_test_creamfl_naive(reps, K, g, n, d, ws_, ww, wa);
            snprintf(label, sizeof label, "%s %s scores vs float64", what, pn);
            fm_test_assert_close(label, scores, ws_, kn, 1e-5, 2e-5);
            snprintf(label, sizeof label, "%s %s weights vs float64", what, pn);
            fm_test_assert_close(label, w, ww, kn, 1e-5, 1e-5);
            snprintf(label, sizeof label, "%s %s fused vs float64", what, pn);
            fm_test_assert_close(label, agg, wa, nd, 1e-5, 1e-5);
            free(ws_);
            free(ww);
            free(wa);
        }
    }
    /* 3. host buffers staged through the GPU, with and without weights back */
    float *h_agg = fm_test_alloc(nd * sizeof(float)), *h_w = fm_test_alloc(kn * sizeof(float));
    for (size_t i = 0; i < nd; i++)
        h_agg[i] = NAN;
    for (size_t i = 0; i < kn; i++)
        h_w[i] = NAN;
    FM_CHECK_OK(fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, prec, reps, K, g, n, d, t, 0, h_agg, h_w));
    assert_memory_equal(h_agg, agg, nd * sizeof(float));
    assert_memory_equal(h_w, w, kn * sizeof(float));
    for (size_t i = 0; i < nd; i++)
        h_agg[i] = NAN;
    FM_CHECK_OK(fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, prec, reps, K, g, n, d, t, 0, h_agg, NULL));
    assert_memory_equal(h_agg, agg, nd * sizeof(float));

    free(h_agg);
    free(h_w);
    free(scores);
    free(w2);
    free(agg2);
    free(agg);
    free(w);
    fm_cuda_free(d_s);
    fm_cuda_free(d_agg);
    fm_cuda_free(d_w);
    fm_cuda_free(d_g);
    for (int k = 0; k < K; k++)
        fm_cuda_free((void *)d_reps[k]);
    free(c_scores);
    free(c_w);
    free(c_agg);
}

/* A federation of sites of the given kinds ('P' paired, 'I' image-only, 'T' text-only): each site's image and/or
 * text representations of P, the global ig and tg; images are fused over the sites that hold images (scored against
 * tg), texts over those that hold texts (against ig). A modality no site holds is refused (K = 0), as the server
 * never asks for it. bf16_inputs rounds every representation to bf16 first (what travels with rep_dtype: bf16). */
static void run_federation(uint64_t stream, const char *kinds, size_t n, size_t d, float norm,
                           const fm_creamfl_tiles *tiles, size_t ntiles, fm_creamfl_precision prec, int bf16_inputs)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    float *ig = fm_test_rows(&rng, n, d, norm), *tg = fm_test_rows(&rng, n, d, norm);
    const float *ri[16], *rt[16];
    int Ki = 0, Kt = 0;
    for (const char *s = kinds; *s; s++) {
        if (*s == 'P' || *s == 'I')
            ri[Ki++] = fm_test_rows(&rng, n, d, norm);
        if (*s == 'P' || *s == 'T')
            rt[Kt++] = fm_test_rows(&rng, n, d, norm);
    }
    if (bf16_inputs) {
        fm_creamfl_round_bf16(ig, n * d);
        fm_creamfl_round_bf16(tg, n * d);
        for (int k = 0; k < Ki; k++)
            fm_creamfl_round_bf16((float *)ri[k], n * d);
        for (int k = 0; k < Kt; k++)
            fm_creamfl_round_bf16((float *)rt[k], n * d);
    }
    const int inexact = prec == FM_CREAMFL_BF16 && !bf16_inputs;
    char what[64];
    for (size_t i = 0; i < ntiles; i++) {
        snprintf(what, sizeof what, "[%s] image vs tg", kinds);
        if (Ki > 0)
            check_modality(ri, Ki, tg, n, d, tiles[i], prec, inexact, what);
        snprintf(what, sizeof what, "[%s] text vs ig", kinds);
        if (Kt > 0)
            check_modality(rt, Kt, ig, n, d, tiles[i], prec, inexact, what);
    }
    if (Ki == 0 || Kt == 0) { /* the missing modality: nothing to fuse, and asking is an error */
        float *agg = fm_test_dev_alloc(n * d);
        const float *none[1] = {NULL};
        assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, prec, none, 0, ig, n, d, tiles[0], 0, agg, NULL),
                         FM_ERR_INVALID_ARG);
        fm_cuda_free(agg);
    }
    for (int k = 0; k < Ki; k++)
        free((void *)ri[k]);
    for (int k = 0; k < Kt; k++)
        free((void *)rt[k]);
    free(ig);
    free(tg);
}

/* ---- argument checks: no device needed ------------------------------------------------------------------ */

static void test_argument_checks(void **state)
{
    (void)state;
    float g[6] = {1, 0, 0, 1, 0.5f, 0.5f}, agg[6], w[6];
    const float *reps[2] = {g, NULL};
    const fm_creamfl_tiles t = {0, 0};
    assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, 0, g, 3, 2, t, 0, agg, NULL),
                     FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, 2, g, 3, 2, t, 0, agg, NULL),
                     FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "site 1"));
    assert_int_equal(fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, 1, g, 0, 2, t, 0, agg, NULL),
                     FM_ERR_SHAPE);
    assert_int_equal(fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, FM_CREAMFL_BF16, reps, 1, NULL, 3, 2, t, 0, agg, w),
                     FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, 1, g, 3, 2, t, 0, NULL, w),
                     FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, (fm_creamfl_precision)7, reps, 1, g, 3, 2, t, 0, agg, w),
                     FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble_dev((fm_device)5, FM_CREAMFL_FP32, reps, 1, g, 3, 2, t, 0, agg, w),
                     FM_ERR_INVALID_ARG);
    /* bf16 tiles are a GPU thing: the CPU refuses them rather than multiply in fp32 silently */
    assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CPU, FM_CREAMFL_BF16, reps, 1, g, 3, 2, t, 0, agg, w),
                     FM_ERR_UNSUPPORTED);
    assert_non_null(strstr(fm_last_error(), "CUDA only"));
    fm_creamfl_cuda_ws *ws = (fm_creamfl_cuda_ws *)(void *)agg;
    assert_int_equal(fm_creamfl_cuda_ws_create(&ws, 0, 3, 2, t, FM_CREAMFL_FP32), FM_ERR_INVALID_ARG);
    assert_null(ws);
    assert_int_equal(fm_creamfl_cuda_ws_create(&ws, 1, 0, 2, t, FM_CREAMFL_FP32), FM_ERR_SHAPE);
    assert_int_equal(fm_creamfl_cuda_ws_create(&ws, 1, (size_t)1 << 40, 2, t, FM_CREAMFL_FP32), FM_ERR_RANGE);
    assert_int_equal(fm_creamfl_cuda_scores(NULL, reps, 1, g, w), FM_ERR_INVALID_ARG);
    fm_creamfl_cuda_ws_destroy(NULL);
    char why[256];
    if (fm_cuda_probe(why, sizeof why) == 0) { /* no GPU: a valid call says so */
        assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, 1, g, 3, 2, t, 0, agg, w),
                         FM_ERR_DEVICE);
        assert_non_null(strstr(fm_last_error(), "no usable GPU"));
        assert_int_equal(fm_creamfl_cuda_ws_create(&ws, 1, 3, 2, t, FM_CREAMFL_FP32), FM_ERR_DEVICE);
    }
}

/* ---- device: against the CPU ----------------------------------------------------------------------------- */

static void test_small_federations(void **state)
{
    (void)state;
    const fm_creamfl_tiles t37[] = {{0, 0}, {1, 1}, {3, 5}, {7, 11}, {40, 2}, {2, 37}, {13, 1}};
    run_federation(1, "PITPI", 37, 17, 1.0f, t37, sizeof t37 / sizeof t37[0], FM_CREAMFL_FP32, 0);
    const fm_creamfl_tiles t1[] = {{0, 0}, {1, 1}, {4, 4}};
    run_federation(2, "I", 1, 5, 1.0f, t1, sizeof t1 / sizeof t1[0], FM_CREAMFL_FP32, 0); /* no text at all */
    const fm_creamfl_tiles t61[] = {{0, 0}, {8, 16}, {61, 61}, {60, 7}};
    run_federation(3, "PTTT", 61, 33, 3.0f, t61, sizeof t61 / sizeof t61[0], FM_CREAMFL_FP32, 0);
    const fm_creamfl_tiles t29[] = {{0, 0}, {5, 3}};
    run_federation(4, "PPITTIP", 29, 3, 1.0f, t29, sizeof t29 / sizeof t29[0], FM_CREAMFL_FP32, 0);
    run_federation(5, "TT", 45, 7, 3.0f, t29, sizeof t29 / sizeof t29[0], FM_CREAMFL_FP32, 0); /* no images */
}

/* |P| just past the default tiles (2048 rows, 4096 columns): a partial last block of rows, a partial last tile of
 * columns; also tiles that divide nothing. */
static void test_past_default_tiles(void **state)
{
    (void)state;
    const fm_creamfl_tiles dflt[] = {{0, 0}};
    run_federation(6, "PIT", 2053, 24, 1.0f, dflt, 1, FM_CREAMFL_FP32, 0);
    const fm_creamfl_tiles odd[] = {{0, 0}, {1000, 1500}};
    run_federation(7, "PT", 4099, 16, 3.0f, odd, sizeof odd / sizeof odd[0], FM_CREAMFL_FP32, 0);
}

static void test_bf16_tiles(void **state)
{
    (void)state;
    const fm_creamfl_tiles t[] = {{0, 0}, {3, 5}, {16, 64}};
    /* bf16-valued representations: the products are exact, the fp32 bounds hold; odd d (padded to 8) */
    run_federation(8, "PITPI", 37, 17, 1.0f, t, sizeof t / sizeof t[0], FM_CREAMFL_BF16, 1);
    run_federation(9, "PTT", 101, 64, 3.0f, t, sizeof t / sizeof t[0], FM_CREAMFL_BF16, 1);
    const fm_creamfl_tiles dflt[] = {{0, 0}};
    run_federation(10, "PI", 4099, 40, 1.0f, dflt, 1, FM_CREAMFL_BF16, 1);
    /* fp32 representations through bf16 tiles: close, not equal */
    run_federation(11, "PIT", 53, 64, 1.0f, t, 1, FM_CREAMFL_BF16, 0);
}

static void test_plain_mean(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 12);
    const size_t n = 23, d = 6, nd = n * d;
    const int K = 3;
    const fm_creamfl_tiles t = {0, 0};
    float *g = fm_test_rows(&rng, n, d, 1.0f);
    const float *reps[3], *d_reps[3];
    for (int k = 0; k < K; k++) {
        reps[k] = fm_test_rows(&rng, n, d, 1.0f);
        d_reps[k] = fm_test_dev_upload(reps[k], nd);
    }
    float *c_agg = fm_test_alloc(nd * sizeof(float)), *c_w = fm_test_alloc((size_t)K * n * sizeof(float));
    FM_CHECK_OK(fm_creamfl_ensemble(reps, K, g, n, d, t, 1, c_agg, c_w));
    float *d_g = fm_test_dev_upload(g, nd), *d_agg = fm_test_dev_poisoned(nd),
          *d_w = fm_test_dev_poisoned((size_t)K * n);
    FM_CHECK_OK(fm_creamfl_ensemble_dev(FM_DEVICE_CUDA, FM_CREAMFL_FP32, d_reps, K, d_g, n, d, t, 1, d_agg, d_w));
    float *agg = fm_test_dev_download(d_agg, nd), *w = fm_test_dev_download(d_w, (size_t)K * n);
    expect_cpu("plain mean: fused", agg, c_agg, nd, RTOL, ATOL_AGG);
    expect_cpu("plain mean: weights", w, c_w, (size_t)K * n, RTOL, ATOL_W);
    /* the fusion alone, no scores: the same */
    fm_creamfl_cuda_ws *ws = NULL;
    FM_CHECK_OK(fm_creamfl_cuda_ws_create(&ws, K, n, d, t, FM_CREAMFL_FP32));
    FM_CHECK_OK(fm_cuda_memset(d_agg, 0xff, nd * sizeof(float)));
    FM_CHECK_OK(fm_creamfl_cuda_fuse(ws, d_reps, K, NULL, d_agg));
    float *agg2 = fm_test_dev_download(d_agg, nd);
    assert_memory_equal(agg2, agg, nd * sizeof(float));
    fm_creamfl_cuda_ws_destroy(ws);
    free(agg2);
    free(agg);
    free(w);
    free(c_agg);
    free(c_w);
    free(g);
    fm_cuda_free(d_g);
    fm_cuda_free(d_agg);
    fm_cuda_free(d_w);
    for (int k = 0; k < K; k++) {
        free((void *)reps[k]);
        fm_cuda_free((void *)d_reps[k]);
    }
}

/* One workspace, two modalities with different numbers of sites, each twice: the same bits each time (a fixed
 * reduction order, cuBLASLt's fixed algorithm per shape); more sites than the workspace holds are refused. */
static void test_workspace_reuse_is_deterministic(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 13);
    const size_t n = 300, d = 48, nd = n * d;
    const fm_creamfl_tiles t = {64, 96};
    float *g = fm_test_rows(&rng, n, d, 1.0f);
    float *d_g = fm_test_dev_upload(g, nd);
    const float *d_reps[4];
    for (int k = 0; k < 4; k++) {
        float *h = fm_test_rows(&rng, n, d, 1.0f);
        d_reps[k] = fm_test_dev_upload(h, nd);
        free(h);
    }
    fm_creamfl_cuda_ws *ws = NULL;
    FM_CHECK_OK(fm_creamfl_cuda_ws_create(&ws, 3, n, d, t, FM_CREAMFL_FP32));
    size_t tr = 0, tc = 0;
    fm_creamfl_cuda_ws_tiles(ws, &tr, &tc);
    assert_true(tr == 64 && tc == 96 && fm_creamfl_cuda_ws_bytes(ws) >= 64 * 96 * sizeof(float));
    float *d_agg = fm_test_dev_alloc(nd), *d_w = fm_test_dev_alloc(3 * n);
    float *first[2] = {NULL, NULL};
    for (int rep = 0; rep < 2; rep++)
        for (int K = 2; K <= 3; K++) {
            FM_CHECK_OK(fm_cuda_memset(d_agg, 0xff, nd * sizeof(float)));
            FM_CHECK_OK(fm_creamfl_cuda_ensemble(ws, d_reps, K, d_g, 0, d_agg, NULL));
            float *agg = fm_test_dev_download(d_agg, nd);
            if (rep == 0) {
                first[K - 2] = agg;
            } else {
                assert_memory_equal(agg, first[K - 2], nd * sizeof(float));
                free(agg);
            }
        }
    assert_int_equal(fm_creamfl_cuda_ensemble(ws, d_reps, 4, d_g, 0, d_agg, d_w), FM_ERR_INVALID_ARG);
    fm_creamfl_cuda_ws_destroy(ws);
    free(first[0]);
    free(first[1]);
    free(g);
    fm_cuda_free(d_g);
    fm_cuda_free(d_agg);
    fm_cuda_free(d_w);
    for (int k = 0; k < 4; k++)
        fm_cuda_free((void *)d_reps[k]);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_argument_checks),
    };
    int failed = cmocka_run_group_tests_name("creamfl ensemble on cuda, argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.creamfl_ensemble", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_small_federations),
        cmocka_unit_test(test_past_default_tiles),
        cmocka_unit_test(test_bf16_tiles),
        cmocka_unit_test(test_plain_mean),
        cmocka_unit_test(test_workspace_reuse_is_deterministic),
    };
    failed +=
        cmocka_run_group_tests_name("creamfl ensemble on cuda vs the CPU", device_tests, NULL, fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
