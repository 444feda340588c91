/* `fedmm server` and `fedmm client` with fl.algorithm: creamfl: CreamFL's rounds over the control plane, with the
 * config file `fedmm sim` reads. The server process holds the server model (fm_creamfl_server_*), each client
 * process one site (fm_creamfl_site_*); only representations of the public set travel. The control plane is
 * parameter FL's (fedsrv + rpc.c: tokens, TLS, run ids, rounds, deadlines, concurrency, the saved state) with the
 * vector it moves being [images | texts] of the public set, |P|·d floats each (fedsrv.h, "representation FL"):
 * each round the server Pulls out its representations, a site Pushes its own for the modalities it holds with the
 * values its round measured, and fm_creamfl_srv's hooks (src/net/creamfl_srv.c) run the ensemble, the distillation,
 * the evaluation and the next round's server steps when the round closes (docs/creamfl.md, docs/protocol.md "CreamFL
 * over the network"). This file is the two commands around them: options, tokens, the serving loop, and a site's
 * pull / train / push; its join, task and retry loop is `fedmm client`'s (src/cli/site_link.c). */
#include "cli/creamfl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/log.h"

#ifndef FEDMM_WITH_GRPC
int fm_cli_creamfl_server(const fm_cli_args *args, fm_cli_run *run, const char *listen)
{
    (void)args;
    (void)run;
    (void)listen;
    fprintf(stderr, "fedmm server: this build has no gRPC control plane (configure with -DFEDMM_WITH_GRPC=ON)\n");
    return 1;
}

int fm_cli_creamfl_client(const fm_cli_args *args, fm_cli_run *run, const char *target, int site, const char *token)
{
    (void)args;
    (void)run;
    (void)target;
    (void)site;
    (void)token;
    fprintf(stderr, "fedmm client: this build has no gRPC control plane (configure with -DFEDMM_WITH_GRPC=ON)\n");
    return 1;
}
#else
#include <sodium.h>

#include "cli/site_link.h"
#include "net/creamfl_srv.h"
#include "net/net.h"

/* The vector that travels and what both sides agree on: src/net/creamfl_srv.h. */
enum { BLOCK_IMAGE = FM_CREAMFL_BLOCK_IMAGE, BLOCK_TEXT = FM_CREAMFL_BLOCK_TEXT, N_BLOCKS = FM_CREAMFL_NUM_BLOCKS };

/* The refusals both commands share: what cannot run over the network. */
static fm_status check_net_options(const fm_creamfl_options *o, const fm_cli_net_options *no)
{
    if (o->public_only)
        return fm_error(FM_ERR_UNSUPPORTED, "fl.creamfl.public_only: the public-only baseline has no sites: run it "
                                            "with fedmm sim");
    if (o->eval_sites)
        return fm_error(FM_ERR_UNSUPPORTED, "fl.creamfl.eval_sites: over the network each site's model stays at the "
                                            "site; evaluate the sites with fedmm sim");
    if (no->min_sites > o->sites_per_round)
        return fm_error(FM_ERR_CONFIG, "fl.min_sites %d exceeds fl.sites_per_round %d", no->min_sites,
                        o->sites_per_round);
    if (o->local_steps + o->init_local_steps > FM_WIRE_MAX_STEP_VALUES / 2)
        return fm_error(FM_ERR_CONFIG,
                        "fl.local_steps + fl.creamfl.init_local_steps = %lld: a site reports each step's losses, "
                        "at most %d steps per round over the network",
                        (long long)(o->local_steps + o->init_local_steps), FM_WIRE_MAX_STEP_VALUES / 2);
    return FM_OK;
}

/* ---- the server -------------------------------------------------------------------------------------------- */

static void on_listen(void *ctx, int port)
{
    (void)ctx;
    printf("fedmm server: listening on port %d\n", port);
    fflush(stdout);
}

static fm_status serve(fm_cli_run *run, const fm_creamfl_options *o, const fm_cli_net_options *no, const char *listen,
                       const fm_net_tls *tls, int resume)
{
    const double t0 = fm_now_seconds();
    fm_creamfl *cf = NULL;
    fm_creamfl_srv *cs = NULL;
    FM_TRY(fm_creamfl_server_open(&cf, o, &run->synth, run->tok, run->device));
    const int N = fm_creamfl_num_sites(cf);
    char(*tokens)[65] = calloc((size_t)N, sizeof *tokens);
    const char **token_ptrs = calloc((size_t)N, sizeof *token_ptrs);
    fm_status st = tokens && token_ptrs ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    const char *secret = st == FM_OK ? fm_cli_net_secret() : NULL;
    for (int k = 0; st == FM_OK && k < N; k++) {
        st = fm_net_site_token(secret, k, tokens[k]);
        token_ptrs[k] = tokens[k];
    }
    unsigned char rid[8];
    char run_id[17];
    randombytes_buf(rid, sizeof rid);
    sodium_bin2hex(run_id, sizeof run_id, rid, sizeof rid);
    const double park_bytes = no->park_memory_mb * 1024.0 * 1024.0;
    if (st == FM_OK) {
        const fm_creamfl_srv_config sc = {.run_id = run_id,
                                          .tokens = token_ptrs,
                                          .round_timeout_s = no->round_timeout_s,
                                          .min_sites = no->min_sites,
                                          .state_dir = o->out_dir,
                                          .park_budget_bytes = park_bytes >= 1e18 ? (size_t)1e18 : (size_t)park_bytes,
                                          .resume = resume};
        st = fm_creamfl_srv_create(&cs, cf, o, &run->synth, &sc);
    }
    fm_fedsrv *srv = cs ? fm_creamfl_srv_fedsrv(cs) : NULL;
    if (st == FM_OK && resume)
        FM_WARN("server: resuming CreamFL run %s after round %d of %d (state in %s)", fm_fedsrv_run_id(srv),
                fm_creamfl_srv_resumed_after(cs), o->rounds, o->out_dir);
    if (st == FM_OK) {
        fm_creamfl_wire w;
        fm_creamfl_wire_layout(&w, cf, o, &run->synth);
        const int max_pushes = fm_net_receiving_slots(park_bytes, (double)w.P * sizeof(float));
        FM_INFO("server: creamfl run %s, %d sites, %d per round, %d rounds, |P| %zu, d %zu, representations %s%s",
                fm_fedsrv_run_id(srv), N, o->sites_per_round, o->rounds, w.n, w.d, o->rep_bf16 ? "bf16" : "fp32",
                no->codec.compression == FM_WIRE_ZSTD ? " + zstd" : "");
        fm_net_server_options so = {.tls = tls,
                                    .listen = listen,
                                    .call_timeout_s = no->call_timeout_s,
                                    .max_calls = no->max_calls,
                                    .max_pushes = max_pushes,
                                    .release_grace_s = no->release_grace_s,
                                    .codec = &no->codec,
                                    .traffic = fm_creamfl_srv_traffic(cs),
                                    .on_listen = on_listen,
                                    .ctx = NULL};
        st = fm_net_serve(srv, &so);
    }
    if (st == FM_OK && !fm_fedsrv_done(srv))
        st = fm_error(FM_ERR_STATE, "server: stopped after %d of %d rounds", fm_fedsrv_round(srv) - 1, o->rounds);
    int have = 0;
    fm_eval_result ev;
    memset(&ev, 0, sizeof ev);
    if (st == FM_OK)
        ev = *fm_creamfl_srv_last_eval(cs, &have);
    if (st == FM_OK && !have) /* a resumed run that had nothing left to do */
        st = fm_creamfl_server_evaluate(cf, &ev);
    fm_clip *model = fm_creamfl_server_model(cf);
    char path[4200];
    if (st == FM_OK && o->server.lora_rank > 0 && !o->server.full_finetune)
        st = fm_clip_merge_lora(model);
    snprintf(path, sizeof path, "%s/model.safetensors", o->out_dir);
    if (st == FM_OK)
        st = fm_clip_save(model, path);
    if (st == FM_OK) {
        double up = 0.0, down = 0.0;
        fm_creamfl_srv_bytes(cs, &up, &down);
        printf("server done (creamfl): %d rounds in %.1f s, run %s | server test (%lld pairs) i2t R@1 %.3f R@5 %.3f "
               "R@10 %.3f | t2i R@1 %.3f R@5 %.3f R@10 %.3f | up %.2f MB down %.2f MB | model in %s\n",
               o->rounds, fm_now_seconds() - t0, fm_fedsrv_run_id(srv), (long long)ev.pairs, ev.retrieval.i2t_r1,
               ev.retrieval.i2t_r5, ev.retrieval.i2t_r10, ev.retrieval.t2i_r1, ev.retrieval.t2i_r5,
               ev.retrieval.t2i_r10, up / 1e6, down / 1e6, o->out_dir);
    }
    fm_creamfl_srv_destroy(cs);
    fm_creamfl_close(cf);
    free(tokens);
    free(token_ptrs);
    return st;
}

int fm_cli_creamfl_server(const fm_cli_args *args, fm_cli_run *run, const char *listen)
{
    fm_creamfl_options o;
    fm_cli_net_options no;
    fm_status s = fm_cli_read_creamfl(run, args, &o, &no);
    fm_net_tls tls = {
        .ca_path = no.tls_ca, .cert_path = no.tls_cert, .key_path = no.tls_key, .mtls = no.mtls, .server_name = NULL};
    if (s == FM_OK)
        s = check_net_options(&o, &no);
    if (s == FM_OK)
        s = fm_net_tls_check(&tls, 1);
    if (s != FM_OK)
        return fm_cli_fail("server", "config", s);
    o.checkpoint = 1;
    o.resume = 0; /* the control-plane state decides which round to continue from (fm_creamfl_server_start) */
    char path[4200];
    s = fm_cli_mkdirs(o.out_dir);
    if (s == FM_OK) {
        snprintf(path, sizeof path, "%s/config.yaml", o.out_dir);
        s = fm_config_dump(run->cfg, path);
    }
    if (s == FM_OK)
        s = serve(run, &o, &no, listen, &tls, args->resume);
    return s == FM_OK ? 0 : fm_cli_fail("server", "run", s);
}

/* ---- a site ------------------------------------------------------------------------------------------------ */

typedef struct cream_client {
    const fm_creamfl_options *o;
    int site;
    fm_creamfl *cf;
    fm_creamfl_wire L;
    fm_modality modality;
    uint8_t trained[N_BLOCKS];
    fm_site_link link;   /* the connection to the server, Join with back-off, the task / heartbeat loop */
    fm_wire_codec codec; /* the representations' encoding (fl.creamfl.rep_dtype) and net.compress */
    float *global, *up;  /* (P) each: the pulled [ig | tg], this site's [ik | tk] */
    fm_wire_push_header *header;
    int64_t cached_round; /* the round whose upload up and header hold (0: none) */
    char cached_run[FM_WIRE_RUN_ID_MAX + 1];
} cream_client;

/* Round task->round: pull the server's representations, train, push this site's; or, when the server asks again
 * for a round this site already trained (a restarted server lost the push), push the same upload again: the site's
 * model has moved on and must not train that round twice. */
static fm_status train_round(void *ctx, fm_wire_task *task, int *fresh)
{
    cream_client *c = ctx;
    *fresh = 0;
    const fm_creamfl_options *o = c->o;
    if (task->local_steps != o->local_steps || task->n_params != c->L.P || task->rounds != o->rounds)
        return fm_error(FM_ERR_CONFIG,
                        "site %d: the server's run (%s) differs from this config (local_steps %lld, %zu floats, %d "
                        "rounds)",
                        c->site, task->config, (long long)o->local_steps, c->L.P, o->rounds);
    fm_wire_push_header *h = c->header;
    if (c->cached_round == task->round && strcmp(c->cached_run, task->run_id) == 0) {
        FM_WARN("site %d: the server asks for round %lld again: pushing the representations of that round once more",
                c->site, (long long)task->round);
    } else {
        const fm_wire_ref r = fm_site_link_ref(&c->link, task);
        FM_TRY(fm_net_pull_reps(c->link.net, &r, c->global, c->L.blocks, N_BLOCKS, fm_creamfl_block_kinds));
        FM_INFO("site %d: round %lld: training%s", c->site, (long long)task->round,
                task->deadline_unix_ms > 0 ? " (the round has a deadline)" : "");
        fm_creamfl_site_report rep;
        FM_TRY(fm_creamfl_site_train(c->cf, c->site, (int)task->round, c->global, c->global + c->L.nd,
                                     c->trained[BLOCK_IMAGE] ? c->up : NULL,
                                     c->trained[BLOCK_TEXT] ? c->up + c->L.nd : NULL, &rep));
        double loss = 0.0;
        for (size_t i = 0; i < rep.n_loss; i++)
            loss += rep.loss[i];
        memset(h, 0, sizeof *h);
        snprintf(h->run_id, sizeof h->run_id, "%s", task->run_id);
        h->round = task->round;
        h->site = c->site;
        h->n_samples = fm_creamfl_site_samples(c->cf, c->site);
        h->loss = rep.n_loss ? loss / (double)rep.n_loss : 0.0;
        h->n_params = c->L.P;
        h->n_blocks = N_BLOCKS;
        memcpy(h->trained, c->trained, N_BLOCKS);
        /* the report's lists stay valid until the site trains again, which is after this round's push */
        h->step_loss = rep.loss;
        h->n_step_loss = rep.n_loss;
        h->step_inter = rep.inter;
        h->n_step_inter = rep.n_inter;
        h->step_intra = rep.intra;
        h->n_step_intra = rep.n_intra;
        c->cached_round = task->round;
        snprintf(c->cached_run, sizeof c->cached_run, "%s", task->run_id);
    }
    FM_TRY(fm_site_link_still_wanted(&c->link, task, "the representations are not pushed", fresh));
    if (*fresh)
        return FM_OK;
    fm_wire_reply reply;
    double bytes = 0.0;
    FM_TRY(fm_net_push_reps(c->link.net, h, c->up, c->L.blocks, fm_creamfl_block_kinds, &c->codec, &reply, &bytes));
    FM_INFO("site %d: round %lld pushed (%.0f bytes), local loss %.4f", c->site, (long long)task->round, bytes,
            h->loss);
    return FM_OK;
}

static fm_status run_site(cream_client *c, fm_cli_run *run, const char *token, const char *target,
                          const fm_net_tls *tls, double reconnect_s)
{
    FM_TRY(fm_creamfl_site_open(&c->cf, c->o, &run->synth, run->tok, run->device, c->site));
    fm_creamfl_wire_layout(&c->L, c->cf, c->o, &run->synth);
    c->modality = fm_creamfl_site_modality(c->cf, c->site);
    fm_creamfl_wire_blocks(c->modality, c->trained);
    c->global = calloc(c->L.P, sizeof(float));
    c->up = calloc(c->L.P, sizeof(float));
    c->header = calloc(1, sizeof *c->header);
    if (!c->global || !c->up || !c->header)
        return fm_error(FM_ERR_NO_MEMORY, "client: out of memory");
    FM_TRY(fm_wire_codec_check(&c->codec));
    const fm_site_link_options lo = {.site = c->site,
                                     .reconnect_s = reconnect_s,
                                     .target = target,
                                     .token = token,
                                     .tls = tls,
                                     .modality = c->modality,
                                     .model_family = c->L.family,
                                     .n_params = c->L.P,
                                     .n_blocks = N_BLOCKS,
                                     .device = run->device,
                                     .run_kind = "CreamFL run",
                                     .samples = fm_creamfl_site_samples(c->cf, c->site)};
    FM_TRY(fm_site_link_open(&c->link, &lo));
    const fm_site_link_hooks hooks = {.on_task = NULL, .train = train_round, .ctx = c};
    return fm_site_link_run(&c->link, &hooks);
}

int fm_cli_creamfl_client(const fm_cli_args *args, fm_cli_run *run, const char *target, int site, const char *token)
{
    fm_creamfl_options o;
    fm_cli_net_options no;
    fm_status s = fm_cli_read_creamfl(run, args, &o, &no);
    const fm_net_tls tls = fm_site_link_tls(&no);
    if (s == FM_OK)
        s = check_net_options(&o, &no);
    if (s == FM_OK)
        s = fm_net_tls_check(&tls, 0);
    if (s != FM_OK)
        return fm_cli_fail("client", "config", s);
    char derived[65];
    const char *tok = NULL;
    s = fm_site_link_token(token, site, derived, &tok);
    cream_client c;
    memset(&c, 0, sizeof c);
    c.o = &o;
    c.site = site;
    c.codec = no.codec;
    if (s == FM_OK)
        s = run_site(&c, run, tok, target, &tls, no.reconnect_s);
    const int rc = s == FM_OK ? 0 : fm_cli_fail("client", "run", s);
    fm_site_link_close(&c.link);
    fm_creamfl_close(c.cf);
    free(c.global);
    free(c.up);
    free(c.header);
    return rc;
}
#endif
