/* Fuzz target for the Push handler: a stream of PushMessages (fm_wire_decode_push: header or chunk, sizes,
 * encodings, zstd frames, finite values) fed to the server state machine exactly as rpc.c's serve_push does
 * (push_begin on the header, push_chunk on each chunk, push_end on the half-close), on a fresh fake
 * federation. Several Push calls per input, so a round can complete and aggregate.
 *
 * Input: [flags][2-byte length][message]...; a zero-length message ends the current Push call (the client's
 * half-close) and the next message starts a new one. A call that fails stops at its first error, as the
 * server does (the rest of its messages are skipped). Flags bit 0: every call carries the real token of its
 * header's site, else the token of site 0. Invariants: a refused call changes nothing (round, pending updates,
 * global vector); an accepted one never leaves a non-finite global vector. Built and run as fuzz_net_join.c
 * describes. */
#include <math.h>

#include "fuzz_net.h"

typedef struct state {
    int round;
    size_t updates;
    float global[64];
} state;

static void snap(const fz_fed *f, state *s)
{
    s->round = fm_fedsrv_round(f->srv);
    s->updates = fm_strategy_num_updates(f->strategy);
    memcpy(s->global, fm_strategy_global(f->strategy), f->P * sizeof(float));
}

static int same(const fz_fed *f, const state *a, const state *b)
{
    return a->round == b->round && a->updates == b->updates && memcmp(a->global, b->global, f->P * sizeof(float)) == 0;
}

/* One Push call: messages up to the next zero-length one (or the end). Returns its status code. */
static int one_push(fz_fed *f, fz_reader *rd, int real_token)
{
    fm_fedsrv_push *p = NULL;
    int code = 0, ended = 0;
    const uint8_t *msg;
    size_t len;
    while (!ended) {
        if (!fz_next(rd, &msg, &len) || len == 0) {
            ended = 1;
            break;
        }
        if (code) /* a refused call: the server stopped reading it */
            continue;
        fm_wire_push_msg m;
        fm_status st = fm_wire_decode_push(msg, len, &m);
        if (st != FM_OK) {
            CHECK(st == FM_ERR_PARSE || st == FM_ERR_RANGE || st == FM_ERR_SHAPE || st == FM_ERR_NOT_FINITE ||
                  st == FM_ERR_NO_MEMORY);
            CHECK(m.header == NULL && m.chunk.owned == NULL && m.chunk.msg == NULL);
            code = st == FM_ERR_RANGE ? 8 : FM_NET_INVALID_ARGUMENT;
            continue;
        }
        fuzz_count.decoded++;
        if (m.is_header && !p) {
            CHECK(m.header->n_blocks >= 1 && m.header->n_blocks <= FM_WIRE_MAX_BLOCKS);
            const char *bearer = real_token ? fz_token(f, m.header->site) : f->tokens[0];
            code = fm_fedsrv_push_begin(f->srv, bearer, m.header, &p);
            CHECK((code == FM_NET_OK) == (p != NULL));
        } else if (!m.is_header && p) {
            for (size_t i = 0; i < m.chunk.count; i++)
                CHECK(isfinite(m.chunk.data[i]));
            code = fm_fedsrv_push_chunk(f->srv, p, &m.chunk);
        } else {
            code = FM_NET_INVALID_ARGUMENT; /* a second header, or a chunk before the header */
        }
        if (code == FM_NET_OK)
            fuzz_count.accepted++;
        else
            CHECK(fm_last_error()[0] != '\0');
        fm_wire_push_msg_free(&m);
    }
    if (code == 0) {
        if (p) {
            fm_wire_reply reply;
            code = fm_fedsrv_push_end(f->srv, p, &reply);
            if (code == FM_NET_OK)
                CHECK(reply.accepted && strcmp(reply.run_id, FZ_RUN) == 0);
        } else {
            code = FM_NET_INVALID_ARGUMENT; /* the stream ended before its header */
        }
    }
    fm_fedsrv_push_free(p);
    return code;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    fz_fed f;
    fz_open(&f);
    fz_reader rd = {data + 1, size - 1};
    for (int call = 0; call < 4 && rd.left >= 2; call++) {
        state before, after;
        snap(&f, &before);
        const int code = one_push(&f, &rd, data[0] & 1);
        snap(&f, &after);
        CHECK(code == FM_NET_OK || code == 8 || code == FM_NET_INVALID_ARGUMENT || code == FM_NET_ALREADY_EXISTS ||
              code == FM_NET_FAILED_PRECONDITION || code == FM_NET_UNAUTHENTICATED);
        if (code != FM_NET_OK) {
            CHECK(same(&f, &before, &after)); /* a refused push changes nothing */
            continue;
        }
        fuzz_count.complete++;
        CHECK(after.round == before.round || after.round == before.round + 1);
        for (size_t i = 0; i < f.P; i++)
            CHECK(isfinite(after.global[i]));
    }
    CHECK(fm_fedsrv_fatal(f.srv) == FM_OK);
    fz_close(&f);
    return 0;
}

/* Appends a whole Push call of site k in `round` with update value v, in `codec`, and its end marker. */
static void put_push(fz_builder *b, const fz_fed *f, int k, int round, float v, const fm_wire_codec *codec)
{
    fm_wire_push_header h;
    memset(&h, 0, sizeof h);
    snprintf(h.run_id, sizeof h.run_id, FZ_RUN);
    h.round = round;
    h.site = k;
    h.n_samples = f->samples[k];
    h.loss = 0.75;
    h.n_params = f->P;
    h.n_blocks = FZ_NB;
    memcpy(h.trained, f->trained + (size_t)k * FZ_NB, FZ_NB);
    fm_wire_buf m;
    CHECK(fm_wire_encode_push_header(&h, &m) == FM_OK);
    fz_put_msg(b, &m);
    float delta[64];
    for (size_t i = 0; i < f->P; i++)
        delta[i] = v * (float)((int)(i % 5) - 2);
    fm_tensor_tx tx;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, delta, f->blocks, FZ_NB, h.trained, 16, FZ_RUN, round, k);
    fm_tensor_tx_set_codec(&tx, codec);
    while (fm_tensor_tx_next(&tx, &ch) > 0) {
        CHECK(fm_wire_encode_push_chunk(&ch, &m) == FM_OK);
        fz_put_msg(b, &m);
    }
    fm_tensor_tx_free(&tx);
    fz_put_end(b);
}

size_t fuzz_seeds(fm_wire_buf *out, size_t max)
{
    fz_fed f;
    memset(&f, 0, sizeof f);
    fz_layout(&f);
    int chosen[FZ_PER_ROUND];
    fz_chosen(1, chosen);
    size_t n = 0;
    for (uint8_t enc = 0; enc < 8; enc++) {
        const fm_wire_codec codec = fz_codec(enc);
        /* round 1 in reverse site order (the first push is parked), then a duplicate */
        fz_builder b = {0};
        fz_put_byte(&b, 1);
        put_push(&b, &f, chosen[1], 1, 0.125f, &codec);
        put_push(&b, &f, chosen[0], 1, -0.5f, &codec);
        put_push(&b, &f, chosen[0], 1, -0.5f, &codec);
        n = fz_add_seed(out, n, max, &b);
    }
    /* one push with the wrong token, one of a site not sampled, one of a future round */
    const fm_wire_codec plain = {FM_WIRE_F32, FM_WIRE_RAW, 0};
    int idle = 0;
    while (idle == chosen[0] || idle == chosen[1])
        idle++;
    fz_builder b = {0};
    fz_put_byte(&b, 0);
    put_push(&b, &f, chosen[1], 1, 1.0f, &plain);
    n = fz_add_seed(out, n, max, &b);
    memset(&b, 0, sizeof b);
    fz_put_byte(&b, 1);
    put_push(&b, &f, idle, 1, 1.0f, &plain);
    put_push(&b, &f, chosen[0], 2, 1.0f, &plain);
    n = fz_add_seed(out, n, max, &b);
    return n;
}
