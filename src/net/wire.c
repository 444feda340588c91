/* protobuf-c encoding and checked decoding of fedmm's wire messages, CRC-32C, and the chunked tensor streams. */
#include "net/wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "fedmm.pb-c.h"

fm_status fm_net_site_token(const char *secret, int site, char out[65])
{
    if (sodium_init() < 0)
        return fm_error(FM_ERR_INTERNAL, "token: libsodium failed to initialise");
    size_t klen = strlen(secret);
    if (klen < crypto_generichash_KEYBYTES_MIN || klen > crypto_generichash_KEYBYTES_MAX)
        return fm_error(FM_ERR_CONFIG, "token: the secret must be %d..%d bytes long (got %zu)",
                        (int)crypto_generichash_KEYBYTES_MIN, (int)crypto_generichash_KEYBYTES_MAX, klen);
    char msg[64];
    int n = snprintf(msg, sizeof msg, "fedmm-site-%d", site);
    unsigned char h[32];
    if (crypto_generichash(h, sizeof h, (const unsigned char *)msg, (unsigned long long)n,
                           (const unsigned char *)secret, klen) != 0)
        return fm_error(FM_ERR_INTERNAL, "token: hashing failed");
    sodium_bin2hex(out, 65, h, sizeof h);
    return FM_OK;
}

/* ---- CRC-32C (reflected polynomial 0x82F63B78), one table built on first use ------------------ */

static uint32_t crc_table_entry(uint32_t i)
{
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
        c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    return c;
}

uint32_t fm_crc32c(uint32_t crc, const void *data, size_t n)
{
    /* The table is a pure function of the index: computing it inline per byte would be 8x slower; a 1 KiB
     * constant table built at compile time would need 256 literals. Build it on the stack per call instead:
     * 256 entries are cheap next to a 1 MiB chunk, and there is no shared mutable state. */
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++)
        table[i] = crc_table_entry(i);
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

/* ---- helpers -------------------------------------------------------------------------------------- */

void fm_wire_buf_free(fm_wire_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

static fm_status pack(const ProtobufCMessage *m, fm_wire_buf *out)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > FM_WIRE_MAX_MESSAGE)
        return fm_error(FM_ERR_INVALID_ARG, "wire: a %zu-byte message exceeds the %zu-byte limit", n,
                        (size_t)FM_WIRE_MAX_MESSAGE);
    out->data = malloc(n ? n : 1);
    if (!out->data)
        return fm_error(FM_ERR_NO_MEMORY, "wire: out of memory (%zu bytes)", n);
    out->len = protobuf_c_message_pack(m, out->data);
    return FM_OK;
}

static fm_status check_len(const char *what, size_t len)
{
    if (len > FM_WIRE_MAX_MESSAGE)
        return fm_error(FM_ERR_RANGE, "%s: %zu bytes exceed the %zu-byte message limit", what, len,
                        (size_t)FM_WIRE_MAX_MESSAGE);
    return FM_OK;
}

/* Copies a string field into dst (cap + 1 bytes). */
static fm_status copy_str(char *dst, size_t cap, const char *src, const char *what, const char *field)
{
    size_t n = src ? strlen(src) : 0;
    if (n > cap)
        return fm_error(FM_ERR_PARSE, "%s: field %s is %zu bytes long (at most %zu)", what, field, n, cap);
    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
    return FM_OK;
}

static fm_status check_str(const char *s, size_t cap, const char *what, const char *field)
{
    if (strlen(s) > cap)
        return fm_error(FM_ERR_INVALID_ARG, "%s: field %s longer than %zu bytes", what, field, cap);
    return FM_OK;
}

/* ---- encoders ------------------------------------------------------------------------------------- */

fm_status fm_wire_encode_join(const fm_wire_join *m, fm_wire_buf *out)
{
    Fedmm__JoinRequest r = FEDMM__JOIN_REQUEST__INIT;
    FM_TRY(check_str(m->token, FM_WIRE_TOKEN_MAX, "Join", "token"));
    r.run_id = (char *)m->run_id;
    r.round = m->round;
    r.site = m->site;
    r.token = (char *)m->token;
    r.modalities = m->modalities;
    r.model_family = (char *)m->model_family;
    r.n_params = m->n_params;
    r.n_blocks = m->n_blocks;
    r.device = (char *)m->device;
    return pack(&r.base, out);
}

fm_status fm_wire_encode_task(const fm_wire_task *m, fm_wire_buf *out)
{
    Fedmm__Task r = FEDMM__TASK__INIT;
    r.run_id = (char *)m->run_id;
    r.round = m->round;
    r.action = (Fedmm__Action)m->action;
    r.local_steps = m->local_steps;
    r.deadline_unix_ms = m->deadline_unix_ms;
    r.n_params = m->n_params;
    r.rounds = m->rounds;
    r.config = (char *)m->config;
    r.aggregated_round = m->aggregated_round;
    return pack(&r.base, out);
}

fm_status fm_wire_encode_ref(const fm_wire_ref *m, fm_wire_buf *out)
{
    /* HeartbeatRequest and PullRequest have the same fields and numbers: one encoding serves both */
    Fedmm__PullRequest r = FEDMM__PULL_REQUEST__INIT;
    r.run_id = (char *)m->run_id;
    r.round = m->round;
    r.site = m->site;
    return pack(&r.base, out);
}

static fm_status fill_chunk(Fedmm__TensorChunk *r, const fm_wire_chunk *m)
{
    if (m->count > FM_WIRE_CHUNK_FLOATS)
        return fm_error(FM_ERR_INVALID_ARG, "wire: chunk of %zu floats (at most %u)", m->count, FM_WIRE_CHUNK_FLOATS);
    r->run_id = (char *)m->run_id;
    r->round = m->round;
    r->site = m->site;
    r->tensor = m->tensor;
    r->numel = m->numel;
    r->offset = m->offset;
    r->count = (uint32_t)m->count;
    if (m->payload) {
        r->data.len = m->payload_len;
        r->data.data = (uint8_t *)m->payload;
        r->encoding = (Fedmm__Encoding)m->encoding;
        r->compression = (Fedmm__Compression)m->compression;
    } else { /* the values as float32 little-endian: the hosts fedmm runs on */
        if (m->encoding != FM_WIRE_F32 || m->compression != FM_WIRE_RAW)
            return fm_error(FM_ERR_INVALID_ARG, "wire: a %s/%s chunk without its payload",
                            fm_wire_encoding_name(m->encoding), fm_wire_compression_name(m->compression));
        r->data.len = m->count * sizeof(float);
        r->data.data = (uint8_t *)m->data;
    }
    r->crc32c = m->crc32c;
    r->payload = (Fedmm__Payload)m->kind;
    return FM_OK;
}

fm_status fm_wire_encode_chunk(const fm_wire_chunk *m, fm_wire_buf *out)
{
    Fedmm__TensorChunk r = FEDMM__TENSOR_CHUNK__INIT;
    FM_TRY(fill_chunk(&r, m));
    return pack(&r.base, out);
}

fm_status fm_wire_encode_push_header(const fm_wire_push_header *m, fm_wire_buf *out)
{
    Fedmm__PushHeader h = FEDMM__PUSH_HEADER__INIT;
    Fedmm__PushMessage r = FEDMM__PUSH_MESSAGE__INIT;
    if (m->n_blocks > FM_WIRE_MAX_BLOCKS)
        return fm_error(FM_ERR_INVALID_ARG, "wire: %zu blocks (at most %d)", m->n_blocks, FM_WIRE_MAX_BLOCKS);
    h.run_id = (char *)m->run_id;
    h.round = m->round;
    h.site = m->site;
    h.n_samples = m->n_samples;
    h.loss = m->loss;
    h.n_params = m->n_params;
    h.trained.len = m->n_blocks;
    h.trained.data = (uint8_t *)m->trained;
    if (m->n_step_loss > FM_WIRE_MAX_STEP_VALUES || m->n_step_inter > FM_WIRE_MAX_STEP_VALUES ||
        m->n_step_intra > FM_WIRE_MAX_STEP_VALUES)
        return fm_error(FM_ERR_INVALID_ARG, "wire: step lists of %zu / %zu / %zu values (at most %d each)",
                        m->n_step_loss, m->n_step_inter, m->n_step_intra, FM_WIRE_MAX_STEP_VALUES);
    h.n_step_loss = m->n_step_loss;
    h.step_loss = (float *)m->step_loss;
    h.n_step_inter = m->n_step_inter;
    h.step_inter = (float *)m->step_inter;
    h.n_step_intra = m->n_step_intra;
    h.step_intra = (float *)m->step_intra;
    r.header = &h;
    return pack(&r.base, out);
}

fm_status fm_wire_encode_push_chunk(const fm_wire_chunk *m, fm_wire_buf *out)
{
    Fedmm__TensorChunk c = FEDMM__TENSOR_CHUNK__INIT;
    Fedmm__PushMessage r = FEDMM__PUSH_MESSAGE__INIT;
    FM_TRY(fill_chunk(&c, m));
    r.chunk = &c;
    return pack(&r.base, out);
}

fm_status fm_wire_encode_reply(const fm_wire_reply *m, fm_wire_buf *out)
{
    Fedmm__PushReply r = FEDMM__PUSH_REPLY__INIT;
    r.run_id = (char *)m->run_id;
    r.round = m->round;
    r.accepted = m->accepted ? 1 : 0;
    return pack(&r.base, out);
}

/* ---- decoders ------------------------------------------------------------------------------------- */

fm_status fm_wire_decode_join(const uint8_t *buf, size_t len, fm_wire_join *out)
{
    FM_TRY(check_len("Join", len));
    Fedmm__JoinRequest *r = fedmm__join_request__unpack(NULL, len, buf);
    if (!r)
        return fm_error(FM_ERR_PARSE, "Join: not a JoinRequest message (%zu bytes)", len);
    memset(out, 0, sizeof *out);
    fm_status st = copy_str(out->run_id, FM_WIRE_RUN_ID_MAX, r->run_id, "Join", "run_id");
    if (st == FM_OK)
        st = copy_str(out->token, FM_WIRE_TOKEN_MAX, r->token, "Join", "token");
    if (st == FM_OK)
        st = copy_str(out->model_family, FM_WIRE_NAME_MAX, r->model_family, "Join", "model_family");
    if (st == FM_OK)
        st = copy_str(out->device, FM_WIRE_NAME_MAX, r->device, "Join", "device");
    out->round = r->round;
    out->site = r->site;
    out->modalities = r->modalities;
    out->n_params = r->n_params;
    out->n_blocks = r->n_blocks;
    fedmm__join_request__free_unpacked(r, NULL);
    return st;
}

fm_status fm_wire_decode_task(const uint8_t *buf, size_t len, fm_wire_task *out)
{
    FM_TRY(check_len("Task", len));
    Fedmm__Task *r = fedmm__task__unpack(NULL, len, buf);
    if (!r)
        return fm_error(FM_ERR_PARSE, "Task: not a Task message (%zu bytes)", len);
    memset(out, 0, sizeof *out);
    fm_status st = copy_str(out->run_id, FM_WIRE_RUN_ID_MAX, r->run_id, "Task", "run_id");
    if (st == FM_OK)
        st = copy_str(out->config, sizeof out->config - 1, r->config, "Task", "config");
    if (st == FM_OK && (r->action < 0 || r->action > 2))
        st = fm_error(FM_ERR_PARSE, "Task: unknown action %d", (int)r->action);
    out->round = r->round;
    out->action = (fm_wire_action)r->action;
    out->local_steps = r->local_steps;
    out->deadline_unix_ms = r->deadline_unix_ms;
    out->n_params = r->n_params;
    out->rounds = r->rounds;
    out->aggregated_round = r->aggregated_round;
    fedmm__task__free_unpacked(r, NULL);
    return st;
}

fm_status fm_wire_decode_ref(const uint8_t *buf, size_t len, fm_wire_ref *out)
{
    FM_TRY(check_len("request", len));
    Fedmm__PullRequest *r = fedmm__pull_request__unpack(NULL, len, buf);
    if (!r)
        return fm_error(FM_ERR_PARSE, "request: not a Pull/Heartbeat request (%zu bytes)", len);
    memset(out, 0, sizeof *out);
    fm_status st = copy_str(out->run_id, FM_WIRE_RUN_ID_MAX, r->run_id, "request", "run_id");
    out->round = r->round;
    out->site = r->site;
    fedmm__pull_request__free_unpacked(r, NULL);
    return st;
}

/* Checks a chunk and decodes its values. The sizes are checked before anything is allocated or decompressed:
 * count within 1..FM_WIRE_CHUNK_FLOATS and numel, then the payload against count and encoding
 * (fm_wire_decode_payload). On FM_OK out->payload points into r, which the caller keeps alive in out->msg. */
static fm_status take_chunk(const Fedmm__TensorChunk *r, fm_wire_chunk *out)
{
    memset(out, 0, sizeof *out);
    FM_TRY(copy_str(out->run_id, FM_WIRE_RUN_ID_MAX, r->run_id, "TensorChunk", "run_id"));
    out->round = r->round;
    out->site = r->site;
    out->tensor = r->tensor;
    out->numel = r->numel;
    out->offset = r->offset;
    out->crc32c = r->crc32c;
    const int enc = (int)r->encoding, comp = (int)r->compression, kind = (int)r->payload;
    if (enc != FM_WIRE_F32 && enc != FM_WIRE_BF16 && enc != FM_WIRE_INT8)
        return fm_error(FM_ERR_PARSE, "TensorChunk: unknown encoding %d", enc);
    if (kind < 0 || kind >= FM_PAYLOAD_KINDS)
        return fm_error(FM_ERR_PARSE, "TensorChunk: unknown payload %d", kind);
    out->kind = (fm_wire_payload_kind)kind;
    if (comp != FM_WIRE_RAW && comp != FM_WIRE_ZSTD)
        return fm_error(FM_ERR_PARSE, "TensorChunk: unknown compression %d", comp);
    const size_t count = r->count;
    if (count == 0 || count > FM_WIRE_CHUNK_FLOATS)
        return fm_error(FM_ERR_SHAPE, "TensorChunk: count %zu (want 1..%u values)", count, FM_WIRE_CHUNK_FLOATS);
    if (r->offset > r->numel || count > r->numel - r->offset)
        return fm_error(FM_ERR_SHAPE, "TensorChunk: %zu values at offset %llu run past numel %llu", count,
                        (unsigned long long)r->offset, (unsigned long long)r->numel);
    out->encoding = (fm_wire_encoding)enc;
    out->compression = (fm_wire_compression)comp;
    float *data = malloc(count * sizeof(float));
    if (!data)
        return fm_error(FM_ERR_NO_MEMORY, "TensorChunk: out of memory");
    fm_status st = fm_wire_decode_payload(out->encoding, out->compression, r->data.data, r->data.len, count, data);
    if (st == FM_ERR_NOT_FINITE) {
        /* the values before the bad one were checked finite: the first non-finite one is it */
        size_t i = 0;
        while (i + 1 < count && isfinite(data[i]))
            i++;
        const double bad = data[i];
        free(data);
        return fm_error(FM_ERR_NOT_FINITE, "TensorChunk: tensor %u element %llu is %g", r->tensor,
                        (unsigned long long)(r->offset + i), bad);
    }
    if (st != FM_OK) {
        free(data);
        char why[400];
        snprintf(why, sizeof why, "%s", fm_last_error());
        return fm_error(st, "TensorChunk: tensor %u at offset %llu: %s", r->tensor, (unsigned long long)r->offset, why);
    }
    out->count = count;
    out->owned = data;
    out->data = data;
    out->payload = r->data.data;
    out->payload_len = r->data.len;
    return FM_OK;
}

fm_status fm_wire_decode_chunk(const uint8_t *buf, size_t len, fm_wire_chunk *out)
{
    memset(out, 0, sizeof *out);
    FM_TRY(check_len("TensorChunk", len));
    Fedmm__TensorChunk *r = fedmm__tensor_chunk__unpack(NULL, len, buf);
    if (!r)
        return fm_error(FM_ERR_PARSE, "TensorChunk: not a TensorChunk message (%zu bytes)", len);
    fm_status st = take_chunk(r, out);
    if (st != FM_OK) {
        fedmm__tensor_chunk__free_unpacked(r, NULL);
        fm_wire_chunk_free(out);
        return st;
    }
    out->msg = r;
    return FM_OK;
}

void fm_wire_chunk_free(fm_wire_chunk *c)
{
    if (!c)
        return;
    free(c->owned);
    if (c->msg)
        protobuf_c_message_free_unpacked(c->msg, NULL);
    c->msg = NULL;
    c->owned = NULL;
    c->data = NULL;
    c->payload = NULL;
    c->payload_len = 0;
    c->count = 0;
}

fm_status fm_wire_decode_push(const uint8_t *buf, size_t len, fm_wire_push_msg *out)
{
    memset(out, 0, sizeof *out);
    FM_TRY(check_len("Push", len));
    Fedmm__PushMessage *r = fedmm__push_message__unpack(NULL, len, buf);
    if (!r)
        return fm_error(FM_ERR_PARSE, "Push: not a PushMessage (%zu bytes)", len);
    fm_status st = FM_OK;
    if (!r->header == !r->chunk) {
        st = fm_error(FM_ERR_PARSE, "Push: a message must hold exactly one of header and chunk");
    } else if (r->header) {
        const Fedmm__PushHeader *h = r->header;
        out->is_header = 1;
        out->header = calloc(1, sizeof *out->header);
        if (!out->header)
            st = fm_error(FM_ERR_NO_MEMORY, "Push: out of memory");
        if (st == FM_OK)
            st = copy_str(out->header->run_id, FM_WIRE_RUN_ID_MAX, h->run_id, "PushHeader", "run_id");
        if (st == FM_OK && (h->trained.len == 0 || h->trained.len > FM_WIRE_MAX_BLOCKS))
            st = fm_error(FM_ERR_PARSE, "PushHeader: %zu trained flags (1..%d)", h->trained.len, FM_WIRE_MAX_BLOCKS);
        for (size_t b = 0; st == FM_OK && b < h->trained.len; b++)
            if (h->trained.data[b] > 1)
                st = fm_error(FM_ERR_PARSE, "PushHeader: trained flag %zu is %u (0 or 1)", b, h->trained.data[b]);
        if (st == FM_OK && (h->n_step_loss > FM_WIRE_MAX_STEP_VALUES || h->n_step_inter > FM_WIRE_MAX_STEP_VALUES ||
                            h->n_step_intra > FM_WIRE_MAX_STEP_VALUES))
            st = fm_error(FM_ERR_PARSE, "PushHeader: step lists of %zu / %zu / %zu values (at most %d each)",
                          h->n_step_loss, h->n_step_inter, h->n_step_intra, FM_WIRE_MAX_STEP_VALUES);
        const size_t n_steps = st == FM_OK ? h->n_step_loss + h->n_step_inter + h->n_step_intra : 0;
        if (n_steps > 0) { /* CreamFL's step lists: one copy, owned by the header */
            float *v = malloc(n_steps * sizeof(float));
            if (!v) {
                st = fm_error(FM_ERR_NO_MEMORY, "Push: out of memory");
            } else {
                out->header->step_owned = v;
                memcpy(v, h->step_loss, h->n_step_loss * sizeof(float));
                memcpy(v + h->n_step_loss, h->step_inter, h->n_step_inter * sizeof(float));
                memcpy(v + h->n_step_loss + h->n_step_inter, h->step_intra, h->n_step_intra * sizeof(float));
                out->header->step_loss = v;
                out->header->n_step_loss = h->n_step_loss;
                out->header->step_inter = v + h->n_step_loss;
                out->header->n_step_inter = h->n_step_inter;
                out->header->step_intra = v + h->n_step_loss + h->n_step_inter;
                out->header->n_step_intra = h->n_step_intra;
            }
        }
        if (st == FM_OK) {
            fm_wire_push_header *o = out->header;
            o->round = h->round;
            o->site = h->site;
            o->n_samples = h->n_samples;
            o->loss = h->loss;
            o->n_params = h->n_params;
            o->n_blocks = h->trained.len;
            memcpy(o->trained, h->trained.data, h->trained.len);
        }
    } else {
        st = take_chunk(r->chunk, &out->chunk);
        if (st == FM_OK) { /* the chunk's payload lives in r */
            out->chunk.msg = r;
            return FM_OK;
        }
    }
    fedmm__push_message__free_unpacked(r, NULL);
    if (st != FM_OK)
        fm_wire_push_msg_free(out);
    return st;
}

void fm_wire_push_msg_free(fm_wire_push_msg *m)
{
    if (!m)
        return;
    if (m->header)
        free(m->header->step_owned);
    free(m->header);
    m->header = NULL;
    fm_wire_chunk_free(&m->chunk);
}

fm_status fm_wire_decode_reply(const uint8_t *buf, size_t len, fm_wire_reply *out)
{
    FM_TRY(check_len("PushReply", len));
    Fedmm__PushReply *r = fedmm__push_reply__unpack(NULL, len, buf);
    if (!r)
        return fm_error(FM_ERR_PARSE, "PushReply: not a PushReply message (%zu bytes)", len);
    memset(out, 0, sizeof *out);
    fm_status st = copy_str(out->run_id, FM_WIRE_RUN_ID_MAX, r->run_id, "PushReply", "run_id");
    out->round = r->round;
    out->accepted = r->accepted != 0;
    fedmm__push_reply__free_unpacked(r, NULL);
    return st;
}

/* ---- chunked tensor streams ----------------------------------------------------------------------- */

static size_t next_selected(const uint8_t *select, size_t n_blocks, size_t from)
{
    while (from < n_blocks && select && !select[from])
        from++;
    return from;
}

void fm_tensor_tx_init(fm_tensor_tx *tx, const float *src, const fm_strategy_block *blocks, size_t n_blocks,
                       const uint8_t *select, size_t chunk_floats, const char *run_id, int64_t round, int32_t site)
{
    memset(tx, 0, sizeof *tx);
    tx->src = src;
    tx->blocks = blocks;
    tx->n_blocks = n_blocks;
    tx->select = select;
    tx->chunk_floats = chunk_floats < 1 || chunk_floats > FM_WIRE_CHUNK_FLOATS ? FM_WIRE_CHUNK_FLOATS : chunk_floats;
    tx->run_id = run_id;
    tx->round = round;
    tx->site = site;
    tx->block = next_selected(select, n_blocks, 0);
    fm_wire_encoder_init(&tx->enc, NULL);
}

void fm_tensor_tx_set_codec(fm_tensor_tx *tx, const fm_wire_codec *codec)
{
    fm_wire_encoder_free(&tx->enc);
    fm_wire_encoder_init(&tx->enc, codec);
}

void fm_tensor_tx_free(fm_tensor_tx *tx) { fm_wire_encoder_free(&tx->enc); }

int fm_tensor_tx_next(fm_tensor_tx *tx, fm_wire_chunk *out)
{
    /* empty blocks carry nothing: skip them (the receiver skips them too) */
    while (tx->block < tx->n_blocks && tx->blocks[tx->block].numel == 0)
        tx->block = next_selected(tx->select, tx->n_blocks, tx->block + 1);
    if (tx->block >= tx->n_blocks)
        return 0;
    const fm_strategy_block *b = &tx->blocks[tx->block];
    size_t count = b->numel - tx->offset;
    if (count > tx->chunk_floats)
        count = tx->chunk_floats;
    const float *data = tx->src + b->offset + tx->offset;
    memset(out, 0, sizeof *out);
    snprintf(out->run_id, sizeof out->run_id, "%s", tx->run_id);
    out->round = tx->round;
    out->site = tx->site;
    out->tensor = (uint32_t)tx->block;
    out->numel = b->numel;
    out->offset = tx->offset;
    out->count = count;
    out->data = data;
    out->kind = tx->block_kinds ? tx->block_kinds[tx->block] : tx->kind;
    out->encoding = tx->enc.codec.encoding;
    if (fm_wire_encode_values(&tx->enc, data, count, &out->payload, &out->payload_len, &out->compression) != FM_OK)
        return -1;
    tx->crc = fm_crc32c(tx->crc, out->payload, out->payload_len);
    tx->offset += count;
    if (tx->offset == b->numel) {
        out->crc32c = tx->crc;
        tx->crc = 0;
        tx->offset = 0;
        tx->block = next_selected(tx->select, tx->n_blocks, tx->block + 1);
    }
    return 1;
}

void fm_tensor_rx_init(fm_tensor_rx *rx, float *dst, const fm_strategy_block *blocks, size_t n_blocks,
                       const uint8_t *select)
{
    memset(rx, 0, sizeof *rx);
    rx->dst = dst;
    rx->blocks = blocks;
    rx->n_blocks = n_blocks;
    rx->select = select;
    rx->block = next_selected(select, n_blocks, 0);
}

static void rx_skip_empty(fm_tensor_rx *rx)
{
    while (rx->block < rx->n_blocks && rx->blocks[rx->block].numel == 0)
        rx->block = next_selected(rx->select, rx->n_blocks, rx->block + 1);
}

fm_status fm_tensor_rx_add(fm_tensor_rx *rx, const fm_wire_chunk *c)
{
    rx_skip_empty(rx);
    if (rx->block >= rx->n_blocks)
        return fm_error(FM_ERR_PARSE, "tensor stream: chunk of tensor %u after the last expected tensor", c->tensor);
    const fm_strategy_block *b = &rx->blocks[rx->block];
    if (c->tensor != rx->block)
        return fm_error(FM_ERR_PARSE, "tensor stream: got tensor %u, expected tensor %zu (%s)", c->tensor, rx->block,
                        b->name ? b->name : "?");
    if (c->numel != b->numel)
        return fm_error(FM_ERR_PARSE, "tensor stream: tensor %u (%s) has %zu elements, the chunk says %llu", c->tensor,
                        b->name ? b->name : "?", b->numel, (unsigned long long)c->numel);
    if (c->offset != rx->offset || c->count == 0 || c->count > b->numel - rx->offset)
        return fm_error(FM_ERR_PARSE, "tensor stream: tensor %u chunk at offset %llu (+%zu), expected offset %zu",
                        c->tensor, (unsigned long long)c->offset, c->count, rx->offset);
    if (!c->payload && (c->encoding != FM_WIRE_F32 || c->compression != FM_WIRE_RAW))
        return fm_error(FM_ERR_INVALID_ARG, "tensor stream: a chunk without the payload it was decoded from");
    /* the checksum covers what travelled: the payloads (a hand-made float32 chunk's values are its payload) */
    uint32_t crc = c->payload ? fm_crc32c(rx->crc, c->payload, c->payload_len)
                              : fm_crc32c(rx->crc, c->data, c->count * sizeof(float));
    const int last = rx->offset + c->count == b->numel;
    if (last && crc != c->crc32c)
        return fm_error(FM_ERR_PARSE, "tensor stream: tensor %u (%s) checksum mismatch (got %08x, computed %08x)",
                        c->tensor, b->name ? b->name : "?", c->crc32c, crc);
    memcpy(rx->dst + b->offset + rx->offset, c->data, c->count * sizeof(float));
    if (last) {
        rx->crc = 0;
        rx->offset = 0;
        rx->block = next_selected(rx->select, rx->n_blocks, rx->block + 1);
    } else {
        rx->crc = crc;
        rx->offset += c->count;
    }
    return FM_OK;
}

int fm_tensor_rx_complete(const fm_tensor_rx *rx)
{
    size_t b = rx->block;
    while (b < rx->n_blocks && rx->blocks[b].numel == 0)
        b = next_selected(rx->select, rx->n_blocks, b + 1);
    return b >= rx->n_blocks && rx->offset == 0;
}
