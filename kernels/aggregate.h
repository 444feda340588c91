/* CUDA aggregation kernels (kernels/aggregate.cu) for the server strategies (src/fl/strategy_cuda.c), the site
 * corrections (src/fl/strategy_site.c) and benchmarks/gpu/aggregate.c. Device pointers throughout; a list of K
 * updates is a HOST array of K device pointers (it is copied to the device per call, in stream order). Everything
 * runs on fedmm's stream; a function that returns a value to the host (a norm, a distance) waits for it.
 *
 * Numerics against the CPU twins (include/fedmm/strategy.h, src/fl/strategy*.c):
 * - weighted sum: fp32 accumulation in the order k = 0 … K−1, each product rounded before the add (no FMA), as
 *   fm_agg_weighted_sum and the FedAvg family's running sums do: the same bits as the CPU.
 * - median / trimmed mean: each column sorted, the kept ranks summed in double in ascending order, divided and
 *   rounded once, as fm_agg_median / fm_agg_trimmed_mean do: the same bits (up to the sign of a zero).
 * - pairwise distances (Krum), norms: double sums in another order than the CPU's: ~1e-15 relative.
 * - server rules and site corrections: the CPU's float expressions, operation for operation, without FMA. */
#ifndef FEDMM_KERNELS_AGGREGATE_H
#define FEDMM_KERNELS_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest K of the coordinate-wise sorted rules (median, trimmed mean): K ≤ 64 sorts each column in registers
 * (a bitonic network, one thread per coordinate), 64 < K ≤ 1024 in shared memory (one block per tile of columns).
 * Larger K: FM_ERR_UNSUPPORTED. */
#define FM_CUDA_AGG_SORT_MAX_K 1024
#define FM_CUDA_AGG_SORT_REG_MAX_K 64
/* The largest K of the pairwise distances (Krum): the K×32 tile of the updates lives in shared memory. */
#define FM_CUDA_AGG_DIST_MAX_K 256

/* out[j] = Σk w[k]·x[k][j] (fp32, k in order, no FMA); accumulate != 0 adds to out (out[j] is the first term, as
 * a running sum continues), else overwrites it. w: host array of k floats. k ≥ 1. */
fm_status fm_cuda_agg_weighted_sum(float *out, const float *const *x, const float *w, size_t k, size_t n,
                                   int accumulate);

/* out[j] = (float)((Σ_k (double)x[k][j]) / k), k in order: fm_agg_krum's mean of the selected updates. k ≥ 1. */
fm_status fm_cuda_agg_mean(float *out, const float *const *x, size_t k, size_t n);

/* Which sorting path the sorted rules take; AUTO picks by K (see FM_CUDA_AGG_SORT_REG_MAX_K). The others exist so
 * that the tests can run both paths on the same inputs. */
typedef enum fm_cuda_agg_sort_path {
    FM_CUDA_AGG_SORT_AUTO = 0,
    FM_CUDA_AGG_SORT_REGISTERS, /* K ≤ FM_CUDA_AGG_SORT_REG_MAX_K only */
    FM_CUDA_AGG_SORT_SHARED
} fm_cuda_agg_sort_path;

/* out[j] = mean of the ranks [lo, hi) of the column x[·][j] sorted ascending (summed in double in rank order);
 * 0 ≤ lo < hi ≤ k ≤ FM_CUDA_AGG_SORT_MAX_K. Values must be finite (the strategies reject the rest first). */
fm_status fm_cuda_agg_sorted_mean(float *out, const float *const *x, size_t k, size_t n, size_t lo, size_t hi,
                                  fm_cuda_agg_sort_path path);
/* fm_agg_median and fm_agg_trimmed_mean on the device: the same ranks as the CPU twins. */
fm_status fm_cuda_agg_median(float *out, const float *const *x, size_t k, size_t n);
fm_status fm_cuda_agg_trimmed_mean(float *out, const float *const *x, size_t k, size_t n, double trim_ratio);

/* A list of k updates (device pointers) and optional weights, copied to device memory once: for callers that
 * aggregate the same buffers many times (the benchmark), so that a call is only its kernel. The host-array
 * functions above copy their list to the device on every call (a small copy that waits for the stream). */
typedef struct fm_cuda_agg_list fm_cuda_agg_list;
/* w may be NULL (then only fm_cuda_agg_sorted_mean_list takes the list). The list is k device pointers (and k
 * floats) in device memory: the buffers it names must outlive it. */
fm_status fm_cuda_agg_list_create(fm_cuda_agg_list **out, const float *const *x, const float *w, size_t k);
void fm_cuda_agg_list_destroy(fm_cuda_agg_list *list);
fm_status fm_cuda_agg_weighted_sum_list(float *out, const fm_cuda_agg_list *list, size_t n, int accumulate);
fm_status fm_cuda_agg_sorted_mean_list(float *out, const fm_cuda_agg_list *list, size_t n, size_t lo, size_t hi,
                                       fm_cuda_agg_sort_path path);

/* Squared L2 distances between k updates summed over nr ranges [offs[r], offs[r] + lens[r]) (offsets into each
 * x[i]): dist (HOST, k×k doubles, row-major) gets dist[i·k + j] = Σ ((double)x_i − (double)x_j)², the diagonal 0.
 * 2 ≤ k ≤ FM_CUDA_AGG_DIST_MAX_K. Deterministic: a fixed grid independent of the GPU. Waits for the stream. */
fm_status fm_cuda_agg_pairwise_sqdist(double *dist, const float *const *x, size_t k, const size_t *offs,
                                      const size_t *lens, size_t nr);

/* One pass over x (n floats): *first_bad (host) = the index of the first non-finite element, SIZE_MAX when there
 * is none; *sumsq (host) = Σ x² in double (deterministic; meaningless when first_bad is set). Waits. */
fm_status fm_cuda_agg_check_norm(const float *x, size_t n, size_t *first_bad, double *sumsq);

/* dst[i] = (float)(scale·(double)src[i]) (the robust rules' clipped copy of a delta). dst may be src. */
fm_status fm_cuda_agg_scale_copy(float *dst, const float *src, double scale, size_t n);
/* dst[i] = src[i]·s in float (the FedAvg family's step = Σ nk·Δk · 1/Σ nk). dst may be src. */
fm_status fm_cuda_agg_scale_f32(float *dst, const float *src, float s, size_t n);

/* The server rules of fm_strategy_finish_round on one range of n coordinates, in place (see strategy.c). */
typedef enum fm_cuda_server_rule {
    FM_CUDA_RULE_PLAIN = 0, /* w += η·Δ (FedAvg, FedProx, adaptive reg, the robust rules) */
    FM_CUDA_RULE_AVGM,      /* m = β·m + (1−β)·Δ; w += η·m */
    FM_CUDA_RULE_ADAGRAD,   /* FedOpt (Reddi et al. 2021, Alg. 2) */
    FM_CUDA_RULE_ADAM,
    FM_CUDA_RULE_YOGI,
    FM_CUDA_RULE_SCAFFOLD /* w += η·Δ; c += Σ Δc · inv_sites */
} fm_cuda_server_rule;

typedef struct fm_cuda_rule_params {
    float eta, beta1, beta2, tau, momentum, inv_sites;
} fm_cuda_rule_params;

/* w, d (the aggregated step) always; m for AVGM and FedOpt; v for FedOpt; c and acc_c for SCAFFOLD. */
fm_status fm_cuda_agg_server_rule(fm_cuda_server_rule rule, float *w, float *m, float *v, float *c, const float *acc_c,
                                  const float *d, size_t n, fm_cuda_rule_params p);

/* fm_site_correct_grad on the device: grad += prox·(params − anchor), then grad += c_global − c_local. prox_weight
 * (per element) overrides prox_mu when non-NULL; anchor NULL (or params NULL) = no proximal term; c_global or
 * c_local NULL = no SCAFFOLD term. */
fm_status fm_cuda_site_correct_grad(float *grad, const float *params, const float *anchor, float prox_mu,
                                    const float *prox_weight, const float *c_global, const float *c_local, size_t n);

/* Benchmarks' inputs: x[i] uniform in [lo, hi) from a hash of (seed, i) (not fedmm's Philox stream; no CPU
 * twin). */
fm_status fm_cuda_agg_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);

#ifdef __cplusplus
}
#endif
#endif
