/* Paired image–text datasets as the trainers see them: a size, and batches by sample index (images
 * preprocessed, captions tokenized, labels where the source has them). Sources: a split of the built-in
 * procedural dataset (include/fedmm/synth.h), or a caption file (JSONL or COCO captions, with PNG / JPEG
 * images, include/fedmm/captions.h) — the latter has no class labels. */
#ifndef FEDMM_DATASET_H
#define FEDMM_DATASET_H

#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_dataset fm_dataset;

/* A split of the built-in dataset; captions tokenized with `tok` (borrowed: it must outlive the dataset)
 * to `context_len` tokens. */
fm_status fm_dataset_synth(fm_dataset **out, const fm_synth_config *config, fm_split split, const fm_tokenizer *tok,
                           int context_len);
/* Image–caption pairs from a JSONL ({"image": ..., "caption": ...} per line) or COCO captions file; images
 * are loaded, resized and centre-cropped to image_size (CLIP preprocessing) when a batch asks for them. */
fm_status fm_dataset_captions(fm_dataset **out, const char *path, int image_size, const fm_tokenizer *tok,
                              int context_len);
void fm_dataset_destroy(fm_dataset *ds);
/* Whether samples carry class labels (the built-in dataset does; caption files do not). */
int fm_dataset_has_labels(const fm_dataset *ds);

int64_t fm_dataset_size(const fm_dataset *ds);
int fm_dataset_image_size(const fm_dataset *ds);
int fm_dataset_context_len(const fm_dataset *ds);

/* Fills the B samples idx[0..B) (each in [0, size)): images (B, 3, S, S), tokens (B, context_len), eot
 * (B) the position of each caption's end-of-text token, labels (B) or NULL (all -1 without labels). Any of
 * images / tokens+eot may be NULL to skip that modality. Parallel over samples. */
fm_status fm_dataset_batch(const fm_dataset *ds, const int64_t *idx, int B, float *images, int32_t *tokens,
                           int32_t *eot, fm_synth_labels *labels);

/* Tokenizes the zero-shot class prompts of `attr` ("a photo of a circle", ...): tokens (K, context_len),
 * eot (K); K = fm_synth_num_classes(attr). */
fm_status fm_dataset_class_prompts(const fm_dataset *ds, fm_attribute attr, int32_t *tokens, int32_t *eot);

#ifdef __cplusplus
}
#endif
#endif
