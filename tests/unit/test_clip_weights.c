/* CLIP checkpoints: save / load round trips bit-exact (whole model and adapters), F16 / BF16 files load, HF's
 * position_ids buffers are ignored, and a file with a missing tensor, an extra tensor or a wrong shape is
 * refused with a message naming it, leaving the model unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/clip.h"
#include "fedmm/safetensors.h"
#include "fedmm/threads.h"
#include "testutil.h"

static void small_config(fm_clip_config *c)
{
    assert_int_equal(fm_clip_config_preset("clip-tiny", c), FM_OK);
    c->image_size = 16, c->patch_size = 8;
    c->vision_width = 16, c->vision_layers = 2, c->vision_heads = 2, c->vision_mlp = 24;
    c->vocab_size = 29, c->context_length = 7;
    c->text_width = 12, c->text_layers = 1, c->text_heads = 3, c->text_mlp = 20;
    c->embed_dim = 10;
    c->lora_rank = 2, c->lora_alpha = 3.0f, c->lora_targets = FM_LORA_Q | FM_LORA_V | FM_LORA_FC2;
    c->train_projections = 1;
}

static fm_clip *make_model(const fm_clip_config *cfg, uint64_t seed)
{
    fm_clip *m = NULL;
    if (fm_clip_create(&m, cfg, FM_DEVICE_CPU, seed) != FM_OK)
        fail_msg("fm_clip_create: %s", fm_last_error());
    /* random adapters, so that a round trip of zeros cannot pass by accident */
    fm_rng rng = fm_rng_make(fm_test_seed(), seed);
    fm_test_fill(&rng, fm_clip_trainable(m), fm_clip_num_trainable(m), -0.5f, 0.5f);
    return m;
}

static void temp_path(char *buf, size_t len, const char *tag)
{
    const char *dir = getenv("TMPDIR");
    snprintf(buf, len, "%s/fedmm_clip_weights_%ld_%s.safetensors", dir && *dir ? dir : "/tmp", (long)getpid(), tag);
}

static void *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = fm_test_alloc((size_t)n);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void test_save_load_round_trip(void **state)
{
    (void)state;
    fm_clip_config cfg;
    small_config(&cfg);
    char p1[512], p2[512];
    temp_path(p1, sizeof p1, "a");
    temp_path(p2, sizeof p2, "b");
    fm_clip *a = make_model(&cfg, 1), *b = make_model(&cfg, 2);
    fm_tensor ta, tb;
    assert_int_equal(fm_clip_param(a, "vision_model.encoder.layers.1.mlp.fc1.weight", &ta), FM_OK);
    assert_int_equal(fm_clip_param(b, "vision_model.encoder.layers.1.mlp.fc1.weight", &tb), FM_OK);
    assert_true(memcmp(ta.data, tb.data, fm_tensor_nbytes(&ta)) != 0);
    if (fm_clip_save(a, p1) != FM_OK)
        fail_msg("save: %s", fm_last_error());
    if (fm_clip_load(b, p1) != FM_OK)
        fail_msg("load: %s", fm_last_error());
    assert_int_equal(fm_clip_save(b, p2), FM_OK);
    size_t n1, n2;
    void *f1 = read_all(p1, &n1), *f2 = read_all(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(f1, f2, n1);
    assert_memory_equal(ta.data, tb.data, fm_tensor_nbytes(&ta));
    /* the file holds HF names only, with the real shapes */
    fm_st_file *st = NULL;
    assert_int_equal(fm_st_open(&st, p1), FM_OK);
    assert_non_null(fm_st_find(st, "vision_model.pre_layrnorm.weight"));
    assert_non_null(fm_st_find(st, "text_model.final_layer_norm.bias"));
    const fm_st_tensor_info *pw = fm_st_find(st, "vision_model.embeddings.patch_embedding.weight");
    assert_non_null(pw);
    assert_int_equal(pw->ndim, 4);
    assert_int_equal(pw->shape[1], 3);
    const fm_st_tensor_info *ls = fm_st_find(st, "logit_scale");
    assert_non_null(ls);
    assert_int_equal(ls->ndim, 0);
    for (size_t i = 0; i < fm_st_count(st); i++)
        assert_null(strstr(fm_st_at(st, i)->name, "lora"));
    fm_st_close(st);
    free(f1);
    free(f2);
    fm_clip_destroy(a);
    fm_clip_destroy(b);
    unlink(p1);
    unlink(p2);
}

static void test_adapters_round_trip(void **state)
{
    (void)state;
    fm_clip_config cfg;
    small_config(&cfg);
    char p[512];
    temp_path(p, sizeof p, "adapters");
    fm_clip *a = make_model(&cfg, 3), *b = make_model(&cfg, 4);
    size_t n = fm_clip_num_trainable(a);
    assert_int_equal(fm_clip_save_adapters(a, p), FM_OK);
    assert_int_equal(fm_clip_load_adapters(b, p), FM_OK);
    assert_memory_equal(fm_clip_trainable(a), fm_clip_trainable(b), n * sizeof(float));
    /* PEFT names in the file */
    fm_st_file *st = NULL;
    assert_int_equal(fm_st_open(&st, p), FM_OK);
    assert_int_equal(fm_st_count(st), fm_clip_num_slices(a));
    assert_non_null(fm_st_find(st, "base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"));
    assert_non_null(fm_st_find(st, "base_model.model.text_model.encoder.layers.0.mlp.fc2.lora_B.weight"));
    assert_non_null(fm_st_find(st, "base_model.model.logit_scale"));
    assert_null(fm_st_find(st, "base_model.model.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight"));
    fm_st_close(st);
    /* a model with another alpha refuses them; one with another rank too */
    fm_clip_config other = cfg;
    other.lora_alpha = 4.0f;
    fm_clip *c = make_model(&other, 5);
    assert_int_equal(fm_clip_load_adapters(c, p), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "lora_alpha"));
    fm_clip_destroy(c);
    other = cfg;
    other.lora_rank = 3;
    c = make_model(&other, 5);
    assert_int_not_equal(fm_clip_load_adapters(c, p), FM_OK);
    assert_non_null(strstr(fm_last_error(), "lora_rank"));
    fm_clip_destroy(c);
    fm_clip_destroy(a);
    fm_clip_destroy(b);
    unlink(p);
}

/* Rewrites `src` into `dst` with tensor `drop` left out, tensor `reshape` given a wrong shape (one more row,
 * data taken from a zeroed buffer), `extra` added, and every float tensor stored as `dtype`. */
static void rewrite(const char *src, const char *dst, const char *drop, const char *reshape, const char *extra,
                    fm_st_dtype dtype)
{
    fm_st_file *in = NULL;
    assert_int_equal(fm_st_open(&in, src), FM_OK);
    fm_st_writer *w = NULL;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    size_t n = fm_st_count(in);
    float **bufs = fm_test_alloc(n * sizeof *bufs);
    float *zeros = fm_test_alloc(1 << 20);
    for (size_t i = 0; i < n; i++) {
        const fm_st_tensor_info *t = fm_st_at(in, i);
        if (drop && strcmp(t->name, drop) == 0)
            continue;
        int64_t shape[FM_ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        bufs[i] = fm_test_alloc(t->numel * sizeof(float));
        assert_int_equal(fm_st_info_to_f32(t, bufs[i], t->numel), FM_OK);
        const float *data = bufs[i];
        if (reshape && strcmp(t->name, reshape) == 0) {
            shape[0] += 1;
            data = zeros;
        }
        assert_int_equal(fm_st_writer_add_f32(w, t->name, dtype, t->ndim, shape, data), FM_OK);
    }
    if (extra)
        assert_int_equal(fm_st_writer_add_f32(w, extra, FM_ST_F32, 1, (const int64_t[]){4}, zeros), FM_OK);
    /* HF checkpoints carry an int64 position_ids buffer: always present, always ignored */
    int64_t ids[7] = {0, 1, 2, 3, 4, 5, 6};
    const int64_t ids_shape[2] = {1, 7};
    assert_int_equal(fm_st_writer_add(w, "text_model.embeddings.position_ids", FM_ST_I64, 2, ids_shape, ids), FM_OK);
    if (fm_st_write(w, dst) != FM_OK)
        fail_msg("write %s: %s", dst, fm_last_error());
    fm_st_writer_free(w);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(zeros);
    fm_st_close(in);
}

static void test_bad_checkpoints(void **state)
{
    (void)state;
    fm_clip_config cfg;
    small_config(&cfg);
    char good[512], bad[512], again[512];
    temp_path(good, sizeof good, "good");
    temp_path(bad, sizeof bad, "bad");
    temp_path(again, sizeof again, "again");
    fm_clip *a = make_model(&cfg, 6), *b = make_model(&cfg, 7);
    assert_int_equal(fm_clip_save(a, good), FM_OK);
    assert_int_equal(fm_clip_save(b, again), FM_OK);
    size_t nb0;
    void *b0 = read_all(again, &nb0);

    rewrite(good, bad, NULL, NULL, NULL, FM_ST_F32); /* only the ignorable position_ids added */
    if (fm_clip_load(b, bad) != FM_OK)
        fail_msg("load with position_ids: %s", fm_last_error());
    assert_int_equal(fm_clip_load(b, again), FM_OK); /* back to b's own weights */

    rewrite(good, bad, "text_model.encoder.layers.0.mlp.fc1.bias", NULL, NULL, FM_ST_F32);
    assert_int_equal(fm_clip_load(b, bad), FM_ERR_RANGE);
    print_message("missing: %s\n", fm_last_error());
    assert_non_null(strstr(fm_last_error(), "text_model.encoder.layers.0.mlp.fc1.bias"));
    assert_non_null(strstr(fm_last_error(), "missing"));

    rewrite(good, bad, NULL, NULL, "vision_model.encoder.layers.9.mlp.fc1.weight", FM_ST_F32);
    assert_int_equal(fm_clip_load(b, bad), FM_ERR_RANGE);
    print_message("extra: %s\n", fm_last_error());
    assert_non_null(strstr(fm_last_error(), "vision_model.encoder.layers.9.mlp.fc1.weight"));
    assert_non_null(strstr(fm_last_error(), "unexpected"));

    rewrite(good, bad, NULL, "visual_projection.weight", NULL, FM_ST_F32);
    assert_int_equal(fm_clip_load(b, bad), FM_ERR_SHAPE);
    print_message("shape: %s\n", fm_last_error());
    assert_non_null(strstr(fm_last_error(), "visual_projection.weight"));

    /* every failure left b as it was: saving it gives its original bytes */
    assert_int_equal(fm_clip_save(b, again), FM_OK);
    size_t nb1;
    void *b1 = read_all(again, &nb1);
    assert_int_equal(nb0, nb1);
    assert_memory_equal(b0, b1, nb0);

    assert_int_equal(fm_clip_load(b, "/nonexistent/dir/clip.safetensors"), FM_ERR_IO);
    free(b0);
    free(b1);
    fm_clip_destroy(a);
    fm_clip_destroy(b);
    unlink(good);
    unlink(bad);
    unlink(again);
}

/* Half-precision checkpoints (as HF publishes them) load, rounded as the format says. */
static void test_half_precision(void **state)
{
    (void)state;
    fm_clip_config cfg;
    small_config(&cfg);
    char good[512], half[512];
    temp_path(good, sizeof good, "f32");
    temp_path(half, sizeof half, "half");
    fm_clip *a = make_model(&cfg, 8), *b = make_model(&cfg, 9);
    assert_int_equal(fm_clip_save(a, good), FM_OK);
    const fm_st_dtype dtypes[2] = {FM_ST_BF16, FM_ST_F16};
    for (int d = 0; d < 2; d++) {
        rewrite(good, half, NULL, NULL, NULL, dtypes[d]);
        if (fm_clip_load(b, half) != FM_OK)
            fail_msg("load %s: %s", fm_st_dtype_name(dtypes[d]), fm_last_error());
        const char *names[3] = {"text_model.embeddings.token_embedding.weight", "logit_scale",
                                "vision_model.encoder.layers.1.self_attn.out_proj.weight"};
        for (int k = 0; k < 3; k++) {
            fm_tensor ta, tb;
            assert_int_equal(fm_clip_param(a, names[k], &ta), FM_OK);
            assert_int_equal(fm_clip_param(b, names[k], &tb), FM_OK);
            const float *x = ta.data, *y = tb.data;
            for (int64_t i = 0; i < fm_tensor_numel(&ta); i++) {
                float want = dtypes[d] == FM_ST_BF16 ? fm_st_bf16_to_f32(fm_st_f32_to_bf16(x[i]))
                                                     : fm_st_f16_to_f32(fm_st_f32_to_f16(x[i]));
                if (y[i] != want)
                    fail_msg("%s %s[%lld]: %g, want %g", fm_st_dtype_name(dtypes[d]), names[k], (long long)i, y[i],
                             want);
            }
        }
    }
    fm_clip_destroy(a);
    fm_clip_destroy(b);
    unlink(good);
    unlink(half);
}

/* The slice table tiles the trainable vector and says where each piece lives. */
static void test_slices(void **state)
{
    (void)state;
    fm_clip_config cfg;
    small_config(&cfg);
    for (int ft = 0; ft < 2; ft++) {
        cfg.full_finetune = ft;
        fm_clip *m = make_model(&cfg, 10);
        size_t off = 0, adapters = 0, ls = 0;
        for (size_t i = 0; i < fm_clip_num_slices(m); i++) {
            const fm_clip_slice *s = fm_clip_slice_at(m, i);
            assert_int_equal(s->offset, off);
            size_t numel = 1;
            for (int d = 0; d < s->ndim; d++)
                numel *= (size_t)s->shape[d];
            assert_int_equal(numel, s->numel);
            off += s->numel;
            if (strstr(s->name, ".lora_")) {
                adapters++;
                assert_non_null(strstr(s->name, "base_model.model."));
                assert_true(s->layer >= 0);
                assert_true(s->tower == FM_CLIP_TOWER_VISION || s->tower == FM_CLIP_TOWER_TEXT);
                assert_int_equal(s->decay, 1);
            }
            if (strstr(s->name, "logit_scale")) {
                ls++;
                assert_int_equal(s->tower, FM_CLIP_TOWER_NONE);
                assert_int_equal(s->decay, 0);
                assert_string_equal(s->name, ft ? "logit_scale" : "base_model.model.logit_scale");
            }
            if (strstr(s->name, "bias") || strstr(s->name, "layer_norm"))
                assert_int_equal(s->decay, 0);
        }
        assert_int_equal(off, fm_clip_num_trainable(m));
        assert_int_equal(ls, 1);
        /* q, v, fc2 in 2 + 1 layers, A and B each; none under full fine-tuning */
        assert_int_equal(adapters, ft ? 0 : 3 * 3 * 2);
        assert_null(fm_clip_slice_at(m, fm_clip_num_slices(m)));
        fm_tensor t;
        assert_int_equal(fm_clip_param(m, "no.such.tensor", &t), FM_ERR_RANGE);
        assert_non_null(strstr(fm_last_error(), "no.such.tensor"));
        fm_clip_destroy(m);
    }
}

int main(void)
{
    fm_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_load_round_trip),
        cmocka_unit_test(test_adapters_round_trip),
        cmocka_unit_test(test_bad_checkpoints),
        cmocka_unit_test(test_half_precision),
        cmocka_unit_test(test_slices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
