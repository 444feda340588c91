/* The CLIP model's memory: the size table of every parameter (HF names, PEFT names for adapters), the
 * frozen / trainable / gradient buffers carved from it, Hugging Face's initialisation, the activation arena,
 * the trainable-vector accessors, and merging LoRA adapters into the base weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fedmm/ops.h"
#include "fedmm/rng.h"
#include "model/clip_internal.h"

#define PEFT_PREFIX "base_model.model."

/* ---- the size table ------------------------------------------------------------------------------ */

static uint64_t name_stream(const char *name)
{
    /* FNV-1a: every tensor draws from a stream keyed by its name, so its values do not depend on which
     * other tensors exist or train. */
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h;
}

static fm_status add_entry(fm_clip *m, clip_p *p, const char *name, int ndim, const int64_t *shape, int trainable,
                           int adapter, int layer, fm_clip_tower tower, int init, float init_arg)
{
    if (m->n_entries == m->cap_entries) {
        size_t cap = m->cap_entries ? 2 * m->cap_entries : 256;
        clip_entry *e = realloc(m->entries, cap * sizeof *e);
        if (!e)
            return fm_error(FM_ERR_NO_MEMORY, "clip: size table of %zu entries", cap);
        m->entries = e;
        m->cap_entries = cap;
    }
    clip_entry *e = &m->entries[m->n_entries++];
    memset(e, 0, sizeof *e);
    if (strlen(name) >= sizeof e->name)
        return fm_error(FM_ERR_INTERNAL, "clip: parameter name '%s' too long", name);
    snprintf(e->name, sizeof e->name, "%s", name);
    if (adapter || (trainable && !m->cfg.full_finetune))
        snprintf(e->slice_name, sizeof e->slice_name, PEFT_PREFIX "%s", name);
    else
        snprintf(e->slice_name, sizeof e->slice_name, "%s", name);
    e->ndim = ndim;
    e->numel = 1;
    for (int d = 0; d < ndim; d++) {
        e->shape[d] = shape[d];
        e->numel *= (size_t)shape[d];
    }
    e->trainable = trainable;
    e->adapter = adapter;
    e->layer = layer;
    e->tower = tower;
    e->init = init;
    e->init_arg = init_arg;
    e->p = p;
    return FM_OK;
}

#define SHAPE(...)                                                                                                     \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]) { __VA_ARGS__ }

/* Registers weight (and bias) of a linear and, when `lora`, its adapter A (r, in) and B (out, r). */
static fm_status add_linear(fm_clip *m, clip_linear *lin, const char *module, int in, int out, int bias, float std,
                            int lora, int layer, fm_clip_tower tower)
{
    int ft = m->cfg.full_finetune;
    char name[128];
    lin->in = in, lin->out = out, lin->has_bias = bias, lin->lora = lora;
    snprintf(name, sizeof name, "%s.weight", module);
    FM_TRY(add_entry(m, &lin->w, name, SHAPE(out, in), ft, 0, layer, tower, CLIP_INIT_NORMAL, std));
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", module);
        FM_TRY(add_entry(m, &lin->b, name, SHAPE(out), ft, 0, layer, tower, CLIP_INIT_ZERO, 0.0f));
    }
    if (lora) {
        int r = m->cfg.lora_rank;
        /* PEFT: kaiming_uniform_(a=√5) on A, i.e. U(±1/√in); B = 0 so the adapted model starts as the base. */
        snprintf(name, sizeof name, "%s.lora_A.weight", module);
        FM_TRY(
            add_entry(m, &lin->A, name, SHAPE(r, in), 1, 1, layer, tower, CLIP_INIT_UNIFORM, 1.0f / sqrtf((float)in)));
        snprintf(name, sizeof name, "%s.lora_B.weight", module);
        FM_TRY(add_entry(m, &lin->B, name, SHAPE(out, r), 1, 1, layer, tower, CLIP_INIT_ZERO, 0.0f));
    }
    return FM_OK;
}

static fm_status add_layernorm(fm_clip *m, clip_p *w, clip_p *b, const char *module, int width, int layer,
                               fm_clip_tower tower)
{
    int ft = m->cfg.full_finetune;
    char name[128];
    snprintf(name, sizeof name, "%s.weight", module);
    FM_TRY(add_entry(m, w, name, SHAPE(width), ft, 0, layer, tower, CLIP_INIT_ONE, 0.0f));
    snprintf(name, sizeof name, "%s.bias", module);
    return add_entry(m, b, name, SHAPE(width), ft, 0, layer, tower, CLIP_INIT_ZERO, 0.0f);
}

/* One tower's table, with HF's CLIP init (CLIPPreTrainedModel._init_weights, initializer_factor 1). */
static fm_status add_tower(fm_clip *m, clip_tower *tw)
{
    const fm_clip_config *c = &m->cfg;
    int ft = c->full_finetune;
    int W = tw->W, L = tw->L;
    const char *pre = tw->prefix;
    char name[128];
    if (tw->id == FM_CLIP_TOWER_VISION) {
        int P = c->patch_size;
        snprintf(name, sizeof name, "%s.embeddings.class_embedding", pre);
        FM_TRY(
            add_entry(m, &tw->class_emb, name, SHAPE(W), ft, 0, -1, tw->id, CLIP_INIT_NORMAL, 1.0f / sqrtf((float)W)));
        snprintf(name, sizeof name, "%s.embeddings.patch_embedding.weight", pre);
        FM_TRY(add_entry(m, &tw->patch_w, name, SHAPE(W, 3, P, P), ft, 0, -1, tw->id, CLIP_INIT_NORMAL, 0.02f));
        snprintf(name, sizeof name, "%s.embeddings.position_embedding.weight", pre);
        FM_TRY(add_entry(m, &tw->pos_emb, name, SHAPE(tw->T, W), ft, 0, -1, tw->id, CLIP_INIT_NORMAL, 0.02f));
        snprintf(name, sizeof name, "%s.pre_layrnorm", pre); /* sic: HF's spelling */
        FM_TRY(add_layernorm(m, &tw->pre_ln_w, &tw->pre_ln_b, name, W, -1, tw->id));
    } else {
        snprintf(name, sizeof name, "%s.embeddings.token_embedding.weight", pre);
        FM_TRY(add_entry(m, &tw->tok_emb, name, SHAPE(c->vocab_size, W), ft, 0, -1, tw->id, CLIP_INIT_NORMAL, 0.02f));
        snprintf(name, sizeof name, "%s.embeddings.position_embedding.weight", pre);
        FM_TRY(add_entry(m, &tw->pos_emb, name, SHAPE(tw->T, W), ft, 0, -1, tw->id, CLIP_INIT_NORMAL, 0.02f));
    }
    int adapt = !ft && c->lora_rank > 0 && (c->lora_towers & tw->id);
    unsigned tg = adapt ? c->lora_targets : 0;
    float in_std = 1.0f / sqrtf((float)W) / sqrtf(2.0f * (float)L);
    float out_std = 1.0f / sqrtf((float)W);
    float fc_std = 1.0f / sqrtf(2.0f * (float)W);
    for (int l = 0; l < L; l++) {
        clip_layer *ly = &tw->layers[l];
        char mod[128];
#define MOD(suffix) (snprintf(mod, sizeof mod, "%s.encoder.layers.%d.%s", pre, l, suffix), mod)
        FM_TRY(add_layernorm(m, &ly->ln1_w, &ly->ln1_b, MOD("layer_norm1"), W, l, tw->id));
        FM_TRY(add_linear(m, &ly->q, MOD("self_attn.q_proj"), W, W, 1, in_std, !!(tg & FM_LORA_Q), l, tw->id));
        FM_TRY(add_linear(m, &ly->k, MOD("self_attn.k_proj"), W, W, 1, in_std, !!(tg & FM_LORA_K), l, tw->id));
        FM_TRY(add_linear(m, &ly->v, MOD("self_attn.v_proj"), W, W, 1, in_std, !!(tg & FM_LORA_V), l, tw->id));
        FM_TRY(add_linear(m, &ly->o, MOD("self_attn.out_proj"), W, W, 1, out_std, !!(tg & FM_LORA_OUT), l, tw->id));
        FM_TRY(add_layernorm(m, &ly->ln2_w, &ly->ln2_b, MOD("layer_norm2"), W, l, tw->id));
        FM_TRY(add_linear(m, &ly->fc1, MOD("mlp.fc1"), W, tw->M, 1, fc_std, !!(tg & FM_LORA_FC1), l, tw->id));
        FM_TRY(add_linear(m, &ly->fc2, MOD("mlp.fc2"), tw->M, W, 1, in_std, !!(tg & FM_LORA_FC2), l, tw->id));
#undef MOD
        clip_linear *lins[6] = {&ly->q, &ly->k, &ly->v, &ly->o, &ly->fc1, &ly->fc2};
        for (int j = 0; j < 6; j++)
            lins[j]->lora_id = CLIP_LORA_ID(tw->id, l, j);
    }
    snprintf(name, sizeof name, "%s.%s", pre, tw->id == FM_CLIP_TOWER_VISION ? "post_layernorm" : "final_layer_norm");
    FM_TRY(add_layernorm(m, &tw->final_ln_w, &tw->final_ln_b, name, W, -1, tw->id));
    /* The projection trains under full fine-tuning or when asked; it is registered as a linear without bias. */
    const char *proj = tw->id == FM_CLIP_TOWER_VISION ? "visual_projection" : "text_projection";
    snprintf(name, sizeof name, "%s.weight", proj);
    tw->proj.in = W, tw->proj.out = c->embed_dim;
    return add_entry(m, &tw->proj.w, name, SHAPE(c->embed_dim, W), ft || c->train_projections, 0, -1, tw->id,
                     CLIP_INIT_NORMAL, 1.0f / sqrtf((float)W));
}

/* Lays out the table: trainable tensors packed in table order into the trainable vector, the others into
 * the frozen buffer; fills the slice table. */
static fm_status layout(fm_clip *m)
{
    size_t nt = 0, nf = 0, ns = 0;
    for (size_t i = 0; i < m->n_entries; i++) {
        clip_entry *e = &m->entries[i];
        if (e->trainable) {
            e->offset = nt, nt += e->numel, ns++;
        } else {
            e->offset = nf, nf += e->numel;
        }
    }
    m->n_trainable = nt, m->n_frozen = nf, m->n_slices = ns;
    m->slices = calloc(ns ? ns : 1, sizeof *m->slices);
    if (!m->slices)
        return fm_error(FM_ERR_NO_MEMORY, "clip: slice table");
    size_t s = 0;
    for (size_t i = 0; i < m->n_entries; i++) {
        clip_entry *e = &m->entries[i];
        if (!e->trainable)
            continue;
        fm_clip_slice *sl = &m->slices[s++];
        sl->name = e->slice_name;
        sl->offset = e->offset;
        sl->numel = e->numel;
        sl->ndim = e->ndim;
        memcpy(sl->shape, e->shape, sizeof sl->shape);
        sl->layer = e->layer;
        sl->tower = e->tower;
        sl->decay = e->ndim >= 2;
    }
    return FM_OK;
}

static fm_status make_views(fm_clip *m)
{
    for (size_t i = 0; i < m->n_entries; i++) {
        clip_entry *e = &m->entries[i];
        float *base = e->trainable ? m->trainable : m->frozen;
        size_t cap = (e->trainable ? m->n_trainable : m->n_frozen) * sizeof(float);
        FM_TRY(fm_tensor_view(&e->p->v, base, cap, e->offset, FM_F32, m->device, e->ndim, e->shape));
        memset(&e->p->g, 0, sizeof e->p->g);
        if (e->trainable)
            FM_TRY(fm_tensor_view(&e->p->g, m->grad, cap, e->offset, FM_F32, m->device, e->ndim, e->shape));
        memset(&e->p->lp, 0, sizeof e->p->lp);
        if (m->lowp) /* the bf16 copies: frozen first, then trainable, at the same offsets */
            FM_TRY(fm_tensor_view(&e->p->lp, m->lowp, (m->n_frozen + m->n_trainable) * sizeof(uint16_t),
                                  (e->trainable ? m->n_frozen : 0) + e->offset, FM_BF16, m->device, e->ndim, e->shape));
    }
    return FM_OK;
}

/* Fills every tensor on the host from its own RNG stream, then copies both buffers to the device. */
static fm_status init_params(fm_clip *m)
{
    size_t nf = m->n_frozen, nt = m->n_trainable;
    float *hf = malloc((nf + nt + 1) * sizeof(float));
    if (!hf)
        return fm_error(FM_ERR_NO_MEMORY, "clip: %zu floats of initial parameters", nf + nt);
    float *ht = hf + nf;
    for (size_t i = 0; i < m->n_entries; i++) {
        const clip_entry *e = &m->entries[i];
        float *x = (e->trainable ? ht : hf) + e->offset;
        fm_rng rng = fm_rng_make(m->seed, name_stream(e->name));
        switch (e->init) {
        case CLIP_INIT_NORMAL: fm_rng_normal(&rng, x, e->numel, 0.0f, e->init_arg); break;
        case CLIP_INIT_UNIFORM:
            fm_rng_uniform(&rng, x, e->numel);
            for (size_t j = 0; j < e->numel; j++)
                x[j] = (2.0f * x[j] - 1.0f) * e->init_arg;
            break;
        case CLIP_INIT_ONE:
            for (size_t j = 0; j < e->numel; j++)
                x[j] = 1.0f;
            break;
        case CLIP_INIT_CONST:
            for (size_t j = 0; j < e->numel; j++)
                x[j] = e->init_arg;
            break;
        default: memset(x, 0, e->numel * sizeof(float)); break;
        }
    }
    fm_status st = fm_device_copy(m->frozen, m->device, hf, FM_DEVICE_CPU, nf * sizeof(float));
    if (st == FM_OK)
        st = fm_device_copy(m->trainable, m->device, ht, FM_DEVICE_CPU, nt * sizeof(float));
    free(hf);
    return st;
}

static void tower_shape(clip_tower *tw, fm_clip_tower id, const char *prefix, int L, int W, int NH, int M, int T,
                        int causal)
{
    tw->id = id, tw->prefix = prefix;
    tw->L = L, tw->W = W, tw->NH = NH, tw->M = M, tw->T = T, tw->causal = causal;
}

/* Where backward has to go in a tower: how low, and whether at all. */
static void tower_grad_reach(fm_clip *m, clip_tower *tw)
{
    tw->emb_trains = m->cfg.full_finetune;
    tw->lowest_trainable = tw->L;
    for (size_t i = 0; i < m->n_entries; i++) {
        const clip_entry *e = &m->entries[i];
        if (e->trainable && e->tower == tw->id && e->layer >= 0 && e->layer < tw->lowest_trainable)
            tw->lowest_trainable = e->layer;
    }
    if (tw->emb_trains)
        tw->lowest_trainable = 0;
    tw->needs_grad = tw->lowest_trainable < tw->L || tw->emb_trains || tw->proj.w.g.data != NULL;
}

static fm_status alloc_buffer(fm_device dev, size_t n, float **out)
{
    void *p = NULL;
    FM_TRY(fm_device_alloc(dev, (n ? n : 1) * sizeof(float), &p));
    *out = p;
    return fm_device_memset(dev, p, 0, (n ? n : 1) * sizeof(float));
}

fm_status fm_clip_create(fm_clip **out, const fm_clip_config *cfg, fm_device device, uint64_t seed)
{
    if (!out || !cfg)
        return fm_error(FM_ERR_INVALID_ARG, "clip create: NULL argument");
    *out = NULL;
    FM_TRY(fm_clip_config_validate(cfg));
    if (device != FM_DEVICE_CPU && device != FM_DEVICE_CUDA)
        return fm_error(FM_ERR_DEVICE, "clip create: unknown device %d", (int)device);
    if (cfg->precision == FM_PRECISION_BF16 && device != FM_DEVICE_CUDA)
        return fm_error(FM_ERR_UNSUPPORTED,
                        "train.precision bf16 runs on CUDA only (this model is on the %s; the CPU path is the fp32 "
                        "reference): use --device cuda, or train.precision fp32",
                        fm_device_name(device));
    fm_clip *m = calloc(1, sizeof *m);
    if (!m)
        return fm_error(FM_ERR_NO_MEMORY, "clip create: model struct");
    m->cfg = *cfg;
    m->device = device;
    m->seed = seed;
    m->lora_scaling = cfg->lora_rank > 0 ? cfg->lora_alpha / (float)cfg->lora_rank : 1.0f;
    int NP = (cfg->image_size / cfg->patch_size) * (cfg->image_size / cfg->patch_size);
    tower_shape(&m->vision, FM_CLIP_TOWER_VISION, "vision_model", cfg->vision_layers, cfg->vision_width,
                cfg->vision_heads, cfg->vision_mlp, NP + 1, 0);
    tower_shape(&m->text, FM_CLIP_TOWER_TEXT, "text_model", cfg->text_layers, cfg->text_width, cfg->text_heads,
                cfg->text_mlp, cfg->context_length, 1);
    fm_status st = FM_OK;
    clip_tower *towers[2] = {&m->vision, &m->text};
    for (int i = 0; i < 2 && st == FM_OK; i++) {
        clip_tower *tw = towers[i];
        tw->layers = calloc((size_t)tw->L, sizeof *tw->layers);
        tw->acts.layers = calloc((size_t)tw->L, sizeof *tw->acts.layers);
        tw->acts.res = calloc((size_t)tw->L + 1, sizeof *tw->acts.res);
        if (!tw->layers || !tw->acts.layers || !tw->acts.res)
            st = fm_error(FM_ERR_NO_MEMORY, "clip create: layer tables");
    }
    for (int i = 0; i < 2 && st == FM_OK; i++)
        st = add_tower(m, towers[i]);
    if (st == FM_OK)
        st = add_entry(m, &m->logit_scale, "logit_scale", 0, NULL, 1, 0, -1, FM_CLIP_TOWER_NONE, CLIP_INIT_CONST,
                       cfg->logit_scale_init);
    if (st == FM_OK)
        st = layout(m);
    if (st == FM_OK)
        st = alloc_buffer(device, m->n_frozen, &m->frozen);
    if (st == FM_OK)
        st = alloc_buffer(device, m->n_trainable, &m->trainable);
    if (st == FM_OK)
        st = alloc_buffer(device, m->n_trainable, &m->grad);
    if (st == FM_OK && cfg->precision == FM_PRECISION_BF16) {
        void *p = NULL;
        st = fm_device_alloc(device, (m->n_frozen + m->n_trainable + 1) * sizeof(uint16_t), &p);
        m->lowp = p;
    }
    if (st == FM_OK)
        st = make_views(m);
    if (st == FM_OK)
        st = init_params(m);
    if (st != FM_OK) {
        fm_clip_destroy(m);
        return st;
    }
    for (int i = 0; i < 2; i++)
        tower_grad_reach(m, towers[i]);
    *out = m;
    return FM_OK;
}

void fm_clip_destroy(fm_clip *m)
{
    if (!m)
        return;
    clip_tower *towers[2] = {&m->vision, &m->text};
    for (int i = 0; i < 2; i++) {
        free(towers[i]->layers);
        free(towers[i]->acts.layers);
        free(towers[i]->acts.res);
    }
    if (m->frozen)
        fm_device_free(m->device, m->frozen);
    if (m->trainable)
        fm_device_free(m->device, m->trainable);
    if (m->grad)
        fm_device_free(m->device, m->grad);
    if (m->lowp)
        fm_device_free(m->device, m->lowp);
    fm_arena_free(&m->arena);
    free(m->eot);
    free(m->entries);
    free(m->slices);
    free(m);
}

/* ---- accessors ----------------------------------------------------------------------------------- */

const fm_clip_config *fm_clip_get_config(const fm_clip *m) { return m ? &m->cfg : NULL; }
fm_device fm_clip_device(const fm_clip *m) { return m ? m->device : FM_DEVICE_CPU; }
int fm_clip_vision_seq_len(const fm_clip *m) { return m ? m->vision.T : 0; }
size_t fm_clip_num_trainable(const fm_clip *m) { return m ? m->n_trainable : 0; }
float *fm_clip_trainable(fm_clip *m) { return m ? m->trainable : NULL; }
float *fm_clip_trainable_grad(fm_clip *m) { return m ? m->grad : NULL; }
size_t fm_clip_num_slices(const fm_clip *m) { return m ? m->n_slices : 0; }
int fm_clip_lora_merged(const fm_clip *m) { return m ? m->merged : 0; }
uint64_t fm_clip_dropout_step(const fm_clip *m) { return m ? m->dropout_step : 0; }

fm_status fm_clip_set_dropout_step(fm_clip *m, uint64_t step)
{
    if (!m)
        return fm_error(FM_ERR_INVALID_ARG, "clip set_dropout_step: NULL model");
    m->dropout_step = step;
    return FM_OK;
}

int clip_has_dropout(const fm_clip *m)
{
    return !m->cfg.full_finetune && m->cfg.lora_rank > 0 && m->cfg.lora_dropout > 0.0f;
}

const fm_clip_slice *fm_clip_slice_at(const fm_clip *m, size_t i)
{
    return m && i < m->n_slices ? &m->slices[i] : NULL;
}

fm_status fm_clip_param(fm_clip *m, const char *hf_name, fm_tensor *out)
{
    if (!m || !hf_name || !out)
        return fm_error(FM_ERR_INVALID_ARG, "clip param: NULL argument");
    for (size_t i = 0; i < m->n_entries; i++) {
        if (strcmp(m->entries[i].name, hf_name) == 0 || strcmp(m->entries[i].slice_name, hf_name) == 0) {
            *out = m->entries[i].p->v;
            return FM_OK;
        }
    }
    return fm_error(FM_ERR_RANGE, "clip: no parameter named '%s'", hf_name);
}

static fm_status copy_vector(fm_clip *m, const char *fn, size_t n, void *dst, fm_device dst_dev, const void *src,
                             fm_device src_dev)
{
    if (!m || !dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL argument", fn);
    if (n != m->n_trainable)
        return fm_error(FM_ERR_SHAPE, "%s: %zu floats given, the trainable vector has %zu", fn, n, m->n_trainable);
    return fm_device_copy(dst, dst_dev, src, src_dev, n * sizeof(float));
}

fm_status fm_clip_get_trainable(fm_clip *m, float *host, size_t n)
{
    return copy_vector(m, "clip get_trainable", n, host, FM_DEVICE_CPU, m ? m->trainable : NULL,
                       m ? m->device : FM_DEVICE_CPU);
}

fm_status fm_clip_set_trainable(fm_clip *m, const float *host, size_t n)
{
    return copy_vector(m, "clip set_trainable", n, m ? m->trainable : NULL, m ? m->device : FM_DEVICE_CPU, host,
                       FM_DEVICE_CPU);
}

fm_status fm_clip_get_trainable_grad(fm_clip *m, float *host, size_t n)
{
    return copy_vector(m, "clip get_trainable_grad", n, host, FM_DEVICE_CPU, m ? m->grad : NULL,
                       m ? m->device : FM_DEVICE_CPU);
}

fm_status fm_clip_zero_grad(fm_clip *m)
{
    if (!m)
        return fm_error(FM_ERR_INVALID_ARG, "clip zero_grad: NULL model");
    return fm_device_memset(m->device, m->grad, 0, m->n_trainable * sizeof(float));
}

/* ---- views --------------------------------------------------------------------------------------- */

fm_status clip_view(fm_tensor *out, const fm_tensor *buf, int ndim, const int64_t *shape)
{
    return fm_tensor_view(out, buf->data, fm_tensor_nbytes(buf), 0, buf->dtype, buf->device, ndim, shape);
}

fm_status clip_sub(fm_tensor *out, const fm_tensor *t, size_t offset, int ndim, const int64_t *shape)
{
    return fm_tensor_view(out, t->data, fm_tensor_nbytes(t), offset, t->dtype, t->device, ndim, shape);
}

fm_status clip_zero(fm_tensor *t) { return fm_device_memset(t->device, t->data, 0, fm_tensor_nbytes(t)); }

/* ---- the activation arena ------------------------------------------------------------------------ */

/* Carves views in order; with no arena it only adds up the bytes (the sizing pass). */
typedef struct carver {
    fm_arena *arena;
    size_t need;
    fm_status st;
} carver;

static void carve(carver *c, fm_tensor *out, fm_dtype dtype, int ndim, const int64_t *shape)
{
    size_t bytes = fm_dtype_size(dtype);
    for (int d = 0; d < ndim; d++)
        bytes *= (size_t)shape[d];
    c->need += (bytes + FM_ARENA_ALIGN - 1) / FM_ARENA_ALIGN * FM_ARENA_ALIGN;
    /* The sizing pass leaves the views alone: they may be in use (encode sizes its chunks mid-way). */
    if (c->arena && c->st == FM_OK)
        c->st = fm_arena_tensor(c->arena, out, dtype, ndim, shape);
}

#define CARVE(t, dtype, ...) carve(c, &(t), dtype, SHAPE(__VA_ARGS__))

static void carve_lora(carver *c, const clip_linear *lin, clip_lora_acts *la, int64_t B, int64_t T, int64_t r,
                       int scaled, int dropout, fm_dtype act)
{
    if (!lin->lora)
        return;
    CARVE(la->t, act, B, T, r);
    if (scaled)
        CARVE(la->ts, FM_F32, B, T, r);
    else if (c->arena)
        la->ts = la->t; /* no scaling GEMM: ts aliases t */
    if (dropout)
        CARVE(la->mask, FM_F32, B, T, lin->in);
}

static void carve_tower(carver *c, fm_clip *m, clip_tower *tw, int64_t B)
{
    clip_tower_acts *a = &tw->acts;
    int64_t T = tw->T, W = tw->W, M = tw->M, NH = tw->NH, E = m->cfg.embed_dim, r = m->cfg.lora_rank;
    /* On CUDA the LoRA scaling is the GEMM's alpha: no ts. Under bf16 what only feeds GEMMs is bf16. */
    int scaled = m->lora_scaling != 1.0f && m->device == FM_DEVICE_CPU, dropout = clip_has_dropout(m);
    const fm_dtype gemm_in = clip_lowp(m) ? FM_BF16 : FM_F32;
    if (tw->id == FM_CLIP_TOWER_VISION) {
        int64_t H = m->cfg.image_size, P = m->cfg.patch_size, NP = T - 1;
        CARVE(a->input, FM_F32, B, 3, H, H);
        CARVE(a->cols, FM_F32, B * NP, 3 * P * P);
        CARVE(a->patches, FM_F32, B, NP, W);
        CARVE(a->emb, FM_F32, B, T, W);
        CARVE(a->pre_mean, FM_F32, B, T);
        CARVE(a->pre_rstd, FM_F32, B, T);
    } else {
        CARVE(a->input, FM_I32, B, T);
    }
    for (int l = 0; l <= tw->L; l++)
        CARVE(a->res[l], FM_F32, B, T, W);
    for (int l = 0; l < tw->L; l++) {
        clip_layer_acts *la = &a->layers[l];
        const clip_layer *ly = &tw->layers[l];
        CARVE(la->ln1, gemm_in, B, T, W);
        CARVE(la->ln1_mean, FM_F32, B, T);
        CARVE(la->ln1_rstd, FM_F32, B, T);
        CARVE(la->q, FM_F32, B, T, W);
        CARVE(la->k, FM_F32, B, T, W);
        CARVE(la->v, FM_F32, B, T, W);
        CARVE(la->lse, FM_F32, B, NH, T);
        CARVE(la->a, FM_F32, B, T, W);
        if (clip_lowp(m))
            CARVE(la->ab, FM_BF16, B, T, W);
        CARVE(la->xmid, FM_F32, B, T, W);
        CARVE(la->ln2, gemm_in, B, T, W);
        CARVE(la->ln2_mean, FM_F32, B, T);
        CARVE(la->ln2_rstd, FM_F32, B, T);
        CARVE(la->h, FM_F32, B, T, M);
        CARVE(la->g, gemm_in, B, T, M);
        carve_lora(c, &ly->q, &la->lq, B, T, r, scaled, dropout, gemm_in);
        carve_lora(c, &ly->k, &la->lk, B, T, r, scaled, dropout, gemm_in);
        carve_lora(c, &ly->v, &la->lv, B, T, r, scaled, dropout, gemm_in);
        carve_lora(c, &ly->o, &la->lo, B, T, r, scaled, dropout, gemm_in);
        carve_lora(c, &ly->fc1, &la->lfc1, B, T, r, scaled, dropout, gemm_in);
        carve_lora(c, &ly->fc2, &la->lfc2, B, T, r, scaled, dropout, gemm_in);
    }
    CARVE(a->pooled, FM_F32, B, W);
    CARVE(a->pooled_ln, FM_F32, B, W);
    CARVE(a->pooled_mean, FM_F32, B);
    CARVE(a->pooled_rstd, FM_F32, B);
    CARVE(a->proj, FM_F32, B, E);
    CARVE(a->normed, FM_F32, B, E);
    CARVE(a->norm, FM_F32, B);
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static void carve_all(carver *c, fm_clip *m, int64_t B)
{
    int64_t E = m->cfg.embed_dim, r = m->cfg.lora_rank > 0 ? m->cfg.lora_rank : 1;
    const clip_tower *v = &m->vision, *t = &m->text;
    int64_t BTW = B * max64(v->T * v->W, t->T * t->W);
    int64_t BTM = B * max64(v->T * v->M, t->T * t->M);
    int64_t BTR = B * max64(v->T, t->T) * r;
    int64_t BW = B * max64(v->W, t->W);
    const int cpu = m->device == FM_DEVICE_CPU, lowp = clip_lowp(m);
    CARVE(m->lora_S, FM_F32, r, r);
    if (!cpu) /* the pooled positions, for the gather kernels */
        CARVE(m->eot_dev, FM_I32, B);
    CARVE(m->scale, FM_F32);
    CARVE(m->loss, FM_F32);
    CARVE(m->probs_i2t, FM_F32, B, B);
    CARVE(m->probs_t2i, FM_F32, B, B);
    CARVE(m->dimg, FM_F32, B, E);
    CARVE(m->dtxt, FM_F32, B, E);
    CARVE(m->tmp, FM_F32, BTW);
    if (cpu) /* the LoRA output u (CUDA accumulates it into y by the GEMM) */
        CARVE(m->tmp_u, FM_F32, max64(BTW, BTM));
    CARVE(m->dres, FM_F32, BTW);
    CARVE(m->dln, FM_F32, BTW);
    CARVE(m->dq, FM_F32, BTW);
    CARVE(m->dk, FM_F32, BTW);
    CARVE(m->dv, FM_F32, BTW);
    CARVE(m->da, FM_F32, BTW);
    CARVE(m->dh, FM_F32, BTM);
    CARVE(m->dg, FM_F32, BTM);
    CARVE(m->dt, lowp ? FM_BF16 : FM_F32, BTR);
    if (cpu)
        CARVE(m->dts, FM_F32, BTR);
    if (lowp)
        CARVE(m->dy_lp, FM_BF16, max64(BTW, BTM));
    CARVE(m->dpool, FM_F32, BW);
    CARVE(m->dpool_ln, FM_F32, BW);
    CARVE(m->dproj, FM_F32, B * E);
    if (clip_has_dropout(m)) { /* nothing at all without dropout: that path's memory is as before */
        CARVE(m->drop_x, FM_F32, max64(BTW, BTM));
        CARVE(m->drop_dx, FM_F32, max64(BTW, BTM));
    }
    carve_tower(c, m, &m->vision, B);
    carve_tower(c, m, &m->text, B);
}

static size_t acts_bytes(fm_clip *m, int B)
{
    carver c = {NULL, 0, FM_OK};
    carve_all(&c, m, B);
    return c.need;
}

fm_status clip_ensure_acts(fm_clip *m, int B)
{
    if (B > m->cap_B) {
        size_t need = acts_bytes(m, B);
        int32_t *eot = realloc(m->eot, (size_t)B * sizeof *eot);
        if (!eot)
            return fm_error(FM_ERR_NO_MEMORY, "clip: positions for a batch of %d", B);
        m->eot = eot;
        fm_arena_free(&m->arena);
        m->cap_B = 0, m->acts_B = 0;
        fm_status st = fm_arena_init(&m->arena, need, m->device);
        if (st != FM_OK)
            return fm_error(st, "clip: activations for a batch of %d (%zu MiB) do not fit: %s", B, need >> 20,
                            fm_last_error());
        m->cap_B = B;
    }
    m->fwd_towers = 0; /* whatever runs now overwrites what fm_clip_forward kept */
    if (m->acts_B == B)
        return FM_OK;
    fm_arena_reset(&m->arena);
    carver c = {&m->arena, 0, FM_OK};
    carve_all(&c, m, B);
    FM_TRY(c.st);
    /* The LoRA scaling as an r×r diagonal matrix: scaling by a GEMM keeps the adapter path inside the
     * dispatched ops (there is no scale op), at r² extra flops per token. */
    int64_t r = m->lora_S.shape[0];
    float *S = calloc((size_t)(r * r), sizeof(float));
    if (!S)
        return fm_error(FM_ERR_NO_MEMORY, "clip: LoRA scaling matrix");
    for (int64_t i = 0; i < r; i++)
        S[i * r + i] = m->lora_scaling;
    fm_status st = fm_device_copy(m->lora_S.data, m->device, S, FM_DEVICE_CPU, (size_t)(r * r) * sizeof(float));
    free(S);
    FM_TRY(st);
    m->acts_B = B;
    return FM_OK;
}

/* Samples per chunk when encoding: what the arena already holds, or as many as fit in about 1 GiB. */
int clip_encode_chunk(fm_clip *m, int B)
{
    size_t one = acts_bytes(m, 1);
    size_t budget = (size_t)1 << 30;
    int chunk = (int)(budget / (one ? one : 1));
    if (chunk < 1)
        chunk = 1;
    if (chunk > 256)
        chunk = 256;
    if (chunk < m->cap_B)
        chunk = m->cap_B;
    return B < chunk ? B : chunk;
}

/* ---- merging adapters ---------------------------------------------------------------------------- */

/* W += sign·scaling·B·A for every adapted linear. dinp += dout·weight in linear_backward is exactly
 * W (out, in) += B' (out, r) · A (r, in), so the merge runs through the dispatched ops. */
static fm_status merge(fm_clip *m, float sign)
{
    int64_t r = m->cfg.lora_rank;
    int64_t max_out = max64(max64(m->vision.W, m->vision.M), max64(m->text.W, m->text.M));
    void *buf = NULL;
    FM_TRY(fm_device_alloc(m->device, (size_t)(r * r + max_out * r) * sizeof(float), &buf));
    float *S = calloc((size_t)(r * r), sizeof(float));
    fm_status st = S ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "clip merge: scaling matrix");
    for (int64_t i = 0; S && i < r; i++)
        S[i * r + i] = sign * m->lora_scaling;
    fm_tensor St;
    if (st == FM_OK)
        st = fm_tensor_view(&St, buf, (size_t)(r * r) * sizeof(float), 0, FM_F32, m->device, SHAPE(r, r));
    if (st == FM_OK)
        st = fm_device_copy(St.data, m->device, S, FM_DEVICE_CPU, (size_t)(r * r) * sizeof(float));
    free(S);
    clip_tower *towers[2] = {&m->vision, &m->text};
    for (int i = 0; i < 2 && st == FM_OK; i++) {
        for (int l = 0; l < towers[i]->L && st == FM_OK; l++) {
            clip_layer *ly = &towers[i]->layers[l];
            clip_linear *lins[6] = {&ly->q, &ly->k, &ly->v, &ly->o, &ly->fc1, &ly->fc2};
            for (int j = 0; j < 6 && st == FM_OK; j++) {
                clip_linear *lin = lins[j];
                if (!lin->lora)
                    continue;
                fm_tensor Bs;
                st = fm_tensor_view(&Bs, (float *)buf + r * r, (size_t)(max_out * r) * sizeof(float), 0, FM_F32,
                                    m->device, SHAPE(lin->out, r));
                if (st == FM_OK)
                    st = fm_linear_forward(&Bs, &lin->B.v, &St, NULL);
                if (st == FM_OK)
                    st = fm_linear_backward(&lin->w.v, NULL, NULL, &Bs, &lin->w.v, &lin->A.v);
            }
        }
    }
    fm_device_free(m->device, buf);
    return st;
}

fm_status fm_clip_merge_lora(fm_clip *m)
{
    if (!m)
        return fm_error(FM_ERR_INVALID_ARG, "clip merge: NULL model");
    if (m->merged)
        return fm_error(FM_ERR_STATE, "clip merge: the adapters are already merged");
    if (m->cfg.full_finetune || m->cfg.lora_rank == 0)
        return FM_OK;
    FM_TRY(merge(m, 1.0f));
    m->merged = 1;
    return FM_OK;
}

fm_status fm_clip_unmerge_lora(fm_clip *m)
{
    if (!m)
        return fm_error(FM_ERR_INVALID_ARG, "clip unmerge: NULL model");
    if (m->cfg.full_finetune || m->cfg.lora_rank == 0)
        return FM_OK;
    if (!m->merged)
        return fm_error(FM_ERR_STATE, "clip unmerge: the adapters are not merged");
    FM_TRY(merge(m, -1.0f));
    m->merged = 0;
    return FM_OK;
}
