/* The float64 reference of CreamFL's ensemble, shared by its CPU test (tests/unit/test_creamfl_ensemble.c) and its
 * GPU test (tests/gpu/test_creamfl_ensemble.c): the naive form, with the whole |P|×|P| logit matrix per site. */
#ifndef FEDMM_TESTS_CREAMFL_REF_H
#define FEDMM_TESTS_CREAMFL_REF_H

#include <stddef.h>

/* reps[k] (n, d) for the K sites, g (n, d) the global representations of the other modality: scores (K, n), the
 * log-softmax of each row's own logit; weights w (K, n), their softmax over the sites; agg (n, d), the fused rows. */
void fm_test_creamfl_naive(const float *const *reps, int K, const float *g, size_t n, size_t d, double *scores,
                           double *w, double *agg);

#endif
