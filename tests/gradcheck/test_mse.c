/* Gradient check of the mean squared error (fm_mse_forward / _backward): loss against a float64 reference,
 * da and db against central differences of loss·c, on odd shapes and a large input (the chunked sum); the
 * dispatcher's refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

static double ref_mse(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (a[i] - b[i]) * (a[i] - b[i]);
    return s / (double)n;
}

typedef struct mse_case {
    const double *a, *b;
    size_t n;
    double c;
} mse_case;

static double objective(void *ctx)
{
    mse_case *k = ctx;
    return k->c * ref_mse(k->a, k->b, k->n);
}

static void run_case(uint64_t stream, int ndim, const int64_t *shape)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    gc_buf a = gc_rand(&rng, n, -1.0f, 1.0f), b = gc_rand(&rng, n, -0.5f, 1.5f);
    float loss = -1.0f;
    fm_tensor ta = gc_f32(&a, ndim, shape), tb = gc_f32(&b, ndim, shape), tl = gc_view(&loss, FM_F32, 0, NULL);
    GC_EXPECT(fm_mse_forward(&tl, &ta, &tb), FM_OK);
    const double want = ref_mse(a.d, b.d, n);
    fm_test_assert_close("mse loss", &loss, &want, 1, GC_FWD_RTOL, GC_FWD_ATOL);

    /* dloss grows with n (capped, so that |L| stays small enough for clean differences): the gradient
     * 2c(a − b)/n stays far above GC_ATOL on a large input */
    const double cval = (0.5 + fm_rng_double(&rng)) * (double)(n < 4096 ? n : 4096);
    mse_case k = {a.d, b.d, n, cval};
    gc_buf da = gc_rand(&rng, n, -1.0f, 1.0f), db = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tda = gc_f32(&da, ndim, shape), tdb = gc_f32(&db, ndim, shape);
    GC_EXPECT(fm_mse_backward(&tda, &tdb, &ta, &tb, (float)cval), FM_OK);
    GC_EXPECT(fm_mse_backward(&tda, &tdb, &ta, &tb, (float)cval), FM_OK);
    GC_EXPECT(fm_mse_backward(NULL, &tdb, &ta, &tb, (float)cval), FM_OK);

    /* large inputs: differences over a random window (each one reruns the O(n) reference) */
    const gc_window wa = gc_pick(&rng, n, 64), wb = gc_pick(&rng, n, 64);
    double *fda = gc_dalloc(wa.n), *fdb = gc_dalloc(wb.n);
    gc_fd(objective, &k, a.d, wa, fda);
    gc_fd(objective, &k, b.d, wb, fdb);
    gc_check_grad("mse da", da.f, da.d, fda, wa, 2.0);
    gc_check_grad("mse db (third call)", db.f, db.d, fdb, wb, 3.0);

    free(fda);
    free(fdb);
    gc_free(&a);
    gc_free(&b);
    gc_free(&da);
    gc_free(&db);
}

static void test_small_shapes(void **state)
{
    (void)state;
    const int64_t s2[2] = {3, 7}, s1[1] = {1}, s3[3] = {2, 5, 3};
    run_case(1, 2, s2);
    run_case(2, 1, s1);
    run_case(3, 3, s3);
}

static void test_large_input(void **state)
{
    (void)state;
    const int64_t s[2] = {1001, 257}; /* > 64 chunks of unequal length */
    run_case(4, 2, s);
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    float a[12] = {1.0f, 2.0f, 3.0f}, b[12] = {0.5f}, loss, two[2];
    const int64_t s[2] = {3, 4}, st[2] = {4, 3}, s0[2] = {3, 0}, s2[1] = {2};
    fm_tensor ta = gc_view(a, FM_F32, 2, s), tb = gc_view(b, FM_F32, 2, s), tl = gc_view(&loss, FM_F32, 0, NULL);
    GC_EXPECT(fm_mse_forward(&tl, &ta, &tb), FM_OK);
    assert_true(fabsf(loss - (0.25f + 4.0f + 9.0f) / 12.0f) < 1e-6f);
    fm_tensor tbt = gc_view(b, FM_F32, 2, st);
    GC_EXPECT(fm_mse_forward(&tl, &ta, &tbt), FM_ERR_SHAPE); /* same count, other shape */
    GC_EXPECT(fm_mse_backward(&ta, NULL, &ta, &tbt, 1.0f), FM_ERR_SHAPE);
    GC_EXPECT(fm_mse_backward(&tbt, NULL, &ta, &tb, 1.0f), FM_ERR_SHAPE);
    fm_tensor t0 = gc_view(a, FM_F32, 2, s0);
    GC_EXPECT(fm_mse_forward(&tl, &t0, &t0), FM_ERR_SHAPE);
    fm_tensor tl2 = gc_view(two, FM_F32, 1, s2);
    GC_EXPECT(fm_mse_forward(&tl2, &ta, &tb), FM_ERR_SHAPE);
    fm_tensor tai = gc_view(a, FM_I32, 2, s);
    GC_EXPECT(fm_mse_forward(&tl, &tai, &tb), FM_ERR_DTYPE);
    GC_EXPECT(fm_mse_forward(NULL, &ta, &tb), FM_ERR_INVALID_ARG);
    fm_tensor tac = ta, tbc = tb, tlc = tl;
    tac.device = tbc.device = tlc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_mse_forward(&tl, &tac, &tb), FM_ERR_DEVICE);
    /* A CUDA build has kernels for this op: it would launch them on these host pointers (tests/gpu covers it). */
#ifndef FEDMM_WITH_CUDA
    GC_EXPECT(fm_mse_forward(&tlc, &tac, &tbc), FM_ERR_DEVICE);
    GC_EXPECT(fm_mse_backward(&tac, NULL, &tac, &tbc, 1.0f), FM_ERR_DEVICE);
#else
    (void)tlc;
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_shapes),
        cmocka_unit_test(test_large_input),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
