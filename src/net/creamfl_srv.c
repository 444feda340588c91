/* CreamFL's server over fedsrv (creamfl_srv.h): the representation hooks, and what both sides agree on. */
#include "net/creamfl_srv.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/log.h"

const fm_wire_payload_kind fm_creamfl_block_kinds[FM_CREAMFL_NUM_BLOCKS] = {FM_PAYLOAD_PUBLIC_IMAGE,
                                                                            FM_PAYLOAD_PUBLIC_TEXT};

/* ---- what both sides agree on ------------------------------------------------------------------------------ */

/* FNV-1a over formatted fields (a check that two processes read the same configuration, not a secret). */
static void fp_add(uint64_t *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fp_add(uint64_t *h, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (int i = 0; i <= n && i < (int)sizeof buf; i++) { /* with the NUL: fields stay apart */
        *h ^= (unsigned char)buf[i];
        *h *= 0x100000001B3ULL;
    }
}

static void fp_model(uint64_t *h, const fm_clip_config *m)
{
    fp_add(h, "%d %d %d %d %d %d %d %d %d %d %d %d %d %d %.9g %.9g", m->image_size, m->patch_size, m->vision_width,
           m->vision_layers, m->vision_heads, m->vision_mlp, m->vocab_size, m->context_length, m->text_width,
           m->text_layers, m->text_heads, m->text_mlp, m->embed_dim, (int)m->hidden_act, (double)m->layer_norm_eps,
           (double)m->logit_scale_init);
    fp_add(h, "%d %.9g %.9g %u %d %d %d %d", m->lora_rank, (double)m->lora_alpha, (double)m->lora_dropout,
           m->lora_targets, (int)m->lora_towers, m->train_projections, m->full_finetune, (int)m->precision);
}

static void fp_opt(uint64_t *h, const fm_train_options *t)
{
    fp_add(h, "%d %.17g %.17g %lld %.17g %.17g %.17g %.17g %.17g", t->batch_size, t->lr, t->min_lr_ratio,
           (long long)t->warmup_steps, t->weight_decay, t->beta1, t->beta2, t->eps, t->grad_clip);
}

/* Everything of the options that decides what a round computes (not how it is evaluated or logged, nor how many
 * rounds there are). */
static uint64_t options_hash(const fm_creamfl_options *o, const fm_synth_config *synth)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    fp_model(&h, &o->server);
    for (int k = 0; k < FM_CREAMFL_KINDS; k++)
        fp_model(&h, &o->site_model[k]);
    const fm_scenario_config *sc = &o->scenario;
    fp_add(&h, "%d %d %d %d %d %.17g %.17g %d %.17g %d %d %lld %llu", (int)o->layout, o->num_sites[0], o->num_sites[1],
           o->num_sites[2], (int)sc->scenario, sc->alpha, sc->missing_rate, sc->cross_k, sc->hybrid_q,
           (int)sc->label_attr, sc->num_sites, (long long)sc->min_site_size, (unsigned long long)sc->seed);
    /* not fl.rounds: a resumed run may be extended (the Task tells a site the run's rounds) */
    fp_add(&h, "%lld %d %lld %lld %lld %lld %lld %d", (long long)o->public_size, o->sites_per_round,
           (long long)o->local_steps, (long long)o->init_local_steps, (long long)o->server_steps,
           (long long)o->server_init_steps, (long long)o->distill_steps, (int)o->distill);
    fp_opt(&h, &o->local);
    fp_opt(&h, &o->server_opt);
    fp_add(&h, "%.9g %.9g %.9g %d %d %d %d %d %zu %zu %llu", (double)o->lambda, (double)o->tau, (double)o->kappa,
           o->rep_bf16, o->ensemble, o->inter, o->intra, (int)o->label_attr, o->tiles.rows, o->tiles.cols,
           (unsigned long long)o->seed);
    fp_add(&h, "%llu %d %.9g %.9g %d", (unsigned long long)synth->seed, synth->image_size,
           (double)synth->second_shape_prob, (double)synth->noise_std, synth->normalize);
    for (int k = 0; k < FM_SPLIT_COUNT; k++)
        fp_add(&h, "%lld", (long long)synth->split_size[k]);
    return h;
}

void fm_creamfl_wire_layout(fm_creamfl_wire *w, const fm_creamfl *c, const fm_creamfl_options *o,
                            const fm_synth_config *synth)
{
    memset(w, 0, sizeof *w);
    w->n = fm_creamfl_public_count(c);
    w->d = fm_creamfl_embed_dim(c);
    w->nd = w->n * w->d;
    w->P = 2 * w->nd;
    w->blocks[FM_CREAMFL_BLOCK_IMAGE] =
        (fm_strategy_block){.name = "public_image", .offset = 0, .numel = w->nd, .layer = -1};
    w->blocks[FM_CREAMFL_BLOCK_TEXT] =
        (fm_strategy_block){.name = "public_text", .offset = w->nd, .numel = w->nd, .layer = -1};
    snprintf(w->family, sizeof w->family, "creamfl P=%zu d=%zu %016llx", w->n, w->d,
             (unsigned long long)options_hash(o, synth));
}

void fm_creamfl_wire_blocks(fm_modality m, uint8_t out[FM_CREAMFL_NUM_BLOCKS])
{
    out[FM_CREAMFL_BLOCK_IMAGE] = (m & FM_MODALITY_IMAGE) != 0;
    out[FM_CREAMFL_BLOCK_TEXT] = (m & FM_MODALITY_TEXT) != 0;
}

/* ---- the server -------------------------------------------------------------------------------------------- */

/* One accepted upload of the open round. */
typedef struct upload_slot {
    int site;
    float *vec;   /* (P) the site's representations, zero outside its blocks */
    float *steps; /* its step lists, one copy */
    fm_creamfl_site_report report;
} upload_slot;

struct fm_creamfl_srv {
    fm_creamfl *cf; /* borrowed */
    fm_creamfl_options opt;
    const fm_creamfl_options *o;
    fm_creamfl_wire L;
    int N;
    int64_t *samples;
    uint8_t *trained;
    uint32_t *modalities;
    fm_fedsrv_hooks hooks;
    fm_strategy *strategy; /* holds the vector Pull sends: [ig | tg] of the open round */
    fm_fedsrv *srv;
    float *global;      /* (P) staging of the next [ig | tg] */
    upload_slot *slots; /* (sites_per_round) in arrival order */
    int n_slots;
    fm_net_traffic traffic;    /* this process's payload bytes (rpc.c counts them) */
    double base_up, base_down; /* a resumed run's, before the restart */
    int resumed_after;
    char config_text[200]; /* Task.config (fedsrv borrows it) */
    fm_eval_result ev;
    int have_eval;
};

typedef struct fm_creamfl_srv cream_server;

static fm_status hook_draw(void *ctx, int round, int num_sites, int m, int *chosen)
{
    const cream_server *cs = ctx;
    return fm_creamfl_round_sites(cs->o->seed, round, num_sites, m, chosen);
}

static int hook_check(void *ctx, const fm_wire_push_header *h)
{
    const cream_server *cs = ctx;
    const fm_creamfl_site_report r = {.steps = (int64_t)h->n_step_loss,
                                      .loss = h->step_loss,
                                      .n_loss = h->n_step_loss,
                                      .inter = h->step_inter,
                                      .n_inter = h->n_step_inter,
                                      .intra = h->step_intra,
                                      .n_intra = h->n_step_intra};
    return fm_creamfl_check_report(cs->cf, h->site, &r) == FM_OK ? FM_NET_OK : FM_NET_INVALID_ARGUMENT;
}

static fm_status hook_accepted(void *ctx, int round, int site, const float *vec, const fm_fedsrv_steps *st)
{
    (void)round;
    cream_server *cs = ctx;
    if (cs->n_slots >= cs->o->sites_per_round)
        return fm_error(FM_ERR_STATE, "server: more uploads than sites per round");
    upload_slot *u = &cs->slots[cs->n_slots];
    const size_t nv = st->n_loss + st->n_inter + st->n_intra;
    float *steps = malloc((nv ? nv : 1) * sizeof(float));
    if (!steps)
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    memcpy(steps, st->loss, st->n_loss * sizeof(float));
    memcpy(steps + st->n_loss, st->inter, st->n_inter * sizeof(float));
    memcpy(steps + st->n_loss + st->n_inter, st->intra, st->n_intra * sizeof(float));
    memcpy(u->vec, vec, cs->L.P * sizeof(float));
    u->site = site;
    u->steps = steps;
    u->report = (fm_creamfl_site_report){.steps = (int64_t)st->n_loss,
                                         .loss = steps,
                                         .n_loss = st->n_loss,
                                         .inter = steps + st->n_loss,
                                         .n_inter = st->n_inter,
                                         .intra = steps + st->n_loss + st->n_inter,
                                         .n_intra = st->n_intra};
    cs->n_slots++;
    return FM_OK;
}

/* Round `round` of the server (step 1) into cs->global and the strategy: what the next Pulls send. */
static fm_status next_broadcast(cream_server *cs, int round)
{
    const float *ig, *tg;
    FM_TRY(fm_creamfl_server_broadcast(cs->cf, round, &ig, &tg));
    memcpy(cs->global, ig, cs->L.nd * sizeof(float));
    memcpy(cs->global + cs->L.nd, tg, cs->L.nd * sizeof(float));
    return FM_OK;
}

/* The round closed (all its sites pushed, or its deadline passed with fl.min_sites): steps 4–5 over the uploads in
 * site order, the evaluation and the round's metrics line and checkpoint, then round + 1's step 1. */
static fm_status hook_closed(void *ctx, int round)
{
    cream_server *cs = ctx;
    const int K = cs->n_slots;
    fm_creamfl_upload *ups = K > 0 ? calloc((size_t)K, sizeof *ups) : NULL;
    if (!ups)
        return K > 0 ? fm_error(FM_ERR_NO_MEMORY, "server: out of memory")
                     : fm_error(FM_ERR_STATE, "server: round %d closed without uploads", round);
    for (int i = 1; i < K; i++) /* site order, as fedmm sim adds them */
        for (int j = i; j > 0 && cs->slots[j - 1].site > cs->slots[j].site; j--) {
            upload_slot t = cs->slots[j];
            cs->slots[j] = cs->slots[j - 1];
            cs->slots[j - 1] = t;
        }
    for (int k = 0; k < K; k++) {
        const upload_slot *u = &cs->slots[k];
        uint8_t b[FM_CREAMFL_NUM_BLOCKS];
        fm_creamfl_wire_blocks(fm_creamfl_site_modality(cs->cf, u->site), b);
        ups[k] = (fm_creamfl_upload){.site = u->site,
                                     .reps_i = b[FM_CREAMFL_BLOCK_IMAGE] ? u->vec : NULL,
                                     .reps_t = b[FM_CREAMFL_BLOCK_TEXT] ? u->vec + cs->L.nd : NULL,
                                     .report = u->report};
    }
    fm_status st = fm_creamfl_server_aggregate(cs->cf, round, ups, K);
    free(ups);
    int evaluated = 0;
    if (st == FM_OK)
        st = fm_creamfl_server_finish(cs->cf, round, cs->base_up + cs->traffic.bytes_up,
                                      cs->base_down + cs->traffic.bytes_down, &cs->ev, &evaluated);
    for (int k = 0; k < K; k++) {
        free(cs->slots[k].steps);
        cs->slots[k].steps = NULL;
    }
    cs->n_slots = 0;
    FM_TRY(st);
    cs->have_eval |= evaluated;
    if (evaluated)
        FM_INFO("server: round %d: %d sites fused and distilled | test i2t R@1 %.3f t2i R@1 %.3f", round, K,
                cs->ev.retrieval.i2t_r1, cs->ev.retrieval.t2i_r1);
    else
        FM_INFO("server: round %d: %d sites fused and distilled", round, K);
    if (round < cs->o->rounds)
        FM_TRY(next_broadcast(cs, round + 1));
    /* after the last round the vector stays the last broadcast (the strategy's own sum of the uploads is not used) */
    return fm_strategy_set_global(cs->strategy, cs->global);
}

static void on_round(void *ctx, fm_fedsrv_round_log *r, const float *global)
{
    (void)global;
    const cream_server *cs = ctx;
    r->bytes_up = cs->base_up + cs->traffic.bytes_up;
    r->bytes_down = cs->base_down + cs->traffic.bytes_down;
}

void fm_creamfl_srv_destroy(fm_creamfl_srv *s)
{
    if (!s)
        return;
    fm_fedsrv_destroy(s->srv);
    for (int k = 0; s->slots && k < s->o->sites_per_round; k++) {
        free(s->slots[k].vec);
        free(s->slots[k].steps);
    }
    free(s->slots);
    free(s->global);
    fm_strategy_destroy(s->strategy);
    free(s->samples);
    free(s->trained);
    free(s->modalities);
    free(s);
}

static fm_status srv_init(cream_server *s, const fm_synth_config *synth, const fm_creamfl_srv_config *cfg)
{
    const fm_creamfl_options *o = s->o;
    fm_creamfl_wire_layout(&s->L, s->cf, o, synth);
    const fm_creamfl_wire *L = &s->L;
    const int N = s->N = fm_creamfl_num_sites(s->cf), m = o->sites_per_round;
    s->samples = calloc((size_t)N, sizeof *s->samples);
    s->trained = calloc((size_t)N * FM_CREAMFL_NUM_BLOCKS, 1);
    s->modalities = calloc((size_t)N, sizeof *s->modalities);
    s->global = calloc(L->P, sizeof(float));
    s->slots = calloc((size_t)m, sizeof *s->slots);
    if (!s->samples || !s->trained || !s->modalities || !s->global || !s->slots)
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    for (int k = 0; k < m; k++) {
        s->slots[k].vec = calloc(L->P, sizeof(float));
        if (!s->slots[k].vec)
            return fm_error(FM_ERR_NO_MEMORY, "server: out of memory for %d uploads of %zu floats", m, L->P);
    }
    for (int k = 0; k < N; k++) {
        const fm_modality mod = fm_creamfl_site_modality(s->cf, k);
        s->samples[k] = fm_creamfl_site_samples(s->cf, k);
        s->modalities[k] = (uint32_t)mod;
        fm_creamfl_wire_blocks(mod, s->trained + (size_t)k * FM_CREAMFL_NUM_BLOCKS);
    }
    /* round 1's step 1 gives the first vector; it is also what --resume's fingerprint of "the model" checks */
    FM_TRY(next_broadcast(s, 1));
    const fm_strategy_config rule = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    FM_TRY(fm_strategy_create(&s->strategy, &rule, L->P, L->blocks, FM_CREAMFL_NUM_BLOCKS, s->global));
    s->hooks = (fm_fedsrv_hooks){.ctx = s,
                                 .draw = hook_draw,
                                 .block_kinds = fm_creamfl_block_kinds,
                                 .site_modalities = s->modalities,
                                 .check_header = hook_check,
                                 .accepted = hook_accepted,
                                 .round_closed = hook_closed};
    snprintf(s->config_text, sizeof s->config_text,
             "creamfl sites=%d per_round=%d rounds=%d local_steps=%lld |P|=%zu d=%zu", N, m, o->rounds,
             (long long)o->local_steps, L->n, L->d);
    fm_fedsrv_config fc = {.run_id = cfg->run_id,
                           .rounds = o->rounds,
                           .num_sites = N,
                           .sites_per_round = m,
                           .seed = o->seed,
                           .local_steps = o->local_steps,
                           .model_family = L->family,
                           .n_params = L->P,
                           .blocks = L->blocks,
                           .n_blocks = FM_CREAMFL_NUM_BLOCKS,
                           .site_samples = s->samples,
                           .site_trained = s->trained,
                           .tokens = cfg->tokens,
                           .strategy = s->strategy,
                           .config_text = s->config_text,
                           .on_round = on_round,
                           .ctx = s,
                           .round_timeout_s = cfg->round_timeout_s,
                           .min_sites = cfg->min_sites,
                           .sites_tasked = m,
                           .state_dir = cfg->state_dir,
                           .park_budget_bytes = cfg->park_budget_bytes,
                           .resume = cfg->resume,
                           .hooks = &s->hooks};
    FM_TRY(fm_fedsrv_create(&s->srv, &fc));
    const int done = s->resumed_after = fm_fedsrv_round(s->srv) - 1;
    FM_TRY(fm_creamfl_server_start(s->cf, done, &s->base_up, &s->base_down));
    if (done > 0 && done < o->rounds) {
        /* the state holds round done + 1's vector: recomputed from the checkpoint, it must be the same */
        FM_TRY(next_broadcast(s, done + 1));
        if (memcmp(s->global, fm_strategy_global(s->strategy), L->P * sizeof(float)) != 0)
            return fm_error(FM_ERR_PARSE,
                            "--resume: the representations of round %d recomputed from %s/round-%d differ from the "
                            "ones the server's state holds (the checkpoint and the state disagree)",
                            done + 1, o->out_dir, done);
    }
    return FM_OK;
}

fm_status fm_creamfl_srv_create(fm_creamfl_srv **out, fm_creamfl *c, const fm_creamfl_options *o,
                                const fm_synth_config *synth, const fm_creamfl_srv_config *cfg)
{
    *out = NULL;
    if (!c || !o || !synth || !cfg || !cfg->run_id || !cfg->tokens)
        return fm_error(FM_ERR_INVALID_ARG, "creamfl server: NULL argument");
    if (fm_creamfl_num_sites(c) < 1 || o->sites_per_round < 1)
        return fm_error(FM_ERR_CONFIG, "creamfl server: no sites");
    cream_server *s = calloc(1, sizeof *s);
    if (!s)
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    s->cf = c;
    s->opt = *o;
    s->o = &s->opt;
    const fm_status st = srv_init(s, synth, cfg);
    if (st != FM_OK) {
        fm_creamfl_srv_destroy(s);
        return st;
    }
    *out = s;
    return FM_OK;
}

fm_fedsrv *fm_creamfl_srv_fedsrv(fm_creamfl_srv *s) { return s->srv; }
fm_net_traffic *fm_creamfl_srv_traffic(fm_creamfl_srv *s) { return &s->traffic; }
int fm_creamfl_srv_resumed_after(const fm_creamfl_srv *s) { return s->resumed_after; }

void fm_creamfl_srv_bytes(const fm_creamfl_srv *s, double *up, double *down)
{
    *up = s->base_up + s->traffic.bytes_up;
    *down = s->base_down + s->traffic.bytes_down;
}

const fm_eval_result *fm_creamfl_srv_last_eval(const fm_creamfl_srv *s, int *have)
{
    *have = s->have_eval;
    return &s->ev;
}
