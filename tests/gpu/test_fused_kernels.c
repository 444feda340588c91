/* The fused kernels of the model's device path against float64 references computed here: residual + layernorm
 * forward and backward (kernels/residual_norm.cu; fp32 and bf16 outputs, with and without the add, in place, rows
 * held in registers and rows too long for them, several rows per warp in backward) and the MLP activation with its
 * cast (kernels/act_cast.cu; quick-GELU and erf GELU, fp32 and bf16). Written outputs start as NaN (every element
 * must be written); gradients start random (backward must accumulate). Each fused kernel is also run beside the
 * unfused kernels it replaces, and the elements whose bits differ are counted and printed (expected 0: the same
 * expressions; not a failure by itself, the float64 bounds are the test). The argument checks run without a device;
 * the rest needs a GPU and reports itself skipped (77) without one.
 *
 * Tolerances (|gpu − ref| ≤ bound), from tests/gpu/test_cuda_ops_a.c's reasoning for the row ops:
 *   h = a + b: one float addition on both sides, compared bit for bit;
 *   mean: 1e-5·|ref| + 5e-6; rstd: 1e-5·|ref|; layernorm output and input gradient: 1e-5·|ref| + 5e-6 (row
 *   statistics summed in fp32 over ⌈C/32⌉ terms per lane and 5 shuffle levels, outputs of size up to about 3);
 *   dweight, dbias (sums over N rows in fp32): 1e-5·|ref| + N·1.2e-7;
 *   activations: 1e-5·|ref|, backward + 1e-6·|dout| (where σ + 1.702x·σ(1 − σ) cancels near x ≈ −0.75);
 *   bf16 outputs: the bf16 rounding of the kernel's own fp32 value, checked bit for bit against the fp32 kernel's
 *   output, and within 2⁻⁸·|ref| (half an ulp) + the fp32 bound of the reference. */
#include "gpu_test.h"

#include <math.h>
#include <stdint.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.fused_kernels", "this fedmm was built without the CUDA backend"); }

#else

#include "../../cuda/runtime.h"
#include "../../kernels/cuda_ops.h"
#include "../../kernels/model_ops.h"

#define RTOL 1e-5
#define ROW_ATOL 5e-6
#define BF16_REL (1.0 / 256.0)

/* ---- device buffers ------------------------------------------------------------------------------------------ */

static void *dev_upload(const void *h, size_t bytes)
{
    void *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d, bytes + 16));
    FM_CHECK_OK(fm_cuda_memcpy(d, h, bytes, 0));
    return d;
}

/* `bytes` of all bits set: NaN in fp32 and in bf16. */
static void *dev_poisoned(size_t bytes)
{
    void *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d, bytes + 16));
    FM_CHECK_OK(fm_cuda_memset(d, 0xff, bytes));
    return d;
}

static float *dl_f32(const void *d, size_t n)
{
    float *h = fm_test_alloc(n * sizeof *h + 4);
    FM_CHECK_OK(fm_cuda_memcpy(h, d, n * sizeof *h, 1));
    return h;
}

static float *dl_bf16(const void *d, size_t n)
{
    uint16_t *b = fm_test_alloc(n * sizeof *b + 2);
    float *h = fm_test_alloc(n * sizeof *h + 4);
    FM_CHECK_OK(fm_cuda_memcpy(b, d, n * sizeof *b, 1));
    for (size_t i = 0; i < n; i++)
        h[i] = fm_test_from_bf16(b[i]);
    free(b);
    return h;
}

static float *host_random(fm_rng *rng, size_t n, float lo, float hi)
{
    float *x = fm_test_alloc(n * sizeof *x + 4);
    fm_test_fill(rng, x, n, lo, hi);
    return x;
}

/* got[i] within rtol·|want| + atol + extra[i] (extra may be NULL); NaN fails. */
static void expect_near(const char *what, const float *got, const double *want, size_t n, double rtol, double atol,
                        const double *extra)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]), tol = rtol * fabs(want[i]) + atol + (extra ? extra[i] : 0.0);
        if (!(d <= tol))
            fail_msg("%s: element %zu of %zu: gpu %.9g, reference %.9g (|diff| %.3g > tol %.3g)", what, i, n,
                     (double)got[i], want[i], d, tol);
        if (tol > 0 && d / tol > worst)
            worst = d / tol;
    }
    printf("  %-44s %zu elements, worst %.2f of its tolerance\n", what, n, worst);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void expect_bits(const char *what, const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (bits(got[i]) != bits(want[i]))
            fail_msg("%s: element %zu of %zu: %a, expected %a", what, i, n, (double)got[i], (double)want[i]);
}

/* bf16 values `lp` are the rounding of the fp32 values `f`, element for element. */
static void expect_rounded(const char *what, const float *lp, const float *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lp[i] != fm_test_from_bf16(fm_test_to_bf16(f[i])) && !(isnan(lp[i]) && isnan(f[i])))
            fail_msg("%s: element %zu of %zu: bf16 %a is not the rounding of %a", what, i, n, (double)lp[i],
                     (double)f[i]);
}

/* Elements whose bits differ: printed, against the unfused kernels. */
static void count_differing(const char *what, const float *a, const float *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += bits(a[i]) != bits(b[i]);
    printf("  %-44s %zu of %zu elements differ in their bits from the unfused kernels (expected 0)\n", what, k, n);
}

/* ---- argument checks: no device needed ----------------------------------------------------------------------- */

static void test_argument_checks(void **state)
{
    (void)state;
    float x = 1.0f;
    uint16_t lp = 0;
    FM_CHECK_OK(
        fm_cuda_residual_layernorm_forward(NULL, NULL, FM_GEMM_F32, NULL, NULL, NULL, NULL, NULL, NULL, 0, 8, 1e-5f));
    FM_CHECK_OK(fm_cuda_residual_layernorm_backward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 3, 0));
    EXPECT_FAIL(fm_cuda_residual_layernorm_forward(&x, &x, FM_GEMM_F32, &x, &x, &x, &x, &x, &x, -1, 8, 1e-5f),
                FM_ERR_INVALID_ARG, "negative size");
    EXPECT_FAIL(fm_cuda_residual_layernorm_forward(&x, &x, (fm_gemm_type)5, &x, &x, &x, &x, &x, &x, 2, 8, 1e-5f),
                FM_ERR_INVALID_ARG, "unknown output type");
    EXPECT_FAIL(fm_cuda_residual_layernorm_forward(&x, NULL, FM_GEMM_F32, &x, &x, &x, &x, &x, &x, 2, 8, 1e-5f),
                FM_ERR_INVALID_ARG, "NULL out");
    EXPECT_FAIL(fm_cuda_residual_layernorm_forward(NULL, &x, FM_GEMM_BF16, &x, &x, &x, &x, &x, &x, 2, 8, 1e-5f),
                FM_ERR_INVALID_ARG, "NULL h");
    EXPECT_FAIL(fm_cuda_residual_layernorm_forward(&x, &x, FM_GEMM_F32, &x, NULL, &x, NULL, &x, &x, 2, 8, 1e-5f),
                FM_ERR_INVALID_ARG, "NULL rstd");
    EXPECT_FAIL(fm_cuda_residual_layernorm_backward(&x, &lp, NULL, NULL, &x, &x, &x, &x, &x, 2, -8), FM_ERR_INVALID_ARG,
                "negative size");
    EXPECT_FAIL(fm_cuda_residual_layernorm_backward(NULL, &lp, &x, &x, &x, &x, &x, &x, &x, 2, 8), FM_ERR_INVALID_ARG,
                "NULL dres");
    EXPECT_FAIL(fm_cuda_residual_layernorm_backward(&x, NULL, &x, &x, &x, &x, &x, NULL, &x, 2, 8), FM_ERR_INVALID_ARG,
                "NULL mean");

    FM_CHECK_OK(fm_cuda_act_forward(NULL, FM_GEMM_BF16, NULL, 0, FM_CUDA_ACT_GELU));
    EXPECT_FAIL(fm_cuda_act_forward(&x, (fm_gemm_type)3, &x, 1, FM_CUDA_ACT_QUICK_GELU), FM_ERR_INVALID_ARG,
                "unknown output type");
    EXPECT_FAIL(fm_cuda_act_forward(&x, FM_GEMM_F32, &x, 1, (fm_cuda_act)9), FM_ERR_INVALID_ARG, "unknown activation");
    EXPECT_FAIL(fm_cuda_act_forward(&x, FM_GEMM_F32, NULL, 1, FM_CUDA_ACT_QUICK_GELU), FM_ERR_INVALID_ARG, "NULL inp");
    EXPECT_FAIL(fm_cuda_act_backward(&x, FM_GEMM_F32, &x, NULL, 1, FM_CUDA_ACT_GELU), FM_ERR_INVALID_ARG, "NULL dout");
    EXPECT_FAIL(fm_cuda_act_backward(NULL, FM_GEMM_BF16, &x, &x, 1, FM_CUDA_ACT_GELU), FM_ERR_INVALID_ARG, "NULL dinp");
}

/* ---- residual + layernorm, forward ---------------------------------------------------------------------------- */

typedef struct fcase {
    int N, C;
    int add;     /* b given (else LN(a)) */
    int inplace; /* h is a itself */
} fcase;

/* Float64 statistics of each row of x (N, C): mean, rstd = 1/√(var + eps), and the normalised output. */
static void ref_layernorm(const float *x, const float *w, const float *b, int N, int C, double eps, double *mean,
                          double *rstd, double *out)
{
    for (int n = 0; n < N; n++) {
        const float *r = x + (size_t)n * C;
        double m = 0.0, v = 0.0;
        for (int c = 0; c < C; c++)
            m += r[c];
        m /= C;
        for (int c = 0; c < C; c++)
            v += (r[c] - m) * (r[c] - m);
        double s = 1.0 / sqrt(v / C + eps);
        mean[n] = m, rstd[n] = s;
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = (r[c] - m) * s * w[c] + b[c];
    }
}

static void forward_case(fm_rng *rng, const fcase *fc)
{
    const int N = fc->N, C = fc->C;
    const size_t n = (size_t)N * C;
    const float eps = 1e-5f;
    char what[128];
    printf("residual+layernorm forward N=%d C=%d%s%s\n", N, C, fc->add ? " with the add" : " (no add)",
           fc->inplace ? ", in place" : "");
    /* an offset on a: the mean is not zero, so the two-pass variance matters */
    float *a = host_random(rng, n, -2.0f, 3.0f), *b = host_random(rng, n, -1.0f, 1.0f);
    float *w = host_random(rng, (size_t)C, 0.5f, 1.5f), *bias = host_random(rng, (size_t)C, -1.0f, 1.0f);
    float *h = fm_test_alloc(n * sizeof *h + 4);
    for (size_t i = 0; i < n; i++)
        h[i] = fc->add ? a[i] + b[i] : a[i]; /* one float addition, as the kernel's */
    double *mean = fm_test_alloc((size_t)N * sizeof *mean), *rstd = fm_test_alloc((size_t)N * sizeof *rstd);
    double *out = fm_test_alloc(n * sizeof *out);
    ref_layernorm(h, w, bias, N, C, eps, mean, rstd, out);

    void *d_a = dev_upload(a, n * 4), *d_b = dev_upload(b, n * 4), *d_w = dev_upload(w, (size_t)C * 4);
    void *d_bias = dev_upload(bias, (size_t)C * 4);
    void *d_h = fc->inplace ? d_a : dev_poisoned(n * 4);
    void *d_o = dev_poisoned(n * 4), *d_lp = dev_poisoned(n * 2);
    void *d_mean = dev_poisoned((size_t)N * 4), *d_rstd = dev_poisoned((size_t)N * 4);
    /* fp32 output */
    FM_CHECK_OK(fm_cuda_residual_layernorm_forward(fc->add ? d_h : NULL, d_o, FM_GEMM_F32, d_mean, d_rstd, d_a,
                                                   fc->add ? d_b : NULL, d_w, d_bias, N, C, eps));
    float *got_h = fc->add ? dl_f32(d_h, n) : NULL, *got_o = dl_f32(d_o, n);
    float *got_m = dl_f32(d_mean, (size_t)N), *got_r = dl_f32(d_rstd, (size_t)N);
    if (got_h)
        expect_bits("h = a + b", got_h, h, n);
    expect_near("mean", got_m, mean, (size_t)N, RTOL, ROW_ATOL, NULL);
    expect_near("rstd", got_r, rstd, (size_t)N, RTOL, 0.0, NULL);
    snprintf(what, sizeof what, "out fp32 (N=%d, C=%d)", N, C);
    expect_near(what, got_o, out, n, RTOL, ROW_ATOL, NULL);

    /* bf16 output from the same inputs (in place: a already holds h, so no add this time) */
    const int add2 = fc->add && !fc->inplace;
    FM_CHECK_OK(fm_cuda_memset(d_mean, 0xff, (size_t)N * 4));
    FM_CHECK_OK(fm_cuda_residual_layernorm_forward(add2 ? d_h : NULL, d_lp, FM_GEMM_BF16, d_mean, d_rstd, d_a,
                                                   add2 ? d_b : NULL, d_w, d_bias, N, C, eps));
    float *got_lp = dl_bf16(d_lp, n), *got_m2 = dl_f32(d_mean, (size_t)N);
    expect_rounded("out bf16 = bf16(out fp32)", got_lp, got_o, n);
    expect_bits("mean of the bf16 call", got_m2, got_m, (size_t)N);
    double *extra = fm_test_alloc(n * sizeof *extra);
    for (size_t i = 0; i < n; i++)
        extra[i] = BF16_REL * fabs(out[i]);
    expect_near("out bf16", got_lp, out, n, RTOL, ROW_ATOL, extra);

    /* the unfused kernels on the same inputs: residual, then layernorm */
    if (!fc->inplace) {
        void *u_h = dev_poisoned(n * 4), *u_o = dev_poisoned(n * 4);
        void *u_m = dev_poisoned((size_t)N * 4), *u_r = dev_poisoned((size_t)N * 4);
        if (fc->add)
            FM_CHECK_OK(fm_cuda_residual_forward(u_h, d_a, d_b, n));
        FM_CHECK_OK(fm_cuda_layernorm_forward(u_o, u_m, u_r, fc->add ? u_h : d_a, d_w, d_bias, N, C, eps));
        float *uo = dl_f32(u_o, n), *um = dl_f32(u_m, (size_t)N), *ur = dl_f32(u_r, (size_t)N);
        count_differing("out (fp32)", got_o, uo, n);
        count_differing("mean", got_m, um, (size_t)N);
        count_differing("rstd", got_r, ur, (size_t)N);
        free(uo), free(um), free(ur);
        fm_cuda_free(u_h), fm_cuda_free(u_o), fm_cuda_free(u_m), fm_cuda_free(u_r);
    }
    void *bufs[] = {d_a, d_b, d_w, d_bias, d_o, d_lp, d_mean, d_rstd, fc->inplace ? NULL : d_h};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fm_cuda_free(bufs[i]);
    float *fs[] = {a, b, w, bias, h, got_h, got_o, got_m, got_r, got_lp, got_m2};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        free(fs[i]);
    free(mean), free(rstd), free(out), free(extra);
}

static void test_forward(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 31);
    static const fcase cases[] = {
        {37, 45, 1, 0},                                   /* NPER 4 */
        {21, 200, 1, 0},                                  /* NPER 8 */
        {64, 768, 1, 0},                                  /* NPER 24: CLIP-B's width */
        {29, 1000, 1, 0},                                 /* NPER 32 */
        {33, 512, 0, 0},                                  /* no add (a layer's first ln1) */
        {17, 96, 1, 1},                                   /* in place, h = a */
        {19, 1500, 1, 0},                                 /* longer than the registers hold */
        {11, 1500, 0, 0}, {13, 1500, 1, 1}, {5, 1, 1, 0}, /* one column: x̂ = 0, out = bias */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        forward_case(&rng, &cases[i]);
}

/* ---- residual + layernorm, backward --------------------------------------------------------------------------- */

static void backward_case(fm_rng *rng, int N, int C, int with_params, int with_lp)
{
    const size_t n = (size_t)N * C;
    printf("residual+layernorm backward N=%d C=%d%s%s\n", N, C, with_params ? ", dweight and dbias" : "",
           with_lp ? ", bf16 copy" : "");
    float *h = host_random(rng, n, -2.0f, 3.0f), *w = host_random(rng, (size_t)C, 0.5f, 1.5f);
    float *dy = host_random(rng, n, -1.0f, 1.0f), *dres0 = host_random(rng, n, -1.0f, 1.0f);
    float *dw0 = host_random(rng, (size_t)C, -1.0f, 1.0f), *db0 = host_random(rng, (size_t)C, -1.0f, 1.0f);
    /* the statistics both sides read: float values of the float64 ones */
    float *mean = fm_test_alloc((size_t)N * sizeof *mean), *rstd = fm_test_alloc((size_t)N * sizeof *rstd);
    for (int r = 0; r < N; r++) {
        double m = 0.0, v = 0.0;
        for (int c = 0; c < C; c++)
            m += h[(size_t)r * C + c];
        m /= C;
        for (int c = 0; c < C; c++)
            v += (h[(size_t)r * C + c] - m) * (h[(size_t)r * C + c] - m);
        mean[r] = (float)m, rstd[r] = (float)(1.0 / sqrt(v / C + 1e-5));
    }
    double *dres = fm_test_alloc(n * sizeof *dres), *dw = fm_test_alloc((size_t)C * sizeof *dw);
    double *db = fm_test_alloc((size_t)C * sizeof *db);
    for (int c = 0; c < C; c++)
        dw[c] = dw0[c], db[c] = db0[c];
    for (int r = 0; r < N; r++) {
        const size_t o = (size_t)r * C;
        double m = mean[r], s = rstd[r], gm = 0.0, gxm = 0.0;
        for (int c = 0; c < C; c++) {
            double xh = (h[o + c] - m) * s, g = (double)dy[o + c] * w[c];
            gm += g, gxm += g * xh;
            dw[c] += dy[o + c] * xh, db[c] += dy[o + c];
        }
        gm /= C, gxm /= C;
        for (int c = 0; c < C; c++) {
            double xh = (h[o + c] - m) * s, g = (double)dy[o + c] * w[c];
            dres[o + c] = dres0[o + c] + s * (g - gm - xh * gxm);
        }
    }
    void *d_h = dev_upload(h, n * 4), *d_w = dev_upload(w, (size_t)C * 4), *d_dy = dev_upload(dy, n * 4);
    void *d_m = dev_upload(mean, (size_t)N * 4), *d_r = dev_upload(rstd, (size_t)N * 4);
    void *d_dres = dev_upload(dres0, n * 4), *d_dw = dev_upload(dw0, (size_t)C * 4);
    void *d_db = dev_upload(db0, (size_t)C * 4), *d_lp = with_lp ? dev_poisoned(n * 2) : NULL;
    FM_CHECK_OK(fm_cuda_residual_layernorm_backward(d_dres, d_lp, with_params ? d_dw : NULL, with_params ? d_db : NULL,
                                                    d_dy, d_h, d_w, d_m, d_r, N, C));
    float *got = dl_f32(d_dres, n);
    expect_near("dres", got, dres, n, RTOL, ROW_ATOL, NULL);
    if (with_lp) {
        float *lp = dl_bf16(d_lp, n);
        expect_rounded("dres bf16 = bf16(dres)", lp, got, n);
        free(lp);
    }
    float *gw = dl_f32(d_dw, (size_t)C), *gb = dl_f32(d_db, (size_t)C);
    if (with_params) {
        expect_near("dweight", gw, dw, (size_t)C, RTOL, N * 1.2e-7, NULL);
        expect_near("dbias", gb, db, (size_t)C, RTOL, N * 1.2e-7, NULL);
    } else { /* NULL gradients are left alone: the device copies still hold the start values */
        expect_bits("dweight untouched", gw, dw0, (size_t)C);
        expect_bits("dbias untouched", gb, db0, (size_t)C);
    }
    /* the unfused layernorm backward on the same inputs: the input gradient's bits */
    void *u_dres = dev_upload(dres0, n * 4);
    FM_CHECK_OK(fm_cuda_layernorm_backward(u_dres, NULL, NULL, d_dy, d_h, d_w, d_m, d_r, N, C));
    float *ud = dl_f32(u_dres, n);
    count_differing("dres", got, ud, n);
    free(ud);
    void *bufs[] = {d_h, d_w, d_dy, d_m, d_r, d_dres, d_dw, d_db, d_lp, u_dres};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fm_cuda_free(bufs[i]);
    float *fs[] = {h, w, dy, dres0, dw0, db0, mean, rstd, got, gw, gb};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        free(fs[i]);
    free(dres), free(dw), free(db);
}

static void test_backward(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 37);
    backward_case(&rng, 37, 45, 1, 0);
    backward_case(&rng, 64, 768, 1, 1);
    backward_case(&rng, 2500, 96, 1, 1); /* more rows than the grid's 2048 warps: two rows for some warps */
    backward_case(&rng, 4100, 24, 1, 0);
    backward_case(&rng, 29, 1000, 0, 1);
    backward_case(&rng, 19, 1500, 1, 1); /* long rows: the layernorm kernels and a cast */
    backward_case(&rng, 7, 1, 1, 0);
}

/* ---- the activation with its cast ----------------------------------------------------------------------------- */

static void act_case(fm_rng *rng, fm_cuda_act act, size_t n)
{
    const int quick = act == FM_CUDA_ACT_QUICK_GELU;
    printf("%s, n = %zu\n", quick ? "quick-GELU" : "GELU (erf)", n);
    float *x = host_random(rng, n, -6.0f, 6.0f), *dy = host_random(rng, n, -1.0f, 1.0f);
    x[0] = 0.0f, x[1] = -80.0f, x[2] = 80.0f; /* 0, and saturation both ways */
    double *y = fm_test_alloc(n * sizeof *y), *dx = fm_test_alloc(n * sizeof *dx);
    double *xtra = fm_test_alloc(n * sizeof *xtra);
    for (size_t i = 0; i < n; i++) {
        double v = x[i], d;
        if (quick) {
            double sig = 1.0 / (1.0 + exp(-1.702 * v));
            y[i] = v * sig;
            d = sig + 1.702 * v * sig * (1.0 - sig);
        } else {
            y[i] = 0.5 * v * erfc(-v / sqrt(2.0));
            d = 0.5 * erfc(-v / sqrt(2.0)) + v * exp(-0.5 * v * v) / 2.5066282746310002; /* √(2π) */
        }
        dx[i] = dy[i] * d;
        xtra[i] = 1e-6 * fabs((double)dy[i]);
    }
    void *d_x = dev_upload(x, n * 4), *d_dy = dev_upload(dy, n * 4);
    void *d_y = dev_poisoned(n * 4), *d_ylp = dev_poisoned(n * 2), *d_dx = dev_poisoned(n * 4);
    void *d_dxlp = dev_poisoned(n * 2);
    FM_CHECK_OK(fm_cuda_act_forward(d_y, FM_GEMM_F32, d_x, n, act));
    FM_CHECK_OK(fm_cuda_act_forward(d_ylp, FM_GEMM_BF16, d_x, n, act));
    FM_CHECK_OK(fm_cuda_act_backward(d_dx, FM_GEMM_F32, d_x, d_dy, n, act));
    FM_CHECK_OK(fm_cuda_act_backward(d_dxlp, FM_GEMM_BF16, d_x, d_dy, n, act));
    float *gy = dl_f32(d_y, n), *gylp = dl_bf16(d_ylp, n), *gdx = dl_f32(d_dx, n), *gdxlp = dl_bf16(d_dxlp, n);
    expect_near("forward fp32", gy, y, n, RTOL, 1e-30, NULL);
    expect_near("backward fp32", gdx, dx, n, RTOL, 0.0, xtra);
    expect_rounded("forward bf16 = bf16(forward fp32)", gylp, gy, n);
    expect_rounded("backward bf16 = bf16(backward fp32)", gdxlp, gdx, n);
    double *ex = fm_test_alloc(n * sizeof *ex);
    for (size_t i = 0; i < n; i++)
        ex[i] = BF16_REL * fabs(y[i]);
    expect_near("forward bf16", gylp, y, n, RTOL, 1e-30, ex);
    for (size_t i = 0; i < n; i++)
        ex[i] = BF16_REL * fabs(dx[i]) + xtra[i];
    expect_near("backward bf16", gdxlp, dx, n, RTOL, 0.0, ex);

    /* the unfused kernels: activation into fp32 (backward accumulating into zeros) */
    void *u_y = dev_poisoned(n * 4), *u_dx = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&u_dx, n * 4));
    FM_CHECK_OK(fm_cuda_memset(u_dx, 0, n * 4));
    FM_CHECK_OK(quick ? fm_cuda_quick_gelu_forward(u_y, d_x, n) : fm_cuda_gelu_forward(u_y, d_x, n));
    FM_CHECK_OK(quick ? fm_cuda_quick_gelu_backward(u_dx, d_x, d_dy, n) : fm_cuda_gelu_backward(u_dx, d_x, d_dy, n));
    float *uy = dl_f32(u_y, n), *udx = dl_f32(u_dx, n);
    for (size_t i = 0; i < n; i++) /* 0 + (−0) is +0 there: zeros compare as values, not by their sign */
        if (udx[i] == 0.0f && gdx[i] == 0.0f)
            udx[i] = gdx[i];
    count_differing("forward", gy, uy, n);
    count_differing("backward", gdx, udx, n);
    free(uy), free(udx);
    void *bufs[] = {d_x, d_dy, d_y, d_ylp, d_dx, d_dxlp, u_y, u_dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fm_cuda_free(bufs[i]);
    float *fs[] = {x, dy, gy, gylp, gdx, gdxlp};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        free(fs[i]);
    free(y), free(dx), free(xtra), free(ex);
}

static void test_activation(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 41);
    act_case(&rng, FM_CUDA_ACT_QUICK_GELU, 100003);
    act_case(&rng, FM_CUDA_ACT_GELU, 100003);
    act_case(&rng, FM_CUDA_ACT_QUICK_GELU, 5);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {cmocka_unit_test(test_argument_checks)};
    int failed = cmocka_run_group_tests_name("fused kernels, argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.fused_kernels", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_forward),
        cmocka_unit_test(test_backward),
        cmocka_unit_test(test_activation),
    };
    failed += cmocka_run_group_tests_name("fused residual+layernorm and activation vs float64 reference", device_tests,
                                          NULL, fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
