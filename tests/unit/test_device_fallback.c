/* Device selection and its fallback (src/core/device.c), in every build. Without a GPU (CPU-only build,
 * no driver, no device) "auto" must pick the CPU and "cuda" must fail with a reason; with a GPU, the
 * opposite. Whether a GPU is there is asked of CUDA directly, not of the code under test. Host memory
 * through fm_device_alloc/copy/memset/free, and device memory when a GPU is present. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "fedmm/device.h"
#include "fedmm/status.h"

#ifdef FEDMM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#define CHECK_OK(expr)                                                                                                 \
    do {                                                                                                               \
        fm_status check_status_ = (expr);                                                                              \
        if (check_status_ != FM_OK)                                                                                    \
            fail_msg("%s: %s: %s", #expr, fm_strerror(check_status_), fm_last_error());                                \
    } while (0)

/* The oracle: whether CUDA itself lists a device. Unchecked on purpose: an error is the answer "no". */
static int gpu_listed(void)
{
#ifdef FEDMM_WITH_CUDA
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return count > 0;
#else
    return 0;
#endif
}

static void test_request_parse(void **state)
{
    (void)state;
    fm_device_request r = FM_REQUEST_CPU;
    CHECK_OK(fm_device_request_parse("auto", &r));
    assert_int_equal(r, FM_REQUEST_AUTO);
    CHECK_OK(fm_device_request_parse("cuda", &r));
    assert_int_equal(r, FM_REQUEST_CUDA);
    CHECK_OK(fm_device_request_parse("cpu", &r));
    assert_int_equal(r, FM_REQUEST_CPU);
    assert_int_equal(fm_device_request_parse("gpu", &r), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "gpu"));
    assert_int_equal(fm_device_request_parse(NULL, &r), FM_ERR_CONFIG);
    assert_int_equal(fm_device_request_parse("", &r), FM_ERR_CONFIG);
}

static void test_select_follows_the_hardware(void **state)
{
    (void)state;
    char why[256];
    memset(why, 'x', sizeof why - 1);
    why[sizeof why - 1] = '\0';
    int count = fm_cuda_device_count(why, sizeof why);
    assert_int_equal(fm_cuda_device_count(NULL, 0), count);
    int listed = gpu_listed();
    const char *require = getenv("FEDMM_REQUIRE_GPU");
    printf("build has CUDA: %d; CUDA lists a device: %d; usable devices: %d%s%s\n", fm_build_has_cuda(), listed, count,
           count ? "" : " — ", why);
    if (require && *require && strcmp(require, "0") != 0 && count == 0)
        fail_msg("FEDMM_REQUIRE_GPU is set but fedmm finds no usable GPU: %s", why);
#ifndef FEDMM_WITH_CUDA
    assert_int_equal(fm_build_has_cuda(), 0);
#else
    assert_int_equal(fm_build_has_cuda(), 1);
#endif

    fm_device dev = FM_DEVICE_CUDA;
    CHECK_OK(fm_device_select(FM_REQUEST_CPU, &dev));
    assert_int_equal(dev, FM_DEVICE_CPU);

    if (!listed) {
        assert_int_equal(count, 0);
        /* a reason was written over the fill */
        assert_true(strlen(why) > 0 && strlen(why) < sizeof why - 1);
        dev = FM_DEVICE_CUDA;
        CHECK_OK(fm_device_select(FM_REQUEST_AUTO, &dev));
        assert_int_equal(dev, FM_DEVICE_CPU);
        dev = FM_DEVICE_CPU;
        fm_clear_error();
        assert_int_equal(fm_device_select(FM_REQUEST_CUDA, &dev), FM_ERR_DEVICE);
        if (!strstr(fm_last_error(), why))
            fail_msg("FM_REQUEST_CUDA failed with '%s', which does not give the reason '%s'", fm_last_error(), why);
    } else {
        /* A listed device that fedmm cannot use is a failure here: on a GPU machine it must be usable. */
        if (count == 0)
            fail_msg("CUDA lists a device but fedmm finds none usable: %s", why);
        assert_string_equal(why, "");
        CHECK_OK(fm_device_select(FM_REQUEST_AUTO, &dev));
        assert_int_equal(dev, FM_DEVICE_CUDA);
        dev = FM_DEVICE_CPU;
        CHECK_OK(fm_device_select(FM_REQUEST_CUDA, &dev));
        assert_int_equal(dev, FM_DEVICE_CUDA);
    }
}

static void test_cpu_memory(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 301);
    const size_t n = 10007, bytes = n * sizeof(float);
    float *src = fm_test_alloc(bytes);
    fm_test_fill(&rng, src, n, -5.0f, 5.0f);
    void *a = NULL, *b = NULL;
    CHECK_OK(fm_device_alloc(FM_DEVICE_CPU, bytes, &a));
    CHECK_OK(fm_device_alloc(FM_DEVICE_CPU, bytes, &b));
    assert_non_null(a);
    assert_non_null(b);
    CHECK_OK(fm_device_copy(a, FM_DEVICE_CPU, src, FM_DEVICE_CPU, bytes));
    CHECK_OK(fm_device_copy(b, FM_DEVICE_CPU, a, FM_DEVICE_CPU, bytes));
    assert_memory_equal(src, b, bytes);
    CHECK_OK(fm_device_memset(FM_DEVICE_CPU, (char *)b + 3, 0x7e, 101));
    const unsigned char *bb = b, *ss = (const unsigned char *)src;
    for (size_t i = 0; i < bytes; i++) {
        unsigned want = i >= 3 && i < 104 ? 0x7eu : ss[i];
        if (bb[i] != want)
            fail_msg("byte %zu is 0x%02x after memset, want 0x%02x", i, bb[i], want);
    }
    CHECK_OK(fm_device_synchronize(FM_DEVICE_CPU));
    /* edges: nothing to copy, NULL pointers, a zero-byte allocation */
    CHECK_OK(fm_device_copy(NULL, FM_DEVICE_CPU, NULL, FM_DEVICE_CPU, 0));
    assert_int_equal(fm_device_copy(NULL, FM_DEVICE_CPU, a, FM_DEVICE_CPU, 4), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_device_memset(FM_DEVICE_CPU, NULL, 0, 4), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_device_alloc(FM_DEVICE_CPU, 16, NULL), FM_ERR_INVALID_ARG);
    void *z = NULL;
    CHECK_OK(fm_device_alloc(FM_DEVICE_CPU, 0, &z));
    fm_device_free(FM_DEVICE_CPU, z);
    fm_device_free(FM_DEVICE_CPU, NULL);
    fm_device_free(FM_DEVICE_CPU, a);
    fm_device_free(FM_DEVICE_CPU, b);
    free(src);
}

/* Without a usable GPU, CUDA memory requests fail with a status and a message, never a crash; with one,
 * host → device → device → host round-trips the bytes. */
static void test_cuda_memory(void **state)
{
    (void)state;
    const size_t n = 4099, bytes = n * sizeof(float);
    float *src = fm_test_alloc(bytes), *back = fm_test_alloc(bytes);
    fm_rng rng = fm_rng_make(fm_test_seed(), 302);
    fm_test_fill(&rng, src, n, -5.0f, 5.0f);
    void *d1 = NULL, *d2 = NULL;
    if (fm_cuda_device_count(NULL, 0) == 0) {
        fm_clear_error();
        assert_int_not_equal(fm_device_alloc(FM_DEVICE_CUDA, bytes, &d1), FM_OK);
        assert_null(d1);
        assert_true(strlen(fm_last_error()) > 0);
        fm_clear_error();
        assert_int_not_equal(fm_device_copy(back, FM_DEVICE_CPU, src, FM_DEVICE_CUDA, bytes), FM_OK);
        assert_true(strlen(fm_last_error()) > 0);
        assert_int_not_equal(fm_device_synchronize(FM_DEVICE_CUDA), FM_OK);
    } else {
        CHECK_OK(fm_device_alloc(FM_DEVICE_CUDA, bytes, &d1));
        CHECK_OK(fm_device_alloc(FM_DEVICE_CUDA, bytes, &d2));
        CHECK_OK(fm_device_copy(d1, FM_DEVICE_CUDA, src, FM_DEVICE_CPU, bytes));
        CHECK_OK(fm_device_copy(d2, FM_DEVICE_CUDA, d1, FM_DEVICE_CUDA, bytes));
        CHECK_OK(fm_device_memset(FM_DEVICE_CUDA, d1, 0, bytes));
        CHECK_OK(fm_device_copy(back, FM_DEVICE_CPU, d2, FM_DEVICE_CUDA, bytes));
        CHECK_OK(fm_device_synchronize(FM_DEVICE_CUDA));
        assert_memory_equal(src, back, bytes);
        fm_device_free(FM_DEVICE_CUDA, d1);
        fm_device_free(FM_DEVICE_CUDA, d2);
    }
    free(src);
    free(back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_parse),
        cmocka_unit_test(test_select_follows_the_hardware),
        cmocka_unit_test(test_cpu_memory),
        cmocka_unit_test(test_cuda_memory),
    };
    return cmocka_run_group_tests_name("device selection and fallback", tests, NULL, NULL);
}
