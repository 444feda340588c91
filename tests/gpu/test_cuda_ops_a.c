/* The CUDA twins of linear, layernorm, softmax, embedding, patch embedding and L2 norm (kernels/) against
 * their CPU references in src/cpu/, called through the tensor-level dispatchers with CUDA tensors (so that the
 * wiring in src/ops/ is tested too), on fresh random inputs of odd shapes. Outputs start as NaN (every element
 * must be written); gradients start random (backward must accumulate); NULL gradients are skipped. Argument
 * checks run without a device; the rest needs a GPU, and without one the test reports itself skipped (77).
 *
 * Tolerances (|gpu − cpu| ≤ atol + rtol·|cpu|, rtol = 1e-5 throughout, as DESIGN.md §5):
 * - Pure copies and one addition (im2col, the embedding's wte + wpe) are exact: compared bit for bit.
 * - A GEMM entry is a float32 sum of `terms` products of values in [-1, 1]; both sides sum in float32 in
 *   different orders, each erring by up to about terms·2⁻²⁴·|partial sum|. Entries near zero need an absolute
 *   bound that grows with the length of the sum: ATOL_SUM(terms) = terms·1.2e-7, the bound gc_util.h found
 *   to hold for the CPU against float64 (2112 terms gave 8e-5 there). The same holds for the column sums of
 *   dbias / dweight and the embedding's scatter, whose CPU side sums in double.
 * - Row ops (layernorm, softmax, l2norm): the GPU computes a row in float32 where the CPU uses double
 *   internally. The row statistics (mean, variance: sums of up to C/32 terms per lane, then 5 shuffle levels)
 *   carry a relative error of at most about 1e-6, and the outputs a few more roundings of intermediates of
 *   size up to about 3 (|x̂·w| here); where an output cancels to near zero (x̂·w + b, dy − ⟨y, dy⟩) that is an
 *   absolute error of up to 3·1e-6 + a few ulp of 3: ROW_ATOL = 5e-6. */
#include "gpu_test.h"

#include <math.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.cuda_ops_a", "this fedmm was built without the CUDA backend"); }

#else

#include "fedmm/ops.h"
#include "fedmm/tensor.h"

#include "cpu/cpu_ops.h"

#include "../../cuda/runtime.h"
#include "../../kernels/cuda_ops.h"

#define RTOL 1e-5
#define ROW_ATOL 5e-6
#define ATOL_SUM(terms) ((double)(terms)*1.2e-7 > ROW_ATOL ? (double)(terms)*1.2e-7 : ROW_ATOL)

/* ---- host and device buffers ---------------------------------------------------------------------------- */

/* A device buffer: `base` is what was allocated, `p` the data, `off` floats in (to test views that are
 * not 256-byte aligned, as tensors carved out of one large buffer are). */
typedef struct dbuf {
    void *base;
    float *p;
    size_t n;
} dbuf;

static dbuf dev_alloc_off(size_t n, size_t off)
{
    dbuf b = {NULL, NULL, n};
    FM_CHECK_OK(fm_cuda_malloc(&b.base, (n + off) * sizeof(float)));
    b.p = (float *)b.base + off;
    return b;
}

static dbuf dev_upload_off(const float *h, size_t n, size_t off)
{
    dbuf b = dev_alloc_off(n, off);
    FM_CHECK_OK(fm_cuda_memcpy(b.p, h, n * sizeof(float), 0));
    return b;
}

static dbuf dev_upload(const float *h, size_t n) { return dev_upload_off(h, n, 0); }

/* n floats, every one NaN (all bits set), so that an element the kernel skips shows. */
static dbuf dev_poisoned(size_t n)
{
    dbuf b = dev_alloc_off(n, 0);
    FM_CHECK_OK(fm_cuda_memset(b.p, 0xff, n * sizeof(float)));
    return b;
}

static void dev_free(dbuf *b)
{
    fm_cuda_free(b->base);
    b->base = NULL;
    b->p = NULL;
}

/* A CUDA tensor over device memory. */
static fm_tensor dview(void *p, fm_dtype dtype, int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    fm_tensor t;
    FM_CHECK_OK(fm_tensor_view(&t, p, n * fm_dtype_size(dtype), 0, dtype, FM_DEVICE_CUDA, ndim, shape));
    return t;
}

static fm_tensor dview_f32(const dbuf *b, int ndim, const int64_t *shape) { return dview(b->p, FM_F32, ndim, shape); }

static void expect_close(const char *what, const dbuf *dev, const float *cpu, double atol)
{
    float *got = fm_test_dev_download(dev->p, dev->n);
    double *want = fm_test_alloc(dev->n * sizeof(double));
    fm_test_to_double(want, cpu, dev->n);
    fm_test_assert_close(what, got, want, dev->n, RTOL, atol);
    free(want);
    free(got);
}

static void expect_equal(const char *what, const dbuf *dev, const float *cpu)
{
    float *got = fm_test_dev_download(dev->p, dev->n);
    for (size_t i = 0; i < dev->n; i++) {
        uint32_t g, c;
        memcpy(&g, &got[i], sizeof g);
        memcpy(&c, &cpu[i], sizeof c);
        if (g != c)
            fail_msg("%s: element %zu of %zu: gpu %.9g, cpu %.9g", what, i, dev->n, got[i], cpu[i]);
    }
    free(got);
}

/* ---- argument checks: no device needed ------------------------------------------------------------------------ */

static void test_argument_checks(void **state)
{
    (void)state;
    float x = 1.0f;
    int32_t id = 0;
    /* Nothing to do: FM_OK without touching a device. */
    FM_CHECK_OK(fm_cuda_linear_forward(NULL, NULL, NULL, NULL, 0, 5, 3));
    FM_CHECK_OK(fm_cuda_linear_backward(NULL, NULL, NULL, NULL, NULL, NULL, 4, 5, 0));
    FM_CHECK_OK(fm_cuda_layernorm_forward(NULL, NULL, NULL, NULL, NULL, NULL, 0, 7, 1e-5f));
    FM_CHECK_OK(fm_cuda_layernorm_backward(NULL, NULL, NULL, &x, &x, &x, &x, &x, 3, 7));
    FM_CHECK_OK(fm_cuda_softmax_forward(NULL, NULL, 3, 0));
    FM_CHECK_OK(fm_cuda_softmax_backward(NULL, &x, &x, 3, 7));
    FM_CHECK_OK(fm_cuda_embedding_forward(NULL, NULL, NULL, NULL, 0, 4, 8, 10));
    FM_CHECK_OK(fm_cuda_embedding_backward(NULL, NULL, &x, &id, 2, 4, 8, 10));
    FM_CHECK_OK(fm_cuda_patch_embed_forward(NULL, NULL, NULL, NULL, NULL, 0, 3, 16, 16, 8, 5));
    FM_CHECK_OK(fm_cuda_l2norm_backward(NULL, &x, &x, &x, 3, 7));
    /* Negative sizes. */
    EXPECT_FAIL(fm_cuda_linear_forward(&x, &x, &x, NULL, -1, 2, 2), FM_ERR_INVALID_ARG, "negative size");
    EXPECT_FAIL(fm_cuda_linear_backward(&x, &x, &x, &x, &x, &x, 2, -2, 2), FM_ERR_INVALID_ARG, "negative size");
    EXPECT_FAIL(fm_cuda_layernorm_forward(&x, &x, &x, &x, &x, &x, 2, -1, 1e-5f), FM_ERR_INVALID_ARG, "negative");
    EXPECT_FAIL(fm_cuda_softmax_forward(&x, &x, -3, 2), FM_ERR_INVALID_ARG, "negative size");
    EXPECT_FAIL(fm_cuda_embedding_forward(&x, &id, &x, &x, 1, 1, 1, -1), FM_ERR_INVALID_ARG, "negative size");
    EXPECT_FAIL(fm_cuda_l2norm_forward(&x, &x, &x, -1, 1), FM_ERR_INVALID_ARG, "negative size");
    EXPECT_FAIL(fm_cuda_patch_embed_forward(&x, &x, &x, &x, NULL, 1, 3, 16, 16, 0, 5), FM_ERR_INVALID_ARG, "bad sizes");
    EXPECT_FAIL(fm_cuda_patch_embed_backward(&x, NULL, &x, &x, &x, &x, 1, 3, 20, 16, 8, 5), FM_ERR_INVALID_ARG,
                "multiples of the patch size");
    /* Missing inputs are refused before any launch, naming the pointer. */
    EXPECT_FAIL(fm_cuda_linear_forward(&x, NULL, &x, NULL, 2, 2, 2), FM_ERR_INVALID_ARG, "NULL inp");
    EXPECT_FAIL(fm_cuda_linear_backward(&x, NULL, NULL, &x, &x, NULL, 2, 2, 2), FM_ERR_INVALID_ARG, "NULL weight");
    EXPECT_FAIL(fm_cuda_linear_backward(NULL, &x, NULL, NULL, &x, &x, 2, 2, 2), FM_ERR_INVALID_ARG, "NULL dout");
    EXPECT_FAIL(fm_cuda_layernorm_forward(&x, &x, NULL, &x, &x, &x, 2, 2, 1e-5f), FM_ERR_INVALID_ARG, "NULL rstd");
    EXPECT_FAIL(fm_cuda_layernorm_backward(&x, NULL, NULL, &x, &x, &x, NULL, &x, 2, 2), FM_ERR_INVALID_ARG,
                "NULL mean");
    EXPECT_FAIL(fm_cuda_softmax_backward(&x, NULL, &x, 2, 2), FM_ERR_INVALID_ARG, "NULL out");
    EXPECT_FAIL(fm_cuda_embedding_forward(&x, &id, NULL, &x, 1, 1, 4, 3), FM_ERR_INVALID_ARG, "NULL wte");
    EXPECT_FAIL(fm_cuda_embedding_backward(&x, NULL, &x, NULL, 1, 1, 4, 3), FM_ERR_INVALID_ARG, "NULL tokens");
    EXPECT_FAIL(fm_cuda_patch_embed_forward(&x, NULL, &x, &x, NULL, 1, 3, 16, 16, 8, 5), FM_ERR_INVALID_ARG,
                "NULL cols");
    EXPECT_FAIL(fm_cuda_patch_embed_backward(&x, NULL, NULL, &x, NULL, &x, 1, 3, 16, 16, 8, 5), FM_ERR_INVALID_ARG,
                "NULL cols");
    EXPECT_FAIL(fm_cuda_l2norm_forward(&x, NULL, &x, 2, 2), FM_ERR_INVALID_ARG, "NULL norm");
    EXPECT_FAIL(fm_cuda_l2norm_backward(&x, &x, &x, NULL, 2, 2), FM_ERR_INVALID_ARG, "NULL norm");
}

/* The dispatchers check CUDA tensors' shapes before any device call: views over host memory are enough. */
static void test_dispatch_shape_checks(void **state)
{
    (void)state;
    float buf[64] = {0};
    fm_tensor inp, w, out;
    FM_CHECK_OK(fm_tensor_view(&inp, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CUDA, 2, (const int64_t[]){3, 4}));
    FM_CHECK_OK(fm_tensor_view(&w, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CUDA, 2, (const int64_t[]){5, 3}));
    FM_CHECK_OK(fm_tensor_view(&out, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CUDA, 2, (const int64_t[]){3, 5}));
    EXPECT_FAIL(fm_linear_forward(&out, &inp, &w, NULL), FM_ERR_SHAPE, "weight");
    EXPECT_FAIL(fm_softmax_forward(&out, &inp), FM_ERR_SHAPE, "out");
    fm_tensor norm;
    FM_CHECK_OK(fm_tensor_view(&norm, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CUDA, 1, (const int64_t[]){4}));
    EXPECT_FAIL(fm_l2norm_forward(&inp, &norm, &inp), FM_ERR_SHAPE, "norm");
}

/* ---- linear ----------------------------------------------------------------------------------------------------- */

/* One forward and two backward calls (accumulating) at N, C, OC; `off` floats of misalignment for every
 * device buffer; `with_bias` for the bias and dbias. */
static void check_linear(fm_rng *rng, int N, int C, int OC, size_t off, int with_bias)
{
    char what[160];
    const size_t nx = (size_t)N * (size_t)C, nw = (size_t)OC * (size_t)C, ny = (size_t)N * (size_t)OC;
    float *x = fm_test_random(rng, nx, -1.0f, 1.0f), *w = fm_test_random(rng, nw, -1.0f, 1.0f);
    float *b = fm_test_random(rng, (size_t)OC, -1.0f, 1.0f), *dy = fm_test_random(rng, ny, -1.0f, 1.0f);
    float *gx = fm_test_random(rng, nx, -1.0f, 1.0f), *gw = fm_test_random(rng, nw, -1.0f, 1.0f);
    float *gb = fm_test_random(rng, (size_t)OC, -1.0f, 1.0f);
    float *ref = fm_test_alloc(ny * sizeof(float));
    fm_cpu_linear_forward(ref, x, w, with_bias ? b : NULL, N, C, OC);

    dbuf d_x = dev_upload_off(x, nx, off), d_w = dev_upload_off(w, nw, off), d_b = dev_upload_off(b, (size_t)OC, off);
    dbuf d_dy = dev_upload_off(dy, ny, off), d_out = dev_alloc_off(ny, off);
    FM_CHECK_OK(fm_cuda_memset(d_out.p, 0xff, ny * sizeof(float)));
    const int64_t sx[] = {N, C}, sw[] = {OC, C}, sb[] = {OC}, sy[] = {N, OC};
    fm_tensor tx = dview_f32(&d_x, 2, sx), tw = dview_f32(&d_w, 2, sw), tb = dview_f32(&d_b, 1, sb);
    fm_tensor ty = dview_f32(&d_out, 2, sy), tdy = dview_f32(&d_dy, 2, sy);
    FM_CHECK_OK(fm_linear_forward(&ty, &tx, &tw, with_bias ? &tb : NULL));
    snprintf(what, sizeof what, "linear_forward N=%d C=%d OC=%d off=%zu bias=%d", N, C, OC, off, with_bias);
    expect_close(what, &d_out, ref, ATOL_SUM(C));

    /* Backward twice into random starting gradients: both calls must add. */
    dbuf d_gx = dev_upload_off(gx, nx, off), d_gw = dev_upload_off(gw, nw, off), d_gb = dev_upload_off(gb, OC, off);
    fm_tensor tgx = dview_f32(&d_gx, 2, sx), tgw = dview_f32(&d_gw, 2, sw), tgb = dview_f32(&d_gb, 1, sb);
    for (int call = 0; call < 2; call++) {
        fm_cpu_linear_backward(gx, gw, with_bias ? gb : NULL, dy, x, w, N, C, OC);
        FM_CHECK_OK(fm_linear_backward(&tgx, &tgw, with_bias ? &tgb : NULL, &tdy, &tx, &tw));
    }
    snprintf(what, sizeof what, "linear dinp N=%d C=%d OC=%d off=%zu", N, C, OC, off);
    expect_close(what, &d_gx, gx, ATOL_SUM(2 * OC));
    snprintf(what, sizeof what, "linear dweight N=%d C=%d OC=%d off=%zu", N, C, OC, off);
    expect_close(what, &d_gw, gw, ATOL_SUM(2 * N));
    snprintf(what, sizeof what, "linear dbias N=%d C=%d OC=%d off=%zu bias=%d", N, C, OC, off, with_bias);
    expect_close(what, &d_gb, gb, ATOL_SUM(2 * N));
    /* dweight alone (dinp and dbias NULL, hence untouched). */
    fm_cpu_linear_backward(NULL, gw, NULL, dy, x, w, N, C, OC);
    FM_CHECK_OK(fm_linear_backward(NULL, &tgw, NULL, &tdy, &tx, &tw));
    snprintf(what, sizeof what, "linear dweight alone N=%d C=%d OC=%d", N, C, OC);
    expect_close(what, &d_gw, gw, ATOL_SUM(3 * N));
    expect_close("linear dinp (skipped)", &d_gx, gx, ATOL_SUM(2 * OC));

    dbuf *bufs[] = {&d_x, &d_w, &d_b, &d_dy, &d_out, &d_gx, &d_gw, &d_gb};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    float *hs[] = {x, w, b, dy, gx, gw, gb, ref};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        free(hs[i]);
}

static void test_linear(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 301);
    check_linear(&rng, 37, 67, 29, 0, 1);
    check_linear(&rng, 37, 67, 29, 0, 1); /* the same shape again: the cached plan */
    check_linear(&rng, 37, 67, 29, 1, 1); /* 4-byte aligned views: another plan */
    check_linear(&rng, 37, 67, 29, 0, 0);
    check_linear(&rng, 1, 3, 1, 3, 1);
    /* Long sums: several chunks in dbias' column sums, and a GEMM past a single tile. */
    check_linear(&rng, 1031, 259, 131, 0, 1);
    /* C = 0: out is the bias broadcast; backward still gives dbias. */
    check_linear(&rng, 5, 0, 7, 0, 1);
}

/* ---- layernorm --------------------------------------------------------------------------------------------------- */

static void check_layernorm(fm_rng *rng, int N, int C)
{
    char what[128];
    const size_t n = (size_t)N * (size_t)C;
    /* An offset on the inputs: the mean is not zero, so the two-pass variance matters. */
    float *x = fm_test_random(rng, n, -2.0f, 3.0f), *w = fm_test_random(rng, (size_t)C, 0.5f, 1.5f);
    float *b = fm_test_random(rng, (size_t)C, -1.0f, 1.0f), *dy = fm_test_random(rng, n, -1.0f, 1.0f);
    float *gx = fm_test_random(rng, n, -1.0f, 1.0f), *gw = fm_test_random(rng, (size_t)C, -1.0f, 1.0f);
    float *gb = fm_test_random(rng, (size_t)C, -1.0f, 1.0f);
    float *ref = fm_test_alloc(n * sizeof(float)), *mean = fm_test_alloc((size_t)N * sizeof(float));
    float *rstd = fm_test_alloc((size_t)N * sizeof(float));
    fm_cpu_layernorm_forward(ref, mean, rstd, x, w, b, N, C, 1e-5f);

    dbuf d_x = dev_upload(x, n), d_w = dev_upload(w, (size_t)C), d_b = dev_upload(b, (size_t)C);
    dbuf d_out = dev_poisoned(n), d_mean = dev_poisoned((size_t)N), d_rstd = dev_poisoned((size_t)N);
    const int64_t sx[] = {N, C}, sc[] = {C}, sn[] = {N};
    fm_tensor tx = dview_f32(&d_x, 2, sx), tw = dview_f32(&d_w, 1, sc), tb = dview_f32(&d_b, 1, sc);
    fm_tensor to = dview_f32(&d_out, 2, sx), tm = dview_f32(&d_mean, 1, sn), tr = dview_f32(&d_rstd, 1, sn);
    FM_CHECK_OK(fm_layernorm_forward(&to, &tm, &tr, &tx, &tw, &tb, 1e-5f));
    snprintf(what, sizeof what, "layernorm out N=%d C=%d", N, C);
    expect_close(what, &d_out, ref, ROW_ATOL);
    expect_close("layernorm mean", &d_mean, mean, ROW_ATOL);
    expect_close("layernorm rstd", &d_rstd, rstd, 0.0);

    /* Backward from the CPU's saved statistics on both sides, so that only backward is compared. */
    FM_CHECK_OK(fm_cuda_memcpy(d_mean.p, mean, (size_t)N * sizeof(float), 0));
    FM_CHECK_OK(fm_cuda_memcpy(d_rstd.p, rstd, (size_t)N * sizeof(float), 0));
    dbuf d_dy = dev_upload(dy, n), d_gx = dev_upload(gx, n), d_gw = dev_upload(gw, (size_t)C);
    dbuf d_gb = dev_upload(gb, (size_t)C);
    fm_tensor tdy = dview_f32(&d_dy, 2, sx), tgx = dview_f32(&d_gx, 2, sx), tgw = dview_f32(&d_gw, 1, sc);
    fm_tensor tgb = dview_f32(&d_gb, 1, sc);
    for (int call = 0; call < 2; call++) {
        fm_cpu_layernorm_backward(gx, gw, gb, dy, x, w, mean, rstd, N, C);
        FM_CHECK_OK(fm_layernorm_backward(&tgx, &tgw, &tgb, &tdy, &tx, &tw, &tm, &tr));
    }
    snprintf(what, sizeof what, "layernorm dinp N=%d C=%d", N, C);
    expect_close(what, &d_gx, gx, ROW_ATOL);
    /* dweight sums N terms dy·x̂ with |x̂| up to about 2: twice the GEMM bound. */
    snprintf(what, sizeof what, "layernorm dweight N=%d C=%d", N, C);
    expect_close(what, &d_gw, gw, ATOL_SUM(4 * N));
    snprintf(what, sizeof what, "layernorm dbias N=%d C=%d", N, C);
    expect_close(what, &d_gb, gb, ATOL_SUM(2 * N));
    /* dbias alone. */
    fm_cpu_layernorm_backward(NULL, NULL, gb, dy, x, w, mean, rstd, N, C);
    FM_CHECK_OK(fm_layernorm_backward(NULL, NULL, &tgb, &tdy, &tx, &tw, &tm, &tr));
    expect_close("layernorm dbias alone", &d_gb, gb, ATOL_SUM(3 * N));
    expect_close("layernorm dweight (skipped)", &d_gw, gw, ATOL_SUM(4 * N));

    dbuf *bufs[] = {&d_x, &d_w, &d_b, &d_out, &d_mean, &d_rstd, &d_dy, &d_gx, &d_gw, &d_gb};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    float *hs[] = {x, w, b, dy, gx, gw, gb, ref, mean, rstd};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        free(hs[i]);
}

static void test_layernorm(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 302);
    check_layernorm(&rng, 3 * 13, 67); /* one chunk: the column sums add straight into the gradients */
    check_layernorm(&rng, 1000, 67);   /* several chunks: partials and the second pass */
    check_layernorm(&rng, 5, 1);
    check_layernorm(&rng, 9, 768);
}

/* ---- softmax ----------------------------------------------------------------------------------------------------- */

static void check_softmax(fm_rng *rng, int N, int C)
{
    char what[128];
    const size_t n = (size_t)N * (size_t)C;
    float *x = fm_test_random(rng, n, -8.0f, 8.0f), *dy = fm_test_random(rng, n, -1.0f, 1.0f);
    float *gx = fm_test_random(rng, n, -1.0f, 1.0f);
    x[0] = 80.0f; /* exp(80) overflows float: the max shift must be there */
    float *ref = fm_test_alloc(n * sizeof(float));
    fm_cpu_softmax_forward(ref, x, N, C);
    dbuf d_x = dev_upload(x, n), d_out = dev_poisoned(n);
    const int64_t s[] = {N, C};
    fm_tensor tx = dview_f32(&d_x, 2, s), to = dview_f32(&d_out, 2, s);
    FM_CHECK_OK(fm_softmax_forward(&to, &tx));
    snprintf(what, sizeof what, "softmax_forward N=%d C=%d", N, C);
    /* probabilities underflow towards 0 in the tails: an absolute floor far below any that matters */
    expect_close(what, &d_out, ref, 1e-9);

    FM_CHECK_OK(fm_cuda_memcpy(d_out.p, ref, n * sizeof(float), 0)); /* backward on the CPU's y */
    dbuf d_dy = dev_upload(dy, n), d_gx = dev_upload(gx, n);
    fm_tensor tdy = dview_f32(&d_dy, 2, s), tgx = dview_f32(&d_gx, 2, s);
    for (int call = 0; call < 2; call++) {
        fm_cpu_softmax_backward(gx, ref, dy, N, C);
        FM_CHECK_OK(fm_softmax_backward(&tgx, &to, &tdy));
    }
    FM_CHECK_OK(fm_softmax_backward(NULL, &to, &tdy));
    snprintf(what, sizeof what, "softmax_backward N=%d C=%d", N, C);
    expect_close(what, &d_gx, gx, ROW_ATOL);

    dev_free(&d_x);
    dev_free(&d_out);
    dev_free(&d_dy);
    dev_free(&d_gx);
    free(x);
    free(dy);
    free(gx);
    free(ref);
}

static void test_softmax(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 303);
    check_softmax(&rng, 37, 67);
    check_softmax(&rng, 3, 1000);
    check_softmax(&rng, 5, 1);
}

/* ---- embedding --------------------------------------------------------------------------------------------------- */

static void test_embedding(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 304);
    const int B = 3, T = 13, C = 67, V = 20, TMAX = 16; /* V < B·T: ids repeat, as real text does */
    const size_t BT = (size_t)B * T, n = BT * C;
    int32_t *tok = fm_test_alloc(BT * sizeof(int32_t));
    for (size_t i = 0; i < BT; i++)
        tok[i] = (int32_t)fm_rng_below(&rng, (uint64_t)V);
    float *wte = fm_test_random(&rng, (size_t)V * C, -1.0f, 1.0f),
          *wpe = fm_test_random(&rng, (size_t)TMAX * C, -1.0f, 1.0f);
    float *dy = fm_test_random(&rng, n, -1.0f, 1.0f), *gte = fm_test_random(&rng, (size_t)V * C, -1.0f, 1.0f);
    float *gpe = fm_test_random(&rng, (size_t)TMAX * C, -1.0f, 1.0f), *ref = fm_test_alloc(n * sizeof(float));
    FM_CHECK_OK(fm_cpu_embedding_forward(ref, tok, wte, wpe, B, T, C, V));

    void *d_tok = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d_tok, BT * sizeof(int32_t)));
    FM_CHECK_OK(fm_cuda_memcpy(d_tok, tok, BT * sizeof(int32_t), 0));
    dbuf d_wte = dev_upload(wte, (size_t)V * C), d_wpe = dev_upload(wpe, (size_t)TMAX * C), d_out = dev_poisoned(n);
    const int64_t st[] = {B, T}, ste[] = {V, C}, spe[] = {TMAX, C}, so[] = {B, T, C};
    fm_tensor ttok = dview(d_tok, FM_I32, 2, st), twte = dview_f32(&d_wte, 2, ste), twpe = dview_f32(&d_wpe, 2, spe);
    fm_tensor tout = dview_f32(&d_out, 3, so);
    FM_CHECK_OK(fm_embedding_forward(&tout, &ttok, &twte, &twpe));
    expect_equal("embedding_forward", &d_out, ref); /* one float addition on both sides */

    dbuf d_dy = dev_upload(dy, n), d_gte = dev_upload(gte, (size_t)V * C), d_gpe = dev_upload(gpe, (size_t)TMAX * C);
    fm_tensor tdy = dview_f32(&d_dy, 3, so), tgte = dview_f32(&d_gte, 2, ste), tgpe = dview_f32(&d_gpe, 2, spe);
    for (int call = 0; call < 2; call++) {
        fm_cpu_embedding_backward(gte, gpe, dy, tok, B, T, C);
        FM_CHECK_OK(fm_embedding_backward(&tgte, &tgpe, &tdy, &ttok));
    }
    expect_close("embedding dwte", &d_gte, gte, ATOL_SUM(2 * BT));
    expect_close("embedding dwpe", &d_gpe, gpe, ATOL_SUM(2 * B));
    fm_cpu_embedding_backward(NULL, gpe, dy, tok, B, T, C);
    FM_CHECK_OK(fm_embedding_backward(NULL, &tgpe, &tdy, &ttok));
    expect_close("embedding dwpe alone", &d_gpe, gpe, ATOL_SUM(3 * B));
    expect_close("embedding dwte (skipped)", &d_gte, gte, ATOL_SUM(2 * BT));

    /* Out-of-range ids on the device: FM_ERR_RANGE naming the first bad position, no out-of-bounds access. */
    tok[1 * T + 5] = V;
    tok[2 * T + 7] = -3;
    FM_CHECK_OK(fm_cuda_memcpy(d_tok, tok, BT * sizeof(int32_t), 0));
    EXPECT_FAIL(fm_embedding_forward(&tout, &ttok, &twte, &twpe), FM_ERR_RANGE, "token id 20 at (b=1, t=5)");
    EXPECT_FAIL(fm_embedding_backward(&tgte, NULL, &tdy, &ttok), FM_ERR_RANGE, "token id 20 at (b=1, t=5)");
    /* a later call with good ids succeeds again (the flag is reset per call) */
    tok[1 * T + 5] = 0;
    tok[2 * T + 7] = 1;
    FM_CHECK_OK(fm_cuda_memcpy(d_tok, tok, BT * sizeof(int32_t), 0));
    FM_CHECK_OK(fm_embedding_forward(&tout, &ttok, &twte, &twpe));

    fm_cuda_free(d_tok);
    dbuf *bufs[] = {&d_wte, &d_wpe, &d_out, &d_dy, &d_gte, &d_gpe};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    free(tok);
    float *hs[] = {wte, wpe, dy, gte, gpe, ref};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        free(hs[i]);
}

/* ---- patch embedding --------------------------------------------------------------------------------------------- */

static void check_patch_embed(fm_rng *rng, int B, int Cin, int H, int W, int P, int C, int with_bias)
{
    char what[160];
    const int NP = (H / P) * (W / P), K = Cin * P * P;
    const size_t rows = (size_t)B * NP, nimg = (size_t)B * Cin * H * W, ncol = rows * K, nout = rows * C;
    const size_t nw = (size_t)C * K;
    float *img = fm_test_random(rng, nimg, -1.0f, 1.0f), *w = fm_test_random(rng, nw, -1.0f, 1.0f);
    float *b = fm_test_random(rng, (size_t)C, -1.0f, 1.0f), *dy = fm_test_random(rng, nout, -1.0f, 1.0f);
    float *gw = fm_test_random(rng, nw, -1.0f, 1.0f), *gb = fm_test_random(rng, (size_t)C, -1.0f, 1.0f);
    float *gimg = fm_test_random(rng, nimg, -1.0f, 1.0f);
    float *ref = fm_test_alloc(nout * sizeof(float)), *cols = fm_test_alloc(ncol * sizeof(float));
    fm_cpu_patch_embed_forward(ref, cols, img, w, with_bias ? b : NULL, B, Cin, H, W, P, C);

    dbuf d_img = dev_upload(img, nimg), d_w = dev_upload(w, nw), d_b = dev_upload(b, (size_t)C);
    dbuf d_out = dev_poisoned(nout), d_cols = dev_poisoned(ncol);
    const int64_t simg[] = {B, Cin, H, W}, sw[] = {C, Cin, P, P}, sb[] = {C}, so[] = {B, NP, C}, sc[] = {rows, K};
    fm_tensor timg = dview_f32(&d_img, 4, simg), tw = dview_f32(&d_w, 4, sw), tb = dview_f32(&d_b, 1, sb);
    fm_tensor tout = dview_f32(&d_out, 3, so), tcols = dview_f32(&d_cols, 2, sc);
    FM_CHECK_OK(fm_patch_embed_forward(&tout, &tcols, &timg, &tw, with_bias ? &tb : NULL));
    snprintf(what, sizeof what, "patch_embed cols B=%d Cin=%d H=%d W=%d P=%d", B, Cin, H, W, P);
    expect_equal(what, &d_cols, cols);
    snprintf(what, sizeof what, "patch_embed out B=%d Cin=%d H=%d W=%d P=%d C=%d", B, Cin, H, W, P, C);
    expect_close(what, &d_out, ref, ATOL_SUM(K));

    dbuf d_dy = dev_upload(dy, nout), d_gw = dev_upload(gw, nw), d_gb = dev_upload(gb, (size_t)C);
    dbuf d_gimg = dev_upload(gimg, nimg);
    fm_tensor tdy = dview_f32(&d_dy, 3, so), tgw = dview_f32(&d_gw, 4, sw), tgb = dview_f32(&d_gb, 1, sb);
    fm_tensor tgimg = dview_f32(&d_gimg, 4, simg);
    for (int call = 0; call < 2; call++) {
        fm_cpu_patch_embed_backward(gw, with_bias ? gb : NULL, gimg, dy, cols, w, B, Cin, H, W, P, C);
        FM_CHECK_OK(fm_patch_embed_backward(&tgw, with_bias ? &tgb : NULL, &tgimg, &tdy, &tcols, &tw));
    }
    expect_close("patch_embed dweight", &d_gw, gw, ATOL_SUM(2 * rows));
    expect_close("patch_embed dbias", &d_gb, gb, ATOL_SUM(2 * rows));
    expect_close("patch_embed dimg", &d_gimg, gimg, ATOL_SUM(2 * C));
    /* Without the image gradient (the usual case: images are data). */
    fm_cpu_patch_embed_backward(gw, NULL, NULL, dy, cols, w, B, Cin, H, W, P, C);
    FM_CHECK_OK(fm_patch_embed_backward(&tgw, NULL, NULL, &tdy, &tcols, &tw));
    expect_close("patch_embed dweight, no dimg", &d_gw, gw, ATOL_SUM(3 * rows));
    expect_close("patch_embed dimg (skipped)", &d_gimg, gimg, ATOL_SUM(2 * C));

    dbuf *bufs[] = {&d_img, &d_w, &d_b, &d_out, &d_cols, &d_dy, &d_gw, &d_gb, &d_gimg};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    float *hs[] = {img, w, b, dy, gw, gb, gimg, ref, cols};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        free(hs[i]);
}

static void test_patch_embed(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 305);
    check_patch_embed(&rng, 2, 3, 24, 24, 8, 29, 1);
    check_patch_embed(&rng, 2, 3, 24, 24, 8, 29, 0);
    check_patch_embed(&rng, 3, 2, 15, 10, 5, 7, 1); /* non-square image, odd patch */
}

/* ---- L2 norm ----------------------------------------------------------------------------------------------------- */

static void test_l2norm(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 306);
    const int N = 39, C = 67;
    const size_t n = (size_t)N * C;
    float *x = fm_test_random(&rng, n, -1.0f, 1.0f), *dy = fm_test_random(&rng, n, -1.0f, 1.0f);
    float *gx = fm_test_random(&rng, n, -1e-3f, 1e-3f);
    /* Row 3 all zeros and row 4 tiny: the 1e-12 clamp and its linear backward. */
    for (int c = 0; c < C; c++) {
        x[3 * C + c] = 0.0f;
        x[4 * C + c] *= 1e-15f;
    }
    float *ref = fm_test_alloc(n * sizeof(float)), *norm = fm_test_alloc((size_t)N * sizeof(float));
    fm_cpu_l2norm_forward(ref, norm, x, N, C);
    dbuf d_x = dev_upload(x, n), d_out = dev_poisoned(n), d_norm = dev_poisoned((size_t)N);
    const int64_t s[] = {N, C}, sn[] = {N};
    fm_tensor tx = dview_f32(&d_x, 2, s), to = dview_f32(&d_out, 2, s), tn = dview_f32(&d_norm, 1, sn);
    FM_CHECK_OK(fm_l2norm_forward(&to, &tn, &tx));
    expect_close("l2norm out", &d_out, ref, 0.0);
    expect_close("l2norm norm", &d_norm, norm, 0.0);

    FM_CHECK_OK(fm_cuda_memcpy(d_out.p, ref, n * sizeof(float), 0));
    FM_CHECK_OK(fm_cuda_memcpy(d_norm.p, norm, (size_t)N * sizeof(float), 0));
    dbuf d_dy = dev_upload(dy, n), d_gx = dev_upload(gx, n);
    fm_tensor tdy = dview_f32(&d_dy, 2, s), tgx = dview_f32(&d_gx, 2, s);
    for (int call = 0; call < 2; call++) {
        fm_cpu_l2norm_backward(gx, dy, ref, norm, N, C);
        FM_CHECK_OK(fm_l2norm_backward(&tgx, &tdy, &to, &tn));
    }
    FM_CHECK_OK(fm_l2norm_backward(NULL, &tdy, &to, &tn));
    /* (dy − y·⟨y, dy⟩)/‖x‖ cancels to near zero at O(1)/‖x‖ scale; ‖x‖ ≥ 3 for the random rows here, and the
     * clamped rows (1e12 scale) are far above any absolute floor. */
    expect_close("l2norm dinp", &d_gx, gx, ROW_ATOL);

    dev_free(&d_x);
    dev_free(&d_out);
    dev_free(&d_norm);
    dev_free(&d_dy);
    dev_free(&d_gx);
    free(x);
    free(dy);
    free(gx);
    free(ref);
    free(norm);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_argument_checks),
        cmocka_unit_test(test_dispatch_shape_checks),
    };
    int failed = cmocka_run_group_tests_name("cuda ops (linear .. l2norm), argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.cuda_ops_a", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_linear),    cmocka_unit_test(test_layernorm),   cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_embedding), cmocka_unit_test(test_patch_embed), cmocka_unit_test(test_l2norm),
    };
    failed += cmocka_run_group_tests_name("cuda ops (linear .. l2norm) vs CPU reference", device_tests, NULL,
                                          fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
