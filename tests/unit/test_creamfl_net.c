/* CreamFL over the control plane: the server's side (src/net/creamfl_srv.c over fedsrv's representation hooks),
 * the sites' streams (fm_net_*_reps, src/net/rpc.c) and the split of a round into the server's and a site's parts
 * (fm_creamfl_server_* / fm_creamfl_site_*). A tiny federation (3 sites: paired, image-only, text-only; all three
 * every round) runs 2 rounds through fedsrv directly, then through a live gRPC server on 127.0.0.1; both end with
 * the server model and metrics of fm_creamfl_run (the simulation) bit for bit. On the way every kind of bad upload
 * is refused with the round left as it was: a wrong |P|·d, a step report of the wrong length or with a NaN, the
 * blocks of another modality, chunks of the wrong payload kind or size, a stream cut short, a duplicate, a Join
 * with another configuration or modality, NaN representations on the wire; and a parameter-FL server refuses a push
 * that carries CreamFL's step lists. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"

#ifdef FEDMM_WITH_GRPC
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedmm/creamfl.h"
#include "fedmm/log.h"
#include "fedmm/threads.h"
#include "fedmm/tokenizer.h"
#include "fedsrv_fixture.h"
#include "net/creamfl_srv.h"
#include "net/net.h"

#define N_SITES 3
#define ROUNDS 2

typedef struct world {
    fm_tokenizer *tok;
    fm_synth_config synth;
    fm_creamfl_options o;
    char dir[256], out[320];
    char tokens[N_SITES][65];
    const char *token_ptrs[N_SITES];
    fm_creamfl *server, *site[N_SITES];
    fm_creamfl_srv *cs;
    fm_creamfl_wire w;
    float *up[N_SITES]; /* (P) each site's upload */
    float *global;      /* (P) the pulled [ig | tg] */
    fm_creamfl_site_report rep[N_SITES];
} world;

/* The simulation's result: the server's trainable vector and its metrics (timings aside). */
static struct {
    float *vec;
    size_t n;
    char metrics[8192];
} g_sim;

/* metrics.jsonl without the timings (wall_s, ensemble_s) and, unless with_bytes, the byte counts. */
static void read_metrics(const char *dir, int with_bytes, char *out, size_t cap)
{
    char path[400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    out[n] = '\0';
    const char *drop[] = {"\"wall_s\": ", "\"ensemble_s\": ", "\"bytes_up\": ", "\"bytes_down\": "};
    for (int k = 0; k < (with_bytes ? 2 : 4); k++) {
        char *p;
        while ((p = strstr(out, drop[k])) != NULL) {
            char *e = strchr(p, ',');
            assert_non_null(e);
            memmove(p, e + 2, strlen(e + 2) + 1);
        }
    }
}

static void options(world *W, const char *tag)
{
    memset(W, 0, sizeof *W);
    assert_int_equal(fm_tokenizer_builtin(&W->tok), FM_OK);
    W->synth = fm_synth_default_config();
    W->synth.seed = 3;
    W->synth.split_size[FM_SPLIT_TRAIN] = 120;
    W->synth.split_size[FM_SPLIT_TEST] = 16;
    W->synth.split_size[FM_SPLIT_PUBLIC] = 16;
    W->synth.split_size[FM_SPLIT_IMAGE_ONLY] = 60;
    W->synth.split_size[FM_SPLIT_TEXT_ONLY] = 60;
    fm_clip_config m;
    assert_int_equal(fm_clip_config_preset("clip-tiny", &m), FM_OK);
    m.vocab_size = fm_tokenizer_vocab_size(W->tok);
    m.full_finetune = 1;
    fm_creamfl_options *o = &W->o;
    *o = fm_creamfl_default_options();
    o->server = m;
    for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
        o->site_model[k] = m;
        o->num_sites[k] = 1; /* site 0 paired, 1 image-only, 2 text-only */
    }
    o->public_size = 16;
    o->rounds = ROUNDS;
    o->sites_per_round = N_SITES;
    o->local_steps = 1;
    o->init_local_steps = 1;
    o->server_steps = 1;
    o->distill_steps = 1;
    o->local.batch_size = 8;
    o->server_opt.batch_size = 8;
    o->eval_every = 1;
    o->eval_size = 16;
    o->seed = 5;
    const char *tmp = getenv("TMPDIR");
    snprintf(W->dir, sizeof W->dir, "%s/creamfl-net.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(W->dir));
    snprintf(W->out, sizeof W->out, "%s/%s", W->dir, tag);
    assert_int_equal(mkdir(W->out, 0775), 0);
    o->out_dir = W->out;
    for (int k = 0; k < N_SITES; k++) {
        assert_int_equal(fm_net_site_token(FX_SECRET, k, W->tokens[k]), FM_OK);
        W->token_ptrs[k] = W->tokens[k];
    }
}

/* The server object, fm_creamfl_srv over it, and one object per site. */
static void open_world(world *W, const char *run_id)
{
    assert_int_equal(fm_creamfl_server_open(&W->server, &W->o, &W->synth, W->tok, FM_DEVICE_CPU), FM_OK);
    const fm_creamfl_srv_config sc = {.run_id = run_id,
                                      .tokens = W->token_ptrs,
                                      .min_sites = 1,
                                      .state_dir = W->out,
                                      .park_budget_bytes = (size_t)1 << 30};
    assert_int_equal(fm_creamfl_srv_create(&W->cs, W->server, &W->o, &W->synth, &sc), FM_OK);
    fm_creamfl_wire_layout(&W->w, W->server, &W->o, &W->synth);
    assert_int_equal(W->w.P, 2 * 16 * 64);
    for (int k = 0; k < N_SITES; k++) {
        assert_int_equal(fm_creamfl_site_open(&W->site[k], &W->o, &W->synth, W->tok, FM_DEVICE_CPU, k), FM_OK);
        W->up[k] = fm_test_alloc(W->w.P * sizeof(float));
    }
    W->global = fm_test_alloc(W->w.P * sizeof(float));
}

static void close_world(world *W)
{
    for (int k = 0; k < N_SITES; k++) {
        fm_creamfl_close(W->site[k]);
        free(W->up[k]);
    }
    fm_creamfl_srv_destroy(W->cs);
    fm_creamfl_close(W->server);
    free(W->global);
    fm_tokenizer_free(W->tok);
    fx_rm_tree(W->dir);
}

/* Site k trains round `round` from W->global into W->up[k] and W->rep[k]. */
static void train_site(world *W, int k, int round)
{
    uint8_t b[FM_CREAMFL_NUM_BLOCKS];
    fm_creamfl_wire_blocks(fm_creamfl_site_modality(W->site[k], k), b);
    assert_int_equal(fm_creamfl_site_train(W->site[k], k, round, W->global, W->global + W->w.nd, b[0] ? W->up[k] : NULL,
                                           b[1] ? W->up[k] + W->w.nd : NULL, &W->rep[k]),
                     FM_OK);
}

/* The push header of site k's upload, as the site would send it. */
static fm_wire_push_header *header_of(const world *W, const char *run_id, int k, int64_t round)
{
    fm_wire_push_header *h = fm_test_alloc(sizeof *h);
    snprintf(h->run_id, sizeof h->run_id, "%s", run_id);
    h->round = round;
    h->site = k;
    h->n_samples = fm_creamfl_site_samples(W->server, k);
    h->loss = 1.0;
    h->n_params = W->w.P;
    h->n_blocks = FM_CREAMFL_NUM_BLOCKS;
    fm_creamfl_wire_blocks(fm_creamfl_site_modality(W->server, k), h->trained);
    const fm_creamfl_site_report *r = &W->rep[k];
    h->step_loss = r->loss;
    h->n_step_loss = r->n_loss;
    h->step_inter = r->inter;
    h->n_step_inter = r->n_inter;
    h->step_intra = r->intra;
    h->n_step_intra = r->n_intra;
    return h;
}

typedef enum spoil {
    GOOD,
    WRONG_SIZE,     /* n_params of another |P|·d */
    SHORT_REPORT,   /* one L_intra value missing */
    NAN_REPORT,     /* a NaN among the L_inter values */
    OTHER_BLOCKS,   /* the image-only site claims both blocks */
    ADAPTER_CHUNKS, /* chunks of payload kind ADAPTERS */
    SHORT_TENSOR,   /* chunks of a block |P|·d − d long */
    CUT_SHORT       /* the stream ends after its first chunk */
} spoil;

/* Pushes site k's upload into fedsrv as rpc.c would (every message through the wire's encoder and decoder), spoiled
 * as `how` says; returns the first refusal's code. */
static int push(world *W, int k, int64_t round, spoil how)
{
    fm_fedsrv *srv = fm_creamfl_srv_fedsrv(W->cs);
    fm_wire_push_header *h = header_of(W, fm_fedsrv_run_id(srv), k, round);
    float nan_inter[64];
    if (how == WRONG_SIZE)
        h->n_params -= 2 * W->w.d;
    if (how == SHORT_REPORT)
        h->n_step_intra--;
    if (how == NAN_REPORT) {
        assert_true(h->n_step_inter > 0 && h->n_step_inter <= 64);
        memcpy(nan_inter, h->step_inter, h->n_step_inter * sizeof(float));
        nan_inter[h->n_step_inter - 1] = NAN;
        h->step_inter = nan_inter;
    }
    if (how == OTHER_BLOCKS)
        h->trained[0] = h->trained[1] = 1;
    fm_wire_buf b;
    fm_wire_push_msg m;
    assert_int_equal(fm_wire_encode_push_header(h, &b), FM_OK);
    assert_int_equal(fm_wire_decode_push(b.data, b.len, &m), FM_OK);
    fm_wire_buf_free(&b);
    assert_true(m.is_header);
    assert_int_equal(m.header->n_step_loss, h->n_step_loss);
    assert_int_equal(m.header->n_step_inter, h->n_step_inter);
    fm_fedsrv_push *p = NULL;
    int code = fm_fedsrv_push_begin(srv, W->token_ptrs[k], m.header, &p);
    fm_wire_push_msg_free(&m);
    fm_strategy_block short_blocks[FM_CREAMFL_NUM_BLOCKS];
    memcpy(short_blocks, W->w.blocks, sizeof short_blocks);
    short_blocks[0].numel -= W->w.d;
    short_blocks[1].numel -= W->w.d;
    fm_tensor_tx tx;
    fm_tensor_tx_init(&tx, W->up[k], how == SHORT_TENSOR ? short_blocks : W->w.blocks, FM_CREAMFL_NUM_BLOCKS,
                      h->trained, 0, h->run_id, round, k);
    tx.block_kinds = how == ADAPTER_CHUNKS ? NULL : fm_creamfl_block_kinds;
    fm_wire_chunk ch;
    int sent = 0;
    while (code == FM_NET_OK && fm_tensor_tx_next(&tx, &ch) == 1) {
        assert_int_equal(fm_wire_encode_push_chunk(&ch, &b), FM_OK);
        assert_int_equal(fm_wire_decode_push(b.data, b.len, &m), FM_OK);
        fm_wire_buf_free(&b);
        code = fm_fedsrv_push_chunk(srv, p, &m.chunk);
        fm_wire_push_msg_free(&m);
        if (++sent == 1 && how == CUT_SHORT)
            break;
    }
    fm_tensor_tx_free(&tx);
    fm_wire_reply reply;
    if (code == FM_NET_OK)
        code = fm_fedsrv_push_end(srv, p, &reply);
    fm_fedsrv_push_free(p);
    free(h);
    return code;
}

/* The simulation of the same federation, once: what every networked run must end with. */
static int sim_setup(void **state)
{
    (void)state;
    world W;
    options(&W, "sim");
    fm_creamfl_result res;
    fm_clip *server = NULL;
    assert_int_equal(fm_creamfl_run(&W.o, &W.synth, W.tok, FM_DEVICE_CPU, &res, &server), FM_OK);
    assert_int_equal(res.rounds_done, ROUNDS);
    g_sim.n = fm_clip_num_trainable(server);
    g_sim.vec = fm_test_alloc(g_sim.n * sizeof(float));
    memcpy(g_sim.vec, fm_clip_trainable(server), g_sim.n * sizeof(float));
    read_metrics(W.out, 1, g_sim.metrics, sizeof g_sim.metrics);
    fm_clip_destroy(server);
    fm_tokenizer_free(W.tok);
    fx_rm_tree(W.dir);
    return 0;
}

static int sim_teardown(void **state)
{
    (void)state;
    free(g_sim.vec);
    return 0;
}

static void assert_equals_sim(world *W, int with_bytes)
{
    fm_clip *m = fm_creamfl_server_model(W->server);
    assert_int_equal(fm_clip_num_trainable(m), g_sim.n);
    assert_memory_equal(fm_clip_trainable(m), g_sim.vec, g_sim.n * sizeof(float));
    char got[8192], want[8192];
    read_metrics(W->out, with_bytes, got, sizeof got);
    snprintf(want, sizeof want, "%s", g_sim.metrics);
    if (!with_bytes) { /* the simulation's without its byte counts too */
        const char *drop[] = {"\"bytes_up\": ", "\"bytes_down\": "};
        for (int k = 0; k < 2; k++) {
            char *p;
            while ((p = strstr(want, drop[k])) != NULL) {
                char *e = strchr(p, ',');
                memmove(p, e + 2, strlen(e + 2) + 1);
            }
        }
    }
    assert_string_equal(got, want);
}

/* Two rounds through fedsrv without sockets: every bad upload refused with nothing kept, then the real ones (in
 * reverse site order: the ensemble takes them in site order) close each round; the end equals the simulation. */
static void test_rounds_equal_sim(void **state)
{
    (void)state;
    world W;
    options(&W, "srv");
    open_world(&W, "run-a");
    fm_fedsrv *srv = fm_creamfl_srv_fedsrv(W.cs);
    /* Join: the configuration (family) and the modalities must be the site's own */
    fm_wire_join j;
    fm_wire_task task;
    memset(&j, 0, sizeof j);
    j.site = 1;
    snprintf(j.token, sizeof j.token, "%s", W.tokens[1]);
    j.modalities = FM_MODALITY_IMAGE;
    snprintf(j.model_family, sizeof j.model_family, "%s", W.w.family);
    j.n_params = W.w.P;
    j.n_blocks = FM_CREAMFL_NUM_BLOCKS;
    assert_int_equal(fm_fedsrv_join(srv, W.tokens[1], &j, &task), FM_NET_OK);
    assert_int_equal(task.action, FM_ACTION_TRAIN);
    fm_creamfl_options other = W.o;
    other.kappa = 0.25f;
    fm_creamfl_wire w2;
    fm_creamfl_wire_layout(&w2, W.server, &other, &W.synth);
    assert_string_not_equal(w2.family, W.w.family);
    snprintf(j.model_family, sizeof j.model_family, "%s", w2.family);
    assert_int_equal(fm_fedsrv_join(srv, W.tokens[1], &j, &task), FM_NET_FAILED_PRECONDITION);
    snprintf(j.model_family, sizeof j.model_family, "%s", W.w.family);
    j.modalities = FM_MODALITY_PAIRED;
    assert_int_equal(fm_fedsrv_join(srv, W.tokens[1], &j, &task), FM_NET_FAILED_PRECONDITION);
    assert_non_null(strstr(fm_last_error(), "declares modalities"));

    for (int round = 1; round <= ROUNDS; round++) {
        const fm_wire_ref ref = {.round = round, .site = 0};
        fm_wire_ref r = ref;
        snprintf(r.run_id, sizeof r.run_id, "%s", fm_fedsrv_run_id(srv));
        const float *global = NULL;
        assert_int_equal(fm_fedsrv_pull(srv, W.tokens[0], &r, &global), FM_NET_OK);
        memcpy(W.global, global, W.w.P * sizeof(float));
        for (int k = 0; k < N_SITES; k++)
            train_site(&W, k, round);
        if (round == 1) {
            const struct {
                int site;
                spoil how;
                int code;
                const char *why;
            } cases[] = {{1, WRONG_SIZE, FM_NET_INVALID_ARGUMENT, "parameters"},
                         {0, SHORT_REPORT, FM_NET_INVALID_ARGUMENT, "L_intra values"},
                         {0, NAN_REPORT, FM_NET_INVALID_ARGUMENT, "L_inter value"},
                         {1, OTHER_BLOCKS, FM_NET_INVALID_ARGUMENT, "trained blocks"},
                         {2, ADAPTER_CHUNKS, FM_NET_INVALID_ARGUMENT, "payload 0"},
                         {0, SHORT_TENSOR, FM_NET_INVALID_ARGUMENT, "elements"},
                         {0, CUT_SHORT, FM_NET_INVALID_ARGUMENT, "ended before"}};
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                assert_int_equal(push(&W, cases[i].site, round, cases[i].how), cases[i].code);
                if (!strstr(fm_last_error(), cases[i].why))
                    fail_msg("case %zu: '%s' lacks '%s'", i, fm_last_error(), cases[i].why);
                assert_int_equal(fm_fedsrv_round(srv), 1);
            }
        }
        assert_int_equal(push(&W, 2, round, GOOD), FM_NET_OK);
        assert_int_equal(push(&W, 2, round, GOOD), FM_NET_ALREADY_EXISTS);
        assert_int_equal(push(&W, 0, round, GOOD), FM_NET_OK);
        assert_int_equal(fm_fedsrv_round(srv), round);
        assert_int_equal(push(&W, 1, round, GOOD), FM_NET_OK); /* the last: the round closes */
        assert_int_equal(fm_fedsrv_fatal(srv), FM_OK);
        assert_int_equal(fm_fedsrv_round(srv), round + 1);
    }
    assert_true(fm_fedsrv_done(srv));
    assert_equals_sim(&W, 0); /* no sockets here: nothing counted the bytes */
    close_world(&W);
}

/* ---- a live server ----------------------------------------------------------------------------------------- */

/* The same federation with a live server: Join, Pull (the chunks' kinds checked by the site), a NaN in the pushed
 * representations and chunks of the adapters' kind refused with status 3 while the server goes on serving, then
 * the real pushes; the server ends with the simulation's model and metrics, byte counts included. */
static void test_live_equals_sim(void **state)
{
    (void)state;
    world W;
    options(&W, "live");
    open_world(&W, "run-live");
    live l = {.srv = fm_creamfl_srv_fedsrv(W.cs), .count = fm_creamfl_srv_traffic(W.cs), .call_timeout_s = 30};
    char target[64];
    live_start(&l, target, sizeof target);
    fm_net_client *c[N_SITES];
    fm_wire_task task[N_SITES];
    for (int k = 0; k < N_SITES; k++) {
        assert_int_equal(fm_net_client_create(&c[k], target, W.tokens[k], 30.0), FM_OK);
        fm_wire_join j;
        memset(&j, 0, sizeof j);
        j.site = k;
        snprintf(j.token, sizeof j.token, "%s", W.tokens[k]);
        j.modalities = (uint32_t)fm_creamfl_site_modality(W.site[k], k);
        snprintf(j.model_family, sizeof j.model_family, "%s", W.w.family);
        j.n_params = W.w.P;
        j.n_blocks = FM_CREAMFL_NUM_BLOCKS;
        assert_int_equal(fm_net_join(c[k], &j, &task[k]), FM_OK);
        assert_int_equal(task[k].action, FM_ACTION_TRAIN);
    }
    for (int round = 1; round <= ROUNDS; round++) {
        for (int k = 0; k < N_SITES; k++) {
            assert_int_equal(task[k].round, round);
            fm_wire_ref r = {.round = round, .site = k};
            snprintf(r.run_id, sizeof r.run_id, "%.64s", task[k].run_id);
            assert_int_equal(
                fm_net_pull_reps(c[k], &r, W.global, W.w.blocks, FM_CREAMFL_NUM_BLOCKS, fm_creamfl_block_kinds), FM_OK);
            train_site(&W, k, round);
            fm_wire_push_header *h = header_of(&W, task[k].run_id, k, round);
            if (round == 1 && k == 0) {
                /* a NaN in the image representations: refused by the decoding, before fedsrv sees the chunk */
                float *nan_rep = fm_test_alloc(W.w.nd * sizeof(float));
                memcpy(nan_rep, W.up[k], W.w.nd * sizeof(float));
                nan_rep[5] = NAN;
                fm_wire_chunk ch;
                memset(&ch, 0, sizeof ch);
                snprintf(ch.run_id, sizeof ch.run_id, "%.64s", task[k].run_id);
                ch.round = round;
                ch.site = k;
                ch.tensor = 0;
                ch.numel = W.w.nd;
                ch.count = W.w.nd;
                ch.data = nan_rep;
                ch.kind = FM_PAYLOAD_PUBLIC_IMAGE;
                ch.crc32c = fm_crc32c(0, nan_rep, W.w.nd * sizeof(float));
                fm_wire_buf msgs[2];
                assert_int_equal(fm_wire_encode_push_header(h, &msgs[0]), FM_OK);
                assert_int_equal(fm_wire_encode_push_chunk(&ch, &msgs[1]), FM_OK);
                assert_int_equal(fm_net_call_raw(c[k], "/fedmm.Federation/Push", msgs, 2), 3);
                fm_wire_buf_free(&msgs[0]);
                fm_wire_buf_free(&msgs[1]);
                free(nan_rep);
                /* the right values as parameter FL's chunks (payload kind adapters) */
                fm_wire_reply reply;
                assert_int_equal(fm_net_push(c[k], h, W.up[k], W.w.blocks, 0, &reply), FM_ERR_NETWORK);
                assert_int_equal(fm_net_last_code(c[k]), 3);
            }
            fm_wire_reply reply;
            double bytes = 0.0;
            assert_int_equal(
                fm_net_push_reps(c[k], h, W.up[k], W.w.blocks, fm_creamfl_block_kinds, NULL, &reply, &bytes), FM_OK);
            assert_true(reply.accepted);
            free(h);
        }
        for (int k = 0; k < N_SITES; k++) { /* the round closed with the last push: its sites' next task */
            const fm_wire_ref h = {.round = round, .site = k};
            fm_wire_ref hb = h;
            snprintf(hb.run_id, sizeof hb.run_id, "%.64s", task[k].run_id);
            assert_int_equal(fm_net_heartbeat(c[k], &hb, &task[k]), FM_OK);
            assert_int_equal(task[k].action, round < ROUNDS ? FM_ACTION_TRAIN : FM_ACTION_DONE);
        }
    }
    live_join(&l);
    assert_int_equal(l.result, FM_OK);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    assert_equals_sim(&W, 1);
    close_world(&W);
}

/* The report checks on their own, and the draw is the simulation's. */
static void test_report_checks(void **state)
{
    (void)state;
    world W;
    options(&W, "rep");
    assert_int_equal(fm_creamfl_server_open(&W.server, &W.o, &W.synth, W.tok, FM_DEVICE_CPU), FM_OK);
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    size_t nl, ni, na;
    fm_creamfl_report_shape(W.server, 0, 2, &nl, &ni, &na); /* paired: two modalities per step */
    assert_int_equal(nl, 2);
    assert_int_equal(ni, 4);
    assert_int_equal(na, 4);
    fm_creamfl_report_shape(W.server, 1, 2, &nl, &ni, &na); /* image-only */
    assert_int_equal(ni, 2);
    fm_creamfl_site_report r = {.steps = 2, .loss = v, .n_loss = 2, .inter = v, .n_inter = 4, .intra = v, .n_intra = 4};
    assert_int_equal(fm_creamfl_check_report(W.server, 0, &r), FM_OK);
    r.steps = 1; /* local_steps (1) alone is a later round's count */
    r.n_loss = 1;
    r.n_inter = r.n_intra = 2;
    assert_int_equal(fm_creamfl_check_report(W.server, 0, &r), FM_OK);
    r.steps = r.n_loss = 3;
    assert_int_equal(fm_creamfl_check_report(W.server, 0, &r), FM_ERR_INVALID_ARG);
    r = (fm_creamfl_site_report){
        .steps = 2, .loss = v, .n_loss = 2, .inter = v, .n_inter = 4, .intra = v, .n_intra = 3};
    assert_int_equal(fm_creamfl_check_report(W.server, 0, &r), FM_ERR_SHAPE);
    v[3] = INFINITY;
    r.n_intra = 4;
    assert_int_equal(fm_creamfl_check_report(W.server, 0, &r), FM_ERR_NOT_FINITE);
    assert_int_equal(fm_creamfl_check_report(W.server, 3, &r), FM_ERR_RANGE);
    r.loss = NULL;
    v[3] = 4;
    assert_int_equal(fm_creamfl_check_report(W.server, 0, &r), FM_ERR_INVALID_ARG);
    /* one upload per site, in site order, of the site's modalities only */
    const fm_creamfl_upload ups[2] = {{.site = 1, .reps_i = v, .reps_t = v, .report = r}, {.site = 0}};
    assert_int_equal(fm_creamfl_server_aggregate(W.server, 1, ups, 2), FM_ERR_INVALID_ARG);
    int a[3], b[3];
    assert_int_equal(fm_creamfl_round_sites(W.o.seed, 4, 7, 3, a), FM_OK);
    assert_true(a[0] < a[1] && a[1] < a[2]);
    assert_int_equal(fm_creamfl_round_sites(W.o.seed, 4, 7, 3, b), FM_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(fm_creamfl_round_sites(W.o.seed, 4, 7, 8, b), FM_ERR_CONFIG);
    fm_creamfl *site = NULL;
    assert_int_equal(fm_creamfl_site_open(&site, &W.o, &W.synth, W.tok, FM_DEVICE_CPU, 3), FM_ERR_CONFIG);
    fm_creamfl_close(W.server);
    fm_tokenizer_free(W.tok);
    fx_rm_tree(W.dir);
}

/* A parameter-FL server refuses a push header that carries CreamFL's step lists; the lists are bounded on the wire. */
static void test_parameter_fl_refuses_step_lists(void **state)
{
    (void)state;
    enum { P = 8 };
    const fm_strategy_block blocks[1] = {{.name = "a", .offset = 0, .numel = P, .layer = -1}};
    const float init[P] = {0};
    const fm_strategy_config rule = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *strategy = NULL;
    assert_int_equal(fm_strategy_create(&strategy, &rule, P, blocks, 1, init), FM_OK);
    char token[65];
    assert_int_equal(fm_net_site_token(FX_SECRET, 0, token), FM_OK);
    const char *tokens[1] = {token};
    const int64_t samples[1] = {10};
    const uint8_t trained[1] = {1};
    const fm_fedsrv_config fc = {.run_id = "run-p",
                                 .rounds = 1,
                                 .num_sites = 1,
                                 .sites_per_round = 1,
                                 .seed = 1,
                                 .local_steps = 1,
                                 .model_family = "clip-tiny",
                                 .n_params = P,
                                 .blocks = blocks,
                                 .n_blocks = 1,
                                 .site_samples = samples,
                                 .site_trained = trained,
                                 .tokens = tokens,
                                 .strategy = strategy};
    fm_fedsrv *srv = NULL;
    assert_int_equal(fm_fedsrv_create(&srv, &fc), FM_OK);
    assert_null(fm_fedsrv_block_kinds(srv));
    fm_wire_push_header *h = fm_test_alloc(sizeof *h);
    snprintf(h->run_id, sizeof h->run_id, "run-p");
    h->round = 1;
    h->n_samples = 10;
    h->loss = 1.0;
    h->n_params = P;
    h->n_blocks = 1;
    h->trained[0] = 1;
    const float steps[2] = {1.0f, 2.0f};
    h->step_loss = steps;
    h->n_step_loss = 2;
    fm_fedsrv_push *p = NULL;
    assert_int_equal(fm_fedsrv_push_begin(srv, token, h, &p), FM_NET_INVALID_ARGUMENT);
    assert_non_null(strstr(fm_last_error(), "step statistics"));
    assert_null(p);
    h->n_step_loss = 0;
    assert_int_equal(fm_fedsrv_push_begin(srv, token, h, &p), FM_NET_OK);
    fm_fedsrv_push_free(p);
    fm_wire_buf b;
    h->step_loss = steps;
    h->n_step_loss = FM_WIRE_MAX_STEP_VALUES + 1; /* refused before anything is read */
    assert_int_equal(fm_wire_encode_push_header(h, &b), FM_ERR_INVALID_ARG);
    free(h);
    fm_fedsrv_destroy(srv);
    fm_strategy_destroy(strategy);
}

int main(void)
{
    fm_log_set_level(FM_LOG_ERROR);
    fm_set_num_threads(1); /* the test's own speed on a loaded machine; the results do not depend on it */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_checks),
        cmocka_unit_test(test_parameter_fl_refuses_step_lists),
        cmocka_unit_test(test_rounds_equal_sim),
        cmocka_unit_test(test_live_equals_sim),
    };
    return cmocka_run_group_tests(tests, sim_setup, sim_teardown);
}
#else
int main(void)
{
    printf("SKIP: built without gRPC (FEDMM_WITH_GRPC)\n");
    return FM_TEST_SKIP;
}
#endif
