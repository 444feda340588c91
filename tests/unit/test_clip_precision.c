/* The model's precision setting and the host side of its trainable vector, on the CPU: fp32 / bf16 parse and
 * print; bf16 is refused on the CPU (the fp32 reference path) and with LoRA dropout, with messages that say what
 * to do; the trainable vector and its gradient round-trip through host memory, and a wrong length is refused;
 * the optimizer's moments (one allocation) reset to zero; the weight average (train.ema_decay) and its checkpoint. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "fedmm/clip.h"
#include "fedmm/train.h"

static void tiny(fm_clip_config *c)
{
    assert_int_equal(fm_clip_config_preset("clip-tiny", c), FM_OK);
    c->vocab_size = 50;
}

static void test_parse(void **state)
{
    (void)state;
    fm_precision p = FM_PRECISION_BF16;
    assert_int_equal(fm_precision_parse("fp32", &p), FM_OK);
    assert_int_equal(p, FM_PRECISION_FP32);
    assert_int_equal(fm_precision_parse("bf16", &p), FM_OK);
    assert_int_equal(p, FM_PRECISION_BF16);
    assert_string_equal(fm_precision_name(FM_PRECISION_FP32), "fp32");
    assert_string_equal(fm_precision_name(FM_PRECISION_BF16), "bf16");
    assert_string_equal(fm_precision_name((fm_precision)9), "?");
    EXPECT_FAIL(fm_precision_parse("fp16", &p), FM_ERR_CONFIG, "expected fp32 or bf16");
    EXPECT_FAIL(fm_precision_parse(NULL, &p), FM_ERR_CONFIG, "expected fp32 or bf16");
    /* presets compute in fp32 */
    fm_clip_config c;
    tiny(&c);
    assert_int_equal(c.precision, FM_PRECISION_FP32);
}

static void test_bf16_refused(void **state)
{
    (void)state;
    fm_clip_config c;
    tiny(&c);
    c.precision = FM_PRECISION_BF16;
    assert_int_equal(fm_clip_config_validate(&c), FM_OK);
    fm_clip *m = NULL;
    EXPECT_FAIL(fm_clip_create(&m, &c, FM_DEVICE_CPU, 1), FM_ERR_UNSUPPORTED, "train.precision bf16 runs on CUDA only");
    assert_null(m);
    c.lora_dropout = 0.1f;
    EXPECT_FAIL(fm_clip_config_validate(&c), FM_ERR_CONFIG, "does not support LoRA dropout");
    c.full_finetune = 1; /* no adapters, no adapter dropout: fine */
    assert_int_equal(fm_clip_config_validate(&c), FM_OK);
    c.precision = (fm_precision)5;
    EXPECT_FAIL(fm_clip_config_validate(&c), FM_ERR_CONFIG, "precision 5");
}

static void test_trainable_host_copies(void **state)
{
    (void)state;
    fm_clip_config c;
    tiny(&c);
    fm_clip *m = NULL;
    assert_int_equal(fm_clip_create(&m, &c, FM_DEVICE_CPU, 3), FM_OK);
    size_t n = fm_clip_num_trainable(m);
    float *v = malloc(n * sizeof *v), *w = malloc(n * sizeof *w);
    assert_non_null(v);
    assert_non_null(w);
    assert_int_equal(fm_clip_get_trainable(m, v, n), FM_OK);
    assert_memory_equal(v, fm_clip_trainable(m), n * sizeof *v);
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    fm_test_fill(&rng, v, n, -1.0f, 1.0f);
    assert_int_equal(fm_clip_set_trainable(m, v, n), FM_OK);
    assert_memory_equal(v, fm_clip_trainable(m), n * sizeof *v);
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    fm_test_fill(&rng, w, n, -1.0f, 1.0f);
    assert_int_equal(fm_clip_get_trainable_grad(m, w, n), FM_OK);
    for (size_t i = 0; i < n; i++)
        assert_true(w[i] == 0.0f);
    EXPECT_FAIL(fm_clip_set_trainable(m, v, n - 1), FM_ERR_SHAPE, "the trainable vector has");
    EXPECT_FAIL(fm_clip_get_trainable(m, NULL, n), FM_ERR_INVALID_ARG, "NULL");
    EXPECT_FAIL(fm_clip_get_trainable_grad(NULL, w, n), FM_ERR_INVALID_ARG, "NULL");

    /* the optimizer (its two moments share one allocation): a checkpoint after one step, loaded into a fresh
     * optimizer, continues bit for bit as the original does; reset zeroes the step count */
    fm_optimizer *o = NULL, *o2 = NULL;
    assert_int_equal(fm_optimizer_create(&o, m), FM_OK);
    assert_int_equal(fm_optimizer_create(&o2, m), FM_OK);
    fm_train_options opt = fm_train_default_options();
    float norm = 0.0f;
    for (size_t i = 0; i < n; i++)
        fm_clip_trainable_grad(m)[i] = 0.01f * (float)((int)(i % 7) - 3);
    assert_int_equal(fm_optimizer_apply(m, o, &opt, 1e-3, &norm), FM_OK);
    assert_true(norm > 0.0f);
    char path[] = "/tmp/fedmm-precision-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fm_checkpoint_save(m, o, NULL, path), FM_OK);
    for (size_t i = 0; i < n; i++)
        fm_clip_trainable_grad(m)[i] = 0.02f * (float)((int)(i % 5) - 2);
    assert_int_equal(fm_optimizer_apply(m, o, &opt, 1e-3, &norm), FM_OK);
    assert_int_equal(fm_clip_get_trainable(m, v, n), FM_OK);
    assert_int_equal(fm_checkpoint_load(m, o2, NULL, path), FM_OK);
    unlink(path);
    assert_int_equal(fm_optimizer_step_count(o2), 1);
    for (size_t i = 0; i < n; i++) /* the same gradient again (apply clipped the last one in place) */
        fm_clip_trainable_grad(m)[i] = 0.02f * (float)((int)(i % 5) - 2);
    assert_int_equal(fm_optimizer_apply(m, o2, &opt, 1e-3, &norm), FM_OK);
    assert_memory_equal(v, fm_clip_trainable(m), n * sizeof *v);
    assert_int_equal(fm_optimizer_reset(o), FM_OK);
    assert_int_equal(fm_optimizer_step_count(o), 0);
    fm_optimizer_destroy(o);
    fm_optimizer_destroy(o2);
    free(v);
    free(w);
    fm_clip_destroy(m);
}

/* The weight average (train.ema_decay): starts at the model's vector; an update is β·avg + (1 − β)·w, rounded as
 * fm_agg_weighted_sum rounds (β·avg first, then + (1 − β)·w, each product rounded); swap exchanges model and
 * average and swapping back restores both; a checkpoint keeps it, and loading refuses a file without one into a
 * run that keeps one (and the reverse) and a non-finite average, leaving everything unchanged. */
static void test_weight_average(void **state)
{
    (void)state;
    fm_clip_config c;
    tiny(&c);
    fm_clip *m = NULL;
    assert_int_equal(fm_clip_create(&m, &c, FM_DEVICE_CPU, 5), FM_OK);
    const size_t n = fm_clip_num_trainable(m);
    float *w0 = malloc(n * sizeof *w0), *w1 = malloc(n * sizeof *w1), *got = malloc(n * sizeof *got);
    assert_non_null(w0);
    assert_non_null(w1);
    assert_non_null(got);
    fm_weight_average *a = NULL;
    EXPECT_FAIL(fm_weight_average_create(&a, m, 1.0), FM_ERR_INVALID_ARG, "outside (0, 1)");
    EXPECT_FAIL(fm_weight_average_create(&a, m, 0.0), FM_ERR_INVALID_ARG, "outside (0, 1)");
    assert_null(a);
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    fm_test_fill(&rng, w0, n, -1.0f, 1.0f);
    assert_int_equal(fm_clip_set_trainable(m, w0, n), FM_OK);
    assert_int_equal(fm_weight_average_create(&a, m, 0.75), FM_OK);
    assert_int_equal(fm_weight_average_size(a), n);
    assert_int_equal(fm_weight_average_get(a, got), FM_OK);
    assert_memory_equal(got, w0, n * sizeof *got);

    fm_test_fill(&rng, w1, n, -1.0f, 1.0f);
    assert_int_equal(fm_clip_set_trainable(m, w1, n), FM_OK);
    assert_int_equal(fm_weight_average_update(a), FM_OK);
    assert_int_equal(fm_weight_average_get(a, got), FM_OK);
    for (size_t i = 0; i < n; i++) {
        volatile float first = 0.75f * w0[i], second = 0.25f * w1[i];
        float want = first + second;
        assert_true(got[i] == want);
    }
    float *avg1 = malloc(n * sizeof *avg1);
    assert_non_null(avg1);
    memcpy(avg1, got, n * sizeof *avg1);

    /* swap: the model holds the average, get still returns the average; update and restart are refused */
    assert_int_equal(fm_weight_average_swap(a), FM_OK);
    assert_memory_equal(fm_clip_trainable(m), avg1, n * sizeof *avg1);
    assert_int_equal(fm_weight_average_get(a, got), FM_OK);
    assert_memory_equal(got, avg1, n * sizeof *got);
    EXPECT_FAIL(fm_weight_average_update(a), FM_ERR_STATE, "swapped");
    EXPECT_FAIL(fm_weight_average_restart(a), FM_ERR_STATE, "swapped");
    assert_true(fm_weight_average_swapped(a));
    assert_int_equal(fm_weight_average_swap(a), FM_OK);
    assert_false(fm_weight_average_swapped(a));
    assert_memory_equal(fm_clip_trainable(m), w1, n * sizeof *w1);

    /* checkpoint round trip, and the refusals */
    fm_optimizer *o = NULL;
    assert_int_equal(fm_optimizer_create(&o, m), FM_OK);
    char path[] = "/tmp/fedmm-ema-XXXXXX", plain[] = "/tmp/fedmm-ema-plain-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    fd = mkstemp(plain);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fm_weight_average_swap(a), FM_OK); /* a checkpoint of swapped state would be wrong: refused */
    EXPECT_FAIL(fm_checkpoint_save(m, o, a, path), FM_ERR_STATE, "swapped into the model");
    assert_int_equal(fm_weight_average_swap(a), FM_OK);
    assert_int_equal(fm_checkpoint_save(m, o, a, path), FM_OK);
    assert_int_equal(fm_weight_average_swap(a), FM_OK);
    EXPECT_FAIL(fm_checkpoint_load(m, o, a, path), FM_ERR_STATE, "swapped into the model");
    assert_int_equal(fm_weight_average_swap(a), FM_OK);
    assert_int_equal(fm_checkpoint_save(m, o, NULL, plain), FM_OK);
    assert_int_equal(fm_clip_set_trainable(m, w0, n), FM_OK);
    assert_int_equal(fm_weight_average_restart(a), FM_OK); /* the average is now w0 */
    EXPECT_FAIL(fm_checkpoint_load(m, o, a, plain), FM_ERR_CONFIG, "has no weight average");
    EXPECT_FAIL(fm_checkpoint_load(m, o, NULL, path), FM_ERR_CONFIG, "holds a weight average");
    assert_memory_equal(fm_clip_trainable(m), w0, n * sizeof *w0); /* unchanged by the refusals */
    assert_int_equal(fm_weight_average_get(a, got), FM_OK);
    assert_memory_equal(got, w0, n * sizeof *got);
    assert_int_equal(fm_checkpoint_load(m, o, a, path), FM_OK);
    assert_memory_equal(fm_clip_trainable(m), w1, n * sizeof *w1);
    assert_int_equal(fm_weight_average_get(a, got), FM_OK);
    assert_memory_equal(got, avg1, n * sizeof *got);

    /* a non-finite average is refused */
    got[3] = NAN;
    EXPECT_FAIL(fm_weight_average_set(a, got), FM_ERR_NOT_FINITE, "non-finite");
    assert_int_equal(fm_weight_average_get(a, got), FM_OK);
    assert_memory_equal(got, avg1, n * sizeof *got);
    unlink(path);
    unlink(plain);
    fm_optimizer_destroy(o);
    fm_weight_average_destroy(a);
    free(avg1);
    free(w0);
    free(w1);
    free(got);
    fm_clip_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_bf16_refused),
        cmocka_unit_test(test_trainable_host_copies),
        cmocka_unit_test(test_weight_average),
    };
    return cmocka_run_group_tests_name("clip precision and host copies", tests, NULL, NULL);
}
