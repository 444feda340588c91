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

typedef struct fm_net_server_options {
    const fm_net_tls *tls;                  /* NULL or not enabled: plaintext */
    const char *listen;                     /* "HOST:PORT"; port 0 picks a free one */
    double call_timeout_s;                  /* a call that stalls this long is cancelled (default 60) */
    double release_grace_s;                 /* after the last round, how long to wait for every joined site to hear DONE
                                               (default 10) */
    void (*on_listen)(void *ctx, int port); /* called once the port is bound */
    void *ctx;
} fm_net_server_options;

/* Serves `srv` one call at a time until every round is finished and every site that joined has been told
 * DONE (or the grace period passed). FM_ERR_NETWORK if the address cannot be bound; the strategy's error if
 * aggregation failed. Bad calls get an error status and the server goes on serving. */
fm_status fm_net_serve(fm_fedsrv *srv, const fm_net_server_options *o);

typedef struct fm_net_client fm_net_client;

/* A channel to `target` ("HOST:PORT") sending `token` as "authorization: Bearer <token>" on every call. */
fm_status fm_net_client_create(fm_net_client **out, const char *target, const char *token, double call_timeout_s);
/* The same over TLS as `tls` says (NULL: plaintext). */
fm_status fm_net_client_create_tls(fm_net_client **out, const char *target, const char *token, double call_timeout_s,
                                   const fm_net_tls *tls);
void fm_net_client_destroy(fm_net_client *c);
/* The gRPC status code of the last call (0 OK, 14 UNAVAILABLE, 16 UNAUTHENTICATED, ...). */
int fm_net_last_code(const fm_net_client *c);
/* 1 when the last call failed in the connection's security handshake (bad or missing certificate, plaintext
 * against TLS): retrying will not help. */
int fm_net_last_handshake_failed(const fm_net_client *c);

fm_status fm_net_join(fm_net_client *c, const fm_wire_join *j, fm_wire_task *task);
fm_status fm_net_heartbeat(fm_net_client *c, const fm_wire_ref *h, fm_wire_task *task);
/* Streams the global vector of round r->round into dst (P floats laid out by `blocks`), checking every chunk. */
fm_status fm_net_pull(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                      size_t n_blocks);
/* Streams the header and then the trained blocks of `delta` in chunks of chunk_floats (0 = 1 MiB). */
fm_status fm_net_push(fm_net_client *c, const fm_wire_push_header *h, const float *delta,
                      const fm_strategy_block *blocks, size_t chunk_floats, fm_wire_reply *reply);

/* Sends n arbitrary messages (any bytes, e.g. garbage) to `method` ("/fedmm.Federation/Join", ...) and returns
 * the call's gRPC status code. For tests of the server's input handling. */
int fm_net_call_raw(fm_net_client *c, const char *method, const fm_wire_buf *msgs, size_t n);

#endif
