/* The CUDA kernels of CreamFL's global–local cross-modal ensemble (kernels/creamfl_ensemble.cu). The tile loop that
 * drives them lives on the host, in src/fl/creamfl_ensemble_cuda.c: per site and block of rows, the score tiles
 * R·Gᵀ come from fm_cuda_gemm (cuBLASLt, kernels/gemm.cu), each tile folds into a running log-sum-exp per row, and a
 * last kernel subtracts it from the row's own score; then the weights (a softmax over the sites) and the fusion.
 * Device pointers, fedmm's stream, every launch checked; nothing here waits for the device.
 *
 * Arithmetic of the CPU twin (src/fl/creamfl_ensemble.c), step for step: a tile's row maximum in float, its terms
 * expf(x − m) summed in double, the running sum rescaled by exp(m_old − m) in double; the row's own score
 * R[p]·G[p] in double; the weights in double from float scores; the fusion in float, k = 0 … K−1, each product
 * rounded before the add (no FMA). What differs: the tile products (cuBLASLt's order, not OpenBLAS's), the order of
 * the double sums, and CUDA's expf / exp / log (within 2 ulp): ~1e-7 relative on the scores. */
#ifndef FEDMM_KERNELS_CREAMFL_ENSEMBLE_H
#define FEDMM_KERNELS_CREAMFL_ENSEMBLE_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Folds a tile of products into the running log-sum-exp of its rows: for each row i < rows of tile (rows, cols),
 * row-major with leading dimension cols,
 *   m = max(run_max[i], max_j tile[i, j]),
 *   run_sum[i] = run_sum[i]·exp(run_max[i] − m) + Σ_j expf(tile[i, j] − m),  run_max[i] = m.
 * first != 0: the row's first tile (run_max and run_sum are written, not read). rows, cols ≥ 1. */
fm_status fm_cuda_creamfl_lse_tile(float *run_max,    // (rows)
                                   double *run_sum,   // (rows)
                                   const float *tile, // (rows, cols)
                                   size_t rows, size_t cols, int first);

/* scores[i] = (float)(Σ_e R[i, e]·G[i, e] − (run_max[i] + log run_sum[i])), the dot product in double: the
 * ensemble score of rows samples, R their site's representations and G the global ones of the same samples. */
fm_status fm_cuda_creamfl_finish(float *scores,         // (rows)
                                 const float *R,        // (rows, d)
                                 const float *G,        // (rows, d)
                                 const float *run_max,  // (rows)
                                 const double *run_sum, // (rows)
                                 size_t rows, size_t d);

/* In place, per sample p: w[k·n + p] = softmax over k < K of the scores w[· n + p] (double arithmetic). */
fm_status fm_cuda_creamfl_site_softmax(float *w, // (K, n)
                                       size_t K, size_t n);

/* agg[p, e] = Σ_k w[k·n + p]·reps[k][p, e] in float, k in order, no FMA; w NULL: every weight is `mean`.
 * reps: a DEVICE array of K device pointers. */
fm_status fm_cuda_creamfl_fuse(float *agg,               // (n, d)
                               const float *const *reps, // K device pointers to (n, d)
                               const float *w,           // (K, n) or NULL
                               float mean, size_t K, size_t n, size_t d);

/* bf16 copies of rows rows of d floats with a padded leading dimension: dst[i, e] = bf16(src[i, e]) (round to
 * nearest even) for e < d, 0 for d ≤ e < ld. ld ≥ d. */
fm_status fm_cuda_creamfl_rows_bf16(uint16_t *dst,    // (rows, ld)
                                    const float *src, // (rows, d)
                                    size_t rows, size_t d, size_t ld);

#ifdef __cplusplus
}
#endif
#endif
