/* Entry points of the fedmm subcommands; each takes argv from the subcommand name on and returns the
 * process exit code (0 success, 1 runtime failure, 2 bad usage or bad input). */
#ifndef FEDMM_CLI_COMMANDS_H
#define FEDMM_CLI_COMMANDS_H

int fm_cli_version(int argc, char **argv);
int fm_cli_train(int argc, char **argv);
int fm_cli_eval(int argc, char **argv);
int fm_cli_sim(int argc, char **argv);
int fm_cli_bench(int argc, char **argv);
int fm_cli_server(int argc, char **argv);
int fm_cli_client(int argc, char **argv);

#endif
