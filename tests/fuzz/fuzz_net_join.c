/* Fuzz target for the Join handler: JoinRequest decoding and validation (fm_wire_decode_join), then the
 * server state machine (fm_fedsrv_join) on a fresh fake federation. Any bytes: a clean error or a Task; a
 * refused Join never changes the server's state; an accepted message survives an encode → decode round trip.
 *
 * The first input byte picks the call's bearer token: bit 0 set, the real token of the message's site (a
 * site that authenticated); else the token inside the message. The rest is the JoinRequest.
 *
 * ctest runs it through tests/fuzz/fuzz_main.c (fuzz.net_join). With libFuzzer (clang), from the repository
 * root: cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DFEDMM_LIBFUZZER=ON && cmake --build
 * build-fuzz --target fuzz_net_join && build-fuzz/fuzz_net_join -max_total_time=60 CORPUS_DIR */
#include "fuzz_net.h"

static void check_roundtrip(const fm_wire_join *j)
{
    fm_wire_buf b;
    CHECK(fm_wire_encode_join(j, &b) == FM_OK);
    fm_wire_join k;
    CHECK(fm_wire_decode_join(b.data, b.len, &k) == FM_OK);
    fm_wire_buf_free(&b);
    CHECK(strcmp(j->run_id, k.run_id) == 0 && strcmp(j->token, k.token) == 0);
    CHECK(strcmp(j->model_family, k.model_family) == 0 && strcmp(j->device, k.device) == 0);
    CHECK(j->round == k.round && j->site == k.site && j->modalities == k.modalities);
    CHECK(j->n_params == k.n_params && j->n_blocks == k.n_blocks);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const int real_token = data[0] & 1;
    fm_wire_join j;
    fm_status st = fm_wire_decode_join(data + 1, size - 1, &j);
    CHECK(st == FM_OK || st == FM_ERR_PARSE || st == FM_ERR_RANGE);
    if (st != FM_OK) {
        CHECK(fm_last_error()[0] != '\0');
        return 0;
    }
    fuzz_count.decoded++;
    CHECK(strlen(j.run_id) <= FM_WIRE_RUN_ID_MAX && strlen(j.token) <= FM_WIRE_TOKEN_MAX);
    check_roundtrip(&j);
    fz_fed f;
    fz_open(&f);
    const char *bearer = real_token ? fz_token(&f, j.site) : j.token;
    fm_wire_task task;
    memset(&task, 0, sizeof task);
    const int code = fm_fedsrv_join(f.srv, bearer, &j, &task);
    CHECK(code == FM_NET_OK || code == FM_NET_INVALID_ARGUMENT || code == FM_NET_FAILED_PRECONDITION ||
          code == FM_NET_UNAUTHENTICATED);
    CHECK(fz_untouched(&f) && fm_fedsrv_round(f.srv) == 1);
    if (code != FM_NET_OK) {
        CHECK(fm_last_error()[0] != '\0');
    } else {
        fuzz_count.accepted++;
        /* only a site of this federation, with its token, with this run's model, gets a task */
        CHECK(j.site >= 0 && j.site < FZ_SITES && bearer && strcmp(bearer, f.tokens[j.site]) == 0);
        CHECK(j.n_params == f.P && j.n_blocks == FZ_NB);
        CHECK(strcmp(task.run_id, FZ_RUN) == 0 && task.round == 1 && task.rounds == FZ_ROUNDS);
        CHECK(task.action == FM_ACTION_TRAIN || task.action == FM_ACTION_WAIT);
        int chosen[FZ_PER_ROUND];
        fz_chosen(1, chosen);
        const int sampled = chosen[0] == j.site || chosen[1] == j.site;
        CHECK((task.action == FM_ACTION_TRAIN) == sampled);
        fm_wire_buf b;
        CHECK(fm_wire_encode_task(&task, &b) == FM_OK);
        fm_wire_task back;
        CHECK(fm_wire_decode_task(b.data, b.len, &back) == FM_OK);
        CHECK(back.action == task.action && back.round == task.round && strcmp(back.run_id, task.run_id) == 0);
        fm_wire_buf_free(&b);
        fuzz_count.complete++;
    }
    fz_close(&f);
    return 0;
}

size_t fuzz_seeds(fm_wire_buf *out, size_t max)
{
    fz_fed f;
    memset(&f, 0, sizeof f);
    fz_layout(&f);
    size_t n = 0;
    for (int k = 0; k < FZ_SITES + 1; k++) {
        for (int variant = 0; variant < 3; variant++) {
            fm_wire_join j;
            memset(&j, 0, sizeof j);
            j.site = k;
            snprintf(j.token, sizeof j.token, "%s", k < FZ_SITES ? f.tokens[k] : "no-such-site");
            snprintf(j.model_family, sizeof j.model_family, "%s", variant == 2 ? "clip-base" : "clip-tiny");
            snprintf(j.device, sizeof j.device, "cpu");
            if (variant == 1)
                snprintf(j.run_id, sizeof j.run_id, FZ_RUN);
            j.modalities = 3;
            j.n_params = f.P;
            j.n_blocks = FZ_NB;
            fm_wire_buf m;
            CHECK(fm_wire_encode_join(&j, &m) == FM_OK);
            fz_builder b = {0};
            fz_put_byte(&b, (uint8_t)(variant & 1));
            fz_put(&b, m.data, m.len);
            fm_wire_buf_free(&m);
            n = fz_add_seed(out, n, max, &b);
        }
    }
    return n;
}
