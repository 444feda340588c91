/* Gradient check of the softmax over the last dim (fm_softmax_*): forward against a float64 reference
 * (including rows whose logits would overflow exp without the max shift), backward against central
 * differences, accumulation, refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

typedef struct sm_ctx {
    size_t N, C;
    const double *x, *wout; /* (N, C) */
    double *out;            /* (N, C) */
} sm_ctx;

static void sm_ref(const sm_ctx *c)
{
    for (size_t n = 0; n < c->N; n++) {
        const double *x = c->x + n * c->C;
        double *y = c->out + n * c->C, mx = x[0], sum = 0.0;
        for (size_t k = 1; k < c->C; k++)
            mx = fmax(mx, x[k]);
        for (size_t k = 0; k < c->C; k++)
            sum += y[k] = exp(x[k] - mx);
        for (size_t k = 0; k < c->C; k++)
            y[k] /= sum;
    }
}

static double sm_obj(void *p)
{
    sm_ctx *c = p;
    sm_ref(c);
    return fm_test_dot(c->wout, c->out, c->N * c->C);
}

static void run_softmax(uint64_t stream, int ndim, const int64_t *shape, size_t fd_max)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t C = (size_t)shape[ndim - 1], N = 1;
    for (int d = 0; d + 1 < ndim; d++)
        N *= (size_t)shape[d];

    gc_buf x = gc_rand(&rng, N * C, -4.0f, 4.0f), out = gc_rand(&rng, N * C, -1.0f, 1.0f);
    /* Every third row sits near 100, where expf overflows unless the row maximum is subtracted first. */
    for (size_t n = 2; n < N; n += 3)
        for (size_t k = 0; k < C; k++)
            x.d[n * C + k] = x.f[n * C + k] += 100.0f;
    fm_tensor tx = gc_f32(&x, ndim, shape), tout = gc_f32(&out, ndim, shape);
    GC_EXPECT(fm_softmax_forward(&tout, &tx), FM_OK);

    gc_buf wout = gc_rand(&rng, N * C, -1.0f, 1.0f);
    sm_ctx ctx = {N, C, x.d, wout.d, gc_dalloc(N * C)};
    sm_ref(&ctx);
    fm_test_assert_close("softmax out", out.f, ctx.out, N * C, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_window wx = gc_pick(&rng, x.n, fd_max);
    double *fdx = gc_dalloc(wx.n);
    gc_fd(sm_obj, &ctx, x.d, wx, fdx);
    gc_buf dx = gc_rand(&rng, x.n, -1.0f, 1.0f);
    fm_tensor tdx = gc_f32(&dx, ndim, shape), tdout = gc_f32(&wout, ndim, shape);
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(fm_softmax_backward(&tdx, &tout, &tdout), FM_OK);
        gc_check_grad("softmax dinp", dx.f, dx.d, fdx, wx, call);
    }
    GC_EXPECT(fm_softmax_backward(NULL, &tout, &tdout), FM_OK);
    gc_check_grad("softmax dinp", dx.f, dx.d, fdx, wx, 2);

    free(fdx), free(ctx.out);
    gc_free(&x), gc_free(&out), gc_free(&wout), gc_free(&dx);
}

static void test_softmax_small(void **state)
{
    (void)state;
    run_softmax(1, 2, (const int64_t[]){5, 7}, SIZE_MAX);
}

static void test_softmax_3d(void **state)
{
    (void)state;
    run_softmax(2, 3, (const int64_t[]){2, 3, 11}, SIZE_MAX);
}

static void test_softmax_one_column(void **state)
{
    (void)state;
    run_softmax(3, 2, (const int64_t[]){5, 1}, SIZE_MAX);
}

/* Past the OpenMP threshold; differences on a window. */
static void test_softmax_large(void **state)
{
    (void)state;
    run_softmax(4, 2, (const int64_t[]){251, 67}, 48);
}

static void test_softmax_rejects(void **state)
{
    (void)state;
    float buf[64] = {0};
    int32_t ibuf[64] = {0};
    fm_tensor x = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 7});
    fm_tensor x_t = gc_view(buf, FM_F32, 2, (const int64_t[]){7, 5});
    fm_tensor x_int = gc_view(ibuf, FM_I32, 2, (const int64_t[]){5, 7});
    fm_tensor scalar = gc_view(buf, FM_F32, 0, NULL);
    GC_EXPECT(fm_softmax_forward(&x_t, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_softmax_forward(&scalar, &scalar), FM_ERR_SHAPE);
    GC_EXPECT(fm_softmax_forward(&x, &x_int), FM_ERR_DTYPE);
    GC_EXPECT(fm_softmax_backward(&x_t, &x, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_softmax_backward(&x, &x, &x_t), FM_ERR_SHAPE);
    GC_EXPECT(fm_softmax_backward(&x_int, &x, &x), FM_ERR_DTYPE);
    GC_EXPECT(fm_softmax_backward(&x, NULL, &x), FM_ERR_INVALID_ARG);

    fm_tensor x_gpu = x;
    x_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_softmax_forward(&x, &x_gpu), FM_ERR_DEVICE);
#ifndef FEDMM_WITH_CUDA /* with CUDA these host buffers would reach a kernel: the gpu tests cover it */
    GC_EXPECT(fm_softmax_forward(&x_gpu, &x_gpu), FM_ERR_DEVICE);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softmax_small),      cmocka_unit_test(test_softmax_3d),
        cmocka_unit_test(test_softmax_one_column), cmocka_unit_test(test_softmax_large),
        cmocka_unit_test(test_softmax_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
