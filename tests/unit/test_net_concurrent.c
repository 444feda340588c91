/* The server serves calls concurrently: pushes interleaved in the state machine aggregate as in site order; a
 * push whose round closes midway is refused at its next chunk; of two streams of one site the first to end wins.
 * On a live server (127.0.0.1): a site stalled in the middle of its Push stream does not hold the others (the
 * whole federation runs while it stays open); a stall is cancelled after call_timeout_s and its partial push
 * leaves no trace; beyond max_calls calls in flight a call is refused as busy (RESOURCE_EXHAUSTED, "fedmm-busy").
 * The stalled calls are real gRPC streams that send a valid header and one chunk and then nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"

#ifdef FEDMM_WITH_GRPC
#include <pthread.h>
#include <time.h>

#include "fedmm/log.h"
#include "fedmm/site_train.h"
#include "net/fedsrv.h"
#include "net/net.h"
#include "net/wire.h"

static const size_t kSizes[] = {7, 131, 3, 29}; /* one block larger than a chunk */
#define NB (sizeof kSizes / sizeof kSizes[0])
#define CHUNK 10
#define N_SITES 4
#define PER_ROUND 3
#define ROUNDS 2
#define RUN_ID "run-conc"
#define SECRET "a-test-secret-of-some-length"

typedef struct fixture {
    fm_strategy_block b[NB];
    size_t P;
    int tasked; /* sites tasked per round (over-selection when > PER_ROUND) */
    int64_t samples[N_SITES];
    uint8_t trained[N_SITES * NB];
    char tokens[N_SITES][65];
    const char *token_ptrs[N_SITES];
    float *init;
    float *deltas[N_SITES];
    fm_strategy *strategy;
    fm_fedsrv *srv;
} fixture;

static void fixture_init(fixture *f, uint64_t stream, int tasked)
{
    memset(f, 0, sizeof *f);
    static const char *names[] = {"a", "big", "c", "d"};
    for (size_t i = 0; i < NB; i++) {
        f->b[i] = (fm_strategy_block){.name = names[i], .offset = f->P, .numel = kSizes[i], .layer = -1, .n_layers = 1};
        f->P += kSizes[i];
    }
    f->tasked = tasked;
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    f->init = fm_test_alloc(f->P * sizeof(float));
    fm_test_fill(&rng, f->init, f->P, -1.0f, 1.0f);
    for (int k = 0; k < N_SITES; k++) {
        f->samples[k] = 10 + (int64_t)((uint32_t)fm_rng_u64(&rng) % 90);
        for (size_t i = 0; i < NB; i++)
            f->trained[k * NB + i] = (uint8_t)(k == 1 && i == 1 ? 0 : 1); /* site 1 skips block "big" */
        assert_int_equal(fm_net_site_token(SECRET, k, f->tokens[k]), FM_OK);
        f->token_ptrs[k] = f->tokens[k];
        f->deltas[k] = fm_test_alloc(f->P * sizeof(float));
        fm_test_fill(&rng, f->deltas[k], f->P, -0.5f, 0.5f);
    }
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    assert_int_equal(fm_strategy_create(&f->strategy, &sc, f->P, f->b, NB, f->init), FM_OK);
    fm_fedsrv_config fc = {.run_id = RUN_ID,
                           .rounds = ROUNDS,
                           .num_sites = N_SITES,
                           .sites_per_round = PER_ROUND,
                           .sites_tasked = tasked,
                           .seed = 7,
                           .local_steps = 3,
                           .model_family = "clip-tiny",
                           .n_params = f->P,
                           .blocks = f->b,
                           .n_blocks = NB,
                           .site_samples = f->samples,
                           .site_trained = f->trained,
                           .tokens = f->token_ptrs,
                           .strategy = f->strategy};
    assert_int_equal(fm_fedsrv_create(&f->srv, &fc), FM_OK);
}

static void fixture_free(fixture *f)
{
    fm_fedsrv_destroy(f->srv);
    fm_strategy_destroy(f->strategy);
    free(f->init);
    for (int k = 0; k < N_SITES; k++)
        free(f->deltas[k]);
}

static void chosen_in(const fixture *f, int round, int *chosen)
{
    assert_int_equal(fm_round_sites(7, round, N_SITES, f->tasked, chosen), FM_OK);
}

static void header_for(const fixture *f, int k, int64_t round, fm_wire_push_header *h)
{
    memset(h, 0, sizeof *h);
    strcpy(h->run_id, RUN_ID);
    h->round = round;
    h->site = k;
    h->n_samples = f->samples[k];
    h->loss = 0.5 + k;
    h->n_params = f->P;
    h->n_blocks = NB;
    memcpy(h->trained, f->trained + (size_t)k * NB, NB);
}

/* The global vector after `rounds` rounds that aggregate, each, the first PER_ROUND tasked sites in site order. */
static void reference(const fixture *f, int rounds, float *out)
{
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *ref = NULL;
    assert_int_equal(fm_strategy_create(&ref, &sc, f->P, f->b, NB, f->init), FM_OK);
    for (int round = 1; round <= rounds; round++) {
        int chosen[N_SITES];
        chosen_in(f, round, chosen);
        assert_int_equal(fm_strategy_begin_round(ref, round), FM_OK);
        for (int i = 0; i < PER_ROUND; i++) {
            const int k = chosen[i];
            fm_site_update u = {.n_params = f->P,
                                .delta = f->deltas[k],
                                .weight = (double)f->samples[k],
                                .n_blocks = NB,
                                .trained = f->trained + (size_t)k * NB};
            assert_int_equal(fm_strategy_add_update(ref, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(ref, NULL), FM_OK);
    }
    memcpy(out, fm_strategy_global(ref), f->P * sizeof(float));
    fm_strategy_destroy(ref);
}

/* ---- the state machine with pushes in progress at once ------------------------------------------------- */

/* A push's messages decoded as the server decodes them: the header, then its chunks in order. */
typedef struct push_stream {
    fm_wire_push_header h;
    fm_tensor_tx tx;
    fm_fedsrv_push *p;
} push_stream;

static int stream_begin(fixture *f, push_stream *s, int k, int64_t round)
{
    header_for(f, k, round, &s->h);
    fm_tensor_tx_init(&s->tx, f->deltas[k], f->b, NB, s->h.trained, CHUNK, RUN_ID, round, k);
    s->p = NULL;
    return fm_fedsrv_push_begin(f->srv, f->tokens[k], &s->h, &s->p);
}

/* Sends up to n chunks; returns the first refusal (0: all taken), *left = 0 once the stream is out of chunks. */
static int stream_chunks(fixture *f, push_stream *s, int n, int *left)
{
    *left = 1;
    for (int i = 0; i < n; i++) {
        fm_wire_chunk ch;
        if (!fm_tensor_tx_next(&s->tx, &ch)) {
            *left = 0;
            return 0;
        }
        fm_wire_buf buf;
        fm_wire_push_msg m;
        assert_int_equal(fm_wire_encode_push_chunk(&ch, &buf), FM_OK);
        assert_int_equal(fm_wire_decode_push(buf.data, buf.len, &m), FM_OK);
        fm_wire_buf_free(&buf);
        const int code = fm_fedsrv_push_chunk(f->srv, s->p, &m.chunk);
        fm_wire_push_msg_free(&m);
        if (code)
            return code;
    }
    return 0;
}

static int stream_end(fixture *f, push_stream *s)
{
    fm_wire_reply reply;
    const int code = fm_fedsrv_push_end(f->srv, s->p, &reply);
    fm_fedsrv_push_free(s->p);
    s->p = NULL;
    return code;
}

/* Every tasked site's push open at once, their chunks interleaved, ends in descending site order: the same global
 * vector as the in-order sum, bit for bit. */
static void test_interleaved_pushes(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 1, PER_ROUND);
    for (int round = 1; round <= ROUNDS; round++) {
        int chosen[N_SITES];
        chosen_in(&f, round, chosen);
        push_stream s[PER_ROUND];
        for (int i = 0; i < PER_ROUND; i++)
            assert_int_equal(stream_begin(&f, &s[i], chosen[i], round), FM_NET_OK);
        for (int more = 1; more;) {
            more = 0;
            for (int i = 0; i < PER_ROUND; i++) {
                int left = 0;
                assert_int_equal(stream_chunks(&f, &s[i], 1 + i, &left), FM_NET_OK);
                more |= left;
            }
        }
        for (int i = PER_ROUND - 1; i >= 0; i--) {
            assert_int_equal(fm_fedsrv_round(f.srv), round);
            assert_int_equal(stream_end(&f, &s[i]), FM_NET_OK);
        }
        assert_int_equal(fm_fedsrv_round(f.srv), round + 1);
    }
    float *want = fm_test_alloc(f.P * sizeof(float));
    reference(&f, ROUNDS, want);
    assert_memory_equal(fm_strategy_global(f.strategy), want, f.P * sizeof(float));
    free(want);
    fixture_free(&f);
}

/* Over-selection (all 4 sites tasked, the round closes at 3): the fourth site's push is in progress when the
 * round closes; its next chunk is refused as stale and the new round is untouched. Two streams of one site: the
 * first to end is taken, the other refused as a duplicate. */
static void test_round_closes_under_a_push(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 2, N_SITES);
    int chosen[N_SITES];
    chosen_in(&f, 1, chosen);
    push_stream late, twin;
    assert_int_equal(stream_begin(&f, &late, chosen[3], 1), FM_NET_OK);
    int left = 0;
    assert_int_equal(stream_chunks(&f, &late, 1, &left), FM_NET_OK);
    for (int i = 0; i < PER_ROUND; i++) {
        push_stream s;
        assert_int_equal(stream_begin(&f, &s, chosen[i], 1), FM_NET_OK);
        if (i == 0) /* a second stream of the same site, open at the same time */
            assert_int_equal(stream_begin(&f, &twin, chosen[0], 1), FM_NET_OK);
        assert_int_equal(stream_chunks(&f, &s, 1000, &left), FM_NET_OK);
        assert_int_equal(stream_end(&f, &s), FM_NET_OK);
        if (i == 0) {
            assert_int_equal(stream_chunks(&f, &twin, 1000, &left), FM_NET_OK);
            assert_int_equal(stream_end(&f, &twin), FM_NET_ALREADY_EXISTS);
            assert_int_equal(fm_strategy_num_updates(f.strategy), 1);
        }
    }
    assert_int_equal(fm_fedsrv_round(f.srv), 2);
    assert_int_equal(stream_chunks(&f, &late, 1, &left), FM_NET_FAILED_PRECONDITION);
    assert_non_null(strstr(fm_last_error(), "stale round 1"));
    fm_fedsrv_push_free(late.p);
    assert_int_equal(fm_strategy_num_updates(f.strategy), 0); /* round 2 has nothing */
    float *want = fm_test_alloc(f.P * sizeof(float));
    reference(&f, 1, want);
    assert_memory_equal(fm_strategy_global(f.strategy), want, f.P * sizeof(float));
    free(want);
    fixture_free(&f);
}

/* ---- a live server --------------------------------------------------------------------------------------- */

typedef struct live {
    fixture *f;
    double call_timeout_s;
    int max_calls, max_pushes;
    fm_net_traffic traffic;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int port; /* 0 until bound, −1 if serving ended without binding */
    fm_status result;
} live;

static void live_on_listen(void *ctx, int port)
{
    live *l = ctx;
    pthread_mutex_lock(&l->mu);
    l->port = port;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void *live_main(void *arg)
{
    live *l = arg;
    fm_net_server_options so = {.listen = "127.0.0.1:0",
                                .call_timeout_s = l->call_timeout_s,
                                .max_calls = l->max_calls,
                                .max_pushes = l->max_pushes,
                                .release_grace_s = 5,
                                .traffic = &l->traffic,
                                .on_listen = live_on_listen,
                                .ctx = l};
    l->result = fm_net_serve(l->f->srv, &so);
    pthread_mutex_lock(&l->mu);
    if (l->port == 0)
        l->port = -1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void live_start(live *l, pthread_t *th, char *target, size_t cap)
{
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    assert_int_equal(pthread_create(th, NULL, live_main, l), 0);
    pthread_mutex_lock(&l->mu);
    while (l->port == 0)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    assert_true(l->port > 0);
    snprintf(target, cap, "127.0.0.1:%d", l->port);
}

/* A site that opens its Push, sends the header and the first chunk, and then stalls (another thread). */
typedef struct staller {
    fixture *f;
    const char *target;
    int site;
    double stall_s;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sent, returned, code;
} staller;

static void staller_sent(void *ctx)
{
    staller *s = ctx;
    pthread_mutex_lock(&s->mu);
    s->sent = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *staller_main(void *arg)
{
    staller *s = arg;
    fm_net_client *c = NULL;
    int code = -1;
    if (fm_net_client_create(&c, s->target, s->f->tokens[s->site], 20) == FM_OK) {
        fm_wire_push_header h;
        header_for(s->f, s->site, 1, &h);
        fm_tensor_tx tx;
        fm_wire_chunk ch;
        fm_tensor_tx_init(&tx, s->f->deltas[s->site], s->f->b, NB, h.trained, CHUNK, RUN_ID, 1, s->site);
        fm_wire_buf msgs[2] = {{0}, {0}};
        if (fm_wire_encode_push_header(&h, &msgs[0]) == FM_OK && fm_tensor_tx_next(&tx, &ch) == 1 &&
            fm_wire_encode_push_chunk(&ch, &msgs[1]) == FM_OK)
            code = fm_net_call_raw_stall(c, "/fedmm.Federation/Push", msgs, 2, s->stall_s, staller_sent, s);
        fm_wire_buf_free(&msgs[0]);
        fm_wire_buf_free(&msgs[1]);
        fm_net_client_destroy(c);
    }
    pthread_mutex_lock(&s->mu);
    s->sent = 1; /* also when it never got that far: the waiter must not hang */
    s->returned = 1;
    s->code = code;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void staller_start(staller *s)
{
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    assert_int_equal(pthread_create(&s->th, NULL, staller_main, s), 0);
    pthread_mutex_lock(&s->mu);
    while (!s->sent)
        pthread_cond_wait(&s->cv, &s->mu);
    const int returned = s->returned;
    pthread_mutex_unlock(&s->mu);
    assert_false(returned); /* the header and chunk went out and the call is open */
}

static int staller_returned(staller *s)
{
    pthread_mutex_lock(&s->mu);
    const int r = s->returned;
    pthread_mutex_unlock(&s->mu);
    return r;
}

static void staller_join(staller *s)
{
    assert_int_equal(pthread_join(s->th, NULL), 0);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}

static void join_msg(const fixture *f, int k, fm_wire_join *j)
{
    memset(j, 0, sizeof *j);
    j->site = k;
    strcpy(j->token, f->tokens[k]);
    strcpy(j->model_family, "clip-tiny");
    j->n_params = f->P;
    j->n_blocks = NB;
}

/* One site's round through real calls: Join (TRAIN), Pull (the in-order global vector), Push. Returns the payload
 * bytes pushed. */
static double site_round(fixture *f, fm_net_client **c, int k, int round)
{
    float *pulled = fm_test_alloc(f->P * sizeof(float)), *want = fm_test_alloc(f->P * sizeof(float));
    reference(f, round - 1, want);
    fm_wire_join j;
    join_msg(f, k, &j);
    fm_wire_task task;
    assert_int_equal(fm_net_join(c[k], &j, &task), FM_OK);
    assert_int_equal(task.action, FM_ACTION_TRAIN);
    assert_int_equal(task.round, round);
    assert_int_equal(task.deadline_unix_ms, 0); /* no round deadline configured */
    fm_wire_ref r = {.round = round, .site = k};
    strcpy(r.run_id, RUN_ID);
    if (fm_net_pull(c[k], &r, pulled, f->b, NB) != FM_OK)
        fail_msg("site %d's pull of round %d: %s", k, round, fm_last_error());
    assert_memory_equal(pulled, want, f->P * sizeof(float));
    fm_wire_push_header h;
    header_for(f, k, round, &h);
    fm_wire_reply reply;
    if (fm_net_push(c[k], &h, f->deltas[k], f->b, CHUNK, &reply) != FM_OK)
        fail_msg("site %d's push of round %d: %s", k, round, fm_last_error());
    free(pulled);
    free(want);
    return fm_net_last_push_bytes(c[k]);
}

/* Every round from `first` on, each tasked site in descending site order except `skip` in round `first`. */
static double run_rounds_from(fixture *f, fm_net_client **c, int first, int skip)
{
    double pushed = 0.0;
    for (int round = first; round <= ROUNDS; round++) {
        int chosen[N_SITES];
        chosen_in(f, round, chosen);
        for (int i = PER_ROUND - 1; i >= 0; i--)
            if (round != first || chosen[i] != skip)
                pushed += site_round(f, c, chosen[i], round);
    }
    return pushed;
}

static double run_rounds(fixture *f, fm_net_client **c) { return run_rounds_from(f, c, 1, -1); }

/* Every site that took part hears DONE, and the server leaves. */
static void release_all(fixture *f, fm_net_client **c)
{
    int took_part[N_SITES] = {0};
    for (int round = 1; round <= ROUNDS; round++) {
        int chosen[N_SITES];
        chosen_in(f, round, chosen);
        for (int i = 0; i < PER_ROUND; i++)
            took_part[chosen[i]] = 1;
    }
    for (int k = 0; k < N_SITES; k++) {
        if (!took_part[k])
            continue;
        fm_wire_ref hb = {.round = ROUNDS, .site = k};
        strcpy(hb.run_id, RUN_ID);
        fm_wire_task task;
        if (fm_net_heartbeat(c[k], &hb, &task) != FM_OK)
            fail_msg("site %d's last heartbeat: %s", k, fm_last_error());
        assert_int_equal(task.action, FM_ACTION_DONE);
    }
}

static void check_result(fixture *f, const live *l, double pushed)
{
    assert_int_equal(l->result, FM_OK);
    float *want = fm_test_alloc(f->P * sizeof(float));
    reference(f, ROUNDS, want);
    assert_memory_equal(fm_strategy_global(f->strategy), want, f->P * sizeof(float));
    assert_true(l->traffic.bytes_up == pushed); /* the stalled push's chunk is not counted */
    free(want);
}

/* A site stalls in the middle of its round-1 Push (header and one chunk sent, then nothing) while the server's
 * call timeout is 30 s and each site's call deadline 20 s: a server that served one call at a time would fail
 * the others' calls. Here the whole federation runs, the same site's real push included, while the stalled call
 * stays open; the server's exit then ends it. */
static void test_stalled_push_holds_only_itself(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 3, PER_ROUND);
    live l = {.f = &f, .call_timeout_s = 30};
    pthread_t th;
    char target[64];
    live_start(&l, &th, target, sizeof target);
    int chosen[N_SITES];
    chosen_in(&f, 1, chosen);
    staller s = {.f = &f, .target = target, .site = chosen[0], .stall_s = 120};
    staller_start(&s);
    fm_net_client *c[N_SITES];
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(fm_net_client_create(&c[k], target, f.tokens[k], 20), FM_OK);
    const double pushed = run_rounds(&f, c);
    assert_false(staller_returned(&s)); /* it was open throughout */
    release_all(&f, c);
    assert_int_equal(pthread_join(th, NULL), 0);
    staller_join(&s);
    assert_int_not_equal(s.code, 0);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    pthread_mutex_destroy(&l.mu);
    pthread_cond_destroy(&l.cv);
    fixture_free(&f);
}

/* max_calls = 1 and a 1.5 s call timeout: while the stalled Push holds the only slot, another site's call is
 * refused as busy (RESOURCE_EXHAUSTED, fm_net_last_busy); the server then cancels the stall (the client sees
 * CANCELLED long before its own 120 s), its partial push leaves round, updates and traffic as they were, and the
 * federation runs to the in-order result. */
static void test_stall_cancelled_and_busy(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 4, PER_ROUND);
    live l = {.f = &f, .call_timeout_s = 1.5, .max_calls = 1};
    pthread_t th;
    char target[64];
    live_start(&l, &th, target, sizeof target);
    int chosen[N_SITES];
    chosen_in(&f, 1, chosen);
    staller s = {.f = &f, .target = target, .site = chosen[0], .stall_s = 120};
    staller_start(&s);
    fm_net_client *c[N_SITES];
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(fm_net_client_create(&c[k], target, f.tokens[k], 20), FM_OK);
    const int k1 = chosen[1];
    fm_wire_ref hb = {.round = 1, .site = k1};
    strcpy(hb.run_id, RUN_ID);
    fm_wire_task task;
    int busy = 0, tries = 0;
    /* heartbeats until one gets through after the stall ended (bounded: the stall ends after 1.5 s) */
    for (;;) {
        const fm_status st = fm_net_heartbeat(c[k1], &hb, &task);
        if (st == FM_OK && staller_returned(&s))
            break;
        if (st != FM_OK) {
            assert_int_equal(fm_net_last_code(c[k1]), 8 /* RESOURCE_EXHAUSTED */);
            assert_true(fm_net_last_busy(c[k1]));
            busy++;
        }
        assert_true(++tries < 2000);
        const struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(busy > 0);
    staller_join(&s);
    assert_int_equal(s.code, 1 /* CANCELLED by the server */);
    assert_int_equal(fm_fedsrv_round(f.srv), 1); /* read after the serving thread went quiet: it is idle here */
    assert_int_equal(fm_strategy_num_updates(f.strategy), 0);
    assert_true(l.traffic.bytes_up == 0.0);
    const double pushed = run_rounds(&f, c);
    release_all(&f, c);
    assert_int_equal(pthread_join(th, NULL), 0);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    pthread_mutex_destroy(&l.mu);
    pthread_cond_destroy(&l.cv);
    fixture_free(&f);
}

/* max_pushes = 1 and a 3 s call timeout: while a stalled Push holds the only receiving slot, another site's Join
 * and Pull are served, and its Push waits, unread, until the server has cancelled the stall (so it cannot end
 * sooner than 3 s after the stall was taken; without the wait it takes milliseconds); it is then taken and the run
 * ends at the in-order result. */
static void test_push_waits_for_a_slot(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 5, PER_ROUND);
    live l = {.f = &f, .call_timeout_s = 3, .max_pushes = 1};
    pthread_t th;
    char target[64];
    live_start(&l, &th, target, sizeof target);
    int chosen[N_SITES];
    chosen_in(&f, 1, chosen);
    staller s = {.f = &f, .target = target, .site = chosen[0], .stall_s = 120};
    staller_start(&s);
    const double t0 = fm_now_seconds();
    fm_net_client *c[N_SITES];
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(fm_net_client_create(&c[k], target, f.tokens[k], 20), FM_OK);
    double pushed = site_round(&f, c, chosen[1], 1);
    assert_true(fm_now_seconds() - t0 >= 2.5);
    staller_join(&s);
    assert_int_equal(s.code, 1 /* CANCELLED by the server */);
    pushed += run_rounds_from(&f, c, 1, chosen[1]);
    release_all(&f, c);
    assert_int_equal(pthread_join(th, NULL), 0);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    pthread_mutex_destroy(&l.mu);
    pthread_cond_destroy(&l.cv);
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved_pushes),
        cmocka_unit_test(test_round_closes_under_a_push),
        cmocka_unit_test(test_stalled_push_holds_only_itself),
        cmocka_unit_test(test_stall_cancelled_and_busy),
        cmocka_unit_test(test_push_waits_for_a_slot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
#else
int main(void)
{
    printf("SKIP: built without gRPC (FEDMM_WITH_GRPC)\n");
    return FM_TEST_SKIP;
}
#endif
