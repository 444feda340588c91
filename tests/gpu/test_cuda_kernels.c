/* The CUDA kernels (kernels/elementwise.cu, kernels/adamw.cu) against their CPU twins in src/cpu/, on
 * fresh random inputs of odd sizes, one of them past the grid's size so that the grid-stride loops
 * run more than once. Outputs start as NaN (every element must be written); gradients start random
 * (backward must accumulate); NULL gradients are skipped. Argument checks run without a device; the rest
 * needs a GPU, and without one the test reports itself skipped (exit 77).
 *
 * Tolerances. Residual add is exact on both sides: compared bit for bit. The activations' forward
 * values are products with no cancellation, so a relative 1e-5 holds (CUDA's erfcf/expf are within 2–4
 * ulp, glibc's within 1–2). Their backward values are sums of two O(1) terms, cdf + x·pdf, that cancel
 * near x ≈ −0.75 (GELU) and x ≈ −1.28 (QuickGELU), and then add to a random starting gradient; there
 * the error is absolute, a few ulp of the O(1) terms times |dout| ≤ 1, so atol 1e-6 on top of rtol 1e-5.
 * AdamW: the GPU contracts a·b + c into one FMA where the CPU rounds twice, 1 ulp per step; the first
 * moment can cancel (β1·m and (1−β1)·g of opposite signs), hence atol 1e-7 for values of order 0.1. */
#include "gpu_test.h"

#include <math.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.cuda_kernels", "this fedmm was built without the CUDA backend"); }

#else

#include "cpu/cpu_ops.h"

#include "../../cuda/runtime.h"
#include "../../kernels/cuda_ops.h"

static const size_t sizes[] = {1, 1000, 100003, 1048579};
#define NSIZES (sizeof sizes / sizeof sizes[0])

#define ACT_FWD_RTOL 1e-5
#define ACT_BWD_RTOL 1e-5
#define ACT_BWD_ATOL 1e-6
#define ADAMW_RTOL 1e-5
#define ADAMW_ATOL 1e-7

/* ---- host helpers ------------------------------------------------------------------------------------ */

static void expect_equal(const char *what, size_t n, const float *dev, const float *cpu)
{
    float *got = fm_test_dev_download(dev, n);
    for (size_t i = 0; i < n; i++) {
        uint32_t g, c;
        memcpy(&g, &got[i], sizeof g);
        memcpy(&c, &cpu[i], sizeof c);
        if (g != c)
            fail_msg("%s (n = %zu): element %zu: gpu %.9g, cpu %.9g", what, n, i, got[i], cpu[i]);
    }
    free(got);
}

/* Inputs for the activations: uniform in [-6, 6), with the tails (where erfc underflows and exp
 * overflows) written over the first elements when there is room. */
static float *activation_input(fm_rng *rng, size_t n)
{
    float *x = fm_test_random(rng, n, -6.0f, 6.0f);
    static const float tails[] = {-20.0f, -10.0f, -0.7518f, 10.0f, 20.0f};
    for (size_t i = 0; i < sizeof tails / sizeof tails[0] && i + 1 < n; i++)
        x[i] = tails[i];
    return x;
}

/* ---- argument checks: no device needed --------------------------------------------------------------- */

static void test_argument_checks(void **state)
{
    (void)state;
    float x = 1.0f;
    fm_adamw_hparams hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f};
    /* n = 0 and NULL gradients: nothing to do, no device touched. */
    FM_CHECK_OK(fm_cuda_residual_forward(NULL, NULL, NULL, 0));
    FM_CHECK_OK(fm_cuda_residual_backward(NULL, NULL, NULL, 5));
    FM_CHECK_OK(fm_cuda_gelu_forward(NULL, NULL, 0));
    FM_CHECK_OK(fm_cuda_gelu_backward(NULL, &x, &x, 5));
    FM_CHECK_OK(fm_cuda_quick_gelu_backward(NULL, &x, &x, 5));
    FM_CHECK_OK(fm_cuda_adamw_update(NULL, NULL, NULL, NULL, 0, hp, 1));
    /* Missing inputs are refused before any launch. */
    assert_int_equal(fm_cuda_residual_forward(&x, NULL, &x, 1), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "NULL a"));
    assert_int_equal(fm_cuda_residual_backward(&x, NULL, NULL, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_gelu_forward(NULL, &x, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_gelu_backward(&x, NULL, &x, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_quick_gelu_forward(&x, NULL, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_quick_gelu_backward(&x, &x, NULL, 1), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_adamw_update(&x, &x, NULL, &x, 1, hp, 1), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "NULL m"));
    /* AdamW's step count and betas. */
    assert_int_equal(fm_cuda_adamw_update(&x, &x, &x, &x, 1, hp, 0), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "t = 0"));
    fm_adamw_hparams bad = hp;
    bad.beta1 = 1.0f;
    assert_int_equal(fm_cuda_adamw_update(&x, &x, &x, &x, 1, bad, 1), FM_ERR_INVALID_ARG);
    bad = hp;
    bad.beta2 = NAN;
    assert_int_equal(fm_cuda_adamw_update(&x, &x, &x, &x, 1, bad, 1), FM_ERR_INVALID_ARG);
}

/* ---- residual ------------------------------------------------------------------------------------------ */

static void test_residual_forward(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 201);
    for (size_t s = 0; s < NSIZES; s++) {
        size_t n = sizes[s];
        float *a = fm_test_random(&rng, n, -2.0f, 2.0f), *b = fm_test_random(&rng, n, -2.0f, 2.0f);
        float *ref = fm_test_alloc(n * sizeof(float));
        fm_cpu_residual_forward(ref, a, b, n);
        float *da = fm_test_dev_upload(a, n), *db = fm_test_dev_upload(b, n), *dout = fm_test_dev_poisoned(n);
        FM_CHECK_OK(fm_cuda_residual_forward(dout, da, db, n));
        expect_equal("residual_forward", n, dout, ref);
        /* In place, out = a, as a residual stream does. */
        FM_CHECK_OK(fm_cuda_residual_forward(da, da, db, n));
        expect_equal("residual_forward in place", n, da, ref);
        fm_cuda_free(da);
        fm_cuda_free(db);
        fm_cuda_free(dout);
        free(a);
        free(b);
        free(ref);
    }
}

static void test_residual_backward(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 202);
    for (size_t s = 0; s < NSIZES; s++) {
        size_t n = sizes[s];
        float *dout = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *ga = fm_test_random(&rng, n, -1.0f, 1.0f), *gb = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *d_dout = fm_test_dev_upload(dout, n);
        /* both gradients, then each alone (the other NULL) */
        for (int which = 0; which < 3; which++) {
            float *ra = fm_test_copy(ga, n), *rb = fm_test_copy(gb, n);
            float *d_ga = fm_test_dev_upload(ga, n), *d_gb = fm_test_dev_upload(gb, n);
            fm_cpu_residual_backward(which == 2 ? NULL : ra, which == 1 ? NULL : rb, dout, n);
            FM_CHECK_OK(fm_cuda_residual_backward(which == 2 ? NULL : d_ga, which == 1 ? NULL : d_gb, d_dout, n));
            expect_equal("residual_backward da", n, d_ga, ra);
            expect_equal("residual_backward db", n, d_gb, rb);
            fm_cuda_free(d_ga);
            fm_cuda_free(d_gb);
            free(ra);
            free(rb);
        }
        /* out = x + x: da and db are one buffer, which receives 2·dout. */
        float *rx = fm_test_copy(ga, n);
        float *d_gx = fm_test_dev_upload(ga, n);
        fm_cpu_residual_backward(rx, rx, dout, n);
        FM_CHECK_OK(fm_cuda_residual_backward(d_gx, d_gx, d_dout, n));
        expect_equal("residual_backward da == db", n, d_gx, rx);
        fm_cuda_free(d_gx);
        fm_cuda_free(d_dout);
        free(rx);
        free(dout);
        free(ga);
        free(gb);
    }
}

/* ---- activations ----------------------------------------------------------------------------------------- */

typedef void (*cpu_fwd_fn)(float *out, const float *inp, size_t n);
typedef void (*cpu_bwd_fn)(float *dinp, const float *inp, const float *dout, size_t n);
typedef fm_status (*cuda_fwd_fn)(float *out, const float *inp, size_t n);
typedef fm_status (*cuda_bwd_fn)(float *dinp, const float *inp, const float *dout, size_t n);

static void check_activation(const char *name, uint64_t stream, cpu_fwd_fn cpu_fwd, cuda_fwd_fn cuda_fwd,
                             cpu_bwd_fn cpu_bwd, cuda_bwd_fn cuda_bwd)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    char what[64];
    for (size_t s = 0; s < NSIZES; s++) {
        size_t n = sizes[s];
        float *x = activation_input(&rng, n);
        float *dout = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *g0 = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *ref = fm_test_alloc(n * sizeof(float));
        float *rg = fm_test_copy(g0, n);
        cpu_fwd(ref, x, n);
        cpu_bwd(rg, x, dout, n);

        float *d_x = fm_test_dev_upload(x, n), *d_dout = fm_test_dev_upload(dout, n), *d_g = fm_test_dev_upload(g0, n);
        float *d_out = fm_test_dev_poisoned(n);
        FM_CHECK_OK(cuda_fwd(d_out, d_x, n));
        snprintf(what, sizeof what, "%s_forward", name);
        fm_test_dev_expect_close(what, n, d_out, ref, ACT_FWD_RTOL, 0.0);
        FM_CHECK_OK(cuda_bwd(d_g, d_x, d_dout, n));
        snprintf(what, sizeof what, "%s_backward (accumulated)", name);
        fm_test_dev_expect_close(what, n, d_g, rg, ACT_BWD_RTOL, ACT_BWD_ATOL);
        /* a NULL gradient is skipped */
        FM_CHECK_OK(cuda_bwd(NULL, d_x, d_dout, n));

        fm_cuda_free(d_x);
        fm_cuda_free(d_dout);
        fm_cuda_free(d_g);
        fm_cuda_free(d_out);
        free(x);
        free(dout);
        free(g0);
        free(ref);
        free(rg);
    }
}

static void test_gelu(void **state)
{
    (void)state;
    check_activation("gelu", 203, fm_cpu_gelu_forward, fm_cuda_gelu_forward, fm_cpu_gelu_backward,
                     fm_cuda_gelu_backward);
}

static void test_quick_gelu(void **state)
{
    (void)state;
    check_activation("quick_gelu", 204, fm_cpu_quick_gelu_forward, fm_cuda_quick_gelu_forward,
                     fm_cpu_quick_gelu_backward, fm_cuda_quick_gelu_backward);
}

/* ---- AdamW ----------------------------------------------------------------------------------------------- */

static void test_adamw(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 205);
    const fm_adamw_hparams hp = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.05f};
    for (size_t s = 0; s < NSIZES; s++) {
        size_t n = sizes[s];
        float *p = fm_test_random(&rng, n, -1.0f, 1.0f);
        float *m = fm_test_random(&rng, n, -0.1f, 0.1f);
        float *v = fm_test_random(&rng, n, 0.0f, 0.01f);
        float *d_p = fm_test_dev_upload(p, n), *d_m = fm_test_dev_upload(m, n), *d_v = fm_test_dev_upload(v, n);
        /* Three steps with fresh gradients; both sides carry their own state forward. */
        for (int t = 1; t <= 3; t++) {
            float *g = fm_test_random(&rng, n, -1.0f, 1.0f);
            float *d_g = fm_test_dev_upload(g, n);
            fm_cpu_adamw_update(p, g, m, v, n, hp, t);
            FM_CHECK_OK(fm_cuda_adamw_update(d_p, d_g, d_m, d_v, n, hp, t));
            fm_test_dev_expect_close("adamw params", n, d_p, p, ADAMW_RTOL, ADAMW_ATOL);
            fm_test_dev_expect_close("adamw m", n, d_m, m, ADAMW_RTOL, ADAMW_ATOL);
            fm_test_dev_expect_close("adamw v", n, d_v, v, ADAMW_RTOL, ADAMW_ATOL);
            fm_cuda_free(d_g);
            free(g);
        }
        fm_cuda_free(d_p);
        fm_cuda_free(d_m);
        fm_cuda_free(d_v);
        free(p);
        free(m);
        free(v);
    }
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_argument_checks),
    };
    int failed = cmocka_run_group_tests_name("cuda kernels, argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.cuda_kernels", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_residual_forward),
        cmocka_unit_test(test_residual_backward),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_quick_gelu),
        cmocka_unit_test(test_adamw),
    };
    failed += cmocka_run_group_tests_name("cuda kernels vs CPU reference", device_tests, NULL, fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
