/* The CLIP model's own steps on CUDA (declared in clip_internal.h), where one kernel or a fused GEMM does what
 * the CPU path does with a sequence of ops: the adapted linears with the LoRA path accumulated into the base
 * GEMM's output (kernels/lora.cu), bf16 mixed precision (bf16 weight copies and GEMM inputs, fp32
 * accumulation), and the towers' row gathers (kernels/clip_rows.cu). Built in every configuration; without
 * the CUDA backend each function answers FM_ERR_DEVICE (a CUDA model cannot exist there). */
#include "fedmm/ops.h"
#include "model/clip_internal.h"

#ifdef FEDMM_WITH_CUDA
#include "kernels/model_ops.h"
#endif

#ifndef FEDMM_WITH_CUDA

static fm_status no_cuda(const char *fn) { return fm_error(FM_ERR_DEVICE, "%s: this build has no CUDA backend", fn); }

fm_status clip_cuda_refresh_lowp(fm_clip *m)
{
    (void)m;
    return no_cuda("clip refresh_lowp");
}

fm_status clip_cuda_linear_forward(fm_clip *m, const clip_linear *l, clip_lora_acts *la, fm_tensor *y,
                                   const fm_tensor *x)
{
    (void)m, (void)l, (void)la, (void)y, (void)x;
    return no_cuda("clip linear_forward");
}

fm_status clip_cuda_linear_backward(fm_clip *m, const clip_linear *l, const clip_lora_acts *la, fm_tensor *dx,
                                    const fm_tensor *dy, const fm_tensor *x, int dy_lp_ready)
{
    (void)m, (void)l, (void)la, (void)dx, (void)dy, (void)x, (void)dy_lp_ready;
    return no_cuda("clip linear_backward");
}

fm_status clip_cuda_cast(fm_tensor *dst, const fm_tensor *src)
{
    (void)dst, (void)src;
    return no_cuda("clip cast");
}

fm_status clip_cuda_add_norm_forward(fm_clip *m, fm_tensor *h, const fm_tensor *a, const fm_tensor *b, fm_tensor *out,
                                     fm_tensor *mean, fm_tensor *rstd, const clip_p *w, const clip_p *bias)
{
    (void)m, (void)h, (void)a, (void)b, (void)out, (void)mean, (void)rstd, (void)w, (void)bias;
    return no_cuda("clip add_norm_forward");
}

fm_status clip_cuda_add_norm_backward(fm_clip *m, fm_tensor *dres, const fm_tensor *dout, const fm_tensor *h,
                                      const fm_tensor *mean, const fm_tensor *rstd, const clip_p *w, const clip_p *b,
                                      int lp)
{
    (void)m, (void)dres, (void)dout, (void)h, (void)mean, (void)rstd, (void)w, (void)b, (void)lp;
    return no_cuda("clip add_norm_backward");
}

fm_status clip_cuda_act_forward(fm_clip *m, fm_tensor *out, const fm_tensor *h)
{
    (void)m, (void)out, (void)h;
    return no_cuda("clip act_forward");
}

fm_status clip_cuda_act_backward(fm_clip *m, fm_tensor *dh, const fm_tensor *h, const fm_tensor *dg)
{
    (void)m, (void)dh, (void)h, (void)dg;
    return no_cuda("clip act_backward");
}

fm_status clip_cuda_vision_embed_forward(fm_clip *m, clip_tower *tw, int B)
{
    (void)m, (void)tw, (void)B;
    return no_cuda("clip vision_embed_forward");
}

fm_status clip_cuda_vision_embed_backward(fm_clip *m, clip_tower *tw, int B, const fm_tensor *demb, fm_tensor *dpatches)
{
    (void)m, (void)tw, (void)B, (void)demb, (void)dpatches;
    return no_cuda("clip vision_embed_backward");
}

fm_status clip_cuda_pool_forward(fm_clip *m, clip_tower *tw, int B)
{
    (void)m, (void)tw, (void)B;
    return no_cuda("clip pool_forward");
}

fm_status clip_cuda_pool_backward(fm_clip *m, clip_tower *tw, int B, fm_tensor *dres, const fm_tensor *dpool)
{
    (void)m, (void)tw, (void)B, (void)dres, (void)dpool;
    return no_cuda("clip pool_backward");
}

#else

fm_status clip_cuda_refresh_lowp(fm_clip *m)
{
    if (!m->lowp)
        return fm_error(FM_ERR_INTERNAL, "clip: bf16 precision without bf16 weight copies");
    FM_TRY(fm_cuda_f32_to_bf16(m->lowp, m->frozen, m->n_frozen));
    return fm_cuda_f32_to_bf16(m->lowp + m->n_frozen, m->trainable, m->n_trainable);
}

fm_status clip_cuda_cast(fm_tensor *dst, const fm_tensor *src)
{
    if (dst->dtype != FM_BF16 || src->dtype != FM_F32 || fm_tensor_numel(dst) != fm_tensor_numel(src))
        return fm_error(FM_ERR_INTERNAL, "clip cast: %s (%lld) from %s (%lld), expected bf16 from f32 of one size",
                        fm_dtype_name(dst->dtype), (long long)fm_tensor_numel(dst), fm_dtype_name(src->dtype),
                        (long long)fm_tensor_numel(src));
    return fm_cuda_f32_to_bf16(dst->data, src->data, (size_t)fm_tensor_numel(src));
}

/* Rows of an activation (the product of its leading dims) as an int for the GEMM sizes. */
static fm_status rows_of(const fm_tensor *x, int in, int *N)
{
    int64_t n = fm_tensor_numel(x) / (in > 0 ? in : 1);
    if (x->ndim < 1 || x->shape[x->ndim - 1] != in || n > INT32_MAX)
        return fm_error(FM_ERR_INTERNAL, "clip linear: input with last dim %lld for a layer of %d inputs",
                        (long long)(x->ndim ? x->shape[x->ndim - 1] : 0), in);
    *N = (int)n;
    return FM_OK;
}

/* The kernel's view of an adapted linear: the bf16 copies under bf16 (x is bf16 then), else the fp32 values. The
 * adapter takes no part while merged (forward only: training is refused then). */
static fm_status lora_args(const fm_clip *m, const clip_linear *l, const fm_tensor *x, fm_cuda_lora_args *a)
{
    const int lowp = x->dtype == FM_BF16;
    if (lowp && !l->w.lp.data)
        return fm_error(FM_ERR_INTERNAL, "clip linear: a bf16 input without bf16 weight copies");
    FM_TRY(rows_of(x, l->in, &a->N));
    a->C = l->in, a->OC = l->out, a->r = m->cfg.lora_rank;
    a->scaling = m->lora_scaling;
    a->in = lowp ? FM_GEMM_BF16 : FM_GEMM_F32;
    a->W = lowp ? l->w.lp.data : l->w.v.data;
    a->bias = l->has_bias ? l->b.v.data : NULL;
    const int adapter = l->lora && !m->merged;
    a->A = adapter ? (lowp ? l->A.lp.data : l->A.v.data) : NULL;
    a->B = adapter ? (lowp ? l->B.lp.data : l->B.v.data) : NULL;
    return FM_OK;
}

fm_status clip_cuda_linear_forward(fm_clip *m, const clip_linear *l, clip_lora_acts *la, fm_tensor *y,
                                   const fm_tensor *x)
{
    fm_cuda_lora_args a;
    FM_TRY(lora_args(m, l, x, &a));
    const void *xa = x->data;
    if (a.A && m->dropout_on) { /* fp32 only (validate refuses bf16 with LoRA dropout) */
        fm_tensor xd;
        FM_TRY(clip_view(&xd, &m->drop_x, x->ndim, x->shape));
        FM_TRY(fm_dropout_forward(&xd, &la->mask, x, m->cfg.lora_dropout, m->seed ^ CLIP_DROPOUT_KEY,
                                  m->dropout_pass << 16 | l->lora_id));
        xa = xd.data;
    }
    return fm_cuda_lora_forward(&a, y->data, a.A ? la->t.data : NULL, x->data, xa);
}

fm_status clip_cuda_linear_backward(fm_clip *m, const clip_linear *l, const clip_lora_acts *la, fm_tensor *dx,
                                    const fm_tensor *dy, const fm_tensor *x, int dy_lp_ready)
{
    fm_cuda_lora_args a;
    FM_TRY(lora_args(m, l, x, &a));
    if (dy_lp_ready && a.in != FM_GEMM_BF16)
        return fm_error(FM_ERR_INTERNAL, "clip linear_backward: a bf16 gradient handed to an fp32 layer");
    const void *xa = x->data;
    fm_tensor dxd;
    float *dx_lora = NULL;
    const int dropout = a.A && clip_has_dropout(m);
    if (dropout) {
        /* the dropped input again, x·mask, as forward made it; the adapter's part of dx goes through the mask */
        fm_tensor xd;
        FM_TRY(clip_view(&xd, &m->drop_x, x->ndim, x->shape));
        FM_TRY(clip_zero(&xd));
        FM_TRY(fm_dropout_backward(&xd, x, &la->mask));
        xa = xd.data;
        if (dx) {
            FM_TRY(clip_view(&dxd, &m->drop_dx, x->ndim, x->shape));
            dx_lora = dxd.data;
        }
    }
    FM_TRY(fm_cuda_lora_backward(&a, dx ? dx->data : NULL, dx_lora, l->w.g.data, l->has_bias ? l->b.g.data : NULL,
                                 a.A ? l->A.g.data : NULL, a.A ? l->B.g.data : NULL, a.A ? m->dt.data : NULL,
                                 a.in == FM_GEMM_BF16 ? m->dy_lp.data : NULL, dy_lp_ready ? NULL : dy->data, x->data,
                                 xa, a.A ? la->t.data : NULL));
    return dx_lora ? fm_dropout_backward(dx, &dxd, &la->mask) : FM_OK;
}

/* Rows and width of an activation (the product of the leading dims, the last dim) as ints for the row kernels. */
static fm_status rows_width(const char *fn, const fm_tensor *x, int *N, int *C)
{
    const int64_t c = x->ndim > 0 ? x->shape[x->ndim - 1] : 0, n = c > 0 ? fm_tensor_numel(x) / c : 0;
    if (x->ndim < 1 || c > INT32_MAX || n > INT32_MAX)
        return fm_error(FM_ERR_INTERNAL, "%s: a tensor of %d dims and %lld elements", fn, x->ndim,
                        (long long)fm_tensor_numel(x));
    *N = (int)n, *C = (int)c;
    return FM_OK;
}

static fm_gemm_type gemm_type_of(const fm_tensor *t) { return t->dtype == FM_BF16 ? FM_GEMM_BF16 : FM_GEMM_F32; }

fm_status clip_cuda_add_norm_forward(fm_clip *m, fm_tensor *h, const fm_tensor *a, const fm_tensor *b, fm_tensor *out,
                                     fm_tensor *mean, fm_tensor *rstd, const clip_p *w, const clip_p *bias)
{
    int N = 0, C = 0;
    FM_TRY(rows_width("clip add_norm_forward", a, &N, &C));
    if (fm_tensor_numel(out) != fm_tensor_numel(a) ||
        (b && (!h || fm_tensor_numel(b) != fm_tensor_numel(a) || fm_tensor_numel(h) != fm_tensor_numel(a))))
        return fm_error(FM_ERR_INTERNAL, "clip add_norm_forward: operands of different sizes");
    return fm_cuda_residual_layernorm_forward(b ? h->data : NULL, out->data, gemm_type_of(out), mean->data, rstd->data,
                                              a->data, b ? b->data : NULL, w->v.data, bias->v.data, N, C,
                                              m->cfg.layer_norm_eps);
}

fm_status clip_cuda_add_norm_backward(fm_clip *m, fm_tensor *dres, const fm_tensor *dout, const fm_tensor *h,
                                      const fm_tensor *mean, const fm_tensor *rstd, const clip_p *w, const clip_p *b,
                                      int lp)
{
    int N = 0, C = 0;
    FM_TRY(rows_width("clip add_norm_backward", h, &N, &C));
    if (lp && !m->dy_lp.data)
        return fm_error(FM_ERR_INTERNAL, "clip add_norm_backward: a bf16 gradient without the bf16 scratch");
    return fm_cuda_residual_layernorm_backward(dres->data, lp ? m->dy_lp.data : NULL, w->g.data, b->g.data, dout->data,
                                               h->data, w->v.data, mean->data, rstd->data, N, C);
}

static fm_cuda_act act_of(const fm_clip *m)
{
    return m->cfg.hidden_act == FM_CLIP_ACT_GELU ? FM_CUDA_ACT_GELU : FM_CUDA_ACT_QUICK_GELU;
}

fm_status clip_cuda_act_forward(fm_clip *m, fm_tensor *out, const fm_tensor *h)
{
    if (fm_tensor_numel(out) != fm_tensor_numel(h))
        return fm_error(FM_ERR_INTERNAL, "clip act_forward: operands of different sizes");
    return fm_cuda_act_forward(out->data, gemm_type_of(out), h->data, (size_t)fm_tensor_numel(h), act_of(m));
}

fm_status clip_cuda_act_backward(fm_clip *m, fm_tensor *dh, const fm_tensor *h, const fm_tensor *dg)
{
    const size_t n = (size_t)fm_tensor_numel(h);
    if ((size_t)fm_tensor_numel(dh) != n || (size_t)fm_tensor_numel(dg) != n)
        return fm_error(FM_ERR_INTERNAL, "clip act_backward: operands of different sizes");
    if (clip_lowp(m)) { /* fc1's backward reads the gradient only as its GEMMs' bf16 operand */
        if ((size_t)fm_tensor_numel(&m->dy_lp) < n)
            return fm_error(FM_ERR_INTERNAL, "clip act_backward: the bf16 scratch is too small");
        return fm_cuda_act_backward(m->dy_lp.data, FM_GEMM_BF16, h->data, dg->data, n, act_of(m));
    }
    return fm_cuda_act_backward(dh->data, FM_GEMM_F32, h->data, dg->data, n, act_of(m));
}

fm_status clip_cuda_vision_embed_forward(fm_clip *m, clip_tower *tw, int B)
{
    (void)m;
    clip_tower_acts *a = &tw->acts;
    return fm_cuda_vision_embed_forward(a->emb.data, a->patches.data, tw->class_emb.v.data, tw->pos_emb.v.data, B,
                                        tw->T, tw->W);
}

fm_status clip_cuda_vision_embed_backward(fm_clip *m, clip_tower *tw, int B, const fm_tensor *demb, fm_tensor *dpatches)
{
    (void)m;
    return fm_cuda_vision_embed_backward(dpatches->data, tw->class_emb.g.data, tw->pos_emb.g.data, demb->data, B, tw->T,
                                         tw->W);
}

fm_status clip_cuda_pool_forward(fm_clip *m, clip_tower *tw, int B)
{
    clip_tower_acts *a = &tw->acts;
    const int32_t *pos = tw->id == FM_CLIP_TOWER_TEXT ? m->eot_dev.data : NULL;
    return fm_cuda_pool_rows_forward(a->pooled.data, a->res[tw->L].data, pos, B, tw->T, tw->W);
}

fm_status clip_cuda_pool_backward(fm_clip *m, clip_tower *tw, int B, fm_tensor *dres, const fm_tensor *dpool)
{
    const int32_t *pos = tw->id == FM_CLIP_TOWER_TEXT ? m->eot_dev.data : NULL;
    return fm_cuda_pool_rows_backward(dres->data, dpool->data, pos, B, tw->T, tw->W);
}

#endif
