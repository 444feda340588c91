/* The in-process CreamFL simulation: a server model and heterogeneous sites (paired, image-only, text-only; each
 * its own architecture and its own persistent model) that exchange only representations of the public proxy
 * set. Per round: the server trains on P and encodes it; sampled sites train on private data plus the
 * regularisers and encode P; the server fuses the uploads with the cross-modal ensemble and distills. */
#include "fedmm/creamfl.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/dataset.h"
#include "fedmm/log.h"
#include "fedmm/metrics.h"
#include "fedmm/modality.h"
#include "fedmm/site_objective.h"

static const fm_split kind_split[FM_CREAMFL_KINDS] = {FM_SPLIT_TRAIN, FM_SPLIT_IMAGE_ONLY, FM_SPLIT_TEXT_ONLY};
static const fm_modality kind_modality[FM_CREAMFL_KINDS] = {FM_MODALITY_PAIRED, FM_MODALITY_IMAGE, FM_MODALITY_TEXT};

const char *fm_creamfl_site_kind_name(fm_creamfl_site_kind kind)
{
    static const char *names[FM_CREAMFL_KINDS] = {"paired", "image", "text"};
    return (unsigned)kind < FM_CREAMFL_KINDS ? names[kind] : "?";
}

fm_creamfl_options fm_creamfl_default_options(void)
{
    fm_creamfl_options o;
    memset(&o, 0, sizeof o);
    for (int k = 0; k < FM_CREAMFL_KINDS; k++)
        o.num_sites[k] = 2;
    o.public_size = 500;
    o.rounds = 10;
    o.sites_per_round = 3;
    o.local_steps = 10;
    o.server_steps = 10;
    o.distill_steps = 10;
    o.local = fm_train_default_options();
    o.local.lr = 1e-3;
    o.local.warmup_steps = 0;
    o.server_opt = o.local;
    o.lambda = 0.5f;
    o.tau = 0.5f;
    o.kappa = 0.3f;
    o.ensemble = 1;
    o.inter = 1;
    o.intra = 1;
    o.label_attr = FM_ATTR_KIND;
    o.eval_every = 1;
    o.eval_size = 500;
    o.out_dir = "runs/creamfl";
    return o;
}

static int total_sites(const fm_creamfl_options *o) { return o->num_sites[0] + o->num_sites[1] + o->num_sites[2]; }

fm_status fm_creamfl_validate(const fm_creamfl_options *o, const fm_synth_config *synth)
{
    if (!o || !synth)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: NULL options or data config");
    FM_TRY(fm_clip_config_validate(&o->server));
    const int N = total_sites(o);
    if (o->rounds < 1 || o->local_steps < 0 || o->server_steps < 0 || o->distill_steps < 0)
        return fm_error(FM_ERR_CONFIG, "creamfl: rounds must be >= 1 and step counts >= 0");
    if (o->local.batch_size < 2 || o->server_opt.batch_size < 2)
        return fm_error(FM_ERR_CONFIG, "creamfl: batch sizes must be >= 2 (site %d, server %d)", o->local.batch_size,
                        o->server_opt.batch_size);
    if (o->public_size < 2 || o->public_size > synth->split_size[FM_SPLIT_PUBLIC])
        return fm_error(FM_ERR_CONFIG, "creamfl: public_size %lld outside [2, data.public_size = %lld]",
                        (long long)o->public_size, (long long)synth->split_size[FM_SPLIT_PUBLIC]);
    if (o->public_size < o->server_opt.batch_size || o->public_size < o->local.batch_size)
        return fm_error(FM_ERR_CONFIG, "creamfl: public_size %lld is smaller than a batch", (long long)o->public_size);
    if (o->eval_size < 2 || o->eval_size > synth->split_size[FM_SPLIT_TEST])
        return fm_error(FM_ERR_CONFIG, "creamfl: eval_size %lld outside [2, data.test_size = %lld]",
                        (long long)o->eval_size, (long long)synth->split_size[FM_SPLIT_TEST]);
    if (N > 0 && (o->sites_per_round < 1 || o->sites_per_round > N))
        return fm_error(FM_ERR_CONFIG, "creamfl: sites_per_round %d outside [1, %d sites]", o->sites_per_round, N);
    if (!(o->tau > 0.0f) || !(o->lambda >= 0.0f) || !(o->kappa >= 0.0f))
        return fm_error(FM_ERR_CONFIG, "creamfl: tau must be > 0, lambda and kappa >= 0 (%g, %g, %g)", (double)o->tau,
                        (double)o->lambda, (double)o->kappa);
    const fm_clip_config *sv = &o->server;
    if (sv->image_size != synth->image_size)
        return fm_error(FM_ERR_CONFIG, "creamfl: server image_size %d differs from data.image_size %d", sv->image_size,
                        synth->image_size);
    for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
        if (o->num_sites[k] < 0)
            return fm_error(FM_ERR_CONFIG, "creamfl: %d %s sites", o->num_sites[k], fm_creamfl_site_kind_name(k));
        if (o->num_sites[k] == 0)
            continue;
        const fm_clip_config *c = &o->site_model[k];
        const char *name = fm_creamfl_site_kind_name(k);
        FM_TRY(fm_clip_config_validate(c));
        if (c->embed_dim != sv->embed_dim)
            return fm_error(FM_ERR_CONFIG, "creamfl: %s sites' embed_dim %d differs from the server's %d", name,
                            c->embed_dim, sv->embed_dim);
        if (c->image_size != sv->image_size || c->context_length != sv->context_length)
            return fm_error(FM_ERR_CONFIG,
                            "creamfl: %s sites' image_size / context_length (%d / %d) differ from the server's (%d / "
                            "%d): every model reads the same data",
                            name, c->image_size, c->context_length, sv->image_size, sv->context_length);
        if (synth->split_size[kind_split[k]] < o->num_sites[k])
            return fm_error(FM_ERR_CONFIG, "creamfl: %d %s sites but only %lld samples in the %s split",
                            o->num_sites[k], name, (long long)synth->split_size[kind_split[k]],
                            fm_split_name(kind_split[k]));
    }
    return FM_OK;
}

/* ---- state ---------------------------------------------------------------------------------------------- */

typedef struct cream_site {
    fm_creamfl_site_kind kind;
    fm_clip *model;
    fm_optimizer *opt;
    int64_t first, count; /* its shard of the kind's split */
} cream_site;

typedef struct cream {
    const fm_creamfl_options *o;
    fm_device device;
    size_t n, d;
    int B, N;
    fm_clip *server;
    fm_optimizer *server_opt;
    fm_dataset *test, *data[FM_CREAMFL_KINDS];
    fm_class_prompts prompts;
    cream_site *sites;
    /* the public set, rendered once */
    float *pub_images;   /* (n, 3, S, S) */
    int32_t *pub_tokens; /* (n, ctx) */
    int32_t *pub_eot;    /* (n) */
    size_t img_floats;   /* 3·S·S */
    int ctx;
    /* representations (n, d) */
    float *ig, *tg;       /* global, as the sites receive them */
    float *old_i, *old_t; /* the training site's, at the start of its round */
    float *up;            /* (sites_per_round, 2, n, d): what the sampled sites sent */
    float *agg_i, *agg_t;
    /* batch scratch */
    fm_batch batch;
    int32_t *blabels;
    uint8_t *bmod;
    int64_t *pos, *pidx;
    float *emb_i, *emb_t, *dz_i, *dz_t, *gat_g, *gat_o; /* (B, d) */
    int32_t *order;
    double bytes_up, bytes_down, ensemble_s;
} cream;

static void *xcalloc(size_t n, size_t size, fm_status *s)
{
    if (*s != FM_OK)
        return NULL;
    void *p = calloc(n ? n : 1, size);
    if (!p)
        *s = fm_error(FM_ERR_NO_MEMORY, "creamfl: out of memory (%zu x %zu bytes)", n, size);
    return p;
}

static uint64_t mix(uint64_t a, uint64_t b) { return a ^ (b + 0x9E3779B97F4A7C15ULL + (a << 6) + (a >> 2)); }

static fm_status cream_init(cream *c, const fm_creamfl_options *o, const fm_synth_config *synth,
                            const fm_tokenizer *tok, fm_device device)
{
    memset(c, 0, sizeof *c);
    c->o = o;
    c->device = device;
    c->n = (size_t)o->public_size;
    c->d = (size_t)o->server.embed_dim;
    c->B = o->local.batch_size > o->server_opt.batch_size ? o->local.batch_size : o->server_opt.batch_size;
    c->N = total_sites(o);
    c->ctx = o->server.context_length;
    const int S = o->server.image_size;
    c->img_floats = (size_t)3 * S * S;
    FM_TRY(fm_clip_create(&c->server, &o->server, device, o->seed));
    FM_TRY(fm_optimizer_create(&c->server_opt, c->server));
    FM_TRY(fm_dataset_synth(&c->test, synth, FM_SPLIT_TEST, tok, c->ctx));
    fm_dataset *pub = NULL;
    FM_TRY(fm_dataset_synth(&pub, synth, FM_SPLIT_PUBLIC, tok, c->ctx));
    fm_status st = FM_OK;
    c->pub_images = xcalloc(c->n * c->img_floats, sizeof(float), &st);
    c->pub_tokens = xcalloc(c->n * (size_t)c->ctx, sizeof(int32_t), &st);
    c->pub_eot = xcalloc(c->n, sizeof(int32_t), &st);
    int64_t *all = xcalloc(c->n, sizeof(int64_t), &st);
    for (size_t i = 0; st == FM_OK && i < c->n; i++)
        all[i] = (int64_t)i;
    if (st == FM_OK)
        st = fm_dataset_batch(pub, all, (int)c->n, c->pub_images, c->pub_tokens, c->pub_eot, NULL);
    if (st == FM_OK)
        st = fm_class_prompts_build(pub, o->label_attr, &c->prompts);
    free(all);
    fm_dataset_destroy(pub);
    FM_TRY(st);
    const size_t nd = c->n * c->d, Bd = (size_t)c->B * c->d;
    c->ig = xcalloc(nd, sizeof(float), &st);
    c->tg = xcalloc(nd, sizeof(float), &st);
    c->old_i = xcalloc(nd, sizeof(float), &st);
    c->old_t = xcalloc(nd, sizeof(float), &st);
    c->agg_i = xcalloc(nd, sizeof(float), &st);
    c->agg_t = xcalloc(nd, sizeof(float), &st);
    c->up = xcalloc((size_t)(c->N > 0 ? o->sites_per_round : 1) * 2 * nd, sizeof(float), &st);
    c->blabels = xcalloc((size_t)c->B, sizeof(int32_t), &st);
    c->bmod = xcalloc((size_t)c->B, 1, &st);
    c->pos = xcalloc((size_t)c->B, sizeof(int64_t), &st);
    c->pidx = xcalloc((size_t)c->B, sizeof(int64_t), &st);
    c->emb_i = xcalloc(Bd, sizeof(float), &st);
    c->emb_t = xcalloc(Bd, sizeof(float), &st);
    c->dz_i = xcalloc(Bd, sizeof(float), &st);
    c->dz_t = xcalloc(Bd, sizeof(float), &st);
    c->gat_g = xcalloc(Bd, sizeof(float), &st);
    c->gat_o = xcalloc(Bd, sizeof(float), &st);
    c->order = xcalloc((size_t)c->N, sizeof(int32_t), &st);
    c->sites = xcalloc((size_t)c->N, sizeof(cream_site), &st);
    FM_TRY(st);
    FM_TRY(fm_batch_alloc(&c->batch, c->B, S, c->ctx));
    int idx = 0;
    for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
        const int cnt = o->num_sites[k];
        if (cnt == 0)
            continue;
        FM_TRY(fm_dataset_synth(&c->data[k], synth, kind_split[k], tok, c->ctx));
        const int64_t size = fm_dataset_size(c->data[k]);
        for (int i = 0; i < cnt; i++, idx++) {
            cream_site *s = &c->sites[idx];
            s->kind = (fm_creamfl_site_kind)k;
            s->first = size * i / cnt;
            s->count = size * (i + 1) / cnt - s->first;
            FM_TRY(fm_clip_create(&s->model, &o->site_model[k], device, mix(o->seed, 1000 + (uint64_t)idx)));
            FM_TRY(fm_optimizer_create(&s->opt, s->model));
        }
    }
    return FM_OK;
}

static void cream_free(cream *c)
{
    for (int i = 0; c->sites && i < c->N; i++) {
        fm_optimizer_destroy(c->sites[i].opt);
        fm_clip_destroy(c->sites[i].model);
    }
    free(c->sites);
    for (int k = 0; k < FM_CREAMFL_KINDS; k++)
        fm_dataset_destroy(c->data[k]);
    fm_dataset_destroy(c->test);
    fm_class_prompts_free(&c->prompts);
    fm_optimizer_destroy(c->server_opt);
    fm_clip_destroy(c->server);
    fm_batch_free(&c->batch);
    float *fl[] = {c->pub_images, c->ig,    c->tg,    c->old_i, c->old_t, c->up,    c->agg_i,
                   c->agg_t,      c->emb_i, c->emb_t, c->dz_i,  c->dz_t,  c->gat_g, c->gat_o};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    free(c->pub_tokens);
    free(c->pub_eot);
    free(c->blabels);
    free(c->bmod);
    free(c->pos);
    free(c->pidx);
    free(c->order);
}

/* ---- pieces of a round ------------------------------------------------------------------------------------ */

static int has_image(fm_creamfl_site_kind k) { return k != FM_CREAMFL_TEXT; }
static int has_text(fm_creamfl_site_kind k) { return k != FM_CREAMFL_IMAGE; }

/* Public samples pidx[0..B) into the batch scratch. */
static void gather_public(cream *c, const int64_t *pidx, int B)
{
    for (int i = 0; i < B; i++) {
        const size_t p = (size_t)pidx[i];
        memcpy(c->batch.images + (size_t)i * c->img_floats, c->pub_images + p * c->img_floats,
               c->img_floats * sizeof(float));
        memcpy(c->batch.tokens + (size_t)i * c->ctx, c->pub_tokens + p * (size_t)c->ctx,
               (size_t)c->ctx * sizeof(int32_t));
        c->batch.eot[i] = c->pub_eot[p];
    }
}

static void gather_rows(float *dst, const float *src, const int64_t *idx, int B, size_t d)
{
    for (int i = 0; i < B; i++)
        memcpy(dst + (size_t)i * d, src + (size_t)idx[i] * d, d * sizeof(float));
}

/* The model's representations of all of P, for the modalities wanted (NULL skips one). */
static fm_status encode_public(cream *c, fm_clip *m, float *img, float *txt)
{
    if (img)
        FM_TRY(fm_clip_encode_images(m, c->pub_images, (int)c->n, img));
    if (txt)
        FM_TRY(fm_clip_encode_texts(m, c->pub_tokens, c->pub_eot, (int)c->n, txt));
    return FM_OK;
}

/* What travelling costs: bf16 rounds the values and halves the bytes. */
static double send(cream *c, float *x)
{
    if (c->o->rep_bf16)
        fm_creamfl_round_bf16(x, c->n * c->d);
    return (double)(c->n * c->d) * (c->o->rep_bf16 ? 2.0 : 4.0);
}

typedef struct site_stats {
    double loss, inter, intra;
} site_stats;

/* One local step: the private loss, then λ·(L_inter + L_intra) on a public batch, one optimizer step. */
static fm_status site_step(cream *c, cream_site *s, fm_sampler *priv, fm_sampler *pub, site_stats *acc)
{
    const fm_creamfl_options *o = c->o;
    const int B = o->local.batch_size;
    const fm_creamfl_site_kind k = s->kind;
    FM_TRY(fm_clip_zero_grad(s->model));
    fm_sampler_next(priv, c->pos, B);
    for (int i = 0; i < B; i++) {
        c->batch.idx[i] = s->first + c->pos[i];
        c->bmod[i] = (uint8_t)kind_modality[k];
    }
    FM_TRY(
        fm_dataset_batch(c->data[k], c->batch.idx, B, c->batch.images, c->batch.tokens, c->batch.eot, c->batch.labels));
    for (int i = 0; i < B; i++)
        c->blabels[i] = c->batch.labels[i].attr[o->label_attr];
    fm_site_batch sb = {.B = B,
                        .images = c->batch.images,
                        .tokens = c->batch.tokens,
                        .eot = c->batch.eot,
                        .labels = c->blabels,
                        .modality = c->bmod};
    float loss = 0.0f;
    FM_TRY(fm_site_loss_backward(s->model, &sb, &c->prompts, &loss));
    if (!isfinite(loss))
        return fm_error(FM_ERR_NOT_FINITE, "creamfl: %s site private loss is %f", fm_creamfl_site_kind_name(k),
                        (double)loss);
    acc->loss += loss;
    if (o->lambda > 0.0f && (o->inter || o->intra)) {
        fm_sampler_next(pub, c->pidx, B);
        gather_public(c, c->pidx, B);
        const int hi = has_image(k), ht = has_text(k);
        FM_TRY(fm_clip_forward(s->model, hi ? c->batch.images : NULL, ht ? c->batch.tokens : NULL,
                               ht ? c->batch.eot : NULL, B, hi ? c->emb_i : NULL, ht ? c->emb_t : NULL));
        const size_t Bd = (size_t)B * c->d;
        for (int mod = 0; mod < 2; mod++) {
            if (!(mod == 0 ? hi : ht))
                continue;
            float *z = mod == 0 ? c->emb_i : c->emb_t, *dz = mod == 0 ? c->dz_i : c->dz_t;
            const float *same = mod == 0 ? c->ig : c->tg, *other = mod == 0 ? c->tg : c->ig;
            const float *old = mod == 0 ? c->old_i : c->old_t;
            memset(dz, 0, Bd * sizeof(float));
            float l = 0.0f;
            if (o->inter) {
                FM_TRY(fm_creamfl_inter_loss(z, B, c->d, other, c->n, c->pidx, o->tau, o->lambda, dz, &l));
                acc->inter += l;
            }
            if (o->intra) {
                gather_rows(c->gat_g, same, c->pidx, B, c->d);
                gather_rows(c->gat_o, old, c->pidx, B, c->d);
                FM_TRY(fm_creamfl_intra_loss(z, c->gat_g, c->gat_o, B, c->d, o->tau, o->lambda, dz, &l));
                acc->intra += l;
            }
        }
        FM_TRY(fm_clip_backward(s->model, hi ? c->dz_i : NULL, ht ? c->dz_t : NULL));
    }
    return fm_optimizer_apply(s->model, s->opt, &o->local, o->local.lr, NULL);
}

/* Site `si`'s part of round `round`: encode P (its frozen round-start representations), train, encode P and
 * "send" the result into up_i / up_t. */
static fm_status run_site(cream *c, int si, int round, float *up_i, float *up_t, site_stats *acc)
{
    const fm_creamfl_options *o = c->o;
    cream_site *s = &c->sites[si];
    const int hi = has_image(s->kind), ht = has_text(s->kind);
    /* the round-start model is frozen during the round, so encoding P once with it gives exactly what a frozen
     * copy would produce for every public batch */
    if (o->intra)
        FM_TRY(encode_public(c, s->model, hi ? c->old_i : NULL, ht ? c->old_t : NULL));
    FM_TRY(fm_optimizer_reset(s->opt));
    fm_sampler priv, pub;
    const uint64_t seed = mix(mix(o->seed, (uint64_t)round), (uint64_t)si);
    FM_TRY(fm_sampler_init(&priv, NULL, s->count, seed));
    fm_status st = fm_sampler_init(&pub, NULL, (int64_t)c->n, mix(seed, 0xC4EA));
    if (st != FM_OK) {
        fm_sampler_free(&priv);
        return st;
    }
    for (int64_t step = 0; st == FM_OK && step < o->local_steps; step++)
        st = site_step(c, s, &priv, &pub, acc);
    fm_sampler_free(&priv);
    fm_sampler_free(&pub);
    FM_TRY(st);
    FM_TRY(encode_public(c, s->model, hi ? up_i : NULL, ht ? up_t : NULL));
    if (hi)
        c->bytes_up += send(c, up_i);
    if (ht)
        c->bytes_up += send(c, up_t);
    return FM_OK;
}

/* The server's CLIP-loss steps on P. */
static fm_status server_train(cream *c, int round, double *mean_loss)
{
    const fm_creamfl_options *o = c->o;
    const int B = o->server_opt.batch_size;
    fm_sampler smp;
    FM_TRY(fm_sampler_init(&smp, NULL, (int64_t)c->n, mix(o->seed, 0x5E000000ULL + (uint64_t)round)));
    fm_status st = FM_OK;
    double sum = 0.0;
    for (int64_t step = 0; st == FM_OK && step < o->server_steps; step++) {
        fm_sampler_next(&smp, c->pidx, B);
        gather_public(c, c->pidx, B);
        float loss = 0.0f;
        st = fm_train_step(c->server, c->server_opt, &o->server_opt, &c->batch, B, o->server_opt.lr, &loss, NULL);
        sum += loss;
    }
    fm_sampler_free(&smp);
    *mean_loss = o->server_steps > 0 ? sum / (double)o->server_steps : NAN;
    return st;
}

/* κ·(MSE(i_server, i_agg) + MSE(t_server, t_agg)) over batches of P, MSE the mean over all B·d elements (PyTorch's
 * MSELoss, as the reference code); a modality without an aggregate this round is skipped. */
static fm_status server_distill(cream *c, int round, int use_i, int use_t, double *mean_loss)
{
    const fm_creamfl_options *o = c->o;
    const int B = o->server_opt.batch_size;
    *mean_loss = NAN;
    if (o->distill_steps == 0 || (!use_i && !use_t))
        return FM_OK;
    fm_sampler smp;
    FM_TRY(fm_sampler_init(&smp, NULL, (int64_t)c->n, mix(o->seed, 0xD1000000ULL + (uint64_t)round)));
    fm_status st = FM_OK;
    double sum = 0.0;
    const double g = 2.0 * (double)o->kappa / ((double)B * (double)c->d);
    for (int64_t step = 0; st == FM_OK && step < o->distill_steps; step++) {
        fm_sampler_next(&smp, c->pidx, B);
        gather_public(c, c->pidx, B);
        st = fm_clip_zero_grad(c->server);
        if (st == FM_OK)
            st = fm_clip_forward(c->server, use_i ? c->batch.images : NULL, use_t ? c->batch.tokens : NULL,
                                 use_t ? c->batch.eot : NULL, B, use_i ? c->emb_i : NULL, use_t ? c->emb_t : NULL);
        double loss = 0.0;
        for (int mod = 0; st == FM_OK && mod < 2; mod++) {
            if (!(mod == 0 ? use_i : use_t))
                continue;
            const float *e = mod == 0 ? c->emb_i : c->emb_t, *agg = mod == 0 ? c->agg_i : c->agg_t;
            float *dz = mod == 0 ? c->dz_i : c->dz_t;
            for (int b = 0; b < B; b++) {
                const float *t = agg + (size_t)c->pidx[b] * c->d;
                for (size_t j = 0; j < c->d; j++) {
                    const double diff = (double)e[(size_t)b * c->d + j] - (double)t[j];
                    loss += diff * diff;
                    dz[(size_t)b * c->d + j] = (float)(g * diff);
                }
            }
        }
        if (st == FM_OK)
            st = fm_clip_backward(c->server, use_i ? c->dz_i : NULL, use_t ? c->dz_t : NULL);
        if (st == FM_OK)
            st = fm_optimizer_apply(c->server, c->server_opt, &o->server_opt, o->server_opt.lr, NULL);
        sum += (double)o->kappa * loss / ((double)B * (double)c->d);
    }
    fm_sampler_free(&smp);
    *mean_loss = sum / (double)o->distill_steps;
    return st;
}

typedef struct round_stats {
    double server_loss, distill_loss, site_loss, inter, intra;
} round_stats;

static fm_status run_round(cream *c, int round, round_stats *rs)
{
    const fm_creamfl_options *o = c->o;
    memset(rs, 0, sizeof *rs);
    rs->site_loss = rs->inter = rs->intra = rs->distill_loss = NAN;
    /* 1. the server trains on P and encodes it */
    FM_TRY(server_train(c, round, &rs->server_loss));
    if (c->N == 0)
        return FM_OK; /* the public-only baseline */
    FM_TRY(encode_public(c, c->server, c->ig, c->tg));
    /* 2–3. sampled sites (in index order) train and encode P */
    const int m = o->sites_per_round;
    fm_rng rng = fm_rng_make(o->seed, 0xC4EA0000ULL + (uint64_t)round);
    fm_rng_permutation(&rng, c->order, (size_t)c->N);
    for (int i = 1; i < m; i++)
        for (int j = i; j > 0 && c->order[j - 1] > c->order[j]; j--) {
            int32_t t = c->order[j];
            c->order[j] = c->order[j - 1];
            c->order[j - 1] = t;
        }
    /* the sites receive ig and tg: as bf16 when representations travel so */
    const double down = send(c, c->ig) + send(c, c->tg);
    const size_t nd = c->n * c->d;
    const float *reps_i[4096], *reps_t[4096];
    if (m > 4096)
        return fm_error(FM_ERR_CONFIG, "creamfl: more than 4096 sites per round");
    int Ki = 0, Kt = 0;
    site_stats acc = {0, 0, 0};
    for (int i = 0; i < m; i++) {
        const int si = c->order[i];
        float *up_i = c->up + (size_t)i * 2 * nd, *up_t = up_i + nd;
        c->bytes_down += down;
        FM_TRY(run_site(c, si, round, up_i, up_t, &acc));
        if (has_image(c->sites[si].kind))
            reps_i[Ki++] = up_i;
        if (has_text(c->sites[si].kind))
            reps_t[Kt++] = up_t;
    }
    const double steps = (double)m * (double)(o->local_steps > 0 ? o->local_steps : 1);
    rs->site_loss = acc.loss / steps;
    rs->inter = o->inter ? acc.inter / steps : NAN;
    rs->intra = o->intra ? acc.intra / steps : NAN;
    /* 4. the ensemble: images scored against the global texts, texts against the global images */
    const double t0 = fm_now_seconds();
    if (Ki > 0)
        FM_TRY(fm_creamfl_ensemble(reps_i, Ki, c->tg, c->n, c->d, o->tiles, !o->ensemble, c->agg_i, NULL));
    if (Kt > 0)
        FM_TRY(fm_creamfl_ensemble(reps_t, Kt, c->ig, c->n, c->d, o->tiles, !o->ensemble, c->agg_t, NULL));
    c->ensemble_s += fm_now_seconds() - t0;
    /* 5. distillation */
    return server_distill(c, round, Ki > 0, Kt > 0, &rs->distill_loss);
}

static fm_status log_round(cream *c, fm_metrics_log *log, FILE *csv, int round, const round_stats *rs,
                           const fm_eval_result *ev, double wall)
{
    const char *keys[] = {"round",  "loss",     "server_loss", "distill_loss", "inter",  "intra",   "eval_loss",
                          "i2t_r1", "i2t_r5",   "i2t_r10",     "t2i_r1",       "t2i_r5", "t2i_r10", "zs_acc",
                          "wall_s", "bytes_up", "bytes_down",  "ensemble_s",   "pairs"};
    double vals[] = {round,
                     rs->site_loss,
                     rs->server_loss,
                     rs->distill_loss,
                     rs->inter,
                     rs->intra,
                     ev ? ev->loss : NAN,
                     ev ? ev->retrieval.i2t_r1 : NAN,
                     ev ? ev->retrieval.i2t_r5 : NAN,
                     ev ? ev->retrieval.i2t_r10 : NAN,
                     ev ? ev->retrieval.t2i_r1 : NAN,
                     ev ? ev->retrieval.t2i_r5 : NAN,
                     ev ? ev->retrieval.t2i_r10 : NAN,
                     ev ? ev->zs_acc : NAN,
                     wall,
                     c->bytes_up,
                     c->bytes_down,
                     c->ensemble_s,
                     ev ? (double)ev->pairs : NAN};
    const size_t n = sizeof vals / sizeof vals[0];
    FM_TRY(fm_metrics_write(log, keys, vals, n));
    if (csv && ev)
        FM_TRY(fm_metrics_csv_row(csv, vals, n));
    return FM_OK;
}

fm_status fm_creamfl_run(const fm_creamfl_options *o, const fm_synth_config *synth, const fm_tokenizer *tok,
                         fm_device device, fm_creamfl_result *result, fm_clip **server_out)
{
    if (!result || !tok)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: NULL result or tokenizer");
    memset(result, 0, sizeof *result);
    if (server_out)
        *server_out = NULL;
    FM_TRY(fm_creamfl_validate(o, synth));
    const double t0 = fm_now_seconds();
    cream c;
    fm_status st = cream_init(&c, o, synth, tok, device);
    fm_metrics_log log;
    memset(&log, 0, sizeof log);
    FILE *csv = NULL;
    char path[4096];
    if (st == FM_OK) {
        const char *mp = o->metrics_path;
        if (!mp) {
            snprintf(path, sizeof path, "%s/metrics.jsonl", o->out_dir);
            mp = path;
        }
        st = fm_metrics_open(&log, mp, 0);
    }
    if (st == FM_OK) {
        snprintf(path, sizeof path, "%s/summary.csv", o->out_dir);
        csv = fopen(path, "w");
        if (!csv)
            st = fm_error(FM_ERR_IO, "%s: %s", path, strerror(errno));
        else
            fprintf(csv, "round,loss,server_loss,distill_loss,inter,intra,eval_loss,i2t_r1,i2t_r5,i2t_r10,t2i_r1,"
                         "t2i_r5,t2i_r10,zs_acc,wall_s,bytes_up,bytes_down,ensemble_s,pairs\n");
    }
    fm_progress bar;
    memset(&bar, 0, sizeof bar);
    if (o->progress)
        fm_progress_begin(&bar, stderr, c.N ? "creamfl" : "creamfl (public only)", o->rounds);
    fm_eval_result ev;
    memset(&ev, 0, sizeof ev);
    int round = 0;
    while (st == FM_OK && round < o->rounds) {
        round++;
        round_stats rs;
        st = run_round(&c, round, &rs);
        const int do_eval = round == o->rounds || (o->eval_every > 0 && round % o->eval_every == 0);
        if (st == FM_OK && do_eval)
            st = fm_evaluate(c.server, c.test, o->eval_size, &ev);
        if (st == FM_OK)
            st = log_round(&c, &log, csv, round, &rs, do_eval ? &ev : NULL, fm_now_seconds() - t0);
        if (st == FM_OK)
            result->rounds_done = round;
        if (st == FM_OK && o->progress)
            fm_progress_update(&bar, round, "round %d server %.3f | i2t R@1 %.3f t2i R@1 %.3f", round, rs.server_loss,
                               ev.retrieval.i2t_r1, ev.retrieval.t2i_r1);
    }
    if (o->progress)
        fm_progress_end(&bar);
    if (csv)
        fclose(csv);
    fm_metrics_close(&log);
    result->last_eval = ev;
    result->bytes_up = c.bytes_up;
    result->bytes_down = c.bytes_down;
    result->ensemble_s = c.ensemble_s;
    result->wall_s = fm_now_seconds() - t0;
    if (st == FM_OK && server_out) {
        *server_out = c.server; /* handed over */
        c.server = NULL;
    }
    cream_free(&c);
    return st;
}
