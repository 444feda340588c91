/* `fedmm sim`: a whole federation in one process (research mode). The run config's fl.* keys choose the
 * strategy, the sites and the modality scenario; train.* keys are each site's local optimizer settings. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/creamfl.h"
#include "cli/fl_config.h"
#include "fedmm/log.h"
#include "fedmm/sim.h"

static void usage(void)
{
    printf("usage: fedmm sim --config FILE [--set key=value ...] [--out DIR] [--metrics FILE] [--resume]\n"
           "                 [--device auto|cpu|cuda] [--threads N]\n"
           "\n"
           "Runs fl.rounds rounds: each samples fl.sites_per_round of fl.sites sites, trains each for\n"
           "fl.local_steps steps on its private split under fl.scenario, and aggregates with fl.strategy\n"
           "(fedavg, fedprox, fedavgm, fedadagrad, fedadam, fedyogi, scaffold, median, trimmed_mean, krum,\n"
           "multi_krum, adaptive_reg, or local for the local-only baseline). Writes DIR/metrics.jsonl,\n"
           "DIR/summary.csv, DIR/model.safetensors (the global model, adapters merged), DIR/adapters.safetensors\n"
           "and a checkpoint every round (DIR/latest); --resume continues a killed run to the same result.\n");
}

int fm_cli_sim(int argc, char **argv)
{
    fm_cli_args args;
    int rc = fm_cli_parse(argc, argv, "config set out metrics device threads resume", &args);
    if (rc)
        return rc;
    if (args.help) {
        usage();
        return 0;
    }
    if (!args.config_path) {
        fprintf(stderr, "fedmm sim: --config FILE is required (try experiments/quickstart.yaml)\n");
        return 2;
    }
    fm_cli_run run;
    rc = fm_cli_setup(&args, &run);
    if (rc) {
        fm_cli_teardown(&run);
        return rc;
    }
    if (fm_cli_creamfl_maybe(&args, &run, &rc)) /* fl.algorithm: creamfl (representation FL) */
        return rc;
    fm_sim_options o;
    /* net.* and fl.min_sites only matter over the network; they are read (and checked) so that one config
     * file serves sim, server and clients alike */
    fm_cli_net_options net;
    fm_status s = fm_cli_read_federation(&run, &args, &o, &net);
    if (s != FM_OK) {
        rc = fm_cli_fail("sim", "config", s);
        fm_cli_teardown(&run);
        return rc;
    }
    o.progress = 1;
    fm_clip *model = NULL;
    fm_sim_result res;
    char path[4096];
    const char *what = "set-up";
    s = fm_cli_mkdirs(o.out_dir);
    if (s == FM_OK) {
        snprintf(path, sizeof path, "%s/config.yaml", o.out_dir);
        s = fm_config_dump(run.cfg, path);
    }
    if (s == FM_OK)
        s = fm_clip_create(&model, &run.model, run.device, run.seed);
    if (s == FM_OK) {
        FM_INFO("sim: %s, %d sites (%s), %d per round, %d rounds x %lld local steps, %s, %zu trainable parameters, "
                "out %s",
                run.model.name, o.scenario.num_sites, fm_scenario_name(o.scenario.scenario), o.sites_per_round,
                o.rounds, (long long)o.local_steps, o.local_only ? "local-only" : fm_strategy_name(o.strategy.kind),
                fm_clip_num_trainable(model), o.out_dir);
        what = "run";
        s = fm_sim_run(model, &run.synth, run.tok, &o, &res);
    }
    if (s == FM_OK && !o.local_only) {
        what = "save";
        snprintf(path, sizeof path, "%s/adapters.safetensors", o.out_dir);
        s = fm_clip_save_adapters(model, path);
        int lora = run.model.lora_rank > 0 && !run.model.full_finetune;
        if (s == FM_OK && lora)
            s = fm_clip_merge_lora(model);
        snprintf(path, sizeof path, "%s/model.safetensors", o.out_dir);
        if (s == FM_OK)
            s = fm_clip_save(model, path);
    }
    if (s != FM_OK) {
        rc = fm_cli_fail("sim", what, s);
    } else {
        const fm_eval_result *ev = &res.last_eval;
        printf("sim done: %d rounds in %.1f s | %s test (%lld pairs) i2t R@1 %.3f R@5 %.3f R@10 %.3f | t2i R@1 %.3f "
               "R@5 %.3f R@10 %.3f | zero-shot acc %.3f | up %.2f MB down %.2f MB\n",
               res.rounds_done, res.wall_s, o.local_only ? "mean local-only" : "global", (long long)ev->pairs,
               ev->retrieval.i2t_r1, ev->retrieval.i2t_r5, ev->retrieval.i2t_r10, ev->retrieval.t2i_r1,
               ev->retrieval.t2i_r5, ev->retrieval.t2i_r10, ev->zs_acc, res.bytes_up / 1e6, res.bytes_down / 1e6);
        rc = 0;
    }
    fm_clip_destroy(model);
    fm_cli_teardown(&run);
    return rc;
}
