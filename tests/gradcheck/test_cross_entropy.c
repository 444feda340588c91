/* Gradient check of softmax cross-entropy with ignored rows (fm_cross_entropy_forward / _backward): loss
 * and probs against a float64 reference, dlogits against central differences of loss·c; every row ignored;
 * targets out of range; the dispatcher's refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

/* Mean over rows with target ≥ 0 of lse(x) − x[t]; 0 if every row is ignored. probs: row softmax. */
static double ref_ce(double *probs, const double *x, const int32_t *t, size_t N, size_t C)
{
    double total = 0.0;
    size_t used = 0;
    for (size_t i = 0; i < N; i++) {
        const double *r = x + i * C;
        double maxv = -INFINITY, sum = 0.0;
        for (size_t c = 0; c < C; c++)
            maxv = fmax(maxv, r[c]);
        for (size_t c = 0; c < C; c++)
            sum += exp(r[c] - maxv);
        for (size_t c = 0; c < C; c++)
            probs[i * C + c] = exp(r[c] - maxv) / sum;
        if (t[i] >= 0) {
            total += maxv + log(sum) - r[t[i]];
            used++;
        }
    }
    return used ? total / (double)used : 0.0;
}

typedef struct ce_case {
    size_t N, C;
    const double *x;
    const int32_t *t;
    double c, *probs;
} ce_case;

static double objective(void *ctx)
{
    ce_case *k = ctx;
    return k->c * ref_ce(k->probs, k->x, k->t, k->N, k->C);
}

/* logits of shape `shape`, targets of the leading dims; ignore_all: 0 → some rows ignored (row 1 always),
 * 1 → all rows ignored. */
static void run_case(uint64_t stream, int ndim, const int64_t *shape, int ignore_all, float spread)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t N = 1;
    for (int d = 0; d + 1 < ndim; d++)
        N *= (size_t)shape[d];
    const size_t C = (size_t)shape[ndim - 1], n = N * C;
    gc_buf x = gc_rand(&rng, n, -spread, spread), probs = gc_zeros(n);
    int32_t *t = fm_test_alloc(N * sizeof(int32_t));
    for (size_t i = 0; i < N; i++)
        t[i] = ignore_all ? -1 : (int32_t)fm_rng_below(&rng, C + 1) - 1;
    if (!ignore_all) {
        t[0] = (int32_t)C - 1; /* the last class and an ignored row, whatever the draw */
        if (N > 1)
            t[1] = -1;
    }
    float loss = -1.0f;
    fm_tensor tx = gc_f32(&x, ndim, shape), tp = gc_f32(&probs, ndim, shape);
    fm_tensor tt = gc_view(t, FM_I32, ndim - 1, shape), tl = gc_view(&loss, FM_F32, 1, (const int64_t[]){1});
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &tt), FM_OK);

    const double cval = 0.5 + fm_rng_double(&rng);
    ce_case k = {N, C, x.d, t, cval, probs.d};
    const double want = ref_ce(probs.d, x.d, t, N, C);
    fm_test_assert_close("cross_entropy loss", &loss, &want, 1, GC_FWD_RTOL, GC_FWD_ATOL);
    fm_test_assert_close("cross_entropy probs", probs.f, probs.d, n, GC_FWD_RTOL, GC_FWD_ATOL);
    if (ignore_all)
        assert_true(loss == 0.0f);

    gc_buf dx = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tdx = gc_f32(&dx, ndim, shape);
    GC_EXPECT(fm_cross_entropy_backward(&tdx, &tp, &tt, (float)cval), FM_OK);
    GC_EXPECT(fm_cross_entropy_backward(&tdx, &tp, &tt, (float)cval), FM_OK);
    GC_EXPECT(fm_cross_entropy_backward(NULL, &tp, &tt, (float)cval), FM_OK);

    double *fd = gc_dalloc(n);
    const gc_window all = {0, n};
    gc_fd(objective, &k, x.d, all, fd);
    gc_check_grad("cross_entropy dlogits", dx.f, dx.d, fd, all, 2.0);
    for (size_t i = 0; i < N; i++) /* an ignored row gets exactly nothing */
        for (size_t c = 0; t[i] < 0 && c < C; c++)
            assert_true(dx.f[i * C + c] == (float)dx.d[i * C + c]);

    free(fd);
    free(t);
    gc_free(&x);
    gc_free(&probs);
    gc_free(&dx);
}

static void test_mixed_targets(void **state)
{
    (void)state;
    const int64_t s[2] = {7, 5};
    run_case(1, 2, s, 0, 2.0f);
}

static void test_three_dim_logits(void **state)
{
    (void)state;
    const int64_t s[3] = {2, 3, 11};
    run_case(2, 3, s, 0, 3.0f);
}

static void test_every_row_ignored(void **state)
{
    (void)state;
    const int64_t s[2] = {4, 3};
    run_case(3, 2, s, 1, 1.0f);
}

static void test_one_class_and_large_logits(void **state)
{
    (void)state;
    const int64_t s1[2] = {3, 1};
    run_case(4, 2, s1, 0, 1.0f); /* softmax of one class is 1: loss 0 */
    float x[2 * 3] = {1e4f, -1e4f, 0.0f, 50.0f, 50.0f, 50.0f}, p[6], loss;
    int32_t t[2] = {1, 2};
    const int64_t s[2] = {2, 3}, sn[1] = {2};
    fm_tensor tx = gc_view(x, FM_F32, 2, s), tp = gc_view(p, FM_F32, 2, s), tt = gc_view(t, FM_I32, 1, sn);
    fm_tensor tl = gc_view(&loss, FM_F32, 0, NULL);
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &tt), FM_OK);
    /* row 0 misses by 2e4 (p underflows to 0, the loss must not become inf); row 1 is a 3-way tie */
    assert_true(fabs(loss - (2e4 + log(3.0)) / 2.0) < 1e-2);
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    float x[4 * 3] = {0.5f, -1.0f, 2.0f}, p[12], loss, d[12] = {0}, two[2];
    int32_t t[5] = {0, 2, -1, 1, 0};
    const int64_t s[2] = {4, 3}, sn[1] = {4}, s5[1] = {5}, s2[1] = {2}, s0[2] = {4, 0};
    fm_tensor tx = gc_view(x, FM_F32, 2, s), tp = gc_view(p, FM_F32, 2, s), tt = gc_view(t, FM_I32, 1, sn);
    fm_tensor tl = gc_view(&loss, FM_F32, 0, NULL), td = gc_view(d, FM_F32, 2, s);
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &tt), FM_OK);
    t[2] = 3; /* = C */
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &tt), FM_ERR_RANGE);
    GC_EXPECT(fm_cross_entropy_backward(&td, &tp, &tt, 1.0f), FM_ERR_RANGE);
    t[2] = -2;
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &tt), FM_ERR_RANGE);
    GC_EXPECT(fm_cross_entropy_backward(&td, &tp, &tt, 1.0f), FM_ERR_RANGE);
    for (int i = 0; i < 12; i++)
        assert_true(d[i] == 0.0f); /* refused: nothing written */
    t[2] = -1;
    fm_tensor tf = gc_view(t, FM_F32, 1, sn);
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &tf), FM_ERR_DTYPE);
    fm_tensor t5 = gc_view(t, FM_I32, 1, s5);
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &t5), FM_ERR_SHAPE);
    GC_EXPECT(fm_cross_entropy_backward(&td, &tp, &t5, 1.0f), FM_ERR_SHAPE);
    fm_tensor tl2 = gc_view(two, FM_F32, 1, s2);
    GC_EXPECT(fm_cross_entropy_forward(&tl2, &tp, &tx, &tt), FM_ERR_SHAPE);
    fm_tensor tp5 = gc_view(p, FM_F32, 2, (const int64_t[]){3, 4});
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp5, &tx, &tt), FM_ERR_SHAPE);
    GC_EXPECT(fm_cross_entropy_backward(&tp5, &tp, &tt, 1.0f), FM_ERR_SHAPE);
    fm_tensor tx0 = gc_view(x, FM_F32, 2, s0);
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tx0, &tx0, &tt), FM_ERR_SHAPE);
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, NULL), FM_ERR_INVALID_ARG);
    fm_tensor txc = tx, tpc = tp, ttc = tt, tlc = tl;
    txc.device = tpc.device = ttc.device = tlc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_cross_entropy_forward(&tl, &tp, &tx, &ttc), FM_ERR_DEVICE);
    /* A CUDA build has kernels for this op: it would launch them on these host pointers (tests/gpu covers it). */
#ifndef FEDMM_WITH_CUDA
    GC_EXPECT(fm_cross_entropy_forward(&tlc, &tpc, &txc, &ttc), FM_ERR_DEVICE);
    GC_EXPECT(fm_cross_entropy_backward(&txc, &tpc, &ttc, 1.0f), FM_ERR_DEVICE);
#else
    (void)tlc;
    (void)txc;
    (void)tpc;
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_targets),     cmocka_unit_test(test_three_dim_logits),
        cmocka_unit_test(test_every_row_ignored), cmocka_unit_test(test_one_class_and_large_logits),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
