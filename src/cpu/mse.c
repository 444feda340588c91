/* CPU reference of the mean squared error, mean((a − b)²) — CreamFL's distillation loss. The sum runs in
 * double through fixed chunks added in order, so the loss is the same with any thread count. */
#include "cpu/cpu_ops.h"

enum { MSE_CHUNKS = 64 };

void fm_cpu_mse_forward(float *loss, const float *a, const float *b, size_t n)
{
    if (n == 0) {
        *loss = 0.0f; /* no elements: nothing to penalise (the dispatcher refuses empty tensors) */
        return;
    }
    double part[MSE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < MSE_CHUNKS; ch++) {
        const size_t lo = n * (size_t)ch / MSE_CHUNKS, hi = n * (size_t)(ch + 1) / MSE_CHUNKS;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) {
            const double d = (double)a[i] - b[i];
            s += d * d;
        }
        part[ch] = s;
    }
    double total = 0.0;
    for (int ch = 0; ch < MSE_CHUNKS; ch++)
        total += part[ch];
    *loss = (float)(total / (double)n);
}

void fm_cpu_mse_backward(float *da, float *db, const float *a, const float *b, size_t n, float dloss)
{
    if (n == 0 || (!da && !db))
        return;
    const float scale = (float)(2.0 * (double)dloss / (double)n);
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static)
    for (long long ii = 0; ii < nn; ii++) {
        const size_t i = (size_t)ii;
        const float g = scale * (a[i] - b[i]);
        if (da)
            da[i] += g;
        if (db)
            db[i] -= g;
    }
}
