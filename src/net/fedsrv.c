/* The federation server's rounds, checks and streaming aggregation (see fedsrv.h for the order argument). */
#include "net/fedsrv.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/log.h"
#include "fedmm/site_train.h"

struct fm_fedsrv {
    fm_fedsrv_config cfg;
    int round;         /* open round, 1..R; R + 1 when done */
    int *chosen;       /* (m) this round's sites, ascending */
    uint8_t *pushed;   /* (m) accepted this round */
    float **parked;    /* (m) accepted deltas not yet added (out of index order) */
    double *losses;    /* (m) */
    int next_add;      /* chosen[0 .. next_add) are in the strategy */
    uint8_t *joined;   /* (N) */
    uint8_t *released; /* (N) told DONE */
    fm_status fatal;
    double opened_at; /* when the open round opened (fm_now_seconds) */
    int short_logged; /* the deadline passed with too few pushes, and the log said so */
};

struct fm_fedsrv_push {
    int slot; /* index into chosen */
    int64_t round;
    double loss;
    float *delta; /* (P) staging, zero outside the trained blocks */
    fm_tensor_rx rx;
};

static int fail(int code, fm_status st, const char *fmt, const char *detail)
{
    fm_error(st, fmt, detail);
    return code;
}

static int check_site_token(const fm_fedsrv *s, int site, const char *bearer)
{
    if (site < 0 || site >= s->cfg.num_sites) {
        fm_error(FM_ERR_RANGE, "site %d is not in [0, %d)", site, s->cfg.num_sites);
        return FM_NET_INVALID_ARGUMENT;
    }
    const char *want = s->cfg.tokens[site];
    size_t n = strlen(want);
    if (!bearer || strlen(bearer) != n || sodium_memcmp(bearer, want, n) != 0) {
        fm_error(FM_ERR_INVALID_ARG, "site %d: missing or wrong bearer token", site);
        return FM_NET_UNAUTHENTICATED;
    }
    return FM_NET_OK;
}

static int check_run(const fm_fedsrv *s, const char *run_id)
{
    if (strcmp(run_id, s->cfg.run_id) != 0) {
        fm_error(FM_ERR_INVALID_ARG, "run id '%s' is not this run's ('%s')", run_id, s->cfg.run_id);
        return FM_NET_FAILED_PRECONDITION;
    }
    return FM_NET_OK;
}

static int slot_of(const fm_fedsrv *s, int site)
{
    for (int i = 0; i < s->cfg.sites_per_round; i++)
        if (s->chosen[i] == site)
            return i;
    return -1;
}

static fm_status open_round(fm_fedsrv *s)
{
    FM_TRY(fm_round_sites(s->cfg.seed, s->round, s->cfg.num_sites, s->cfg.sites_per_round, s->chosen));
    memset(s->pushed, 0, (size_t)s->cfg.sites_per_round);
    s->next_add = 0;
    s->opened_at = fm_now_seconds();
    s->short_logged = 0;
    return fm_strategy_begin_round(s->cfg.strategy, s->round);
}

void fm_fedsrv_destroy(fm_fedsrv *s)
{
    if (!s)
        return;
    if (s->parked)
        for (int i = 0; i < s->cfg.sites_per_round; i++)
            free(s->parked[i]);
    free(s->parked);
    free(s->chosen);
    free(s->pushed);
    free(s->losses);
    free(s->joined);
    free(s->released);
    free(s);
}

fm_status fm_fedsrv_create(fm_fedsrv **out, const fm_fedsrv_config *cfg)
{
    *out = NULL;
    if (cfg->rounds < 1 || cfg->num_sites < 1 || cfg->sites_per_round < 1 || cfg->sites_per_round > cfg->num_sites)
        return fm_error(FM_ERR_CONFIG, "server: %d rounds, %d of %d sites per round", cfg->rounds, cfg->sites_per_round,
                        cfg->num_sites);
    if (cfg->round_timeout_s < 0 || cfg->min_sites < 0 || cfg->min_sites > cfg->sites_per_round)
        return fm_error(FM_ERR_CONFIG, "server: round timeout %g s, min_sites %d of %d sites per round",
                        cfg->round_timeout_s, cfg->min_sites, cfg->sites_per_round);
    if (strlen(cfg->run_id) > FM_WIRE_RUN_ID_MAX || cfg->n_blocks > FM_WIRE_MAX_BLOCKS)
        return fm_error(FM_ERR_CONFIG, "server: run id or block count over the wire limits");
    if (fm_strategy_num_params(cfg->strategy) != cfg->n_params)
        return fm_error(FM_ERR_SHAPE, "server: strategy has %zu parameters, the model %zu",
                        fm_strategy_num_params(cfg->strategy), cfg->n_params);
    if (sodium_init() < 0)
        return fm_error(FM_ERR_INTERNAL, "server: libsodium failed to initialise");
    fm_fedsrv *s = calloc(1, sizeof *s);
    if (!s)
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    s->cfg = *cfg;
    const size_t m = (size_t)cfg->sites_per_round, n = (size_t)cfg->num_sites;
    s->chosen = calloc(m, sizeof *s->chosen);
    s->pushed = calloc(m, 1);
    s->parked = calloc(m, sizeof *s->parked);
    s->losses = calloc(m, sizeof *s->losses);
    s->joined = calloc(n, 1);
    s->released = calloc(n, 1);
    if (!s->chosen || !s->pushed || !s->parked || !s->losses || !s->joined || !s->released) {
        fm_fedsrv_destroy(s);
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    }
    s->round = (int)fm_strategy_round(cfg->strategy) + 1;
    if (s->round < 1)
        s->round = 1;
    fm_status st = s->round <= cfg->rounds ? open_round(s) : FM_OK;
    if (st != FM_OK) {
        fm_fedsrv_destroy(s);
        return st;
    }
    *out = s;
    return FM_OK;
}

const fm_strategy_block *fm_fedsrv_blocks(const fm_fedsrv *s) { return s->cfg.blocks; }
size_t fm_fedsrv_num_blocks(const fm_fedsrv *s) { return s->cfg.n_blocks; }
int fm_fedsrv_round(const fm_fedsrv *s) { return s->round; }
int fm_fedsrv_done(const fm_fedsrv *s) { return s->round > s->cfg.rounds; }
fm_status fm_fedsrv_fatal(const fm_fedsrv *s) { return s->fatal; }

int fm_fedsrv_all_released(const fm_fedsrv *s)
{
    for (int k = 0; k < s->cfg.num_sites; k++)
        if (s->joined[k] && !s->released[k])
            return 0;
    return 1;
}

static void make_task(fm_fedsrv *s, int site, fm_wire_task *t)
{
    memset(t, 0, sizeof *t);
    snprintf(t->run_id, sizeof t->run_id, "%s", s->cfg.run_id);
    t->local_steps = s->cfg.local_steps;
    t->n_params = s->cfg.n_params;
    t->rounds = s->cfg.rounds;
    snprintf(t->config, sizeof t->config, "%s", s->cfg.config_text ? s->cfg.config_text : "");
    if (fm_fedsrv_done(s)) {
        t->round = s->cfg.rounds;
        t->action = FM_ACTION_DONE;
        s->released[site] = 1;
        return;
    }
    t->round = s->round;
    int slot = slot_of(s, site);
    t->action = slot >= 0 && !s->pushed[slot] && !s->fatal ? FM_ACTION_TRAIN : FM_ACTION_WAIT;
}

int fm_fedsrv_join(fm_fedsrv *s, const char *bearer, const fm_wire_join *j, fm_wire_task *task)
{
    int rc = check_site_token(s, j->site, bearer);
    if (rc)
        return rc;
    if (strcmp(j->token, bearer) != 0)
        return fail(FM_NET_UNAUTHENTICATED, FM_ERR_INVALID_ARG, "Join: the message's token differs from the call's%s",
                    "");
    if (j->run_id[0] && (rc = check_run(s, j->run_id)) != 0)
        return rc;
    if (j->n_params != s->cfg.n_params || j->n_blocks != s->cfg.n_blocks) {
        fm_error(FM_ERR_SHAPE, "Join: site %d's model has %llu parameters in %u blocks, the server's %zu in %zu",
                 j->site, (unsigned long long)j->n_params, j->n_blocks, s->cfg.n_params, s->cfg.n_blocks);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (s->cfg.model_family && strcmp(j->model_family, s->cfg.model_family) != 0) {
        fm_error(FM_ERR_CONFIG, "Join: site %d runs model '%s', the server '%s'", j->site, j->model_family,
                 s->cfg.model_family);
        return FM_NET_FAILED_PRECONDITION;
    }
    s->joined[j->site] = 1;
    make_task(s, j->site, task);
    return FM_NET_OK;
}

int fm_fedsrv_heartbeat(fm_fedsrv *s, const char *bearer, const fm_wire_ref *h, fm_wire_task *task)
{
    int rc = check_site_token(s, h->site, bearer);
    if (!rc)
        rc = check_run(s, h->run_id);
    if (rc)
        return rc;
    s->joined[h->site] = 1;
    make_task(s, h->site, task);
    return FM_NET_OK;
}

/* The round check shared by Pull and Push: the site must be one of the open round's and not have pushed. */
static int check_round(const fm_fedsrv *s, int site, int64_t round, int *slot)
{
    if (fm_fedsrv_done(s)) {
        fm_error(FM_ERR_STATE, "round %lld: the run is over (%d rounds)", (long long)round, s->cfg.rounds);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (round != s->round) {
        fm_error(FM_ERR_STATE, "%s round %lld: the open round is %d", round < s->round ? "stale" : "future",
                 (long long)round, s->round);
        return FM_NET_FAILED_PRECONDITION;
    }
    *slot = slot_of(s, site);
    if (*slot < 0) {
        fm_error(FM_ERR_STATE, "round %d does not sample site %d", s->round, site);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (s->pushed[*slot]) {
        fm_error(FM_ERR_STATE, "duplicate push: site %d already pushed round %d", site, s->round);
        return FM_NET_ALREADY_EXISTS;
    }
    return FM_NET_OK;
}

int fm_fedsrv_pull(fm_fedsrv *s, const char *bearer, const fm_wire_ref *r, const float **global)
{
    int slot = -1;
    int rc = check_site_token(s, r->site, bearer);
    if (!rc)
        rc = check_run(s, r->run_id);
    if (!rc)
        rc = check_round(s, r->site, r->round, &slot);
    if (rc)
        return rc;
    *global = fm_strategy_global(s->cfg.strategy);
    return FM_NET_OK;
}

void fm_fedsrv_push_free(fm_fedsrv_push *p)
{
    if (!p)
        return;
    free(p->delta);
    free(p);
}

int fm_fedsrv_push_begin(fm_fedsrv *s, const char *bearer, const fm_wire_push_header *h, fm_fedsrv_push **out)
{
    *out = NULL;
    int slot = -1;
    int rc = check_site_token(s, h->site, bearer);
    if (!rc)
        rc = check_run(s, h->run_id);
    if (!rc)
        rc = check_round(s, h->site, h->round, &slot);
    if (rc)
        return rc;
    const int k = h->site;
    if (h->n_params != s->cfg.n_params || h->n_blocks != s->cfg.n_blocks) {
        fm_error(FM_ERR_SHAPE, "Push: site %d sends %llu parameters in %zu blocks, the model has %zu in %zu", k,
                 (unsigned long long)h->n_params, h->n_blocks, s->cfg.n_params, s->cfg.n_blocks);
        return FM_NET_INVALID_ARGUMENT;
    }
    if (h->n_samples != s->cfg.site_samples[k]) {
        fm_error(FM_ERR_INVALID_ARG, "Push: site %d claims %lld samples, its split has %lld", k,
                 (long long)h->n_samples, (long long)s->cfg.site_samples[k]);
        return FM_NET_INVALID_ARGUMENT;
    }
    if (!(h->loss == h->loss) || h->loss > 1e30 || h->loss < -1e30) {
        fm_error(FM_ERR_NOT_FINITE, "Push: site %d reports loss %g", k, h->loss);
        return FM_NET_INVALID_ARGUMENT;
    }
    const uint8_t *want = s->cfg.site_trained + (size_t)k * s->cfg.n_blocks;
    if (memcmp(h->trained, want, s->cfg.n_blocks) != 0) {
        fm_error(FM_ERR_INVALID_ARG, "Push: site %d's trained blocks differ from its modality's", k);
        return FM_NET_INVALID_ARGUMENT;
    }
    fm_fedsrv_push *p = calloc(1, sizeof *p);
    float *delta = calloc(s->cfg.n_params ? s->cfg.n_params : 1, sizeof(float));
    if (!p || !delta) {
        free(p);
        free(delta);
        fm_error(FM_ERR_NO_MEMORY, "Push: out of memory");
        return FM_NET_INTERNAL;
    }
    p->slot = slot;
    p->round = h->round;
    p->loss = h->loss;
    p->delta = delta;
    fm_tensor_rx_init(&p->rx, delta, s->cfg.blocks, s->cfg.n_blocks, want);
    *out = p;
    return FM_NET_OK;
}

int fm_fedsrv_push_chunk(fm_fedsrv *s, fm_fedsrv_push *p, const fm_wire_chunk *c)
{
    const int k = s->chosen[p->slot];
    int rc = check_run(s, c->run_id);
    if (rc)
        return rc;
    if (c->round != p->round || c->site != k) {
        fm_error(FM_ERR_INVALID_ARG, "Push: a chunk for site %d round %lld inside site %d's push of round %lld",
                 c->site, (long long)c->round, k, (long long)p->round);
        return FM_NET_INVALID_ARGUMENT;
    }
    return fm_tensor_rx_add(&p->rx, c) == FM_OK ? FM_NET_OK : FM_NET_INVALID_ARGUMENT;
}

/* Finishes the open round with the updates added so far (the loss is the mean over the sites that pushed) and
 * opens the next. */
static fm_status close_round(fm_fedsrv *s)
{
    const int m = s->cfg.sites_per_round;
    FM_TRY(fm_strategy_finish_round(s->cfg.strategy, NULL));
    double loss = 0.0;
    int n = 0;
    for (int i = 0; i < m; i++) {
        if (s->pushed[i]) {
            loss += s->losses[i];
            n++;
        }
    }
    if (s->cfg.on_round)
        s->cfg.on_round(s->cfg.ctx, s->round, n ? loss / n : 0.0, fm_strategy_global(s->cfg.strategy));
    s->round++;
    if (s->round <= s->cfg.rounds)
        FM_TRY(open_round(s));
    return FM_OK;
}

/* Adds the parked updates that are next in site order; finishes the round when all are in. */
static fm_status drain(fm_fedsrv *s)
{
    const int m = s->cfg.sites_per_round;
    while (s->next_add < m && s->parked[s->next_add]) {
        const int i = s->next_add, k = s->chosen[i];
        fm_site_update u = {.n_params = s->cfg.n_params,
                            .delta = s->parked[i],
                            .weight = (double)s->cfg.site_samples[k],
                            .n_blocks = s->cfg.n_blocks,
                            .trained = s->cfg.site_trained + (size_t)k * s->cfg.n_blocks};
        FM_TRY(fm_strategy_add_update(s->cfg.strategy, &u));
        free(s->parked[i]);
        s->parked[i] = NULL;
        s->next_add++;
    }
    if (s->next_add < m)
        return FM_OK;
    return close_round(s);
}

fm_status fm_fedsrv_poll(fm_fedsrv *s, double now)
{
    if (s->cfg.round_timeout_s <= 0 || fm_fedsrv_done(s) || s->fatal != FM_OK ||
        now - s->opened_at < s->cfg.round_timeout_s)
        return FM_OK;
    const int m = s->cfg.sites_per_round, need = s->cfg.min_sites > 0 ? s->cfg.min_sites : 1;
    int n = 0;
    for (int i = 0; i < m; i++)
        n += s->pushed[i];
    if (n < need) {
        if (!s->short_logged)
            FM_WARN("server: round %d passed its %.1f s deadline with %d of %d pushes; waiting for fl.min_sites = %d",
                    s->round, s->cfg.round_timeout_s, n, m, need);
        s->short_logged = 1;
        return FM_OK;
    }
    FM_WARN("server: round %d closed at its %.1f s deadline with %d of %d sites", s->round, s->cfg.round_timeout_s, n,
            m);
    /* the pushed updates not yet added, in site order, skipping the sites that did not push */
    fm_status st = FM_OK;
    for (int i = s->next_add; st == FM_OK && i < m; i++) {
        if (!s->parked[i])
            continue;
        const int k = s->chosen[i];
        fm_site_update u = {.n_params = s->cfg.n_params,
                            .delta = s->parked[i],
                            .weight = (double)s->cfg.site_samples[k],
                            .n_blocks = s->cfg.n_blocks,
                            .trained = s->cfg.site_trained + (size_t)k * s->cfg.n_blocks};
        st = fm_strategy_add_update(s->cfg.strategy, &u);
        free(s->parked[i]);
        s->parked[i] = NULL;
    }
    s->next_add = m;
    if (st == FM_OK)
        st = close_round(s);
    if (st != FM_OK) {
        s->fatal = st;
        FM_ERROR("server: aggregation failed: %s", fm_last_error());
    }
    return st;
}

int fm_fedsrv_push_end(fm_fedsrv *s, fm_fedsrv_push *p, fm_wire_reply *reply)
{
    const int k = s->chosen[p->slot];
    if (!fm_tensor_rx_complete(&p->rx)) {
        fm_error(FM_ERR_PARSE, "Push: site %d's stream ended before every trained block arrived (at block %zu)", k,
                 p->rx.block);
        return FM_NET_INVALID_ARGUMENT;
    }
    /* the round may have moved on while this stream was open (it cannot with one call at a time, but the
     * check keeps the state machine honest) */
    int slot = -1;
    int rc = check_round(s, k, p->round, &slot);
    if (rc)
        return rc;
    s->pushed[slot] = 1;
    s->joined[k] = 1; /* a site that pushed must hear DONE before the server leaves */
    s->losses[slot] = p->loss;
    s->parked[slot] = p->delta;
    p->delta = NULL;
    fm_status st = drain(s);
    if (st != FM_OK) {
        s->fatal = st;
        FM_ERROR("server: aggregation failed: %s", fm_last_error());
        return FM_NET_INTERNAL;
    }
    memset(reply, 0, sizeof *reply);
    snprintf(reply->run_id, sizeof reply->run_id, "%s", s->cfg.run_id);
    reply->round = p->round;
    reply->accepted = 1;
    return FM_NET_OK;
}
