/* Splitting a dataset's sample indices over K federated sites: IID (a shuffled even split) and Dirichlet
 * label skew (per class, site shares drawn from Dir(α·1_K); small α gives sites few classes each).
 * Everything is deterministic from the seed. Also the gamma / Dirichlet samplers they need. */
#ifndef FEDMM_PARTITION_H
#define FEDMM_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/rng.h"
#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Site k holds indices[offsets[k] .. offsets[k+1]); offsets has num_sites + 1 entries, offsets[0] = 0,
 * offsets[num_sites] = n. Every index 0..n-1 appears exactly once. Both arrays owned (malloc). */
typedef struct fm_partition {
    int num_sites;
    int64_t n;
    int64_t *indices; /* (n) */
    int64_t *offsets; /* (num_sites + 1) */
} fm_partition;

/* Number of samples of site k, and a pointer to its indices (NULL-safe: 0 / NULL for a bad k). */
int64_t fm_partition_site_size(const fm_partition *p, int site);
const int64_t *fm_partition_site_indices(const fm_partition *p, int site);

/* IID: a random permutation of 0..n-1 cut into num_sites pieces whose sizes differ by at most one (the
 * first n % num_sites sites get one more); indices ascending within a site. n >= 0, num_sites >= 1. */
fm_status fm_partition_iid(int64_t n, int num_sites, uint64_t seed, fm_partition *out);

/* Dirichlet label skew (Hsu et al. 2019; the FedMLLM / NIID-Bench recipe): for each class c, its indices
 * (shuffled) are cut among the sites in proportions p_c ~ Dir(alpha·1_K). labels (n) in [0, num_classes).
 * If some site ends with fewer than min_size samples the draw is repeated (a new, deterministic stream per
 * attempt, at most 1000 attempts, then FM_ERR_RANGE saying so); min_size 0 accepts any draw.
 * alpha > 0 (and finite), num_sites >= 1, num_classes >= 1; a label outside [0, num_classes) is
 * FM_ERR_RANGE naming the sample. Indices within a site are in ascending order. */
fm_status fm_partition_dirichlet(const int32_t *labels, int64_t n, int num_classes, int num_sites, double alpha,
                                 int64_t min_size, uint64_t seed, fm_partition *out);

/* Frees the arrays and zeroes the struct; safe on a zeroed partition. */
void fm_partition_free(fm_partition *p);

/* How label-skewed a partition is: the sample-weighted mean, over sites, of the total-variation distance
 * between the site's label distribution and the global one. 0 for identical distributions, towards
 * 1 − 1/num_classes-ish when each site holds one class. Empty sites count zero. */
fm_status fm_partition_label_skew(const fm_partition *p, const int32_t *labels, int num_classes, double *out);

/* One draw from Gamma(shape, 1), shape > 0: Marsaglia–Tsang (2000) squeeze method; for shape < 1 the
 * boost Gamma(shape+1)·U^(1/shape). Returns its natural log, which stays finite when the value itself
 * underflows (shape ≪ 1); the value is exp() of it. */
double fm_gamma_log_sample(fm_rng *rng, double shape);
/* One draw from the symmetric Dirichlet Dir(alpha·1_k) into out (k), summing to 1; computed in log space so
 * that tiny alpha does not give 0/0. */
void fm_dirichlet_sample(fm_rng *rng, double alpha, int k, double *out);

#ifdef __cplusplus
}
#endif
#endif
