/* Aggregation over plain float arrays: the weighted sum of the FedAvg family, and the Byzantine-robust rules,
 * coordinate-wise median and trimmed mean (Yin et al. 2018) and Krum / multi-Krum (Blanchard et al. 2017). Each
 * takes K updates of n floats and writes one. These are the CPU references of kernels/aggregate.cu. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl/strategy_internal.h"

/* Below this many coordinates the OpenMP fork costs more than it saves. */
#define ROBUST_OMP_MIN 4096

static void sort_floats(float *x, size_t k)
{
    /* K is the number of sites: small. Insertion sort beats qsort's call overhead up to a few dozen. */
    for (size_t i = 1; i < k; i++) {
        float v = x[i];
        size_t j = i;
        while (j > 0 && x[j - 1] > v) {
            x[j] = x[j - 1];
            j--;
        }
        x[j] = v;
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void sort_k(float *x, size_t k)
{
    if (k <= 32)
        sort_floats(x, k);
    else
        qsort(x, k, sizeof(float), cmp_float);
}

/* out[j] = mean of the sorted column's entries [lo, hi). Shared by median (lo/hi around the middle) and
 * trimmed mean. */
static fm_status sorted_column_mean(float *out, const float *const *updates, size_t k, size_t n, size_t lo, size_t hi)
{
    int failed = 0;
#pragma omp parallel if (n >= ROBUST_OMP_MIN)
    {
        float *col = malloc(k * sizeof(float));
        if (!col) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (size_t j = 0; j < n; j++) {
            if (!col)
                continue;
            for (size_t i = 0; i < k; i++)
                col[i] = updates[i][j];
            sort_k(col, k);
            double s = 0.0;
            for (size_t i = lo; i < hi; i++)
                s += col[i];
            out[j] = (float)(s / (double)(hi - lo));
        }
        free(col);
    }
    if (failed)
        return fm_error(FM_ERR_NO_MEMORY, "robust aggregation: no memory for a column of %zu floats", k);
    return FM_OK;
}

fm_status fm_agg_median(float *out, const float *const *updates, size_t k, size_t n)
{
    if (!out || !updates || k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "fm_agg_median: NULL argument or no updates (k = %zu)", k);
    /* odd k: the middle one; even k: the mean of the two middle ones */
    size_t lo = (k - 1) / 2, hi = k / 2 + 1;
    return sorted_column_mean(out, updates, k, n, lo, hi);
}

fm_status fm_agg_trimmed_mean(float *out, const float *const *updates, size_t k, size_t n, double trim_ratio)
{
    if (!out || !updates || k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "fm_agg_trimmed_mean: NULL argument or no updates (k = %zu)", k);
    if (!(trim_ratio >= 0.0 && trim_ratio < 0.5))
        return fm_error(FM_ERR_INVALID_ARG, "fm_agg_trimmed_mean: trim_ratio %g is outside [0, 0.5)", trim_ratio);
    size_t t = (size_t)floor(trim_ratio * (double)k);
    if (2 * t >= k) /* cannot happen for ratio < 0.5, but keep one value at least */
        t = (k - 1) / 2;
    return sorted_column_mean(out, updates, k, n, t, k - t);
}

fm_status fm_agg_weighted_sum(float *out, const float *const *updates, const float *w, size_t k, size_t n)
{
    if (!out || !updates || !w || k == 0)
        return fm_error(FM_ERR_INVALID_ARG, "fm_agg_weighted_sum: NULL argument or no updates (k = %zu)", k);
    for (size_t q = 0; q < k; q++)
        if (!updates[q])
            return fm_error(FM_ERR_INVALID_ARG, "fm_agg_weighted_sum: update %zu is NULL", q);
#pragma omp parallel for schedule(static) if (n >= ROBUST_OMP_MIN)
    for (size_t j = 0; j < n; j++) {
        float acc = 0.0f;
        for (size_t q = 0; q < k; q++)
            acc += w[q] * updates[q][j];
        out[j] = acc;
    }
    return FM_OK;
}

typedef struct krum_rank {
    double score;
    size_t index;
} krum_rank;

static int cmp_rank(const void *a, const void *b)
{
    const krum_rank *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

fm_status fm_krum_order(const double *dist, size_t k, int f, size_t *order)
{
    if (!dist || !order)
        return fm_error(FM_ERR_INVALID_ARG, "krum: NULL argument");
    if (f < 0 || k < 2 * (size_t)f + 3)
        return fm_error(FM_ERR_INVALID_ARG, "krum: %zu updates with f = %d Byzantine; Krum needs at least 2f+3 = %d", k,
                        f, 2 * f + 3);
    double *row = malloc(k * sizeof(double));
    krum_rank *rank = malloc(k * sizeof(krum_rank));
    if (!row || !rank) {
        free(row);
        free(rank);
        return fm_error(FM_ERR_NO_MEMORY, "krum: no memory for %zu scores", k);
    }
    /* score(i) = Σ of the k − f − 2 smallest distances from i to the others */
    size_t nclose = k - (size_t)f - 2;
    for (size_t i = 0; i < k; i++) {
        size_t c = 0;
        for (size_t j = 0; j < k; j++)
            if (j != i)
                row[c++] = dist[i * k + j];
        qsort(row, c, sizeof(double), cmp_double);
        double s = 0.0;
        for (size_t t = 0; t < nclose; t++)
            s += row[t];
        rank[i].score = s;
        rank[i].index = i;
    }
    qsort(rank, k, sizeof(krum_rank), cmp_rank);
    for (size_t i = 0; i < k; i++)
        order[i] = rank[i].index;
    free(row);
    free(rank);
    return FM_OK;
}

fm_status fm_krum_ranges(float *out, const float *const *u, size_t k, const size_t *offs, const size_t *lens, size_t nr,
                         int f, int m, size_t *selected)
{
    if (!out || !u || !offs || !lens)
        return fm_error(FM_ERR_INVALID_ARG, "krum: NULL argument");
    if (f < 0 || k < 2 * (size_t)f + 3)
        return fm_error(FM_ERR_INVALID_ARG, "krum: %zu updates with f = %d Byzantine; Krum needs at least 2f+3 = %d", k,
                        f, 2 * f + 3);
    if (m < 1 || (size_t)m > k)
        return fm_error(FM_ERR_INVALID_ARG, "krum: m = %d selected updates is outside [1, %zu]", m, k);

    double *dist = calloc(k * k, sizeof(double));
    size_t *order = malloc(k * sizeof(size_t));
    if (!dist || !order) {
        free(dist);
        free(order);
        return fm_error(FM_ERR_NO_MEMORY, "krum: no memory for %zu×%zu distances", k, k);
    }
    /* Pairwise squared distances, summed over the ranges; one pair per iteration keeps it race-free. */
    size_t npairs = k * (k - 1) / 2;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t p = 0; p < npairs; p++) {
        size_t i = 0, rem = p;
        while (rem >= k - 1 - i) { /* unrank p into (i, j), i < j */
            rem -= k - 1 - i;
            i++;
        }
        size_t j = i + 1 + rem;
        double d = 0.0;
        for (size_t r = 0; r < nr; r++) {
            const float *a = u[i] + offs[r], *b = u[j] + offs[r];
            for (size_t e = 0; e < lens[r]; e++) {
                double t = (double)a[e] - (double)b[e];
                d += t * t;
            }
        }
        dist[i * k + j] = d;
        dist[j * k + i] = d;
    }
    fm_status st = fm_krum_order(dist, k, f, order);
    if (st != FM_OK) {
        free(dist);
        free(order);
        return st;
    }
    if (selected)
        for (int s = 0; s < m; s++)
            selected[s] = order[s];
    for (size_t r = 0; r < nr; r++) {
        float *o = out + offs[r];
        size_t len = lens[r];
#pragma omp parallel for schedule(static) if (len >= ROBUST_OMP_MIN)
        for (size_t e = 0; e < len; e++) {
            double s = 0.0;
            for (int q = 0; q < m; q++)
                s += u[order[q]][offs[r] + e];
            o[e] = (float)(s / (double)m);
        }
    }
    free(dist);
    free(order);
    return FM_OK;
}

fm_status fm_agg_krum(float *out, const float *const *updates, size_t k, size_t n, int f, int m, size_t *selected)
{
    size_t off = 0;
    return fm_krum_ranges(out, updates, k, &off, &n, 1, f, m, selected);
}
