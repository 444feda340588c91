/* CreamFL's streaming, tiled ensemble against a naive float64 implementation that forms the whole |P|×|P|
 * logit matrix per site: scores, softmax weights and fused representations, for both modalities (images
 * scored against the global texts, texts against the global images), several sites, odd sizes and odd tiles;
 * the plain-mean ablation; the fusion step on its own (fm_creamfl_fuse); bf16 rounding; the refusals; the by-device
 * entry points on the CPU (fm_creamfl_ensemble_dev / _staged: the same bits; the GPU is tests/gpu's). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "creamfl_ref.h"
#include "testutil.h"

#include "fedmm/creamfl.h"
#include "fedmm/device.h"
#include "fedmm/status.h"

static void check_one(const float *const *reps, int K, const float *g, size_t n, size_t d, fm_creamfl_tiles t,
                      const char *what)
{
    double *ws = fm_test_alloc((size_t)K * n * sizeof(double)), *ww = fm_test_alloc((size_t)K * n * sizeof(double));
    double *wa = fm_test_alloc(n * d * sizeof(double));
    fm_test_creamfl_naive(reps, K, g, n, d, ws, ww, wa);
    float *scores = fm_test_alloc((size_t)K * n * sizeof(float)), *w = fm_test_alloc((size_t)K * n * sizeof(float));
    float *agg = fm_test_alloc(n * d * sizeof(float));
    assert_int_equal(fm_creamfl_ensemble_scores(reps, K, g, n, d, t, scores), FM_OK);
    assert_int_equal(fm_creamfl_ensemble(reps, K, g, n, d, t, 0, agg, w), FM_OK);
    char label[160];
    snprintf(label, sizeof label, "%s scores (K %d, n %zu, d %zu, tile %zux%zu)", what, K, n, d, t.rows, t.cols);
    fm_test_assert_close(label, scores, ws, (size_t)K * n, 1e-5, 2e-5);
    snprintf(label, sizeof label, "%s weights (K %d, n %zu, d %zu, tile %zux%zu)", what, K, n, d, t.rows, t.cols);
    fm_test_assert_close(label, w, ww, (size_t)K * n, 1e-5, 1e-5);
    snprintf(label, sizeof label, "%s fused (K %d, n %zu, d %zu, tile %zux%zu)", what, K, n, d, t.rows, t.cols);
    fm_test_assert_close(label, agg, wa, n * d, 1e-5, 1e-5);
    /* fm_creamfl_fuse on the scores is the same fusion, value for value (the weights replace the scores) */
    float *agg2 = fm_test_alloc(n * d * sizeof(float));
    assert_int_equal(fm_creamfl_fuse(reps, K, n, d, scores, agg2), FM_OK);
    assert_memory_equal(scores, w, (size_t)K * n * sizeof(float));
    assert_memory_equal(agg2, agg, n * d * sizeof(float));
    free(agg2);
    /* the weights are a distribution over the sites, and not a trivial one when K > 1 */
    for (size_t p = 0; p < n; p++) {
        double s = 0.0;
        for (int k = 0; k < K; k++)
            s += w[(size_t)k * n + p];
        assert_true(fabs(s - 1.0) < 1e-5);
    }
    free(ws);
    free(ww);
    free(wa);
    free(scores);
    free(w);
    free(agg);
}

static void run_case(uint64_t stream, int K_img, int K_txt, size_t n, size_t d, float norm)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    float *ig = fm_test_rows(&rng, n, d, norm), *tg = fm_test_rows(&rng, n, d, norm);
    const float *ri[8], *rt[8];
    for (int k = 0; k < K_img; k++)
        ri[k] = fm_test_rows(&rng, n, d, norm);
    for (int k = 0; k < K_txt; k++)
        rt[k] = fm_test_rows(&rng, n, d, norm);
    const fm_creamfl_tiles tiles[] = {{0, 0}, {1, 1}, {3, 5}, {7, 11}, {n + 3, 2}, {2, n}, {13, 1}};
    for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; i++) {
        check_one(ri, K_img, tg, n, d, tiles[i], "image (vs global text)");
        check_one(rt, K_txt, ig, n, d, tiles[i], "text (vs global image)");
    }
    for (int k = 0; k < K_img; k++)
        free((void *)ri[k]);
    for (int k = 0; k < K_txt; k++)
        free((void *)rt[k]);
    free(ig);
    free(tg);
}

static void test_matches_naive_small(void **state)
{
    (void)state;
    run_case(1, 3, 2, 37, 17, 1.0f);
    run_case(2, 1, 1, 1, 5, 1.0f); /* one sample, one site: weight 1, agg = reps */
    run_case(3, 5, 4, 29, 3, 1.0f);
    run_case(4, 2, 3, 61, 33, 1.0f);
}

static void test_matches_naive_large_logits(void **state)
{
    (void)state;
    /* norms of 3: logits up to 9, so the streaming maximum matters */
    run_case(5, 4, 3, 45, 7, 3.0f);
}

/* The weights must favour a site whose representations match the global ones of the other modality: a site
 * that sends the global texts themselves (scored against the global texts) gets more weight than noise. */
static void test_weights_prefer_aligned_site(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 6);
    const size_t n = 40, d = 16;
    float *tg = fm_test_rows(&rng, n, d, 1.0f), *noise = fm_test_rows(&rng, n, d, 1.0f);
    const float *reps[2] = {noise, tg};
    float *w = fm_test_alloc(2 * n * sizeof(float)), *agg = fm_test_alloc(n * d * sizeof(float));
    fm_creamfl_tiles t = {4, 9};
    assert_int_equal(fm_creamfl_ensemble(reps, 2, tg, n, d, t, 0, agg, w), FM_OK);
    size_t favoured = 0;
    for (size_t p = 0; p < n; p++)
        favoured += w[n + p] > w[p];
    assert_true(favoured >= n - 2);
    free(tg);
    free(noise);
    free(w);
    free(agg);
}

static void test_plain_mean(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 7);
    const size_t n = 23, d = 6;
    const int K = 3;
    float *g = fm_test_rows(&rng, n, d, 1.0f);
    const float *reps[3];
    for (int k = 0; k < K; k++)
        reps[k] = fm_test_rows(&rng, n, d, 1.0f);
    float *agg = fm_test_alloc(n * d * sizeof(float)), *w = fm_test_alloc((size_t)K * n * sizeof(float));
    double *want = fm_test_alloc(n * d * sizeof(double)), *ww = fm_test_alloc((size_t)K * n * sizeof(double));
    fm_creamfl_tiles t = {0, 0};
    assert_int_equal(fm_creamfl_ensemble(reps, K, g, n, d, t, 1, agg, w), FM_OK);
    for (size_t i = 0; i < n * d; i++)
        want[i] = ((double)reps[0][i] + reps[1][i] + reps[2][i]) / 3.0;
    for (size_t i = 0; i < (size_t)K * n; i++)
        ww[i] = 1.0 / 3.0;
    fm_test_assert_close("plain mean", agg, want, n * d, 1e-6, 1e-7);
    float *agg2 = fm_test_alloc(n * d * sizeof(float));
    assert_int_equal(fm_creamfl_fuse(reps, K, n, d, NULL, agg2), FM_OK); /* no scores: the plain mean */
    assert_memory_equal(agg2, agg, n * d * sizeof(float));
    free(agg2);
    fm_test_assert_close("plain mean weights", w, ww, (size_t)K * n, 1e-6, 1e-7);
    for (int k = 0; k < K; k++)
        free((void *)reps[k]);
    free(g);
    free(agg);
    free(w);
    free(want);
    free(ww);
}

static void test_round_bf16(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 8);
    const size_t n = 4099;
    float *x = fm_test_alloc(n * sizeof(float)), *y = fm_test_alloc(n * sizeof(float));
    fm_test_fill(&rng, x, n, -300.0f, 300.0f);
    x[0] = 1.0f + 1.0f / 256.0f;         /* a tie: rounds to the even 1.0 */
    x[1] = 1.0f + 3.0f / 256.0f;         /* a tie: rounds to the even 1 + 4/256 */
    x[2] = 1.0f + 1.0f / 256.0f + 1e-6f; /* just above the tie: rounds up */
    memcpy(y, x, n * sizeof(float));
    fm_creamfl_round_bf16(y, n);
    assert_true(y[0] == 1.0f);
    assert_true(y[1] == 1.0f + 4.0f / 256.0f);
    assert_true(y[2] == 1.0f + 2.0f / 256.0f);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &y[i], sizeof u);
        assert_true((u & 0xFFFFu) == 0);
        /* within half a bf16 ulp (8 significant bits) of the input */
        const double ulp = ldexp(1.0, ilogb((double)x[i]) - 7);
        assert_true(fabs((double)y[i] - (double)x[i]) <= 0.5 * ulp);
    }
    free(x);
    free(y);
}

static void test_refusals(void **state)
{
    (void)state;
    float g[6] = {1, 0, 0, 1, 0.5f, 0.5f}, agg[6], s[3];
    const float *reps[2] = {g, NULL};
    fm_creamfl_tiles t = {0, 0};
    assert_int_equal(fm_creamfl_ensemble(reps, 0, g, 3, 2, t, 0, agg, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble(reps, 2, g, 3, 2, t, 0, agg, NULL), FM_ERR_INVALID_ARG);
    assert_true(strstr(fm_last_error(), "site 1") != NULL);
    assert_int_equal(fm_creamfl_ensemble(reps, 1, g, 0, 2, t, 0, agg, NULL), FM_ERR_SHAPE);
    assert_int_equal(fm_creamfl_ensemble(reps, 1, NULL, 3, 2, t, 0, agg, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble_scores(reps, 1, g, 3, 2, t, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_ensemble_scores(reps, 1, g, 3, 2, t, s), FM_OK);
    assert_int_equal(fm_creamfl_fuse(reps, 2, 3, 2, s, agg), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_fuse(reps, 1, 3, 2, s, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_fuse(reps, 0, 3, 2, s, agg), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_creamfl_fuse(reps, 1, 3, 0, s, agg), FM_ERR_SHAPE);
    assert_int_equal(fm_creamfl_fuse(reps, 1, 3, 2, s, agg), FM_OK);
}

/* The by-device entry points on the CPU are fm_creamfl_ensemble itself, bit for bit; bf16 tiles are refused there;
 * CUDA without a GPU (or without the backend) is refused with the reason. The GPU itself: tests/gpu. */
static void test_by_device_on_cpu(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 9);
    const size_t n = 31, d = 9;
    const int K = 3;
    float *g = fm_test_rows(&rng, n, d, 1.0f);
    const float *reps[3];
    for (int k = 0; k < K; k++)
        reps[k] = fm_test_rows(&rng, n, d, 1.0f);
    const fm_creamfl_tiles t = {4, 7};
    float *agg = fm_test_alloc(n * d * sizeof(float)), *w = fm_test_alloc((size_t)K * n * sizeof(float));
    float *agg2 = fm_test_alloc(n * d * sizeof(float)), *w2 = fm_test_alloc((size_t)K * n * sizeof(float));
    for (int plain = 0; plain <= 1; plain++) {
        assert_int_equal(fm_creamfl_ensemble(reps, K, g, n, d, t, plain, agg, w), FM_OK);
        memset(agg2, 0xff, n * d * sizeof(float));
        memset(w2, 0xff, (size_t)K * n * sizeof(float));
        assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CPU, FM_CREAMFL_FP32, reps, K, g, n, d, t, plain, agg2, w2),
                         FM_OK);
        assert_memory_equal(agg2, agg, n * d * sizeof(float));
        assert_memory_equal(w2, w, (size_t)K * n * sizeof(float));
        memset(agg2, 0xff, n * d * sizeof(float));
        assert_int_equal(
            fm_creamfl_ensemble_staged(FM_DEVICE_CPU, FM_CREAMFL_FP32, reps, K, g, n, d, t, plain, agg2, NULL), FM_OK);
        assert_memory_equal(agg2, agg, n * d * sizeof(float));
    }
    assert_int_equal(fm_creamfl_ensemble_dev(FM_DEVICE_CPU, FM_CREAMFL_BF16, reps, K, g, n, d, t, 0, agg2, w2),
                     FM_ERR_UNSUPPORTED);
    assert_non_null(strstr(fm_last_error(), "CUDA only"));
    assert_int_equal(
        fm_creamfl_ensemble_staged(FM_DEVICE_CPU, (fm_creamfl_precision)3, reps, K, g, n, d, t, 0, agg2, w2),
        FM_ERR_INVALID_ARG);
    /* the same refusals as the CPU for bad input, whatever the device */
    assert_int_equal(fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, 0, g, n, d, t, 0, agg2, w2),
                     FM_ERR_INVALID_ARG);
    char why[256];
    if (!fm_build_has_cuda() || fm_cuda_device_count(why, sizeof why) == 0) {
        assert_int_equal(fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, FM_CREAMFL_FP32, reps, K, g, n, d, t, 0, agg2, w2),
                         FM_ERR_DEVICE);
        assert_non_null(strstr(fm_last_error(), fm_build_has_cuda() ? "no usable GPU" : "without the CUDA backend"));
    }
    for (int k = 0; k < K; k++)
        free((void *)reps[k]);
    free(g);
    free(agg);
    free(w);
    free(agg2);
    free(w2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_naive_small),
        cmocka_unit_test(test_matches_naive_large_logits),
        cmocka_unit_test(test_weights_prefer_aligned_site),
        cmocka_unit_test(test_plain_mean),
        cmocka_unit_test(test_round_bf16),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_by_device_on_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
