/* The `fedmm` command: dispatches to subcommands. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "cli/commands.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: fedmm <command> [options]\n"
                 "\n"
                 "commands:\n"
                 "  sim      a whole federation in one process  (fedmm sim --config FILE [--set k=v ...])\n"
                 "  train    centralized training on one site   (fedmm train --config FILE [--set k=v ...])\n"
                 "  server   federation server over gRPC       (fedmm server --config FILE --listen HOST:PORT)\n"
                 "  client   one federated site over gRPC      (fedmm client --config FILE --site N --server H:P)\n"
                 "  eval     retrieval and zero-shot metrics    (fedmm eval --model FILE [--config FILE])\n"
                 "  bench    scenario matrix -> tables + plots   (fedmm bench --suite NAME [--quick] [--out DIR])\n"
                 "  version  print the version and which backends this build has\n"
                 "\n"
                 "Run 'fedmm <command> --help' for a command's options.\n");
}

/* libgomp reads OMP_WAIT_POLICY when it loads, before main: idle OpenMP threads that spin compete with
 * OpenBLAS's threads and with other processes on small machines (a 13× slow-down measured on 2 busy
 * cores, docs/performance.md). Unless the user chose a policy, run again with the passive one. */
static void prefer_passive_openmp(char **argv)
{
    if (getenv("OMP_WAIT_POLICY"))
        return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the default policy */
}

int main(int argc, char **argv)
{
    prefer_passive_openmp(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "train") == 0)
        return fm_cli_train(argc - 1, argv + 1);
    if (strcmp(cmd, "sim") == 0)
        return fm_cli_sim(argc - 1, argv + 1);
    if (strcmp(cmd, "server") == 0)
        return fm_cli_server(argc - 1, argv + 1);
    if (strcmp(cmd, "client") == 0)
        return fm_cli_client(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0)
        return fm_cli_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return fm_cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return fm_cli_version(argc - 1, argv + 1);
    fprintf(stderr, "fedmm: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
