/* Image files for the data pipeline: PNG (libpng) and JPEG (libjpeg-turbo) decoded to 8-bit RGB, and
 * CLIP's preprocessing (shortest side to S with antialiased bicubic, centre crop S×S, float CHW
 * normalised with CLIP's mean/std). Every malformed, truncated or oversized input is an error with a
 * message naming the file, never a crash or an exit. */
#ifndef FEDMM_IMAGE_H
#define FEDMM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* CLIP's normalisation constants (OpenAI CLIP, per RGB channel). */
#define FM_CLIP_MEAN_R 0.48145466f
#define FM_CLIP_MEAN_G 0.4578275f
#define FM_CLIP_MEAN_B 0.40821073f
#define FM_CLIP_STD_R 0.26862954f
#define FM_CLIP_STD_G 0.26130258f
#define FM_CLIP_STD_B 0.27577711f
#define FM_CLIP_MEAN                                                                                                   \
    {                                                                                                                  \
        FM_CLIP_MEAN_R, FM_CLIP_MEAN_G, FM_CLIP_MEAN_B                                                                 \
    }
#define FM_CLIP_STD                                                                                                    \
    {                                                                                                                  \
        FM_CLIP_STD_R, FM_CLIP_STD_G, FM_CLIP_STD_B                                                                    \
    }

/* Images with a side above this are refused before any pixel memory is allocated. */
#define FM_IMAGE_MAX_SIDE 16384
/* Files above this are refused before they are read. */
#define FM_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

/* An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B. `pixels` is owned (malloc). */
typedef struct fm_image {
    int width;
    int height;
    uint8_t *pixels; /* (height, width, 3) */
} fm_image;

/* Decodes a PNG or JPEG file (recognised by its first bytes, not its name) into *out. Grayscale, palette
 * and 16-bit PNGs become 8-bit RGB (16-bit rounded); alpha is dropped (as PIL's convert("RGB") does);
 * CMYK JPEGs are FM_ERR_UNSUPPORTED. FM_ERR_IO: missing, unreadable or not a regular file; FM_ERR_PARSE:
 * empty, truncated, corrupt (any libjpeg warning except extraneous bytes before a marker), not PNG/JPEG;
 * FM_ERR_RANGE: zero-sized or a side > FM_IMAGE_MAX_SIDE (checked from the header, before allocating).
 * On error *out is zeroed. Free with fm_image_free. */
fm_status fm_image_load(const char *path, fm_image *out);
/* Same from memory; `name` is used in error messages (may be NULL). */
fm_status fm_image_decode(const void *data, size_t size, const char *name, fm_image *out);
/* Frees the pixels and zeroes the struct; safe on a zeroed image. */
void fm_image_free(fm_image *image);

/* Writes 8-bit RGB pixels (height, width, 3) as a PNG / as a baseline JPEG of quality 1..100. */
fm_status fm_image_write_png(const char *path, const uint8_t *rgb, int width, int height);
fm_status fm_image_write_jpeg(const char *path, const uint8_t *rgb, int width, int height, int quality);

/* Resizes to `out_width`×`out_height` with the antialiased bicubic filter of PIL (Keys cubic, a = −0.5,
 * support widened by the scale factor when shrinking, separable, horizontal pass first, rounding to 8 bit
 * after each pass). out is (out_height, out_width, 3) bytes. Bicubic because CLIP's own preprocessing
 * (torchvision Resize on PIL images) uses it, so pretrained CLIP weights see the statistics they were
 * trained on. */
fm_status fm_image_resize_bicubic(const fm_image *image, int out_width, int out_height, uint8_t *out);

/* CLIP preprocessing: resize so the shorter side is `size` (the longer one becomes
 * floor(size·long/short), as torchvision does), centre-crop size×size (offset round((dim − size)/2) with
 * Python's round-half-to-even), scale to [0, 1] and normalise with FM_CLIP_MEAN / FM_CLIP_STD. out is
 * (3, size, size) floats. size in [1, 4096]. Only the cropped window is resampled (same values, less work). */
fm_status fm_image_clip_preprocess(const fm_image *image, int size, float *out);
/* fm_image_load + fm_image_clip_preprocess. */
fm_status fm_image_load_clip(const char *path, int size, float *out);

#ifdef __cplusplus
}
#endif
#endif
