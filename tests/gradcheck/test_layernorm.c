/* Gradient check of layer normalisation (fm_layernorm_*): forward and saved statistics against a float64
 * reference, backward against central differences of it, accumulation, NULL gradients, refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

#define LN_EPS 1e-5f

typedef struct ln_ctx {
    size_t N, C;
    const double *x, *w, *b; /* (N, C), (C), (C) */
    const double *wout;      /* (N, C) */
    double *out, *mean, *rstd;
} ln_ctx;

static void ln_ref(const ln_ctx *c)
{
    for (size_t n = 0; n < c->N; n++) {
        const double *x = c->x + n * c->C;
        double m = 0.0, v = 0.0;
        for (size_t k = 0; k < c->C; k++)
            m += x[k];
        m /= (double)c->C;
        for (size_t k = 0; k < c->C; k++)
            v += (x[k] - m) * (x[k] - m);
        v /= (double)c->C;
        double s = 1.0 / sqrt(v + (double)LN_EPS);
        for (size_t k = 0; k < c->C; k++)
            c->out[n * c->C + k] = (x[k] - m) * s * c->w[k] + c->b[k];
        c->mean[n] = m;
        c->rstd[n] = s;
    }
}

static double ln_obj(void *p)
{
    ln_ctx *c = p;
    ln_ref(c);
    return fm_test_dot(c->wout, c->out, c->N * c->C);
}

/* inp has `ndim` dims `shape`; mean / rstd are flat (N) or, with stats_like_inp, inp's leading dims. */
static void run_layernorm(uint64_t stream, int ndim, const int64_t *shape, int stats_like_inp, size_t fd_max)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t C = (size_t)shape[ndim - 1], N = 1;
    for (int d = 0; d + 1 < ndim; d++)
        N *= (size_t)shape[d];
    const int64_t cshape[1] = {(int64_t)C}, nshape[1] = {(int64_t)N};

    /* An offset mean per row makes the centring matter; weights away from 0 keep every path alive. */
    gc_buf x = gc_rand(&rng, N * C, -1.0f, 1.0f);
    for (size_t n = 0; n < N; n++)
        for (size_t k = 0; k < C; k++)
            x.d[n * C + k] = x.f[n * C + k] += (float)(n % 5) - 2.0f;
    gc_buf w = gc_rand(&rng, C, 0.5f, 1.5f), b = gc_rand(&rng, C, -1.0f, 1.0f);
    gc_buf out = gc_rand(&rng, N * C, -1.0f, 1.0f), mean = gc_zeros(N), rstd = gc_zeros(N);
    fm_tensor tx = gc_f32(&x, ndim, shape), tw = gc_f32(&w, 1, cshape), tb = gc_f32(&b, 1, cshape);
    fm_tensor tout = gc_f32(&out, ndim, shape);
    fm_tensor tmean = stats_like_inp ? gc_f32(&mean, ndim - 1, shape) : gc_f32(&mean, 1, nshape);
    fm_tensor trstd = stats_like_inp ? gc_f32(&rstd, ndim - 1, shape) : gc_f32(&rstd, 1, nshape);
    GC_EXPECT(fm_layernorm_forward(&tout, &tmean, &trstd, &tx, &tw, &tb, LN_EPS), FM_OK);

    gc_buf wout = gc_rand(&rng, N * C, -1.0f, 1.0f);
    ln_ctx ctx = {N, C, x.d, w.d, b.d, wout.d, gc_dalloc(N * C), gc_dalloc(N), gc_dalloc(N)};
    ln_ref(&ctx);
    fm_test_assert_close("layernorm out", out.f, ctx.out, N * C, GC_FWD_RTOL, GC_FWD_ATOL);
    fm_test_assert_close("layernorm mean", mean.f, ctx.mean, N, GC_FWD_RTOL, GC_FWD_ATOL);
    fm_test_assert_close("layernorm rstd", rstd.f, ctx.rstd, N, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_window wx = gc_pick(&rng, x.n, fd_max), ww = gc_pick(&rng, C, fd_max), wb = gc_pick(&rng, C, fd_max);
    double *fdx = gc_dalloc(wx.n), *fdw = gc_dalloc(ww.n), *fdb = gc_dalloc(wb.n);
    gc_fd(ln_obj, &ctx, x.d, wx, fdx);
    gc_fd(ln_obj, &ctx, w.d, ww, fdw);
    gc_fd(ln_obj, &ctx, b.d, wb, fdb);

    gc_buf dx = gc_rand(&rng, x.n, -1.0f, 1.0f), dw = gc_rand(&rng, C, -1.0f, 1.0f), db = gc_rand(&rng, C, -1.0f, 1.0f);
    fm_tensor tdx = gc_f32(&dx, ndim, shape), tdw = gc_f32(&dw, 1, cshape), tdb = gc_f32(&db, 1, cshape);
    fm_tensor tdout = gc_f32(&wout, ndim, shape);
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(fm_layernorm_backward(&tdx, &tdw, &tdb, &tdout, &tx, &tw, &tmean, &trstd), FM_OK);
        gc_check_grad("layernorm dinp", dx.f, dx.d, fdx, wx, call);
        gc_check_grad("layernorm dweight", dw.f, dw.d, fdw, ww, call);
        gc_check_grad("layernorm dbias", db.f, db.d, fdb, wb, call);
    }
    GC_EXPECT(fm_layernorm_backward(&tdx, NULL, NULL, &tdout, &tx, &tw, &tmean, &trstd), FM_OK);
    gc_check_grad("layernorm dinp (alone)", dx.f, dx.d, fdx, wx, 3);
    gc_check_grad("layernorm dweight (skipped)", dw.f, dw.d, fdw, ww, 2);
    GC_EXPECT(fm_layernorm_backward(NULL, NULL, &tdb, &tdout, &tx, &tw, &tmean, &trstd), FM_OK);
    gc_check_grad("layernorm dbias (alone)", db.f, db.d, fdb, wb, 3);

    free(fdx), free(fdw), free(fdb), free(ctx.out), free(ctx.mean), free(ctx.rstd);
    gc_free(&x), gc_free(&w), gc_free(&b), gc_free(&out), gc_free(&mean), gc_free(&rstd), gc_free(&wout);
    gc_free(&dx), gc_free(&dw), gc_free(&db);
}

static void test_layernorm_small(void **state)
{
    (void)state;
    run_layernorm(1, 2, (const int64_t[]){5, 7}, 0, SIZE_MAX);
}

/* C = 67 spans two column blocks of the dweight / dbias reduction, the second of one column. */
static void test_layernorm_3d_wide(void **state)
{
    (void)state;
    run_layernorm(2, 3, (const int64_t[]){3, 1, 67}, 1, SIZE_MAX);
}

/* Past the OpenMP threshold; differences on windows. */
static void test_layernorm_large(void **state)
{
    (void)state;
    run_layernorm(3, 3, (const int64_t[]){3, 87, 67}, 1, 24);
}

static void test_layernorm_rejects(void **state)
{
    (void)state;
    float buf[64] = {0};
    int32_t ibuf[64] = {0};
    fm_tensor x = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 7});
    fm_tensor w = gc_view(buf, FM_F32, 1, (const int64_t[]){7});
    fm_tensor st = gc_view(buf, FM_F32, 1, (const int64_t[]){5});

    fm_tensor w_bad = gc_view(buf, FM_F32, 1, (const int64_t[]){6});
    GC_EXPECT(fm_layernorm_forward(&x, &st, &st, &x, &w_bad, &w, LN_EPS), FM_ERR_SHAPE);
    GC_EXPECT(fm_layernorm_forward(&x, &st, &st, &x, &w, &w_bad, LN_EPS), FM_ERR_SHAPE);
    fm_tensor st_bad = gc_view(buf, FM_F32, 1, (const int64_t[]){4});
    GC_EXPECT(fm_layernorm_forward(&x, &st_bad, &st, &x, &w, &w, LN_EPS), FM_ERR_SHAPE);
    fm_tensor out_bad = gc_view(buf, FM_F32, 2, (const int64_t[]){7, 5});
    GC_EXPECT(fm_layernorm_forward(&out_bad, &st, &st, &x, &w, &w, LN_EPS), FM_ERR_SHAPE);
    fm_tensor st_int = gc_view(ibuf, FM_I32, 1, (const int64_t[]){5});
    GC_EXPECT(fm_layernorm_forward(&x, &st, &st_int, &x, &w, &w, LN_EPS), FM_ERR_DTYPE);
    GC_EXPECT(fm_layernorm_forward(&x, &st, &st, &x, &w, &w, -1.0f), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_layernorm_forward(&x, &st, &st, &x, &w, NULL, LN_EPS), FM_ERR_INVALID_ARG);

    fm_tensor x_gpu = x;
    x_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_layernorm_forward(&x, &st, &st, &x_gpu, &w, &w, LN_EPS), FM_ERR_DEVICE);

    GC_EXPECT(fm_layernorm_backward(&out_bad, NULL, NULL, &x, &x, &w, &st, &st), FM_ERR_SHAPE);
    GC_EXPECT(fm_layernorm_backward(NULL, &w_bad, NULL, &x, &x, &w, &st, &st), FM_ERR_SHAPE);
    GC_EXPECT(fm_layernorm_backward(NULL, NULL, NULL, &out_bad, &x, &w, &st, &st), FM_ERR_SHAPE);
    GC_EXPECT(fm_layernorm_backward(NULL, NULL, NULL, &x, &x, &w, &st, &st_bad), FM_ERR_SHAPE);
    fm_tensor x_int = gc_view(ibuf, FM_I32, 2, (const int64_t[]){5, 7});
    GC_EXPECT(fm_layernorm_backward(&x_int, NULL, NULL, &x, &x, &w, &st, &st), FM_ERR_DTYPE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm_small),
        cmocka_unit_test(test_layernorm_3d_wide),
        cmocka_unit_test(test_layernorm_large),
        cmocka_unit_test(test_layernorm_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
