/* fedmm's gRPC transport (C core; plaintext, TLS or mutual TLS): the server's serving loop around a fm_fedsrv,
 * and the site-side calls Join, Heartbeat, Pull and Push of the service fedmm.Federation (proto/fedmm.proto,
 * docs/protocol.md). */
#ifndef FEDMM_NET_NET_H
#define FEDMM_NET_NET_H

#include <stddef.h>

#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "net/fedsrv.h"
#include "net/wire.h"

/* The gRPC receive limit both sides set: one chunk and its envelope fit, nothing near gRPC's 4 MiB default. */
#define FM_NET_MAX_RECEIVE (2 * 1024 * 1024)
/* Calls the server serves at once unless told otherwise (net.max_calls); one more is refused as busy. */
#define FM_NET_MAX_CALLS 256

/* Transport security (the config's net.tls_* keys). All paths are PEM files; NULL means not given. A server
 * uses TLS when cert_path and key_path are set; a client when ca_path or cert_path is set (no ca_path: gRPC's
 * default roots). With mtls the server requires a client certificate that chains to ca_path. */
typedef struct fm_net_tls {
    const char *ca_path;     /* roots: the client verifies the server with it, an mTLS server the clients */
    const char *cert_path;   /* this side's certificate chain */
    const char *key_path;    /* this side's private key */
    int mtls;                /* server: require and verify client certificates */
    const char *server_name; /* client: the name to verify the server's certificate for instead of the
                                target's host (GRPC_SSL_TARGET_NAME_OVERRIDE_ARG); NULL = the target's */
} fm_net_tls;

/* 1 when `t` asks for TLS on this side (server: 1, client: 0). */
int fm_net_tls_enabled(const fm_net_tls *t, int server);
/* Checks that the combination is complete and every named PEM file is readable, so that a bad path fails
 * before anything is dialled or bound: FM_ERR_CONFIG or FM_ERR_IO naming the key and the file. */
fm_status fm_net_tls_check(const fm_net_tls *t, int server);

/* Tensor payload bytes (TensorChunk data fields, as sent: after quantization and compression; not counting
 * protobuf, gRPC or TLS framing), the server's count over the run: bytes_up of the pushes it accepted,
 * bytes_down of the Pull chunks it sent. The same numbers `fedmm sim` reports for the same run. */
typedef struct fm_net_traffic {
    double bytes_up, bytes_down;
} fm_net_traffic;

typedef struct fm_net_server_options {
    const fm_net_tls *tls;                  /* NULL or not enabled: plaintext */
    const char *listen;                     /* "HOST:PORT"; port 0 picks a free one */
    double call_timeout_s;                  /* a call that makes no progress this long is cancelled (default 60) */
    int max_calls;                          /* calls in flight at most (0: FM_NET_MAX_CALLS); beyond: busy */
    int max_pushes;                         /* Pushes receiving at once, each with a staging vector of P floats
                                               (0: no limit); more wait their turn, unread and not timed out */
    double release_grace_s;                 /* after the last round, how long to wait for every joined site to hear DONE
                                               (default 10) */
    const fm_wire_codec *codec;             /* how Pull sends the global vector (NULL: float32, uncompressed) */
    fm_net_traffic *traffic;                /* NULL, or counters the server adds its payload bytes to */
    void (*on_listen)(void *ctx, int port); /* called once the port is bound */
    void *ctx;
} fm_net_server_options;

/* Serves `srv` until every round is finished and every site that joined has been told DONE (or the grace period
 * passed). Calls are served concurrently, interleaved on the calling thread (fedsrv needs no locks): each call in
 * flight has its own state, so a slow or stalled stream holds only itself. A call that makes no progress (no
 * message received or sent) for call_timeout_s is cancelled; a push it carried is discarded unseen by the round.
 * Beyond max_calls calls in flight a new call is refused with RESOURCE_EXHAUSTED and asked to retry
 * (fm_net_last_busy). FM_ERR_NETWORK if the address cannot be bound; the strategy's error if aggregation failed.
 * Bad calls get an error status and the server goes on serving. */
fm_status fm_net_serve(fm_fedsrv *srv, const fm_net_server_options *o);

/* fm_net_server_options.max_pushes for pushes of `push_bytes` each (their staging vectors): as many as
 * `park_bytes` (net.park_memory_mb) holds, at least 4 (so that a few stalled sites do not hold the others' pushes
 * until net.call_timeout_s), at most 1,000,000. */
int fm_net_receiving_slots(double park_bytes, double push_bytes);

typedef struct fm_net_client fm_net_client;

/* A channel to `target` ("HOST:PORT") sending `token` as "authorization: Bearer <token>" on every call. */
fm_status fm_net_client_create(fm_net_client **out, const char *target, const char *token, double call_timeout_s);
/* The same over TLS as `tls` says (NULL: plaintext). */
fm_status fm_net_client_create_tls(fm_net_client **out, const char *target, const char *token, double call_timeout_s,
                                   const fm_net_tls *tls);
/* A plaintext channel whose receive window stays small (HTTP/2's default; gRPC's bandwidth-delay probing, which
 * grows it to many MiB on loopback, is off): a call that stops reading holds the server's sends back within a
 * chunk or two. For tests of flow control (fm_net_pull_paused). */
fm_status fm_net_client_create_narrow(fm_net_client **out, const char *target, const char *token,
                                      double call_timeout_s);
void fm_net_client_destroy(fm_net_client *c);
/* How Push sends updates (NULL: float32, uncompressed, the default). FM_ERR_CONFIG for an invalid codec. Pull
 * takes whatever encoding the server sends: every chunk says its own. */
fm_status fm_net_client_set_codec(fm_net_client *c, const fm_wire_codec *codec);
/* Tensor payload bytes the last Push handed to gRPC (as sent: after quantization and compression). */
double fm_net_last_push_bytes(const fm_net_client *c);
/* The gRPC status code of the last call (0 OK, 14 UNAVAILABLE, 16 UNAUTHENTICATED, ...). */
int fm_net_last_code(const fm_net_client *c);
/* 1 when the last call failed in the connection's security handshake (bad or missing certificate, plaintext
 * against TLS): retrying will not help. */
int fm_net_last_handshake_failed(const fm_net_client *c);
/* 1 when the server refused the last call only because it was serving net.max_calls calls (RESOURCE_EXHAUSTED
 * with the trailing metadata "fedmm-busy"): worth retrying after a back-off. */
int fm_net_last_busy(const fm_net_client *c);

fm_status fm_net_join(fm_net_client *c, const fm_wire_join *j, fm_wire_task *task);
fm_status fm_net_heartbeat(fm_net_client *c, const fm_wire_ref *h, fm_wire_task *task);
/* Streams the global vector of round r->round into dst (P floats laid out by `blocks`), checking every chunk. A
 * control variate in the stream (the server runs SCAFFOLD) is refused with FM_ERR_CONFIG. */
fm_status fm_net_pull(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                      size_t n_blocks);
/* The same, and SCAFFOLD's server control variate c, which follows the global vector, into control (P floats);
 * FM_ERR_CONFIG when the server sends none (it runs another strategy). control NULL: fm_net_pull. */
fm_status fm_net_pull_control(fm_net_client *c, const fm_wire_ref *r, float *dst, float *control,
                              const fm_strategy_block *blocks, size_t n_blocks);
/* fm_net_pull_control that, once after_chunks chunks arrived, calls paused(ctx) before it reads on (for tests of a
 * round that closes while a Pull streams: meanwhile the server can send only what gRPC's flow control lets it). */
fm_status fm_net_pull_paused(fm_net_client *c, const fm_wire_ref *r, float *dst, float *control,
                             const fm_strategy_block *blocks, size_t n_blocks, size_t after_chunks,
                             void (*paused)(void *ctx), void *ctx);
/* Streams the header and then the trained blocks of `delta` in chunks of chunk_floats (0 = 1 MiB). */
fm_status fm_net_push(fm_net_client *c, const fm_wire_push_header *h, const float *delta,
                      const fm_strategy_block *blocks, size_t chunk_floats, fm_wire_reply *reply);
/* The same, then (SCAFFOLD, control_delta not NULL) the same blocks of the site's Δc_i, in the same codec. */
fm_status fm_net_push_control(fm_net_client *c, const fm_wire_push_header *h, const float *delta,
                              const float *control_delta, const fm_strategy_block *blocks, size_t chunk_floats,
                              fm_wire_reply *reply);

/* CreamFL's streams on a site's side (representation FL, src/net/creamfl_srv.h): the Pull of the server's
 * representations of the public set and the Push of the site's own, one block per modality (a |P| × d matrix), every
 * chunk stamped with its block's payload kind (FM_PAYLOAD_PUBLIC_IMAGE, FM_PAYLOAD_PUBLIC_TEXT) and checked against
 * it on arrival. The server's side is fedsrv with its representation hooks (fedsrv.h) behind fm_net_serve.
 *
 * fm_net_pull_reps streams the global representations of round r->round into dst (every block, laid out by
 * `blocks`), checking each chunk: its run, round and site, its block's payload kind (kinds, n_blocks entries), then
 * order, sizes, finite values and the CRC per block as every tensor stream is checked (wire.h). */
fm_status fm_net_pull_reps(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                           size_t n_blocks, const fm_wire_payload_kind *kinds);
/* Streams the header, then the blocks h->trained selects of vec, each chunk stamped with its block's kind and encoded
 * with codec (NULL: float32, uncompressed). *bytes (may be NULL) gets the payload bytes handed to gRPC. FM_ERR_NETWORK
 * unless the server accepted the push. */
fm_status fm_net_push_reps(fm_net_client *c, const fm_wire_push_header *h, const float *vec,
                           const fm_strategy_block *blocks, const fm_wire_payload_kind *kinds,
                           const fm_wire_codec *codec, fm_wire_reply *reply, double *bytes);

/* Sends n arbitrary messages (any bytes, e.g. garbage) to `method` ("/fedmm.Federation/Join", ...) and returns
 * the call's gRPC status code. For tests of the server's input handling. */
int fm_net_call_raw(fm_net_client *c, const char *method, const fm_wire_buf *msgs, size_t n);
/* The same, but after the n messages the call stalls: it sends nothing more and never half-closes, until the
 * server ends it or stall_s seconds pass (then the client cancels it: CANCELLED). sent(ctx), unless NULL, is
 * called once the messages are handed to gRPC and the server has sent its initial metadata (it has taken the
 * call). For tests of stalled sites. */
int fm_net_call_raw_stall(fm_net_client *c, const char *method, const fm_wire_buf *msgs, size_t n, double stall_s,
                          void (*sent)(void *ctx), void *ctx);

#endif
