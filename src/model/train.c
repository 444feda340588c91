/* AdamW training steps, the learning-rate schedule, data sampling and evaluation of the CLIP model. */
#include "fedmm/train.h"

#include <math.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fedmm/ops.h"
#include "fedmm/safetensors.h"

fm_train_options fm_train_default_options(void)
{
    return (fm_train_options){.steps = 1000,
                              .batch_size = 32,
                              .lr = 5e-4,
                              .min_lr_ratio = 0.1,
                              .warmup_steps = 50,
                              .weight_decay = 0.1,
                              .beta1 = 0.9,
                              .beta2 = 0.98,
                              .eps = 1e-6,
                              .grad_clip = 1.0,
                              .seed = 0};
}

double fm_lr_at(const fm_train_options *o, int64_t t)
{
    if (o->warmup_steps > 0 && t < o->warmup_steps)
        return o->lr * (double)(t + 1) / (double)o->warmup_steps;
    int64_t decay = o->steps - o->warmup_steps;
    if (decay <= 1)
        return o->lr;
    double p = (double)(t - o->warmup_steps) / (double)(decay - 1);
    if (p > 1.0)
        p = 1.0;
    double floor_lr = o->lr * o->min_lr_ratio;
    return floor_lr + 0.5 * (o->lr - floor_lr) * (1.0 + cos(M_PI * p));
}

/* ---- optimizer ---------------------------------------------------------------------------------- */

struct fm_optimizer {
    fm_clip *model;
    fm_device device;
    size_t n;
    float *m, *v; /* moments, on the model's device: one allocation of 2n floats, m first */
    int64_t step;
};

fm_status fm_optimizer_create(fm_optimizer **out, fm_clip *model)
{
    fm_optimizer *o = calloc(1, sizeof *o);
    if (!o)
        return fm_error(FM_ERR_NO_MEMORY, "optimizer: out of memory");
    o->model = model;
    o->device = fm_clip_device(model);
    o->n = fm_clip_num_trainable(model);
    void *state = NULL;
    fm_status st = fm_device_alloc(o->device, (2 * o->n + 1) * sizeof(float), &state);
    o->m = state;
    o->v = o->m ? o->m + o->n : NULL;
    if (st == FM_OK)
        st = fm_optimizer_reset(o);
    if (st != FM_OK) {
        fm_optimizer_destroy(o);
        return st;
    }
    *out = o;
    return FM_OK;
}

void fm_optimizer_destroy(fm_optimizer *o)
{
    if (!o)
        return;
    fm_device_free(o->device, o->m); /* v lives in the same allocation */
    free(o);
}

int64_t fm_optimizer_step_count(const fm_optimizer *o) { return o->step; }

fm_status fm_optimizer_reset(fm_optimizer *o)
{
    o->step = 0;
    return fm_device_memset(o->device, o->m, 0, 2 * o->n * sizeof(float));
}

static const char *const checkpoint_names[4] = {"trainable", "adamw.m", "adamw.v", "ema"};

fm_status fm_checkpoint_save(fm_clip *model, const fm_optimizer *o, const fm_weight_average *avg, const char *path)
{
    const size_t bytes = o->n * sizeof(float);
    const int count = avg ? 4 : 3;
    if (avg && fm_weight_average_size(avg) != o->n)
        return fm_error(FM_ERR_INVALID_ARG, "checkpoint save: weight average of %zu values, optimizer of %zu",
                        fm_weight_average_size(avg), o->n);
    if (avg && fm_weight_average_swapped(avg)) /* the model would hold the average, not the trained weights */
        return fm_error(FM_ERR_STATE, "checkpoint save: the weight average is swapped into the model; swap it back "
                                      "first");
    float *host = malloc((size_t)count * bytes + 1);
    fm_st_writer *w = NULL;
    fm_status s = host ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "checkpoint save: out of memory");
    if (s == FM_OK)
        s = fm_device_copy(host, FM_DEVICE_CPU, fm_clip_trainable(model), o->device, bytes);
    if (s == FM_OK)
        s = fm_device_copy(host + o->n, FM_DEVICE_CPU, o->m, o->device, bytes);
    if (s == FM_OK)
        s = fm_device_copy(host + 2 * o->n, FM_DEVICE_CPU, o->v, o->device, bytes);
    if (s == FM_OK && avg)
        s = fm_weight_average_get(avg, host + 3 * o->n);
    if (s == FM_OK)
        s = fm_st_writer_create(&w);
    int64_t shape[1] = {(int64_t)o->n};
    for (int i = 0; s == FM_OK && i < count; i++)
        s = fm_st_writer_add_f32(w, checkpoint_names[i], FM_ST_F32, 1, shape, host + (size_t)i * o->n);
    char step[32];
    snprintf(step, sizeof step, "%lld", (long long)o->step);
    if (s == FM_OK)
        s = fm_st_writer_set_metadata(w, "step", step);
    if (s == FM_OK)
        s = fm_st_write(w, path);
    fm_st_writer_free(w);
    free(host);
    return s;
}

fm_status fm_checkpoint_load(fm_clip *model, fm_optimizer *o, fm_weight_average *avg, const char *path)
{
    fm_st_file *f = NULL;
    FM_TRY(fm_st_open(&f, path));
    const size_t bytes = o->n * sizeof(float);
    const int count = avg ? 4 : 3;
    float *host = malloc((size_t)count * bytes + 1);
    int64_t shape[1] = {(int64_t)o->n};
    fm_status s = host ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "checkpoint load: out of memory");
    const int has_avg = fm_st_find(f, "ema") != NULL;
    if (s == FM_OK && has_avg != (avg != NULL))
        s = fm_error(FM_ERR_CONFIG,
                     "checkpoint %s %s (train.ema_decay) but this run %s one: resume with the setting the run "
                     "started with",
                     path, has_avg ? "holds a weight average" : "has no weight average",
                     avg ? "keeps" : "does not keep");
    if (s == FM_OK && avg && fm_weight_average_size(avg) != o->n)
        s = fm_error(FM_ERR_INVALID_ARG, "checkpoint load: weight average of %zu values, optimizer of %zu",
                     fm_weight_average_size(avg), o->n);
    if (s == FM_OK && avg && fm_weight_average_swapped(avg))
        s = fm_error(FM_ERR_STATE, "checkpoint load: the weight average is swapped into the model; swap it back "
                                   "first");
    for (int i = 0; s == FM_OK && i < count; i++)
        s = fm_st_read_f32(f, checkpoint_names[i], host + (size_t)i * o->n, o->n, 1, shape);
    for (size_t i = 0; s == FM_OK && i < (size_t)count * o->n; i++)
        if (!isfinite(host[i]))
            s = fm_error(FM_ERR_NOT_FINITE, "checkpoint %s: non-finite value in %s", path, checkpoint_names[i / o->n]);
    const char *step = fm_st_metadata(f, "step");
    char *end = NULL;
    long long t = step ? strtoll(step, &end, 10) : -1;
    if (s == FM_OK && (!step || *end != '\0' || t < 0))
        s = fm_error(FM_ERR_PARSE, "checkpoint %s: missing or bad 'step' metadata", path);
    /* Everything validated: only now touch the model, the optimizer and the average. */
    if (s == FM_OK && avg)
        s = fm_weight_average_set(avg, host + 3 * o->n);
    if (s == FM_OK)
        s = fm_device_copy(fm_clip_trainable(model), o->device, host, FM_DEVICE_CPU, bytes);
    if (s == FM_OK)
        s = fm_device_copy(o->m, o->device, host + o->n, FM_DEVICE_CPU, bytes);
    if (s == FM_OK)
        s = fm_device_copy(o->v, o->device, host + 2 * o->n, FM_DEVICE_CPU, bytes);
    if (s == FM_OK)
        o->step = t;
    fm_st_close(f);
    free(host);
    if (s != FM_OK && s != FM_ERR_NO_MEMORY && strstr(fm_last_error(), path) == NULL) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", fm_last_error());
        return fm_error(s, "checkpoint %s: %s", path, msg);
    }
    return s;
}

/* ---- sampling and batches ----------------------------------------------------------------------- */

fm_status fm_sampler_init(fm_sampler *s, const int64_t *indices, int64_t count, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    if (count <= 0)
        return fm_error(FM_ERR_INVALID_ARG, "sampler: no samples");
    s->indices = malloc((size_t)count * sizeof *s->indices);
    s->perm = malloc((size_t)count * sizeof *s->perm);
    if (!s->indices || !s->perm) {
        fm_sampler_free(s);
        return fm_error(FM_ERR_NO_MEMORY, "sampler: out of memory");
    }
    for (int64_t i = 0; i < count; i++)
        s->indices[i] = indices ? indices[i] : i;
    s->count = count;
    s->seed = seed;
    s->pos = count; /* the first draw shuffles */
    return FM_OK;
}

void fm_sampler_next(fm_sampler *s, int64_t *out, int n)
{
    for (int i = 0; i < n; i++) {
        if (s->pos >= s->count) {
            fm_rng rng = fm_rng_make(s->seed, 0x5A3F1E5ULL + s->epoch++);
            fm_rng_permutation(&rng, s->perm, (size_t)s->count);
            s->pos = 0;
        }
        out[i] = s->indices[s->perm[s->pos++]];
    }
}

void fm_sampler_free(fm_sampler *s)
{
    free(s->indices);
    free(s->perm);
    memset(s, 0, sizeof *s);
}

fm_status fm_batch_alloc(fm_batch *b, int capacity, int image_size, int context_len)
{
    memset(b, 0, sizeof *b);
    b->capacity = capacity;
    b->images = malloc((size_t)capacity * 3 * (size_t)image_size * (size_t)image_size * sizeof(float));
    b->tokens = malloc((size_t)capacity * (size_t)context_len * sizeof(int32_t));
    b->eot = malloc((size_t)capacity * sizeof(int32_t));
    b->labels = malloc((size_t)capacity * sizeof(fm_synth_labels));
    b->idx = malloc((size_t)capacity * sizeof(int64_t));
    if (!b->images || !b->tokens || !b->eot || !b->labels || !b->idx) {
        fm_batch_free(b);
        return fm_error(FM_ERR_NO_MEMORY, "batch of %d: out of memory", capacity);
    }
    return FM_OK;
}

void fm_batch_free(fm_batch *b)
{
    free(b->images);
    free(b->tokens);
    free(b->eot);
    free(b->labels);
    free(b->idx);
    memset(b, 0, sizeof *b);
}

/* ---- one step ----------------------------------------------------------------------------------- */

static fm_status vec_view(fm_tensor *t, float *p, size_t n, fm_device dev)
{
    int64_t shape[1] = {(int64_t)n};
    return fm_tensor_view(t, p, n * sizeof(float), 0, FM_F32, dev, 1, shape);
}

fm_status fm_optimizer_apply(fm_clip *model, fm_optimizer *opt, const fm_train_options *o, double lr, float *grad_norm)
{
    fm_tensor p, g, m, v;
    const fm_device dev = opt->device;
    FM_TRY(vec_view(&p, fm_clip_trainable(model), opt->n, dev));
    FM_TRY(vec_view(&g, fm_clip_trainable_grad(model), opt->n, dev));
    FM_TRY(vec_view(&m, opt->m, opt->n, dev));
    FM_TRY(vec_view(&v, opt->v, opt->n, dev));
    /* Data parallelism (include/fedmm/dp.h): every rank steps with the mean gradient of all ranks. */
    if (o->dp)
        FM_TRY(fm_dp_allreduce_mean(o->dp, fm_clip_trainable_grad(model), opt->n));
    float norm = 0.0f;
    /* Clip to a huge norm when clipping is off: the norm is still measured and checked for NaN. */
    FM_TRY(fm_clip_grad_norm(&g, o->grad_clip > 0 ? (float)o->grad_clip : 3.4e38f, &norm));
    if (grad_norm)
        *grad_norm = norm;
    opt->step++;
    fm_adamw_hparams hp = {(float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps, (float)o->weight_decay};
    if (o->weight_decay == 0.0)
        return fm_adamw_update(&p, &g, &m, &v, hp, (int)opt->step);
    /* Weight decay only where it belongs (matrices; not biases, norms, embeddings' scale or the logit
     * scale): one update per run of consecutive slices with the same decay flag. */
    size_t nslices = fm_clip_num_slices(model);
    for (size_t i = 0; i < nslices;) {
        const fm_clip_slice *first = fm_clip_slice_at(model, i);
        size_t end = first->offset + first->numel, k = i + 1;
        for (; k < nslices; k++) {
            const fm_clip_slice *sl = fm_clip_slice_at(model, k);
            if (sl->decay != first->decay)
                break;
            end = sl->offset + sl->numel;
        }
        size_t a = first->offset, n = end - a;
        fm_tensor ps, gs, ms, vs;
        FM_TRY(vec_view(&ps, fm_clip_trainable(model) + a, n, dev));
        FM_TRY(vec_view(&gs, fm_clip_trainable_grad(model) + a, n, dev));
        FM_TRY(vec_view(&ms, opt->m + a, n, dev));
        FM_TRY(vec_view(&vs, opt->v + a, n, dev));
        fm_adamw_hparams h = hp;
        if (!first->decay)
            h.weight_decay = 0.0f;
        FM_TRY(fm_adamw_update(&ps, &gs, &ms, &vs, h, (int)opt->step));
        i = k;
    }
    return FM_OK;
}

fm_status fm_train_step(fm_clip *model, fm_optimizer *opt, const fm_train_options *o, const fm_batch *batch, int B,
                        double lr, float *loss, float *grad_norm)
{
    if (B <= 0 || B > batch->capacity)
        return fm_error(FM_ERR_INVALID_ARG, "train step: batch of %d (capacity %d)", B, batch->capacity);
    FM_TRY(fm_clip_zero_grad(model));
    FM_TRY(fm_clip_forward_backward(model, batch->images, batch->tokens, batch->eot, B, loss));
    if (!isfinite(*loss))
        return fm_error(FM_ERR_NOT_FINITE, "train step %lld: loss is %f", (long long)opt->step, (double)*loss);
    return fm_optimizer_apply(model, opt, o, lr, grad_norm);
}

/* ---- evaluation --------------------------------------------------------------------------------- */

fm_status fm_evaluate(fm_clip *model, const fm_dataset *ds, int64_t n, fm_eval_result *out)
{
    memset(out, 0, sizeof *out);
    const int64_t size = fm_dataset_size(ds);
    if (n <= 0 || n > size)
        n = size;
    const fm_clip_config *cfg = fm_clip_get_config(model);
    const int E = cfg->embed_dim, S = fm_dataset_image_size(ds), ctx = fm_dataset_context_len(ds);
    const int chunk = 128;
    float *img = malloc((size_t)n * E * sizeof(float)), *txt = malloc((size_t)n * E * sizeof(float));
    int32_t *labels = malloc((size_t)n * FM_ATTR_COUNT * sizeof(int32_t));
    fm_batch b = {0};
    fm_status s = (img && txt && labels) ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "evaluate: out of memory");
    if (s == FM_OK)
        s = fm_batch_alloc(&b, chunk, S, ctx);
    double loss_sum = 0.0;
    int loss_batches = 0;
    for (int64_t first = 0; s == FM_OK && first < n; first += chunk) {
        int B = (int)(n - first < chunk ? n - first : chunk);
        for (int i = 0; i < B; i++)
            b.idx[i] = first + i;
        s = fm_dataset_batch(ds, b.idx, B, b.images, b.tokens, b.eot, b.labels);
        if (s == FM_OK)
            s = fm_clip_encode_images(model, b.images, B, img + (size_t)first * E);
        if (s == FM_OK)
            s = fm_clip_encode_texts(model, b.tokens, b.eot, B, txt + (size_t)first * E);
        if (s == FM_OK && B > 1) {
            float l = 0.0f;
            s = fm_clip_loss(model, b.images, b.tokens, b.eot, B, &l);
            loss_sum += l;
            loss_batches++;
        }
        for (int i = 0; s == FM_OK && i < B; i++)
            for (int a = 0; a < FM_ATTR_COUNT; a++)
                labels[(size_t)a * n + first + i] = b.labels[i].attr[a];
    }
    if (s == FM_OK)
        s = fm_retrieval_recall(img, txt, (int)n, E, &out->retrieval);
    /* zero-shot: one prompt per class of each attribute (datasets with labels only) */
    int32_t *ptok = NULL, *peot = NULL;
    float *pemb = NULL;
    const int labelled = fm_dataset_has_labels(ds);
    if (!labelled) {
        out->zs_acc = NAN;
        for (int a = 0; a < FM_ATTR_COUNT; a++)
            out->zs_acc_attr[a] = NAN;
    }
    for (int a = 0; s == FM_OK && labelled && a < FM_ATTR_COUNT; a++) {
        int K = fm_synth_num_classes((fm_attribute)a);
        ptok = realloc(ptok, (size_t)K * ctx * sizeof(int32_t));
        peot = realloc(peot, (size_t)K * sizeof(int32_t));
        pemb = realloc(pemb, (size_t)K * E * sizeof(float));
        if (!ptok || !peot || !pemb) {
            s = fm_error(FM_ERR_NO_MEMORY, "evaluate: out of memory");
            break;
        }
        s = fm_dataset_class_prompts(ds, (fm_attribute)a, ptok, peot);
        if (s == FM_OK)
            s = fm_clip_encode_texts(model, ptok, peot, K, pemb);
        if (s == FM_OK)
            s = fm_zero_shot_accuracy(img, pemb, labels + (size_t)a * n, (int)n, K, E, &out->zs_acc_attr[a]);
        out->zs_acc += out->zs_acc_attr[a] / FM_ATTR_COUNT;
    }
    out->loss = loss_batches ? loss_sum / loss_batches : NAN;
    out->pairs = n;
    free(ptok);
    free(peot);
    free(pemb);
    fm_batch_free(&b);
    free(img);
    free(txt);
    free(labels);
    return s;
}
