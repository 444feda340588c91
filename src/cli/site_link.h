/* A site's side of the control plane, shared by `fedmm client` for parameter FL (src/cli/client.c) and for CreamFL
 * (src/cli/creamfl_net.c): the gRPC client, Join with back-off and the re-join after the server was unreachable, the
 * heartbeat loop that waits for the site's next task, and the question before a push whether a round past its
 * deadline is still open. What a round pulls, computes and pushes stays with each client (fm_site_link_hooks). Only
 * in builds with the control plane (FEDMM_WITH_GRPC). */
#ifndef FEDMM_CLI_SITE_LINK_H
#define FEDMM_CLI_SITE_LINK_H

#ifdef FEDMM_WITH_GRPC
#include <stdint.h>

#include "cli/fl_config.h"
#include "fedmm/modality.h"
#include "fedmm/rng.h"
#include "fedmm/tensor.h"
#include "net/net.h"
#include "net/wire.h"

typedef struct fm_site_link_options {
    int site;
    double reconnect_s; /* net.reconnect_s: how long an unreachable server is retried */
    const char *target; /* --server HOST:PORT */
    const char *token;  /* the site's bearer token (fm_site_link_token) */
    const fm_net_tls *tls;
    /* what Join tells the server */
    fm_modality modality;
    const char *model_family;
    uint64_t n_params;
    uint32_t n_blocks;
    fm_device device;
    /* the log line of the first Join: "site k: joined <run_kind> <id> (<config>), <samples> samples, modality m" */
    const char *run_kind; /* "run", "CreamFL run" */
    int64_t samples;
} fm_site_link_options;

typedef struct fm_site_link {
    fm_net_client *net;
    int site;
    double reconnect_s;
    const char *run_kind;
    int64_t samples;
    fm_modality modality;
    fm_wire_join join; /* what Join sends; its run id is the run joined ("" before) */
    /* retrying an unreachable server: exponential back-off from 0.1 s, doubling up to 5 s, each wait scaled by
     * a jitter in [0.5, 1) so that sites do not return in lock step. The jitter's generator is seeded from the
     * clock and the process id: it decides only when a site calls again, never what it computes. */
    fm_rng jitter;
    double backoff_s;
    double failing_since; /* < 0: the last call succeeded */
    int handshake_fails;  /* Joins in a row refused in the transport's set-up */
} fm_site_link;

/* What fm_site_link_run calls; ctx is handed to both. */
typedef struct fm_site_link_hooks {
    /* After every answer of the server that is acted on (NULL: nothing): e.g. SCAFFOLD keeps or drops its pending
     * control variate. An error ends the run. */
    fm_status (*on_task)(void *ctx, const fm_wire_task *task);
    /* Round task->round (FM_ACTION_TRAIN): pull, train, push. When the push is left out because the round closed at
     * its deadline, *task becomes the server's next task and *fresh = 1 (fm_site_link_still_wanted). A transient
     * FM_ERR_NETWORK waits the back-off and re-joins; a refused push (stale, duplicate) asks the server again. */
    fm_status (*train)(void *ctx, fm_wire_task *task, int *fresh);
    void *ctx;
} fm_site_link_hooks;

/* The client's TLS settings (net.tls_ca, net.tls_cert, net.tls_key, net.tls_server_name), not checked yet. */
fm_net_tls fm_site_link_tls(const fm_cli_net_options *no);

/* The bearer token: `arg` (--token), else $FEDMM_TOKEN, else derived from the secret into `derived`. */
fm_status fm_site_link_token(const char *arg, int site, char derived[65], const char **token);

/* Connects (nothing is dialled before the first call) and prepares the Join message. *l is the caller's; on failure
 * it is still to be closed. */
fm_status fm_site_link_open(fm_site_link *l, const fm_site_link_options *o);
void fm_site_link_close(fm_site_link *l);

/* The server's wall clock's unit of deadlines (Task.deadline_unix_ms). */
int64_t fm_site_link_unix_ms(void);

/* The reference of this site's `task` (its run, its round), for Pull and Heartbeat. */
fm_wire_ref fm_site_link_ref(const fm_site_link *l, const fm_wire_task *task);

/* Past the round's deadline (Task.deadline_unix_ms) the server may have closed the round without this site: asks
 * before the push. *fresh = 1 when the server no longer wants this round's push; *task is then its answer (the site's
 * next task: a later round, WAIT or DONE). `dropped` ends the log line then ("the update is not pushed"). */
fm_status fm_site_link_still_wanted(fm_site_link *l, fm_wire_task *task, const char *dropped, int *fresh);

/* Joins, then follows the server's tasks until it says DONE (FM_OK, after printing "site k done: ..."): trains when
 * tasked, heartbeats otherwise; an unreachable server is retried with back-off for net.reconnect_s and re-joined. */
fm_status fm_site_link_run(fm_site_link *l, const fm_site_link_hooks *hooks);

#endif
#endif
