/* Federated partitions of sample indices (see fedmm/partition.h): IID and Dirichlet label skew, plus the
 * Marsaglia–Tsang gamma sampler behind the Dirichlet draws. Partitions are built as a site id per sample
 * and then counting-sorted, so each site's indices come out ascending. */
#include "fedmm/partition.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SITES (1 << 20)
#define MAX_ATTEMPTS 1000

/* ---- samplers ------------------------------------------------------------------------------------------- */

/* Uniform in (0, 1]: safe to take the log of. */
static double open_uniform(fm_rng *rng) { return 1.0 - fm_rng_double(rng); }

double fm_gamma_log_sample(fm_rng *rng, double shape)
{
    if (!(shape > 0.0))
        return NAN;
    /* shape < 1: G(a) = G(a + 1) · U^(1/a) (Marsaglia & Tsang 2000, §6); in logs so that U^(1/a) cannot
     * underflow to 0 for tiny a. */
    double boost = 0.0;
    if (shape < 1.0) {
        boost = log(open_uniform(rng)) / shape;
        shape += 1.0;
    }
    const double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = fm_rng_gaussian(rng), v = 1.0 + c * x;
        if (v <= 0.0)
            continue;
        v = v * v * v;
        double u = open_uniform(rng), x2 = x * x;
        if (u < 1.0 - 0.0331 * x2 * x2 || log(u) < 0.5 * x2 + d * (1.0 - v + log(v)))
            return log(d) + log(v) + boost;
    }
}

void fm_dirichlet_sample(fm_rng *rng, double alpha, int k, double *out)
{
    if (k <= 0 || !out)
        return;
    double m = -INFINITY;
    for (int i = 0; i < k; i++) {
        out[i] = fm_gamma_log_sample(rng, alpha);
        if (out[i] > m)
            m = out[i];
    }
    double total = 0.0;
    for (int i = 0; i < k; i++) {
        out[i] = exp(out[i] - m); /* the largest share becomes 1 before normalising: no 0/0 */
        total += out[i];
    }
    for (int i = 0; i < k; i++)
        out[i] /= total;
}

/* ---- partitions ----------------------------------------------------------------------------------------- */

int64_t fm_partition_site_size(const fm_partition *p, int site)
{
    if (!p || !p->offsets || site < 0 || site >= p->num_sites)
        return 0;
    return p->offsets[site + 1] - p->offsets[site];
}

const int64_t *fm_partition_site_indices(const fm_partition *p, int site)
{
    if (!p || !p->indices || site < 0 || site >= p->num_sites)
        return NULL;
    return p->indices + p->offsets[site];
}

void fm_partition_free(fm_partition *p)
{
    if (!p)
        return;
    free(p->indices);
    free(p->offsets);
    memset(p, 0, sizeof *p);
}

static fm_status check_common(int64_t n, int num_sites, fm_partition *out, const char *what)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "%s: output is NULL", what);
    memset(out, 0, sizeof *out);
    if (n < 0)
        return fm_error(FM_ERR_INVALID_ARG, "%s: negative sample count %lld", what, (long long)n);
    if (num_sites < 1 || num_sites > MAX_SITES)
        return fm_error(FM_ERR_INVALID_ARG, "%s: number of sites %d is outside [1, %d]", what, num_sites, MAX_SITES);
    return FM_OK;
}

/* Builds the partition from a site id per sample (counting sort: indices ascending within each site). */
static fm_status from_site_ids(const int32_t *site_of, int64_t n, int num_sites, fm_partition *out)
{
    out->indices = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    out->offsets = calloc((size_t)num_sites + 1, sizeof(int64_t));
    int64_t *fill = calloc((size_t)num_sites, sizeof(int64_t));
    if (!out->indices || !out->offsets || !fill) {
        free(fill);
        fm_partition_free(out);
        return fm_error(FM_ERR_NO_MEMORY, "partition: no memory for %lld indices", (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        out->offsets[site_of[i] + 1]++;
    for (int k = 0; k < num_sites; k++)
        out->offsets[k + 1] += out->offsets[k];
    for (int64_t i = 0; i < n; i++) {
        int k = site_of[i];
        out->indices[out->offsets[k] + fill[k]++] = i;
    }
    free(fill);
    out->num_sites = num_sites;
    out->n = n;
    return FM_OK;
}

static void shuffle64(fm_rng *rng, int64_t *a, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)fm_rng_below(rng, i);
        int64_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

fm_status fm_partition_iid(int64_t n, int num_sites, uint64_t seed, fm_partition *out)
{
    FM_TRY(check_common(n, num_sites, out, "iid partition"));
    int64_t *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    int32_t *site_of = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (!perm || !site_of) {
        free(perm);
        free(site_of);
        return fm_error(FM_ERR_NO_MEMORY, "iid partition: no memory for %lld samples", (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    fm_rng rng = fm_rng_make(seed, 0x11D);
    shuffle64(&rng, perm, (size_t)n);
    /* The first n % K sites get one sample more. */
    const int64_t base = n / num_sites, extra = n % num_sites;
    int64_t at = 0;
    for (int k = 0; k < num_sites; k++) {
        int64_t len = base + (k < extra ? 1 : 0);
        for (int64_t j = 0; j < len; j++)
            site_of[perm[at + j]] = k;
        at += len;
    }
    free(perm);
    fm_status st = from_site_ids(site_of, n, num_sites, out);
    free(site_of);
    return st;
}

fm_status fm_partition_dirichlet(const int32_t *labels, int64_t n, int num_classes, int num_sites, double alpha,
                                 int64_t min_size, uint64_t seed, fm_partition *out)
{
    FM_TRY(check_common(n, num_sites, out, "dirichlet partition"));
    if (!labels && n > 0)
        return fm_error(FM_ERR_INVALID_ARG, "dirichlet partition: labels are NULL");
    if (num_classes < 1)
        return fm_error(FM_ERR_INVALID_ARG, "dirichlet partition: number of classes %d < 1", num_classes);
    if (!(alpha > 0.0) || !isfinite(alpha))
        return fm_error(FM_ERR_INVALID_ARG, "dirichlet partition: alpha %g must be positive and finite", alpha);
    if (min_size < 0)
        return fm_error(FM_ERR_INVALID_ARG, "dirichlet partition: negative min_size %lld", (long long)min_size);
    if (min_size > n || min_size * (int64_t)num_sites > n)
        return fm_error(FM_ERR_RANGE, "dirichlet partition: %d sites of at least %lld samples need %lld, have %lld",
                        num_sites, (long long)min_size, (long long)min_size * num_sites, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= num_classes)
            return fm_error(FM_ERR_RANGE, "dirichlet partition: sample %lld has label %d outside [0, %d)", (long long)i,
                            labels[i], num_classes);

    const size_t nn = (size_t)(n > 0 ? n : 1);
    /* by_class and site_of get every entry written below; zeroing them keeps a slip in that from reading
     * indeterminate values (and lets the static analyzer see it). */
    int64_t *by_class = calloc(nn, sizeof(int64_t)); /* indices grouped by class */
    int64_t *class_start = calloc((size_t)num_classes + 1, sizeof(int64_t));
    int32_t *site_of = calloc(nn, sizeof(int32_t));
    int64_t *counts = malloc((size_t)num_sites * sizeof(int64_t));
    double *share = malloc((size_t)num_sites * sizeof(double));
    if (!by_class || !class_start || !site_of || !counts || !share) {
        free(by_class);
        free(class_start);
        free(site_of);
        free(counts);
        free(share);
        return fm_error(FM_ERR_NO_MEMORY, "dirichlet partition: no memory for %lld samples", (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        class_start[labels[i] + 1]++;
    for (int c = 0; c < num_classes; c++)
        class_start[c + 1] += class_start[c];
    for (int64_t i = 0; i < n; i++) /* counting sort by class; class_start[c] ends as the start of c + 1 */
        by_class[class_start[labels[i]]++] = i;
    for (int c = num_classes; c > 0; c--)
        class_start[c] = class_start[c - 1];
    class_start[0] = 0;

    int attempt = 0, done = 0;
    for (; attempt < MAX_ATTEMPTS && !done; attempt++) {
        /* Each attempt draws from its own stream (the class lists carry over their earlier shuffles, which is
         * deterministic too). */
        fm_rng rng = fm_rng_make(seed, 0xD1A0000ULL + (uint64_t)attempt);
        memset(counts, 0, (size_t)num_sites * sizeof(int64_t));
        for (int c = 0; c < num_classes; c++) {
            int64_t *idx = by_class + class_start[c];
            const int64_t nc = class_start[c + 1] - class_start[c];
            shuffle64(&rng, idx, (size_t)nc);
            fm_dirichlet_sample(&rng, alpha, num_sites, share);
            /* Cut points floor(cumsum(p)·nc), as numpy's recipe does; the last site takes the rest. */
            double cum = 0.0;
            int64_t from = 0;
            for (int k = 0; k < num_sites; k++) {
                int64_t to;
                if (k == num_sites - 1) {
                    to = nc;
                } else {
                    cum += share[k];
                    to = (int64_t)floor(cum * (double)nc);
                    if (to > nc)
                        to = nc;
                    if (to < from)
                        to = from;
                }
                for (int64_t j = from; j < to; j++)
                    site_of[idx[j]] = k;
                counts[k] += to - from;
                from = to;
            }
        }
        done = 1;
        for (int k = 0; k < num_sites; k++)
            if (counts[k] < min_size)
                done = 0;
    }
    fm_status st;
    if (!done)
        st = fm_error(FM_ERR_RANGE,
                      "dirichlet partition: no draw in %d attempts gave every one of %d sites at least %lld samples "
                      "(alpha %g, %lld samples); lower min_size or raise alpha",
                      MAX_ATTEMPTS, num_sites, (long long)min_size, alpha, (long long)n);
    else
        st = from_site_ids(site_of, n, num_sites, out);
    free(by_class);
    free(class_start);
    free(site_of);
    free(counts);
    free(share);
    return st;
}

fm_status fm_partition_label_skew(const fm_partition *p, const int32_t *labels, int num_classes, double *out)
{
    if (!p || !out || (!labels && p->n > 0))
        return fm_error(FM_ERR_INVALID_ARG, "label skew: NULL argument");
    if (num_classes < 1)
        return fm_error(FM_ERR_INVALID_ARG, "label skew: number of classes %d < 1", num_classes);
    double *global = calloc((size_t)num_classes, sizeof(double)), *local = calloc((size_t)num_classes, sizeof(double));
    if (!global || !local) {
        free(global);
        free(local);
        return fm_error(FM_ERR_NO_MEMORY, "label skew: out of memory");
    }
    fm_status st = FM_OK;
    for (int64_t i = 0; i < p->n && st == FM_OK; i++) {
        int32_t l = labels[p->indices[i]];
        if (l < 0 || l >= num_classes)
            st = fm_error(FM_ERR_RANGE, "label skew: sample %lld has label %d outside [0, %d)",
                          (long long)p->indices[i], l, num_classes);
        else
            global[l] += 1.0;
    }
    double skew = 0.0;
    if (st == FM_OK && p->n > 0) {
        for (int c = 0; c < num_classes; c++)
            global[c] /= (double)p->n;
        for (int k = 0; k < p->num_sites; k++) {
            const int64_t size = fm_partition_site_size(p, k);
            if (size == 0)
                continue;
            const int64_t *idx = fm_partition_site_indices(p, k);
            memset(local, 0, (size_t)num_classes * sizeof(double));
            for (int64_t j = 0; j < size; j++)
                local[labels[idx[j]]] += 1.0 / (double)size;
            double tv = 0.0;
            for (int c = 0; c < num_classes; c++)
                tv += fabs(local[c] - global[c]);
            skew += 0.5 * tv * (double)size / (double)p->n;
        }
    }
    free(global);
    free(local);
    if (st == FM_OK)
        *out = skew;
    return st;
}
