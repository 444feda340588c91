/* CLIP model configuration: named presets, `key: value` setting (for models/<name>.yaml and --set overrides) and
 * validation with messages that name the offending key. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/clip.h"

static void set_defaults(fm_clip_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->hidden_act = FM_CLIP_ACT_QUICK_GELU;
    cfg->layer_norm_eps = 1e-5f;
    cfg->logit_scale_init = 2.6592f; /* ln(1/0.07), HF's logit_scale_init_value */
    /* FedMLLM's adapter setting: r = 8, alpha = 8 on the attention projections. */
    cfg->lora_rank = 8;
    cfg->lora_alpha = 8.0f;
    cfg->lora_dropout = 0.0f;
    cfg->lora_targets = FM_LORA_ATTN;
    cfg->lora_towers = FM_CLIP_TOWER_BOTH;
}

fm_status fm_clip_config_preset(const char *name, fm_clip_config *cfg)
{
    if (!name || !cfg)
        return fm_error(FM_ERR_INVALID_ARG, "clip config preset: NULL argument");
    fm_clip_config c;
    set_defaults(&c);
    if (strcmp(name, "clip-tiny") == 0) {
        c.image_size = 32, c.patch_size = 8;
        c.vision_width = 64, c.vision_layers = 2, c.vision_heads = 4, c.vision_mlp = 256;
        c.vocab_size = 0, c.context_length = 16;
        c.text_width = 64, c.text_layers = 2, c.text_heads = 4, c.text_mlp = 256;
        c.embed_dim = 64;
    } else if (strcmp(name, "clip-small") == 0) {
        c.image_size = 64, c.patch_size = 8;
        c.vision_width = 256, c.vision_layers = 4, c.vision_heads = 4, c.vision_mlp = 1024;
        c.vocab_size = 0, c.context_length = 32;
        c.text_width = 256, c.text_layers = 4, c.text_heads = 4, c.text_mlp = 1024;
        c.embed_dim = 256;
    } else if (strcmp(name, "clip-base") == 0) {
        /* openai/clip-vit-base-patch16 */
        c.image_size = 224, c.patch_size = 16;
        c.vision_width = 768, c.vision_layers = 12, c.vision_heads = 12, c.vision_mlp = 3072;
        c.vocab_size = 49408, c.context_length = 77;
        c.text_width = 512, c.text_layers = 12, c.text_heads = 8, c.text_mlp = 2048;
        c.embed_dim = 512;
    } else {
        return fm_error(FM_ERR_CONFIG, "unknown model preset '%s' (known: clip-tiny, clip-small, clip-base)", name);
    }
    snprintf(c.name, sizeof c.name, "%s", name);
    *cfg = c;
    return FM_OK;
}

static fm_status parse_int(const char *key, const char *value, int lo, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(value, &end, 10);
    while (end && (*end == ' ' || *end == '\t'))
        end++;
    if (end == value || !end || *end != '\0' || errno == ERANGE)
        return fm_error(FM_ERR_CONFIG, "model config: %s: '%s' is not an integer", key, value);
    if (v < lo || v > INT_MAX)
        return fm_error(FM_ERR_CONFIG, "model config: %s: %ld is out of range (%d..%d)", key, v, lo, INT_MAX);
    *out = (int)v;
    return FM_OK;
}

static fm_status parse_float(const char *key, const char *value, float *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(value, &end);
    while (end && (*end == ' ' || *end == '\t'))
        end++;
    if (end == value || !end || *end != '\0' || errno == ERANGE || !isfinite(v))
        return fm_error(FM_ERR_CONFIG, "model config: %s: '%s' is not a finite number", key, value);
    *out = (float)v;
    return FM_OK;
}

static fm_status parse_bool(const char *key, const char *value, int *out)
{
    if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes") || !strcmp(value, "on")) {
        *out = 1;
        return FM_OK;
    }
    if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no") || !strcmp(value, "off")) {
        *out = 0;
        return FM_OK;
    }
    return fm_error(FM_ERR_CONFIG, "model config: %s: '%s' is not a boolean (true/false)", key, value);
}

/* "q,k,v,out" → bits; "attn", "all" and "none" as shorthands. Spaces around items are allowed. */
static fm_status parse_targets(const char *key, const char *value, unsigned *out)
{
    static const struct {
        const char *name;
        unsigned bits;
    } names[] = {
        {"q", FM_LORA_Q},
        {"k", FM_LORA_K},
        {"v", FM_LORA_V},
        {"out", FM_LORA_OUT},
        {"o", FM_LORA_OUT},
        {"fc1", FM_LORA_FC1},
        {"fc2", FM_LORA_FC2},
        {"attn", FM_LORA_ATTN},
        {"mlp", FM_LORA_FC1 | FM_LORA_FC2},
        {"all", FM_LORA_ALL},
        {"none", 0},
    };
    unsigned bits = 0;
    const char *p = value;
    if (*p == '[') /* a YAML flow list */
        p++;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t' && *p != ']')
            p++;
        size_t len = (size_t)(p - start);
        size_t i;
        for (i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (strlen(names[i].name) == len && strncmp(start, names[i].name, len) == 0)
                break;
        }
        if (i == sizeof names / sizeof names[0])
            return fm_error(FM_ERR_CONFIG,
                            "model config: %s: '%.*s' in '%s' is not one of q, k, v, out, fc1, fc2, "
                            "attn, mlp, all, none",
                            key, (int)len, start, value);
        bits |= names[i].bits;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == ']')
            p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '\0')
            return fm_error(FM_ERR_CONFIG, "model config: %s: unexpected '%s' in '%s'", key, p, value);
        break;
    }
    *out = bits;
    return FM_OK;
}

fm_status fm_clip_config_set(fm_clip_config *cfg, const char *key, const char *value)
{
    if (!cfg || !key || !value)
        return fm_error(FM_ERR_INVALID_ARG, "clip config set: NULL argument");
    static const struct {
        const char *key;
        size_t off;
        int lo;
    } ints[] = {
        {"image_size", offsetof(fm_clip_config, image_size), 1},
        {"patch_size", offsetof(fm_clip_config, patch_size), 1},
        {"vision_width", offsetof(fm_clip_config, vision_width), 1},
        {"vision_layers", offsetof(fm_clip_config, vision_layers), 1},
        {"vision_heads", offsetof(fm_clip_config, vision_heads), 1},
        {"vision_mlp", offsetof(fm_clip_config, vision_mlp), 1},
        {"vocab_size", offsetof(fm_clip_config, vocab_size), 1},
        {"context_length", offsetof(fm_clip_config, context_length), 1},
        {"text_width", offsetof(fm_clip_config, text_width), 1},
        {"text_layers", offsetof(fm_clip_config, text_layers), 1},
        {"text_heads", offsetof(fm_clip_config, text_heads), 1},
        {"text_mlp", offsetof(fm_clip_config, text_mlp), 1},
        {"embed_dim", offsetof(fm_clip_config, embed_dim), 1},
        {"lora_rank", offsetof(fm_clip_config, lora_rank), 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (strcmp(key, ints[i].key) == 0)
            return parse_int(key, value, ints[i].lo, (int *)((char *)cfg + ints[i].off));
    }
    static const struct {
        const char *key;
        size_t off;
    } floats[] = {
        {"layer_norm_eps", offsetof(fm_clip_config, layer_norm_eps)},
        {"logit_scale_init", offsetof(fm_clip_config, logit_scale_init)},
        {"lora_alpha", offsetof(fm_clip_config, lora_alpha)},
        {"lora_dropout", offsetof(fm_clip_config, lora_dropout)},
    };
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        if (strcmp(key, floats[i].key) == 0)
            return parse_float(key, value, (float *)((char *)cfg + floats[i].off));
    }
    if (strcmp(key, "train_projections") == 0)
        return parse_bool(key, value, &cfg->train_projections);
    if (strcmp(key, "full_finetune") == 0)
        return parse_bool(key, value, &cfg->full_finetune);
    if (strcmp(key, "lora_targets") == 0)
        return parse_targets(key, value, &cfg->lora_targets);
    if (strcmp(key, "name") == 0) {
        if (strlen(value) >= sizeof cfg->name)
            return fm_error(FM_ERR_CONFIG, "model config: name: '%s' is longer than %zu characters", value,
                            sizeof cfg->name - 1);
        memset(cfg->name, 0, sizeof cfg->name);
        memcpy(cfg->name, value, strlen(value));
        return FM_OK;
    }
    if (strcmp(key, "hidden_act") == 0) {
        if (strcmp(value, "quick_gelu") == 0)
            cfg->hidden_act = FM_CLIP_ACT_QUICK_GELU;
        else if (strcmp(value, "gelu") == 0)
            cfg->hidden_act = FM_CLIP_ACT_GELU;
        else
            return fm_error(FM_ERR_CONFIG, "model config: hidden_act: '%s' is not quick_gelu or gelu", value);
        return FM_OK;
    }
    if (strcmp(key, "lora_towers") == 0) {
        if (strcmp(value, "vision") == 0)
            cfg->lora_towers = FM_CLIP_TOWER_VISION;
        else if (strcmp(value, "text") == 0)
            cfg->lora_towers = FM_CLIP_TOWER_TEXT;
        else if (strcmp(value, "both") == 0)
            cfg->lora_towers = FM_CLIP_TOWER_BOTH;
        else
            return fm_error(FM_ERR_CONFIG, "model config: lora_towers: '%s' is not vision, text or both", value);
        return FM_OK;
    }
    return fm_error(FM_ERR_CONFIG, "model config: unknown key '%s'", key);
}

/* One tower's transformer sizes. */
static fm_status check_tower(const char *tower, int width, int layers, int heads, int mlp)
{
    if (width <= 0 || layers <= 0 || heads <= 0 || mlp <= 0)
        return fm_error(FM_ERR_CONFIG,
                        "model config: %s_width, %s_layers, %s_heads and %s_mlp must be positive "
                        "(got %d, %d, %d, %d)",
                        tower, tower, tower, tower, width, layers, heads, mlp);
    if (width % heads != 0)
        return fm_error(FM_ERR_CONFIG, "model config: %s_width %d is not divisible by %s_heads %d", tower, width, tower,
                        heads);
    if (layers > 1024 || width > 65536 || mlp > 1 << 20)
        return fm_error(FM_ERR_CONFIG, "model config: %s tower is implausibly large (width %d, %d layers, mlp %d)",
                        tower, width, layers, mlp);
    return FM_OK;
}

fm_status fm_clip_config_validate(const fm_clip_config *cfg)
{
    if (!cfg)
        return fm_error(FM_ERR_INVALID_ARG, "clip config validate: NULL");
    if (cfg->image_size <= 0 || cfg->patch_size <= 0)
        return fm_error(FM_ERR_CONFIG, "model config: image_size %d and patch_size %d must be positive",
                        cfg->image_size, cfg->patch_size);
    if (cfg->image_size % cfg->patch_size != 0)
        return fm_error(FM_ERR_CONFIG, "model config: image_size %d is not divisible by patch_size %d", cfg->image_size,
                        cfg->patch_size);
    if (cfg->image_size > 8192)
        return fm_error(FM_ERR_CONFIG, "model config: image_size %d is implausibly large", cfg->image_size);
    FM_TRY(check_tower("vision", cfg->vision_width, cfg->vision_layers, cfg->vision_heads, cfg->vision_mlp));
    FM_TRY(check_tower("text", cfg->text_width, cfg->text_layers, cfg->text_heads, cfg->text_mlp));
    if (cfg->vocab_size <= 0)
        return fm_error(FM_ERR_CONFIG, "model config: vocab_size is %d: set it to the tokenizer's vocabulary size",
                        cfg->vocab_size);
    if (cfg->context_length <= 0 || cfg->context_length > 65536)
        return fm_error(FM_ERR_CONFIG, "model config: context_length %d is out of range (1..65536)",
                        cfg->context_length);
    if (cfg->embed_dim <= 0 || cfg->embed_dim > 65536)
        return fm_error(FM_ERR_CONFIG, "model config: embed_dim %d is out of range (1..65536)", cfg->embed_dim);
    if (cfg->hidden_act != FM_CLIP_ACT_QUICK_GELU && cfg->hidden_act != FM_CLIP_ACT_GELU)
        return fm_error(FM_ERR_CONFIG, "model config: hidden_act %d is not quick_gelu or gelu", (int)cfg->hidden_act);
    if (!(cfg->layer_norm_eps > 0.0f) || !isfinite(cfg->layer_norm_eps))
        return fm_error(FM_ERR_CONFIG, "model config: layer_norm_eps %g must be positive", cfg->layer_norm_eps);
    if (!isfinite(cfg->logit_scale_init))
        return fm_error(FM_ERR_CONFIG, "model config: logit_scale_init is not finite");
    if (cfg->full_finetune != 0 && cfg->full_finetune != 1)
        return fm_error(FM_ERR_CONFIG, "model config: full_finetune must be 0 or 1");
    if (cfg->train_projections != 0 && cfg->train_projections != 1)
        return fm_error(FM_ERR_CONFIG, "model config: train_projections must be 0 or 1");
    if (!cfg->full_finetune) {
        int min_width = cfg->vision_width < cfg->text_width ? cfg->vision_width : cfg->text_width;
        if (cfg->lora_rank < 0 || cfg->lora_rank > min_width)
            return fm_error(FM_ERR_CONFIG, "model config: lora_rank %d is out of range (0..%d, the narrower width)",
                            cfg->lora_rank, min_width);
        if (cfg->lora_rank > 0) {
            if (!(cfg->lora_alpha > 0.0f) || !isfinite(cfg->lora_alpha))
                return fm_error(FM_ERR_CONFIG, "model config: lora_alpha %g must be positive", cfg->lora_alpha);
            if (cfg->lora_targets & ~(unsigned)FM_LORA_ALL)
                return fm_error(FM_ERR_CONFIG, "model config: lora_targets 0x%x has unknown bits", cfg->lora_targets);
            if (cfg->lora_towers < FM_CLIP_TOWER_VISION || cfg->lora_towers > FM_CLIP_TOWER_BOTH)
                return fm_error(FM_ERR_CONFIG, "model config: lora_towers must be vision, text or both");
        }
        if (!(cfg->lora_dropout >= 0.0f && cfg->lora_dropout < 1.0f))
            return fm_error(FM_ERR_CONFIG, "model config: lora_dropout %g is out of range [0, 1)",
                            (double)cfg->lora_dropout);
    }
    if (cfg->precision != FM_PRECISION_FP32 && cfg->precision != FM_PRECISION_BF16)
        return fm_error(FM_ERR_CONFIG, "model config: precision %d is not fp32 or bf16", (int)cfg->precision);
    /* The bf16 path keeps no fp32 copy of the adapters' inputs to draw the dropout mask from. */
    if (cfg->precision == FM_PRECISION_BF16 && !cfg->full_finetune && cfg->lora_rank > 0 && cfg->lora_dropout > 0.0f)
        return fm_error(FM_ERR_CONFIG,
                        "train.precision bf16 does not support LoRA dropout yet (model.lora_dropout is %g): use "
                        "train.precision fp32, or lora_dropout 0",
                        (double)cfg->lora_dropout);
    return FM_OK;
}

fm_status fm_precision_parse(const char *name, fm_precision *out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "precision parse: NULL out");
    if (name && strcmp(name, "fp32") == 0)
        *out = FM_PRECISION_FP32;
    else if (name && strcmp(name, "bf16") == 0)
        *out = FM_PRECISION_BF16;
    else
        return fm_error(FM_ERR_CONFIG, "precision '%s': expected fp32 or bf16", name ? name : "(null)");
    return FM_OK;
}

const char *fm_precision_name(fm_precision p)
{
    switch (p) {
    case FM_PRECISION_FP32: return "fp32";
    case FM_PRECISION_BF16: return "bf16";
    }
    return "?";
}
