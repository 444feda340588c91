/* Check of global-norm gradient clipping (fm_clip_grad_norm, fm_cpu_sum_squares): the norm against a
 * float64 sum, no change below the threshold, a rescale to exactly max_norm above it, NaN and Inf
 * gradients refused with the gradients untouched; the argument refusals. */
#include <math.h>

#include "gc_util.h"

#include "cpu/cpu_ops.h"
#include "fedmm/ops.h"

static double ref_norm(const double *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

/* Clips random gradients (norm ≈ √(n/3)) with max_norm = ratio·norm. */
static void run_case(uint64_t stream, int ndim, const int64_t *shape, double ratio)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    gc_buf g = gc_rand(&rng, n, -1.0f, 1.0f);
    const double norm = ref_norm(g.d, n);
    const float max_norm = (float)(ratio * norm);
    float got = -1.0f;
    fm_tensor tg = gc_f32(&g, ndim, shape);
    GC_EXPECT(fm_clip_grad_norm(&tg, max_norm, &got), FM_OK);
    fm_test_assert_close("clip norm before", &got, &norm, 1, 1e-6, 0.0);

    const double scale = norm > max_norm ? (double)max_norm / norm : 1.0;
    double *want = gc_dalloc(n);
    for (size_t i = 0; i < n; i++)
        want[i] = g.d[i] * scale;
    fm_test_assert_close("clipped gradients", g.f, want, n, 1e-6, 1e-7);
    for (size_t i = 0; scale == 1.0 && i < n; i++)
        assert_true(g.f[i] == (float)g.d[i]); /* below the threshold: bit-for-bit unchanged */

    fm_test_to_double(want, g.f, n);
    const double after = ref_norm(want, n), target = norm > max_norm ? (double)max_norm : norm;
    fm_test_assert_close_d("norm after clipping", &after, &target, 1, 1e-6, 0.0);
    const double ss = fm_cpu_sum_squares(g.f, n);
    fm_test_assert_close_d("sum of squares", &ss, &(double){after * after}, 1, 1e-12, 0.0);
    free(want);
    gc_free(&g);
}

static void test_below_threshold(void **state)
{
    (void)state;
    const int64_t s[2] = {7, 13};
    run_case(1, 2, s, 1.5);
    run_case(2, 2, s, 1.0001);
}

static void test_above_threshold(void **state)
{
    (void)state;
    const int64_t s[2] = {7, 13}, big[1] = {100003}, one[1] = {1};
    run_case(3, 2, s, 0.25);
    run_case(4, 1, big, 0.01); /* many chunks, threads */
    run_case(5, 1, one, 0.5);
}

static void test_non_finite_left_untouched(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 6);
    const size_t n = 1001;
    const int64_t s[1] = {(int64_t)n};
    float *g = fm_test_alloc(n * sizeof(float)), *keep = fm_test_alloc(n * sizeof(float));
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
        fm_test_fill(&rng, g, n, -5.0f, 5.0f);
        g[(size_t)fm_rng_below(&rng, n)] = bad[k];
        memcpy(keep, g, n * sizeof(float));
        fm_tensor tg = gc_view(g, FM_F32, 1, s);
        float norm = 0.0f;
        GC_EXPECT(fm_clip_grad_norm(&tg, 1.0f, &norm), FM_ERR_NOT_FINITE);
        assert_false(isfinite(norm));
        assert_memory_equal(g, keep, n * sizeof(float));
    }
    free(g);
    free(keep);
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    float g[6] = {3.0f, 4.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int32_t gi[6] = {1};
    const int64_t s[2] = {2, 3};
    fm_tensor tg = gc_view(g, FM_F32, 2, s), tgi = gc_view(gi, FM_I32, 2, s);
    GC_EXPECT(fm_clip_grad_norm(&tg, 1.0f, NULL), FM_OK); /* norm_before is optional */
    assert_true(fabsf(g[0] - 0.6f) < 1e-7f && fabsf(g[1] - 0.8f) < 1e-7f);
    GC_EXPECT(fm_clip_grad_norm(&tg, 0.0f, NULL), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_clip_grad_norm(&tg, -1.0f, NULL), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_clip_grad_norm(&tg, NAN, NULL), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_clip_grad_norm(&tgi, 1.0f, NULL), FM_ERR_DTYPE);
    GC_EXPECT(fm_clip_grad_norm(NULL, 1.0f, NULL), FM_ERR_INVALID_ARG);
    fm_tensor tgc = tg;
    tgc.device = FM_DEVICE_CUDA;
    /* A CUDA build has kernels for this op: it would launch them on these host pointers (tests/gpu covers it). */
#ifndef FEDMM_WITH_CUDA
    GC_EXPECT(fm_clip_grad_norm(&tgc, 1.0f, NULL), FM_ERR_DEVICE);
#else
    (void)tgc;
#endif
    /* an empty gradient has norm 0 and is left as it is */
    fm_tensor te = gc_view(g, FM_F32, 1, (const int64_t[]){0});
    float norm = -1.0f;
    GC_EXPECT(fm_clip_grad_norm(&te, 1.0f, &norm), FM_OK);
    assert_true(norm == 0.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_below_threshold),
        cmocka_unit_test(test_above_threshold),
        cmocka_unit_test(test_non_finite_left_untouched),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
