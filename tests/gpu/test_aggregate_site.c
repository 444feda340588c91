/* A site's local training with the strategies' site-side corrections on the GPU (fm_site_train, whose trainer moves
 * the correction to the model's device: fm_site_correction_to_device, and the CUDA path of fm_site_correct_grad)
 * against the same training on the CPU: FedProx's proximal term, adaptive regularization's per-layer weights and
 * SCAFFOLD's c − ck, three AdamW steps of the tiny model, fp32. Compared: the trained vector (relative L2 over the
 * vector, ‖gpu − cpu‖₂ / ‖cpu‖₂ ≤ 1e-5, the project's fp32 bound carried over three steps) and the mean loss; and the
 * correction must matter (the vector differs from uncorrected training by 10× the bound or more). Needs the model
 * on CUDA and a GPU; reports itself skipped (77) without one. */
#include "gpu_test.h"

#include <math.h>

#include "fedmm/clip.h"
#include "fedmm/device.h"
#include "fedmm/modality.h"
#include "fedmm/site_train.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"

#define TOL 1e-5

static void corrected_case(fm_strategy_kind kind)
{
    printf("%s corrections, fp32\n", fm_strategy_name(kind));
    fm_tokenizer *tok = NULL;
    FM_CHECK_OK(fm_tokenizer_builtin(&tok));
    fm_clip_config c;
    FM_CHECK_OK(fm_clip_config_preset("clip-tiny", &c));
    c.vocab_size = fm_tokenizer_vocab_size(tok);
    fm_synth_config synth = fm_synth_default_config();
    synth.seed = fm_test_seed();
    synth.image_size = c.image_size;
    synth.split_size[FM_SPLIT_TRAIN] = 160;
    synth.split_size[FM_SPLIT_TEST] = 16;
    fm_scenario_config sc = fm_scenario_default_config();
    sc.num_sites = 2;
    sc.seed = fm_test_seed();
    fm_site_data *sites = NULL;
    FM_CHECK_OK(fm_federation_split(&sc, &synth, &sites));

    fm_clip *cpu = NULL, *gpu = NULL;
    FM_CHECK_OK(fm_clip_create(&cpu, &c, FM_DEVICE_CPU, 7));
    FM_CHECK_OK(fm_clip_create(&gpu, &c, FM_DEVICE_CUDA, 7));
    fm_site_trainer *tc = NULL, *tg = NULL;
    FM_CHECK_OK(fm_site_trainer_create(&tc, cpu, &synth, tok, sc.label_attr, 8));
    FM_CHECK_OK(fm_site_trainer_create(&tg, gpu, &synth, tok, sc.label_attr, 8));
    const size_t P = fm_clip_num_trainable(cpu);
    fm_strategy_block *blocks = NULL;
    size_t nb = 0;
    FM_CHECK_OK(fm_clip_strategy_blocks(cpu, &blocks, &nb));
    float *start = fm_test_alloc(P * sizeof(float)), *oc = fm_test_alloc(P * sizeof(float));
    float *og = fm_test_alloc(P * sizeof(float)), *plain = fm_test_alloc(P * sizeof(float));
    float *cg = fm_test_alloc(P * sizeof(float)), *ck = fm_test_alloc(P * sizeof(float));
    /* SCAFFOLD: the mean raw gradient over the local steps (ck⁺), collected from the device on the GPU */
    float *gm_c = fm_test_alloc(P * sizeof(float)), *gm_g = fm_test_alloc(P * sizeof(float));
    FM_CHECK_OK(fm_clip_get_trainable(cpu, start, P));
    fm_rng rng = fm_rng_make(fm_test_seed(), 31);
    for (size_t i = 0; i < fm_clip_num_slices(cpu); i++) {
        const fm_clip_slice *s = fm_clip_slice_at(cpu, i);
        if (strstr(s->name, "lora_B"))
            fm_test_fill(&rng, start + s->offset, s->numel, -0.2f, 0.2f);
    }
    fm_test_fill(&rng, cg, P, -0.05f, 0.05f);
    fm_test_fill(&rng, ck, P, -0.05f, 0.05f);
    fm_strategy_config cfg = fm_strategy_default_config(kind);
    cfg.prox_mu = 50.0; /* strong, so that three steps show it */
    cfg.adaptive_mu_w = 1.0;
    cfg.adaptive_skip_layers = 0;
    fm_train_options opt = fm_train_default_options();
    opt.lr = 1e-3;
    for (int k = 0; k < sc.num_sites; k++) {
        fm_local_task task = {.site = k,
                              .round = 2,
                              .seed = 11,
                              .local_steps = 3,
                              .opt = &opt,
                              .strategy = &cfg,
                              .blocks = blocks,
                              .n_blocks = nb,
                              .c_global = kind == FM_STRATEGY_SCAFFOLD ? cg : NULL,
                              .c_local = kind == FM_STRATEGY_SCAFFOLD ? ck : NULL};
        double lc = 0.0, lg = 0.0, lp = 0.0;
        fm_local_task tcpu = task, tgpu = task;
        if (kind == FM_STRATEGY_SCAFFOLD) {
            tcpu.grad_mean_out = gm_c;
            tgpu.grad_mean_out = gm_g;
        }
        FM_CHECK_OK(fm_site_train(tc, &sites[k], &tcpu, start, oc, &lc));
        FM_CHECK_OK(fm_site_train(tg, &sites[k], &tgpu, start, og, &lg));
        if (kind == FM_STRATEGY_SCAFFOLD) {
            const double dgm = fm_test_rel_l2(gm_g, gm_c, P);
            double norm = 0.0;
            for (size_t i = 0; i < P; i++)
                norm += (double)gm_c[i] * gm_c[i];
            norm = sqrt(norm);
            printf("  site %d: mean gradient GPU vs CPU %.2e (bound %.0e), its norm %.3e\n", k, dgm, TOL, norm);
            if (!(dgm <= TOL) || !(norm > 0.0))
                fail_msg("site %d: SCAFFOLD's mean gradient: GPU vs CPU %.3e (bound %.0e), norm %.3e", k, dgm, TOL,
                         norm);
        }
        fm_local_task bare = task;
        bare.strategy = NULL;
        FM_CHECK_OK(fm_site_train(tc, &sites[k], &bare, start, plain, &lp));
        const double dl = fabs(lg - lc) / fabs(lc), dw = fm_test_rel_l2(og, oc, P),
                     effect = fm_test_rel_l2(oc, plain, P);
        printf("  site %d: mean loss %.6f vs %.6f (%.2e), trained vector %.2e (bound %.0e); the correction moved it "
               "by %.2e\n",
               k, lg, lc, dl, dw, TOL, effect);
        if (!(dl <= TOL) || !(dw <= TOL))
            fail_msg("site %d: GPU vs CPU differ: loss %.3e, vector %.3e (bound %.0e)", k, dl, dw, TOL);
        if (!(effect > 10 * TOL))
            fail_msg("site %d: the %s correction changed the trained vector by only %.3e", k, fm_strategy_name(kind),
                     effect);
    }
    free(start);
    free(oc);
    free(og);
    free(plain);
    free(cg);
    free(ck);
    free(gm_c);
    free(gm_g);
    free(blocks);
    fm_site_trainer_destroy(tc);
    fm_site_trainer_destroy(tg);
    fm_clip_destroy(cpu);
    fm_clip_destroy(gpu);
    fm_site_data_free(sites, sc.num_sites);
    fm_tokenizer_free(tok);
}

static void test_fedprox(void **state)
{
    (void)state;
    corrected_case(FM_STRATEGY_FEDPROX);
}

static void test_adaptive_reg(void **state)
{
    (void)state;
    corrected_case(FM_STRATEGY_ADAPTIVE_REG);
}

static void test_scaffold(void **state)
{
    (void)state;
    corrected_case(FM_STRATEGY_SCAFFOLD);
}

int main(void)
{
    char why[384];
    if (fm_cuda_device_count(why, sizeof why) == 0)
        return fm_gpu_test_no_device("gpu.aggregate_site", why);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fedprox),
        cmocka_unit_test(test_adaptive_reg),
        cmocka_unit_test(test_scaffold),
    };
    return cmocka_run_group_tests_name("fm_site_train with site corrections, GPU against CPU", tests, NULL, NULL) ? 1
                                                                                                                  : 0;
}
