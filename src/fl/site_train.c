/* The pieces of a federated round that the simulation and the networked server/client must compute identically:
 * the round's site sample, one site's local training, and the blocks a site trains. */
#include "fedmm/site_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/dataset.h"
#include "fedmm/device.h"
#include "fedmm/rng.h"

fm_status fm_round_sites(uint64_t seed, int round, int num_sites, int m, int *chosen)
{
    if (num_sites < 1 || m < 1 || m > num_sites || m > FM_MAX_SITES_PER_ROUND)
        return fm_error(FM_ERR_CONFIG, "round sampling: %d sites per round of %d sites (at most %d per round)", m,
                        num_sites, FM_MAX_SITES_PER_ROUND);
    int32_t *order = malloc((size_t)num_sites * sizeof *order);
    if (!order)
        return fm_error(FM_ERR_NO_MEMORY, "round sampling: out of memory");
    fm_rng rng = fm_rng_make(seed, 0x517E0000ULL + (uint64_t)round);
    fm_rng_permutation(&rng, order, (size_t)num_sites);
    for (int i = 0; i < m; i++)
        chosen[i] = order[i];
    free(order);
    /* ascending, so the aggregate does not depend on the draw's order */
    for (int i = 1; i < m; i++)
        for (int j = i; j > 0 && chosen[j - 1] > chosen[j]; j--) {
            int t = chosen[j];
            chosen[j] = chosen[j - 1];
            chosen[j - 1] = t;
        }
    return FM_OK;
}

void fm_site_trained_blocks(const fm_clip *m, fm_modality modality, uint8_t *trained, size_t *numel_up)
{
    size_t up = 0;
    const size_t nb = fm_clip_num_slices(m);
    for (size_t b = 0; b < nb; b++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, b);
        trained[b] = (uint8_t)fm_site_trains_slice(modality, sl);
        up += trained[b] ? sl->numel : 0;
    }
    if (numel_up)
        *numel_up = up;
}

fm_status fm_clip_strategy_blocks(const fm_clip *m, fm_strategy_block **out, size_t *n_blocks)
{
    const fm_clip_config *cfg = fm_clip_get_config(m);
    const size_t nb = fm_clip_num_slices(m);
    fm_strategy_block *blocks = calloc(nb ? nb : 1, sizeof *blocks);
    if (!blocks)
        return fm_error(FM_ERR_NO_MEMORY, "strategy blocks: out of memory");
    for (size_t i = 0; i < nb; i++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, i);
        blocks[i] =
            (fm_strategy_block){.name = sl->name,
                                .offset = sl->offset,
                                .numel = sl->numel,
                                .layer = sl->layer,
                                .n_layers = sl->tower == FM_CLIP_TOWER_VISION ? cfg->vision_layers : cfg->text_layers};
    }
    *out = blocks;
    *n_blocks = nb;
    return FM_OK;
}

struct fm_site_trainer {
    fm_clip *model;
    fm_device device;
    size_t P;
    int B;
    fm_attribute label_attr;
    fm_dataset *train;
    fm_class_prompts prompts;
    fm_optimizer *opt;
    fm_batch batch;
    uint8_t *bmod;    /* (B) */
    int32_t *blabels; /* (B) */
    int64_t *pos;     /* (B) positions within a site */
    float *grad_host; /* (P) a device gradient's host copy, for fm_local_task.grad_mean_out; allocated on first use */
};

void fm_site_trainer_destroy(fm_site_trainer *t)
{
    if (!t)
        return;
    fm_optimizer_destroy(t->opt);
    fm_batch_free(&t->batch);
    fm_class_prompts_free(&t->prompts);
    fm_dataset_destroy(t->train);
    free(t->bmod);
    free(t->blabels);
    free(t->pos);
    free(t->grad_host);
    free(t);
}

fm_status fm_site_trainer_create(fm_site_trainer **out, fm_clip *model, const fm_synth_config *synth,
                                 const fm_tokenizer *tok, fm_attribute label_attr, int batch_size)
{
    *out = NULL;
    if (batch_size < 2)
        return fm_error(FM_ERR_CONFIG, "site trainer: batch_size %d must be >= 2", batch_size);
    fm_site_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return fm_error(FM_ERR_NO_MEMORY, "site trainer: out of memory");
    const fm_clip_config *cfg = fm_clip_get_config(model);
    t->model = model;
    t->device = fm_clip_device(model);
    t->P = fm_clip_num_trainable(model);
    t->B = batch_size;
    t->label_attr = label_attr;
    fm_status st = fm_dataset_synth(&t->train, synth, FM_SPLIT_TRAIN, tok, cfg->context_length);
    if (st == FM_OK)
        st = fm_class_prompts_build(t->train, label_attr, &t->prompts);
    if (st == FM_OK)
        st = fm_optimizer_create(&t->opt, model);
    if (st == FM_OK)
        st = fm_batch_alloc(&t->batch, batch_size, cfg->image_size, cfg->context_length);
    if (st == FM_OK) {
        t->bmod = calloc((size_t)batch_size, 1);
        t->blabels = calloc((size_t)batch_size, sizeof *t->blabels);
        t->pos = calloc((size_t)batch_size, sizeof *t->pos);
        if (!t->bmod || !t->blabels || !t->pos)
            st = fm_error(FM_ERR_NO_MEMORY, "site trainer: out of memory");
    }
    if (st != FM_OK) {
        fm_site_trainer_destroy(t);
        return st;
    }
    *out = t;
    return FM_OK;
}

/* sum (P host floats) += the model's trainable gradient; a device gradient is copied to the host first (one
 * P-float copy a local step, SCAFFOLD only). */
static fm_status add_gradient(fm_site_trainer *t, float *sum)
{
    const float *g = fm_clip_trainable_grad(t->model);
    if (t->device != FM_DEVICE_CPU) {
        FM_TRY(fm_device_copy(t->grad_host, FM_DEVICE_CPU, g, t->device, t->P * sizeof(float)));
        g = t->grad_host;
    }
    for (size_t i = 0; i < t->P; i++)
        sum[i] += g[i];
    return FM_OK;
}

static uint64_t mix(uint64_t a, uint64_t b) { return (a ^ (b + 0x9E3779B97F4A7C15ULL + (a << 6) + (a >> 2))); }

fm_status fm_site_train(fm_site_trainer *t, const fm_site_data *site, const fm_local_task *task, const float *start,
                        float *local_out, double *mean_loss)
{
    const int B = t->B;
    const int k = task->site, round = task->round;
    if (task->local_steps < 1 || site->n < 1)
        return fm_error(FM_ERR_INVALID_ARG, "site %d: %lld local steps on %lld samples", k,
                        (long long)task->local_steps, (long long)site->n);
    FM_TRY(fm_device_copy(fm_clip_trainable(t->model), t->device, start, FM_DEVICE_CPU, t->P * sizeof(float)));
    FM_TRY(fm_optimizer_reset(t->opt));
    /* LoRA dropout masks depend on the model's step counter: make them a function of (round, site) so that a
     * resumed run, and a site in its own process, draw the same masks as an uninterrupted simulation. */
    FM_TRY(fm_clip_set_dropout_step(t->model, ((uint64_t)round << 28) | ((uint64_t)(unsigned)k << 12)));
    fm_site_correction corr;
    memset(&corr, 0, sizeof corr);
    if (task->strategy)
        FM_TRY(fm_site_correction_prepare(&corr, task->strategy, t->P, task->blocks, task->n_blocks, start,
                                          task->c_global, task->c_local));
    const int corrected = corr.anchor || corr.c_global;
    if (corrected && t->device != FM_DEVICE_CPU) {
        /* the model's vectors live on its device: the correction's go there too (kernels/aggregate.cu) */
        fm_status ds = fm_site_correction_to_device(&corr, t->device, t->P);
        if (ds != FM_OK) {
            fm_site_correction_free(&corr);
            return ds;
        }
    }
    float *gsum = task->grad_mean_out;
    if (gsum) {
        if (t->device != FM_DEVICE_CPU && !t->grad_host && !(t->grad_host = malloc(t->P * sizeof(float)))) {
            fm_site_correction_free(&corr);
            return fm_error(FM_ERR_NO_MEMORY, "site %d: out of memory for the mean gradient", k);
        }
        memset(gsum, 0, t->P * sizeof(float));
    }
    fm_sampler smp;
    fm_status st = fm_sampler_init(&smp, NULL, site->n, mix(mix(task->seed, (uint64_t)round), (uint64_t)k));
    double loss_sum = 0.0;
    for (int64_t step = 0; st == FM_OK && step < task->local_steps; step++) {
        fm_sampler_next(&smp, t->pos, B);
        for (int i = 0; i < B; i++) {
            t->batch.idx[i] = site->indices[t->pos[i]];
            t->bmod[i] = site->sample_modality[t->pos[i]];
        }
        st = fm_dataset_batch(t->train, t->batch.idx, B, t->batch.images, t->batch.tokens, t->batch.eot,
                              t->batch.labels);
        for (int i = 0; i < B; i++)
            t->blabels[i] = t->batch.labels[i].attr[t->label_attr];
        fm_site_batch sb = {.B = B,
                            .images = t->batch.images,
                            .tokens = t->batch.tokens,
                            .eot = t->batch.eot,
                            .labels = t->blabels,
                            .modality = t->bmod};
        float loss = 0.0f;
        if (st == FM_OK)
            st = fm_clip_zero_grad(t->model);
        if (st == FM_OK)
            st = fm_site_loss_backward(t->model, &sb, &t->prompts, &loss);
        if (st == FM_OK && !isfinite(loss))
            st = fm_error(FM_ERR_NOT_FINITE, "site %d round %d step %lld: loss is %f", k, round, (long long)step,
                          (double)loss);
        if (st == FM_OK && gsum) /* the raw gradient, before the correction: SCAFFOLD's ck⁺ is its mean */
            st = add_gradient(t, gsum);
        if (st == FM_OK && corrected) /* on the model's device: corr was moved there above */
            st = fm_site_correct_grad(fm_clip_trainable_grad(t->model), fm_clip_trainable(t->model), &corr, t->P);
        if (st == FM_OK)
            st = fm_optimizer_apply(t->model, t->opt, task->opt, task->opt->lr, NULL);
        loss_sum += loss;
    }
    fm_sampler_free(&smp);
    fm_site_correction_free(&corr);
    FM_TRY(st);
    if (gsum) {
        const float inv = 1.0f / (float)task->local_steps;
        for (size_t i = 0; i < t->P; i++)
            gsum[i] *= inv;
    }
    *mean_loss = loss_sum / (double)task->local_steps;
    return fm_device_copy(local_out, FM_DEVICE_CPU, fm_clip_trainable(t->model), t->device, t->P * sizeof(float));
}
