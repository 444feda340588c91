/* A small fake federation for the tests of the federation server (test_net_wire.c, test_net_concurrent.c,
 * test_fedsrv_state.c): named blocks of given sizes, each site's sample count, token and trained blocks (one site
 * lacks one block, as a site without a modality does), a random initial vector and random site updates, the
 * strategy and fm_fedsrv over them, and a live gRPC server on 127.0.0.1 in a thread (which test_creamfl_net.c runs
 * over its own fedsrv). Header-only: each test includes it once (after cmocka.h and testutil.h), inside
 * #ifdef FEDMM_WITH_GRPC. */
#ifndef FEDMM_TESTS_FEDSRV_FIXTURE_H
#define FEDMM_TESTS_FEDSRV_FIXTURE_H

#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedmm/site_train.h"
#include "net/fedsrv.h"
#include "net/net.h"
#include "net/wire.h"

#define FX_MAX_BLOCKS 8
#define FX_MAX_SITES 8
#define FX_MAX_ROUNDS 4
#define FX_SECRET "a-test-secret-of-some-length"

typedef struct fx_spec {
    const size_t *sizes; /* each block's floats (names "a", "b", ... unless names is set) */
    const char *const *names;
    size_t n_blocks; /* ≤ FX_MAX_BLOCKS */
    int n_sites;     /* ≤ FX_MAX_SITES */
    int skip_site;   /* this site does not train block skip_block */
    size_t skip_block;
    uint64_t stream; /* of fm_test_seed()'s generator */
    int rounds;      /* 0: one update per site, delta[k], for every round; R ≤ FX_MAX_ROUNDS: round_delta[r][k]
                        for r = 1 .. R, zero outside the site's trained blocks (what the server stages) */
} fx_spec;

typedef struct fixture {
    fm_strategy_block b[FX_MAX_BLOCKS];
    size_t nb, P;
    int n_sites;
    int tasked; /* sites tasked per round, for a test's own draws (its server's sites_tasked) */
    int64_t samples[FX_MAX_SITES];
    uint8_t trained[FX_MAX_SITES * FX_MAX_BLOCKS]; /* site k's block i at k * nb + i */
    char tokens[FX_MAX_SITES][65];
    const char *token_ptrs[FX_MAX_SITES];
    float *init;
    float *delta[FX_MAX_SITES];                          /* rounds = 0 */
    float *round_delta[FX_MAX_ROUNDS + 1][FX_MAX_SITES]; /* rounds > 0 */
    char dir[256];                                       /* a state directory, for the tests that make one */
    fm_strategy *strategy;
    fm_fedsrv *srv;
} fixture;

/* Draws, in this order: the initial vector in [−1, 1], then per site its sample count in 10 .. 99 and its
 * update(s) in [−0.5, 0.5]. No strategy or server yet (fx_start). */
static inline void fx_init(fixture *f, const fx_spec *spec)
{
    static const char *const kNames[FX_MAX_BLOCKS] = {"a", "b", "c", "d", "e", "f", "g", "h"};
    memset(f, 0, sizeof *f);
    assert_true(spec->n_blocks <= FX_MAX_BLOCKS && spec->n_sites <= FX_MAX_SITES && spec->rounds <= FX_MAX_ROUNDS);
    f->nb = spec->n_blocks;
    f->n_sites = spec->n_sites;
    for (size_t i = 0; i < f->nb; i++) {
        f->b[i] = (fm_strategy_block){.name = spec->names ? spec->names[i] : kNames[i],
                                      .offset = f->P,
                                      .numel = spec->sizes[i],
                                      .layer = -1,
                                      .n_layers = 1};
        f->P += spec->sizes[i];
    }
    fm_rng rng = fm_rng_make(fm_test_seed(), spec->stream);
    f->init = fm_test_alloc(f->P * sizeof(float));
    fm_test_fill(&rng, f->init, f->P, -1.0f, 1.0f);
    for (int k = 0; k < f->n_sites; k++) {
        f->samples[k] = 10 + (int64_t)((uint32_t)fm_rng_u64(&rng) % 90);
        for (size_t i = 0; i < f->nb; i++)
            f->trained[(size_t)k * f->nb + i] = (uint8_t)(k == spec->skip_site && i == spec->skip_block ? 0 : 1);
        assert_int_equal(fm_net_site_token(FX_SECRET, k, f->tokens[k]), FM_OK);
        f->token_ptrs[k] = f->tokens[k];
        if (spec->rounds == 0) {
            f->delta[k] = fm_test_alloc(f->P * sizeof(float));
            fm_test_fill(&rng, f->delta[k], f->P, -0.5f, 0.5f);
        }
        for (int r = 1; r <= spec->rounds; r++) {
            float *d = f->round_delta[r][k] = fm_test_alloc(f->P * sizeof(float));
            fm_test_fill(&rng, d, f->P, -0.5f, 0.5f);
            for (size_t i = 0; i < f->nb; i++)
                if (!f->trained[(size_t)k * f->nb + i])
                    memset(d + f->b[i].offset, 0, f->b[i].numel * sizeof(float));
        }
    }
}

/* A server configuration over the fixture's federation: the caller sets the run id, rounds, sites per round,
 * seed, local steps and whatever else its test needs. model_family "clip-tiny". */
static inline fm_fedsrv_config fx_config(fixture *f)
{
    fm_fedsrv_config fc;
    memset(&fc, 0, sizeof fc);
    fc.num_sites = f->n_sites;
    fc.model_family = "clip-tiny";
    fc.n_params = f->P;
    fc.blocks = f->b;
    fc.n_blocks = f->nb;
    fc.site_samples = f->samples;
    fc.site_trained = f->trained;
    fc.tokens = f->token_ptrs;
    return fc;
}

/* Creates the strategy (`kind` with its defaults, from init, or f->init when NULL) and the server of `fc` over it.
 * On failure nothing is left behind and the status is returned. */
static inline fm_status fx_start(fixture *f, fm_strategy_kind kind, const float *init, fm_fedsrv_config fc)
{
    fm_strategy_config sc = fm_strategy_default_config(kind);
    assert_int_equal(fm_strategy_create(&f->strategy, &sc, f->P, f->b, f->nb, init ? init : f->init), FM_OK);
    fc.strategy = f->strategy;
    fm_status st = fm_fedsrv_create(&f->srv, &fc);
    if (st != FM_OK) {
        fm_strategy_destroy(f->strategy);
        f->strategy = NULL;
    }
    return st;
}

/* Destroys the server and the strategy (the fixture's data stays). */
static inline void fx_stop(fixture *f)
{
    fm_fedsrv_destroy(f->srv);
    fm_strategy_destroy(f->strategy);
    f->srv = NULL;
    f->strategy = NULL;
}

static inline void fx_free(fixture *f)
{
    fx_stop(f);
    free(f->init);
    for (int k = 0; k < FX_MAX_SITES; k++) {
        free(f->delta[k]);
        for (int r = 0; r <= FX_MAX_ROUNDS; r++)
            free(f->round_delta[r][k]);
    }
}

/* Removes dir and everything below it (a test's state directory); a missing dir is nothing to do. */
static inline void fx_rm_tree(const char *dir)
{
    char path[1024];
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        const int n = snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (n < 0 || (size_t)n >= sizeof path)
            continue; /* a name too long to build: left behind */
        struct stat sb;
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            fx_rm_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Site k's push header for `round` of run `run_id`: its sample count, trained blocks and loss. */
static inline void fx_header(const fixture *f, const char *run_id, int k, int64_t round, double loss,
                             fm_wire_push_header *h)
{
    memset(h, 0, sizeof *h);
    snprintf(h->run_id, sizeof h->run_id, "%s", run_id);
    h->round = round;
    h->site = k;
    h->n_samples = f->samples[k];
    h->loss = loss;
    h->n_params = f->P;
    h->n_blocks = f->nb;
    memcpy(h->trained, f->trained + (size_t)k * f->nb, f->nb);
}

/* site k's Join message, first contact */
static inline void fx_join_msg(const fixture *f, int k, fm_wire_join *j)
{
    memset(j, 0, sizeof *j);
    j->site = k;
    strcpy(j->token, f->tokens[k]);
    strcpy(j->model_family, "clip-tiny");
    j->n_params = f->P;
    j->n_blocks = (uint32_t)f->nb;
}

/* ---- the server of the fixture, live on 127.0.0.1 in a thread ------------------------------------------------- */

typedef struct live {
    fixture *f;
    fm_fedsrv *srv;             /* what is served (NULL: f->srv) */
    fm_net_traffic *count;      /* where the served bytes are counted (NULL: traffic) */
    const fm_wire_codec *codec; /* Pull's (NULL: float32) */
    double call_timeout_s;      /* 0: 5 s */
    int max_calls, max_pushes;  /* 0: the defaults */
    fm_net_traffic traffic;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int port; /* 0 until bound, −1 if serving ended without binding */
    fm_status result;
} live;

static inline void live_on_listen(void *ctx, int port)
{
    live *l = ctx;
    pthread_mutex_lock(&l->mu);
    l->port = port;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static inline void *live_main(void *arg)
{
    live *l = arg;
    fm_net_server_options so = {.listen = "127.0.0.1:0",
                                .call_timeout_s = l->call_timeout_s > 0 ? l->call_timeout_s : 5,
                                .max_calls = l->max_calls,
                                .max_pushes = l->max_pushes,
                                .release_grace_s = 5,
                                .codec = l->codec,
                                .traffic = l->count ? l->count : &l->traffic,
                                .on_listen = live_on_listen,
                                .ctx = l};
    l->result = fm_net_serve(l->srv ? l->srv : l->f->srv, &so);
    pthread_mutex_lock(&l->mu);
    if (l->port == 0)
        l->port = -1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Serves l->srv (else l->f->srv) in a thread until the run is over; returns once the port is bound, its address
 * in target. */
static inline void live_start(live *l, char *target, size_t cap)
{
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    assert_int_equal(pthread_create(&l->th, NULL, live_main, l), 0);
    pthread_mutex_lock(&l->mu);
    while (l->port == 0)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    assert_true(l->port > 0);
    snprintf(target, cap, "127.0.0.1:%d", l->port);
}

/* Waits for the serving thread to end (every site heard DONE, or the grace period passed). */
static inline void live_join(live *l)
{
    assert_int_equal(pthread_join(l->th, NULL), 0);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
}

#endif
