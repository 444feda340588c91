/* In-process federated simulation: N sites in one process sharing one model (one frozen base, the global
 * trainable vector, per-site state only where a strategy needs it), sampled each round, trained one after
 * another on their private split under a modality scenario, aggregated by a server strategy. Same seed, same
 * result (bit-exact on the CPU), also across --resume. */
#ifndef FEDMM_SIM_H
#define FEDMM_SIM_H

#include <stdint.h>

#include "fedmm/clip.h"
#include "fedmm/modality.h"
#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"
#include "fedmm/train.h"
#include "fedmm/wire_codec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_sim_options {
    int rounds;             /* federated rounds */
    int sites_per_round;    /* sites sampled each round (without replacement), 1..num_sites */
    int over_select_sites;  /* fl.over_select: extra sites a round tasks (sites_per_round + this ≤ num_sites; 0 =
                               none). The round's draw is fm_round_sites(seed, round, N, sites_per_round + this);
                               sim trains and aggregates the first sites_per_round of it in site order, which is
                               what `fedmm server` aggregates when those are the first to push */
    int malicious_sites;    /* robustness experiments: sites 0..malicious_sites-1 are attackers that send
                               −attack_scale × their honest update (sign flip and scaling); 0 = none */
    double attack_scale;    /* default 10 */
    int64_t local_steps;    /* optimizer steps per sampled site per round */
    fm_train_options local; /* local AdamW settings (batch_size, lr, weight_decay, betas, eps, grad_clip);
                               the moments start from zero each round; lr is constant within a round */
    fm_strategy_config strategy;
    int local_only;              /* baseline: every site trains alone every round, nothing is aggregated;
                                    evaluation reports the mean over the sites' own models */
    fm_scenario_config scenario; /* num_sites, label skew, modality scenario */
    fm_attribute label_attr;     /* attribute of the class prompts uni-modal sites train against */
    int eval_every;              /* evaluate the global model every k rounds (and after the last); 0 = last only */
    int64_t eval_size;           /* test pairs per evaluation */
    uint64_t seed;               /* site sampling and local data order */
    const char *out_dir;         /* checkpoints (DIR/latest → DIR/round-R/), summary.csv */
    const char *metrics_path;    /* JSON lines (NULL: DIR/metrics.jsonl) */
    int resume;                  /* continue from DIR/latest if present */
    int progress;                /* draw a progress bar on stderr */
    fm_wire_codec wire;          /* net.encoding / net.compress: each broadcast and each update passes through the
                                    network's encoding (fm_wire_transmit), and bytes_up / bytes_down count its
                                    payload bytes; all-zero (float32, uncompressed) changes nothing */
    /* fl.ema_decay β: > 0 keeps ema ← β·ema + (1 − β)·global after every round (starting at the initial global
     * model), checkpoints it, and evaluates and returns the average instead of the last global model; the sites
     * still train from the global model. 0 = off. */
    double ema_decay;
} fm_sim_options;

/* Defaults: 10 rounds, 5 of 10 sites per round, 10 local steps, FedAvg, aligned scenario α = 1, eval each
 * round on 500 pairs, seed 0, local AdamW as fm_train_default_options() with lr 1e-3 and no warm-up. */
fm_sim_options fm_sim_default_options(void);

typedef struct fm_sim_result {
    int rounds_done;
    fm_eval_result last_eval;
    double bytes_up, bytes_down; /* over the whole run */
    double wall_s;
} fm_sim_result;

/* Runs the federation. `model` provides the architecture, the frozen base and the initial trainable vector
 * (its trainable vector holds the final global model afterwards, or its moving average under ema_decay). */
fm_status fm_sim_run(fm_clip *model, const fm_synth_config *synth, const fm_tokenizer *tok, const fm_sim_options *o,
                     fm_sim_result *result);

#ifdef __cplusplus
}
#endif
#endif
