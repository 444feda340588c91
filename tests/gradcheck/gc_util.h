/* Helpers shared by the op gradient checks in tests/gradcheck/: paired float32 / float64 buffers holding the
 * same random values, tensor views over them, finite differences over a window of a large input, and the
 * comparisons with the suite's tolerances (float32 op against float64 truth). */
#ifndef FEDMM_GC_UTIL_H
#define FEDMM_GC_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "fedmm/status.h"
#include "fedmm/tensor.h"

/* Forward: float32 op vs float64 reference (DESIGN.md §5: ≤ 1e-5 relative). */
#define GC_FWD_RTOL 1e-5
#define GC_FWD_ATOL 1e-6
/* Gradients: float32 backward vs central differences of the float64 reference. */
#define GC_RTOL 1e-4
#define GC_ATOL 1e-5
/* Step of the central differences: truncation ~h², round-off ~1e-16·|L|/h, both far below GC_ATOL. */
#define GC_H 1e-6

/* The same n values as float (what the op sees) and as double (what the reference sees). */
typedef struct gc_buf {
    float *f;
    double *d;
    size_t n;
} gc_buf;

/* Uniform random values in [lo, hi). */
static inline gc_buf gc_rand(fm_rng *rng, size_t n, float lo, float hi)
{
    gc_buf b = {fm_test_alloc(n * sizeof(float)), fm_test_alloc(n * sizeof(double)), n};
    fm_test_fill(rng, b.f, n, lo, hi);
    fm_test_to_double(b.d, b.f, n);
    return b;
}

static inline gc_buf gc_zeros(size_t n)
{
    gc_buf b = {fm_test_alloc(n * sizeof(float)), fm_test_alloc(n * sizeof(double)), n};
    return b;
}

static inline void gc_free(gc_buf *b)
{
    free(b->f);
    free(b->d);
    b->f = NULL;
    b->d = NULL;
}

static inline double *gc_dalloc(size_t n) { return fm_test_alloc(n * sizeof(double)); }

/* A contiguous CPU view over `data`; fails the test if the view is refused. */
static inline fm_tensor gc_view(void *data, fm_dtype dtype, int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    fm_tensor t;
    fm_status st = fm_tensor_view(&t, data, n * fm_dtype_size(dtype), 0, dtype, FM_DEVICE_CPU, ndim, shape);
    if (st != FM_OK)
        fail_msg("fm_tensor_view: %s", fm_last_error());
    return t;
}

static inline fm_tensor gc_f32(gc_buf *b, int ndim, const int64_t *shape) { return gc_view(b->f, FM_F32, ndim, shape); }

/* Asserts that a call returned `want`, and that a failure left a message behind. */
#define GC_EXPECT(call, want)                                                                                          \
    do {                                                                                                               \
        fm_clear_error();                                                                                              \
        fm_status gc_st_ = (call);                                                                                     \
        if (gc_st_ != (want))                                                                                          \
            fail_msg("%s returned %s, expected %s (%s)", #call, fm_strerror(gc_st_), fm_strerror(want),                \
                     fm_last_error());                                                                                 \
        if ((want) != FM_OK && fm_last_error()[0] == '\0')                                                             \
            fail_msg("%s failed without a message", #call);                                                            \
    } while (0)

/* The part of an input that finite differences cover: all of it when small, else a random window of `max`
 * entries (each difference reruns the whole reference, so large inputs are sampled). */
typedef struct gc_window {
    size_t off, n;
} gc_window;

static inline gc_window gc_pick(fm_rng *rng, size_t n, size_t max)
{
    gc_window w = {0, n};
    if (n > max) {
        w.off = (size_t)fm_rng_below(rng, n - max + 1);
        w.n = max;
    }
    return w;
}

/* Central differences of f over x[w.off, w.off + w.n) into fd (w.n entries). */
static inline void gc_fd(fm_test_scalar_fn f, void *ctx, double *x, gc_window w, double *fd)
{
    fm_test_finite_diff(f, ctx, x + w.off, w.n, GC_H, fd);
}

/* Absolute tolerance for a gradient entry that the op sums over `terms` float32 products of size up to 1
 * (a GEMM's inner dimension): a float32 running sum errs by about terms·2⁻²⁴·|partial sum|, which for long
 * sums exceeds GC_ATOL (2112 terms gave errors up to 8e-5 against float64). Short sums keep GC_ATOL. */
static inline double gc_atol_sum(size_t terms)
{
    double a = (double)terms * 1.2e-7;
    return a > GC_ATOL ? a : GC_ATOL;
}

/* Checks an accumulated gradient: got[w] == start[w] + times·fd within GC_RTOL and `atol`, with start the
 * gradient buffer's values before the backward calls (as doubles). */
static inline void gc_check_grad_atol(const char *what, const float *got, const double *start, const double *fd,
                                      gc_window w, double times, double atol)
{
    double *want = gc_dalloc(w.n);
    for (size_t i = 0; i < w.n; i++)
        want[i] = (start ? start[w.off + i] : 0.0) + times * fd[i];
    char label[160];
    snprintf(label, sizeof label, "%s (entries %zu..%zu, after %g backward calls)", what, w.off, w.off + w.n, times);
    fm_test_assert_close(label, got + w.off, want, w.n, GC_RTOL, atol);
    free(want);
}

static inline void gc_check_grad(const char *what, const float *got, const double *start, const double *fd, gc_window w,
                                 double times)
{
    gc_check_grad_atol(what, got, start, fd, w, times, GC_ATOL);
}

#endif
