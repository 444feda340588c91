/* The model's GPU building blocks against float64 references computed here: the cuBLASLt GEMM of
 * kernels/gemm.cu (ops N, A, W; alpha, beta, bias, bf16 operands, bf16 output, K = 0) and the LoRA-adapted
 * projection of kernels/lora.cu (the low-rank path accumulated into the base output; backward's dx, dW, db, dA,
 * dB, db by the dW GEMM's bias-gradient epilogue, dy handed over already rounded) in fp32 and bf16, and the
 * weight-gradient GEMM with its bias gradient (fm_cuda_gemm_dbias), on fresh random inputs of odd shapes. Outputs that
 * are written start as NaN (every element must be written: y, t, dt, dy_lp, dx_lora); gradients start random (backward
 * must accumulate). The argument checks run without a device; the rest needs a GPU and reports itself skipped (77)
 * without one.
 *
 * Tolerances, per element, with abs_i = Σ|terms| of the element's sum in float64 and K the sum's length:
 *   fp32: |gpu − ref| ≤ 1e-5·|ref| + 4·K·2⁻²⁴·abs_i   (a float32 sum in any order errs by ≤ K·u·Σ|terms|);
 *   bf16: the operands are bf16 on both sides (the reference reads the same rounded values), so what differs is
 *         fp32 accumulation and the rounding of t and dt to bf16, which the reference rounds from float64 and the
 *         GPU from float32: one bf16 ulp (2⁻⁸ relative) where the two straddle a rounding boundary. Bound:
 *         1e-2·|ref| + (2⁻⁷ + 4·K·2⁻²⁴)·abs_i; and over the whole output ‖gpu − ref‖₂ / ‖ref‖₂ ≤ 1e-2. */
#include "gpu_test.h"

#include <math.h>
#include <stdint.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.model_lora", "this fedmm was built without the CUDA backend"); }

#else

#include "../../cuda/runtime.h"
#include "../../kernels/model_ops.h"

/* ---- bf16 on the host: round to nearest even, as __float2bfloat16_rn ------------------------------------------ */

static double round_bf16(double v) { return (double)fm_test_from_bf16(fm_test_to_bf16((float)v)); }

/* ---- device buffers ------------------------------------------------------------------------------------------ */

/* n elements of `type`, on the device, uploaded from the float values h (rounded to bf16 for bf16). */
static void *upload(const float *h, size_t n, fm_gemm_type type)
{
    void *d = NULL;
    size_t es = type == FM_GEMM_BF16 ? 2 : 4;
    FM_CHECK_OK(fm_cuda_malloc(&d, n * es + 16));
    if (type == FM_GEMM_BF16) {
        uint16_t *b = fm_test_alloc(n * sizeof *b + 2);
        for (size_t i = 0; i < n; i++)
            b[i] = fm_test_to_bf16(h[i]);
        FM_CHECK_OK(fm_cuda_memcpy(d, b, n * es, 0));
        free(b);
    } else {
        FM_CHECK_OK(fm_cuda_memcpy(d, h, n * es, 0));
    }
    return d;
}

/* n elements of `type`, all bits set: NaN in fp32 and in bf16. */
static void *poisoned(size_t n, fm_gemm_type type)
{
    void *d = NULL;
    size_t es = type == FM_GEMM_BF16 ? 2 : 4;
    FM_CHECK_OK(fm_cuda_malloc(&d, n * es + 16));
    FM_CHECK_OK(fm_cuda_memset(d, 0xff, n * es));
    return d;
}

/* The device values as floats. */
static float *download(const void *d, size_t n, fm_gemm_type type)
{
    float *h = fm_test_alloc(n * sizeof *h + 4);
    if (type == FM_GEMM_BF16) {
        uint16_t *b = fm_test_alloc(n * sizeof *b + 2);
        FM_CHECK_OK(fm_cuda_memcpy(b, d, n * 2, 1));
        for (size_t i = 0; i < n; i++)
            h[i] = fm_test_from_bf16(b[i]);
        free(b);
    } else {
        FM_CHECK_OK(fm_cuda_memcpy(h, d, n * 4, 1));
    }
    return h;
}

static float *host_random(fm_rng *rng, size_t n, int bf16)
{
    float *x = fm_test_alloc(n * sizeof *x + 4);
    fm_test_fill(rng, x, n, -1.0f, 1.0f);
    for (size_t i = 0; bf16 && i < n; i++)
        x[i] = fm_test_from_bf16(fm_test_to_bf16(x[i])); /* the reference reads what the GPU reads */
    return x;
}

/* ---- references ---------------------------------------------------------------------------------------------- */

/* A float64 reference with, per element, Σ|terms| and the length of its longest sum. */
typedef struct ref {
    double *v, *abs;
    size_t n;
    int terms;
} ref;

static ref ref_new(size_t n)
{
    ref r = {fm_test_alloc(n * sizeof(double) + 8), fm_test_alloc(n * sizeof(double) + 8), n, 0};
    return r;
}

static ref ref_from(const float *init, size_t n)
{
    ref r = ref_new(n);
    for (size_t i = 0; i < n; i++) {
        r.v[i] = init[i];
        r.abs[i] = fabs((double)init[i]);
    }
    return r;
}

static void ref_free(ref *r)
{
    free(r->v);
    free(r->abs);
}

/* r (M, N) += alpha · op(X)·op(Y) as fm_cuda_gemm's op on double inputs: N: X (M, K)·Y (N, K)ᵀ; A: X (M, K)·Y (K, N);
 * W: X (K, M)ᵀ·Y (K, N). */
static void ref_gemm(ref *r, char op, int M, int N, int K, double alpha, const double *X, const double *Y)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0, a = 0.0;
            for (int k = 0; k < K; k++) {
                double x = op == 'W' ? X[(size_t)k * M + i] : X[(size_t)i * K + k];
                double y = op == 'N' ? Y[(size_t)j * K + k] : Y[(size_t)k * N + j];
                s += x * y;
                a += fabs(x * y);
            }
            r->v[(size_t)i * N + j] += alpha * s;
            r->abs[(size_t)i * N + j] += fabs(alpha) * a;
        }
    r->terms += K;
}

static double *to_d(const float *x, size_t n)
{
    double *d = fm_test_alloc(n * sizeof *d + 8);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

static void expect_ref(const char *what, const float *got, const ref *r, int bf16)
{
    double worst = 0.0, num = 0.0, den = 0.0;
    size_t worst_i = 0;
    const double u = 1.0 / 16777216.0;
    for (size_t i = 0; i < r->n; i++) {
        double want = r->v[i], d = fabs((double)got[i] - want);
        double tol = bf16 ? 1e-2 * fabs(want) + (1.0 / 128.0 + 4.0 * r->terms * u) * r->abs[i]
                          : 1e-5 * fabs(want) + 4.0 * r->terms * u * r->abs[i];
        if (!(d <= tol)) /* NaN fails too */
            fail_msg("%s: element %zu of %zu: gpu %.9g, reference %.9g (|diff| %.3g > tol %.3g)", what, i, r->n,
                     (double)got[i], want, d, tol);
        if (tol > 0 && d / tol > worst)
            worst = d / tol, worst_i = i;
        num += d * d;
        den += want * want;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (bf16 && rel > 1e-2)
        fail_msg("%s: ‖gpu − ref‖/‖ref‖ = %.3g > 1e-2", what, rel);
    printf("  %-28s %zu elements, ‖diff‖/‖ref‖ %.2e, worst at %zu: %.2f of its tolerance\n", what, r->n, rel, worst_i,
           worst);
}

/* ---- argument checks: no device needed ----------------------------------------------------------------------- */

static void test_argument_checks(void **state)
{
    (void)state;
    float x = 1.0f;
    FM_CHECK_OK(fm_cuda_gemm('N', 0, 5, 3, 1.0f, NULL, NULL, FM_GEMM_F32, 0.0f, NULL, FM_GEMM_F32, NULL));
    FM_CHECK_OK(fm_cuda_gemm('A', 4, 0, 3, 1.0f, NULL, NULL, FM_GEMM_BF16, 0.0f, NULL, FM_GEMM_F32, NULL));
    EXPECT_FAIL(fm_cuda_gemm('Q', 1, 1, 1, 1.0f, &x, &x, FM_GEMM_F32, 0.0f, &x, FM_GEMM_F32, NULL), FM_ERR_INVALID_ARG,
                "op 'Q'");
    EXPECT_FAIL(fm_cuda_gemm('N', -1, 1, 1, 1.0f, &x, &x, FM_GEMM_F32, 0.0f, &x, FM_GEMM_F32, NULL), FM_ERR_INVALID_ARG,
                "negative size");
    EXPECT_FAIL(fm_cuda_gemm('N', 1, 1, 1, 1.0f, &x, &x, FM_GEMM_F32, 1.0f, &x, FM_GEMM_BF16, NULL), FM_ERR_INVALID_ARG,
                "bf16 output");
    EXPECT_FAIL(fm_cuda_gemm('A', 1, 1, 1, 1.0f, &x, &x, FM_GEMM_F32, 0.0f, &x, FM_GEMM_F32, &x), FM_ERR_INVALID_ARG,
                "bias only with op N");
    EXPECT_FAIL(fm_cuda_gemm('W', 2, 2, 2, 1.0f, NULL, &x, FM_GEMM_F32, 0.0f, &x, FM_GEMM_F32, NULL),
                FM_ERR_INVALID_ARG, "NULL X");
    EXPECT_FAIL(fm_cuda_gemm('N', 2, 2, 2, 1.0f, &x, &x, (fm_gemm_type)7, 0.0f, &x, FM_GEMM_F32, NULL),
                FM_ERR_INVALID_ARG, "unknown operand type");

    fm_cuda_lora_args a = {.N = 2, .C = 3, .OC = 4, .r = 2, .scaling = 1.0f, .in = FM_GEMM_F32, .W = &x};
    EXPECT_FAIL(fm_cuda_lora_forward(NULL, &x, &x, &x, NULL), FM_ERR_INVALID_ARG, "NULL arguments");
    EXPECT_FAIL(fm_cuda_lora_forward(&a, NULL, &x, &x, NULL), FM_ERR_INVALID_ARG, "NULL y");
    a.A = &x;
    EXPECT_FAIL(fm_cuda_lora_forward(&a, &x, &x, &x, NULL), FM_ERR_INVALID_ARG, "both A and B");
    a.B = &x, a.r = 0;
    EXPECT_FAIL(fm_cuda_lora_forward(&a, &x, &x, &x, NULL), FM_ERR_INVALID_ARG, "rank 0");
    a.r = 2, a.W = NULL;
    EXPECT_FAIL(fm_cuda_lora_forward(&a, &x, &x, &x, NULL), FM_ERR_INVALID_ARG, "NULL W");
    a.W = &x, a.in = FM_GEMM_BF16;
    EXPECT_FAIL(fm_cuda_lora_backward(&a, &x, NULL, NULL, NULL, &x, &x, &x, NULL, &x, &x, NULL, &x), FM_ERR_INVALID_ARG,
                "dy_lp");
    EXPECT_FAIL(fm_cuda_lora_backward(&a, &x, NULL, &x, NULL, NULL, NULL, NULL, NULL, &x, NULL, NULL, NULL),
                FM_ERR_INVALID_ARG, "NULL x");
    /* dy already rounded (dy NULL): db needs dW to ride on; fp32 has no rounded copy to read */
    EXPECT_FAIL(fm_cuda_lora_backward(&a, &x, NULL, NULL, &x, NULL, NULL, NULL, &x, NULL, &x, NULL, NULL),
                FM_ERR_INVALID_ARG, "db without dW");
    a.in = FM_GEMM_F32;
    EXPECT_FAIL(fm_cuda_lora_backward(&a, &x, NULL, &x, &x, NULL, NULL, NULL, NULL, NULL, &x, NULL, NULL),
                FM_ERR_INVALID_ARG, "NULL dy");
    EXPECT_FAIL(fm_cuda_gemm_dbias(3, 2, 2, &x, &x, FM_GEMM_F32, 1.0f, &x, NULL), FM_ERR_INVALID_ARG, "NULL dbias");
    EXPECT_FAIL(fm_cuda_gemm_dbias(-3, 2, 2, &x, &x, FM_GEMM_F32, 1.0f, &x, &x), FM_ERR_INVALID_ARG, "negative size");
    FM_CHECK_OK(fm_cuda_gemm_dbias(0, 2, 2, NULL, NULL, FM_GEMM_BF16, 1.0f, NULL, NULL));
    EXPECT_FAIL(fm_cuda_vision_embed_forward(&x, &x, NULL, &x, 1, 2, 3), FM_ERR_INVALID_ARG, "NULL");
    EXPECT_FAIL(fm_cuda_pool_rows_forward(&x, &x, NULL, 1, 0, 3), FM_ERR_INVALID_ARG, "bad sizes");
    EXPECT_FAIL(fm_cuda_f32_to_bf16(NULL, &x, 3), FM_ERR_INVALID_ARG, "NULL dst");
}

/* ---- the GEMM ------------------------------------------------------------------------------------------------- */

/* One fm_cuda_gemm call against the reference: D starts random (beta ≠ 0) or NaN (beta = 0). */
static void gemm_case(fm_rng *rng, char op, int M, int N, int K, float alpha, float beta, fm_gemm_type in,
                      fm_gemm_type out, int with_bias)
{
    char what[96];
    snprintf(what, sizeof what, "gemm %c %dx%dx%d %s→%s%s%s", op, M, N, K, in == FM_GEMM_BF16 ? "bf16" : "fp32",
             out == FM_GEMM_BF16 ? "bf16" : "fp32", beta != 0.0f ? " beta" : "", with_bias ? " bias" : "");
    const int bf16 = in == FM_GEMM_BF16;
    size_t nx = (size_t)M * K, ny = (size_t)N * K, nd = (size_t)M * N;
    float *X = host_random(rng, nx, bf16), *Y = host_random(rng, ny, bf16), *D0 = host_random(rng, nd, 0);
    float *bias = with_bias ? host_random(rng, (size_t)N, 0) : NULL;
    ref r = ref_new(nd);
    for (size_t i = 0; i < nd; i++) {
        r.v[i] = beta != 0.0f ? (double)beta * D0[i] : 0.0;
        r.abs[i] = fabs(r.v[i]) + (bias ? fabs((double)bias[i % (size_t)N]) : 0.0);
        r.v[i] += bias ? bias[i % (size_t)N] : 0.0;
    }
    double *Xd = to_d(X, nx), *Yd = to_d(Y, ny);
    ref_gemm(&r, op, M, N, K, alpha, Xd, Yd);
    if (out == FM_GEMM_BF16)
        for (size_t i = 0; i < nd; i++)
            r.v[i] = round_bf16(r.v[i]);
    void *dX = upload(X, nx, in), *dY = upload(Y, ny, in), *db = bias ? upload(bias, (size_t)N, FM_GEMM_F32) : NULL;
    void *dD = beta != 0.0f ? upload(D0, nd, out) : poisoned(nd, out);
    FM_CHECK_OK(fm_cuda_gemm(op, M, N, K, alpha, dX, dY, in, beta, dD, out, db));
    float *got = download(dD, nd, out);
    expect_ref(what, got, &r, bf16 || out == FM_GEMM_BF16);
    free(got);
    fm_cuda_free(dX);
    fm_cuda_free(dY);
    fm_cuda_free(db);
    fm_cuda_free(dD);
    ref_free(&r);
    free(X);
    free(Y);
    free(D0);
    free(bias);
    free(Xd);
    free(Yd);
}

/* fm_cuda_gemm_dbias: D (M, N) = Xᵀ·Y + beta·D and dbias (M) += Σ_k X[k, ·] (X as read: bf16-rounded under bf16);
 * D starts random (beta ≠ 0) or NaN, dbias random (it accumulates). */
static void gemm_dbias_case(fm_rng *rng, int M, int N, int K, float beta, fm_gemm_type in)
{
    char what[96];
    const int bf16 = in == FM_GEMM_BF16;
    size_t nx = (size_t)K * M, ny = (size_t)K * N, nd = (size_t)M * N;
    float *X = host_random(rng, nx, bf16), *Y = host_random(rng, ny, bf16), *D0 = host_random(rng, nd, 0);
    float *b0 = host_random(rng, (size_t)M, 0);
    ref r = ref_new(nd), rb = ref_from(b0, (size_t)M);
    for (size_t i = 0; i < nd; i++)
        r.v[i] = beta != 0.0f ? (double)beta * D0[i] : 0.0, r.abs[i] = fabs(r.v[i]);
    double *Xd = to_d(X, nx), *Yd = to_d(Y, ny);
    ref_gemm(&r, 'W', M, N, K, 1.0, Xd, Yd);
    for (int k = 0; k < K; k++)
        for (int i = 0; i < M; i++)
            rb.v[i] += Xd[(size_t)k * M + i], rb.abs[i] += fabs(Xd[(size_t)k * M + i]);
    rb.terms = K;
    void *dX = upload(X, nx, in), *dY = upload(Y, ny, in), *db = upload(b0, (size_t)M, FM_GEMM_F32);
    void *dD = beta != 0.0f ? upload(D0, nd, FM_GEMM_F32) : poisoned(nd, FM_GEMM_F32);
    FM_CHECK_OK(fm_cuda_gemm_dbias(M, N, K, dX, dY, in, beta, dD, db));
    snprintf(what, sizeof what, "gemm_dbias D %dx%dx%d %s%s", M, N, K, bf16 ? "bf16" : "fp32",
             beta != 0 ? " beta" : "");
    float *got = download(dD, nd, FM_GEMM_F32);
    expect_ref(what, got, &r, bf16);
    free(got);
    /* the column sums add the same (rounded) values on both sides: fp32 bounds */
    snprintf(what, sizeof what, "gemm_dbias dbias %dx%dx%d %s", M, N, K, bf16 ? "bf16" : "fp32");
    got = download(db, (size_t)M, FM_GEMM_F32);
    expect_ref(what, got, &rb, 0);
    free(got);
    void *bufs[] = {dX, dY, db, dD};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fm_cuda_free(bufs[i]);
    ref_free(&r);
    ref_free(&rb);
    free(X), free(Y), free(D0), free(b0), free(Xd), free(Yd);
}

static void test_gemm(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 11);
    gemm_case(&rng, 'N', 37, 29, 45, 1.0f, 0.0f, FM_GEMM_F32, FM_GEMM_F32, 1);
    gemm_case(&rng, 'N', 37, 29, 5, 5.0f / 3.0f, 1.0f, FM_GEMM_F32, FM_GEMM_F32, 0);
    gemm_case(&rng, 'A', 37, 45, 29, 1.0f, 1.0f, FM_GEMM_F32, FM_GEMM_F32, 0);
    gemm_case(&rng, 'W', 29, 45, 37, 0.5f, 1.0f, FM_GEMM_F32, FM_GEMM_F32, 0);
    gemm_case(&rng, 'A', 37, 5, 29, 2.0f, 0.0f, FM_GEMM_F32, FM_GEMM_F32, 0);
    gemm_case(&rng, 'N', 40, 48, 64, 1.0f, 0.0f, FM_GEMM_BF16, FM_GEMM_F32, 1);
    gemm_case(&rng, 'N', 40, 8, 64, 1.0f, 0.0f, FM_GEMM_BF16, FM_GEMM_BF16, 0);
    gemm_case(&rng, 'A', 40, 64, 48, 1.0f, 1.0f, FM_GEMM_BF16, FM_GEMM_F32, 0);
    gemm_case(&rng, 'W', 48, 64, 40, 1.0f, 1.0f, FM_GEMM_BF16, FM_GEMM_F32, 0);
    gemm_case(&rng, 'N', 7, 9, 0, 1.0f, 0.5f, FM_GEMM_F32, FM_GEMM_F32, 1); /* K = 0: beta·D + bias */
    gemm_case(&rng, 'A', 7, 9, 0, 1.0f, 0.0f, FM_GEMM_F32, FM_GEMM_F32, 0);
    gemm_dbias_case(&rng, 29, 45, 37, 1.0f, FM_GEMM_F32);
    gemm_dbias_case(&rng, 33, 17, 3001, 0.0f, FM_GEMM_F32);
    gemm_dbias_case(&rng, 48, 64, 40, 1.0f, FM_GEMM_BF16);
    gemm_dbias_case(&rng, 96, 32, 200, 0.0f, FM_GEMM_BF16);
    gemm_dbias_case(&rng, 7, 0, 5, 1.0f, FM_GEMM_F32); /* no GEMM: the column sum alone */
    gemm_dbias_case(&rng, 7, 9, 0, 0.5f, FM_GEMM_F32); /* no rows: D = beta·D, dbias unchanged */
}

/* ---- the LoRA-adapted projection ------------------------------------------------------------------------------ */

typedef struct lcase {
    const char *name;
    int N, C, OC, r;
    float scaling;
    int bf16, bias, base_trains, adapter, dx_lora;
    int dy_ready; /* bf16: dy handed over already rounded in dy_lp (dy NULL) */
} lcase;

static void lora_case(const lcase *c)
{
    printf("%s\n", c->name);
    fm_rng rng = fm_rng_make(fm_test_seed(), 100 + (uint64_t)c->N);
    const fm_gemm_type in = c->bf16 ? FM_GEMM_BF16 : FM_GEMM_F32;
    const int N = c->N, C = c->C, OC = c->OC, r = c->r;
    const size_t nx = (size_t)N * C, nw = (size_t)OC * C, na = (size_t)r * C, nb = (size_t)OC * r;
    const size_t ny = (size_t)N * OC, nt = (size_t)N * r;
    float *x = host_random(&rng, nx, c->bf16), *W = host_random(&rng, nw, c->bf16);
    float *A = host_random(&rng, na, c->bf16), *B = host_random(&rng, nb, c->bf16);
    float *bias = c->bias ? host_random(&rng, (size_t)OC, 0) : NULL;
    float *dy = host_random(&rng, ny, 0);
    float *dx0 = host_random(&rng, nx, 0), *dW0 = host_random(&rng, nw, 0), *db0 = host_random(&rng, (size_t)OC, 0);
    float *dA0 = host_random(&rng, na, 0), *dB0 = host_random(&rng, nb, 0);
    double *xd = to_d(x, nx), *Wd = to_d(W, nw), *Ad = to_d(A, na), *Bd = to_d(B, nb);

    /* forward: t = x·Aᵀ (rounded to bf16 under bf16), y = x·Wᵀ + b + s·t·Bᵀ */
    ref t = ref_new(nt), y = ref_new(ny);
    ref_gemm(&t, 'N', N, r, C, 1.0, xd, Ad);
    double *tu = fm_test_alloc(nt * sizeof *tu + 8);
    for (size_t i = 0; i < nt; i++)
        tu[i] = c->bf16 ? round_bf16(t.v[i]) : t.v[i];
    if (c->bf16)
        for (size_t i = 0; i < nt; i++)
            t.v[i] = tu[i];
    for (size_t i = 0; bias && i < ny; i++)
        y.v[i] = bias[i % (size_t)OC], y.abs[i] = fabs((double)bias[i % (size_t)OC]);
    ref_gemm(&y, 'N', N, OC, C, 1.0, xd, Wd);
    if (c->adapter) {
        /* the error of t reaches y through s·|B|: carry t's abs-sum along, not only its value */
        ref u = ref_new(ny);
        ref_gemm(&u, 'N', N, OC, r, c->scaling, t.abs, Bd);
        for (size_t i = 0; i < ny; i++)
            y.abs[i] += fabs(u.v[i]);
        ref_free(&u);
        ref_gemm(&y, 'N', N, OC, r, c->scaling, tu, Bd);
        y.terms = C + r;
    }

    fm_cuda_lora_args a = {.N = N, .C = C, .OC = OC, .r = r, .scaling = c->scaling, .in = in};
    void *d_x = upload(x, nx, in), *d_W = upload(W, nw, in), *d_A = upload(A, na, in), *d_B = upload(B, nb, in);
    void *d_bias = bias ? upload(bias, (size_t)OC, FM_GEMM_F32) : NULL;
    a.W = d_W, a.bias = d_bias;
    a.A = c->adapter ? d_A : NULL, a.B = c->adapter ? d_B : NULL;
    void *d_y = poisoned(ny, FM_GEMM_F32), *d_t = poisoned(nt, in);
    FM_CHECK_OK(fm_cuda_lora_forward(&a, d_y, c->adapter ? d_t : NULL, d_x, NULL));
    float *got = download(d_y, ny, FM_GEMM_F32);
    expect_ref("forward y", got, &y, c->bf16);
    free(got);
    if (c->adapter) {
        got = download(d_t, nt, in);
        expect_ref("forward t", got, &t, c->bf16);
        free(got);
    }

    /* backward: g = dy (bf16-rounded under bf16), dt = s·g·B (rounded), dx += g·W + dt·A, dW += gᵀ·x,
     * db += Σ dy, dB += s·gᵀ·t, dA += dtᵀ·x */
    double *g = fm_test_alloc(ny * sizeof *g + 8);
    for (size_t i = 0; i < ny; i++)
        g[i] = c->bf16 ? round_bf16(dy[i]) : dy[i];
    ref dx = ref_from(dx0, nx), dW = ref_from(dW0, nw), db = ref_from(db0, (size_t)OC);
    ref dA = ref_from(dA0, na), dB = ref_from(dB0, nb), dt = ref_new(nt), dxl = ref_new(nx);
    ref_gemm(&dx, 'A', N, C, OC, 1.0, g, Wd);
    ref_gemm(&dW, 'W', OC, C, N, 1.0, g, xd);
    /* db: from fp32 dy by a column sum, or with dW by the dW GEMM's epilogue from the operand it reads (bf16 g) */
    const double *dbsrc = c->bf16 && c->base_trains ? g : NULL;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            const double v = dbsrc ? dbsrc[(size_t)n * OC + o] : (double)dy[(size_t)n * OC + o];
            db.v[o] += v, db.abs[o] += fabs(v);
        }
    db.terms = N;
    if (c->adapter) {
        ref_gemm(&dB, 'W', OC, r, N, c->scaling, g, tu);
        ref_gemm(&dt, 'A', N, r, OC, c->scaling, g, Bd);
        double *dtu = fm_test_alloc(nt * sizeof *dtu + 8);
        for (size_t i = 0; i < nt; i++)
            dtu[i] = c->bf16 ? round_bf16(dt.v[i]) : dt.v[i];
        if (c->bf16)
            for (size_t i = 0; i < nt; i++)
                dt.v[i] = dtu[i];
        ref_gemm(&dA, 'W', r, C, N, 1.0, dtu, xd);
        ref *into = c->dx_lora ? &dxl : &dx;
        ref u = ref_new(nx);
        ref_gemm(&u, 'A', N, C, r, 1.0, dt.abs, Ad);
        for (size_t i = 0; i < nx; i++)
            into->abs[i] += fabs(u.v[i]);
        ref_free(&u);
        ref_gemm(into, 'A', N, C, r, 1.0, dtu, Ad);
        dx.terms = OC + r;
        free(dtu);
    }
    void *d_dy = upload(dy, ny, FM_GEMM_F32), *d_dx = upload(dx0, nx, FM_GEMM_F32);
    void *d_dW = upload(dW0, nw, FM_GEMM_F32), *d_db = upload(db0, (size_t)OC, FM_GEMM_F32);
    void *d_dA = upload(dA0, na, FM_GEMM_F32), *d_dB = upload(dB0, nb, FM_GEMM_F32);
    void *d_dt = poisoned(nt, in);
    void *d_dylp = !c->bf16 ? NULL : c->dy_ready ? upload(dy, ny, FM_GEMM_BF16) : poisoned(ny, FM_GEMM_BF16);
    void *d_dxl = c->dx_lora ? poisoned(nx, FM_GEMM_F32) : NULL;
    FM_CHECK_OK(fm_cuda_lora_backward(&a, d_dx, d_dxl, c->base_trains ? d_dW : NULL, c->bias ? d_db : NULL,
                                      c->adapter ? d_dA : NULL, c->adapter ? d_dB : NULL, c->adapter ? d_dt : NULL,
                                      d_dylp, c->dy_ready ? NULL : d_dy, d_x, NULL, c->adapter ? d_t : NULL));
    got = download(d_dx, nx, FM_GEMM_F32);
    expect_ref("backward dx", got, &dx, c->bf16);
    free(got);
    if (c->base_trains) {
        got = download(d_dW, nw, FM_GEMM_F32);
        expect_ref("backward dW", got, &dW, c->bf16);
        free(got);
    }
    if (c->bias) {
        got = download(d_db, (size_t)OC, FM_GEMM_F32);
        ref dbf = db; /* db sums the same values on both sides (fp32 dy, or bf16 g): fp32 tolerance */
        expect_ref("backward db", got, &dbf, 0);
        free(got);
    }
    if (c->adapter) {
        got = download(d_dA, na, FM_GEMM_F32);
        expect_ref("backward dA", got, &dA, c->bf16);
        free(got);
        got = download(d_dB, nb, FM_GEMM_F32);
        expect_ref("backward dB", got, &dB, c->bf16);
        free(got);
        got = download(d_dt, nt, in);
        expect_ref("backward dt (scratch)", got, &dt, c->bf16);
        free(got);
    }
    if (c->dx_lora) {
        got = download(d_dxl, nx, FM_GEMM_F32);
        expect_ref("backward dx_lora", got, &dxl, c->bf16);
        free(got);
    }
    if (c->bf16) { /* dy_lp holds dy rounded, every element */
        got = download(d_dylp, ny, FM_GEMM_BF16);
        for (size_t i = 0; i < ny; i++)
            if (got[i] != (float)g[i])
                fail_msg("dy_lp element %zu: %.9g, expected %.9g", i, (double)got[i], g[i]);
        free(got);
    }
    void *bufs[] = {d_x, d_W, d_A, d_B, d_bias, d_y, d_t, d_dy, d_dx, d_dW, d_db, d_dA, d_dB, d_dt, d_dylp, d_dxl};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fm_cuda_free(bufs[i]);
    ref *refs[] = {&t, &y, &dx, &dW, &db, &dA, &dB, &dt, &dxl};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
        ref_free(refs[i]);
    float *hs[] = {x, W, A, B, bias, dy, dx0, dW0, db0, dA0, dB0};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        free(hs[i]);
    free(xd);
    free(Wd);
    free(Ad);
    free(Bd);
    free(tu);
    free(g);
}

static void test_lora(void **state)
{
    (void)state;
    static const lcase cases[] = {
        {"fp32, odd shapes, bias, base frozen", 37, 45, 29, 5, 5.0f / 3.0f, 0, 1, 0, 1, 0, 0},
        {"fp32, base trains too, with bias (db by the dW GEMM's epilogue)", 23, 16, 48, 3, 2.0f, 0, 1, 1, 1, 0, 0},
        {"fp32, LoRA dropout form: dt·A into dx_lora", 19, 24, 33, 4, 1.0f, 0, 0, 0, 1, 1, 0},
        {"fp32, no adapter (merged / not adapted)", 31, 20, 27, 0, 1.0f, 0, 1, 1, 0, 0, 0},
        {"bf16, bias, base frozen", 40, 64, 48, 8, 2.0f, 1, 1, 0, 1, 0, 0},
        {"bf16, base trains too, no bias", 56, 32, 96, 8, 1.0f, 1, 0, 1, 1, 0, 0},
        {"bf16, base trains with bias: db by the dW GEMM's epilogue", 40, 64, 48, 8, 2.0f, 1, 1, 1, 1, 0, 0},
        {"bf16, dy handed over rounded (dy NULL), base trains with bias", 24, 48, 40, 4, 1.0f, 1, 1, 1, 1, 0, 1},
        {"bf16, dy handed over rounded, base frozen, no bias", 33, 32, 64, 8, 2.0f, 1, 0, 0, 1, 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        lora_case(&cases[i]);
}

/* ---- the towers' gathers, and the casts ----------------------------------------------------------------------- */

static void test_rows_and_casts(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 7);
    const int B = 5, T = 7, W = 9;
    const size_t nemb = (size_t)B * T * W, npat = (size_t)B * (T - 1) * W;
    float *patches = host_random(&rng, npat, 0), *cls = host_random(&rng, (size_t)W, 0);
    float *pos = host_random(&rng, (size_t)T * W, 0), *demb = host_random(&rng, nemb, 0);
    float *dcls0 = host_random(&rng, (size_t)W, 0), *dpos0 = host_random(&rng, (size_t)T * W, 0);
    void *d_p = upload(patches, npat, FM_GEMM_F32), *d_c = upload(cls, (size_t)W, FM_GEMM_F32);
    void *d_pos = upload(pos, (size_t)T * W, FM_GEMM_F32), *d_emb = poisoned(nemb, FM_GEMM_F32);
    FM_CHECK_OK(fm_cuda_vision_embed_forward(d_emb, d_p, d_c, d_pos, B, T, W));
    float *got = download(d_emb, nemb, FM_GEMM_F32);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int w = 0; w < W; w++) {
                float v = t == 0 ? cls[w] : patches[((size_t)b * (T - 1) + (size_t)(t - 1)) * W + w];
                float want = v + pos[(size_t)t * W + w];
                if (got[((size_t)b * T + t) * W + w] != want)
                    fail_msg("vision embed (%d, %d, %d): %.9g, expected %.9g", b, t, w,
                             (double)got[((size_t)b * T + t) * W + w], (double)want);
            }
    free(got);
    void *d_demb = upload(demb, nemb, FM_GEMM_F32), *d_dp = poisoned(npat, FM_GEMM_F32);
    void *d_dcls = upload(dcls0, (size_t)W, FM_GEMM_F32), *d_dpos = upload(dpos0, (size_t)T * W, FM_GEMM_F32);
    FM_CHECK_OK(fm_cuda_vision_embed_backward(d_dp, d_dcls, d_dpos, d_demb, B, T, W));
    got = download(d_dp, npat, FM_GEMM_F32);
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < (size_t)(T - 1) * W; i++)
            if (got[(size_t)b * (T - 1) * W + i] != demb[((size_t)b * T + 1) * W + i])
                fail_msg("vision embed dpatches (%d, %zu) differs", b, i);
    free(got);
    /* dpos and dcls: sums over b in order, in float, as the CPU path: the same bits */
    got = download(d_dpos, (size_t)T * W, FM_GEMM_F32);
    for (size_t i = 0; i < (size_t)T * W; i++) {
        float want = dpos0[i];
        for (int b = 0; b < B; b++)
            want += demb[(size_t)b * T * W + i];
        if (got[i] != want)
            fail_msg("vision embed dpos %zu: %.9g, expected %.9g", i, (double)got[i], (double)want);
    }
    free(got);
    got = download(d_dcls, (size_t)W, FM_GEMM_F32);
    for (int w = 0; w < W; w++) {
        float want = dcls0[w];
        for (int b = 0; b < B; b++)
            want += demb[(size_t)b * T * W + w];
        if (got[w] != want)
            fail_msg("vision embed dcls %d: %.9g, expected %.9g", w, (double)got[w], (double)want);
    }
    free(got);

    /* pooling: rows at positions (text) or at 0 (vision), and back */
    int32_t ppos[5] = {3, 0, 6, 1, 6};
    void *d_ppos = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d_ppos, sizeof ppos));
    FM_CHECK_OK(fm_cuda_memcpy(d_ppos, ppos, sizeof ppos, 0));
    for (int with_pos = 0; with_pos < 2; with_pos++) {
        void *d_pool = poisoned((size_t)B * W, FM_GEMM_F32);
        FM_CHECK_OK(fm_cuda_pool_rows_forward(d_pool, d_demb, with_pos ? d_ppos : NULL, B, T, W));
        got = download(d_pool, (size_t)B * W, FM_GEMM_F32);
        for (int b = 0; b < B; b++)
            for (int w = 0; w < W; w++)
                if (got[(size_t)b * W + w] != demb[((size_t)b * T + (with_pos ? ppos[b] : 0)) * W + w])
                    fail_msg("pool forward (%d, %d) with_pos %d differs", b, w, with_pos);
        free(got);
        void *d_dx = NULL;
        FM_CHECK_OK(fm_cuda_malloc(&d_dx, nemb * sizeof(float)));
        FM_CHECK_OK(fm_cuda_memset(d_dx, 0, nemb * sizeof(float)));
        FM_CHECK_OK(fm_cuda_pool_rows_backward(d_dx, d_pool, with_pos ? d_ppos : NULL, B, T, W));
        got = download(d_dx, nemb, FM_GEMM_F32);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int w = 0; w < W; w++) {
                    int hit = t == (with_pos ? ppos[b] : 0);
                    float want = hit ? demb[((size_t)b * T + t) * W + w] : 0.0f;
                    if (got[((size_t)b * T + t) * W + w] != want)
                        fail_msg("pool backward (%d, %d, %d) with_pos %d differs", b, t, w, with_pos);
                }
        free(got);
        fm_cuda_free(d_dx);
        fm_cuda_free(d_pool);
    }

    /* casts: round to nearest even, exactly as the host's rounding; NaN and infinities survive */
    const size_t nc = 1031;
    float *v = host_random(&rng, nc, 0);
    v[0] = NAN, v[1] = INFINITY, v[2] = -INFINITY, v[3] = 0x1.0101p0f, v[4] = 0x1.0180p0f, v[5] = -0x1.0080p0f;
    void *d_v = upload(v, nc, FM_GEMM_F32), *d_b = poisoned(nc, FM_GEMM_BF16), *d_f = poisoned(nc, FM_GEMM_F32);
    FM_CHECK_OK(fm_cuda_f32_to_bf16(d_b, d_v, nc));
    FM_CHECK_OK(fm_cuda_bf16_to_f32(d_f, d_b, nc));
    got = download(d_f, nc, FM_GEMM_F32);
    for (size_t i = 0; i < nc; i++) {
        float want = fm_test_from_bf16(fm_test_to_bf16(v[i]));
        if (!(got[i] == want || (isnan(got[i]) && isnan(want))))
            fail_msg("cast element %zu: %a → %a, expected %a", i, (double)v[i], (double)got[i], (double)want);
    }
    free(got);
    void *bufs[] = {d_p, d_c, d_pos, d_emb, d_demb, d_dp, d_dcls, d_dpos, d_ppos, d_v, d_b, d_f};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fm_cuda_free(bufs[i]);
    float *hs[] = {patches, cls, pos, demb, dcls0, dpos0, v};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        free(hs[i]);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {cmocka_unit_test(test_argument_checks)};
    int failed = cmocka_run_group_tests_name("model kernels, argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.model_lora", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_lora),
        cmocka_unit_test(test_rows_and_casts),
    };
    failed += cmocka_run_group_tests_name("model kernels (GEMM, fused LoRA, gathers, casts) vs float64 reference",
                                          device_tests, NULL, fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
