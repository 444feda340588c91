/* Shared set-up of the fedmm subcommands. */
#include "cli/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fedmm/device.h"
#include "fedmm/log.h"
#include "fedmm/threads.h"

static int allowed_flag(const char *allowed, const char *flag)
{
    size_t n = strlen(flag);
    for (const char *p = allowed; (p = strstr(p, flag)) != NULL; p += n)
        if ((p == allowed || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    return 0;
}

int fm_cli_parse(int argc, char **argv, const char *allowed, fm_cli_args *args)
{
    memset(args, 0, sizeof *args);
    args->command = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            args->help = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || !allowed_flag(allowed, a + 2)) {
            fprintf(stderr, "fedmm %s: unknown option '%s' (options: %s)\n", args->command, a, allowed);
            return 2;
        }
        const char *flag = a + 2;
        if (strcmp(flag, "resume") == 0) {
            args->resume = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "fedmm %s: option '%s' needs a value\n", args->command, a);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(flag, "config") == 0) {
            args->config_path = v;
        } else if (strcmp(flag, "set") == 0) {
            if (args->n_sets == FM_CLI_MAX_SETS) {
                fprintf(stderr, "fedmm %s: more than %d --set options\n", args->command, FM_CLI_MAX_SETS);
                return 2;
            }
            args->sets[args->n_sets++] = v;
        } else if (strcmp(flag, "out") == 0) {
            args->out_dir = v;
        } else if (strcmp(flag, "metrics") == 0) {
            args->metrics_path = v;
        } else if (strcmp(flag, "device") == 0) {
            args->device = v;
        } else if (strcmp(flag, "model") == 0) {
            args->model_path = v;
        } else if (strcmp(flag, "threads") == 0) {
            char *end = NULL;
            long t = strtol(v, &end, 10);
            if (*end != '\0' || t < 1 || t > 1024) {
                fprintf(stderr, "fedmm %s: --threads '%s': expected an integer in [1, 1024]\n", args->command, v);
                return 2;
            }
            args->threads = (int)t;
        }
    }
    return 0;
}

int fm_cli_fail(const char *cmd, const char *what, fm_status s)
{
    fprintf(stderr, "fedmm %s: %s: %s\n", cmd, what, *fm_last_error() ? fm_last_error() : fm_strerror(s));
    switch (s) {
    case FM_ERR_CONFIG:
    case FM_ERR_PARSE:
    case FM_ERR_SHAPE:
    case FM_ERR_RANGE:
    case FM_ERR_DTYPE:
    case FM_ERR_INVALID_ARG:
    case FM_ERR_IO:
    case FM_ERR_NOT_FINITE: return 2;
    default: return 1;
    }
}

fm_status fm_cli_mkdirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return fm_error(FM_ERR_INVALID_ARG, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0775) != 0 && errno != EEXIST)
                return fm_error(FM_ERR_IO, "mkdir %s: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0')
                break;
        }
    }
    return FM_OK;
}

static fm_status apply_model_key(const char *key, const char *value, void *ctx)
{
    fm_clip_config *m = ctx;
    if (strcmp(key, "preset") == 0 || strcmp(key, "file") == 0)
        return FM_OK; /* read before the others */
    return fm_clip_config_set(m, key, value);
}

/* model.preset (default clip-tiny), then the key: value lines of model.file, then model.<field> keys. */
static fm_status read_model(fm_cli_run *run)
{
    const char *preset, *file;
    FM_TRY(fm_config_str(run->cfg, "model.preset", "clip-tiny", &preset));
    FM_TRY(fm_config_str(run->cfg, "model.file", NULL, &file));
    FM_TRY(fm_clip_config_preset(preset, &run->model));
    if (file) {
        fm_config *mc = NULL;
        FM_TRY(fm_config_create(&mc));
        fm_status s = fm_config_load_yaml(mc, file);
        if (s == FM_OK)
            s = fm_config_each(mc, "", apply_model_key, &run->model);
        fm_config_destroy(mc);
        FM_TRY(s);
    }
    FM_TRY(fm_config_each(run->cfg, "model", apply_model_key, &run->model));
    if (run->model.vocab_size == 0)
        run->model.vocab_size = fm_tokenizer_vocab_size(run->tok);
    if (run->model.vocab_size < fm_tokenizer_vocab_size(run->tok))
        return fm_error(FM_ERR_CONFIG, "model.vocab_size %d is smaller than the tokenizer's vocabulary (%d)",
                        run->model.vocab_size, fm_tokenizer_vocab_size(run->tok));
    return fm_clip_config_validate(&run->model);
}

static fm_status read_data(fm_cli_run *run)
{
    const char *dataset;
    FM_TRY(fm_config_str(run->cfg, "data.dataset", "synth", &dataset));
    if (strcmp(dataset, "captions") == 0) {
        FM_TRY(fm_config_str(run->cfg, "data.train_file", NULL, &run->train_file));
        FM_TRY(fm_config_str(run->cfg, "data.test_file", NULL, &run->test_file));
        if (!run->train_file || !run->test_file)
            return fm_error(FM_ERR_CONFIG, "data.dataset captions needs data.train_file and data.test_file (JSONL "
                                           "or COCO captions)");
    } else if (strcmp(dataset, "synth") != 0) {
        return fm_error(FM_ERR_CONFIG, "data.dataset '%s': expected synth (the built-in dataset) or captions", dataset);
    }
    fm_synth_config s = fm_synth_default_config();
    int64_t v;
    double d;
    FM_TRY(fm_config_int(run->cfg, "data.seed", (int64_t)run->seed, 0, INT64_MAX, &v));
    s.seed = (uint64_t)v;
    FM_TRY(fm_config_int(run->cfg, "data.image_size", run->model.image_size, 16, 4096, &v));
    if (v != run->model.image_size)
        return fm_error(FM_ERR_CONFIG, "data.image_size %lld differs from the model's image_size %d", (long long)v,
                        run->model.image_size);
    s.image_size = (int)v;
    static const char *keys[FM_SPLIT_COUNT] = {"data.train_size", "data.test_size", "data.public_size",
                                               "data.image_only_size", "data.text_only_size"};
    for (int i = 0; i < FM_SPLIT_COUNT; i++) {
        FM_TRY(fm_config_int(run->cfg, keys[i], s.split_size[i], 0, INT64_C(1) << 40, &v));
        s.split_size[i] = v;
    }
    FM_TRY(fm_config_float(run->cfg, "data.noise_std", s.noise_std, 0.0, 0.5, &d));
    s.noise_std = (float)d;
    FM_TRY(fm_config_float(run->cfg, "data.second_shape_prob", s.second_shape_prob, 0.0, 1.0, &d));
    s.second_shape_prob = (float)d;
    run->synth = s;
    return fm_synth_validate(&run->synth);
}

fm_status fm_cli_open_dataset(const fm_cli_run *run, fm_split split, fm_dataset **out)
{
    const int ctx = run->model.context_length;
    if (run->train_file) {
        const char *path = split == FM_SPLIT_TEST ? run->test_file : run->train_file;
        return fm_dataset_captions(out, path, run->model.image_size, run->tok, ctx);
    }
    return fm_dataset_synth(out, &run->synth, split, run->tok, ctx);
}

fm_status fm_cli_read_precision(fm_cli_run *run)
{
    const char *p;
    FM_TRY(fm_config_str(run->cfg, "train.precision", "fp32", &p));
    fm_status s = fm_precision_parse(p, &run->model.precision);
    if (s != FM_OK)
        return fm_error(s, "train.precision: '%s' is not fp32 or bf16", p);
    return fm_clip_config_validate(&run->model);
}

fm_status fm_cli_read_optimizer(fm_config *c, fm_train_options *o)
{
    int64_t v;
    FM_TRY(fm_config_int(c, "train.batch_size", o->batch_size, 2, 65536, &v));
    o->batch_size = (int)v;
    FM_TRY(fm_config_float(c, "train.lr", o->lr, 0.0, 10.0, &o->lr));
    FM_TRY(fm_config_float(c, "train.weight_decay", o->weight_decay, 0.0, 10.0, &o->weight_decay));
    FM_TRY(fm_config_float(c, "train.beta1", o->beta1, 0.0, 0.999999, &o->beta1));
    FM_TRY(fm_config_float(c, "train.beta2", o->beta2, 0.0, 0.999999, &o->beta2));
    FM_TRY(fm_config_float(c, "train.eps", o->eps, 1e-12, 1.0, &o->eps));
    return fm_config_float(c, "train.grad_clip", o->grad_clip, 0.0, 1e6, &o->grad_clip);
}

int fm_cli_setup(const fm_cli_args *args, fm_cli_run *run)
{
    memset(run, 0, sizeof *run);
    const char *cmd = args->command;
    fm_status s = fm_config_create(&run->cfg);
    if (s == FM_OK && args->config_path)
        s = fm_config_load_yaml(run->cfg, args->config_path);
    for (int i = 0; s == FM_OK && i < args->n_sets; i++)
        s = fm_config_set_assignment(run->cfg, args->sets[i]);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "config", s);

    const char *level = NULL, *device = NULL;
    int64_t threads = 0, seed = 0;
    s = fm_config_str(run->cfg, "log_level", "info", &level);
    if (s == FM_OK && fm_log_level_parse(level) < 0)
        s = fm_error(FM_ERR_CONFIG, "log_level '%s': expected debug, info, warn, error or off", level);
    if (s == FM_OK)
        fm_log_set_level((fm_log_level)fm_log_level_parse(level));
    if (s == FM_OK)
        s = fm_config_int(run->cfg, "threads", args->threads, 0, 1024, &threads);
    if (s == FM_OK && args->threads)
        threads = args->threads;
    if (s == FM_OK && threads > 0)
        fm_set_num_threads((int)threads);
    if (s == FM_OK)
        s = fm_config_int(run->cfg, "seed", 0, 0, INT64_MAX, &seed);
    run->seed = (uint64_t)seed;
    if (s == FM_OK)
        s = fm_config_str(run->cfg, "device", "auto", &device);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "config", s);
    if (args->device)
        device = args->device;
    fm_device_request req;
    s = fm_device_request_parse(device, &req);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "config", s);
    s = fm_device_select(req, &run->device);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "device", s);

    s = fm_tokenizer_builtin(&run->tok);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "tokenizer", s);
    s = read_model(run);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "model config", s);
    s = read_data(run);
    if (s != FM_OK)
        return fm_cli_fail(cmd, "data config", s);
    return 0;
}

void fm_cli_teardown(fm_cli_run *run)
{
    fm_config_destroy(run->cfg);
    fm_tokenizer_free(run->tok);
    memset(run, 0, sizeof *run);
}
