/* Internal structures of the CLIP model, shared by src/model/clip*.c only: the parameter views, the size
 * table that carves them from the frozen / trainable / gradient buffers, and the activation views carved
 * from the arena. */
#ifndef FEDMM_MODEL_CLIP_INTERNAL_H
#define FEDMM_MODEL_CLIP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/arena.h"
#include "fedmm/clip.h"

/* A parameter: its value, when it trains its gradient (g.data == NULL when frozen), and under bf16 precision its
 * bf16 copy (lp, refreshed from v at the start of every forward pass; lp.data == NULL under fp32). */
typedef struct clip_p {
    fm_tensor v;
    fm_tensor g;
    fm_tensor lp;
} clip_p;

/* The gradient to hand to a backward op: NULL for a frozen parameter, which the op then skips. The model
 * itself is never const, so casting away the const of a read-only path to it is sound. */
static inline fm_tensor *clip_grad(const clip_p *p) { return p->g.data ? (fm_tensor *)&p->g : NULL; }
#define CLIP_GRAD(p) clip_grad(&(p))

/* A linear layer y = x·Wᵀ + b, optionally adapted: + (alpha/r)·(x·Aᵀ)·Bᵀ. */
typedef struct clip_linear {
    clip_p w; /* (out, in) */
    clip_p b; /* (out), when has_bias */
    clip_p A; /* (r, in), when lora */
    clip_p B; /* (out, r), when lora */
    int has_bias;
    int lora;
    int in, out;
    uint32_t lora_id; /* names the adapter in its dropout stream: CLIP_LORA_ID(tower, layer, target) */
} clip_linear;

/* LoRA dropout (PEFT's): the adapter sees dropout(x), y = x·Wᵀ + b + scaling·(dropout(x)·Aᵀ)·Bᵀ, in training
 * passes only. The mask of an adapted linear is Philox with key seed ^ CLIP_DROPOUT_KEY and counter-high word
 * (stream) = step << 16 | lora_id, where step is the model's dropout step at that training forward (each
 * training forward then advances it by one) and lora_id = (tower − 1) << 13 | layer << 3 | target (target
 * 0..5: q, k, v, out, fc1, fc2; layers < 1024): a fresh, independent mask per adapter and per step, never
 * overlapping the parameter-initialisation streams (another key). */
#define CLIP_DROPOUT_KEY 0x4C6F5241446F7030ULL /* "LoRADop0" */
#define CLIP_LORA_ID(tower, layer, target)                                                                             \
    ((uint32_t)((((uint32_t)(tower)-1u) << 13) | ((uint32_t)(layer) << 3) | (uint32_t)(target)))

typedef struct clip_layer {
    clip_p ln1_w, ln1_b, ln2_w, ln2_b;
    clip_linear q, k, v, o, fc1, fc2;
} clip_layer;

/* What an adapted linear keeps for backward: t = xa·Aᵀ and ts = scaling·t (B, T, r), xa the adapter's input;
 * under LoRA dropout also the mask (B, T, in): 1/(1 − p) or 0 per element, xa = x ⊙ mask. The dropped input
 * itself is not kept: backward recomputes it from x (kept for the base linear anyway) and the mask, bit for
 * bit, so each adapter costs one (B, T, in) buffer, not two. On CUDA the scaling rides in the GEMM's alpha
 * (kernels/lora.cu): ts is not carved (it aliases t), and t is bf16 under bf16 precision. */
typedef struct clip_lora_acts {
    fm_tensor t, ts;
    fm_tensor mask; /* only when lora_dropout > 0 */
} clip_lora_acts;

/* Under bf16 precision (CUDA) ln1, ln2 and g, which only feed GEMMs, are stored in bf16, and ab holds the bf16
 * copy of the attention output a (a itself stays fp32: attention's backward reads it). */
typedef struct clip_layer_acts {
    fm_tensor ln1, ln1_mean, ln1_rstd; /* (B, T, W), (B, T) ×2 */
    fm_tensor q, k, v, a;              /* (B, T, W); a = attention output, input of out_proj */
    fm_tensor ab;                      /* (B, T, W) bf16 copy of a, the input of out_proj (bf16 only) */
    fm_tensor lse;                     /* (B, NH, T) attention row log-sum-exp, saved for backward */
    fm_tensor xmid;                    /* (B, T, W) residual stream after attention */
    fm_tensor ln2, ln2_mean, ln2_rstd;
    fm_tensor h, g; /* (B, T, M) fc1 output and its activation */
    clip_lora_acts lq, lk, lv, lo, lfc1, lfc2;
} clip_layer_acts;

typedef struct clip_tower_acts {
    fm_tensor input;                    /* images (B, 3, H, W) f32, or tokens (B, T) i32 */
    fm_tensor cols;                     /* vision: (B·NP, 3·P·P) unfolded patches */
    fm_tensor patches;                  /* vision: (B, NP, W) */
    fm_tensor emb;                      /* vision: (B, T, W) embeddings before pre_layrnorm */
    fm_tensor pre_mean, pre_rstd;       /* vision: (B, T) */
    fm_tensor *res;                     /* L+1 residual streams (B, T, W); res[0] is the encoder input */
    clip_layer_acts *layers;            /* L */
    fm_tensor pooled, pooled_ln;        /* (B, W) */
    fm_tensor pooled_mean, pooled_rstd; /* (B) */
    fm_tensor proj;                     /* (B, E) */
    fm_tensor normed, norm;             /* (B, E), (B) */
} clip_tower_acts;

typedef struct clip_tower {
    fm_clip_tower id;
    const char *prefix; /* "vision_model" / "text_model" */
    int L, W, NH, M, T; /* layers, width, heads, mlp, sequence length */
    int causal;
    clip_layer *layers;
    clip_p patch_w, class_emb, pre_ln_w, pre_ln_b; /* vision */
    clip_p tok_emb;                                /* text */
    clip_p pos_emb;
    clip_p final_ln_w, final_ln_b; /* post_layernorm / final_layer_norm */
    clip_linear proj;              /* visual_projection / text_projection, no bias */
    int emb_trains;                /* the embeddings (and everything above) train: full fine-tune */
    int lowest_trainable;          /* lowest layer with a trainable tensor, L when none */
    int needs_grad;                /* backward reaches into this tower at all */
    clip_tower_acts acts;
} clip_tower;

enum { CLIP_INIT_NORMAL, CLIP_INIT_UNIFORM, CLIP_INIT_ZERO, CLIP_INIT_ONE, CLIP_INIT_CONST };

/* One row of the size table. */
typedef struct clip_entry {
    char name[128];       /* HF name; for adapters "<module>.lora_A.weight" without the PEFT prefix */
    char slice_name[160]; /* name in the trainable vector (PEFT's under LoRA) */
    int ndim;
    int64_t shape[4];
    size_t numel;
    int trainable;
    int adapter;
    size_t offset; /* in floats, in the frozen or the trainable buffer */
    int layer;
    fm_clip_tower tower;
    int init;
    float init_arg; /* std (normal), bound (uniform) or value (const) */
    clip_p *p;
} clip_entry;

struct fm_clip {
    fm_clip_config cfg;
    fm_device device;
    uint64_t seed;
    clip_tower vision, text;
    clip_p logit_scale;
    float lora_scaling; /* alpha / r */
    int merged;

    clip_entry *entries;
    size_t n_entries, cap_entries;
    fm_clip_slice *slices;
    size_t n_slices;

    float *frozen; /* device buffers */
    size_t n_frozen;
    float *trainable, *grad;
    size_t n_trainable;
    uint16_t *lowp; /* bf16 precision: bf16 copies of frozen then trainable (n_frozen + n_trainable), else NULL */

    fm_arena arena;    /* activations for up to cap_B samples */
    int cap_B;         /* batch the arena was sized for (0: none yet) */
    int acts_B;        /* batch the current views are carved for */
    int32_t *eot;      /* host copy of the pooled text positions, cap_B */
    fm_tensor eot_dev; /* (B) i32 device copy of eot (CUDA only) */

    /* head */
    fm_tensor scale, loss;          /* 0-dim: the clamped log-scale in use, the loss */
    fm_tensor probs_i2t, probs_t2i; /* (B, B) */
    fm_tensor dimg, dtxt;           /* (B, E) gradients wrt the normalised embeddings */
    fm_tensor lora_S;               /* (r, r) = scaling · I */
    /* scratch shared by the towers, reshaped per use (flat, sized for the larger tower); tmp_u and dts exist on
     * the CPU only, dt is bf16 under bf16 */
    fm_tensor tmp, tmp_u, dres, dln, dq, dk, dv, da, dh, dg, dt, dts, dpool, dpool_ln, dproj;
    fm_tensor dy_lp; /* bf16 only: (B·T·max(W, M)) bf16, the gradient a GEMM reads, rounded once (by the linear's
                        backward, or by the fused kernel that made it: see layer_backward in clip_forward.c) */
    /* LoRA dropout (see CLIP_DROPOUT_KEY) */
    uint64_t dropout_step;     /* the step the next training forward uses */
    uint64_t dropout_pass;     /* the step of the training forward under way */
    int dropout_on;            /* 1 while a training forward runs with lora_dropout > 0 */
    fm_tensor drop_x, drop_dx; /* flat scratch (B·T·max(in)): the dropped input and its gradient, p > 0 only */
    int loss_clamped;          /* the last forward used ln(100) instead of logit_scale */
    int fwd_towers;            /* towers (FM_CLIP_TOWER_* bits) whose activations fm_clip_forward kept;
                                  0 after any other pass */
};

/* bf16 mixed precision (CUDA only; fm_clip_create refuses it elsewhere). */
static inline int clip_lowp(const fm_clip *m) { return m->cfg.precision == FM_PRECISION_BF16; }

/* --- clip.c --- */
/* Makes sure the arena holds activations for B samples and carves the views for exactly B. */
fm_status clip_ensure_acts(fm_clip *m, int B);
/* A contiguous view of `ndim`/`shape` (buf's dtype) at the start of the flat scratch `buf`. */
fm_status clip_view(fm_tensor *out, const fm_tensor *buf, int ndim, const int64_t *shape);
/* A contiguous f32 view of `ndim`/`shape` starting `offset` elements into `t`. */
fm_status clip_sub(fm_tensor *out, const fm_tensor *t, size_t offset, int ndim, const int64_t *shape);
fm_status clip_zero(fm_tensor *t);
/* Samples per chunk for the encode functions. */
int clip_encode_chunk(fm_clip *m, int B);
/* Whether the model's adapters use dropout in training (LoRA, rank > 0, lora_dropout > 0). */
int clip_has_dropout(const fm_clip *m);

/* --- clip_forward.c --- */
fm_status clip_tower_forward(fm_clip *m, clip_tower *tw, int B);
fm_status clip_tower_backward(fm_clip *m, clip_tower *tw, int B, const fm_tensor *dnormed);

/* --- clip_cuda.c: the device path's own steps (kernels/model_ops.h); FM_ERR_DEVICE in a build without CUDA --- */
/* Under bf16: every parameter's bf16 copy from its fp32 value (one cast per buffer). */
fm_status clip_cuda_refresh_lowp(fm_clip *m);
/* An adapted linear with the LoRA path accumulated into y by the GEMM (no (B, T, out) temporary); x is fp32, or
 * bf16 under bf16 (then the bf16 weight copies are used). Same contract as the CPU path in clip_forward.c. */
fm_status clip_cuda_linear_forward(fm_clip *m, const clip_linear *l, clip_lora_acts *la, fm_tensor *y,
                                   const fm_tensor *x);
/* dy_lp_ready (bf16 only): m->dy_lp already holds dy rounded to bf16, and dy's fp32 values are not read. */
fm_status clip_cuda_linear_backward(fm_clip *m, const clip_linear *l, const clip_lora_acts *la, fm_tensor *dx,
                                    const fm_tensor *dy, const fm_tensor *x, int dy_lp_ready);
/* dst (bf16) = src (fp32), same number of elements. */
fm_status clip_cuda_cast(fm_tensor *dst, const fm_tensor *src);
/* h = a + b (b NULL: no add, h unused) and out = LN(h)·w + bias in out's type, mean and rstd per row: one kernel
 * (kernels/residual_norm.cu), the residual op and the layernorm op of the CPU path fused. */
fm_status clip_cuda_add_norm_forward(fm_clip *m, fm_tensor *h, const fm_tensor *a, const fm_tensor *b, fm_tensor *out,
                                     fm_tensor *mean, fm_tensor *rstd, const clip_p *w, const clip_p *bias);
/* dres += LN'(dout) at h, the norm's gradients where they train, in one pass; with `lp` (bf16) also m->dy_lp = the
 * updated dres rounded. */
fm_status clip_cuda_add_norm_backward(fm_clip *m, fm_tensor *dres, const fm_tensor *dout, const fm_tensor *h,
                                      const fm_tensor *mean, const fm_tensor *rstd, const clip_p *w, const clip_p *b,
                                      int lp);
/* The MLP's activation (the config's hidden_act) in one kernel: out = act(h) in out's type (fp32 or bf16). */
fm_status clip_cuda_act_forward(fm_clip *m, fm_tensor *out, const fm_tensor *h);
/* dh = act'(h)·dg, written (not accumulated); under bf16 into m->dy_lp, rounded, and dh is not written. */
fm_status clip_cuda_act_backward(fm_clip *m, fm_tensor *dh, const fm_tensor *h, const fm_tensor *dg);
/* The vision tower's input rows and the pooled rows, one launch each (the CPU path loops over the batch). */
fm_status clip_cuda_vision_embed_forward(fm_clip *m, clip_tower *tw, int B);
fm_status clip_cuda_vision_embed_backward(fm_clip *m, clip_tower *tw, int B, const fm_tensor *demb,
                                          fm_tensor *dpatches);
fm_status clip_cuda_pool_forward(fm_clip *m, clip_tower *tw, int B);
fm_status clip_cuda_pool_backward(fm_clip *m, clip_tower *tw, int B, fm_tensor *dres, const fm_tensor *dpool);

#endif
