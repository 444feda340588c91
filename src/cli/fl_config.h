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

/* The net.* keys of `fedmm server` and `fedmm client` (docs/config.md): transport security and the round
 * deadline (with fl.min_sites, which only the server uses). Paths are NULL when
 * not given. Both commands read every key, so that one config file serves the server and its sites. */
typedef struct fm_cli_net_options {
    const char *tls_ca, *tls_cert, *tls_key; /* PEM files */
    const char *tls_server_name;             /* client: verify the server's certificate for this name */
    int mtls;                                /* server: require and verify client certificates */
    double round_timeout_s;                  /* server: net.round_timeout_s, the round deadline (0 = none) */
    int min_sites;                           /* server: fl.min_sites, the pushes a round closes with at its deadline */
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
