/* CreamFL (Yu et al., ICLR 2023): representation-level federated learning on a public proxy set P. Sites of
 * any architecture and modality (paired, image-only, text-only) never send parameters: each round the server
 * trains on P and sends its representations of P (ig, tg); sampled sites train on their private data plus
 * λ·(L_intra + L_inter) against them and send back their own representations of P; the server fuses those with
 * the global–local cross-modal ensemble and distills its model towards the fused ones (DESIGN.md §2B).
 *
 * The math pieces (ensemble, regularisers) work on host float matrices and are usable on their own; the
 * in-process simulation (fm_creamfl_run) drives whole runs. The ensemble is a streaming, tiled computation:
 * the per-site log-sum-exp over all of P is accumulated tile by tile, so memory is O(|P|·d + tile), never
 * O(|P|²). CPU only so far (a CUDA twin belongs in kernels/). */
#ifndef FEDMM_CREAMFL_H
#define FEDMM_CREAMFL_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/clip.h"
#include "fedmm/status.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"
#include "fedmm/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the global–local cross-modal ensemble --------------------------------------------------------------- */

/* Tile sizes of the streaming log-sum-exp; 0 picks the default (256 rows × 2048 columns: an 2 MiB scratch). */
typedef struct fm_creamfl_tiles {
    size_t rows;
    size_t cols;
} fm_creamfl_tiles;

/* Per-sample scores of K sites against the other modality's global representations:
 *   scores[k·n + p] = reps[k][p]·global[p] − log Σ_{j<n} exp(reps[k][p]·global[j])
 * reps: K pointers to (n, d) host matrices (one site's representations of P), global (n, d), scores (K, n).
 * Memory beyond the inputs: one tile of rows × cols floats and 2·rows running sums. The tile products run on
 * OpenBLAS's threads; deterministic for a given thread count. */
fm_status fm_creamfl_ensemble_scores(const float *const *reps, int K, const float *global, size_t n, size_t d,
                                     fm_creamfl_tiles tiles, float *scores);

/* The fused representations agg (n, d): agg[p] = Σ_k w_k(p)·reps[k][p], with w_k(p) = softmax over k of the
 * scores above (plain_mean: w_k(p) = 1/K, the ablation, and no scores are computed). weights (K, n) receives
 * w_k(p) when non-NULL. K ≥ 1. */
fm_status fm_creamfl_ensemble(const float *const *reps, int K, const float *global, size_t n, size_t d,
                              fm_creamfl_tiles tiles, int plain_mean, float *agg, float *weights);

/* ---- the site regularisers (gradients with respect to L2-normalised embeddings) --------------------------- */

/* L_inter = (1/B) Σ_b CE([z_b·U_j/τ]_{j<n}, pos_b): each embedding z_b (row b of z, (B, d)) against all n
 * global representations of the other modality U (n, d), its own public sample pos_b the positive. Streams
 * over U in tiles (memory O(B·(d + cols))). *loss gets L_inter; dz (B, d), when non-NULL, ACCUMULATES
 * scale·dL_inter/dz. */
fm_status fm_creamfl_inter_loss(const float *z, int B, size_t d, const float *U, size_t n, const int64_t *pos,
                                float tau, float scale, float *dz, float *loss);

/* L_intra = (1/B) Σ_b −log( e^{z_b·g_b/τ} / (e^{z_b·g_b/τ} + e^{z_b·o_b/τ}) ) with g the global representations
 * of the same modality and o the site model's own from the start of the round (rows of zg, zold, (B, d)).
 * *loss gets L_intra; dz ACCUMULATES scale·dL_intra/dz when non-NULL. */
fm_status fm_creamfl_intra_loss(const float *z, const float *zg, const float *zold, int B, size_t d, float tau,
                                float scale, float *dz, float *loss);

/* Rounds every value to the nearest bfloat16 (ties to even), in place: what a representation sent as bf16
 * arrives as. */
void fm_creamfl_round_bf16(float *x, size_t n);

/* ---- the in-process simulation -------------------------------------------------------------------------- */

/* The three kinds of site. */
typedef enum fm_creamfl_site_kind {
    FM_CREAMFL_PAIRED = 0, /* private image–text pairs (train split); CLIP loss */
    FM_CREAMFL_IMAGE = 1,  /* labelled images only (image_only split); CE against the class prompts */
    FM_CREAMFL_TEXT = 2,   /* labelled captions only (text_only split); prompt matching */
    FM_CREAMFL_KINDS = 3
} fm_creamfl_site_kind;

/* "paired", "image", "text". */
const char *fm_creamfl_site_kind_name(fm_creamfl_site_kind kind);

typedef struct fm_creamfl_options {
    fm_clip_config server;                       /* server model (the one evaluated and returned) */
    fm_clip_config site_model[FM_CREAMFL_KINDS]; /* model of each kind of site (embed_dim, image_size and
                                                    context_length must equal the server's) */
    int num_sites[FM_CREAMFL_KINDS];             /* 0 of every kind: the server trains on P alone (baseline) */
    int64_t public_size;                         /* |P|: the first public_size samples of the public split */
    int rounds;
    int sites_per_round;         /* sampled uniformly without replacement from all sites */
    int64_t local_steps;         /* per sampled site per round: each step one private and one public batch */
    int64_t server_steps;        /* CLIP-loss steps of the server on P per round */
    int64_t distill_steps;       /* distillation steps per round (batches of P) */
    fm_train_options local;      /* sites' AdamW (batch_size, lr, wd, betas, eps, grad_clip); moments reset per round */
    fm_train_options server_opt; /* server's AdamW; one state for training and distillation, kept across rounds */
    float lambda;                /* weight of L_intra + L_inter (0.5) */
    float tau;                   /* temperature of the regularisers (0.5) */
    float kappa;                 /* distillation weight (0.3) */
    int rep_bf16;                /* 1: representations travel as bf16 (both ways) */
    int ensemble;                /* 1: global–local ensemble; 0: plain mean (ablation) */
    int inter, intra;            /* 1: the regulariser is on (ablations turn one off) */
    fm_attribute label_attr;     /* labels of the uni-modal sites */
    fm_creamfl_tiles tiles;
    int eval_every;      /* evaluate the server every k rounds (and after the last); 0 = last only */
    int64_t eval_size;   /* test pairs per evaluation */
    uint64_t seed;       /* models, site sampling, data order */
    const char *out_dir; /* metrics.jsonl (unless metrics_path), summary.csv */
    const char *metrics_path;
    int progress;
} fm_creamfl_options;

/* Defaults: λ 0.5, τ 0.5, κ 0.3, fp32, ensemble and both regularisers on, 10 rounds, 2 sites of each kind,
 * 3 per round, |P| 500, 10 local / 10 server / 10 distill steps, batch 32, lr 1e-3, label attribute kind,
 * evaluation every round on 500 pairs. The model configs are zeroed: the caller sets them. */
fm_creamfl_options fm_creamfl_default_options(void);

/* FM_ERR_CONFIG naming the first bad field (sizes, sites per round vs sites, mismatched embed_dim / image
 * size / context length between the server and any kind of site that is present). */
fm_status fm_creamfl_validate(const fm_creamfl_options *o, const fm_synth_config *synth);

typedef struct fm_creamfl_result {
    int rounds_done;
    fm_eval_result last_eval;
    double bytes_up, bytes_down; /* representations over the whole run */
    double wall_s;
    double ensemble_s; /* time spent in the ensemble */
} fm_creamfl_result;

/* Runs a CreamFL federation on the built-in dataset. *server_out (when non-NULL) receives the trained server
 * model (the caller destroys it). */
fm_status fm_creamfl_run(const fm_creamfl_options *o, const fm_synth_config *synth, const fm_tokenizer *tok,
                         fm_device device, fm_creamfl_result *result, fm_clip **server_out);

#ifdef __cplusplus
}
#endif
#endif
