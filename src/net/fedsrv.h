/* The federation server's state machine, independent of gRPC: rounds, the sites each round tasks (the same
 * draw as `fedmm sim`), tokens, the validation and aggregation of pushed updates, and the state a crashed
 * server resumes from. The gRPC layer (src/net/rpc.c) decodes messages and calls in here; every function
 * answers with a gRPC status code and leaves the reason in fm_last_error().
 *
 * Aggregation order: floating-point sums depend on their order, and `fedmm sim` adds a round's updates in
 * ascending site order. Pushes are validated completely into a staging vector; an update is then added to the
 * strategy as soon as every lower-indexed tasked site's update has been added, and parked until then.
 * Memory: O(P) when sites push in index order. Parked updates are kept in RAM up to park_budget_bytes; beyond
 * it they are written to state_dir/parked/ and read back (and checked) when their turn comes, so the server
 * holds at most the strategy's state, one staging vector and the budget.
 *
 * Over-selection (Bonawitz et al. 2019): a round tasks sites_tasked ≥ sites_per_round sites (the first
 * sites_tasked of the round's permutation, fm_round_sites) and closes as soon as sites_per_round of them
 * pushed; the pushes that arrive later are refused as stale. With every tasked site pushing in site order the
 * aggregate is that of the sites_per_round lowest-indexed tasked sites, which is what `fedmm sim` uses.
 *
 * State: with state_dir set, after every finished round the server writes state_dir/server-strategy-R
 * .safetensors (fm_strategy_save: global vector and the rule's state, SCAFFOLD's c included) and then
 * state_dir/server-state.safetensors (run id, R, the per-round log, each site's last aggregated round,
 * fingerprints of the configuration), both atomically (temporary
 * file, fsync, rename), and only then removes the previous round's strategy file: a crash at any point
 * leaves a state file naming a complete strategy file. The open round's pushes are not saved: after a resume
 * its sites are tasked again and re-push (site training is deterministic, so the result does not change). */
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

/* One finished round, as logged (and kept in the state for a resumed server's metrics). */
typedef struct fm_fedsrv_round_log {
    int round;
    double loss;   /* mean of the pushing sites' reported losses */
    int sites;     /* updates aggregated */
    double wall_s; /* since the run started, across restarts */
    /* tensor payload bytes of the run so far: the gRPC layer counts them, so on_round fills them in; the state
     * keeps them, so a resumed server can continue the count */
    double bytes_up, bytes_down;
} fm_fedsrv_round_log;

/* What a CreamFL push measured (PushHeader fields 20–22; fm_creamfl_site_report): valid during the hook call. */
typedef struct fm_fedsrv_steps {
    const float *loss, *inter, *intra;
    size_t n_loss, n_inter, n_intra;
} fm_fedsrv_steps;

/* Representation FL (CreamFL over the network, src/cli/creamfl_net.c). The vector is then not a model's trainable
 * vector but representations of the public set, one block per modality ([images | texts], |P|·d floats each):
 * Pull sends the server's; a push carries the site's own for the blocks its modalities cover (not a delta) and its
 * step statistics. The strategy only holds the vector Pull sends (round_closed replaces it each round); the hooks
 * do the rest. Parameter FL leaves fm_fedsrv_config.hooks NULL. */
typedef struct fm_fedsrv_hooks {
    void *ctx;
    /* the sites round `round` tasks (m of num_sites, ascending) instead of fm_round_sites; NULL: fm_round_sites */
    fm_status (*draw)(void *ctx, int round, int num_sites, int m, int *chosen);
    /* (n_blocks) the payload kind of each block's chunks: Pull stamps them, a push's chunks must carry them */
    const fm_wire_payload_kind *block_kinds;
    /* (num_sites) each site's modalities (fm_modality bits): a Join declaring others is refused; NULL: unchecked */
    const uint32_t *site_modalities;
    /* a push header's checks beyond fedsrv's own (its step statistics), before anything of the push is kept:
     * FM_NET_OK or a gRPC status code with the reason in fm_last_error() */
    int (*check_header)(void *ctx, const fm_wire_push_header *h);
    /* a complete push was accepted into the open round (called in arrival order, before it is counted): vec (P
     * floats, zero outside the site's blocks) and its steps, valid during the call only. An error refuses the
     * push (INTERNAL) and leaves the round as it was. */
    fm_status (*accepted)(void *ctx, int round, int site, const float *vec, const fm_fedsrv_steps *steps);
    /* the round's pushes went through the strategy; before the round is logged (on_round) and its state written:
     * the hook finishes the round and sets the next round's vector (fm_strategy_set_global). An error stops the
     * server (fm_fedsrv_fatal). */
    fm_status (*round_closed)(void *ctx, int round);
} fm_fedsrv_hooks;

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
    /* called after each finished round, before its state is written (it may fill r's bytes_up/bytes_down) */
    void (*on_round)(void *ctx, fm_fedsrv_round_log *r, const float *global);
    void *ctx;
    /* round deadline (net.round_timeout_s, 0 = none): once a round has been open this long and at least
     * min_sites (fl.min_sites, ≥ 1) of its sites pushed, fm_fedsrv_poll closes it with those, in site order */
    double round_timeout_s;
    int min_sites;
    /* over-selection (fl.over_select): sites each round tasks, sites_per_round ≤ sites_tasked ≤ num_sites;
     * 0 = sites_per_round. The round closes once sites_per_round of them pushed. */
    int sites_tasked;
    /* NULL: no state is written and every parked update stays in RAM. Otherwise the directory (it must exist)
     * the state is written to after every round and parked updates beyond park_budget_bytes are spilled to. */
    const char *state_dir;
    size_t park_budget_bytes; /* net.park_memory_mb in bytes; ignored without state_dir */
    /* continue the run saved in state_dir: its run id (run_id above is ignored), the round after its last
     * finished one, its global vector and strategy state, its per-round log. FM_ERR_IO when there is no state,
     * FM_ERR_PARSE when it is damaged, FM_ERR_CONFIG when it was written with another configuration. */
    int resume;
    const fm_fedsrv_hooks *hooks; /* NULL: parameter FL; else representation FL (above); borrowed */
} fm_fedsrv_config;

typedef struct fm_fedsrv fm_fedsrv;

/* Opens round 1 (or, with resume, the round after the saved one). The config's pointers must outlive the
 * server. Leftover spill files of an earlier process in state_dir/parked/ are removed. */
fm_status fm_fedsrv_create(fm_fedsrv **out, const fm_fedsrv_config *cfg);
void fm_fedsrv_destroy(fm_fedsrv *s);

/* `bearer` is the token from the call's metadata (NULL if none): it must equal the site's token and the one in
 * the Join message. A TRAIN task carries the round's deadline as wall-clock milliseconds since the epoch
 * (deadline_unix_ms) when round_timeout_s > 0: when the round may close without this site; else 0. */
int fm_fedsrv_join(fm_fedsrv *s, const char *bearer, const fm_wire_join *j, fm_wire_task *task);
int fm_fedsrv_heartbeat(fm_fedsrv *s, const char *bearer, const fm_wire_ref *h, fm_wire_task *task);
/* On OK *global points at the current global vector (P floats) to stream out. */
int fm_fedsrv_pull(fm_fedsrv *s, const char *bearer, const fm_wire_ref *r, const float **global);
/* SCAFFOLD's server control variate c (P floats, streamed after the global vector on every Pull, as
 * FM_PAYLOAD_CONTROL_VARIATE chunks); NULL for every other strategy. Like the global vector, it changes only
 * when a round closes. */
const float *fm_fedsrv_control(const fm_fedsrv *s);

/* A push in progress: header, chunks, end. The chunks are the trained blocks of the delta (FM_PAYLOAD_ADAPTERS),
 * then, with SCAFFOLD only, the same blocks of the site's Δc_i (FM_PAYLOAD_CONTROL_VARIATE); a push is staged as
 * one vector of P (SCAFFOLD: 2P) floats. Nothing reaches the round before fm_fedsrv_push_end succeeds, so a
 * push abandoned midway (fm_fedsrv_push_free) leaves no trace. Several may be in progress at once (rpc.c
 * interleaves calls on one thread), each with its own staging vector of P floats: a chunk of a push whose round
 * closed meanwhile is refused as stale (FAILED_PRECONDITION), and push_end checks the round and duplicates again,
 * so of two streams of one site the first to end is taken and the other refused (ALREADY_EXISTS). */
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
/* The payload kind of each block's chunks (representation FL); NULL: every chunk of a Pull is of its stream's kind. */
const fm_wire_payload_kind *fm_fedsrv_block_kinds(const fm_fedsrv *s);
/* The round now open (R + 1 once the run is done). */
int fm_fedsrv_round(const fm_fedsrv *s);
/* 1 once every round is finished. */
int fm_fedsrv_done(const fm_fedsrv *s);
/* 1 once every site that joined has been told DONE. */
int fm_fedsrv_all_released(const fm_fedsrv *s);
/* A failure of the strategy itself, of writing the state or of reading back a spilled update (FM_OK if none):
 * the run cannot continue. */
fm_status fm_fedsrv_fatal(const fm_fedsrv *s);
/* The run id (the config's, or the resumed run's). */
const char *fm_fedsrv_run_id(const fm_fedsrv *s);
/* The finished rounds' log, rounds 1 .. n (n = the last finished round), including those of a resumed run. */
const fm_fedsrv_round_log *fm_fedsrv_history(const fm_fedsrv *s, int *n);
/* Updates parked now: in RAM, and spilled to files. */
void fm_fedsrv_parked(const fm_fedsrv *s, int *in_ram, int *spilled);

/* The file names inside state_dir. */
#define FM_FEDSRV_STATE_FILE "server-state.safetensors"
#define FM_FEDSRV_PARK_DIR "parked"

#endif
