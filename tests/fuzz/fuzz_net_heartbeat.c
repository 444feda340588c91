/* Fuzz target for the Heartbeat handler: HeartbeatRequest decoding (fm_wire_decode_ref) and the state machine
 * (fm_fedsrv_heartbeat) on a fresh fake federation, in round 1 or, when the first byte's bit 1 is set, after
 * round 1 was aggregated (two valid pushes), or after the whole run (bit 2). Bit 0: the call carries the real
 * token of the message's site, else a wrong one. A refused heartbeat changes nothing; an accepted one answers
 * the task the site's state calls for. Built and run as fuzz_net_join.c describes. */
#include "fuzz_net.h"

/* A valid push of site k's update (all 0.25) in `round`; the state machine must accept it. */
static void push_valid(fz_fed *f, int k, int round)
{
    fm_wire_push_header h;
    memset(&h, 0, sizeof h);
    snprintf(h.run_id, sizeof h.run_id, FZ_RUN);
    h.round = round;
    h.site = k;
    h.n_samples = f->samples[k];
    h.loss = 1.0;
    h.n_params = f->P;
    h.n_blocks = FZ_NB;
    memcpy(h.trained, f->trained + (size_t)k * FZ_NB, FZ_NB);
    fm_fedsrv_push *p = NULL;
    CHECK(fm_fedsrv_push_begin(f->srv, f->tokens[k], &h, &p) == FM_NET_OK);
    float delta[64];
    for (size_t i = 0; i < f->P; i++)
        delta[i] = 0.25f;
    fm_tensor_tx tx;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, delta, f->blocks, FZ_NB, h.trained, 16, FZ_RUN, round, k);
    while (fm_tensor_tx_next(&tx, &ch) > 0)
        CHECK(fm_fedsrv_push_chunk(f->srv, p, &ch) == FM_NET_OK);
    fm_wire_reply reply;
    CHECK(fm_fedsrv_push_end(f->srv, p, &reply) == FM_NET_OK);
    fm_fedsrv_push_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t flags = data[0];
    fm_wire_ref h;
    fm_status st = fm_wire_decode_ref(data + 1, size - 1, &h);
    CHECK(st == FM_OK || st == FM_ERR_PARSE || st == FM_ERR_RANGE);
    if (st != FM_OK) {
        CHECK(fm_last_error()[0] != '\0');
        return 0;
    }
    fuzz_count.decoded++;
    fz_fed f;
    fz_open(&f);
    const int rounds_done = flags & 4 ? FZ_ROUNDS : flags & 2 ? 1 : 0;
    for (int r = 1; r <= rounds_done; r++) {
        int chosen[FZ_PER_ROUND];
        fz_chosen(r, chosen);
        push_valid(&f, chosen[1], r); /* out of order: the first is parked */
        push_valid(&f, chosen[0], r);
    }
    CHECK(fm_fedsrv_round(f.srv) == rounds_done + 1);
    float before[64];
    memcpy(before, fm_strategy_global(f.strategy), f.P * sizeof(float));
    const char *bearer = flags & 1 ? fz_token(&f, h.site) : "not-a-token";
    fm_wire_task task;
    const int code = fm_fedsrv_heartbeat(f.srv, bearer, &h, &task);
    CHECK(code == FM_NET_OK || code == FM_NET_INVALID_ARGUMENT || code == FM_NET_FAILED_PRECONDITION ||
          code == FM_NET_UNAUTHENTICATED);
    CHECK(memcmp(before, fm_strategy_global(f.strategy), f.P * sizeof(float)) == 0);
    CHECK(fm_fedsrv_round(f.srv) == rounds_done + 1 && fm_strategy_num_updates(f.strategy) == 0);
    if (code == FM_NET_OK) {
        fuzz_count.accepted++;
        CHECK(h.site >= 0 && h.site < FZ_SITES && (flags & 1) && strcmp(h.run_id, FZ_RUN) == 0);
        if (rounds_done == FZ_ROUNDS) {
            CHECK(task.action == FM_ACTION_DONE);
        } else {
            int chosen[FZ_PER_ROUND];
            fz_chosen(rounds_done + 1, chosen);
            const int sampled = chosen[0] == h.site || chosen[1] == h.site;
            CHECK(task.round == rounds_done + 1 && (task.action == FM_ACTION_TRAIN) == sampled);
        }
        fuzz_count.complete++;
    } else {
        CHECK(fm_last_error()[0] != '\0');
    }
    fz_close(&f);
    return 0;
}

size_t fuzz_seeds(fm_wire_buf *out, size_t max)
{
    size_t n = 0;
    for (int k = -1; k <= FZ_SITES; k++)
        for (uint8_t flags = 0; flags < 8; flags += 1) {
            fm_wire_ref h = {.round = flags & 2 ? 2 : 1, .site = k};
            snprintf(h.run_id, sizeof h.run_id, "%s", k == 2 ? "another-run" : FZ_RUN);
            fm_wire_buf m;
            CHECK(fm_wire_encode_ref(&h, &m) == FM_OK);
            fz_builder b = {0};
            fz_put_byte(&b, flags);
            fz_put(&b, m.data, m.len);
            fm_wire_buf_free(&m);
            n = fz_add_seed(out, n, max, &b);
        }
    return n;
}
