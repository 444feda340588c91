/* `fedmm train`: centralized training of the CLIP model on one site's data (full or LoRA), with AdamW,
 * warm-up + cosine schedule, periodic evaluation, JSON-lines metrics, checkpoints and --resume. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "fedmm/dp.h"
#include "fedmm/log.h"
#include "fedmm/metrics.h"
#include "fedmm/train.h"

static void usage(void)
{
    printf("usage: fedmm train --config FILE [--set key=value ...] [--out DIR] [--metrics FILE]\n"
           "                   [--device auto|cpu|cuda] [--threads N] [--resume]\n"
           "\n"
           "Trains the model described by the config's model.* keys on its data.* dataset with the train.*\n"
           "settings (see docs/config.md). Writes DIR/model.safetensors (adapters merged),\n"
           "DIR/adapters.safetensors (the trainable vector), DIR/checkpoint.safetensors (for --resume),\n"
           "DIR/config.yaml and metrics as JSON lines (default DIR/metrics.jsonl).\n");
}

typedef struct train_settings {
    fm_train_options opt;
    int64_t eval_every, eval_size, checkpoint_every, log_every, stop_after;
    double ema_decay; /* train.ema_decay: > 0 evaluates and saves a moving average of the weights */
    const char *out_dir;
    const char *metrics_path;
    fm_dp_options dp;                      /* train.dp_*: data parallelism over processes (include/fedmm/dp.h) */
    int use_dp;                            /* world > 1, or train.dp_world given (1: a one-rank NCCL group) */
    char rank_out[4200], dp_id_file[4200]; /* a rank > 0 writes to OUT/rank-N; the default id file */
} train_settings;

static fm_status read_train(fm_cli_run *run, const fm_cli_args *args, train_settings *t)
{
    fm_config *c = run->cfg;
    fm_train_options o = fm_train_default_options();
    int64_t v;
    FM_TRY(fm_config_int(c, "train.steps", o.steps, 1, INT64_C(1) << 40, &o.steps));
    FM_TRY(fm_cli_read_optimizer(c, &o));
    FM_TRY(fm_config_float(c, "train.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0, &o.min_lr_ratio));
    FM_TRY(fm_config_int(c, "train.warmup_steps", o.warmup_steps, 0, INT64_C(1) << 40, &o.warmup_steps));
    FM_TRY(fm_config_int(c, "train.seed", (int64_t)run->seed, 0, INT64_MAX, &v));
    o.seed = (uint64_t)v;
    FM_TRY(fm_cli_read_precision(run));
    t->opt = o;
    FM_TRY(fm_config_int(c, "train.eval_every", 0, 0, INT64_C(1) << 40, &t->eval_every));
    FM_TRY(fm_config_int(c, "train.eval_size", 500, 2, INT64_C(1) << 40, &t->eval_size));
    FM_TRY(fm_config_int(c, "train.checkpoint_every", 0, 0, INT64_C(1) << 40, &t->checkpoint_every));
    FM_TRY(fm_config_int(c, "train.log_every", 10, 1, INT64_C(1) << 40, &t->log_every));
    /* Stop (with a checkpoint) after this many steps while the schedule still spans train.steps: for
     * time-sliced jobs, continued with --resume. 0: run to the end. */
    FM_TRY(fm_config_int(c, "train.stop_after", 0, 0, INT64_C(1) << 40, &t->stop_after));
    FM_TRY(fm_config_float(c, "train.ema_decay", 0.0, 0.0, 1.0, &t->ema_decay));
    if (t->ema_decay >= 1.0)
        return fm_error(FM_ERR_CONFIG, "train.ema_decay %g: expected 0 (off) or a decay in (0, 1)", t->ema_decay);
    const char *out, *metrics;
    FM_TRY(fm_config_str(c, "out", "runs/train", &out));
    FM_TRY(fm_config_str(c, "metrics", NULL, &metrics));
    t->out_dir = args->out_dir ? args->out_dir : out;
    t->metrics_path = args->metrics_path ? args->metrics_path : metrics;
    /* data parallelism (docs/cuda.md): WORLD_SIZE / RANK from the environment, the train.dp_* keys over them */
    fm_dp_options dp = fm_dp_default_options();
    FM_TRY(fm_dp_options_from_env(&dp));
    FM_TRY(fm_config_int(c, "train.dp_world", dp.world, 1, 65536, &v));
    dp.world = (int)v;
    FM_TRY(fm_config_int(c, "train.dp_rank", dp.rank, 0, 65535, &v));
    dp.rank = (int)v;
    FM_TRY(fm_config_float(c, "train.dp_timeout_s", dp.timeout_s, 1e-3, 1e6, &dp.timeout_s));
    snprintf(t->dp_id_file, sizeof t->dp_id_file, "%s/dp-nccl-id", t->out_dir);
    FM_TRY(fm_config_str(c, "train.dp_id_file", t->dp_id_file, &dp.id_file));
    FM_TRY(fm_dp_options_validate(&dp));
    t->dp = dp;
    t->use_dp = dp.world > 1 || fm_config_has(c, "train.dp_world");
    if (dp.rank > 0) { /* rank 0 owns OUT; the others write their own copies beside it */
        snprintf(t->rank_out, sizeof t->rank_out, "%s/rank-%d", t->out_dir, dp.rank);
        t->out_dir = t->rank_out;
        t->metrics_path = NULL;
    }
    if (!run->train_file && t->eval_size > run->synth.split_size[FM_SPLIT_TEST])
        return fm_error(FM_ERR_CONFIG, "train.eval_size %lld exceeds data.test_size %lld", (long long)t->eval_size,
                        (long long)run->synth.split_size[FM_SPLIT_TEST]);
    return FM_OK;
}

/* This rank's batch of the step: the ranks of a data-parallel group draw `world` consecutive batches from the same
 * sequence and each keeps its own, so that together they train on one global batch of world × B distinct pairs
 * (skip: B scratch entries for the others' draws). One process: the next batch. */
static void next_batch(fm_sampler *s, int64_t *idx, int B, const fm_dp *dp, int64_t *skip)
{
    const int world = fm_dp_world(dp), rank = fm_dp_rank(dp);
    for (int r = 0; r < world; r++)
        fm_sampler_next(s, r == rank ? idx : skip, B);
}

static fm_status log_eval(fm_metrics_log *log, int64_t step, const fm_eval_result *r, double wall)
{
    const char *keys[] = {"step",   "eval_loss", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1",
                          "t2i_r5", "t2i_r10",   "zs_acc", "wall_s", "pairs"};
    double vals[] = {(double)step,
                     r->loss,
                     r->retrieval.i2t_r1,
                     r->retrieval.i2t_r5,
                     r->retrieval.i2t_r10,
                     r->retrieval.t2i_r1,
                     r->retrieval.t2i_r5,
                     r->retrieval.t2i_r10,
                     r->zs_acc,
                     wall,
                     (double)r->pairs};
    return fm_metrics_write(log, keys, vals, sizeof vals / sizeof vals[0]);
}

/* The evaluation and the saved model are the weight average's when the run keeps one. */
static fm_status evaluate(fm_clip *model, fm_weight_average *avg, const fm_dataset *test, int64_t n, fm_eval_result *ev)
{
    if (avg)
        FM_TRY(fm_weight_average_swap(avg));
    fm_status s = fm_evaluate(model, test, n, ev);
    if (avg) {
        fm_status u = fm_weight_average_swap(avg);
        if (s == FM_OK)
            s = u;
    }
    return s;
}

static fm_status save_final(fm_clip *model, fm_weight_average *avg, const char *dir)
{
    if (avg)
        FM_TRY(fm_weight_average_swap(avg));
    char path[4096];
    snprintf(path, sizeof path, "%s/adapters.safetensors", dir);
    FM_TRY(fm_clip_save_adapters(model, path));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int lora = fm_clip_get_config(model)->lora_rank > 0 && !fm_clip_get_config(model)->full_finetune;
    if (lora)
        FM_TRY(fm_clip_merge_lora(model));
    fm_status s = fm_clip_save(model, path);
    if (lora) {
        fm_status u = fm_clip_unmerge_lora(model);
        if (s == FM_OK)
            s = u;
    }
    if (avg) {
        fm_status u = fm_weight_average_swap(avg);
        if (s == FM_OK)
            s = u;
    }
    return s;
}

int fm_cli_train(int argc, char **argv)
{
    fm_cli_args args;
    int rc = fm_cli_parse(argc, argv, "config set out metrics device threads resume", &args);
    if (rc)
        return rc;
    if (args.help) {
        usage();
        return 0;
    }
    if (!args.config_path && args.n_sets == 0) {
        fprintf(stderr, "fedmm train: --config FILE is required (try experiments/train-tiny.yaml)\n");
        return 2;
    }
    fm_cli_run run;
    rc = fm_cli_setup(&args, &run);
    if (rc) {
        fm_cli_teardown(&run);
        return rc;
    }
    train_settings ts;
    fm_status s = read_train(&run, &args, &ts);
    if (s == FM_OK)
        s = fm_config_check_unused(run.cfg); /* a typo in a key stops the run before it starts */
    if (s != FM_OK) {
        rc = fm_cli_fail("train", "config", s);
        fm_cli_teardown(&run);
        return rc;
    }

    fm_clip *model = NULL;
    fm_optimizer *opt = NULL;
    fm_weight_average *avg = NULL;
    fm_dataset *train = NULL, *test = NULL;
    fm_sampler sampler = {0};
    fm_batch batch = {0};
    fm_metrics_log log = {0};
    fm_dp *dp = NULL;
    int64_t *skip = NULL;
    char path[4096], ckpt[4096];
    const char *what = "set-up";
    const fm_train_options *o = &ts.opt;
    double t0 = fm_now_seconds();

    s = fm_cli_mkdirs(ts.out_dir);
    if (s == FM_OK && ts.use_dp) { /* data parallelism: join the group first (include/fedmm/dp.h) */
        s = fm_dp_create(&dp, &ts.dp, run.device);
        ts.opt.dp = dp;
        skip = s == FM_OK ? calloc((size_t)o->batch_size, sizeof *skip) : NULL;
        if (s == FM_OK && !skip)
            s = fm_error(FM_ERR_NO_MEMORY, "train: out of memory");
        if (s == FM_OK)
            FM_INFO("train: data-parallel rank %d of %d, global batch %d", fm_dp_rank(dp), fm_dp_world(dp),
                    fm_dp_world(dp) * o->batch_size);
    }
    if (s == FM_OK)
        s = fm_clip_create(&model, &run.model, run.device, run.seed);
    if (s == FM_OK)
        s = fm_optimizer_create(&opt, model);
    if (s == FM_OK && ts.ema_decay > 0.0)
        s = fm_weight_average_create(&avg, model, ts.ema_decay);
    if (s == FM_OK)
        s = fm_cli_open_dataset(&run, FM_SPLIT_TRAIN, &train);
    if (s == FM_OK)
        s = fm_cli_open_dataset(&run, FM_SPLIT_TEST, &test);
    if (s == FM_OK)
        s = fm_sampler_init(&sampler, NULL, fm_dataset_size(train), o->seed);
    if (s == FM_OK)
        s = fm_batch_alloc(&batch, o->batch_size, run.model.image_size, run.model.context_length);
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", ts.out_dir);
    struct stat st;
    if (s == FM_OK && args.resume && stat(ckpt, &st) == 0) {
        what = "resume";
        s = fm_checkpoint_load(model, opt, avg, ckpt);
        /* LoRA dropout draws one set of masks per training forward: continue the sequence */
        if (s == FM_OK)
            s = fm_clip_set_dropout_step(model, (uint64_t)fm_optimizer_step_count(opt));
        /* The data order is a function of the seed: replay the draws of the finished steps. */
        for (int64_t i = 0; s == FM_OK && i < fm_optimizer_step_count(opt); i++)
            next_batch(&sampler, batch.idx, o->batch_size, dp, skip);
        if (s == FM_OK)
            FM_INFO("resuming from %s at step %lld", ckpt, (long long)fm_optimizer_step_count(opt));
    } else if (s == FM_OK && args.resume) {
        FM_INFO("--resume: no checkpoint at %s, starting from step 0", ckpt);
    }
    /* every rank starts from rank 0's parameters (the same seed gives the same ones; this makes sure) */
    if (s == FM_OK && dp)
        s = fm_dp_broadcast(dp, fm_clip_trainable(model), fm_clip_num_trainable(model));
    if (s == FM_OK && dp && avg && fm_optimizer_step_count(opt) == 0) /* the average starts at rank 0's too */
        s = fm_weight_average_restart(avg);
    if (s == FM_OK) {
        what = "metrics";
        if (!ts.metrics_path) {
            snprintf(path, sizeof path, "%s/metrics.jsonl", ts.out_dir);
            ts.metrics_path = path;
        }
        s = fm_metrics_open(&log, ts.metrics_path, args.resume && fm_optimizer_step_count(opt) > 0);
    }
    if (s == FM_OK) {
        char cfgpath[4096];
        snprintf(cfgpath, sizeof cfgpath, "%s/config.yaml", ts.out_dir);
        s = fm_config_dump(run.cfg, cfgpath);
    }
    if (s != FM_OK) {
        rc = fm_cli_fail("train", what, s);
        goto done;
    }
    FM_INFO("train: %s, %zu trainable parameters%s, %lld steps of batch %d on %s (%s), out %s", run.model.name,
            fm_clip_num_trainable(model),
            run.model.full_finetune ? " (full fine-tuning)"
            : run.model.lora_rank   ? " (LoRA)"
                                    : "",
            (long long)o->steps, o->batch_size, fm_device_name(run.device), fm_precision_name(run.model.precision),
            ts.out_dir);

    fm_progress bar;
    int64_t step = fm_optimizer_step_count(opt);
    fm_progress_begin(&bar, stderr, "train", o->steps);
    double loss_sum = 0.0;
    int loss_n = 0;
    fm_eval_result ev = {0};
    int have_eval = 0;
    int stopped = 0;
    while (step < o->steps) {
        if (ts.stop_after && step >= ts.stop_after) {
            stopped = 1;
            break;
        }
        what = "train step";
        next_batch(&sampler, batch.idx, o->batch_size, dp, skip);
        s = fm_dataset_batch(train, batch.idx, o->batch_size, batch.images, batch.tokens, batch.eot, batch.labels);
        float loss = 0.0f, gnorm = 0.0f;
        double lr = fm_lr_at(o, step);
        if (s == FM_OK)
            s = fm_train_step(model, opt, o, &batch, o->batch_size, lr, &loss, &gnorm);
        if (s != FM_OK)
            break;
        step++;
        if (avg && (s = fm_weight_average_update(avg)) != FM_OK)
            break;
        loss_sum += loss;
        loss_n++;
        if (step % ts.log_every == 0 || step == o->steps) {
            const char *keys[] = {"step", "loss", "lr", "grad_norm", "wall_s"};
            double vals[] = {(double)step, loss_sum / loss_n, lr, gnorm, fm_now_seconds() - t0};
            s = fm_metrics_write(&log, keys, vals, 5);
            loss_sum = 0.0;
            loss_n = 0;
        }
        if (s == FM_OK && ((ts.eval_every && step % ts.eval_every == 0) || step == o->steps)) {
            what = "evaluate";
            s = evaluate(model, avg, test, ts.eval_size, &ev);
            if (s == FM_OK)
                s = log_eval(&log, step, &ev, fm_now_seconds() - t0);
            have_eval = 1;
        }
        if (s == FM_OK &&
            ((ts.checkpoint_every && step % ts.checkpoint_every == 0) || step == o->steps || step == ts.stop_after)) {
            what = "checkpoint";
            s = fm_checkpoint_save(model, opt, avg, ckpt);
        }
        if (s != FM_OK)
            break;
        if (have_eval)
            fm_progress_update(&bar, step, "loss %.4f | i2t R@1 %.3f t2i R@1 %.3f", (double)loss, ev.retrieval.i2t_r1,
                               ev.retrieval.t2i_r1);
        else
            fm_progress_update(&bar, step, "loss %.4f", (double)loss);
    }
    fm_progress_end(&bar);
    if (s == FM_OK && stopped) {
        printf("train stopped at step %lld of %lld (train.stop_after); continue with --resume\n", (long long)step,
               (long long)o->steps);
        rc = 0;
        goto done;
    }
    if (s == FM_OK) {
        what = "save";
        s = save_final(model, avg, ts.out_dir);
    }
    if (s != FM_OK) {
        rc = fm_cli_fail("train", what, s);
        goto done;
    }
    if (!have_eval) { /* resumed a finished run: report its metrics again */
        s = evaluate(model, avg, test, ts.eval_size, &ev);
        if (s != FM_OK) {
            rc = fm_cli_fail("train", "evaluate", s);
            goto done;
        }
    }
    printf("train done: %lld steps in %.1f s | test (%lld pairs) i2t R@1 %.3f R@5 %.3f R@10 %.3f | t2i R@1 %.3f "
           "R@5 %.3f R@10 %.3f | zero-shot acc %.3f\n",
           (long long)step, fm_now_seconds() - t0, (long long)ev.pairs, ev.retrieval.i2t_r1, ev.retrieval.i2t_r5,
           ev.retrieval.i2t_r10, ev.retrieval.t2i_r1, ev.retrieval.t2i_r5, ev.retrieval.t2i_r10, ev.zs_acc);
    printf("wrote %s/model.safetensors, %s/adapters.safetensors, metrics %s\n", ts.out_dir, ts.out_dir,
           ts.metrics_path);
    rc = 0;
done:
    fm_metrics_close(&log);
    fm_batch_free(&batch);
    fm_sampler_free(&sampler);
    fm_dataset_destroy(train);
    fm_dataset_destroy(test);
    fm_optimizer_destroy(opt);
    fm_weight_average_destroy(avg);
    fm_clip_destroy(model);
    fm_dp_destroy(dp);
    free(skip);
    fm_cli_teardown(&run);
    return rc;
}
