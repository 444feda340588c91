/* Tests of the procedural shapes dataset: determinism, grammar, label balance, labels that match the
 * pixels, normalisation, PNG output and argument checks. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/image.h"
#include "fedmm/synth.h"
#include "fedmm/threads.h"

/* The words the brief allows in captions. */
static const char *const allowed_words[] = {
    "a",      "an",     "the",     "small",   "medium",  "large",  "big",       "tiny",   "red",    "green",    "blue",
    "yellow", "purple", "orange",  "white",   "black",   "gray",   "cyan",      "circle", "square", "triangle", "star",
    "cross",  "ring",   "diamond", "plain",   "striped", "dotted", "checkered", "solid",  "to",     "of",       "left",
    "right",  "above",  "below",   "at",      "on",      "in",     "top",       "bottom", "center", "corner",   "next",
    "and",    "with",   "photo",   "picture", "shape",   "image",  "is",        "there",
};

static fm_synth_config test_config(void)
{
    fm_synth_config c = fm_synth_default_config();
    c.seed = fm_test_seed();
    return c;
}

static int in_list(const char *w, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(w, list[i]) == 0)
            return 1;
    return 0;
}

/* Every space-separated word of `text` is in the synth vocabulary. */
static void assert_words_in_vocabulary(const char *text)
{
    size_t nv;
    const char *const *vocab = fm_synth_vocabulary(&nv);
    char buf[FM_CAPTION_MAX];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
        if (!in_list(w, vocab, nv))
            fail_msg("word '%s' of \"%s\" is not in the vocabulary", w, text);
}

static void test_vocabulary_is_sorted_subset(void **state)
{
    (void)state;
    size_t nv;
    const char *const *vocab = fm_synth_vocabulary(&nv);
    assert_true(nv >= 40);
    for (size_t i = 0; i < nv; i++) {
        if (!in_list(vocab[i], allowed_words, sizeof allowed_words / sizeof allowed_words[0]))
            fail_msg("vocabulary word '%s' is not an allowed caption word", vocab[i]);
        if (i > 0 && strcmp(vocab[i - 1], vocab[i]) >= 0)
            fail_msg("vocabulary not sorted/unique at '%s', '%s'", vocab[i - 1], vocab[i]);
    }
}

static void test_same_seed_same_bytes(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    c.image_size = 37; /* odd size */
    const size_t per = 3 * 37 * 37;
    const int count = 13;
    float *batch = fm_test_alloc((size_t)count * per * sizeof(float));
    float *one = fm_test_alloc(per * sizeof(float));
    char(*caps)[FM_CAPTION_MAX] = fm_test_alloc((size_t)count * FM_CAPTION_MAX);
    fm_synth_labels *labels = fm_test_alloc((size_t)count * sizeof *labels);
    fm_rng rng = fm_rng_make(fm_test_seed(), 101);
    const int64_t first = (int64_t)fm_rng_below(&rng, 5000);
    int saved = fm_get_num_threads();
    fm_set_num_threads(2);
    assert_int_equal(fm_synth_batch(&c, FM_SPLIT_TRAIN, first, count, batch, caps, labels), FM_OK);
    fm_set_num_threads(1);
    for (int i = 0; i < count; i++) {
        char cap[FM_CAPTION_MAX];
        fm_synth_labels l;
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, first + i, one, cap, sizeof cap, &l), FM_OK);
        assert_memory_equal(one, batch + (size_t)i * per, per * sizeof(float));
        assert_string_equal(cap, caps[i]);
        assert_memory_equal(&l, &labels[i], sizeof l);
    }
    fm_set_num_threads(saved);
    /* A different seed gives a different sample. */
    c.seed ^= 0x5555;
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, first, one, NULL, 0, NULL), FM_OK);
    int differs = 0;
    for (size_t j = 0; j < per && !differs; j++)
        differs = one[j] != batch[j];
    assert_true(differs);
    free(batch);
    free(one);
    free(caps);
    free(labels);
}

static double mean_abs_diff(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += fabs((double)a[i] - (double)b[i]);
    return s / (double)n;
}

static void test_different_index_or_split_differs(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    const size_t per = 3 * 32 * 32;
    float *a = fm_test_alloc(per * sizeof(float)), *b = fm_test_alloc(per * sizeof(float));
    for (int64_t i = 0; i < 50; i++) {
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, i, a, NULL, 0, NULL), FM_OK);
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, i + 1, b, NULL, 0, NULL), FM_OK);
        assert_true(mean_abs_diff(a, b, per) > 0.01);
        /* Same index in another split is another sample (disjoint index spaces). */
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TEST, i, b, NULL, 0, NULL), FM_OK);
        assert_true(mean_abs_diff(a, b, per) > 0.01);
    }
    free(a);
    free(b);
}

/* Samples with identical labels (one shape) still look different even without pixel noise: jitter of
 * position, size, colour, rotation, texture phase and background. */
static void test_same_labels_look_different(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    c.second_shape_prob = 0.0f;
    c.noise_std = 0.0f;
    c.split_size[FM_SPLIT_TRAIN] = 30000;
    const int n = 30000;
    fm_synth_labels *labels = fm_test_alloc((size_t)n * sizeof *labels);
    assert_int_equal(fm_synth_batch(&c, FM_SPLIT_TRAIN, 0, n, NULL, NULL, labels), FM_OK);
    /* Index samples by their label tuple; look for collisions. */
    const int buckets = 7 * 10 * 3 * 9 * 4;
    int *first = fm_test_alloc((size_t)buckets * sizeof(int));
    for (int i = 0; i < buckets; i++)
        first[i] = -1;
    const size_t per = 3 * 32 * 32;
    float *a = fm_test_alloc(per * sizeof(float)), *b = fm_test_alloc(per * sizeof(float));
    int pairs = 0;
    for (int i = 0; i < n && pairs < 40; i++) {
        const int32_t *l = labels[i].attr;
        int key = (((l[0] * 10 + l[1]) * 3 + l[2]) * 9 + l[3]) * 4 + l[4];
        if (first[key] < 0) {
            first[key] = i;
            continue;
        }
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, first[key], a, NULL, 0, NULL), FM_OK);
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, i, b, NULL, 0, NULL), FM_OK);
        double d = mean_abs_diff(a, b, per);
        if (!(d > 0.02))
            fail_msg("samples %d and %d have the same labels and look alike (mean |diff| %g)", first[key], i, d);
        pairs++;
    }
    assert_int_equal(pairs, 40);
    free(first);
    free(labels);
    free(a);
    free(b);
}

static void test_captions_mention_labels(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    const int n = 600;
    char(*caps)[FM_CAPTION_MAX] = fm_test_alloc((size_t)n * FM_CAPTION_MAX);
    fm_synth_labels *labels = fm_test_alloc((size_t)n * sizeof *labels);
    assert_int_equal(fm_synth_batch(&c, FM_SPLIT_PUBLIC, 7, n, NULL, caps, labels), FM_OK);
    static const char *const size_syn[3][2] = {{"small", "tiny"}, {"medium", "medium"}, {"large", "big"}};
    static const char *const plain_syn[2] = {"plain", "solid"};
    int two = 0, templates_seen = 0;
    char seen_prefix[8][16] = {{0}};
    for (int i = 0; i < n; i++) {
        const char *cap = caps[i];
        const int32_t *l = labels[i].attr;
        assert_true(strlen(cap) > 10);
        assert_words_in_vocabulary(cap);
        char padded[FM_CAPTION_MAX + 2];
        snprintf(padded, sizeof padded, " %s ", cap);
        char word[64];
#define HAS_WORD(w) (snprintf(word, sizeof word, " %s ", (w)), strstr(padded, word) != NULL)
        if (!HAS_WORD(fm_synth_class_name(FM_ATTR_KIND, l[FM_ATTR_KIND])))
            fail_msg("caption \"%s\" does not name kind %s", cap, fm_synth_class_name(FM_ATTR_KIND, l[0]));
        if (!HAS_WORD(fm_synth_class_name(FM_ATTR_COLOR, l[FM_ATTR_COLOR])))
            fail_msg("caption \"%s\" does not name colour %s", cap, fm_synth_class_name(FM_ATTR_COLOR, l[1]));
        if (!HAS_WORD(size_syn[l[FM_ATTR_SIZE]][0]) && !HAS_WORD(size_syn[l[FM_ATTR_SIZE]][1]))
            fail_msg("caption \"%s\" does not name size %s", cap, fm_synth_class_name(FM_ATTR_SIZE, l[2]));
        if (l[FM_ATTR_TEXTURE] == 0 ? !HAS_WORD(plain_syn[0]) && !HAS_WORD(plain_syn[1])
                                    : !HAS_WORD(fm_synth_class_name(FM_ATTR_TEXTURE, l[FM_ATTR_TEXTURE])))
            fail_msg("caption \"%s\" does not name texture %s", cap, fm_synth_class_name(FM_ATTR_TEXTURE, l[4]));
        /* Position: every word of the class name ("top left") appears, and "center" only for the centre. */
        char pos[32];
        snprintf(pos, sizeof pos, "%s", fm_synth_class_name(FM_ATTR_POSITION, l[FM_ATTR_POSITION]));
        for (char *save = NULL, *w = strtok_r(pos, " ", &save); w; w = strtok_r(NULL, " ", &save))
            if (!HAS_WORD(w))
                fail_msg("caption \"%s\" does not place the shape at %s", cap,
                         fm_synth_class_name(FM_ATTR_POSITION, l[3]));
        if (l[FM_ATTR_POSITION] != 4 && HAS_WORD("center"))
            fail_msg("caption \"%s\" says center for position %d", cap, l[3]);
        if (labels[i].num_shapes == 2) {
            two++;
            assert_true(HAS_WORD(fm_synth_class_name(FM_ATTR_KIND, labels[i].second[FM_ATTR_KIND])));
            assert_true(HAS_WORD(fm_synth_class_name(FM_ATTR_COLOR, labels[i].second[FM_ATTR_COLOR])));
            assert_int_not_equal(labels[i].second[FM_ATTR_POSITION], l[FM_ATTR_POSITION]);
        } else {
            assert_int_equal(labels[i].num_shapes, 1);
            assert_int_equal(labels[i].second[FM_ATTR_KIND], -1);
        }
#undef HAS_WORD
        /* Several templates: count distinct first two words. */
        char head[16];
        snprintf(head, sizeof head, "%.15s", cap);
        int known = 0;
        for (int t = 0; t < templates_seen; t++)
            known |= strcmp(seen_prefix[t], head) == 0;
        if (!known && templates_seen < 8)
            snprintf(seen_prefix[templates_seen++], sizeof seen_prefix[0], "%s", head);
    }
    assert_true(two > n / 4 && two < 3 * n / 4);
    assert_true(templates_seen >= 6);
    /* "an" before vowels, "a" before consonants. */
    for (int i = 0; i < n; i++) {
        assert_null(strstr(caps[i], " a orange"));
        assert_null(strstr(caps[i], " an small"));
    }
    free(caps);
    free(labels);
}

static void test_class_balance(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    const int n = 2000;
    int32_t *lab = fm_test_alloc((size_t)n * sizeof(int32_t));
    for (int a = 0; a < FM_ATTR_COUNT; a++) {
        const int k = fm_synth_num_classes((fm_attribute)a);
        assert_true(k >= 3);
        assert_int_equal(fm_synth_label_array(&c, FM_SPLIT_TRAIN, 100, n, (fm_attribute)a, lab), FM_OK);
        int counts[16] = {0};
        for (int i = 0; i < n; i++) {
            assert_true(lab[i] >= 0 && lab[i] < k);
            counts[lab[i]]++;
        }
        const double expect = (double)n / k;
        for (int cl = 0; cl < k; cl++)
            if (fabs(counts[cl] - expect) > 0.3 * expect)
                fail_msg("attribute %s class %s: %d of %d samples, expected about %.0f",
                         fm_attribute_name((fm_attribute)a), fm_synth_class_name((fm_attribute)a, cl), counts[cl], n,
                         expect);
    }
    assert_int_equal(fm_synth_num_classes(FM_ATTR_KIND), 7);
    assert_int_equal(fm_synth_num_classes(FM_ATTR_COLOR), 10);
    assert_int_equal(fm_synth_num_classes(FM_ATTR_COUNT), 0);
    free(lab);
}

/* The labels describe the pixels: on plain, single-shape, noise-free samples the pixels close to the
 * labelled colour sit in the labelled grid cell, and their area grows with the size class. */
static void test_labels_match_pixels(void **state)
{
    (void)state;
    static const float palette[10][3] = {
        {0.86f, 0.12f, 0.12f}, {0.13f, 0.70f, 0.20f}, {0.15f, 0.30f, 0.90f}, {0.95f, 0.88f, 0.15f},
        {0.58f, 0.20f, 0.75f}, {1.00f, 0.55f, 0.05f}, {0.96f, 0.96f, 0.96f}, {0.06f, 0.06f, 0.06f},
        {0.50f, 0.50f, 0.50f}, {0.10f, 0.85f, 0.90f},
    };
    fm_synth_config c = test_config();
    c.second_shape_prob = 0.0f;
    c.noise_std = 0.0f;
    c.normalize = 0;
    c.image_size = 48;
    const int S = 48;
    const size_t plane = (size_t)S * S;
    float *img = fm_test_alloc(3 * plane * sizeof(float));
    double area_sum[3] = {0}, area_n[3] = {0};
    int checked = 0, cell_ok = 0;
    for (int64_t i = 0; checked < 300; i++) {
        fm_synth_labels l;
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, i, NULL, NULL, 0, &l), FM_OK);
        if (l.attr[FM_ATTR_TEXTURE] != 0)
            continue;
        assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, i, img, NULL, 0, NULL), FM_OK);
        const float *want = palette[l.attr[FM_ATTR_COLOR]];
        double sx = 0, sy = 0, cnt = 0;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                size_t at = (size_t)y * S + (size_t)x;
                float d = 0;
                for (int ch = 0; ch < 3; ch++)
                    d = fmaxf(d, fabsf(img[ch * plane + at] - want[ch]));
                if (d < 0.08f) {
                    sx += x + 0.5;
                    sy += y + 0.5;
                    cnt += 1;
                }
            }
        if (cnt < 4)
            fail_msg("sample %lld: almost no pixels of colour %s", (long long)i,
                     fm_synth_class_name(FM_ATTR_COLOR, l.attr[FM_ATTR_COLOR]));
        int col = (int)(sx / cnt / (S / 3.0)), row = (int)(sy / cnt / (S / 3.0));
        cell_ok += row * 3 + col == l.attr[FM_ATTR_POSITION];
        area_sum[l.attr[FM_ATTR_SIZE]] += cnt;
        area_n[l.attr[FM_ATTR_SIZE]] += 1;
        checked++;
    }
    if (cell_ok < 285)
        fail_msg("only %d of %d shapes are in their labelled cell", cell_ok, checked);
    const double small = area_sum[0] / area_n[0], medium = area_sum[1] / area_n[1], large = area_sum[2] / area_n[2];
    if (!(small * 1.5 < medium && medium * 1.4 < large))
        fail_msg("mean areas by size class not increasing: %.1f %.1f %.1f", small, medium, large);
    free(img);
}

static void test_normalisation(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    c.image_size = 21;
    const size_t plane = 21 * 21;
    float *norm = fm_test_alloc(3 * plane * sizeof(float)), *raw = fm_test_alloc(3 * plane * sizeof(float));
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TEXT_ONLY, 3, norm, NULL, 0, NULL), FM_OK);
    c.normalize = 0;
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TEXT_ONLY, 3, raw, NULL, 0, NULL), FM_OK);
    const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, stdv[3] = {0.26862954, 0.26130258, 0.27577711};
    double *want = fm_test_alloc(3 * plane * sizeof(double));
    double lo = 1e9, hi = -1e9;
    for (int ch = 0; ch < 3; ch++)
        for (size_t i = 0; i < plane; i++) {
            double r = raw[ch * plane + i];
            lo = fmin(lo, r);
            hi = fmax(hi, r);
            want[ch * plane + i] = (r - mean[ch]) / stdv[ch];
        }
    assert_true(lo >= 0.0 && hi <= 1.0 && hi - lo > 0.3);
    fm_test_assert_close("normalised pixels", norm, want, 3 * plane, 1e-5, 1e-5);
    free(norm);
    free(raw);
    free(want);
}

static void test_class_prompts(void **state)
{
    (void)state;
    char buf[FM_CAPTION_MAX];
    for (int a = 0; a < FM_ATTR_COUNT; a++) {
        for (int cl = 0; cl < fm_synth_num_classes((fm_attribute)a); cl++) {
            assert_int_equal(fm_synth_class_prompt((fm_attribute)a, cl, buf, sizeof buf), FM_OK);
            assert_words_in_vocabulary(buf);
            assert_non_null(strstr(buf, "photo"));
            const char *name = fm_synth_class_name((fm_attribute)a, cl);
            char first[32];
            snprintf(first, sizeof first, "%s", name);
            first[strcspn(first, " ")] = '\0';
            assert_non_null(strstr(buf, first));
        }
    }
    assert_int_equal(fm_synth_class_prompt(FM_ATTR_KIND, 0, buf, sizeof buf), FM_OK);
    assert_string_equal(buf, "a photo of a circle");
    assert_int_equal(fm_synth_class_prompt(FM_ATTR_COLOR, 5, buf, sizeof buf), FM_OK);
    assert_string_equal(buf, "a photo of an orange shape");
    assert_int_equal(fm_synth_class_prompt(FM_ATTR_POSITION, 0, buf, sizeof buf), FM_OK);
    assert_string_equal(buf, "a photo of a shape in the top left corner");
    assert_int_equal(fm_synth_class_prompt(FM_ATTR_KIND, 7, buf, sizeof buf), FM_ERR_RANGE);
    assert_int_equal(fm_synth_class_prompt(FM_ATTR_KIND, 0, buf, 8), FM_ERR_RANGE);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    fm_synth_config c = test_config();
    float img[3 * 32 * 32];
    char cap[8];
    c.split_size[FM_SPLIT_TEST] = 10;
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TEST, 10, img, NULL, 0, NULL), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "test"));
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TEST, -1, img, NULL, 0, NULL), FM_ERR_RANGE);
    assert_int_equal(fm_synth_batch(&c, FM_SPLIT_TEST, 5, 6, NULL, NULL, NULL), FM_ERR_RANGE);
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_COUNT, 0, img, NULL, 0, NULL), FM_ERR_RANGE);
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TEST, 0, NULL, cap, sizeof cap, NULL), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "does not fit"));
    c.image_size = 15;
    assert_int_equal(fm_synth_validate(&c), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "image_size"));
    c = test_config();
    c.noise_std = NAN;
    assert_int_equal(fm_synth_validate(&c), FM_ERR_RANGE);
    fm_split sp;
    fm_attribute at;
    assert_int_equal(fm_split_parse("image-only", &sp), FM_OK);
    assert_int_equal(sp, FM_SPLIT_IMAGE_ONLY);
    assert_int_equal(fm_split_parse("public", &sp), FM_OK);
    assert_int_equal(sp, FM_SPLIT_PUBLIC);
    assert_int_equal(fm_split_parse("validation", &sp), FM_ERR_CONFIG);
    assert_int_equal(fm_attribute_parse("colour", &at), FM_OK);
    assert_int_equal(at, FM_ATTR_COLOR);
    assert_int_equal(fm_attribute_parse("weight", &at), FM_ERR_CONFIG);
}

static void test_png_output(void **state)
{
    (void)state;
    char dir[] = "/tmp/fedmm-synth-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char one[128], grid[128];
    snprintf(one, sizeof one, "%s/one.png", dir);
    snprintf(grid, sizeof grid, "%s/grid.png", dir);
    fm_synth_config c = test_config();
    c.image_size = 19;
    const size_t plane = 19 * 19;
    float *img = fm_test_alloc(3 * plane * sizeof(float));
    assert_int_equal(fm_synth_sample(&c, FM_SPLIT_TRAIN, 42, img, NULL, 0, NULL), FM_OK);
    assert_int_equal(fm_synth_write_png(&c, img, 3, one), FM_OK);
    fm_image im;
    assert_int_equal(fm_image_load(one, &im), FM_OK);
    assert_int_equal(im.width, 57);
    assert_int_equal(im.height, 57);
    const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, stdv[3] = {0.26862954, 0.26130258, 0.27577711};
    for (int y = 0; y < 57; y++)
        for (int x = 0; x < 57; x++)
            for (int ch = 0; ch < 3; ch++) {
                double v = img[ch * plane + (size_t)(y / 3) * 19 + (size_t)(x / 3)] * stdv[ch] + mean[ch];
                double got = im.pixels[((size_t)y * 57 + (size_t)x) * 3 + (size_t)ch];
                if (fabs(got - v * 255.0) > 0.51)
                    fail_msg("PNG pixel (%d, %d, %d) = %g, want %g", x, y, ch, got, v * 255.0);
            }
    fm_image_free(&im);
    assert_int_equal(fm_synth_render_png_grid(&c, FM_SPLIT_TEST, 0, 2, 3, 2, grid), FM_OK);
    assert_int_equal(fm_image_load(grid, &im), FM_OK);
    assert_int_equal(im.width, 3 * (38 + 2) + 2);
    assert_int_equal(im.height, 2 * (38 + 2) + 2);
    fm_image_free(&im);
    remove(one);
    remove(grid);
    rmdir(dir);
    free(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocabulary_is_sorted_subset),
        cmocka_unit_test(test_same_seed_same_bytes),
        cmocka_unit_test(test_different_index_or_split_differs),
        cmocka_unit_test(test_same_labels_look_different),
        cmocka_unit_test(test_captions_mention_labels),
        cmocka_unit_test(test_class_balance),
        cmocka_unit_test(test_labels_match_pixels),
        cmocka_unit_test(test_normalisation),
        cmocka_unit_test(test_class_prompts),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_png_output),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
