/* Training and evaluation of the CLIP model on a paired dataset: AdamW with a warm-up + cosine schedule,
 * global-norm clipping, and the evaluation every fedmm command reports (retrieval R@1/5/10 both ways,
 * zero-shot accuracy). The federated trainers reuse these for each site's local steps. */
#ifndef FEDMM_TRAIN_H
#define FEDMM_TRAIN_H

#include <stdint.h>

#include "fedmm/clip.h"
#include "fedmm/dataset.h"
#include "fedmm/dp.h"
#include "fedmm/hparams.h"
#include "fedmm/metrics.h"
#include "fedmm/rng.h"
#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_train_options {
    int64_t steps; /* optimizer steps */
    int batch_size;
    double lr;            /* peak learning rate */
    double min_lr_ratio;  /* cosine floor as a fraction of lr (default 0.1) */
    int64_t warmup_steps; /* linear warm-up from 0 */
    double weight_decay;  /* AdamW decoupled decay on matrices (default 0.1); never on biases, norms, logit_scale */
    double beta1, beta2, eps;
    double grad_clip; /* global L2 norm; 0 disables */
    uint64_t seed;    /* data order */
    /* Data parallelism (include/fedmm/dp.h): the gradient is averaged over the group's ranks after backward, before
     * clipping; NULL (the default) = this process alone. Borrowed. */
    fm_dp *dp;
} fm_train_options;

/* lr 5e-4, 1000 steps, batch 32, warm-up 50, cosine to 0.1·lr, wd 0.1, betas (0.9, 0.98), eps 1e-6,
 * clip 1.0, seed 0 (CLIP's AdamW settings). */
fm_train_options fm_train_default_options(void);

/* Learning rate at step t (0-based) of T: linear warm-up over W steps, then cosine from lr to
 * min_ratio·lr. */
double fm_lr_at(const fm_train_options *opt, int64_t t);

/* AdamW state for a model's trainable vector (on the model's device). */
typedef struct fm_optimizer fm_optimizer;
fm_status fm_optimizer_create(fm_optimizer **out, fm_clip *model);
void fm_optimizer_destroy(fm_optimizer *opt);
int64_t fm_optimizer_step_count(const fm_optimizer *opt);
/* Resets moments and the step count (a site starting a new round of local training, say). */
fm_status fm_optimizer_reset(fm_optimizer *opt);

/* An exponential moving average of a model's trainable vector (Polyak averaging, train.ema_decay): avg ← β·avg +
 * (1 − β)·w after every optimizer step, on the model's device; it starts at the model's vector when created. The
 * average is what a run evaluates and saves; the optimizer keeps stepping the model's own vector. */
typedef struct fm_weight_average fm_weight_average;
/* decay β in (0, 1) */
fm_status fm_weight_average_create(fm_weight_average **out, fm_clip *model, double decay);
void fm_weight_average_destroy(fm_weight_average *avg);
size_t fm_weight_average_size(const fm_weight_average *avg);
/* avg ← β·avg + (1 − β)·(the model's trainable vector); the same bits on CPU and GPU (fm_agg_weighted_sum) */
fm_status fm_weight_average_update(fm_weight_average *avg);
/* Restarts the average at the model's current vector. */
fm_status fm_weight_average_restart(fm_weight_average *avg);
/* Exchanges the model's trainable vector and the average: swap, evaluate or save, swap back. */
fm_status fm_weight_average_swap(fm_weight_average *avg);
/* 1 while the average is swapped into the model (the model then holds the average, the average the weights). */
int fm_weight_average_swapped(const fm_weight_average *avg);
/* The average to or from n host floats (set refuses non-finite values and leaves the average unchanged). */
fm_status fm_weight_average_get(const fm_weight_average *avg, float *host);
fm_status fm_weight_average_set(fm_weight_average *avg, const float *host);

/* A training checkpoint in one safetensors file, written atomically: the trainable vector, the AdamW
 * moments, the step count and, when avg is not NULL, the weight average, so a resumed run continues exactly
 * where the saved one stood. Loading checks the vector length, refuses a file with a weight average when avg is
 * NULL and one without when it is not (the run would not continue as it started), and leaves model, optimizer
 * and average unchanged on any error. */
fm_status fm_checkpoint_save(fm_clip *model, const fm_optimizer *opt, const fm_weight_average *avg, const char *path);
fm_status fm_checkpoint_load(fm_clip *model, fm_optimizer *opt, fm_weight_average *avg, const char *path);

/* Endless shuffled passes over a set of sample indices (a new permutation each epoch, from the seed). */
typedef struct fm_sampler {
    int64_t *indices; /* the pool (owned) */
    int64_t count;
    int32_t *perm;
    int64_t pos;
    uint64_t epoch;
    uint64_t seed;
} fm_sampler;
/* Over `indices` (copied) or, when indices is NULL, over 0..count-1. */
fm_status fm_sampler_init(fm_sampler *s, const int64_t *indices, int64_t count, uint64_t seed);
void fm_sampler_next(fm_sampler *s, int64_t *out, int n);
void fm_sampler_free(fm_sampler *s);

/* Scratch for one batch on the host. */
typedef struct fm_batch {
    int capacity;
    float *images;   /* (capacity, 3, S, S) */
    int32_t *tokens; /* (capacity, ctx) */
    int32_t *eot;    /* (capacity) */
    fm_synth_labels *labels;
    int64_t *idx;
} fm_batch;
fm_status fm_batch_alloc(fm_batch *b, int capacity, int image_size, int context_len);
void fm_batch_free(fm_batch *b);

/* Clips the model's accumulated gradient (o->grad_clip; a non-finite norm is FM_ERR_NOT_FINITE and changes
 * nothing) and applies one AdamW step with learning rate lr, weight decay on the slices that take it. */
fm_status fm_optimizer_apply(fm_clip *model, fm_optimizer *opt, const fm_train_options *o, double lr, float *grad_norm);

/* One optimizer step: zero grads, forward + backward on `batch` (B samples), clip, AdamW with `lr`.
 * A non-finite loss or gradient norm leaves the parameters untouched and returns FM_ERR_NOT_FINITE. */
fm_status fm_train_step(fm_clip *model, fm_optimizer *opt, const fm_train_options *o, const fm_batch *batch, int B,
                        double lr, float *loss, float *grad_norm);

typedef struct fm_eval_result {
    fm_retrieval retrieval;
    double zs_acc;                     /* mean over the attributes below; NaN for data without labels */
    double zs_acc_attr[FM_ATTR_COUNT]; /* per attribute of the built-in dataset */
    double loss;                       /* mean contrastive loss over the evaluated batches */
    int64_t pairs;
} fm_eval_result;

/* Evaluates on the first `n` samples of `ds` (n ≤ size; 0 = all). */
fm_status fm_evaluate(fm_clip *model, const fm_dataset *ds, int64_t n, fm_eval_result *out);

#ifdef __cplusplus
}
#endif
#endif
