/* CreamFL's rounds: a server model and heterogeneous sites (each its own architecture and its own persistent model;
 * holding images, texts or both) that exchange only representations of the public proxy set. Per round: the server
 * trains on P and encodes it (fm_creamfl_server_broadcast); sampled sites train on private data plus the
 * regularisers and encode P (fm_creamfl_site_train); the server fuses the uploads with the cross-modal ensemble and
 * distills (fm_creamfl_server_aggregate), is evaluated and logged (finish). The in-process simulation
 * (fm_creamfl_run) strings these together over one object that holds the server and every site; `fedmm server` and
 * `fedmm client` open a server-only or a one-site object and call the same pieces in separate processes. After
 * every round a checkpoint (server and site models with their optimizer state, the run's counters) makes the run
 * resumable to the same result. */
#include "fedmm/creamfl.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedmm/dataset.h"
#include "fedmm/log.h"
#include "fedmm/metrics.h"
#include "fedmm/modality.h"
#include "fedmm/safetensors.h"
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
    o.layout = FM_CREAMFL_GROUPS;
    for (int k = 0; k < FM_CREAMFL_KINDS; k++)
        o.num_sites[k] = 2;
    o.scenario = fm_scenario_default_config();
    o.public_size = 500;
    o.rounds = 10;
    o.sites_per_round = 3;
    o.local_steps = 10;
    o.server_steps = 10;
    o.distill_steps = 10;
    o.distill = FM_CREAMFL_DISTILL_SEPARATE;
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
    o.checkpoint = 1;
    return o;
}

static int total_sites(const fm_creamfl_options *o)
{
    if (o->public_only)
        return 0;
    if (o->layout == FM_CREAMFL_SCENARIO)
        return o->scenario.num_sites;
    return o->num_sites[0] + o->num_sites[1] + o->num_sites[2];
}

static fm_status validate_site_model(const fm_creamfl_options *o, int k)
{
    const fm_clip_config *c = &o->site_model[k], *sv = &o->server;
    const char *name = fm_creamfl_site_kind_name((fm_creamfl_site_kind)k);
    FM_TRY(fm_clip_config_validate(c));
    if (c->embed_dim != sv->embed_dim)
        return fm_error(FM_ERR_CONFIG, "creamfl: %s sites' embed_dim %d differs from the server's %d", name,
                        c->embed_dim, sv->embed_dim);
    if (c->image_size != sv->image_size || c->context_length != sv->context_length)
        return fm_error(FM_ERR_CONFIG,
                        "creamfl: %s sites' image_size / context_length (%d / %d) differ from the server's (%d / "
                        "%d): every model reads the same data",
                        name, c->image_size, c->context_length, sv->image_size, sv->context_length);
    return FM_OK;
}

fm_status fm_creamfl_validate(const fm_creamfl_options *o, const fm_synth_config *synth)
{
    if (!o || !synth)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: NULL options or data config");
    FM_TRY(fm_clip_config_validate(&o->server));
    if (o->layout != FM_CREAMFL_GROUPS && o->layout != FM_CREAMFL_SCENARIO)
        return fm_error(FM_ERR_CONFIG, "creamfl: unknown site layout %d", (int)o->layout);
    const int N = total_sites(o);
    if (o->distill != FM_CREAMFL_DISTILL_JOINT && o->distill != FM_CREAMFL_DISTILL_SEPARATE)
        return fm_error(FM_ERR_CONFIG, "creamfl: unknown distillation mode %d", (int)o->distill);
    if (o->rounds < 1 || o->local_steps < 0 || o->init_local_steps < 0 || o->server_steps < 0 ||
        o->server_init_steps < 0 || o->distill_steps < 0)
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
    if (o->resume && !o->checkpoint)
        return fm_error(FM_ERR_CONFIG, "creamfl: resume needs the per-round checkpoints (checkpoint = 1)");
    if (o->server.image_size != synth->image_size)
        return fm_error(FM_ERR_CONFIG, "creamfl: server image_size %d differs from data.image_size %d",
                        o->server.image_size, synth->image_size);
    if (o->public_only)
        return FM_OK;
    if (o->layout == FM_CREAMFL_SCENARIO) {
        FM_TRY(fm_scenario_validate(&o->scenario));
        if (synth->split_size[FM_SPLIT_TRAIN] < o->scenario.num_sites)
            return fm_error(FM_ERR_CONFIG, "creamfl: %d sites but only %lld samples in the train split",
                            o->scenario.num_sites, (long long)synth->split_size[FM_SPLIT_TRAIN]);
        /* which kinds appear is known only after the split: every kind's model must be usable */
        for (int k = 0; k < FM_CREAMFL_KINDS; k++)
            FM_TRY(validate_site_model(o, k));
        return FM_OK;
    }
    for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
        if (o->num_sites[k] < 0)
            return fm_error(FM_ERR_CONFIG, "creamfl: %d %s sites", o->num_sites[k], fm_creamfl_site_kind_name(k));
        if (o->num_sites[k] == 0)
            continue;
        FM_TRY(validate_site_model(o, k));
        if (synth->split_size[kind_split[k]] < o->num_sites[k])
            return fm_error(FM_ERR_CONFIG, "creamfl: %d %s sites but only %lld samples in the %s split",
                            o->num_sites[k], fm_creamfl_site_kind_name(k), (long long)synth->split_size[kind_split[k]],
                            fm_split_name(kind_split[k]));
    }
    return FM_OK;
}

/* ---- state ---------------------------------------------------------------------------------------------- */

typedef struct cream_site {
    fm_creamfl_site_kind kind; /* which model configuration; PAIRED for any site holding both modalities */
    fm_modality modality;      /* what it holds (the union of its samples' modalities) */
    fm_split split;
    int64_t n;
    int64_t *indices;         /* (n) into the split */
    uint8_t *sample_modality; /* (n) fm_modality of each sample */
    fm_clip *model;
    fm_optimizer *opt;
    int64_t rounds_trained; /* rounds it has been sampled in (0: it gets init_local_steps next time) */
} cream_site;

typedef struct round_stats {
    double server_loss, distill_loss, site_loss, inter, intra;
    double align_i, align_t, align_server; /* R@1 on P against the other modality's global representations */
    double wmax_i, wmax_t;                 /* mean over P of the largest ensemble weight (1/K: plain mean) */
} round_stats;

/* Who an object is: the whole simulation, the server alone (`fedmm server`: sites laid out, none built), or one
 * site alone (`fedmm client`: no server model, only that site's model and data). */
enum { ROLE_SIM, ROLE_SERVER, ROLE_SITE };

typedef struct fm_creamfl {
    fm_creamfl_options opt; /* a copy; o points at it */
    const fm_creamfl_options *o;
    int role;
    int own_site; /* ROLE_SITE: its index */
    fm_device device;
    size_t n, d;
    int B, N;
    fm_clip *server;
    fm_optimizer *server_opt;
    fm_optimizer *distill_opt; /* FM_CREAMFL_DISTILL_SEPARATE: the distillation steps' own AdamW state */
    fm_dataset *test, *data[FM_SPLIT_COUNT];
    fm_class_prompts prompts;
    cream_site *sites;
    int sites_of_kind[FM_CREAMFL_KINDS];
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
    float *scores;     /* (sites_per_round, n): ensemble scores, then weights */
    float *align_tile; /* ALIGN_TR × ALIGN_TC products + 2·ALIGN_TR per-row values */
    /* batch scratch */
    fm_batch batch;
    int32_t *blabels;
    uint8_t *bmod;
    int64_t *pos, *pidx;
    float *emb_i, *emb_t, *dz_i, *dz_t, *gat_g, *gat_o; /* (B, d) */
    int32_t *order;
    uint8_t *trained_now; /* (N) sampled in the round being checkpointed */
    double bytes_up, bytes_down, ensemble_s, wall_before;
    int rounds_done;
    /* the open round (server): its statistics so far, the CLIP losses summed over its server steps */
    round_stats rs;
    double clip_sum;
    double down; /* payload bytes of one broadcast (ig and tg) */
    /* a site's report of its last round: each value as the simulation accumulates it (fm_creamfl_site_report) */
    int64_t max_steps; /* local_steps + init_local_steps */
    float *rep_loss, *rep_inter, *rep_intra;
    size_t n_loss, n_inter, n_intra;
    /* the server's metrics files and clock */
    fm_metrics_log log;
    FILE *csv;
    double t0;
    int keep_rounds; /* checkpoints kept: 1 (the simulation), 2 (the networked server; see save_checkpoint) */
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

#define ALIGN_TR 64
#define ALIGN_TC 2048

static uint64_t mix(uint64_t a, uint64_t b) { return a ^ (b + 0x9E3779B97F4A7C15ULL + (a << 6) + (a >> 2)); }

static fm_creamfl_site_kind kind_of(fm_modality m)
{
    return m == FM_MODALITY_IMAGE ? FM_CREAMFL_IMAGE : m == FM_MODALITY_TEXT ? FM_CREAMFL_TEXT : FM_CREAMFL_PAIRED;
}

/* Whether this object builds site i (its model, its data): the simulation builds every site, a site object itself. */
static int builds_site(const cream *c, int i)
{
    return c->role == ROLE_SIM || (c->role == ROLE_SITE && i == c->own_site);
}

/* The sites' data: GROUPS cut each kind's split into equal contiguous shards; SCENARIO takes the scenario's split
 * of the train split. Models are made afterwards. */
static fm_status lay_out_sites(cream *c, const fm_synth_config *synth, const fm_tokenizer *tok)
{
    const fm_creamfl_options *o = c->o;
    fm_status st = FM_OK;
    if (c->N == 0)
        return FM_OK; /* the public-only baseline */
    if (o->layout == FM_CREAMFL_SCENARIO) {
        fm_site_data *sd = NULL;
        FM_TRY(fm_federation_split(&o->scenario, synth, &sd));
        for (int i = 0; i < c->N; i++) {
            cream_site *s = &c->sites[i];
            s->modality = sd[i].modality;
            s->kind = kind_of(sd[i].modality);
            s->split = FM_SPLIT_TRAIN;
            s->n = sd[i].n;
            s->indices = sd[i].indices; /* taken over */
            s->sample_modality = sd[i].sample_modality;
            sd[i].indices = NULL;
            sd[i].sample_modality = NULL;
        }
        fm_site_data_free(sd, c->N);
    } else {
        int idx = 0;
        for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
            const int cnt = o->num_sites[k];
            const int64_t size = synth->split_size[kind_split[k]];
            for (int i = 0; i < cnt; i++, idx++) {
                cream_site *s = &c->sites[idx];
                s->kind = (fm_creamfl_site_kind)k;
                s->modality = kind_modality[k];
                s->split = kind_split[k];
                const int64_t first = size * i / cnt;
                s->n = size * (i + 1) / cnt - first;
                s->indices = xcalloc((size_t)s->n, sizeof(int64_t), &st);
                s->sample_modality = xcalloc((size_t)s->n, 1, &st);
                FM_TRY(st);
                for (int64_t j = 0; j < s->n; j++) {
                    s->indices[j] = first + j;
                    s->sample_modality[j] = (uint8_t)s->modality;
                }
            }
        }
    }
    for (int i = 0; i < c->N; i++) {
        cream_site *s = &c->sites[i];
        if (s->n < 1)
            return fm_error(FM_ERR_CONFIG, "creamfl: site %d has no samples", i);
        c->sites_of_kind[s->kind]++;
        if (builds_site(c, i) && !c->data[s->split])
            FM_TRY(fm_dataset_synth(&c->data[s->split], synth, s->split, tok, c->ctx));
    }
    return FM_OK;
}

static fm_status cream_init(cream *c, const fm_creamfl_options *o, const fm_synth_config *synth,
                            const fm_tokenizer *tok, fm_device device, int role, int own_site)
{
    memset(c, 0, sizeof *c);
    c->opt = *o;
    c->o = o = &c->opt;
    c->role = role;
    c->own_site = own_site;
    c->keep_rounds = role == ROLE_SERVER ? 2 : 1;
    c->device = device;
    c->n = (size_t)o->public_size;
    c->d = (size_t)o->server.embed_dim;
    c->B = o->local.batch_size > o->server_opt.batch_size ? o->local.batch_size : o->server_opt.batch_size;
    c->N = total_sites(o);
    c->ctx = o->server.context_length;
    c->max_steps = o->local_steps + o->init_local_steps;
    const int S = o->server.image_size;
    c->img_floats = (size_t)3 * S * S;
    const int server = role != ROLE_SITE, sites = role != ROLE_SERVER;
    if (server) {
        FM_TRY(fm_clip_create(&c->server, &o->server, device, o->seed));
        FM_TRY(fm_optimizer_create(&c->server_opt, c->server));
        if (o->distill == FM_CREAMFL_DISTILL_SEPARATE)
            FM_TRY(fm_optimizer_create(&c->distill_opt, c->server));
        FM_TRY(fm_dataset_synth(&c->test, synth, FM_SPLIT_TEST, tok, c->ctx));
    }
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
    const size_t nd = c->n * c->d, Bd = (size_t)c->B * c->d, m = (size_t)(c->N > 0 ? o->sites_per_round : 1);
    if (server) { /* the global representations, the ensemble's */
        c->ig = xcalloc(nd, sizeof(float), &st);
        c->tg = xcalloc(nd, sizeof(float), &st);
        c->agg_i = xcalloc(nd, sizeof(float), &st);
        c->agg_t = xcalloc(nd, sizeof(float), &st);
        c->scores = xcalloc(m * c->n, sizeof(float), &st);
        c->align_tile = xcalloc((size_t)ALIGN_TR * ALIGN_TC + 2 * ALIGN_TR, sizeof(float), &st);
    }
    if (sites) { /* a training site's round-start representations and its report */
        c->old_i = xcalloc(nd, sizeof(float), &st);
        c->old_t = xcalloc(nd, sizeof(float), &st);
        c->rep_loss = xcalloc((size_t)c->max_steps, sizeof(float), &st);
        c->rep_inter = xcalloc(2 * (size_t)c->max_steps, sizeof(float), &st);
        c->rep_intra = xcalloc(2 * (size_t)c->max_steps, sizeof(float), &st);
    }
    if (role == ROLE_SIM) /* what the sampled sites send */
        c->up = xcalloc(m * 2 * nd, sizeof(float), &st);
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
    c->trained_now = xcalloc((size_t)c->N, 1, &st);
    c->sites = xcalloc((size_t)c->N, sizeof(cream_site), &st);
    FM_TRY(st);
    FM_TRY(fm_batch_alloc(&c->batch, c->B, S, c->ctx));
    FM_TRY(lay_out_sites(c, synth, tok));
    for (int i = 0; i < c->N; i++) {
        cream_site *s = &c->sites[i];
        if (!builds_site(c, i))
            continue;
        FM_TRY(fm_clip_create(&s->model, &o->site_model[s->kind], device, mix(o->seed, 1000 + (uint64_t)i)));
        FM_TRY(fm_optimizer_create(&s->opt, s->model));
    }
    return FM_OK;
}

static void cream_free(cream *c)
{
    for (int i = 0; c->sites && i < c->N; i++) {
        fm_optimizer_destroy(c->sites[i].opt);
        fm_clip_destroy(c->sites[i].model);
        free(c->sites[i].indices);
        free(c->sites[i].sample_modality);
    }
    free(c->sites);
    for (int k = 0; k < FM_SPLIT_COUNT; k++)
        fm_dataset_destroy(c->data[k]);
    fm_dataset_destroy(c->test);
    fm_class_prompts_free(&c->prompts);
    fm_optimizer_destroy(c->server_opt);
    fm_optimizer_destroy(c->distill_opt);
    fm_clip_destroy(c->server);
    fm_batch_free(&c->batch);
    float *fl[] = {c->pub_images, c->ig,         c->tg,       c->old_i,     c->old_t,    c->up,    c->agg_i,
                   c->agg_t,      c->emb_i,      c->emb_t,    c->dz_i,      c->dz_t,     c->gat_g, c->gat_o,
                   c->scores,     c->align_tile, c->rep_loss, c->rep_inter, c->rep_intra};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    free(c->pub_tokens);
    free(c->pub_eot);
    free(c->blabels);
    free(c->bmod);
    free(c->pos);
    free(c->pidx);
    free(c->order);
    free(c->trained_now);
    if (c->csv)
        fclose(c->csv);
    fm_metrics_close(&c->log);
}

/* ---- pieces of a round ------------------------------------------------------------------------------------ */

static int has_image(const cream_site *s) { return (s->modality & FM_MODALITY_IMAGE) != 0; }
static int has_text(const cream_site *s) { return (s->modality & FM_MODALITY_TEXT) != 0; }

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

/* One local step: the private loss, then λ·(L_inter + L_intra) on a public batch against the round's global
 * representations ig, tg (n, d), one optimizer step. The losses are appended to the site's report. */
static fm_status site_step(cream *c, cream_site *s, fm_sampler *priv, fm_sampler *pub, const float *ig, const float *tg)
{
    const fm_creamfl_options *o = c->o;
    const int B = o->local.batch_size;
    FM_TRY(fm_clip_zero_grad(s->model));
    fm_sampler_next(priv, c->pos, B);
    for (int i = 0; i < B; i++) {
        c->batch.idx[i] = s->indices[c->pos[i]];
        c->bmod[i] = s->sample_modality[c->pos[i]];
    }
    FM_TRY(fm_dataset_batch(c->data[s->split], c->batch.idx, B, c->batch.images, c->batch.tokens, c->batch.eot,
                            c->batch.labels));
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
        return fm_error(FM_ERR_NOT_FINITE, "creamfl: %s site private loss is %f", fm_creamfl_site_kind_name(s->kind),
                        (double)loss);
    c->rep_loss[c->n_loss++] = loss;
    if (o->lambda > 0.0f && (o->inter || o->intra)) {
        fm_sampler_next(pub, c->pidx, B);
        gather_public(c, c->pidx, B);
        const int hi = has_image(s), ht = has_text(s);
        FM_TRY(fm_clip_forward(s->model, hi ? c->batch.images : NULL, ht ? c->batch.tokens : NULL,
                               ht ? c->batch.eot : NULL, B, hi ? c->emb_i : NULL, ht ? c->emb_t : NULL));
        const size_t Bd = (size_t)B * c->d;
        for (int mod = 0; mod < 2; mod++) {
            if (!(mod == 0 ? hi : ht))
                continue;
            float *z = mod == 0 ? c->emb_i : c->emb_t, *dz = mod == 0 ? c->dz_i : c->dz_t;
            const float *same = mod == 0 ? ig : tg, *other = mod == 0 ? tg : ig;
            const float *old = mod == 0 ? c->old_i : c->old_t;
            memset(dz, 0, Bd * sizeof(float));
            float l = 0.0f;
            if (o->inter) {
                FM_TRY(fm_creamfl_inter_loss(z, B, c->d, other, c->n, c->pidx, o->tau, o->lambda, dz, &l));
                c->rep_inter[c->n_inter++] = l;
            }
            if (o->intra) {
                gather_rows(c->gat_g, same, c->pidx, B, c->d);
                gather_rows(c->gat_o, old, c->pidx, B, c->d);
                FM_TRY(fm_creamfl_intra_loss(z, c->gat_g, c->gat_o, B, c->d, o->tau, o->lambda, dz, &l));
                c->rep_intra[c->n_intra++] = l;
            }
        }
        FM_TRY(fm_clip_backward(s->model, hi ? c->dz_i : NULL, ht ? c->dz_t : NULL));
    }
    return fm_optimizer_apply(s->model, s->opt, &o->local, o->local.lr, NULL);
}

/* Site `si`'s part of round `round`: encode P (its frozen round-start representations), train against ig / tg,
 * encode P and "send" the result into up_i / up_t. The report (c->rep_*) gets what it measured; *steps the local
 * steps it took. */
static fm_status run_site(cream *c, int si, int round, const float *ig, const float *tg, float *up_i, float *up_t,
                          int64_t *steps)
{
    const fm_creamfl_options *o = c->o;
    cream_site *s = &c->sites[si];
    const int hi = has_image(s), ht = has_text(s);
    /* the round-start model is frozen during the round, so encoding P once with it gives exactly what a frozen
     * copy would produce for every public batch */
    if (o->intra)
        FM_TRY(encode_public(c, s->model, hi ? c->old_i : NULL, ht ? c->old_t : NULL));
    FM_TRY(fm_optimizer_reset(s->opt));
    fm_sampler priv, pub;
    const uint64_t seed = mix(mix(o->seed, (uint64_t)round), (uint64_t)si);
    FM_TRY(fm_sampler_init(&priv, NULL, s->n, seed));
    fm_status st = fm_sampler_init(&pub, NULL, (int64_t)c->n, mix(seed, 0xC4EA));
    if (st != FM_OK) {
        fm_sampler_free(&priv);
        return st;
    }
    *steps = o->local_steps + (s->rounds_trained == 0 ? o->init_local_steps : 0);
    c->n_loss = c->n_inter = c->n_intra = 0;
    for (int64_t step = 0; st == FM_OK && step < *steps; step++)
        st = site_step(c, s, &priv, &pub, ig, tg);
    fm_sampler_free(&priv);
    fm_sampler_free(&pub);
    FM_TRY(st);
    s->rounds_trained++;
    FM_TRY(encode_public(c, s->model, hi ? up_i : NULL, ht ? up_t : NULL));
    if (hi)
        c->bytes_up += send(c, up_i);
    if (ht)
        c->bytes_up += send(c, up_t);
    return FM_OK;
}

/* The server's CLIP-loss steps on P before it encodes P; *clip_sum accumulates the losses. */
static fm_status server_train(cream *c, int round, double *clip_sum)
{
    const fm_creamfl_options *o = c->o;
    const int B = o->server_opt.batch_size;
    fm_sampler smp;
    FM_TRY(fm_sampler_init(&smp, NULL, (int64_t)c->n, mix(o->seed, 0x5E000000ULL + (uint64_t)round)));
    fm_status st = FM_OK;
    const int64_t steps = o->server_steps + (round == 1 ? o->server_init_steps : 0);
    for (int64_t step = 0; st == FM_OK && step < steps; step++) {
        fm_sampler_next(&smp, c->pidx, B);
        gather_public(c, c->pidx, B);
        float loss = 0.0f;
        st = fm_train_step(c->server, c->server_opt, &o->server_opt, &c->batch, B, o->server_opt.lr, &loss, NULL);
        *clip_sum += loss;
    }
    fm_sampler_free(&smp);
    return st;
}

/* The server's steps after the ensemble: on each batch of P the CLIP loss plus the distillation loss
 * κ·(MSE(i_server, i_agg) + MSE(t_server, t_agg)), MSE the mean over all B·d elements (PyTorch's MSELoss, as the
 * reference code); a modality without an aggregate this round has no MSE term. The CLIP term is there because a
 * phase of MSE alone, on the AdamW state the CLIP steps share, turned into steps on the CLIP steps' momentum: with
 * κ = 0 (no distillation gradient at all) such a phase still left the server at chance where the public-only server
 * learned (docs/creamfl.md, benchmarks/results/creamfl-2026-11-22.md). With the CLIP term, κ weighs the
 * distillation against the server's own objective, κ = 0 is exactly the public-only server, and the public-only
 * baseline (no sites) takes the same steps on the same batches with the CLIP loss alone. */
static fm_status server_distill(cream *c, int round, int use_i, int use_t, double *clip_sum, double *mean_loss)
{
    const fm_creamfl_options *o = c->o;
    const int B = o->server_opt.batch_size;
    const int distill = (use_i || use_t) && o->kappa > 0.0f;
    const int joint = o->distill == FM_CREAMFL_DISTILL_JOINT;
    *mean_loss = NAN;
    if (o->distill_steps == 0 || (!joint && !distill))
        return FM_OK;
    fm_sampler smp;
    FM_TRY(fm_sampler_init(&smp, NULL, (int64_t)c->n, mix(o->seed, 0xD1000000ULL + (uint64_t)round)));
    fm_status st = FM_OK;
    double sum = 0.0;
    const double g = 2.0 * (double)o->kappa / ((double)B * (double)c->d);
    for (int64_t step = 0; st == FM_OK && step < o->distill_steps; step++) {
        fm_sampler_next(&smp, c->pidx, B);
        gather_public(c, c->pidx, B);
        float closs = 0.0f;
        st = fm_clip_zero_grad(c->server);
        if (st == FM_OK && joint)
            st = fm_clip_forward_backward(c->server, c->batch.images, c->batch.tokens, c->batch.eot, B, &closs);
        if (st == FM_OK && !isfinite(closs))
            st = fm_error(FM_ERR_NOT_FINITE, "creamfl: server CLIP loss is %f in round %d", (double)closs, round);
        *clip_sum += closs;
        if (st == FM_OK && distill)
            st = fm_clip_forward(c->server, use_i ? c->batch.images : NULL, use_t ? c->batch.tokens : NULL,
                                 use_t ? c->batch.eot : NULL, B, use_i ? c->emb_i : NULL, use_t ? c->emb_t : NULL);
        double loss = 0.0;
        for (int mod = 0; st == FM_OK && distill && mod < 2; mod++) {
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
        if (st == FM_OK && distill)
            st = fm_clip_backward(c->server, use_i ? c->dz_i : NULL, use_t ? c->dz_t : NULL);
        if (st == FM_OK)
            st = fm_optimizer_apply(c->server, joint ? c->server_opt : c->distill_opt, &o->server_opt, o->server_opt.lr,
                                    NULL);
        sum += (double)o->kappa * loss / ((double)B * (double)c->d);
    }
    fm_sampler_free(&smp);
    if (distill)
        *mean_loss = sum / (double)o->distill_steps;
    return st;
}

/* R@1 on P of representations R (n, d) against the other modality's G (n, d): the fraction of rows p whose own
 * G[p] scores highest (within 1e-6: the tile products and the diagonal may round differently). A diagnostic of
 * how well a site's (or the server's) representations line up with the global ones; chance is 1/|P|. */
static fm_status align_r1(const float *R, const float *G, size_t n, size_t d, float *tile, size_t TR, size_t TC,
                          double *r1)
{
    size_t hits = 0;
    for (size_t p0 = 0; p0 < n; p0 += TR) {
        const size_t r = n - p0 < TR ? n - p0 : TR;
        for (size_t i = 0; i < r; i++) {
            const float *a = R + (p0 + i) * d, *b = G + (p0 + i) * d;
            double diag = 0.0;
            for (size_t e = 0; e < d; e++)
                diag += (double)a[e] * (double)b[e];
            tile[TR * TC + i] = (float)diag; /* the row's own score, kept after the tile */
            tile[TR * TC + TR + i] = 0.0f;   /* how many score above it */
        }
        for (size_t j0 = 0; j0 < n; j0 += TC) {
            const size_t cc = n - j0 < TC ? n - j0 : TC;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, (int)cc, (int)d, 1.0f, R + p0 * d, (int)d,
                        G + j0 * d, (int)d, 0.0f, tile, (int)cc);
            for (size_t i = 0; i < r; i++) {
                const float own = tile[TR * TC + i] + 1e-6f;
                float above = 0.0f;
                for (size_t j = 0; j < cc; j++)
                    above += tile[i * cc + j] > own && j0 + j != p0 + i;
                tile[TR * TC + TR + i] += above;
            }
        }
        for (size_t i = 0; i < r; i++)
            hits += tile[TR * TC + TR + i] == 0.0f;
    }
    *r1 = (double)hits / (double)n;
    return FM_OK;
}

/* The ensemble of K uploads of one modality against the other modality's global representations: the fused
 * representations (the softmax of the scores, or the plain mean in the ablation), the mean R@1 on P of the
 * uploads against `other` into *align, and the mean largest weight into *wmax. */
static fm_status ensemble(cream *c, const float *const *reps, int K, const float *other, float *agg, double *align,
                          double *wmax)
{
    const fm_creamfl_options *o = c->o;
    if (c->device == FM_DEVICE_CUDA) { /* on the GPU; bf16 score tiles are exact on bf16 representations */
        FM_TRY(fm_creamfl_ensemble_staged(c->device, o->rep_bf16 ? FM_CREAMFL_BF16 : FM_CREAMFL_FP32, reps, K, other,
                                          c->n, c->d, o->tiles, !o->ensemble, agg, c->scores));
    } else {
        if (o->ensemble)
            FM_TRY(fm_creamfl_ensemble_scores(reps, K, other, c->n, c->d, o->tiles, c->scores));
        FM_TRY(fm_creamfl_fuse(reps, K, c->n, c->d, o->ensemble ? c->scores : NULL, agg));
    }
    double top = 0.0; /* mean over P of the largest site weight: 1/K is the plain mean */
    for (size_t p = 0; p < c->n; p++) {
        float w = o->ensemble ? 0.0f : 1.0f / (float)K;
        for (int k = 0; o->ensemble && k < K; k++)
            w = c->scores[(size_t)k * c->n + p] > w ? c->scores[(size_t)k * c->n + p] : w;
        top += w;
    }
    *wmax = top / (double)c->n;
    double sum = 0.0;
    for (int k = 0; k < K; k++) {
        double r1 = 0.0;
        FM_TRY(align_r1(reps[k], other, c->n, c->d, c->align_tile, ALIGN_TR, ALIGN_TC, &r1));
        sum += r1;
    }
    *align = sum / K;
    return FM_OK;
}

/* The server steps a round takes (the denominator of server_loss). */
static int64_t server_step_count(const fm_creamfl_options *o, int round)
{
    return o->server_steps + (round == 1 ? o->server_init_steps : 0) +
           (o->distill == FM_CREAMFL_DISTILL_JOINT ? o->distill_steps : 0);
}

/* Step 1 of round `round`: the server trains on P and encodes it into ig, tg, rounded as they travel; the round's
 * statistics start over. Without sites (the public-only baseline) the server takes its distillation-phase steps
 * with the CLIP loss alone instead, and the round is over. */
static fm_status broadcast(cream *c, int round)
{
    const fm_creamfl_options *o = c->o;
    round_stats *rs = &c->rs;
    memset(rs, 0, sizeof *rs);
    rs->site_loss = rs->inter = rs->intra = rs->distill_loss = NAN;
    rs->align_i = rs->align_t = rs->align_server = rs->wmax_i = rs->wmax_t = NAN;
    memset(c->trained_now, 0, (size_t)c->N);
    c->clip_sum = 0.0;
    FM_TRY(server_train(c, round, &c->clip_sum));
    const int64_t server_steps = server_step_count(o, round);
    if (c->N == 0) { /* the public-only baseline: the same steps, the CLIP loss alone */
        FM_TRY(server_distill(c, round, 0, 0, &c->clip_sum, &rs->distill_loss));
        rs->server_loss = server_steps > 0 ? c->clip_sum / (double)server_steps : NAN;
        return FM_OK;
    }
    FM_TRY(encode_public(c, c->server, c->ig, c->tg));
    FM_TRY(align_r1(c->ig, c->tg, c->n, c->d, c->align_tile, ALIGN_TR, ALIGN_TC, &rs->align_server));
    /* the sites receive ig and tg: as bf16 when representations travel so */
    c->down = send(c, c->ig) + send(c, c->tg);
    return FM_OK;
}

/* The first m of a permutation of the N sites drawn from (seed, round), sorted: the sites round `round` trains.
 * order (N) receives the permutation with its first m entries sorted. */
static void draw_sites(uint64_t seed, int round, int N, int m, int32_t *order)
{
    fm_rng rng = fm_rng_make(seed, 0xC4EA0000ULL + (uint64_t)round);
    fm_rng_permutation(&rng, order, (size_t)N);
    for (int i = 1; i < m; i++)
        for (int j = i; j > 0 && order[j - 1] > order[j]; j--) {
            int32_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
}

/* The sites' statistics of a round, summed in site order and step order as one running sum each. */
typedef struct site_acc {
    double loss, inter, intra;
    int64_t steps;
} site_acc;

static void account(site_acc *acc, const fm_creamfl_site_report *r)
{
    for (size_t i = 0; i < r->n_loss; i++)
        acc->loss += r->loss[i];
    for (size_t i = 0; i < r->n_inter; i++)
        acc->inter += r->inter[i];
    for (size_t i = 0; i < r->n_intra; i++)
        acc->intra += r->intra[i];
    acc->steps += r->steps;
}

static void site_means(cream *c, const site_acc *acc)
{
    const double den = (double)(acc->steps > 0 ? acc->steps : 1);
    c->rs.site_loss = acc->loss / den;
    c->rs.inter = c->o->inter ? acc->inter / den : NAN;
    c->rs.intra = c->o->intra ? acc->intra / den : NAN;
}

/* The report of the site that trained last (its lists are the object's). */
static fm_creamfl_site_report last_report(const cream *c, int64_t steps)
{
    fm_creamfl_site_report r = {.steps = steps,
                                .loss = c->rep_loss,
                                .n_loss = c->n_loss,
                                .inter = c->rep_inter,
                                .n_inter = c->n_inter,
                                .intra = c->rep_intra,
                                .n_intra = c->n_intra};
    return r;
}

/* Steps 4–5: the ensemble of the uploads (images scored against the global texts, texts against the global images),
 * then the distillation. */
static fm_status aggregate(cream *c, int round, const float *const *reps_i, int Ki, const float *const *reps_t, int Kt)
{
    round_stats *rs = &c->rs;
    const double t0 = fm_now_seconds();
    if (Ki > 0)
        FM_TRY(ensemble(c, reps_i, Ki, c->tg, c->agg_i, &rs->align_i, &rs->wmax_i));
    if (Kt > 0)
        FM_TRY(ensemble(c, reps_t, Kt, c->ig, c->agg_t, &rs->align_t, &rs->wmax_t));
    c->ensemble_s += fm_now_seconds() - t0;
    FM_TRY(server_distill(c, round, Ki > 0, Kt > 0, &c->clip_sum, &rs->distill_loss));
    const int64_t server_steps = server_step_count(c->o, round);
    rs->server_loss = server_steps > 0 ? c->clip_sum / (double)server_steps : NAN;
    return FM_OK;
}

/* A whole round in one process (the simulation): the server's step 1, the sampled sites in index order, steps 4–5. */
static fm_status run_round(cream *c, int round)
{
    const fm_creamfl_options *o = c->o;
    FM_TRY(broadcast(c, round));
    if (c->N == 0)
        return FM_OK;
    /* 2–3. sampled sites (in index order) train and encode P */
    const int m = o->sites_per_round;
    if (m > 4096)
        return fm_error(FM_ERR_CONFIG, "creamfl: more than 4096 sites per round");
    draw_sites(o->seed, round, c->N, m, c->order);
    const size_t nd = c->n * c->d;
    const float *reps_i[4096], *reps_t[4096];
    int Ki = 0, Kt = 0;
    site_acc acc = {0, 0, 0, 0};
    for (int i = 0; i < m; i++) {
        const int si = c->order[i];
        float *up_i = c->up + (size_t)i * 2 * nd, *up_t = up_i + nd;
        c->bytes_down += c->down;
        int64_t taken = 0;
        FM_TRY(run_site(c, si, round, c->ig, c->tg, up_i, up_t, &taken));
        const fm_creamfl_site_report r = last_report(c, taken);
        account(&acc, &r);
        c->trained_now[si] = 1;
        if (has_image(&c->sites[si]))
            reps_i[Ki++] = up_i;
        if (has_text(&c->sites[si]))
            reps_t[Kt++] = up_t;
    }
    site_means(c, &acc);
    return aggregate(c, round, reps_i, Ki, reps_t, Kt);
}

/* The mean test metrics of the sites that hold both modalities and have trained (NaN when there is none). */
static fm_status evaluate_sites(cream *c, fm_eval_result *mean, int *count)
{
    memset(mean, 0, sizeof *mean);
    *count = 0;
    for (int i = 0; i < c->N; i++) {
        cream_site *s = &c->sites[i];
        if (!s->model || s->modality != FM_MODALITY_PAIRED || s->rounds_trained == 0)
            continue;
        fm_eval_result e;
        FM_TRY(fm_evaluate(s->model, c->test, c->o->eval_size, &e));
        double *dst = &mean->retrieval.i2t_r1;
        const double *src = &e.retrieval.i2t_r1;
        for (int k = 0; k < 6; k++)
            dst[k] += src[k];
        mean->zs_acc += e.zs_acc;
        (*count)++;
    }
    double *dst = &mean->retrieval.i2t_r1;
    for (int k = 0; k < 6; k++)
        dst[k] = *count ? dst[k] / *count : NAN;
    mean->zs_acc = *count ? mean->zs_acc / *count : NAN;
    return FM_OK;
}

static const char *const log_keys[] = {"round",        "loss",        "server_loss",  "distill_loss", "inter",
                                       "intra",        "align_i",     "align_t",      "align_server", "wmax_i",
                                       "wmax_t",       "eval_loss",   "i2t_r1",       "i2t_r5",       "i2t_r10",
                                       "t2i_r1",       "t2i_r5",      "t2i_r10",      "zs_acc",       "site_i2t_r1",
                                       "site_i2t_r10", "site_t2i_r1", "site_t2i_r10", "site_zs_acc",  "wall_s",
                                       "bytes_up",     "bytes_down",  "ensemble_s",   "pairs"};
#define N_LOG_KEYS (sizeof log_keys / sizeof log_keys[0])

static fm_status log_round(cream *c, fm_metrics_log *log, FILE *csv, int round, const round_stats *rs,
                           const fm_eval_result *ev, const fm_eval_result *sites, double wall)
{
    double vals[] = {round,
                     rs->site_loss,
                     rs->server_loss,
                     rs->distill_loss,
                     rs->inter,
                     rs->intra,
                     rs->align_i,
                     rs->align_t,
                     rs->align_server,
                     rs->wmax_i,
                     rs->wmax_t,
                     ev ? ev->loss : NAN,
                     ev ? ev->retrieval.i2t_r1 : NAN,
                     ev ? ev->retrieval.i2t_r5 : NAN,
                     ev ? ev->retrieval.i2t_r10 : NAN,
                     ev ? ev->retrieval.t2i_r1 : NAN,
                     ev ? ev->retrieval.t2i_r5 : NAN,
                     ev ? ev->retrieval.t2i_r10 : NAN,
                     ev ? ev->zs_acc : NAN,
                     sites ? sites->retrieval.i2t_r1 : NAN,
                     sites ? sites->retrieval.i2t_r10 : NAN,
                     sites ? sites->retrieval.t2i_r1 : NAN,
                     sites ? sites->retrieval.t2i_r10 : NAN,
                     sites ? sites->zs_acc : NAN,
                     wall,
                     c->bytes_up,
                     c->bytes_down,
                     c->ensemble_s,
                     ev ? (double)ev->pairs : NAN};
    _Static_assert(sizeof vals / sizeof vals[0] == N_LOG_KEYS, "one value per key");
    FM_TRY(fm_metrics_write(log, log_keys, vals, N_LOG_KEYS));
    if (csv && ev)
        FM_TRY(fm_metrics_csv_row(csv, vals, N_LOG_KEYS));
    return FM_OK;
}

/* ---- checkpoints -------------------------------------------------------------------------------------------- */

/* DIR/round-R/ holds server.safetensors and site-I.safetensors (fm_checkpoint_save: trainable vector, AdamW moments
 * and step) and run.safetensors (the counters, each site's rounds, the LoRA dropout steps). A site that did not
 * train in round R is hard-linked from round R−1 rather than written again. DIR/latest → round-R is switched by an
 * atomic rename of a symlink once the round is complete, then round R−1 is removed: a crash at any point leaves
 * DIR/latest naming a complete round. The networked server (`fedmm server`) has no site files and keeps round R−1
 * until round R+1 is written: its resume takes the round its control-plane state names (written after this
 * checkpoint), which may be the one before DIR/latest. */

static void round_dir(char *buf, size_t cap, const char *out, int round)
{
    snprintf(buf, cap, "%s/round-%d", out, round);
}

static void remove_round(cream *c, int round)
{
    char dir[4096], f[4200];
    round_dir(dir, sizeof dir, c->o->out_dir, round);
    snprintf(f, sizeof f, "%s/server.safetensors", dir);
    unlink(f);
    snprintf(f, sizeof f, "%s/run.safetensors", dir);
    unlink(f);
    snprintf(f, sizeof f, "%s/server-distill.safetensors", dir);
    unlink(f);
    for (int i = 0; i < c->N; i++) {
        snprintf(f, sizeof f, "%s/site-%d.safetensors", dir, i);
        unlink(f);
    }
    rmdir(dir);
}

static fm_status save_run_state(cream *c, const char *path)
{
    const size_t N = (size_t)c->N;
    int64_t *rounds = calloc(N + 1, sizeof(int64_t)), *drop = calloc(N + 1, sizeof(int64_t));
    fm_st_writer *w = NULL;
    fm_status st = rounds && drop ? fm_st_writer_create(&w) : fm_error(FM_ERR_NO_MEMORY, "creamfl: checkpoint");
    if (st == FM_OK) {
        drop[0] = (int64_t)fm_clip_dropout_step(c->server);
        for (size_t i = 0; i < N; i++) {
            rounds[i] = c->sites[i].rounds_trained;
            drop[i + 1] = c->sites[i].model ? (int64_t)fm_clip_dropout_step(c->sites[i].model) : 0;
        }
    }
    char num[64];
    const struct {
        const char *key;
        double v;
    } meta[] = {{"rounds_done", c->rounds_done}, {"bytes_up", c->bytes_up},  {"bytes_down", c->bytes_down},
                {"ensemble_s", c->ensemble_s},   {"wall_s", c->wall_before}, {"sites", (double)c->N}};
    for (size_t i = 0; st == FM_OK && i < sizeof meta / sizeof meta[0]; i++) {
        snprintf(num, sizeof num, "%.17g", meta[i].v);
        st = fm_st_writer_set_metadata(w, meta[i].key, num);
    }
    int64_t shape_r[1] = {(int64_t)(N ? N : 1)}, shape_d[1] = {(int64_t)N + 1};
    if (st == FM_OK)
        st = fm_st_writer_add(w, "site_rounds", FM_ST_I64, 1, shape_r, rounds);
    if (st == FM_OK)
        st = fm_st_writer_add(w, "dropout_steps", FM_ST_I64, 1, shape_d, drop);
    if (st == FM_OK)
        st = fm_st_write(w, path);
    fm_st_writer_free(w);
    free(rounds);
    free(drop);
    return st;
}

static fm_status save_checkpoint(cream *c)
{
    const char *out = c->o->out_dir;
    const int r = c->rounds_done;
    char dir[4096], prev[4096], path[4200], from[4200], link_tmp[4200], link_path[4200], target[64];
    round_dir(dir, sizeof dir, out, r);
    round_dir(prev, sizeof prev, out, r - 1);
    if (mkdir(dir, 0775) != 0 && errno != EEXIST)
        return fm_error(FM_ERR_IO, "checkpoint: mkdir %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/server.safetensors", dir);
    FM_TRY(fm_checkpoint_save(c->server, c->server_opt, NULL, path));
    if (c->distill_opt) {
        snprintf(path, sizeof path, "%s/server-distill.safetensors", dir);
        FM_TRY(fm_checkpoint_save(c->server, c->distill_opt, NULL, path));
    }
    for (int i = 0; i < c->N; i++) {
        if (!c->sites[i].model)
            continue; /* the networked server: each site keeps its own model */
        snprintf(path, sizeof path, "%s/site-%d.safetensors", dir, i);
        snprintf(from, sizeof from, "%s/site-%d.safetensors", prev, i);
        unlink(path); /* a leftover of a crash while this round was being written */
        if (!c->trained_now[i] && r > 1 && link(from, path) == 0)
            continue;
        FM_TRY(fm_checkpoint_save(c->sites[i].model, c->sites[i].opt, NULL, path));
    }
    snprintf(path, sizeof path, "%s/run.safetensors", dir);
    FM_TRY(save_run_state(c, path));
    snprintf(target, sizeof target, "round-%d", r);
    snprintf(link_tmp, sizeof link_tmp, "%s/latest.tmp", out);
    snprintf(link_path, sizeof link_path, "%s/latest", out);
    unlink(link_tmp);
    if (symlink(target, link_tmp) != 0 || rename(link_tmp, link_path) != 0)
        return fm_error(FM_ERR_IO, "checkpoint: linking %s: %s", link_path, strerror(errno));
    if (r > c->keep_rounds)
        remove_round(c, r - c->keep_rounds);
    return FM_OK;
}

static fm_status read_i64(const fm_st_file *f, const char *path, const char *name, int64_t *dst, size_t n)
{
    const fm_st_tensor_info *t = fm_st_find(f, name);
    if (!t || t->dtype != FM_ST_I64 || t->numel != n)
        return fm_error(FM_ERR_PARSE, "%s: tensor %s missing or not %zu int64 values", path, name, n);
    memcpy(dst, t->data, n * sizeof(int64_t));
    return FM_OK;
}

static fm_status load_run_state(cream *c, const char *path)
{
    fm_st_file *f = NULL;
    FM_TRY(fm_st_open(&f, path));
    const size_t N = (size_t)c->N;
    int64_t *rounds = calloc(N + 1, sizeof(int64_t)), *drop = calloc(N + 1, sizeof(int64_t));
    fm_status st = rounds && drop ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "creamfl: checkpoint");
    const char *keys[] = {"rounds_done", "bytes_up", "bytes_down", "ensemble_s", "wall_s", "sites"};
    double v[6];
    for (int i = 0; st == FM_OK && i < 6; i++) {
        const char *s = fm_st_metadata(f, keys[i]);
        char *end = NULL;
        v[i] = s ? strtod(s, &end) : NAN;
        if (!s || *end || !isfinite(v[i]))
            st = fm_error(FM_ERR_PARSE, "%s: missing or bad metadata '%s'", path, keys[i]);
    }
    if (st == FM_OK && (int)v[5] != c->N)
        st = fm_error(FM_ERR_CONFIG, "%s: the checkpoint has %d sites, this run %d (another configuration?)", path,
                      (int)v[5], c->N);
    if (st == FM_OK && (v[0] < 1 || v[0] > c->o->rounds))
        st = fm_error(FM_ERR_CONFIG, "%s: %g rounds done, but the run has %d", path, v[0], c->o->rounds);
    if (st == FM_OK)
        st = read_i64(f, path, "site_rounds", rounds, N ? N : 1);
    if (st == FM_OK)
        st = read_i64(f, path, "dropout_steps", drop, N + 1);
    if (st == FM_OK) {
        c->rounds_done = (int)v[0];
        c->bytes_up = v[1];
        c->bytes_down = v[2];
        c->ensemble_s = v[3];
        c->wall_before = v[4];
        st = fm_clip_set_dropout_step(c->server, (uint64_t)drop[0]);
        for (size_t i = 0; st == FM_OK && i < N; i++) {
            c->sites[i].rounds_trained = rounds[i];
            if (c->sites[i].model)
                st = fm_clip_set_dropout_step(c->sites[i].model, (uint64_t)drop[i + 1]);
        }
    }
    fm_st_close(f);
    free(rounds);
    free(drop);
    return st;
}

/* The checkpoint in `dir` (a DIR/round-R directory). */
static fm_status load_dir(cream *c, const char *dir)
{
    char path[4700];
    snprintf(path, sizeof path, "%s/run.safetensors", dir);
    FM_TRY(load_run_state(c, path));
    if (c->distill_opt) { /* first: it holds the same trainable vector as server.safetensors */
        snprintf(path, sizeof path, "%s/server-distill.safetensors", dir);
        FM_TRY(fm_checkpoint_load(c->server, c->distill_opt, NULL, path));
    }
    snprintf(path, sizeof path, "%s/server.safetensors", dir);
    FM_TRY(fm_checkpoint_load(c->server, c->server_opt, NULL, path));
    for (int i = 0; i < c->N; i++) {
        if (!c->sites[i].model)
            continue;
        snprintf(path, sizeof path, "%s/site-%d.safetensors", dir, i);
        FM_TRY(fm_checkpoint_load(c->sites[i].model, c->sites[i].opt, NULL, path));
    }
    return FM_OK;
}

/* The checkpoint DIR/latest names, if there is one (*found = 0 otherwise). */
static fm_status load_checkpoint(cream *c, int *found)
{
    char link_path[4200], target[256], dir[4600];
    snprintf(link_path, sizeof link_path, "%s/latest", c->o->out_dir);
    *found = 0;
    ssize_t n = readlink(link_path, target, sizeof target - 1);
    if (n < 0)
        return FM_OK;
    target[n] = '\0';
    snprintf(dir, sizeof dir, "%s/%s", c->o->out_dir, target);
    FM_TRY(load_dir(c, dir));
    *found = 1;
    return FM_OK;
}

/* The rows a resumed run keeps from its metrics files: those of rounds up to the checkpoint's (a run killed after
 * logging round R but before its checkpoint logs R again). keep_header: the first line is a header (CSV). */
static fm_status trim_rows(const char *path, int rounds_done, int csv)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return FM_OK; /* nothing logged yet */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *g = fopen(tmp, "w");
    if (!g) {
        fclose(f);
        return fm_error(FM_ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    char line[8192];
    int first = 1;
    while (fgets(line, sizeof line, f)) {
        double round = NAN;
        if (csv && !first)
            round = strtod(line, NULL);
        else if (!csv) {
            const char *p = strstr(line, "\"round\":");
            round = p ? strtod(p + 8, NULL) : NAN;
        }
        if ((csv && first) || (isfinite(round) && round <= rounds_done))
            fputs(line, g);
        first = 0;
    }
    fclose(f);
    if (fclose(g) != 0 || rename(tmp, path) != 0)
        return fm_error(FM_ERR_IO, "%s: rewriting after resume: %s", path, strerror(errno));
    return FM_OK;
}

/* ---- a round's end on the server, and the metrics files ----------------------------------------------------- */

/* DIR/metrics.jsonl (or o->metrics_path) and DIR/summary.csv: started over, or (resumed) with the rows of the rounds
 * after the checkpoint's dropped. */
static fm_status open_logs(cream *c, int resumed)
{
    const fm_creamfl_options *o = c->o;
    char path[4096];
    const char *mp = o->metrics_path;
    if (!mp) {
        snprintf(path, sizeof path, "%s/metrics.jsonl", o->out_dir);
        mp = path;
    }
    if (resumed && strcmp(mp, "-") != 0)
        FM_TRY(trim_rows(mp, c->rounds_done, 0));
    FM_TRY(fm_metrics_open(&c->log, mp, resumed));
    char csv_path[4200];
    snprintf(csv_path, sizeof csv_path, "%s/summary.csv", o->out_dir);
    if (resumed)
        FM_TRY(trim_rows(csv_path, c->rounds_done, 1));
    c->csv = fopen(csv_path, resumed ? "a" : "w");
    if (!c->csv)
        return fm_error(FM_ERR_IO, "%s: %s", csv_path, strerror(errno));
    for (size_t k = 0; !resumed && k < N_LOG_KEYS; k++)
        fprintf(c->csv, "%s%s", log_keys[k], k + 1 < N_LOG_KEYS ? "," : "\n");
    return FM_OK;
}

/* After round `round`'s steps: the evaluation when it is due (*evaluated, into *ev), the sites' when asked for, the
 * round's metrics line, the checkpoint. */
static fm_status finish_round(cream *c, int round, fm_eval_result *ev, int *evaluated)
{
    const fm_creamfl_options *o = c->o;
    c->rounds_done = round;
    const int do_eval = round == o->rounds || (o->eval_every > 0 && round % o->eval_every == 0);
    *evaluated = 0;
    int n_sites_ev = 0;
    fm_eval_result sites_ev;
    if (do_eval) {
        FM_TRY(fm_evaluate(c->server, c->test, o->eval_size, ev));
        *evaluated = 1;
    }
    if (do_eval && o->eval_sites)
        FM_TRY(evaluate_sites(c, &sites_ev, &n_sites_ev));
    const double wall = c->wall_before + (fm_now_seconds() - c->t0);
    FM_TRY(log_round(c, &c->log, c->csv, round, &c->rs, do_eval ? ev : NULL, n_sites_ev ? &sites_ev : NULL, wall));
    if (o->checkpoint) {
        const double keep = c->wall_before;
        c->wall_before = wall;
        const fm_status st = save_checkpoint(c);
        c->wall_before = keep;
        FM_TRY(st);
    }
    return FM_OK;
}

/* ---- the run ------------------------------------------------------------------------------------------------ */

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
    cream *c = calloc(1, sizeof *c);
    if (!c)
        return fm_error(FM_ERR_NO_MEMORY, "creamfl: out of memory");
    fm_status st = cream_init(c, o, synth, tok, device, ROLE_SIM, -1);
    o = c->o;
    c->t0 = t0;
    int found = 0;
    if (st == FM_OK && o->resume)
        st = load_checkpoint(c, &found);
    if (st == FM_OK && o->resume)
        FM_INFO(found ? "creamfl: resuming after round %d" : "creamfl: no checkpoint to resume from (round %d)",
                c->rounds_done);
    if (st == FM_OK)
        st = open_logs(c, found);
    fm_progress bar;
    memset(&bar, 0, sizeof bar);
    if (o->progress)
        fm_progress_begin(&bar, stderr, c->N ? "creamfl" : "creamfl (public only)", o->rounds);
    fm_eval_result ev;
    memset(&ev, 0, sizeof ev);
    int have_eval = 0;
    result->resumed_from = c->rounds_done;
    while (st == FM_OK && c->rounds_done < o->rounds) {
        const int round = c->rounds_done + 1;
        st = run_round(c, round);
        int evaluated = 0;
        if (st == FM_OK)
            st = finish_round(c, round, &ev, &evaluated);
        have_eval |= evaluated;
        if (st == FM_OK)
            result->rounds_done = round;
        if (st == FM_OK && o->progress)
            fm_progress_update(&bar, round, "round %d server %.3f | i2t R@1 %.3f t2i R@1 %.3f", round,
                               c->rs.server_loss, ev.retrieval.i2t_r1, ev.retrieval.t2i_r1);
    }
    if (o->progress)
        fm_progress_end(&bar);
    if (st == FM_OK && !have_eval) { /* a resumed run that had nothing left to do */
        st = fm_evaluate(c->server, c->test, o->eval_size, &ev);
        result->rounds_done = c->rounds_done;
    }
    result->last_eval = ev;
    result->bytes_up = c->bytes_up;
    result->bytes_down = c->bytes_down;
    result->ensemble_s = c->ensemble_s;
    result->wall_s = c->wall_before + (fm_now_seconds() - t0);
    for (int k = 0; k < FM_CREAMFL_KINDS; k++)
        result->sites_of_kind[k] = c->sites_of_kind[k];
    if (st == FM_OK && server_out) {
        *server_out = c->server; /* handed over */
        c->server = NULL;
    }
    cream_free(c);
    free(c);
    return st;
}

/* ---- the server's side and a site's side, apart ------------------------------------------------------------- */

static fm_status open_role(fm_creamfl **out, const fm_creamfl_options *o, const fm_synth_config *synth,
                           const fm_tokenizer *tok, fm_device device, int role, int site)
{
    if (!out || !o || !synth || !tok)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: NULL argument");
    *out = NULL;
    FM_TRY(fm_creamfl_validate(o, synth));
    if (total_sites(o) == 0)
        return fm_error(FM_ERR_CONFIG, "creamfl: no sites (the public-only baseline runs in one process: fedmm sim)");
    if (role == ROLE_SITE && (site < 0 || site >= total_sites(o)))
        return fm_error(FM_ERR_CONFIG, "creamfl: site %d is not in [0, %d)", site, total_sites(o));
    cream *c = calloc(1, sizeof *c);
    if (!c)
        return fm_error(FM_ERR_NO_MEMORY, "creamfl: out of memory");
    fm_status st = cream_init(c, o, synth, tok, device, role, site);
    if (st != FM_OK) {
        cream_free(c);
        free(c);
        return st;
    }
    *out = c;
    return FM_OK;
}

fm_status fm_creamfl_server_open(fm_creamfl **out, const fm_creamfl_options *o, const fm_synth_config *synth,
                                 const fm_tokenizer *tok, fm_device device)
{
    return open_role(out, o, synth, tok, device, ROLE_SERVER, -1);
}

fm_status fm_creamfl_site_open(fm_creamfl **out, const fm_creamfl_options *o, const fm_synth_config *synth,
                               const fm_tokenizer *tok, fm_device device, int site)
{
    return open_role(out, o, synth, tok, device, ROLE_SITE, site);
}

void fm_creamfl_close(fm_creamfl *c)
{
    if (!c)
        return;
    cream_free(c);
    free(c);
}

size_t fm_creamfl_public_count(const fm_creamfl *c) { return c->n; }
size_t fm_creamfl_embed_dim(const fm_creamfl *c) { return c->d; }
int fm_creamfl_num_sites(const fm_creamfl *c) { return c->N; }

fm_modality fm_creamfl_site_modality(const fm_creamfl *c, int site)
{
    return site >= 0 && site < c->N ? c->sites[site].modality : FM_MODALITY_NONE;
}

int64_t fm_creamfl_site_samples(const fm_creamfl *c, int site)
{
    return site >= 0 && site < c->N ? c->sites[site].n : 0;
}

fm_clip *fm_creamfl_server_model(fm_creamfl *c) { return c->server; }

fm_status fm_creamfl_round_sites(uint64_t seed, int round, int num_sites, int m, int *chosen)
{
    if (num_sites < 1 || m < 1 || m > num_sites || !chosen)
        return fm_error(FM_ERR_CONFIG, "creamfl: %d sites per round of %d sites", m, num_sites);
    int32_t *order = malloc((size_t)num_sites * sizeof *order);
    if (!order)
        return fm_error(FM_ERR_NO_MEMORY, "creamfl: out of memory");
    draw_sites(seed, round, num_sites, m, order);
    for (int i = 0; i < m; i++)
        chosen[i] = order[i];
    free(order);
    return FM_OK;
}

void fm_creamfl_report_shape(const fm_creamfl *c, int site, int64_t steps, size_t *n_loss, size_t *n_inter,
                             size_t *n_intra)
{
    const fm_creamfl_options *o = c->o;
    const fm_modality m = fm_creamfl_site_modality(c, site);
    const size_t mods = (size_t)((m & FM_MODALITY_IMAGE) != 0) + (size_t)((m & FM_MODALITY_TEXT) != 0);
    const int regs = o->lambda > 0.0f && (o->inter || o->intra);
    const size_t s = steps > 0 ? (size_t)steps : 0;
    *n_loss = s;
    *n_inter = regs && o->inter ? s * mods : 0;
    *n_intra = regs && o->intra ? s * mods : 0;
}

static fm_status check_list(const float *v, size_t n, size_t want, int site, const char *what)
{
    if (n != want)
        return fm_error(FM_ERR_SHAPE, "creamfl: site %d reports %zu %s values, expected %zu", site, n, what, want);
    if (n > 0 && !v)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: site %d's %s values are missing", site, what);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return fm_error(FM_ERR_NOT_FINITE, "creamfl: site %d's %s value %zu is %g", site, what, i, (double)v[i]);
    return FM_OK;
}

fm_status fm_creamfl_check_report(const fm_creamfl *c, int site, const fm_creamfl_site_report *r)
{
    const fm_creamfl_options *o = c->o;
    if (site < 0 || site >= c->N)
        return fm_error(FM_ERR_RANGE, "creamfl: site %d is not in [0, %d)", site, c->N);
    if (r->steps != o->local_steps && r->steps != o->local_steps + o->init_local_steps)
        return fm_error(FM_ERR_INVALID_ARG,
                        "creamfl: site %d reports %lld local steps; a round takes fl.local_steps = %lld (plus "
                        "fl.creamfl.init_local_steps = %lld the first time)",
                        site, (long long)r->steps, (long long)o->local_steps, (long long)o->init_local_steps);
    size_t nl, ni, na;
    fm_creamfl_report_shape(c, site, r->steps, &nl, &ni, &na);
    FM_TRY(check_list(r->loss, r->n_loss, nl, site, "loss"));
    FM_TRY(check_list(r->inter, r->n_inter, ni, site, "L_inter"));
    return check_list(r->intra, r->n_intra, na, site, "L_intra");
}

fm_status fm_creamfl_server_start(fm_creamfl *c, int rounds_done, double *bytes_up, double *bytes_down)
{
    if (c->role != ROLE_SERVER)
        return fm_error(FM_ERR_STATE, "creamfl: server_start on a site object");
    if (rounds_done < 0 || rounds_done > c->o->rounds)
        return fm_error(FM_ERR_CONFIG, "creamfl: %d rounds done of %d", rounds_done, c->o->rounds);
    if (rounds_done > 0) {
        char dir[4200];
        round_dir(dir, sizeof dir, c->o->out_dir, rounds_done);
        FM_TRY(load_dir(c, dir));
        if (c->rounds_done != rounds_done)
            return fm_error(FM_ERR_PARSE, "creamfl: %s holds round %d, expected %d", dir, c->rounds_done, rounds_done);
    }
    FM_TRY(open_logs(c, rounds_done > 0));
    c->t0 = fm_now_seconds();
    if (bytes_up)
        *bytes_up = c->bytes_up;
    if (bytes_down)
        *bytes_down = c->bytes_down;
    return FM_OK;
}

fm_status fm_creamfl_server_broadcast(fm_creamfl *c, int round, const float **ig, const float **tg)
{
    if (c->role != ROLE_SERVER)
        return fm_error(FM_ERR_STATE, "creamfl: server_broadcast on a site object");
    if (round < 1 || round > c->o->rounds)
        return fm_error(FM_ERR_RANGE, "creamfl: round %d of %d", round, c->o->rounds);
    FM_TRY(broadcast(c, round));
    *ig = c->ig;
    *tg = c->tg;
    return FM_OK;
}

fm_status fm_creamfl_site_train(fm_creamfl *c, int site, int round, const float *ig, const float *tg, float *up_i,
                                float *up_t, fm_creamfl_site_report *report)
{
    if (c->role == ROLE_SERVER || (c->role == ROLE_SITE && site != c->own_site) || site < 0 || site >= c->N)
        return fm_error(FM_ERR_STATE, "creamfl: this object does not hold site %d", site);
    const cream_site *s = &c->sites[site];
    if (!ig || !tg || (has_image(s) && !up_i) || (has_text(s) && !up_t) || !report)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: site_train: a NULL representation buffer or report");
    int64_t steps = 0;
    FM_TRY(run_site(c, site, round, ig, tg, up_i, up_t, &steps));
    *report = last_report(c, steps);
    return FM_OK;
}

fm_status fm_creamfl_server_aggregate(fm_creamfl *c, int round, const fm_creamfl_upload *ups, int K)
{
    if (c->role != ROLE_SERVER)
        return fm_error(FM_ERR_STATE, "creamfl: server_aggregate on a site object");
    if (K < 1 || K > c->o->sites_per_round || K > 4096)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl: %d uploads (1 .. %d per round)", K, c->o->sites_per_round);
    const float *reps_i[4096], *reps_t[4096];
    int Ki = 0, Kt = 0;
    for (int k = 0; k < K; k++) {
        const fm_creamfl_upload *u = &ups[k];
        if (u->site < 0 || u->site >= c->N || (k > 0 && u->site <= ups[k - 1].site))
            return fm_error(FM_ERR_INVALID_ARG, "creamfl: upload %d is of site %d: uploads go in ascending site order",
                            k, u->site);
        const cream_site *s = &c->sites[u->site];
        if (has_image(s) != (u->reps_i != NULL) || has_text(s) != (u->reps_t != NULL))
            return fm_error(FM_ERR_INVALID_ARG, "creamfl: site %d holds %s but uploads %s%s", u->site,
                            fm_modality_name(s->modality), u->reps_i ? "images " : "", u->reps_t ? "texts" : "");
        FM_TRY(fm_creamfl_check_report(c, u->site, &u->report));
    }
    site_acc acc = {0, 0, 0, 0};
    for (int k = 0; k < K; k++) {
        account(&acc, &ups[k].report);
        if (ups[k].reps_i)
            reps_i[Ki++] = ups[k].reps_i;
        if (ups[k].reps_t)
            reps_t[Kt++] = ups[k].reps_t;
    }
    site_means(c, &acc);
    return aggregate(c, round, reps_i, Ki, reps_t, Kt);
}

fm_status fm_creamfl_server_finish(fm_creamfl *c, int round, double bytes_up, double bytes_down, fm_eval_result *ev,
                                   int *evaluated)
{
    if (c->role != ROLE_SERVER)
        return fm_error(FM_ERR_STATE, "creamfl: server_finish on a site object");
    c->bytes_up = bytes_up;
    c->bytes_down = bytes_down;
    return finish_round(c, round, ev, evaluated);
}

fm_status fm_creamfl_server_evaluate(fm_creamfl *c, fm_eval_result *ev)
{
    if (c->role != ROLE_SERVER)
        return fm_error(FM_ERR_STATE, "creamfl: server_evaluate on a site object");
    return fm_evaluate(c->server, c->test, c->o->eval_size, ev);
}
