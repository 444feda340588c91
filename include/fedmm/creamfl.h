/* CreamFL (Yu et al., ICLR 2023): representation-level federated learning on a public proxy set P. Sites of
 * any architecture and modality (paired, image-only, text-only) never send parameters: each round the server
 * trains on P and sends its representations of P (ig, tg); sampled sites train on their private data plus
 * λ·(L_intra + L_inter) against them and send back their own representations of P; the server fuses those with
 * the global–local cross-modal ensemble and distills its model towards the fused ones (DESIGN.md §2B).
 *
 * The math pieces (ensemble, regularisers) work on host float matrices and are usable on their own; the
 * in-process simulation (fm_creamfl_run) drives whole runs; the server's and a site's parts of a round are callable
 * apart (fm_creamfl_server_*, fm_creamfl_site_*), which `fedmm server` / `fedmm client` run in separate processes. The
 * ensemble is a streaming, tiled computation: the per-site log-sum-exp over all of P is accumulated tile by tile, so
 * memory is O(|P|·d + tile), never O(|P|²). On the CPU (OpenBLAS tiles) or on a GPU (cuBLASLt tiles and
 * kernels/creamfl_ensemble.cu): fm_creamfl_ensemble_dev / fm_creamfl_ensemble_staged below pick by device. */
#ifndef FEDMM_CREAMFL_H
#define FEDMM_CREAMFL_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/clip.h"
#include "fedmm/modality.h"
#include "fedmm/status.h"
#include "fedmm/synth.h"
#include "fedmm/tensor.h"
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

/* The fusion step on its own: scores (K, n) from fm_creamfl_ensemble_scores are turned IN PLACE into the weights
 * w_k(p) = softmax over k, and agg (n, d) = Σ_k w_k(p)·reps[k][p]. scores NULL: the plain mean (w = 1/K). For a
 * caller that wants the scores too (the simulation logs how well each site's representations align). */
fm_status fm_creamfl_fuse(const float *const *reps, int K, size_t n, size_t d, float *scores, float *agg);

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

/* How a GPU multiplies the score tiles (the CPU always multiplies in fp32). */
typedef enum fm_creamfl_precision {
    FM_CREAMFL_FP32 = 0, /* true fp32 products (cuBLASLt, CUBLAS_COMPUTE_32F, no TF32): within 1e-5 of the CPU */
    /* the tiles' operands rounded to bf16, products accumulated in fp32 on the tensor cores: exact products when the
     * representations are bf16 values already (rep_dtype: bf16, what travelled), so then as accurate as FP32; on
     * other fp32 inputs the logits move by the rounding (~1e-4 absolute for unit vectors, d = 512). The row's own
     * score (the diagonal term) stays fp32. CUDA only: the CPU refuses it. */
    FM_CREAMFL_BF16 = 1
} fm_creamfl_precision;

/* fm_creamfl_ensemble on buffers that live on `device`: reps (a HOST array of K pointers), global, agg and weights
 * (may be NULL) all in that device's memory.
 * - FM_DEVICE_CPU: exactly fm_creamfl_ensemble (the same bits); precision must be FM_CREAMFL_FP32.
 * - FM_DEVICE_CUDA: the same computation on the GPU (src/fl/creamfl_ensemble_cuda.c, kernels/creamfl_ensemble.cu):
 *   score tiles of rows × cols (tiles 0: 2048 × 4096, a 32 MiB tile) by cuBLASLt, the online log-sum-exp, weights and
 *   fusion by kernels, on fedmm's stream; deterministic; returns when the results are in place. Device memory
 *   beyond the buffers: one tile, 12 bytes per tile row, K·n floats when weights is NULL, and under FM_CREAMFL_BF16
 *   two bf16 copies of (n, d) (the global representations and one site's). FM_ERR_DEVICE without a usable GPU or
 *   in a build without CUDA. */
fm_status fm_creamfl_ensemble_dev(fm_device device, fm_creamfl_precision precision, const float *const *reps, int K,
                                  const float *global, size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean,
                                  float *agg, float *weights);

/* The same on HOST buffers, computed on `device`: FM_DEVICE_CPU is fm_creamfl_ensemble; FM_DEVICE_CUDA copies reps
 * and global to the GPU, runs fm_creamfl_ensemble_dev there and copies agg (and weights) back (device memory:
 * (K + 2)·n·d + K·n floats plus the above). For a server whose representations arrive in host memory. */
fm_status fm_creamfl_ensemble_staged(fm_device device, fm_creamfl_precision precision, const float *const *reps, int K,
                                     const float *global, size_t n, size_t d, fm_creamfl_tiles tiles, int plain_mean,
                                     float *agg, float *weights);

/* Rounds every value to the nearest bfloat16 (ties to even), in place: what a representation sent as bf16
 * arrives as. */
void fm_creamfl_round_bf16(float *x, size_t n);

/* ---- the in-process simulation -------------------------------------------------------------------------- */

/* The three kinds of site, by the modalities they hold; each kind has its own model configuration. */
typedef enum fm_creamfl_site_kind {
    FM_CREAMFL_PAIRED = 0, /* images and texts (in groups: image–text pairs of the train split; CLIP loss) */
    FM_CREAMFL_IMAGE = 1,  /* images only (in groups: the labelled image_only split; CE against the class prompts) */
    FM_CREAMFL_TEXT = 2,   /* texts only (in groups: the labelled text_only split; prompt matching) */
    FM_CREAMFL_KINDS = 3
} fm_creamfl_site_kind;

/* "paired", "image", "text". */
const char *fm_creamfl_site_kind_name(fm_creamfl_site_kind kind);

/* Where the sites come from. */
typedef enum fm_creamfl_layout {
    /* num_sites[k] sites of each kind, each an equal contiguous shard of its kind's split (train, image_only,
     * text_only): CreamFL's own setting (paired, image-only and text-only datasets) */
    FM_CREAMFL_GROUPS = 0,
    /* scenario.num_sites sites from fm_federation_split over the train split (a FedMLLM modality scenario with
     * its Dirichlet label skew): each site's kind is the union of its samples' modalities, and each sample keeps
     * its own modality (a paired site under `missing` holds image-only and text-only samples too) */
    FM_CREAMFL_SCENARIO = 1
} fm_creamfl_layout;

/* What the server's distillation steps optimise. */
typedef enum fm_creamfl_distill {
    /* the CLIP loss on the batch plus κ·(MSE_i + MSE_t), on the server's one AdamW state: κ weighs distillation
     * against the server's own objective, κ = 0 is exactly the public-only server, and the public-only baseline
     * takes the same steps with the CLIP loss alone */
    FM_CREAMFL_DISTILL_JOINT = 0,
    /* κ·(MSE_i + MSE_t) alone, as the paper's separate distillation step, on an AdamW state of its own (kept across
     * rounds): sharing the CLIP steps' moments made these steps move along the CLIP momentum whatever the targets
     * (with κ = 0 the server stayed at chance). Adam normalises the gradient, so the step size is the learning
     * rate's and κ only scales the logged loss (κ = 0 skips the steps); the public-only baseline has no such steps */
    FM_CREAMFL_DISTILL_SEPARATE = 1
} fm_creamfl_distill;

typedef struct fm_creamfl_options {
    fm_clip_config server;                       /* server model (the one evaluated and returned) */
    fm_clip_config site_model[FM_CREAMFL_KINDS]; /* model of each kind of site (embed_dim, image_size and
                                                    context_length must equal the server's) */
    fm_creamfl_layout layout;
    int num_sites[FM_CREAMFL_KINDS]; /* GROUPS: sites of each kind; 0 of every kind: the server trains on P alone */
    fm_scenario_config scenario;     /* SCENARIO: the split (num_sites, scenario and its parameters, seed) */
    int public_only;                 /* 1: no sites at all, whatever the layout says: the server trains on P alone
                                        (the baseline CreamFL must beat; same server, steps and seed) */
    int64_t public_size;             /* |P|: the first public_size samples of the public split */
    int rounds;
    int sites_per_round;         /* sampled uniformly without replacement from all sites */
    int64_t local_steps;         /* per sampled site per round: each step one private and one public batch */
    int64_t init_local_steps;    /* extra local steps the first time a site is sampled (the reference code's
                                    client_init_local_epochs: a site starts from a randomly initialised model) */
    int64_t server_steps;        /* CLIP-loss steps of the server on P per round, before it encodes P */
    int64_t server_init_steps;   /* extra CLIP-loss steps in round 1 (a server that starts from a random model
                                    gives the sites nothing to align to); the public-only baseline takes them too */
    int64_t distill_steps;       /* distillation steps per round (batches of P), after the ensemble */
    fm_creamfl_distill distill;  /* what a distillation step optimises (see fm_creamfl_distill) */
    fm_train_options local;      /* sites' AdamW (batch_size, lr, wd, betas, eps, grad_clip); moments reset per round */
    fm_train_options server_opt; /* server's AdamW; one state for training and distillation, kept across rounds */
    float lambda;                /* weight of L_intra + L_inter (0.5) */
    float tau;                   /* temperature of the regularisers (0.5) */
    float kappa;                 /* distillation weight (0.3) */
    int rep_bf16;                /* 1: representations travel as bf16 (both ways) */
    int ensemble;                /* 1: global–local ensemble; 0: plain mean (ablation) */
    int inter, intra;            /* 1: the regulariser is on (ablations turn one off) */
    fm_attribute label_attr;     /* labels of the uni-modal samples */
    fm_creamfl_tiles tiles;
    int eval_every;      /* evaluate the server every k rounds (and after the last); 0 = last only */
    int64_t eval_size;   /* test pairs per evaluation */
    int eval_sites;      /* 1: at each evaluation also evaluate every site holding both modalities that has
                            trained (its own model on the same test pairs; logged as site_* means) */
    uint64_t seed;       /* models, site sampling, data order */
    const char *out_dir; /* metrics.jsonl (unless metrics_path), summary.csv, the per-round checkpoints */
    const char *metrics_path;
    int checkpoint; /* 1: DIR/round-R/ after every round, DIR/latest naming the last complete one */
    int resume;     /* 1: continue from DIR/latest when there is one (the same result as an unbroken run) */
    int progress;
} fm_creamfl_options;

/* Defaults: λ 0.5, τ 0.5, κ 0.3, fp32, ensemble and both regularisers on, SEPARATE distillation, 10 rounds, GROUPS
 * with 2 sites of each kind, 3 per round, |P| 500, 10 local / 0 initial / 10 server / 0 initial server / 10 distill
 * steps, batch 32, lr 1e-3, label attribute kind, evaluation every round on 500 pairs, checkpoints on, no resume.
 * The model configs are zeroed: the caller sets them. */
fm_creamfl_options fm_creamfl_default_options(void);

/* FM_ERR_CONFIG naming the first bad field (sizes, sites per round vs sites, mismatched embed_dim / image
 * size / context length between the server and any kind of site that can be present). */
fm_status fm_creamfl_validate(const fm_creamfl_options *o, const fm_synth_config *synth);

typedef struct fm_creamfl_result {
    int rounds_done;
    fm_eval_result last_eval;
    double bytes_up, bytes_down; /* representations over the whole run */
    double wall_s;
    double ensemble_s;                   /* time spent in the ensemble */
    int resumed_from;                    /* rounds a resumed run found done (0: started afresh) */
    int sites_of_kind[FM_CREAMFL_KINDS]; /* sites of each kind, as laid out (SCENARIO: after the split) */
} fm_creamfl_result;

/* Runs a CreamFL federation on the built-in dataset. *server_out (when non-NULL) receives the trained server
 * model (the caller destroys it). With o->resume and a checkpoint in o->out_dir, it continues after the last
 * complete round; on the CPU the result is bit-identical to a run that was never interrupted. */
fm_status fm_creamfl_run(const fm_creamfl_options *o, const fm_synth_config *synth, const fm_tokenizer *tok,
                         fm_device device, fm_creamfl_result *result, fm_clip **server_out);

/* ---- the server's side and a site's side of a round, apart ------------------------------------------------- */

/* fm_creamfl_run is these pieces in one process, over one object holding the server and every site. `fedmm server`
 * and `fedmm client` (src/cli/creamfl_net.c) open a server object and one object per site in separate processes
 * and carry the representations between them over gRPC; with the same options the server ends bit-identical to the
 * simulation's on the CPU (docs/creamfl.md, "Over the network"). */
typedef struct fm_creamfl fm_creamfl;

/* The server's side: its model and AdamW state(s), the public set, the test split; metrics files and checkpoints in
 * o->out_dir (fm_creamfl_server_start). The sites are laid out (count, modality, sample count) but none is built.
 * One site's side: its share of the data and its model, initialised as the simulation initialises that site's, with
 * its optimizer, and the public set. o is copied (its strings are borrowed); FM_ERR_CONFIG for options without
 * sites (public_only) or a site index out of range. */
fm_status fm_creamfl_server_open(fm_creamfl **out, const fm_creamfl_options *o, const fm_synth_config *synth,
                                 const fm_tokenizer *tok, fm_device device);
fm_status fm_creamfl_site_open(fm_creamfl **out, const fm_creamfl_options *o, const fm_synth_config *synth,
                               const fm_tokenizer *tok, fm_device device, int site);
/* NULL is a no-op. */
void fm_creamfl_close(fm_creamfl *c);

/* |P| and d: every representation matrix is |P| × d floats. */
size_t fm_creamfl_public_count(const fm_creamfl *c);
size_t fm_creamfl_embed_dim(const fm_creamfl *c);
/* The sites as laid out: how many, each one's modalities (FM_MODALITY_NONE out of range) and sample count. */
int fm_creamfl_num_sites(const fm_creamfl *c);
fm_modality fm_creamfl_site_modality(const fm_creamfl *c, int site);
int64_t fm_creamfl_site_samples(const fm_creamfl *c, int site);
/* The server's model (owned by c). */
fm_clip *fm_creamfl_server_model(fm_creamfl *c);

/* The m sites round `round` samples, in ascending order (chosen gets m ints): the first m of a permutation of
 * [0, num_sites) drawn from fm_rng_make(seed, 0xC4EA0000 + round), sorted — the simulation's draw. */
fm_status fm_creamfl_round_sites(uint64_t seed, int round, int num_sites, int m, int *chosen);

/* What a site's round measured, every value as the simulation adds it to its running sums, in order: the private
 * loss of each local step, and L_inter and L_intra of each step and modality the site holds (its images' before its
 * texts'). The server averages them over the round's sites exactly as the simulation does. */
typedef struct fm_creamfl_site_report {
    int64_t steps; /* local steps taken: local_steps, plus init_local_steps in the site's first round */
    const float *loss;
    size_t n_loss; /* steps */
    const float *inter;
    size_t n_inter; /* steps × modalities held when L_inter is on (and λ > 0), else 0 */
    const float *intra;
    size_t n_intra; /* likewise for L_intra */
} fm_creamfl_site_report;

/* The list lengths a report of `site` has after `steps` steps (see above). */
void fm_creamfl_report_shape(const fm_creamfl *c, int site, int64_t steps, size_t *n_loss, size_t *n_inter,
                             size_t *n_intra);
/* What the server checks of a report a site sent: steps is local_steps or local_steps + init_local_steps, the lists
 * have the lengths above, every value is finite (FM_ERR_INVALID_ARG, FM_ERR_SHAPE, FM_ERR_NOT_FINITE naming the
 * site; FM_ERR_RANGE for a site out of range). */
fm_status fm_creamfl_check_report(const fm_creamfl *c, int site, const fm_creamfl_site_report *r);

/* Server, after opening: starts the run in o->out_dir afresh (rounds_done 0: metrics.jsonl and summary.csv begun
 * anew) or after round rounds_done of a run whose checkpoint DIR/round-<rounds_done>/ is there (server model and
 * optimizer state(s), counters; the metrics rows of later rounds dropped). *bytes_up / *bytes_down (may be NULL)
 * get the run's payload totals so far. */
fm_status fm_creamfl_server_start(fm_creamfl *c, int rounds_done, double *bytes_up, double *bytes_down);

/* Server, step 1 of round `round`: its CLIP steps on P, then its representations of P. *ig and *tg (|P| × d each,
 * owned by c, valid until the next call) are what the sites receive: rounded to bfloat16 when o->rep_bf16. */
fm_status fm_creamfl_server_broadcast(fm_creamfl *c, int round, const float **ig, const float **tg);

/* Site, steps 2–3 of round `round` (a site object: its own index only): trains the site from ig / tg (the round's
 * global representations, |P| × d each), then writes its representations of P, as they travel (bf16-rounded with
 * o->rep_bf16), into up_i / up_t (|P| × d each; the one of a modality the site does not hold may be NULL and is
 * left alone). *report gets the round's measurements; its lists belong to c and stay valid until the next call. */
fm_status fm_creamfl_site_train(fm_creamfl *c, int site, int round, const float *ig, const float *tg, float *up_i,
                                float *up_t, fm_creamfl_site_report *report);

/* One site's upload of a round, as the server received it. */
typedef struct fm_creamfl_upload {
    int site;
    const float *reps_i, *reps_t; /* |P| × d each: exactly the modalities the site holds, NULL for the others */
    fm_creamfl_site_report report;
} fm_creamfl_upload;

/* Server, steps 4–5 of round `round`: the K uploads (ascending site order, 1 ≤ K ≤ sites_per_round; each checked
 * with fm_creamfl_check_report and against its site's modalities first) are fused per modality and the server
 * distils towards them. */
fm_status fm_creamfl_server_aggregate(fm_creamfl *c, int round, const fm_creamfl_upload *ups, int K);

/* Server, the round's end: evaluates when the round is due (o->eval_every, the last round; *evaluated = 1 and *ev
 * filled), writes the round's line of metrics.jsonl and summary.csv with bytes_up / bytes_down (the run's payload
 * totals so far), and the checkpoint DIR/round-R/ (keeping round R−1 until round R+1's is written). */
fm_status fm_creamfl_server_finish(fm_creamfl *c, int round, double bytes_up, double bytes_down, fm_eval_result *ev,
                                   int *evaluated);
/* Server: its model evaluated on the test split now. */
fm_status fm_creamfl_server_evaluate(fm_creamfl *c, fm_eval_result *ev);

#ifdef __cplusplus
}
#endif
#endif
