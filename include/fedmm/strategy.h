/* Server-side aggregation strategies of parameter federated learning (DESIGN.md §2A) over one flat float32
 * vector of P parameters (the model's trainable vector: LoRA adapters, or all weights), and the site-side
 * gradient corrections some of them need (FedProx, adaptive regularization, SCAFFOLD).
 *
 * A round streams: fm_strategy_begin_round, then fm_strategy_add_update once per site, then
 * fm_strategy_finish_round, which applies the server rule and yields the new global vector.
 *
 * Updates are DELTAS: Δk = wk − w, the site's locally trained vector minus the global vector it started from.
 *
 * Modality-aware aggregation: the vector is split into blocks (the model's slice table). Each update says which
 * blocks its site trained; each block is aggregated only over the sites that trained it (weighted by their
 * sample counts where the rule uses weights). A block no site trained this round keeps its value, and for the
 * stateful rules its momentum / moments / control variate are left untouched too (the block is frozen for the
 * round, not decayed).
 *
 * Memory: FedAvg, FedProx, adaptive regularization, FedAvgM, FedAdagrad/Adam/Yogi and SCAFFOLD keep O(P)
 * running sums, independent of the number of sites. The robust rules (median, trimmed mean, Krum, multi-Krum)
 * need every update of the round at once and keep a copy of each: O(K·P) for K sites.
 *
 * Devices: by default (config.device = FM_DEVICE_CPU) everything runs on the CPU over plain float arrays (OpenMP
 * over coordinates where it pays). With FM_DEVICE_CUDA the server state (global vector, moments, control variate,
 * running sums, the robust rules' copies of the updates) lives in GPU memory and the rules run as the kernels of
 * kernels/aggregate.cu, which repeat the CPU's arithmetic (the same bits for the FedAvg family, the median and the
 * trimmed mean; Krum's distances to ~1e-15 relative). The API does not change: updates come from host memory and
 * fm_strategy_global / fm_strategy_control return host copies, refreshed by every finish, load and set. */
#ifndef FEDMM_STRATEGY_H
#define FEDMM_STRATEGY_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- kinds and configuration ------------------------------------------------------------------ */

typedef enum fm_strategy_kind {
    FM_STRATEGY_FEDAVG = 0,   /* w += η·Σ(nk/n)Δk (η = 1: w = Σ(nk/n)wk), McMahan et al. 2017 */
    FM_STRATEGY_FEDPROX,      /* server = FedAvg; site gradient += μ(θ − θg), Li et al. 2020 */
    FM_STRATEGY_FEDAVGM,      /* server momentum, DESIGN.md's form (see fm_strategy_default_config) */
    FM_STRATEGY_FEDADAGRAD,   /* FedOpt, Reddi et al. 2021 Algorithm 2 */
    FM_STRATEGY_FEDADAM,      /* FedOpt, Reddi et al. 2021 Algorithm 2 */
    FM_STRATEGY_FEDYOGI,      /* FedOpt, Reddi et al. 2021 Algorithm 2 */
    FM_STRATEGY_SCAFFOLD,     /* control variates, Karimireddy et al. 2020 (site variates: fm_scaffold_site_update) */
    FM_STRATEGY_MEDIAN,       /* coordinate-wise median of the deltas, Yin et al. 2018 */
    FM_STRATEGY_TRIMMED_MEAN, /* coordinate-wise β-trimmed mean of the deltas, Yin et al. 2018 */
    FM_STRATEGY_KRUM,         /* the one delta with the best Krum score, Blanchard et al. 2017 */
    FM_STRATEGY_MULTI_KRUM,   /* mean of the m deltas with the best Krum scores, Blanchard et al. 2017 */
    FM_STRATEGY_ADAPTIVE_REG, /* FedMLLM's modality-agnostic adaptive regularization: server = FedAvg; site
                                 gradient += μ·μw(θ − θg) on encoder layers [s, L−1−s] only */
    FM_STRATEGY_KIND_COUNT
} fm_strategy_kind;

/* Lower-case name ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "scaffold", "median",
 * "trimmed_mean", "krum", "multi_krum", "adaptive_reg"); "?" for an invalid value. */
const char *fm_strategy_name(fm_strategy_kind kind);

/* The kind named `name`: the names above, case-insensitive, '-' accepted for '_'. FM_ERR_CONFIG (with the
 * list of valid names) if unknown; *out untouched then. */
fm_status fm_strategy_parse(const char *name, fm_strategy_kind *out);

/* 1 for the rules that need all K updates at once (median, trimmed mean, Krum, multi-Krum), else 0. */
int fm_strategy_is_robust(fm_strategy_kind kind);

typedef struct fm_strategy_config {
    fm_strategy_kind kind;
    double server_lr;         /* η (ηg for SCAFFOLD): w += η·(aggregated step) for every rule */
    double beta1;             /* FedOpt first-moment decay */
    double beta2;             /* FedAdam / FedYogi second-moment decay */
    double tau;               /* FedOpt adaptivity τ: v starts at τ², step divides by √v + τ */
    double server_momentum;   /* FedAvgM β */
    double prox_mu;           /* μ of FedProx and of adaptive regularization */
    double adaptive_mu_w;     /* μw: adaptive regularization's weight is μ·μw */
    int adaptive_skip_layers; /* s: adaptive regularization covers layers [s, L−1−s] of each stack */
    double trim_ratio;        /* trimmed mean: fraction trimmed from EACH side, in [0, 0.5) */
    int krum_byzantine;       /* f: Byzantine sites Krum tolerates; needs ≥ 2f+3 updates per block */
    int multi_krum_m;         /* m: deltas averaged by multi-Krum; 0 = K − f */
    double clip_norm;         /* each delta's L2 norm (over its trained blocks) is clipped to this before any
                                 rule sees it; 0 = off */
    int scaffold_num_sites;   /* N, the total number of sites (SCAFFOLD's c += (|S|/N)·mean Δc);
                                 0 = every site takes part in every round (N = |S|) */
    fm_device device;         /* where the server state lives and the rule runs: FM_DEVICE_CPU (the default) or
                                 FM_DEVICE_CUDA (needs a CUDA build and a usable GPU at fm_strategy_create;
                                 the robust rules then take at most FM_CUDA_AGG_SORT_MAX_K = 1024 updates per
                                 block for median / trimmed mean, 256 for Krum) */
} fm_strategy_config;

/* The defaults for `kind` (the rule's own values; the other fields keep theirs so a config can switch kinds):
 *   server_lr        1.0 for FedAvg, FedProx, adaptive reg, FedAvgM, SCAFFOLD and the robust rules;
 *                    1e-2 for FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021 tune η per task over a grid of
 *                    powers of ten; 1e-2 is a point of that grid, our choice, not a value the paper prescribes);
 *   beta1 0.9, beta2 0.99, tau 1e-3      (the values Reddi et al. 2021 use in their experiments);
 *   server_momentum 0.9                  (Hsu et al. 2019);
 *   prox_mu 0.01, adaptive_mu_w 0.1, adaptive_skip_layers 4   (FedMLLM's defaults, DESIGN.md §2A);
 *   trim_ratio 0.1, krum_byzantine 1, multi_krum_m 0 (= K − f), clip_norm 0 (off), scaffold_num_sites 0.
 * Non-finite updates are always rejected (FM_ERR_NOT_FINITE); there is no option to accept them.
 * An invalid kind gives FedAvg's defaults with that kind (fm_strategy_create rejects it). */
fm_strategy_config fm_strategy_default_config(fm_strategy_kind kind);

/* Checks every field for `config->kind` (ranges above); FM_ERR_CONFIG naming the field otherwise (also for device
 * cuda in a build without the CUDA backend). */
fm_status fm_strategy_config_validate(const fm_strategy_config *config);

/* ---- blocks of the vector ------------------------------------------------------------------------ */

/* One named piece of the vector (fedmm passes the model's slice table: fm_clip_slice). */
typedef struct fm_strategy_block {
    const char *name; /* copied by fm_strategy_create */
    size_t offset;    /* in floats from the start of the vector */
    size_t numel;
    int layer;    /* encoder layer index in its stack (tower), −1 outside the encoder layers */
    int n_layers; /* L, the number of encoder layers of that stack (used by adaptive regularization; any value
                     when layer < 0) */
} fm_strategy_block;

/* ---- the server ------------------------------------------------------------------------------- */

typedef struct fm_strategy fm_strategy;

/* Creates a strategy for a vector of n_params floats split into n_blocks blocks that must tile [0, n_params)
 * in order, without gaps or overlap (FM_ERR_SHAPE otherwise, naming the block). blocks may be NULL with
 * n_blocks 0: one block "all" then covers the whole vector. initial_global (n_params floats, finite, host memory)
 * is copied. The config is validated and copied. config->device FM_DEVICE_CUDA without a usable GPU:
 * FM_ERR_DEVICE with the reason. *out is NULL on failure. */
fm_status fm_strategy_create(fm_strategy **out, const fm_strategy_config *config, size_t n_params,
                             const fm_strategy_block *blocks, size_t n_blocks, const float *initial_global);
/* NULL is a no-op. */
void fm_strategy_destroy(fm_strategy *st);

const fm_strategy_config *fm_strategy_get_config(const fm_strategy *st);
size_t fm_strategy_num_params(const fm_strategy *st);
size_t fm_strategy_num_blocks(const fm_strategy *st);
/* The i-th block (name owned by the strategy); NULL when i is out of range. */
const fm_strategy_block *fm_strategy_block_at(const fm_strategy *st, size_t i);

/* The current global vector (n_params floats, owned by the strategy, valid until the next finish/load/set). */
const float *fm_strategy_global(const fm_strategy *st);
/* The server control variate c of SCAFFOLD (n_params floats, owned by the strategy; zeros at creation), to be
 * sent to the sites with the global vector. NULL for every other kind. */
const float *fm_strategy_control(const fm_strategy *st);
/* The last finished round (−1 before the first). */
int64_t fm_strategy_round(const fm_strategy *st);
/* Updates accepted in the open round (0 when no round is open). */
size_t fm_strategy_num_updates(const fm_strategy *st);

/* Opens round `round`, which must be greater than the last finished one and no round may be open
 * (FM_ERR_STATE otherwise). */
fm_status fm_strategy_begin_round(fm_strategy *st, int64_t round);

/* What one site sends back after local training. */
typedef struct fm_site_update {
    size_t n_params;            /* must equal the strategy's (FM_ERR_SHAPE otherwise) */
    const float *delta;         /* Δk = wk − w, n_params floats */
    double weight;              /* nk, the site's sample count (> 0; the robust rules and SCAFFOLD ignore it) */
    size_t n_blocks;            /* entries in `trained`: the strategy's block count when trained != NULL */
    const uint8_t *trained;     /* per block, nonzero where the site trained it; NULL = every block. At least one
                                   block must be trained. Values of Δk (and Δck) in untrained blocks are ignored */
    const float *control_delta; /* SCAFFOLD only (required there, ignored otherwise): Δck = ck⁺ − ck */
} fm_site_update;

/* Adds one site's update to the open round. Checks, with nothing changed on failure: a round is open
 * (FM_ERR_STATE); sizes (FM_ERR_SHAPE); weight > 0 and finite, at least one block trained, control_delta
 * present for SCAFFOLD (FM_ERR_INVALID_ARG); every value of delta and control_delta in the trained blocks is
 * finite (FM_ERR_NOT_FINITE, naming the block and index; the round's sums are untouched, so the caller may
 * carry on with the other sites). Then clips the delta (clip_norm) and accumulates it: O(P) running sums for
 * the FedAvg family, a copy of the delta for the robust rules. */
fm_status fm_strategy_add_update(fm_strategy *st, const fm_site_update *update);

/* Applies the server rule to the round's updates, updates the global vector (and the rule's state), closes
 * the round and, if global_out is non-NULL, copies the new global vector there (n_params floats).
 * With no accepted update: FM_ERR_STATE and the round stays open (add more, or fm_strategy_abort_round).
 * Krum / multi-Krum with fewer than 2f+3 updates on some block: FM_ERR_STATE, round stays open.
 * Nothing changes on failure. */
fm_status fm_strategy_finish_round(fm_strategy *st, float *global_out);

/* Discards the open round's updates (no-op when none is open); the state stays as it was before the round. */
void fm_strategy_abort_round(fm_strategy *st);

/* Replaces the global vector (n_params floats, must be finite), e.g. after loading model weights. Moments and
 * control variates are kept. FM_ERR_STATE while a round is open. */
fm_status fm_strategy_set_global(fm_strategy *st, const float *global);

/* The server checkpoint in one safetensors file, written atomically: "global", the rule's state ("momentum"
 * for FedAvgM, "m" and "v" for FedOpt, "control" for SCAFFOLD), and metadata (format "fedmm.strategy",
 * version, kind, round, n_params, n_blocks, and an echo of the config). Only between rounds (FM_ERR_STATE).
 * Loading checks format, kind, n_params and n_blocks against this strategy and the presence and sizes of the
 * tensors the kind needs, and leaves the strategy unchanged on any error. The strategy keeps its own config on
 * load (hyper-parameters may legitimately change on resume); the echo is informational. */
fm_status fm_strategy_save(const fm_strategy *st, const char *path);
fm_status fm_strategy_load(fm_strategy *st, const char *path);

/* ---- site side ---------------------------------------------------------------------------------- */

/* What a site adds to its gradient before each optimizer step (fm_site_correct_grad). Any part may be off. */
typedef struct fm_site_correction {
    const float *anchor;      /* θg, the global vector of the round; NULL = no proximal term */
    float prox_mu;            /* FedProx: grad += prox_mu·(θ − θg) everywhere (used when prox_weight is NULL) */
    const float *prox_weight; /* per-element proximal weight, overriding prox_mu (adaptive regularization:
                                 μ·μw inside layers [s, L−1−s], 0 elsewhere) */
    const float *c_global;    /* SCAFFOLD: grad += c − ck; both NULL = off */
    const float *c_local;
    float *owned_weight; /* set by fm_site_correction_prepare; freed by fm_site_correction_free */
    fm_device device;    /* where the vectors above live: FM_DEVICE_CPU after prepare; fm_site_correction_to_device
                            moves them */
    void *owned_device;  /* the device copies (one allocation), freed by fm_site_correction_free */
} fm_site_correction;

/* Fills `corr` for `config->kind` and the round: FedProx → anchor + prox_mu; adaptive reg → anchor +
 * prox_weight (allocated here from the blocks' layer/n_layers: weight μ·μw on blocks with
 * s ≤ layer ≤ n_layers−1−s, 0 on the rest, including blocks outside the encoder layers); SCAFFOLD → c_global
 * and c_local (both required, FM_ERR_INVALID_ARG otherwise); other kinds → nothing (all off). anchor is required
 * for FedProx and adaptive reg. Pointers are borrowed and must outlive the use of corr. blocks as in
 * fm_strategy_create (NULL/0 = one block; adaptive reg then regularizes nothing). */
fm_status fm_site_correction_prepare(fm_site_correction *corr, const fm_strategy_config *config, size_t n_params,
                                     const fm_strategy_block *blocks, size_t n_blocks, const float *anchor,
                                     const float *c_global, const float *c_local);
/* Copies the vectors corr uses (anchor, prox_weight, c_global, c_local; n floats each, host memory) to `device`
 * and points corr at the copies (owned by corr from then on), so that fm_site_correct_grad works on gradients in
 * that device's memory. FM_DEVICE_CPU, or a corr already on `device`: nothing to do. The round's borrowed host
 * vectors are no longer needed afterwards. FM_ERR_DEVICE in a build without CUDA; FM_ERR_STATE for a corr on
 * another device. corr is unchanged on failure. */
fm_status fm_site_correction_to_device(fm_site_correction *corr, fm_device device, size_t n);
/* Frees what prepare and to_device allocated and zeroes corr. NULL-safe. */
void fm_site_correction_free(fm_site_correction *corr);

/* Per-element adaptive-regularization weights: w[i] = mu_eff for elements of blocks with
 * skip ≤ layer ≤ n_layers−1−skip, 0 elsewhere. FM_ERR_SHAPE when the blocks do not tile [0, n). */
fm_status fm_adaptive_reg_weights(float *weights, size_t n, const fm_strategy_block *blocks, size_t n_blocks, int skip,
                                  float mu_eff);

/* grad (n floats) += prox·(params − anchor) + (c_global − c_local), per the parts of corr that are on.
 * params may be NULL when no proximal term is on. grad and params live on corr->device (host memory unless
 * fm_site_correction_to_device moved corr); on the GPU the same float arithmetic runs as a kernel on fedmm's stream.
 * FM_ERR_INVALID_ARG for a NULL corr or grad; on the CPU nothing else can fail; FM_ERR_CUDA from a failed launch. */
fm_status fm_site_correct_grad(float *grad, const float *params, const fm_site_correction *corr, size_t n);

/* SCAFFOLD's site control variate after local training (Karimireddy et al. 2020, Alg. 1 l. 12, option I with the
 * local steps' own minibatch gradients in place of an extra pass over the site's data):
 *   ck⁺ = grad_mean = (1/K) Σ_steps gk(y_step),   Δck = ck⁺ − ck,
 * grad_mean the mean over the K local steps of the raw minibatch gradient, before any correction
 * (fm_local_task.grad_mean_out). Option II's ck − c + (x − yk)/(K·ηl) estimates the same thing only when the
 * local steps are plain SGD. fedmm's sites step with AdamW, whose steps are normalised: (x − yk)/(K·ηl) is then
 * O(1) in every coordinate whatever the gradient's scale, the correction c − ck swamps the gradient, and SCAFFOLD
 * ended at chance in every setting of the fedmllm suite (docs/benchmarks.md). ci_new_out may alias ci or grad_mean.
 * Call it over the blocks the site trained only (keep ck elsewhere), since the server ignores Δck on untrained blocks.
 * FM_ERR_INVALID_ARG for a NULL argument, FM_ERR_NOT_FINITE for a non-finite grad_mean. */
fm_status fm_scaffold_site_update(const float *ci, const float *grad_mean, size_t n, float *ci_new_out, float *dc_out);

/* ---- robust building blocks (plain arrays; one update per pointer, each n floats) ------------------------ */

/* out[j] = Σ_k w[k]·updates[k][j] in float, accumulated in the order k = 0 … K−1 from 0 (the FedAvg family's
 * running sum, the CPU reference of kernels/aggregate.cu's weighted sum). k ≥ 1. */
fm_status fm_agg_weighted_sum(float *out, const float *const *updates, const float *w, size_t k, size_t n);

/* out[j] = median over k of updates[k][j] (mean of the two middle values for even k). k ≥ 1. */
fm_status fm_agg_median(float *out, const float *const *updates, size_t k, size_t n);
/* out[j] = mean of updates[·][j] after dropping floor(trim_ratio·k) smallest and largest. 0 ≤ trim_ratio < 0.5,
 * k ≥ 1. */
fm_status fm_agg_trimmed_mean(float *out, const float *const *updates, size_t k, size_t n, double trim_ratio);
/* Krum scores (Blanchard et al. 2017): score[i] = Σ of the k−f−2 smallest ‖ui − uj‖², j ≠ i; then out = mean of
 * the m updates with the lowest scores (m = 1: Krum; ties to the lower index). selected (may be NULL) receives
 * their indices, best first. Needs k ≥ 2f+3 and 1 ≤ m ≤ k (FM_ERR_INVALID_ARG otherwise). */
fm_status fm_agg_krum(float *out, const float *const *updates, size_t k, size_t n, int f, int m, size_t *selected);

#ifdef __cplusplus
}
#endif
#endif
