/* Paired datasets for the trainers: the built-in procedural dataset, or a caption file with images on
 * disk; captions tokenized on the fly. */
#include "fedmm/dataset.h"

#include "fedmm/captions.h"
#include "fedmm/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fm_dataset {
    fm_synth_config config; /* built-in dataset; config.image_size is the image side for both kinds */
    fm_split split;
    fm_caption_set captions; /* caption file (count > 0) */
    int from_file;
    const fm_tokenizer *tok;
    int context_len;
};

fm_status fm_dataset_synth(fm_dataset **out, const fm_synth_config *config, fm_split split, const fm_tokenizer *tok,
                           int context_len)
{
    if (!out || !config || !tok)
        return fm_error(FM_ERR_INVALID_ARG, "dataset: NULL argument");
    if (context_len < 3)
        return fm_error(FM_ERR_INVALID_ARG, "dataset: context length %d < 3", context_len);
    FM_TRY(fm_synth_validate(config));
    if ((unsigned)split >= FM_SPLIT_COUNT || config->split_size[split] <= 0)
        return fm_error(FM_ERR_CONFIG, "dataset: split %d is empty", (int)split);
    fm_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return fm_error(FM_ERR_NO_MEMORY, "dataset: out of memory");
    ds->config = *config;
    ds->split = split;
    ds->tok = tok;
    ds->context_len = context_len;
    *out = ds;
    return FM_OK;
}

fm_status fm_dataset_captions(fm_dataset **out, const char *path, int image_size, const fm_tokenizer *tok,
                              int context_len)
{
    if (!out || !path || !tok)
        return fm_error(FM_ERR_INVALID_ARG, "dataset: NULL argument");
    if (context_len < 3 || image_size < 1 || image_size > 4096)
        return fm_error(FM_ERR_INVALID_ARG, "dataset %s: context length %d / image size %d", path, context_len,
                        image_size);
    fm_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return fm_error(FM_ERR_NO_MEMORY, "dataset: out of memory");
    fm_status s = fm_captions_load(path, &ds->captions);
    if (s == FM_OK && ds->captions.count == 0)
        s = fm_error(FM_ERR_PARSE, "dataset %s: no image-caption pairs", path);
    if (s != FM_OK) {
        fm_dataset_destroy(ds);
        return s;
    }
    ds->from_file = 1;
    ds->config.image_size = image_size;
    ds->tok = tok;
    ds->context_len = context_len;
    *out = ds;
    return FM_OK;
}

void fm_dataset_destroy(fm_dataset *ds)
{
    if (!ds)
        return;
    if (ds->from_file)
        fm_captions_free(&ds->captions);
    free(ds);
}

int fm_dataset_has_labels(const fm_dataset *ds) { return !ds->from_file; }

int64_t fm_dataset_size(const fm_dataset *ds)
{
    return ds->from_file ? (int64_t)ds->captions.count : ds->config.split_size[ds->split];
}
int fm_dataset_image_size(const fm_dataset *ds) { return ds->config.image_size; }
int fm_dataset_context_len(const fm_dataset *ds) { return ds->context_len; }

fm_status fm_dataset_batch(const fm_dataset *ds, const int64_t *idx, int B, float *images, int32_t *tokens,
                           int32_t *eot, fm_synth_labels *labels)
{
    const int64_t n = fm_dataset_size(ds);
    for (int b = 0; b < B; b++)
        if (idx[b] < 0 || idx[b] >= n)
            return fm_error(FM_ERR_RANGE, "dataset: index %lld outside [0, %lld)", (long long)idx[b], (long long)n);
    const size_t image_floats = 3 * (size_t)ds->config.image_size * (size_t)ds->config.image_size;
    fm_status status = FM_OK;
    char message[512] = "";
#pragma omp parallel for schedule(dynamic, 4)
    for (int b = 0; b < B; b++) {
        char caption[FM_CAPTION_MAX];
        const char *text = caption;
        int n_tokens = 0, eot_pos = 0;
        float *img = images ? images + (size_t)b * image_floats : NULL;
        fm_status s = FM_OK;
        if (ds->from_file) {
            const fm_caption_item *item = &ds->captions.items[idx[b]];
            text = item->caption;
            if (img)
                s = fm_image_load_clip(item->image_path, ds->config.image_size, img);
            if (labels)
                for (int a = 0; a < FM_ATTR_COUNT; a++)
                    labels[b].attr[a] = labels[b].second[a] = -1;
        } else {
            s = fm_synth_sample(&ds->config, ds->split, idx[b], img, caption, sizeof caption,
                                labels ? &labels[b] : NULL);
        }
        if (s == FM_OK && tokens)
            s = fm_tokenizer_encode_ex(ds->tok, text, tokens + (size_t)b * (size_t)ds->context_len, ds->context_len,
                                       &n_tokens, &eot_pos);
        if (eot)
            eot[b] = eot_pos;
        if (s != FM_OK) {
#pragma omp critical(fm_dataset_error)
            {
                status = s;
                snprintf(message, sizeof message, "%s", fm_last_error()); /* the worker's thread-local text */
            }
        }
    }
    if (status != FM_OK)
        return fm_error(status, "dataset (%s): %s", ds->from_file ? "caption file" : fm_split_name(ds->split), message);
    return FM_OK;
}

fm_status fm_dataset_class_prompts(const fm_dataset *ds, fm_attribute attr, int32_t *tokens, int32_t *eot)
{
    if (ds->from_file)
        return fm_error(FM_ERR_UNSUPPORTED, "dataset: a caption file has no classes for zero-shot prompts");
    int K = fm_synth_num_classes(attr);
    if (K <= 0)
        return fm_error(FM_ERR_INVALID_ARG, "dataset: attribute %d has no classes", (int)attr);
    for (int c = 0; c < K; c++) {
        char prompt[FM_CAPTION_MAX];
        int n_tokens = 0, eot_pos = 0;
        FM_TRY(fm_synth_class_prompt(attr, c, prompt, sizeof prompt));
        FM_TRY(fm_tokenizer_encode_ex(ds->tok, prompt, tokens + (size_t)c * (size_t)ds->context_len, ds->context_len,
                                      &n_tokens, &eot_pos));
        eot[c] = eot_pos;
    }
    return FM_OK;
}
