/* The in-process federated simulation: sites sampled per round, local training under each site's modality,
 * server aggregation, evaluation, metrics, and an atomic checkpoint after every round. */
#include "fedmm/sim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedmm/dataset.h"
#include "fedmm/device.h"
#include "fedmm/log.h"
#include "fedmm/metrics.h"
#include "fedmm/safetensors.h"
#include "fedmm/site_objective.h"
#include "fedmm/site_train.h"

fm_sim_options fm_sim_default_options(void)
{
    fm_sim_options o;
    memset(&o, 0, sizeof o);
    o.rounds = 10;
    o.sites_per_round = 5;
    o.local_steps = 10;
    o.local = fm_train_default_options();
    o.local.lr = 1e-3;
    o.local.warmup_steps = 0;
    o.strategy = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    o.scenario = fm_scenario_default_config();
    o.label_attr = FM_ATTR_KIND;
    o.eval_every = 1;
    o.eval_size = 500;
    o.attack_scale = 10.0;
    o.out_dir = "runs/sim";
    return o;
}

typedef struct sim {
    fm_clip *model;
    const fm_sim_options *o;
    fm_device device;
    size_t P;
    fm_strategy_block *blocks;
    size_t nb;
    fm_site_data *sites;
    int N;
    fm_dataset *test;
    fm_site_trainer *trainer; /* the same local training as `fedmm client` */
    fm_strategy *strategy;
    float *global, *local, *delta, *params_host, *grad_host;
    float *pulled;      /* the global vector as the sites receive it through a lossy net.encoding (else NULL) */
    float *site_state;  /* SCAFFOLD: N control variates ck; local-only: N site vectors */
    float *ci_new, *dc; /* SCAFFOLD scratch */
    float *c_pulled;    /* SCAFFOLD: the server's c as the sites receive it (through net.encoding) */
    float *ema;         /* fl.ema_decay: the moving average of the global vector over the rounds (else NULL) */
    uint8_t *trained;   /* (nb) */
    double bytes_up, bytes_down, wall_before;
    int round_done; /* completed rounds */
} sim;

static fm_status to_model(sim *s, const float *host)
{
    return fm_device_copy(fm_clip_trainable(s->model), s->device, host, FM_DEVICE_CPU, s->P * sizeof(float));
}

static fm_status from_model(sim *s, float *host)
{
    return fm_device_copy(host, FM_DEVICE_CPU, fm_clip_trainable(s->model), s->device, s->P * sizeof(float));
}

static fm_status build_blocks(sim *s)
{
    FM_TRY(fm_clip_strategy_blocks(s->model, &s->blocks, &s->nb));
    s->trained = calloc(s->nb ? s->nb : 1, 1);
    if (!s->trained)
        return fm_error(FM_ERR_NO_MEMORY, "sim: out of memory");
    return FM_OK;
}

static void *xcalloc(size_t n, size_t size, fm_status *s)
{
    if (*s != FM_OK)
        return NULL;
    void *p = calloc(n ? n : 1, size);
    if (!p)
        *s = fm_error(FM_ERR_NO_MEMORY, "sim: out of memory (%zu × %zu bytes)", n, size);
    return p;
}

static fm_status sim_init(sim *s, fm_clip *model, const fm_synth_config *synth, const fm_tokenizer *tok,
                          const fm_sim_options *o)
{
    memset(s, 0, sizeof *s);
    s->model = model;
    s->o = o;
    s->device = fm_clip_device(model);
    s->P = fm_clip_num_trainable(model);
    s->N = o->scenario.num_sites;
    const fm_clip_config *cfg = fm_clip_get_config(model);
    if (o->rounds < 1 || o->local_steps < 1 || o->local.batch_size < 2)
        return fm_error(FM_ERR_CONFIG, "sim: rounds, local_steps must be >= 1 and batch_size >= 2");
    if (o->sites_per_round < 1 || o->sites_per_round > s->N)
        return fm_error(FM_ERR_CONFIG, "sim: sites_per_round %d outside [1, %d sites]", o->sites_per_round, s->N);
    if (o->over_select_sites < 0 || o->over_select_sites > s->N - o->sites_per_round)
        return fm_error(FM_ERR_CONFIG, "sim: %d over-selected sites with %d of %d sites per round",
                        o->over_select_sites, o->sites_per_round, s->N);
    FM_TRY(fm_scenario_validate(&o->scenario));
    if (!(o->ema_decay >= 0.0 && o->ema_decay < 1.0))
        return fm_error(FM_ERR_CONFIG, "sim: ema_decay %g is outside [0, 1)", o->ema_decay);
    if (o->ema_decay > 0.0 && o->local_only)
        return fm_error(FM_ERR_CONFIG, "sim: fl.ema_decay averages the global model, and a local-only run has none");
    FM_TRY(build_blocks(s));
    FM_TRY(fm_federation_split(&o->scenario, synth, &s->sites));
    FM_TRY(fm_site_trainer_create(&s->trainer, model, synth, tok, o->label_attr, o->local.batch_size));
    FM_TRY(fm_dataset_synth(&s->test, synth, FM_SPLIT_TEST, tok, cfg->context_length));
    fm_status st = FM_OK;
    s->global = xcalloc(s->P, sizeof(float), &st);
    s->local = xcalloc(s->P, sizeof(float), &st);
    s->delta = xcalloc(s->P, sizeof(float), &st);
    if (o->wire.encoding != FM_WIRE_F32 && !o->local_only)
        s->pulled = xcalloc(s->P, sizeof(float), &st);
    if (o->ema_decay > 0.0)
        s->ema = xcalloc(s->P, sizeof(float), &st);
    FM_TRY(st);
    FM_TRY(fm_wire_codec_check(&o->wire));
    FM_TRY(from_model(s, s->global));
    if (s->ema) /* the average starts at the initial global model */
        memcpy(s->ema, s->global, s->P * sizeof(float));
    if (o->strategy.kind == FM_STRATEGY_SCAFFOLD || o->local_only) {
        s->site_state = xcalloc((size_t)s->N * s->P, sizeof(float), &st);
        FM_TRY(st);
        if (o->local_only)
            for (int k = 0; k < s->N; k++)
                memcpy(s->site_state + (size_t)k * s->P, s->global, s->P * sizeof(float));
    }
    if (o->strategy.kind == FM_STRATEGY_SCAFFOLD && !o->local_only) {
        s->ci_new = xcalloc(s->P, sizeof(float), &st);
        s->dc = xcalloc(s->P, sizeof(float), &st);
        s->c_pulled = xcalloc(s->P, sizeof(float), &st);
        FM_TRY(st);
    }
    fm_strategy_config sc = o->strategy;
    sc.device = s->device; /* the server rule runs where the model does (kernels/aggregate.cu on cuda) */
    if (sc.kind == FM_STRATEGY_SCAFFOLD && sc.scaffold_num_sites == 0)
        sc.scaffold_num_sites = s->N;
    return fm_strategy_create(&s->strategy, &sc, s->P, s->blocks, s->nb, s->global);
}

static void sim_free(sim *s)
{
    fm_strategy_destroy(s->strategy);
    fm_site_trainer_destroy(s->trainer);
    fm_dataset_destroy(s->test);
    if (s->sites)
        fm_site_data_free(s->sites, s->N);
    free(s->blocks);
    free(s->trained);
    free(s->global);
    free(s->ema);
    free(s->local);
    free(s->delta);
    free(s->pulled);
    free(s->site_state);
    free(s->ci_new);
    free(s->dc);
    free(s->c_pulled);
}

/* ---- one site's local training ------------------------------------------------------------------ */

/* Trains site k from the vector `start` (host) for local_steps; the result is left in s->local. */
static fm_status train_site(sim *s, int k, int round, const float *start, double *mean_loss)
{
    const fm_sim_options *o = s->o;
    const float *ck = s->site_state && !o->local_only ? s->site_state + (size_t)k * s->P : NULL;
    fm_local_task task = {.site = k,
                          .round = round,
                          .seed = o->seed,
                          .local_steps = o->local_steps,
                          .opt = &o->local,
                          .strategy = o->local_only ? NULL : &o->strategy,
                          .blocks = s->blocks,
                          .n_blocks = s->nb,
                          .c_global = o->local_only ? NULL : s->c_pulled,
                          .c_local = ck,
                          /* SCAFFOLD: the mean raw gradient, ck⁺ (fm_scaffold_site_update) */
                          .grad_mean_out = ck ? s->ci_new : NULL};
    return fm_site_train(s->trainer, &s->sites[k], &task, start, s->local, mean_loss);
}

/* ---- checkpoints -------------------------------------------------------------------------------- */

static fm_status remove_round_dir(const char *out, int round)
{
    char dir[4096], f[4200];
    snprintf(dir, sizeof dir, "%s/round-%d", out, round);
    static const char *files[] = {"server.safetensors", "sim.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(f, sizeof f, "%s/%s", dir, files[i]);
        unlink(f);
    }
    rmdir(dir);
    return FM_OK;
}

/* DIR/round-R/{server,sim}.safetensors, then DIR/latest → round-R by an atomic rename of a symlink: a crash
 * at any point leaves DIR/latest naming a complete round. */
static fm_status save_checkpoint(sim *s)
{
    const char *out = s->o->out_dir;
    char dir[4096], path[4200], link_tmp[4200], link_path[4200], target[64];
    snprintf(dir, sizeof dir, "%s/round-%d", out, s->round_done);
    if (mkdir(dir, 0775) != 0 && errno != EEXIST)
        return fm_error(FM_ERR_IO, "checkpoint: mkdir %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/server.safetensors", dir);
    FM_TRY(fm_strategy_save(s->strategy, path));
    fm_st_writer *w = NULL;
    FM_TRY(fm_st_writer_create(&w));
    char num[64];
    fm_status st = FM_OK;
    snprintf(num, sizeof num, "%d", s->round_done);
    st = fm_st_writer_set_metadata(w, "rounds_done", num);
    snprintf(num, sizeof num, "%.17g", s->bytes_up);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "bytes_up", num);
    snprintf(num, sizeof num, "%.17g", s->bytes_down);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "bytes_down", num);
    snprintf(num, sizeof num, "%.17g", s->wall_before);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "wall_s", num);
    int64_t shape[2] = {s->N, (int64_t)s->P};
    if (st == FM_OK && s->site_state)
        st = fm_st_writer_add_f32(w, "site_state", FM_ST_F32, 2, shape, s->site_state);
    if (st == FM_OK && s->ema)
        st = fm_st_writer_add_f32(w, "global_ema", FM_ST_F32, 1, shape + 1, s->ema);
    snprintf(path, sizeof path, "%s/sim.safetensors", dir);
    if (st == FM_OK)
        st = fm_st_write(w, path);
    fm_st_writer_free(w);
    FM_TRY(st);
    snprintf(target, sizeof target, "round-%d", s->round_done);
    snprintf(link_tmp, sizeof link_tmp, "%s/latest.tmp", out);
    snprintf(link_path, sizeof link_path, "%s/latest", out);
    unlink(link_tmp);
    if (symlink(target, link_tmp) != 0 || rename(link_tmp, link_path) != 0)
        return fm_error(FM_ERR_IO, "checkpoint: linking %s: %s", link_path, strerror(errno));
    if (s->round_done > 1)
        remove_round_dir(out, s->round_done - 1);
    return FM_OK;
}

static fm_status load_checkpoint(sim *s, int *found)
{
    char link_path[4200], target[256], path[4600];
    snprintf(link_path, sizeof link_path, "%s/latest", s->o->out_dir);
    ssize_t n = readlink(link_path, target, sizeof target - 1);
    *found = 0;
    if (n < 0)
        return FM_OK;
    target[n] = '\0';
    *found = 1;
    snprintf(path, sizeof path, "%s/%s/sim.safetensors", s->o->out_dir, target);
    fm_st_file *f = NULL;
    FM_TRY(fm_st_open(&f, path));
    const char *rd = fm_st_metadata(f, "rounds_done"), *bu = fm_st_metadata(f, "bytes_up"),
               *bd = fm_st_metadata(f, "bytes_down"), *ws = fm_st_metadata(f, "wall_s");
    fm_status st = FM_OK;
    if (!rd || !bu || !bd || !ws)
        st = fm_error(FM_ERR_PARSE, "%s: missing run metadata", path);
    if (st == FM_OK && s->site_state) {
        int64_t shape[2] = {s->N, (int64_t)s->P};
        st = fm_st_read_f32(f, "site_state", s->site_state, (size_t)s->N * s->P, 2, shape);
    }
    const int has_ema = fm_st_find(f, "global_ema") != NULL;
    if (st == FM_OK && has_ema != (s->ema != NULL))
        st = fm_error(FM_ERR_CONFIG,
                      "%s %s of the global model (fl.ema_decay) but this run %s one: resume with the setting the "
                      "run started with",
                      path, has_ema ? "holds a moving average" : "has no moving average",
                      s->ema ? "keeps" : "does not keep");
    if (st == FM_OK && s->ema) {
        int64_t shape[1] = {(int64_t)s->P};
        st = fm_st_read_f32(f, "global_ema", s->ema, s->P, 1, shape);
        for (size_t i = 0; st == FM_OK && i < s->P; i++)
            if (!isfinite(s->ema[i]))
                st = fm_error(FM_ERR_NOT_FINITE, "%s: non-finite value in global_ema", path);
    }
    if (st == FM_OK) {
        s->round_done = atoi(rd);
        s->bytes_up = strtod(bu, NULL);
        s->bytes_down = strtod(bd, NULL);
        s->wall_before = strtod(ws, NULL);
    }
    fm_st_close(f);
    FM_TRY(st);
    snprintf(path, sizeof path, "%s/%s/server.safetensors", s->o->out_dir, target);
    FM_TRY(fm_strategy_load(s->strategy, path));
    memcpy(s->global, fm_strategy_global(s->strategy), s->P * sizeof(float));
    if (s->round_done < 0 || s->round_done > s->o->rounds)
        return fm_error(FM_ERR_PARSE, "%s: %d rounds done, but the run has %d", path, s->round_done, s->o->rounds);
    return FM_OK;
}

/* ---- evaluation and logging --------------------------------------------------------------------- */

static fm_status evaluate(sim *s, fm_eval_result *ev)
{
    if (!s->o->local_only) {
        FM_TRY(to_model(s, s->ema ? s->ema : s->global));
        return fm_evaluate(s->model, s->test, s->o->eval_size, ev);
    }
    /* local-only: the mean over the sites' own models */
    fm_eval_result sum;
    memset(&sum, 0, sizeof sum);
    for (int k = 0; k < s->N; k++) {
        fm_eval_result e;
        FM_TRY(to_model(s, s->site_state + (size_t)k * s->P));
        FM_TRY(fm_evaluate(s->model, s->test, s->o->eval_size, &e));
        double *dst = &sum.retrieval.i2t_r1;
        const double *src = &e.retrieval.i2t_r1;
        for (int i = 0; i < 6; i++)
            dst[i] += src[i] / s->N;
        sum.zs_acc += e.zs_acc / s->N;
        for (int a = 0; a < FM_ATTR_COUNT; a++)
            sum.zs_acc_attr[a] += e.zs_acc_attr[a] / s->N;
        sum.loss += e.loss / s->N;
        sum.pairs = e.pairs;
    }
    *ev = sum;
    return FM_OK;
}

static fm_status log_round(sim *s, fm_metrics_log *log, FILE *csv, int round, double train_loss,
                           const fm_eval_result *ev, double wall)
{
    const char *keys[] = {"round",  "loss",    "eval_loss", "i2t_r1", "i2t_r5",   "i2t_r10",    "t2i_r1",
                          "t2i_r5", "t2i_r10", "zs_acc",    "wall_s", "bytes_up", "bytes_down", "pairs"};
    double vals[] = {round,
                     train_loss,
                     ev ? ev->loss : NAN,
                     ev ? ev->retrieval.i2t_r1 : NAN,
                     ev ? ev->retrieval.i2t_r5 : NAN,
                     ev ? ev->retrieval.i2t_r10 : NAN,
                     ev ? ev->retrieval.t2i_r1 : NAN,
                     ev ? ev->retrieval.t2i_r5 : NAN,
                     ev ? ev->retrieval.t2i_r10 : NAN,
                     ev ? ev->zs_acc : NAN,
                     wall,
                     s->bytes_up,
                     s->bytes_down,
                     ev ? (double)ev->pairs : NAN};
    const size_t n = sizeof vals / sizeof vals[0];
    FM_TRY(fm_metrics_write(log, keys, vals, n));
    if (csv && ev)
        FM_TRY(fm_metrics_csv_row(csv, vals, n));
    return FM_OK;
}

/* ---- the run ------------------------------------------------------------------------------------ */

static fm_status run_round(sim *s, int round, double *train_loss)
{
    const fm_sim_options *o = s->o;
    const int local_only = o->local_only;
    int m = local_only ? s->N : o->sites_per_round;
    /* the chosen sites in index order (fm_round_sites), as `fedmm server` samples them */
    int chosen[FM_MAX_SITES_PER_ROUND];
    if (local_only) {
        if (m > FM_MAX_SITES_PER_ROUND)
            return fm_error(FM_ERR_CONFIG, "sim: local-only with more than %d sites", FM_MAX_SITES_PER_ROUND);
        for (int i = 0; i < m; i++)
            chosen[i] = i;
    } else {
        /* over-selection: the draw tasks m + extra sites; the first m in site order are the round's */
        FM_TRY(fm_round_sites(o->seed, round, s->N, m + o->over_select_sites, chosen));
    }
    if (!local_only)
        FM_TRY(fm_strategy_begin_round(s->strategy, round));
    double loss_sum = 0.0;
    const int scaffold = o->strategy.kind == FM_STRATEGY_SCAFFOLD && !local_only;
    /* what every site pulls: the global vector through the network's encoding, and its payload bytes */
    float *pulled = s->pulled ? s->pulled : s->global; /* float32: the global itself, unchanged */
    double down = 0.0, down_c = 0.0;
    if (!local_only) {
        fm_status st = fm_wire_transmit(&o->wire, s->global, pulled, s->blocks, s->nb, NULL, 0, &down);
        /* SCAFFOLD: c follows the global vector, in the same encoding (docs/protocol.md) */
        if (st == FM_OK && scaffold)
            st = fm_wire_transmit(&o->wire, fm_strategy_control(s->strategy), s->c_pulled, s->blocks, s->nb, NULL, 0,
                                  &down_c);
        if (st != FM_OK) {
            fm_strategy_abort_round(s->strategy);
            return st;
        }
    }
    for (int i = 0; i < m; i++) {
        int k = chosen[i];
        const fm_site_data *site = &s->sites[k];
        double loss = 0.0;
        const float *start = local_only ? s->site_state + (size_t)k * s->P : pulled;
        fm_status st = train_site(s, k, round, start, &loss);
        if (st != FM_OK) {
            if (!local_only)
                fm_strategy_abort_round(s->strategy);
            return st;
        }
        loss_sum += loss;
        if (local_only) {
            memcpy(s->site_state + (size_t)k * s->P, s->local, s->P * sizeof(float));
            continue;
        }
        fm_site_trained_blocks(s->model, site->modality, s->trained, NULL);
        /* an attacker (robustness experiments) sends its honest update sign-flipped and scaled */
        const float factor = k < o->malicious_sites ? (float)-o->attack_scale : 1.0f;
        for (size_t j = 0; j < s->P; j++)
            s->delta[j] = factor * (s->local[j] - pulled[j]);
        /* the update as the server receives it (net.encoding), and its payload bytes */
        double up_bytes = 0.0;
        fm_status stw = fm_wire_transmit(&o->wire, s->delta, s->delta, s->blocks, s->nb, s->trained, 0, &up_bytes);
        if (stw != FM_OK) {
            fm_strategy_abort_round(s->strategy);
            return stw;
        }
        double up_c = 0.0;
        if (scaffold) {
            /* from what the site received: the global vector and c as decoded (float32: exactly the server's) */
            float *ck = s->site_state + (size_t)k * s->P;
            /* train_site left the mean gradient in ci_new; a non-finite one is refused and ends the round */
            stw = fm_scaffold_site_update(ck, s->ci_new, s->P, s->ci_new, s->dc);
            if (stw != FM_OK) {
                fm_strategy_abort_round(s->strategy);
                return stw;
            }
            /* A block the site cannot train (a tower whose modality it lacks) moved only by the correction
             * c − ck: its control variate stays as it was and nothing of it is sent. */
            for (size_t b = 0; b < s->nb; b++) {
                if (s->trained[b])
                    continue;
                const fm_strategy_block *blk = &s->blocks[b];
                memcpy(s->ci_new + blk->offset, ck + blk->offset, blk->numel * sizeof(float));
                memset(s->dc + blk->offset, 0, blk->numel * sizeof(float));
            }
            /* Δck as the server receives it; with a lossy encoding the site keeps ck + that (not ck⁺), so that the
             * server's c stays the mean of the sites' ck */
            stw = fm_wire_transmit(&o->wire, s->dc, s->dc, s->blocks, s->nb, s->trained, 0, &up_c);
            if (stw != FM_OK) {
                fm_strategy_abort_round(s->strategy);
                return stw;
            }
            if (o->wire.encoding != FM_WIRE_F32)
                for (size_t b = 0; b < s->nb; b++) {
                    const fm_strategy_block *blk = &s->blocks[b];
                    for (size_t j = blk->offset; s->trained[b] && j < blk->offset + blk->numel; j++)
                        s->ci_new[j] = ck[j] + s->dc[j];
                }
        }
        fm_site_update u = {.n_params = s->P,
                            .delta = s->delta,
                            .weight = (double)site->n,
                            .n_blocks = s->nb,
                            .trained = s->trained,
                            .control_delta = scaffold ? s->dc : NULL};
        fm_status st2 = fm_strategy_add_update(s->strategy, &u);
        if (st2 != FM_OK) {
            fm_strategy_abort_round(s->strategy);
            return st2;
        }
        if (scaffold) /* the site keeps its new control variate only once the server took its update */
            memcpy(s->site_state + (size_t)k * s->P, s->ci_new, s->P * sizeof(float));
        /* down: the global vector (and c); up: the trained blocks of the delta (and of Δc), as encoded */
        s->bytes_down += down + down_c;
        s->bytes_up += up_bytes + up_c;
    }
    if (!local_only)
        FM_TRY(fm_strategy_finish_round(s->strategy, s->global));
    if (s->ema) { /* ema ← β·ema + (1 − β)·global: the FedAvg family's weighted sum */
        const float *x[2] = {s->ema, s->global};
        const float w[2] = {(float)s->o->ema_decay, 1.0f - (float)s->o->ema_decay};
        FM_TRY(fm_agg_weighted_sum(s->ema, x, w, 2, s->P));
    }
    *train_loss = loss_sum / m;
    return FM_OK;
}

fm_status fm_sim_run(fm_clip *model, const fm_synth_config *synth, const fm_tokenizer *tok, const fm_sim_options *o,
                     fm_sim_result *result)
{
    memset(result, 0, sizeof *result);
    sim s;
    fm_metrics_log log;
    memset(&log, 0, sizeof log);
    FILE *csv = NULL;
    double t0 = fm_now_seconds();
    char path[4096];
    fm_status st = sim_init(&s, model, synth, tok, o);
    int found = 0;
    if (st == FM_OK && o->resume)
        st = load_checkpoint(&s, &found);
    if (st == FM_OK && o->resume)
        FM_INFO(found ? "sim: resuming after round %d" : "sim: no checkpoint to resume from (round %d)", s.round_done);
    if (st == FM_OK) {
        const char *mp = o->metrics_path;
        if (!mp) {
            snprintf(path, sizeof path, "%s/metrics.jsonl", o->out_dir);
            mp = path;
        }
        st = fm_metrics_open(&log, mp, found);
    }
    if (st == FM_OK) {
        char csv_path[4200];
        snprintf(csv_path, sizeof csv_path, "%s/summary.csv", o->out_dir);
        csv = fopen(csv_path, found ? "a" : "w");
        if (!csv)
            st = fm_error(FM_ERR_IO, "%s: %s", csv_path, strerror(errno));
        else if (!found)
            fprintf(csv, "round,loss,eval_loss,i2t_r1,i2t_r5,i2t_r10,t2i_r1,t2i_r5,t2i_r10,zs_acc,wall_s,bytes_up,"
                         "bytes_down,pairs\n");
    }
    fm_progress bar;
    if (o->progress)
        fm_progress_begin(&bar, stderr, o->local_only ? "sim (local-only)" : "sim", o->rounds);
    fm_eval_result ev;
    memset(&ev, 0, sizeof ev);
    int have_eval = 0;
    while (st == FM_OK && s.round_done < o->rounds) {
        int round = s.round_done + 1; /* rounds are numbered 1..R */
        double train_loss = 0.0;
        st = run_round(&s, round, &train_loss);
        if (st != FM_OK)
            break;
        s.round_done = round;
        int do_eval = round == o->rounds || (o->eval_every > 0 && round % o->eval_every == 0 && !o->local_only);
        if (do_eval) {
            st = evaluate(&s, &ev);
            have_eval = st == FM_OK;
        }
        double wall = s.wall_before + (fm_now_seconds() - t0);
        if (st == FM_OK)
            st = log_round(&s, &log, csv, round, train_loss, do_eval ? &ev : NULL, wall);
        if (st == FM_OK) {
            double keep = s.wall_before;
            s.wall_before = wall;
            st = save_checkpoint(&s);
            s.wall_before = keep;
        }
        if (st == FM_OK && o->progress) {
            if (have_eval)
                fm_progress_update(&bar, round, "round %d loss %.3f | i2t R@1 %.3f t2i R@1 %.3f zs %.3f", round,
                                   train_loss, ev.retrieval.i2t_r1, ev.retrieval.t2i_r1, ev.zs_acc);
            else
                fm_progress_update(&bar, round, "round %d loss %.3f", round, train_loss);
        }
    }
    if (o->progress)
        fm_progress_end(&bar);
    if (st == FM_OK && !have_eval)
        st = evaluate(&s, &ev);        /* a resumed run that had nothing left to do */
    if (st == FM_OK && !o->local_only) /* the run's model: the average when it keeps one */
        st = to_model(&s, s.ema ? s.ema : s.global);
    result->rounds_done = s.round_done;
    result->last_eval = ev;
    result->bytes_up = s.bytes_up;
    result->bytes_down = s.bytes_down;
    result->wall_s = s.wall_before + (fm_now_seconds() - t0);
    if (csv)
        fclose(csv);
    fm_metrics_close(&log);
    sim_free(&s);
    return st;
}
