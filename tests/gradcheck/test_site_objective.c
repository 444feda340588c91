/* Checks of a site's modality-dependent loss (fedmm/site_objective.h) on a very small CLIP (the configuration
 * of test_clip_model.c: image 16, patch 8, widths 16 / 12, 2 layers, LoRA r = 3 on every linear of both
 * towers, projections training, lora_B made non-zero):
 *   - image-only, text-only and mixed batches: analytic gradients against finite differences, on one
 *     coordinate of every slice plus random ones, and along every slice's own gradient direction;
 *   - a batch of paired samples only gives bit-for-bit fm_clip_forward_backward's loss and gradients;
 *   - an image-only batch leaves every text-tower gradient exactly zero (and text-only the vision tower);
 *   - a mixed batch is the sample-count-weighted mean of its parts run alone; a lone paired sample is
 *     skipped; bad inputs give clear errors; class prompts built from the dataset match the dataset's.
 * Float32 tolerances as test_clip_model.c documents: the loss is float32, so the derivative is the 5-point
 * stencil Richardson-extrapolated from h = 1e-2 and h/2, and each check adds |fd5(h) − fd5(h/2)|, the finite
 * difference's own uncertainty at that point, to 1e-4 + 2e-2·|g|. Repeated with FEDMM_TEST_SEED = 1..10. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/clip.h"
#include "fedmm/dataset.h"
#include "fedmm/site_objective.h"
#include "fedmm/tokenizer.h"
#include "testutil.h"

enum { NB = 7, T = 6, E = 10, S = 16, V = 23, NK = 4 };

typedef struct fixture {
    fm_clip_config cfg;
    float images[NB * 3 * S * S];
    int32_t tokens[NB * T];
    int32_t eot[NB];
    int32_t labels[NB];
    uint8_t modality[NB];
    int32_t ptokens[NK * T];
    int32_t peot[NK];
    fm_class_prompts prompts;
    fm_site_batch batch;
} fixture;

static void tiny_config(fm_clip_config *c)
{
    assert_int_equal(fm_clip_config_preset("clip-tiny", c), FM_OK);
    c->image_size = S, c->patch_size = 8;
    c->vision_width = 16, c->vision_layers = 2, c->vision_heads = 2, c->vision_mlp = 24;
    c->vocab_size = V, c->context_length = T;
    c->text_width = 12, c->text_layers = 2, c->text_heads = 2, c->text_mlp = 20;
    c->embed_dim = E;
    c->lora_rank = 3, c->lora_alpha = 5.0f;
    c->lora_targets = FM_LORA_ALL, c->lora_towers = FM_CLIP_TOWER_BOTH;
    c->train_projections = 1;
    assert_int_equal(fm_clip_config_validate(c), FM_OK);
}

/* Random inputs; `mods` gives the modality of each of the NB samples (its length is NB). */
static fixture *make_fixture(uint64_t stream, const char *mods)
{
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg);
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    fm_test_fill(&rng, f->images, sizeof f->images / sizeof f->images[0], -1.0f, 1.0f);
    for (size_t i = 0; i < NB * T; i++)
        f->tokens[i] = (int32_t)fm_rng_below(&rng, V);
    for (int b = 0; b < NB; b++) {
        f->eot[b] = 1 + (int32_t)fm_rng_below(&rng, T - 1);
        f->labels[b] = (int32_t)fm_rng_below(&rng, NK);
        f->modality[b] = (uint8_t)(mods[b] == 'p'   ? FM_MODALITY_PAIRED
                                   : mods[b] == 'i' ? FM_MODALITY_IMAGE
                                                    : FM_MODALITY_TEXT);
    }
    for (size_t i = 0; i < NK * T; i++)
        f->ptokens[i] = (int32_t)fm_rng_below(&rng, V);
    for (int k = 0; k < NK; k++)
        f->peot[k] = 1 + (int32_t)fm_rng_below(&rng, T - 1);
    f->prompts = (fm_class_prompts){FM_ATTR_KIND, NK, T, f->ptokens, f->peot};
    f->batch = (fm_site_batch){NB, f->images, f->tokens, f->eot, f->labels, f->modality};
    return f;
}

/* A model with non-zero lora_B and jittered weights, so that every trainable slice gets a gradient. */
static fm_clip *make_model(const fm_clip_config *cfg)
{
    fm_clip *m = NULL;
    if (fm_clip_create(&m, cfg, FM_DEVICE_CPU, fm_test_seed()) != FM_OK)
        fail_msg("fm_clip_create: %s", fm_last_error());
    fm_rng rng = fm_rng_make(fm_test_seed(), 777);
    float *p = fm_clip_trainable(m);
    for (size_t i = 0; i < fm_clip_num_slices(m); i++) {
        const fm_clip_slice *s = fm_clip_slice_at(m, i);
        if (strstr(s->name, "logit_scale"))
            continue;
        if (strstr(s->name, "lora_B"))
            fm_test_fill(&rng, p + s->offset, s->numel, -0.3f, 0.3f);
        for (size_t j = 0; j < s->numel; j++)
            p[s->offset + j] += 0.05f * (2.0f * (float)fm_rng_double(&rng) - 1.0f);
    }
    return m;
}

/* Zeroes the gradient, runs the site loss, returns the loss (parts into *parts when not NULL). */
static double run(fm_clip *m, const fm_site_batch *b, const fm_class_prompts *prompts, fm_site_loss_parts *parts)
{
    fm_site_loss_parts local;
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    fm_status st = fm_site_loss_backward_parts(m, b, prompts, parts ? parts : &local);
    if (st != FM_OK)
        fail_msg("fm_site_loss_backward_parts: %s", fm_last_error());
    return (parts ? parts : &local)->loss;
}

static float *grad_copy(fm_clip *m)
{
    size_t n = fm_clip_num_trainable(m);
    float *g = fm_test_alloc(n * sizeof *g);
    memcpy(g, fm_clip_trainable_grad(m), n * sizeof *g);
    return g;
}

/* ---- finite differences (as test_clip_model.c) ---------------------------------------------------------- */

static double fd5(fm_clip *m, const fixture *f, const float *dir, size_t i, double h)
{
    float *p = fm_clip_trainable(m);
    size_t n = fm_clip_num_trainable(m);
    float *saved = fm_test_alloc(n * sizeof(float));
    memcpy(saved, p, n * sizeof(float));
    static const double steps[4] = {-2.0, -1.0, 1.0, 2.0};
    static const double weights[4] = {1.0, -8.0, 8.0, -1.0};
    double acc = 0.0;
    for (int s = 0; s < 4; s++) {
        if (dir) {
            for (size_t j = 0; j < n; j++)
                p[j] = saved[j] + (float)(steps[s] * h) * dir[j];
        } else {
            p[i] = saved[i] + (float)(steps[s] * h);
        }
        acc += weights[s] * run(m, &f->batch, &f->prompts, NULL);
        memcpy(p, saved, n * sizeof(float));
    }
    free(saved);
    return acc / (12.0 * h);
}

static double fd(fm_clip *m, const fixture *f, const float *dir, size_t i, double h, double *err)
{
    double a = fd5(m, f, dir, i, h), b = fd5(m, f, dir, i, h / 2);
    *err = fabs(a - b);
    return b + (b - a) / 15.0;
}

/* Gradient check of the batch whose modalities are `mods`; `site` is the site's modality (which slices
 * must get a gradient: every other slice must get exactly zero). The image-only part treats the prompt
 * embeddings as constants (a stop-gradient: the site has no text), so where a batch mixes image-only
 * samples with samples that train the text tower, the loss's true derivative along text-tower
 * coordinates includes a path the objective deliberately cuts: finite differences are then taken only on
 * the slices outside the text tower (`skip_text`). The text gradient of such a batch is checked by
 * test_mixed_is_weighted_mean, as the weighted sum of its parts, each of which is checked here alone. */
static void gradcheck(const char *what, const char *mods, fm_modality site, uint64_t stream, int skip_text)
{
    fixture *f = make_fixture(stream, mods);
    fm_clip *m = make_model(&f->cfg);
    fm_site_loss_parts parts;
    double loss = run(m, &f->batch, &f->prompts, &parts);
    assert_true(isfinite(loss) && loss > 0.0);
    float *g = grad_copy(m);
    const size_t n = fm_clip_num_trainable(m), ns = fm_clip_num_slices(m);
    const double h = 1e-2;
    fm_rng rng = fm_rng_make(fm_test_seed(), 900 + stream);

    /* Which slices train: exactly those fm_site_trains_slice names; the others are exactly zero. */
    size_t trained = 0;
    for (size_t k = 0; k < ns; k++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, k);
        double norm = 0.0;
        for (size_t j = 0; j < sl->numel; j++)
            norm += (double)g[sl->offset + j] * g[sl->offset + j];
        if (fm_site_trains_slice(site, sl)) {
            trained++;
            if (!(norm > 0.0))
                fail_msg("%s: slice %s should train but has a zero gradient", what, sl->name);
        } else if (norm != 0.0) {
            fail_msg("%s: slice %s (%s tower) got a gradient of norm %.3g", what, sl->name,
                     sl->tower == FM_CLIP_TOWER_TEXT ? "text" : "vision", sqrt(norm));
        }
    }
    assert_true(trained > 0);

    /* One coordinate of every trained slice, then 40 random coordinates of trained slices. */
    double max_abs = 0.0;
    size_t checked = 0;
    for (size_t c = 0; c < ns + 40; c++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, c < ns ? c : (size_t)fm_rng_below(&rng, ns));
        if (!fm_site_trains_slice(site, sl) || (skip_text && sl->tower == FM_CLIP_TOWER_TEXT))
            continue;
        size_t i = sl->offset + (size_t)fm_rng_below(&rng, sl->numel);
        double err, fdi = fd(m, f, NULL, i, h, &err);
        max_abs = fmax(max_abs, fabs(fdi - g[i]));
        checked++;
        if (!(fabs(fdi - g[i]) <= 1e-4 + 2e-2 * fabs((double)g[i]) + err))
            fail_msg("%s: %s [%zu]: analytic %.6g, finite difference %.6g (uncertainty %.2g)", what, sl->name,
                     i - sl->offset, g[i], fdi, err);
    }
    /* Every trained slice along its own gradient direction: the derivative there is its gradient norm. */
    float *dir = fm_test_alloc(n * sizeof *dir);
    double worst = 0.0;
    size_t directions = 0;
    for (size_t k = 0; k < ns; k++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, k);
        if (!fm_site_trains_slice(site, sl) || (skip_text && sl->tower == FM_CLIP_TOWER_TEXT))
            continue;
        double gn = 0.0;
        memset(dir, 0, n * sizeof *dir);
        for (size_t j = 0; j < sl->numel; j++)
            gn += (double)g[sl->offset + j] * g[sl->offset + j];
        gn = sqrt(gn);
        for (size_t j = 0; j < sl->numel; j++)
            dir[sl->offset + j] = (float)(g[sl->offset + j] / gn);
        double err, fdd = fd(m, f, dir, 0, h, &err);
        directions++;
        worst = fmax(worst, fabs(fdd - gn) / gn);
        if (!(fabs(fdd - gn) <= 1e-2 * gn + 1e-4 + err))
            fail_msg("%s: slice %s: gradient norm %.8g, finite difference along it %.8g", what, sl->name, gn, fdd);
    }
    print_message("%s: loss %.4f (paired %d, image %d, text %d), %zu coordinates, largest |fd - g| %.3g; "
                  "%zu slices along their gradients, largest relative error %.3g\n",
                  what, loss, parts.n_paired, parts.n_image, parts.n_text, checked, max_abs, directions, worst);
    free(dir);
    free(g);
    fm_clip_destroy(m);
    free(f);
}

static void test_gradcheck_image_only(void **state)
{
    (void)state;
    gradcheck("image-only", "iiiiiii", FM_MODALITY_IMAGE, 1, 0);
}

static void test_gradcheck_text_only(void **state)
{
    (void)state;
    gradcheck("text-only", "ttttttt", FM_MODALITY_TEXT, 2, 0);
}

/* Paired and text-only: every path is real, every slice is checked (the paired part here runs with weight
 * 4/7 through fm_clip_forward and the host InfoNCE). */
static void test_gradcheck_paired_text(void **state)
{
    (void)state;
    gradcheck("paired + text-only", "ptpptpt", FM_MODALITY_PAIRED, 3, 0);
}

/* All three kinds: the vision tower, the projections and logit_scale against finite differences. */
static void test_gradcheck_mixed(void **state)
{
    (void)state;
    gradcheck("paired + image + text", "ptipitp", FM_MODALITY_PAIRED, 8, 1);
}

/* ---- exact relations ------------------------------------------------------------------------------------ */

static void test_paired_is_clip_loss(void **state)
{
    (void)state;
    fixture *f = make_fixture(4, "ppppppp");
    fm_clip *a = make_model(&f->cfg), *b = make_model(&f->cfg);
    const size_t n = fm_clip_num_trainable(a);
    float want = 0.0f;
    assert_int_equal(fm_clip_zero_grad(b), FM_OK);
    assert_int_equal(fm_clip_forward_backward(b, f->images, f->tokens, f->eot, NB, &want), FM_OK);
    for (int variant = 0; variant < 2; variant++) {
        fm_site_batch batch = f->batch;
        if (variant == 1)
            batch.modality = NULL, batch.labels = NULL; /* NULL modality: all paired; no prompts needed */
        float loss = -1.0f;
        assert_int_equal(fm_clip_zero_grad(a), FM_OK);
        assert_int_equal(fm_site_loss_backward(a, &batch, variant ? NULL : &f->prompts, &loss), FM_OK);
        assert_true(loss == want);
        assert_memory_equal(fm_clip_trainable_grad(a), fm_clip_trainable_grad(b), n * sizeof(float));
    }
    /* Gradients accumulate: a second call doubles them. */
    float loss;
    assert_int_equal(fm_site_loss_backward(a, &f->batch, &f->prompts, &loss), FM_OK);
    const float *ga = fm_clip_trainable_grad(a), *gb = fm_clip_trainable_grad(b);
    for (size_t i = 0; i < n; i++)
        assert_true(ga[i] == 2.0f * gb[i]);
    fm_clip_destroy(a);
    fm_clip_destroy(b);
    free(f);
}

/* Runs a sub-batch of f made of the samples whose modality letter is `keep`, returning its gradient. */
static float *run_subset(fm_clip *m, const fixture *f, const char *mods, char keep, double *loss, int *count)
{
    fixture *sub = fm_test_alloc(sizeof *sub);
    *sub = *f;
    int c = 0;
    for (int i = 0; i < NB; i++) {
        if (mods[i] != keep)
            continue;
        memcpy(sub->images + (size_t)c * 3 * S * S, f->images + (size_t)i * 3 * S * S, 3 * S * S * sizeof(float));
        memcpy(sub->tokens + (size_t)c * T, f->tokens + (size_t)i * T, T * sizeof(int32_t));
        sub->eot[c] = f->eot[i], sub->labels[c] = f->labels[i], sub->modality[c] = f->modality[i];
        c++;
    }
    fm_site_batch b = {c, sub->images, sub->tokens, sub->eot, sub->labels, sub->modality};
    *loss = run(m, &b, &f->prompts, NULL);
    *count = c;
    free(sub);
    return grad_copy(m);
}

/* A mixed batch is the sample-count-weighted mean of its parts: the paired part here goes through
 * fm_clip_forward + the host InfoNCE, alone through fm_clip_forward_backward, so this also ties the two. */
static void test_mixed_is_weighted_mean(void **state)
{
    (void)state;
    const char *mods = "tpiptpp";
    fixture *f = make_fixture(5, mods);
    fm_clip *m = make_model(&f->cfg);
    const size_t n = fm_clip_num_trainable(m);
    fm_site_loss_parts parts;
    double loss = run(m, &f->batch, &f->prompts, &parts);
    float *g = grad_copy(m);
    assert_int_equal(parts.n_paired, 4);
    assert_int_equal(parts.n_image, 1);
    assert_int_equal(parts.n_text, 2);
    assert_int_equal(parts.n_skipped, 0);
    double want_loss = 0.0;
    double *want = fm_test_alloc(n * sizeof *want);
    const char keys[3] = {'p', 'i', 't'};
    const float part_loss[3] = {parts.paired_loss, parts.image_loss, parts.text_loss};
    for (int k = 0; k < 3; k++) {
        double l;
        int c;
        float *gk = run_subset(m, f, mods, keys[k], &l, &c);
        assert_float_equal(l, part_loss[k], 1e-5 * fabs(l) + 1e-6);
        want_loss += (double)c / NB * l;
        for (size_t i = 0; i < n; i++)
            want[i] += (double)c / NB * gk[i];
        free(gk);
    }
    assert_float_equal(loss, want_loss, 1e-5 * want_loss);
    fm_test_assert_close("mixed gradient vs weighted parts", g, want, n, 1e-4, 1e-6);
    free(want);
    free(g);
    fm_clip_destroy(m);
    free(f);
}

/* One paired sample cannot form a contrastive loss: it is skipped, the rest is unchanged. */
static void test_lone_paired_skipped(void **state)
{
    (void)state;
    const char *mods = "itptiti";
    fixture *f = make_fixture(6, mods);
    fm_clip *m = make_model(&f->cfg);
    const size_t n = fm_clip_num_trainable(m);
    fm_site_loss_parts parts;
    double loss = run(m, &f->batch, &f->prompts, &parts);
    assert_int_equal(parts.n_skipped, 1);
    assert_int_equal(parts.n_paired, 0);
    float *g = grad_copy(m);
    /* the same batch with the paired sample removed */
    fixture *sub = fm_test_alloc(sizeof *sub);
    *sub = *f;
    int c = 0;
    for (int i = 0; i < NB; i++) {
        if (mods[i] == 'p')
            continue;
        memcpy(sub->images + (size_t)c * 3 * S * S, f->images + (size_t)i * 3 * S * S, 3 * S * S * sizeof(float));
        memcpy(sub->tokens + (size_t)c * T, f->tokens + (size_t)i * T, T * sizeof(int32_t));
        sub->eot[c] = f->eot[i], sub->labels[c] = f->labels[i], sub->modality[c] = f->modality[i];
        c++;
    }
    fm_site_batch b = {c, sub->images, sub->tokens, sub->eot, sub->labels, sub->modality};
    double l2 = run(m, &b, &f->prompts, NULL);
    assert_true(loss == l2);
    assert_memory_equal(g, fm_clip_trainable_grad(m), n * sizeof(float));
    /* A batch of one paired sample: nothing to do, no gradient. */
    fm_site_batch one = {1, f->images + 2 * 3 * S * S, f->tokens + 2 * T, f->eot + 2, NULL, NULL};
    assert_true(run(m, &one, NULL, &parts) == 0.0);
    assert_int_equal(parts.n_skipped, 1);
    const float *g1 = fm_clip_trainable_grad(m);
    for (size_t i = 0; i < n; i++)
        assert_true(g1[i] == 0.0f);
    free(sub);
    free(g);
    fm_clip_destroy(m);
    free(f);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    fixture *f = make_fixture(7, "iitpptp");
    fm_clip *m = make_model(&f->cfg);
    float loss;
    f->labels[1] = NK;
    assert_int_equal(fm_site_loss_backward(m, &f->batch, &f->prompts, &loss), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "sample 1"));
    f->labels[1] = 0;
    f->modality[4] = 0;
    assert_int_equal(fm_site_loss_backward(m, &f->batch, &f->prompts, &loss), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "sample 4"));
    f->modality[4] = FM_MODALITY_PAIRED;
    assert_int_equal(fm_site_loss_backward(m, &f->batch, NULL, &loss), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "prompts"));
    fm_class_prompts wrong = f->prompts;
    wrong.context_len = T + 1;
    assert_int_equal(fm_site_loss_backward(m, &f->batch, &wrong, &loss), FM_ERR_SHAPE);
    fm_site_batch b = f->batch;
    b.images = NULL;
    assert_int_equal(fm_site_loss_backward(m, &b, &f->prompts, &loss), FM_ERR_INVALID_ARG);
    b = f->batch, b.B = 0;
    assert_int_equal(fm_site_loss_backward(m, &b, &f->prompts, &loss), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_site_loss_backward(m, &f->batch, &f->prompts, NULL), FM_ERR_INVALID_ARG);
    fm_clip_destroy(m);
    free(f);
}

static void test_trained_towers(void **state)
{
    (void)state;
    assert_int_equal(fm_site_trained_towers(FM_MODALITY_IMAGE), FM_CLIP_TOWER_VISION);
    assert_int_equal(fm_site_trained_towers(FM_MODALITY_TEXT), FM_CLIP_TOWER_TEXT);
    assert_int_equal(fm_site_trained_towers(FM_MODALITY_PAIRED), FM_CLIP_TOWER_BOTH);
    assert_int_equal(fm_site_trained_towers(FM_MODALITY_NONE), FM_CLIP_TOWER_NONE);
    fm_clip_slice v = {.name = "v", .tower = FM_CLIP_TOWER_VISION}, t = {.name = "t", .tower = FM_CLIP_TOWER_TEXT};
    fm_clip_slice ls = {.name = "logit_scale", .tower = FM_CLIP_TOWER_NONE};
    assert_true(fm_site_trains_slice(FM_MODALITY_IMAGE, &v) && !fm_site_trains_slice(FM_MODALITY_IMAGE, &t));
    assert_true(fm_site_trains_slice(FM_MODALITY_TEXT, &t) && !fm_site_trains_slice(FM_MODALITY_TEXT, &v));
    assert_true(fm_site_trains_slice(FM_MODALITY_PAIRED, &t) && fm_site_trains_slice(FM_MODALITY_PAIRED, &v));
    assert_true(fm_site_trains_slice(FM_MODALITY_IMAGE, &ls) && fm_site_trains_slice(FM_MODALITY_TEXT, &ls));
    assert_false(fm_site_trains_slice(FM_MODALITY_NONE, &ls));
    assert_false(fm_site_trains_slice(FM_MODALITY_PAIRED, NULL));
}

static void test_class_prompts_build(void **state)
{
    (void)state;
    fm_tokenizer *tok = NULL;
    assert_int_equal(fm_tokenizer_builtin(&tok), FM_OK);
    fm_synth_config sc = fm_synth_default_config();
    fm_dataset *ds = NULL;
    assert_int_equal(fm_dataset_synth(&ds, &sc, FM_SPLIT_TRAIN, tok, 20), FM_OK);
    for (int a = 0; a < FM_ATTR_COUNT; a++) {
        fm_class_prompts p;
        assert_int_equal(fm_class_prompts_build(ds, (fm_attribute)a, &p), FM_OK);
        int K = fm_synth_num_classes((fm_attribute)a);
        assert_int_equal(p.num_classes, K);
        assert_int_equal(p.context_len, 20);
        int32_t *want = fm_test_alloc((size_t)K * 20 * sizeof *want), *weot = fm_test_alloc((size_t)K * sizeof *weot);
        assert_int_equal(fm_dataset_class_prompts(ds, (fm_attribute)a, want, weot), FM_OK);
        assert_memory_equal(p.tokens, want, (size_t)K * 20 * sizeof *want);
        assert_memory_equal(p.eot, weot, (size_t)K * sizeof *weot);
        for (int k = 0; k < K; k++)
            assert_true(p.eot[k] > 0 && p.eot[k] < 20);
        fm_class_prompts_free(&p);
        assert_null(p.tokens);
        fm_class_prompts_free(&p); /* twice is safe */
        free(want);
        free(weot);
    }
    fm_class_prompts p;
    assert_int_equal(fm_class_prompts_build(ds, FM_ATTR_COUNT, &p), FM_ERR_INVALID_ARG);
    fm_dataset_destroy(ds);
    fm_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paired_is_clip_loss), cmocka_unit_test(test_gradcheck_image_only),
        cmocka_unit_test(test_gradcheck_text_only), cmocka_unit_test(test_gradcheck_paired_text),
        cmocka_unit_test(test_gradcheck_mixed),     cmocka_unit_test(test_mixed_is_weighted_mean),
        cmocka_unit_test(test_lone_paired_skipped), cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_trained_towers),      cmocka_unit_test(test_class_prompts_build),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
