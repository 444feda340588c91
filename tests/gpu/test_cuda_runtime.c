/* Tests of the CUDA runtime glue (cuda/runtime.c): checked calls and their messages, the cached probe,
 * argument checks, behaviour without a device, and on a GPU the memory round trips, memset, the stream
 * and the cuBLAS(Lt) handles. The host-only part runs in every CUDA build; the device part needs a GPU,
 * and without one the test reports itself skipped (exit 77) after the parts it could run. */
#include "gpu_test.h"

#include <math.h>
#include <stdint.h>

#ifndef FEDMM_WITH_CUDA

int main(void) { return fm_gpu_test_no_device("gpu.cuda_runtime", "this fedmm was built without the CUDA backend"); }

#else

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../../cuda/runtime.h"

/* ---- host-only: no CUDA device needed -------------------------------------------------------------- */

static void test_check_success_is_ok(void **state)
{
    (void)state;
    fm_clear_error();
    assert_int_equal(FM_CUDA_CHECK(cudaSuccess), FM_OK);
    assert_int_equal(FM_CUBLAS_CHECK(CUBLAS_STATUS_SUCCESS), FM_OK);
    assert_string_equal(fm_last_error(), "");
}

static void test_check_failure_names_file_line_call(void **state)
{
    (void)state;
    char want[128];
    int line = __LINE__ + 1;
    fm_status st = fm_cuda_check_at((int)cudaErrorMemoryAllocation, "cudaMalloc(&p, n)", __FILE__, line);
    assert_int_equal(st, FM_ERR_CUDA);
    snprintf(want, sizeof want, "gpu/test_cuda_runtime.c:%d: ", line);
    const char *msg = fm_last_error();
    if (!strstr(msg, want) || !strstr(msg, "cudaMalloc(&p, n)") || !strstr(msg, "cudaErrorMemoryAllocation"))
        fail_msg("message '%s' lacks '%s', the call or the error name", msg, want);

    /* Through the macro: the call's text and this line. */
    line = __LINE__ + 1;
    st = FM_CUDA_CHECK(cudaErrorInvalidValue);
    assert_int_equal(st, FM_ERR_CUDA);
    snprintf(want, sizeof want, "test_cuda_runtime.c:%d: cudaErrorInvalidValue: cudaErrorInvalidValue", line);
    if (!strstr(fm_last_error(), want))
        fail_msg("message '%s' lacks '%s'", fm_last_error(), want);

    /* A code CUDA does not know still gives FM_ERR_CUDA and a message, not a crash. */
    assert_int_equal(fm_cuda_check_at(987654, "made_up()", NULL, 0), FM_ERR_CUDA);
    assert_non_null(strstr(fm_last_error(), "made_up()"));
}

static void test_cublas_check_failure(void **state)
{
    (void)state;
    int line = __LINE__ + 1;
    fm_status st = fm_cublas_check_at((int)CUBLAS_STATUS_NOT_INITIALIZED, "cublasCreate(&h)", __FILE__, line);
    assert_int_equal(st, FM_ERR_CUDA);
    char want[128];
    snprintf(want, sizeof want, "test_cuda_runtime.c:%d: cublasCreate(&h): CUBLAS_STATUS_NOT_INITIALIZED", line);
    if (!strstr(fm_last_error(), want))
        fail_msg("message '%s' lacks '%s'", fm_last_error(), want);
}

static void test_probe_is_cached_and_explains_zero(void **state)
{
    (void)state;
    char why1[384], why2[384], tiny[8];
    fm_error(FM_ERR_IO, "marker");
    int c1 = fm_cuda_probe(why1, sizeof why1);
    int c2 = fm_cuda_probe(why2, sizeof why2);
    int c3 = fm_cuda_probe(NULL, 0);
    int c4 = fm_cuda_probe(tiny, sizeof tiny);
    assert_true(c1 >= 0);
    assert_int_equal(c1, c2);
    assert_int_equal(c1, c3);
    assert_int_equal(c1, c4);
    assert_string_equal(why1, why2);
    assert_true(strlen(tiny) < sizeof tiny);
    if (c1 == 0)
        assert_true(strlen(why1) > 0);
    else
        assert_string_equal(why1, "");
    /* Finding no GPU is an answer, not an error: the thread's last error is left alone. */
    assert_string_equal(fm_last_error(), "marker");
    printf("probe: %d device(s)%s%s; kernels built for %s\n", c1, c1 ? "" : ": ", why1, fm_cuda_built_archs());
    assert_non_null(strstr(fm_cuda_built_archs(), "sm_"));
}

static void test_argument_checks(void **state)
{
    (void)state;
    void *p = (void *)&p;
    char a[16] = "0123456789abcde", b[16] = {0};
    assert_int_equal(fm_cuda_malloc(NULL, 16), FM_ERR_INVALID_ARG);
    FM_CHECK_OK(fm_cuda_malloc(&p, 0));
    assert_null(p);
    fm_cuda_free(NULL);
    assert_int_equal(fm_cuda_memcpy(b, a, sizeof a, 4), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_memcpy(b, a, sizeof a, -1), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "kind -1"));
    assert_int_equal(fm_cuda_memcpy(NULL, a, sizeof a, 0), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_memcpy(b, NULL, sizeof a, 1), FM_ERR_INVALID_ARG);
    FM_CHECK_OK(fm_cuda_memcpy(NULL, NULL, 0, 0));
    assert_int_equal(fm_cuda_memset(NULL, 0, 4), FM_ERR_INVALID_ARG);
    FM_CHECK_OK(fm_cuda_memset(NULL, 0, 0));
    assert_int_equal(fm_cuda_get_stream(NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_cuda_get_cublas(NULL), FM_ERR_INVALID_ARG);
    size_t ws_bytes = 0;
    struct cublasLtContext *lt = NULL;
    assert_int_equal(fm_cuda_get_cublaslt(&lt, NULL, &ws_bytes), FM_ERR_INVALID_ARG);
    /* host→host needs no device */
    FM_CHECK_OK(fm_cuda_memcpy(b, a, sizeof a, 3));
    assert_memory_equal(a, b, sizeof a);
}

static void test_grid_1d(void **state)
{
    (void)state;
    assert_int_equal(fm_cuda_grid_1d(0, 256), 0);
    assert_int_equal(fm_cuda_grid_1d(5, 0), 0);
    assert_int_equal(fm_cuda_grid_1d(1, 256), 1);
    assert_int_equal(fm_cuda_grid_1d(1000, 256), 4);
    assert_int_equal(fm_cuda_grid_1d(1024, 256), 4);
    /* A huge n is capped: the kernels' grid-stride loops cover the rest. */
    size_t big = (size_t)1 << 34;
    unsigned g = fm_cuda_grid_1d(big, 256);
    assert_true(g >= 1);
    assert_true((size_t)g * 256 < big);
}

/* ---- without a device: every call fails cleanly ---------------------------------------------------- */

static void test_no_device_fails_cleanly(void **state)
{
    (void)state;
    void *p = NULL;
    fm_status st = fm_cuda_malloc(&p, 1024);
    assert_int_not_equal(st, FM_OK);
    assert_null(p);
    assert_non_null(strstr(fm_last_error(), "cuda/runtime.c:"));
    assert_non_null(strstr(fm_last_error(), "cudaMalloc"));
    struct CUstream_st *stream = (struct CUstream_st *)&p;
    assert_int_equal(fm_cuda_get_stream(&stream), FM_ERR_CUDA);
    assert_null(stream);
    float h[3] = {1, 2, 3};
    assert_int_equal(fm_cuda_memcpy(h, h + 1, sizeof(float), 1), FM_ERR_CUDA);
    assert_int_equal(fm_cuda_memset(h, 0, sizeof h), FM_ERR_CUDA);
    struct cublasContext *blas = NULL;
    assert_int_equal(fm_cuda_get_cublas(&blas), FM_ERR_CUDA);
    assert_null(blas);
    assert_int_not_equal(fm_cuda_synchronize(), FM_OK);
    FM_CHECK_OK(fm_cuda_shutdown());
}

/* ---- on a device ------------------------------------------------------------------------------------- */

static void test_memcpy_round_trip(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 101);
    const size_t sizes[] = {1, 4097, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], bytes = n * sizeof(float);
        float *h = fm_test_alloc(bytes), *back = fm_test_alloc(bytes);
        fm_test_fill(&rng, h, n, -3.0f, 3.0f);
        memset(back, 0x5a, bytes);
        void *d1 = NULL, *d2 = NULL;
        FM_CHECK_OK(fm_cuda_malloc(&d1, bytes));
        FM_CHECK_OK(fm_cuda_malloc(&d2, bytes));
        assert_non_null(d1);
        assert_non_null(d2);
        FM_CHECK_OK(fm_cuda_memcpy(d1, h, bytes, 0));
        FM_CHECK_OK(fm_cuda_memcpy(d2, d1, bytes, 2));
        FM_CHECK_OK(fm_cuda_memcpy(back, d2, bytes, 1));
        assert_memory_equal(h, back, bytes);
        fm_cuda_free(d1);
        fm_cuda_free(d2);
        free(h);
        free(back);
    }
}

static void test_memset(void **state)
{
    (void)state;
    const size_t bytes = 100003;
    unsigned char *back = fm_test_alloc(bytes);
    void *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d, bytes));
    FM_CHECK_OK(fm_cuda_memset(d, 0xab, bytes));
    FM_CHECK_OK(fm_cuda_memset((unsigned char *)d + 17, 0x3c, 1001));
    FM_CHECK_OK(fm_cuda_memcpy(back, d, bytes, 1));
    for (size_t i = 0; i < bytes; i++) {
        unsigned want = i >= 17 && i < 17 + 1001 ? 0x3cu : 0xabu;
        if (back[i] != want)
            fail_msg("byte %zu is 0x%02x, want 0x%02x", i, back[i], want);
    }
    FM_CHECK_OK(fm_cuda_synchronize());
    fm_cuda_free(d);
    free(back);
}

/* C (M×N) = A (M×K) · B (K×N), column-major as cuBLAS, through fedmm's handle: checks that the handle
 * works, runs on fedmm's stream (the device→host copy on that stream waits for it) and uses fp32. */
static void test_stream_and_blas_handles(void **state)
{
    (void)state;
    struct CUstream_st *s1 = NULL, *s2 = NULL;
    FM_CHECK_OK(fm_cuda_get_stream(&s1));
    FM_CHECK_OK(fm_cuda_get_stream(&s2));
    assert_non_null(s1);
    assert_ptr_equal(s1, s2);
    struct cublasContext *h1 = NULL, *h2 = NULL;
    FM_CHECK_OK(fm_cuda_get_cublas(&h1));
    FM_CHECK_OK(fm_cuda_get_cublas(&h2));
    assert_non_null(h1);
    assert_ptr_equal(h1, h2);
    struct cublasLtContext *lt = NULL;
    void *ws = NULL;
    size_t ws_bytes = 0;
    FM_CHECK_OK(fm_cuda_get_cublaslt(&lt, &ws, &ws_bytes));
    assert_non_null(lt);
    assert_non_null(ws);
    assert_true(ws_bytes >= ((size_t)4 << 20));

    enum { M = 3, N = 5, K = 7 };
    float a[M * K], b[K * N], c[M * N];
    double want[M * N];
    fm_rng rng = fm_rng_make(fm_test_seed(), 102);
    fm_test_fill(&rng, a, M * K, -1.0f, 1.0f);
    fm_test_fill(&rng, b, K * N, -1.0f, 1.0f);
    for (int j = 0; j < N; j++) {
        for (int i = 0; i < M; i++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++)
                acc += (double)a[(size_t)k * M + i] * b[(size_t)j * K + k];
            want[(size_t)j * M + i] = acc;
        }
    }
    void *da = NULL, *db = NULL, *dc = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&da, sizeof a));
    FM_CHECK_OK(fm_cuda_malloc(&db, sizeof b));
    FM_CHECK_OK(fm_cuda_malloc(&dc, sizeof c));
    FM_CHECK_OK(fm_cuda_memcpy(da, a, sizeof a, 0));
    FM_CHECK_OK(fm_cuda_memcpy(db, b, sizeof b, 0));
    FM_CHECK_OK(fm_cuda_memset(dc, 0xff, sizeof c));
    const float one = 1.0f, zero = 0.0f;
    FM_CHECK_OK(FM_CUBLAS_CHECK(cublasSgemm(h1, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, da, M, db, K, &zero, dc, M)));
    FM_CHECK_OK(fm_cuda_memcpy(c, dc, sizeof c, 1));
    fm_test_assert_close("sgemm through fedmm's handle", c, want, M * N, 1e-5, 1e-6);
    fm_cuda_free(da);
    fm_cuda_free(db);
    fm_cuda_free(dc);
}

static void test_launch_check_reports_and_clears(void **state)
{
    (void)state;
    FM_CHECK_OK(FM_CUDA_LAUNCH_CHECK("nothing"));
    /* A raw failing call leaves its error in the runtime's last-error slot, as a bad launch would. */
    void *p = NULL;
    assert_int_not_equal(cudaMalloc(&p, (size_t)1 << 62), cudaSuccess);
    int line = __LINE__ + 1;
    assert_int_equal(FM_CUDA_LAUNCH_CHECK("pretend_kernel"), FM_ERR_CUDA);
    char want[128];
    snprintf(want, sizeof want, "test_cuda_runtime.c:%d: launch of pretend_kernel: cudaErrorMemoryAllocation", line);
    if (!strstr(fm_last_error(), want))
        fail_msg("message '%s' lacks '%s'", fm_last_error(), want);
    FM_CHECK_OK(FM_CUDA_LAUNCH_CHECK("nothing"));
    /* A failure through fm_cuda_malloc is reported once, by its status, and not again by the next
     * launch check. */
    assert_int_equal(fm_cuda_malloc(&p, (size_t)1 << 62), FM_ERR_NO_MEMORY);
    assert_null(p);
    assert_non_null(strstr(fm_last_error(), "out of device memory"));
    FM_CHECK_OK(FM_CUDA_LAUNCH_CHECK("nothing"));
}

static void test_shutdown_then_reuse(void **state)
{
    (void)state;
    struct cublasContext *h = NULL;
    FM_CHECK_OK(fm_cuda_get_cublas(&h));
    FM_CHECK_OK(fm_cuda_shutdown());
    FM_CHECK_OK(fm_cuda_shutdown());
    struct CUstream_st *s = NULL;
    FM_CHECK_OK(fm_cuda_get_stream(&s));
    assert_non_null(s);
    float x[5] = {1.5f, -2.0f, 3.25f, 0.125f, -7.0f}, y[5] = {0};
    void *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d, sizeof x));
    FM_CHECK_OK(fm_cuda_memcpy(d, x, sizeof x, 0));
    FM_CHECK_OK(fm_cuda_memcpy(y, d, sizeof y, 1));
    assert_memory_equal(x, y, sizeof x);
    fm_cuda_free(d);
    FM_CHECK_OK(fm_cuda_shutdown());
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_check_success_is_ok),  cmocka_unit_test(test_check_failure_names_file_line_call),
        cmocka_unit_test(test_cublas_check_failure), cmocka_unit_test(test_probe_is_cached_and_explains_zero),
        cmocka_unit_test(test_argument_checks),      cmocka_unit_test(test_grid_1d),
    };
    int failed = cmocka_run_group_tests_name("cuda runtime, host-only", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0) {
        const struct CMUnitTest no_device_tests[] = {
            cmocka_unit_test(test_no_device_fails_cleanly),
        };
        failed += cmocka_run_group_tests_name("cuda runtime, without a device", no_device_tests, NULL, NULL);
        return failed ? 1 : fm_gpu_test_no_device("gpu.cuda_runtime", why);
    }
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_memcpy_round_trip),       cmocka_unit_test(test_memset),
        cmocka_unit_test(test_stream_and_blas_handles), cmocka_unit_test(test_launch_check_reports_and_clears),
        cmocka_unit_test(test_shutdown_then_reuse),
    };
    failed += cmocka_run_group_tests_name("cuda runtime, on the device", device_tests, NULL, NULL);
    return failed ? 1 : 0;
}

#endif
