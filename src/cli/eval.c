/* `fedmm eval`: retrieval recall@1/5/10 both ways and zero-shot accuracy of a saved model on the test
 * split. The model's configuration comes from --config, else from the config.yaml beside the model. */
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "fedmm/log.h"
#include "fedmm/train.h"

static fm_status ignore_key(const char *key, const char *value, void *ctx)
{
    (void)key;
    (void)value;
    (void)ctx;
    return FM_OK;
}

int fm_cli_eval(int argc, char **argv)
{
    fm_cli_args args;
    int rc = fm_cli_parse(argc, argv, "model config set device threads metrics", &args);
    if (rc)
        return rc;
    if (args.help) {
        printf("usage: fedmm eval --model FILE.safetensors [--config FILE] [--set key=value ...] [--device D]\n"
               "                  [--metrics FILE]\n"
               "Evaluates on eval.size pairs (default 1000) of the test split: i2t/t2i R@1/5/10, zero-shot accuracy.\n"
               "Without --config, the config.yaml written by 'fedmm train' beside the model is used.\n");
        return 0;
    }
    if (!args.model_path) {
        fprintf(stderr, "fedmm eval: --model FILE is required\n");
        return 2;
    }
    char cfgpath[4096];
    if (!args.config_path) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", args.model_path);
        snprintf(cfgpath, sizeof cfgpath, "%s/config.yaml", dirname(tmp));
        struct stat st;
        if (stat(cfgpath, &st) != 0) {
            fprintf(stderr, "fedmm eval: no --config given and no %s beside the model\n", cfgpath);
            return 2;
        }
        args.config_path = cfgpath;
    }
    fm_cli_run run;
    rc = fm_cli_setup(&args, &run);
    if (rc) {
        fm_cli_teardown(&run);
        return rc;
    }
    /* The saved model holds merged weights: evaluate it as a plain model. Training keys are not ours. */
    run.model.lora_rank = 0;
    run.model.full_finetune = 0;
    int64_t n;
    const char *ignored;
    fm_status s = fm_config_int(run.cfg, "eval.size", 1000, 2, INT64_C(1) << 40, &n);
    if (s == FM_OK && !run.train_file && n > run.synth.split_size[FM_SPLIT_TEST])
        s = fm_error(FM_ERR_CONFIG, "eval.size %lld exceeds data.test_size %lld", (long long)n,
                     (long long)run.synth.split_size[FM_SPLIT_TEST]);
    if (s == FM_OK)
        s = fm_config_each(run.cfg, "train", ignore_key, NULL);
    if (s == FM_OK)
        s = fm_config_str(run.cfg, "out", NULL, &ignored);
    if (s == FM_OK)
        s = fm_config_str(run.cfg, "metrics", NULL, &ignored);
    if (s == FM_OK)
        s = fm_config_check_unused(run.cfg);
    if (s != FM_OK) {
        rc = fm_cli_fail("eval", "config", s);
        fm_cli_teardown(&run);
        return rc;
    }
    fm_clip *model = NULL;
    fm_dataset *test = NULL;
    fm_eval_result ev;
    const char *what = "model";
    s = fm_clip_create(&model, &run.model, run.device, run.seed);
    if (s == FM_OK)
        s = fm_clip_load(model, args.model_path);
    if (s == FM_OK) {
        what = "evaluate";
        s = fm_cli_open_dataset(&run, FM_SPLIT_TEST, &test);
    }
    if (s == FM_OK)
        s = fm_evaluate(model, test, n, &ev);
    if (s != FM_OK) {
        rc = fm_cli_fail("eval", what, s);
    } else {
        printf("{\"pairs\": %lld, \"loss\": %.6f, \"i2t_r1\": %.4f, \"i2t_r5\": %.4f, \"i2t_r10\": %.4f, "
               "\"t2i_r1\": %.4f, \"t2i_r5\": %.4f, \"t2i_r10\": %.4f, \"zs_acc\": %.4f",
               (long long)ev.pairs, ev.loss, ev.retrieval.i2t_r1, ev.retrieval.i2t_r5, ev.retrieval.i2t_r10,
               ev.retrieval.t2i_r1, ev.retrieval.t2i_r5, ev.retrieval.t2i_r10, ev.zs_acc);
        for (int a = 0; a < FM_ATTR_COUNT; a++)
            printf(", \"zs_acc_%s\": %.4f", fm_attribute_name((fm_attribute)a), ev.zs_acc_attr[a]);
        printf("}\n");
        rc = 0;
    }
    fm_dataset_destroy(test);
    fm_clip_destroy(model);
    fm_cli_teardown(&run);
    return rc;
}
