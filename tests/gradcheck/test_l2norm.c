/* Gradient check of row-wise L2 normalisation (fm_l2norm_forward / _backward): forward against a float64
 * reference, dinp against central differences of it, on 2- and 3-dim inputs; a zero row; the dispatcher's
 * refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

static void ref_l2norm(double *out, double *norm, const double *x, size_t N, size_t C)
{
    for (size_t n = 0; n < N; n++) {
        double ss = 0.0;
        for (size_t c = 0; c < C; c++)
            ss += x[n * C + c] * x[n * C + c];
        norm[n] = sqrt(ss);
        const double denom = norm[n] > 1e-12 ? norm[n] : 1e-12;
        for (size_t c = 0; c < C; c++)
            out[n * C + c] = x[n * C + c] / denom;
    }
}

typedef struct l2_case {
    size_t N, C;
    const double *x, *w;
    double *out, *norm;
} l2_case;

static double objective(void *ctx)
{
    l2_case *c = ctx;
    ref_l2norm(c->out, c->norm, c->x, c->N, c->C);
    return fm_test_dot(c->w, c->out, c->N * c->C);
}

/* inp has shape `shape` (ndim dims); norm is given the leading dims, or (N) when flat_norm. */
static void run_case(uint64_t stream, int ndim, const int64_t *shape, int flat_norm)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t N = 1;
    for (int d = 0; d + 1 < ndim; d++)
        N *= (size_t)shape[d];
    const size_t C = (size_t)shape[ndim - 1], n = N * C;
    gc_buf x = gc_rand(&rng, n, -1.0f, 1.0f), out = gc_zeros(n), norm = gc_zeros(N), w = gc_rand(&rng, n, -1.0f, 1.0f);
    for (size_t c = 0; c < C; c++) { /* rows of very different norms */
        x.f[c] *= 30.0f;
        x.f[n - 1 - c] *= 0.05f;
    }
    fm_test_to_double(x.d, x.f, n);

    const int64_t sn[1] = {(int64_t)N};
    fm_tensor tx = gc_f32(&x, ndim, shape), tout = gc_f32(&out, ndim, shape);
    fm_tensor tnorm = flat_norm ? gc_f32(&norm, 1, sn) : gc_f32(&norm, ndim - 1, shape);
    GC_EXPECT(fm_l2norm_forward(&tout, &tnorm, &tx), FM_OK);

    l2_case c = {N, C, x.d, w.d, out.d, norm.d};
    objective(&c);
    fm_test_assert_close("l2norm out", out.f, out.d, n, GC_FWD_RTOL, GC_FWD_ATOL);
    fm_test_assert_close("l2norm norm", norm.f, norm.d, N, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_buf dx = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tdx = gc_f32(&dx, ndim, shape), tw = gc_f32(&w, ndim, shape);
    GC_EXPECT(fm_l2norm_backward(&tdx, &tw, &tout, &tnorm), FM_OK);
    GC_EXPECT(fm_l2norm_backward(&tdx, &tw, &tout, &tnorm), FM_OK);
    GC_EXPECT(fm_l2norm_backward(NULL, &tw, &tout, &tnorm), FM_OK);

    double *fd = gc_dalloc(n);
    const gc_window all = {0, n};
    gc_fd(objective, &c, x.d, all, fd);
    gc_check_grad("l2norm dinp", dx.f, dx.d, fd, all, 2.0);

    free(fd);
    gc_free(&x);
    gc_free(&out);
    gc_free(&norm);
    gc_free(&w);
    gc_free(&dx);
}

static void test_matrix(void **state)
{
    (void)state;
    const int64_t shape[2] = {5, 9};
    run_case(1, 2, shape, 1);
}

static void test_three_dims(void **state)
{
    (void)state;
    const int64_t shape[3] = {2, 3, 7};
    run_case(2, 3, shape, 0);
    run_case(3, 3, shape, 1);
}

static void test_single_vector(void **state)
{
    (void)state;
    const int64_t shape[1] = {13};
    run_case(4, 1, shape, 1);
}

static void test_zero_row_is_finite(void **state)
{
    (void)state;
    float x[2 * 3] = {0.0f, 0.0f, 0.0f, 3.0f, -4.0f, 0.0f}, out[6], norm[2], dx[6] = {0}, dy[6] = {1, 1, 1, 1, 1, 1};
    const int64_t s[2] = {2, 3}, sn[1] = {2};
    fm_tensor tx = gc_view(x, FM_F32, 2, s), tout = gc_view(out, FM_F32, 2, s), tn = gc_view(norm, FM_F32, 1, sn);
    fm_tensor tdx = gc_view(dx, FM_F32, 2, s), tdy = gc_view(dy, FM_F32, 2, s);
    GC_EXPECT(fm_l2norm_forward(&tout, &tn, &tx), FM_OK);
    for (int i = 0; i < 3; i++)
        assert_true(out[i] == 0.0f);
    assert_true(norm[0] == 0.0f);
    assert_true(fabsf(norm[1] - 5.0f) < 1e-6f);
    assert_true(fabsf(out[3] - 0.6f) < 1e-7f && fabsf(out[4] + 0.8f) < 1e-7f && out[5] == 0.0f);
    GC_EXPECT(fm_l2norm_backward(&tdx, &tdy, &tout, &tn), FM_OK);
    for (int i = 0; i < 6; i++)
        assert_true(isfinite(dx[i]));
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    float x[24] = {1.0f, 2.0f}, y[24], nrm[8];
    const int64_t s3[3] = {2, 3, 4}, s2[2] = {6, 4}, sn[1] = {6}, sbad[1] = {5}, s23[2] = {2, 3}, s32[2] = {3, 2};
    fm_tensor tx = gc_view(x, FM_F32, 3, s3), ty = gc_view(y, FM_F32, 3, s3), tn = gc_view(nrm, FM_F32, 1, sn);
    GC_EXPECT(fm_l2norm_forward(&ty, &tn, &tx), FM_OK);
    fm_tensor tn23 = gc_view(nrm, FM_F32, 2, s23);
    GC_EXPECT(fm_l2norm_forward(&ty, &tn23, &tx), FM_OK);
    fm_tensor tn32 = gc_view(nrm, FM_F32, 2, s32);
    GC_EXPECT(fm_l2norm_forward(&ty, &tn32, &tx), FM_ERR_SHAPE);
    fm_tensor tnb = gc_view(nrm, FM_F32, 1, sbad);
    GC_EXPECT(fm_l2norm_forward(&ty, &tnb, &tx), FM_ERR_SHAPE);
    fm_tensor ty2 = gc_view(y, FM_F32, 2, s2);
    GC_EXPECT(fm_l2norm_forward(&ty2, &tn, &tx), FM_ERR_SHAPE);
    fm_tensor t0 = gc_view(x, FM_F32, 0, NULL);
    GC_EXPECT(fm_l2norm_forward(&t0, &tn, &t0), FM_ERR_SHAPE);
    fm_tensor txi = gc_view(x, FM_I32, 3, s3);
    GC_EXPECT(fm_l2norm_forward(&ty, &tn, &txi), FM_ERR_DTYPE);
    GC_EXPECT(fm_l2norm_forward(&ty, NULL, &tx), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_l2norm_backward(&ty2, &ty, &ty, &tn), FM_ERR_SHAPE);
    GC_EXPECT(fm_l2norm_backward(&tx, &ty2, &ty, &tn), FM_ERR_SHAPE);
    fm_tensor txc = tx, tyc = ty, tnc = tn;
    txc.device = tyc.device = tnc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_l2norm_forward(&tyc, &tn, &tx), FM_ERR_DEVICE);
#ifndef FEDMM_WITH_CUDA /* with CUDA these host buffers would reach a kernel: the gpu tests cover it */
    GC_EXPECT(fm_l2norm_forward(&tyc, &tnc, &txc), FM_ERR_DEVICE);
#else
    (void)txc;
    (void)tnc;
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matrix),          cmocka_unit_test(test_three_dims),
        cmocka_unit_test(test_single_vector),   cmocka_unit_test(test_zero_row_is_finite),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
