/* CreamFL over the control plane (docs/protocol.md, "CreamFL over the network"): what a server and its sites agree
 * on (the vector that travels, its payload kinds, the "model family" naming the configuration) and the server's
 * side, fm_creamfl_srv: a fm_fedsrv whose representation hooks (fedsrv.h) run CreamFL's rounds on a server object
 * (fm_creamfl_server_*). The gRPC loop (fm_net_serve) and the site's calls (fm_net_pull_reps, fm_net_push_reps in
 * net.h) are the transport; nothing here touches gRPC, so the whole server side is testable without sockets
 * (tests/unit/test_creamfl_net.c).
 *
 * The vector of a round is [images | texts] of the public set, |P|·d floats each. Pull sends the server's (ig, tg);
 * a site pushes its own for the modalities it holds (its other block is not sent) with the values its round measured
 * (PushHeader fields 20–22). Each push is checked completely before anything of it is kept: fedsrv's checks (token,
 * run, round, site sampled, no duplicate, n_params = 2·|P|·d, the blocks of the site's modalities, every chunk's
 * payload kind, numel = |P|·d per block, order, CRC, finite values) and the step report's
 * (fm_creamfl_check_report). A Join must name the same configuration (family) and the site's modalities. */
#ifndef FEDMM_NET_CREAMFL_SRV_H
#define FEDMM_NET_CREAMFL_SRV_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/creamfl.h"
#include "fedmm/status.h"
#include "fedmm/strategy.h"
#include "net/fedsrv.h"
#include "net/net.h"
#include "net/wire.h"

enum { FM_CREAMFL_BLOCK_IMAGE = 0, FM_CREAMFL_BLOCK_TEXT = 1, FM_CREAMFL_NUM_BLOCKS = 2 };

/* FM_PAYLOAD_PUBLIC_IMAGE, FM_PAYLOAD_PUBLIC_TEXT: the kind of each block's chunks. */
extern const fm_wire_payload_kind fm_creamfl_block_kinds[FM_CREAMFL_NUM_BLOCKS];

/* What both sides derive from the same configuration. */
typedef struct fm_creamfl_wire {
    size_t n, d, nd, P; /* |P|, d, |P|·d, 2·|P|·d */
    fm_strategy_block blocks[FM_CREAMFL_NUM_BLOCKS];
    /* "creamfl P=<|P|> d=<d> <hash>", the hash over every option that decides what a round computes (models, sites,
     * steps, λ τ κ, optimizers, representation dtype, data): Join refuses a site whose configuration differs, and
     * --resume a state written with another one */
    char family[FM_WIRE_NAME_MAX + 1];
} fm_creamfl_wire;

void fm_creamfl_wire_layout(fm_creamfl_wire *w, const fm_creamfl *c, const fm_creamfl_options *o,
                            const fm_synth_config *synth);
/* The blocks a site of modalities m sends: out[b] = 1 for each block it holds. */
void fm_creamfl_wire_blocks(fm_modality m, uint8_t out[FM_CREAMFL_NUM_BLOCKS]);

typedef struct fm_creamfl_srv_config {
    const char *run_id;
    const char *const *tokens; /* (sites) each site's bearer token (borrowed: must outlive the server) */
    double round_timeout_s;    /* net.round_timeout_s; 0 = none */
    int min_sites;             /* fl.min_sites */
    const char *state_dir;     /* the run's directory (o->out_dir): fedsrv's state, the server checkpoints */
    size_t park_budget_bytes;
    int resume; /* continue the run saved in state_dir (fedsrv's state and DIR/round-R/ of the server) */
} fm_creamfl_srv_config;

typedef struct fm_creamfl_srv fm_creamfl_srv;

/* Takes the server object c (borrowed, from fm_creamfl_server_open with the same options o): round 1's step 1 gives
 * the first vector; fedsrv is created with the hooks; with resume, c continues after the saved round (its checkpoint
 * DIR/round-R/), whose next vector must equal the one the state holds (FM_ERR_PARSE otherwise). The metrics files
 * are begun (fm_creamfl_server_start). */
fm_status fm_creamfl_srv_create(fm_creamfl_srv **out, fm_creamfl *c, const fm_creamfl_options *o,
                                const fm_synth_config *synth, const fm_creamfl_srv_config *cfg);
/* NULL is a no-op. */
void fm_creamfl_srv_destroy(fm_creamfl_srv *s);

fm_fedsrv *fm_creamfl_srv_fedsrv(fm_creamfl_srv *s);
/* The counters fm_net_serve adds its payload bytes to (bytes_up of accepted pushes, bytes_down of Pulls). */
fm_net_traffic *fm_creamfl_srv_traffic(fm_creamfl_srv *s);
/* Rounds finished before this process started (a resumed run's), and the run's payload totals so far. */
int fm_creamfl_srv_resumed_after(const fm_creamfl_srv *s);
void fm_creamfl_srv_bytes(const fm_creamfl_srv *s, double *up, double *down);
/* The last evaluation of the server (*have = 0 when none ran in this process). */
const fm_eval_result *fm_creamfl_srv_last_eval(const fm_creamfl_srv *s, int *have);

#endif
