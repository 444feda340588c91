/* Gradient check of the residual add (fm_residual_*): forward against float64, backward against central
 * differences, accumulation into either or both gradients, refusals. */
#include "gc_util.h"

#include "fedmm/ops.h"

typedef struct res_ctx {
    size_t n;
    const double *a, *b, *wout;
    double *out;
} res_ctx;

static double res_obj(void *p)
{
    res_ctx *c = p;
    for (size_t i = 0; i < c->n; i++)
        c->out[i] = c->a[i] + c->b[i];
    return fm_test_dot(c->wout, c->out, c->n);
}

static void run_residual(uint64_t stream, int ndim, const int64_t *shape, size_t fd_max)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];

    gc_buf a = gc_rand(&rng, n, -2.0f, 2.0f), b = gc_rand(&rng, n, -2.0f, 2.0f), out = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor ta = gc_f32(&a, ndim, shape), tb = gc_f32(&b, ndim, shape), tout = gc_f32(&out, ndim, shape);
    GC_EXPECT(fm_residual_forward(&tout, &ta, &tb), FM_OK);

    gc_buf wout = gc_rand(&rng, n, -1.0f, 1.0f);
    res_ctx ctx = {n, a.d, b.d, wout.d, gc_dalloc(n)};
    res_obj(&ctx);
    fm_test_assert_close("residual out", out.f, ctx.out, n, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_window wa = gc_pick(&rng, n, fd_max), wb = gc_pick(&rng, n, fd_max);
    double *fda = gc_dalloc(wa.n), *fdb = gc_dalloc(wb.n);
    gc_fd(res_obj, &ctx, a.d, wa, fda);
    gc_fd(res_obj, &ctx, b.d, wb, fdb);
    gc_buf da = gc_rand(&rng, n, -1.0f, 1.0f), db = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tda = gc_f32(&da, ndim, shape), tdb = gc_f32(&db, ndim, shape), tdout = gc_f32(&wout, ndim, shape);
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(fm_residual_backward(&tda, &tdb, &tdout), FM_OK);
        gc_check_grad("residual da", da.f, da.d, fda, wa, call);
        gc_check_grad("residual db", db.f, db.d, fdb, wb, call);
    }
    GC_EXPECT(fm_residual_backward(NULL, &tdb, &tdout), FM_OK);
    gc_check_grad("residual da (skipped)", da.f, da.d, fda, wa, 2);
    gc_check_grad("residual db (alone)", db.f, db.d, fdb, wb, 3);
    GC_EXPECT(fm_residual_backward(&tda, NULL, &tdout), FM_OK);
    gc_check_grad("residual da (alone)", da.f, da.d, fda, wa, 3);
    gc_check_grad("residual db (skipped)", db.f, db.d, fdb, wb, 3);

    free(fda), free(fdb), free(ctx.out);
    gc_free(&a), gc_free(&b), gc_free(&out), gc_free(&wout), gc_free(&da), gc_free(&db);
}

static void test_residual_small(void **state)
{
    (void)state;
    run_residual(1, 3, (const int64_t[]){5, 3, 7}, SIZE_MAX);
}

/* Past the OpenMP threshold; differences on windows. */
static void test_residual_large(void **state)
{
    (void)state;
    run_residual(2, 2, (const int64_t[]){7, 10001}, 32);
}

/* The output may alias an input: x = x + f(x) is how the model uses it. */
static void test_residual_in_place(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    const int64_t shape[2] = {5, 7};
    gc_buf a = gc_rand(&rng, 35, -2.0f, 2.0f), b = gc_rand(&rng, 35, -2.0f, 2.0f);
    fm_tensor ta = gc_f32(&a, 2, shape), tb = gc_f32(&b, 2, shape);
    GC_EXPECT(fm_residual_forward(&ta, &ta, &tb), FM_OK);
    double want[35];
    for (size_t i = 0; i < 35; i++)
        want[i] = a.d[i] + b.d[i];
    fm_test_assert_close("residual in place", a.f, want, 35, GC_FWD_RTOL, GC_FWD_ATOL);
    gc_free(&a), gc_free(&b);
}

static void test_residual_rejects(void **state)
{
    (void)state;
    float buf[64] = {0};
    int32_t ibuf[64] = {0};
    fm_tensor x = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 7});
    fm_tensor x_t = gc_view(buf, FM_F32, 2, (const int64_t[]){7, 5});
    fm_tensor x_flat = gc_view(buf, FM_F32, 1, (const int64_t[]){35});
    fm_tensor x_int = gc_view(ibuf, FM_I32, 2, (const int64_t[]){5, 7});
    GC_EXPECT(fm_residual_forward(&x, &x, &x_t), FM_ERR_SHAPE);
    GC_EXPECT(fm_residual_forward(&x_flat, &x, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_residual_forward(&x, &x_int, &x), FM_ERR_DTYPE);
    GC_EXPECT(fm_residual_forward(&x, &x, NULL), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_residual_backward(&x_t, NULL, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_residual_backward(NULL, &x_flat, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_residual_backward(&x, &x_int, &x), FM_ERR_DTYPE);

    fm_tensor x_gpu = x;
    x_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_residual_forward(&x, &x_gpu, &x), FM_ERR_DEVICE);
    GC_EXPECT(fm_residual_backward(&x_gpu, &x, &x), FM_ERR_DEVICE);
#ifndef FEDMM_WITH_CUDA
    /* Only without a CUDA backend: with one, this would launch a kernel on host memory. */
    GC_EXPECT(fm_residual_forward(&x_gpu, &x_gpu, &x_gpu), FM_ERR_DEVICE);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_residual_small),
        cmocka_unit_test(test_residual_large),
        cmocka_unit_test(test_residual_in_place),
        cmocka_unit_test(test_residual_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
