/* The device side of the strategies as far as it shows without a GPU: fm_agg_weighted_sum (the CPU reference of the
 * GPU weighted sum) against a float64 sum, the config's device field (validation; the CPU default), a strategy
 * asked for cuda where none is usable (FM_ERR_DEVICE with the reason, or, on a machine with a GPU, a strategy that
 * works), and the site correction's device move and status. The GPU against the CPU is tests/gpu/
 * test_aggregate*.c. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fedmm/strategy.h"

static void test_weighted_sum(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 11);
    const size_t ks[] = {1, 2, 7, 33}, ns[] = {1, 37, 5003};
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++) {
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++) {
            const size_t k = ks[a], n = ns[b];
            float **u = fm_test_alloc(k * sizeof(float *));
            float *w = fm_test_alloc(k * sizeof(float));
            fm_test_fill(&rng, w, k, 0.1f, 3.0f);
            for (size_t q = 0; q < k; q++) {
                u[q] = fm_test_alloc(n * sizeof(float));
                fm_test_fill(&rng, u[q], n, -1.0f, 1.0f);
            }
            float *out = fm_test_alloc(n * sizeof(float));
            double *want = fm_test_alloc(n * sizeof(double));
            for (size_t j = 0; j < n; j++) {
                out[j] = NAN;
                double s = 0.0;
                for (size_t q = 0; q < k; q++)
                    s += (double)w[q] * u[q][j];
                want[j] = s;
            }
            assert_int_equal(fm_agg_weighted_sum(out, (const float *const *)u, w, k, n), FM_OK);
            /* k float roundings of terms up to 3 in size: 1e-6 absolute is a generous bound */
            char label[64];
            snprintf(label, sizeof label, "weighted sum k=%zu n=%zu", k, n);
            fm_test_assert_close(label, out, want, n, 1e-5, 1e-6 * (double)k);
            /* the documented order: a running float sum from 0, k = 0 … K−1 (the FedAvg family's) */
            for (size_t j = 0; j < n; j++) {
                float acc = 0.0f;
                for (size_t q = 0; q < k; q++)
                    acc += w[q] * u[q][j];
                if (!fm_test_same_bits(acc, out[j]))
                    fail_msg("%s: element %zu is %.9g, the running sum %.9g", label, j, (double)out[j], (double)acc);
            }
            for (size_t q = 0; q < k; q++)
                free(u[q]);
            free(u);
            free(w);
            free(out);
            free(want);
        }
    }
    float x = 1.0f, o = 0.0f, w1 = 1.0f;
    const float *one[1] = {&x}, *none[1] = {NULL};
    assert_int_equal(fm_agg_weighted_sum(&o, one, &w1, 0, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_agg_weighted_sum(&o, one, NULL, 1, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_agg_weighted_sum(&o, none, &w1, 1, 1), FM_ERR_INVALID_ARG);
}

static void test_config_device(void **state)
{
    (void)state;
    fm_strategy_config c = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    assert_int_equal(c.device, FM_DEVICE_CPU); /* the default */
    assert_int_equal(fm_strategy_config_validate(&c), FM_OK);
    c.device = (fm_device)7;
    assert_int_equal(fm_strategy_config_validate(&c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "device 7"));
    c.device = FM_DEVICE_CUDA;
    fm_status st = fm_strategy_config_validate(&c);
    if (fm_build_has_cuda()) {
        assert_int_equal(st, FM_OK);
    } else {
        assert_int_equal(st, FM_ERR_CONFIG);
        assert_non_null(strstr(fm_last_error(), "built without the CUDA backend"));
    }
}

static void test_create_on_cuda(void **state)
{
    (void)state;
    const size_t n = 9;
    float w0[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, d[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, out[9];
    for (int kind = 0; kind < FM_STRATEGY_KIND_COUNT; kind++) {
        fm_strategy_config c = fm_strategy_default_config((fm_strategy_kind)kind);
        c.device = FM_DEVICE_CUDA;
        fm_strategy *st = (fm_strategy *)&c; /* must be reset */
        fm_status s = fm_strategy_create(&st, &c, n, NULL, 0, w0);
        char why[256];
        if (fm_cuda_device_count(why, sizeof why) == 0) {
            /* no usable GPU: refused, saying why; nothing allocated */
            assert_null(st);
            if (fm_build_has_cuda()) {
                assert_int_equal(s, FM_ERR_DEVICE);
                assert_non_null(strstr(fm_last_error(), "no usable GPU"));
            } else {
                assert_int_equal(s, FM_ERR_CONFIG);
            }
            continue;
        }
        /* a GPU: the strategy works through the same API (the numbers are tests/gpu/test_aggregate_strategy.c's) */
        assert_int_equal(s, FM_OK);
        assert_memory_equal(fm_strategy_global(st), w0, sizeof w0);
        assert_int_equal(fm_strategy_begin_round(st, 1), FM_OK);
        float dc[9] = {0};
        for (int site = 0; site < 5; site++) {
            fm_site_update u = {.n_params = n, .delta = d, .weight = 1.0, .control_delta = dc};
            assert_int_equal(fm_strategy_add_update(st, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
        assert_memory_equal(out, fm_strategy_global(st), sizeof out);
        fm_strategy_destroy(st);
    }
}

static void test_site_correction_device(void **state)
{
    (void)state;
    const size_t n = 4;
    float anchor[4] = {1, 2, 3, 4}, theta[4] = {2, 2, 2, 2}, g[4] = {0, 0, 0, 0};
    fm_strategy_config c = fm_strategy_default_config(FM_STRATEGY_FEDPROX);
    c.prox_mu = 0.5;
    fm_site_correction corr;
    assert_int_equal(fm_site_correction_prepare(&corr, &c, n, NULL, 0, anchor, NULL, NULL), FM_OK);
    assert_int_equal(corr.device, FM_DEVICE_CPU);
    /* to the CPU: nothing to do */
    assert_int_equal(fm_site_correction_to_device(&corr, FM_DEVICE_CPU, n), FM_OK);
    assert_ptr_equal(corr.anchor, anchor);
    assert_int_equal(fm_site_correct_grad(g, theta, &corr, n), FM_OK);
    const float want[4] = {0.5f, 0.0f, -0.5f, -1.0f};
    assert_memory_equal(g, want, sizeof want);
    assert_int_equal(fm_site_correct_grad(NULL, theta, &corr, n), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_site_correct_grad(g, theta, NULL, n), FM_ERR_INVALID_ARG);
    char why[256];
    if (fm_cuda_device_count(why, sizeof why) == 0) {
        /* to cuda without a GPU: an error, and corr still the host one */
        assert_int_not_equal(fm_site_correction_to_device(&corr, FM_DEVICE_CUDA, n), FM_OK);
        assert_ptr_equal(corr.anchor, anchor);
        assert_int_equal(corr.device, FM_DEVICE_CPU);
    }
    fm_site_correction_free(&corr);
    assert_null(corr.anchor);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weighted_sum),
        cmocka_unit_test(test_config_device),
        cmocka_unit_test(test_create_on_cuda),
        cmocka_unit_test(test_site_correction_device),
    };
    return cmocka_run_group_tests_name("strategies: device field, weighted sum reference", tests, NULL, NULL);
}
