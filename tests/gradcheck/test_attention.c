/* Gradient check of the attention core (fm_attention_forward / _backward): forward (out and the saved
 * row log-sum-exp) against a float64 reference, dq, dk, dv against central differences of it; no mask,
 * causal, key padding (with an empty row) and both together, on odd shapes; plus the dispatcher's
 * refusals. Backward recomputes the probabilities from q, k and lse, so it is checked on forward's lse. */
#include <math.h>
#include <string.h>

#include "gc_util.h"

#include "fedmm/ops.h"

/* float64 reference: out (B,T,C) and lse (B,NH,T); a row that sees no key outputs zeros, lse −inf. */
static void ref_attention(double *out, double *lse, const double *q, const double *k, const double *v,
                          const int32_t *len, int causal, int B, int T, int C, int NH)
{
    const int hs = C / NH;
    const double scale = 1.0 / sqrt((double)hs);
    double *a = fm_test_alloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                double *o = out + ((size_t)b * T + i) * C + (size_t)h * hs;
                const double *qi = q + ((size_t)b * T + i) * C + (size_t)h * hs;
                double maxv = -INFINITY;
                int any = 0;
                for (int j = 0; j < T; j++) {
                    int visible = (!len || j < len[b]) && (!causal || j <= i);
                    a[j] = 0.0;
                    if (!visible)
                        continue;
                    const double *kj = k + ((size_t)b * T + j) * C + (size_t)h * hs;
                    double s = 0.0;
                    for (int d = 0; d < hs; d++)
                        s += qi[d] * kj[d];
                    a[j] = s * scale;
                    if (a[j] > maxv)
                        maxv = a[j];
                    any = 1;
                }
                double sum = 0.0;
                for (int j = 0; j < T; j++) {
                    int visible = (!len || j < len[b]) && (!causal || j <= i);
                    a[j] = visible ? exp(a[j] - maxv) : 0.0;
                    sum += a[j];
                }
                for (int d = 0; d < hs; d++)
                    o[d] = 0.0;
                lse[((size_t)b * NH + h) * T + i] = any ? maxv + log(sum) : -INFINITY;
                if (!any)
                    continue;
                for (int j = 0; j < T; j++) {
                    a[j] /= sum;
                    const double *vj = v + ((size_t)b * T + j) * C + (size_t)h * hs;
                    for (int d = 0; d < hs; d++)
                        o[d] += a[j] * vj[d];
                }
            }
    free(a);
}

typedef struct att_case {
    int B, T, C, NH, causal;
    const int32_t *len;
    const double *q, *k, *v, *w; /* w: the random projection of out in the objective */
    double *out, *lse;
} att_case;

static double objective(void *ctx)
{
    att_case *c = ctx;
    ref_attention(c->out, c->lse, c->q, c->k, c->v, c->len, c->causal, c->B, c->T, c->C, c->NH);
    return fm_test_dot(c->w, c->out, (size_t)c->B * c->T * c->C);
}

static void run_case(uint64_t stream, int B, int T, int C, int NH, int causal, const int32_t *len)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    const size_t n = (size_t)B * T * C, nl = (size_t)B * NH * T;
    const int64_t sx[3] = {B, T, C}, sa[3] = {B, NH, T}, sl[1] = {B};
    gc_buf q = gc_rand(&rng, n, -1.5f, 1.5f), k = gc_rand(&rng, n, -1.5f, 1.5f), v = gc_rand(&rng, n, -1.0f, 1.0f);
    gc_buf out = gc_zeros(n), lse = gc_zeros(nl), w = gc_rand(&rng, n, -1.0f, 1.0f);
    int32_t *lens = fm_test_alloc((size_t)B * sizeof(int32_t));
    for (int b = 0; len && b < B; b++)
        lens[b] = len[b];

    fm_tensor tq = gc_f32(&q, 3, sx), tk = gc_f32(&k, 3, sx), tv = gc_f32(&v, 3, sx);
    fm_tensor tout = gc_f32(&out, 3, sx), tlse = gc_f32(&lse, 3, sa);
    fm_tensor tlen = gc_view(lens, FM_I32, 1, sl);
    /* outputs start as NaN: every element must be written, masked rows included */
    for (size_t i = 0; i < n; i++)
        out.f[i] = NAN;
    for (size_t i = 0; i < nl; i++)
        lse.f[i] = NAN;
    fm_tensor *plen = len ? &tlen : NULL;
    GC_EXPECT(fm_attention_forward(&tout, &tlse, &tq, &tk, &tv, plen, causal, NH), FM_OK);

    att_case c = {B, T, C, NH, causal, len, q.d, k.d, v.d, w.d, out.d, lse.d};
    objective(&c);
    fm_test_assert_close("attention out", out.f, out.d, n, GC_FWD_RTOL, GC_FWD_ATOL);

    /* A query that sees no key outputs exact zeros and has lse = −inf; the other rows' lse is compared
     * (the −inf entries cannot go through a relative comparison, so they are set equal first). */
    const int hs = C / NH;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                const size_t li = ((size_t)b * NH + h) * T + (size_t)i;
                const int seen = !len || len[b] > 0; /* every query sees key 0 unless the row is empty */
                if (seen) {
                    assert_true(isfinite(lse.f[li]));
                    continue;
                }
                if (!(isinf(lse.f[li]) && lse.f[li] < 0.0f))
                    fail_msg("lse[%d,%d,%d] = %g for a row that sees no key, expected -inf", b, h, i,
                             (double)lse.f[li]);
                lse.d[li] = 0.0;
                lse.f[li] = 0.0f;
                for (int d = 0; d < hs; d++)
                    assert_true(out.f[((size_t)b * T + i) * C + (size_t)h * hs + (size_t)d] == 0.0f);
            }
    fm_test_assert_close("attention lse", lse.f, lse.d, nl, GC_FWD_RTOL, GC_FWD_ATOL);
    objective(&c); /* restores the −inf entries of lse.d ... */
    for (size_t i = 0; i < nl; i++)
        if (isinf(lse.d[i]))
            lse.f[i] = -INFINITY; /* ... and of lse.f, which backward reads */

    /* backward twice into random starting gradients: each must end at start + 2·∂L/∂x */
    gc_buf dq = gc_rand(&rng, n, -1.0f, 1.0f), dk = gc_rand(&rng, n, -1.0f, 1.0f), dv = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tdq = gc_f32(&dq, 3, sx), tdk = gc_f32(&dk, 3, sx), tdv = gc_f32(&dv, 3, sx), tw = gc_f32(&w, 3, sx);
    for (int rep = 0; rep < 2; rep++)
        GC_EXPECT(fm_attention_backward(&tdq, &tdk, &tdv, &tw, &tq, &tk, &tv, &tout, &tlse, plen, causal, NH), FM_OK);

    double *fdq = gc_dalloc(n), *fdk = gc_dalloc(n), *fdv = gc_dalloc(n);
    const gc_window all = {0, n};
    gc_fd(objective, &c, q.d, all, fdq);
    gc_fd(objective, &c, k.d, all, fdk);
    gc_fd(objective, &c, v.d, all, fdv);
    gc_check_grad("attention dq", dq.f, dq.d, fdq, all, 2.0);
    gc_check_grad("attention dk", dk.f, dk.d, fdk, all, 2.0);
    gc_check_grad("attention dv", dv.f, dv.d, fdv, all, 2.0);

    /* a NULL gradient is skipped, the others still accumulate */
    GC_EXPECT(fm_attention_backward(NULL, &tdk, NULL, &tw, &tq, &tk, &tv, &tout, &tlse, plen, causal, NH), FM_OK);
    gc_check_grad("attention dq (dq skipped)", dq.f, dq.d, fdq, all, 2.0);
    gc_check_grad("attention dk (third call)", dk.f, dk.d, fdk, all, 3.0);
    gc_check_grad("attention dv (dv skipped)", dv.f, dv.d, fdv, all, 2.0);

    free(fdq);
    free(fdk);
    free(fdv);
    free(lens);
    gc_buf *bufs[] = {&q, &k, &v, &out, &lse, &w, &dq, &dk, &dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        gc_free(bufs[i]);
}

static void test_plain(void **state)
{
    (void)state;
    run_case(1, 2, 5, 12, 3, 0, NULL);
}

static void test_causal(void **state)
{
    (void)state;
    run_case(2, 2, 5, 12, 3, 1, NULL);
}

static void test_padding_with_empty_row(void **state)
{
    (void)state;
    const int32_t len[3] = {3, 0, 5};
    run_case(3, 3, 5, 12, 3, 0, len);
}

static void test_causal_and_padding(void **state)
{
    (void)state;
    const int32_t len[3] = {2, 5, 0};
    run_case(4, 3, 5, 12, 3, 1, len);
    const int32_t len1[2] = {1, 4};
    run_case(5, 2, 7, 10, 2, 1, len1); /* hs = 5, one visible key for every query of batch 0 */
}

static void test_single_head_one_token(void **state)
{
    (void)state;
    run_case(6, 3, 1, 7, 1, 1, NULL);
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    enum { B = 2, T = 5, C = 12, NH = 3 };
    float x[B * T * C] = {1.0f}, o[B * T * C], l[B * NH * T], l_small[B * NH * (T - 1)];
    int32_t lens[B + 1] = {5, 2, 1};
    float lens_f[B] = {5, 2};
    const int64_t sx[3] = {B, T, C}, sa[3] = {B, NH, T}, sas[3] = {B, NH, T - 1}, sa4[4] = {B, NH, T, 1};
    const int64_t sl[1] = {B}, sl3[1] = {B + 1}, sk[3] = {B, T - 1, C}, s2[2] = {B * T, C};
    fm_tensor q = gc_view(x, FM_F32, 3, sx), out = gc_view(o, FM_F32, 3, sx), lse = gc_view(l, FM_F32, 3, sa);
    fm_tensor len = gc_view(lens, FM_I32, 1, sl);

    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &len, 1, NH), FM_OK);
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &len, 1, 5), FM_ERR_SHAPE); /* 12 % 5 */
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &len, 1, 0), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_attention_forward(&out, &lse, NULL, &q, &q, &len, 1, NH), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_attention_forward(&out, NULL, &q, &q, &q, &len, 1, NH), FM_ERR_INVALID_ARG);
    fm_tensor lse_small = gc_view(l_small, FM_F32, 3, sas), lse4 = gc_view(l, FM_F32, 4, sa4);
    GC_EXPECT(fm_attention_forward(&out, &lse_small, &q, &q, &q, NULL, 0, NH), FM_ERR_SHAPE);
    GC_EXPECT(fm_attention_forward(&out, &lse4, &q, &q, &q, NULL, 0, NH), FM_ERR_SHAPE);
    fm_tensor k_short = gc_view(x, FM_F32, 3, sk);
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &k_short, &q, NULL, 0, NH), FM_ERR_SHAPE);
    fm_tensor q2 = gc_view(x, FM_F32, 2, s2);
    GC_EXPECT(fm_attention_forward(&out, &lse, &q2, &q, &q, NULL, 0, NH), FM_ERR_SHAPE);

    /* lengths: i32, (B), values in [0, T], in forward and in backward */
    fm_tensor lf = gc_view(lens_f, FM_F32, 1, sl);
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &lf, 0, NH), FM_ERR_DTYPE);
    fm_tensor l3 = gc_view(lens, FM_I32, 1, sl3);
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &l3, 0, NH), FM_ERR_SHAPE);
    GC_EXPECT(fm_attention_backward(&out, NULL, NULL, &q, &q, &q, &q, &q, &lse, &l3, 0, NH), FM_ERR_SHAPE);
    lens[1] = T + 1;
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &len, 0, NH), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "lengths[1] = 6"));
    GC_EXPECT(fm_attention_backward(&out, NULL, NULL, &q, &q, &q, &q, &q, &lse, &len, 0, NH), FM_ERR_RANGE);
    lens[1] = -1;
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &len, 0, NH), FM_ERR_RANGE);
    lens[1] = T;
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &q, &q, &len, 0, NH), FM_OK);

    /* dtype, contiguity, device */
    fm_tensor qi = gc_view(x, FM_I32, 3, sx);
    GC_EXPECT(fm_attention_forward(&out, &lse, &qi, &q, &q, NULL, 0, NH), FM_ERR_DTYPE);
    fm_tensor narrow;
    assert_int_equal(fm_tensor_narrow(&narrow, &q, 2, 0, 6), FM_OK);
    GC_EXPECT(fm_attention_forward(&out, &lse, &q, &narrow, &q, NULL, 0, NH), FM_ERR_INVALID_ARG);
    fm_tensor qc = q;
    qc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_attention_forward(&out, &lse, &qc, &q, &q, NULL, 0, NH), FM_ERR_DEVICE); /* mixed devices */
    GC_EXPECT(fm_attention_backward(&out, NULL, NULL, &q, &q, &q, &q, &q, &lse, NULL, 0, NH), FM_OK);
    GC_EXPECT(fm_attention_backward(&out, NULL, NULL, &q, &qc, &q, &q, &q, &lse, NULL, 0, NH), FM_ERR_DEVICE);
#ifndef FEDMM_WITH_CUDA
    /* (a CUDA build would launch its kernels on these host pointers: tests/gpu covers that path) */
    fm_tensor outc = out, lsec = lse;
    outc.device = FM_DEVICE_CUDA;
    lsec.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_attention_forward(&outc, &lsec, &qc, &qc, &qc, NULL, 0, NH), FM_ERR_DEVICE);
    GC_EXPECT(fm_attention_backward(&outc, NULL, NULL, &qc, &qc, &qc, &qc, &qc, &lsec, NULL, 0, NH), FM_ERR_DEVICE);
#endif

    /* backward: gradients must match q, out must match q, lse must be (B, NH, T); all-NULL is a no-op */
    GC_EXPECT(fm_attention_backward(&k_short, NULL, NULL, &q, &q, &q, &q, &q, &lse, NULL, 0, NH), FM_ERR_SHAPE);
    GC_EXPECT(fm_attention_backward(&out, NULL, NULL, &q, &q, &q, &q, &k_short, &lse, NULL, 0, NH), FM_ERR_SHAPE);
    GC_EXPECT(fm_attention_backward(&out, NULL, NULL, &q, &q, &q, &q, NULL, &lse, NULL, 0, NH), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_attention_backward(NULL, NULL, NULL, &q, &q, &q, &q, &q, &lse, NULL, 0, NH), FM_OK);
    GC_EXPECT(fm_attention_backward(NULL, NULL, &out, &q, &q, &q, &q, &q, &lse_small, NULL, 0, NH), FM_ERR_SHAPE);
    GC_EXPECT(fm_attention_backward(NULL, NULL, &out, &q, &q, &q, &q, &q, &lse, NULL, 0, 7), FM_ERR_SHAPE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_causal),
        cmocka_unit_test(test_padding_with_empty_row),
        cmocka_unit_test(test_causal_and_padding),
        cmocka_unit_test(test_single_head_one_token),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
