/* Image–caption datasets on disk: JSON Lines ({"image": "relative/path.jpg", "caption": "..."} per line)
 * and COCO captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}).
 * Image paths are resolved relative to the directory of the dataset file. Only the list is loaded; images
 * are decoded later (fm_image_load_clip). Errors name the file and the line (JSONL) or entry (COCO). */
#ifndef FEDMM_CAPTIONS_H
#define FEDMM_CAPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One (image, caption) pair. Several pairs may share an image (COCO has about five captions per image):
 * they have the same image_index, so that retrieval can count any of an image's captions as a hit. */
typedef struct fm_caption_item {
    char *image_path;    /* resolved path (dataset directory + relative path; absolute paths kept); points
                          * into the set's image_paths, not separately owned */
    char *caption;       /* UTF-8, as in the file */
    int64_t image_index; /* dense id of the image in [0, num_images), in order of first appearance */
} fm_caption_item;

typedef struct fm_caption_set {
    fm_caption_item *items; /* count pairs, in file order (COCO: annotation order) */
    size_t count;
    size_t num_images;  /* distinct images */
    char **image_paths; /* num_images entries; image_paths[i] is the path of image_index i */
} fm_caption_set;

/* JSON Lines: one object per non-blank line with string fields "image" and "caption" (other fields are
 * ignored). A bad line fails the whole load with FM_ERR_PARSE "<file>:<line>: ...". */
fm_status fm_captions_load_jsonl(const char *path, fm_caption_set *out);
/* COCO captions: annotations whose image_id is not among "images" are an error naming the annotation
 * index; images without annotations are dropped. */
fm_status fm_captions_load_coco(const char *path, fm_caption_set *out);
/* A name ending in ".jsonl" is JSON Lines; otherwise a file that parses as one JSON object with an
 * "annotations" array is COCO, and anything else is read as JSON Lines. */
fm_status fm_captions_load(const char *path, fm_caption_set *out);
/* Frees everything and zeroes the set; safe on a zeroed set. */
void fm_captions_free(fm_caption_set *set);

#ifdef __cplusplus
}
#endif
#endif
