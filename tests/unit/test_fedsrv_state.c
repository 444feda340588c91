/* The federation server's fault handling, without sockets: the state written after every round and a resumed
 * server that continues from it bit-identically (and refuses a missing, damaged or foreign state); parked
 * updates spilled to files beyond the memory budget, read back and checked (a damaged one stops the run);
 * over-selection, where a round closes with the first m of its m + x tasked sites and a late push is stale. */
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
#include <sys/stat.h>
#include <unistd.h>

#include "fedsrv_fixture.h"

#define NB 4
#define N_SITES 6
#define PER_ROUND 3
#define ROUNDS 3
#define SEED 7

static const size_t kSizes[NB] = {5, 40, 3, 17};

/* The federation (site 1 lacks block "b"), one update per site and round, and a fresh state directory; the
 * server is started by server_start. */
static void fixture_init(fixture *f)
{
    const fx_spec spec = {.sizes = kSizes,
                          .n_blocks = NB,
                          .n_sites = N_SITES,
                          .skip_site = 1,
                          .skip_block = 1,
                          .stream = 31,
                          .rounds = ROUNDS};
    fx_init(f, &spec);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/fedsrv-state.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
}

static void server_stop(fixture *f) { fx_stop(f); }

static void fixture_free(fixture *f)
{
    fx_stop(f);
    fx_rm_tree(f->dir);
    fx_free(f);
}

/* What the gRPC layer does: fills in the run's byte counts, here 1000·round up and 10·round down. */
static void count_bytes(void *ctx, fm_fedsrv_round_log *r, const float *global)
{
    (void)ctx;
    (void)global;
    r->bytes_up = 1000.0 * r->round;
    r->bytes_down = 10.0 * r->round;
}

typedef struct server_opts {
    int tasked;
    int resume;
    size_t budget;
    int no_state;
    uint64_t seed;
    fm_strategy_kind kind;
    const float *init; /* NULL: f->init */
} server_opts;

static fm_status server_start(fixture *f, const server_opts *o)
{
    fm_fedsrv_config fc = fx_config(f);
    fc.run_id = o->resume ? "fresh-id" : "run-abc";
    fc.rounds = ROUNDS;
    fc.sites_per_round = PER_ROUND;
    fc.seed = o->seed ? o->seed : SEED;
    fc.local_steps = 2;
    fc.on_round = count_bytes;
    fc.sites_tasked = o->tasked;
    fc.state_dir = o->no_state ? NULL : f->dir;
    fc.park_budget_bytes = o->budget;
    fc.resume = o->resume;
    return fx_start(f, o->kind, o->init, fc);
}

static int push(fixture *f, int k, int round)
{
    fm_wire_push_header h;
    fx_header(f, fm_fedsrv_run_id(f->srv), k, round, 0.25 * k + round, &h);
    fm_fedsrv_push *p = NULL;
    int code = fm_fedsrv_push_begin(f->srv, f->tokens[k], &h, &p);
    if (code)
        return code;
    fm_tensor_tx tx;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, f->round_delta[round][k], f->b, NB, h.trained, 16, h.run_id, round, k);
    while (code == 0 && fm_tensor_tx_next(&tx, &ch))
        code = fm_fedsrv_push_chunk(f->srv, p, &ch);
    fm_wire_reply reply;
    if (code == 0)
        code = fm_fedsrv_push_end(f->srv, p, &reply);
    fm_fedsrv_push_free(p);
    return code;
}

/* The reference: the round's given sites added in ascending order, as `fedmm sim` does. */
static void ref_round(fixture *f, fm_strategy *ref, int round, const int *sites, int n)
{
    assert_int_equal(fm_strategy_begin_round(ref, round), FM_OK);
    for (int i = 0; i < n; i++) {
        const int k = sites[i];
        fm_site_update u = {.n_params = f->P,
                            .delta = f->round_delta[round][k],
                            .weight = (double)f->samples[k],
                            .n_blocks = NB,
                            .trained = f->trained + (size_t)k * NB};
        assert_int_equal(fm_strategy_add_update(ref, &u), FM_OK);
    }
    assert_int_equal(fm_strategy_finish_round(ref, NULL), FM_OK);
}

static fm_strategy *make_ref(fixture *f)
{
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVGM); /* stateful: momentum is saved too */
    fm_strategy *ref = NULL;
    assert_int_equal(fm_strategy_create(&ref, &sc, f->P, f->b, NB, f->init), FM_OK);
    return ref;
}

static int file_exists(const fixture *f, const char *name)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    return access(path, F_OK) == 0;
}

/* A server killed after round 1 (with round 2 half pushed) resumes: same run id, round 2 open, the global
 * vector and momentum of round 1, and the run ends bit-identical to the uninterrupted in-order reference. */
static void test_resume_continues_bit_identical(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    fm_strategy *ref = make_ref(&f);
    server_opts o = {.kind = FM_STRATEGY_FEDAVGM, .budget = SIZE_MAX};
    assert_int_equal(server_start(&f, &o), FM_OK);
    char run_id[64];
    snprintf(run_id, sizeof run_id, "%s", fm_fedsrv_run_id(f.srv));
    int chosen[PER_ROUND];
    assert_int_equal(fm_round_sites(SEED, 1, N_SITES, PER_ROUND, chosen), FM_OK);
    for (int i = PER_ROUND - 1; i >= 0; i--)
        assert_int_equal(push(&f, chosen[i], 1), FM_NET_OK);
    ref_round(&f, ref, 1, chosen, PER_ROUND);
    assert_int_equal(fm_fedsrv_round(f.srv), 2);
    assert_true(file_exists(&f, FM_FEDSRV_STATE_FILE));
    assert_true(file_exists(&f, "server-strategy-1.safetensors"));
    /* round 2: one update arrives, then the server dies */
    assert_int_equal(fm_round_sites(SEED, 2, N_SITES, PER_ROUND, chosen), FM_OK);
    assert_int_equal(push(&f, chosen[1], 2), FM_NET_OK);
    server_stop(&f);

    o.resume = 1;
    assert_int_equal(server_start(&f, &o), FM_OK);
    assert_string_equal(fm_fedsrv_run_id(f.srv), run_id);
    assert_int_equal(fm_fedsrv_round(f.srv), 2);
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    int n = 0;
    const fm_fedsrv_round_log *h = fm_fedsrv_history(f.srv, &n);
    assert_int_equal(n, 1);
    assert_int_equal(h[0].round, 1);
    assert_int_equal(h[0].sites, PER_ROUND);
    assert_true(h[0].bytes_up == 1000.0 && h[0].bytes_down == 10.0); /* kept by the state */
    /* the lost push is pushed again; the rest of the run as usual */
    for (int round = 2; round <= ROUNDS; round++) {
        assert_int_equal(fm_round_sites(SEED, round, N_SITES, PER_ROUND, chosen), FM_OK);
        for (int i = PER_ROUND - 1; i >= 0; i--)
            assert_int_equal(push(&f, chosen[i], round), FM_NET_OK);
        ref_round(&f, ref, round, chosen, PER_ROUND);
        char name[64];
        snprintf(name, sizeof name, "server-strategy-%d.safetensors", round - 1);
        assert_false(file_exists(&f, name)); /* the previous round's strategy file is gone */
    }
    assert_true(fm_fedsrv_done(f.srv));
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    h = fm_fedsrv_history(f.srv, &n);
    assert_int_equal(n, ROUNDS);
    for (int i = 0; i < ROUNDS; i++)
        assert_int_equal(h[i].round, i + 1);
    server_stop(&f);
    /* a finished run resumes as finished */
    assert_int_equal(server_start(&f, &o), FM_OK);
    assert_true(fm_fedsrv_done(f.srv));
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    fm_strategy_destroy(ref);
    fixture_free(&f);
}

/* Flips the bits of the byte `from_end` bytes before the end of the file. */
static void flip_byte(const fixture *f, const char *name, long from_end)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, -from_end, SEEK_END), 0);
    int c = fgetc(fp);
    assert_int_not_equal(c, EOF);
    assert_int_equal(fseek(fp, -from_end, SEEK_END), 0);
    fputc(c ^ 0xFF, fp);
    fclose(fp);
}

static void corrupt(const fixture *f, const char *name, long at, const char *bytes, size_t n, int truncate_after)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, at, SEEK_SET), 0);
    assert_int_equal(fwrite(bytes, 1, n, fp), n);
    fclose(fp);
    if (truncate_after)
        assert_int_equal(truncate(path, at + (long)n), 0);
}

/* --resume refuses a missing state, a damaged one, and one written with another configuration. */
static void test_resume_refusals(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    server_opts o = {.kind = FM_STRATEGY_FEDAVGM, .budget = SIZE_MAX, .resume = 1};
    assert_int_equal(server_start(&f, &o), FM_ERR_IO); /* nothing saved yet */
    assert_non_null(strstr(fm_last_error(), "no server state"));
    o.resume = 0;
    assert_int_equal(server_start(&f, &o), FM_OK);
    int chosen[PER_ROUND];
    assert_int_equal(fm_round_sites(SEED, 1, N_SITES, PER_ROUND, chosen), FM_OK);
    for (int i = 0; i < PER_ROUND; i++)
        assert_int_equal(push(&f, chosen[i], 1), FM_NET_OK);
    server_stop(&f);
    o.resume = 1;

    server_opts other = o;
    other.seed = SEED + 1; /* other site draws */
    assert_int_equal(server_start(&f, &other), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "federation"));
    other = o;
    other.tasked = PER_ROUND + 1; /* over-selection changes the draws too */
    assert_int_equal(server_start(&f, &other), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "federation"));
    other = o;
    other.kind = FM_STRATEGY_FEDAVG;
    assert_int_equal(server_start(&f, &other), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "strategy"));
    float *init2 = fm_test_alloc(f.P * sizeof(float));
    memcpy(init2, f.init, f.P * sizeof(float));
    init2[3] += 1.0f;
    other = o;
    other.init = init2; /* another model (seed) */
    assert_int_equal(server_start(&f, &other), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "model"));
    free(init2);
    assert_int_equal(server_start(&f, &o), FM_OK); /* the right config still resumes */
    assert_int_equal(fm_fedsrv_round(f.srv), 2);
    server_stop(&f);

    /* the strategy file the state names is gone */
    char path[600], keep[600];
    snprintf(path, sizeof path, "%s/server-strategy-1.safetensors", f.dir);
    snprintf(keep, sizeof keep, "%s/keep", f.dir);
    assert_int_equal(rename(path, keep), 0);
    assert_int_not_equal(server_start(&f, &o), FM_OK);
    assert_non_null(strstr(fm_last_error(), "server-strategy-1"));
    assert_int_equal(rename(keep, path), 0);
    /* a damaged state file: garbage at its start, then one truncated */
    snprintf(path, sizeof path, "%s/%s", f.dir, FM_FEDSRV_STATE_FILE);
    snprintf(keep, sizeof keep, "%s/state-copy", f.dir);
    FILE *src = fopen(path, "rb"), *dst = fopen(keep, "wb");
    assert_non_null(src);
    assert_non_null(dst);
    int ch;
    while ((ch = fgetc(src)) != EOF)
        fputc(ch, dst);
    fclose(src);
    fclose(dst);
    corrupt(&f, FM_FEDSRV_STATE_FILE, 0, "garbage!", 8, 0);
    assert_int_equal(server_start(&f, &o), FM_ERR_PARSE);
    assert_non_null(strstr(fm_last_error(), "damaged"));
    assert_int_equal(rename(keep, path), 0);
    corrupt(&f, FM_FEDSRV_STATE_FILE, 40, "x", 1, 1);
    assert_int_equal(server_start(&f, &o), FM_ERR_PARSE);
    /* a new run (no resume) in the directory removes the old state, so a crash cannot resume the old run */
    o.resume = 0;
    assert_int_equal(server_start(&f, &o), FM_OK);
    assert_false(file_exists(&f, FM_FEDSRV_STATE_FILE));
    assert_false(file_exists(&f, "server-strategy-1.safetensors"));
    fixture_free(&f);
}

/* With a budget of 0 bytes every update that arrives out of site order goes to a file, comes back checked,
 * and the result is bit-identical; with room for one update, one stays in RAM. */
static void test_spill_bit_identical(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    /* a leftover of an earlier process is removed at start */
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f.dir, FM_FEDSRV_PARK_DIR);
    assert_int_equal(mkdir(path, 0775), 0);
    snprintf(path, sizeof path, "%s/%s/r1-site0.f32", f.dir, FM_FEDSRV_PARK_DIR);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fclose(fp);
    fm_strategy *ref = make_ref(&f);
    server_opts o = {.kind = FM_STRATEGY_FEDAVGM, .budget = 0};
    assert_int_equal(server_start(&f, &o), FM_OK);
    assert_int_not_equal(access(path, F_OK), 0);
    int chosen[PER_ROUND], in_ram = 0, spilled = 0;
    for (int round = 1; round <= ROUNDS; round++) {
        if (round == 2) { /* room for one update */
            server_stop(&f);
            o.resume = 1;
            o.budget = f.P * sizeof(float);
            assert_int_equal(server_start(&f, &o), FM_OK);
        }
        assert_int_equal(fm_round_sites(SEED, round, N_SITES, PER_ROUND, chosen), FM_OK);
        for (int i = PER_ROUND - 1; i >= 1; i--)
            assert_int_equal(push(&f, chosen[i], round), FM_NET_OK);
        fm_fedsrv_parked(f.srv, &in_ram, &spilled);
        assert_int_equal(in_ram, round == 1 ? 0 : 1);
        assert_int_equal(spilled, round == 1 ? 2 : 1);
        /* on file: both parked updates, then (with room for one) the second */
        const int on_file = chosen[round == 1 ? PER_ROUND - 1 : PER_ROUND - 2];
        snprintf(path, sizeof path, "%s/%s/r%d-site%d.f32", f.dir, FM_FEDSRV_PARK_DIR, round, on_file);
        assert_int_equal(access(path, F_OK), 0);
        assert_int_equal(push(&f, chosen[0], round), FM_NET_OK);
        assert_int_not_equal(access(path, F_OK), 0); /* read back and deleted */
        fm_fedsrv_parked(f.srv, &in_ram, &spilled);
        assert_int_equal(in_ram + spilled, 0);
        ref_round(&f, ref, round, chosen, PER_ROUND);
        assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    }
    assert_true(fm_fedsrv_done(f.srv));
    fm_strategy_destroy(ref);
    fixture_free(&f);
}

/* A spilled update that changed on disk is refused when read back: the run stops (nothing is aggregated from
 * it) instead of silently differing. */
static void test_spill_damaged(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    server_opts o = {.kind = FM_STRATEGY_FEDAVG, .budget = 0};
    assert_int_equal(server_start(&f, &o), FM_OK);
    int chosen[PER_ROUND];
    assert_int_equal(fm_round_sites(SEED, 1, N_SITES, PER_ROUND, chosen), FM_OK);
    assert_int_equal(push(&f, chosen[2], 1), FM_NET_OK);
    char name[128];
    snprintf(name, sizeof name, "%s/r1-site%d.f32", FM_FEDSRV_PARK_DIR, chosen[2]);
    flip_byte(&f, name, 5); /* one byte of one float */
    assert_int_equal(push(&f, chosen[1], 1), FM_NET_OK);
    assert_int_equal(push(&f, chosen[0], 1), FM_NET_INTERNAL);
    assert_int_not_equal(fm_fedsrv_fatal(f.srv), FM_OK);
    assert_non_null(strstr(fm_last_error(), "checksum"));
    assert_int_equal(fm_fedsrv_round(f.srv), 1);
    fixture_free(&f);
}

/* Over-selection: 4 sites tasked for 3; the round closes at the third push with those three, in site order,
 * and the fourth is refused as stale. Without a state directory nothing is spilled. */
static void test_over_selection(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    fm_strategy *ref = make_ref(&f);
    server_opts o = {.kind = FM_STRATEGY_FEDAVGM, .tasked = PER_ROUND + 1, .no_state = 1};
    assert_int_equal(server_start(&f, &o), FM_OK);
    for (int round = 1; round <= ROUNDS; round++) {
        int tasked[PER_ROUND + 1];
        assert_int_equal(fm_round_sites(SEED, round, N_SITES, PER_ROUND + 1, tasked), FM_OK);
        /* a different site is late each round: slot 3 - (round - 1) */
        const int late = PER_ROUND + 1 - round;
        int kept[PER_ROUND], n = 0;
        for (int i = 0; i <= PER_ROUND; i++)
            if (i != late)
                kept[n++] = tasked[i];
        fm_wire_task task;
        fm_wire_ref hb = {.round = round, .site = tasked[late]};
        snprintf(hb.run_id, sizeof hb.run_id, "%s", fm_fedsrv_run_id(f.srv));
        assert_int_equal(fm_fedsrv_heartbeat(f.srv, f.tokens[tasked[late]], &hb, &task), FM_NET_OK);
        assert_int_equal(task.action, FM_ACTION_TRAIN); /* the late site was tasked too */
        for (int i = n - 1; i >= 0; i--) {
            assert_int_equal(fm_fedsrv_round(f.srv), round);
            assert_int_equal(push(&f, kept[i], round), FM_NET_OK);
        }
        assert_int_equal(fm_fedsrv_round(f.srv), round + 1);
        assert_int_equal(push(&f, tasked[late], round), FM_NET_FAILED_PRECONDITION);
        if (round < ROUNDS)
            assert_non_null(strstr(fm_last_error(), "stale"));
        ref_round(&f, ref, round, kept, n);
        assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    }
    int in_ram = 0, spilled = 0;
    fm_fedsrv_parked(f.srv, &in_ram, &spilled);
    assert_int_equal(spilled, 0);
    fm_strategy_destroy(ref);
    fixture_free(&f);
}

/* ---- SCAFFOLD: control variates through the state machine -------------------------------------------------- */

/* The Δc_i site k sends with its update of `round`: −¼ of that update (zero outside its trained blocks). */
static float *control_delta(const fixture *f, int k, int round)
{
    float *dc = fm_test_alloc(f->P * sizeof(float));
    for (size_t j = 0; j < f->P; j++)
        dc[j] = -0.25f * f->round_delta[round][k][j];
    return dc;
}

enum { CV_NONE, CV_AFTER, CV_FIRST }; /* no Δc_i chunks; after the delta's (the protocol); one before them */

/* A push of site k's update of `round` with Δc_i (dc) sent as `how` says. */
static int push_cv(fixture *f, int k, int round, const float *dc, int how)
{
    fm_wire_push_header h;
    fx_header(f, fm_fedsrv_run_id(f->srv), k, round, 0.25 * k + round, &h);
    fm_fedsrv_push *p = NULL;
    int code = fm_fedsrv_push_begin(f->srv, f->tokens[k], &h, &p);
    if (code)
        return code;
    fm_tensor_tx tx, tx_c;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, f->round_delta[round][k], f->b, NB, h.trained, 16, h.run_id, round, k);
    fm_tensor_tx_init(&tx_c, dc, f->b, NB, h.trained, 16, h.run_id, round, k);
    tx_c.kind = FM_PAYLOAD_CONTROL_VARIATE;
    if (how == CV_FIRST && fm_tensor_tx_next(&tx_c, &ch))
        code = fm_fedsrv_push_chunk(f->srv, p, &ch);
    while (code == 0 && fm_tensor_tx_next(&tx, &ch))
        code = fm_fedsrv_push_chunk(f->srv, p, &ch);
    while (code == 0 && how != CV_NONE && fm_tensor_tx_next(&tx_c, &ch))
        code = fm_fedsrv_push_chunk(f->srv, p, &ch);
    fm_wire_reply reply;
    if (code == 0)
        code = fm_fedsrv_push_end(f->srv, p, &reply);
    fm_fedsrv_push_free(p);
    return code;
}

/* The reference round with Δc_i: the given sites in ascending order. */
static void ref_round_cv(fixture *f, fm_strategy *ref, int round, const int *sites, int n)
{
    assert_int_equal(fm_strategy_begin_round(ref, round), FM_OK);
    for (int i = 0; i < n; i++) {
        const int k = sites[i];
        float *dc = control_delta(f, k, round);
        fm_site_update u = {.n_params = f->P,
                            .delta = f->round_delta[round][k],
                            .weight = (double)f->samples[k],
                            .n_blocks = NB,
                            .trained = f->trained + (size_t)k * NB,
                            .control_delta = dc};
        assert_int_equal(fm_strategy_add_update(ref, &u), FM_OK);
        free(dc);
    }
    assert_int_equal(fm_strategy_finish_round(ref, NULL), FM_OK);
}

/* Site k's Task now: its last aggregated round. */
static int64_t aggregated_round(fixture *f, int k)
{
    fm_wire_ref hb = {.round = fm_fedsrv_round(f->srv), .site = k};
    snprintf(hb.run_id, sizeof hb.run_id, "%s", fm_fedsrv_run_id(f->srv));
    fm_wire_task task;
    assert_int_equal(fm_fedsrv_heartbeat(f->srv, f->tokens[k], &hb, &task), FM_NET_OK);
    return task.aggregated_round;
}

/* SCAFFOLD on the server: every push carries Δc_i after its delta (one without it, or with it first, is refused
 * and leaves the round as it was); updates arrive in descending site order and, with a budget of 0, each parked
 * one is spilled with its Δc_i (2P floats) and read back; the global vector and c equal the in-order reference,
 * bit for bit; Pull's control variate is the strategy's c; Task.aggregated_round says which round took each
 * site's update. The server is killed in round 2 and resumed: c and the aggregated rounds come back from the state,
 * and the run ends at the reference. */
static void test_scaffold_control_variates(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_SCAFFOLD);
    fm_strategy *ref = NULL;
    assert_int_equal(fm_strategy_create(&ref, &sc, f.P, f.b, NB, f.init), FM_OK);
    server_opts o = {.kind = FM_STRATEGY_SCAFFOLD, .budget = 0};
    assert_int_equal(server_start(&f, &o), FM_OK);
    int chosen[PER_ROUND];
    assert_int_equal(fm_round_sites(SEED, 1, N_SITES, PER_ROUND, chosen), FM_OK);
    for (int i = PER_ROUND - 1; i >= 0; i--) {
        float *dc = control_delta(&f, chosen[i], 1);
        if (i == PER_ROUND - 1) { /* refused: no Δc_i, Δc_i first */
            assert_int_equal(push_cv(&f, chosen[i], 1, dc, CV_NONE), FM_NET_INVALID_ARGUMENT);
            assert_non_null(strstr(fm_last_error(), "control variate"));
            assert_int_equal(push_cv(&f, chosen[i], 1, dc, CV_FIRST), FM_NET_INVALID_ARGUMENT);
            assert_non_null(strstr(fm_last_error(), "before its whole delta"));
        }
        assert_int_equal(push_cv(&f, chosen[i], 1, dc, CV_AFTER), FM_NET_OK);
        free(dc);
        if (i == 1) { /* two parked, one of them spilled with its Δc_i */
            int in_ram = 0, spilled = 0;
            fm_fedsrv_parked(f.srv, &in_ram, &spilled);
            assert_int_equal(in_ram + spilled, 2);
            assert_true(spilled >= 1);
            assert_int_equal(aggregated_round(&f, chosen[i]), 0); /* pushed, not yet aggregated */
        }
    }
    ref_round_cv(&f, ref, 1, chosen, PER_ROUND);
    assert_int_equal(fm_fedsrv_round(f.srv), 2);
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    assert_memory_equal(fm_fedsrv_control(f.srv), fm_strategy_control(ref), f.P * sizeof(float));
    assert_memory_not_equal(fm_fedsrv_control(f.srv), f.round_delta[1][0], f.P * sizeof(float));
    int in_round1[N_SITES] = {0};
    for (int i = 0; i < PER_ROUND; i++)
        in_round1[chosen[i]] = 1;
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(aggregated_round(&f, k), in_round1[k] ? 1 : 0);
    /* round 2: one update, then the server dies */
    assert_int_equal(fm_round_sites(SEED, 2, N_SITES, PER_ROUND, chosen), FM_OK);
    float *dc = control_delta(&f, chosen[2], 2);
    assert_int_equal(push_cv(&f, chosen[2], 2, dc, CV_AFTER), FM_NET_OK);
    free(dc);
    server_stop(&f);

    o.resume = 1;
    assert_int_equal(server_start(&f, &o), FM_OK);
    assert_int_equal(fm_fedsrv_round(f.srv), 2);
    assert_memory_equal(fm_fedsrv_control(f.srv), fm_strategy_control(ref), f.P * sizeof(float));
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(aggregated_round(&f, k), in_round1[k] ? 1 : 0);
    for (int round = 2; round <= ROUNDS; round++) {
        assert_int_equal(fm_round_sites(SEED, round, N_SITES, PER_ROUND, chosen), FM_OK);
        for (int i = PER_ROUND - 1; i >= 0; i--) {
            dc = control_delta(&f, chosen[i], round);
            assert_int_equal(push_cv(&f, chosen[i], round, dc, CV_AFTER), FM_NET_OK);
            free(dc);
        }
        ref_round_cv(&f, ref, round, chosen, PER_ROUND);
        for (int i = 0; i < PER_ROUND; i++)
            assert_int_equal(aggregated_round(&f, chosen[i]), round);
    }
    assert_true(fm_fedsrv_done(f.srv));
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    assert_memory_equal(fm_fedsrv_control(f.srv), fm_strategy_control(ref), f.P * sizeof(float));
    fm_strategy_destroy(ref);
    fixture_free(&f);
}

/* A push with Δc_i chunks to a server that does not run SCAFFOLD is refused, and Pull sends no control variate. */
static void test_control_variate_only_with_scaffold(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    server_opts o = {.kind = FM_STRATEGY_FEDAVG, .budget = SIZE_MAX};
    assert_int_equal(server_start(&f, &o), FM_OK);
    assert_null(fm_fedsrv_control(f.srv));
    int chosen[PER_ROUND];
    assert_int_equal(fm_round_sites(SEED, 1, N_SITES, PER_ROUND, chosen), FM_OK);
    float *dc = control_delta(&f, chosen[0], 1);
    assert_int_equal(push_cv(&f, chosen[0], 1, dc, CV_AFTER), FM_NET_INVALID_ARGUMENT);
    assert_non_null(strstr(fm_last_error(), "adapters only"));
    assert_int_equal(fm_strategy_num_updates(f.strategy), 0);
    assert_int_equal(push_cv(&f, chosen[0], 1, dc, CV_NONE), FM_NET_OK);
    free(dc);
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_continues_bit_identical),
        cmocka_unit_test(test_resume_refusals),
        cmocka_unit_test(test_spill_bit_identical),
        cmocka_unit_test(test_spill_damaged),
        cmocka_unit_test(test_over_selection),
        cmocka_unit_test(test_scaffold_control_variates),
        cmocka_unit_test(test_control_variate_only_with_scaffold),
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
