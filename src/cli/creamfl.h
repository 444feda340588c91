/* `fedmm sim` with fl.algorithm: creamfl — the CreamFL representation-FL simulation (src/cli/creamfl.c). */
#ifndef FEDMM_CLI_CREAMFL_H
#define FEDMM_CLI_CREAMFL_H

#include "cli/common.h"

/* Reads fl.algorithm (default "fedavg"). When it is "creamfl", runs the CreamFL simulation described by the
 * fl.creamfl.* keys, tears `run` down, stores the exit code in *rc and returns 1; otherwise returns 0 and
 * leaves `run` to the caller (parameter FL). */
int fm_cli_creamfl_maybe(const fm_cli_args *args, fm_cli_run *run, int *rc);

#endif
