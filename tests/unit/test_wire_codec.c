/* The tensor payload encodings (fedmm/wire_codec.h), which `fedmm sim` uses without gRPC: bfloat16 rounds to
 * nearest even, int8 stays within half a step of every value, decoding refuses every inconsistent size, bad
 * scale, out-of-range code and non-finite value, and a zstd frame is checked (one frame, declared content size
 * equal to the chunk's) before a byte is decompressed — a small frame that declares 64 MiB is refused. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zstd.h>

#include "fedmm/wire_codec.h"
#include "testutil.h"

static float float_of(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static uint16_t bf16_bits(float x)
{
    uint8_t out[2];
    assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, &x, 1, out), FM_OK);
    uint16_t h;
    memcpy(&h, out, 2);
    return h;
}

static void test_bf16_round_to_nearest_even(void **state)
{
    (void)state;
    assert_int_equal(bf16_bits(1.0f), 0x3F80);
    assert_int_equal(bf16_bits(float_of(0x3F808000u)), 0x3F80); /* a tie, kept half even: stays */
    assert_int_equal(bf16_bits(float_of(0x3F818000u)), 0x3F82); /* a tie, kept half odd: rounds up to even */
    assert_int_equal(bf16_bits(float_of(0x3F808001u)), 0x3F81); /* above the tie */
    assert_int_equal(bf16_bits(float_of(0x3F817FFFu)), 0x3F81); /* below the tie */
    assert_int_equal(bf16_bits(float_of(0xBF818000u)), 0xBF82); /* the sign does not matter */
    assert_int_equal(bf16_bits(float_of(0x0000FFFFu)), 0x0001); /* subnormals round too */
    /* finite values that round to infinity, and non-finite ones, are refused */
    uint8_t out[8];
    float big = FLT_MAX;
    assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, &big, 1, out), FM_ERR_RANGE);
    const float bad[] = {NAN, INFINITY};
    for (int i = 0; i < 2; i++)
        assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, &bad[i], 1, out), FM_ERR_NOT_FINITE);
    /* random values: within half a bfloat16 ULP (2^-8 relative), and decode(encode(x)) is idempotent */
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    enum { N = 4099 };
    float x[N], y[N], z[N];
    uint8_t q[2 * N];
    fm_test_fill(&rng, x, N, -5.0f, 5.0f);
    assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, x, N, q), FM_OK);
    assert_int_equal(fm_wire_dequantize(FM_WIRE_BF16, q, N, y), FM_OK);
    for (int i = 0; i < N; i++)
        assert_true(fabsf(y[i] - x[i]) <= fabsf(x[i]) * 0x1p-8f);
    assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, y, N, q), FM_OK);
    assert_int_equal(fm_wire_dequantize(FM_WIRE_BF16, q, N, z), FM_OK);
    assert_memory_equal(y, z, sizeof y);
    /* an Inf or NaN pattern on the wire is refused */
    const uint16_t inf = 0x7F80, nan = 0xFFC1;
    memcpy(q + 2 * 17, &inf, 2);
    assert_int_equal(fm_wire_dequantize(FM_WIRE_BF16, q, N, y), FM_ERR_NOT_FINITE);
    memcpy(q + 2 * 17, &nan, 2);
    assert_int_equal(fm_wire_dequantize(FM_WIRE_BF16, q, N, y), FM_ERR_NOT_FINITE);
}

static void test_int8_symmetric_scale(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    enum { N = 1001 };
    float x[N], y[N];
    uint8_t q[4 + N];
    fm_test_fill(&rng, x, N, -0.3f, 0.2f);
    x[123] = -0.75f; /* the largest magnitude: maps to -127 exactly */
    assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, x, N, q), FM_OK);
    float s;
    memcpy(&s, q, 4);
    assert_true(s == 0.75f / 127.0f);
    assert_int_equal((int8_t)q[4 + 123], -127);
    assert_int_equal(fm_wire_dequantize(FM_WIRE_INT8, q, N, y), FM_OK);
    for (int i = 0; i < N; i++) {
        assert_true(fabsf(y[i] - x[i]) <= 0.5f * s * 1.0001f);
        assert_true((int8_t)q[4 + i] >= -127 && (int8_t)q[4 + i] <= 127);
    }
    /* round half away from zero: 2.5 steps -> 3, -2.5 -> -3 */
    float h[3] = {127.0f, 2.5f, -2.5f};
    assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, h, 3, q), FM_OK);
    assert_int_equal((int8_t)q[5], 3);
    assert_int_equal((int8_t)q[6], -3);
    /* all zeros: scale 1, codes 0; tiny values: a normal scale */
    float zero[4] = {0};
    assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, zero, 4, q), FM_OK);
    memcpy(&s, q, 4);
    assert_true(s == 1.0f);
    float tiny[2] = {1e-44f, -3e-45f};
    assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, tiny, 2, q), FM_OK);
    memcpy(&s, q, 4);
    assert_true(s >= FLT_MIN && isfinite(s));
    assert_int_equal(fm_wire_dequantize(FM_WIRE_INT8, q, 2, y), FM_OK);
    /* refused on decode: a scale that is 0, negative, NaN or Inf; the code -128 */
    assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, x, N, q), FM_OK);
    const float bad_scales[] = {0.0f, -1.0f, NAN, INFINITY, -0.0f};
    for (int i = 0; i < 5; i++) {
        uint8_t b[4 + N];
        memcpy(b, q, sizeof b);
        memcpy(b, &bad_scales[i], 4);
        assert_int_equal(fm_wire_dequantize(FM_WIRE_INT8, b, N, y), FM_ERR_PARSE);
        assert_non_null(strstr(fm_last_error(), "scale"));
    }
    q[4 + 500] = 0x80;
    assert_int_equal(fm_wire_dequantize(FM_WIRE_INT8, q, N, y), FM_ERR_PARSE);
    assert_non_null(strstr(fm_last_error(), "-128"));
    /* a scale so large that 127 steps overflow */
    uint8_t o[5];
    float huge = FLT_MAX;
    memcpy(o, &huge, 4);
    o[4] = 127;
    assert_int_equal(fm_wire_dequantize(FM_WIRE_INT8, o, 1, y), FM_ERR_NOT_FINITE);
    x[7] = NAN;
    assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, x, N, q), FM_ERR_NOT_FINITE);
}

static void test_payload_sizes_checked(void **state)
{
    (void)state;
    float x[10], y[10];
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    fm_test_fill(&rng, x, 10, -1.0f, 1.0f);
    uint8_t q[64];
    assert_int_equal(fm_wire_payload_bytes(FM_WIRE_F32, 10), 40);
    assert_int_equal(fm_wire_payload_bytes(FM_WIRE_BF16, 10), 20);
    assert_int_equal(fm_wire_payload_bytes(FM_WIRE_INT8, 10), 14);
    const fm_wire_encoding encs[] = {FM_WIRE_F32, FM_WIRE_BF16, FM_WIRE_INT8};
    for (int e = 0; e < 3; e++) {
        const size_t n = fm_wire_payload_bytes(encs[e], 10);
        assert_int_equal(fm_wire_quantize(encs[e], x, 10, q), FM_OK);
        assert_int_equal(fm_wire_decode_payload(encs[e], FM_WIRE_RAW, q, n, 10, y), FM_OK);
        assert_int_equal(fm_wire_decode_payload(encs[e], FM_WIRE_RAW, q, n - 1, 10, y), FM_ERR_PARSE);
        assert_int_equal(fm_wire_decode_payload(encs[e], FM_WIRE_RAW, q, n + 1, 10, y), FM_ERR_PARSE);
        assert_int_equal(fm_wire_decode_payload(encs[e], FM_WIRE_RAW, q, n, 9, y), FM_ERR_PARSE);
        assert_int_equal(fm_wire_decode_payload(encs[e], FM_WIRE_RAW, q, n, 0, y), FM_ERR_PARSE);
        /* a raw payload is not a zstd frame */
        assert_int_equal(fm_wire_decode_payload(encs[e], FM_WIRE_ZSTD, q, n, 10, y), FM_ERR_PARSE);
    }
    assert_int_equal(fm_wire_decode_payload((fm_wire_encoding)3, FM_WIRE_RAW, q, 40, 10, y), FM_ERR_PARSE);
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, (fm_wire_compression)2, q, 40, 10, y), FM_ERR_PARSE);
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_RAW, q, (size_t)(FM_WIRE_CHUNK_FLOATS + 1) * 4,
                                            FM_WIRE_CHUNK_FLOATS + 1, y),
                     FM_ERR_PARSE);
}

/* zstd frames: the size checks come before decompression. */
static void test_zstd_frames_checked(void **state)
{
    (void)state;
    enum { N = 3000 };
    float x[N], y[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)(i % 7) * 0.25f; /* compressible */
    const size_t raw = sizeof x;
    const size_t cap = ZSTD_compressBound(raw) + 64;
    uint8_t *z = fm_test_alloc(cap);
    size_t n = ZSTD_compress(z, cap, x, raw, 3);
    assert_false(ZSTD_isError(n));
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, z, n, N, y), FM_OK);
    assert_memory_equal(x, y, raw);
    /* the frame holds 3000 values; a chunk that says 2999 or 3001 is refused by the declared size */
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, z, n, N - 1, y), FM_ERR_PARSE);
    assert_non_null(strstr(fm_last_error(), "declares"));
    /* truncated, trailing garbage, two frames, garbage */
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, z, n - 1, N, y), FM_ERR_PARSE);
    z[n] = 0x42;
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, z, n + 1, N, y), FM_ERR_PARSE);
    uint8_t *two = fm_test_alloc(2 * cap);
    size_t half = ZSTD_compress(two, cap, x, raw / 2, 3);
    size_t rest = ZSTD_compress(two + half, cap, (const uint8_t *)x + raw / 2, raw / 2, 3);
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, two, half + rest, N, y), FM_ERR_PARSE);
    for (size_t i = 8; i < n; i++) /* corrupt the block data: refused, never more than the chunk written */
        z[i] ^= 0x5A;
    float guard[N + 16];
    memset(guard, 0, sizeof guard);
    assert_int_not_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, z, n, N, guard), FM_OK);
    for (int i = N; i < N + 16; i++)
        assert_true(guard[i] == 0.0f);
    /* a frame without a content size */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    assert_non_null(cc);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0)));
    n = ZSTD_compress2(cc, z, cap, x, raw);
    assert_false(ZSTD_isError(n));
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, z, n, N, y), FM_ERR_PARSE);
    assert_non_null(strstr(fm_last_error(), "content size"));
    ZSTD_freeCCtx(cc);
    /* a bomb: 64 MiB of zeros in a frame of a few KiB, sent as a chunk of the largest size */
    const size_t bomb_raw = (size_t)64 << 20;
    uint8_t *zeros = fm_test_alloc(bomb_raw);
    uint8_t *bomb = fm_test_alloc(ZSTD_compressBound(bomb_raw));
    size_t bn = ZSTD_compress(bomb, ZSTD_compressBound(bomb_raw), zeros, bomb_raw, 1);
    free(zeros);
    assert_false(ZSTD_isError(bn));
    assert_true(bn < 64 * 1024);
    float *out = fm_test_alloc(FM_WIRE_CHUNK_FLOATS * sizeof(float));
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_F32, FM_WIRE_ZSTD, bomb, bn, FM_WIRE_CHUNK_FLOATS, out),
                     FM_ERR_PARSE);
    assert_non_null(strstr(fm_last_error(), "declares 67108864 bytes"));
    assert_int_equal(fm_wire_decode_payload(FM_WIRE_INT8, FM_WIRE_ZSTD, bomb, bn, FM_WIRE_CHUNK_FLOATS, out),
                     FM_ERR_PARSE);
    free(out);
    free(bomb);
    free(two);
    free(z);
}

static const fm_strategy_block kBlocks[] = {
    {.name = "a", .offset = 0, .numel = 700, .layer = -1, .n_layers = 1},
    {.name = "b", .offset = 700, .numel = 5, .layer = -1, .n_layers = 1},
    {.name = "c", .offset = 705, .numel = 1300, .layer = -1, .n_layers = 1},
};
#define KP 2005

/* fm_wire_transmit: float32 is exact and counts 4 bytes a value; lossy encodings equal chunk-by-chunk
 * quantization (int8's scale is per chunk, so the chunk size matters); unselected blocks stay as they were. */
static void test_transmit(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    float *x = fm_test_alloc(KP * sizeof(float)), *y = fm_test_alloc(KP * sizeof(float));
    float *z = fm_test_alloc(KP * sizeof(float));
    fm_test_fill(&rng, x, KP, -1.0f, 1.0f);
    x[800] = 40.0f; /* an outlier in block c's first chunk of 512 */
    double bytes = 0.0;
    assert_int_equal(fm_wire_transmit(NULL, x, y, kBlocks, 3, NULL, 0, &bytes), FM_OK);
    assert_memory_equal(x, y, KP * sizeof(float));
    assert_true(bytes == KP * 4.0);
    const uint8_t select[3] = {1, 0, 1};
    fm_wire_codec c = {.encoding = FM_WIRE_INT8};
    for (int i = 0; i < KP; i++)
        y[i] = -9.0f;
    bytes = 0.0;
    assert_int_equal(fm_wire_transmit(&c, x, y, kBlocks, 3, select, 512, &bytes), FM_OK);
    /* chunks: a = 512 + 188, c = 512 + 512 + 276: 5 scales + 2000 codes */
    assert_true(bytes == 5 * 4.0 + 2000.0);
    for (int i = 700; i < 705; i++)
        assert_true(y[i] == -9.0f);
    for (size_t b = 0; b < 3; b += 2)
        for (size_t off = 0; off < kBlocks[b].numel; off += 512) {
            size_t n = kBlocks[b].numel - off < 512 ? kBlocks[b].numel - off : 512;
            const float *xs = x + kBlocks[b].offset + off;
            uint8_t q[4 + 512];
            float want[512];
            assert_int_equal(fm_wire_quantize(FM_WIRE_INT8, xs, n, q), FM_OK);
            assert_int_equal(fm_wire_dequantize(FM_WIRE_INT8, q, n, want), FM_OK);
            assert_memory_equal(y + kBlocks[b].offset + off, want, n * sizeof(float));
        }
    /* the outlier's chunk is coarse, the next chunk of block c is not */
    assert_true(fabsf(y[705 + 600] - x[705 + 600]) < 1.0f / 127.0f);
    /* in place equals out of place; zstd changes the byte count, never the values */
    memcpy(z, x, KP * sizeof(float));
    assert_int_equal(fm_wire_transmit(&c, z, z, kBlocks, 3, select, 512, NULL), FM_OK);
    for (size_t b = 0; b < 3; b += 2)
        assert_memory_equal(z + kBlocks[b].offset, y + kBlocks[b].offset, kBlocks[b].numel * sizeof(float));
    c.compression = FM_WIRE_ZSTD;
    double zbytes = 0.0;
    memcpy(z, x, KP * sizeof(float));
    assert_int_equal(fm_wire_transmit(&c, z, z, kBlocks, 3, select, 512, &zbytes), FM_OK);
    for (size_t b = 0; b < 3; b += 2)
        assert_memory_equal(z + kBlocks[b].offset, y + kBlocks[b].offset, kBlocks[b].numel * sizeof(float));
    assert_true(zbytes > 0.0 && zbytes <= bytes);
    /* bf16 of the whole vector: equal to element-wise rounding (no per-chunk state) */
    fm_wire_codec b16 = {.encoding = FM_WIRE_BF16};
    bytes = 0.0;
    assert_int_equal(fm_wire_transmit(&b16, x, y, kBlocks, 3, NULL, 0, &bytes), FM_OK);
    assert_true(bytes == KP * 2.0);
    for (int i = 0; i < KP; i++) {
        uint8_t q[2];
        float w;
        assert_int_equal(fm_wire_quantize(FM_WIRE_BF16, &x[i], 1, q), FM_OK);
        assert_int_equal(fm_wire_dequantize(FM_WIRE_BF16, q, 1, &w), FM_OK);
        assert_true(y[i] == w);
    }
    /* a non-finite value cannot travel */
    x[3] = NAN;
    assert_int_equal(fm_wire_transmit(&b16, x, y, kBlocks, 3, NULL, 0, NULL), FM_ERR_NOT_FINITE);
    fm_wire_codec f32z = {.compression = FM_WIRE_ZSTD};
    assert_int_equal(fm_wire_transmit(&f32z, x, y, kBlocks, 3, NULL, 0, NULL), FM_ERR_NOT_FINITE);
    free(x);
    free(y);
    free(z);
}

static void test_names(void **state)
{
    (void)state;
    fm_wire_encoding e;
    fm_wire_compression c;
    assert_int_equal(fm_wire_encoding_parse("bf16", &e), FM_OK);
    assert_int_equal(e, FM_WIRE_BF16);
    assert_int_equal(fm_wire_encoding_parse("int8", &e), FM_OK);
    assert_int_equal(e, FM_WIRE_INT8);
    assert_int_equal(fm_wire_encoding_parse("f32", &e), FM_OK);
    assert_int_equal(e, FM_WIRE_F32);
    assert_int_equal(fm_wire_encoding_parse("fp16", &e), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "f32, bf16 or int8"));
    assert_int_equal(fm_wire_compression_parse("zstd", &c), FM_OK);
    assert_int_equal(c, FM_WIRE_ZSTD);
    assert_int_equal(fm_wire_compression_parse("gzip", &c), FM_ERR_CONFIG);
    fm_wire_codec bad = {.encoding = FM_WIRE_F32, .compression = FM_WIRE_ZSTD, .zstd_level = 20};
    assert_int_equal(fm_wire_codec_check(&bad), FM_ERR_CONFIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_round_to_nearest_even),
        cmocka_unit_test(test_int8_symmetric_scale),
        cmocka_unit_test(test_payload_sizes_checked),
        cmocka_unit_test(test_zstd_frames_checked),
        cmocka_unit_test(test_transmit),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
