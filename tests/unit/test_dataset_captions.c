/* Caption-file datasets: a JSONL file with PNG / JPEG images becomes batches of preprocessed images and
 * tokenized captions; a missing image or a bad index is a clear error; the model trains and evaluates on it
 * (zero-shot is not defined without labels). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/clip.h"
#include "fedmm/dataset.h"
#include "fedmm/image.h"
#include "fedmm/tokenizer.h"
#include "fedmm/train.h"
#include "testutil.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/fedmm-captions-XXXXXX");
    assert_non_null(mkdtemp(dir));
    fm_rng rng = fm_rng_make(fm_test_seed(), 11);
    char path[512];
    snprintf(path, sizeof path, "%s/pairs.jsonl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    static const char *captions[] = {"a small red circle", "a large blue square at the top", "a green star",
                                     "a striped yellow triangle", "a white ring in the center"};
    for (int i = 0; i < 5; i++) {
        int w = 20 + 7 * i, h = 40 - 3 * i; /* odd, non-square sizes: resize and crop run */
        uint8_t *rgb = fm_test_alloc((size_t)w * h * 3);
        for (int p = 0; p < w * h * 3; p++)
            rgb[p] = (uint8_t)(fm_rng_u64(&rng) & 0xff);
        snprintf(path, sizeof path, "%s/img%d.%s", dir, i, i % 2 ? "jpg" : "png");
        if (i % 2)
            assert_int_equal(fm_image_write_jpeg(path, rgb, w, h, 90), FM_OK);
        else
            assert_int_equal(fm_image_write_png(path, rgb, w, h), FM_OK);
        free(rgb);
        fprintf(f, "{\"image\": \"img%d.%s\", \"caption\": \"%s\"}\n", i, i % 2 ? "jpg" : "png", captions[i]);
    }
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_batches_match_loader_and_tokenizer(void **state)
{
    (void)state;
    fm_tokenizer *tok = NULL;
    assert_int_equal(fm_tokenizer_builtin(&tok), FM_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/pairs.jsonl", dir);
    fm_dataset *ds = NULL;
    const int S = 16, T = 12;
    assert_int_equal(fm_dataset_captions(&ds, path, S, tok, T), FM_OK);
    assert_int_equal(fm_dataset_size(ds), 5);
    assert_false(fm_dataset_has_labels(ds));
    int64_t idx[3] = {4, 1, 2};
    float *img = fm_test_alloc(3 * 3 * S * S * sizeof(float)), *want = fm_test_alloc(3 * S * S * sizeof(float));
    int32_t tokens[3 * 12], eot[3], want_tok[12];
    fm_synth_labels labels[3];
    assert_int_equal(fm_dataset_batch(ds, idx, 3, img, tokens, eot, labels), FM_OK);
    for (int b = 0; b < 3; b++) {
        snprintf(path, sizeof path, "%s/img%lld.%s", dir, (long long)idx[b], idx[b] % 2 ? "jpg" : "png");
        assert_int_equal(fm_image_load_clip(path, S, want), FM_OK);
        assert_memory_equal(img + (size_t)b * 3 * S * S, want, 3 * S * S * sizeof(float));
        assert_int_equal(labels[b].attr[0], -1);
    }
    int n = 0, pos = 0;
    assert_int_equal(fm_tokenizer_encode_ex(tok, "a white ring in the center", want_tok, T, &n, &pos), FM_OK);
    assert_memory_equal(tokens, want_tok, sizeof want_tok);
    assert_int_equal(eot[0], pos);
    int64_t bad[1] = {5};
    assert_int_equal(fm_dataset_batch(ds, bad, 1, img, tokens, eot, NULL), FM_ERR_RANGE);
    int32_t ptok[12], peot[1];
    assert_int_equal(fm_dataset_class_prompts(ds, FM_ATTR_KIND, ptok, peot), FM_ERR_UNSUPPORTED);

    /* a model evaluates on it: retrieval defined, zero-shot not */
    fm_clip_config cfg;
    assert_int_equal(fm_clip_config_preset("clip-tiny", &cfg), FM_OK);
    cfg.image_size = S;
    cfg.context_length = T;
    cfg.vocab_size = fm_tokenizer_vocab_size(tok);
    fm_clip *m = NULL;
    assert_int_equal(fm_clip_create(&m, &cfg, FM_DEVICE_CPU, 3), FM_OK);
    fm_eval_result ev;
    assert_int_equal(fm_evaluate(m, ds, 0, &ev), FM_OK);
    assert_int_equal(ev.pairs, 5);
    assert_true(ev.retrieval.i2t_r10 == 1.0); /* 5 pairs: everything is in the top 10 */
    assert_true(ev.zs_acc != ev.zs_acc);      /* NaN */
    fm_clip_destroy(m);
    free(img);
    free(want);
    fm_dataset_destroy(ds);
    fm_tokenizer_free(tok);
}

static void test_bad_files(void **state)
{
    (void)state;
    fm_tokenizer *tok = NULL;
    assert_int_equal(fm_tokenizer_builtin(&tok), FM_OK);
    char path[512];
    fm_dataset *ds = NULL;
    assert_int_equal(fm_dataset_captions(&ds, "/nonexistent/pairs.jsonl", 16, tok, 12), FM_ERR_IO);
    /* a pair whose image is missing: the file loads, the batch that needs the image fails by name */
    snprintf(path, sizeof path, "%s/missing.jsonl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "{\"image\": \"nope.png\", \"caption\": \"a red circle\"}\n");
    fclose(f);
    assert_int_equal(fm_dataset_captions(&ds, path, 16, tok, 12), FM_OK);
    float img[3 * 16 * 16];
    int32_t tokens[12], eot[1];
    int64_t idx[1] = {0};
    fm_status s = fm_dataset_batch(ds, idx, 1, img, tokens, eot, NULL);
    assert_int_not_equal(s, FM_OK);
    assert_non_null(strstr(fm_last_error(), "nope.png"));
    /* tokens alone need no image */
    assert_int_equal(fm_dataset_batch(ds, idx, 1, NULL, tokens, eot, NULL), FM_OK);
    fm_dataset_destroy(ds);
    /* an empty file */
    snprintf(path, sizeof path, "%s/empty.jsonl", dir);
    f = fopen(path, "w");
    fclose(f);
    s = fm_dataset_captions(&ds, path, 16, tok, 12);
    assert_int_not_equal(s, FM_OK);
    fm_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batches_match_loader_and_tokenizer),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
