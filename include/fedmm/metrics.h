/* Evaluation metrics (retrieval recall@K both directions, zero-shot accuracy) and the JSON-lines
 * metrics log. Metric keys are the same everywhere in fedmm: step or round, loss, i2t_r1, i2t_r5,
 * i2t_r10, t2i_r1, t2i_r5, t2i_r10, zs_acc, wall_s (plus bytes_up / bytes_down in federated runs). */
#ifndef FEDMM_METRICS_H
#define FEDMM_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_retrieval {
    double i2t_r1, i2t_r5, i2t_r10; /* image→text: the paired caption among the top K, fraction in [0, 1] */
    double t2i_r1, t2i_r5, t2i_r10; /* text→image */
} fm_retrieval;

/* Recall@K for N paired, L2-normalised embeddings (row i of img pairs with row i of txt). Ties count
 * against the model: the pair is in the top K only if fewer than K others score at least as high. */
fm_status fm_retrieval_recall(const float *img, /* (N, D) */
                              const float *txt, /* (N, D) */
                              int N, int D, fm_retrieval *out);

/* Zero-shot accuracy: each image is assigned the class whose prompt embedding scores highest.
 * img (N, D), class_txt (K, D), labels (N) in [0, K). */
fm_status fm_zero_shot_accuracy(const float *img, const float *class_txt, const int32_t *labels, int N, int K, int D,
                                double *accuracy);

/* A JSON-lines log: one object per call, keys in the order given, numbers printed with full float
 * precision, non-finite values written as null. Flushed after every line. */
typedef struct fm_metrics_log {
    FILE *file;
    int owned;
} fm_metrics_log;

/* path "-" writes to stdout; NULL disables logging (writes become no-ops). Appends when append != 0. */
fm_status fm_metrics_open(fm_metrics_log *log, const char *path, int append);
fm_status fm_metrics_write(fm_metrics_log *log, const char *const *keys, const double *values, size_t n);
void fm_metrics_close(fm_metrics_log *log);

/* One comma-separated row of n values (%.9g, as the per-round summary.csv files hold), flushed. */
fm_status fm_metrics_csv_row(FILE *csv, const double *values, size_t n);

#ifdef __cplusplus
}
#endif
#endif
