/* Shared helpers for fedmm's tests: see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t fm_test_seed(void)
{
    static uint64_t seed;
    static int printed;
    if (!printed) {
        const char *env = getenv("FEDMM_TEST_SEED");
        seed = env ? strtoull(env, NULL, 10) : 20261122ULL;
        fprintf(stderr, "test seed %llu (set FEDMM_TEST_SEED to change)\n", (unsigned long long)seed);
        printed = 1;
    }
    return seed;
}

void fm_test_fill(fm_rng *rng, float *x, size_t n, float lo, float hi)
{
    fm_rng_uniform(rng, x, n);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * x[i];
}

void fm_test_fill_d(fm_rng *rng, double *x, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * fm_rng_double(rng);
}

void fm_test_to_double(double *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i];
}

void fm_test_to_float(float *dst, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
}

void *fm_test_alloc(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p)
        fail_msg("out of memory allocating %zu bytes", bytes);
    return p;
}

float *fm_test_random(fm_rng *rng, size_t n, float lo, float hi)
{
    float *x = fm_test_alloc(n * sizeof(float));
    fm_test_fill(rng, x, n, lo, hi);
    return x;
}

float *fm_test_copy(const float *x, size_t n)
{
    float *y = fm_test_alloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

float *fm_test_rows(fm_rng *rng, size_t n, size_t d, float norm)
{
    float *x = fm_test_alloc(n * d * sizeof(float));
    fm_test_fill(rng, x, n * d, -1.0f, 1.0f);
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (size_t e = 0; e < d; e++)
            s += (double)x[i * d + e] * x[i * d + e];
        for (size_t e = 0; e < d; e++)
            x[i * d + e] = (float)(norm * x[i * d + e] / sqrt(s));
    }
    return x;
}

int fm_test_same_bits(float a, float b)
{
    uint32_t x, y;
    memcpy(&x, &a, sizeof x);
    memcpy(&y, &b, sizeof y);
    return x == y;
}

static double check_close(const char *what, const float *gotf, const double *gotd, const double *want, size_t n,
                          double rtol, double atol)
{
    double worst_excess = -1.0, max_rel = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double g = gotf ? (double)gotf[i] : gotd[i];
        double d = fabs(g - want[i]);
        double tol = atol + rtol * fabs(want[i]);
        double rel = d / (fabs(want[i]) > 1e-30 ? fabs(want[i]) : 1e-30);
        if (rel > max_rel && fabs(want[i]) > atol)
            max_rel = rel;
        if (!(d <= tol) && (d - tol > worst_excess || isnan(d))) {
            worst_excess = isnan(d) ? INFINITY : d - tol;
            worst = i;
        }
    }
    if (worst_excess >= 0.0) {
        double g = gotf ? (double)gotf[worst] : gotd[worst];
        fail_msg("%s: element %zu of %zu: got %.9g, want %.9g (|diff| %.3g > atol %.1g + rtol %.1g·|want|)", what,
                 worst, n, g, want[worst], fabs(g - want[worst]), atol, rtol);
    }
    return max_rel;
}

double fm_test_assert_close(const char *what, const float *got, const double *want, size_t n, double rtol, double atol)
{
    return check_close(what, got, NULL, want, n, rtol, atol);
}

double fm_test_assert_close_d(const char *what, const double *got, const double *want, size_t n, double rtol,
                              double atol)
{
    return check_close(what, NULL, got, want, n, rtol, atol);
}

double fm_test_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]))
            return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void fm_test_finite_diff(fm_test_scalar_fn f, void *ctx, double *x, size_t n, double h, double *grad)
{
    for (size_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        double fp = f(ctx);
        x[i] = keep - h;
        double fm = f(ctx);
        x[i] = keep;
        grad[i] = (fp - fm) / (2.0 * h);
    }
}

double fm_test_dot(const double *w, const double *y, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += w[i] * y[i];
    return s;
}
