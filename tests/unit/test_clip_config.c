/* CLIP model configuration: presets, `key: value` setting with clear errors, validation, and the
 * models/<name>.yaml files agreeing with the presets of the same name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/clip.h"
#include "testutil.h"

static void test_presets(void **state)
{
    (void)state;
    fm_clip_config c;
    assert_int_equal(fm_clip_config_preset("clip-base", &c), FM_OK);
    assert_int_equal(c.image_size, 224);
    assert_int_equal(c.patch_size, 16);
    assert_int_equal(c.vision_width, 768);
    assert_int_equal(c.vision_heads, 12);
    assert_int_equal(c.text_width, 512);
    assert_int_equal(c.vocab_size, 49408);
    assert_int_equal(c.context_length, 77);
    assert_int_equal(c.embed_dim, 512);
    assert_int_equal(fm_clip_config_validate(&c), FM_OK);
    /* tiny and small take the vocabulary from the caller's tokenizer */
    assert_int_equal(fm_clip_config_preset("clip-tiny", &c), FM_OK);
    assert_int_equal(fm_clip_config_validate(&c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "vocab_size"));
    c.vocab_size = 300;
    assert_int_equal(fm_clip_config_validate(&c), FM_OK);
    assert_int_equal(fm_clip_config_preset("clip-small", &c), FM_OK);
    assert_int_equal(c.image_size, 64);
    assert_int_equal(fm_clip_config_preset("clip-huge", &c), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "clip-huge"));
}

static void test_set(void **state)
{
    (void)state;
    fm_clip_config c;
    assert_int_equal(fm_clip_config_preset("clip-tiny", &c), FM_OK);
    assert_int_equal(fm_clip_config_set(&c, "vision_layers", "3"), FM_OK);
    assert_int_equal(c.vision_layers, 3);
    assert_int_equal(fm_clip_config_set(&c, "lora_alpha", "16.5"), FM_OK);
    assert_float_equal(c.lora_alpha, 16.5f, 0.0f);
    assert_int_equal(fm_clip_config_set(&c, "lora_targets", "q, v,fc2"), FM_OK);
    assert_int_equal(c.lora_targets, FM_LORA_Q | FM_LORA_V | FM_LORA_FC2);
    assert_int_equal(fm_clip_config_set(&c, "lora_targets", "[all]"), FM_OK);
    assert_int_equal(c.lora_targets, FM_LORA_ALL);
    assert_int_equal(fm_clip_config_set(&c, "lora_towers", "text"), FM_OK);
    assert_int_equal(c.lora_towers, FM_CLIP_TOWER_TEXT);
    assert_int_equal(fm_clip_config_set(&c, "full_finetune", "true"), FM_OK);
    assert_int_equal(c.full_finetune, 1);
    assert_int_equal(fm_clip_config_set(&c, "hidden_act", "gelu"), FM_OK);
    assert_int_equal(c.hidden_act, FM_CLIP_ACT_GELU);

    const struct {
        const char *key, *value, *needle;
    } bad[] = {
        {"vision_depth", "3", "vision_depth"},   {"vision_layers", "three", "vision_layers"},
        {"vision_layers", "0", "vision_layers"}, {"vision_layers", "3.5", "vision_layers"},
        {"lora_alpha", "nan", "lora_alpha"},     {"lora_targets", "q,z", "'z'"},
        {"lora_towers", "audio", "lora_towers"}, {"full_finetune", "maybe", "full_finetune"},
        {"hidden_act", "relu", "hidden_act"},    {"image_size", "99999999999", "image_size"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fm_clip_config before = c;
        assert_int_equal(fm_clip_config_set(&c, bad[i].key, bad[i].value), FM_ERR_CONFIG);
        if (!strstr(fm_last_error(), bad[i].needle))
            fail_msg("%s = %s: message '%s' does not name %s", bad[i].key, bad[i].value, fm_last_error(),
                     bad[i].needle);
        assert_memory_equal(&before, &c, sizeof c);
    }
}

static void test_validate(void **state)
{
    (void)state;
    fm_clip_config good;
    assert_int_equal(fm_clip_config_preset("clip-tiny", &good), FM_OK);
    good.vocab_size = 100;
    struct {
        const char *key, *value, *needle;
    } bad[] = {
        {"vision_heads", "5", "vision_heads"},   {"text_heads", "6", "text_heads"},
        {"patch_size", "7", "patch_size"},       {"lora_rank", "65", "lora_rank"},
        {"lora_dropout", "1.0", "lora_dropout"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fm_clip_config c = good;
        assert_int_equal(fm_clip_config_set(&c, bad[i].key, bad[i].value), FM_OK);
        assert_int_equal(fm_clip_config_validate(&c), FM_ERR_CONFIG);
        if (!strstr(fm_last_error(), bad[i].needle))
            fail_msg("%s = %s: message '%s' does not name %s", bad[i].key, bad[i].value, fm_last_error(),
                     bad[i].needle);
    }
    /* the same values are fine under full fine-tuning, where adapters do not exist */
    fm_clip_config c = good;
    c.lora_rank = 65, c.full_finetune = 1;
    assert_int_equal(fm_clip_config_validate(&c), FM_OK);
}

/* models/<name>.yaml, read as the lead's loader does (`key: value` lines, # comments), equals the preset. */
static void check_yaml(const char *name)
{
    char path[1024];
    const char *src = getenv("FEDMM_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/models/%s.yaml", src ? src : ".", name);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    fm_clip_config from_file, preset;
    memset(&from_file, 0xab, sizeof from_file);
    assert_int_equal(fm_clip_config_preset(name, &from_file), FM_OK);
    /* start from a preset of another model so that every value must come from the file */
    assert_int_equal(fm_clip_config_preset(strcmp(name, "clip-base") ? "clip-base" : "clip-tiny", &from_file), FM_OK);
    assert_int_equal(fm_clip_config_preset(name, &preset), FM_OK);
    from_file.vocab_size = preset.vocab_size;
    char line[512];
    int keys = 0;
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = '\0';
        char *key = line, *value = colon + 1;
        while (*key == ' ')
            key++;
        while (*value == ' ')
            value++;
        value[strcspn(value, " \r\n")] = '\0';
        if (fm_clip_config_set(&from_file, key, value) != FM_OK)
            fail_msg("%s: %s", path, fm_last_error());
        keys++;
    }
    fclose(f);
    assert_true(keys >= 20);
    assert_memory_equal(&from_file, &preset, sizeof preset);
}

static void test_yaml_matches_presets(void **state)
{
    (void)state;
    check_yaml("clip-tiny");
    check_yaml("clip-small");
    check_yaml("clip-base");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_yaml_matches_presets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
