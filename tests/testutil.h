/* Shared helpers for fedmm's tests (cmocka): fresh random inputs, float64 comparisons and central
 * finite differences. Tests compare float32 ops against float64 references written in the test. */
#ifndef FEDMM_TESTUTIL_H
#define FEDMM_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka needs the three headers above first. */
#include <cmocka.h>
#include <string.h>

#include "fedmm/rng.h"
#include "fedmm/status.h"

/* Exit code that ctest reports as "skipped" (SKIP_RETURN_CODE). */
#define FM_TEST_SKIP 77

/* A per-test seed: FEDMM_TEST_SEED from the environment, else a fixed default; printed so a failure can
 * be reproduced. */
uint64_t fm_test_seed(void);

/* Fills n floats uniform in [lo, hi) from rng. */
void fm_test_fill(fm_rng *rng, float *x, size_t n, float lo, float hi);
/* Same, into doubles; and float→double / double→float copies. */
void fm_test_fill_d(fm_rng *rng, double *x, size_t n, double lo, double hi);
void fm_test_to_double(double *dst, const float *src, size_t n);
void fm_test_to_float(float *dst, const double *src, size_t n);

/* Calloc that fails the test on OOM. Free with free(). */
void *fm_test_alloc(size_t bytes);

/* n fresh floats uniform in [lo, hi) from rng, and a copy of n floats (fm_test_alloc'd: free with free()). */
float *fm_test_random(fm_rng *rng, size_t n, float lo, float hi);
float *fm_test_copy(const float *x, size_t n);

/* Random rows (n, d) of L2 norm `norm` each, fm_test_alloc'd: as CreamFL's L2-normalised representations (larger
 * norms stress a softmax's running maximum). */
float *fm_test_rows(fm_rng *rng, size_t n, size_t d, float norm);

/* Bit-for-bit equality of two floats (NaN equals itself, −0 differs from +0; memcmp on floats is what clang-tidy
 * rightly distrusts). */
int fm_test_same_bits(float a, float b);

/* Asserts |got - want| <= atol + rtol·|want| elementwise; on failure prints the worst element and fails
 * the current cmocka test. Returns the max relative error seen (for logging). */
double fm_test_assert_close(const char *what, const float *got, const double *want, size_t n, double rtol, double atol);
/* Same with both sides float64. */
double fm_test_assert_close_d(const char *what, const double *got, const double *want, size_t n, double rtol,
                              double atol);
/* ‖a − b‖₂ / ‖b‖₂ in float64 (‖a − b‖₂ when b is zero); INFINITY when a holds a value that is not finite. */
double fm_test_rel_l2(const float *a, const float *b, size_t n);

/* Asserts that `call` returns `want` with a message (fm_last_error()) that contains `needle`. */
#define EXPECT_FAIL(call, want, needle)                                                                                \
    do {                                                                                                               \
        fm_clear_error();                                                                                              \
        fm_status st_ = (call);                                                                                        \
        if (st_ != (want))                                                                                             \
            fail_msg("%s returned %s, expected %s (%s)", #call, fm_strerror(st_), fm_strerror(want), fm_last_error()); \
        if (!strstr(fm_last_error(), (needle)))                                                                        \
            fail_msg("%s: message \"%s\" lacks \"%s\"", #call, fm_last_error(), (needle));                             \
    } while (0)

/* Central finite differences in float64: grad[i] = (f(x + h e_i) − f(x − h e_i)) / 2h for the n
 * entries of x (modified and restored in place). f receives ctx. */
typedef double (*fm_test_scalar_fn)(void *ctx);
void fm_test_finite_diff(fm_test_scalar_fn f, void *ctx, double *x, size_t n, double h, double *grad);

/* Σ w_i·y_i in float64: the scalar objective whose gradient wrt y is w (a random projection of an
 * op's output, so that backward is tested with a non-trivial upstream gradient). */
double fm_test_dot(const double *w, const double *y, size_t n);

#endif
