/* The CUDA attention, loss and gradient-clipping kernels (kernels/attention.cu, infonce.cu,
 * cross_entropy.cu, mse.cu, clip_grad.cu) against their CPU twins in src/cpu/, on fresh random inputs of
 * odd shapes. Outputs start as NaN (every element must be written); gradients start random and backward
 * runs twice (it must accumulate); NULL gradients are skipped. Bad input reported from the device (a
 * target out of range, a non-finite norm) must leave the outputs as they were. Argument checks run without
 * a device; the rest needs a GPU, and without one the test reports itself skipped (exit 77).
 *
 * Tolerances (fp32, relative 1e-5 throughout; the absolute parts below are for values that cancel).
 * Attention: out is a convex combination of v ∈ [-1, 1] and can cancel to ~0, so atol 1e-6 (a few ulp of
 * the largest |v|); lse is O(1) and may cross 0, same atol. Both sides recompute the probabilities with
 * expf of scores whose dot products are summed in different orders (8-lane trees on the GPU), ~2–4 ulp
 * apart; each gradient element sums up to T = 77 such terms on top of a random starting value, hence
 * atol 5e-6 for dq, dk, dv (a random walk of 77 terms of ~1e-7 each, with margin). InfoNCE: the CPU's
 * logits come from an OpenBLAS GEMM and the GPU's from a plain loop; at exp(logit_scale) ≈ 14.3 (CLIP's
 * initial temperature) their difference is ~1e-6 in a logit, i.e. ~1e-6 relative in a probability, so
 * rtol 1e-5 holds and the gradients (sums over N = 37 rows that cancel around the −2δij term) get atol
 * 1e-6. Cross-entropy and MSE: same arithmetic, sums in double: rtol 1e-5, atol 1e-7 for gradients that
 * cancel. Sum of squares: double sums in another order, relative 1e-9. */
#include "gpu_test.h"

#include <math.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.cuda_ops_b", "this fedmm was built without the CUDA backend"); }

#else

#include "cpu/cpu_ops.h"
#include "fedmm/ops.h"
#include "fedmm/tensor.h"

#include "../../cuda/runtime.h"
#include "../../kernels/cuda_ops.h"

#define ATT_OUT_ATOL 1e-6
#define ATT_GRAD_ATOL 5e-6
#define RTOL 1e-5
#define INFONCE_GRAD_ATOL 1e-6
#define LOSS_GRAD_ATOL 1e-7
#define SUMSQ_RTOL 1e-9

/* ---- host helpers ------------------------------------------------------------------------------------ */

static void *dev_upload_bytes(const void *h, size_t bytes)
{
    void *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d, bytes));
    FM_CHECK_OK(fm_cuda_memcpy(d, h, bytes, 0));
    return d;
}

static void expect_equal(const char *what, size_t n, const float *dev, const float *cpu)
{
    float *got = fm_test_dev_download(dev, n);
    if (memcmp(got, cpu, n * sizeof(float)) != 0)
        fail_msg("%s (n = %zu): device buffer changed", what, n);
    free(got);
}

static float dev_scalar(const float *d)
{
    float x = 0.0f;
    FM_CHECK_OK(fm_cuda_memcpy(&x, d, sizeof x, 1));
    return x;
}

/* ---- argument checks: no device needed --------------------------------------------------------------- */

static void test_argument_checks(void **state)
{
    (void)state;
    float x = 1.0f;
    double dd = -1.0;
    int32_t t = 0;
    /* empty problems and all-NULL gradients: nothing to do, no device touched */
    FM_CHECK_OK(fm_cuda_attention_forward(NULL, NULL, NULL, NULL, NULL, NULL, 1, 0, 5, 12, 3));
    FM_CHECK_OK(fm_cuda_attention_backward(NULL, NULL, NULL, &x, &x, &x, &x, &x, &x, NULL, 0, 2, 5, 12, 3));
    FM_CHECK_OK(fm_cuda_infonce_backward(NULL, NULL, NULL, &x, &x, &x, &x, &x, 4, 3, 1.0f));
    FM_CHECK_OK(fm_cuda_cross_entropy_backward(NULL, &x, &t, 4, 3, 1.0f));
    FM_CHECK_OK(fm_cuda_mse_backward(NULL, NULL, &x, &x, 5, 1.0f));
    FM_CHECK_OK(fm_cuda_sum_squares(NULL, 0, &dd));
    assert_true(dd == 0.0);
    FM_CHECK_OK(fm_cuda_clip_grad_norm(NULL, 0, 1.0f, &x));
    assert_true(x == 0.0f);
    x = 1.0f;
    /* attention: head size above the kernel's limit, bad sizes, missing tensors */
    assert_int_equal(fm_cuda_attention_forward(&x, &x, &x, &x, &x, NULL, 0, 1, 4, 258, 2), FM_ERR_UNSUPPORTED);
    assert_non_null(strstr(fm_last_error(), "head size 129"));
    assert_int_equal(fm_cuda_attention_backward(&x, NULL, NULL, &x, &x, &x, &x, &x, &x, NULL, 0, 1, 4, 258, 2),
                     FM_ERR_UNSUPPORTED);
    assert_int_equal(fm_cuda_attention_forward(&x, &x, &x, &x, &x, NULL, 0, 1, 4, 12, 5), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_attention_forward(&x, NULL, &x, &x, &x, NULL, 0, 1, 4, 12, 3), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "NULL lse"));
    assert_int_equal(fm_cuda_attention_backward(&x, NULL, NULL, &x, &x, &x, &x, NULL, &x, NULL, 0, 1, 4, 12, 3),
                     FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "NULL out"));
    /* losses */
    assert_int_equal(fm_cuda_infonce_forward(NULL, &x, &x, &x, &x, &x, 3, 2), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_infonce_forward(&x, &x, &x, &x, &x, NULL, 3, 2), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "NULL logit_scale"));
    assert_int_equal(fm_cuda_infonce_backward(&x, NULL, NULL, &x, &x, &x, &x, NULL, 3, 2, 1.0f), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_cross_entropy_forward(&x, &x, &x, &t, 3, 0), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_cross_entropy_forward(&x, &x, &x, NULL, 3, 2), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_cross_entropy_backward(&x, NULL, &t, 3, 2, 1.0f), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_mse_forward(NULL, &x, &x, 3), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_mse_forward(&x, NULL, &x, 3), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_mse_backward(&x, NULL, &x, NULL, 3, 1.0f), FM_ERR_INVALID_ARG);
    /* gradient clipping */
    assert_int_equal(fm_cuda_sum_squares(&x, 3, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_sum_squares(NULL, 3, &dd), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_clip_grad_norm(&x, 3, 0.0f, &x), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_clip_grad_norm(&x, 3, NAN, &x), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_clip_grad_norm(NULL, 3, 1.0f, &x), FM_ERR_INVALID_ARG);
}

/* ---- attention ----------------------------------------------------------------------------------------- */

static void check_attention(uint64_t stream, int B, int T, int C, int NH, int causal, const int32_t *len)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    const size_t n = (size_t)B * T * C, nl = (size_t)B * NH * T;
    float *q = fm_test_random(&rng, n, -1.5f, 1.5f), *k = fm_test_random(&rng, n, -1.5f, 1.5f);
    float *v = fm_test_random(&rng, n, -1.0f, 1.0f), *dout = fm_test_random(&rng, n, -1.0f, 1.0f);
    float *out = fm_test_alloc(n * sizeof(float)), *lse = fm_test_alloc(nl * sizeof(float));
    fm_cpu_attention_forward(out, lse, q, k, v, len, causal, B, T, C, NH);

    float *d_q = fm_test_dev_upload(q, n), *d_k = fm_test_dev_upload(k, n), *d_v = fm_test_dev_upload(v, n),
          *d_dout = fm_test_dev_upload(dout, n);
    int32_t *d_len = len ? dev_upload_bytes(len, (size_t)B * sizeof(int32_t)) : NULL;
    float *d_out = fm_test_dev_poisoned(n), *d_lse = fm_test_dev_poisoned(nl);
    FM_CHECK_OK(fm_cuda_attention_forward(d_out, d_lse, d_q, d_k, d_v, d_len, causal, B, T, C, NH));
    char what[96];
    snprintf(what, sizeof what, "attention out (B %d T %d C %d NH %d causal %d)", B, T, C, NH, causal);
    fm_test_dev_expect_close(what, n, d_out, out, RTOL, ATT_OUT_ATOL);
    /* lse: −inf rows must match exactly; compare the rest */
    float *glse = fm_test_dev_download(d_lse, nl);
    for (size_t i = 0; i < nl; i++) {
        if (isinf(lse[i]) || isinf(glse[i])) {
            if (!(isinf(glse[i]) && glse[i] < 0 && isinf(lse[i]) && lse[i] < 0))
                fail_msg("attention lse[%zu]: gpu %g, cpu %g", i, (double)glse[i], (double)lse[i]);
            glse[i] = lse[i] = 0.0f;
        }
    }
    double *want = fm_test_alloc(nl * sizeof(double));
    fm_test_to_double(want, lse, nl);
    fm_test_assert_close("attention lse", glse, want, nl, RTOL, ATT_OUT_ATOL);
    free(want);
    free(glse);
    /* backward from the CPU's own forward (restoring its −inf rows) and the GPU's forward */
    fm_cpu_attention_forward(out, lse, q, k, v, len, causal, B, T, C, NH);

    float *gq = fm_test_random(&rng, n, -1.0f, 1.0f), *gk = fm_test_random(&rng, n, -1.0f, 1.0f);
    float *gv = fm_test_random(&rng, n, -1.0f, 1.0f);
    float *d_gq = fm_test_dev_upload(gq, n), *d_gk = fm_test_dev_upload(gk, n), *d_gv = fm_test_dev_upload(gv, n);
    for (int rep = 0; rep < 2; rep++) {
        fm_cpu_attention_backward(gq, gk, gv, dout, q, k, v, out, lse, len, causal, B, T, C, NH);
        FM_CHECK_OK(fm_cuda_attention_backward(d_gq, d_gk, d_gv, d_dout, d_q, d_k, d_v, d_out, d_lse, d_len, causal, B,
                                               T, C, NH));
    }
    fm_test_dev_expect_close("attention dq (accumulated twice)", n, d_gq, gq, RTOL, ATT_GRAD_ATOL);
    fm_test_dev_expect_close("attention dk (accumulated twice)", n, d_gk, gk, RTOL, ATT_GRAD_ATOL);
    fm_test_dev_expect_close("attention dv (accumulated twice)", n, d_gv, gv, RTOL, ATT_GRAD_ATOL);
    /* NULL gradients are skipped: one pass for dk alone, then dq and dv alone */
    fm_cpu_attention_backward(NULL, gk, NULL, dout, q, k, v, out, lse, len, causal, B, T, C, NH);
    FM_CHECK_OK(
        fm_cuda_attention_backward(NULL, d_gk, NULL, d_dout, d_q, d_k, d_v, d_out, d_lse, d_len, causal, B, T, C, NH));
    fm_cpu_attention_backward(gq, NULL, gv, dout, q, k, v, out, lse, len, causal, B, T, C, NH);
    FM_CHECK_OK(
        fm_cuda_attention_backward(d_gq, NULL, d_gv, d_dout, d_q, d_k, d_v, d_out, d_lse, d_len, causal, B, T, C, NH));
    fm_test_dev_expect_close("attention dq (third pass)", n, d_gq, gq, RTOL, ATT_GRAD_ATOL);
    fm_test_dev_expect_close("attention dk (third pass)", n, d_gk, gk, RTOL, ATT_GRAD_ATOL);
    fm_test_dev_expect_close("attention dv (third pass)", n, d_gv, gv, RTOL, ATT_GRAD_ATOL);

    void *dbufs[] = {d_q, d_k, d_v, d_dout, d_len, d_out, d_lse, d_gq, d_gk, d_gv};
    for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++)
        fm_cuda_free(dbufs[i]);
    void *hbufs[] = {q, k, v, dout, out, lse, gq, gk, gv};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++)
        free(hbufs[i]);
}

static void test_attention_causal_lengths(void **state)
{
    (void)state;
    const int32_t len[2] = {61, 77};
    check_attention(301, 2, 77, 96, 3, 1, len); /* hs 32 */
}

static void test_attention_plain(void **state)
{
    (void)state;
    check_attention(302, 3, 50, 128, 2, 0, NULL); /* hs 64 */
}

static void test_attention_edges(void **state)
{
    (void)state;
    const int32_t len[3] = {0, 33, 17};         /* an empty sequence: lse −inf, zeros out, no gradient */
    check_attention(303, 3, 33, 40, 5, 1, len); /* hs 8 */
    const int32_t len1[2] = {1, 40};
    check_attention(304, 2, 40, 256, 2, 0, len1); /* hs 128, one visible key in batch 0 */
    check_attention(305, 1, 1, 7, 1, 1, NULL);    /* one token, hs 7 */
}

/* The dispatcher copies device lengths to the host to check them. */
static void test_attention_dispatch(void **state)
{
    (void)state;
    enum { B = 2, T = 9, C = 12, NH = 3 };
    const size_t n = (size_t)B * T * C;
    fm_rng rng = fm_rng_make(fm_test_seed(), 306);
    float *x = fm_test_random(&rng, n, -1.0f, 1.0f);
    float *d_x = fm_test_dev_upload(x, n), *d_out = fm_test_dev_poisoned(n),
          *d_lse = fm_test_dev_poisoned((size_t)B * NH * T);
    int32_t lens[B] = {9, 10};
    int32_t *d_len = dev_upload_bytes(lens, sizeof lens);
    const int64_t sx[3] = {B, T, C}, sl[3] = {B, NH, T}, sb[1] = {B};
    fm_tensor tx, tout, tlse, tlen;
    FM_CHECK_OK(fm_tensor_view(&tx, d_x, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, sx));
    FM_CHECK_OK(fm_tensor_view(&tout, d_out, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, sx));
    FM_CHECK_OK(fm_tensor_view(&tlse, d_lse, (size_t)B * NH * T * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, sl));
    FM_CHECK_OK(fm_tensor_view(&tlen, d_len, sizeof lens, 0, FM_I32, FM_DEVICE_CUDA, 1, sb));
    assert_int_equal(fm_attention_forward(&tout, &tlse, &tx, &tx, &tx, &tlen, 1, NH), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "lengths[1] = 10"));
    lens[1] = 4;
    FM_CHECK_OK(fm_cuda_memcpy(d_len, lens, sizeof lens, 0));
    FM_CHECK_OK(fm_attention_forward(&tout, &tlse, &tx, &tx, &tx, &tlen, 1, NH));
    float *d_g = fm_test_dev_upload(x, n);
    fm_tensor tg;
    FM_CHECK_OK(fm_tensor_view(&tg, d_g, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, sx));
    FM_CHECK_OK(fm_attention_backward(&tg, NULL, NULL, &tx, &tx, &tx, &tx, &tout, &tlse, &tlen, 1, NH));
    fm_cuda_free(d_g);
    fm_cuda_free(d_x);
    fm_cuda_free(d_out);
    fm_cuda_free(d_lse);
    fm_cuda_free(d_len);
    free(x);
}

/* ---- InfoNCE ------------------------------------------------------------------------------------------- */

static void normalise_rows(float *x, size_t N, size_t D)
{
    for (size_t i = 0; i < N; i++) {
        double s = 0.0;
        for (size_t d = 0; d < D; d++)
            s += (double)x[i * D + d] * x[i * D + d];
        for (size_t d = 0; d < D; d++)
            x[i * D + d] = (float)(x[i * D + d] / sqrt(s));
    }
}

static void test_infonce(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 310);
    const int N = 37, D = 19;
    const size_t Ns = (size_t)N, nd = Ns * D, nn = Ns * Ns;
    float *img = fm_test_random(&rng, nd, -1.0f, 1.0f), *txt = fm_test_random(&rng, nd, -1.0f, 1.0f);
    normalise_rows(img, Ns, D);
    normalise_rows(txt, Ns, D);
    const float ls = logf(1.0f / 0.07f);
    float loss = 0.0f, *pi = fm_test_alloc(nn * sizeof(float)), *pt = fm_test_alloc(nn * sizeof(float));
    fm_cpu_infonce_forward(&loss, pi, pt, img, txt, ls, N, D);

    float *d_img = fm_test_dev_upload(img, nd), *d_txt = fm_test_dev_upload(txt, nd),
          *d_ls = fm_test_dev_upload(&ls, 1);
    float *d_loss = fm_test_dev_poisoned(1), *d_pi = fm_test_dev_poisoned(nn), *d_pt = fm_test_dev_poisoned(nn);
    FM_CHECK_OK(fm_cuda_infonce_forward(d_loss, d_pi, d_pt, d_img, d_txt, d_ls, N, D));
    fm_test_dev_expect_close("infonce loss", 1, d_loss, &loss, RTOL, 0.0);
    fm_test_dev_expect_close("infonce probs_i2t", nn, d_pi, pi, RTOL, 0.0);
    fm_test_dev_expect_close("infonce probs_t2i", nn, d_pt, pt, RTOL, 0.0);

    float *gi = fm_test_random(&rng, nd, -1.0f, 1.0f), *gt = fm_test_random(&rng, nd, -1.0f, 1.0f);
    float gls = 0.3f;
    float *d_gi = fm_test_dev_upload(gi, nd), *d_gt = fm_test_dev_upload(gt, nd), *d_gls = fm_test_dev_upload(&gls, 1);
    for (int rep = 0; rep < 2; rep++) {
        fm_cpu_infonce_backward(gi, gt, &gls, img, txt, pi, pt, ls, N, D, 0.75f);
        FM_CHECK_OK(fm_cuda_infonce_backward(d_gi, d_gt, d_gls, d_img, d_txt, d_pi, d_pt, d_ls, N, D, 0.75f));
    }
    fm_test_dev_expect_close("infonce dimg (accumulated twice)", nd, d_gi, gi, RTOL, INFONCE_GRAD_ATOL);
    fm_test_dev_expect_close("infonce dtxt (accumulated twice)", nd, d_gt, gt, RTOL, INFONCE_GRAD_ATOL);
    fm_test_dev_expect_close("infonce dlogit_scale (accumulated twice)", 1, d_gls, &gls, RTOL, INFONCE_GRAD_ATOL);
    /* only dlogit_scale */
    fm_cpu_infonce_backward(NULL, NULL, &gls, img, txt, pi, pt, ls, N, D, 1.0f);
    FM_CHECK_OK(fm_cuda_infonce_backward(NULL, NULL, d_gls, d_img, d_txt, d_pi, d_pt, d_ls, N, D, 1.0f));
    fm_test_dev_expect_close("infonce dlogit_scale (third pass)", 1, d_gls, &gls, RTOL, INFONCE_GRAD_ATOL);
    fm_test_dev_expect_close("infonce dimg (skipped)", nd, d_gi, gi, RTOL, INFONCE_GRAD_ATOL);

    void *dbufs[] = {d_img, d_txt, d_ls, d_loss, d_pi, d_pt, d_gi, d_gt, d_gls};
    for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++)
        fm_cuda_free(dbufs[i]);
    void *hbufs[] = {img, txt, pi, pt, gi, gt};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++)
        free(hbufs[i]);
}

/* ---- cross-entropy --------------------------------------------------------------------------------------- */

static void test_cross_entropy(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 320);
    const int N = 53, C = 29;
    const size_t n = (size_t)N * C;
    float *x = fm_test_random(&rng, n, -4.0f, 4.0f);
    int32_t *t = fm_test_alloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++)
        t[i] = i % 7 == 3 ? -1 : (int32_t)fm_rng_below(&rng, (uint64_t)C);
    float loss = 0.0f, *p = fm_test_alloc(n * sizeof(float));
    FM_CHECK_OK(fm_cpu_cross_entropy_forward(&loss, p, x, t, N, C));

    float *d_x = fm_test_dev_upload(x, n), *d_loss = fm_test_dev_poisoned(1), *d_p = fm_test_dev_poisoned(n);
    int32_t *d_t = dev_upload_bytes(t, (size_t)N * sizeof(int32_t));
    FM_CHECK_OK(fm_cuda_cross_entropy_forward(d_loss, d_p, d_x, d_t, N, C));
    fm_test_dev_expect_close("cross_entropy loss", 1, d_loss, &loss, RTOL, 0.0);
    fm_test_dev_expect_close("cross_entropy probs", n, d_p, p, RTOL, 0.0);

    float *g = fm_test_random(&rng, n, -1.0f, 1.0f), *d_g = fm_test_dev_upload(g, n);
    for (int rep = 0; rep < 2; rep++) {
        fm_cpu_cross_entropy_backward(g, p, t, N, C, 1.5f);
        FM_CHECK_OK(fm_cuda_cross_entropy_backward(d_g, d_p, d_t, N, C, 1.5f));
    }
    fm_test_dev_expect_close("cross_entropy dlogits (accumulated twice)", n, d_g, g, RTOL, LOSS_GRAD_ATOL);

    /* a target out of range: FM_ERR_RANGE naming the first bad row; loss and dlogits untouched */
    int32_t bad[2] = {C, -2};
    FM_CHECK_OK(fm_cuda_memcpy(d_t + 41, &bad[1], sizeof(int32_t), 0));
    FM_CHECK_OK(fm_cuda_memcpy(d_t + 17, &bad[0], sizeof(int32_t), 0));
    const float sentinel = 123.0f;
    FM_CHECK_OK(fm_cuda_memcpy(d_loss, &sentinel, sizeof sentinel, 0));
    assert_int_equal(fm_cuda_cross_entropy_forward(d_loss, d_p, d_x, d_t, N, C), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "targets[17] = 29"));
    assert_true(dev_scalar(d_loss) == sentinel);
    assert_int_equal(fm_cuda_cross_entropy_backward(d_g, d_p, d_t, N, C, 1.0f), FM_ERR_RANGE);
    expect_equal("cross_entropy dlogits after a bad target", n, d_g, g);
    /* the dispatcher passes the device's verdict on */
    const int64_t sx[2] = {N, C}, st[1] = {N};
    fm_tensor tl, tp, tx, tt;
    FM_CHECK_OK(fm_tensor_view(&tl, d_loss, sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 0, NULL));
    FM_CHECK_OK(fm_tensor_view(&tp, d_p, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 2, sx));
    FM_CHECK_OK(fm_tensor_view(&tx, d_x, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 2, sx));
    FM_CHECK_OK(fm_tensor_view(&tt, d_t, (size_t)N * sizeof(int32_t), 0, FM_I32, FM_DEVICE_CUDA, 1, st));
    assert_int_equal(fm_cross_entropy_forward(&tl, &tp, &tx, &tt), FM_ERR_RANGE);
    assert_int_equal(fm_cross_entropy_backward(&tx, &tp, &tt, 1.0f), FM_ERR_RANGE);

    /* every row ignored: loss 0, no gradient */
    for (int i = 0; i < N; i++)
        t[i] = -1;
    FM_CHECK_OK(fm_cuda_memcpy(d_t, t, (size_t)N * sizeof(int32_t), 0));
    FM_CHECK_OK(fm_cuda_cross_entropy_forward(d_loss, d_p, d_x, d_t, N, C));
    assert_true(dev_scalar(d_loss) == 0.0f);
    FM_CHECK_OK(fm_cuda_cross_entropy_backward(d_g, d_p, d_t, N, C, 1.0f));
    expect_equal("cross_entropy dlogits, every row ignored", n, d_g, g);

    fm_cuda_free(d_x);
    fm_cuda_free(d_loss);
    fm_cuda_free(d_p);
    fm_cuda_free(d_t);
    fm_cuda_free(d_g);
    free(x);
    free(t);
    free(p);
    free(g);
}

/* ---- MSE ------------------------------------------------------------------------------------------------ */

static const size_t sizes[] = {1, 1000, 100003, 1048579};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_mse(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 330);
    for (size_t s = 0; s < NSIZES; s++) {
        const size_t n = sizes[s];
        float *a = fm_test_random(&rng, n, -2.0f, 2.0f), *b = fm_test_random(&rng, n, -2.0f, 2.0f);
        float loss = 0.0f;
        fm_cpu_mse_forward(&loss, a, b, n);
        float *d_a = fm_test_dev_upload(a, n), *d_b = fm_test_dev_upload(b, n), *d_loss = fm_test_dev_poisoned(1);
        FM_CHECK_OK(fm_cuda_mse_forward(d_loss, d_a, d_b, n));
        fm_test_dev_expect_close("mse loss", 1, d_loss, &loss, RTOL, 0.0);

        float *ga = fm_test_random(&rng, n, -1.0f, 1.0f), *gb = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *d_ga = fm_test_dev_upload(ga, n), *d_gb = fm_test_dev_upload(gb, n);
        for (int rep = 0; rep < 2; rep++) {
            fm_cpu_mse_backward(ga, gb, a, b, n, 0.5f);
            FM_CHECK_OK(fm_cuda_mse_backward(d_ga, d_gb, d_a, d_b, n, 0.5f));
        }
        fm_cpu_mse_backward(NULL, gb, a, b, n, 2.0f);
        FM_CHECK_OK(fm_cuda_mse_backward(NULL, d_gb, d_a, d_b, n, 2.0f));
        fm_test_dev_expect_close("mse da (accumulated twice)", n, d_ga, ga, RTOL, LOSS_GRAD_ATOL);
        fm_test_dev_expect_close("mse db (accumulated three times)", n, d_gb, gb, RTOL, LOSS_GRAD_ATOL);
        void *dbufs[] = {d_a, d_b, d_loss, d_ga, d_gb};
        for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++)
            fm_cuda_free(dbufs[i]);
        free(a);
        free(b);
        free(ga);
        free(gb);
    }
}

/* ---- gradient clipping ---------------------------------------------------------------------------------- */

static void test_clip_grad(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 340);
    for (size_t s = 0; s < NSIZES; s++) {
        const size_t n = sizes[s];
        float *g = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *d_g = fm_test_dev_upload(g, n);
        double want = fm_cpu_sum_squares(g, n), got = -1.0;
        FM_CHECK_OK(fm_cuda_sum_squares(d_g, n, &got));
        if (fabs(got - want) > SUMSQ_RTOL * want)
            fail_msg("sum_squares (n = %zu): gpu %.17g, cpu %.17g", n, got, want);

        /* max_norm above the norm: g untouched, bit for bit */
        const float norm_cpu = (float)sqrt(want);
        float norm = -1.0f;
        FM_CHECK_OK(fm_cuda_clip_grad_norm(d_g, n, norm_cpu * 2.0f, &norm));
        if (fabsf(norm - norm_cpu) > (float)RTOL * norm_cpu)
            fail_msg("clip_grad_norm (n = %zu): norm gpu %.9g, cpu %.9g", n, (double)norm, (double)norm_cpu);
        expect_equal("clip_grad_norm below the limit", n, d_g, g);
        /* max_norm below: scaled as the CPU scales */
        float *ref = fm_test_copy(g, n);
        const float max_norm = norm_cpu * 0.37f;
        (void)fm_cpu_clip_grad_norm(ref, n, max_norm);
        FM_CHECK_OK(fm_cuda_clip_grad_norm(d_g, n, max_norm, &norm));
        fm_test_dev_expect_close("clip_grad_norm scaled", n, d_g, ref, RTOL, 0.0);
        /* a NaN anywhere: FM_ERR_NOT_FINITE, g unchanged */
        float *clipped = fm_test_dev_download(d_g, n);
        const float nan = NAN;
        FM_CHECK_OK(fm_cuda_memcpy(d_g + n / 2, &nan, sizeof nan, 0));
        clipped[n / 2] = nan;
        assert_int_equal(fm_cuda_clip_grad_norm(d_g, n, max_norm, &norm), FM_ERR_NOT_FINITE);
        assert_true(isnan(norm));
        expect_equal("clip_grad_norm with a NaN", n, d_g, clipped);
        /* through the dispatcher: the norm comes back to the host, the error passes on */
        fm_tensor tg;
        const int64_t sh[1] = {(int64_t)n};
        FM_CHECK_OK(fm_tensor_view(&tg, d_g, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 1, sh));
        float before = 0.0f;
        assert_int_equal(fm_clip_grad_norm(&tg, 1.0f, &before), FM_ERR_NOT_FINITE);
        assert_true(isnan(before));
        fm_cuda_free(d_g);
        free(g);
        free(ref);
        free(clipped);
    }
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_argument_checks),
    };
    int failed =
        cmocka_run_group_tests_name("cuda ops (attention, losses, clipping), argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.cuda_ops_b", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_attention_causal_lengths),
        cmocka_unit_test(test_attention_plain),
        cmocka_unit_test(test_attention_edges),
        cmocka_unit_test(test_attention_dispatch),
        cmocka_unit_test(test_infonce),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_mse),
        cmocka_unit_test(test_clip_grad),
    };
    failed += cmocka_run_group_tests_name("cuda ops (attention, losses, clipping) vs CPU reference", device_tests, NULL,
                                          fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
