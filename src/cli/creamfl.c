/* `fedmm sim` for fl.algorithm: creamfl: reads the fl.creamfl.* keys (server model, site groups, public set,
 * λ, τ, κ, representation dtype, ablation switches) and the net.* keys (so that one file serves sim, server and
 * client), runs fm_creamfl_run and saves the server model. The reader is shared with `fedmm server` / `fedmm client`
 * (src/cli/creamfl_net.c). */
#include "cli/creamfl.h"

#include "cli/fl_config.h"

#include <stdio.h>
#include <string.h>

#include "fedmm/creamfl.h"
#include "fedmm/log.h"

typedef struct model_keys {
    fm_clip_config *cfg;
} model_keys;

static fm_status apply_model_key(const char *key, const char *value, void *ctx)
{
    model_keys *mk = ctx;
    if (strcmp(key, "preset") == 0 || strcmp(key, "count") == 0)
        return FM_OK; /* read before the others */
    return fm_clip_config_set(mk->cfg, key, value);
}

/* A model under `prefix`: the run's model (model.*), or prefix.preset when given, then prefix.<field> keys. */
static fm_status read_model(fm_cli_run *run, const char *prefix, fm_clip_config *cfg)
{
    char key[128];
    const char *preset;
    snprintf(key, sizeof key, "%s.preset", prefix);
    FM_TRY(fm_config_str(run->cfg, key, NULL, &preset));
    *cfg = run->model;
    if (preset) {
        FM_TRY(fm_clip_config_preset(preset, cfg));
        /* the built-in dataset has one image size and one context length: keep the run's */
        cfg->image_size = run->model.image_size;
        cfg->context_length = run->model.context_length;
        cfg->vocab_size = run->model.vocab_size;
        cfg->lora_rank = run->model.lora_rank;
        cfg->lora_alpha = run->model.lora_alpha;
        cfg->full_finetune = run->model.full_finetune;
        cfg->train_projections = run->model.train_projections;
    }
    model_keys mk = {cfg};
    FM_TRY(fm_config_each(run->cfg, prefix, apply_model_key, &mk));
    if (cfg->vocab_size == 0)
        cfg->vocab_size = fm_tokenizer_vocab_size(run->tok);
    return FM_OK;
}

/* Keys this command once read under fl.creamfl.* and now shares with parameter FL under fl.*. */
static fm_status refuse_moved_keys(fm_config *c)
{
    static const char *moved[][2] = {{"fl.creamfl.rounds", "fl.rounds"},
                                     {"fl.creamfl.local_steps", "fl.local_steps"},
                                     {"fl.creamfl.sites_per_round", "fl.sites_per_round"}};
    for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++)
        if (fm_config_has(c, moved[i][0]))
            return fm_error(FM_ERR_CONFIG, "%s is now %s (the key every federated run reads)", moved[i][0],
                            moved[i][1]);
    return FM_OK;
}

static fm_status read_creamfl(fm_cli_run *run, const fm_cli_args *args, fm_creamfl_options *o)
{
    fm_config *c = run->cfg;
    *o = fm_creamfl_default_options();
    int64_t v;
    double f;
    int b;
    const char *s;
    FM_TRY(refuse_moved_keys(c));
    FM_TRY(fm_config_int(c, "fl.seed", (int64_t)run->seed, 0, INT64_MAX, &v));
    o->seed = (uint64_t)v;
    FM_TRY(read_model(run, "fl.creamfl.server", &o->server));
    static const char *groups[FM_CREAMFL_KINDS] = {"fl.creamfl.paired", "fl.creamfl.image", "fl.creamfl.text"};
    char key[128];
    for (int k = 0; k < FM_CREAMFL_KINDS; k++)
        FM_TRY(read_model(run, groups[k], &o->site_model[k]));

    /* the sites: CreamFL's groups (fl.creamfl.<kind>.count), or a modality scenario over fl.sites sites
     * (fl.scenario and its keys, as parameter FL reads them) */
    int group_keys = 0;
    for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
        snprintf(key, sizeof key, "%s.count", groups[k]);
        group_keys |= fm_config_has(c, key);
    }
    int N = 0;
    if (fm_config_has(c, "fl.scenario") || fm_config_has(c, "fl.sites")) {
        if (group_keys)
            return fm_error(FM_ERR_CONFIG, "fl.scenario / fl.sites (sites from a modality scenario) and "
                                           "fl.creamfl.<kind>.count (sites in groups) both given: choose one");
        o->layout = FM_CREAMFL_SCENARIO;
        FM_TRY(fm_cli_read_scenario(run, o->seed, &o->scenario));
        o->label_attr = o->scenario.label_attr;
        N = o->scenario.num_sites;
    } else {
        o->layout = FM_CREAMFL_GROUPS;
        for (int k = 0; k < FM_CREAMFL_KINDS; k++) {
            snprintf(key, sizeof key, "%s.count", groups[k]);
            FM_TRY(fm_config_int(c, key, o->num_sites[k], 0, 4096, &v));
            o->num_sites[k] = (int)v;
            N += o->num_sites[k];
        }
        FM_TRY(fm_config_str(c, "fl.label_attr", "kind", &s));
        FM_TRY(fm_attribute_parse(s, &o->label_attr));
    }
    if (N > 0) {
        FM_TRY(
            fm_cli_read_sites_per_round(run, N, N < o->sites_per_round ? N : o->sites_per_round, &o->sites_per_round));
    } else if (fm_config_has(c, "fl.sites_per_round") || fm_config_has(c, "fl.sites_fraction")) {
        return fm_error(FM_ERR_CONFIG, "fl.sites_per_round / fl.sites_fraction given, but there are no sites (the "
                                       "public-only baseline is fl.creamfl.public_only: true)");
    }
    FM_TRY(fm_config_bool(c, "fl.creamfl.public_only", 0, &b));
    o->public_only = b;
    FM_TRY(fm_config_int(c, "fl.rounds", o->rounds, 1, 1000000, &v));
    o->rounds = (int)v;
    FM_TRY(fm_config_int(c, "fl.local_steps", o->local_steps, 0, INT64_C(1) << 40, &o->local_steps));
    FM_TRY(fm_config_int(c, "fl.creamfl.init_local_steps", o->init_local_steps, 0, INT64_C(1) << 40,
                         &o->init_local_steps));
    FM_TRY(fm_config_int(c, "fl.creamfl.public_size", o->public_size, 2, INT64_C(1) << 40, &o->public_size));
    FM_TRY(fm_config_int(c, "fl.creamfl.server_steps", o->server_steps, 0, INT64_C(1) << 40, &o->server_steps));
    FM_TRY(fm_config_int(c, "fl.creamfl.server_init_steps", o->server_init_steps, 0, INT64_C(1) << 40,
                         &o->server_init_steps));
    FM_TRY(fm_config_int(c, "fl.creamfl.distill_steps", o->distill_steps, 0, INT64_C(1) << 40, &o->distill_steps));
    FM_TRY(fm_config_str(c, "fl.creamfl.distill", "separate", &s));
    if (strcmp(s, "joint") == 0)
        o->distill = FM_CREAMFL_DISTILL_JOINT;
    else if (strcmp(s, "separate") == 0)
        o->distill = FM_CREAMFL_DISTILL_SEPARATE;
    else
        return fm_error(FM_ERR_CONFIG,
                        "fl.creamfl.distill '%s': expected joint (CLIP + kappa * MSE) or separate "
                        "(MSE alone, its own AdamW state)",
                        s);
    FM_TRY(fm_config_float(c, "fl.creamfl.lambda", o->lambda, 0.0, 1e6, &f));
    o->lambda = (float)f;
    FM_TRY(fm_config_float(c, "fl.creamfl.tau", o->tau, 1e-6, 1e6, &f));
    o->tau = (float)f;
    FM_TRY(fm_config_float(c, "fl.creamfl.kappa", o->kappa, 0.0, 1e6, &f));
    o->kappa = (float)f;
    FM_TRY(fm_config_str(c, "fl.creamfl.rep_dtype", "fp32", &s));
    if (strcmp(s, "fp32") == 0 || strcmp(s, "f32") == 0)
        o->rep_bf16 = 0;
    else if (strcmp(s, "bf16") == 0)
        o->rep_bf16 = 1;
    else
        return fm_error(FM_ERR_CONFIG, "fl.creamfl.rep_dtype '%s': expected fp32 or bf16", s);
    FM_TRY(fm_config_bool(c, "fl.creamfl.ensemble", o->ensemble, &b));
    o->ensemble = b;
    FM_TRY(fm_config_bool(c, "fl.creamfl.inter", o->inter, &b));
    o->inter = b;
    FM_TRY(fm_config_bool(c, "fl.creamfl.intra", o->intra, &b));
    o->intra = b;
    FM_TRY(fm_config_bool(c, "fl.creamfl.eval_sites", o->eval_sites, &b));
    o->eval_sites = b;
    FM_TRY(fm_config_int(c, "fl.creamfl.tile_rows", 0, 0, INT64_C(1) << 20, &v));
    o->tiles.rows = (size_t)v;
    FM_TRY(fm_config_int(c, "fl.creamfl.tile_cols", 0, 0, INT64_C(1) << 20, &v));
    o->tiles.cols = (size_t)v;

    /* sites' AdamW from train.*, the server's from fl.creamfl.server_* (defaulting to the sites') */
    FM_TRY(fm_cli_read_optimizer(c, &o->local));
    o->server_opt = o->local;
    FM_TRY(fm_config_int(c, "fl.creamfl.server_batch_size", o->local.batch_size, 2, 65536, &v));
    o->server_opt.batch_size = (int)v;
    FM_TRY(fm_config_float(c, "fl.creamfl.server_lr", o->local.lr, 0.0, 10.0, &o->server_opt.lr));

    FM_TRY(fm_config_int(c, "fl.eval_every", o->eval_every, 0, 1000000, &v));
    o->eval_every = (int)v;
    FM_TRY(fm_config_int(c, "fl.eval_size", o->eval_size, 2, INT64_C(1) << 40, &o->eval_size));
    const char *out, *metrics;
    FM_TRY(fm_config_str(c, "out", "runs/creamfl", &out));
    FM_TRY(fm_config_str(c, "metrics", NULL, &metrics));
    o->out_dir = args->out_dir ? args->out_dir : out;
    o->metrics_path = args->metrics_path ? args->metrics_path : metrics;
    o->resume = args->resume;
    return fm_creamfl_validate(o, &run->synth);
}

fm_status fm_cli_read_creamfl(fm_cli_run *run, const fm_cli_args *args, fm_creamfl_options *o, fm_cli_net_options *net)
{
    FM_TRY(read_creamfl(run, args, o));
    FM_TRY(fm_cli_read_net(run, net));
    /* what travels is fl.creamfl.rep_dtype's, in sim as on the wire; net.encoding may only say the same */
    const fm_wire_encoding rep = o->rep_bf16 ? FM_WIRE_BF16 : FM_WIRE_F32;
    if (fm_config_has(run->cfg, "net.encoding") && net->codec.encoding != rep)
        return fm_error(FM_ERR_CONFIG,
                        "net.encoding %s: CreamFL's representations travel as fl.creamfl.rep_dtype says (%s); leave "
                        "net.encoding out or set it to %s",
                        fm_wire_encoding_name(net->codec.encoding), o->rep_bf16 ? "bf16" : "fp32",
                        fm_wire_encoding_name(rep));
    net->codec.encoding = rep;
    return fm_config_check_unused(run->cfg);
}

fm_status fm_cli_read_algorithm(fm_cli_run *run, int *creamfl)
{
    const char *alg;
    *creamfl = 0;
    FM_TRY(fm_config_str(run->cfg, "fl.algorithm", "parameter", &alg));
    if (strcmp(alg, "parameter") != 0 && strcmp(alg, "creamfl") != 0)
        return fm_error(FM_ERR_CONFIG, "fl.algorithm '%s': expected parameter (adapter FL, the default) or creamfl",
                        alg);
    *creamfl = strcmp(alg, "creamfl") == 0;
    return FM_OK;
}

static int run_creamfl(const fm_cli_args *args, fm_cli_run *run)
{
    fm_creamfl_options o;
    fm_cli_net_options net;
    fm_status s = fm_cli_read_creamfl(run, args, &o, &net);
    if (s != FM_OK)
        return fm_cli_fail("sim", "config", s);
    o.progress = 1;
    char path[4096];
    const char *what = "set-up";
    s = fm_cli_mkdirs(o.out_dir);
    if (s == FM_OK) {
        snprintf(path, sizeof path, "%s/config.yaml", o.out_dir);
        s = fm_config_dump(run->cfg, path);
    }
    fm_clip *server = NULL;
    fm_creamfl_result res;
    memset(&res, 0, sizeof res);
    if (s == FM_OK) {
        char sites[160];
        if (o.layout == FM_CREAMFL_SCENARIO)
            snprintf(sites, sizeof sites, "%d sites (scenario %s)", o.scenario.num_sites,
                     fm_scenario_name(o.scenario.scenario));
        else
            snprintf(sites, sizeof sites, "sites paired %d image %d text %d", o.num_sites[0], o.num_sites[1],
                     o.num_sites[2]);
        FM_INFO("sim: creamfl, server %s (width %d/%d, %d/%d layers), %s, %d per round, |P| %lld, %d rounds, "
                "lambda %g tau %g kappa %g, %s, ensemble %s, inter %s, intra %s, out %s",
                o.server.name, o.server.vision_width, o.server.text_width, o.server.vision_layers, o.server.text_layers,
                sites, o.sites_per_round, (long long)o.public_size, o.rounds, (double)o.lambda, (double)o.tau,
                (double)o.kappa, o.rep_bf16 ? "bf16" : "fp32", o.ensemble ? "on" : "off (plain mean)",
                o.inter ? "on" : "off", o.intra ? "on" : "off", o.out_dir);
        what = "run";
        s = fm_creamfl_run(&o, &run->synth, run->tok, run->device, &res, &server);
    }
    if (s == FM_OK) {
        what = "save";
        if (o.server.lora_rank > 0 && !o.server.full_finetune)
            s = fm_clip_merge_lora(server);
        snprintf(path, sizeof path, "%s/model.safetensors", o.out_dir);
        if (s == FM_OK)
            s = fm_clip_save(server, path);
    }
    fm_clip_destroy(server);
    if (s != FM_OK)
        return fm_cli_fail("sim", what, s);
    const fm_eval_result *ev = &res.last_eval;
    printf("sim done (creamfl): %d rounds in %.1f s | server test (%lld pairs) i2t R@1 %.3f R@5 %.3f R@10 %.3f | "
           "t2i R@1 %.3f R@5 %.3f R@10 %.3f | zero-shot acc %.3f | up %.2f MB down %.2f MB | ensemble %.2f s | "
           "sites paired %d image %d text %d\n",
           res.rounds_done, res.wall_s, (long long)ev->pairs, ev->retrieval.i2t_r1, ev->retrieval.i2t_r5,
           ev->retrieval.i2t_r10, ev->retrieval.t2i_r1, ev->retrieval.t2i_r5, ev->retrieval.t2i_r10, ev->zs_acc,
           res.bytes_up / 1e6, res.bytes_down / 1e6, res.ensemble_s, res.sites_of_kind[FM_CREAMFL_PAIRED],
           res.sites_of_kind[FM_CREAMFL_IMAGE], res.sites_of_kind[FM_CREAMFL_TEXT]);
    return 0;
}

int fm_cli_creamfl_maybe(const fm_cli_args *args, fm_cli_run *run, int *rc)
{
    int creamfl = 0;
    fm_status s = fm_cli_read_algorithm(run, &creamfl);
    if (s != FM_OK) {
        *rc = fm_cli_fail("sim", "config", s);
        fm_cli_teardown(run);
        return 1;
    }
    if (!creamfl)
        return 0;
    *rc = run_creamfl(args, run);
    fm_cli_teardown(run);
    return 1;
}
