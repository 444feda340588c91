/* Retrieval recall@K, zero-shot accuracy and the JSON-lines metrics log. */
#include "fedmm/metrics.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rank of the paired item in a row of scores: how many others score at least as high (ties against). */
static int rank_of(const float *scores, int n, int target)
{
    float s = scores[target];
    int rank = 0;
    for (int j = 0; j < n; j++)
        if (j != target && scores[j] >= s)
            rank++;
    return rank;
}

fm_status fm_retrieval_recall(const float *img, const float *txt, int N, int D, fm_retrieval *out)
{
    if (!img || !txt || !out || N <= 0 || D <= 0)
        return fm_error(FM_ERR_INVALID_ARG, "retrieval: need N > 0 pairs and D > 0");
    float *sim = malloc((size_t)N * (size_t)N * sizeof(float));
    if (!sim)
        return fm_error(FM_ERR_NO_MEMORY, "retrieval: %d×%d similarity matrix", N, N);
    /* sim[i][j] = img_i · txt_j */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, D, 1.0f, img, D, txt, D, 0.0f, sim, N);
    for (size_t i = 0; i < (size_t)N * (size_t)N; i++) {
        if (!isfinite(sim[i])) {
            free(sim);
            return fm_error(FM_ERR_NOT_FINITE, "retrieval: non-finite embedding similarity");
        }
    }
    long i2t[3] = {0, 0, 0}, t2i[3] = {0, 0, 0};
    const int ks[3] = {1, 5, 10};
    float *col = malloc((size_t)N * sizeof(float));
    if (!col) {
        free(sim);
        return fm_error(FM_ERR_NO_MEMORY, "retrieval: out of memory");
    }
    for (int i = 0; i < N; i++) {
        int r = rank_of(sim + (size_t)i * N, N, i);
        for (int k = 0; k < 3; k++)
            i2t[k] += r < ks[k];
        for (int j = 0; j < N; j++)
            col[j] = sim[(size_t)j * N + i];
        r = rank_of(col, N, i);
        for (int k = 0; k < 3; k++)
            t2i[k] += r < ks[k];
    }
    free(col);
    free(sim);
    out->i2t_r1 = (double)i2t[0] / N;
    out->i2t_r5 = (double)i2t[1] / N;
    out->i2t_r10 = (double)i2t[2] / N;
    out->t2i_r1 = (double)t2i[0] / N;
    out->t2i_r5 = (double)t2i[1] / N;
    out->t2i_r10 = (double)t2i[2] / N;
    return FM_OK;
}

fm_status fm_zero_shot_accuracy(const float *img, const float *class_txt, const int32_t *labels, int N, int K, int D,
                                double *accuracy)
{
    if (!img || !class_txt || !labels || !accuracy || N <= 0 || K <= 0 || D <= 0)
        return fm_error(FM_ERR_INVALID_ARG, "zero-shot: need N, K, D > 0");
    long correct = 0;
    for (int i = 0; i < N; i++) {
        if (labels[i] < 0 || labels[i] >= K)
            return fm_error(FM_ERR_RANGE, "zero-shot: label %d of image %d outside [0, %d)", labels[i], i, K);
        int best = 0;
        float best_s = -INFINITY;
        for (int c = 0; c < K; c++) {
            float s = cblas_sdot(D, img + (size_t)i * D, 1, class_txt + (size_t)c * D, 1);
            if (s > best_s) {
                best_s = s;
                best = c;
            }
        }
        correct += best == labels[i];
    }
    *accuracy = (double)correct / N;
    return FM_OK;
}

fm_status fm_metrics_open(fm_metrics_log *log, const char *path, int append)
{
    memset(log, 0, sizeof *log);
    if (!path)
        return FM_OK;
    if (strcmp(path, "-") == 0) {
        log->file = stdout;
        return FM_OK;
    }
    log->file = fopen(path, append ? "a" : "w");
    if (!log->file)
        return fm_error(FM_ERR_IO, "metrics %s: %s", path, strerror(errno));
    log->owned = 1;
    return FM_OK;
}

fm_status fm_metrics_write(fm_metrics_log *log, const char *const *keys, const double *values, size_t n)
{
    if (!log->file)
        return FM_OK;
    fputc('{', log->file);
    for (size_t i = 0; i < n; i++) {
        fprintf(log->file, "%s\"%s\": ", i ? ", " : "", keys[i]);
        if (!isfinite(values[i]))
            fputs("null", log->file);
        else if (values[i] == floor(values[i]) && fabs(values[i]) < 1e15)
            fprintf(log->file, "%.0f", values[i]);
        else
            fprintf(log->file, "%.9g", values[i]);
    }
    fputs("}\n", log->file);
    if (fflush(log->file) != 0 || ferror(log->file))
        return fm_error(FM_ERR_IO, "metrics: write failed");
    return FM_OK;
}

fm_status fm_metrics_csv_row(FILE *csv, const double *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fprintf(csv, i ? ",%.9g" : "%.9g", values[i]);
    fputc('\n', csv);
    if (fflush(csv) != 0 || ferror(csv))
        return fm_error(FM_ERR_IO, "summary.csv: write failed");
    return FM_OK;
}

void fm_metrics_close(fm_metrics_log *log)
{
    if (log->file && log->owned)
        fclose(log->file);
    memset(log, 0, sizeof *log);
}
