/* Tests of the federated partitioners and the gamma / Dirichlet samplers: every index used once, sizes,
 * determinism, min_size, skew that grows as alpha shrinks, and moments of the gamma sampler. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/partition.h"

/* Every index 0..n-1 appears exactly once, offsets are consistent, indices ascend within each site. */
static void assert_valid_partition(const fm_partition *p, int64_t n, int sites)
{
    assert_int_equal(p->num_sites, sites);
    assert_int_equal(p->n, n);
    assert_int_equal(p->offsets[0], 0);
    assert_int_equal(p->offsets[sites], n);
    unsigned char *seen = fm_test_alloc((size_t)(n > 0 ? n : 1));
    int64_t total = 0;
    for (int k = 0; k < sites; k++) {
        const int64_t size = fm_partition_site_size(p, k);
        const int64_t *idx = fm_partition_site_indices(p, k);
        assert_true(size >= 0);
        total += size;
        for (int64_t j = 0; j < size; j++) {
            assert_true(idx[j] >= 0 && idx[j] < n);
            if (seen[idx[j]])
                fail_msg("index %lld appears twice", (long long)idx[j]);
            seen[idx[j]] = 1;
            if (j > 0)
                assert_true(idx[j - 1] < idx[j]);
        }
    }
    assert_int_equal(total, n);
    free(seen);
}

static int same_partition(const fm_partition *a, const fm_partition *b)
{
    return a->n == b->n && a->num_sites == b->num_sites &&
           memcmp(a->offsets, b->offsets, (size_t)(a->num_sites + 1) * sizeof(int64_t)) == 0 &&
           memcmp(a->indices, b->indices, (size_t)a->n * sizeof(int64_t)) == 0;
}

static void test_iid(void **state)
{
    (void)state;
    const uint64_t seed = fm_test_seed();
    fm_partition p, q;
    assert_int_equal(fm_partition_iid(1003, 7, seed, &p), FM_OK);
    assert_valid_partition(&p, 1003, 7);
    for (int k = 0; k < 7; k++) {
        int64_t s = fm_partition_site_size(&p, k);
        assert_true(s == 143 || s == 144);
    }
    assert_int_equal(fm_partition_iid(1003, 7, seed, &q), FM_OK);
    assert_true(same_partition(&p, &q));
    fm_partition_free(&q);
    assert_int_equal(fm_partition_iid(1003, 7, seed + 1, &q), FM_OK);
    assert_false(same_partition(&p, &q));
    fm_partition_free(&q);
    fm_partition_free(&p);
    assert_null(p.indices);
    /* More sites than samples: some sites are empty, still valid. */
    assert_int_equal(fm_partition_iid(3, 5, seed, &p), FM_OK);
    assert_valid_partition(&p, 3, 5);
    fm_partition_free(&p);
    assert_int_equal(fm_partition_iid(10, 0, seed, &p), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_partition_iid(-1, 2, seed, &p), FM_ERR_INVALID_ARG);
}

static int32_t *random_labels(fm_rng *rng, int64_t n, int classes)
{
    int32_t *l = fm_test_alloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++)
        l[i] = (int32_t)fm_rng_below(rng, (uint64_t)classes);
    return l;
}

static void test_dirichlet_valid_and_deterministic(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 31);
    const int64_t n = 5003;
    int32_t *labels = random_labels(&rng, n, 10);
    const double alphas[] = {0.05, 0.5, 1.0, 5.0};
    for (size_t a = 0; a < sizeof alphas / sizeof alphas[0]; a++) {
        fm_partition p, q;
        assert_int_equal(fm_partition_dirichlet(labels, n, 10, 7, alphas[a], 0, fm_test_seed(), &p), FM_OK);
        assert_valid_partition(&p, n, 7);
        assert_int_equal(fm_partition_dirichlet(labels, n, 10, 7, alphas[a], 0, fm_test_seed(), &q), FM_OK);
        assert_true(same_partition(&p, &q));
        fm_partition_free(&q);
        assert_int_equal(fm_partition_dirichlet(labels, n, 10, 7, alphas[a], 0, fm_test_seed() + 9, &q), FM_OK);
        assert_false(same_partition(&p, &q));
        fm_partition_free(&q);
        fm_partition_free(&p);
    }
    free(labels);
}

static void test_dirichlet_skew_grows_as_alpha_shrinks(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 32);
    const int64_t n = 6000;
    const int classes = 10, sites = 10;
    int32_t *labels = random_labels(&rng, n, classes);
    const double alphas[] = {0.05, 0.5, 5.0, 500.0};
    double skew[4];
    for (int a = 0; a < 4; a++) {
        /* Average over a few seeds so the statistic is stable. */
        skew[a] = 0;
        for (int s = 0; s < 4; s++) {
            fm_partition p;
            assert_int_equal(
                fm_partition_dirichlet(labels, n, classes, sites, alphas[a], 0, fm_test_seed() + (uint64_t)s, &p),
                FM_OK);
            double v;
            assert_int_equal(fm_partition_label_skew(&p, labels, classes, &v), FM_OK);
            skew[a] += v / 4;
            fm_partition_free(&p);
        }
    }
    fm_partition iid;
    double iid_skew;
    assert_int_equal(fm_partition_iid(n, sites, fm_test_seed(), &iid), FM_OK);
    assert_int_equal(fm_partition_label_skew(&iid, labels, classes, &iid_skew), FM_OK);
    fm_partition_free(&iid);
    print_message("label skew: alpha 0.05 %.3f, 0.5 %.3f, 5 %.3f, 500 %.3f, iid %.3f\n", skew[0], skew[1], skew[2],
                  skew[3], iid_skew);
    for (int a = 0; a < 3; a++)
        if (!(skew[a] > skew[a + 1] + 0.03))
            fail_msg("skew does not fall with alpha: %g (alpha %g) vs %g (alpha %g)", skew[a], alphas[a], skew[a + 1],
                     alphas[a + 1]);
    assert_true(skew[0] > 0.55); /* few classes per site */
    assert_true(skew[3] < 0.1);  /* near IID */
    assert_true(iid_skew < 0.1);
    free(labels);
}

static void test_dirichlet_min_size_and_errors(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 33);
    const int64_t n = 2001;
    int32_t *labels = random_labels(&rng, n, 5);
    fm_partition p;
    assert_int_equal(fm_partition_dirichlet(labels, n, 5, 8, 0.3, 40, fm_test_seed(), &p), FM_OK);
    assert_valid_partition(&p, n, 8);
    for (int k = 0; k < 8; k++)
        assert_true(fm_partition_site_size(&p, k) >= 40);
    fm_partition_free(&p);
    /* Impossible: 8 sites of 300 from 2001 samples. */
    assert_int_equal(fm_partition_dirichlet(labels, n, 5, 8, 0.3, 300, fm_test_seed(), &p), FM_ERR_RANGE);
    assert_int_equal(fm_partition_dirichlet(labels, n, 5, 8, 0.0, 0, fm_test_seed(), &p), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_partition_dirichlet(labels, n, 5, 8, INFINITY, 0, fm_test_seed(), &p), FM_ERR_INVALID_ARG);
    labels[1234] = 5;
    assert_int_equal(fm_partition_dirichlet(labels, n, 5, 8, 1.0, 0, fm_test_seed(), &p), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "sample 1234"));
    free(labels);
}

static void test_gamma_moments(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 34);
    const double shapes[] = {0.2, 0.7, 1.0, 2.5, 9.0};
    const int draws = 40000;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const double a = shapes[s];
        double sum = 0, sum2 = 0;
        for (int i = 0; i < draws; i++) {
            double x = exp(fm_gamma_log_sample(&rng, a));
            assert_true(x >= 0 && isfinite(x));
            sum += x;
            sum2 += x * x;
        }
        const double mean = sum / draws, var = sum2 / draws - mean * mean;
        /* Gamma(a, 1): mean a, variance a; standard error of the mean sqrt(a / draws). */
        if (fabs(mean - a) > 5 * sqrt(a / draws))
            fail_msg("Gamma(%g) mean %g", a, mean);
        if (fabs(var - a) > 0.1 * a)
            fail_msg("Gamma(%g) variance %g", a, var);
    }
    /* Dirichlet: sums to one, finite even for tiny alpha, symmetric means. */
    double out[6], mean[6] = {0};
    for (int i = 0; i < 2000; i++) {
        fm_dirichlet_sample(&rng, i % 2 ? 1e-3 : 2.0, 6, out);
        double total = 0;
        for (int k = 0; k < 6; k++) {
            assert_true(out[k] >= 0 && isfinite(out[k]));
            total += out[k];
            mean[k] += out[k] / 2000;
        }
        assert_true(fabs(total - 1.0) < 1e-9);
    }
    for (int k = 0; k < 6; k++)
        assert_true(fabs(mean[k] - 1.0 / 6) < 0.04);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iid),
        cmocka_unit_test(test_dirichlet_valid_and_deterministic),
        cmocka_unit_test(test_dirichlet_skew_grows_as_alpha_shrinks),
        cmocka_unit_test(test_dirichlet_min_size_and_errors),
        cmocka_unit_test(test_gamma_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
