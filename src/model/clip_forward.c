/* CLIP forward and backward through the dispatched ops: LoRA-adapted linears, pre-LN encoder layers, the
 * ViT and text towers with their pooling and projections, the InfoNCE head, and the public training and
 * encoding entry points. Backward ops accumulate, so every activation gradient is zeroed before use.
 *
 * One path for both devices: the ops dispatch by the tensors' device. Where the GPU does better than the op
 * sequence (clip_cuda.c) the CUDA model takes its own step: the adapted linears with the LoRA path fused into
 * the base GEMM's output (and bf16 GEMMs under bf16 precision), and the batched row gathers of the towers. The
 * CPU steps are the reference those are tested against (tests/gpu/test_model_*.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fedmm/ops.h"
#include "model/clip_internal.h"

#define SHAPE(...)                                                                                                     \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]) { __VA_ARGS__ }

static const float LOGIT_SCALE_MAX = 4.605170186f; /* ln(100), CLIP's clamp */

/* ---- linear with an optional adapter ------------------------------------------------------------- */

/* y (B, T, out) = x·Wᵀ + b [+ scaling·(xa·Aᵀ)·Bᵀ], xa = dropout(x) in a training pass with lora_dropout > 0
 * (its mask kept in la->mask), else x. */
static fm_status linear_forward(fm_clip *m, const clip_linear *l, clip_lora_acts *la, fm_tensor *y, const fm_tensor *x)
{
    if (m->device == FM_DEVICE_CUDA)
        return clip_cuda_linear_forward(m, l, la, y, x);
    FM_TRY(fm_linear_forward(y, x, &l->w.v, l->has_bias ? &l->b.v : NULL));
    if (!l->lora || m->merged)
        return FM_OK;
    const fm_tensor *xa = x;
    fm_tensor xd;
    if (m->dropout_on) {
        FM_TRY(clip_view(&xd, &m->drop_x, x->ndim, x->shape));
        FM_TRY(fm_dropout_forward(&xd, &la->mask, x, m->cfg.lora_dropout, m->seed ^ CLIP_DROPOUT_KEY,
                                  m->dropout_pass << 16 | l->lora_id));
        xa = &xd;
    }
    FM_TRY(fm_linear_forward(&la->t, xa, &l->A.v, NULL));
    if (la->ts.data != la->t.data)
        FM_TRY(fm_linear_forward(&la->ts, &la->t, &m->lora_S, NULL));
    fm_tensor u;
    FM_TRY(clip_view(&u, &m->tmp_u, y->ndim, y->shape));
    FM_TRY(fm_linear_forward(&u, &la->ts, &l->B.v, NULL));
    return fm_residual_forward(y, y, &u);
}

/* dx += dy·W [+ the adapter path]; weight, bias and adapter gradients accumulate where they train. Under LoRA
 * dropout (backward always follows a training forward) dA uses the dropped input and dx gets mask ⊙ (dt·A).
 * dy_lp_ready (CUDA bf16 only): m->dy_lp already holds dy rounded to bf16, written by the kernel that made dy. */
static fm_status linear_backward(fm_clip *m, const clip_linear *l, const clip_lora_acts *la, fm_tensor *dx,
                                 const fm_tensor *dy, const fm_tensor *x, int dy_lp_ready)
{
    if (m->device == FM_DEVICE_CUDA)
        return clip_cuda_linear_backward(m, l, la, dx, dy, x, dy_lp_ready);
    FM_TRY(fm_linear_backward(dx, CLIP_GRAD(l->w), l->has_bias ? CLIP_GRAD(l->b) : NULL, dy, x, &l->w.v));
    if (!l->lora)
        return FM_OK;
    fm_tensor dts, dt;
    FM_TRY(clip_view(&dts, &m->dts, la->ts.ndim, la->ts.shape));
    FM_TRY(clip_zero(&dts));
    FM_TRY(fm_linear_backward(&dts, CLIP_GRAD(l->B), NULL, dy, &la->ts, &l->B.v));
    if (la->ts.data != la->t.data) {
        FM_TRY(clip_view(&dt, &m->dt, la->t.ndim, la->t.shape));
        FM_TRY(clip_zero(&dt));
        FM_TRY(fm_linear_backward(&dt, NULL, NULL, &dts, &la->t, &m->lora_S));
    } else {
        dt = dts;
    }
    if (!clip_has_dropout(m))
        return fm_linear_backward(dx, CLIP_GRAD(l->A), NULL, &dt, x, &l->A.v);
    /* xd = 0 + x·mask: forward's x·mask bit for bit (up to the sign of a zero). */
    fm_tensor xd, dxd;
    FM_TRY(clip_view(&xd, &m->drop_x, x->ndim, x->shape));
    FM_TRY(clip_zero(&xd));
    FM_TRY(fm_dropout_backward(&xd, x, &la->mask));
    FM_TRY(clip_view(&dxd, &m->drop_dx, x->ndim, x->shape));
    FM_TRY(clip_zero(&dxd));
    FM_TRY(fm_linear_backward(dx ? &dxd : NULL, CLIP_GRAD(l->A), NULL, &dt, &xd, &l->A.v));
    return dx ? fm_dropout_backward(dx, &dxd, &la->mask) : FM_OK;
}

/* ---- one pre-LN encoder layer -------------------------------------------------------------------- */

/* The MLP's activation; on CUDA one kernel that writes out in its own type (bf16 under bf16: no cast after). */
static fm_status act_forward(fm_clip *m, fm_tensor *out, const fm_tensor *inp)
{
    if (m->device == FM_DEVICE_CUDA)
        return clip_cuda_act_forward(m, out, inp);
    return m->cfg.hidden_act == FM_CLIP_ACT_GELU ? fm_gelu_forward(out, inp) : fm_quick_gelu_forward(out, inp);
}

/* dinp = act'(inp)·dout. The CPU accumulates into a zeroed dinp; CUDA writes it in one kernel (under bf16 into
 * m->dy_lp, rounded: the only reader is fc1's backward, whose GEMMs take it from there). */
static fm_status act_backward(fm_clip *m, fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout)
{
    if (m->device == FM_DEVICE_CUDA)
        return clip_cuda_act_backward(m, dinp, inp, dout);
    FM_TRY(clip_zero(dinp));
    return m->cfg.hidden_act == FM_CLIP_ACT_GELU ? fm_gelu_backward(dinp, inp, dout)
                                                 : fm_quick_gelu_backward(dinp, inp, dout);
}

/* h = a + b, then out = LN(h) (b NULL: out = LN(a), h unused). The CPU runs the residual and layernorm ops; CUDA one
 * fused kernel that writes out in its own type (bf16 under bf16: no cast after). */
static fm_status add_norm_forward(fm_clip *m, fm_tensor *h, const fm_tensor *a, const fm_tensor *b, fm_tensor *out,
                                  fm_tensor *mean, fm_tensor *rstd, const clip_p *w, const clip_p *bias)
{
    if (m->device == FM_DEVICE_CUDA)
        return clip_cuda_add_norm_forward(m, h, a, b, out, mean, rstd, w, bias);
    if (b)
        FM_TRY(fm_residual_forward(h, a, b));
    return fm_layernorm_forward(out, mean, rstd, b ? h : a, &w->v, &bias->v, m->cfg.layer_norm_eps);
}

/* dres += LN'(dout) at the norm's input h (dres is the residual stream's gradient: both branches of the add that
 * made h); the norm's parameters accumulate where they train. On CUDA one fused kernel, which with `lp` (bf16)
 * also leaves the updated dres rounded in m->dy_lp for the GEMMs that read it next. */
static fm_status add_norm_backward(fm_clip *m, fm_tensor *dres, const fm_tensor *dout, const fm_tensor *h,
                                   const fm_tensor *mean, const fm_tensor *rstd, const clip_p *w, const clip_p *b,
                                   int lp)
{
    if (m->device == FM_DEVICE_CUDA)
        return clip_cuda_add_norm_backward(m, dres, dout, h, mean, rstd, w, b, lp);
    return fm_layernorm_backward(dres, CLIP_GRAD(*w), CLIP_GRAD(*b), dout, h, &w->v, mean, rstd);
}

/* xout = xmid + MLP(LN2(xmid)), xmid = x + Attn(LN1(x)); x, xout (B, T, W). On CUDA the residual adds are fused
 * with the layernorm after them: xmid with LN2, and xout with the next layer's LN1 (so a layer above the first finds
 * its ln1 made). */
static fm_status layer_forward(fm_clip *m, clip_tower *tw, int l, const fm_tensor *x, fm_tensor *xout)
{
    const clip_layer *p = &tw->layers[l];
    clip_layer_acts *a = &tw->acts.layers[l];
    const int lowp = clip_lowp(m), cuda = m->device == FM_DEVICE_CUDA;
    fm_tensor tmp;
    FM_TRY(clip_view(&tmp, &m->tmp, x->ndim, x->shape));
    if (!cuda || l == 0)
        FM_TRY(add_norm_forward(m, NULL, x, NULL, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &p->ln1_w, &p->ln1_b));
    FM_TRY(linear_forward(m, &p->q, &a->lq, &a->q, &a->ln1));
    FM_TRY(linear_forward(m, &p->k, &a->lk, &a->k, &a->ln1));
    FM_TRY(linear_forward(m, &p->v, &a->lv, &a->v, &a->ln1));
    FM_TRY(fm_attention_forward(&a->a, &a->lse, &a->q, &a->k, &a->v, NULL, tw->causal, tw->NH));
    if (lowp)
        FM_TRY(clip_cuda_cast(&a->ab, &a->a));
    FM_TRY(linear_forward(m, &p->o, &a->lo, &tmp, lowp ? &a->ab : &a->a));
    FM_TRY(add_norm_forward(m, &a->xmid, x, &tmp, &a->ln2, &a->ln2_mean, &a->ln2_rstd, &p->ln2_w, &p->ln2_b));
    FM_TRY(linear_forward(m, &p->fc1, &a->lfc1, &a->h, &a->ln2));
    FM_TRY(act_forward(m, &a->g, &a->h));
    FM_TRY(linear_forward(m, &p->fc2, &a->lfc2, &tmp, &a->g));
    if (cuda && l + 1 < tw->L) {
        const clip_layer *np = &tw->layers[l + 1];
        clip_layer_acts *na = &tw->acts.layers[l + 1];
        return add_norm_forward(m, xout, &a->xmid, &tmp, &na->ln1, &na->ln1_mean, &na->ln1_rstd, &np->ln1_w,
                                &np->ln1_b);
    }
    return fm_residual_forward(xout, &a->xmid, &tmp);
}

/* On entry dres holds dL/dxout; on return dL/dx (both branches of each residual add into it).
 *
 * Under bf16 (CUDA) the gradients that feed GEMMs reach them already rounded in m->dy_lp, from the kernel that made
 * them, where that kernel is ours: dxout from the layer above's fused ln1 backward (the top layer's comes from the
 * pooling scatter and is rounded by fc2's backward itself), dh from the activation's backward (dh itself is then
 * never written in fp32), dxmid from ln2's backward. dq, dk, dv (attention's fp32 kernel) are rounded by the
 * linears' backward. Each is read by the very next linear backward, before anything else writes m->dy_lp. */
static fm_status layer_backward(fm_clip *m, clip_tower *tw, int l, const fm_tensor *x, fm_tensor *dres)
{
    const clip_layer *p = &tw->layers[l];
    const clip_layer_acts *a = &tw->acts.layers[l];
    const int lp = clip_lowp(m);
    fm_tensor dg, dh, dln, da, dq, dk, dv;
    FM_TRY(clip_view(&dg, &m->dg, a->h.ndim, a->h.shape));
    FM_TRY(clip_view(&dh, &m->dh, a->h.ndim, a->h.shape));
    FM_TRY(clip_view(&dln, &m->dln, x->ndim, x->shape));
    FM_TRY(clip_view(&da, &m->da, x->ndim, x->shape));
    FM_TRY(clip_view(&dq, &m->dq, x->ndim, x->shape));
    FM_TRY(clip_view(&dk, &m->dk, x->ndim, x->shape));
    FM_TRY(clip_view(&dv, &m->dv, x->ndim, x->shape));
    /* MLP branch */
    FM_TRY(clip_zero(&dg));
    FM_TRY(linear_backward(m, &p->fc2, &a->lfc2, &dg, dres, &a->g, lp && l + 1 < tw->L));
    FM_TRY(act_backward(m, &dh, &a->h, &dg));
    FM_TRY(clip_zero(&dln));
    FM_TRY(linear_backward(m, &p->fc1, &a->lfc1, &dln, &dh, &a->ln2, lp));
    FM_TRY(add_norm_backward(m, dres, &dln, &a->xmid, &a->ln2_mean, &a->ln2_rstd, &p->ln2_w, &p->ln2_b, lp));
    /* attention branch */
    FM_TRY(clip_zero(&da));
    FM_TRY(linear_backward(m, &p->o, &a->lo, &da, dres, lp ? &a->ab : &a->a, lp));
    FM_TRY(clip_zero(&dq));
    FM_TRY(clip_zero(&dk));
    FM_TRY(clip_zero(&dv));
    FM_TRY(fm_attention_backward(&dq, &dk, &dv, &da, &a->q, &a->k, &a->v, &a->a, &a->lse, NULL, tw->causal, tw->NH));
    FM_TRY(clip_zero(&dln));
    FM_TRY(linear_backward(m, &p->q, &a->lq, &dln, &dq, &a->ln1, 0));
    FM_TRY(linear_backward(m, &p->k, &a->lk, &dln, &dk, &a->ln1, 0));
    FM_TRY(linear_backward(m, &p->v, &a->lv, &dln, &dv, &a->ln1, 0));
    /* the layer below (if it trains) reads dres next, in its fc2 backward */
    return add_norm_backward(m, dres, &dln, x, &a->ln1_mean, &a->ln1_rstd, &p->ln1_w, &p->ln1_b,
                             lp && l > tw->lowest_trainable);
}

/* ---- towers -------------------------------------------------------------------------------------- */

/* The sequence position each sample is pooled at: the class token (0) or the caller's EOT position. */
static int pool_pos(const fm_clip *m, const clip_tower *tw, int b)
{
    return tw->id == FM_CLIP_TOWER_TEXT ? m->eot[b] : 0;
}

static fm_status copy_row(fm_clip *m, const fm_tensor *dst, size_t dst_off, const fm_tensor *src, size_t src_off,
                          size_t n)
{
    return fm_device_copy((float *)dst->data + dst_off, m->device, (const float *)src->data + src_off, m->device,
                          n * sizeof(float));
}

/* Forward of one tower on its input (already in acts.input) down to acts.normed (B, E). */
fm_status clip_tower_forward(fm_clip *m, clip_tower *tw, int B)
{
    clip_tower_acts *a = &tw->acts;
    size_t T = (size_t)tw->T, W = (size_t)tw->W;
    float eps = m->cfg.layer_norm_eps;
    if (tw->id == FM_CLIP_TOWER_VISION) {
        size_t NP = T - 1;
        FM_TRY(fm_patch_embed_forward(&a->patches, &a->cols, &a->input, &tw->patch_w.v, NULL));
        if (m->device == FM_DEVICE_CUDA)
            FM_TRY(clip_cuda_vision_embed_forward(m, tw, B));
        for (int b = 0; m->device == FM_DEVICE_CPU && b < B; b++) {
            /* emb[b] = [class; patches[b]] + position embedding */
            fm_tensor row;
            FM_TRY(copy_row(m, &a->emb, (size_t)b * T * W, &tw->class_emb.v, 0, W));
            FM_TRY(copy_row(m, &a->emb, (size_t)b * T * W + W, &a->patches, (size_t)b * NP * W, NP * W));
            FM_TRY(clip_sub(&row, &a->emb, (size_t)b * T * W, SHAPE((int64_t)T, (int64_t)W)));
            FM_TRY(fm_residual_forward(&row, &row, &tw->pos_emb.v));
        }
        FM_TRY(fm_layernorm_forward(&a->res[0], &a->pre_mean, &a->pre_rstd, &a->emb, &tw->pre_ln_w.v, &tw->pre_ln_b.v,
                                    eps));
    } else {
        FM_TRY(fm_embedding_forward(&a->res[0], &a->input, &tw->tok_emb.v, &tw->pos_emb.v));
    }
    for (int l = 0; l < tw->L; l++)
        FM_TRY(layer_forward(m, tw, l, &a->res[l], &a->res[l + 1]));
    /* Pool one position per sample, then the final layernorm (per row, so pooling first is the same as HF's
     * normalising every position and pooling after). */
    if (m->device == FM_DEVICE_CUDA)
        FM_TRY(clip_cuda_pool_forward(m, tw, B));
    for (int b = 0; m->device == FM_DEVICE_CPU && b < B; b++)
        FM_TRY(copy_row(m, &a->pooled, (size_t)b * W, &a->res[tw->L], ((size_t)b * T + (size_t)pool_pos(m, tw, b)) * W,
                        W));
    FM_TRY(fm_layernorm_forward(&a->pooled_ln, &a->pooled_mean, &a->pooled_rstd, &a->pooled, &tw->final_ln_w.v,
                                &tw->final_ln_b.v, eps));
    FM_TRY(fm_linear_forward(&a->proj, &a->pooled_ln, &tw->proj.w.v, NULL));
    return fm_l2norm_forward(&a->normed, &a->norm, &a->proj);
}

/* Backward of one tower from dL/dnormed (B, E); accumulates into the trainable gradients. */
fm_status clip_tower_backward(fm_clip *m, clip_tower *tw, int B, const fm_tensor *dnormed)
{
    if (!tw->needs_grad)
        return FM_OK;
    clip_tower_acts *a = &tw->acts;
    size_t T = (size_t)tw->T, W = (size_t)tw->W;
    fm_tensor dproj, dpool_ln, dpool, dres;
    FM_TRY(clip_view(&dproj, &m->dproj, a->proj.ndim, a->proj.shape));
    FM_TRY(clip_zero(&dproj));
    FM_TRY(fm_l2norm_backward(&dproj, dnormed, &a->normed, &a->norm));
    int below = tw->lowest_trainable < tw->L; /* anything under the projection trains */
    FM_TRY(clip_view(&dpool_ln, &m->dpool_ln, a->pooled_ln.ndim, a->pooled_ln.shape));
    FM_TRY(clip_zero(&dpool_ln));
    FM_TRY(fm_linear_backward(below ? &dpool_ln : NULL, CLIP_GRAD(tw->proj.w), NULL, &dproj, &a->pooled_ln,
                              &tw->proj.w.v));
    if (!below)
        return FM_OK;
    FM_TRY(clip_view(&dpool, &m->dpool, a->pooled.ndim, a->pooled.shape));
    FM_TRY(clip_zero(&dpool));
    FM_TRY(fm_layernorm_backward(&dpool, CLIP_GRAD(tw->final_ln_w), CLIP_GRAD(tw->final_ln_b), &dpool_ln, &a->pooled,
                                 &tw->final_ln_w.v, &a->pooled_mean, &a->pooled_rstd));
    FM_TRY(clip_view(&dres, &m->dres, a->res[0].ndim, a->res[0].shape));
    FM_TRY(clip_zero(&dres));
    if (m->device == FM_DEVICE_CUDA)
        FM_TRY(clip_cuda_pool_backward(m, tw, B, &dres, &dpool));
    for (int b = 0; m->device == FM_DEVICE_CPU && b < B; b++)
        FM_TRY(copy_row(m, &dres, ((size_t)b * T + (size_t)pool_pos(m, tw, b)) * W, &dpool, (size_t)b * W, W));
    for (int l = tw->L - 1; l >= tw->lowest_trainable; l--)
        FM_TRY(layer_backward(m, tw, l, &a->res[l], &dres));
    if (!tw->emb_trains)
        return FM_OK;
    if (tw->id == FM_CLIP_TOWER_TEXT)
        return fm_embedding_backward(CLIP_GRAD(tw->tok_emb), CLIP_GRAD(tw->pos_emb), &dres, &a->input);
    /* vision: through pre_layrnorm, then split into class token, positions and patches */
    size_t NP = T - 1;
    fm_tensor demb, dpatches;
    FM_TRY(clip_view(&demb, &m->dq, a->emb.ndim, a->emb.shape));
    FM_TRY(clip_zero(&demb));
    FM_TRY(fm_layernorm_backward(&demb, CLIP_GRAD(tw->pre_ln_w), CLIP_GRAD(tw->pre_ln_b), &dres, &a->emb,
                                 &tw->pre_ln_w.v, &a->pre_mean, &a->pre_rstd));
    FM_TRY(clip_view(&dpatches, &m->dk, a->patches.ndim, a->patches.shape));
    if (m->device == FM_DEVICE_CUDA)
        FM_TRY(clip_cuda_vision_embed_backward(m, tw, B, &demb, &dpatches));
    for (int b = 0; m->device == FM_DEVICE_CPU && b < B; b++) {
        fm_tensor row, cls;
        FM_TRY(clip_sub(&row, &demb, (size_t)b * T * W, SHAPE((int64_t)T, (int64_t)W)));
        FM_TRY(clip_sub(&cls, &demb, (size_t)b * T * W, SHAPE((int64_t)W)));
        FM_TRY(fm_residual_backward(NULL, CLIP_GRAD(tw->pos_emb), &row));
        FM_TRY(fm_residual_backward(NULL, CLIP_GRAD(tw->class_emb), &cls));
        FM_TRY(copy_row(m, &dpatches, (size_t)b * NP * W, &demb, (size_t)b * T * W + W, NP * W));
    }
    return fm_patch_embed_backward(CLIP_GRAD(tw->patch_w), NULL, NULL, &dpatches, &a->cols, &tw->patch_w.v);
}

/* ---- inputs -------------------------------------------------------------------------------------- */

static fm_status check_batch(const char *fn, const void *m, int B)
{
    if (!m)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL model", fn);
    if (B < 1)
        return fm_error(FM_ERR_INVALID_ARG, "%s: batch size %d, expected >= 1", fn, B);
    return FM_OK;
}

static fm_status load_images(fm_clip *m, const float *images, int B)
{
    (void)B; /* the views are carved for exactly B samples */
    return fm_device_copy(m->vision.acts.input.data, m->device, images, FM_DEVICE_CPU,
                          fm_tensor_nbytes(&m->vision.acts.input));
}

static fm_status load_texts(fm_clip *m, const char *fn, const int32_t *tokens, const int32_t *eot_pos, int B)
{
    int T = m->text.T;
    for (int b = 0; b < B; b++) {
        if (eot_pos[b] < 0 || eot_pos[b] >= T)
            return fm_error(FM_ERR_RANGE, "%s: eot_pos[%d] = %d is outside [0, context_length = %d)", fn, b,
                            (int)eot_pos[b], T);
        m->eot[b] = eot_pos[b];
    }
    if (m->device != FM_DEVICE_CPU) /* the pooling kernels read the positions on the device */
        FM_TRY(fm_device_copy(m->eot_dev.data, m->device, eot_pos, FM_DEVICE_CPU, (size_t)B * sizeof(int32_t)));
    /* Token ids are range-checked by the embedding op, which names the offending position. */
    return fm_device_copy(m->text.acts.input.data, m->device, tokens, FM_DEVICE_CPU,
                          (size_t)B * (size_t)T * sizeof(int32_t));
}

/* ---- the loss ------------------------------------------------------------------------------------ */

/* Starts a training forward: LoRA dropout on (when configured) with this pass's step, the step advanced. */
static void train_begin(fm_clip *m)
{
    m->dropout_on = clip_has_dropout(m);
    m->dropout_pass = m->dropout_step++;
}

/* Both towers (dropout on only for `train`) on B pairs. */
/* Starts any forward pass: under bf16 the weights' bf16 copies are made from the current fp32 values (the
 * caller may have written the trainable vector or a parameter since the last pass). */
static fm_status pass_begin(fm_clip *m) { return clip_lowp(m) ? clip_cuda_refresh_lowp(m) : FM_OK; }

static fm_status towers_forward(fm_clip *m, int train, int B)
{
    FM_TRY(pass_begin(m));
    if (train)
        train_begin(m);
    fm_status st = clip_tower_forward(m, &m->vision, B);
    if (st == FM_OK)
        st = clip_tower_forward(m, &m->text, B);
    m->dropout_on = 0;
    return st;
}

/* Both towers and the InfoNCE loss on B pairs; *loss on the host. `train`: a training pass (LoRA dropout). */
static fm_status loss_forward(fm_clip *m, const char *fn, int train, const float *images, const int32_t *tokens,
                              const int32_t *eot_pos, int B, float *loss)
{
    FM_TRY(check_batch(fn, m, B));
    if (!images || !tokens || !eot_pos || !loss)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL images, tokens, eot_pos or loss", fn);
    FM_TRY(clip_ensure_acts(m, B));
    FM_TRY(load_images(m, images, B));
    FM_TRY(load_texts(m, fn, tokens, eot_pos, B));
    FM_TRY(towers_forward(m, train, B));
    float ls;
    FM_TRY(fm_device_copy(&ls, FM_DEVICE_CPU, m->logit_scale.v.data, m->device, sizeof ls));
    if (!isfinite(ls))
        return fm_error(FM_ERR_NOT_FINITE, "%s: logit_scale is %g", fn, (double)ls);
    m->loss_clamped = ls > LOGIT_SCALE_MAX;
    if (m->loss_clamped)
        ls = LOGIT_SCALE_MAX;
    FM_TRY(fm_device_copy(m->scale.data, m->device, &ls, FM_DEVICE_CPU, sizeof ls));
    FM_TRY(fm_infonce_forward(&m->loss, &m->probs_i2t, &m->probs_t2i, &m->vision.acts.normed, &m->text.acts.normed,
                              &m->scale));
    return fm_device_copy(loss, FM_DEVICE_CPU, m->loss.data, m->device, sizeof *loss);
}

fm_status fm_clip_loss(fm_clip *m, const float *images, const int32_t *tokens, const int32_t *eot_pos, int B,
                       float *loss)
{
    return loss_forward(m, "clip loss", 0, images, tokens, eot_pos, B, loss);
}

fm_status fm_clip_forward_backward(fm_clip *m, const float *images, const int32_t *tokens, const int32_t *eot_pos,
                                   int B, float *loss)
{
    static const char fn[] = "clip forward_backward";
    FM_TRY(check_batch(fn, m, B));
    if (m->merged)
        return fm_error(FM_ERR_STATE, "%s: the LoRA adapters are merged; unmerge them before training", fn);
    FM_TRY(loss_forward(m, fn, 1, images, tokens, eot_pos, B, loss));
    FM_TRY(clip_zero(&m->dimg));
    FM_TRY(clip_zero(&m->dtxt));
    /* The clamp is a constant beyond ln(100): no gradient flows to logit_scale there. */
    fm_tensor *dls = m->loss_clamped ? NULL : CLIP_GRAD(m->logit_scale);
    FM_TRY(fm_infonce_backward(&m->dimg, &m->dtxt, dls, &m->vision.acts.normed, &m->text.acts.normed, &m->probs_i2t,
                               &m->probs_t2i, &m->scale, 1.0f));
    FM_TRY(clip_tower_backward(m, &m->vision, B, &m->dimg));
    return clip_tower_backward(m, &m->text, B, &m->dtxt);
}

fm_status fm_clip_logit_scale(fm_clip *m, float *scale)
{
    if (!m || !scale)
        return fm_error(FM_ERR_INVALID_ARG, "clip logit_scale: NULL argument");
    float ls;
    FM_TRY(fm_device_copy(&ls, FM_DEVICE_CPU, m->logit_scale.v.data, m->device, sizeof ls));
    *scale = expf(ls < LOGIT_SCALE_MAX ? ls : LOGIT_SCALE_MAX);
    return FM_OK;
}

/* ---- forward and backward for the caller's loss -------------------------------------------------- */

fm_status fm_clip_forward(fm_clip *m, const float *images, const int32_t *tokens, const int32_t *eot_pos, int B,
                          float *img_emb, float *txt_emb)
{
    static const char fn[] = "clip forward";
    FM_TRY(check_batch(fn, m, B));
    if (!images && !tokens)
        return fm_error(FM_ERR_INVALID_ARG, "%s: neither images nor tokens", fn);
    if (tokens && !eot_pos)
        return fm_error(FM_ERR_INVALID_ARG, "%s: tokens without eot_pos", fn);
    size_t bytes = (size_t)B * (size_t)m->cfg.embed_dim * sizeof(float);
    FM_TRY(clip_ensure_acts(m, B));
    if (tokens) /* checked before the step advances or anything runs */
        FM_TRY(load_texts(m, fn, tokens, eot_pos, B));
    if (images)
        FM_TRY(load_images(m, images, B));
    FM_TRY(pass_begin(m));
    train_begin(m); /* a training pass: fm_clip_backward follows */
    fm_status st = images ? clip_tower_forward(m, &m->vision, B) : FM_OK;
    if (st == FM_OK && tokens)
        st = clip_tower_forward(m, &m->text, B);
    m->dropout_on = 0;
    FM_TRY(st);
    if (images && img_emb)
        FM_TRY(fm_device_copy(img_emb, FM_DEVICE_CPU, m->vision.acts.normed.data, m->device, bytes));
    if (tokens && txt_emb)
        FM_TRY(fm_device_copy(txt_emb, FM_DEVICE_CPU, m->text.acts.normed.data, m->device, bytes));
    m->fwd_towers = (images ? FM_CLIP_TOWER_VISION : 0) | (tokens ? FM_CLIP_TOWER_TEXT : 0);
    return FM_OK;
}

fm_status fm_clip_backward(fm_clip *m, const float *d_img_emb, const float *d_txt_emb)
{
    static const char fn[] = "clip backward";
    if (!m)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL model", fn);
    if (m->merged)
        return fm_error(FM_ERR_STATE, "%s: the LoRA adapters are merged; unmerge them before training", fn);
    if (!m->fwd_towers)
        return fm_error(FM_ERR_STATE, "%s: no activations of fm_clip_forward (another pass ran since)", fn);
    if ((d_img_emb && !(m->fwd_towers & FM_CLIP_TOWER_VISION)) || (d_txt_emb && !(m->fwd_towers & FM_CLIP_TOWER_TEXT)))
        return fm_error(FM_ERR_STATE, "%s: a gradient for the %s tower, which fm_clip_forward did not run", fn,
                        d_img_emb && !(m->fwd_towers & FM_CLIP_TOWER_VISION) ? "image" : "text");
    int B = m->acts_B;
    size_t bytes = (size_t)B * (size_t)m->cfg.embed_dim * sizeof(float);
    if (d_img_emb) {
        FM_TRY(fm_device_copy(m->dimg.data, m->device, d_img_emb, FM_DEVICE_CPU, bytes));
        FM_TRY(clip_tower_backward(m, &m->vision, B, &m->dimg));
    }
    if (d_txt_emb) {
        FM_TRY(fm_device_copy(m->dtxt.data, m->device, d_txt_emb, FM_DEVICE_CPU, bytes));
        FM_TRY(clip_tower_backward(m, &m->text, B, &m->dtxt));
    }
    return FM_OK;
}

/* ---- encoding ------------------------------------------------------------------------------------ */

fm_status fm_clip_encode_images(fm_clip *m, const float *images, int B, float *emb)
{
    static const char fn[] = "clip encode_images";
    FM_TRY(check_batch(fn, m, B));
    if (!images || !emb)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL images or emb", fn);
    size_t E = (size_t)m->cfg.embed_dim, per = 3 * (size_t)m->cfg.image_size * (size_t)m->cfg.image_size;
    int chunk = clip_encode_chunk(m, B);
    FM_TRY(pass_begin(m));
    for (int b0 = 0; b0 < B; b0 += chunk) {
        int n = B - b0 < chunk ? B - b0 : chunk;
        FM_TRY(clip_ensure_acts(m, n));
        FM_TRY(load_images(m, images + (size_t)b0 * per, n));
        FM_TRY(clip_tower_forward(m, &m->vision, n));
        FM_TRY(fm_device_copy(emb + (size_t)b0 * E, FM_DEVICE_CPU, m->vision.acts.normed.data, m->device,
                              (size_t)n * E * sizeof(float)));
    }
    return FM_OK;
}

fm_status fm_clip_encode_texts(fm_clip *m, const int32_t *tokens, const int32_t *eot_pos, int B, float *emb)
{
    static const char fn[] = "clip encode_texts";
    FM_TRY(check_batch(fn, m, B));
    if (!tokens || !eot_pos || !emb)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL tokens, eot_pos or emb", fn);
    size_t E = (size_t)m->cfg.embed_dim, T = (size_t)m->text.T;
    int chunk = clip_encode_chunk(m, B);
    FM_TRY(pass_begin(m));
    for (int b0 = 0; b0 < B; b0 += chunk) {
        int n = B - b0 < chunk ? B - b0 : chunk;
        FM_TRY(clip_ensure_acts(m, n));
        FM_TRY(load_texts(m, fn, tokens + (size_t)b0 * T, eot_pos + b0, n));
        FM_TRY(clip_tower_forward(m, &m->text, n));
        FM_TRY(fm_device_copy(emb + (size_t)b0 * E, FM_DEVICE_CPU, m->text.acts.normed.data, m->device,
                              (size_t)n * E * sizeof(float)));
    }
    return FM_OK;
}
