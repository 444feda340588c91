/* The control plane's wire codec, chunked tensor streams and server state machine, without sockets: garbage,
 * truncated, oversized and non-finite messages are refused with a clear error; wrong tokens, run ids, rounds,
 * sites, sample counts and duplicate pushes are refused and leave the server's state as it was; updates pushed
 * in any order aggregate bit-identically to the in-order (`fedmm sim`) sum. */
#include <math.h>
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
#include <time.h>

#include "fedsrv_fixture.h"

/* odd block sizes, one empty block, one larger than a chunk */
static const size_t kSizes[] = {7, 0, 131, 3, 29};
#define NB (sizeof kSizes / sizeof kSizes[0])
#define CHUNK 10

/* with_empty = 0 turns the empty block into a 2-float one (strategies refuse empty blocks). */
static size_t make_blocks_ex(fm_strategy_block *b, int with_empty)
{
    static const char *names[] = {"a", "empty", "big", "c", "d"};
    size_t off = 0;
    for (size_t i = 0; i < NB; i++) {
        size_t n = kSizes[i] == 0 && !with_empty ? 2 : kSizes[i];
        b[i] = (fm_strategy_block){.name = names[i], .offset = off, .numel = n, .layer = -1, .n_layers = 1};
        off += n;
    }
    return off;
}

static size_t make_blocks(fm_strategy_block *b) { return make_blocks_ex(b, 1); }

static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(fm_crc32c(0, "123456789", 9), 0xE3069283u); /* the standard check value */
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    uint8_t buf[1001];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)((uint32_t)fm_rng_u64(&rng) & 0xFF);
    uint32_t whole = fm_crc32c(0, buf, sizeof buf);
    assert_int_equal(fm_crc32c(fm_crc32c(0, buf, 377), buf + 377, sizeof buf - 377), whole);
    buf[500] ^= 0x10;
    assert_int_not_equal(fm_crc32c(0, buf, sizeof buf), whole);
}

/* Streams src's selected blocks through encode → decode → rx into dst. */
static fm_status stream(const float *src, float *dst, const fm_strategy_block *b, const uint8_t *select)
{
    fm_tensor_tx tx;
    fm_tensor_rx rx;
    fm_tensor_tx_init(&tx, src, b, NB, select, CHUNK, "run1", 3, 2);
    fm_tensor_rx_init(&rx, dst, b, NB, select);
    fm_wire_chunk ch;
    while (fm_tensor_tx_next(&tx, &ch)) {
        fm_wire_buf buf;
        FM_TRY(fm_wire_encode_chunk(&ch, &buf));
        fm_wire_chunk got;
        fm_status st = fm_wire_decode_chunk(buf.data, buf.len, &got);
        fm_wire_buf_free(&buf);
        FM_TRY(st);
        assert_string_equal(got.run_id, "run1");
        assert_int_equal(got.round, 3);
        assert_int_equal(got.site, 2);
        st = fm_tensor_rx_add(&rx, &got);
        fm_wire_chunk_free(&got);
        FM_TRY(st);
    }
    return fm_tensor_rx_complete(&rx) ? FM_OK : FM_ERR_PARSE;
}

static void test_stream_roundtrip(void **state)
{
    (void)state;
    fm_strategy_block b[NB];
    size_t P = make_blocks(b);
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    float *src = fm_test_alloc(P * sizeof(float)), *dst = fm_test_alloc(P * sizeof(float));
    fm_test_fill(&rng, src, P, -3.0f, 3.0f);
    for (size_t i = 0; i < P; i++)
        dst[i] = 1234.5f;
    const uint8_t select[NB] = {1, 1, 1, 0, 1};
    assert_int_equal(stream(src, dst, b, select), FM_OK);
    for (size_t k = 0; k < NB; k++)
        for (size_t i = b[k].offset; i < b[k].offset + b[k].numel; i++)
            assert_true(select[k] ? dst[i] == src[i] : dst[i] == 1234.5f);
    assert_int_equal(stream(src, dst, b, NULL), FM_OK);
    assert_memory_equal(dst, src, P * sizeof(float));
    free(src);
    free(dst);
}

static void test_garbage_truncated_oversized(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    uint8_t junk[300];
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + (uint32_t)fm_rng_u64(&rng) % sizeof junk;
        for (size_t i = 0; i < n; i++)
            junk[i] = (uint8_t)(uint32_t)fm_rng_u64(&rng);
        /* random bytes: decoders must not crash; what they accept must still fail the stream checks */
        fm_wire_chunk c;
        if (fm_wire_decode_chunk(junk, n, &c) == FM_OK) {
            fm_strategy_block b[NB];
            float dst[256];
            make_blocks(b);
            fm_tensor_rx rx;
            fm_tensor_rx_init(&rx, dst, b, NB, NULL);
            fm_status st = fm_tensor_rx_add(&rx, &c);
            assert_true(st != FM_OK || !fm_tensor_rx_complete(&rx));
            fm_wire_chunk_free(&c);
        }
        fm_wire_push_msg m;
        if (fm_wire_decode_push(junk, n, &m) == FM_OK)
            fm_wire_push_msg_free(&m);
        fm_wire_join j;
        (void)fm_wire_decode_join(junk, n, &j);
    }
    /* a chunk cut anywhere: refused, or refused by the stream */
    float data[5];
    fm_test_fill(&rng, data, 5, -1.0f, 1.0f);
    fm_strategy_block one = {.name = "t", .offset = 0, .numel = 5, .layer = -1, .n_layers = 1};
    fm_wire_chunk c = {.round = 1,
                       .site = 0,
                       .tensor = 0,
                       .numel = 5,
                       .offset = 0,
                       .count = 5,
                       .data = data,
                       .crc32c = fm_crc32c(0, data, sizeof data)};
    strcpy(c.run_id, "r");
    fm_wire_buf buf;
    assert_int_equal(fm_wire_encode_chunk(&c, &buf), FM_OK);
    for (size_t cut = 0; cut < buf.len; cut++) {
        fm_wire_chunk got;
        float dst[5];
        if (fm_wire_decode_chunk(buf.data, cut, &got) != FM_OK)
            continue;
        fm_tensor_rx rx;
        fm_tensor_rx_init(&rx, dst, &one, 1, NULL);
        fm_status st = fm_tensor_rx_add(&rx, &got);
        assert_true(st != FM_OK || !fm_tensor_rx_complete(&rx));
        fm_wire_chunk_free(&got);
    }
    /* the whole message passes, so the loop above did test something */
    fm_wire_chunk got;
    assert_int_equal(fm_wire_decode_chunk(buf.data, buf.len, &got), FM_OK);
    fm_wire_chunk_free(&got);
    /* a flipped data byte: the CRC catches it */
    uint8_t raw[sizeof data]; /* the values' bytes, as the data field holds them */
    memcpy(raw, data, sizeof data);
    uint8_t *in_buf = NULL;
    for (size_t i = 0; i + sizeof raw <= buf.len && !in_buf; i++)
        if (memcmp(buf.data + i, raw, sizeof raw) == 0)
            in_buf = buf.data + i;
    assert_non_null(in_buf);
    in_buf[2] ^= 0x01; /* a low mantissa bit of the first value: still finite */
    if (fm_wire_decode_chunk(buf.data, buf.len, &got) == FM_OK) {
        fm_tensor_rx rx;
        float dst[5];
        fm_tensor_rx_init(&rx, dst, &one, 1, NULL);
        assert_int_equal(fm_tensor_rx_add(&rx, &got), FM_ERR_PARSE);
        fm_wire_chunk_free(&got);
    }
    fm_wire_buf_free(&buf);
    /* oversized */
    size_t big = FM_WIRE_MAX_MESSAGE + 1;
    uint8_t *huge = calloc(big, 1);
    assert_non_null(huge);
    assert_int_equal(fm_wire_decode_chunk(huge, big, &got), FM_ERR_RANGE);
    fm_wire_push_msg m;
    assert_int_equal(fm_wire_decode_push(huge, big, &m), FM_ERR_RANGE);
    free(huge);
    /* and a chunk over the limit cannot be encoded */
    c.count = FM_WIRE_CHUNK_FLOATS + 1;
    assert_int_equal(fm_wire_encode_chunk(&c, &buf), FM_ERR_INVALID_ARG);
}

static void test_non_finite_refused(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    float data[9];
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (int t = 0; t < 3; t++) {
        fm_test_fill(&rng, data, 9, -1.0f, 1.0f);
        size_t where = (uint32_t)fm_rng_u64(&rng) % 9;
        data[where] = bad[t];
        fm_wire_chunk c = {.round = 1, .numel = 9, .count = 9, .data = data};
        strcpy(c.run_id, "r");
        fm_wire_buf buf;
        assert_int_equal(fm_wire_encode_push_chunk(&c, &buf), FM_OK);
        fm_wire_push_msg m;
        assert_int_equal(fm_wire_decode_push(buf.data, buf.len, &m), FM_ERR_NOT_FINITE);
        char want[64];
        snprintf(want, sizeof want, "element %zu", where);
        assert_non_null(strstr(fm_last_error(), want));
        fm_wire_buf_free(&buf);
    }
}

static void test_stream_order_checks(void **state)
{
    (void)state;
    fm_strategy_block b[NB];
    size_t P = make_blocks(b);
    fm_rng rng = fm_rng_make(fm_test_seed(), 5);
    float *src = fm_test_alloc(P * sizeof(float)), *dst = fm_test_alloc(P * sizeof(float));
    fm_test_fill(&rng, src, P, -1.0f, 1.0f);
    fm_tensor_tx tx;
    fm_wire_chunk first, second;
    fm_tensor_tx_init(&tx, src, b, NB, NULL, CHUNK, "r", 1, 0);
    assert_true(fm_tensor_tx_next(&tx, &first));  /* block a, whole (7 floats) */
    assert_true(fm_tensor_tx_next(&tx, &second)); /* block big, first 10 */
    fm_tensor_rx rx;
    fm_tensor_rx_init(&rx, dst, b, NB, NULL);
    assert_int_equal(fm_tensor_rx_add(&rx, &second), FM_ERR_PARSE); /* out of order */
    fm_wire_chunk wrong = first;
    wrong.numel = 8;
    assert_int_equal(fm_tensor_rx_add(&rx, &wrong), FM_ERR_PARSE); /* wrong numel */
    wrong = first;
    wrong.crc32c ^= 1u;
    assert_int_equal(fm_tensor_rx_add(&rx, &wrong), FM_ERR_PARSE); /* bad checksum */
    assert_int_equal(fm_tensor_rx_add(&rx, &first), FM_OK);
    assert_int_equal(fm_tensor_rx_add(&rx, &first), FM_ERR_PARSE); /* a repeat */
    assert_int_equal(fm_tensor_rx_add(&rx, &second), FM_OK);
    assert_false(fm_tensor_rx_complete(&rx));
    free(src);
    free(dst);
}

/* Every encoding through tx -> encode -> decode -> rx arrives as fm_wire_transmit (what `fedmm sim` applies)
 * says, bit for bit, with the same payload bytes; a flipped payload bit fails the tensor's checksum. */
static void test_stream_codecs(void **state)
{
    (void)state;
    fm_strategy_block b[NB];
    size_t P = make_blocks(b);
    fm_rng rng = fm_rng_make(fm_test_seed(), 11);
    float *src = fm_test_alloc(P * sizeof(float)), *dst = fm_test_alloc(P * sizeof(float));
    float *want = fm_test_alloc(P * sizeof(float));
    fm_test_fill(&rng, src, P, -2.0f, 2.0f);
    for (size_t i = b[2].offset; i < b[2].offset + 60; i++) /* a compressible stretch in block "big" */
        src[i] = 0.5f;
    src[b[2].offset + 77] = 90.0f; /* an outlier for int8 */
    const uint8_t select[NB] = {1, 1, 1, 0, 1};
    const fm_wire_codec codecs[] = {{FM_WIRE_BF16, FM_WIRE_RAW, 0},
                                    {FM_WIRE_INT8, FM_WIRE_RAW, 0},
                                    {FM_WIRE_F32, FM_WIRE_ZSTD, 0},
                                    {FM_WIRE_BF16, FM_WIRE_ZSTD, 1},
                                    {FM_WIRE_INT8, FM_WIRE_ZSTD, 19}};
    for (size_t ci = 0; ci < sizeof codecs / sizeof codecs[0]; ci++) {
        const fm_wire_codec *codec = &codecs[ci];
        for (size_t i = 0; i < P; i++)
            dst[i] = want[i] = 1234.5f;
        double want_bytes = 0.0, got_bytes = 0.0;
        assert_int_equal(fm_wire_transmit(codec, src, want, b, NB, select, 64, &want_bytes), FM_OK);
        fm_tensor_tx tx;
        fm_tensor_rx rx;
        fm_tensor_tx_init(&tx, src, b, NB, select, 64, "run1", 3, 2); /* chunks of 64: room to compress */
        fm_tensor_tx_set_codec(&tx, codec);
        fm_tensor_rx_init(&rx, dst, b, NB, select);
        fm_wire_chunk ch;
        int more, zstd_chunks = 0;
        while ((more = fm_tensor_tx_next(&tx, &ch)) > 0) {
            fm_wire_buf buf;
            assert_int_equal(fm_wire_encode_push_chunk(&ch, &buf), FM_OK);
            fm_wire_push_msg m;
            assert_int_equal(fm_wire_decode_push(buf.data, buf.len, &m), FM_OK);
            fm_wire_buf_free(&buf);
            assert_int_equal(m.chunk.encoding, codec->encoding);
            assert_int_equal(m.chunk.compression, ch.compression);
            assert_int_equal(m.chunk.payload_len, ch.payload_len);
            assert_int_equal(m.chunk.count, ch.count);
            zstd_chunks += m.chunk.compression == FM_WIRE_ZSTD;
            got_bytes += (double)m.chunk.payload_len;
            assert_int_equal(fm_tensor_rx_add(&rx, &m.chunk), FM_OK);
            fm_wire_push_msg_free(&m);
        }
        assert_int_equal(more, 0);
        fm_tensor_tx_free(&tx);
        assert_true(fm_tensor_rx_complete(&rx));
        assert_memory_equal(dst, want, P * sizeof(float));
        assert_true(got_bytes == want_bytes);
        if (codec->compression == FM_WIRE_ZSTD)
            assert_true(zstd_chunks > 0);
        if (codec->encoding != FM_WIRE_F32)
            assert_memory_not_equal(dst, src, P * sizeof(float));
    }
    /* a flipped bit in a bf16 payload: the values still decode, the tensor's CRC does not match */
    fm_strategy_block one = {.name = "t", .offset = 0, .numel = 5, .layer = -1, .n_layers = 1};
    fm_tensor_tx tx;
    fm_tensor_tx_init(&tx, src, &one, 1, NULL, 0, "r", 1, 0);
    const fm_wire_codec b16 = {FM_WIRE_BF16, FM_WIRE_RAW, 0};
    fm_tensor_tx_set_codec(&tx, &b16);
    fm_wire_chunk ch;
    assert_int_equal(fm_tensor_tx_next(&tx, &ch), 1);
    assert_int_equal(ch.payload_len, 10);
    uint8_t flipped[10];
    memcpy(flipped, ch.payload, 10);
    flipped[4] ^= 0x01;
    ch.payload = flipped;
    fm_wire_buf buf;
    assert_int_equal(fm_wire_encode_chunk(&ch, &buf), FM_OK);
    fm_wire_chunk got;
    assert_int_equal(fm_wire_decode_chunk(buf.data, buf.len, &got), FM_OK);
    fm_tensor_rx rx;
    fm_tensor_rx_init(&rx, dst, &one, 1, NULL);
    assert_int_equal(fm_tensor_rx_add(&rx, &got), FM_ERR_PARSE);
    assert_non_null(strstr(fm_last_error(), "checksum"));
    fm_wire_chunk_free(&got);
    fm_wire_buf_free(&buf);
    fm_tensor_tx_free(&tx);
    /* a non-finite value cannot be sent */
    src[1] = INFINITY;
    fm_tensor_tx_init(&tx, src, &one, 1, NULL, 0, "r", 1, 0);
    fm_tensor_tx_set_codec(&tx, &b16);
    assert_int_equal(fm_tensor_tx_next(&tx, &ch), -1);
    fm_tensor_tx_free(&tx);
    free(src);
    free(dst);
    free(want);
}

/* Chunks whose fields disagree with their payload are refused by the decoder, with a reason. */
static void test_chunk_fields_checked(void **state)
{
    (void)state;
    float v[6] = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -0.125f};
    uint8_t q[12];
    assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, v, 6, q), FM_OK);
    fm_wire_chunk c = {.round = 1,
                       .numel = 6,
                       .count = 6,
                       .data = v,
                       .encoding = FM_WIRE_BF16,
                       .compression = FM_WIRE_RAW,
                       .payload = q,
                       .payload_len = 12};
    strcpy(c.run_id, "r");
    fm_wire_buf buf;
    fm_wire_chunk got;
    assert_int_equal(fm_wire_encode_chunk(&c, &buf), FM_OK);
    assert_int_equal(fm_wire_decode_chunk(buf.data, buf.len, &got), FM_OK);
    assert_true(got.data[2] == 2.0f && got.count == 6);
    fm_wire_chunk_free(&got);
    fm_wire_buf_free(&buf);
    struct {
        fm_wire_chunk c;
        fm_status want;
        const char *says;
    } bad[8];
    for (int i = 0; i < 8; i++) {
        bad[i].c = c;
        bad[i].want = FM_ERR_PARSE;
    }
    bad[0].c.encoding = (fm_wire_encoding)7, bad[0].says = "unknown encoding 7";
    bad[1].c.compression = (fm_wire_compression)3, bad[1].says = "unknown compression 3";
    bad[2].c.payload_len = 11, bad[2].says = "payload bytes";                /* 11 bytes for 6 bf16 values */
    bad[3].c.count = 5, bad[3].says = "payload bytes";                       /* 12 bytes for 5 */
    bad[4].c.count = 0, bad[4].want = FM_ERR_SHAPE, bad[4].says = "count 0"; /* no count */
    bad[5].c.offset = 1, bad[5].want = FM_ERR_SHAPE, bad[5].says = "past numel";
    bad[6].c.encoding = FM_WIRE_INT8, bad[6].says = "payload bytes"; /* 12 bytes are not 4 + 6 */
    bad[7].c.compression = FM_WIRE_ZSTD, bad[7].says = "zstd";
    for (int i = 0; i < 8; i++) {
        assert_int_equal(fm_wire_encode_chunk(&bad[i].c, &buf), FM_OK);
        assert_int_equal(fm_wire_decode_chunk(buf.data, buf.len, &got), bad[i].want);
        if (!strstr(fm_last_error(), bad[i].says))
            fail_msg("case %d: '%s' does not say '%s'", i, fm_last_error(), bad[i].says);
        fm_wire_push_msg m;
        fm_wire_buf pb;
        assert_int_equal(fm_wire_encode_push_chunk(&bad[i].c, &pb), FM_OK);
        assert_int_equal(fm_wire_decode_push(pb.data, pb.len, &m), bad[i].want);
        fm_wire_buf_free(&pb);
        fm_wire_buf_free(&buf);
    }
    /* a chunk without its payload can only be float32 */
    c.payload = NULL;
    assert_int_equal(fm_wire_encode_chunk(&c, &buf), FM_ERR_INVALID_ARG);
}

/* ---- the server state machine ----------------------------------------------------------------------- */

#define N_SITES 5
#define PER_ROUND 3
#define ROUNDS 2

static const char *const kNames[] = {"a", "empty", "big", "c", "d"};

/* The federation: the blocks with the empty one as 2 floats (strategies refuse empty blocks), site 2 lacks block
 * "big", FedAvg. */
static void fixture_init(fixture *f, uint64_t stream)
{
    fm_strategy_block b[NB];
    make_blocks_ex(b, 0);
    size_t sizes[NB];
    for (size_t i = 0; i < NB; i++)
        sizes[i] = b[i].numel;
    const fx_spec spec = {.sizes = sizes,
                          .names = kNames,
                          .n_blocks = NB,
                          .n_sites = N_SITES,
                          .skip_site = 2,
                          .skip_block = 2,
                          .stream = stream};
    fx_init(f, &spec);
    fm_fedsrv_config fc = fx_config(f);
    fc.run_id = "run-xyz";
    fc.rounds = ROUNDS;
    fc.sites_per_round = PER_ROUND;
    fc.seed = 42;
    fc.local_steps = 3;
    assert_int_equal(fx_start(f, FM_STRATEGY_FEDAVG, NULL, fc), FM_OK);
}

static void header_for(const fixture *f, int k, int64_t round, fm_wire_push_header *h)
{
    fx_header(f, "run-xyz", k, round, 1.5, h);
}

/* A whole push through the codec; stop_after >= 0 ends the stream after that many chunks. */
static int push(fixture *f, const fm_wire_push_header *h0, const char *bearer, int stop_after)
{
    fm_wire_buf buf;
    fm_wire_push_msg m;
    assert_int_equal(fm_wire_encode_push_header(h0, &buf), FM_OK);
    assert_int_equal(fm_wire_decode_push(buf.data, buf.len, &m), FM_OK);
    fm_wire_buf_free(&buf);
    fm_fedsrv_push *p = NULL;
    int code = fm_fedsrv_push_begin(f->srv, bearer, m.header, &p);
    fm_wire_push_msg_free(&m);
    if (code)
        return code;
    fm_tensor_tx tx;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, f->delta[h0->site], f->b, NB, h0->trained, CHUNK, h0->run_id, h0->round, h0->site);
    for (int n = 0; code == 0 && fm_tensor_tx_next(&tx, &ch) && n != stop_after; n++) {
        assert_int_equal(fm_wire_encode_push_chunk(&ch, &buf), FM_OK);
        assert_int_equal(fm_wire_decode_push(buf.data, buf.len, &m), FM_OK);
        fm_wire_buf_free(&buf);
        code = fm_fedsrv_push_chunk(f->srv, p, &m.chunk);
        fm_wire_push_msg_free(&m);
    }
    fm_wire_reply reply;
    if (code == 0)
        code = fm_fedsrv_push_end(f->srv, p, &reply);
    fm_fedsrv_push_free(p);
    return code;
}

static int chosen_in(int round, int *chosen)
{
    assert_int_equal(fm_round_sites(42, round, N_SITES, PER_ROUND, chosen), FM_OK);
    return PER_ROUND;
}

static int not_chosen(const int *chosen)
{
    for (int k = 0; k < N_SITES; k++) {
        int in = 0;
        for (int i = 0; i < PER_ROUND; i++)
            in |= chosen[i] == k;
        if (!in)
            return k;
    }
    return -1;
}

static void test_server_refusals_leave_state(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 6);
    int chosen[PER_ROUND];
    chosen_in(1, chosen);
    const int k = chosen[0];
    float *before = fm_test_alloc(f.P * sizeof(float));
    memcpy(before, fm_strategy_global(f.strategy), f.P * sizeof(float));
    fm_wire_push_header h;
    fm_wire_task task;

    /* Join: wrong token, site out of range, other model */
    fm_wire_join j;
    memset(&j, 0, sizeof j);
    j.site = k;
    strcpy(j.token, f.tokens[k]);
    strcpy(j.model_family, "clip-tiny");
    j.n_params = f.P;
    j.n_blocks = NB;
    assert_int_equal(fm_fedsrv_join(f.srv, f.tokens[(k + 1) % N_SITES], &j, &task), FM_NET_UNAUTHENTICATED);
    assert_int_equal(fm_fedsrv_join(f.srv, NULL, &j, &task), FM_NET_UNAUTHENTICATED);
    j.site = N_SITES;
    assert_int_equal(fm_fedsrv_join(f.srv, f.tokens[k], &j, &task), FM_NET_INVALID_ARGUMENT);
    j.site = k;
    j.n_params = f.P + 1;
    assert_int_equal(fm_fedsrv_join(f.srv, f.tokens[k], &j, &task), FM_NET_FAILED_PRECONDITION);
    j.n_params = f.P;
    assert_int_equal(fm_fedsrv_join(f.srv, f.tokens[k], &j, &task), FM_NET_OK);
    assert_int_equal(task.action, FM_ACTION_TRAIN);
    assert_int_equal(task.round, 1);

    /* Push refusals: each one leaves the round as it was */
    header_for(&f, k, 1, &h);
    assert_int_equal(push(&f, &h, f.tokens[(k + 1) % N_SITES], -1), FM_NET_UNAUTHENTICATED);
    strcpy(h.run_id, "another-run");
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_FAILED_PRECONDITION);
    header_for(&f, k, 0, &h);
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_FAILED_PRECONDITION); /* stale */
    assert_non_null(strstr(fm_last_error(), "stale"));
    header_for(&f, k, 2, &h);
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_FAILED_PRECONDITION); /* future */
    const int idle = not_chosen(chosen);
    header_for(&f, idle, 1, &h);
    assert_int_equal(push(&f, &h, f.tokens[idle], -1), FM_NET_FAILED_PRECONDITION); /* not sampled */
    header_for(&f, k, 1, &h);
    h.n_samples += 1;
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_INVALID_ARGUMENT); /* wrong count */
    header_for(&f, k, 1, &h);
    h.trained[0] ^= 1;
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_INVALID_ARGUMENT); /* wrong blocks */
    header_for(&f, k, 1, &h);
    h.n_params = f.P - 1;
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_INVALID_ARGUMENT); /* wrong size */
    header_for(&f, k, 1, &h);
    assert_int_equal(push(&f, &h, f.tokens[k], 3), FM_NET_INVALID_ARGUMENT); /* truncated stream */
    assert_int_equal(fm_strategy_num_updates(f.strategy), 0);
    assert_memory_equal(fm_strategy_global(f.strategy), before, f.P * sizeof(float));
    assert_int_equal(fm_fedsrv_round(f.srv), 1);

    /* a chunk of another site inside this push */
    fm_fedsrv_push *p = NULL;
    header_for(&f, k, 1, &h);
    assert_int_equal(fm_fedsrv_push_begin(f.srv, f.tokens[k], &h, &p), FM_NET_OK);
    fm_wire_chunk ch = {
        .round = 1, .site = (k + 1) % N_SITES, .tensor = 0, .numel = kSizes[0], .count = 1, .data = f.delta[k]};
    strcpy(ch.run_id, "run-xyz");
    assert_int_equal(fm_fedsrv_push_chunk(f.srv, p, &ch), FM_NET_INVALID_ARGUMENT);
    fm_fedsrv_push_free(p);

    /* the same site can still push, once */
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_OK);
    assert_int_equal(push(&f, &h, f.tokens[k], -1), FM_NET_ALREADY_EXISTS);
    assert_non_null(strstr(fm_last_error(), "duplicate"));
    fm_wire_ref hb = {.round = 1, .site = k};
    strcpy(hb.run_id, "run-xyz");
    assert_int_equal(fm_fedsrv_heartbeat(f.srv, f.tokens[k], &hb, &task), FM_NET_OK);
    assert_int_equal(task.action, FM_ACTION_WAIT);
    const float *g = NULL;
    assert_int_equal(fm_fedsrv_pull(f.srv, f.tokens[k], &hb, &g), FM_NET_ALREADY_EXISTS);
    free(before);
    fx_free(&f);
}

/* Pushes arriving in reverse site order give the same global vector, bit for bit, as adding the updates in
 * ascending order (what `fedmm sim` does). */
static void test_server_aggregates_in_site_order(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 7);
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *ref = NULL;
    assert_int_equal(fm_strategy_create(&ref, &sc, f.P, f.b, NB, f.init), FM_OK);
    for (int round = 1; round <= ROUNDS; round++) {
        int chosen[PER_ROUND];
        chosen_in(round, chosen);
        assert_int_equal(fm_strategy_begin_round(ref, round), FM_OK);
        for (int i = 0; i < PER_ROUND; i++) {
            int k = chosen[i];
            fm_site_update u = {.n_params = f.P,
                                .delta = f.delta[k],
                                .weight = (double)f.samples[k],
                                .n_blocks = NB,
                                .trained = f.trained + (size_t)k * NB};
            /* the server zeroes untrained blocks; the strategy ignores them either way */
            assert_int_equal(fm_strategy_add_update(ref, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(ref, NULL), FM_OK);
        for (int i = PER_ROUND - 1; i >= 0; i--) {
            fm_wire_push_header h;
            header_for(&f, chosen[i], round, &h);
            assert_int_equal(push(&f, &h, f.tokens[chosen[i]], -1), FM_NET_OK);
            assert_int_equal(fm_fedsrv_round(f.srv), i == 0 ? round + 1 : round);
        }
        assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
        assert_memory_not_equal(fm_strategy_global(f.strategy), f.init, f.P * sizeof(float));
    }
    assert_true(fm_fedsrv_done(f.srv));
    fm_wire_ref hb = {.round = ROUNDS, .site = 0};
    strcpy(hb.run_id, "run-xyz");
    fm_wire_task task;
    assert_int_equal(fm_fedsrv_heartbeat(f.srv, f.tokens[0], &hb, &task), FM_NET_OK);
    assert_int_equal(task.action, FM_ACTION_DONE);
    assert_false(fm_fedsrv_all_released(f.srv)); /* the sites that pushed have not heard DONE yet */
    for (int k = 0; k < N_SITES; k++) {
        hb.site = k;
        assert_int_equal(fm_fedsrv_heartbeat(f.srv, f.tokens[k], &hb, &task), FM_NET_OK);
    }
    assert_true(fm_fedsrv_all_released(f.srv));
    fm_strategy_destroy(ref);
    fx_free(&f);
}

/* ---- a live server on 127.0.0.1 ------------------------------------------------------------------------ */

static fm_wire_buf buf_of(fm_status st, fm_wire_buf b)
{
    assert_int_equal(st, FM_OK);
    return b;
}

/* Garbage, oversized, truncated, non-finite and unauthenticated calls each get an error status; the server goes
 * on serving, and the full federation then runs through real gRPC calls to the same result as in-order
 * aggregation. */
static void test_live_server(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 8);
    live l = {.f = &f};
    char target[64];
    live_start(&l, target, sizeof target);
    fm_net_client *c[N_SITES], *bad = NULL;
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(fm_net_client_create(&c[k], target, f.tokens[k], 20), FM_OK);
    assert_int_equal(fm_net_client_create(&bad, target, "wrong-token", 20), FM_OK);

    /* garbage to every method */
    fm_rng rng = fm_rng_make(fm_test_seed(), 9);
    uint8_t junk[97];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(0x80 | fm_rng_u64(&rng)); /* continuation bits everywhere: never a whole varint */
    fm_wire_buf g = {.data = junk, .len = sizeof junk};
    assert_int_equal(fm_net_call_raw(c[0], "/fedmm.Federation/Join", &g, 1), FM_NET_INVALID_ARGUMENT);
    assert_int_equal(fm_net_call_raw(c[0], "/fedmm.Federation/Heartbeat", &g, 1), FM_NET_INVALID_ARGUMENT);
    assert_int_equal(fm_net_call_raw(c[0], "/fedmm.Federation/Pull", &g, 1), FM_NET_INVALID_ARGUMENT);
    assert_int_equal(fm_net_call_raw(c[0], "/fedmm.Federation/Push", &g, 1), FM_NET_INVALID_ARGUMENT);
    assert_int_equal(fm_net_call_raw(c[0], "/fedmm.Federation/Nope", &g, 1), 12 /* UNIMPLEMENTED */);
    /* oversized: over the server's receive limit */
    size_t big = (size_t)FM_NET_MAX_RECEIVE + 4096;
    fm_wire_buf o = {.data = calloc(big, 1), .len = big};
    assert_non_null(o.data);
    assert_int_equal(fm_net_call_raw(c[0], "/fedmm.Federation/Join", &o, 1), 8 /* RESOURCE_EXHAUSTED */);
    free(o.data);
    /* wrong token */
    fm_wire_join j;
    memset(&j, 0, sizeof j);
    j.site = 0;
    strcpy(j.token, "wrong-token");
    strcpy(j.model_family, "clip-tiny");
    j.n_params = f.P;
    j.n_blocks = NB;
    fm_wire_task task;
    assert_int_equal(fm_net_join(bad, &j, &task), FM_ERR_NETWORK);
    assert_int_equal(fm_net_last_code(bad), FM_NET_UNAUTHENTICATED);

    int chosen[PER_ROUND];
    chosen_in(1, chosen);
    const int k0 = chosen[0];
    /* a truncated push: header and the first chunk only */
    fm_wire_push_header h;
    header_for(&f, k0, 1, &h);
    fm_tensor_tx tx;
    fm_wire_chunk ch;
    fm_tensor_tx_init(&tx, f.delta[k0], f.b, NB, h.trained, CHUNK, h.run_id, 1, k0);
    assert_true(fm_tensor_tx_next(&tx, &ch));
    fm_wire_buf msgs[2];
    msgs[0] = buf_of(fm_wire_encode_push_header(&h, &msgs[0]), msgs[0]);
    msgs[1] = buf_of(fm_wire_encode_push_chunk(&ch, &msgs[1]), msgs[1]);
    assert_int_equal(fm_net_call_raw(c[k0], "/fedmm.Federation/Push", msgs, 2), FM_NET_INVALID_ARGUMENT);
    fm_wire_buf_free(&msgs[1]);
    /* a NaN in the first chunk */
    float nan_data[CHUNK];
    memcpy(nan_data, ch.data, ch.count * sizeof(float));
    nan_data[ch.count / 2] = NAN;
    ch.data = nan_data;
    msgs[1] = buf_of(fm_wire_encode_push_chunk(&ch, &msgs[1]), msgs[1]);
    assert_int_equal(fm_net_call_raw(c[k0], "/fedmm.Federation/Push", msgs, 2), FM_NET_INVALID_ARGUMENT);
    fm_wire_buf_free(&msgs[0]);
    fm_wire_buf_free(&msgs[1]);
    assert_int_equal(fm_strategy_num_updates(f.strategy), 0);

    /* the federation itself, pushes in reverse site order, against the in-order reference */
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *ref = NULL;
    assert_int_equal(fm_strategy_create(&ref, &sc, f.P, f.b, NB, f.init), FM_OK);
    float *pulled = fm_test_alloc(f.P * sizeof(float));
    for (int round = 1; round <= ROUNDS; round++) {
        chosen_in(round, chosen);
        for (int i = PER_ROUND - 1; i >= 0; i--) {
            const int k = chosen[i];
            j.site = k;
            strcpy(j.token, f.tokens[k]);
            assert_int_equal(fm_net_join(c[k], &j, &task), FM_OK);
            assert_int_equal(task.action, FM_ACTION_TRAIN);
            assert_int_equal(task.round, round);
            fm_wire_ref r = {.round = round, .site = k};
            strcpy(r.run_id, task.run_id);
            assert_int_equal(fm_net_pull(c[k], &r, pulled, f.b, NB), FM_OK);
            assert_memory_equal(pulled, fm_strategy_global(ref), f.P * sizeof(float));
            header_for(&f, k, round, &h);
            fm_wire_reply reply;
            assert_int_equal(fm_net_push(c[k], &h, f.delta[k], f.b, CHUNK, &reply), FM_OK);
            assert_true(reply.accepted);
            /* a second push of the same round: refused as a duplicate (or as stale once the round closed) */
            assert_int_equal(fm_net_push(c[k], &h, f.delta[k], f.b, CHUNK, &reply), FM_ERR_NETWORK);
            const int code = fm_net_last_code(c[k]);
            assert_int_equal(code, i == 0 ? FM_NET_FAILED_PRECONDITION : FM_NET_ALREADY_EXISTS);
        }
        assert_int_equal(fm_strategy_begin_round(ref, round), FM_OK);
        for (int i = 0; i < PER_ROUND; i++) {
            fm_site_update u = {.n_params = f.P,
                                .delta = f.delta[chosen[i]],
                                .weight = (double)f.samples[chosen[i]],
                                .n_blocks = NB,
                                .trained = f.trained + (size_t)chosen[i] * NB};
            assert_int_equal(fm_strategy_add_update(ref, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(ref, NULL), FM_OK);
    }
    /* every site that took part hears DONE, and the server leaves */
    int took_part[N_SITES] = {0};
    for (int round = 1; round <= ROUNDS; round++) {
        chosen_in(round, chosen);
        for (int i = 0; i < PER_ROUND; i++)
            took_part[chosen[i]] = 1;
    }
    for (int k = 0; k < N_SITES; k++) {
        if (!took_part[k])
            continue;
        fm_wire_ref hb = {.round = ROUNDS, .site = k};
        strcpy(hb.run_id, "run-xyz");
        assert_int_equal(fm_net_heartbeat(c[k], &hb, &task), FM_OK);
        assert_int_equal(task.action, FM_ACTION_DONE);
    }
    live_join(&l);
    assert_int_equal(l.result, FM_OK);
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    fm_net_client_destroy(bad);
    fm_strategy_destroy(ref);
    free(pulled);
    fx_free(&f);
}

/* The server pulls as bf16 + zstd, the sites push as int8 + zstd: every pulled vector and the final global
 * vector equal what fm_wire_transmit (sim's model of the network) predicts, bit for bit, and the server's byte
 * counters equal the predicted payload bytes. */
static void test_live_server_codecs(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 12);
    const fm_wire_codec down = {FM_WIRE_BF16, FM_WIRE_ZSTD, 3}, up = {FM_WIRE_INT8, FM_WIRE_ZSTD, 1};
    live l = {.f = &f, .codec = &down};
    char target[64];
    live_start(&l, target, sizeof target);
    fm_net_client *c[N_SITES];
    for (int k = 0; k < N_SITES; k++) {
        assert_int_equal(fm_net_client_create(&c[k], target, f.tokens[k], 20), FM_OK);
        assert_int_equal(fm_net_client_set_codec(c[k], &up), FM_OK);
    }
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *ref = NULL;
    assert_int_equal(fm_strategy_create(&ref, &sc, f.P, f.b, NB, f.init), FM_OK);
    float *pulled = fm_test_alloc(f.P * sizeof(float)), *want = fm_test_alloc(f.P * sizeof(float));
    float *sent = fm_test_alloc(N_SITES * f.P * sizeof(float));
    double want_up = 0.0, want_down = 0.0;
    int took_part[N_SITES] = {0};
    for (int round = 1; round <= ROUNDS; round++) {
        int chosen[PER_ROUND];
        chosen_in(round, chosen);
        double round_down = 0.0; /* one broadcast's payload bytes */
        assert_int_equal(fm_wire_transmit(&down, fm_strategy_global(ref), want, f.b, NB, NULL, 0, &round_down), FM_OK);
        for (int i = 0; i < PER_ROUND; i++) {
            const int k = chosen[i];
            took_part[k] = 1;
            fm_wire_join j;
            memset(&j, 0, sizeof j);
            j.site = k;
            strcpy(j.token, f.tokens[k]);
            strcpy(j.model_family, "clip-tiny");
            j.n_params = f.P;
            j.n_blocks = NB;
            fm_wire_task task;
            assert_int_equal(fm_net_join(c[k], &j, &task), FM_OK);
            assert_int_equal(task.action, FM_ACTION_TRAIN);
            fm_wire_ref r = {.round = round, .site = k};
            strcpy(r.run_id, task.run_id);
            assert_int_equal(fm_net_pull(c[k], &r, pulled, f.b, NB), FM_OK);
            assert_memory_equal(pulled, want, f.P * sizeof(float));
            want_down += round_down;
            fm_wire_push_header h;
            header_for(&f, k, round, &h);
            fm_wire_reply reply;
            assert_int_equal(fm_net_push(c[k], &h, f.delta[k], f.b, CHUNK, &reply), FM_OK);
            float *d = sent + (size_t)k * f.P;
            memset(d, 0, f.P * sizeof(float));
            double bytes = 0.0;
            assert_int_equal(fm_wire_transmit(&up, f.delta[k], d, f.b, NB, h.trained, CHUNK, &bytes), FM_OK);
            assert_true(fm_net_last_push_bytes(c[k]) == bytes);
            want_up += bytes;
        }
        assert_int_equal(fm_strategy_begin_round(ref, round), FM_OK);
        for (int i = 0; i < PER_ROUND; i++) {
            const int k = chosen[i];
            fm_site_update u = {.n_params = f.P,
                                .delta = sent + (size_t)k * f.P,
                                .weight = (double)f.samples[k],
                                .n_blocks = NB,
                                .trained = f.trained + (size_t)k * NB};
            assert_int_equal(fm_strategy_add_update(ref, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(ref, NULL), FM_OK);
    }
    for (int k = 0; k < N_SITES; k++) {
        if (!took_part[k])
            continue;
        fm_wire_ref hb = {.round = ROUNDS, .site = k};
        strcpy(hb.run_id, "run-xyz");
        fm_wire_task task;
        assert_int_equal(fm_net_heartbeat(c[k], &hb, &task), FM_OK);
        assert_int_equal(task.action, FM_ACTION_DONE);
    }
    live_join(&l);
    assert_int_equal(l.result, FM_OK);
    assert_memory_equal(fm_strategy_global(f.strategy), fm_strategy_global(ref), f.P * sizeof(float));
    assert_true(l.traffic.bytes_up == want_up);
    assert_true(l.traffic.bytes_down == want_down);
    assert_true(want_down < (double)(ROUNDS * PER_ROUND) * (double)f.P * 4.0); /* bf16: less than float32 */
    for (int k = 0; k < N_SITES; k++)
        fm_net_client_destroy(c[k]);
    fm_strategy_destroy(ref);
    free(pulled);
    free(want);
    free(sent);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_stream_roundtrip),
        cmocka_unit_test(test_garbage_truncated_oversized),
        cmocka_unit_test(test_non_finite_refused),
        cmocka_unit_test(test_stream_order_checks),
        cmocka_unit_test(test_stream_codecs),
        cmocka_unit_test(test_chunk_fields_checked),
        cmocka_unit_test(test_server_refusals_leave_state),
        cmocka_unit_test(test_server_aggregates_in_site_order),
        cmocka_unit_test(test_live_server),
        cmocka_unit_test(test_live_server_codecs),
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
