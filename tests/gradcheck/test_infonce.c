/* Gradient check of the symmetric InfoNCE (CLIP) loss (fm_infonce_forward / _backward): loss and both
 * softmaxes against a float64 reference; dimg, dtxt and dlogit_scale against central differences of
 * loss·c (c random, passed as dloss); a single pair, CLIP's largest temperature; the dispatcher's refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

/* float64 reference; p (N,N) row softmax of logits, pt (N,N) row softmax of logitsᵀ. */
static double ref_infonce(double *p, double *pt, const double *img, const double *txt, double ls, size_t N, size_t D)
{
    const double s = exp(ls);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < N; j++) {
            double dot = 0.0;
            for (size_t d = 0; d < D; d++)
                dot += img[i * D + d] * txt[j * D + d];
            p[i * N + j] = s * dot;
            pt[j * N + i] = s * dot;
        }
    double loss = 0.0;
    for (int dir = 0; dir < 2; dir++) {
        double *m = dir ? pt : p;
        for (size_t i = 0; i < N; i++) {
            double *row = m + i * N, maxv = -INFINITY, sum = 0.0;
            for (size_t j = 0; j < N; j++)
                maxv = fmax(maxv, row[j]);
            for (size_t j = 0; j < N; j++)
                sum += exp(row[j] - maxv);
            loss += maxv + log(sum) - row[i];
            for (size_t j = 0; j < N; j++)
                row[j] = exp(row[j] - maxv) / sum;
        }
    }
    return loss / (2.0 * (double)N);
}

typedef struct nce_case {
    size_t N, D;
    const double *img, *txt;
    double ls, c;
    double *p, *pt;
} nce_case;

static double objective(void *ctx)
{
    nce_case *k = ctx;
    return k->c * ref_infonce(k->p, k->pt, k->img, k->txt, k->ls, k->N, k->D);
}

static void run_case(uint64_t stream, size_t N, size_t D, float ls, int normalise)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    const size_t n = N * D;
    gc_buf img = gc_rand(&rng, n, -1.0f, 1.0f), txt = gc_rand(&rng, n, -1.0f, 1.0f);
    if (normalise) { /* as CLIP feeds it: unit rows */
        for (int which = 0; which < 2; which++) {
            float *x = which ? txt.f : img.f;
            for (size_t i = 0; i < N; i++) {
                double ss = 0.0;
                for (size_t d = 0; d < D; d++)
                    ss += (double)x[i * D + d] * x[i * D + d];
                for (size_t d = 0; d < D; d++)
                    x[i * D + d] = (float)(x[i * D + d] / sqrt(ss));
            }
        }
        fm_test_to_double(img.d, img.f, n);
        fm_test_to_double(txt.d, txt.f, n);
    }
    gc_buf p = gc_zeros(N * N), pt = gc_zeros(N * N);
    float loss = -1.0f, lsf = ls;
    const int64_t sx[2] = {(int64_t)N, (int64_t)D}, sp[2] = {(int64_t)N, (int64_t)N};
    fm_tensor ti = gc_f32(&img, 2, sx), tt = gc_f32(&txt, 2, sx), tp = gc_f32(&p, 2, sp), tpt = gc_f32(&pt, 2, sp);
    fm_tensor tloss = gc_view(&loss, FM_F32, 0, NULL), tls = gc_view(&lsf, FM_F32, 1, (const int64_t[]){1});
    GC_EXPECT(fm_infonce_forward(&tloss, &tp, &tpt, &ti, &tt, &tls), FM_OK);

    double cval = 0.5 + fm_rng_double(&rng); /* dloss */
    nce_case k = {N, D, img.d, txt.d, (double)ls, cval, p.d, pt.d};
    const double want = ref_infonce(p.d, pt.d, img.d, txt.d, ls, N, D);
    fm_test_assert_close("infonce loss", &loss, &want, 1, GC_FWD_RTOL, GC_FWD_ATOL);
    fm_test_assert_close("infonce probs_i2t", p.f, p.d, N * N, GC_FWD_RTOL, GC_FWD_ATOL);
    fm_test_assert_close("infonce probs_t2i", pt.f, pt.d, N * N, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_buf di = gc_rand(&rng, n, -1.0f, 1.0f), dt = gc_rand(&rng, n, -1.0f, 1.0f), dls = gc_rand(&rng, 1, -1.0f, 1.0f);
    fm_tensor tdi = gc_f32(&di, 2, sx), tdt = gc_f32(&dt, 2, sx), tdls = gc_view(dls.f, FM_F32, 0, NULL);
    for (int rep = 0; rep < 2; rep++)
        GC_EXPECT(fm_infonce_backward(&tdi, &tdt, &tdls, &ti, &tt, &tp, &tpt, &tls, (float)cval), FM_OK);

    double *fdi = gc_dalloc(n), *fdt = gc_dalloc(n), fdls;
    const gc_window all = {0, n}, one = {0, 1};
    gc_fd(objective, &k, img.d, all, fdi);
    gc_fd(objective, &k, txt.d, all, fdt);
    gc_fd(objective, &k, &k.ls, one, &fdls);
    gc_check_grad("infonce dimg", di.f, di.d, fdi, all, 2.0);
    gc_check_grad("infonce dtxt", dt.f, dt.d, fdt, all, 2.0);
    gc_check_grad("infonce dlogit_scale", dls.f, dls.d, &fdls, one, 2.0);

    /* NULL gradients are skipped */
    GC_EXPECT(fm_infonce_backward(NULL, &tdt, NULL, &ti, &tt, &tp, &tpt, &tls, (float)cval), FM_OK);
    gc_check_grad("infonce dimg (skipped)", di.f, di.d, fdi, all, 2.0);
    gc_check_grad("infonce dtxt (third call)", dt.f, dt.d, fdt, all, 3.0);
    gc_check_grad("infonce dlogit_scale (skipped)", dls.f, dls.d, &fdls, one, 2.0);

    free(fdi);
    free(fdt);
    gc_buf *bufs[] = {&img, &txt, &p, &pt, &di, &dt, &dls};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        gc_free(bufs[i]);
}

static void test_small_odd(void **state)
{
    (void)state;
    run_case(1, 5, 7, 1.3f, 0);
}

static void test_clip_temperature_normalised(void **state)
{
    (void)state;
    run_case(2, 9, 16, 2.6592f, 1); /* CLIP's init, 1/0.07 */
    run_case(3, 6, 5, 4.6052f, 1);  /* CLIP's clamp, 100 */
    run_case(4, 4, 3, -0.7f, 0);    /* a scale below 1 */
}

static void test_single_pair(void **state)
{
    (void)state;
    run_case(5, 1, 4, 0.9f, 0); /* loss 0, every gradient 0 */
}

static void test_large_logits_stay_finite(void **state)
{
    (void)state;
    /* logits of ±1e4 would overflow a naive exp */
    float img[2 * 2] = {100.0f, 0.0f, 0.0f, 100.0f}, txt[2 * 2] = {1.0f, 0.0f, -1.0f, 0.0f};
    float p[4], pt[4], loss, ls = 4.6f;
    const int64_t s[2] = {2, 2};
    fm_tensor ti = gc_view(img, FM_F32, 2, s), tt = gc_view(txt, FM_F32, 2, s), tp = gc_view(p, FM_F32, 2, s);
    fm_tensor tpt = gc_view(pt, FM_F32, 2, s), tl = gc_view(&loss, FM_F32, 0, NULL);
    fm_tensor tls = gc_view(&ls, FM_F32, 0, NULL);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &ti, &tt, &tls), FM_OK);
    assert_true(isfinite(loss));
    for (int i = 0; i < 4; i++)
        assert_true(isfinite(p[i]) && isfinite(pt[i]));
    /* logits = s·((100, −100), (0, 0)): image 1 ties both texts (log 2), every other row and column picks
     * its own pair by a margin of ~1e4 (0); loss = log 2 / (2·N) */
    const double want = 0.5 * log(2.0) / 2.0;
    assert_true(fabs(loss - want) < 1e-5);
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    float x[3 * 4] = {1.0f, 0.5f, -0.25f}, p[9], pt[9], loss, ls = 1.0f, two[2] = {1.0f, 2.0f}, dls = 0.0f;
    const int64_t sx[2] = {3, 4}, sy[2] = {3, 3}, sp[2] = {3, 3}, sbad[2] = {3, 2}, s0[2] = {0, 4}, s1[1] = {2};
    fm_tensor ti = gc_view(x, FM_F32, 2, sx), tp = gc_view(p, FM_F32, 2, sp), tpt = gc_view(pt, FM_F32, 2, sp);
    fm_tensor tl = gc_view(&loss, FM_F32, 0, NULL), tls = gc_view(&ls, FM_F32, 0, NULL);
    fm_tensor tdls = gc_view(&dls, FM_F32, 0, NULL);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &ti, &ti, &tls), FM_OK);
    fm_tensor ty = gc_view(x, FM_F32, 2, sy);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &ti, &ty, &tls), FM_ERR_SHAPE);
    fm_tensor tpb = gc_view(p, FM_F32, 2, sbad);
    GC_EXPECT(fm_infonce_forward(&tl, &tpb, &tpt, &ti, &ti, &tls), FM_ERR_SHAPE);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpb, &ti, &ti, &tls), FM_ERR_SHAPE);
    fm_tensor t2 = gc_view(two, FM_F32, 1, s1);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &ti, &ti, &t2), FM_ERR_SHAPE);
    GC_EXPECT(fm_infonce_forward(&t2, &tp, &tpt, &ti, &ti, &tls), FM_ERR_SHAPE);
    fm_tensor te = gc_view(x, FM_F32, 2, s0), tpe = gc_view(p, FM_F32, 2, (const int64_t[]){0, 0});
    GC_EXPECT(fm_infonce_forward(&tl, &tpe, &tpe, &te, &te, &tls), FM_ERR_SHAPE);
    fm_tensor tii = gc_view(x, FM_I32, 2, sx);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &tii, &ti, &tls), FM_ERR_DTYPE);
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &ti, &ti, NULL), FM_ERR_INVALID_ARG);
    ls = NAN;
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &ti, &ti, &tls), FM_ERR_NOT_FINITE);
    GC_EXPECT(fm_infonce_backward(NULL, NULL, &tdls, &ti, &ti, &tp, &tpt, &tls, 1.0f), FM_ERR_NOT_FINITE);
    ls = 1.0f;
    GC_EXPECT(fm_infonce_backward(&ty, NULL, NULL, &ti, &ti, &tp, &tpt, &tls, 1.0f), FM_ERR_SHAPE);
    GC_EXPECT(fm_infonce_backward(NULL, NULL, &t2, &ti, &ti, &tp, &tpt, &tls, 1.0f), FM_ERR_SHAPE);
    GC_EXPECT(fm_infonce_backward(NULL, NULL, NULL, &ti, &ti, &tp, &tpt, &tls, 1.0f), FM_OK);
    fm_tensor tic = ti, tpc = tp, tlc = tl, tlsc = tls;
    tic.device = tpc.device = tlc.device = tlsc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_infonce_forward(&tl, &tp, &tpt, &tic, &ti, &tls), FM_ERR_DEVICE);
    /* A CUDA build has kernels for this op: it would launch them on these host pointers (tests/gpu covers it). */
#ifndef FEDMM_WITH_CUDA
    GC_EXPECT(fm_infonce_forward(&tlc, &tpc, &tpc, &tic, &tic, &tlsc), FM_ERR_DEVICE);
    GC_EXPECT(fm_infonce_backward(&tic, NULL, NULL, &tic, &tic, &tpc, &tpc, &tlsc, 1.0f), FM_ERR_DEVICE);
#else
    (void)tlc;
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_odd),       cmocka_unit_test(test_clip_temperature_normalised),
        cmocka_unit_test(test_single_pair),     cmocka_unit_test(test_large_logits_stay_finite),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
