/* Server strategies against hand-computed float64 references: FedAvg (weights, per-block masks), FedAvgM and
 * FedAdagrad / FedAdam / FedYogi over several rounds, clipping, checkpoint save → load → continue, input
 * errors, and the site-side gradient corrections (FedProx, adaptive regularization). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/strategy.h"
#include "testutil.h"

#define NB 4
/* P = 13 in four blocks of 4, 5, 2 and 2 floats */
static const size_t block_len[NB] = {4, 5, 2, 2};
#define P 13
#define KS 3

static fm_strategy_block blocks[NB];

static void make_blocks(void)
{
    static const char *names[NB] = {"a.lora_A", "a.lora_B", "b.bias", "c.head"};
    size_t off = 0;
    for (size_t b = 0; b < NB; b++) {
        blocks[b].name = names[b];
        blocks[b].offset = off;
        blocks[b].numel = block_len[b];
        blocks[b].layer = (int)b;
        blocks[b].n_layers = 8;
        off += block_len[b];
    }
}

static size_t block_of(size_t i)
{
    for (size_t b = 0; b < NB; b++)
        if (i >= blocks[b].offset && i < blocks[b].offset + blocks[b].numel)
            return b;
    return NB;
}

/* Per-round masks: block 3 is trained by nobody in round 0, block 2 only by site 0 in round 1, and in round 2
 * block 1 is trained by nobody (its FedOpt/FedAvgM state must freeze). */
static const uint8_t masks[3][KS][NB] = {
    {{1, 1, 1, 0}, {1, 0, 1, 0}, {1, 1, 0, 0}},
    {{1, 1, 1, 1}, {1, 1, 0, 1}, {0, 1, 0, 1}},
    {{1, 0, 1, 1}, {1, 0, 0, 1}, {1, 0, 1, 0}},
};

typedef struct ref_state {
    double w[P], m[P], v[P];
} ref_state;

/* One round of the FedAvg-family reference in float64, written from the papers' formulas. */
static void ref_round(ref_state *s, const fm_strategy_config *c, float d[KS][P], const double *nk, int round)
{
    for (size_t b = 0; b < NB; b++) {
        double W = 0.0;
        for (int k = 0; k < KS; k++)
            if (masks[round][k][b])
                W += nk[k];
        if (W == 0.0)
            continue; /* nobody trained it: value and state stay */
        for (size_t i = blocks[b].offset; i < blocks[b].offset + blocks[b].numel; i++) {
            double delta = 0.0;
            for (int k = 0; k < KS; k++)
                if (masks[round][k][b])
                    delta += nk[k] * d[k][i];
            delta /= W;
            switch (c->kind) {
            case FM_STRATEGY_FEDAVGM:
                s->m[i] = c->server_momentum * s->m[i] + (1.0 - c->server_momentum) * delta;
                s->w[i] += c->server_lr * s->m[i];
                break;
            case FM_STRATEGY_FEDADAGRAD:
            case FM_STRATEGY_FEDADAM:
            case FM_STRATEGY_FEDYOGI: {
                double g2 = delta * delta;
                s->m[i] = c->beta1 * s->m[i] + (1.0 - c->beta1) * delta;
                if (c->kind == FM_STRATEGY_FEDADAGRAD)
                    s->v[i] += g2;
                else if (c->kind == FM_STRATEGY_FEDADAM)
                    s->v[i] = c->beta2 * s->v[i] + (1.0 - c->beta2) * g2;
                else
                    s->v[i] -= (1.0 - c->beta2) * g2 * (s->v[i] > g2 ? 1.0 : s->v[i] < g2 ? -1.0 : 0.0);
                s->w[i] += c->server_lr * s->m[i] / (sqrt(s->v[i]) + c->tau);
                break;
            }
            default: s->w[i] += c->server_lr * delta; break;
            }
        }
    }
}

static void random_deltas(fm_rng *rng, float d[KS][P], double *nk)
{
    for (int k = 0; k < KS; k++) {
        fm_test_fill(rng, d[k], P, -1.0f, 1.0f);
        nk[k] = 1.0 + floor(fm_rng_double(rng) * 200.0);
    }
}

static fm_status add_site(fm_strategy *st, const float *delta, double nk, const uint8_t *mask)
{
    fm_site_update u = {.n_params = P, .delta = delta, .weight = nk, .n_blocks = NB, .trained = mask};
    return fm_strategy_add_update(st, &u);
}

static void run_rounds_and_check(fm_strategy_kind kind, fm_rng *rng)
{
    fm_strategy_config cfg = fm_strategy_default_config(kind);
    if (kind == FM_STRATEGY_FEDAVG)
        cfg.server_lr = 0.7; /* a server lr ≠ 1 is part of what is checked */
    float w0[P];
    fm_test_fill(rng, w0, P, -2.0f, 2.0f);
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, P, blocks, NB, w0), FM_OK);
    ref_state ref;
    for (size_t i = 0; i < P; i++) {
        ref.w[i] = w0[i];
        ref.m[i] = 0.0;
        ref.v[i] = cfg.tau * cfg.tau;
    }
    for (int r = 0; r < 3; r++) {
        float d[KS][P];
        double nk[KS];
        random_deltas(rng, d, nk);
        assert_int_equal(fm_strategy_begin_round(st, r), FM_OK);
        for (int k = 0; k < KS; k++)
            assert_int_equal(add_site(st, d[k], nk[k], masks[r][k]), FM_OK);
        assert_int_equal(fm_strategy_num_updates(st), KS);
        float out[P];
        assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
        ref_round(&ref, &cfg, d, nk, r);
        char what[64];
        snprintf(what, sizeof(what), "%s round %d", fm_strategy_name(kind), r);
        fm_test_assert_close(what, out, ref.w, P, 1e-5, 1e-6);
        assert_memory_equal(out, fm_strategy_global(st), sizeof(out));
        assert_int_equal(fm_strategy_round(st), r);
    }
    fm_strategy_destroy(st);
}

static void test_parse_names(void **state)
{
    (void)state;
    for (int k = 0; k < FM_STRATEGY_KIND_COUNT; k++) {
        fm_strategy_kind got = FM_STRATEGY_KIND_COUNT;
        assert_int_equal(fm_strategy_parse(fm_strategy_name((fm_strategy_kind)k), &got), FM_OK);
        assert_int_equal(got, k);
    }
    fm_strategy_kind got = FM_STRATEGY_FEDAVG;
    assert_int_equal(fm_strategy_parse("FedAdam", &got), FM_OK);
    assert_int_equal(got, FM_STRATEGY_FEDADAM);
    assert_int_equal(fm_strategy_parse("multi-krum", &got), FM_OK);
    assert_int_equal(got, FM_STRATEGY_MULTI_KRUM);
    assert_int_equal(fm_strategy_parse("fedsgd", &got), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "fedsgd"));
    assert_int_equal(got, FM_STRATEGY_MULTI_KRUM);
    assert_int_equal(fm_strategy_parse("", &got), FM_ERR_CONFIG);
    assert_string_equal(fm_strategy_name(FM_STRATEGY_KIND_COUNT), "?");
    assert_true(fm_strategy_is_robust(FM_STRATEGY_KRUM));
    assert_false(fm_strategy_is_robust(FM_STRATEGY_SCAFFOLD));
    fm_strategy_config c = fm_strategy_default_config(FM_STRATEGY_FEDYOGI);
    assert_true(c.server_lr == 1e-2 && c.beta1 == 0.9 && c.beta2 == 0.99 && c.tau == 1e-3);
    c = fm_strategy_default_config(FM_STRATEGY_FEDAVGM);
    assert_true(c.server_lr == 1.0 && c.server_momentum == 0.9);
    c.trim_ratio = 0.5;
    assert_int_equal(fm_strategy_config_validate(&c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "trim_ratio"));
}

/* A literal example worked out by hand. w = [1 2 3 | 4 5]; site A (n=1) Δ = 1 everywhere, trains both blocks;
 * site B (n=3) Δ = [4 4 4 | −2 −2], trains block 0 only. Block 0: w += (1·1 + 3·4)/4 = 3.25; block 1: only A
 * trained it, so w += 1 (B's −2 is ignored). */
static void test_fedavg_literal(void **state)
{
    (void)state;
    fm_strategy_block b2[2] = {{"x", 0, 3, -1, 0}, {"y", 3, 2, -1, 0}};
    float w0[5] = {1, 2, 3, 4, 5};
    float da[5] = {1, 1, 1, 1, 1}, db[5] = {4, 4, 4, -2, -2};
    uint8_t ma[2] = {1, 1}, mb[2] = {1, 0};
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, 5, b2, 2, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 1), FM_OK);
    fm_site_update ua = {.n_params = 5, .delta = da, .weight = 1, .n_blocks = 2, .trained = ma};
    fm_site_update ub = {.n_params = 5, .delta = db, .weight = 3, .n_blocks = 2, .trained = mb};
    assert_int_equal(fm_strategy_add_update(st, &ua), FM_OK);
    assert_int_equal(fm_strategy_add_update(st, &ub), FM_OK);
    float out[5];
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    const double want[5] = {4.25, 5.25, 6.25, 5.0, 6.0};
    fm_test_assert_close("fedavg literal", out, want, 5, 1e-7, 0.0);
    fm_strategy_destroy(st);
}

static void test_fedavg_masks(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    run_rounds_and_check(FM_STRATEGY_FEDAVG, &rng);
    run_rounds_and_check(FM_STRATEGY_FEDPROX, &rng);
    run_rounds_and_check(FM_STRATEGY_ADAPTIVE_REG, &rng);
    /* round 0 leaves block 3 exactly as it was, and block 2 of round 1 equals site 0's own value */
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    float w0[P], d[KS][P], out[P];
    double nk[KS];
    fm_test_fill(&rng, w0, P, -2.0f, 2.0f);
    random_deltas(&rng, d, nk);
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, P, blocks, NB, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (int k = 0; k < KS; k++)
        assert_int_equal(add_site(st, d[k], nk[k], masks[0][k]), FM_OK);
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    assert_memory_equal(out + blocks[3].offset, w0 + blocks[3].offset, blocks[3].numel * sizeof(float));
    float w1[P];
    memcpy(w1, out, sizeof(w1));
    assert_int_equal(fm_strategy_begin_round(st, 1), FM_OK);
    for (int k = 0; k < KS; k++)
        assert_int_equal(add_site(st, d[k], nk[k], masks[1][k]), FM_OK);
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    for (size_t i = blocks[2].offset; i < blocks[2].offset + blocks[2].numel; i++)
        assert_float_equal(out[i], w1[i] + d[0][i], 1e-6);
    fm_strategy_destroy(st);
}

static void test_fedavgm_rounds(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    run_rounds_and_check(FM_STRATEGY_FEDAVGM, &rng);
}

static void test_fedopt_rounds(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    run_rounds_and_check(FM_STRATEGY_FEDADAGRAD, &rng);
    run_rounds_and_check(FM_STRATEGY_FEDADAM, &rng);
    run_rounds_and_check(FM_STRATEGY_FEDYOGI, &rng);
}

/* clip_norm scales each delta (over its trained blocks) to norm ≤ C before weighting. */
static void test_clip_norm(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    cfg.clip_norm = 0.8;
    float w0[P], d[KS][P], out[P];
    double nk[KS];
    fm_test_fill(&rng, w0, P, -1.0f, 1.0f);
    random_deltas(&rng, d, nk);
    for (size_t i = 0; i < P; i++)
        d[1][i] *= 0.05f; /* site 1 stays under the bound, the others exceed it */
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, P, blocks, NB, w0), FM_OK);
    assert_int_equal(fm_strategy_begin_round(st, 0), FM_OK);
    for (int k = 0; k < KS; k++)
        assert_int_equal(add_site(st, d[k], nk[k], masks[1][k]), FM_OK);
    assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
    double scale[KS];
    for (int k = 0; k < KS; k++) {
        double n2 = 0.0;
        for (size_t i = 0; i < P; i++)
            if (masks[1][k][block_of(i)])
                n2 += (double)d[k][i] * d[k][i];
        scale[k] = sqrt(n2) > 0.8 ? 0.8 / sqrt(n2) : 1.0;
    }
    assert_true(scale[0] < 1.0 && scale[1] == 1.0 && scale[2] < 1.0);
    double want[P];
    for (size_t i = 0; i < P; i++) {
        size_t b = block_of(i);
        double num = 0.0, W = 0.0;
        for (int k = 0; k < KS; k++)
            if (masks[1][k][b]) {
                num += nk[k] * scale[k] * d[k][i];
                W += nk[k];
            }
        want[i] = w0[i] + (W > 0 ? num / W : 0.0);
    }
    fm_test_assert_close("clipped fedavg", out, want, P, 1e-5, 1e-6);
    fm_strategy_destroy(st);
}

static char *temp_path(const char *tag)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "/tmp/fm_test_strategy_%s_%ld.safetensors", tag, (long)getpid());
    return buf;
}

/* Rounds 0..3 uninterrupted equal rounds 0..1, save, load into a fresh strategy, rounds 2..3 — bit for bit. */
static void check_resume(fm_strategy_kind kind, fm_rng *rng)
{
    fm_strategy_config cfg = fm_strategy_default_config(kind);
    float w0[P], d[4][KS][P], dc[4][KS][P];
    double nk[4][KS];
    fm_test_fill(rng, w0, P, -1.0f, 1.0f);
    for (int r = 0; r < 4; r++) {
        random_deltas(rng, d[r], nk[r]);
        for (int k = 0; k < KS; k++)
            fm_test_fill(rng, dc[r][k], P, -0.5f, 0.5f);
    }
    fm_strategy *a = NULL, *b = NULL;
    assert_int_equal(fm_strategy_create(&a, &cfg, P, blocks, NB, w0), FM_OK);
    float other[P];
    fm_test_fill(rng, other, P, 3.0f, 4.0f);
    assert_int_equal(fm_strategy_create(&b, &cfg, P, blocks, NB, other), FM_OK);
    const char *path = temp_path(fm_strategy_name(kind));
    for (int r = 0; r < 4; r++) {
        assert_int_equal(fm_strategy_begin_round(a, r), FM_OK);
        if (r == 1) /* no saving mid-round */
            assert_int_equal(fm_strategy_save(a, path), FM_ERR_STATE);
        for (int k = 0; k < KS; k++) {
            fm_site_update u = {.n_params = P,
                                .delta = d[r][k],
                                .weight = nk[r][k],
                                .n_blocks = NB,
                                .trained = masks[r % 3][k],
                                .control_delta = dc[r][k]};
            assert_int_equal(fm_strategy_add_update(a, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(a, NULL), FM_OK);
        if (r == 1) {
            assert_int_equal(fm_strategy_save(a, path), FM_OK);
            assert_int_equal(fm_strategy_load(b, path), FM_OK);
            assert_int_equal(fm_strategy_round(b), 1);
        }
        if (r >= 2) {
            assert_int_equal(fm_strategy_begin_round(b, r), FM_OK);
            for (int k = 0; k < KS; k++) {
                fm_site_update u = {.n_params = P,
                                    .delta = d[r][k],
                                    .weight = nk[r][k],
                                    .n_blocks = NB,
                                    .trained = masks[r % 3][k],
                                    .control_delta = dc[r][k]};
                assert_int_equal(fm_strategy_add_update(b, &u), FM_OK);
            }
            assert_int_equal(fm_strategy_finish_round(b, NULL), FM_OK);
            assert_memory_equal(fm_strategy_global(a), fm_strategy_global(b), P * sizeof(float));
            if (fm_strategy_control(a))
                assert_memory_equal(fm_strategy_control(a), fm_strategy_control(b), P * sizeof(float));
        }
    }
    /* a checkpoint of another kind or size is refused and leaves the strategy as it was */
    fm_strategy_config other_cfg =
        fm_strategy_default_config(kind == FM_STRATEGY_FEDAVG ? FM_STRATEGY_FEDADAM : FM_STRATEGY_FEDAVG);
    fm_strategy *c = NULL;
    assert_int_equal(fm_strategy_create(&c, &other_cfg, P, blocks, NB, w0), FM_OK);
    float before[P];
    memcpy(before, fm_strategy_global(c), sizeof(before));
    assert_int_equal(fm_strategy_load(c, path), FM_ERR_CONFIG);
    assert_memory_equal(before, fm_strategy_global(c), sizeof(before));
    assert_int_equal(fm_strategy_round(c), -1);
    fm_strategy_destroy(c);
    fm_strategy *small = NULL;
    assert_int_equal(fm_strategy_create(&small, &cfg, P - 2, NULL, 0, w0), FM_OK);
    assert_int_equal(fm_strategy_load(small, path), FM_ERR_SHAPE);
    assert_memory_equal(w0, fm_strategy_global(small), (P - 2) * sizeof(float));
    fm_strategy_destroy(small);
    unlink(path);
    assert_int_equal(fm_strategy_load(b, path), FM_ERR_IO);
    fm_strategy_destroy(a);
    fm_strategy_destroy(b);
}

static void test_save_load_resume(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 5);
    check_resume(FM_STRATEGY_FEDAVG, &rng);
    check_resume(FM_STRATEGY_FEDAVGM, &rng);
    check_resume(FM_STRATEGY_FEDADAM, &rng);
    check_resume(FM_STRATEGY_FEDYOGI, &rng);
    check_resume(FM_STRATEGY_FEDADAGRAD, &rng);
    check_resume(FM_STRATEGY_SCAFFOLD, &rng);
}

/* A non-finite update is refused and leaves no trace: the round then ends exactly as if it never came. */
static void test_errors(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 6);
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_FEDADAM);
    float w0[P], d[KS][P];
    double nk[KS];
    fm_test_fill(&rng, w0, P, -1.0f, 1.0f);
    random_deltas(&rng, d, nk);
    fm_strategy *a = NULL, *b = NULL;
    assert_int_equal(fm_strategy_create(&a, &cfg, P, blocks, NB, w0), FM_OK);
    assert_int_equal(fm_strategy_create(&b, &cfg, P, blocks, NB, w0), FM_OK);

    assert_int_equal(add_site(a, d[0], nk[0], NULL), FM_ERR_STATE); /* no open round */
    assert_int_equal(fm_strategy_finish_round(a, NULL), FM_ERR_STATE);
    assert_int_equal(fm_strategy_begin_round(a, 3), FM_OK);
    assert_int_equal(fm_strategy_begin_round(a, 4), FM_ERR_STATE); /* already open */
    assert_int_equal(fm_strategy_begin_round(b, 3), FM_OK);
    assert_int_equal(fm_strategy_finish_round(a, NULL), FM_ERR_STATE); /* nothing accepted: kept open */
    assert_non_null(strstr(fm_last_error(), "no accepted update"));

    float bad[P];
    memcpy(bad, d[1], sizeof(bad));
    bad[blocks[1].offset + 2] = NAN;
    assert_int_equal(add_site(a, bad, nk[1], NULL), FM_ERR_NOT_FINITE);
    assert_non_null(strstr(fm_last_error(), "a.lora_B"));
    bad[blocks[1].offset + 2] = INFINITY;
    assert_int_equal(add_site(a, bad, nk[1], NULL), FM_ERR_NOT_FINITE);
    /* ... but a NaN inside a block the site did not train is ignored, like the rest of that block */
    const uint8_t no_b1[NB] = {1, 0, 1, 1};
    float masked[P];
    memcpy(masked, d[2], sizeof(masked));
    masked[blocks[1].offset] = NAN;
    assert_int_equal(add_site(a, masked, nk[2], no_b1), FM_OK);
    assert_int_equal(add_site(b, d[2], nk[2], no_b1), FM_OK);

    fm_site_update u = {.n_params = P + 1, .delta = d[0], .weight = nk[0]};
    assert_int_equal(fm_strategy_add_update(a, &u), FM_ERR_SHAPE);
    u.n_params = P;
    u.trained = no_b1;
    u.n_blocks = NB - 1;
    assert_int_equal(fm_strategy_add_update(a, &u), FM_ERR_SHAPE);
    u.n_blocks = NB;
    u.weight = 0.0;
    assert_int_equal(fm_strategy_add_update(a, &u), FM_ERR_INVALID_ARG);
    u.weight = NAN;
    assert_int_equal(fm_strategy_add_update(a, &u), FM_ERR_INVALID_ARG);
    const uint8_t none[NB] = {0, 0, 0, 0};
    u.weight = 2.0;
    u.trained = none;
    assert_int_equal(fm_strategy_add_update(a, &u), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_strategy_num_updates(a), 1);

    for (int k = 0; k < 2; k++) {
        assert_int_equal(add_site(a, d[k], nk[k], NULL), FM_OK);
        assert_int_equal(add_site(b, d[k], nk[k], NULL), FM_OK);
    }
    float oa[P], ob[P];
    assert_int_equal(fm_strategy_finish_round(a, oa), FM_OK);
    assert_int_equal(fm_strategy_finish_round(b, ob), FM_OK);
    assert_memory_equal(oa, ob, sizeof(oa));
    assert_int_equal(fm_strategy_begin_round(a, 3), FM_ERR_STATE); /* not after round 3 */

    /* abort discards the open round */
    assert_int_equal(fm_strategy_begin_round(a, 4), FM_OK);
    assert_int_equal(add_site(a, d[0], nk[0], NULL), FM_OK);
    fm_strategy_abort_round(a);
    assert_int_equal(fm_strategy_num_updates(a), 0);
    assert_memory_equal(oa, fm_strategy_global(a), sizeof(oa));
    assert_int_equal(fm_strategy_round(a), 3);

    /* creation checks */
    fm_strategy *c = NULL;
    fm_strategy_block gap[2] = {{"x", 0, 5, -1, 0}, {"y", 6, 7, -1, 0}};
    assert_int_equal(fm_strategy_create(&c, &cfg, P, gap, 2, w0), FM_ERR_SHAPE);
    assert_non_null(strstr(fm_last_error(), "'y'"));
    fm_strategy_block shortb[1] = {{"x", 0, 5, -1, 0}};
    assert_int_equal(fm_strategy_create(&c, &cfg, P, shortb, 1, w0), FM_ERR_SHAPE);
    float nanw[P];
    memcpy(nanw, w0, sizeof(nanw));
    nanw[7] = NAN;
    assert_int_equal(fm_strategy_create(&c, &cfg, P, blocks, NB, nanw), FM_ERR_NOT_FINITE);
    fm_strategy_config badc = cfg;
    badc.beta1 = 1.0;
    assert_int_equal(fm_strategy_create(&c, &badc, P, blocks, NB, w0), FM_ERR_CONFIG);
    assert_null(c);
    assert_int_equal(fm_strategy_set_global(a, nanw), FM_ERR_NOT_FINITE);
    assert_int_equal(fm_strategy_set_global(a, w0), FM_OK);
    assert_memory_equal(w0, fm_strategy_global(a), sizeof(w0));
    fm_strategy_destroy(a);
    fm_strategy_destroy(b);
}

/* FedProx: g += μ(θ − θg) everywhere. Adaptive regularization: g += μ·μw(θ − θg) on layers [s, L−1−s] of each
 * stack only (two stacks of different depth here), nothing elsewhere. */
static void test_site_corrections(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 7);
    /* stack "vision" has L = 6, stack "text" L = 5; s = 1 → vision layers 1..4, text layers 1..3 */
    fm_strategy_block sb[7] = {
        {"v.l0", 0, 3, 0, 6},  {"v.l1", 3, 2, 1, 6},  {"v.l4", 5, 4, 4, 6},   {"v.l5", 9, 1, 5, 6},
        {"t.l3", 10, 2, 3, 5}, {"t.l4", 12, 3, 4, 5}, {"proj", 15, 2, -1, 0},
    };
    const int in_mid[7] = {0, 1, 1, 0, 1, 0, 0};
    enum { N = 17 };
    float theta[N], anchor[N], g0[N], g[N];
    fm_test_fill(&rng, theta, N, -1.0f, 1.0f);
    fm_test_fill(&rng, anchor, N, -1.0f, 1.0f);
    fm_test_fill(&rng, g0, N, -1.0f, 1.0f);

    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_FEDPROX);
    cfg.prox_mu = 0.37;
    fm_site_correction corr;
    assert_int_equal(fm_site_correction_prepare(&corr, &cfg, N, sb, 7, anchor, NULL, NULL), FM_OK);
    memcpy(g, g0, sizeof(g));
    fm_site_correct_grad(g, theta, &corr, N);
    double want[N];
    for (size_t i = 0; i < N; i++)
        want[i] = g0[i] + 0.37 * ((double)theta[i] - anchor[i]);
    fm_test_assert_close("fedprox grad", g, want, N, 1e-6, 1e-7);
    fm_site_correction_free(&corr);

    cfg = fm_strategy_default_config(FM_STRATEGY_ADAPTIVE_REG);
    cfg.prox_mu = 0.5;
    cfg.adaptive_mu_w = 0.3;
    cfg.adaptive_skip_layers = 1;
    assert_int_equal(fm_site_correction_prepare(&corr, &cfg, N, sb, 7, anchor, NULL, NULL), FM_OK);
    memcpy(g, g0, sizeof(g));
    fm_site_correct_grad(g, theta, &corr, N);
    for (size_t b = 0; b < 7; b++)
        for (size_t i = sb[b].offset; i < sb[b].offset + sb[b].numel; i++)
            want[i] = g0[i] + (in_mid[b] ? 0.15 * ((double)theta[i] - anchor[i]) : 0.0);
    fm_test_assert_close("adaptive reg grad", g, want, N, 1e-6, 1e-7);
    fm_site_correction_free(&corr);
    assert_null(corr.owned_weight);

    /* the other kinds change nothing; missing inputs are errors */
    cfg = fm_strategy_default_config(FM_STRATEGY_FEDADAM);
    assert_int_equal(fm_site_correction_prepare(&corr, &cfg, N, sb, 7, anchor, NULL, NULL), FM_OK);
    memcpy(g, g0, sizeof(g));
    fm_site_correct_grad(g, theta, &corr, N);
    assert_memory_equal(g, g0, sizeof(g));
    cfg = fm_strategy_default_config(FM_STRATEGY_FEDPROX);
    assert_int_equal(fm_site_correction_prepare(&corr, &cfg, N, sb, 7, NULL, NULL, NULL), FM_ERR_INVALID_ARG);
    cfg = fm_strategy_default_config(FM_STRATEGY_SCAFFOLD);
    assert_int_equal(fm_site_correction_prepare(&corr, &cfg, N, sb, 7, NULL, anchor, NULL), FM_ERR_INVALID_ARG);
    float wts[N];
    sb[3].offset = 8;
    assert_int_equal(fm_adaptive_reg_weights(wts, N, sb, 7, 1, 1.0f), FM_ERR_SHAPE);
}

int main(void)
{
    make_blocks();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_names),      cmocka_unit_test(test_fedavg_literal),
        cmocka_unit_test(test_fedavg_masks),     cmocka_unit_test(test_fedavgm_rounds),
        cmocka_unit_test(test_fedopt_rounds),    cmocka_unit_test(test_clip_norm),
        cmocka_unit_test(test_save_load_resume), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_site_corrections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
