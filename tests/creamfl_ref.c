/* CreamFL's ensemble in float64 (creamfl_ref.h). */
#include "creamfl_ref.h"

#include <math.h>
#include <stdlib.h>

#include "testutil.h"

void fm_test_creamfl_naive(const float *const *reps, int K, const float *g, size_t n, size_t d, double *scores,
                           double *w, double *agg)
{
    double *logits = fm_test_alloc(n * n * sizeof(double));
    for (int k = 0; k < K; k++) {
        for (size_t p = 0; p < n; p++)
            for (size_t j = 0; j < n; j++) {
                double s = 0.0;
                for (size_t e = 0; e < d; e++)
                    s += (double)reps[k][p * d + e] * (double)g[j * d + e];
                logits[p * n + j] = s;
            }
        for (size_t p = 0; p < n; p++) {
            double sum = 0.0;
            for (size_t j = 0; j < n; j++)
                sum += exp(logits[p * n + j]);
            scores[(size_t)k * n + p] = logits[p * n + p] - log(sum);
        }
    }
    free(logits);
    for (size_t p = 0; p < n; p++) {
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp(scores[(size_t)k * n + p]);
        for (int k = 0; k < K; k++)
            w[(size_t)k * n + p] = exp(scores[(size_t)k * n + p]) / sum;
        for (size_t e = 0; e < d; e++) {
            double a = 0.0;
            for (int k = 0; k < K; k++)
                a += w[(size_t)k * n + p] * reps[k][p * d + e];
            agg[p * d + e] = a;
        }
    }
}
