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
#include <time.h>

#include "fedmm/log.h"
#include "fedsrv_fixture.h"

static const size_t kSizes[] = {7, 131, 3, 29}; /* one block larger than a chunk */
static const char *const kNames[] = {"a", "big", "c", "d"};
#define NB (sizeof kSizes / sizeof kSizes[0])
#define CHUNK 10
#define N_SITES 4
#define PER_ROUND 3
#define ROUNDS 2
#define RUN_ID "run-conc"

/* The federation with the given block sizes (kSizes unless NULL): site 1 lacks block "big"; `tasked` sites per
 * round (over-selection when > PER_ROUND), FedAvg. */
static void fixture_init_sizes(fixture *f, uint64_t stream, int tasked, const size_t *sizes)
{
    const fx_spec spec = {.sizes = sizes ? sizes : kSizes,
                          .names = kNames,
                          .n_blocks = NB,
                          .n_sites = N_SITES,
                          .skip_site = 1,
                          .skip_block = 1,
                          .stream = stream};
    fx_init(f, &spec);
    f->tasked = tasked;
    fm_fedsrv_config fc = fx_config(f);
    fc.run_id = RUN_ID;
    fc.rounds = ROUNDS;
    fc.sites_per_round = PER_ROUND;
    fc.sites_tasked = tasked;
    fc.seed = 7;
    fc.local_steps = 3;
    assert_int_equal(fx_start(f, FM_STRATEGY_FEDAVG, NULL, fc), FM_OK);
}

static void fixture_init(fixture *f, uint64_t stream, int tasked) { fixture_init_sizes(f, stream, tasked, NULL); }

static void chosen_in(const fixture *f, int round, int *chosen)
{
    assert_int_equal(fm_round_sites(7, round, N_SITES, f->tasked, chosen), FM_OK);
}

static void header_for(const fixture *f, int k, int64_t round, fm_wire_push_header *h)
{
    fx_header(f, RUN_ID, k, round, 0.5 + k, h);
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
                                .delta = f->delta[k],
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
    fm_tensor_tx_init(&s->tx, f->delta[k], f->b, NB, s->h.trained, CHUNK, RUN_ID, round, k);
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
    fx_free(&f);
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
    fx_free(&f);
}

/* ---- a live server --------------------------------------------------------------------------------------- */

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
        fm_tensor_tx_init(&tx, s->f->delta[s->site], s->f->b, NB, h.trained, CHUNK, RUN_ID, 1, s->site);
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

/* One site's round through real calls: Join (TRAIN), Pull (the in-order global vector), Push. Returns the payload
 * bytes pushed. */
static double site_round(fixture *f, fm_net_client **c, int k, int round)
{
    float *pulled = fm_test_alloc(f->P * sizeof(float)), *want = fm_test_alloc(f->P * sizeof(float));
    reference(f, round - 1, want);
    fm_wire_join j;
    fx_join_msg(f, k, &j);
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
    if (fm_net_push(c[k], &h, f->delta[k], f->b, CHUNK, &reply) != FM_OK)
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
    char target[64];
    live_start(&l, target, sizeof target);
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
    live_join(&l);
    staller_join(&s);
    assert_int_not_equal(s.code, 0);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    fx_free(&f);
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
    char target[64];
    live_start(&l, target, sizeof target);
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
    live_join(&l);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    fx_free(&f);
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
    char target[64];
    live_start(&l, target, sizeof target);
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
    live_join(&l);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    fx_free(&f);
}

/* ---- a Pull that spans its round's closing ------------------------------------------------------------------ */

/* Large enough that the server cannot hand the whole vector to gRPC while the site reads nothing: loopback and
 * HTTP/2 flow control buffer a few MiB at most. */
#define SPAN_BIG ((size_t)1024 * 1024)

typedef struct span_ctx {
    fixture *f;
    fm_net_client **c;
    const int *chosen;
    double pushed;
    int closed; /* the round's other sites pushed */
} span_ctx;

/* Called once the Pull's first chunk arrived, while the Pull reads nothing: the round's other tasked sites push,
 * and the round closes under the Pull. */
static void span_close_round(void *arg)
{
    span_ctx *sc = arg;
    for (int i = PER_ROUND - 1; i >= 0; i--)
        sc->pushed += site_round(sc->f, sc->c, sc->chosen[i], 1);
    sc->closed = 1;
}

/* Over-selection (4 sites tasked, the round closes at 3): the fourth site's Pull of round 1 (a 24 MiB vector)
 * has its first chunk when it stops reading; the other three push, round 1 closes and round 2 opens while the
 * Pull is held mid-stream by flow control. Reading on, the site gets FAILED_PRECONDITION ("stale round 1 ... was
 * being sent"): the server does not finish a Pull from the next round's vector. Had the whole vector been on its
 * way before the close, it would have to equal round 1's exactly; the size makes that not happen, and the test
 * checks that it did not (a mix of rounds fails either way). The site's push for round 1 is then refused as
 * stale, its Pull of round 2 gets round 2's vector, and the run ends at the in-order result. */
static void test_pull_spans_round_close(void **state)
{
    (void)state;
    const size_t sizes[NB] = {7, SPAN_BIG, 3, 29};
    fixture f;
    fixture_init_sizes(&f, 6, N_SITES, sizes);
    live l = {.f = &f, .call_timeout_s = 60};
    char target[64];
    live_start(&l, target, sizeof target);
    fm_net_client *c[N_SITES];
    int chosen[N_SITES];
    chosen_in(&f, 1, chosen);
    const int late = chosen[3];
    for (int k = 0; k < N_SITES; k++) /* the late site's receive window small: its pause holds the server back */
        assert_int_equal(k == late ? fm_net_client_create_narrow(&c[k], target, f.tokens[k], 60)
                                   : fm_net_client_create(&c[k], target, f.tokens[k], 60),
                         FM_OK); /* the others are the first PER_ROUND in site order: reference()'s round 1 */
    fm_wire_join j;
    fx_join_msg(&f, late, &j);
    fm_wire_task task;
    assert_int_equal(fm_net_join(c[late], &j, &task), FM_OK);
    assert_int_equal(task.action, FM_ACTION_TRAIN);
    assert_int_equal(task.round, 1);
    float *pulled = fm_test_alloc(f.P * sizeof(float)), *want = fm_test_alloc(f.P * sizeof(float));
    span_ctx sc = {.f = &f, .c = c, .chosen = chosen};
    fm_wire_ref r = {.round = 1, .site = late};
    strcpy(r.run_id, RUN_ID);
    const fm_status st = fm_net_pull_paused(c[late], &r, pulled, NULL, f.b, NB, 1, span_close_round, &sc);
    assert_true(sc.closed);
    if (st == FM_OK) { /* all of it was on its way before the close: round 1's vector, whole */
        assert_memory_equal(pulled, f.init, f.P * sizeof(float));
        fail_msg("the whole %zu-float vector went out before the round closed: the Pull was not held mid-stream", f.P);
    }
    assert_int_equal(fm_net_last_code(c[late]), FM_NET_FAILED_PRECONDITION);
    assert_non_null(strstr(fm_last_error(), "stale round 1"));
    assert_non_null(strstr(fm_last_error(), "global vector was being sent"));
    /* its update for the closed round is refused as stale */
    fm_wire_push_header h;
    header_for(&f, late, 1, &h);
    fm_wire_reply reply;
    assert_int_equal(fm_net_push(c[late], &h, f.delta[late], f.b, 0, &reply), FM_ERR_NETWORK);
    assert_int_equal(fm_net_last_code(c[late]), FM_NET_FAILED_PRECONDITION);
    assert_non_null(strstr(fm_last_error(), "stale round 1"));
    /* round 2: its Pull gets round 2's vector, whole */
    r.round = 2;
    assert_int_equal(fm_net_pull(c[late], &r, pulled, f.b, NB), FM_OK);
    reference(&f, 1, want);
    assert_memory_equal(pulled, want, f.P * sizeof(float));
    const double pushed = sc.pushed + run_rounds_from(&f, c, 2, -1);
    for (int k = 0; k < N_SITES; k++) { /* everyone hears DONE: the server leaves */
        fm_wire_ref hb = {.round = ROUNDS, .site = k};
        strcpy(hb.run_id, RUN_ID);
        assert_int_equal(fm_net_heartbeat(c[k], &hb, &task), FM_OK);
        assert_int_equal(task.action, FM_ACTION_DONE);
    }
    live_join(&l);
    check_result(&f, &l, pushed);
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    free(pulled);
    free(want);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved_pushes),
        cmocka_unit_test(test_round_closes_under_a_push),
        cmocka_unit_test(test_stalled_push_holds_only_itself),
        cmocka_unit_test(test_stall_cancelled_and_busy),
        cmocka_unit_test(test_push_waits_for_a_slot),
        cmocka_unit_test(test_pull_spans_round_close),
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
