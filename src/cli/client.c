/* `fedmm client`: one site of a networked federation. It computes its own share of the data from the shared
 * config (fm_federation_split is deterministic), joins the server, and whenever the server tasks it with a
 * round: pulls the global adapters, trains exactly as `fedmm sim` trains that site, and pushes the update. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/creamfl.h"
#include "cli/fl_config.h"
#include "cli/site_link.h"
#include "fedmm/log.h"

#ifdef FEDMM_WITH_GRPC
#include <math.h>

#include "fedmm/safetensors.h"
#include "fedmm/site_train.h"
#include "net/net.h"
#endif

#ifndef FEDMM_WITH_GRPC
int fm_cli_client(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "fedmm client: this build has no gRPC control plane (configure with -DFEDMM_WITH_GRPC=ON)\n");
    return 1;
}
#else

static void usage(void)
{
    printf("usage: fedmm client --config FILE --site N --server HOST:PORT [--token TOKEN] [--set key=value ...]\n"
           "                    [--out DIR] [--device auto|cpu|cuda] [--threads N]\n"
           "\n"
           "Runs site N (0 .. fl.sites-1) of the federation the config describes: joins the server, and for every\n"
           "round that samples this site pulls the global adapters, trains fl.local_steps steps on the site's own\n"
           "split and pushes the update. The bearer token is --token, else $FEDMM_TOKEN, else derived from\n"
           "$FEDMM_SECRET. Exits 0 when the server says the federation is over. TLS: net.tls_ca (the server's CA)\n"
           "and, for mutual TLS, net.tls_cert + net.tls_key (this site's certificate) (docs/protocol.md).\n"
           "An unreachable server (down, restarting with --resume) is retried with back-off for net.reconnect_s\n"
           "seconds (default 120); the site then re-joins and carries on from the server's round.\n"
           "With fl.strategy scaffold the site keeps its control variate c_i in DIR/site-N-scaffold.safetensors\n"
           "(--out, else the config's `out`), so that a restarted site carries on with it.\n");
}

typedef struct client {
    fm_cli_run *run;
    const fm_sim_options *o;
    int site;
    fm_site_link link; /* the connection to the server, Join with back-off, the task / heartbeat loop */
    fm_clip *model;
    fm_strategy_block *blocks;
    size_t nb;
    fm_site_data *sites;
    fm_site_trainer *trainer;
    float *global, *local, *delta;
    uint8_t *trained;
    fm_wire_push_header *header;
    int64_t cached_round; /* the round whose update delta and header hold (0: none) */
    char cached_run[FM_WIRE_RUN_ID_MAX + 1];
    /* SCAFFOLD (fl.strategy scaffold): this site's control variate c_i, kept in state_path (under --out) so that a
     * restarted site keeps it. A push carries Δc_i; the site keeps c_i + Δc_i (ci_new) only once the server says
     * that a finished round aggregated that push (Task.aggregated_round), and drops it when the push's round
     * closed without it: the server's c stays the mean of the sites' c_i whatever fails in between. */
    int scaffold;
    float *c_global;                     /* (P) the server's c, pulled with the global vector */
    float *ci, *ci_new, *dc;             /* (P) c_i; c_i after the pending push; Δc_i of the cached update */
    float *dc_sent;                      /* (P) Δc_i as the server decodes it (net.encoding) */
    int64_t pending_round;               /* the round whose push ci_new belongs to (0: none) */
    char ci_run[FM_WIRE_RUN_ID_MAX + 1]; /* the run c_i belongs to ("" before the first Task) */
    char state_path[4200];
} client;

/* ---- SCAFFOLD: the site's control variate, on file ----------------------------------------------------- */

#define SCAFFOLD_FORMAT "fedmm.scaffold_site"

/* Writes c_i (and the pending c_i of a push not yet known aggregated) to state_path, atomically. */
static fm_status scaffold_save(client *c)
{
    const size_t P = fm_clip_num_trainable(c->model);
    const int64_t shape[1] = {(int64_t)P};
    char num[32];
    fm_st_writer *w = NULL;
    FM_TRY(fm_st_writer_create(&w));
    fm_status st = fm_st_writer_set_metadata(w, "format", SCAFFOLD_FORMAT);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "version", "1");
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "run_id", c->ci_run);
    snprintf(num, sizeof num, "%d", c->site);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "site", num);
    snprintf(num, sizeof num, "%lld", (long long)c->pending_round);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "pending_round", num);
    if (st == FM_OK)
        st = fm_st_writer_add_f32(w, "control", FM_ST_F32, 1, shape, c->ci);
    if (st == FM_OK && c->pending_round > 0)
        st = fm_st_writer_add_f32(w, "pending", FM_ST_F32, 1, shape, c->ci_new);
    if (st == FM_OK)
        st = fm_st_write(w, c->state_path);
    fm_st_writer_free(w);
    return st;
}

/* Reads state_path if it exists (c_i stays 0 and ci_run "" otherwise); a file that is not this site's control
 * variate, or not of this model, is an error rather than something to overwrite. */
static fm_status scaffold_load(client *c)
{
    if (access(c->state_path, F_OK) != 0)
        return FM_OK;
    const size_t P = fm_clip_num_trainable(c->model);
    const int64_t shape[1] = {(int64_t)P};
    fm_st_file *f = NULL;
    FM_TRY(fm_st_open(&f, c->state_path));
    const char *format = fm_st_metadata(f, "format"), *run = fm_st_metadata(f, "run_id"),
               *site = fm_st_metadata(f, "site"), *pending = fm_st_metadata(f, "pending_round");
    char *end = NULL;
    const long long pr = pending ? strtoll(pending, &end, 10) : -1;
    fm_status st = FM_OK;
    if (!format || strcmp(format, SCAFFOLD_FORMAT) != 0 || !run || strlen(run) > FM_WIRE_RUN_ID_MAX || !site ||
        atoi(site) != c->site || !pending || *end != '\0' || pr < 0)
        st = fm_error(FM_ERR_PARSE, "%s is not site %d's SCAFFOLD state (format, run_id, site, pending_round)",
                      c->state_path, c->site);
    if (st == FM_OK)
        st = fm_st_read_f32(f, "control", c->ci, P, 1, shape);
    if (st == FM_OK && pr > 0)
        st = fm_st_read_f32(f, "pending", c->ci_new, P, 1, shape);
    for (size_t i = 0; st == FM_OK && i < P; i++)
        if (!isfinite(c->ci[i]) || (pr > 0 && !isfinite(c->ci_new[i])))
            st = fm_error(FM_ERR_NOT_FINITE, "%s: a control variate value is not finite", c->state_path);
    if (st == FM_OK) {
        snprintf(c->ci_run, sizeof c->ci_run, "%s", run);
        c->pending_round = pr;
    }
    fm_st_close(f);
    if (st != FM_OK) {
        char why[600];
        snprintf(why, sizeof why, "%s", fm_last_error());
        memset(c->ci, 0, P * sizeof(float));
        return fm_error(st, "site %d: %s (remove the file to start this site's control variate from zero)", c->site,
                        why);
    }
    return FM_OK;
}

/* After every answer of the server: adopts the run (a c_i of another run starts over from zero), then keeps or
 * drops the pending c_i as Task.aggregated_round says. */
static fm_status scaffold_sync(client *c, const fm_wire_task *task)
{
    const size_t P = fm_clip_num_trainable(c->model);
    int changed = 0;
    if (strcmp(c->ci_run, task->run_id) != 0) {
        if (c->ci_run[0])
            FM_WARN("site %d: %s holds the control variate of run %s, not of this run %s: it starts from zero", c->site,
                    c->state_path, c->ci_run, task->run_id);
        if (task->aggregated_round > 0)
            FM_WARN("site %d: SCAFFOLD: this site's control variate c_i of run %s is lost (%s holds none of this "
                    "run; the server aggregated its update of round %lld): it starts again from zero, so the server's "
                    "c no longer equals the mean of the sites' c_i and the run no longer equals fedmm sim's",
                    c->site, task->run_id, c->state_path, (long long)task->aggregated_round);
        memset(c->ci, 0, P * sizeof(float));
        c->pending_round = 0;
        snprintf(c->ci_run, sizeof c->ci_run, "%s", task->run_id);
        changed = 1;
    }
    if (c->pending_round > 0 && task->aggregated_round >= c->pending_round) {
        memcpy(c->ci, c->ci_new, P * sizeof(float));
        FM_INFO("site %d: round %lld aggregated: SCAFFOLD's c_i updated", c->site, (long long)c->pending_round);
        c->pending_round = 0;
        changed = 1;
    } else if (c->pending_round > 0 && (task->round > c->pending_round || task->action == FM_ACTION_DONE)) {
        FM_WARN("site %d: round %lld closed without this site's update: c_i stays as it was", c->site,
                (long long)c->pending_round);
        c->pending_round = 0;
        changed = 1;
    }
    return changed ? scaffold_save(c) : FM_OK;
}

static fm_status scaffold_on_task(void *ctx, const fm_wire_task *task) { return scaffold_sync(ctx, task); }

/* The round's update: pulled, trained and pushed; or, when the server asks again for a round this site already
 * trained (a restarted server lost the push), the same update pushed again. When the update is not pushed because
 * the round closed at its deadline, *task becomes the server's answer (the next task) and *fresh = 1. */
static fm_status train_round(void *ctx, fm_wire_task *task, int *fresh)
{
    client *c = ctx;
    *fresh = 0;
    const fm_sim_options *o = c->o;
    const size_t P = fm_clip_num_trainable(c->model);
    if (task->local_steps != o->local_steps || task->n_params != P || task->rounds != o->rounds)
        return fm_error(FM_ERR_CONFIG,
                        "site %d: the server's run (%s) differs from this config (local_steps %lld, "
                        "%zu parameters, %d rounds)",
                        c->site, task->config, (long long)o->local_steps, P, o->rounds);
    fm_wire_push_header *h = c->header;
    if (c->cached_round == task->round && strcmp(c->cached_run, task->run_id) == 0) {
        FM_WARN("site %d: the server asks for round %lld again: pushing the update trained for it once more", c->site,
                (long long)task->round);
    } else {
        const fm_wire_ref r = fm_site_link_ref(&c->link, task);
        FM_TRY(fm_net_pull_control(c->link.net, &r, c->global, c->scaffold ? c->c_global : NULL, c->blocks, c->nb));
        if (task->deadline_unix_ms > 0)
            FM_INFO("site %d: round %lld: training; the round's deadline is in %.1f s", c->site, (long long)task->round,
                    (double)(task->deadline_unix_ms - fm_site_link_unix_ms()) / 1000.0);
        else
            FM_INFO("site %d: round %lld: training", c->site, (long long)task->round);
        const fm_site_data *site = &c->sites[c->site];
        fm_local_task lt = {.site = c->site,
                            .round = (int)task->round,
                            .seed = o->seed,
                            .local_steps = o->local_steps,
                            .opt = &o->local,
                            .strategy = &o->strategy,
                            .blocks = c->blocks,
                            .n_blocks = c->nb,
                            .c_global = c->scaffold ? c->c_global : NULL,
                            .c_local = c->scaffold ? c->ci : NULL,
                            /* SCAFFOLD's c_i⁺, the mean raw gradient; no push is pending here (scaffold_sync settled
                             * it when this round's task came) */
                            .grad_mean_out = c->scaffold ? c->ci_new : NULL};
        double loss = 0.0;
        FM_TRY(fm_site_train(c->trainer, site, &lt, c->global, c->local, &loss));
        /* an attacker site (fl.malicious_sites, robustness experiments) sends its update sign-flipped, scaled */
        const float factor = c->site < o->malicious_sites ? (float)-o->attack_scale : 1.0f;
        for (size_t j = 0; j < P; j++)
            c->delta[j] = factor * (c->local[j] - c->global[j]);
        if (c->scaffold) { /* c_i⁺ and Δc_i as `fedmm sim` computes them; c_i⁺ is kept once the push is aggregated */
            FM_TRY(fm_scaffold_site_update(c->ci, c->ci_new, P, c->ci_new, c->dc));
            /* a block the site cannot train keeps its c_i, and nothing of it is sent */
            for (size_t b = 0; b < c->nb; b++) {
                if (c->trained[b])
                    continue;
                memcpy(c->ci_new + c->blocks[b].offset, c->ci + c->blocks[b].offset,
                       c->blocks[b].numel * sizeof(float));
                memset(c->dc + c->blocks[b].offset, 0, c->blocks[b].numel * sizeof(float));
            }
            if (o->wire.encoding != FM_WIRE_F32) { /* lossy: keep c_i + Δc_i as the server will add it (as sim) */
                memcpy(c->dc_sent, c->dc, P * sizeof(float));
                FM_TRY(fm_wire_transmit(&o->wire, c->dc_sent, c->dc_sent, c->blocks, c->nb, c->trained, 0, NULL));
                for (size_t b = 0; b < c->nb; b++)
                    for (size_t j = c->blocks[b].offset; c->trained[b] && j < c->blocks[b].offset + c->blocks[b].numel;
                         j++)
                        c->ci_new[j] = c->ci[j] + c->dc_sent[j];
            }
            c->pending_round = task->round; /* on file before the push: a site killed after it can still keep it */
            FM_TRY(scaffold_save(c));
        }
        memset(h, 0, sizeof *h);
        snprintf(h->run_id, sizeof h->run_id, "%s", task->run_id);
        h->round = task->round;
        h->site = c->site;
        h->n_samples = site->n;
        h->loss = loss;
        h->n_params = P;
        h->n_blocks = c->nb;
        memcpy(h->trained, c->trained, c->nb);
        c->cached_round = task->round;
        snprintf(c->cached_run, sizeof c->cached_run, "%s", task->run_id);
    }
    FM_TRY(fm_site_link_still_wanted(&c->link, task, "the update is not pushed", fresh));
    if (*fresh)
        return FM_OK;
    fm_wire_reply reply;
    FM_TRY(fm_net_push_control(c->link.net, h, c->delta, c->scaffold ? c->dc : NULL, c->blocks, 0, &reply));
    FM_INFO("site %d: round %lld pushed, local loss %.4f", c->site, (long long)task->round, h->loss);
    return FM_OK;
}

static fm_status run_site(client *c, const char *token, const char *target, const fm_net_tls *tls, double reconnect_s)
{
    const fm_cli_run *run = c->run;
    const fm_sim_options *o = c->o;
    if (c->site < 0 || c->site >= o->scenario.num_sites)
        return fm_error(FM_ERR_CONFIG, "--site %d is not in [0, %d) (fl.sites)", c->site, o->scenario.num_sites);
    FM_TRY(fm_clip_create(&c->model, &run->model, run->device, run->seed));
    const size_t P = fm_clip_num_trainable(c->model);
    FM_TRY(fm_clip_strategy_blocks(c->model, &c->blocks, &c->nb));
    if (c->nb > FM_WIRE_MAX_BLOCKS)
        return fm_error(FM_ERR_CONFIG, "the model has %zu blocks, the wire allows %d", c->nb, FM_WIRE_MAX_BLOCKS);
    FM_TRY(fm_federation_split(&o->scenario, &run->synth, &c->sites));
    FM_TRY(fm_site_trainer_create(&c->trainer, c->model, &run->synth, run->tok, o->label_attr, o->local.batch_size));
    c->global = calloc(P ? P : 1, sizeof(float));
    c->local = calloc(P ? P : 1, sizeof(float));
    c->delta = calloc(P ? P : 1, sizeof(float));
    c->trained = calloc(c->nb ? c->nb : 1, 1);
    c->header = calloc(1, sizeof *c->header);
    if (!c->global || !c->local || !c->delta || !c->trained || !c->header)
        return fm_error(FM_ERR_NO_MEMORY, "client: out of memory");
    const fm_site_data *site = &c->sites[c->site];
    fm_site_trained_blocks(c->model, site->modality, c->trained, NULL);
    c->scaffold = o->strategy.kind == FM_STRATEGY_SCAFFOLD;
    if (c->scaffold) { /* c_i lives in --out (the config's `out`), one file per site */
        c->c_global = calloc(P ? P : 1, sizeof(float));
        c->ci = calloc(P ? P : 1, sizeof(float));
        c->ci_new = calloc(P ? P : 1, sizeof(float));
        c->dc = calloc(P ? P : 1, sizeof(float));
        c->dc_sent = calloc(P ? P : 1, sizeof(float));
        if (!c->c_global || !c->ci || !c->ci_new || !c->dc || !c->dc_sent)
            return fm_error(FM_ERR_NO_MEMORY, "client: out of memory");
        FM_TRY(fm_cli_mkdirs(o->out_dir));
        snprintf(c->state_path, sizeof c->state_path, "%s/site-%d-scaffold.safetensors", o->out_dir, c->site);
        FM_TRY(scaffold_load(c));
        if (c->ci_run[0])
            FM_INFO("site %d: SCAFFOLD: control variate of run %s read from %s%s", c->site, c->ci_run, c->state_path,
                    c->pending_round > 0 ? " (with the pending push's)" : "");
    }
    const fm_site_link_options lo = {.site = c->site,
                                     .reconnect_s = reconnect_s,
                                     .target = target,
                                     .token = token,
                                     .tls = tls,
                                     .modality = site->modality,
                                     .model_family = run->model.name,
                                     .n_params = P,
                                     .n_blocks = (uint32_t)c->nb,
                                     .device = run->device,
                                     .run_kind = "run",
                                     .samples = site->n};
    FM_TRY(fm_site_link_open(&c->link, &lo));
    FM_TRY(fm_net_client_set_codec(c->link.net, &c->o->wire)); /* net.encoding / net.compress of pushes */
    const fm_site_link_hooks hooks = {.on_task = c->scaffold ? scaffold_on_task : NULL, .train = train_round, .ctx = c};
    return fm_site_link_run(&c->link, &hooks);
}

int fm_cli_client(int argc, char **argv)
{
    int bad = 0;
    const char *target = fm_cli_take_flag(&argc, argv, "server", &bad);
    const char *site_s = fm_cli_take_flag(&argc, argv, "site", &bad);
    const char *token_arg = fm_cli_take_flag(&argc, argv, "token", &bad);
    if (bad) {
        fprintf(stderr, "fedmm client: options --server, --site and --token need a value\n");
        return 2;
    }
    fm_cli_args args;
    int rc = fm_cli_parse(argc, argv, "config set out device threads", &args);
    if (rc)
        return rc;
    if (args.help) {
        usage();
        return 0;
    }
    if (!args.config_path || !target || !site_s) {
        fprintf(stderr, "fedmm client: --config FILE, --site N and --server HOST:PORT are required\n");
        return 2;
    }
    char *end = NULL;
    long site = strtol(site_s, &end, 10);
    if (*site_s == '\0' || *end != '\0' || site < 0 || site > 1000000) {
        fprintf(stderr, "fedmm client: --site '%s': expected a site index\n", site_s);
        return 2;
    }
    fm_cli_run run;
    rc = fm_cli_setup(&args, &run);
    if (rc) {
        fm_cli_teardown(&run);
        return rc;
    }
    int creamfl = 0; /* fl.algorithm: creamfl runs representation FL (src/cli/creamfl_net.c) */
    fm_status s = fm_cli_read_algorithm(&run, &creamfl);
    if (s != FM_OK || creamfl) {
        rc = s != FM_OK ? fm_cli_fail("client", "config", s)
                        : fm_cli_creamfl_client(&args, &run, target, (int)site, token_arg);
        fm_cli_teardown(&run);
        return rc;
    }
    fm_sim_options o;
    fm_cli_net_options no;
    s = fm_cli_read_federation(&run, &args, &o, &no);
    const fm_net_tls tls = fm_site_link_tls(&no);
    if (s == FM_OK)
        s = fm_net_tls_check(&tls, 0);
    if (s == FM_OK && o.local_only)
        s = fm_error(FM_ERR_CONFIG, "fl.strategy local (the local-only baseline) has no server: run it with fedmm sim");
    if (s != FM_OK) {
        rc = fm_cli_fail("client", "config", s);
        fm_cli_teardown(&run);
        return rc;
    }
    char derived[65];
    const char *token = NULL;
    s = fm_site_link_token(token_arg, (int)site, derived, &token);
    client c;
    memset(&c, 0, sizeof c);
    c.run = &run;
    c.o = &o;
    c.site = (int)site;
    if (s == FM_OK)
        s = run_site(&c, token, target, &tls, no.reconnect_s);
    rc = s == FM_OK ? 0 : fm_cli_fail("client", "run", s);
    fm_site_link_close(&c.link);
    fm_site_trainer_destroy(c.trainer);
    if (c.sites)
        fm_site_data_free(c.sites, o.scenario.num_sites);
    free(c.blocks);
    free(c.global);
    free(c.local);
    free(c.delta);
    free(c.trained);
    free(c.header);
    free(c.c_global);
    free(c.ci);
    free(c.ci_new);
    free(c.dc);
    free(c.dc_sent);
    fm_clip_destroy(c.model);
    fm_cli_teardown(&run);
    return rc;
}
#endif
