/* Tensor payload encodings of the wire: float32 / bfloat16 / int8, optionally zstd (see fedmm/wire_codec.h). */
#include "fedmm/wire_codec.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

const char *fm_wire_encoding_name(fm_wire_encoding e)
{
    switch (e) {
    case FM_WIRE_F32: return "f32";
    case FM_WIRE_BF16: return "bf16";
    case FM_WIRE_INT8: return "int8";
    }
    return "?";
}

fm_status fm_wire_encoding_parse(const char *s, fm_wire_encoding *out)
{
    static const fm_wire_encoding all[] = {FM_WIRE_F32, FM_WIRE_BF16, FM_WIRE_INT8};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, fm_wire_encoding_name(all[i])) == 0) {
            *out = all[i];
            return FM_OK;
        }
    return fm_error(FM_ERR_CONFIG, "net.encoding '%s': expected f32, bf16 or int8", s);
}

const char *fm_wire_compression_name(fm_wire_compression c)
{
    switch (c) {
    case FM_WIRE_RAW: return "none";
    case FM_WIRE_ZSTD: return "zstd";
    }
    return "?";
}

fm_status fm_wire_compression_parse(const char *s, fm_wire_compression *out)
{
    if (strcmp(s, "none") == 0)
        *out = FM_WIRE_RAW;
    else if (strcmp(s, "zstd") == 0)
        *out = FM_WIRE_ZSTD;
    else
        return fm_error(FM_ERR_CONFIG, "net.compress '%s': expected none or zstd", s);
    return FM_OK;
}

fm_status fm_wire_codec_check(const fm_wire_codec *c)
{
    if (c->encoding != FM_WIRE_F32 && c->encoding != FM_WIRE_BF16 && c->encoding != FM_WIRE_INT8)
        return fm_error(FM_ERR_CONFIG, "wire: unknown encoding %d", (int)c->encoding);
    if (c->compression != FM_WIRE_RAW && c->compression != FM_WIRE_ZSTD)
        return fm_error(FM_ERR_CONFIG, "wire: unknown compression %d", (int)c->compression);
    if (c->zstd_level < 0 || c->zstd_level > 19)
        return fm_error(FM_ERR_CONFIG, "net.zstd_level %d: expected 1..19", c->zstd_level);
    return FM_OK;
}

size_t fm_wire_payload_bytes(fm_wire_encoding e, size_t count)
{
    switch (e) {
    case FM_WIRE_F32: return count * 4;
    case FM_WIRE_BF16: return count * 2;
    case FM_WIRE_INT8: return 4 + count;
    }
    return 0;
}

/* ---- quantization ---------------------------------------------------------------------------------- */

static uint32_t bits_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Round to nearest, ties to even, on the bit pattern: adding 0x7FFF plus the lowest kept bit carries into the
 * upper half exactly when the dropped half is above one half ULP, or equal to it with an odd kept half. */
static uint16_t bf16_of(float x)
{
    uint32_t u = bits_of(x);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* The int8 scale of a chunk whose largest magnitude is maxabs: maxabs / 127, kept a normal float (a chunk of
 * zeros gets 1, one of tiny values FLT_MIN) so that the receiver can insist on a scale > 0. */
static float int8_scale(float maxabs)
{
    if (maxabs == 0.0f)
        return 1.0f;
    float s = maxabs / 127.0f;
    return s < FLT_MIN ? FLT_MIN : s;
}

fm_status fm_wire_quantize(fm_wire_encoding e, const float *x, size_t count, uint8_t *out)
{
    float maxabs = 0.0f;
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(x[i]))
            return fm_error(FM_ERR_NOT_FINITE, "wire: value %zu is %g, only finite values travel", i, (double)x[i]);
        float a = fabsf(x[i]);
        maxabs = a > maxabs ? a : maxabs;
    }
    switch (e) {
    case FM_WIRE_F32: memcpy(out, x, count * sizeof(float)); return FM_OK; /* little-endian hosts */
    case FM_WIRE_BF16:
        for (size_t i = 0; i < count; i++) {
            uint16_t h = bf16_of(x[i]);
            if ((h & 0x7F80u) == 0x7F80u)
                return fm_error(FM_ERR_RANGE, "wire: value %zu (%g) overflows bfloat16", i, (double)x[i]);
            memcpy(out + 2 * i, &h, 2);
        }
        return FM_OK;
    case FM_WIRE_INT8: {
        const float s = int8_scale(maxabs);
        memcpy(out, &s, sizeof s);
        for (size_t i = 0; i < count; i++) {
            float q = roundf(x[i] / s);
            q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
            out[4 + i] = (uint8_t)(int8_t)q;
        }
        return FM_OK;
    }
    }
    return fm_error(FM_ERR_INVALID_ARG, "wire: unknown encoding %d", (int)e);
}

static fm_status non_finite(size_t i, float v)
{
    return fm_error(FM_ERR_NOT_FINITE, "wire: decoded value %zu is %g", i, (double)v);
}

fm_status fm_wire_dequantize(fm_wire_encoding e, const uint8_t *in, size_t count, float *out)
{
    switch (e) {
    case FM_WIRE_F32:
        memcpy(out, in, count * sizeof(float));
        for (size_t i = 0; i < count; i++)
            if (!isfinite(out[i]))
                return non_finite(i, out[i]);
        return FM_OK;
    case FM_WIRE_BF16:
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, in + 2 * i, 2);
            out[i] = float_of((uint32_t)h << 16);
            if ((h & 0x7F80u) == 0x7F80u)
                return non_finite(i, out[i]);
        }
        return FM_OK;
    case FM_WIRE_INT8: {
        float s;
        memcpy(&s, in, sizeof s);
        if (!isfinite(s) || !(s > 0.0f))
            return fm_error(FM_ERR_PARSE, "wire: int8 scale %g (must be finite and > 0)", (double)s);
        for (size_t i = 0; i < count; i++) {
            const int8_t q = (int8_t)in[4 + i];
            if (q == -128)
                return fm_error(FM_ERR_PARSE, "wire: int8 value %zu is -128 (the symmetric range is -127..127)", i);
            out[i] = (float)q * s;
            if (!isfinite(out[i]))
                return non_finite(i, out[i]);
        }
        return FM_OK;
    }
    }
    return fm_error(FM_ERR_PARSE, "wire: unknown encoding %d", (int)e);
}

/* ---- compression and whole payloads ----------------------------------------------------------------- */

/* One zstd frame of exactly `expect` bytes, checked before a byte is decompressed. */
static fm_status zstd_frame_into(const uint8_t *in, size_t n, size_t expect, uint8_t *out)
{
    const unsigned long long declared = ZSTD_getFrameContentSize(in, n);
    if (declared == ZSTD_CONTENTSIZE_ERROR)
        return fm_error(FM_ERR_PARSE, "wire: %zu payload bytes are not a zstd frame", n);
    if (declared == ZSTD_CONTENTSIZE_UNKNOWN)
        return fm_error(FM_ERR_PARSE, "wire: a zstd frame without a content size is refused (want %zu bytes)", expect);
    if (declared != expect)
        return fm_error(FM_ERR_PARSE, "wire: the zstd frame declares %llu bytes, the chunk's values take %zu", declared,
                        expect);
    const size_t frame = ZSTD_findFrameCompressedSize(in, n);
    if (ZSTD_isError(frame) || frame != n)
        return fm_error(FM_ERR_PARSE, "wire: the zstd payload is not exactly one frame (%zu bytes, frame %s)", n,
                        ZSTD_isError(frame) ? ZSTD_getErrorName(frame) : "shorter");
    const size_t got = ZSTD_decompress(out, expect, in, n);
    if (ZSTD_isError(got))
        return fm_error(FM_ERR_PARSE, "wire: zstd: %s", ZSTD_getErrorName(got));
    if (got != expect)
        return fm_error(FM_ERR_PARSE, "wire: the zstd frame held %zu bytes, it declared %zu", got, expect);
    return FM_OK;
}

fm_status fm_wire_decode_payload(fm_wire_encoding e, fm_wire_compression c, const uint8_t *payload, size_t len,
                                 size_t count, float *out)
{
    if (e != FM_WIRE_F32 && e != FM_WIRE_BF16 && e != FM_WIRE_INT8)
        return fm_error(FM_ERR_PARSE, "wire: unknown encoding %d", (int)e);
    if (count == 0 || count > FM_WIRE_CHUNK_FLOATS)
        return fm_error(FM_ERR_PARSE, "wire: a chunk of %zu values (1..%u)", count, FM_WIRE_CHUNK_FLOATS);
    const size_t raw = fm_wire_payload_bytes(e, count);
    if (c == FM_WIRE_RAW) {
        if (len != raw)
            return fm_error(FM_ERR_PARSE, "wire: %zu payload bytes for %zu %s values (want %zu)", len, count,
                            fm_wire_encoding_name(e), raw);
        return fm_wire_dequantize(e, payload, count, out);
    }
    if (c != FM_WIRE_ZSTD)
        return fm_error(FM_ERR_PARSE, "wire: unknown compression %d", (int)c);
    if (len == 0 || len > ZSTD_compressBound(raw))
        return fm_error(FM_ERR_PARSE, "wire: %zu zstd bytes for a %zu-byte payload", len, raw);
    if (e == FM_WIRE_F32) { /* decompress straight into the values */
        FM_TRY(zstd_frame_into(payload, len, raw, (uint8_t *)out));
        for (size_t i = 0; i < count; i++)
            if (!isfinite(out[i]))
                return non_finite(i, out[i]);
        return FM_OK;
    }
    uint8_t *tmp = malloc(raw);
    if (!tmp)
        return fm_error(FM_ERR_NO_MEMORY, "wire: out of memory (%zu bytes)", raw);
    fm_status st = zstd_frame_into(payload, len, raw, tmp);
    if (st == FM_OK)
        st = fm_wire_dequantize(e, tmp, count, out);
    free(tmp);
    return st;
}

void fm_wire_encoder_init(fm_wire_encoder *e, const fm_wire_codec *codec)
{
    memset(e, 0, sizeof *e);
    if (codec)
        e->codec = *codec;
}

void fm_wire_encoder_free(fm_wire_encoder *e)
{
    free(e->q);
    free(e->z);
    ZSTD_freeCCtx(e->zctx);
    memset(e, 0, sizeof *e);
}

static fm_status reserve(uint8_t **buf, size_t *cap, size_t n)
{
    if (*cap >= n)
        return FM_OK;
    uint8_t *p = realloc(*buf, n);
    if (!p)
        return fm_error(FM_ERR_NO_MEMORY, "wire: out of memory (%zu bytes)", n);
    *buf = p;
    *cap = n;
    return FM_OK;
}

fm_status fm_wire_encode_values(fm_wire_encoder *e, const float *x, size_t count, const uint8_t **payload, size_t *len,
                                fm_wire_compression *used)
{
    FM_TRY(fm_wire_codec_check(&e->codec));
    if (count == 0 || count > FM_WIRE_CHUNK_FLOATS)
        return fm_error(FM_ERR_INVALID_ARG, "wire: a chunk of %zu values (1..%u)", count, FM_WIRE_CHUNK_FLOATS);
    const size_t raw = fm_wire_payload_bytes(e->codec.encoding, count);
    const uint8_t *bytes;
    if (e->codec.encoding == FM_WIRE_F32) {
        for (size_t i = 0; i < count; i++)
            if (!isfinite(x[i]))
                return fm_error(FM_ERR_NOT_FINITE, "wire: value %zu is %g, only finite values travel", i, (double)x[i]);
        bytes = (const uint8_t *)x; /* little-endian float32 as it is */
    } else {
        FM_TRY(reserve(&e->q, &e->q_cap, raw));
        FM_TRY(fm_wire_quantize(e->codec.encoding, x, count, e->q));
        bytes = e->q;
    }
    *payload = bytes;
    *len = raw;
    *used = FM_WIRE_RAW;
    if (e->codec.compression != FM_WIRE_ZSTD)
        return FM_OK;
    if (!e->zctx) {
        e->zctx = ZSTD_createCCtx();
        if (!e->zctx)
            return fm_error(FM_ERR_NO_MEMORY, "wire: zstd: out of memory");
    }
    FM_TRY(reserve(&e->z, &e->z_cap, ZSTD_compressBound(raw)));
    /* ZSTD_compressCCtx writes the content size into the frame header, which the receiver insists on */
    const size_t n =
        ZSTD_compressCCtx(e->zctx, e->z, e->z_cap, bytes, raw, e->codec.zstd_level ? e->codec.zstd_level : 3);
    if (ZSTD_isError(n))
        return fm_error(FM_ERR_INTERNAL, "wire: zstd: %s", ZSTD_getErrorName(n));
    if (n < raw) {
        *payload = e->z;
        *len = n;
        *used = FM_WIRE_ZSTD;
    }
    return FM_OK;
}

fm_status fm_wire_transmit(const fm_wire_codec *c, const float *src, float *dst, const fm_strategy_block *blocks,
                           size_t n_blocks, const uint8_t *select, size_t chunk_floats, double *bytes)
{
    static const fm_wire_codec plain = {FM_WIRE_F32, FM_WIRE_RAW, 0};
    if (!c)
        c = &plain;
    FM_TRY(fm_wire_codec_check(c));
    if (chunk_floats == 0 || chunk_floats > FM_WIRE_CHUNK_FLOATS)
        chunk_floats = FM_WIRE_CHUNK_FLOATS;
    const int exact = c->encoding == FM_WIRE_F32;
    if (exact && c->compression == FM_WIRE_RAW) { /* nothing changes and the size is known: no work */
        for (size_t b = 0; b < n_blocks; b++) {
            if (select && !select[b])
                continue;
            if (dst != src)
                memcpy(dst + blocks[b].offset, src + blocks[b].offset, blocks[b].numel * sizeof(float));
            if (bytes)
                *bytes += (double)blocks[b].numel * sizeof(float);
        }
        return FM_OK;
    }
    fm_wire_encoder enc;
    fm_wire_encoder_init(&enc, c);
    fm_status st = FM_OK;
    for (size_t b = 0; st == FM_OK && b < n_blocks; b++) {
        if (select && !select[b])
            continue;
        for (size_t off = 0; st == FM_OK && off < blocks[b].numel; off += chunk_floats) {
            const size_t n = blocks[b].numel - off < chunk_floats ? blocks[b].numel - off : chunk_floats;
            const float *x = src + blocks[b].offset + off;
            const uint8_t *payload;
            size_t len;
            fm_wire_compression used;
            st = fm_wire_encode_values(&enc, x, n, &payload, &len, &used);
            if (st != FM_OK)
                break;
            if (bytes)
                *bytes += (double)len;
            float *y = dst + blocks[b].offset + off;
            if (exact) { /* zstd is lossless: only the size was wanted */
                if (y != x)
                    memcpy(y, x, n * sizeof(float));
            } else {
                /* decode the bytes as the receiver does (after compression: the very path it takes) */
                st = fm_wire_decode_payload(c->encoding, used, payload, len, n, y);
            }
        }
    }
    fm_wire_encoder_free(&enc);
    return st;
}
