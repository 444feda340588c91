/* The aggregation kernels (kernels/aggregate.cu) against their CPU twins (src/fl/strategy_robust.c,
 * strategy_site.c) on fresh random inputs: K = 1, 2, 7, 33, 64, 65, 100 updates of odd lengths, each update at an
 * unaligned offset of one buffer, with repeated values (ties) in the columns. Outputs start as NaN (every element
 * must be written) and every element is compared. Both sorting paths of the median / trimmed mean run on the same
 * inputs where both apply. Argument checks run without a device; the rest needs a GPU, and without one the test
 * reports itself skipped (exit 77).
 *
 * Tolerances: the kernels repeat the CPU's arithmetic (kernels/aggregate.h), so the weighted sum, the median, the
 * trimmed mean, the mean, the scalings and the site correction are expected to agree to the bit; the check is the
 * project's fp32 bound, relative 1e-5 (absolute 1e-7 for sums that cancel), and the number of elements that are
 * not bit-identical is printed. Distances and norms are double sums in another order: relative 1e-12. */
#include "gpu_test.h"

#include <math.h>
#include <stdint.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.aggregate", "this fedmm was built without the CUDA backend"); }

#else

#include "fedmm/strategy.h"
#include "fl/strategy_internal.h"

#include "../../cuda/runtime.h"
#include "../../kernels/aggregate.h"

#define RTOL 1e-5
#define ATOL 1e-7
#define DIST_RTOL 1e-12

/* ---- helpers ---------------------------------------------------------------------------------------------- */

/* Every element within the fp32 bound; prints how many differ in any bit. */
static void expect_match(const char *what, const float *dev, const float *cpu, size_t n)
{
    float *got = fm_test_dev_download(dev, n);
    double *want = fm_test_alloc(n * sizeof(double));
    fm_test_to_double(want, cpu, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += !fm_test_same_bits(got[i], cpu[i]);
    printf("  %-52s n = %-7zu %zu of %zu elements not bit-identical\n", what, n, differ, n);
    fm_test_assert_close(what, got, want, n, RTOL, ATOL);
    free(want);
    free(got);
}

/* K updates of n floats: on the host (u[k]) and at unaligned offsets k·(n + 1) + 1 of one device buffer (d[k]).
 * Column j repeats update 0's value in update K−1 (a tie) and, every 7th coordinate, holds one value in all K. */
typedef struct updates {
    size_t k, n;
    float **u;
    float *dbase;
    const float **d;
} updates;

static void updates_make(updates *x, fm_rng *rng, size_t k, size_t n)
{
    x->k = k;
    x->n = n;
    x->u = fm_test_alloc(k * sizeof(float *));
    x->d = fm_test_alloc(k * sizeof(float *));
    x->dbase = fm_test_dev_alloc(k * (n + 1) + 1);
    for (size_t q = 0; q < k; q++) {
        x->u[q] = fm_test_alloc(n * sizeof(float));
        fm_test_fill(rng, x->u[q], n, -1.0f, 1.0f);
    }
    for (size_t j = 0; j < n; j++) {
        if (k >= 3)
            x->u[k - 1][j] = x->u[0][j];
        if (j % 7 == 3)
            for (size_t q = 1; q < k; q++)
                x->u[q][j] = x->u[0][j];
    }
    for (size_t q = 0; q < k; q++) {
        x->d[q] = x->dbase + q * (n + 1) + 1;
        FM_CHECK_OK(fm_cuda_memcpy((float *)x->d[q], x->u[q], n * sizeof(float), 0));
    }
}

static void updates_free(updates *x)
{
    for (size_t q = 0; q < x->k; q++)
        free(x->u[q]);
    free(x->u);
    free(x->d);
    fm_cuda_free(x->dbase);
}

static const size_t KS[] = {1, 2, 7, 33, 64, 65, 100};
static const size_t NS[] = {1, 37, 4099, 100003};

/* ---- argument checks: no device needed ------------------------------------------------------------------ */

static void test_argument_checks(void **state)
{
    (void)state;
    float fake = 0.0f, w = 1.0f, out = 0.0f;
    const float *one[1] = {&fake};
    double dist[4];
    size_t off = 0, len = 1, bad = 0;
    double ss = 0.0;
    assert_int_equal(fm_cuda_agg_weighted_sum(&out, one, &w, 0, 5, 0), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_weighted_sum(&out, one, NULL, 1, 5, 0), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_weighted_sum(NULL, one, &w, 1, 5, 0), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_weighted_sum(NULL, one, &w, 1, 0, 0), FM_OK); /* nothing to do */
    assert_int_equal(fm_cuda_agg_mean(&out, one, 0, 5), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_median(&out, one, 0, 5), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_trimmed_mean(&out, one, 1, 5, 0.5), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_trimmed_mean(&out, one, 1, 5, -0.1), FM_ERR_INVALID_ARG);
    /* ranks, paths and the documented limits */
    assert_int_equal(fm_cuda_agg_sorted_mean(&out, one, 1, 5, 1, 1, FM_CUDA_AGG_SORT_AUTO), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_sorted_mean(&out, one, 1, 5, 0, 2, FM_CUDA_AGG_SORT_AUTO), FM_ERR_INVALID_ARG);
    const float **many = fm_test_alloc((FM_CUDA_AGG_SORT_MAX_K + 1) * sizeof(float *));
    for (size_t i = 0; i <= FM_CUDA_AGG_SORT_MAX_K; i++)
        many[i] = &fake;
    assert_int_equal(fm_cuda_agg_median(&out, many, FM_CUDA_AGG_SORT_MAX_K + 1, 5), FM_ERR_UNSUPPORTED);
    assert_non_null(strstr(fm_last_error(), "1024"));
    assert_int_equal(fm_cuda_agg_sorted_mean(&out, many, 65, 5, 0, 65, FM_CUDA_AGG_SORT_REGISTERS), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_sorted_mean(&out, many, 3, 5, 0, 3, (fm_cuda_agg_sort_path)9), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_pairwise_sqdist(dist, many, 1, &off, &len, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_pairwise_sqdist(dist, many, FM_CUDA_AGG_DIST_MAX_K + 1, &off, &len, 1),
                     FM_ERR_UNSUPPORTED);
    assert_int_equal(fm_cuda_agg_pairwise_sqdist(NULL, many, 2, &off, &len, 1), FM_ERR_INVALID_ARG);
    free(many);
    assert_int_equal(fm_cuda_agg_check_norm(&fake, 1, NULL, &ss), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_agg_check_norm(NULL, 0, &bad, &ss), FM_OK);
    assert_true(bad == SIZE_MAX && ss == 0.0);
    assert_int_equal(fm_cuda_agg_server_rule((fm_cuda_server_rule)17, &out, NULL, NULL, NULL, NULL, &out, 1,
                                             (fm_cuda_rule_params){0}),
                     FM_ERR_INVALID_ARG);
    assert_int_equal(
        fm_cuda_agg_server_rule(FM_CUDA_RULE_ADAM, &out, &out, NULL, NULL, NULL, &out, 1, (fm_cuda_rule_params){0}),
        FM_ERR_INVALID_ARG);
    fm_cuda_agg_list *list = (fm_cuda_agg_list *)&out;
    assert_int_equal(fm_cuda_agg_list_create(&list, one, &w, 0), FM_ERR_INVALID_ARG);
    assert_null(list);
    assert_int_equal(fm_cuda_agg_weighted_sum_list(&out, NULL, 5, 0), FM_ERR_INVALID_ARG);
    fm_cuda_agg_list_destroy(NULL);
}

/* ---- device: against the CPU ----------------------------------------------------------------------------- */

static void test_weighted_sum_and_mean(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 101);
    for (size_t a = 0; a < sizeof KS / sizeof KS[0]; a++) {
        for (size_t b = 0; b < sizeof NS / sizeof NS[0]; b++) {
            const size_t k = KS[a], n = NS[b];
            updates x;
            updates_make(&x, &rng, k, n);
            float *w = fm_test_alloc(k * sizeof(float));
            fm_test_fill(&rng, w, k, 0.05f, 2.0f);
            float *ref = fm_test_alloc(n * sizeof(float));
            char what[96];
            /* out = Σ w x */
            float *d_out = fm_test_dev_poisoned(n);
            FM_CHECK_OK(fm_agg_weighted_sum(ref, (const float *const *)x.u, w, k, n));
            FM_CHECK_OK(fm_cuda_agg_weighted_sum(d_out, x.d, w, k, n, 0));
            snprintf(what, sizeof what, "weighted sum, K = %zu", k);
            expect_match(what, d_out, ref, n);
            /* the same through a list kept on the device */
            fm_cuda_agg_list *list = NULL;
            FM_CHECK_OK(fm_cuda_agg_list_create(&list, x.d, w, k));
            FM_CHECK_OK(fm_cuda_memset(d_out, 0xff, n * sizeof(float)));
            FM_CHECK_OK(fm_cuda_agg_weighted_sum_list(d_out, list, n, 0));
            snprintf(what, sizeof what, "weighted sum (device list), K = %zu", k);
            expect_match(what, d_out, ref, n);
            fm_cuda_agg_list_destroy(list);
            /* accumulate: a running sum continued from a random start, as the FedAvg family's add_update */
            float *start = fm_test_alloc(n * sizeof(float));
            fm_test_fill(&rng, start, n, -3.0f, 3.0f);
            for (size_t j = 0; j < n; j++) {
                float acc = start[j];
                for (size_t q = 0; q < k; q++)
                    acc += w[q] * x.u[q][j];
                ref[j] = acc;
            }
            FM_CHECK_OK(fm_cuda_memcpy(d_out, start, n * sizeof(float), 0));
            FM_CHECK_OK(fm_cuda_agg_weighted_sum(d_out, x.d, w, k, n, 1));
            snprintf(what, sizeof what, "weighted sum accumulated, K = %zu", k);
            expect_match(what, d_out, ref, n);
            /* the mean in double (Krum's mean of the selected updates) */
            for (size_t j = 0; j < n; j++) {
                double s = 0.0;
                for (size_t q = 0; q < k; q++)
                    s += x.u[q][j];
                ref[j] = (float)(s / (double)k);
            }
            FM_CHECK_OK(fm_cuda_memset(d_out, 0xff, n * sizeof(float)));
            FM_CHECK_OK(fm_cuda_agg_mean(d_out, x.d, k, n));
            snprintf(what, sizeof what, "mean, K = %zu", k);
            expect_match(what, d_out, ref, n);
            free(start);
            free(ref);
            free(w);
            fm_cuda_free(d_out);
            updates_free(&x);
        }
    }
}

static void test_median_trimmed_mean(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 202);
    const double ratios[] = {0.0, 0.1, 0.2, 0.45};
    for (size_t a = 0; a < sizeof KS / sizeof KS[0]; a++) {
        for (size_t b = 0; b < sizeof NS / sizeof NS[0]; b++) {
            const size_t k = KS[a], n = NS[b];
            updates x;
            updates_make(&x, &rng, k, n);
            float *ref = fm_test_alloc(n * sizeof(float));
            float *d_out = fm_test_dev_poisoned(n);
            char what[96];
            FM_CHECK_OK(fm_agg_median(ref, (const float *const *)x.u, k, n));
            FM_CHECK_OK(fm_cuda_agg_median(d_out, x.d, k, n));
            snprintf(what, sizeof what, "median, K = %zu (auto)", k);
            expect_match(what, d_out, ref, n);
            /* both sorting paths on the same columns */
            const size_t lo = (k - 1) / 2, hi = k / 2 + 1;
            for (int path = FM_CUDA_AGG_SORT_REGISTERS; path <= FM_CUDA_AGG_SORT_SHARED; path++) {
                if (path == FM_CUDA_AGG_SORT_REGISTERS && k > FM_CUDA_AGG_SORT_REG_MAX_K)
                    continue;
                FM_CHECK_OK(fm_cuda_memset(d_out, 0xff, n * sizeof(float)));
                FM_CHECK_OK(fm_cuda_agg_sorted_mean(d_out, x.d, k, n, lo, hi, (fm_cuda_agg_sort_path)path));
                snprintf(what, sizeof what, "median, K = %zu (%s)", k,
                         path == FM_CUDA_AGG_SORT_REGISTERS ? "registers" : "shared memory");
                expect_match(what, d_out, ref, n);
            }
            for (size_t r = 0; r < sizeof ratios / sizeof ratios[0]; r++) {
                FM_CHECK_OK(fm_agg_trimmed_mean(ref, (const float *const *)x.u, k, n, ratios[r]));
                FM_CHECK_OK(fm_cuda_memset(d_out, 0xff, n * sizeof(float)));
                FM_CHECK_OK(fm_cuda_agg_trimmed_mean(d_out, x.d, k, n, ratios[r]));
                snprintf(what, sizeof what, "trimmed mean %.2f, K = %zu (auto)", ratios[r], k);
                expect_match(what, d_out, ref, n);
                /* the other path where it applies */
                size_t t = (size_t)floor(ratios[r] * (double)k);
                if (2 * t >= k)
                    t = (k - 1) / 2;
                const fm_cuda_agg_sort_path other =
                    k <= FM_CUDA_AGG_SORT_REG_MAX_K ? FM_CUDA_AGG_SORT_SHARED : FM_CUDA_AGG_SORT_AUTO;
                if (other == FM_CUDA_AGG_SORT_AUTO)
                    continue;
                fm_cuda_agg_list *list = NULL;
                FM_CHECK_OK(fm_cuda_agg_list_create(&list, x.d, NULL, k));
                FM_CHECK_OK(fm_cuda_memset(d_out, 0xff, n * sizeof(float)));
                FM_CHECK_OK(fm_cuda_agg_sorted_mean_list(d_out, list, n, t, k - t, other));
                fm_cuda_agg_list_destroy(list);
                snprintf(what, sizeof what, "trimmed mean %.2f, K = %zu (shared, device list)", ratios[r], k);
                expect_match(what, d_out, ref, n);
            }
            free(ref);
            fm_cuda_free(d_out);
            updates_free(&x);
        }
    }
    /* K at the largest the kernels take, on a short vector */
    updates x;
    updates_make(&x, &rng, FM_CUDA_AGG_SORT_MAX_K, 333);
    float *ref = fm_test_alloc(333 * sizeof(float));
    float *d_out = fm_test_dev_poisoned(333);
    FM_CHECK_OK(fm_agg_trimmed_mean(ref, (const float *const *)x.u, x.k, 333, 0.1));
    FM_CHECK_OK(fm_cuda_agg_trimmed_mean(d_out, x.d, x.k, 333, 0.1));
    expect_match("trimmed mean 0.10, K = 1024", d_out, ref, 333);
    free(ref);
    fm_cuda_free(d_out);
    updates_free(&x);
}

static void test_pairwise_distances(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 303);
    const size_t ks[] = {2, 7, 33, 100, FM_CUDA_AGG_DIST_MAX_K};
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++) {
        const size_t k = ks[a], n = a == 4 ? 777 : 20011;
        updates x;
        updates_make(&x, &rng, k, n);
        /* two ranges with a gap, one of odd length, one empty */
        const size_t offs[3] = {0, n / 2, n}, lens[3] = {n / 3, n - n / 2, 0};
        double *got = fm_test_alloc(k * k * sizeof(double)), *want = fm_test_alloc(k * k * sizeof(double));
        for (size_t i = 0; i < k * k; i++)
            got[i] = NAN;
        for (size_t i = 0; i < k; i++) {
            for (size_t j = 0; j < k; j++) {
                double s = 0.0;
                for (size_t r = 0; r < 3; r++)
                    for (size_t e = offs[r]; e < offs[r] + lens[r]; e++) {
                        const double d = (double)x.u[i][e] - (double)x.u[j][e];
                        s += d * d;
                    }
                want[i * k + j] = s;
            }
        }
        FM_CHECK_OK(fm_cuda_agg_pairwise_sqdist(got, x.d, k, offs, lens, 3));
        char what[64];
        snprintf(what, sizeof what, "pairwise squared distances, K = %zu", k);
        fm_test_assert_close_d(what, got, want, k * k, DIST_RTOL, 0.0);
        printf("  %s: %zu distances within %.0e\n", what, k * k, DIST_RTOL);
        /* Krum's ranking from these distances is the CPU's */
        if (k >= 5) {
            size_t *og = fm_test_alloc(k * sizeof(size_t)), *ow = fm_test_alloc(k * sizeof(size_t));
            FM_CHECK_OK(fm_krum_order(got, k, 1, og));
            FM_CHECK_OK(fm_krum_order(want, k, 1, ow));
            assert_memory_equal(og, ow, k * sizeof(size_t));
            free(og);
            free(ow);
        }
        free(got);
        free(want);
        updates_free(&x);
    }
    /* no coordinates at all: every distance is 0 */
    updates x;
    updates_make(&x, &rng, 3, 5);
    double got[9];
    size_t off = 0, len = 0;
    FM_CHECK_OK(fm_cuda_agg_pairwise_sqdist(got, x.d, 3, &off, &len, 1));
    for (int i = 0; i < 9; i++)
        assert_true(got[i] == 0.0);
    updates_free(&x);
}

static void test_check_norm_and_scaling(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 404);
    for (size_t b = 0; b < sizeof NS / sizeof NS[0]; b++) {
        const size_t n = NS[b];
        float *x = fm_test_alloc(n * sizeof(float));
        fm_test_fill(&rng, x, n, -2.0f, 2.0f);
        float *d = fm_test_dev_alloc(n);
        FM_CHECK_OK(fm_cuda_memcpy(d, x, n * sizeof(float), 0));
        double want = 0.0, ss = -1.0;
        for (size_t i = 0; i < n; i++)
            want += (double)x[i] * x[i];
        size_t bad = 0;
        FM_CHECK_OK(fm_cuda_agg_check_norm(d, n, &bad, &ss));
        assert_true(bad == SIZE_MAX);
        if (!(fabs(ss - want) <= DIST_RTOL * want))
            fail_msg("check_norm n = %zu: sum of squares %.17g, want %.17g", n, ss, want);
        /* the first non-finite element, wherever the others are */
        if (n > 10) {
            const float inf = INFINITY, nan = NAN;
            FM_CHECK_OK(fm_cuda_memcpy(d + n - 1, &nan, sizeof nan, 0));
            FM_CHECK_OK(fm_cuda_memcpy(d + n / 3, &inf, sizeof inf, 0));
            FM_CHECK_OK(fm_cuda_memcpy(d + 5, &nan, sizeof nan, 0));
            FM_CHECK_OK(fm_cuda_agg_check_norm(d, n, &bad, &ss));
            assert_int_equal(bad, 5);
            FM_CHECK_OK(fm_cuda_agg_check_norm(d + 6, n - 6, &bad, &ss));
            assert_int_equal(bad, n / 3 - 6);
            FM_CHECK_OK(fm_cuda_memcpy(d, x, n * sizeof(float), 0));
        }
        /* scalings: the robust rules' clipped copy (in double) and the FedAvg family's step (in float) */
        float *ref = fm_test_alloc(n * sizeof(float)), *d_out = fm_test_dev_poisoned(n);
        const double scale = 0.3711;
        for (size_t i = 0; i < n; i++)
            ref[i] = (float)(scale * x[i]);
        FM_CHECK_OK(fm_cuda_agg_scale_copy(d_out, d, scale, n));
        expect_match("scale_copy (double scale)", d_out, ref, n);
        const float s = (float)(1.0 / 7.3);
        for (size_t i = 0; i < n; i++)
            ref[i] = x[i] * s;
        FM_CHECK_OK(fm_cuda_agg_scale_f32(d_out, d, s, n));
        expect_match("scale_f32", d_out, ref, n);
        FM_CHECK_OK(fm_cuda_agg_scale_f32(d, d, s, n)); /* in place */
        expect_match("scale_f32 in place", d, ref, n);
        free(ref);
        fm_cuda_free(d_out);
        free(x);
        fm_cuda_free(d);
    }
    /* the benchmark's inputs: inside [lo, hi), not all the same */
    const size_t n = 10007;
    float *d = fm_test_dev_poisoned(n);
    FM_CHECK_OK(fm_cuda_agg_fill_uniform(d, n, 42, -1.0f, 1.0f));
    float *h = fm_test_dev_download(d, n);
    float lo = h[0], hi = h[0];
    for (size_t i = 0; i < n; i++) {
        if (!(h[i] >= -1.0f && h[i] < 1.0f))
            fail_msg("fill_uniform: element %zu is %g", i, (double)h[i]);
        lo = fminf(lo, h[i]);
        hi = fmaxf(hi, h[i]);
    }
    assert_true(hi - lo > 1.5f);
    free(h);
    fm_cuda_free(d);
}

static void test_site_correction(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 505);
    const size_t n = 100003;
    float *grad = fm_test_alloc(n * sizeof(float)), *theta = fm_test_alloc(n * sizeof(float));
    float *anchor = fm_test_alloc(n * sizeof(float)), *c = fm_test_alloc(n * sizeof(float));
    float *ck = fm_test_alloc(n * sizeof(float));
    fm_test_fill(&rng, grad, n, -1.0f, 1.0f);
    fm_test_fill(&rng, theta, n, -1.0f, 1.0f);
    fm_test_fill(&rng, anchor, n, -1.0f, 1.0f);
    fm_test_fill(&rng, c, n, -0.1f, 0.1f);
    fm_test_fill(&rng, ck, n, -0.1f, 0.1f);
    /* adaptive regularization needs blocks with layers: layers −1 (outside), 0, 1, 2 of 3 with s = 1: only the
     * block of layer 1 is regularized */
    fm_strategy_block blocks[4];
    const size_t sizes[4] = {n / 100, 3 * n / 10, 2 * n / 5, n - n / 100 - 3 * n / 10 - 2 * n / 5};
    size_t at = 0;
    for (int b = 0; b < 4; b++) {
        blocks[b].name = "b";
        blocks[b].offset = at;
        blocks[b].numel = sizes[b];
        blocks[b].layer = b - 1;
        blocks[b].n_layers = 3;
        at += blocks[b].numel;
    }
    const fm_strategy_kind kinds[3] = {FM_STRATEGY_FEDPROX, FM_STRATEGY_ADAPTIVE_REG, FM_STRATEGY_SCAFFOLD};
    float *d_grad = fm_test_dev_alloc(n), *d_theta = fm_test_dev_alloc(n);
    FM_CHECK_OK(fm_cuda_memcpy(d_theta, theta, n * sizeof(float), 0));
    for (int i = 0; i < 3; i++) {
        fm_strategy_config cfg = fm_strategy_default_config(kinds[i]);
        cfg.prox_mu = 0.37;
        cfg.adaptive_skip_layers = 1;
        fm_site_correction cc, cd;
        FM_CHECK_OK(fm_site_correction_prepare(&cc, &cfg, n, blocks, 4, anchor, c, ck));
        FM_CHECK_OK(fm_site_correction_prepare(&cd, &cfg, n, blocks, 4, anchor, c, ck));
        FM_CHECK_OK(fm_site_correction_to_device(&cd, FM_DEVICE_CUDA, n));
        assert_int_equal(cd.device, FM_DEVICE_CUDA);
        assert_true(cd.anchor != anchor || !cc.anchor);
        FM_CHECK_OK(fm_site_correction_to_device(&cd, FM_DEVICE_CUDA, n)); /* already there: nothing */
        assert_int_equal(fm_site_correction_to_device(&cd, FM_DEVICE_CPU, n), FM_ERR_STATE);
        float *ref = fm_test_alloc(n * sizeof(float));
        memcpy(ref, grad, n * sizeof(float));
        FM_CHECK_OK(fm_site_correct_grad(ref, theta, &cc, n));
        FM_CHECK_OK(fm_cuda_memcpy(d_grad, grad, n * sizeof(float), 0));
        FM_CHECK_OK(fm_site_correct_grad(d_grad, d_theta, &cd, n));
        char what[64];
        snprintf(what, sizeof what, "site correction %s", fm_strategy_name(kinds[i]));
        expect_match(what, d_grad, ref, n);
        /* the correction changed something: the comparison is not of two untouched copies */
        size_t changed = 0;
        for (size_t j = 0; j < n; j++)
            changed += ref[j] != grad[j];
        assert_true(changed > n / 4);
        fm_site_correction_free(&cc);
        fm_site_correction_free(&cd);
        free(ref);
    }
    fm_cuda_free(d_grad);
    fm_cuda_free(d_theta);
    free(grad);
    free(theta);
    free(anchor);
    free(c);
    free(ck);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_argument_checks),
    };
    int failed = cmocka_run_group_tests_name("aggregation kernels, argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.aggregate", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_weighted_sum_and_mean), cmocka_unit_test(test_median_trimmed_mean),
        cmocka_unit_test(test_pairwise_distances),    cmocka_unit_test(test_check_norm_and_scaling),
        cmocka_unit_test(test_site_correction),
    };
    failed +=
        cmocka_run_group_tests_name("aggregation kernels vs CPU reference", device_tests, NULL, fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
