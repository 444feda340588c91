/* Data parallelism through NCCL with one rank (include/fedmm/dp.h, cuda/nccl.c): the group of one builds its
 * communicator, the all-reduce mean of a known vector gives the vector back (ncclAvg over one rank), the broadcast
 * too, on fedmm's stream and in order with the kernels around it; a second group can be built after the first is
 * gone; and the training hook (fm_train_options.dp, src/model/train.c) runs a step with the group and gives the
 * same parameters as a step without it. Host-side checks (the NCCL error translation) run without a device; the
 * rest needs a GPU (exit 77 without one), and a build without NCCL reports itself skipped. Two ranks in two
 * processes: tests/gpu/test_nccl_world2.c. */
#include "gpu_test.h"

#include <math.h>

#if !defined(FEDMM_WITH_CUDA) || !defined(FEDMM_WITH_NCCL)

int main(void)
{
    printf("SKIPPED: gpu.nccl: this fedmm was built without %s\n",
#ifdef FEDMM_WITH_CUDA
           "NCCL"
#else
           "the CUDA backend"
#endif
    );
    return FM_TEST_SKIP;
}

#else

#include "fedmm/clip.h"
#include "fedmm/dp.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"
#include "fedmm/train.h"

#include "../../cuda/nccl.h"
#include "../../cuda/runtime.h"

/* ---- host only -------------------------------------------------------------------------------------------- */

static void test_nccl_errors(void **state)
{
    (void)state;
    assert_int_equal(FM_NCCL_CHECK(0), FM_OK); /* ncclSuccess */
    int line = __LINE__ + 1;
    fm_status st = FM_NCCL_CHECK(3); /* ncclInternalError */
    assert_int_equal(st, FM_ERR_CUDA);
    char want[64];
    snprintf(want, sizeof want, "test_nccl.c:%d: 3:", line);
    if (!strstr(fm_last_error(), want))
        fail_msg("message '%s' lacks '%s'", fm_last_error(), want);
    printf("NCCL %s; an error reads: %s\n", fm_nccl_version(), fm_last_error());
    assert_int_equal(fm_nccl_create(NULL, NULL, 1, 0, 1.0), FM_ERR_INVALID_ARG);
}

/* ---- device ----------------------------------------------------------------------------------------------- */

static fm_dp *one_rank(void)
{
    fm_dp_options o = fm_dp_default_options();
    o.timeout_s = 60.0;
    fm_dp *dp = NULL;
    FM_CHECK_OK(fm_dp_create(&dp, &o, FM_DEVICE_CUDA));
    assert_non_null(dp);
    assert_int_equal(fm_dp_uses_nccl(dp), 1);
    assert_int_equal(fm_dp_world(dp), 1);
    return dp;
}

static void test_world1_identity(void **state)
{
    (void)state;
    const size_t n = 1000003;
    fm_rng rng = fm_rng_make(fm_test_seed(), 9);
    float *x = fm_test_alloc(n * sizeof(float)), *y = fm_test_alloc(n * sizeof(float));
    fm_test_fill(&rng, x, n, -1e3f, 1e3f);
    x[0] = -0.0f;
    x[1] = 1e-38f; /* a subnormal-adjacent value: the mean of one must not touch it */
    float *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc((void **)&d, n * sizeof(float)));
    fm_dp *dp = one_rank();
    for (int rep = 0; rep < 3; rep++) {
        FM_CHECK_OK(fm_cuda_memcpy(d, x, n * sizeof(float), 0));
        FM_CHECK_OK(fm_dp_allreduce_mean(dp, d, n));
        FM_CHECK_OK(fm_cuda_memcpy(y, d, n * sizeof(float), 1));
        for (size_t i = 0; i < n; i++)
            if (!fm_test_same_bits(x[i], y[i]))
                fail_msg("all-reduce mean over one rank changed element %zu: %.9g -> %.9g", i, (double)x[i],
                         (double)y[i]);
        FM_CHECK_OK(fm_dp_broadcast(dp, d, n));
        FM_CHECK_OK(fm_cuda_memcpy(y, d, n * sizeof(float), 1));
        assert_memory_equal(x, y, n * sizeof(float));
    }
    FM_CHECK_OK(fm_dp_allreduce_mean(dp, d, 0)); /* nothing to do */
    assert_int_equal(fm_dp_allreduce_mean(dp, NULL, 5), FM_ERR_INVALID_ARG);
    fm_dp_destroy(dp);
    /* another group after the first is gone */
    dp = one_rank();
    FM_CHECK_OK(fm_dp_allreduce_mean(dp, d, n));
    FM_CHECK_OK(fm_cuda_memcpy(y, d, n * sizeof(float), 1));
    assert_memory_equal(x, y, n * sizeof(float));
    fm_dp_destroy(dp);
    fm_cuda_free(d);
    free(x);
    free(y);
}

/* A training step of the tiny model on the GPU with a one-rank group equals one without (the mean of one gradient
 * is the gradient). Needs the model on CUDA (src/model/). */
static void test_training_hook(void **state)
{
    (void)state;
    fm_tokenizer *tok = NULL;
    FM_CHECK_OK(fm_tokenizer_builtin(&tok));
    fm_clip_config c;
    FM_CHECK_OK(fm_clip_config_preset("clip-tiny", &c));
    c.vocab_size = fm_tokenizer_vocab_size(tok);
    fm_synth_config synth = fm_synth_default_config();
    synth.seed = fm_test_seed();
    synth.image_size = c.image_size;
    synth.split_size[FM_SPLIT_TRAIN] = 64;
    fm_dataset *ds = NULL;
    FM_CHECK_OK(fm_dataset_synth(&ds, &synth, FM_SPLIT_TRAIN, tok, c.context_length));
    const int B = 8;
    fm_batch batch;
    FM_CHECK_OK(fm_batch_alloc(&batch, B, c.image_size, c.context_length));
    for (int i = 0; i < B; i++)
        batch.idx[i] = i;
    FM_CHECK_OK(fm_dataset_batch(ds, batch.idx, B, batch.images, batch.tokens, batch.eot, batch.labels));
    float *p[2] = {NULL, NULL};
    size_t P = 0;
    fm_dp *dp = one_rank();
    for (int with = 0; with < 2; with++) {
        fm_clip *m = NULL;
        fm_optimizer *opt = NULL;
        FM_CHECK_OK(fm_clip_create(&m, &c, FM_DEVICE_CUDA, 5));
        FM_CHECK_OK(fm_optimizer_create(&opt, m));
        fm_train_options o = fm_train_default_options();
        o.dp = with ? dp : NULL;
        float loss = 0.0f, gnorm = 0.0f;
        for (int step = 0; step < 2; step++)
            FM_CHECK_OK(fm_train_step(m, opt, &o, &batch, B, 1e-3, &loss, &gnorm));
        P = fm_clip_num_trainable(m);
        p[with] = fm_test_alloc(P * sizeof(float));
        FM_CHECK_OK(fm_cuda_memcpy(p[with], fm_clip_trainable(m), P * sizeof(float), 1));
        fm_optimizer_destroy(opt);
        fm_clip_destroy(m);
    }
    fm_dp_destroy(dp);
    assert_memory_equal(p[0], p[1], P * sizeof(float));
    free(p[0]);
    free(p[1]);
    fm_batch_free(&batch);
    fm_dataset_destroy(ds);
    fm_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_nccl_errors),
    };
    int failed = cmocka_run_group_tests_name("NCCL glue, host side", host_tests, NULL, NULL);
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0)
        return failed ? 1 : fm_gpu_test_no_device("gpu.nccl", why);
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(test_world1_identity),
        cmocka_unit_test(test_training_hook),
    };
    failed += cmocka_run_group_tests_name("data parallelism with one rank", device_tests, NULL, fm_test_dev_teardown);
    return failed ? 1 : 0;
}

#endif
