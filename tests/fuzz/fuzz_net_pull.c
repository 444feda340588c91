/* Fuzz target for Pull, both ends: the server's handler (PullRequest decoding, fm_fedsrv_pull, then the global
 * vector streamed out in the encoding the first byte selects and read back), and the site's side of the reply
 * (TensorChunk decoding with its size, encoding, zstd and finiteness checks, the run / round / site check of
 * fm_net_pull, and reassembly with per-tensor checksums) fed with the rest of the input.
 *
 * Input: [flags][2-byte length][PullRequest][2-byte length][TensorChunk]... Flags: bit 0, the call carries the
 * real token of the request's site (else a wrong one); bit 3, round 1 is already aggregated; bits 4-6, the
 * server's encoding (fz_codec). Built and run as fuzz_net_join.c describes. */
#include <math.h>

#include "fuzz_net.h"

/* Advances the fake federation past round 1 by pushing two valid all-0.5 updates. */
static void finish_round_1(fz_fed *f)
{
    int chosen[FZ_PER_ROUND];
    fz_chosen(1, chosen);
    for (int i = 0; i < FZ_PER_ROUND; i++) {
        const int k = chosen[i];
        fm_wire_push_header h;
        memset(&h, 0, sizeof h);
        snprintf(h.run_id, sizeof h.run_id, FZ_RUN);
        h.round = 1;
        h.site = k;
        h.n_samples = f->samples[k];
        h.n_params = f->P;
        h.n_blocks = FZ_NB;
        memcpy(h.trained, f->trained + (size_t)k * FZ_NB, FZ_NB);
        fm_fedsrv_push *p = NULL;
        CHECK(fm_fedsrv_push_begin(f->srv, f->tokens[k], &h, &p) == FM_NET_OK);
        float delta[64];
        for (size_t j = 0; j < f->P; j++)
            delta[j] = 0.5f;
        fm_tensor_tx tx;
        fm_wire_chunk ch;
        fm_tensor_tx_init(&tx, delta, f->blocks, FZ_NB, h.trained, 0, FZ_RUN, 1, k);
        while (fm_tensor_tx_next(&tx, &ch) > 0)
            CHECK(fm_fedsrv_push_chunk(f->srv, p, &ch) == FM_NET_OK);
        fm_wire_reply reply;
        CHECK(fm_fedsrv_push_end(f->srv, p, &reply) == FM_NET_OK);
        fm_fedsrv_push_free(p);
    }
    CHECK(fm_fedsrv_round(f->srv) == 2);
}

/* The server's side: what rpc.c does for an accepted Pull, checked against fm_wire_transmit. */
static void serve(const fz_fed *f, const fm_wire_ref *r, const float *global, const fm_wire_codec *codec)
{
    float got[64], want[64];
    CHECK(fm_wire_transmit(codec, global, want, f->blocks, FZ_NB, NULL, 16, NULL) == FM_OK);
    fm_tensor_tx tx;
    fm_tensor_rx rx;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, global, f->blocks, FZ_NB, NULL, 16, r->run_id, r->round, r->site);
    fm_tensor_tx_set_codec(&tx, codec);
    fm_tensor_rx_init(&rx, got, f->blocks, FZ_NB, NULL);
    int more;
    while ((more = fm_tensor_tx_next(&tx, &ch)) > 0) {
        fm_wire_buf b;
        CHECK(fm_wire_encode_chunk(&ch, &b) == FM_OK);
        fm_wire_chunk back;
        CHECK(fm_wire_decode_chunk(b.data, b.len, &back) == FM_OK);
        fm_wire_buf_free(&b);
        CHECK(fm_tensor_rx_add(&rx, &back) == FM_OK);
        fm_wire_chunk_free(&back);
    }
    CHECK(more == 0 && fm_tensor_rx_complete(&rx));
    fm_tensor_tx_free(&tx);
    CHECK(memcmp(got, want, f->P * sizeof(float)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t flags = data[0];
    fz_reader rd = {data + 1, size - 1};
    const uint8_t *msg;
    size_t len;
    if (!fz_next(&rd, &msg, &len))
        return 0;
    fm_wire_ref r;
    fm_status st = fm_wire_decode_ref(msg, len, &r);
    CHECK(st == FM_OK || st == FM_ERR_PARSE || st == FM_ERR_RANGE);
    if (st != FM_OK)
        return 0;
    fuzz_count.decoded++;
    fz_fed f;
    fz_open(&f);
    if (flags & 8)
        finish_round_1(&f);
    float before[64];
    memcpy(before, fm_strategy_global(f.strategy), f.P * sizeof(float));
    const int round_before = fm_fedsrv_round(f.srv);
    const float *global = NULL;
    const int code = fm_fedsrv_pull(f.srv, flags & 1 ? fz_token(&f, r.site) : "wrong", &r, &global);
    CHECK(code == FM_NET_OK || code == FM_NET_INVALID_ARGUMENT || code == FM_NET_FAILED_PRECONDITION ||
          code == FM_NET_ALREADY_EXISTS || code == FM_NET_UNAUTHENTICATED);
    CHECK(memcmp(before, fm_strategy_global(f.strategy), f.P * sizeof(float)) == 0);
    CHECK(fm_fedsrv_round(f.srv) == round_before);
    if (code == FM_NET_OK) {
        fuzz_count.accepted++;
        CHECK(global == fm_strategy_global(f.strategy) && r.round == round_before);
        const fm_wire_codec codec = fz_codec((uint8_t)(flags >> 4));
        serve(&f, &r, global, &codec);
        fuzz_count.complete++;
    } else {
        CHECK(fm_last_error()[0] != '\0');
    }

    /* the site's side: the rest of the input is the reply stream */
    float dst[64];
    fm_tensor_rx rx;
    fm_tensor_rx_init(&rx, dst, f.blocks, FZ_NB, NULL);
    while (fz_next(&rd, &msg, &len)) {
        fm_wire_chunk ch;
        st = fm_wire_decode_chunk(msg, len, &ch);
        if (st != FM_OK) {
            CHECK(st == FM_ERR_PARSE || st == FM_ERR_RANGE || st == FM_ERR_SHAPE || st == FM_ERR_NOT_FINITE);
            CHECK(ch.owned == NULL && ch.msg == NULL);
            break;
        }
        fuzz_count.decoded++;
        CHECK(ch.count >= 1 && ch.count <= FM_WIRE_CHUNK_FLOATS && ch.offset + ch.count <= ch.numel);
        for (size_t i = 0; i < ch.count; i++)
            CHECK(isfinite(ch.data[i]));
        int ok = strcmp(ch.run_id, r.run_id) == 0 && ch.round == r.round && ch.site == r.site;
        if (ok)
            ok = fm_tensor_rx_add(&rx, &ch) == FM_OK;
        fm_wire_chunk_free(&ch);
        if (!ok)
            break;
        fuzz_count.accepted++;
        if (fm_tensor_rx_complete(&rx)) {
            for (size_t i = 0; i < f.P; i++)
                CHECK(isfinite(dst[i]));
            fuzz_count.complete++;
            break;
        }
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
    for (int round = 1; round <= 2; round++) {
        int chosen[FZ_PER_ROUND];
        fz_chosen(round, chosen);
        for (uint8_t enc = 0; enc < 6; enc++) {
            const uint8_t flags = (uint8_t)(1 | (round == 2 ? 8 : 0) | enc << 4);
            const int site = chosen[enc % FZ_PER_ROUND];
            fm_wire_ref r = {.round = round, .site = site};
            snprintf(r.run_id, sizeof r.run_id, FZ_RUN);
            fz_builder b = {0};
            fz_put_byte(&b, flags);
            fm_wire_buf m;
            CHECK(fm_wire_encode_ref(&r, &m) == FM_OK);
            fz_put_msg(&b, &m);
            /* a reply stream in the same encoding: the initial vector, chunks of 16 */
            const fm_wire_codec codec = fz_codec(enc);
            fm_tensor_tx tx;
            fm_wire_chunk ch;
            fm_tensor_tx_init(&tx, f.init, f.blocks, FZ_NB, NULL, 16, FZ_RUN, round, site);
            fm_tensor_tx_set_codec(&tx, &codec);
            while (fm_tensor_tx_next(&tx, &ch) > 0) {
                CHECK(fm_wire_encode_chunk(&ch, &m) == FM_OK);
                fz_put_msg(&b, &m);
            }
            fm_tensor_tx_free(&tx);
            n = fz_add_seed(out, n, max, &b);
        }
    }
    return n;
}
