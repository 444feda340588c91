/* The fl.* and train.* keys of a run configuration as fm_sim_options: what `fedmm sim`, `fedmm server` and
 * `fedmm client` must read identically for the networked federation to equal the simulated one. */
#ifndef FEDMM_CLI_FL_CONFIG_H
#define FEDMM_CLI_FL_CONFIG_H

#include "cli/common.h"
#include "fedmm/sim.h"

/* Reads fl.* (rounds, sites, scenario, strategy and its parameters, eval), train.* (each site's local AdamW),
 * out and metrics into *o, starting from fm_sim_default_options(). The one reader of these keys, so that
 * `sim`, `server` and `client` see the same federation. */
fm_status fm_cli_read_fl(fm_cli_run *run, const fm_cli_args *args, fm_sim_options *o);

/* The modality scenario of a federation: fl.sites, fl.label_attr, fl.scenario (a scenario name or one of FedMLLM's
 * twelve settings) and its parameters (fl.alpha, fl.missing_rate, fl.cross_k, fl.hybrid_q, fl.min_site_size),
 * starting from fm_scenario_default_config(), seed `seed`. Shared by parameter FL and CreamFL. */
fm_status fm_cli_read_scenario(fm_cli_run *run, uint64_t seed, fm_scenario_config *sc);

/* fl.sites_per_round (default dflt, in [1, num_sites]) or fl.sites_fraction (a fraction of num_sites, at least 1),
 * not both. */
fm_status fm_cli_read_sites_per_round(fm_cli_run *run, int num_sites, int dflt, int *out);

/* The net.* keys of `fedmm server` and `fedmm client` (docs/config.md): transport security and the round
 * deadline (with fl.min_sites, which only the server uses). Paths are NULL when
 * not given. Both commands read every key, so that one config file serves the server and its sites. */
typedef struct fm_cli_net_options {
    const char *tls_ca, *tls_cert, *tls_key; /* PEM files */
    const char *tls_server_name;             /* client: verify the server's certificate for this name */
    int mtls;                                /* server: require and verify client certificates */
    double round_timeout_s;                  /* server: net.round_timeout_s, the round deadline (0 = none) */
    int min_sites;                           /* server: fl.min_sites, the pushes a round closes with at its deadline */
    double park_memory_mb; /* server: net.park_memory_mb, RAM for out-of-order updates before they spill to disk */
    double reconnect_s;    /* client: net.reconnect_s, how long it keeps retrying an unreachable server */
    double call_timeout_s; /* server: net.call_timeout_s, a call that makes no progress this long is cancelled */
    int max_calls;         /* server: net.max_calls, calls served at once; one more is refused as busy */
    fm_wire_codec codec;   /* both: net.encoding, net.compress, net.zstd_level — how Push (the site) and Pull (the
                              server) encode tensors; sim applies the same (fm_sim_options.wire) */
    /* server: net.release_grace_s, how long after the last round it waits for every site that joined to hear DONE */
    double release_grace_s;
} fm_cli_net_options;

fm_status fm_cli_read_net(fm_cli_run *run, fm_cli_net_options *o);

/* What `sim`, `server` and `client` all read: fm_cli_read_fl, then fm_cli_read_net (so that one config file
 * serves all three), then fm_config_check_unused — an unknown key stops the command before it starts. */
fm_status fm_cli_read_federation(fm_cli_run *run, const fm_cli_args *args, fm_sim_options *o, fm_cli_net_options *net);

/* Removes "--name VALUE" from argv (in place) and returns VALUE, or NULL if absent; *bad is set when the flag
 * has no value. For the flags fm_cli_parse does not know (--listen, --server, --site, --token). */
const char *fm_cli_take_flag(int *argc, char **argv, const char *name, int *bad);

/* The secret the site tokens derive from: $FEDMM_SECRET, else a fixed development secret (with a warning). */
const char *fm_cli_net_secret(void);

#endif
