/* What a federated round does on each side, shared by `fedmm sim` (all sites in one process) and by
 * `fedmm server` / `fedmm client` (one process each), so the three compute bit-identical results on the CPU:
 * which sites a round samples, how one site trains locally from the global vector, and which parameter blocks
 * a site of a given modality trains (and sends back). */
#ifndef FEDMM_SITE_TRAIN_H
#define FEDMM_SITE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/clip.h"
#include "fedmm/modality.h"
#include "fedmm/site_objective.h"
#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"
#include "fedmm/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most sites one round may sample. */
#define FM_MAX_SITES_PER_ROUND 4096

/* The m sites round `round` trains, in ascending site order: the first m entries of a permutation of
 * [0, num_sites) drawn from fm_rng_make(seed, 0x517E0000 + round), sorted. chosen receives m ints.
 * FM_ERR_CONFIG unless 1 ≤ m ≤ min(num_sites, FM_MAX_SITES_PER_ROUND). */
fm_status fm_round_sites(uint64_t seed, int round, int num_sites, int m, int *chosen);

/* The blocks (the model's trainable slices) a site of `modality` trains: trained[b] = 1 or 0 for each of the
 * fm_clip_num_slices(m) slices; *numel_up (may be NULL) gets the number of floats in the trained blocks. */
void fm_site_trained_blocks(const fm_clip *m, fm_modality modality, uint8_t *trained, size_t *numel_up);

/* The model's slice table as strategy blocks (names borrowed from the model). *out (free()) gets
 * fm_clip_num_slices(m) entries. */
fm_status fm_clip_strategy_blocks(const fm_clip *m, fm_strategy_block **out, size_t *n_blocks);

/* One site's local trainer: owns the train split's dataset, the class prompts, the optimizer and the batch
 * buffers; borrows the model (its trainable vector is overwritten by every fm_site_train call). */
typedef struct fm_site_trainer fm_site_trainer;

fm_status fm_site_trainer_create(fm_site_trainer **out, fm_clip *model, const fm_synth_config *synth,
                                 const fm_tokenizer *tok, fm_attribute label_attr, int batch_size);
/* NULL is a no-op. */
void fm_site_trainer_destroy(fm_site_trainer *t);

/* One site's round of local training. */
typedef struct fm_local_task {
    int site;                           /* k */
    int round;                          /* 1..R */
    uint64_t seed;                      /* the run's fl.seed: the data order is seeded from (seed, round, k) */
    int64_t local_steps;                /* ≥ 1 */
    const fm_train_options *opt;        /* AdamW settings; the moments start from zero */
    const fm_strategy_config *strategy; /* site-side corrections (FedProx, adaptive reg, SCAFFOLD); NULL = none */
    const fm_strategy_block *blocks;    /* the model's blocks (adaptive regularization) */
    size_t n_blocks;
    const float *c_global, *c_local; /* SCAFFOLD's c and ck (P floats each), else NULL */
    float *grad_mean_out; /* SCAFFOLD: receives the mean over the local steps of the raw minibatch gradient, before
                           * the correction (P host floats: fm_scaffold_site_update's ck⁺); NULL = not wanted */
} fm_local_task;

/* Trains `site` from `start` (P host floats, the global vector) for task->local_steps steps and writes the
 * trained vector to local_out (P host floats); *mean_loss gets the mean training loss over the steps.
 * FM_ERR_NOT_FINITE if a loss goes non-finite. */
fm_status fm_site_train(fm_site_trainer *t, const fm_site_data *site, const fm_local_task *task, const float *start,
                        float *local_out, double *mean_loss);

#ifdef __cplusplus
}
#endif
#endif
