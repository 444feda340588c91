/* Time and peak memory of CreamFL's streaming ensemble (fm_creamfl_ensemble) for one modality: K sites' (n, d)
 * representations scored against the other modality's global (n, d) ones. One size per process, so the peak
 * resident set (getrusage) belongs to that size. Prints one JSON line.
 *   bench_ensemble N D K [TILE_ROWS TILE_COLS] */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <sys/resource.h>

#include "fedmm/creamfl.h"
#include "fedmm/log.h"
#include "fedmm/rng.h"
#include "fedmm/threads.h"

static float *rows(uint64_t stream, size_t n, size_t d)
{
    float *x = malloc(n * d * sizeof(float));
    if (!x)
        return NULL;
    fm_rng rng = fm_rng_make(7, stream);
    fm_rng_normal(&rng, x, n * d, 0.0f, 1.0f);
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (size_t e = 0; e < d; e++)
            s += (double)x[i * d + e] * x[i * d + e];
        for (size_t e = 0; e < d; e++)
            x[i * d + e] = (float)(x[i * d + e] / sqrt(s));
    }
    return x;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_ensemble N D K [TILE_ROWS TILE_COLS]\n");
        return 2;
    }
    const size_t n = strtoull(argv[1], NULL, 10), d = strtoull(argv[2], NULL, 10);
    const int K = atoi(argv[3]);
    fm_creamfl_tiles t = {argc > 5 ? strtoull(argv[4], NULL, 10) : 0, argc > 5 ? strtoull(argv[5], NULL, 10) : 0};
    if (K < 1 || K > 64 || n < 1 || d < 1) {
        fprintf(stderr, "bench_ensemble: bad sizes\n");
        return 2;
    }
    const float *reps[64];
    for (int k = 0; k < K; k++)
        if (!(reps[k] = rows(1 + (uint64_t)k, n, d)))
            return 1;
    float *g = rows(100, n, d), *agg = malloc(n * d * sizeof(float));
    if (!g || !agg)
        return 1;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double rss_inputs = ru.ru_maxrss / 1024.0;
    const double t0 = fm_now_seconds();
    if (fm_creamfl_ensemble(reps, K, g, n, d, t, 0, agg, NULL) != FM_OK) {
        fprintf(stderr, "bench_ensemble: %s\n", fm_last_error());
        return 1;
    }
    const double secs = fm_now_seconds() - t0;
    getrusage(RUSAGE_SELF, &ru);
    double check = 0.0;
    for (size_t i = 0; i < n * d; i++)
        check += agg[i];
    const double input_mb = (double)(K + 2) * n * d * 4 / 1e6, naive_mb = (double)n * n * 4 / 1e6;
    printf("{\"n\": %zu, \"d\": %zu, \"K\": %d, \"threads\": %d, \"seconds\": %.3f, \"gflop\": %.1f, "
           "\"peak_rss_mb\": %.1f, \"rss_before_mb\": %.1f, \"inputs_mb\": %.1f, \"naive_logits_mb_per_site\": %.1f, "
           "\"checksum\": %.6g}\n",
           n, d, K, fm_get_num_threads(), secs, 2.0 * K * (double)n * n * d / 1e9, ru.ru_maxrss / 1024.0, rss_inputs,
           input_mb, naive_mb, check);
    for (int k = 0; k < K; k++)
        free((void *)reps[k]);
    free(g);
    free(agg);
    return 0;
}
