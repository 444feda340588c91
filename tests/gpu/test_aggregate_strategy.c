/* Every server strategy created for the GPU (config.device = FM_DEVICE_CUDA, src/fl/strategy_cuda.c) against the
 * same strategy on the CPU, fed the same updates for 3 rounds: the global vector (and SCAFFOLD's control variate)
 * after each round within the fp32 bound, relative 1e-5 (absolute 1e-6 for coordinates that cancel; the number of
 * coordinates that are not bit-identical is printed). The updates are modality-aware (sites skip blocks, so the
 * blocks are aggregated over different site sets), weighted unevenly, with norm clipping on and off, and one
 * Byzantine site sending a large update. A non-finite update is refused by both with the same message and leaves
 * both rounds as they were; checkpoints move between the devices; set_global replaces the device state.
 * Argument checks that need no device run everywhere; the rest needs a GPU (exit 77 without one). */
#include "gpu_test.h"

#include <math.h>
#include <stdint.h>
#include <unistd.h>

#ifndef FEDMM_WITH_CUDA

int main(void)
{
    return fm_gpu_test_no_device("gpu.aggregate_strategy", "this fedmm was built without the CUDA backend");
}

#else

#include "fedmm/device.h"
#include "fedmm/strategy.h"

#include "../../cuda/runtime.h"

#define RTOL 1e-5
#define ATOL 1e-6
#define SITES 7
#define NB 4

static const size_t block_sizes[NB] = {1001, 37, 20011, 5};

typedef struct fixture {
    size_t n;
    fm_strategy_block blocks[NB];
    float *w0;
    float *delta[SITES], *dc[SITES];
    uint8_t trained[SITES][NB];
    double weight[SITES];
} fixture;

static void fixture_make(fixture *f, fm_rng *rng)
{
    size_t at = 0;
    static const char *names[NB] = {"vision.attn", "vision.ln", "text.mlp", "proj"};
    for (int b = 0; b < NB; b++) {
        f->blocks[b] = (fm_strategy_block){names[b], at, block_sizes[b], b, NB};
        at += block_sizes[b];
    }
    f->n = at;
    f->w0 = fm_test_alloc(f->n * sizeof(float));
    fm_test_fill(rng, f->w0, f->n, -0.5f, 0.5f);
    for (int k = 0; k < SITES; k++) {
        f->delta[k] = fm_test_alloc(f->n * sizeof(float));
        f->dc[k] = fm_test_alloc(f->n * sizeof(float));
        /* sites 0–4 train everything; 5 and 6 skip block 1 (so Krum sees two groups of ≥ 5 sites) */
        for (int b = 0; b < NB; b++)
            f->trained[k][b] = !(k >= 5 && b == 1);
    }
}

/* Fresh deltas for a round; site 6 is Byzantine (×40). Untrained blocks hold NaN: they must be ignored. */
static void fixture_round(fixture *f, fm_rng *rng)
{
    for (int k = 0; k < SITES; k++) {
        fm_test_fill(rng, f->delta[k], f->n, -0.05f, 0.05f);
        fm_test_fill(rng, f->dc[k], f->n, -0.01f, 0.01f);
        if (k == 6)
            for (size_t i = 0; i < f->n; i++)
                f->delta[k][i] *= 40.0f;
        for (int b = 0; b < NB; b++)
            if (!f->trained[k][b])
                for (size_t i = 0; i < f->blocks[b].numel; i++) {
                    f->delta[k][f->blocks[b].offset + i] = NAN;
                    f->dc[k][f->blocks[b].offset + i] = NAN;
                }
        float w = 0.0f;
        fm_test_fill(rng, &w, 1, 10.0f, 500.0f);
        f->weight[k] = floorf(w);
    }
}

static void fixture_free(fixture *f)
{
    free(f->w0);
    for (int k = 0; k < SITES; k++) {
        free(f->delta[k]);
        free(f->dc[k]);
    }
}

static fm_site_update update_of(const fixture *f, int k)
{
    return (fm_site_update){.n_params = f->n,
                            .delta = f->delta[k],
                            .weight = f->weight[k],
                            .n_blocks = NB,
                            .trained = f->trained[k],
                            .control_delta = f->dc[k]};
}

static void expect_vectors(const char *what, const float *gpu, const float *cpu, size_t n)
{
    double *want = fm_test_alloc(n * sizeof(double));
    fm_test_to_double(want, cpu, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += !fm_test_same_bits(gpu[i], cpu[i]);
    printf("    %-44s %zu of %zu coordinates not bit-identical\n", what, differ, n);
    fm_test_assert_close(what, gpu, want, n, RTOL, ATOL);
    free(want);
}

static void compare(const char *kind, int round, const fm_strategy *g, const fm_strategy *c, size_t n)
{
    char what[96];
    snprintf(what, sizeof what, "%s round %d: global", kind, round);
    expect_vectors(what, fm_strategy_global(g), fm_strategy_global(c), n);
    if (fm_strategy_control(c)) {
        snprintf(what, sizeof what, "%s round %d: control", kind, round);
        expect_vectors(what, fm_strategy_control(g), fm_strategy_control(c), n);
    }
}

/* ---- argument checks: no device needed ------------------------------------------------------------------ */

static void test_config_without_device(void **state)
{
    (void)state;
    fm_strategy_config c = fm_strategy_default_config(FM_STRATEGY_MEDIAN);
    c.device = FM_DEVICE_CUDA;
    assert_int_equal(fm_strategy_config_validate(&c), FM_OK); /* a CUDA build */
    c.device = (fm_device)3;
    assert_int_equal(fm_strategy_config_validate(&c), FM_ERR_CONFIG);
}

/* ---- device ---------------------------------------------------------------------------------------------- */

static void run_kind(fm_strategy_kind kind, double clip)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), 1000 + (uint64_t)kind);
    fixture f;
    fixture_make(&f, &rng);
    fm_strategy_config cc = fm_strategy_default_config(kind);
    cc.clip_norm = clip;
    if (kind == FM_STRATEGY_SCAFFOLD)
        cc.scaffold_num_sites = SITES + 2; /* not every site each round */
    if (kind == FM_STRATEGY_MULTI_KRUM)
        cc.multi_krum_m = 3;
    fm_strategy_config cg = cc;
    cg.device = FM_DEVICE_CUDA;
    fm_strategy *c = NULL, *g = NULL;
    FM_CHECK_OK(fm_strategy_create(&c, &cc, f.n, f.blocks, NB, f.w0));
    FM_CHECK_OK(fm_strategy_create(&g, &cg, f.n, f.blocks, NB, f.w0));
    printf("  %s, clip_norm %g\n", fm_strategy_name(kind), clip);
    float *out_c = fm_test_alloc(f.n * sizeof(float)), *out_g = fm_test_alloc(f.n * sizeof(float));
    for (int round = 1; round <= 3; round++) {
        fixture_round(&f, &rng);
        FM_CHECK_OK(fm_strategy_begin_round(c, round));
        FM_CHECK_OK(fm_strategy_begin_round(g, round));
        for (int k = 0; k < SITES; k++) {
            fm_site_update u = update_of(&f, k);
            FM_CHECK_OK(fm_strategy_add_update(c, &u));
            FM_CHECK_OK(fm_strategy_add_update(g, &u));
            if (round == 2 && k == 3) {
                /* a NaN in a trained block: both refuse it with the same words, and carry on */
                float saved = f.delta[k][f.blocks[2].offset + 17];
                f.delta[k][f.blocks[2].offset + 17] = NAN;
                assert_int_equal(fm_strategy_add_update(c, &u), FM_ERR_NOT_FINITE);
                char msg[512];
                snprintf(msg, sizeof msg, "%s", fm_last_error());
                assert_int_equal(fm_strategy_add_update(g, &u), FM_ERR_NOT_FINITE);
                assert_string_equal(fm_last_error(), msg);
                f.delta[k][f.blocks[2].offset + 17] = saved;
                if (kind == FM_STRATEGY_SCAFFOLD) {
                    float sc = f.dc[k][f.blocks[0].offset + 3];
                    f.dc[k][f.blocks[0].offset + 3] = INFINITY;
                    assert_int_equal(fm_strategy_add_update(c, &u), FM_ERR_NOT_FINITE);
                    snprintf(msg, sizeof msg, "%s", fm_last_error());
                    assert_int_equal(fm_strategy_add_update(g, &u), FM_ERR_NOT_FINITE);
                    assert_string_equal(fm_last_error(), msg);
                    f.dc[k][f.blocks[0].offset + 3] = sc;
                }
                assert_int_equal(fm_strategy_num_updates(c), fm_strategy_num_updates(g));
            }
        }
        FM_CHECK_OK(fm_strategy_finish_round(c, out_c));
        FM_CHECK_OK(fm_strategy_finish_round(g, out_g));
        assert_memory_equal(out_g, fm_strategy_global(g), f.n * sizeof(float));
        compare(fm_strategy_name(kind), round, g, c, f.n);
    }
    /* the vector moved: not a comparison of two copies of the start */
    size_t moved = 0;
    for (size_t i = 0; i < f.n; i++)
        moved += fm_strategy_global(c)[i] != f.w0[i];
    assert_true(moved > f.n / 2);

    /* checkpoints cross devices: GPU → CPU and CPU → GPU, then one more round agrees */
    char path_g[128], path_c[128];
    snprintf(path_g, sizeof path_g, "/tmp/fedmm-test-agg-%ld-g.safetensors", (long)getpid());
    snprintf(path_c, sizeof path_c, "/tmp/fedmm-test-agg-%ld-c.safetensors", (long)getpid());
    FM_CHECK_OK(fm_strategy_save(g, path_g));
    FM_CHECK_OK(fm_strategy_save(c, path_c));
    fm_strategy *c2 = NULL, *g2 = NULL;
    FM_CHECK_OK(fm_strategy_create(&c2, &cc, f.n, f.blocks, NB, f.w0));
    FM_CHECK_OK(fm_strategy_create(&g2, &cg, f.n, f.blocks, NB, f.w0));
    FM_CHECK_OK(fm_strategy_load(c2, path_g));
    FM_CHECK_OK(fm_strategy_load(g2, path_c));
    assert_int_equal(fm_strategy_round(g2), 3);
    assert_memory_equal(fm_strategy_global(g2), fm_strategy_global(c), f.n * sizeof(float));
    remove(path_g);
    remove(path_c);
    fixture_round(&f, &rng);
    FM_CHECK_OK(fm_strategy_begin_round(c2, 4));
    FM_CHECK_OK(fm_strategy_begin_round(g2, 4));
    for (int k = 0; k < SITES; k++) {
        fm_site_update u = update_of(&f, k);
        FM_CHECK_OK(fm_strategy_add_update(c2, &u));
        FM_CHECK_OK(fm_strategy_add_update(g2, &u));
    }
    FM_CHECK_OK(fm_strategy_finish_round(c2, NULL));
    FM_CHECK_OK(fm_strategy_finish_round(g2, NULL));
    compare("after checkpoints", 4, g2, c2, f.n);

    /* set_global replaces the device's vector; an aborted round leaves everything as it was */
    FM_CHECK_OK(fm_strategy_set_global(g2, f.w0));
    FM_CHECK_OK(fm_strategy_set_global(c2, f.w0));
    FM_CHECK_OK(fm_strategy_begin_round(g2, 5));
    fm_site_update u0 = update_of(&f, 0);
    FM_CHECK_OK(fm_strategy_add_update(g2, &u0));
    fm_strategy_abort_round(g2);
    assert_memory_equal(fm_strategy_global(g2), f.w0, f.n * sizeof(float));
    FM_CHECK_OK(fm_strategy_begin_round(c2, 6));
    FM_CHECK_OK(fm_strategy_begin_round(g2, 6));
    for (int k = 0; k < SITES; k++) {
        fm_site_update u = update_of(&f, k);
        FM_CHECK_OK(fm_strategy_add_update(c2, &u));
        FM_CHECK_OK(fm_strategy_add_update(g2, &u));
    }
    FM_CHECK_OK(fm_strategy_finish_round(c2, NULL));
    FM_CHECK_OK(fm_strategy_finish_round(g2, NULL));
    compare("after set_global and abort", 6, g2, c2, f.n);

    fm_strategy_destroy(c);
    fm_strategy_destroy(g);
    fm_strategy_destroy(c2);
    fm_strategy_destroy(g2);
    free(out_c);
    free(out_g);
    fixture_free(&f);
}

static void test_all_kinds(void **state)
{
    (void)state;
    for (int kind = 0; kind < FM_STRATEGY_KIND_COUNT; kind++)
        run_kind((fm_strategy_kind)kind, 0.0);
}

static void test_all_kinds_clipped(void **state)
{
    (void)state;
    /* honest deltas have norm ≈ 0.05·√(n/3) ≈ 4: 1.5 clips every site, the Byzantine one by far the most */
    for (int kind = 0; kind < FM_STRATEGY_KIND_COUNT; kind++)
        run_kind((fm_strategy_kind)kind, 1.5);
}

/* Krum with too few sites on a block: refused before anything changes, on both devices alike. */
static void test_krum_too_few(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 77);
    fixture f;
    fixture_make(&f, &rng);
    fixture_round(&f, &rng);
    fm_strategy_config cc = fm_strategy_default_config(FM_STRATEGY_KRUM);
    cc.krum_byzantine = 2; /* needs 7 per block; block 1 has 5 */
    fm_strategy_config cg = cc;
    cg.device = FM_DEVICE_CUDA;
    fm_strategy *c = NULL, *g = NULL;
    FM_CHECK_OK(fm_strategy_create(&c, &cc, f.n, f.blocks, NB, f.w0));
    FM_CHECK_OK(fm_strategy_create(&g, &cg, f.n, f.blocks, NB, f.w0));
    FM_CHECK_OK(fm_strategy_begin_round(c, 1));
    FM_CHECK_OK(fm_strategy_begin_round(g, 1));
    for (int k = 0; k < SITES; k++) {
        fm_site_update u = update_of(&f, k);
        FM_CHECK_OK(fm_strategy_add_update(c, &u));
        FM_CHECK_OK(fm_strategy_add_update(g, &u));
    }
    assert_int_equal(fm_strategy_finish_round(c, NULL), FM_ERR_STATE);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", fm_last_error());
    assert_int_equal(fm_strategy_finish_round(g, NULL), FM_ERR_STATE);
    assert_string_equal(fm_last_error(), msg);
    assert_memory_equal(fm_strategy_global(g), f.w0, f.n * sizeof(float));
    assert_int_equal(fm_strategy_num_updates(g), SITES); /* the round stays open */
    fm_strategy_destroy(c);
    fm_strategy_destroy(g);
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_config_without_device),
    };
    int failed = cmocka_run_group_tests_name("strategies on cuda, config", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.aggregate_strategy", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_all_kinds),
        cmocka_unit_test(test_all_kinds_clipped),
        cmocka_unit_test(test_krum_too_few),
    };
    failed += cmocka_run_group_tests_name("strategies on the GPU vs the CPU, 3 rounds", device_tests, NULL,
                                          fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
