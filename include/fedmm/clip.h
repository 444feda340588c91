/* The CLIP dual encoder (a ViT image tower and a causal transformer text tower joined by projections and a
 * learnable logit scale), with exactly the architecture and tensor names of Hugging Face `CLIPModel`, so
 * that real CLIP checkpoints load. Forward, backward and LoRA adapters on top of the device-dispatched ops
 * of fedmm/ops.h.
 *
 * Memory (as llm.c): one contiguous buffer for the frozen base parameters, one for the trainable
 * parameters, one for their gradients and one activation arena sized for the largest batch seen; every
 * tensor is a view carved from them by a size table. The trainable buffer is the flat vector that
 * federated strategies exchange: under LoRA it holds every adapter A/B, logit_scale and (optionally) the
 * two projections; under full fine-tuning it holds every parameter of the model.
 *
 * Pointers: every function taking images, tokens, positions, embeddings or a loss takes HOST memory. The
 * trainable vector and its gradient (fm_clip_trainable, fm_clip_trainable_grad) and the views from
 * fm_clip_param live on the model's device (host memory for FM_DEVICE_CPU); fm_clip_get_trainable,
 * fm_clip_set_trainable and fm_clip_get_trainable_grad copy them from / to host memory on either device.
 *
 * On FM_DEVICE_CUDA every buffer above lives in device memory; each batch's inputs are copied in, the loss and
 * the embeddings copied out. Precision (fm_clip_config.precision): fp32 everywhere, or on CUDA bf16 mixed
 * precision — bf16 copies of the weights and bf16 inputs to every GEMM of the encoder layers (fp32
 * accumulation), with fp32 master weights, gradients, optimizer state, residual stream, layernorm statistics,
 * attention, losses. See docs/cuda.md.
 *
 * A model is not thread-safe: one thread at a time (its ops may use many threads inside). */
#ifndef FEDMM_CLIP_H
#define FEDMM_CLIP_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- configuration ------------------------------------------------------------------------------- */

/* Linear layers LoRA can adapt, as bits of fm_clip_config.lora_targets (PEFT's target_modules). */
enum {
    FM_LORA_Q = 1 << 0,   /* self_attn.q_proj */
    FM_LORA_K = 1 << 1,   /* self_attn.k_proj */
    FM_LORA_V = 1 << 2,   /* self_attn.v_proj */
    FM_LORA_OUT = 1 << 3, /* self_attn.out_proj */
    FM_LORA_FC1 = 1 << 4, /* mlp.fc1 */
    FM_LORA_FC2 = 1 << 5, /* mlp.fc2 */
    FM_LORA_ATTN = FM_LORA_Q | FM_LORA_K | FM_LORA_V | FM_LORA_OUT,
    FM_LORA_ALL = FM_LORA_ATTN | FM_LORA_FC1 | FM_LORA_FC2
};

/* Which tower a parameter belongs to (also: which towers get adapters). NONE: logit_scale. */
typedef enum fm_clip_tower {
    FM_CLIP_TOWER_NONE = 0,
    FM_CLIP_TOWER_VISION = 1,
    FM_CLIP_TOWER_TEXT = 2,
    FM_CLIP_TOWER_BOTH = 3
} fm_clip_tower;

/* Arithmetic of the model's passes: fp32 throughout, or bf16 mixed precision (CUDA only). */
typedef enum fm_precision { FM_PRECISION_FP32 = 0, FM_PRECISION_BF16 = 1 } fm_precision;

/* Parses "fp32" / "bf16" (FM_ERR_CONFIG otherwise); the name of a precision ("?" if invalid). */
fm_status fm_precision_parse(const char *name, fm_precision *out);
const char *fm_precision_name(fm_precision p);

/* Hidden activation of the MLPs: OpenAI's CLIP uses quick_gelu (x·σ(1.702x)), OpenCLIP/LAION gelu. */
typedef enum fm_clip_act { FM_CLIP_ACT_QUICK_GELU = 0, FM_CLIP_ACT_GELU = 1 } fm_clip_act;

typedef struct fm_clip_config {
    char name[32]; /* preset name, informational */
    /* vision tower (HF CLIPVisionConfig) */
    int image_size;    /* H = W */
    int patch_size;    /* P; image_size % P == 0 */
    int vision_width;  /* hidden_size */
    int vision_layers; /* num_hidden_layers */
    int vision_heads;  /* num_attention_heads */
    int vision_mlp;    /* intermediate_size */
    /* text tower (HF CLIPTextConfig) */
    int vocab_size;     /* 0 in presets whose vocabulary is the caller's tokenizer: must be set */
    int context_length; /* max_position_embeddings */
    int text_width;
    int text_layers;
    int text_heads;
    int text_mlp;
    /* joint */
    int embed_dim; /* projection_dim */
    fm_clip_act hidden_act;
    float layer_norm_eps;   /* 1e-5 */
    float logit_scale_init; /* ln(1/0.07) = 2.6592 */
    /* what trains */
    int lora_rank;             /* r ≥ 0; 0 = no adapters */
    float lora_alpha;          /* scaling = alpha / r */
    float lora_dropout;        /* in [0, 1): PEFT's dropout on the adapters' input, training passes only */
    unsigned lora_targets;     /* FM_LORA_* bits */
    fm_clip_tower lora_towers; /* VISION, TEXT or BOTH */
    int train_projections;     /* 1: visual_projection and text_projection train too (LoRA mode) */
    int full_finetune;         /* 1: every parameter trains and no adapters are made */
    /* how it computes (not a key of models/<name>.yaml: the commands set it from train.precision). FP32 by default;
     * BF16 needs a CUDA model (fm_clip_create: FM_ERR_UNSUPPORTED on the CPU) and no LoRA dropout (validate) */
    fm_precision precision;
} fm_clip_config;

/* Fills *cfg with the preset `name`: "clip-tiny", "clip-small" or "clip-base" (ViT-B/16). Every preset
 * starts with LoRA r = 8, alpha = 8 on q, k, v, out of both towers, dropout 0, projections frozen. clip-tiny
 * and clip-small leave vocab_size = 0: set it to the tokenizer's size. FM_ERR_CONFIG for an unknown name
 * (the message lists the known ones). */
fm_status fm_clip_config_preset(const char *name, fm_clip_config *cfg);

/* Sets one field from text, as read from a `key: value` line of models/<name>.yaml. Keys are the field
 * names above; hidden_act takes quick_gelu | gelu; lora_targets a comma-separated list of q, k, v, out,
 * fc1, fc2 or "attn" / "all" / "none"; lora_towers vision | text | both; flags take true/false/1/0.
 * FM_ERR_CONFIG naming the key for an unknown key or a bad value (not a number, out of range). */
fm_status fm_clip_config_set(fm_clip_config *cfg, const char *key, const char *value);

/* Checks the whole configuration (positive sizes, width divisible by heads, image by patch, vocab set,
 * rank and alpha sensible, ...). FM_ERR_CONFIG with the first problem. */
fm_status fm_clip_config_validate(const fm_clip_config *cfg);

/* ---- the model ----------------------------------------------------------------------------------- */

typedef struct fm_clip fm_clip;

/* Builds a model on `device` with Hugging Face's CLIP initialisation (normal weights with CLIP's per-layer
 * standard deviations, zero biases, unit layernorms, logit_scale = logit_scale_init) and PEFT's LoRA
 * initialisation (A kaiming-uniform, B = 0). Deterministic from `seed`: each tensor draws from its own
 * stream keyed by its name, so the same seed gives the same base weights whatever trains. The activation
 * arena is allocated on first use. The config is validated first. */
fm_status fm_clip_create(fm_clip **out, const fm_clip_config *cfg, fm_device device, uint64_t seed);
/* Frees everything; NULL is a no-op. */
void fm_clip_destroy(fm_clip *m);

const fm_clip_config *fm_clip_get_config(const fm_clip *m);
fm_device fm_clip_device(const fm_clip *m);
/* Number of patches + 1 (the vision sequence length). */
int fm_clip_vision_seq_len(const fm_clip *m);

/* ---- the trainable vector ------------------------------------------------------------------------ */

size_t fm_clip_num_trainable(const fm_clip *m);
/* The trainable parameters and their gradients: fm_clip_num_trainable floats each, on the model's device.
 * Owned by the model; writing into the first changes the model (that is how a global model is set). */
float *fm_clip_trainable(fm_clip *m);
float *fm_clip_trainable_grad(fm_clip *m);
/* The same through host memory on any device: n must be fm_clip_num_trainable (FM_ERR_SHAPE otherwise).
 * get copies the vector (or its gradient) into `host`; set copies `host` into the model. */
fm_status fm_clip_get_trainable(fm_clip *m, float *host, size_t n);
fm_status fm_clip_set_trainable(fm_clip *m, const float *host, size_t n);
fm_status fm_clip_get_trainable_grad(fm_clip *m, float *host, size_t n);

/* One named piece of the trainable vector. Names are PEFT's for adapters and for what trains beside them
 * under LoRA ("base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
 * "base_model.model.logit_scale"), Hugging Face's under full fine-tuning ("vision_model.encoder..."). */
typedef struct fm_clip_slice {
    const char *name;
    size_t offset; /* in floats from the start of the trainable vector */
    size_t numel;
    int ndim;
    int64_t shape[4];
    int layer;           /* encoder layer index, -1 outside the encoder layers */
    fm_clip_tower tower; /* VISION, TEXT, or NONE for logit_scale */
    int decay;           /* 1 where AdamW's weight decay belongs: tensors of 2+ dims; 0 for biases, layernorm
                            gains, the class embedding and logit_scale (OpenCLIP's exclusion rule) */
} fm_clip_slice;

/* Slices in vector order (they tile the vector without gaps). NULL when i is out of range. */
size_t fm_clip_num_slices(const fm_clip *m);
const fm_clip_slice *fm_clip_slice_at(const fm_clip *m, size_t i);

/* A view of the Hugging Face parameter `hf_name` (e.g. "text_model.final_layer_norm.weight",
 * "logit_scale"), wherever it lives (frozen or trainable buffer). FM_ERR_RANGE if no such parameter. */
fm_status fm_clip_param(fm_clip *m, const char *hf_name, fm_tensor *out);

/* ---- training and inference ---------------------------------------------------------------------- */

/* Sets every trainable gradient to zero. */
fm_status fm_clip_zero_grad(fm_clip *m);

/* One forward and backward pass of the CLIP loss (symmetric InfoNCE on L2-normalised projections, logit
 * scale clamped to ≤ ln 100 as CLIP does) on a batch of B ≥ 1 pairs:
 *   images  (B, 3, H, W) float, H = W = image_size, already normalised as the caller wants;
 *   tokens  (B, context_length) int32 ids in [0, vocab_size);
 *   eot_pos (B) int32: the position whose final hidden state is pooled (the first end-of-text token);
 * all host memory. Gradients ACCUMULATE into fm_clip_trainable_grad (call fm_clip_zero_grad first);
 * *loss (host) gets the mean loss. FM_ERR_STATE while adapters are merged. */
fm_status fm_clip_forward_backward(fm_clip *m, const float *images, const int32_t *tokens, const int32_t *eot_pos,
                                   int B, float *loss);

/* Forward only: the loss of a batch (as fm_clip_forward_backward, without gradients). */
fm_status fm_clip_loss(fm_clip *m, const float *images, const int32_t *tokens, const int32_t *eot_pos, int B,
                       float *loss);

/* L2-normalised embeddings (B, embed_dim) into host `emb`, for any B ≥ 1 (processed in chunks). */
fm_status fm_clip_encode_images(fm_clip *m, const float *images, int B, float *emb);
fm_status fm_clip_encode_texts(fm_clip *m, const int32_t *tokens, const int32_t *eot_pos, int B, float *emb);

/* For losses other than CLIP's own (CreamFL's regularisers, a single modality): a forward pass that keeps
 * the activations, then a backward pass from the gradients of the caller's loss with respect to the
 * L2-normalised embeddings. images or tokens/eot_pos may be NULL to run one tower only; img_emb / txt_emb
 * (host, (B, E)) receive the embeddings and may be NULL. B is limited only by memory (no chunking: the
 * activations of the whole batch are kept). */
fm_status fm_clip_forward(fm_clip *m, const float *images, const int32_t *tokens, const int32_t *eot_pos, int B,
                          float *img_emb, float *txt_emb);
/* Accumulates into fm_clip_trainable_grad the gradients for dL/d(img_emb) and dL/d(txt_emb) (host, (B, E), the
 * B of the last fm_clip_forward; NULL for a tower that was not run or gets no gradient). FM_ERR_STATE when
 * the last pass through the model was not fm_clip_forward (any other call reuses the activations), or for a
 * gradient of a tower that fm_clip_forward did not run. logit_scale gets no gradient here. */
fm_status fm_clip_backward(fm_clip *m, const float *d_img_emb, const float *d_txt_emb);

/* LoRA dropout (lora_dropout = p > 0), as PEFT: y = x·Wᵀ + b + (alpha/r)·(dropout(x)·Aᵀ)·Bᵀ, inverted dropout
 * (kept inputs scaled by 1/(1 − p)) on the adapter's input only, in the training passes
 * (fm_clip_forward_backward, fm_clip_forward) and never in fm_clip_loss or the encode functions. Each training
 * forward draws its masks for the model's current dropout step, then advances the step by one; a mask depends
 * only on (model seed, step, tower, layer, adapted linear), so it is the same on any device and thread count,
 * differs between adapters and between steps, and setting the step back replays the same masks (a resumed run,
 * or a gradient check that holds the masks fixed). The step starts at 0 and means nothing when p = 0. */
uint64_t fm_clip_dropout_step(const fm_clip *m);
fm_status fm_clip_set_dropout_step(fm_clip *m, uint64_t step);

/* The current logit scale as used: exp(min(logit_scale, ln 100)). */
fm_status fm_clip_logit_scale(fm_clip *m, float *scale);

/* ---- LoRA ---------------------------------------------------------------------------------------- */

/* Folds every adapter into its base weight (W += (alpha/r)·B·A) so inference costs nothing extra, and
 * back (W −= (alpha/r)·B·A). While merged, forward passes skip the adapters and training is refused.
 * FM_ERR_STATE when already merged / not merged; a no-op without adapters. */
fm_status fm_clip_merge_lora(fm_clip *m);
fm_status fm_clip_unmerge_lora(fm_clip *m);
int fm_clip_lora_merged(const fm_clip *m);

/* ---- checkpoints (safetensors) ------------------------------------------------------------------- */

/* Writes every Hugging Face parameter of the model under its HF name, float32 (adapters are not included:
 * merge first to export a fine-tuned CLIPModel). */
fm_status fm_clip_save(fm_clip *m, const char *path);
/* Loads every HF parameter from a safetensors file (F32, F16 or BF16, converted to float32). Every shape is
 * checked; a missing tensor, an unexpected one (other than the HF "*.embeddings.position_ids" buffers) or a
 * wrong shape fails with a message naming it, and the model is unchanged on failure. Adapters are left
 * as they are. FM_ERR_STATE while adapters are merged. */
fm_status fm_clip_load(fm_clip *m, const char *path);

/* The trainable vector under its slice names (PEFT's under LoRA), with metadata recording rank and alpha. */
fm_status fm_clip_save_adapters(fm_clip *m, const char *path);
/* Loads a file written by fm_clip_save_adapters (or PEFT's adapter_model.safetensors with matching names):
 * every slice must be present with its shape, no other tensor may be; a lora_alpha / lora_rank recorded in
 * the metadata must match the model's. The vector is unchanged on failure. */
fm_status fm_clip_load_adapters(fm_clip *m, const char *path);

#ifdef __cplusplus
}
#endif
#endif
