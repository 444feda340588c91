/* The built-in procedural image–text dataset: pictures of one or two shapes (kind, colour, size, position,
 * texture) with captions from a small grammar. Nothing is stored: sample (seed, split, index) is rendered
 * on demand from its own counter-based RNG stream, so any thread order and any batch boundary give the
 * same bytes. Used for tests, the quickstart and federated experiments (labels allow non-IID splits). */
#ifndef FEDMM_SYNTH_H
#define FEDMM_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Room for any caption the grammar produces, with its terminating NUL (the longest is < 140 bytes). */
#define FM_CAPTION_MAX 160

/* Disjoint sample spaces: each split is its own RNG stream, so train sample 5 and test sample 5 are
 * unrelated. IMAGE_ONLY / TEXT_ONLY are labelled sets for sites that hold one modality; which modality a
 * caller uses is up to it (both can be generated for any split). */
typedef enum fm_split {
    FM_SPLIT_TRAIN = 0,
    FM_SPLIT_TEST,
    FM_SPLIT_PUBLIC, /* CreamFL's public proxy set */
    FM_SPLIT_IMAGE_ONLY,
    FM_SPLIT_TEXT_ONLY,
    FM_SPLIT_COUNT
} fm_split;

/* Attributes of a shape; every sample is labelled with all of them (for its primary shape). */
typedef enum fm_attribute {
    FM_ATTR_KIND = 0, /* circle, square, triangle, star, cross, ring, diamond */
    FM_ATTR_COLOR,    /* red, green, blue, yellow, purple, orange, white, black, gray, cyan */
    FM_ATTR_SIZE,     /* small, medium, large */
    FM_ATTR_POSITION, /* 3×3 grid: top left, top, top right, left, center, right, bottom left, bottom, bottom right */
    FM_ATTR_TEXTURE,  /* plain, striped, dotted, checkered */
    FM_ATTR_COUNT
} fm_attribute;

/* Class ids of one sample. attr[a] is the class of attribute a of the primary shape (the one the caption
 * names first and describes fully); second[a] the same for the second shape, all -1 when there is none. */
typedef struct fm_synth_labels {
    int32_t attr[FM_ATTR_COUNT];
    int32_t second[FM_ATTR_COUNT];
    int32_t num_shapes; /* 1 or 2 */
} fm_synth_labels;

typedef struct fm_synth_config {
    uint64_t seed;
    int image_size;                     /* side in pixels, >= 16 (default 32) */
    int64_t split_size[FM_SPLIT_COUNT]; /* samples per split; indices are in [0, size) */
    float second_shape_prob;            /* probability of a second shape, [0, 1] (default 0.5) */
    float noise_std;                    /* per-pixel Gaussian noise in [0, 1] units, [0, 0.5] (default 0.03) */
    int normalize;                      /* 1: CLIP mean/std normalisation (default); 0: raw values in [0, 1] */
} fm_synth_config;

/* seed 0, image_size 32, splits train 10000 / test 2000 / public 2000 / image-only 5000 / text-only 5000,
 * second_shape_prob 0.5, noise_std 0.03, normalize 1. */
fm_synth_config fm_synth_default_config(void);
/* FM_ERR_INVALID_ARG / FM_ERR_RANGE naming the bad field. */
fm_status fm_synth_validate(const fm_synth_config *config);

/* "train", "test", "public", "image_only", "text_only"; "?" out of range. */
const char *fm_split_name(fm_split split);
/* Parses the names above (also "image-only", "text-only"); FM_ERR_CONFIG otherwise. */
fm_status fm_split_parse(const char *name, fm_split *out);
/* "kind", "color", "size", "position", "texture"; "?" out of range. */
const char *fm_attribute_name(fm_attribute attr);
/* Parses the names above (also "colour", "shape" for kind); FM_ERR_CONFIG otherwise. */
fm_status fm_attribute_parse(const char *name, fm_attribute *out);

/* Number of classes of `attr` (7, 10, 3, 9, 4); 0 for an invalid attribute. */
int fm_synth_num_classes(fm_attribute attr);
/* Name of class `cls` of `attr` ("circle", "top left", ...); NULL when out of range. Static storage. */
const char *fm_synth_class_name(fm_attribute attr, int cls);
/* Caption for zero-shot classification of class `cls` of `attr`, e.g. "a photo of a circle", "a photo of
 * a red shape", "a photo of a shape in the top left corner". FM_ERR_RANGE for a bad attribute/class or
 * when `cap` is too small. */
fm_status fm_synth_class_prompt(fm_attribute attr, int cls, char *buf, size_t cap);

/* Every word a caption or class prompt can contain (lower case, no punctuation), sorted; *count gets how
 * many. Static storage. A word-level tokenizer can be built from it. */
const char *const *fm_synth_vocabulary(size_t *count);

/* Renders sample `index` of `split`. Each output may be NULL to skip it:
 *   image    (3, S, S) float, CHW, S = image_size; CLIP-normalised or in [0, 1] per config->normalize
 *   caption  NUL-terminated, at most caption_cap bytes (FM_CAPTION_MAX is always enough)
 *   labels   class ids of the attributes
 * FM_ERR_RANGE for an index outside [0, split_size) or a caption that does not fit. */
fm_status fm_synth_sample(const fm_synth_config *config, fm_split split, int64_t index, float *image, char *caption,
                          size_t caption_cap, fm_synth_labels *labels);

/* Samples first .. first+count-1 of `split` in parallel (OpenMP), identical to calling fm_synth_sample on
 * each. images (count, 3, S, S), captions (count) rows, labels (count); each may be NULL. Everything is
 * checked before any work starts. */
fm_status fm_synth_batch(const fm_synth_config *config, fm_split split, int64_t first, int count, float *images,
                         char (*captions)[FM_CAPTION_MAX], fm_synth_labels *labels);

/* Labels only (cheap: no rendering) for samples first .. first+count-1, attribute `attr`, into out (count).
 * For partitioning a split by an attribute. */
fm_status fm_synth_label_array(const fm_synth_config *config, fm_split split, int64_t first, int64_t count,
                               fm_attribute attr, int32_t *out);

/* Writes one (3, S, S) image as made by fm_synth_sample under `config` (undoing the normalisation) to an
 * RGB PNG, each pixel repeated scale×scale times (scale >= 1; nearest-neighbour, to make 32 px visible). */
fm_status fm_synth_write_png(const fm_synth_config *config, const float *image, int scale, const char *path);

/* A rows×cols grid of samples first.. of `split`, each upscaled by `scale`, 2-pixel white gutters, to a PNG
 * (for docs and for eyeballing the data). */
fm_status fm_synth_render_png_grid(const fm_synth_config *config, fm_split split, int64_t first, int rows, int cols,
                                   int scale, const char *path);

#ifdef __cplusplus
}
#endif
#endif
