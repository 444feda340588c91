/* How tensor values travel between the federation server and its sites (docs/protocol.md, "Tensors on the
 * wire"): each tensor is cut into chunks of at most FM_WIRE_CHUNK_FLOATS values, and each chunk's values are
 * encoded as float32, bfloat16 (round to nearest even) or int8 (symmetric, one scale per chunk, round half
 * away from zero), then optionally compressed as one zstd frame. Nothing here needs gRPC: `fedmm sim` passes
 * every update and every broadcast through fm_wire_transmit, the very code the network uses, so that a
 * simulated run equals a networked one also when the encoding is lossy, and counts the same bytes. */
#ifndef FEDMM_WIRE_CODEC_H
#define FEDMM_WIRE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/strategy.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_WIRE_CHUNK_FLOATS 262144u /* values per chunk, at most (1 MiB of float32) */

/* The value encodings (the numbers are proto/fedmm.proto's enum Encoding). */
typedef enum fm_wire_encoding {
    FM_WIRE_F32 = 0,  /* 4 bytes per value, little-endian IEEE float32: exact */
    FM_WIRE_BF16 = 1, /* 2 bytes per value: the float32's upper 16 bits after rounding to nearest even */
    FM_WIRE_INT8 = 2  /* a float32 scale s = max|x| / 127, then 1 byte per value: round(x / s) in [-127, 127] */
} fm_wire_encoding;

/* The compressions (proto/fedmm.proto's enum Compression). */
typedef enum fm_wire_compression {
    FM_WIRE_RAW = 0, /* the encoded bytes as they are */
    FM_WIRE_ZSTD = 1 /* one zstd frame that declares its content size */
} fm_wire_compression;

/* What a sender uses (the config's net.encoding, net.compress, net.zstd_level). All-zero is float32,
 * uncompressed: the default, exact and bit-identical to an in-process run. */
typedef struct fm_wire_codec {
    fm_wire_encoding encoding;
    fm_wire_compression compression;
    int zstd_level; /* 1..19; 0 means 3 */
} fm_wire_codec;

const char *fm_wire_encoding_name(fm_wire_encoding e);
/* "f32", "bf16", "int8" -> *out; FM_ERR_CONFIG naming the accepted values otherwise. */
fm_status fm_wire_encoding_parse(const char *s, fm_wire_encoding *out);
const char *fm_wire_compression_name(fm_wire_compression c);
/* "none", "zstd" -> *out; FM_ERR_CONFIG otherwise. */
fm_status fm_wire_compression_parse(const char *s, fm_wire_compression *out);
/* FM_ERR_CONFIG for an unknown encoding or compression or a zstd level outside 0..19. */
fm_status fm_wire_codec_check(const fm_wire_codec *c);

/* Bytes of `count` values in encoding e before compression: 4·count, 2·count, or 4 + count (int8: the scale
 * first). 0 for an unknown encoding. */
size_t fm_wire_payload_bytes(fm_wire_encoding e, size_t count);

/* Encodes count values into out (fm_wire_payload_bytes(e, count) bytes). FM_ERR_NOT_FINITE for a NaN or Inf
 * (naming its index), FM_ERR_RANGE for a finite value that rounds to infinity in bfloat16. */
fm_status fm_wire_quantize(fm_wire_encoding e, const float *x, size_t count, uint8_t *out);

/* Decodes exactly fm_wire_payload_bytes(e, count) bytes into count values, checking them: every value finite,
 * the int8 scale finite and > 0, no int8 code −128. FM_ERR_PARSE or FM_ERR_NOT_FINITE naming what is wrong. */
fm_status fm_wire_dequantize(fm_wire_encoding e, const uint8_t *in, size_t count, float *out);

/* Decodes one chunk's payload as it arrived (`len` bytes, encoding e, compression c) into count values. The
 * sizes are checked before anything is decompressed: uncompressed, len must equal fm_wire_payload_bytes; a
 * zstd payload must be exactly one frame whose header declares exactly that many bytes (a frame without a
 * content size, or with another one, is refused), so a hostile frame can never make the receiver allocate or
 * write more than one chunk. Allocates at most fm_wire_payload_bytes(e, count) bytes of scratch. */
fm_status fm_wire_decode_payload(fm_wire_encoding e, fm_wire_compression c, const uint8_t *payload, size_t len,
                                 size_t count, float *out);

/* A sender's encoder: buffers reused from chunk to chunk. */
typedef struct fm_wire_encoder {
    fm_wire_codec codec;
    uint8_t *q; /* quantized bytes */
    uint8_t *z; /* zstd frame */
    size_t q_cap, z_cap;
    void *zctx; /* ZSTD_CCtx */
} fm_wire_encoder;

/* codec NULL: float32, uncompressed. */
void fm_wire_encoder_init(fm_wire_encoder *e, const fm_wire_codec *codec);
void fm_wire_encoder_free(fm_wire_encoder *e);

/* Encodes count values (1 ≤ count ≤ FM_WIRE_CHUNK_FLOATS) into the bytes that travel: *payload, *len and the
 * compression actually used. With zstd a chunk whose frame would not be smaller than the encoded bytes goes
 * uncompressed (FM_WIRE_RAW); float32 uncompressed points at x itself. The bytes stay valid until the next
 * call or fm_wire_encoder_free. Errors as fm_wire_quantize. */
fm_status fm_wire_encode_values(fm_wire_encoder *e, const float *x, size_t count, const uint8_t **payload, size_t *len,
                                fm_wire_compression *used);

/* What a receiver gets when the selected blocks of src (NULL select = every block) travel as a chunked stream
 * (chunks of chunk_floats values cut per block from offset 0; 0 means FM_WIRE_CHUNK_FLOATS): encoded, then
 * decoded, into the same blocks of dst (dst may be src; other blocks of dst are left alone). Adds the bytes
 * of every chunk's payload as sent, after compression, to *bytes (NULL: not counted). With float32 the values
 * arrive unchanged, and with dst == src nothing is written. */
fm_status fm_wire_transmit(const fm_wire_codec *c, const float *src, float *dst, const fm_strategy_block *blocks,
                           size_t n_blocks, const uint8_t *select, size_t chunk_floats, double *bytes);

#ifdef __cplusplus
}
#endif
#endif
