/* The federation server's state machine, independent of gRPC: rounds, the sites each round samples (the same
 * draw as `fedmm sim`), tokens, and the validation and aggregation of pushed updates. The gRPC layer
 * (src/net/server.c) decodes messages and calls in here; every function answers with a gRPC status code and
 * leaves the reason in fm_last_error().
 *
 * Aggregation order: floating-point sums depend on their order, and `fedmm sim` adds a round's updates in
 * ascending site order. Pushes are validated completely into a staging vector; an update is then added to the
 * strategy as soon as every lower-indexed chosen site's update has been added, and parked until then. With
 * sites that push in index order this is O(P) memory; the worst case (the highest-indexed site first) parks
 * K−1 updates: O(K·P) for the K sites of a round. */
#ifndef FEDMM_NET_FEDSRV_H
#define FEDMM_NET_FEDSRV_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "net/wire.h"

/* The gRPC status codes these functions answer with (same numbers as grpc_status_code). */
enum {
    FM_NET_OK = 0,
    FM_NET_INVALID_ARGUMENT = 3,
    FM_NET_NOT_FOUND = 5,
    FM_NET_ALREADY_EXISTS = 6,
    FM_NET_PERMISSION_DENIED = 7,
    FM_NET_FAILED_PRECONDITION = 9,
    FM_NET_INTERNAL = 13,
    FM_NET_UNAUTHENTICATED = 16
};

typedef struct fm_fedsrv_config {
    const char *run_id;  /* ≤ FM_WIRE_RUN_ID_MAX characters */
    int rounds;          /* R ≥ 1; rounds are numbered 1..R */
    int num_sites;       /* N */
    int sites_per_round; /* m */
    uint64_t seed;       /* fl.seed: the rounds' site draws (fm_round_sites) */
    int64_t local_steps;
    const char *model_family;
    size_t n_params;                 /* P */
    const fm_strategy_block *blocks; /* the vector's blocks (borrowed) */
    size_t n_blocks;
    const int64_t *site_samples; /* (N) each site's sample count nk, the aggregation weight (borrowed) */
    const uint8_t *site_trained; /* (N × n_blocks) the blocks each site trains (borrowed) */
    const char *const *tokens;   /* (N) each site's bearer token (borrowed) */
    fm_strategy *strategy;       /* borrowed; its global vector is the model sites pull */
    const char *config_text;     /* echoed in Task.config */
    /* called after each finished round with the mean of the sites' reported losses */
    void (*on_round)(void *ctx, int round, double mean_loss, const float *global);
    void *ctx;
    /* round deadline (net.round_timeout_s, 0 = none): once a round has been open this long and at least
     * min_sites (fl.min_sites, ≥ 1) of its sites pushed, fm_fedsrv_poll closes it with those, in site order */
    double round_timeout_s;
    int min_sites;
} fm_fedsrv_config;

typedef struct fm_fedsrv fm_fedsrv;

/* Opens round 1. The config's pointers must outlive the server. */
fm_status fm_fedsrv_create(fm_fedsrv **out, const fm_fedsrv_config *cfg);
void fm_fedsrv_destroy(fm_fedsrv *s);

/* `bearer` is the token from the call's metadata (NULL if none): it must equal the site's token and the one in
 * the Join message. */
int fm_fedsrv_join(fm_fedsrv *s, const char *bearer, const fm_wire_join *j, fm_wire_task *task);
int fm_fedsrv_heartbeat(fm_fedsrv *s, const char *bearer, const fm_wire_ref *h, fm_wire_task *task);
/* On OK *global points at the current global vector (P floats) to stream out. */
int fm_fedsrv_pull(fm_fedsrv *s, const char *bearer, const fm_wire_ref *r, const float **global);

/* A push in progress: header, chunks, end. Nothing reaches the round before fm_fedsrv_push_end succeeds. */
typedef struct fm_fedsrv_push fm_fedsrv_push;
int fm_fedsrv_push_begin(fm_fedsrv *s, const char *bearer, const fm_wire_push_header *h, fm_fedsrv_push **out);
int fm_fedsrv_push_chunk(fm_fedsrv *s, fm_fedsrv_push *p, const fm_wire_chunk *c);
int fm_fedsrv_push_end(fm_fedsrv *s, fm_fedsrv_push *p, fm_wire_reply *reply);
void fm_fedsrv_push_free(fm_fedsrv_push *p);

/* Applies the round deadline at time `now` (fm_now_seconds()): closes the open round when it is due and enough
 * sites pushed; later pushes of that round are refused as stale. FM_OK when nothing failed. */
fm_status fm_fedsrv_poll(fm_fedsrv *s, double now);

/* The vector's blocks (the config's). */
const fm_strategy_block *fm_fedsrv_blocks(const fm_fedsrv *s);
size_t fm_fedsrv_num_blocks(const fm_fedsrv *s);
/* The round now open (R + 1 once the run is done). */
int fm_fedsrv_round(const fm_fedsrv *s);
/* 1 once every round is finished. */
int fm_fedsrv_done(const fm_fedsrv *s);
/* 1 once every site that joined has been told DONE. */
int fm_fedsrv_all_released(const fm_fedsrv *s);
/* A failure of the strategy itself (FM_OK if none): the run cannot continue. */
fm_status fm_fedsrv_fatal(const fm_fedsrv *s);

#endif
