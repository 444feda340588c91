/* `fedmm server`: the aggregator of a networked federation. It runs the same rounds as `fedmm sim` with the
 * same config (same site draws, same strategy, updates added in site order), but the sites are `fedmm client`
 * processes that reach it over gRPC. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/creamfl.h"
#include "cli/fl_config.h"
#include "fedmm/log.h"

#ifdef FEDMM_WITH_GRPC
#include <sodium.h>

#include "fedmm/device.h"
#include "fedmm/metrics.h"
#include "fedmm/site_train.h"
#include "net/net.h"
#endif

#ifndef FEDMM_WITH_GRPC
int fm_cli_server(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "fedmm server: this build has no gRPC control plane (configure with -DFEDMM_WITH_GRPC=ON)\n");
    return 1;
}
#else

static void usage(void)
{
    printf("usage: fedmm server --config FILE --listen HOST:PORT [--set key=value ...] [--out DIR] [--metrics FILE]\n"
           "                    [--resume] [--device auto|cpu|cuda] [--threads N]\n"
           "\n"
           "Runs the federation of the config's fl.* keys with the sites as separate `fedmm client` processes:\n"
           "each round samples fl.sites_per_round of fl.sites sites exactly as `fedmm sim` does, streams the\n"
           "global adapters to them, and aggregates their pushed updates in site order, so the final model equals\n"
           "`fedmm sim`'s. Port 0 picks a free port (printed as 'listening on port N'). Site k authenticates with\n"
           "its bearer token, keyed BLAKE2b of $FEDMM_SECRET and k (fedmm client derives it from the same\n"
           "variable, or takes --token). Writes DIR/adapters.safetensors, DIR/model.safetensors and\n"
           "DIR/metrics.jsonl; exits 0 once the last round is aggregated and every site was told so.\n"
           "TLS: net.tls_cert + net.tls_key (PEM) serve over TLS; net.mtls: true with net.tls_ca also requires\n"
           "client certificates signed by that CA. net.round_timeout_s (0 = none) closes a round at its deadline\n"
           "with the sites that pushed, if at least fl.min_sites did; fl.over_select tasks extra sites and closes\n"
           "a round once fl.sites_per_round pushed. After every round the state is written to DIR (atomically);\n"
           "--resume continues a killed server's run from it, with the same run id, so running clients carry on\n"
           "(docs/protocol.md, \"Faults\"). Calls are served concurrently: one that makes no progress for\n"
           "net.call_timeout_s (default 60) is cancelled; beyond net.max_calls (default 256) calls are refused as\n"
           "busy and the sites retry.\n");
}

typedef struct server_ctx {
    fm_metrics_log log;
    const char *metrics_path;
    double t0;
    fm_net_traffic traffic;    /* tensor payload bytes sent and accepted by this process (rpc.c counts them) */
    double base_up, base_down; /* a resumed run's bytes before the restart (its state's last round) */
} server_ctx;

static void on_listen(void *ctx, int port)
{
    (void)ctx;
    printf("fedmm server: listening on port %d\n", port);
    fflush(stdout);
}

/* bytes_up / bytes_down: payload bytes of the run so far, as `fedmm sim` writes them */
static fm_status write_metrics(server_ctx *sc, const fm_fedsrv_round_log *r)
{
    const char *keys[] = {"round", "loss", "sites", "wall_s", "bytes_up", "bytes_down"};
    double vals[] = {r->round, r->loss, r->sites, r->wall_s, r->bytes_up, r->bytes_down};
    return fm_metrics_write(&sc->log, keys, vals, 6);
}

static void on_round(void *ctx, fm_fedsrv_round_log *r, const float *global)
{
    (void)global;
    server_ctx *sc = ctx;
    /* this process's count, after the count the resumed state carried */
    r->bytes_up = sc->base_up + sc->traffic.bytes_up;
    r->bytes_down = sc->base_down + sc->traffic.bytes_down;
    if (write_metrics(sc, r) != FM_OK)
        FM_WARN("server: metrics: %s", fm_last_error());
    FM_INFO("server: round %d aggregated (%d sites), mean site loss %.4f", r->round, r->sites, r->loss);
}

/* The metrics file starts over with the rounds already finished (a resumed run's, from its state): a round
 * that a killed server logged but did not save is run again and logged once. */
static fm_status open_metrics(server_ctx *sc, const fm_fedsrv *srv)
{
    FM_TRY(fm_metrics_open(&sc->log, sc->metrics_path, 0));
    int n = 0;
    const fm_fedsrv_round_log *h = fm_fedsrv_history(srv, &n);
    for (int i = 0; i < n; i++)
        FM_TRY(write_metrics(sc, &h[i]));
    if (n > 0) {
        sc->base_up = h[n - 1].bytes_up;
        sc->base_down = h[n - 1].bytes_down;
    }
    return FM_OK;
}

typedef struct server_state {
    fm_clip *model;
    fm_strategy_block *blocks;
    size_t nb;
    fm_site_data *sites;
    int N;
    int64_t *samples;
    uint8_t *trained;
    char (*tokens)[65];
    const char **token_ptrs;
    float *global;
    fm_strategy *strategy;
    fm_fedsrv *srv;
} server_state;

static void state_free(server_state *s)
{
    fm_fedsrv_destroy(s->srv);
    fm_strategy_destroy(s->strategy);
    if (s->sites)
        fm_site_data_free(s->sites, s->N);
    free(s->blocks);
    free(s->samples);
    free(s->trained);
    free(s->tokens);
    free(s->token_ptrs);
    free(s->global);
    fm_clip_destroy(s->model);
}

static fm_status serve(fm_cli_run *run, const fm_sim_options *o, const fm_cli_net_options *no, const char *listen,
                       const fm_net_tls *tls, int resume, server_ctx *sc)
{
    server_state s;
    memset(&s, 0, sizeof s);
    fm_status st = fm_clip_create(&s.model, &run->model, run->device, run->seed);
    const size_t P = st == FM_OK ? fm_clip_num_trainable(s.model) : 0;
    s.N = o->scenario.num_sites;
    if (st == FM_OK)
        st = fm_clip_strategy_blocks(s.model, &s.blocks, &s.nb);
    if (st == FM_OK)
        st = fm_federation_split(&o->scenario, &run->synth, &s.sites);
    if (st == FM_OK) {
        s.samples = calloc((size_t)s.N, sizeof *s.samples);
        s.trained = calloc((size_t)s.N * (s.nb ? s.nb : 1), 1);
        s.tokens = calloc((size_t)s.N, sizeof *s.tokens);
        s.token_ptrs = calloc((size_t)s.N, sizeof *s.token_ptrs);
        s.global = calloc(P ? P : 1, sizeof(float));
        if (!s.samples || !s.trained || !s.tokens || !s.token_ptrs || !s.global)
            st = fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    }
    const char *secret = st == FM_OK ? fm_cli_net_secret() : NULL;
    for (int k = 0; st == FM_OK && k < s.N; k++) {
        s.samples[k] = s.sites[k].n;
        fm_site_trained_blocks(s.model, s.sites[k].modality, s.trained + (size_t)k * s.nb, NULL);
        st = fm_net_site_token(secret, k, s.tokens[k]);
        s.token_ptrs[k] = s.tokens[k];
    }
    if (st == FM_OK)
        st = fm_device_copy(s.global, FM_DEVICE_CPU, fm_clip_trainable(s.model), run->device, P * sizeof(float));
    if (st == FM_OK) {
        fm_strategy_config rule = o->strategy;
        rule.device = run->device; /* the server rule runs where the model does (kernels/aggregate.cu on cuda) */
        if (rule.kind == FM_STRATEGY_SCAFFOLD && rule.scaffold_num_sites == 0)
            rule.scaffold_num_sites = s.N; /* c += Σ Δc_i / N, as `fedmm sim` sets it */
        st = fm_strategy_create(&s.strategy, &rule, P, s.blocks, s.nb, s.global);
    }
    unsigned char rid[8];
    char run_id[17], config_text[200];
    randombytes_buf(rid, sizeof rid);
    sodium_bin2hex(run_id, sizeof run_id, rid, sizeof rid);
    snprintf(config_text, sizeof config_text, "strategy=%s sites=%d per_round=%d tasked=%d rounds=%d local_steps=%lld",
             fm_strategy_name(o->strategy.kind), s.N, o->sites_per_round, o->sites_per_round + o->over_select_sites,
             o->rounds, (long long)o->local_steps);
    const double park_bytes = no->park_memory_mb * 1024.0 * 1024.0;
    /* pushes receiving at once hold a staging vector each: P floats, 2P with SCAFFOLD's Δc_i */
    const double width = o->strategy.kind == FM_STRATEGY_SCAFFOLD ? 2.0 : 1.0;
    const int max_pushes = fm_net_receiving_slots(park_bytes, (double)P * width * sizeof(float));
    if (st == FM_OK) {
        fm_fedsrv_config fc = {.run_id = run_id,
                               .rounds = o->rounds,
                               .num_sites = s.N,
                               .sites_per_round = o->sites_per_round,
                               .seed = o->seed,
                               .local_steps = o->local_steps,
                               .model_family = run->model.name,
                               .n_params = P,
                               .blocks = s.blocks,
                               .n_blocks = s.nb,
                               .site_samples = s.samples,
                               .site_trained = s.trained,
                               .tokens = s.token_ptrs,
                               .strategy = s.strategy,
                               .config_text = config_text,
                               .on_round = on_round,
                               .ctx = sc,
                               .round_timeout_s = no->round_timeout_s,
                               .min_sites = no->min_sites,
                               .sites_tasked = o->sites_per_round + o->over_select_sites,
                               .state_dir = o->out_dir,
                               .park_budget_bytes = park_bytes >= 1e18 ? (size_t)1e18 : (size_t)park_bytes,
                               .resume = resume};
        st = fm_fedsrv_create(&s.srv, &fc);
    }
    if (st == FM_OK)
        st = open_metrics(sc, s.srv);
    if (st == FM_OK && resume)
        FM_WARN("server: resuming run %s after round %d of %d (state in %s)", fm_fedsrv_run_id(s.srv),
                fm_fedsrv_round(s.srv) - 1, o->rounds, o->out_dir);
    if (st == FM_OK) {
        FM_INFO("server: run %s, %s, %d sites, %d per round (%d tasked), %d rounds, %zu trainable parameters",
                fm_fedsrv_run_id(s.srv), run->model.name, s.N, o->sites_per_round,
                o->sites_per_round + o->over_select_sites, o->rounds, P);
        fm_net_server_options so = {.tls = tls,
                                    .listen = listen,
                                    .call_timeout_s = no->call_timeout_s,
                                    .max_calls = no->max_calls,
                                    .max_pushes = max_pushes,
                                    .release_grace_s = no->release_grace_s,
                                    .codec = &no->codec,
                                    .traffic = &sc->traffic,
                                    .on_listen = on_listen,
                                    .ctx = NULL};
        st = fm_net_serve(s.srv, &so);
    }
    if (st == FM_OK && !fm_fedsrv_done(s.srv))
        st = fm_error(FM_ERR_STATE, "server: stopped after %d of %d rounds", fm_fedsrv_round(s.srv) - 1, o->rounds);
    /* the final global model, saved as `fedmm sim` saves it */
    char path[4200];
    if (st == FM_OK)
        st = fm_device_copy(fm_clip_trainable(s.model), run->device, fm_strategy_global(s.strategy), FM_DEVICE_CPU,
                            P * sizeof(float));
    snprintf(path, sizeof path, "%s/adapters.safetensors", o->out_dir);
    if (st == FM_OK)
        st = fm_clip_save_adapters(s.model, path);
    if (st == FM_OK && run->model.lora_rank > 0 && !run->model.full_finetune)
        st = fm_clip_merge_lora(s.model);
    snprintf(path, sizeof path, "%s/model.safetensors", o->out_dir);
    if (st == FM_OK)
        st = fm_clip_save(s.model, path);
    if (st == FM_OK)
        printf("server done: %d rounds in %.1f s, run %s, global model in %s\n", o->rounds, fm_now_seconds() - sc->t0,
               fm_fedsrv_run_id(s.srv), o->out_dir);
    state_free(&s);
    return st;
}

int fm_cli_server(int argc, char **argv)
{
    int bad = 0;
    const char *listen = fm_cli_take_flag(&argc, argv, "listen", &bad);
    if (bad) {
        fprintf(stderr, "fedmm server: option '--listen' needs a value\n");
        return 2;
    }
    fm_cli_args args;
    int rc = fm_cli_parse(argc, argv, "config set out metrics device threads resume", &args);
    if (rc)
        return rc;
    if (args.help) {
        usage();
        return 0;
    }
    if (!args.config_path || !listen) {
        fprintf(stderr, "fedmm server: --config FILE and --listen HOST:PORT are required\n");
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
        rc = s != FM_OK ? fm_cli_fail("server", "config", s) : fm_cli_creamfl_server(&args, &run, listen);
        fm_cli_teardown(&run);
        return rc;
    }
    fm_sim_options o;
    fm_cli_net_options no;
    s = fm_cli_read_federation(&run, &args, &o, &no);
    fm_net_tls tls = {
        .ca_path = no.tls_ca, .cert_path = no.tls_cert, .key_path = no.tls_key, .mtls = no.mtls, .server_name = NULL};
    if (s == FM_OK)
        s = fm_net_tls_check(&tls, 1);
    if (s == FM_OK && no.min_sites > o.sites_per_round)
        s = fm_error(FM_ERR_CONFIG, "fl.min_sites %d exceeds fl.sites_per_round %d", no.min_sites, o.sites_per_round);
    if (s == FM_OK && o.local_only) /* no server, no aggregation: nothing to run over a network */
        s = fm_error(FM_ERR_CONFIG, "fl.strategy local (the local-only baseline) has no server: run it with fedmm sim");
    if (s == FM_OK && o.ema_decay > 0.0) /* the server's state and its model are the last global vector */
        s = fm_error(FM_ERR_CONFIG,
                     "fl.ema_decay %g: the moving average of the global model is kept by fedmm sim only; "
                     "fedmm server does not keep one (set it to 0 or leave it out)",
                     o.ema_decay);
    if (s != FM_OK) {
        rc = fm_cli_fail("server", "config", s);
        fm_cli_teardown(&run);
        return rc;
    }
    server_ctx sc;
    memset(&sc, 0, sizeof sc);
    sc.t0 = fm_now_seconds();
    char path[4200];
    s = fm_cli_mkdirs(o.out_dir);
    if (s == FM_OK) {
        snprintf(path, sizeof path, "%s/config.yaml", o.out_dir);
        s = fm_config_dump(run.cfg, path);
    }
    char metrics_path[4200];
    if (o.metrics_path)
        snprintf(metrics_path, sizeof metrics_path, "%s", o.metrics_path);
    else
        snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", o.out_dir);
    sc.metrics_path = metrics_path;
    if (s == FM_OK)
        s = serve(&run, &o, &no, listen, &tls, args.resume, &sc);
    rc = s == FM_OK ? 0 : fm_cli_fail("server", "run", s);
    fm_metrics_close(&sc.log);
    fm_cli_teardown(&run);
    return rc;
}
#endif
