/* What the gpu tests share: the skip-or-fail answer when no GPU is usable, a status check that prints fedmm's own
 * error message when a call fails, bf16 on the host, and (CUDA builds) device buffers of floats: uploaded, poisoned
 * with NaN, downloaded and compared (tests/gpu/gpu_test.c, in fedmm_testutil). */
#ifndef FEDMM_GPU_TEST_H
#define FEDMM_GPU_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "fedmm/status.h"

/* FEDMM_REQUIRE_GPU=1 (scripts/gpu-check.sh sets it on the GPU machine) turns "no usable GPU" from a
 * skip into a failure, so a broken driver or build cannot pass there as "skipped". */
static inline int fm_gpu_test_required(void)
{
    const char *e = getenv("FEDMM_REQUIRE_GPU");
    return e && *e && strcmp(e, "0") != 0;
}

/* The exit code for a run that found no usable GPU: 77 (ctest: skipped), or 1 if a GPU is required. */
static inline int fm_gpu_test_no_device(const char *test, const char *why)
{
    if (fm_gpu_test_required()) {
        fprintf(stderr, "FAILED: %s: FEDMM_REQUIRE_GPU is set but there is no usable CUDA device (%s)\n", test, why);
        return 1;
    }
    printf("SKIPPED: %s: no usable CUDA device (%s)\n", test, why);
    fflush(stdout);
    return FM_TEST_SKIP;
}

/* Fails the current cmocka test with the call, the status and fm_last_error() unless expr is FM_OK. */
#define FM_CHECK_OK(expr)                                                                                              \
    do {                                                                                                               \
        fm_status fm_check_status_ = (expr);                                                                           \
        if (fm_check_status_ != FM_OK)                                                                                 \
            fail_msg("%s: %s: %s", #expr, fm_strerror(fm_check_status_), fm_last_error());                             \
    } while (0)

/* bf16 on the host: round to nearest even, as __float2bfloat16_rn (NaN stays a quiet NaN), and back. */
uint16_t fm_test_to_bf16(float f);
float fm_test_from_bf16(uint16_t h);

#ifdef FEDMM_WITH_CUDA
/* Device buffers of n floats (at least one is allocated), freed with fm_cuda_free: uninitialised; a copy of the host's
 * h; every one NaN (all bits set), so that an element a kernel leaves unwritten shows. Each call that fails fails the
 * test. */
float *fm_test_dev_alloc(size_t n);
float *fm_test_dev_upload(const float *h, size_t n);
float *fm_test_dev_poisoned(size_t n);
/* A host copy (fm_test_alloc'd) of the device's n floats at d. */
float *fm_test_dev_download(const float *d, size_t n);
/* The device's n floats at dev against the CPU's float results cpu, as fm_test_assert_close ("what (n = N)"). */
void fm_test_dev_expect_close(const char *what, size_t n, const float *dev, const float *cpu, double rtol, double atol);
/* A cmocka group teardown for the device tests: fm_cuda_shutdown, leaving nothing allocated for compute-sanitizer's
 * leak check. */
int fm_test_dev_teardown(void **state);
#endif

#endif
