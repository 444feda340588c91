/* What the gpu tests share: the skip-or-fail answer when no GPU is usable, and a status check that
 * prints fedmm's own error message when a call fails. */
#ifndef FEDMM_GPU_TEST_H
#define FEDMM_GPU_TEST_H

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

#endif
