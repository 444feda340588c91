/* Gradient check of the linear layer (fm_linear_*): forward against a float64 reference, backward against
 * central differences of it, accumulation, NULL gradients, and the dispatcher's refusals. */
#include "gc_util.h"

#include "fedmm/ops.h"

typedef struct lin_ctx {
    size_t N, C, OC;
    const double *x, *W, *b; /* (N, C), (OC, C), (OC) or NULL */
    const double *wout;      /* (N, OC): L = Σ wout ⊙ out */
    double *out;             /* (N, OC) scratch */
} lin_ctx;

static void lin_ref(const lin_ctx *c)
{
    for (size_t n = 0; n < c->N; n++) {
        for (size_t o = 0; o < c->OC; o++) {
            double s = c->b ? c->b[o] : 0.0;
            for (size_t k = 0; k < c->C; k++)
                s += c->x[n * c->C + k] * c->W[o * c->C + k];
            c->out[n * c->OC + o] = s;
        }
    }
}

static double lin_obj(void *p)
{
    lin_ctx *c = p;
    lin_ref(c);
    return fm_test_dot(c->wout, c->out, c->N * c->OC);
}

/* inp has `ndim` dims `shape` (leading ones flattened into N); finite differences cover at most fd_max
 * entries of each input. */
static void run_linear(uint64_t stream, int ndim, const int64_t *shape, int64_t OC, int use_bias, size_t fd_max)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t C = (size_t)shape[ndim - 1], N = 1;
    for (int d = 0; d + 1 < ndim; d++)
        N *= (size_t)shape[d];
    int64_t oshape[FM_MAX_DIMS];
    memcpy(oshape, shape, (size_t)ndim * sizeof(int64_t));
    oshape[ndim - 1] = OC;
    const int64_t wshape[2] = {OC, (int64_t)C}, bshape[1] = {OC};

    gc_buf x = gc_rand(&rng, N * C, -1.0f, 1.0f), W = gc_rand(&rng, (size_t)OC * C, -1.0f, 1.0f);
    gc_buf b = gc_rand(&rng, (size_t)OC, -1.0f, 1.0f), out = gc_rand(&rng, N * (size_t)OC, -1.0f, 1.0f);
    fm_tensor tx = gc_f32(&x, ndim, shape), tW = gc_f32(&W, 2, wshape), tb = gc_f32(&b, 1, bshape);
    fm_tensor tout = gc_f32(&out, ndim, oshape);
    GC_EXPECT(fm_linear_forward(&tout, &tx, &tW, use_bias ? &tb : NULL), FM_OK);

    gc_buf wout = gc_rand(&rng, N * (size_t)OC, -1.0f, 1.0f);
    lin_ctx ctx = {N, C, (size_t)OC, x.d, W.d, use_bias ? b.d : NULL, wout.d, gc_dalloc(N * (size_t)OC)};
    lin_ref(&ctx);
    fm_test_assert_close("linear out", out.f, ctx.out, N * (size_t)OC, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_window wx = gc_pick(&rng, x.n, fd_max), wW = gc_pick(&rng, W.n, fd_max), wb = gc_pick(&rng, b.n, fd_max);
    double *fdx = gc_dalloc(wx.n), *fdW = gc_dalloc(wW.n), *fdb = gc_dalloc(wb.n);
    gc_fd(lin_obj, &ctx, x.d, wx, fdx);
    gc_fd(lin_obj, &ctx, W.d, wW, fdW);
    if (use_bias)
        gc_fd(lin_obj, &ctx, b.d, wb, fdb);
    else /* without a bias the op's dbias is still Σ_n dout: the derivative wrt a bias of 0 */
        for (size_t i = 0; i < wb.n; i++) {
            double s = 0.0;
            for (size_t n = 0; n < N; n++)
                s += wout.d[n * (size_t)OC + wb.off + i];
            fdb[i] = s;
        }

    /* Gradient buffers start from random values so that an op that overwrites instead of adding fails. */
    gc_buf dx = gc_rand(&rng, x.n, -1.0f, 1.0f), dW = gc_rand(&rng, W.n, -1.0f, 1.0f);
    gc_buf db = gc_rand(&rng, b.n, -1.0f, 1.0f);
    fm_tensor tdx = gc_f32(&dx, ndim, shape), tdW = gc_f32(&dW, 2, wshape), tdb = gc_f32(&db, 1, bshape);
    fm_tensor tdout = gc_f32(&wout, ndim, oshape);
    /* dinp sums over OC, dweight over N: float32 GEMM sums that long need a wider absolute tolerance. */
    double atol_dx = gc_atol_sum((size_t)OC), atol_dW = gc_atol_sum(N);
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(fm_linear_backward(&tdx, &tdW, &tdb, &tdout, &tx, &tW), FM_OK);
        gc_check_grad_atol("linear dinp", dx.f, dx.d, fdx, wx, call, atol_dx);
        gc_check_grad_atol("linear dweight", dW.f, dW.d, fdW, wW, call, atol_dW);
        gc_check_grad("linear dbias", db.f, db.d, fdb, wb, call);
    }
    /* NULL gradients are skipped: only dweight moves. */
    GC_EXPECT(fm_linear_backward(NULL, &tdW, NULL, &tdout, &tx, &tW), FM_OK);
    gc_check_grad_atol("linear dweight (alone)", dW.f, dW.d, fdW, wW, 3, atol_dW);
    gc_check_grad_atol("linear dinp (skipped)", dx.f, dx.d, fdx, wx, 2, atol_dx);
    gc_check_grad("linear dbias (skipped)", db.f, db.d, fdb, wb, 2);

    free(fdx), free(fdW), free(fdb), free(ctx.out);
    gc_free(&x), gc_free(&W), gc_free(&b), gc_free(&out), gc_free(&wout), gc_free(&dx), gc_free(&dW);
    gc_free(&db);
}

static void test_linear_2d_bias(void **state)
{
    (void)state;
    run_linear(1, 2, (const int64_t[]){5, 7}, 3, 1, SIZE_MAX);
}

static void test_linear_3d_no_bias(void **state)
{
    (void)state;
    run_linear(2, 3, (const int64_t[]){3, 1, 5}, 4, 0, SIZE_MAX);
}

/* Big enough for the parallel bias reduction and a blocked GEMM; differences on windows. */
static void test_linear_large(void **state)
{
    (void)state;
    run_linear(3, 2, (const int64_t[]){300, 9}, 223, 1, 8);
}

static void test_linear_rejects(void **state)
{
    (void)state;
    float buf[64] = {0};
    int32_t ibuf[64] = {0};
    fm_tensor x = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 7});
    fm_tensor W = gc_view(buf, FM_F32, 2, (const int64_t[]){3, 7});
    fm_tensor b = gc_view(buf, FM_F32, 1, (const int64_t[]){3});
    fm_tensor out = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 3});

    fm_tensor W_bad = gc_view(buf, FM_F32, 2, (const int64_t[]){3, 6});
    GC_EXPECT(fm_linear_forward(&out, &x, &W_bad, &b), FM_ERR_SHAPE);
    fm_tensor out_bad = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 4});
    GC_EXPECT(fm_linear_forward(&out_bad, &x, &W, &b), FM_ERR_SHAPE);
    fm_tensor b_bad = gc_view(buf, FM_F32, 1, (const int64_t[]){4});
    GC_EXPECT(fm_linear_forward(&out, &x, &W, &b_bad), FM_ERR_SHAPE);
    fm_tensor x_int = gc_view(ibuf, FM_I32, 2, (const int64_t[]){5, 7});
    GC_EXPECT(fm_linear_forward(&out, &x_int, &W, &b), FM_ERR_DTYPE);
    GC_EXPECT(fm_linear_forward(&out, NULL, &W, &b), FM_ERR_INVALID_ARG);
    fm_tensor x_strided;
    GC_EXPECT(fm_tensor_narrow(&x_strided, &x, 1, 0, 3), FM_OK);
    fm_tensor W3 = gc_view(buf, FM_F32, 2, (const int64_t[]){3, 3});
    GC_EXPECT(fm_linear_forward(&out, &x_strided, &W3, &b), FM_ERR_INVALID_ARG);

    fm_tensor W_gpu = W;
    W_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_linear_forward(&out, &x, &W_gpu, &b), FM_ERR_DEVICE);
    fm_tensor x_gpu = x, b_gpu = b, out_gpu = out;
    x_gpu.device = b_gpu.device = out_gpu.device = FM_DEVICE_CUDA;
#ifndef FEDMM_WITH_CUDA /* with CUDA these host buffers would reach a kernel: the gpu tests cover it */
    GC_EXPECT(fm_linear_forward(&out_gpu, &x_gpu, &W_gpu, &b_gpu), FM_ERR_DEVICE);
#else
    (void)x_gpu;
    (void)b_gpu;
    (void)out_gpu;
#endif

    fm_tensor dx_bad = gc_view(buf, FM_F32, 2, (const int64_t[]){7, 5});
    GC_EXPECT(fm_linear_backward(&dx_bad, NULL, NULL, &out, &x, &W), FM_ERR_SHAPE);
    GC_EXPECT(fm_linear_backward(NULL, &W_bad, NULL, &out, &x, &W), FM_ERR_SHAPE);
    GC_EXPECT(fm_linear_backward(NULL, NULL, &b_bad, &out, &x, &W), FM_ERR_SHAPE);
    GC_EXPECT(fm_linear_backward(NULL, &W, NULL, &out_bad, &x, &W), FM_ERR_SHAPE);
    fm_tensor dW_int = gc_view(ibuf, FM_I32, 2, (const int64_t[]){3, 7});
    GC_EXPECT(fm_linear_backward(NULL, &dW_int, NULL, &out, &x, &W), FM_ERR_DTYPE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_2d_bias),
        cmocka_unit_test(test_linear_3d_no_bias),
        cmocka_unit_test(test_linear_large),
        cmocka_unit_test(test_linear_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
