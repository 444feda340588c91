/* fl.algorithm: creamfl — the CreamFL representation-FL simulation (`fedmm sim`, src/cli/creamfl.c) and the same
 * federation over gRPC (`fedmm server` / `fedmm client`, src/cli/creamfl_net.c). */
#ifndef FEDMM_CLI_CREAMFL_H
#define FEDMM_CLI_CREAMFL_H

#include "cli/common.h"
#include "cli/fl_config.h"
#include "fedmm/creamfl.h"

/* Reads fl.algorithm (default "parameter"). When it is "creamfl", runs the CreamFL simulation described by the
 * fl.creamfl.* keys, tears `run` down, stores the exit code in *rc and returns 1; otherwise returns 0 and
 * leaves `run` to the caller (parameter FL). */
int fm_cli_creamfl_maybe(const fm_cli_args *args, fm_cli_run *run, int *rc);

/* fl.algorithm: *creamfl = 1 for creamfl, 0 for parameter (the default); FM_ERR_CONFIG for anything else. */
fm_status fm_cli_read_algorithm(fm_cli_run *run, int *creamfl);

/* The one reader of a CreamFL run's keys for sim, server and client: fl.* and fl.creamfl.* into *o (validated),
 * net.* into *net (its codec's encoding set from fl.creamfl.rep_dtype: a net.encoding that says otherwise is
 * refused), then fm_config_check_unused. */
fm_status fm_cli_read_creamfl(fm_cli_run *run, const fm_cli_args *args, fm_creamfl_options *o, fm_cli_net_options *net);

/* `fedmm server` / `fedmm client` with fl.algorithm: creamfl (src/cli/creamfl_net.c): the exit code. `run` is set
 * up and stays the caller's to tear down. */
int fm_cli_creamfl_server(const fm_cli_args *args, fm_cli_run *run, const char *listen);
int fm_cli_creamfl_client(const fm_cli_args *args, fm_cli_run *run, const char *target, int site, const char *token);

#endif
