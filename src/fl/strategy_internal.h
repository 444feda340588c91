/* Pieces shared by the strategy's files (src/fl/strategy*.c); not part of the public API. */
#ifndef FEDMM_FL_STRATEGY_INTERNAL_H
#define FEDMM_FL_STRATEGY_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/strategy.h"

/* The strategy object (src/fl/strategy.c); see include/fedmm/strategy.h for what the fields mean. */
struct fm_strategy {
    fm_strategy_config cfg;
    size_t n;  /* parameters */
    size_t nb; /* blocks */
    fm_strategy_block *blocks;
    float *global;
    float *m;    /* FedAvgM momentum; FedOpt first moment */
    float *v;    /* FedOpt second moment */
    float *c;    /* SCAFFOLD server control variate */
    float *step; /* the round's aggregated Δ, computed in finish */
    int64_t round;
    int open;
    int64_t open_round;
    size_t n_updates;
    /* FedAvg family: Σ nk·Δk (SCAFFOLD: Σ Δyk) per coordinate and Σ nk (SCAFFOLD: count) per block */
    float *acc;
    float *acc_c; /* SCAFFOLD: Σ Δck */
    double *block_w;
    size_t *block_n;
    /* robust rules: a copy of each (clipped) delta, zeros in untrained blocks, and its mask */
    float **kept;
    uint8_t **kept_mask;
    size_t kept_cap;
    /* config.device FM_DEVICE_CUDA: the state the rules touch lives in `dev` (src/fl/strategy_cuda.c); `global`
     * (and `c` for SCAFFOLD) stay here as host copies, refreshed after every change; m, v, step, acc, acc_c and
     * kept are NULL. block_w, block_n, n_updates and the round bookkeeping stay on the host for both devices. */
    struct fm_strategy_dev *dev;
};

/* Krum / multi-Krum over a set of ranges of the vector (the blocks that the same sites trained): distances are
 * summed over all ranges, and out[offs[r] .. offs[r]+lens[r]) receives the mean of the m selected updates there.
 * u[i] points at the START of update i's full vector. Same checks as fm_agg_krum. */
fm_status fm_krum_ranges(float *out, const float *const *u, size_t k, const size_t *offs, const size_t *lens, size_t nr,
                         int f, int m, size_t *selected);

/* Krum's scores from the k×k matrix of squared distances: score[i] = Σ of the k−f−2 smallest dist[i][j], j ≠ i;
 * order (k entries) receives the update indices by increasing score, ties to the lower index. Checks as
 * fm_agg_krum (k ≥ 2f+3). */
fm_status fm_krum_order(const double *dist, size_t k, int f, size_t *order);

/* The GPU half of a strategy created with device FM_DEVICE_CUDA (src/fl/strategy_cuda.c). strategy.c does the
 * argument checks and the round bookkeeping and calls these for the state on the device; each keeps the
 * host copies (st->global, st->c) current. In a build without CUDA they answer FM_ERR_DEVICE (create) and are
 * otherwise never reached. */
fm_status fm_strategy_dev_create(fm_strategy *st, const float *initial_global);
void fm_strategy_dev_destroy(fm_strategy *st);
/* Zeroes the running sums for a new round. */
fm_status fm_strategy_dev_begin_round(fm_strategy *st);
/* The checked update (sizes, weight, mask done by the caller): finiteness on the device (FM_ERR_NOT_FINITE naming
 * block and index, nothing accumulated), clipping, accumulation; counts the update in block_w / block_n /
 * n_updates. */
fm_status fm_strategy_dev_add_update(fm_strategy *st, const fm_site_update *u);
/* The round's step and the server rule on the device; st->global (and st->c) refreshed. The caller closes the
 * round. Krum with too few updates: FM_ERR_STATE before anything changes. */
fm_status fm_strategy_dev_finish_round(fm_strategy *st);
/* Replaces the state from host vectors (m, v, c may be NULL where the kind has none) and refreshes the host
 * copies. */
fm_status fm_strategy_dev_upload(fm_strategy *st, const float *global, const float *m, const float *v, const float *c);
/* Host copies (n floats each, malloc'd, the caller frees) of the moments m and v, for the checkpoint; NULL where
 * the kind has none. */
fm_status fm_strategy_dev_download_moments(const fm_strategy *st, float **m, float **v);

/* Checks that blocks tile [0, n) in order; FM_ERR_SHAPE naming the first offender. `who` prefixes the message. */
fm_status fm_blocks_check(const fm_strategy_block *blocks, size_t n_blocks, size_t n, const char *who);

#endif
