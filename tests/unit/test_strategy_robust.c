/* Robust aggregation: coordinate median, trimmed mean and Krum / multi-Krum against float64 references written
 * here, per-block masks through the strategy, and the attack the rules exist for — 2 of 10 updates
 * sign-flipped ×10 pull FedAvg far away while the robust rules stay near the honest mean. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/strategy.h"
#include "testutil.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Column j sorted, mean of entries [lo, hi). */
static double ref_sorted_mean(float **u, size_t k, size_t j, size_t lo, size_t hi)
{
    double col[64];
    for (size_t i = 0; i < k; i++)
        col[i] = u[i][j];
    qsort(col, k, sizeof(double), cmp_d);
    double s = 0.0;
    for (size_t i = lo; i < hi; i++)
        s += col[i];
    return s / (double)(hi - lo);
}

static float **alloc_updates(fm_rng *rng, size_t k, size_t n)
{
    float **u = fm_test_alloc(k * sizeof(float *));
    for (size_t i = 0; i < k; i++) {
        u[i] = fm_test_alloc(n * sizeof(float));
        fm_test_fill(rng, u[i], n, -2.0f, 2.0f);
    }
    return u;
}

static void free_updates(float **u, size_t k)
{
    for (size_t i = 0; i < k; i++)
        free(u[i]);
    free(u);
}

static void test_median_trimmed(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 11);
    const size_t ks[] = {1, 3, 4, 7, 10, 40};
    const size_t n = 11;
    for (size_t t = 0; t < sizeof(ks) / sizeof(ks[0]); t++) {
        size_t k = ks[t];
        float **u = alloc_updates(&rng, k, n);
        float out[11];
        double want[11];
        assert_int_equal(fm_agg_median(out, (const float *const *)u, k, n), FM_OK);
        for (size_t j = 0; j < n; j++)
            want[j] =
                k % 2 ? ref_sorted_mean(u, k, j, k / 2, k / 2 + 1) : ref_sorted_mean(u, k, j, k / 2 - 1, k / 2 + 1);
        fm_test_assert_close("median", out, want, n, 1e-6, 1e-7);
        const double ratios[] = {0.0, 0.1, 0.25, 0.45};
        for (size_t r = 0; r < 4; r++) {
            size_t cut = (size_t)floor(ratios[r] * (double)k);
            assert_int_equal(fm_agg_trimmed_mean(out, (const float *const *)u, k, n, ratios[r]), FM_OK);
            for (size_t j = 0; j < n; j++)
                want[j] = ref_sorted_mean(u, k, j, cut, k - cut);
            fm_test_assert_close("trimmed mean", out, want, n, 1e-6, 1e-6);
        }
        free_updates(u, k);
    }
    /* a vector long enough for the threaded path */
    {
        const size_t k = 5, nl = 20011;
        float **u = alloc_updates(&rng, k, nl);
        float *out = fm_test_alloc(nl * sizeof(float));
        double *want = fm_test_alloc(nl * sizeof(double));
        assert_int_equal(fm_agg_median(out, (const float *const *)u, k, nl), FM_OK);
        for (size_t j = 0; j < nl; j++)
            want[j] = ref_sorted_mean(u, k, j, 2, 3);
        fm_test_assert_close("median, long", out, want, nl, 1e-6, 1e-7);
        assert_int_equal(fm_agg_trimmed_mean(out, (const float *const *)u, k, nl, 0.2), FM_OK);
        for (size_t j = 0; j < nl; j++)
            want[j] = ref_sorted_mean(u, k, j, 1, 4);
        fm_test_assert_close("trimmed mean, long", out, want, nl, 1e-6, 1e-6);
        free(out);
        free(want);
        free_updates(u, k);
    }
    float x[3] = {1, 2, 3};
    const float *one[1] = {x};
    float out[3];
    assert_int_equal(fm_agg_trimmed_mean(out, one, 1, 3, 0.5), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_agg_median(out, one, 0, 3), FM_ERR_INVALID_ARG);
}

/* Krum by brute force in float64: scores, the m best (ties to the lower index), their mean. */
static void ref_krum(float **u, size_t k, size_t n, int f, int m, double *out, size_t *sel)
{
    double score[64];
    for (size_t i = 0; i < k; i++) {
        double d[64];
        size_t c = 0;
        for (size_t j = 0; j < k; j++) {
            if (j == i)
                continue;
            double s = 0.0;
            for (size_t e = 0; e < n; e++)
                s += ((double)u[i][e] - u[j][e]) * ((double)u[i][e] - u[j][e]);
            d[c++] = s;
        }
        qsort(d, c, sizeof(double), cmp_d);
        score[i] = 0.0;
        for (size_t t = 0; t < k - (size_t)f - 2; t++)
            score[i] += d[t];
    }
    int used[64] = {0};
    for (int q = 0; q < m; q++) {
        size_t best = k;
        for (size_t i = 0; i < k; i++)
            if (!used[i] && (best == k || score[i] < score[best]))
                best = i;
        used[best] = 1;
        sel[q] = best;
    }
    for (size_t e = 0; e < n; e++) {
        double s = 0.0;
        for (int q = 0; q < m; q++)
            s += u[sel[q]][e];
        out[e] = s / m;
    }
}

static void test_krum(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 12);
    const size_t n = 9;
    const struct {
        size_t k;
        int f, m;
    } cases[] = {{5, 1, 1}, {7, 2, 1}, {9, 2, 3}, {12, 3, 9}, {6, 0, 6}};
    for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
        size_t k = cases[t].k;
        float **u = alloc_updates(&rng, k, n);
        float out[9];
        double want[9];
        size_t sel[16], want_sel[16];
        assert_int_equal(fm_agg_krum(out, (const float *const *)u, k, n, cases[t].f, cases[t].m, sel), FM_OK);
        ref_krum(u, k, n, cases[t].f, cases[t].m, want, want_sel);
        for (int q = 0; q < cases[t].m; q++)
            assert_int_equal(sel[q], want_sel[q]);
        fm_test_assert_close("krum", out, want, n, 1e-6, 1e-6);
        free_updates(u, k);
    }
    float **u = alloc_updates(&rng, 4, n);
    float out[9];
    assert_int_equal(fm_agg_krum(out, (const float *const *)u, 4, n, 1, 1, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_agg_krum(out, (const float *const *)u, 4, n, 0, 5, NULL), FM_ERR_INVALID_ARG);
    free_updates(u, 4);
}

enum { K = 10, NP = 13 };

/* 8 honest deltas near a common mean μ (|μ_j| in [0.5, 1.5], noise σ = 0.1) and 2 attackers sending −10× an
 * honest-looking delta. */
static void make_attack(fm_rng *rng, float d[K][NP], double honest_mean[NP])
{
    float mu[NP], sgn[NP];
    fm_test_fill(rng, mu, NP, 0.5f, 1.5f);
    fm_test_fill(rng, sgn, NP, -1.0f, 1.0f);
    for (size_t j = 0; j < NP; j++)
        mu[j] = sgn[j] < 0 ? -mu[j] : mu[j];
    for (size_t k = 0; k < K; k++) {
        fm_rng_normal(rng, d[k], NP, 0.0f, 0.1f);
        for (size_t j = 0; j < NP; j++)
            d[k][j] += mu[j];
    }
    for (size_t j = 0; j < NP; j++) {
        double s = 0.0;
        for (size_t k = 0; k < 8; k++)
            s += d[k][j];
        honest_mean[j] = s / 8.0;
    }
    for (size_t k = 8; k < K; k++)
        for (size_t j = 0; j < NP; j++)
            d[k][j] *= -10.0f;
}

static double dist_to(const float *x, const float *w0, const double *ref)
{
    double s = 0.0;
    for (size_t j = 0; j < NP; j++) {
        double t = ((double)x[j] - w0[j]) - ref[j];
        s += t * t;
    }
    return sqrt(s);
}

static void run_rule(fm_strategy_kind kind, double trim, int f, float d[K][NP], const float *w0, float *out)
{
    fm_strategy_config cfg = fm_strategy_default_config(kind);
    cfg.trim_ratio = trim;
    cfg.krum_byzantine = f;
    fm_strategy_block bl[2] = {{"first", 0, 6, 0, 2}, {"second", 6, NP - 6, 1, 2}};
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, NP, bl, 2, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (size_t k = 0; k < K; k++) {
        /* sample counts are ignored by the robust rules; give the attackers the largest to show it */
        fm_site_update u = {.n_params = NP, .delta = d[k], .weight = k >= 8 ? 1000.0 : 10.0 + (double)k};
        assert_int_equal(fm_strategy_add_update(st, &u), FM_OK);
    }
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    fm_strategy_destroy(st);
}

static void test_attack(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 13);
    for (int trial = 0; trial < 5; trial++) {
        float d[K][NP], w0[NP], out[NP];
        double hm[NP];
        make_attack(&rng, d, hm);
        fm_test_fill(&rng, w0, NP, -1.0f, 1.0f);
        const double noise = 0.1 * sqrt((double)NP); /* norm of one honest delta's noise */
        run_rule(FM_STRATEGY_FEDAVG, 0.1, 2, d, w0, out);
        double davg = dist_to(out, w0, hm);
        run_rule(FM_STRATEGY_MEDIAN, 0.1, 2, d, w0, out);
        double dmed = dist_to(out, w0, hm);
        run_rule(FM_STRATEGY_TRIMMED_MEAN, 0.2, 2, d, w0, out); /* 2 trimmed per side: both attackers go */
        double dtm = dist_to(out, w0, hm);
        run_rule(FM_STRATEGY_KRUM, 0.1, 2, d, w0, out);
        double dkr = dist_to(out, w0, hm);
        run_rule(FM_STRATEGY_MULTI_KRUM, 0.1, 2, d, w0, out); /* m = K − f = 8: exactly the honest ones */
        double dmk = dist_to(out, w0, hm);
        print_message("attack %d: |fedavg − honest| %.3f, median %.3f, trimmed %.3f, krum %.3f, multi-krum %.2e\n",
                      trial, davg, dmed, dtm, dkr, dmk);
        assert_true(davg > 5.0 * noise);
        assert_true(dmed < 1.5 * noise);
        assert_true(dtm < 1.5 * noise);
        assert_true(dkr < 2.0 * noise);
        assert_true(dmk < 1e-5);
    }
}

/* Per-block masks: the median of a block is taken over the sites that trained it; Krum groups blocks by the set
 * of sites that trained them and needs 2f+3 of them, else the round stays open with FM_ERR_STATE. */
static void test_robust_masks(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 14);
    enum { KM = 6, N = 7 };
    fm_strategy_block bl[3] = {{"a", 0, 3, 0, 1}, {"b", 3, 3, -1, 0}, {"c", 6, 1, -1, 0}};
    const uint8_t mk[KM][3] = {{1, 1, 0}, {1, 0, 0}, {1, 1, 0}, {1, 0, 0}, {1, 1, 0}, {1, 1, 0}};
    float **u = alloc_updates(&rng, KM, N);
    float w0[N], out[N];
    fm_test_fill(&rng, w0, N, -1.0f, 1.0f);

    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_MEDIAN);
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, N, bl, 3, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (size_t k = 0; k < KM; k++) {
        fm_site_update up = {.n_params = N, .delta = u[k], .weight = 1.0, .n_blocks = 3, .trained = mk[k]};
        assert_int_equal(fm_strategy_add_update(st, &up), FM_OK);
    }
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    double want[N];
    for (size_t j = 0; j < 3; j++)
        want[j] = w0[j] + ref_sorted_mean(u, KM, j, 2, 4);
    float *sub[4] = {u[0], u[2], u[4], u[5]};
    for (size_t j = 3; j < 6; j++)
        want[j] = w0[j] + ref_sorted_mean(sub, 4, j, 1, 3);
    want[6] = w0[6];
    fm_test_assert_close("masked median", out, want, N, 1e-6, 1e-6);
    fm_strategy_destroy(st);

    /* Krum f = 0: block a over 6 sites, block b over the 4 that trained it (needs 3). f = 1 needs 5 on b: error */
    cfg = fm_strategy_default_config(FM_STRATEGY_KRUM);
    cfg.krum_byzantine = 0;
    assert_int_equal(fm_strategy_create(&st, &cfg, N, bl, 3, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (size_t k = 0; k < KM; k++) {
        fm_site_update up = {.n_params = N, .delta = u[k], .weight = 1.0, .n_blocks = 3, .trained = mk[k]};
        assert_int_equal(fm_strategy_add_update(st, &up), FM_OK);
    }
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    double ka[3], kb[3];
    size_t sel[1];
    float *ua[KM], *ub[4];
    for (size_t k = 0; k < KM; k++)
        ua[k] = u[k];
    for (size_t k = 0; k < 4; k++)
        ub[k] = sub[k] + 3;
    ref_krum(ua, KM, 3, 0, 1, ka, sel);
    ref_krum(ub, 4, 3, 0, 1, kb, sel);
    for (size_t j = 0; j < 3; j++) {
        want[j] = w0[j] + ka[j];
        want[3 + j] = w0[3 + j] + kb[j];
    }
    fm_test_assert_close("masked krum", out, want, N, 1e-6, 1e-6);
    fm_strategy_destroy(st);

    cfg.krum_byzantine = 1;
    assert_int_equal(fm_strategy_create(&st, &cfg, N, bl, 3, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (size_t k = 0; k < KM; k++) {
        fm_site_update up = {.n_params = N, .delta = u[k], .weight = 1.0, .n_blocks = 3, .trained = mk[k]};
        assert_int_equal(fm_strategy_add_update(st, &up), FM_OK);
    }
    assert_int_equal(fm_strategy_finish_round(st, out), FM_ERR_STATE);
    assert_non_null(strstr(fm_last_error(), "'b'"));
    assert_int_equal(fm_strategy_num_updates(st), KM); /* still open, nothing applied */
    assert_memory_equal(fm_strategy_global(st), w0, sizeof(w0));
    assert_int_equal(fm_strategy_round(st), -1);
    fm_strategy_destroy(st);
    free_updates(u, KM);
}

/* Robust rules see clipped deltas too: with C below every norm, the median is a median of rescaled deltas. */
static void test_robust_clip(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 15);
    enum { KC = 5, N = 8 };
    float **u = alloc_updates(&rng, KC, N);
    float w0[N], out[N];
    fm_test_fill(&rng, w0, N, -1.0f, 1.0f);
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_MEDIAN);
    cfg.clip_norm = 0.3;
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, N, NULL, 0, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (size_t k = 0; k < KC; k++) {
        fm_site_update up = {.n_params = N, .delta = u[k], .weight = 1.0};
        assert_int_equal(fm_strategy_add_update(st, &up), FM_OK);
    }
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    for (size_t k = 0; k < KC; k++) {
        double n2 = 0.0;
        for (size_t j = 0; j < N; j++)
            n2 += (double)u[k][j] * u[k][j];
        assert_true(sqrt(n2) > 0.3);
        for (size_t j = 0; j < N; j++)
            u[k][j] = (float)(u[k][j] * 0.3 / sqrt(n2));
    }
    double want[N];
    for (size_t j = 0; j < N; j++)
        want[j] = w0[j] + ref_sorted_mean(u, KC, j, 2, 3);
    fm_test_assert_close("clipped median", out, want, N, 1e-5, 1e-6);
    fm_strategy_destroy(st);
    free_updates(u, KC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_median_trimmed), cmocka_unit_test(test_krum),        cmocka_unit_test(test_attack),
        cmocka_unit_test(test_robust_masks),   cmocka_unit_test(test_robust_clip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
