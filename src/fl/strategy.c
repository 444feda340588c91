/* The server side of parameter federated learning: configuration, streaming rounds over site deltas, the
 * server rules (FedAvg, FedAvgM, FedOpt, SCAFFOLD, and the robust rules through strategy_robust.c) with
 * modality-aware per-block aggregation, and the server checkpoint. Formulas are in include/fedmm/strategy.h. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fedmm/safetensors.h"
#include "fl/strategy_internal.h"

#define STRAT_OMP_MIN 16384
#define STRAT_FORMAT "fedmm.strategy"
#define STRAT_VERSION "1"

static const char *const kind_names[FM_STRATEGY_KIND_COUNT] = {
    "fedavg",   "fedprox", "fedavgm",      "fedadagrad", "fedadam",    "fedyogi",
    "scaffold", "median",  "trimmed_mean", "krum",       "multi_krum", "adaptive_reg",
};

const char *fm_strategy_name(fm_strategy_kind kind)
{
    if ((int)kind < 0 || kind >= FM_STRATEGY_KIND_COUNT)
        return "?";
    return kind_names[kind];
}

fm_status fm_strategy_parse(const char *name, fm_strategy_kind *out)
{
    if (!name || !out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_parse: NULL argument");
    char buf[32];
    size_t len = strlen(name);
    if (len > 0 && len < sizeof(buf)) {
        for (size_t i = 0; i <= len; i++) {
            char ch = name[i];
            buf[i] = ch == '-' ? '_' : (char)tolower((unsigned char)ch);
        }
        for (int k = 0; k < FM_STRATEGY_KIND_COUNT; k++) {
            if (strcmp(buf, kind_names[k]) == 0) {
                *out = (fm_strategy_kind)k;
                return FM_OK;
            }
        }
    }
    return fm_error(FM_ERR_CONFIG,
                    "unknown strategy '%s' (expected one of fedavg, fedprox, fedavgm, fedadagrad, fedadam, fedyogi, "
                    "scaffold, median, trimmed_mean, krum, multi_krum, adaptive_reg)",
                    name);
}

int fm_strategy_is_robust(fm_strategy_kind kind)
{
    return kind == FM_STRATEGY_MEDIAN || kind == FM_STRATEGY_TRIMMED_MEAN || kind == FM_STRATEGY_KRUM ||
           kind == FM_STRATEGY_MULTI_KRUM;
}

static int is_fedopt(fm_strategy_kind kind)
{
    return kind == FM_STRATEGY_FEDADAGRAD || kind == FM_STRATEGY_FEDADAM || kind == FM_STRATEGY_FEDYOGI;
}

fm_strategy_config fm_strategy_default_config(fm_strategy_kind kind)
{
    fm_strategy_config c;
    memset(&c, 0, sizeof(c));
    c.kind = kind;
    c.server_lr = is_fedopt(kind) ? 1e-2 : 1.0;
    c.beta1 = 0.9;
    c.beta2 = 0.99;
    c.tau = 1e-3;
    c.server_momentum = 0.9;
    c.prox_mu = 0.01;
    c.adaptive_mu_w = 0.1;
    c.adaptive_skip_layers = 4;
    c.trim_ratio = 0.1;
    c.krum_byzantine = 1;
    c.multi_krum_m = 0;
    c.clip_norm = 0.0;
    c.scaffold_num_sites = 0;
    return c;
}

static int in_unit(double x) { return x >= 0.0 && x < 1.0; }

fm_status fm_strategy_config_validate(const fm_strategy_config *c)
{
    if (!c)
        return fm_error(FM_ERR_INVALID_ARG, "strategy config is NULL");
    if ((int)c->kind < 0 || c->kind >= FM_STRATEGY_KIND_COUNT)
        return fm_error(FM_ERR_CONFIG, "strategy kind %d is not a strategy", (int)c->kind);
    const char *k = fm_strategy_name(c->kind);
    if (!(c->server_lr > 0.0 && isfinite(c->server_lr)))
        return fm_error(FM_ERR_CONFIG, "strategy %s: server_lr %g must be > 0", k, c->server_lr);
    if (!in_unit(c->beta1))
        return fm_error(FM_ERR_CONFIG, "strategy %s: beta1 %g is outside [0, 1)", k, c->beta1);
    if (!in_unit(c->beta2))
        return fm_error(FM_ERR_CONFIG, "strategy %s: beta2 %g is outside [0, 1)", k, c->beta2);
    if (!(c->tau > 0.0 && isfinite(c->tau)))
        return fm_error(FM_ERR_CONFIG, "strategy %s: tau %g must be > 0", k, c->tau);
    if (!in_unit(c->server_momentum))
        return fm_error(FM_ERR_CONFIG, "strategy %s: server_momentum %g is outside [0, 1)", k, c->server_momentum);
    if (!(c->prox_mu >= 0.0 && isfinite(c->prox_mu)))
        return fm_error(FM_ERR_CONFIG, "strategy %s: prox_mu %g must be >= 0", k, c->prox_mu);
    if (!(c->adaptive_mu_w >= 0.0 && isfinite(c->adaptive_mu_w)))
        return fm_error(FM_ERR_CONFIG, "strategy %s: adaptive_mu_w %g must be >= 0", k, c->adaptive_mu_w);
    if (c->adaptive_skip_layers < 0)
        return fm_error(FM_ERR_CONFIG, "strategy %s: adaptive_skip_layers %d must be >= 0", k, c->adaptive_skip_layers);
    if (!(c->trim_ratio >= 0.0 && c->trim_ratio < 0.5))
        return fm_error(FM_ERR_CONFIG, "strategy %s: trim_ratio %g is outside [0, 0.5)", k, c->trim_ratio);
    if (c->krum_byzantine < 0)
        return fm_error(FM_ERR_CONFIG, "strategy %s: krum_byzantine %d must be >= 0", k, c->krum_byzantine);
    if (c->multi_krum_m < 0)
        return fm_error(FM_ERR_CONFIG, "strategy %s: multi_krum_m %d must be >= 0 (0 = K - f)", k, c->multi_krum_m);
    if (!(c->clip_norm >= 0.0 && isfinite(c->clip_norm)))
        return fm_error(FM_ERR_CONFIG, "strategy %s: clip_norm %g must be >= 0 (0 = off)", k, c->clip_norm);
    if (c->scaffold_num_sites < 0)
        return fm_error(FM_ERR_CONFIG, "strategy %s: scaffold_num_sites %d must be >= 0", k, c->scaffold_num_sites);
    if (c->device != FM_DEVICE_CPU && c->device != FM_DEVICE_CUDA)
        return fm_error(FM_ERR_CONFIG, "strategy %s: device %d is neither cpu nor cuda", k, (int)c->device);
    if (c->device == FM_DEVICE_CUDA && !fm_build_has_cuda())
        return fm_error(FM_ERR_CONFIG, "strategy %s: device cuda, but this fedmm was built without the CUDA backend",
                        k);
    return FM_OK;
}

/* ---- the strategy object ------------------------------------------------------------------------ */

static void *xcalloc(size_t count, size_t size, int *failed)
{
    void *p = calloc(count ? count : 1, size);
    if (!p)
        *failed = 1;
    return p;
}

void fm_strategy_destroy(fm_strategy *st)
{
    if (!st)
        return;
    if (st->dev)
        fm_strategy_dev_destroy(st);
    if (st->blocks)
        for (size_t b = 0; b < st->nb; b++)
            free((char *)st->blocks[b].name);
    free(st->blocks);
    free(st->global);
    free(st->m);
    free(st->v);
    free(st->c);
    free(st->step);
    free(st->acc);
    free(st->acc_c);
    free(st->block_w);
    free(st->block_n);
    for (size_t i = 0; i < st->kept_cap; i++) {
        free(st->kept[i]);
        free(st->kept_mask[i]);
    }
    free(st->kept);
    free(st->kept_mask);
    free(st);
}

static fm_status check_finite(const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return fm_error(FM_ERR_NOT_FINITE, "%s: element %zu is %g", what, i, (double)x[i]);
    return FM_OK;
}

fm_status fm_strategy_create(fm_strategy **out, const fm_strategy_config *config, size_t n_params,
                             const fm_strategy_block *blocks, size_t n_blocks, const float *initial_global)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_create: out is NULL");
    *out = NULL;
    if (!config || !initial_global)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_create: NULL config or initial vector");
    FM_TRY(fm_strategy_config_validate(config));
    if (n_params == 0)
        return fm_error(FM_ERR_SHAPE, "fm_strategy_create: the vector has no parameters");
    FM_TRY(fm_blocks_check(blocks, n_blocks, n_params, "fm_strategy_create"));
    FM_TRY(check_finite(initial_global, n_params, "fm_strategy_create: initial global vector"));

    int failed = 0;
    fm_strategy *st = xcalloc(1, sizeof(*st), &failed);
    if (!st)
        return fm_error(FM_ERR_NO_MEMORY, "fm_strategy_create: no memory");
    st->cfg = *config;
    st->n = n_params;
    st->nb = n_blocks ? n_blocks : 1;
    st->round = -1;
    st->blocks = xcalloc(st->nb, sizeof(fm_strategy_block), &failed);
    if (st->blocks) {
        for (size_t b = 0; b < st->nb; b++) {
            fm_strategy_block blk;
            if (n_blocks) {
                blk = blocks[b];
            } else {
                blk.name = "all";
                blk.offset = 0;
                blk.numel = n_params;
                blk.layer = -1;
                blk.n_layers = 0;
            }
            const char *nm = blk.name ? blk.name : "";
            char *copy = malloc(strlen(nm) + 1);
            if (!copy)
                failed = 1;
            else
                strcpy(copy, nm);
            blk.name = copy;
            st->blocks[b] = blk;
        }
    }
    fm_strategy_kind kind = config->kind;
    /* On the GPU the host keeps only the copies the API hands out (global, and SCAFFOLD's c). */
    const int on_host = config->device == FM_DEVICE_CPU;
    st->global = xcalloc(n_params, sizeof(float), &failed);
    if (on_host)
        st->step = xcalloc(n_params, sizeof(float), &failed);
    st->block_w = xcalloc(st->nb, sizeof(double), &failed);
    st->block_n = xcalloc(st->nb, sizeof(size_t), &failed);
    if (on_host && !fm_strategy_is_robust(kind))
        st->acc = xcalloc(n_params, sizeof(float), &failed);
    if (on_host && (kind == FM_STRATEGY_FEDAVGM || is_fedopt(kind)))
        st->m = xcalloc(n_params, sizeof(float), &failed);
    if (on_host && is_fedopt(kind))
        st->v = xcalloc(n_params, sizeof(float), &failed);
    if (kind == FM_STRATEGY_SCAFFOLD) {
        st->c = xcalloc(n_params, sizeof(float), &failed);
        if (on_host)
            st->acc_c = xcalloc(n_params, sizeof(float), &failed);
    }
    if (failed) {
        fm_strategy_destroy(st);
        return fm_error(FM_ERR_NO_MEMORY, "fm_strategy_create: no memory for %s state over %zu parameters",
                        fm_strategy_name(kind), n_params);
    }
    memcpy(st->global, initial_global, n_params * sizeof(float));
    if (st->v) {
        /* Reddi et al. Alg. 2 start from v₋₁ ≥ τ²; exactly τ² makes the first step's denominator 2τ at most */
        float t2 = (float)(config->tau * config->tau);
        for (size_t i = 0; i < n_params; i++)
            st->v[i] = t2;
    }
    if (!on_host) {
        fm_status ds = fm_strategy_dev_create(st, initial_global);
        if (ds != FM_OK) {
            fm_strategy_destroy(st);
            return ds;
        }
    }
    *out = st;
    return FM_OK;
}

const fm_strategy_config *fm_strategy_get_config(const fm_strategy *st) { return st ? &st->cfg : NULL; }

size_t fm_strategy_num_params(const fm_strategy *st) { return st ? st->n : 0; }

size_t fm_strategy_num_blocks(const fm_strategy *st) { return st ? st->nb : 0; }

const fm_strategy_block *fm_strategy_block_at(const fm_strategy *st, size_t i)
{
    return st && i < st->nb ? &st->blocks[i] : NULL;
}

const float *fm_strategy_global(const fm_strategy *st) { return st ? st->global : NULL; }

const float *fm_strategy_control(const fm_strategy *st) { return st ? st->c : NULL; }

int64_t fm_strategy_round(const fm_strategy *st) { return st ? st->round : -1; }

size_t fm_strategy_num_updates(const fm_strategy *st) { return st && st->open ? st->n_updates : 0; }

static void clear_round(fm_strategy *st)
{
    if (st->acc)
        memset(st->acc, 0, st->n * sizeof(float));
    if (st->acc_c)
        memset(st->acc_c, 0, st->n * sizeof(float));
    memset(st->block_w, 0, st->nb * sizeof(double));
    memset(st->block_n, 0, st->nb * sizeof(size_t));
    st->n_updates = 0;
}

fm_status fm_strategy_begin_round(fm_strategy *st, int64_t round)
{
    if (!st)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_begin_round: NULL strategy");
    if (st->open)
        return fm_error(FM_ERR_STATE, "strategy: round %lld is still open; finish or abort it before round %lld",
                        (long long)st->open_round, (long long)round);
    if (round <= st->round)
        return fm_error(FM_ERR_STATE, "strategy: round %lld is not after the last finished round %lld",
                        (long long)round, (long long)st->round);
    clear_round(st);
    if (st->dev)
        FM_TRY(fm_strategy_dev_begin_round(st));
    st->open = 1;
    st->open_round = round;
    return FM_OK;
}

void fm_strategy_abort_round(fm_strategy *st)
{
    if (!st || !st->open)
        return;
    clear_round(st);
    st->open = 0;
}

static int trained(const fm_site_update *u, size_t b) { return !u->trained || u->trained[b]; }

fm_status fm_strategy_add_update(fm_strategy *st, const fm_site_update *u)
{
    if (!st || !u)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_add_update: NULL argument");
    const char *kn = fm_strategy_name(st->cfg.kind);
    if (!st->open)
        return fm_error(FM_ERR_STATE, "strategy %s: add_update with no open round (call fm_strategy_begin_round)", kn);
    if (u->n_params != st->n)
        return fm_error(FM_ERR_SHAPE, "strategy %s: update has %zu parameters, the global vector %zu", kn, u->n_params,
                        st->n);
    if (u->trained && u->n_blocks != st->nb)
        return fm_error(FM_ERR_SHAPE, "strategy %s: update's trained mask has %zu blocks, the strategy %zu", kn,
                        u->n_blocks, st->nb);
    if (!u->delta)
        return fm_error(FM_ERR_INVALID_ARG, "strategy %s: update has no delta", kn);
    if (!(u->weight > 0.0 && isfinite(u->weight)))
        return fm_error(FM_ERR_INVALID_ARG, "strategy %s: update weight %g must be > 0 and finite", kn, u->weight);
    int scaffold = st->cfg.kind == FM_STRATEGY_SCAFFOLD;
    if (scaffold && !u->control_delta)
        return fm_error(FM_ERR_INVALID_ARG, "strategy scaffold: update has no control_delta (Δck)");
    if (scaffold && st->cfg.scaffold_num_sites > 0 && st->n_updates >= (size_t)st->cfg.scaffold_num_sites)
        return fm_error(FM_ERR_STATE, "strategy scaffold: more updates in round %lld than scaffold_num_sites = %d",
                        (long long)st->open_round, st->cfg.scaffold_num_sites);
    size_t n_trained = 0;
    for (size_t b = 0; b < st->nb; b++)
        n_trained += trained(u, b) ? 1 : 0;
    if (n_trained == 0)
        return fm_error(FM_ERR_INVALID_ARG, "strategy %s: update trained no block", kn);
    if (st->dev)
        return fm_strategy_dev_add_update(st, u);

    /* One pass over the trained blocks: finiteness (nothing is accumulated before it holds) and the norm. */
    double norm2 = 0.0;
    for (size_t b = 0; b < st->nb; b++) {
        if (!trained(u, b))
            continue;
        const fm_strategy_block *blk = &st->blocks[b];
        const float *d = u->delta + blk->offset;
        for (size_t i = 0; i < blk->numel; i++) {
            if (!isfinite(d[i]))
                return fm_error(FM_ERR_NOT_FINITE,
                                "strategy %s: update rejected, delta of block '%s' element %zu "
                                "(index %zu) is %g",
                                kn, blk->name, i, blk->offset + i, (double)d[i]);
            norm2 += (double)d[i] * (double)d[i];
        }
        if (scaffold) {
            const float *dc = u->control_delta + blk->offset;
            for (size_t i = 0; i < blk->numel; i++)
                if (!isfinite(dc[i]))
                    return fm_error(FM_ERR_NOT_FINITE,
                                    "strategy scaffold: update rejected, control_delta of block "
                                    "'%s' element %zu (index %zu) is %g",
                                    blk->name, i, blk->offset + i, (double)dc[i]);
        }
    }
    double scale = 1.0;
    if (st->cfg.clip_norm > 0.0 && norm2 > st->cfg.clip_norm * st->cfg.clip_norm)
        scale = st->cfg.clip_norm / sqrt(norm2);

    if (fm_strategy_is_robust(st->cfg.kind)) {
        size_t slot = st->n_updates;
        if (slot == st->kept_cap) {
            size_t cap = st->kept_cap ? 2 * st->kept_cap : 8;
            float **kept = realloc(st->kept, cap * sizeof(float *));
            if (kept)
                st->kept = kept;
            uint8_t **masks = realloc(st->kept_mask, cap * sizeof(uint8_t *));
            if (masks)
                st->kept_mask = masks;
            if (!kept || !masks)
                return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory to keep update %zu", kn, slot + 1);
            for (size_t i = st->kept_cap; i < cap; i++) {
                st->kept[i] = NULL;
                st->kept_mask[i] = NULL;
            }
            st->kept_cap = cap;
        }
        if (!st->kept[slot]) {
            st->kept[slot] = malloc(st->n * sizeof(float));
            st->kept_mask[slot] = malloc(st->nb);
            if (!st->kept[slot] || !st->kept_mask[slot]) {
                free(st->kept[slot]);
                free(st->kept_mask[slot]);
                st->kept[slot] = NULL;
                st->kept_mask[slot] = NULL;
                return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory to keep update %zu (%zu floats)", kn,
                                slot + 1, st->n);
            }
        }
        float *dst = st->kept[slot];
        for (size_t b = 0; b < st->nb; b++) {
            const fm_strategy_block *blk = &st->blocks[b];
            int t = trained(u, b);
            st->kept_mask[slot][b] = (uint8_t)t;
            for (size_t i = 0; i < blk->numel; i++)
                dst[blk->offset + i] = t ? (float)(scale * u->delta[blk->offset + i]) : 0.0f;
            if (t)
                st->block_n[b]++;
        }
        st->n_updates++;
        return FM_OK;
    }

    /* SCAFFOLD averages Δy without sample weights (Karimireddy et al. Alg. 1 line 16); the others weight by nk. */
    double w = scaffold ? 1.0 : u->weight;
    float ws = (float)(w * scale);
    for (size_t b = 0; b < st->nb; b++) {
        if (!trained(u, b))
            continue;
        const fm_strategy_block *blk = &st->blocks[b];
        float *acc = st->acc + blk->offset;
        const float *d = u->delta + blk->offset;
        size_t len = blk->numel;
#pragma omp parallel for schedule(static) if (len >= STRAT_OMP_MIN)
        for (size_t i = 0; i < len; i++)
            acc[i] += ws * d[i];
        if (scaffold) {
            float *ac = st->acc_c + blk->offset;
            const float *dc = u->control_delta + blk->offset;
#pragma omp parallel for schedule(static) if (len >= STRAT_OMP_MIN)
            for (size_t i = 0; i < len; i++)
                ac[i] += dc[i];
        }
        st->block_w[b] += w;
        st->block_n[b]++;
    }
    st->n_updates++;
    return FM_OK;
}

/* The robust rules' aggregated step into st->step, per block over the sites that trained it. Krum works on
 * groups of blocks trained by the same set of sites, so that it selects whole (partial) updates, as Blanchard
 * et al. intend, rather than mixing sites block by block. */
static fm_status robust_step(fm_strategy *st)
{
    size_t K = st->n_updates, nb = st->nb;
    fm_strategy_kind kind = st->cfg.kind;
    const float **ptrs = malloc(K * sizeof(float *));
    size_t *group = malloc(nb * sizeof(size_t));
    size_t *offs = malloc(nb * sizeof(size_t));
    size_t *lens = malloc(nb * sizeof(size_t));
    fm_status status = FM_OK;
    if (!ptrs || !group || !offs || !lens) {
        status = fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory for %zu updates", fm_strategy_name(kind), K);
        goto done;
    }
    if (kind == FM_STRATEGY_MEDIAN || kind == FM_STRATEGY_TRIMMED_MEAN) {
        for (size_t b = 0; b < nb && status == FM_OK; b++) {
            if (st->block_n[b] == 0)
                continue;
            const fm_strategy_block *blk = &st->blocks[b];
            size_t kb = 0;
            for (size_t k = 0; k < K; k++)
                if (st->kept_mask[k][b])
                    ptrs[kb++] = st->kept[k] + blk->offset;
            if (kind == FM_STRATEGY_MEDIAN)
                status = fm_agg_median(st->step + blk->offset, ptrs, kb, blk->numel);
            else
                status = fm_agg_trimmed_mean(st->step + blk->offset, ptrs, kb, blk->numel, st->cfg.trim_ratio);
        }
        goto done;
    }
    /* Krum: group blocks by the exact set of sites that trained them. */
    int f = st->cfg.krum_byzantine;
    for (size_t b = 0; b < nb; b++)
        group[b] = SIZE_MAX;
    for (size_t b = 0; b < nb; b++) {
        if (st->block_n[b] == 0 || group[b] != SIZE_MAX)
            continue;
        size_t nr = 0;
        for (size_t b2 = b; b2 < nb; b2++) {
            if (group[b2] != SIZE_MAX || st->block_n[b2] == 0)
                continue;
            int same = 1;
            for (size_t k = 0; k < K && same; k++)
                same = (st->kept_mask[k][b] != 0) == (st->kept_mask[k][b2] != 0);
            if (!same)
                continue;
            group[b2] = b;
            offs[nr] = st->blocks[b2].offset;
            lens[nr] = st->blocks[b2].numel;
            nr++;
        }
        size_t kb = 0;
        for (size_t k = 0; k < K; k++)
            if (st->kept_mask[k][b])
                ptrs[kb++] = st->kept[k];
        if (kb < 2 * (size_t)f + 3) {
            status = fm_error(FM_ERR_STATE,
                              "strategy %s: block '%s' was trained by %zu sites; Krum with f = %d needs "
                              "at least 2f+3 = %d",
                              fm_strategy_name(kind), st->blocks[b].name, kb, f, 2 * f + 3);
            goto done;
        }
        int m = 1;
        if (kind == FM_STRATEGY_MULTI_KRUM) {
            m = st->cfg.multi_krum_m > 0 ? st->cfg.multi_krum_m : (int)(kb - (size_t)f);
            if ((size_t)m > kb)
                m = (int)kb;
        }
        status = fm_krum_ranges(st->step, ptrs, kb, offs, lens, nr, f, m, NULL);
        if (status != FM_OK)
            goto done;
    }
done:
    free(ptrs);
    free(group);
    free(offs);
    free(lens);
    return status;
}

/* Steps 1 and 2 of fm_strategy_finish_round on the CPU. */
static fm_status host_finish_round(fm_strategy *st)
{
    const fm_strategy_config *cfg = &st->cfg;
    /* 1. The aggregated step Δ into st->step (nothing else changes until it is complete). */
    if (fm_strategy_is_robust(cfg->kind)) {
        FM_TRY(robust_step(st));
    } else {
        for (size_t b = 0; b < st->nb; b++) {
            if (st->block_n[b] == 0)
                continue;
            const fm_strategy_block *blk = &st->blocks[b];
            float inv = (float)(1.0 / st->block_w[b]);
            const float *acc = st->acc + blk->offset;
            float *step = st->step + blk->offset;
            for (size_t i = 0; i < blk->numel; i++)
                step[i] = acc[i] * inv;
        }
    }

    /* 2. The server rule, per trained block; untrained blocks keep value and state. */
    float eta = (float)cfg->server_lr;
    float b1 = (float)cfg->beta1, b2 = (float)cfg->beta2, tau = (float)cfg->tau;
    float beta = (float)cfg->server_momentum;
    size_t n_sites = cfg->scaffold_num_sites > 0 ? (size_t)cfg->scaffold_num_sites : st->n_updates;
    float inv_sites = (float)(1.0 / (double)n_sites);
    for (size_t b = 0; b < st->nb; b++) {
        if (st->block_n[b] == 0)
            continue;
        size_t off = st->blocks[b].offset, len = st->blocks[b].numel;
        float *w = st->global + off;
        const float *d = st->step + off;
        switch (cfg->kind) {
        case FM_STRATEGY_FEDAVGM: {
            /* DESIGN.md §2A: m = β·m + (1−β)·Δ; w += η·m (η = 1 by default gives DESIGN's w += m) */
            float *m = st->m + off;
#pragma omp parallel for schedule(static) if (len >= STRAT_OMP_MIN)
            for (size_t i = 0; i < len; i++) {
                m[i] = beta * m[i] + (1.0f - beta) * d[i];
                w[i] += eta * m[i];
            }
            break;
        }
        case FM_STRATEGY_FEDADAGRAD:
        case FM_STRATEGY_FEDADAM:
        case FM_STRATEGY_FEDYOGI: {
            /* Reddi et al. 2021 Algorithm 2, Δ as the pseudo-gradient, no bias correction */
            float *m = st->m + off, *v = st->v + off;
            int rule = cfg->kind == FM_STRATEGY_FEDADAGRAD ? 0 : cfg->kind == FM_STRATEGY_FEDADAM ? 1 : 2;
#pragma omp parallel for schedule(static) if (len >= STRAT_OMP_MIN)
            for (size_t i = 0; i < len; i++) {
                float g = d[i], g2 = g * g;
                m[i] = b1 * m[i] + (1.0f - b1) * g;
                if (rule == 0) {
                    v[i] = v[i] + g2;
                } else if (rule == 1) {
                    v[i] = b2 * v[i] + (1.0f - b2) * g2;
                } else {
                    float diff = v[i] - g2;
                    float sgn = (float)((diff > 0.0f) - (diff < 0.0f));
                    v[i] = v[i] - (1.0f - b2) * g2 * sgn;
                }
                w[i] += eta * m[i] / (sqrtf(v[i]) + tau);
            }
            break;
        }
        case FM_STRATEGY_SCAFFOLD: {
            /* x += ηg·mean(Δy);  c += (|S|/N)·mean(Δc) = Σ Δc / N */
            float *c = st->c + off;
            const float *ac = st->acc_c + off;
#pragma omp parallel for schedule(static) if (len >= STRAT_OMP_MIN)
            for (size_t i = 0; i < len; i++) {
                w[i] += eta * d[i];
                c[i] += ac[i] * inv_sites;
            }
            break;
        }
        default: /* FedAvg, FedProx, adaptive reg, robust rules: w += η·Δ */
#pragma omp parallel for schedule(static) if (len >= STRAT_OMP_MIN)
            for (size_t i = 0; i < len; i++)
                w[i] += eta * d[i];
            break;
        }
    }
    return FM_OK;
}

fm_status fm_strategy_finish_round(fm_strategy *st, float *global_out)
{
    if (!st)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_finish_round: NULL strategy");
    const fm_strategy_config *cfg = &st->cfg;
    const char *kn = fm_strategy_name(cfg->kind);
    if (!st->open)
        return fm_error(FM_ERR_STATE, "strategy %s: finish_round with no open round", kn);
    if (st->n_updates == 0)
        return fm_error(FM_ERR_STATE,
                        "strategy %s: round %lld has no accepted update; the global vector is kept "
                        "(add updates or abort the round)",
                        kn, (long long)st->open_round);

    if (st->dev)
        FM_TRY(fm_strategy_dev_finish_round(st));
    else
        FM_TRY(host_finish_round(st));
    st->round = st->open_round;
    st->open = 0;
    clear_round(st);
    if (global_out)
        memcpy(global_out, st->global, st->n * sizeof(float));
    return FM_OK;
}

fm_status fm_strategy_set_global(fm_strategy *st, const float *global)
{
    if (!st || !global)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_set_global: NULL argument");
    if (st->open)
        return fm_error(FM_ERR_STATE, "fm_strategy_set_global: round %lld is open", (long long)st->open_round);
    FM_TRY(check_finite(global, st->n, "fm_strategy_set_global"));
    if (st->dev)
        return fm_strategy_dev_upload(st, global, NULL, NULL, NULL);
    memcpy(st->global, global, st->n * sizeof(float));
    return FM_OK;
}

/* ---- checkpoint ---------------------------------------------------------------------------------- */

static fm_status set_meta_num(fm_st_writer *w, const char *key, double value)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%.17g", value);
    return fm_st_writer_set_metadata(w, key, buf);
}

fm_status fm_strategy_save(const fm_strategy *st, const char *path)
{
    if (!st || !path)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_save: NULL argument");
    if (st->open)
        return fm_error(FM_ERR_STATE, "fm_strategy_save: round %lld is open; save between rounds",
                        (long long)st->open_round);
    /* On the GPU the moments live in device memory: host copies for the file (global and c have theirs). */
    float *dev_m = NULL, *dev_v = NULL;
    if (st->dev)
        FM_TRY(fm_strategy_dev_download_moments(st, &dev_m, &dev_v));
    const float *mom = st->dev ? dev_m : st->m, *sec = st->dev ? dev_v : st->v;
    fm_st_writer *w = NULL;
    fm_status s = fm_st_writer_create(&w);
    if (s != FM_OK) {
        free(dev_m);
        free(dev_v);
        return s;
    }
    const fm_strategy_config *c = &st->cfg;
    int64_t shape[1] = {(int64_t)st->n};
    char buf[64];
    s = fm_st_writer_set_metadata(w, "format", STRAT_FORMAT);
    if (s == FM_OK)
        s = fm_st_writer_set_metadata(w, "version", STRAT_VERSION);
    if (s == FM_OK)
        s = fm_st_writer_set_metadata(w, "kind", fm_strategy_name(c->kind));
    if (s == FM_OK) {
        snprintf(buf, sizeof(buf), "%lld", (long long)st->round);
        s = fm_st_writer_set_metadata(w, "round", buf);
    }
    if (s == FM_OK) {
        snprintf(buf, sizeof(buf), "%zu", st->n);
        s = fm_st_writer_set_metadata(w, "n_params", buf);
    }
    if (s == FM_OK) {
        snprintf(buf, sizeof(buf), "%zu", st->nb);
        s = fm_st_writer_set_metadata(w, "n_blocks", buf);
    }
    const struct {
        const char *key;
        double value;
    } echo[] = {
        {"server_lr", c->server_lr},
        {"beta1", c->beta1},
        {"beta2", c->beta2},
        {"tau", c->tau},
        {"server_momentum", c->server_momentum},
        {"prox_mu", c->prox_mu},
        {"adaptive_mu_w", c->adaptive_mu_w},
        {"adaptive_skip_layers", c->adaptive_skip_layers},
        {"trim_ratio", c->trim_ratio},
        {"krum_byzantine", c->krum_byzantine},
        {"multi_krum_m", c->multi_krum_m},
        {"clip_norm", c->clip_norm},
        {"scaffold_num_sites", c->scaffold_num_sites},
    };
    for (size_t i = 0; i < sizeof(echo) / sizeof(echo[0]) && s == FM_OK; i++)
        s = set_meta_num(w, echo[i].key, echo[i].value);
    if (s == FM_OK)
        s = fm_st_writer_add_f32(w, "global", FM_ST_F32, 1, shape, st->global);
    if (s == FM_OK && c->kind == FM_STRATEGY_FEDAVGM)
        s = fm_st_writer_add_f32(w, "momentum", FM_ST_F32, 1, shape, mom);
    if (s == FM_OK && is_fedopt(c->kind)) {
        s = fm_st_writer_add_f32(w, "m", FM_ST_F32, 1, shape, mom);
        if (s == FM_OK)
            s = fm_st_writer_add_f32(w, "v", FM_ST_F32, 1, shape, sec);
    }
    if (s == FM_OK && c->kind == FM_STRATEGY_SCAFFOLD)
        s = fm_st_writer_add_f32(w, "control", FM_ST_F32, 1, shape, st->c);
    if (s == FM_OK)
        s = fm_st_write(w, path);
    fm_st_writer_free(w);
    free(dev_m);
    free(dev_v);
    return s;
}

static fm_status meta_u64(const fm_st_file *f, const char *path, const char *key, long long *out)
{
    const char *v = fm_st_metadata(f, key);
    if (!v)
        return fm_error(FM_ERR_PARSE, "%s: strategy checkpoint has no '%s' in its metadata", path, key);
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return fm_error(FM_ERR_PARSE, "%s: metadata '%s' = '%s' is not an integer", path, key, v);
    *out = x;
    return FM_OK;
}

fm_status fm_strategy_load(fm_strategy *st, const char *path)
{
    if (!st || !path)
        return fm_error(FM_ERR_INVALID_ARG, "fm_strategy_load: NULL argument");
    if (st->open)
        return fm_error(FM_ERR_STATE, "fm_strategy_load: round %lld is open; load between rounds",
                        (long long)st->open_round);
    fm_st_file *f = NULL;
    FM_TRY(fm_st_open(&f, path));
    fm_strategy_kind kind = st->cfg.kind;
    const char *fmt = fm_st_metadata(f, "format");
    const char *kname = fm_st_metadata(f, "kind");
    long long round = 0, n_params = 0, n_blocks = 0;
    float *g = NULL, *m = NULL, *v = NULL, *c = NULL;
    fm_status s = FM_OK;
    if (!fmt || strcmp(fmt, STRAT_FORMAT) != 0) {
        s = fm_error(FM_ERR_PARSE, "%s: not a strategy checkpoint (format '%s', expected '%s')", path,
                     fmt ? fmt : "(none)", STRAT_FORMAT);
        goto done;
    }
    if (!kname || strcmp(kname, fm_strategy_name(kind)) != 0) {
        s = fm_error(FM_ERR_CONFIG, "%s: checkpoint is of strategy '%s', this strategy is '%s'", path,
                     kname ? kname : "(none)", fm_strategy_name(kind));
        goto done;
    }
    if ((s = meta_u64(f, path, "round", &round)) != FM_OK || (s = meta_u64(f, path, "n_params", &n_params)) != FM_OK ||
        (s = meta_u64(f, path, "n_blocks", &n_blocks)) != FM_OK)
        goto done;
    if (n_params < 0 || (unsigned long long)n_params != st->n || n_blocks < 0 ||
        (unsigned long long)n_blocks != st->nb) {
        s = fm_error(FM_ERR_SHAPE, "%s: checkpoint has %lld parameters in %lld blocks, this strategy %zu in %zu", path,
                     n_params, n_blocks, st->n, st->nb);
        goto done;
    }
    if (round < -1) {
        s = fm_error(FM_ERR_PARSE, "%s: round %lld is not a round", path, round);
        goto done;
    }
    int failed = 0;
    g = xcalloc(st->n, sizeof(float), &failed);
    if (kind == FM_STRATEGY_FEDAVGM || is_fedopt(kind))
        m = xcalloc(st->n, sizeof(float), &failed);
    if (is_fedopt(kind))
        v = xcalloc(st->n, sizeof(float), &failed);
    if (kind == FM_STRATEGY_SCAFFOLD)
        c = xcalloc(st->n, sizeof(float), &failed);
    if (failed) {
        s = fm_error(FM_ERR_NO_MEMORY, "%s: no memory to load %zu parameters", path, st->n);
        goto done;
    }
    int64_t shape[1] = {(int64_t)st->n};
    s = fm_st_read_f32(f, "global", g, st->n, 1, shape);
    if (s == FM_OK && kind == FM_STRATEGY_FEDAVGM)
        s = fm_st_read_f32(f, "momentum", m, st->n, 1, shape);
    if (s == FM_OK && is_fedopt(kind)) {
        s = fm_st_read_f32(f, "m", m, st->n, 1, shape);
        if (s == FM_OK)
            s = fm_st_read_f32(f, "v", v, st->n, 1, shape);
    }
    if (s == FM_OK && kind == FM_STRATEGY_SCAFFOLD)
        s = fm_st_read_f32(f, "control", c, st->n, 1, shape);
    if (s != FM_OK)
        goto done;
    const float *check[4] = {g, m, v, c};
    const char *names[4] = {"global", "moment m", "moment v", "control"};
    for (int i = 0; i < 4 && s == FM_OK; i++) {
        if (!check[i])
            continue;
        char what[256];
        snprintf(what, sizeof(what), "%s: %s", path, names[i]);
        s = check_finite(check[i], st->n, what);
    }
    if (s != FM_OK)
        goto done;
    if (st->dev) {
        s = fm_strategy_dev_upload(st, g, m, v, c);
        if (s == FM_OK)
            st->round = round;
        goto done;
    }
    memcpy(st->global, g, st->n * sizeof(float));
    if (m)
        memcpy(st->m, m, st->n * sizeof(float));
    if (v)
        memcpy(st->v, v, st->n * sizeof(float));
    if (c)
        memcpy(st->c, c, st->n * sizeof(float));
    st->round = round;
done:
    free(g);
    free(m);
    free(v);
    free(c);
    fm_st_close(f);
    return s;
}
