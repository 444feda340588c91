/* The GPU half of the server strategies (config.device = FM_DEVICE_CUDA, include/fedmm/strategy.h): the global
 * vector, the rule's state, the running sums and the robust rules' copies of the updates live in device memory,
 * and the kernels of kernels/aggregate.cu do the arithmetic. src/fl/strategy.c does the argument checks and the
 * round bookkeeping (block weights and counts stay on the host) and calls in here.
 *
 * An update arrives in host memory: its trained blocks are copied into a staging vector on the device (zeros
 * elsewhere), checked there for finiteness (with the norm for clipping, in the same pass), and only then
 * accumulated, so that a rejected update leaves the round as it was. The kernels repeat the CPU's float
 * arithmetic; what differs is the order of the double sums (the clipping norm, Krum's distances), so a clipped
 * delta may differ from the CPU's in its last bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl/strategy_internal.h"

#ifdef FEDMM_WITH_CUDA

#include "cuda/runtime.h"
#include "fedmm/device.h"
#include "kernels/aggregate.h"

struct fm_strategy_dev {
    /* device vectors of n floats; NULL where the kind has none */
    float *global;
    float *m, *v;   /* FedAvgM momentum / FedOpt moments */
    float *c;       /* SCAFFOLD's control variate */
    float *acc;     /* FedAvg family: Σ nk·Δk, turned into the step in place by finish */
    float *acc_c;   /* SCAFFOLD: Σ Δck */
    float *step;    /* robust rules: the aggregated step */
    float *stage;   /* the update being added */
    float *stage_c; /* its Δck (SCAFFOLD) */
    /* robust rules: a device copy of each accepted (clipped) delta, zeros in untrained blocks, and its host mask */
    float **kept;
    uint8_t **mask;
    size_t cap;
};

static int is_fedopt(fm_strategy_kind kind)
{
    return kind == FM_STRATEGY_FEDADAGRAD || kind == FM_STRATEGY_FEDADAM || kind == FM_STRATEGY_FEDYOGI;
}

static int trained(const fm_site_update *u, size_t b) { return !u->trained || u->trained[b]; }

/* A run of whole blocks, [off, off + len). */
typedef struct span {
    size_t off, len;
} span;

/* Appends block `blk` to the list, merged into the last span when the two touch. */
static void span_add(span *s, size_t *ns, const fm_strategy_block *blk)
{
    if (*ns > 0 && s[*ns - 1].off + s[*ns - 1].len == blk->offset) {
        s[*ns - 1].len += blk->numel;
        return;
    }
    s[*ns].off = blk->offset;
    s[*ns].len = blk->numel;
    (*ns)++;
}

static fm_status dev_zeros(float **out, size_t n)
{
    FM_TRY(fm_cuda_malloc((void **)out, n * sizeof(float)));
    return fm_cuda_memset(*out, 0, n * sizeof(float));
}

fm_status fm_strategy_dev_create(fm_strategy *st, const float *initial_global)
{
    const fm_strategy_kind kind = st->cfg.kind;
    const char *kn = fm_strategy_name(kind);
    char why[256] = "";
    if (fm_cuda_device_count(why, sizeof why) <= 0)
        return fm_error(FM_ERR_DEVICE, "strategy %s on cuda: no usable GPU: %s", kn, why);
    struct fm_strategy_dev *d = calloc(1, sizeof *d);
    if (!d)
        return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory", kn);
    st->dev = d; /* from here on, fm_strategy_destroy releases whatever was allocated */
    const size_t n = st->n, bytes = n * sizeof(float);
    FM_TRY(fm_cuda_malloc((void **)&d->global, bytes));
    FM_TRY(fm_cuda_memcpy(d->global, initial_global, bytes, 0));
    FM_TRY(fm_cuda_malloc((void **)&d->stage, bytes));
    if (fm_strategy_is_robust(kind))
        FM_TRY(fm_cuda_malloc((void **)&d->step, bytes));
    else
        FM_TRY(dev_zeros(&d->acc, n));
    if (kind == FM_STRATEGY_FEDAVGM || is_fedopt(kind))
        FM_TRY(dev_zeros(&d->m, n));
    if (is_fedopt(kind)) {
        /* v starts at τ², as on the CPU */
        float *host = malloc(bytes ? bytes : 1);
        if (!host)
            return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory for %zu floats", kn, n);
        const float t2 = (float)(st->cfg.tau * st->cfg.tau);
        for (size_t i = 0; i < n; i++)
            host[i] = t2;
        fm_status s = fm_cuda_malloc((void **)&d->v, bytes);
        if (s == FM_OK)
            s = fm_cuda_memcpy(d->v, host, bytes, 0);
        free(host);
        FM_TRY(s);
    }
    if (kind == FM_STRATEGY_SCAFFOLD) {
        FM_TRY(dev_zeros(&d->c, n));
        FM_TRY(dev_zeros(&d->acc_c, n));
        FM_TRY(fm_cuda_malloc((void **)&d->stage_c, bytes));
    }
    return fm_cuda_synchronize(); /* an asynchronous fault surfaces here, not in the first round */
}

void fm_strategy_dev_destroy(fm_strategy *st)
{
    struct fm_strategy_dev *d = st->dev;
    if (!d)
        return;
    float *vecs[] = {d->global, d->m, d->v, d->c, d->acc, d->acc_c, d->step, d->stage, d->stage_c};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
        fm_cuda_free(vecs[i]);
    for (size_t i = 0; i < d->cap; i++) {
        fm_cuda_free(d->kept[i]);
        free(d->mask[i]);
    }
    free(d->kept);
    free(d->mask);
    free(d);
    st->dev = NULL;
}

fm_status fm_strategy_dev_begin_round(fm_strategy *st)
{
    struct fm_strategy_dev *d = st->dev;
    const size_t bytes = st->n * sizeof(float);
    if (d->acc)
        FM_TRY(fm_cuda_memset(d->acc, 0, bytes));
    if (d->acc_c)
        FM_TRY(fm_cuda_memset(d->acc_c, 0, bytes));
    return FM_OK;
}

/* The block holding vector index i (blocks tile the vector in order). */
static size_t block_of(const fm_strategy *st, size_t i)
{
    size_t lo = 0, hi = st->nb;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->blocks[mid].offset <= i)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Copies the trained spans of a host vector into a device vector of n floats, zeros elsewhere. */
static fm_status stage_upload(float *dst, const float *src, size_t n, const span *sp, size_t ns, int all)
{
    if (!all)
        FM_TRY(fm_cuda_memset(dst, 0, n * sizeof(float)));
    for (size_t r = 0; r < ns; r++)
        FM_TRY(fm_cuda_memcpy(dst + sp[r].off, src + sp[r].off, sp[r].len * sizeof(float), 0));
    return FM_OK;
}

/* A free slot for the next kept update of the robust rules. */
static fm_status kept_slot(fm_strategy *st, size_t slot)
{
    struct fm_strategy_dev *d = st->dev;
    const char *kn = fm_strategy_name(st->cfg.kind);
    if (slot == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        float **kept = realloc(d->kept, cap * sizeof(float *));
        if (kept)
            d->kept = kept;
        uint8_t **masks = realloc(d->mask, cap * sizeof(uint8_t *));
        if (masks)
            d->mask = masks;
        if (!kept || !masks)
            return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory to keep update %zu", kn, slot + 1);
        for (size_t i = d->cap; i < cap; i++) {
            d->kept[i] = NULL;
            d->mask[i] = NULL;
        }
        d->cap = cap;
    }
    if (!d->mask[slot]) {
        d->mask[slot] = malloc(st->nb);
        if (!d->mask[slot])
            return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory to keep update %zu", kn, slot + 1);
    }
    if (!d->kept[slot])
        FM_TRY(fm_cuda_malloc((void **)&d->kept[slot], st->n * sizeof(float)));
    return FM_OK;
}

fm_status fm_strategy_dev_add_update(fm_strategy *st, const fm_site_update *u)
{
    struct fm_strategy_dev *d = st->dev;
    const fm_strategy_kind kind = st->cfg.kind;
    const char *kn = fm_strategy_name(kind);
    const int scaffold = kind == FM_STRATEGY_SCAFFOLD;
    span *sp = malloc(st->nb * sizeof *sp);
    if (!sp)
        return fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory for %zu blocks", kn, st->nb);
    size_t ns = 0;
    int all = 1;
    for (size_t b = 0; b < st->nb; b++) {
        if (trained(u, b))
            span_add(sp, &ns, &st->blocks[b]);
        else
            all = 0;
    }

    /* 1. the trained blocks onto the device, checked there before anything is accumulated */
    size_t bad = SIZE_MAX, bad_c = SIZE_MAX;
    double norm2 = 0.0, unused = 0.0;
    fm_status s = stage_upload(d->stage, u->delta, st->n, sp, ns, all);
    if (s == FM_OK && scaffold)
        s = stage_upload(d->stage_c, u->control_delta, st->n, sp, ns, all);
    if (s == FM_OK)
        s = fm_cuda_agg_check_norm(d->stage, st->n, &bad, &norm2);
    if (s == FM_OK && scaffold)
        s = fm_cuda_agg_check_norm(d->stage_c, st->n, &bad_c, &unused);
    if (s == FM_OK && (bad != SIZE_MAX || bad_c != SIZE_MAX)) {
        /* the CPU's message for the CPU's first offender: blocks in order, a block's delta before its Δck */
        const size_t bb = bad != SIZE_MAX ? block_of(st, bad) : SIZE_MAX;
        const size_t bc = bad_c != SIZE_MAX ? block_of(st, bad_c) : SIZE_MAX;
        if (bb <= bc) {
            const fm_strategy_block *blk = &st->blocks[bb];
            s = fm_error(FM_ERR_NOT_FINITE,
                         "strategy %s: update rejected, delta of block '%s' element %zu (index %zu) is %g", kn,
                         blk->name, bad - blk->offset, bad, (double)u->delta[bad]);
        } else {
            const fm_strategy_block *blk = &st->blocks[bc];
            s = fm_error(FM_ERR_NOT_FINITE,
                         "strategy scaffold: update rejected, control_delta of block '%s' element %zu (index %zu) "
                         "is %g",
                         blk->name, bad_c - blk->offset, bad_c, (double)u->control_delta[bad_c]);
        }
    }
    if (s != FM_OK) {
        free(sp);
        return s;
    }
    double scale = 1.0;
    if (st->cfg.clip_norm > 0.0 && norm2 > st->cfg.clip_norm * st->cfg.clip_norm)
        scale = st->cfg.clip_norm / sqrt(norm2);

    /* 2. the robust rules keep a copy; the others add to the running sums */
    if (fm_strategy_is_robust(kind)) {
        const size_t slot = st->n_updates;
        s = kept_slot(st, slot);
        if (s == FM_OK)
            s = fm_cuda_agg_scale_copy(d->kept[slot], d->stage, scale, st->n); /* zeros stay zeros */
        if (s == FM_OK) {
            for (size_t b = 0; b < st->nb; b++) {
                const int t = trained(u, b);
                d->mask[slot][b] = (uint8_t)t;
                if (t)
                    st->block_n[b]++;
            }
            st->n_updates++;
        }
        free(sp);
        return s;
    }
    /* SCAFFOLD averages Δy without sample weights (Karimireddy et al. Alg. 1 line 16); the others weight by nk. */
    const double w = scaffold ? 1.0 : u->weight;
    const float ws = (float)(w * scale), one = 1.0f;
    for (size_t r = 0; r < ns && s == FM_OK; r++) {
        const float *x = d->stage + sp[r].off;
        s = fm_cuda_agg_weighted_sum(d->acc + sp[r].off, &x, &ws, 1, sp[r].len, 1);
        if (s == FM_OK && scaffold) {
            const float *xc = d->stage_c + sp[r].off;
            s = fm_cuda_agg_weighted_sum(d->acc_c + sp[r].off, &xc, &one, 1, sp[r].len, 1);
        }
    }
    free(sp);
    FM_TRY(s);
    for (size_t b = 0; b < st->nb; b++) {
        if (!trained(u, b))
            continue;
        st->block_w[b] += w;
        st->block_n[b]++;
    }
    st->n_updates++;
    return FM_OK;
}

/* Median / trimmed mean: one call per run of consecutive blocks trained by the same sites. */
static fm_status dev_sorted_step(fm_strategy *st, const float **ptrs)
{
    struct fm_strategy_dev *d = st->dev;
    const size_t K = st->n_updates;
    for (size_t b = 0; b < st->nb;) {
        if (st->block_n[b] == 0) {
            b++;
            continue;
        }
        size_t e = b + 1;
        for (; e < st->nb && st->block_n[e] > 0; e++) {
            int same = 1;
            for (size_t k = 0; k < K && same; k++)
                same = (d->mask[k][b] != 0) == (d->mask[k][e] != 0);
            if (!same)
                break;
        }
        const size_t off = st->blocks[b].offset;
        const size_t len = st->blocks[e - 1].offset + st->blocks[e - 1].numel - off;
        size_t kb = 0;
        for (size_t k = 0; k < K; k++)
            if (d->mask[k][b])
                ptrs[kb++] = d->kept[k] + off;
        if (st->cfg.kind == FM_STRATEGY_MEDIAN)
            FM_TRY(fm_cuda_agg_median(d->step + off, ptrs, kb, len));
        else
            FM_TRY(fm_cuda_agg_trimmed_mean(d->step + off, ptrs, kb, len, st->cfg.trim_ratio));
        b = e;
    }
    return FM_OK;
}

/* Krum / multi-Krum, as strategy.c's robust_step: blocks grouped by the exact set of sites that trained them,
 * distances on the device over the group's spans, scores and selection on the host (fm_krum_order, the CPU's
 * code), the mean of the selected updates on the device. */
static fm_status dev_krum_step(fm_strategy *st, const float **ptrs, const float **sel, size_t *group, span *sp,
                               size_t *offs, size_t *lens, double *dist, size_t *order)
{
    struct fm_strategy_dev *d = st->dev;
    const size_t K = st->n_updates, nb = st->nb;
    const fm_strategy_kind kind = st->cfg.kind;
    const int f = st->cfg.krum_byzantine;
    for (size_t b = 0; b < nb; b++)
        group[b] = SIZE_MAX;
    for (size_t b = 0; b < nb; b++) {
        if (st->block_n[b] == 0 || group[b] != SIZE_MAX)
            continue;
        size_t ns = 0;
        for (size_t b2 = b; b2 < nb; b2++) {
            if (group[b2] != SIZE_MAX || st->block_n[b2] == 0)
                continue;
            int same = 1;
            for (size_t k = 0; k < K && same; k++)
                same = (d->mask[k][b] != 0) == (d->mask[k][b2] != 0);
            if (!same)
                continue;
            group[b2] = b;
            span_add(sp, &ns, &st->blocks[b2]);
        }
        size_t kb = 0;
        for (size_t k = 0; k < K; k++)
            if (d->mask[k][b])
                ptrs[kb++] = d->kept[k];
        if (kb < 2 * (size_t)f + 3)
            return fm_error(FM_ERR_STATE,
                            "strategy %s: block '%s' was trained by %zu sites; Krum with f = %d needs "
                            "at least 2f+3 = %d",
                            fm_strategy_name(kind), st->blocks[b].name, kb, f, 2 * f + 3);
        int m = 1;
        if (kind == FM_STRATEGY_MULTI_KRUM) {
            m = st->cfg.multi_krum_m > 0 ? st->cfg.multi_krum_m : (int)(kb - (size_t)f);
            if ((size_t)m > kb)
                m = (int)kb;
        }
        for (size_t r = 0; r < ns; r++) {
            offs[r] = sp[r].off;
            lens[r] = sp[r].len;
        }
        FM_TRY(fm_cuda_agg_pairwise_sqdist(dist, ptrs, kb, offs, lens, ns));
        FM_TRY(fm_krum_order(dist, kb, f, order));
        for (size_t r = 0; r < ns; r++) {
            for (int q = 0; q < m; q++)
                sel[q] = ptrs[order[q]] + sp[r].off;
            FM_TRY(fm_cuda_agg_mean(d->step + sp[r].off, sel, (size_t)m, sp[r].len));
        }
    }
    return FM_OK;
}

static fm_status dev_robust_step(fm_strategy *st)
{
    const size_t K = st->n_updates, nb = st->nb;
    const int krum = st->cfg.kind == FM_STRATEGY_KRUM || st->cfg.kind == FM_STRATEGY_MULTI_KRUM;
    const float **ptrs = malloc(K * sizeof(float *));
    const float **sel = malloc(K * sizeof(float *));
    size_t *group = malloc(nb * sizeof(size_t));
    span *sp = malloc(nb * sizeof(span));
    size_t *offs = malloc(nb * sizeof(size_t));
    size_t *lens = malloc(nb * sizeof(size_t));
    size_t *order = malloc(K * sizeof(size_t));
    double *dist = krum ? malloc(K * K * sizeof(double)) : NULL;
    fm_status s = FM_OK;
    if (!ptrs || !sel || !group || !sp || !offs || !lens || !order || (krum && !dist))
        s = fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory for %zu updates", fm_strategy_name(st->cfg.kind), K);
    else if (krum)
        s = dev_krum_step(st, ptrs, sel, group, sp, offs, lens, dist, order);
    else
        s = dev_sorted_step(st, ptrs);
    free(ptrs);
    free(sel);
    free(group);
    free(sp);
    free(offs);
    free(lens);
    free(order);
    free(dist);
    return s;
}

/* The server rule for the kind (strategy.c's switch). */
static fm_cuda_server_rule rule_of(fm_strategy_kind kind)
{
    switch (kind) {
    case FM_STRATEGY_FEDAVGM: return FM_CUDA_RULE_AVGM;
    case FM_STRATEGY_FEDADAGRAD: return FM_CUDA_RULE_ADAGRAD;
    case FM_STRATEGY_FEDADAM: return FM_CUDA_RULE_ADAM;
    case FM_STRATEGY_FEDYOGI: return FM_CUDA_RULE_YOGI;
    case FM_STRATEGY_SCAFFOLD: return FM_CUDA_RULE_SCAFFOLD;
    default: return FM_CUDA_RULE_PLAIN;
    }
}

static float *at(float *p, size_t off) { return p ? p + off : NULL; }

/* Refreshes the host copies of the vectors the API hands out. */
static fm_status refresh_host(fm_strategy *st)
{
    const size_t bytes = st->n * sizeof(float);
    FM_TRY(fm_cuda_memcpy(st->global, st->dev->global, bytes, 1));
    if (st->c)
        FM_TRY(fm_cuda_memcpy(st->c, st->dev->c, bytes, 1));
    return FM_OK;
}

fm_status fm_strategy_dev_finish_round(fm_strategy *st)
{
    struct fm_strategy_dev *d = st->dev;
    const fm_strategy_config *cfg = &st->cfg;
    /* 1. the aggregated step (nothing else changes until it is complete) */
    float *step = d->acc;
    if (fm_strategy_is_robust(cfg->kind)) {
        FM_TRY(dev_robust_step(st));
        step = d->step;
    } else {
        /* step = Σ nk·Δk · (1/Σ nk) per block, in place; blocks trained by the same sites share the weight */
        for (size_t b = 0; b < st->nb;) {
            if (st->block_n[b] == 0) {
                b++;
                continue;
            }
            size_t e = b + 1;
            while (e < st->nb && st->block_n[e] > 0 && st->block_w[e] == st->block_w[b])
                e++;
            const size_t off = st->blocks[b].offset;
            const size_t len = st->blocks[e - 1].offset + st->blocks[e - 1].numel - off;
            FM_TRY(fm_cuda_agg_scale_f32(d->acc + off, d->acc + off, (float)(1.0 / st->block_w[b]), len));
            b = e;
        }
    }
    /* 2. the server rule over the trained blocks; untrained blocks keep value and state */
    const size_t n_sites = cfg->scaffold_num_sites > 0 ? (size_t)cfg->scaffold_num_sites : st->n_updates;
    const fm_cuda_rule_params p = {.eta = (float)cfg->server_lr,
                                   .beta1 = (float)cfg->beta1,
                                   .beta2 = (float)cfg->beta2,
                                   .tau = (float)cfg->tau,
                                   .momentum = (float)cfg->server_momentum,
                                   .inv_sites = (float)(1.0 / (double)n_sites)};
    const fm_cuda_server_rule rule = rule_of(cfg->kind);
    for (size_t b = 0; b < st->nb;) {
        if (st->block_n[b] == 0) {
            b++;
            continue;
        }
        size_t e = b + 1;
        while (e < st->nb && st->block_n[e] > 0)
            e++;
        const size_t off = st->blocks[b].offset;
        const size_t len = st->blocks[e - 1].offset + st->blocks[e - 1].numel - off;
        FM_TRY(fm_cuda_agg_server_rule(rule, d->global + off, at(d->m, off), at(d->v, off), at(d->c, off),
                                       at(d->acc_c, off), step + off, len, p));
        b = e;
    }
    return refresh_host(st);
}

fm_status fm_strategy_dev_upload(fm_strategy *st, const float *global, const float *m, const float *v, const float *c)
{
    struct fm_strategy_dev *d = st->dev;
    const size_t bytes = st->n * sizeof(float);
    if (global)
        FM_TRY(fm_cuda_memcpy(d->global, global, bytes, 0));
    if (m && d->m)
        FM_TRY(fm_cuda_memcpy(d->m, m, bytes, 0));
    if (v && d->v)
        FM_TRY(fm_cuda_memcpy(d->v, v, bytes, 0));
    if (c && d->c)
        FM_TRY(fm_cuda_memcpy(d->c, c, bytes, 0));
    return refresh_host(st);
}

fm_status fm_strategy_dev_download_moments(const fm_strategy *st, float **m, float **v)
{
    const struct fm_strategy_dev *d = st->dev;
    const size_t bytes = st->n * sizeof(float);
    *m = NULL;
    *v = NULL;
    float *hm = d->m ? malloc(bytes) : NULL, *hv = d->v ? malloc(bytes) : NULL;
    fm_status s = FM_OK;
    if ((d->m && !hm) || (d->v && !hv))
        s = fm_error(FM_ERR_NO_MEMORY, "strategy %s: no memory for the moments", fm_strategy_name(st->cfg.kind));
    if (s == FM_OK && hm)
        s = fm_cuda_memcpy(hm, d->m, bytes, 1);
    if (s == FM_OK && hv)
        s = fm_cuda_memcpy(hv, d->v, bytes, 1);
    if (s != FM_OK) {
        free(hm);
        free(hv);
        return s;
    }
    *m = hm;
    *v = hv;
    return FM_OK;
}

#else /* no CUDA backend: fm_strategy_config_validate refuses device cuda, so only create can be reached */

fm_status fm_strategy_dev_create(fm_strategy *st, const float *initial_global)
{
    (void)initial_global;
    return fm_error(FM_ERR_DEVICE, "strategy %s on cuda: this fedmm was built without the CUDA backend",
                    fm_strategy_name(st->cfg.kind));
}

void fm_strategy_dev_destroy(fm_strategy *st) { st->dev = NULL; }

static fm_status no_cuda(void) { return fm_error(FM_ERR_DEVICE, "strategy: this fedmm has no CUDA backend"); }

fm_status fm_strategy_dev_begin_round(fm_strategy *st)
{
    (void)st;
    return no_cuda();
}

fm_status fm_strategy_dev_add_update(fm_strategy *st, const fm_site_update *u)
{
    (void)st;
    (void)u;
    return no_cuda();
}

fm_status fm_strategy_dev_finish_round(fm_strategy *st)
{
    (void)st;
    return no_cuda();
}

fm_status fm_strategy_dev_upload(fm_strategy *st, const float *global, const float *m, const float *v, const float *c)
{
    (void)st;
    (void)global;
    (void)m;
    (void)v;
    (void)c;
    return no_cuda();
}

fm_status fm_strategy_dev_download_moments(const fm_strategy *st, float **m, float **v)
{
    (void)st;
    *m = NULL;
    *v = NULL;
    return no_cuda();
}

#endif
