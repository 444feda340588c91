/* The local training objective of one federated site under its modality: CLIP's contrastive loss on
 * paired samples, and labelled losses that need no private data of the missing modality on uni-modal
 * samples (image-only: classify against the text embeddings of the class prompts; text-only: match the
 * caption to the class prompts through the text tower). Also which parameter blocks a site of a given
 * modality trains, for modality-aware aggregation. */
#ifndef FEDMM_SITE_OBJECTIVE_H
#define FEDMM_SITE_OBJECTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/clip.h"
#include "fedmm/dataset.h"
#include "fedmm/modality.h"
#include "fedmm/status.h"
#include "fedmm/synth.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tokenized zero-shot prompts of one attribute's classes ("a photo of a circle", ...). */
typedef struct fm_class_prompts {
    fm_attribute attr;
    int num_classes; /* K */
    int context_len;
    int32_t *tokens; /* (K, context_len), owned */
    int32_t *eot;    /* (K), owned */
} fm_class_prompts;

/* Tokenizes the class prompts of `attr` with the dataset's tokenizer and context length. Free with
 * fm_class_prompts_free. */
fm_status fm_class_prompts_build(const fm_dataset *ds, fm_attribute attr, fm_class_prompts *out);
/* Frees the arrays and zeroes the struct; safe on a zeroed struct. */
void fm_class_prompts_free(fm_class_prompts *p);

/* A batch of one site, all host memory. Rows of a modality a sample lacks are never read (they may hold
 * anything), so a site can fill them or not. */
typedef struct fm_site_batch {
    int B;
    const float *images;     /* (B, 3, S, S); NULL allowed when no sample has an image */
    const int32_t *tokens;   /* (B, context_len); NULL allowed when no sample has a text */
    const int32_t *eot;      /* (B) */
    const int32_t *labels;   /* (B) class ids of the prompts' attribute, in [0, K); read only for
                                uni-modal samples (may be NULL when every sample is PAIRED) */
    const uint8_t *modality; /* (B) fm_modality of each sample; NULL = every sample PAIRED */
} fm_site_batch;

/* The parts of one fm_site_loss_backward call. A part that did not run has count 0 and loss 0. */
typedef struct fm_site_loss_parts {
    float loss;                    /* the combined loss (as *loss) */
    float paired_loss;             /* CLIP contrastive loss over the paired samples */
    float image_loss;              /* CE of image-only samples against the prompts */
    float text_loss;               /* CE of text-only samples against the prompts */
    int n_paired, n_image, n_text; /* samples each part used */
    int n_skipped;                 /* samples that entered no part: a lone paired sample (see below) */
} fm_site_loss_parts;

/* Forward and backward of a site's loss on one batch; gradients ACCUMULATE into fm_clip_trainable_grad
 * (zero them first). Per sample modality:
 *   PAIRED (≥ 2 of them): CLIP's symmetric InfoNCE over the paired samples only (fm_clip_forward_backward
 *     on the compacted subset). A single paired sample cannot form a contrastive loss (its InfoNCE is
 *     identically 0): it is skipped and counted in n_skipped.
 *   IMAGE-only: CE(s·img_emb·Pᵀ, label), P the class-prompt embeddings from fm_clip_encode_texts, which
 *     are constants here (the site has no text: no gradient reaches the text tower); s the logit scale.
 *   TEXT-only ("prompt matching"): the n captions and the K prompts go through the text tower in one
 *     fm_clip_forward (n + K rows); CE(s·cap_emb·prompt_embᵀ, label); gradients reach the text tower
 *     through both the captions and the prompts.
 * s = exp(min(logit_scale, ln 100)) in every part, and every part trains logit_scale (the uni-modal
 * parts add their dL/d logit_scale to its gradient; zero above the clamp, as CLIP's).
 * Combined loss = Σ_part n_part·loss_part / Σ_part n_part over the parts that ran — the weighted mean by
 * sample counts, so each used sample weighs the same whatever its modality; the gradient is the same
 * combination. A batch in which no part can run gives loss 0, no gradient and FM_OK.
 * `prompts` may be NULL when every sample is PAIRED. FM_ERR_INVALID_ARG for a NULL needed input,
 * FM_ERR_RANGE for a label outside [0, K) or a NONE/unknown modality (naming the sample). */
fm_status fm_site_loss_backward(fm_clip *m, const fm_site_batch *b, const fm_class_prompts *prompts, float *loss);
/* The same, reporting the parts (parts->loss is the combined loss). */
fm_status fm_site_loss_backward_parts(fm_clip *m, const fm_site_batch *b, const fm_class_prompts *prompts,
                                      fm_site_loss_parts *parts);

/* The towers whose parameters a site of `modality` trains: IMAGE → VISION (vision tower and
 * visual_projection), TEXT → TEXT (text tower and text_projection), PAIRED → BOTH, NONE → NONE.
 * logit_scale (tower NONE) is trained by every site that trains at all. */
fm_clip_tower fm_site_trained_towers(fm_modality modality);
/* 1 if a site of `modality` trains the trainable slice `slice` (by its tower, logit_scale always unless
 * modality is NONE), else 0. For the server's modality-aware averaging: each block is averaged over the
 * sites that trained it. */
int fm_site_trains_slice(fm_modality modality, const fm_clip_slice *slice);

#ifdef __cplusplus
}
#endif
#endif
