/* Pieces shared by the strategy's files (src/fl/strategy*.c); not part of the public API. */
#ifndef FEDMM_FL_STRATEGY_INTERNAL_H
#define FEDMM_FL_STRATEGY_INTERNAL_H

#include <stddef.h>

#include "fedmm/strategy.h"

/* Krum / multi-Krum over a set of ranges of the vector (the blocks that the same sites trained): distances are
 * summed over all ranges, and out[offs[r] .. offs[r]+lens[r]) receives the mean of the m selected updates there.
 * u[i] points at the START of update i's full vector. Same checks as fm_agg_krum. */
fm_status fm_krum_ranges(float *out, const float *const *u, size_t k, const size_t *offs, const size_t *lens, size_t nr,
                         int f, int m, size_t *selected);

/* Checks that blocks tile [0, n) in order; FM_ERR_SHAPE naming the first offender. `who` prefixes the message. */
fm_status fm_blocks_check(const fm_strategy_block *blocks, size_t n_blocks, size_t n, const char *who);

#endif
