/* `fedmm bench`: runs a benchmark suite (benchmarks/scenarios/<suite>.yaml) as a matrix of cells — setting x
 * method x seed, each cell one `fedmm sim` (or `fedmm train`) child process — N at a time, skipping cells
 * finished by an earlier run; then aggregates mean ± std over seeds into results.csv / results.md, draws the
 * PNG plots with benchmarks/plot_bench.py and writes index.md linking everything. docs/benchmarks.md. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "fedmm/config.h"
#include "fedmm/log.h"
#include "fedmm/modality.h"
#include "fedmm/strategy.h"

extern char **environ;

#define BENCH_PATH 4096

static void usage(void)
{
    printf("usage: fedmm bench --suite NAME [--quick] [--out DIR] [--jobs N] [--threads N] [--device D]\n"
           "                   [--gpus N] [--set key=value ...] [--no-plots]\n"
           "\n"
           "Runs the suite benchmarks/scenarios/NAME.yaml (or the YAML file NAME names): every setting x method\n"
           "x seed cell is one `fedmm sim` (`fedmm train` for the centralized baseline) child process writing\n"
           "DIR/cells/<setting>/<method>/seed-<s>/. Cells whose `done` marker exists with the same configuration\n"
           "are skipped, so an interrupted bench continues where it stopped. --quick runs the suite's quick\n"
           "subset (tiny model, few rounds, one seed). --jobs cells run at once (default: cores / 2, at least 1),\n"
           "each with --threads CPU threads (default: cores / jobs); --gpus N spreads cells over N GPUs.\n"
           "--set applies to every cell. Writes DIR/results.csv and DIR/results.md (mean ± std over seeds of\n"
           "R@1/5/10 both directions, zero-shot accuracy, wall time, bytes communicated), DIR/cells.csv,\n"
           "DIR/curves.csv, DIR/plots/*.png (python3 + matplotlib, benchmarks/plot_bench.py) and DIR/index.md.\n"
           "Default DIR: runs/bench/NAME (runs/bench/NAME-quick with --quick).\n");
}

/* ---- small helpers ------------------------------------------------------------------------------ */

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* An ordered key -> value list; setting a key again replaces its value in place. */
typedef struct kv {
    char *key, *value;
} kv;

typedef struct kvlist {
    kv *items;
    size_t n, cap;
} kvlist;

static fm_status kv_set(kvlist *l, const char *key, const char *value)
{
    char *v = dupstr(value);
    if (!v)
        return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->items[i].key, key) == 0) {
            free(l->items[i].value);
            l->items[i].value = v;
            return FM_OK;
        }
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 32;
        kv *items = realloc(l->items, cap * sizeof *items);
        if (!items) {
            free(v);
            return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
        }
        l->items = items;
        l->cap = cap;
    }
    char *k = dupstr(key);
    if (!k) {
        free(v);
        return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    }
    l->items[l->n].key = k;
    l->items[l->n].value = v;
    l->n++;
    return FM_OK;
}

static const char *kv_get(const kvlist *l, const char *key)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].key, key) == 0)
            return l->items[i].value;
    return NULL;
}

static void kv_free(kvlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

static fm_status kv_append_all(kvlist *dst, const kvlist *src)
{
    for (size_t i = 0; i < src->n; i++)
        FM_TRY(kv_set(dst, src->items[i].key, src->items[i].value));
    return FM_OK;
}

static fm_status collect_kv(const char *key, const char *value, void *ctx) { return kv_set(ctx, key, value); }

/* A list of strings. */
typedef struct strlist {
    char **s;
    size_t n;
} strlist;

static void strlist_free(strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static int strlist_find(const strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->s[i], s) == 0)
            return (int)i;
    return -1;
}

static fm_status strlist_push(strlist *l, const char *s)
{
    char **p = realloc(l->s, (l->n + 1) * sizeof *p);
    if (!p)
        return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    l->s = p;
    if (!(l->s[l->n] = dupstr(s)))
        return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    l->n++;
    return FM_OK;
}

/* Reads the sequence `key` (flattened as key.0, key.1, ...) or a single scalar `key`. Rejects duplicates. */
static fm_status read_list(fm_config *c, const char *key, strlist *out, int *present)
{
    char k[256];
    const char *v;
    *present = 0;
    if (fm_config_has(c, key)) {
        FM_TRY(fm_config_str(c, key, NULL, &v));
        *present = 1;
        return strlist_push(out, v);
    }
    /* a sequence also has "key.count" */
    snprintf(k, sizeof k, "%s.count", key);
    int64_t count = 0;
    FM_TRY(fm_config_int(c, k, 0, 0, INT64_C(1) << 20, &count));
    for (size_t i = 0; i < (size_t)count; i++) {
        snprintf(k, sizeof k, "%s.%zu", key, i);
        FM_TRY(fm_config_str(c, k, NULL, &v));
        if (strlist_find(out, v) >= 0)
            return fm_error(FM_ERR_CONFIG, "%s lists '%s' twice", key, v);
        FM_TRY(strlist_push(out, v));
        *present = 1;
    }
    return FM_OK;
}

static fm_status write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return fm_error(FM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        return fm_error(FM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return FM_OK;
}

/* The whole file as a NUL-terminated string (NULL if unreadable). */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n + 1 < cap)
            break;
        char *b = realloc(buf, cap * 2);
        if (!b) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = b;
        cap *= 2;
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The number after `"key":` in a one-line JSON object; NaN when absent or null. */
static double json_num(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p)
        return NAN;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    char *end = NULL;
    double v = strtod(p, &end);
    return end == p ? NAN : v;
}

static int64_t parse_int(const char *s, int64_t dflt, int *ok)
{
    if (!s)
        return dflt;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0') {
        *ok = 0;
        return dflt;
    }
    return (int64_t)v;
}

/* ---- the suite ---------------------------------------------------------------------------------- */

typedef struct method_def {
    char *name;
    char *label;
    int train;       /* command: train (the centralized baseline) */
    int per_setting; /* 0: one run per seed, reported beside every setting (pooled data) */
    int optional;    /* may be missing from this build: a rejected configuration is a visible skip */
    kvlist set;
} method_def;

typedef struct suite {
    char name[256];
    char path[BENCH_PATH];
    char description[512];
    kvlist base; /* config file, base mapping, set (and quick.set) */
    strlist settings, methods, seeds;
    method_def *defs;
    size_t n_defs;
} suite;

static void suite_free(suite *s)
{
    kv_free(&s->base);
    strlist_free(&s->settings);
    strlist_free(&s->methods);
    strlist_free(&s->seeds);
    for (size_t i = 0; i < s->n_defs; i++) {
        free(s->defs[i].name);
        free(s->defs[i].label);
        kv_free(&s->defs[i].set);
    }
    free(s->defs);
    memset(s, 0, sizeof *s);
}

static method_def *find_def(suite *s, const char *name)
{
    for (size_t i = 0; i < s->n_defs; i++)
        if (strcmp(s->defs[i].name, name) == 0)
            return &s->defs[i];
    return NULL;
}

static fm_status parse_bool(const char *key, const char *v, int *out)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "1") == 0)
        *out = 1;
    else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 || strcmp(v, "0") == 0)
        *out = 0;
    else
        return fm_error(FM_ERR_CONFIG, "%s '%s': expected true or false", key, v);
    return FM_OK;
}

/* One key under `method.`: "<name>.<field>" with field label, command, per_setting, optional or set.<key>. */
static fm_status visit_method(const char *key, const char *value, void *ctx)
{
    suite *s = ctx;
    const char *dot = strchr(key, '.');
    if (!dot)
        return fm_error(FM_ERR_CONFIG, "method.%s: expected a mapping (label, command, per_setting, optional, set)",
                        key);
    char name[128];
    size_t nlen = (size_t)(dot - key);
    if (nlen == 0 || nlen >= sizeof name)
        return fm_error(FM_ERR_CONFIG, "method.%s: bad method name", key);
    memcpy(name, key, nlen);
    name[nlen] = '\0';
    method_def *m = find_def(s, name);
    if (!m) {
        method_def *d = realloc(s->defs, (s->n_defs + 1) * sizeof *d);
        if (!d)
            return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
        s->defs = d;
        m = &s->defs[s->n_defs++];
        memset(m, 0, sizeof *m);
        m->per_setting = 1;
        if (!(m->name = dupstr(name)) || !(m->label = dupstr(name)))
            return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    }
    const char *field = dot + 1;
    if (strcmp(field, "label") == 0) {
        char *l = dupstr(value);
        if (!l)
            return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
        free(m->label);
        m->label = l;
    } else if (strcmp(field, "command") == 0) {
        if (strcmp(value, "sim") != 0 && strcmp(value, "train") != 0)
            return fm_error(FM_ERR_CONFIG, "method.%s.command '%s': expected sim or train", name, value);
        m->train = strcmp(value, "train") == 0;
    } else if (strcmp(field, "per_setting") == 0) {
        FM_TRY(parse_bool(key, value, &m->per_setting));
    } else if (strcmp(field, "optional") == 0) {
        FM_TRY(parse_bool(key, value, &m->optional));
    } else if (strncmp(field, "set.", 4) == 0) {
        const char *k = field + 4;
        if (strcmp(k, "fl.strategy") == 0 && strcmp(value, "local") != 0) {
            fm_strategy_kind kind;
            FM_TRY(fm_strategy_parse(value, &kind));
        }
        FM_TRY(kv_set(&m->set, k, value));
    } else {
        return fm_error(FM_ERR_CONFIG,
                        "method.%s: unknown key '%s' (a method takes label, command, per_setting, optional, set)", name,
                        field);
    }
    return FM_OK;
}

static fm_status check_methods(suite *s, const strlist *names, const char *what)
{
    for (size_t i = 0; i < names->n; i++) {
        if (find_def(s, names->s[i]))
            continue;
        char defined[1024] = "";
        for (size_t j = 0; j < s->n_defs; j++) {
            size_t used = strlen(defined);
            snprintf(defined + used, sizeof defined - used, "%s%s", j ? ", " : "", s->defs[j].name);
        }
        return fm_error(FM_ERR_CONFIG, "%s: unknown method '%s' (defined under method: %s)", what, names->s[i],
                        s->n_defs ? defined : "none");
    }
    return FM_OK;
}

static fm_status check_settings(const strlist *names, const char *what)
{
    for (size_t i = 0; i < names->n; i++) {
        fm_scenario_config sc = fm_scenario_default_config();
        if (fm_scenario_setting(names->s[i], &sc) != FM_OK) {
            size_t count = 0;
            const char *const *valid = fm_scenario_setting_names(&count);
            char list[512] = "";
            for (size_t j = 0; j < count; j++) {
                size_t used = strlen(list);
                snprintf(list + used, sizeof list - used, "%s%s", j ? ", " : "", valid[j]);
            }
            return fm_error(FM_ERR_CONFIG, "%s: unknown setting '%s' (FedMLLM's settings: %s)", what, names->s[i],
                            list);
        }
    }
    return FM_OK;
}

static fm_status check_seeds(const strlist *seeds, const char *what)
{
    for (size_t i = 0; i < seeds->n; i++) {
        int ok = 1;
        int64_t v = parse_int(seeds->s[i], -1, &ok);
        if (!ok || v < 0)
            return fm_error(FM_ERR_CONFIG, "%s: seed '%s' is not a non-negative integer", what, seeds->s[i]);
    }
    return FM_OK;
}

/* Reads and checks the suite file; with quick, its quick.* subset replaces the lists and quick.set applies. */
static fm_status suite_load(suite *s, const char *path, int quick, char *const *sets, int n_sets)
{
    fm_config *c = NULL;
    FM_TRY(fm_config_create(&c));
    fm_status st = fm_config_load_yaml(c, path);
    const char *v = NULL;
    strlist q_settings = {0}, q_methods = {0}, q_seeds = {0};
    kvlist q_set = {0};
    int has, q_has_settings = 0, q_has_methods = 0, q_has_seeds = 0;
    if (st == FM_OK)
        st = fm_config_str(c, "description", "", &v);
    if (st == FM_OK)
        snprintf(s->description, sizeof s->description, "%s", v);
    if (st == FM_OK)
        st = fm_config_str(c, "config", NULL, &v);
    if (st == FM_OK && v) { /* a run configuration file every cell starts from */
        fm_config *base = NULL;
        st = fm_config_create(&base);
        if (st == FM_OK)
            st = fm_config_load_yaml(base, v);
        if (st == FM_OK)
            st = fm_config_each(base, "", collect_kv, &s->base);
        fm_config_destroy(base);
    }
    if (st == FM_OK)
        st = fm_config_each(c, "base", collect_kv, &s->base);
    if (st == FM_OK)
        st = fm_config_each(c, "set", collect_kv, &s->base);
    if (st == FM_OK)
        st = read_list(c, "settings", &s->settings, &has);
    if (st == FM_OK)
        st = read_list(c, "methods", &s->methods, &has);
    if (st == FM_OK)
        st = read_list(c, "seeds", &s->seeds, &has);
    if (st == FM_OK)
        st = fm_config_each(c, "method", visit_method, s);
    if (st == FM_OK)
        st = read_list(c, "quick.settings", &q_settings, &q_has_settings);
    if (st == FM_OK)
        st = read_list(c, "quick.methods", &q_methods, &q_has_methods);
    if (st == FM_OK)
        st = read_list(c, "quick.seeds", &q_seeds, &q_has_seeds);
    if (st == FM_OK)
        st = fm_config_each(c, "quick.set", collect_kv, &q_set);
    if (st == FM_OK)
        st = fm_config_check_unused(c);
    /* every list is checked, the quick one too, so a typo fails in CI before the full run meets it */
    if (st == FM_OK)
        st = check_settings(&s->settings, "settings");
    if (st == FM_OK)
        st = check_settings(&q_settings, "quick.settings");
    if (st == FM_OK)
        st = check_methods(s, &s->methods, "methods");
    if (st == FM_OK)
        st = check_methods(s, &q_methods, "quick.methods");
    if (st == FM_OK)
        st = check_seeds(&s->seeds, "seeds");
    if (st == FM_OK)
        st = check_seeds(&q_seeds, "quick.seeds");
    if (st == FM_OK && quick) {
        if (q_has_settings) {
            strlist_free(&s->settings);
            s->settings = q_settings;
            memset(&q_settings, 0, sizeof q_settings);
        }
        if (q_has_methods) {
            strlist_free(&s->methods);
            s->methods = q_methods;
            memset(&q_methods, 0, sizeof q_methods);
        }
        if (q_has_seeds) {
            strlist_free(&s->seeds);
            s->seeds = q_seeds;
            memset(&q_seeds, 0, sizeof q_seeds);
        }
        st = kv_append_all(&s->base, &q_set);
    }
    for (int i = 0; st == FM_OK && i < n_sets; i++) {
        const char *eq = strchr(sets[i], '=');
        if (!eq || eq == sets[i]) {
            st = fm_error(FM_ERR_CONFIG, "--set '%s': expected key=value", sets[i]);
            break;
        }
        char key[256];
        size_t kl = (size_t)(eq - sets[i]);
        if (kl >= sizeof key) {
            st = fm_error(FM_ERR_CONFIG, "--set '%s': key too long", sets[i]);
            break;
        }
        memcpy(key, sets[i], kl);
        key[kl] = '\0';
        st = kv_set(&s->base, key, eq + 1);
    }
    if (st == FM_OK && (s->settings.n == 0 || s->methods.n == 0 || s->seeds.n == 0))
        st = fm_error(FM_ERR_CONFIG, "%s: settings, methods and seeds must each list at least one entry%s", path,
                      quick ? " (after the quick subset)" : "");
    strlist_free(&q_settings);
    strlist_free(&q_methods);
    strlist_free(&q_seeds);
    kv_free(&q_set);
    fm_config_destroy(c);
    return st;
}

/* ---- cells -------------------------------------------------------------------------------------- */

typedef enum cell_state { CELL_PENDING, CELL_RUNNING, CELL_OK, CELL_CACHED, CELL_SKIPPED, CELL_FAILED } cell_state;

typedef struct cell {
    const char *setting; /* "pooled" for methods that are not per setting */
    method_def *method;
    const char *seed;
    char dir[BENCH_PATH];
    char *yaml; /* the cell's effective configuration */
    int64_t steps_per_round;
    cell_state state;
    char reason[320];
    double started;
    pid_t pid;
    /* results: the last evaluation */
    double m[7]; /* i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, zs_acc */
    double wall_s, bytes_up, bytes_down;
} cell;

static const char *metric_keys[7] = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "zs_acc"};

static fm_status yaml_quote(char **buf, size_t *len, size_t *cap, const char *key, const char *value)
{
    size_t need = strlen(key) + 2 * strlen(value) + 8;
    if (*len + need >= *cap) {
        size_t c = (*cap + need) * 2;
        char *b = realloc(*buf, c);
        if (!b)
            return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
        *buf = b;
        *cap = c;
    }
    char *p = *buf + *len;
    p += sprintf(p, "%s: \"", key);
    for (const char *q = value; *q; q++) {
        if (*q == '"' || *q == '\\')
            *p++ = '\\';
        *p++ = *q;
    }
    p += sprintf(p, "\"\n");
    *len = (size_t)(p - *buf);
    return FM_OK;
}

/* The effective configuration of one cell: base, the method's keys, then the setting and the seed. A train
 * cell gets the federated cell's sample budget (rounds x sites_per_round x local_steps steps of the same batch)
 * and loses the fl.* keys, which `fedmm train` would reject. */
static fm_status cell_config(const suite *s, cell *c)
{
    kvlist l = {0};
    fm_status st = kv_append_all(&l, &s->base);
    if (st == FM_OK)
        st = kv_append_all(&l, &c->method->set);
    int ok = 1;
    int64_t sites = parse_int(kv_get(&l, "fl.sites"), 10, &ok);
    int64_t rounds = parse_int(kv_get(&l, "fl.rounds"), 10, &ok);
    int64_t spr = parse_int(kv_get(&l, "fl.sites_per_round"), sites < 5 ? sites : 5, &ok);
    int64_t local = parse_int(kv_get(&l, "fl.local_steps"), 10, &ok);
    int64_t every = parse_int(kv_get(&l, "fl.eval_every"), 1, &ok);
    const char *eval_size = kv_get(&l, "fl.eval_size");
    if (st == FM_OK && (!ok || rounds < 1 || spr < 1 || local < 1 || every < 0 || rounds > 1000000 || spr > 100000 ||
                        local > 1000000 || every > 1000000))
        st = fm_error(FM_ERR_CONFIG,
                      "%s: fl.rounds, fl.sites, fl.sites_per_round, fl.local_steps and fl.eval_every "
                      "must be positive integers (the bench derives the centralized budget from them)",
                      s->path);
    c->steps_per_round = spr * local;
    char num[64];
    if (st == FM_OK)
        st = kv_set(&l, "seed", c->seed);
    if (st == FM_OK && !c->method->train)
        st = kv_set(&l, "fl.scenario", c->setting);
    if (st == FM_OK && c->method->train) {
        snprintf(num, sizeof num, "%" PRId64, rounds * spr * local);
        st = kv_set(&l, "train.steps", num);
        snprintf(num, sizeof num, "%" PRId64, every * spr * local);
        if (st == FM_OK)
            st = kv_set(&l, "train.eval_every", num);
        if (st == FM_OK && eval_size)
            st = kv_set(&l, "train.eval_size", eval_size);
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (st == FM_OK)
        st = yaml_quote(&buf, &len, &cap, "# fedmm bench cell", "generated; edit the suite file instead");
    for (size_t i = 0; st == FM_OK && i < l.n; i++) {
        const char *k = l.items[i].key;
        /* the bench passes --out and --threads itself */
        if (strcmp(k, "out") == 0 || strcmp(k, "metrics") == 0 || strcmp(k, "threads") == 0)
            continue;
        if (c->method->train && strncmp(k, "fl.", 3) == 0)
            continue;
        st = yaml_quote(&buf, &len, &cap, k, l.items[i].value);
    }
    kv_free(&l);
    if (st != FM_OK) {
        free(buf);
        return st;
    }
    c->yaml = buf;
    return FM_OK;
}

/* Reads the last evaluation of a finished cell, and appends its evaluation curve to `curves` when given. */
static int cell_read_metrics(cell *c, FILE *curves)
{
    char path[BENCH_PATH + 32];
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", c->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int have = 0;
    c->wall_s = c->bytes_up = c->bytes_down = 0.0;
    while (fgets(line, sizeof line, f)) {
        double w = json_num(line, "wall_s");
        if (isfinite(w) && w > c->wall_s)
            c->wall_s = w;
        double up = json_num(line, "bytes_up"), down = json_num(line, "bytes_down");
        if (isfinite(up))
            c->bytes_up = up;
        if (isfinite(down))
            c->bytes_down = down;
        double r1 = json_num(line, "i2t_r1");
        if (!isfinite(r1))
            continue;
        for (int k = 0; k < 7; k++)
            c->m[k] = json_num(line, metric_keys[k]);
        have = 1;
        if (curves) {
            double x = json_num(line, "round");
            if (!isfinite(x))
                x = json_num(line, "step") / (double)c->steps_per_round;
            fprintf(curves, "%s,%s,%s,%s,%.6g,%.6g,%.6g,%.6g\n", c->setting, c->method->name, c->method->label, c->seed,
                    x, c->m[6], c->m[0], c->m[3]);
        }
    }
    fclose(f);
    return have;
}

/* The last line of the cell's log that names a fedmm error, else the last non-empty line. */
static void cell_log_reason(const cell *c, char *out, size_t cap)
{
    char path[BENCH_PATH + 32];
    snprintf(path, sizeof path, "%s/log.txt", c->dir);
    snprintf(out, cap, "no log");
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[1024], last[1024] = "", err[1024] = "";
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        snprintf(last, sizeof last, "%s", line);
        if (strncmp(line, "fedmm ", 6) == 0)
            snprintf(err, sizeof err, "%s", line);
    }
    fclose(f);
    snprintf(out, cap, "%s", err[0] ? err : last);
}

/* Whether an optional method's failure means "this build does not have it": the child refused its
 * configuration (exit 2 naming an unknown key or fl.algorithm). */
static int unavailable(const char *reason, int code)
{
    return code == 2 && (strstr(reason, "unknown config key") || strstr(reason, "fl.algorithm"));
}

/* ---- running ------------------------------------------------------------------------------------ */

typedef struct runner {
    int jobs, threads, gpus;
    const char *device;
    char **env;   /* environ plus OMP_NUM_THREADS / OPENBLAS_NUM_THREADS */
    size_t n_env; /* entries in env before the per-child CUDA_VISIBLE_DEVICES slot */
    int tty;
    double t0;
    size_t total, finished;
    int bar_shown;
} runner;

static fm_status runner_env(runner *r)
{
    size_t n = 0;
    while (environ[n])
        n++;
    r->env = calloc(n + 4, sizeof *r->env);
    if (!r->env)
        return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (strncmp(e, "OMP_NUM_THREADS=", 16) == 0 || strncmp(e, "OPENBLAS_NUM_THREADS=", 21) == 0)
            continue;
        if (r->gpus > 0 && strncmp(e, "CUDA_VISIBLE_DEVICES=", 21) == 0)
            continue;
        r->env[k++] = environ[i];
    }
    static char omp[48], blas[48];
    snprintf(omp, sizeof omp, "OMP_NUM_THREADS=%d", r->threads);
    snprintf(blas, sizeof blas, "OPENBLAS_NUM_THREADS=%d", r->threads);
    r->env[k++] = omp;
    r->env[k++] = blas;
    r->n_env = k;
    r->env[k] = NULL;
    return FM_OK;
}

static void fmt_duration(double s, char *out, size_t cap)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(out, cap, "%ldm%02lds", t / 60, t % 60);
}

/* The overall bar: redrawn in place on a TTY (cleared before each cell line), one plain line otherwise. */
static void draw_bar(runner *r, size_t running)
{
    const int width = 30;
    double elapsed = fm_now_seconds() - r->t0;
    int fill = r->total ? (int)((double)width * (double)r->finished / (double)r->total) : width;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    char el[32], eta[48] = "";
    fmt_duration(elapsed, el, sizeof el);
    if (r->finished > 0 && r->finished < r->total) {
        char e[32];
        fmt_duration(elapsed / (double)r->finished * (double)(r->total - r->finished), e, sizeof e);
        snprintf(eta, sizeof eta, ", ~%s left", e);
    }
    if (r->tty) {
        fprintf(stderr, "\r\033[Kbench [%s] %zu/%zu cells, %zu running, %s%s", bar, r->finished, r->total, running, el,
                eta);
        r->bar_shown = 1;
    } else {
        fprintf(stderr, "bench [%s] %zu/%zu cells, %s%s\n", bar, r->finished, r->total, el, eta);
    }
    fflush(stderr);
}

static void clear_bar(runner *r)
{
    if (r->tty && r->bar_shown) {
        fprintf(stderr, "\r\033[K");
        fflush(stderr);
        r->bar_shown = 0;
    }
}

static const char *cell_name(const cell *c, char *out, size_t cap)
{
    snprintf(out, cap, "%s / %s / seed %s", c->setting, c->method->label, c->seed);
    return out;
}

static void report_cell(runner *r, cell *c, size_t running)
{
    char name[512];
    r->finished++;
    clear_bar(r);
    cell_name(c, name, sizeof name);
    int w = r->total >= 100 ? 3 : 2;
    printf("[%*zu/%zu] %s: ", w, r->finished, r->total, name);
    switch (c->state) {
    case CELL_OK:
    case CELL_CACHED:
        printf("%s%s%.1f s | i2t R@1 %.3f t2i R@1 %.3f | zero-shot acc %.3f\n",
               c->state == CELL_CACHED ? "cached (done earlier)" : "done", c->state == CELL_CACHED ? ", ran " : " in ",
               c->wall_s, c->m[0], c->m[3], c->m[6]);
        break;
    case CELL_SKIPPED: printf("SKIPPED: not available in this build (%s)\n", c->reason); break;
    default: printf("FAILED: %s (log: %s/log.txt)\n", c->reason, c->dir); break;
    }
    fflush(stdout);
    draw_bar(r, running);
}

static fm_status spawn_cell(runner *r, cell *c, int slot)
{
    char run_dir[BENCH_PATH + 16], cfg[BENCH_PATH + 16], log[BENCH_PATH + 16], threads[16], gpu[48];
    snprintf(run_dir, sizeof run_dir, "%s/run", c->dir);
    snprintf(cfg, sizeof cfg, "%s/cell.yaml", c->dir);
    snprintf(log, sizeof log, "%s/log.txt", c->dir);
    snprintf(threads, sizeof threads, "%d", r->threads);
    char *argv[12];
    int a = 0;
    argv[a++] = "fedmm";
    argv[a++] = c->method->train ? "train" : "sim";
    argv[a++] = "--config";
    argv[a++] = cfg;
    argv[a++] = "--out";
    argv[a++] = run_dir;
    argv[a++] = "--threads";
    argv[a++] = threads;
    if (r->device) {
        argv[a++] = "--device";
        argv[a++] = (char *)r->device;
    }
    argv[a] = NULL;
    if (r->gpus > 0) {
        snprintf(gpu, sizeof gpu, "CUDA_VISIBLE_DEVICES=%d", slot % r->gpus);
        r->env[r->n_env] = gpu;
        r->env[r->n_env + 1] = NULL;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    int e = posix_spawn(&c->pid, "/proc/self/exe", &fa, NULL, argv, r->env);
    posix_spawn_file_actions_destroy(&fa);
    r->env[r->n_env] = NULL;
    if (e != 0)
        return fm_error(FM_ERR_IO, "cannot start a fedmm child for %s: %s", c->dir, strerror(e));
    c->state = CELL_RUNNING;
    c->started = fm_now_seconds();
    return FM_OK;
}

/* Whether the cell finished in an earlier run with the same configuration. A done cell whose configuration
 * changed since (suite file, --set) runs again. */
static int cell_cached(cell *c, int *stale)
{
    char path[BENCH_PATH + 16];
    *stale = 0;
    snprintf(path, sizeof path, "%s/done", c->dir);
    if (!file_exists(path))
        return 0;
    snprintf(path, sizeof path, "%s/cell.yaml", c->dir);
    char *old = read_text(path);
    int same = old && strcmp(old, c->yaml) == 0;
    free(old);
    if (!same) {
        *stale = 1;
        return 0;
    }
    return cell_read_metrics(c, NULL);
}

static void cell_finished(cell *c, int wstatus)
{
    char path[BENCH_PATH + 16];
    int code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + (WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0);
    if (code == 0 && cell_read_metrics(c, NULL)) {
        c->state = CELL_OK;
        snprintf(path, sizeof path, "%s/done", c->dir);
        char text[256];
        snprintf(text, sizeof text, "finished in %.1f s\n", fm_now_seconds() - c->started);
        if (write_text(path, text) != FM_OK)
            fprintf(stderr, "fedmm bench: warning: %s\n", fm_last_error());
        return;
    }
    cell_log_reason(c, c->reason, sizeof c->reason);
    if (code == 0) {
        c->state = CELL_FAILED;
        snprintf(c->reason, sizeof c->reason, "exited 0 but %.240s/run/metrics.jsonl has no evaluation", c->dir);
    } else if (c->method->optional && unavailable(c->reason, code)) {
        c->state = CELL_SKIPPED;
    } else {
        char r[sizeof c->reason];
        snprintf(r, sizeof r, "%s", c->reason);
        snprintf(c->reason, sizeof c->reason, "exit %d: %.280s", code, r);
        c->state = CELL_FAILED;
    }
}

static fm_status run_cells(runner *r, cell *cells, size_t n)
{
    size_t next = 0, running = 0;
    int *slot_used = calloc((size_t)r->jobs, sizeof *slot_used);
    size_t *slot_cell = calloc((size_t)r->jobs, sizeof *slot_cell);
    if (!slot_used || !slot_cell) {
        free(slot_used);
        free(slot_cell);
        return fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    }
    fm_status st = FM_OK;
    r->t0 = fm_now_seconds();
    draw_bar(r, 0);
    while (st == FM_OK && (next < n || running > 0)) {
        while (st == FM_OK && next < n && running < (size_t)r->jobs) {
            cell *c = &cells[next++];
            int stale = 0;
            if (cell_cached(c, &stale)) {
                c->state = CELL_CACHED;
                report_cell(r, c, running);
                continue;
            }
            char path[BENCH_PATH + 16];
            snprintf(path, sizeof path, "%s/done", c->dir);
            if (stale) {
                clear_bar(r);
                printf("note: %s: configuration changed since it was done; running it again\n", c->dir);
            }
            remove(path);
            st = fm_cli_mkdirs(c->dir);
            snprintf(path, sizeof path, "%s/cell.yaml", c->dir);
            if (st == FM_OK)
                st = write_text(path, c->yaml);
            int slot = 0;
            while (slot_used[slot])
                slot++;
            if (st == FM_OK)
                st = spawn_cell(r, c, slot);
            if (st == FM_OK) {
                slot_used[slot] = 1;
                slot_cell[slot] = (size_t)(c - cells);
                running++;
            }
        }
        if (running == 0)
            continue;
        int ws = 0;
        pid_t pid;
        if (r->tty) { /* keep the bar's clock moving while the cells run */
            draw_bar(r, running);
            while ((pid = waitpid(-1, &ws, WNOHANG)) == 0) {
                struct timespec ts = {1, 0};
                nanosleep(&ts, NULL);
                draw_bar(r, running);
            }
        } else {
            pid = waitpid(-1, &ws, 0);
        }
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            st = fm_error(FM_ERR_INTERNAL, "waitpid: %s", strerror(errno));
            break;
        }
        for (int s = 0; s < r->jobs; s++) {
            if (!slot_used[s] || cells[slot_cell[s]].pid != pid)
                continue;
            slot_used[s] = 0;
            running--;
            cell_finished(&cells[slot_cell[s]], ws);
            report_cell(r, &cells[slot_cell[s]], running);
            break;
        }
    }
    /* after a start failure, wait for the cells still running rather than orphan them */
    while (running > 0) {
        int ws = 0;
        if (waitpid(-1, &ws, 0) < 0 && errno != EINTR)
            break;
        running--;
    }
    clear_bar(r);
    free(slot_used);
    free(slot_cell);
    return st;
}

/* ---- aggregation -------------------------------------------------------------------------------- */

typedef struct agg {
    int n_ok, n_total, n_skipped, n_failed;
    double mean[10], std[10]; /* the 7 metrics, wall_s, MB communicated (up + down), unused */
    const char *skip_reason;
} agg;

static void aggregate(const cell *cells, size_t n, const char *setting, const method_def *m, agg *a)
{
    memset(a, 0, sizeof *a);
    double sum[9] = {0}, sq[9] = {0};
    for (size_t i = 0; i < n; i++) {
        const cell *c = &cells[i];
        if (c->method != m || strcmp(c->setting, setting) != 0)
            continue;
        a->n_total++;
        if (c->state == CELL_SKIPPED) {
            a->n_skipped++;
            a->skip_reason = c->reason;
        }
        if (c->state == CELL_FAILED || c->state == CELL_PENDING || c->state == CELL_RUNNING)
            a->n_failed++;
        if (c->state != CELL_OK && c->state != CELL_CACHED)
            continue;
        double v[9];
        for (int k = 0; k < 7; k++)
            v[k] = c->m[k];
        v[7] = c->wall_s;
        v[8] = (c->bytes_up + c->bytes_down) / 1e6;
        for (int k = 0; k < 9; k++) {
            sum[k] += v[k];
            sq[k] += v[k] * v[k];
        }
        a->n_ok++;
    }
    for (int k = 0; k < 9 && a->n_ok > 0; k++) {
        a->mean[k] = sum[k] / a->n_ok;
        /* sample standard deviation over seeds (0 for one seed) */
        double var = a->n_ok > 1 ? (sq[k] - sum[k] * sum[k] / a->n_ok) / (a->n_ok - 1) : 0.0;
        a->std[k] = var > 0.0 ? sqrt(var) : 0.0;
    }
}

static const char *agg_status(const agg *a)
{
    if (a->n_ok == a->n_total)
        return "ok";
    if (a->n_ok > 0)
        return "partial";
    return a->n_skipped == a->n_total ? "skipped" : "failed";
}

static void scenario_of(const char *setting, char *out, size_t cap)
{
    snprintf(out, cap, "%s", setting);
    out[strcspn(out, "-")] = '\0';
}

/* "aligned, Dirichlet α = 0.5" and so on, from the setting's name. */
static void describe_setting(const char *setting, char *out, size_t cap)
{
    const char *dash = strchr(setting, '-');
    const char *p = dash ? dash + 1 : "";
    if (strncmp(setting, "aligned", 7) == 0)
        snprintf(out, cap, "aligned (all sites paired), Dirichlet label skew α = %s", p[0] == 'a' ? p + 1 : p);
    else if (strncmp(setting, "missing", 7) == 0)
        snprintf(out, cap, "missing modality, per-sample rate %s", p);
    else if (strncmp(setting, "cross", 5) == 0)
        snprintf(out, cap, "cross-modality, %s sites image-only, the rest text-only", p);
    else if (strncmp(setting, "hybrid", 6) == 0)
        snprintf(out, cap, "hybrid, per-site Bernoulli modality presence q = %s", p);
    else
        snprintf(out, cap, "pooled data (no federation)");
}

static void md_cell(FILE *f, double mean, double std, double scale, int prec)
{
    fprintf(f, " %.*f ± %.*f |", prec, mean * scale, prec, std * scale);
}

static void md_row(FILE *f, const method_def *m, const agg *a, int pooled)
{
    fprintf(f, "| %s%s |", m->label, pooled ? " †" : "");
    if (a->n_ok == 0) {
        if (a->n_skipped == a->n_total)
            fprintf(f, " skipped: not available in this build |||||||||\n");
        else
            fprintf(f, " failed (%d of %d seeds) |||||||||\n", a->n_failed, a->n_total);
        return;
    }
    for (int k = 0; k < 7; k++)
        md_cell(f, a->mean[k], a->std[k], 100.0, 1);
    md_cell(f, a->mean[7], a->std[7], 1.0, 1);
    md_cell(f, a->mean[8], a->std[8], 1.0, 2);
    fprintf(f, " %d/%d |\n", a->n_ok, a->n_total);
}

typedef struct bench_info {
    char date[64];
    char machine[512];
    char command[2048];
    int jobs, threads;
    size_t n_ok, n_cached, n_skipped, n_failed;
} bench_info;

static fm_status write_tables(const char *out, const suite *s, const cell *cells, size_t n, const bench_info *info)
{
    char path[BENCH_PATH + 32];
    snprintf(path, sizeof path, "%s/results.csv", out);
    FILE *csv = fopen(path, "w");
    if (!csv)
        return fm_error(FM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/results.md", out);
    FILE *md = fopen(path, "w");
    if (!md) {
        fclose(csv);
        return fm_error(FM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    fprintf(csv, "scenario,setting,method,label,status,seeds_ok,seeds");
    for (int k = 0; k < 7; k++)
        fprintf(csv, ",%s_mean,%s_std", metric_keys[k], metric_keys[k]);
    fprintf(csv, ",wall_s_mean,wall_s_std,mb_comm_mean,mb_comm_std\n");

    fprintf(md, "# %s: results\n\n", s->name);
    if (s->description[0])
        fprintf(md, "%s.\n\n", s->description);
    fprintf(md, "Date %s; machine: %s; command: `%s`.\n\n", info->date, info->machine, info->command);
    fprintf(md, "Mean ± sample standard deviation over seeds of the last evaluation of each run. Recall@K (image→text "
                "i2t, text→image t2i) and zero-shot accuracy in %%; wall time in seconds per run; MB communicated = "
                "bytes up + down over the whole run / 10^6. † pooled data (`fedmm train`, no federation, the same "
                "number of samples as a federated run): the same runs beside every setting.\n\n");

    /* methods that are not per setting: one row, setting "pooled" */
    for (size_t mi = 0; mi < s->methods.n; mi++) {
        const method_def *m = NULL;
        for (size_t d = 0; d < s->n_defs; d++)
            if (strcmp(s->defs[d].name, s->methods.s[mi]) == 0)
                m = &s->defs[d];
        if (!m || m->per_setting)
            continue;
        agg a;
        aggregate(cells, n, "pooled", m, &a);
        fprintf(csv, "pooled,pooled,%s,%s,%s,%d,%d", m->name, m->label, agg_status(&a), a.n_ok, a.n_total);
        for (int k = 0; k < 9; k++)
            a.n_ok ? fprintf(csv, ",%.6g,%.6g", a.mean[k], a.std[k]) : fprintf(csv, ",,");
        fputc('\n', csv);
    }
    for (size_t si = 0; si < s->settings.n; si++) {
        const char *setting = s->settings.s[si];
        char scen[64], desc[256];
        scenario_of(setting, scen, sizeof scen);
        describe_setting(setting, desc, sizeof desc);
        fprintf(md, "## %s — %s\n\n", setting, desc);
        fprintf(md, "| method | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | zero-shot acc | wall s "
                    "| MB comm. | seeds |\n");
        fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (size_t mi = 0; mi < s->methods.n; mi++) {
            const method_def *m = NULL;
            for (size_t d = 0; d < s->n_defs; d++)
                if (strcmp(s->defs[d].name, s->methods.s[mi]) == 0)
                    m = &s->defs[d];
            if (!m)
                continue;
            agg a;
            aggregate(cells, n, m->per_setting ? setting : "pooled", m, &a);
            md_row(md, m, &a, !m->per_setting);
            if (!m->per_setting)
                continue;
            fprintf(csv, "%s,%s,%s,%s,%s,%d,%d", scen, setting, m->name, m->label, agg_status(&a), a.n_ok, a.n_total);
            for (int k = 0; k < 9; k++)
                a.n_ok ? fprintf(csv, ",%.6g,%.6g", a.mean[k], a.std[k]) : fprintf(csv, ",,");
            fputc('\n', csv);
        }
        fprintf(md, "\n");
    }
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        const cell *c = &cells[i];
        if (c->state != CELL_SKIPPED && c->state != CELL_FAILED)
            continue;
        if (!any)
            fprintf(md, "## Cells without results\n\n");
        any = 1;
        fprintf(md, "- %s / %s / seed %s: %s: %s ([log](%s/log.txt))\n", c->setting, c->method->label, c->seed,
                c->state == CELL_SKIPPED ? "skipped: not available in this build" : "FAILED", c->reason,
                c->dir + strlen(out) + 1);
    }
    int bad = ferror(csv) || ferror(md);
    bad |= fclose(csv) != 0;
    bad |= fclose(md) != 0;
    return bad ? fm_error(FM_ERR_IO, "writing %s/results.csv or results.md failed", out) : FM_OK;
}

static fm_status write_cells_and_curves(const char *out, cell *cells, size_t n)
{
    char path[BENCH_PATH + 32];
    snprintf(path, sizeof path, "%s/cells.csv", out);
    FILE *f = fopen(path, "w");
    snprintf(path, sizeof path, "%s/curves.csv", out);
    FILE *cv = fopen(path, "w");
    if (!f || !cv) {
        if (f)
            fclose(f);
        if (cv)
            fclose(cv);
        return fm_error(FM_ERR_IO, "cannot write %s/cells.csv or curves.csv: %s", out, strerror(errno));
    }
    fprintf(f, "setting,method,label,seed,status");
    for (int k = 0; k < 7; k++)
        fprintf(f, ",%s", metric_keys[k]);
    fprintf(f, ",wall_s,bytes_up,bytes_down,dir\n");
    fprintf(cv, "setting,method,label,seed,round,zs_acc,i2t_r1,t2i_r1\n");
    static const char *names[] = {"pending", "running", "ok", "ok", "skipped", "failed"};
    for (size_t i = 0; i < n; i++) {
        cell *c = &cells[i];
        int ok = c->state == CELL_OK || c->state == CELL_CACHED;
        fprintf(f, "%s,%s,%s,%s,%s", c->setting, c->method->name, c->method->label, c->seed, names[c->state]);
        for (int k = 0; k < 7; k++)
            ok ? fprintf(f, ",%.6g", c->m[k]) : fprintf(f, ",");
        ok ? fprintf(f, ",%.3f,%.0f,%.0f", c->wall_s, c->bytes_up, c->bytes_down) : fprintf(f, ",,,");
        fprintf(f, ",%s\n", c->dir + strlen(out) + 1);
        if (ok)
            cell_read_metrics(c, cv);
    }
    int bad = ferror(f) || ferror(cv);
    bad |= fclose(f) != 0;
    bad |= fclose(cv) != 0;
    return bad ? fm_error(FM_ERR_IO, "writing %s/cells.csv or curves.csv failed", out) : FM_OK;
}

/* Runs PYTHON SCRIPT OUT; returns its exit code, or -1 when PYTHON cannot be started. */
static int run_python(const char *python, const char *script, const char *out)
{
    char *argv[] = {(char *)python, (char *)script, (char *)out, NULL};
    pid_t pid;
    if (posix_spawnp(&pid, python, NULL, NULL, argv, environ) != 0)
        return -1;
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (!WIFEXITED(ws))
        return 128;
    return WEXITSTATUS(ws) == 127 ? -1 : WEXITSTATUS(ws);
}

/* The plots need matplotlib: $FEDMM_PYTHON if set, else the first of python3 on PATH and the system's
 * /usr/bin/python3 (where Debian's python3-matplotlib installs) that has it. Exit code 3 of the script means
 * "no matplotlib here": try the next interpreter. */
static int run_plots(const char *script, const char *out)
{
    const char *env = getenv("FEDMM_PYTHON");
    if (env && *env)
        return run_python(env, script, out);
    int rc = run_python("python3", script, out);
    if (rc == 3 || rc == -1) {
        int sys_rc = run_python("/usr/bin/python3", script, out);
        if (sys_rc != -1)
            rc = sys_rc;
    }
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static fm_status write_index(const char *out, const suite *s, const bench_info *info, const char *plot_note)
{
    char path[BENCH_PATH + 32];
    snprintf(path, sizeof path, "%s/index.md", out);
    FILE *f = fopen(path, "w");
    if (!f)
        return fm_error(FM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    fprintf(f, "# fedmm bench: %s\n\n", s->name);
    if (s->description[0])
        fprintf(f, "%s.\n\n", s->description);
    fprintf(f, "- date: %s\n- machine: %s\n- command: `%s`\n- suite file: `%s`\n", info->date, info->machine,
            info->command, s->path);
    fprintf(f, "- %zu settings x %zu methods x %zu seeds; %d cells at a time, %d threads each\n", s->settings.n,
            s->methods.n, s->seeds.n, info->jobs, info->threads);
    fprintf(f, "- cells: %zu ran, %zu done earlier (skipped on this run), %zu skipped as not available, %zu failed\n\n",
            info->n_ok, info->n_cached, info->n_skipped, info->n_failed);
    fprintf(f, "## Tables\n\n- [results.md](results.md): mean ± std over seeds, one table per setting\n"
               "- [results.csv](results.csv): the same as CSV\n- [cells.csv](cells.csv): every cell's own numbers\n"
               "- [curves.csv](curves.csv): every evaluation of every cell (the plots' data)\n\n");
    fprintf(f, "## Plots\n\n");
    char dir[BENCH_PATH + 16];
    snprintf(dir, sizeof dir, "%s/plots", out);
    DIR *d = plot_note[0] ? NULL : opendir(dir); /* plots of an earlier run may not match these tables */
    strlist pngs = {0};
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t l = strlen(e->d_name);
            if (l > 4 && strcmp(e->d_name + l - 4, ".png") == 0 && strlist_push(&pngs, e->d_name) != FM_OK)
                break;
        }
        closedir(d);
    }
    if (pngs.n)
        qsort(pngs.s, pngs.n, sizeof *pngs.s, cmp_str);
    for (size_t i = 0; i < pngs.n; i++)
        fprintf(f, "### %s\n\n![%s](plots/%s)\n\n", pngs.s[i], pngs.s[i], pngs.s[i]);
    if (!pngs.n)
        fprintf(f, "No plots: %s\n", plot_note);
    strlist_free(&pngs);
    return fclose(f) == 0 ? FM_OK : fm_error(FM_ERR_IO, "writing %s failed", path);
}

static void machine_info(char *out, size_t cap, int cores, const char *device)
{
    struct utsname u;
    char cpu[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                const char *p = strchr(line, ':');
                if (p) {
                    p++;
                    while (*p == ' ')
                        p++;
                    snprintf(cpu, sizeof cpu, "%s", p);
                    cpu[strcspn(cpu, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(f);
    }
    if (uname(&u) == 0)
        snprintf(out, cap, "%s %s %s, %s, %d cores, device %s", u.sysname, u.release, u.machine, cpu, cores,
                 device ? device : "auto (per the suite's `device` key)");
    else
        snprintf(out, cap, "%s, %d cores", cpu, cores);
}

/* ---- the command -------------------------------------------------------------------------------- */

static int parse_count(const char *flag, const char *v, int lo, int hi, int *out)
{
    char *end = NULL;
    long x = strtol(v, &end, 10);
    if (!*v || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "fedmm bench: %s '%s': expected an integer in [%d, %d]\n", flag, v, lo, hi);
        return 2;
    }
    *out = (int)x;
    return 0;
}

int fm_cli_bench(int argc, char **argv)
{
    const char *suite_name = NULL, *out_arg = NULL, *device = NULL;
    int quick = 0, jobs = 0, threads = 0, gpus = 0, plots = 1;
    char *sets[FM_CLI_MAX_SETS];
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        if (strcmp(a, "--quick") == 0) {
            quick = 1;
            continue;
        }
        if (strcmp(a, "--no-plots") == 0) {
            plots = 0;
            continue;
        }
        static const char *with_value[] = {"--suite", "--out", "--jobs", "--threads", "--device", "--gpus", "--set"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++)
            known |= strcmp(a, with_value[k]) == 0;
        if (!known) {
            fprintf(stderr,
                    "fedmm bench: unknown option '%s' (options: --suite --quick --out --jobs --threads "
                    "--device --gpus --set --no-plots)\n",
                    a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "fedmm bench: option '%s' needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (strcmp(a, "--suite") == 0)
            suite_name = v;
        else if (strcmp(a, "--out") == 0)
            out_arg = v;
        else if (strcmp(a, "--device") == 0)
            device = v;
        else if (strcmp(a, "--jobs") == 0)
            rc = parse_count(a, v, 1, 4096, &jobs);
        else if (strcmp(a, "--threads") == 0)
            rc = parse_count(a, v, 1, 1024, &threads);
        else if (strcmp(a, "--gpus") == 0)
            rc = parse_count(a, v, 0, 1024, &gpus);
        else if (n_sets == FM_CLI_MAX_SETS) {
            fprintf(stderr, "fedmm bench: more than %d --set options\n", FM_CLI_MAX_SETS);
            rc = 2;
        } else {
            sets[n_sets++] = argv[i];
        }
        if (rc)
            return rc;
    }
    if (!suite_name) {
        fprintf(stderr, "fedmm bench: --suite NAME is required (the suites are benchmarks/scenarios/*.yaml, e.g. "
                        "--suite fedmllm)\n");
        return 2;
    }

    suite s;
    memset(&s, 0, sizeof s);
    /* a name is benchmarks/scenarios/NAME.yaml; a path (with '/' or ending .yaml) is used as it is */
    size_t nl = strlen(suite_name);
    int is_path = strchr(suite_name, '/') || (nl > 5 && strcmp(suite_name + nl - 5, ".yaml") == 0);
    if (is_path)
        snprintf(s.path, sizeof s.path, "%s", suite_name);
    else
        snprintf(s.path, sizeof s.path, "benchmarks/scenarios/%s.yaml", suite_name);
    const char *base = strrchr(s.path, '/') ? strrchr(s.path, '/') + 1 : s.path;
    snprintf(s.name, sizeof s.name, "%.200s", base);
    if (strlen(s.name) > 5 && strcmp(s.name + strlen(s.name) - 5, ".yaml") == 0)
        s.name[strlen(s.name) - 5] = '\0';
    if (!file_exists(s.path)) {
        fprintf(stderr,
                "fedmm bench: no suite '%s': %s does not exist (run from the repository root, or pass the "
                "suite file's path)\n",
                suite_name, s.path);
        return 2;
    }
    fm_status st = suite_load(&s, s.path, quick, sets, n_sets);
    if (st != FM_OK) {
        fprintf(stderr, "fedmm bench: suite %s: %s\n", s.path, fm_last_error());
        suite_free(&s);
        return 2;
    }
    char out[BENCH_PATH];
    if (out_arg)
        snprintf(out, sizeof out, "%s", out_arg);
    else
        snprintf(out, sizeof out, "runs/bench/%s%s", s.name, quick ? "-quick" : "");
    size_t ol = strlen(out);
    while (ol > 1 && out[ol - 1] == '/')
        out[--ol] = '\0';

    /* the cells: per-setting methods under every setting, the others once per seed */
    size_t n_max = (s.settings.n + 1) * s.methods.n * s.seeds.n;
    cell *cells = calloc(n_max, sizeof *cells);
    size_t n = 0;
    if (!cells) {
        suite_free(&s);
        fprintf(stderr, "fedmm bench: out of memory\n");
        return 1;
    }
    for (size_t mi = 0; st == FM_OK && mi < s.methods.n; mi++) {
        method_def *m = find_def(&s, s.methods.s[mi]);
        if (m->per_setting)
            continue;
        for (size_t k = 0; k < s.seeds.n; k++) {
            cell *c = &cells[n++];
            c->setting = "pooled";
            c->method = m;
            c->seed = s.seeds.s[k];
        }
    }
    for (size_t si = 0; si < s.settings.n; si++) {
        for (size_t mi = 0; mi < s.methods.n; mi++) {
            method_def *m = find_def(&s, s.methods.s[mi]);
            if (!m->per_setting)
                continue;
            for (size_t k = 0; k < s.seeds.n; k++) {
                cell *c = &cells[n++];
                c->setting = s.settings.s[si];
                c->method = m;
                c->seed = s.seeds.s[k];
            }
        }
    }
    for (size_t i = 0; st == FM_OK && i < n; i++) {
        cell *c = &cells[i];
        int len = snprintf(c->dir, sizeof c->dir, "%s/cells/%s/%s/seed-%s", out, c->setting, c->method->name, c->seed);
        if (len < 0 || (size_t)len >= sizeof c->dir)
            st = fm_error(FM_ERR_INVALID_ARG, "cell directory under %.200s is longer than %zu bytes", out,
                          sizeof c->dir - 1);
        else
            st = cell_config(&s, c);
    }
    int rc = 0;
    if (st != FM_OK) {
        fprintf(stderr, "fedmm bench: suite %s: %s\n", s.path, fm_last_error());
        rc = 2;
        goto done;
    }

    long ncores = sysconf(_SC_NPROCESSORS_ONLN);
    int cores = ncores > 0 ? (int)ncores : 1;
    runner r;
    memset(&r, 0, sizeof r);
    r.jobs = jobs ? jobs : (cores / 2 > 1 ? cores / 2 : 1);
    /* no oversubscription: the cells running at once share the cores */
    r.threads = threads ? threads : (cores / r.jobs > 1 ? cores / r.jobs : 1);
    r.gpus = gpus;
    r.device = device;
    r.tty = isatty(2);
    r.total = n;
    st = fm_cli_mkdirs(out);
    if (st == FM_OK)
        st = runner_env(&r);
    if (st != FM_OK) {
        rc = fm_cli_fail("bench", "set-up", st);
        goto done;
    }
    bench_info info;
    memset(&info, 0, sizeof info);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(info.date, sizeof info.date, "%Y-%m-%d %H:%M UTC", &tm);
    machine_info(info.machine, sizeof info.machine, cores, device);
    size_t cl = 0;
    cl += (size_t)snprintf(info.command, sizeof info.command, "fedmm");
    for (int i = 0; i < argc && cl < sizeof info.command; i++)
        cl += (size_t)snprintf(info.command + cl, sizeof info.command - cl, " %s", argv[i]);
    info.jobs = r.jobs;
    info.threads = r.threads;

    printf("bench %s%s: %zu cells (%zu settings x %zu methods x %zu seeds), %d at a time x %d threads, out %s\n",
           s.name, quick ? " (quick)" : "", n, s.settings.n, s.methods.n, s.seeds.n, r.jobs, r.threads, out);
    fflush(stdout);
    st = run_cells(&r, cells, n);
    free(r.env);
    if (st != FM_OK) {
        rc = fm_cli_fail("bench", "run", st);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        info.n_ok += cells[i].state == CELL_OK;
        info.n_cached += cells[i].state == CELL_CACHED;
        info.n_skipped += cells[i].state == CELL_SKIPPED;
        info.n_failed += cells[i].state == CELL_FAILED;
    }
    st = write_cells_and_curves(out, cells, n);
    if (st == FM_OK)
        st = write_tables(out, &s, cells, n, &info);
    if (st != FM_OK) {
        rc = fm_cli_fail("bench", "tables", st);
        goto done;
    }
    /* the plot script lives beside the suites' directory: benchmarks/plot_bench.py */
    char script[BENCH_PATH + 32], note[256] = "";
    snprintf(script, sizeof script, "%s", s.path);
    char *slash = strrchr(script, '/');
    if (slash) {
        *slash = '\0';
        slash = strrchr(script, '/');
    }
    if (slash)
        snprintf(slash + 1, sizeof script - (size_t)(slash + 1 - script), "plot_bench.py");
    else
        snprintf(script, sizeof script, "benchmarks/plot_bench.py");
    if (getenv("FEDMM_PLOT_SCRIPT"))
        snprintf(script, sizeof script, "%s", getenv("FEDMM_PLOT_SCRIPT"));
    if (!plots) {
        snprintf(note, sizeof note, "--no-plots was given.");
    } else if (!file_exists(script)) {
        snprintf(note, sizeof note, "the plot script %.200s is missing.", script);
    } else {
        int prc = run_plots(script, out);
        if (prc == -1)
            snprintf(note, sizeof note, "python3 is not installed (the plots need python3 and matplotlib).");
        else if (prc == 3)
            snprintf(note, sizeof note,
                     "matplotlib is not installed (pip install matplotlib, or apt-get install python3-matplotlib).");
        else if (prc != 0)
            snprintf(note, sizeof note, "%.200s failed with exit code %d.", script, prc);
    }
    if (note[0])
        fprintf(stderr, "fedmm bench: warning: no plots: %s The tables are written.\n", note);
    st = write_index(out, &s, &info, note);
    if (st != FM_OK) {
        rc = fm_cli_fail("bench", "index", st);
        goto done;
    }
    printf("bench %s: %zu cells: %zu ran, %zu done earlier, %zu skipped (not available in this build), %zu failed | "
           "%s/index.md, results.md, results.csv%s\n",
           s.name, n, info.n_ok, info.n_cached, info.n_skipped, info.n_failed, out, note[0] ? "" : ", plots/");
    for (size_t i = 0; i < n; i++)
        if (cells[i].state == CELL_SKIPPED)
            printf("skipped: %s / %s / seed %s: not available in this build (%s)\n", cells[i].setting,
                   cells[i].method->label, cells[i].seed, cells[i].reason);
    rc = info.n_failed ? 1 : 0;
    if (info.n_failed)
        fprintf(stderr, "fedmm bench: %zu cell(s) failed; their logs are listed in %s/results.md\n", info.n_failed,
                out);
done:
    for (size_t i = 0; i < n; i++)
        free(cells[i].yaml);
    free(cells);
    suite_free(&s);
    return rc;
}
