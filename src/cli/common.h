/* What the fedmm subcommands share: argument parsing (--config, --set, --out, --metrics, --device,
 * --threads), the run configuration, and building the tokenizer, data and model it describes. */
#ifndef FEDMM_CLI_COMMON_H
#define FEDMM_CLI_COMMON_H

#include "fedmm/clip.h"
#include "fedmm/config.h"
#include "fedmm/dataset.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"
#include "fedmm/train.h"

#define FM_CLI_MAX_SETS 64

typedef struct fm_cli_args {
    const char *command;
    const char *config_path;
    const char *sets[FM_CLI_MAX_SETS];
    int n_sets;
    const char *out_dir;
    const char *metrics_path;
    const char *device;
    const char *model_path; /* eval: --model */
    int threads;            /* 0: keep the default */
    int resume;
    int help;
} fm_cli_args;

/* Parses argv (argv[0] is the subcommand). `allowed` lists the flags this command takes, e.g.
 * "config set out metrics device threads resume". Returns 0, or 2 after printing a one-line reason. */
int fm_cli_parse(int argc, char **argv, const char *allowed, fm_cli_args *args);

/* Everything a run is built from. */
typedef struct fm_cli_run {
    fm_config *cfg;
    fm_device device;
    uint64_t seed;
    fm_tokenizer *tok;
    fm_synth_config synth;
    const char *train_file; /* data.dataset: captions — JSONL or COCO files (NULL for the built-in data) */
    const char *test_file;
    fm_clip_config model;
} fm_cli_run;

/* Loads --config and --set into run->cfg, applies threads / log level, picks the device, builds the
 * tokenizer and reads the data.* and model.* sections. On failure prints "fedmm <cmd>: <reason>" and
 * returns 2 (bad input) or 1. */
int fm_cli_setup(const fm_cli_args *args, fm_cli_run *run);
void fm_cli_teardown(fm_cli_run *run);

/* Prints "fedmm <cmd>: <what>: <fm_last_error()>" to stderr and returns the exit code for status s
 * (2 for bad input: config, parse, shape, range, I/O on inputs; 1 otherwise). */
int fm_cli_fail(const char *cmd, const char *what, fm_status s);

/* The run's dataset for `split` (FM_SPLIT_TRAIN or FM_SPLIT_TEST): the built-in dataset's split, or
 * data.train_file / data.test_file when data.dataset is captions. */
fm_status fm_cli_open_dataset(const fm_cli_run *run, fm_split split, fm_dataset **out);

/* Reads the optimizer keys shared by `train` and each site of `sim` (train.batch_size, lr, weight_decay,
 * beta1, beta2, eps, grad_clip) over the values already in *o. */
fm_status fm_cli_read_optimizer(fm_config *c, fm_train_options *o);

/* Reads train.precision (fp32 | bf16, default fp32) into run->model.precision, for the commands that train
 * (train, sim, server, client); bf16 needs a CUDA model, which fm_clip_create checks. */
fm_status fm_cli_read_precision(fm_cli_run *run);

/* mkdir -p. */
fm_status fm_cli_mkdirs(const char *path);

#endif
