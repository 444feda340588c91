/* The wire messages of proto/fedmm.proto as plain C structs, their protobuf-c encoding and checked decoding,
 * CRC-32C, and the chunked tensor streams (a sender that cuts a vector's blocks into chunks, a receiver that
 * checks and reassembles them). Nothing here touches gRPC or server state, so every check is unit-testable. */
#ifndef FEDMM_NET_WIRE_H
#define FEDMM_NET_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "fedmm/wire_codec.h" /* FM_WIRE_CHUNK_FLOATS, the value encodings and zstd */

#define FM_WIRE_MAX_MESSAGE ((size_t)FM_WIRE_CHUNK_FLOATS * 4 + 4096) /* any encoded message, at most */
#define FM_WIRE_RUN_ID_MAX 64
#define FM_WIRE_TOKEN_MAX 128
#define FM_WIRE_NAME_MAX 64
#define FM_WIRE_MAX_BLOCKS 65536
#define FM_WIRE_MAX_STEP_VALUES 65536 /* values in each of a PushHeader's CreamFL step lists (fields 20–22) */

/* CRC-32C (Castagnoli), chainable: crc = fm_crc32c(0, a, n); crc = fm_crc32c(crc, b, m). */
uint32_t fm_crc32c(uint32_t crc, const void *data, size_t n);

/* Site k's bearer token: hex of keyed BLAKE2b-256(key = secret, "fedmm-site-<k>"), 64 characters + NUL.
 * The server holds the secret; each site is given only its own token. */
fm_status fm_net_site_token(const char *secret, int site, char out[65]);

typedef enum fm_wire_action { FM_ACTION_WAIT = 0, FM_ACTION_TRAIN = 1, FM_ACTION_DONE = 2 } fm_wire_action;

typedef struct fm_wire_join {
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    int64_t round;
    int32_t site;
    char token[FM_WIRE_TOKEN_MAX + 1];
    uint32_t modalities;
    char model_family[FM_WIRE_NAME_MAX + 1];
    uint64_t n_params;
    uint32_t n_blocks;
    char device[FM_WIRE_NAME_MAX + 1];
} fm_wire_join;

typedef struct fm_wire_task {
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    int64_t round;
    fm_wire_action action;
    int64_t local_steps;
    int64_t deadline_unix_ms;
    uint64_t n_params;
    int32_t rounds;
    char config[256];
    int64_t aggregated_round; /* the last round whose update of this site a finished round aggregated (0: none) */
} fm_wire_task;

/* HeartbeatRequest and PullRequest. */
typedef struct fm_wire_ref {
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    int64_t round;
    int32_t site;
} fm_wire_ref;

/* What a tensor stream carries (TensorChunk.payload): a Pull or Push of adapters (the trainable vector's blocks)
 * unless a chunk says otherwise. */
typedef enum fm_wire_payload_kind {
    FM_PAYLOAD_ADAPTERS = 0,        /* the global vector down, a site's delta up */
    FM_PAYLOAD_CONTROL_VARIATE = 1, /* SCAFFOLD: the server's c down (after the adapters), a site's Δc_i up */
    FM_PAYLOAD_PUBLIC_IMAGE = 2,    /* CreamFL: image representations of the public set */
    FM_PAYLOAD_PUBLIC_TEXT = 3      /* CreamFL: text representations of the public set */
} fm_wire_payload_kind;
#define FM_PAYLOAD_KINDS 4

/* One piece of one tensor. `payload` is the message's data field exactly as it travels (the values encoded,
 * then maybe compressed); the tensor's CRC-32C is computed over the payloads of its chunks, in order. */
typedef struct fm_wire_chunk {
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    int64_t round;
    int32_t site;
    uint32_t tensor;
    uint64_t numel;
    uint64_t offset;
    size_t count;                    /* values in this chunk */
    fm_wire_encoding encoding;       /* of the payload */
    fm_wire_compression compression; /* of the payload */
    const uint8_t *payload;          /* encode: borrowed, NULL = `data` as float32; decode: owned (msg) */
    size_t payload_len;
    const float *data; /* the values; encode: borrowed; decode: decoded, owned by the chunk (fm_wire_chunk_free) */
    uint32_t crc32c;   /* on the tensor's last chunk */
    fm_wire_payload_kind kind; /* what the stream carries (TensorChunk.payload) */
    float *owned;
    void *msg; /* decode: the unpacked message that holds payload */
} fm_wire_chunk;

typedef struct fm_wire_push_header {
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    int64_t round;
    int32_t site;
    int64_t n_samples;
    double loss;
    uint64_t n_params;
    size_t n_blocks;
    uint8_t trained[FM_WIRE_MAX_BLOCKS]; /* 0 / 1 per block */
    /* CreamFL (fields 20–22, each at most FM_WIRE_MAX_STEP_VALUES; empty in parameter FL): the site's private loss
     * per local step, its L_inter and L_intra per step and modality. Encode: borrowed (NULL with a count of 0);
     * decode: one allocation owned by the header (step_owned, freed by fm_wire_push_msg_free) */
    const float *step_loss, *step_inter, *step_intra;
    size_t n_step_loss, n_step_inter, n_step_intra;
    float *step_owned;
} fm_wire_push_header;

/* One message of a Push stream: a header or a chunk. */
typedef struct fm_wire_push_msg {
    int is_header;
    fm_wire_push_header *header; /* decode: owned (fm_wire_push_msg_free) */
    fm_wire_chunk chunk;
} fm_wire_push_msg;

typedef struct fm_wire_reply {
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    int64_t round;
    int accepted;
} fm_wire_reply;

/* An encoded message (malloc'ed). */
typedef struct fm_wire_buf {
    uint8_t *data;
    size_t len;
} fm_wire_buf;
void fm_wire_buf_free(fm_wire_buf *b);

/* Encoders: FM_ERR_INVALID_ARG for a string over its limit or a chunk over FM_WIRE_CHUNK_FLOATS. */
fm_status fm_wire_encode_join(const fm_wire_join *m, fm_wire_buf *out);
fm_status fm_wire_encode_task(const fm_wire_task *m, fm_wire_buf *out);
fm_status fm_wire_encode_ref(const fm_wire_ref *m, fm_wire_buf *out); /* HeartbeatRequest / PullRequest */
fm_status fm_wire_encode_chunk(const fm_wire_chunk *m, fm_wire_buf *out);
fm_status fm_wire_encode_push_header(const fm_wire_push_header *m, fm_wire_buf *out);
fm_status fm_wire_encode_push_chunk(const fm_wire_chunk *m, fm_wire_buf *out);
fm_status fm_wire_encode_reply(const fm_wire_reply *m, fm_wire_buf *out);

/* Decoders: FM_ERR_RANGE for a message over FM_WIRE_MAX_MESSAGE, FM_ERR_PARSE for bytes that are not the
 * message or a string over its limit; chunks also FM_ERR_SHAPE (count 0, over FM_WIRE_CHUNK_FLOATS, or past
 * numel), FM_ERR_PARSE for an unknown encoding or compression or a payload whose size does not fit count and
 * encoding (checked before decompressing: fm_wire_decode_payload), FM_ERR_NOT_FINITE (a NaN or Inf, naming its
 * element); push headers FM_ERR_PARSE unless exactly one of header / chunk is set, trained bytes 0 or 1 and at
 * most FM_WIRE_MAX_BLOCKS. *out is only meaningful on FM_OK. */
fm_status fm_wire_decode_join(const uint8_t *buf, size_t len, fm_wire_join *out);
fm_status fm_wire_decode_task(const uint8_t *buf, size_t len, fm_wire_task *out);
fm_status fm_wire_decode_ref(const uint8_t *buf, size_t len, fm_wire_ref *out);
fm_status fm_wire_decode_chunk(const uint8_t *buf, size_t len, fm_wire_chunk *out);
void fm_wire_chunk_free(fm_wire_chunk *c);
fm_status fm_wire_decode_push(const uint8_t *buf, size_t len, fm_wire_push_msg *out);
void fm_wire_push_msg_free(fm_wire_push_msg *m);
fm_status fm_wire_decode_reply(const uint8_t *buf, size_t len, fm_wire_reply *out);

/* ---- chunked tensor streams over a block-structured vector -------------------------------------- */

/* Cuts the selected blocks of `src` (the vector's blocks in order; select NULL = all) into chunks of at most
 * chunk_floats floats (≤ FM_WIRE_CHUNK_FLOATS), each stamped with run id, round and site, and encodes each
 * (float32 unless fm_tensor_tx_set_codec says otherwise). */
typedef struct fm_tensor_tx {
    const float *src;
    const fm_strategy_block *blocks;
    size_t n_blocks;
    const uint8_t *select;
    size_t chunk_floats;
    size_t block, offset;
    uint32_t crc;
    const char *run_id;
    int64_t round;
    int32_t site;
    fm_wire_payload_kind kind; /* stamped on every chunk (FM_PAYLOAD_ADAPTERS after init; set before the first) */
    const fm_wire_payload_kind *block_kinds; /* NULL, or (n_blocks) the kind each block's chunks are stamped with
                                                instead (CreamFL: images, texts); set before the first next */
    fm_wire_encoder enc;
} fm_tensor_tx;

void fm_tensor_tx_init(fm_tensor_tx *tx, const float *src, const fm_strategy_block *blocks, size_t n_blocks,
                       const uint8_t *select, size_t chunk_floats, const char *run_id, int64_t round, int32_t site);
/* Encodes the chunks with `codec` (NULL: float32, uncompressed); call before the first fm_tensor_tx_next. */
void fm_tensor_tx_set_codec(fm_tensor_tx *tx, const fm_wire_codec *codec);
/* The next chunk: 1, with data borrowed from src and payload from src or the encoder (valid until the next
 * call); 0 when the stream is over; −1 when a chunk cannot be encoded (a non-finite value, a bfloat16
 * overflow, out of memory: fm_last_error() says which). */
int fm_tensor_tx_next(fm_tensor_tx *tx, fm_wire_chunk *out);
/* Frees the encoder's buffers (nothing to free for float32, uncompressed). */
void fm_tensor_tx_free(fm_tensor_tx *tx);

/* Reassembles the selected blocks into dst (n_params floats; other blocks untouched) from decoded chunks,
 * checking that chunks come in block order without gaps, that numel matches the block, and each block's
 * CRC-32C over its chunks' payloads as they travelled. */
typedef struct fm_tensor_rx {
    float *dst;
    const fm_strategy_block *blocks;
    size_t n_blocks;
    const uint8_t *select;
    size_t block, offset; /* the next expected position */
    uint32_t crc;
} fm_tensor_rx;

void fm_tensor_rx_init(fm_tensor_rx *rx, float *dst, const fm_strategy_block *blocks, size_t n_blocks,
                       const uint8_t *select);
/* Adds one decoded chunk (run id, round and site are the caller's to check). FM_ERR_PARSE naming what is
 * wrong: a tensor out of order, a wrong numel or offset, a chunk after the end, a CRC mismatch. */
fm_status fm_tensor_rx_add(fm_tensor_rx *rx, const fm_wire_chunk *c);
/* 1 when every selected block arrived whole. */
int fm_tensor_rx_complete(const fm_tensor_rx *rx);

#endif
