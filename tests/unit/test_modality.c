/* FedMLLM's modality scenarios (fedmm/modality.h): every one of the twelve settings splits the train split
 * exactly (each index once), per-site counts agree with the per-sample flags, cross gives exactly k
 * image-only sites, the missing rate and the hybrid presence frequencies match their definitions within
 * binomial tolerance, the label skew follows alpha, the result is deterministic from the seed, and the
 * modality draws never move samples between sites. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/modality.h"
#include "fedmm/partition.h"
#include "testutil.h"

static fm_synth_config synth_with_train(int64_t n, uint64_t seed)
{
    fm_synth_config s = fm_synth_default_config();
    s.seed = seed;
    s.split_size[FM_SPLIT_TRAIN] = n;
    return s;
}

static fm_site_data *split_or_fail(const fm_scenario_config *cfg, const fm_synth_config *synth)
{
    fm_site_data *sites = NULL;
    fm_status st = fm_federation_split(cfg, synth, &sites);
    if (st != FM_OK)
        fail_msg("fm_federation_split: %s", fm_last_error());
    assert_non_null(sites);
    return sites;
}

/* Invariants every split must satisfy; returns per-modality sample totals in tot[4]. */
static void check_invariants(const fm_scenario_config *cfg, const fm_site_data *sites, int64_t n, int64_t tot[4])
{
    unsigned char *seen = fm_test_alloc((size_t)n);
    int64_t sum = 0;
    tot[0] = tot[1] = tot[2] = tot[3] = 0;
    for (int k = 0; k < cfg->num_sites; k++) {
        const fm_site_data *s = &sites[k];
        assert_int_equal(s->site, k);
        assert_true(s->n >= cfg->min_site_size);
        sum += s->n;
        int64_t cnt[4] = {0, 0, 0, 0};
        unsigned uni = 0;
        for (int64_t i = 0; i < s->n; i++) {
            int64_t idx = s->indices[i];
            assert_true(idx >= 0 && idx < n);
            assert_int_equal(seen[idx], 0);
            seen[idx] = 1;
            if (i > 0)
                assert_true(s->indices[i - 1] < idx);
            int m = s->sample_modality[i];
            assert_true(m >= FM_MODALITY_IMAGE && m <= FM_MODALITY_PAIRED);
            cnt[m]++;
            uni |= (unsigned)m;
        }
        assert_int_equal(cnt[FM_MODALITY_PAIRED], s->n_paired);
        assert_int_equal(cnt[FM_MODALITY_IMAGE], s->n_image);
        assert_int_equal(cnt[FM_MODALITY_TEXT], s->n_text);
        if (s->n > 0)
            assert_int_equal((unsigned)s->modality, uni);
        for (int m = 1; m < 4; m++)
            tot[m] += cnt[m];
    }
    assert_int_equal(sum, n);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(seen[i], 1);
    free(seen);
}

/* fm_partition_label_skew of the sites' indices (labels of the kind attribute, 7 classes). */
static double sites_skew(const fm_site_data *sites, int K, const int32_t *labels, int64_t n)
{
    fm_partition p = {K, n, NULL, NULL};
    p.indices = fm_test_alloc((size_t)n * sizeof *p.indices);
    p.offsets = fm_test_alloc((size_t)(K + 1) * sizeof *p.offsets);
    for (int k = 0; k < K; k++) {
        memcpy(p.indices + p.offsets[k], sites[k].indices, (size_t)sites[k].n * sizeof *p.indices);
        p.offsets[k + 1] = p.offsets[k] + sites[k].n;
    }
    double skew = -1.0;
    assert_int_equal(fm_partition_label_skew(&p, labels, 7, &skew), FM_OK);
    fm_partition_free(&p);
    return skew;
}

static void test_names_and_settings(void **state)
{
    (void)state;
    for (int s = 0; s < FM_SCENARIO_COUNT; s++) {
        fm_scenario back;
        assert_int_equal(fm_scenario_parse(fm_scenario_name((fm_scenario)s), &back), FM_OK);
        assert_int_equal(back, s);
    }
    fm_scenario sc;
    assert_int_equal(fm_scenario_parse("cross-modality", &sc), FM_OK);
    assert_int_equal(sc, FM_SCENARIO_CROSS);
    assert_int_equal(fm_scenario_parse("mixed", &sc), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "mixed"));
    for (int m = 0; m <= FM_MODALITY_PAIRED; m++) {
        fm_modality back;
        assert_int_equal(fm_modality_parse(fm_modality_name((fm_modality)m), &back), FM_OK);
        assert_int_equal(back, m);
    }
    assert_string_equal(fm_modality_name((fm_modality)7), "?");

    size_t count = 0;
    const char *const *names = fm_scenario_setting_names(&count);
    assert_int_equal(count, 12);
    static const struct {
        fm_scenario sc;
        double alpha, rate;
        int k;
        double q;
    } want[12] = {{FM_SCENARIO_ALIGNED, 5.0, -1, -1, -1},  {FM_SCENARIO_ALIGNED, 1.0, -1, -1, -1},
                  {FM_SCENARIO_ALIGNED, 0.5, -1, -1, -1},  {FM_SCENARIO_MISSING, 0.5, 0.3, -1, -1},
                  {FM_SCENARIO_MISSING, 0.5, 0.4, -1, -1}, {FM_SCENARIO_MISSING, 0.5, 0.5, -1, -1},
                  {FM_SCENARIO_CROSS, 0.5, -1, 3, -1},     {FM_SCENARIO_CROSS, 0.5, -1, 5, -1},
                  {FM_SCENARIO_CROSS, 0.5, -1, 7, -1},     {FM_SCENARIO_HYBRID, 0.5, -1, -1, 0.2},
                  {FM_SCENARIO_HYBRID, 0.5, -1, -1, 0.3},  {FM_SCENARIO_HYBRID, 0.5, -1, -1, 0.4}};
    for (size_t i = 0; i < count; i++) {
        fm_scenario_config c = fm_scenario_default_config();
        c.seed = 1234, c.num_sites = 12, c.label_attr = FM_ATTR_COLOR;
        assert_int_equal(fm_scenario_setting(names[i], &c), FM_OK);
        assert_int_equal(c.scenario, want[i].sc);
        assert_true(c.alpha == want[i].alpha);
        if (want[i].rate >= 0)
            assert_true(c.missing_rate == want[i].rate);
        if (want[i].k >= 0)
            assert_int_equal(c.cross_k, want[i].k);
        if (want[i].q >= 0)
            assert_true(c.hybrid_q == want[i].q);
        /* caller's seed, site count and label attribute survive */
        assert_int_equal(c.seed, 1234);
        assert_int_equal(c.num_sites, 12);
        assert_int_equal(c.label_attr, FM_ATTR_COLOR);
        assert_int_equal(fm_scenario_validate(&c), FM_OK);
    }
    fm_scenario_config c = fm_scenario_default_config();
    assert_int_equal(fm_scenario_setting("cross-4", &c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "cross-4"));
}

static void test_validate(void **state)
{
    (void)state;
    fm_scenario_config c = fm_scenario_default_config();
    assert_int_equal(fm_scenario_validate(&c), FM_OK);
    c.alpha = 0.0;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "alpha"));
    c = fm_scenario_default_config(), c.scenario = FM_SCENARIO_CROSS, c.cross_k = 11;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "cross_k"));
    c = fm_scenario_default_config(), c.cross_k = -1;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    /* cross_k is bounded by num_sites only under the cross scenario: 2 aligned sites keep the default 3 */
    c = fm_scenario_default_config(), c.num_sites = 2;
    assert_int_equal(c.cross_k, 3);
    assert_int_equal(fm_scenario_validate(&c), FM_OK);
    c = fm_scenario_default_config(), c.missing_rate = 1.5;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    c = fm_scenario_default_config(), c.hybrid_q = NAN;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    c = fm_scenario_default_config(), c.num_sites = 0;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    c = fm_scenario_default_config(), c.label_attr = FM_ATTR_COUNT;
    assert_int_equal(fm_scenario_validate(&c), FM_ERR_CONFIG);
    /* too few samples for min_site_size on every site */
    c = fm_scenario_default_config();
    c.min_site_size = 50;
    fm_synth_config s = synth_with_train(400, 1);
    fm_site_data dummy;
    fm_site_data *sites = &dummy; /* must be reset to NULL on failure */
    assert_int_equal(fm_federation_split(&c, &s, &sites), FM_ERR_CONFIG);
    assert_null(sites);
    assert_int_equal(fm_federation_split(NULL, &s, &sites), FM_ERR_INVALID_ARG);
    fm_site_data_free(NULL, 3);
}

/* Each of the twelve settings on an odd-sized train split. */
static void test_twelve_settings(void **state)
{
    (void)state;
    const int64_t n = 3001;
    const uint64_t seed = fm_test_seed();
    fm_synth_config synth = synth_with_train(n, seed + 7);
    size_t count = 0;
    const char *const *names = fm_scenario_setting_names(&count);
    int32_t *labels = fm_test_alloc((size_t)n * sizeof *labels);
    assert_int_equal(fm_synth_label_array(&synth, FM_SPLIT_TRAIN, 0, n, FM_ATTR_KIND, labels), FM_OK);
    double skew[3] = {0, 0, 0};
    for (size_t si = 0; si < count; si++) {
        fm_scenario_config cfg = fm_scenario_default_config();
        cfg.seed = seed;
        assert_int_equal(fm_scenario_setting(names[si], &cfg), FM_OK);
        fm_site_data *sites = split_or_fail(&cfg, &synth);
        int64_t tot[4];
        check_invariants(&cfg, sites, n, tot);
        int n_img_sites = 0, n_txt_sites = 0;
        for (int k = 0; k < cfg.num_sites; k++) {
            n_img_sites += sites[k].modality == FM_MODALITY_IMAGE;
            n_txt_sites += sites[k].modality == FM_MODALITY_TEXT;
        }
        switch (cfg.scenario) {
        case FM_SCENARIO_ALIGNED:
            assert_int_equal(tot[FM_MODALITY_PAIRED], n);
            skew[si] = sites_skew(sites, cfg.num_sites, labels, n);
            break;
        case FM_SCENARIO_MISSING: {
            /* binomial tolerance: 5 standard deviations */
            double r = cfg.missing_rate, miss = (double)(tot[1] + tot[2]) / (double)n;
            double sd = sqrt(r * (1 - r) / (double)n), sd2 = sqrt(r / 2 * (1 - r / 2) / (double)n);
            if (fabs(miss - r) > 5 * sd)
                fail_msg("%s: measured missing rate %.4f, want %.2f ± %.4f", names[si], miss, r, 5 * sd);
            assert_true(fabs((double)tot[FM_MODALITY_IMAGE] / (double)n - r / 2) <= 5 * sd2);
            assert_true(fabs((double)tot[FM_MODALITY_TEXT] / (double)n - r / 2) <= 5 * sd2);
            for (int k = 0; k < cfg.num_sites; k++)
                assert_int_equal(sites[k].modality, FM_MODALITY_PAIRED);
            break;
        }
        case FM_SCENARIO_CROSS:
            assert_int_equal(n_img_sites, cfg.cross_k);
            assert_int_equal(n_txt_sites, cfg.num_sites - cfg.cross_k);
            assert_int_equal(tot[FM_MODALITY_PAIRED], 0);
            for (int k = 0; k < cfg.num_sites; k++)
                assert_true(sites[k].n_image == sites[k].n || sites[k].n_text == sites[k].n);
            break;
        case FM_SCENARIO_HYBRID:
            for (int k = 0; k < cfg.num_sites; k++) {
                const fm_site_data *s = &sites[k];
                /* either one modality for all samples, or the "neither" mix with no paired sample */
                int pure = s->n_paired == s->n || s->n_image == s->n || s->n_text == s->n;
                assert_true(pure || s->n_paired == 0);
            }
            break;
        default: fail();
        }
        print_message("%-13s paired %5lld image %5lld text %5lld, image-only sites %d, text-only sites %d\n", names[si],
                      (long long)tot[3], (long long)tot[1], (long long)tot[2], n_img_sites, n_txt_sites);
        fm_site_data_free(sites, cfg.num_sites);
    }
    /* Smaller alpha, stronger label skew. 5 against 1 or 0.5 differs by a wide margin in one draw; 1 against
     * 0.5 is closer (single draws came within 0.01), so that pair is compared on the mean of 8 seeds. */
    print_message("label skew: alpha 5 %.3f, alpha 1 %.3f, alpha 0.5 %.3f\n", skew[0], skew[1], skew[2]);
    assert_true(skew[0] < skew[1] && skew[0] < skew[2]);
    double mean1 = 0.0, mean05 = 0.0;
    for (int t = 0; t < 8; t++) {
        for (int a = 0; a < 2; a++) {
            fm_scenario_config cfg = fm_scenario_default_config();
            cfg.seed = seed + 100 + (uint64_t)t;
            assert_int_equal(fm_scenario_setting(a ? "aligned-a0.5" : "aligned-a1", &cfg), FM_OK);
            fm_site_data *sites = split_or_fail(&cfg, &synth);
            *(a ? &mean05 : &mean1) += sites_skew(sites, cfg.num_sites, labels, n) / 8.0;
            fm_site_data_free(sites, cfg.num_sites);
        }
    }
    print_message("mean label skew over 8 seeds: alpha 1 %.3f, alpha 0.5 %.3f\n", mean1, mean05);
    assert_true(mean1 < mean05);
    free(labels);
}

/* Hybrid: over many seeds, a site is paired with probability (1-q)², image-only and text-only with q(1-q)
 * each, and "neither" (a per-sample image/text mix) with q²; inside "neither" sites half the samples are
 * images. */
static void test_hybrid_frequencies(void **state)
{
    (void)state;
    const int64_t n = 400;
    const int trials = 300;
    fm_synth_config synth = synth_with_train(n, 3);
    const double qs[2] = {0.3, 0.4};
    for (int qi = 0; qi < 2; qi++) {
        double q = qs[qi];
        int64_t kinds[4] = {0, 0, 0, 0}; /* 0 neither, 1 image, 2 text, 3 paired */
        int64_t mix_img = 0, mix_all = 0, sites_total = 0;
        for (int t = 0; t < trials; t++) {
            fm_scenario_config cfg = fm_scenario_default_config();
            cfg.scenario = FM_SCENARIO_HYBRID;
            cfg.hybrid_q = q;
            cfg.seed = fm_test_seed() * 1000003u + (uint64_t)t;
            fm_site_data *sites = split_or_fail(&cfg, &synth);
            int64_t tot[4];
            check_invariants(&cfg, sites, n, tot);
            for (int k = 0; k < cfg.num_sites; k++) {
                const fm_site_data *s = &sites[k];
                if (s->n < 20)
                    continue; /* too small to tell "neither" from a pure site by its samples */
                sites_total++;
                if (s->n_paired == s->n)
                    kinds[3]++;
                else if (s->n_image == s->n)
                    kinds[1]++;
                else if (s->n_text == s->n)
                    kinds[2]++;
                else {
                    assert_int_equal(s->n_paired, 0);
                    kinds[0]++;
                    mix_img += s->n_image;
                    mix_all += s->n;
                }
            }
            fm_site_data_free(sites, cfg.num_sites);
        }
        const double want[4] = {q * q, q * (1 - q), q * (1 - q), (1 - q) * (1 - q)};
        for (int j = 0; j < 4; j++) {
            double got = (double)kinds[j] / (double)sites_total;
            double sd = sqrt(want[j] * (1 - want[j]) / (double)sites_total);
            if (fabs(got - want[j]) > 5 * sd)
                fail_msg("hybrid q=%.1f: kind %d frequency %.4f, want %.4f ± %.4f (%lld sites)", q, j, got, want[j],
                         5 * sd, (long long)sites_total);
        }
        assert_true(mix_all > 0);
        double f = (double)mix_img / (double)mix_all;
        assert_true(fabs(f - 0.5) <= 5 * sqrt(0.25 / (double)mix_all));
        print_message("hybrid q=%.1f over %lld sites: paired %.3f image %.3f text %.3f neither %.3f\n", q,
                      (long long)sites_total, (double)kinds[3] / sites_total, (double)kinds[1] / sites_total,
                      (double)kinds[2] / sites_total, (double)kinds[0] / sites_total);
    }
}

static int same_split(const fm_site_data *a, const fm_site_data *b, int K, int compare_modality)
{
    for (int k = 0; k < K; k++) {
        if (a[k].n != b[k].n || memcmp(a[k].indices, b[k].indices, (size_t)a[k].n * sizeof *a[k].indices) != 0)
            return 0;
        if (compare_modality &&
            (a[k].modality != b[k].modality || memcmp(a[k].sample_modality, b[k].sample_modality, (size_t)a[k].n) != 0))
            return 0;
    }
    return 1;
}

static void test_determinism(void **state)
{
    (void)state;
    const int64_t n = 1501;
    fm_synth_config synth = synth_with_train(n, 11);
    size_t count = 0;
    const char *const *names = fm_scenario_setting_names(&count);
    for (size_t si = 0; si < count; si++) {
        fm_scenario_config cfg = fm_scenario_default_config();
        cfg.seed = fm_test_seed() + 5;
        assert_int_equal(fm_scenario_setting(names[si], &cfg), FM_OK);
        fm_site_data *a = split_or_fail(&cfg, &synth), *b = split_or_fail(&cfg, &synth);
        assert_true(same_split(a, b, cfg.num_sites, 1));
        /* another seed: another split (the partition alone differs with overwhelming probability) */
        fm_scenario_config other = cfg;
        other.seed = cfg.seed + 1;
        fm_site_data *c = split_or_fail(&other, &synth);
        assert_false(same_split(a, c, cfg.num_sites, 0));
        fm_site_data_free(a, cfg.num_sites);
        fm_site_data_free(b, cfg.num_sites);
        fm_site_data_free(c, cfg.num_sites);
    }
    /* The modality draws never move samples: the same seed and alpha give the same sites in every
     * non-aligned scenario (and in aligned-a0.5), with different modalities. */
    fm_scenario_config ref = fm_scenario_default_config();
    ref.seed = fm_test_seed();
    assert_int_equal(fm_scenario_setting("aligned-a0.5", &ref), FM_OK);
    fm_site_data *r = split_or_fail(&ref, &synth);
    const char *others[4] = {"missing-0.4", "cross-5", "hybrid-0.3", "missing-0.5"};
    for (int i = 0; i < 4; i++) {
        fm_scenario_config cfg = ref;
        assert_int_equal(fm_scenario_setting(others[i], &cfg), FM_OK);
        fm_site_data *s = split_or_fail(&cfg, &synth);
        assert_true(same_split(r, s, cfg.num_sites, 0));
        assert_false(same_split(r, s, cfg.num_sites, 1));
        fm_site_data_free(s, cfg.num_sites);
    }
    fm_site_data_free(r, ref.num_sites);
}

/* Cross with k = 0 and k = num_sites, and a non-default number of sites. */
static void test_cross_extremes(void **state)
{
    (void)state;
    const int64_t n = 777;
    fm_synth_config synth = synth_with_train(n, 5);
    for (int k = 0; k <= 7; k += 7) {
        fm_scenario_config cfg = fm_scenario_default_config();
        cfg.scenario = FM_SCENARIO_CROSS, cfg.num_sites = 7, cfg.cross_k = k, cfg.seed = fm_test_seed();
        fm_site_data *sites = split_or_fail(&cfg, &synth);
        int64_t tot[4];
        check_invariants(&cfg, sites, n, tot);
        assert_int_equal(tot[FM_MODALITY_IMAGE], k ? n : 0);
        assert_int_equal(tot[FM_MODALITY_TEXT], k ? 0 : n);
        fm_site_data_free(sites, cfg.num_sites);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_settings), cmocka_unit_test(test_validate),
        cmocka_unit_test(test_twelve_settings),    cmocka_unit_test(test_hybrid_frequencies),
        cmocka_unit_test(test_determinism),        cmocka_unit_test(test_cross_extremes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
