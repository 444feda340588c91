/* Reading the federation's configuration keys (see fl_config.h). */
#include "cli/fl_config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/log.h"
#include "net/net.h" /* FM_NET_MAX_CALLS; no gRPC in it */

fm_status fm_cli_read_fl(fm_cli_run *run, const fm_cli_args *args, fm_sim_options *o)
{
    fm_config *c = run->cfg;
    *o = fm_sim_default_options();
    int64_t v;
    const char *s;
    FM_TRY(fm_config_int(c, "fl.rounds", o->rounds, 1, 1000000, &v));
    o->rounds = (int)v;
    FM_TRY(fm_config_int(c, "fl.local_steps", o->local_steps, 1, INT64_C(1) << 40, &o->local_steps));
    FM_TRY(fm_config_int(c, "fl.seed", (int64_t)run->seed, 0, INT64_MAX, &v));
    o->seed = (uint64_t)v;

    /* the federation: a FedMLLM setting by name, or a scenario with its parameters */
    fm_scenario_config *sc = &o->scenario;
    FM_TRY(fm_cli_read_scenario(run, o->seed, sc));
    o->label_attr = sc->label_attr;
    FM_TRY(fm_cli_read_sites_per_round(run, sc->num_sites, sc->num_sites < 5 ? sc->num_sites : 5, &o->sites_per_round));
    /* over-selection: a round tasks m + ceil(x·m) sites (at most fl.sites) and keeps m updates (sim.h) */
    double over = 0.0;
    FM_TRY(fm_config_float(c, "fl.over_select", 0.0, 0.0, 100.0, &over));
    const double extra = ceil(over * o->sites_per_round - 1e-9), room = sc->num_sites - o->sites_per_round;
    o->over_select_sites = (int)(extra <= 0.0 ? 0.0 : extra < room ? extra : room);
    /* robustness experiments: sites 0 .. malicious_sites-1 send −attack_scale × their update */
    FM_TRY(fm_config_int(c, "fl.malicious_sites", 0, 0, sc->num_sites, &v));
    o->malicious_sites = (int)v;
    FM_TRY(fm_config_float(c, "fl.attack_scale", o->attack_scale, 0.0, 1e6, &o->attack_scale));

    /* the server rule */
    FM_TRY(fm_config_str(c, "fl.strategy", "fedavg", &s));
    fm_strategy_kind kind = FM_STRATEGY_FEDAVG;
    if (strcmp(s, "local") == 0)
        o->local_only = 1;
    else
        FM_TRY(fm_strategy_parse(s, &kind));
    fm_strategy_config *st = &o->strategy;
    *st = fm_strategy_default_config(kind);
    FM_TRY(fm_config_float(c, "fl.server_lr", st->server_lr, 0.0, 1e6, &st->server_lr));
    FM_TRY(fm_config_float(c, "fl.beta1", st->beta1, 0.0, 1.0, &st->beta1));
    FM_TRY(fm_config_float(c, "fl.beta2", st->beta2, 0.0, 1.0, &st->beta2));
    FM_TRY(fm_config_float(c, "fl.tau", st->tau, 0.0, 1e6, &st->tau));
    FM_TRY(fm_config_float(c, "fl.server_momentum", st->server_momentum, 0.0, 1.0, &st->server_momentum));
    FM_TRY(fm_config_float(c, "fl.prox_mu", st->prox_mu, 0.0, 1e6, &st->prox_mu));
    FM_TRY(fm_config_float(c, "fl.adaptive_mu_w", st->adaptive_mu_w, 0.0, 1e6, &st->adaptive_mu_w));
    FM_TRY(fm_config_int(c, "fl.adaptive_skip_layers", st->adaptive_skip_layers, 0, 1000, &v));
    st->adaptive_skip_layers = (int)v;
    FM_TRY(fm_config_float(c, "fl.trim_ratio", st->trim_ratio, 0.0, 0.5, &st->trim_ratio));
    FM_TRY(fm_config_int(c, "fl.krum_byzantine", st->krum_byzantine, 0, 100000, &v));
    st->krum_byzantine = (int)v;
    FM_TRY(fm_config_int(c, "fl.multi_krum_m", st->multi_krum_m, 0, 100000, &v));
    st->multi_krum_m = (int)v;
    FM_TRY(fm_config_float(c, "fl.clip_norm", st->clip_norm, 0.0, 1e30, &st->clip_norm));
    FM_TRY(fm_strategy_config_validate(st));

    /* each site's local optimizer, and the model's arithmetic */
    FM_TRY(fm_cli_read_optimizer(c, &o->local));
    FM_TRY(fm_cli_read_precision(run));

    FM_TRY(fm_config_int(c, "fl.eval_every", o->eval_every, 0, 1000000, &v));
    o->eval_every = (int)v;
    FM_TRY(fm_config_int(c, "fl.eval_size", o->eval_size, 2, INT64_C(1) << 40, &o->eval_size));
    FM_TRY(fm_config_float(c, "fl.ema_decay", 0.0, 0.0, 1.0, &o->ema_decay));
    if (o->ema_decay >= 1.0)
        return fm_error(FM_ERR_CONFIG, "fl.ema_decay %g: expected 0 (off) or a decay in (0, 1)", o->ema_decay);
    if (o->eval_size > run->synth.split_size[FM_SPLIT_TEST])
        return fm_error(FM_ERR_CONFIG, "fl.eval_size %lld exceeds data.test_size %lld", (long long)o->eval_size,
                        (long long)run->synth.split_size[FM_SPLIT_TEST]);
    const char *out, *metrics;
    FM_TRY(fm_config_str(c, "out", "runs/sim", &out));
    FM_TRY(fm_config_str(c, "metrics", NULL, &metrics));
    o->out_dir = args->out_dir ? args->out_dir : out;
    o->metrics_path = args->metrics_path ? args->metrics_path : metrics;
    o->resume = args->resume;
    return FM_OK;
}

fm_status fm_cli_read_scenario(fm_cli_run *run, uint64_t seed, fm_scenario_config *sc)
{
    fm_config *c = run->cfg;
    int64_t v;
    const char *s;
    *sc = fm_scenario_default_config();
    FM_TRY(fm_config_int(c, "fl.sites", sc->num_sites, 1, 100000, &v));
    sc->num_sites = (int)v;
    sc->seed = seed;
    FM_TRY(fm_config_str(c, "fl.label_attr", "kind", &s));
    FM_TRY(fm_attribute_parse(s, &sc->label_attr));
    FM_TRY(fm_config_str(c, "fl.scenario", "aligned", &s));
    if (strchr(s, '-')) {
        FM_TRY(fm_scenario_setting(s, sc));
    } else {
        FM_TRY(fm_scenario_parse(s, &sc->scenario));
    }
    FM_TRY(fm_config_float(c, "fl.alpha", sc->alpha, 1e-6, 1e6, &sc->alpha));
    FM_TRY(fm_config_float(c, "fl.missing_rate", sc->missing_rate, 0.0, 1.0, &sc->missing_rate));
    FM_TRY(fm_config_int(c, "fl.cross_k", sc->cross_k, 0, sc->num_sites, &v));
    sc->cross_k = (int)v;
    FM_TRY(fm_config_float(c, "fl.hybrid_q", sc->hybrid_q, 0.0, 1.0, &sc->hybrid_q));
    return fm_config_int(c, "fl.min_site_size", sc->min_site_size, 1, INT64_C(1) << 40, &sc->min_site_size);
}

fm_status fm_cli_read_sites_per_round(fm_cli_run *run, int num_sites, int dflt, int *out)
{
    fm_config *c = run->cfg;
    int64_t v;
    /* a count, or a fraction of the sites (not both) */
    double frac = 0.0;
    FM_TRY(fm_config_float(c, "fl.sites_fraction", 0.0, 0.0, 1.0, &frac));
    if (frac > 0.0 && fm_config_has(c, "fl.sites_per_round"))
        return fm_error(FM_ERR_CONFIG, "fl.sites_per_round and fl.sites_fraction both given: choose one");
    FM_TRY(fm_config_int(c, "fl.sites_per_round", dflt, 1, num_sites, &v));
    *out = (int)v;
    if (frac > 0.0) {
        int m = (int)(frac * num_sites + 0.5);
        *out = m < 1 ? 1 : m;
    }
    return FM_OK;
}

/* An optional path key: absent or "" is NULL. */
static fm_status opt_str(fm_config *c, const char *key, const char **out)
{
    FM_TRY(fm_config_str(c, key, NULL, out));
    if (*out && !**out)
        *out = NULL;
    return FM_OK;
}

fm_status fm_cli_read_federation(fm_cli_run *run, const fm_cli_args *args, fm_sim_options *o, fm_cli_net_options *net)
{
    memset(net, 0, sizeof *net);
    FM_TRY(fm_cli_read_fl(run, args, o));
    FM_TRY(fm_cli_read_net(run, net));
    o->wire = net->codec; /* sim passes its updates and broadcasts through the network's encoding */
    return fm_config_check_unused(run->cfg);
}

fm_status fm_cli_read_net(fm_cli_run *run, fm_cli_net_options *o)
{
    fm_config *c = run->cfg;
    memset(o, 0, sizeof *o);
    FM_TRY(opt_str(c, "net.tls_ca", &o->tls_ca));
    FM_TRY(opt_str(c, "net.tls_cert", &o->tls_cert));
    FM_TRY(opt_str(c, "net.tls_key", &o->tls_key));
    FM_TRY(opt_str(c, "net.tls_server_name", &o->tls_server_name));
    FM_TRY(fm_config_bool(c, "net.mtls", 0, &o->mtls));
    FM_TRY(fm_config_float(c, "net.round_timeout_s", 0.0, 0.0, 1e9, &o->round_timeout_s));
    int64_t v;
    FM_TRY(fm_config_int(c, "fl.min_sites", 1, 1, 100000, &v));
    o->min_sites = (int)v;
    FM_TRY(fm_config_float(c, "net.park_memory_mb", 256.0, 0.0, 1e9, &o->park_memory_mb));
    FM_TRY(fm_config_float(c, "net.reconnect_s", 120.0, 0.1, 1e9, &o->reconnect_s));
    FM_TRY(fm_config_float(c, "net.call_timeout_s", 60.0, 0.1, 1e9, &o->call_timeout_s));
    FM_TRY(fm_config_int(c, "net.max_calls", FM_NET_MAX_CALLS, 1, 1000000, &v));
    o->max_calls = (int)v;
    FM_TRY(fm_config_float(c, "net.release_grace_s", 10.0, 0.1, 1e9, &o->release_grace_s));
    /* tensor payloads (docs/protocol.md): the encoding of updates and broadcasts, and their compression */
    const char *enc, *comp;
    FM_TRY(fm_config_str(c, "net.encoding", "f32", &enc));
    FM_TRY(fm_wire_encoding_parse(enc, &o->codec.encoding));
    FM_TRY(fm_config_str(c, "net.compress", "none", &comp));
    FM_TRY(fm_wire_compression_parse(comp, &o->codec.compression));
    FM_TRY(fm_config_int(c, "net.zstd_level", 3, 1, 19, &v));
    o->codec.zstd_level = (int)v;
    return FM_OK;
}

const char *fm_cli_take_flag(int *argc, char **argv, const char *name, int *bad)
{
    const char *value = NULL;
    for (int i = 1; i < *argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || strcmp(argv[i] + 2, name) != 0)
            continue;
        if (i + 1 >= *argc) {
            *bad = 1;
            return NULL;
        }
        value = argv[i + 1];
        for (int j = i; j + 2 < *argc; j++)
            argv[j] = argv[j + 2];
        *argc -= 2;
        i--;
    }
    return value;
}

const char *fm_cli_net_secret(void)
{
    const char *s = getenv("FEDMM_SECRET");
    if (s && *s)
        return s;
    FM_WARN("FEDMM_SECRET is not set: using the built-in development secret (anyone can derive the site tokens)");
    return "fedmm-insecure-development-secret";
}
