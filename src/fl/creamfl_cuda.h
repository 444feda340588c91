/* CreamFL's ensemble on the GPU with scratch memory that outlives one call (internal; src/fl/creamfl_ensemble_cuda.c).
 * fm_creamfl_ensemble_dev creates a workspace, runs and destroys it; the benchmark (benchmarks/gpu/creamfl_ensemble.c)
 * and the gpu test keep one across calls, so that a timed call is its kernels and GEMMs alone, and its size is known.
 * All buffers are device memory except the HOST array of K site pointers. Everything is queued on fedmm's stream;
 * the functions below return without waiting for the device, except where they copy the pointer array to it (a
 * small copy that waits for the stream). Compiled with FEDMM_WITH_CUDA only. */
#ifndef FEDMM_FL_CREAMFL_CUDA_H
#define FEDMM_FL_CREAMFL_CUDA_H

#include <stddef.h>

#include "fedmm/creamfl.h"
#include "fedmm/status.h"

typedef struct fm_creamfl_cuda_ws fm_creamfl_cuda_ws;

/* GPU tile defaults (tiles 0): a 2048 × 4096 fp32 tile, 32 MiB. */
#define FM_CREAMFL_CUDA_TILE_ROWS 2048
#define FM_CREAMFL_CUDA_TILE_COLS 4096

/* One device allocation for up to max_sites sites of (n, d) representations: the score tile (rows × cols, each
 * clamped to n), the running maximum and sum of a tile's rows, K·n weights for a caller that wants none back, the
 * device array of site pointers and, under FM_CREAMFL_BF16, two (n, ld) bf16 matrices (ld = d rounded up to 8).
 * FM_ERR_DEVICE without a usable GPU. */
fm_status fm_creamfl_cuda_ws_create(fm_creamfl_cuda_ws **out, int max_sites, size_t n, size_t d, fm_creamfl_tiles tiles,
                                    fm_creamfl_precision precision);
void fm_creamfl_cuda_ws_destroy(fm_creamfl_cuda_ws *ws);
/* Bytes of device memory the workspace holds; the tile it uses (rows × cols after the defaults and clamping). */
size_t fm_creamfl_cuda_ws_bytes(const fm_creamfl_cuda_ws *ws);
void fm_creamfl_cuda_ws_tiles(const fm_creamfl_cuda_ws *ws, size_t *rows, size_t *cols);

/* fm_creamfl_ensemble_scores on the device: scores (K, n) for K ≤ max_sites sites against global (n, d). */
fm_status fm_creamfl_cuda_scores(fm_creamfl_cuda_ws *ws, const float *const *reps, int K, const float *global,
                                 float *scores);
/* fm_creamfl_fuse on the device: scores (K, n) become the weights in place, agg (n, d) the fused representations;
 * scores NULL: the plain mean. */
fm_status fm_creamfl_cuda_fuse(fm_creamfl_cuda_ws *ws, const float *const *reps, int K, float *scores, float *agg);
/* fm_creamfl_ensemble on the device; weights (K, n) may be NULL (the workspace's are used). */
fm_status fm_creamfl_cuda_ensemble(fm_creamfl_cuda_ws *ws, const float *const *reps, int K, const float *global,
                                   int plain_mean, float *agg, float *weights);

#endif
