/* CreamFL's Pull and Push on a site's side (rep_stream.h), built on fm_net_call and the chunked tensor streams. */
#include "net/rep_stream.h"

#include <stdio.h>
#include <string.h>

#define METHOD_PULL "/fedmm.Federation/Pull"
#define METHOD_PUSH "/fedmm.Federation/Push"

typedef struct pull_ctx {
    fm_wire_buf req;
    int sent;
    const fm_wire_ref *ref;
    const fm_wire_payload_kind *kinds;
    size_t n_blocks;
    fm_tensor_rx rx;
} pull_ctx;

static int pull_produce(void *ctx, fm_wire_buf *out)
{
    pull_ctx *p = ctx;
    if (p->sent)
        return 0;
    p->sent = 1;
    *out = p->req;
    p->req.data = NULL;
    p->req.len = 0;
    return 1;
}

static fm_status pull_consume(void *ctx, const fm_wire_buf *in)
{
    pull_ctx *p = ctx;
    fm_wire_chunk ch;
    FM_TRY(fm_wire_decode_chunk(in->data, in->len, &ch));
    fm_status st = FM_OK;
    if (strcmp(ch.run_id, p->ref->run_id) != 0 || ch.round != p->ref->round || ch.site != p->ref->site)
        st = fm_error(FM_ERR_PARSE, "Pull: a chunk of run %s round %lld site %d, expected run %s round %lld site %d",
                      ch.run_id, (long long)ch.round, ch.site, p->ref->run_id, (long long)p->ref->round, p->ref->site);
    else if (ch.tensor >= p->n_blocks || ch.kind != p->kinds[ch.tensor])
        st = fm_error(FM_ERR_PARSE,
                      "Pull: a chunk of payload %d for block %u where CreamFL's representations were expected (does "
                      "the server run fl.algorithm creamfl?)",
                      (int)ch.kind, ch.tensor);
    else
        st = fm_tensor_rx_add(&p->rx, &ch);
    fm_wire_chunk_free(&ch);
    return st;
}

fm_status fm_net_pull_reps(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                           size_t n_blocks, const fm_wire_payload_kind *kinds)
{
    pull_ctx p = {.ref = r, .kinds = kinds, .n_blocks = n_blocks};
    FM_TRY(fm_wire_encode_ref(r, &p.req));
    fm_tensor_rx_init(&p.rx, dst, blocks, n_blocks, NULL);
    fm_status st = fm_net_call(c, METHOD_PULL, pull_produce, pull_consume, &p);
    fm_wire_buf_free(&p.req);
    FM_TRY(st);
    if (!fm_tensor_rx_complete(&p.rx))
        return fm_error(FM_ERR_PARSE, "Pull: the stream ended at block %zu of %zu", p.rx.block, n_blocks);
    return FM_OK;
}

typedef struct push_ctx {
    const fm_wire_push_header *h;
    int header_sent;
    fm_tensor_tx tx;
    fm_wire_reply *reply;
    int got;
    double bytes;
} push_ctx;

static int push_produce(void *ctx, fm_wire_buf *out)
{
    push_ctx *p = ctx;
    if (!p->header_sent) {
        p->header_sent = 1;
        return fm_wire_encode_push_header(p->h, out) == FM_OK ? 1 : -1;
    }
    fm_wire_chunk ch;
    const int more = fm_tensor_tx_next(&p->tx, &ch);
    if (more <= 0)
        return more;
    p->bytes += (double)ch.payload_len;
    return fm_wire_encode_push_chunk(&ch, out) == FM_OK ? 1 : -1;
}

static fm_status push_consume(void *ctx, const fm_wire_buf *in)
{
    push_ctx *p = ctx;
    if (p->got)
        return fm_error(FM_ERR_PARSE, "Push: a second reply message");
    p->got = 1;
    return fm_wire_decode_reply(in->data, in->len, p->reply);
}

fm_status fm_net_push_reps(fm_net_client *c, const fm_wire_push_header *h, const float *vec,
                           const fm_strategy_block *blocks, const fm_wire_payload_kind *kinds,
                           const fm_wire_codec *codec, fm_wire_reply *reply, double *bytes)
{
    push_ctx p = {.h = h, .reply = reply};
    memset(reply, 0, sizeof *reply);
    fm_tensor_tx_init(&p.tx, vec, blocks, h->n_blocks, h->trained, 0, h->run_id, h->round, h->site);
    fm_tensor_tx_set_codec(&p.tx, codec);
    p.tx.block_kinds = kinds;
    fm_status st = fm_net_call(c, METHOD_PUSH, push_produce, push_consume, &p);
    fm_tensor_tx_free(&p.tx);
    if (bytes)
        *bytes = p.bytes;
    FM_TRY(st);
    if (!p.got || !reply->accepted)
        return fm_error(FM_ERR_NETWORK, "Push: the server did not accept the representations");
    return FM_OK;
}
