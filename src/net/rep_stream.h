/* CreamFL's tensor streams on a site's side: the Pull of the server's representations of the public set and the Push
 * of the site's own, one block per modality (a |P| × d matrix), every chunk stamped with its block's payload kind
 * (FM_PAYLOAD_PUBLIC_IMAGE, FM_PAYLOAD_PUBLIC_TEXT) and checked against it on arrival. The server's side is fedsrv
 * with its representation hooks (fedsrv.h) behind rpc.c's serving loop. */
#ifndef FEDMM_NET_REP_STREAM_H
#define FEDMM_NET_REP_STREAM_H

#include <stddef.h>

#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "net/net.h"
#include "net/wire.h"

/* Streams the global representations of round r->round into dst (every block, laid out by `blocks`), checking each
 * chunk: its run, round and site, its block's payload kind (kinds, n_blocks entries), then order, sizes, finite values
 * and the CRC per block as every tensor stream is checked (wire.h). */
fm_status fm_net_pull_reps(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                           size_t n_blocks, const fm_wire_payload_kind *kinds);

/* Streams the header, then the blocks h->trained selects of vec, each chunk stamped with its block's kind and encoded
 * with codec (NULL: float32, uncompressed). *bytes (may be NULL) gets the payload bytes handed to gRPC. FM_ERR_NETWORK
 * unless the server accepted the push. */
fm_status fm_net_push_reps(fm_net_client *c, const fm_wire_push_header *h, const float *vec,
                           const fm_strategy_block *blocks, const fm_wire_payload_kind *kinds,
                           const fm_wire_codec *codec, fm_wire_reply *reply, double *bytes);

#endif
