/* A federated site's local training (fm_site_train, what `fedmm sim` and `fedmm client` run for each site) on the
 * GPU against the CPU: a few AdamW steps of the tiny model from the same global vector on the same site data, under
 * the aligned scenario (every sample paired: CLIP's own loss) and the missing-modality one (image-only and
 * text-only samples: the class-prompt losses through fm_clip_forward / fm_clip_backward), in fp32 and in bf16, and
 * with FedProx's proximal term (the site-side correction then runs on the device too).
 * Compared: the trained vector (relative L2 over the vector, ‖gpu − cpu‖₂ / ‖cpu‖₂) and the mean training loss;
 * bounds fp32 1e-5, bf16 1e-2 (three steps: the differences of one step, carried). Needs a GPU; reports itself
 * skipped (77) without one. */
#include "gpu_test.h"

#include <math.h>

#include "fedmm/clip.h"
#include "fedmm/device.h"
#include "fedmm/modality.h"
#include "fedmm/site_train.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"

/* strategy: NULL (FedAvg: no site-side correction) or a site-side correction such as FedProx's proximal term,
 * which then runs on the model's device (src/fl/strategy_site.c) */
static void site_case(fm_scenario scenario, fm_precision prec, const fm_strategy_config *strategy)
{
    const double tol = prec == FM_PRECISION_BF16 ? 1e-2 : 1e-5;
    printf("%s scenario, %s on the GPU, %s\n", fm_scenario_name(scenario), fm_precision_name(prec),
           strategy ? fm_strategy_name(strategy->kind) : "no site-side correction");
    fm_tokenizer *tok = NULL;
    FM_CHECK_OK(fm_tokenizer_builtin(&tok));
    fm_clip_config c;
    FM_CHECK_OK(fm_clip_config_preset("clip-tiny", &c));
    c.vocab_size = fm_tokenizer_vocab_size(tok);
    c.lora_targets = FM_LORA_ALL;
    fm_clip_config cg = c;
    cg.precision = prec;
    fm_synth_config synth = fm_synth_default_config();
    synth.seed = fm_test_seed();
    synth.image_size = c.image_size;
    synth.split_size[FM_SPLIT_TRAIN] = 240;
    synth.split_size[FM_SPLIT_TEST] = 16;
    fm_scenario_config sc = fm_scenario_default_config();
    sc.scenario = scenario;
    sc.num_sites = 3;
    sc.missing_rate = 0.4;
    sc.seed = fm_test_seed();
    fm_site_data *sites = NULL;
    FM_CHECK_OK(fm_federation_split(&sc, &synth, &sites));

    fm_clip *cpu = NULL, *gpu = NULL;
    FM_CHECK_OK(fm_clip_create(&cpu, &c, FM_DEVICE_CPU, 7));
    FM_CHECK_OK(fm_clip_create(&gpu, &cg, FM_DEVICE_CUDA, 7));
    fm_site_trainer *tc = NULL, *tg = NULL;
    FM_CHECK_OK(fm_site_trainer_create(&tc, cpu, &synth, tok, sc.label_attr, 8));
    FM_CHECK_OK(fm_site_trainer_create(&tg, gpu, &synth, tok, sc.label_attr, 8));
    const size_t P = fm_clip_num_trainable(cpu);
    float *start = fm_test_alloc(P * sizeof(float)), *oc = fm_test_alloc(P * sizeof(float));
    float *og = fm_test_alloc(P * sizeof(float));
    FM_CHECK_OK(fm_clip_get_trainable(cpu, start, P));
    /* a global vector whose adapters are already non-zero, as after a few rounds */
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    for (size_t i = 0; i < fm_clip_num_slices(cpu); i++) {
        const fm_clip_slice *s = fm_clip_slice_at(cpu, i);
        if (strstr(s->name, "lora_B"))
            fm_test_fill(&rng, start + s->offset, s->numel, -0.2f, 0.2f);
    }
    fm_train_options opt = fm_train_default_options();
    opt.lr = 1e-3;
    fm_strategy_block *blocks = NULL;
    size_t nb = 0;
    FM_CHECK_OK(fm_clip_strategy_blocks(cpu, &blocks, &nb));
    for (int k = 0; k < sc.num_sites; k++) {
        fm_local_task task = {.site = k,
                              .round = 1,
                              .seed = 11,
                              .local_steps = 3,
                              .opt = &opt,
                              .strategy = strategy,
                              .blocks = blocks,
                              .n_blocks = nb};
        double lc = 0.0, lg = 0.0;
        FM_CHECK_OK(fm_site_train(tc, &sites[k], &task, start, oc, &lc));
        FM_CHECK_OK(fm_site_train(tg, &sites[k], &task, start, og, &lg));
        double dl = fabs(lg - lc) / fabs(lc), dw = fm_test_rel_l2(og, oc, P);
        printf("  site %d (%s, %lld samples: %lld paired, %lld image-only, %lld text-only): mean loss %.6f vs %.6f "
               "(%.2e), trained vector %.2e (bound %.0e)\n",
               k, fm_modality_name(sites[k].modality), (long long)sites[k].n, (long long)sites[k].n_paired,
               (long long)sites[k].n_image, (long long)sites[k].n_text, lg, lc, dl, dw, tol);
        if (!(dl <= tol) || !(dw <= tol))
            fail_msg("site %d: GPU vs CPU differ: loss %.3e, vector %.3e (bound %.0e)", k, dl, dw, tol);
        /* the vector moved: the comparison is of training, not of two copies of the start */
        if (!(fm_test_rel_l2(oc, start, P) > 1e-6))
            fail_msg("site %d: local training did not change the vector", k);
    }
    free(blocks);
    free(start);
    free(oc);
    free(og);
    fm_site_trainer_destroy(tc);
    fm_site_trainer_destroy(tg);
    fm_clip_destroy(cpu);
    fm_clip_destroy(gpu);
    fm_site_data_free(sites, sc.num_sites);
    fm_tokenizer_free(tok);
}

static void test_aligned_fp32(void **state)
{
    (void)state;
    site_case(FM_SCENARIO_ALIGNED, FM_PRECISION_FP32, NULL);
}

static void test_missing_fp32(void **state)
{
    (void)state;
    site_case(FM_SCENARIO_MISSING, FM_PRECISION_FP32, NULL);
}

static void test_missing_bf16(void **state)
{
    (void)state;
    site_case(FM_SCENARIO_MISSING, FM_PRECISION_BF16, NULL);
}

static void test_fedprox_fp32(void **state)
{
    (void)state;
    fm_strategy_config prox = fm_strategy_default_config(FM_STRATEGY_FEDPROX);
    prox.prox_mu = 0.5; /* large enough to matter in three steps */
    site_case(FM_SCENARIO_ALIGNED, FM_PRECISION_FP32, &prox);
}

int main(void)
{
    char why[384];
    if (fm_cuda_device_count(why, sizeof why) == 0)
        return fm_gpu_test_no_device("gpu.model_site", why);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aligned_fp32),
        cmocka_unit_test(test_missing_fp32),
        cmocka_unit_test(test_missing_bf16),
        cmocka_unit_test(test_fedprox_fp32),
    };
    return cmocka_run_group_tests_name("fm_site_train, GPU against CPU", tests, NULL, NULL) ? 1 : 0;
}
