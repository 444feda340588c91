/* The CUDA dropout kernel (kernels/dropout.cu) against its CPU twin (src/cpu/dropout.c): the mask and the
 * output must be equal BIT FOR BIT (same Philox-4x32-10 counter scheme, same integer keep threshold, a plain
 * product), on odd sizes including ones that need several grid-stride rounds, in place too, for several p,
 * seeds and streams (64-bit values that exercise both halves of key and counter); backward, accumulated twice
 * onto a random start, bit for bit as well (the kernel forbids FMA contraction); through the tensor dispatcher
 * as well. Argument checks run without a device; the rest needs a GPU (skipped, exit 77, without one). */
#include "gpu_test.h"

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.cuda_dropout", "this fedmm was built without the CUDA backend"); }

#else

#include "cpu/cpu_ops.h"
#include "fedmm/ops.h"
#include "fedmm/tensor.h"

#include "../../cuda/runtime.h"
#include "../../kernels/cuda_ops.h"

static void expect_bits(const char *what, const float *dev, const float *cpu, size_t n)
{
    float *got = fm_test_alloc(n * sizeof(float));
    FM_CHECK_OK(fm_cuda_memcpy(got, dev, n * sizeof(float), 1));
    for (size_t i = 0; i < n; i++) {
        uint32_t a, b; /* bits: NaN never equals itself, and -0 == +0 */
        memcpy(&a, &got[i], sizeof a);
        memcpy(&b, &cpu[i], sizeof b);
        if (a != b)
            fail_msg("%s (n = %zu): element %zu is %.9g on the GPU, %.9g on the CPU", what, n, i, (double)got[i],
                     (double)cpu[i]);
    }
    free(got);
}

static void test_argument_checks(void **state)
{
    (void)state;
    float x = 1.0f;
    /* nothing to do: no device touched */
    assert_int_equal(fm_cuda_dropout_forward(NULL, NULL, NULL, 0, 0.5f, 1, 2), FM_OK);
    assert_int_equal(fm_cuda_dropout_backward(NULL, &x, &x, 5), FM_OK);
    assert_int_equal(fm_cuda_dropout_forward(&x, NULL, &x, 1, 0.5f, 1, 2), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_dropout_forward(&x, &x, &x, 1, 1.0f, 1, 2), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_dropout_backward(&x, NULL, &x, 1), FM_ERR_INVALID_ARG);
}

static void test_forward_backward_bits(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    static const size_t sizes[] = {1, 3, 4, 5, 1001, 65539, 3000017};
    static const float ps[] = {0.0f, 0.1f, 0.3f, 0.5f, 0.95f};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float p = ps[si % (sizeof ps / sizeof ps[0])];
        uint64_t seed = fm_rng_u64(&rng), stream = fm_rng_u64(&rng);
        float *x = fm_test_alloc(n * sizeof(float)), *out = fm_test_alloc(n * sizeof(float));
        float *mask = fm_test_alloc(n * sizeof(float)), *dinp = fm_test_alloc(n * sizeof(float));
        float *dout = fm_test_alloc(n * sizeof(float));
        fm_test_fill(&rng, x, n, -2.0f, 2.0f);
        fm_test_fill(&rng, dinp, n, -1.0f, 1.0f);
        fm_test_fill(&rng, dout, n, -1.0f, 1.0f);
        float *dx = fm_test_dev_upload(x, n), *dout_d = fm_test_dev_upload(dout, n),
              *ddinp = fm_test_dev_upload(dinp, n);
        float *dout_fwd = fm_test_dev_poisoned(n), *dmask = fm_test_dev_poisoned(n);
        fm_cpu_dropout_forward(out, mask, x, n, p, seed, stream);
        FM_CHECK_OK(fm_cuda_dropout_forward(dout_fwd, dmask, dx, n, p, seed, stream));
        expect_bits("dropout mask", dmask, mask, n);
        expect_bits("dropout out", dout_fwd, out, n);
        /* in place on the device */
        FM_CHECK_OK(fm_cuda_dropout_forward(dx, dmask, dx, n, p, seed, stream));
        expect_bits("dropout out (in place)", dx, out, n);
        fm_cpu_dropout_backward(dinp, dout, mask, n);
        fm_cpu_dropout_backward(dinp, dout, mask, n);
        FM_CHECK_OK(fm_cuda_dropout_backward(ddinp, dout_d, dmask, n));
        FM_CHECK_OK(fm_cuda_dropout_backward(ddinp, dout_d, dmask, n));
        expect_bits("dropout dinp (accumulated twice)", ddinp, dinp, n);
        fm_cuda_free(dx);
        fm_cuda_free(dout_d);
        fm_cuda_free(ddinp);
        fm_cuda_free(dout_fwd);
        fm_cuda_free(dmask);
        free(x);
        free(out);
        free(mask);
        free(dinp);
        free(dout);
    }
}

static void test_dispatch(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    const int64_t shape[3] = {5, 7, 9};
    const size_t n = 5 * 7 * 9;
    float x[5 * 7 * 9], out[5 * 7 * 9], mask[5 * 7 * 9];
    fm_test_fill(&rng, x, n, -1.0f, 1.0f);
    fm_cpu_dropout_forward(out, mask, x, n, 0.25f, 99, 7);
    float *dx = fm_test_dev_upload(x, n), *dout = fm_test_dev_poisoned(n), *dmask = fm_test_dev_poisoned(n);
    fm_tensor tx, to, tm;
    FM_CHECK_OK(fm_tensor_view(&tx, dx, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, shape));
    FM_CHECK_OK(fm_tensor_view(&to, dout, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, shape));
    FM_CHECK_OK(fm_tensor_view(&tm, dmask, n * sizeof(float), 0, FM_F32, FM_DEVICE_CUDA, 3, shape));
    FM_CHECK_OK(fm_dropout_forward(&to, &tm, &tx, 0.25f, 99, 7));
    expect_bits("dispatched dropout out", dout, out, n);
    expect_bits("dispatched dropout mask", dmask, mask, n);
    fm_cuda_free(dx);
    fm_cuda_free(dout);
    fm_cuda_free(dmask);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_argument_checks),
    };
    int failed = cmocka_run_group_tests_name("cuda dropout, argument checks", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.cuda_dropout", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_forward_backward_bits),
        cmocka_unit_test(test_dispatch),
    };
    failed += cmocka_run_group_tests_name("cuda dropout vs CPU reference, bit for bit", device_tests, NULL,
                                          fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
