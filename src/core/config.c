/* Flattened key/value configuration from YAML (libfyaml) and --set overrides, with use tracking. */
#include "fedmm/config.h"

#include <errno.h>
#include <libfyaml.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct entry {
    char *key;
    char *value;
    char *origin; /* "file.yaml:12" or "--set" */
    int used;
} entry;

struct fm_config {
    entry *items;
    size_t count, cap;
};

fm_status fm_config_create(fm_config **out)
{
    fm_config *c = calloc(1, sizeof *c);
    if (!c)
        return fm_error(FM_ERR_NO_MEMORY, "config: out of memory");
    *out = c;
    return FM_OK;
}

void fm_config_destroy(fm_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->count; i++) {
        free(cfg->items[i].key);
        free(cfg->items[i].value);
        free(cfg->items[i].origin);
    }
    free(cfg->items);
    free(cfg);
}

static entry *find(const fm_config *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->count; i++)
        if (strcmp(cfg->items[i].key, key) == 0)
            return &cfg->items[i];
    return NULL;
}

static char *dup_str(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

fm_status fm_config_set(fm_config *cfg, const char *key, const char *value, const char *origin)
{
    if (!cfg || !key || !*key || !value)
        return fm_error(FM_ERR_CONFIG, "config: empty key");
    entry *e = find(cfg, key);
    char *v = dup_str(value, strlen(value)), *o = dup_str(origin ? origin : "", origin ? strlen(origin) : 0);
    if (!v || !o) {
        free(v);
        free(o);
        return fm_error(FM_ERR_NO_MEMORY, "config: out of memory");
    }
    if (e) {
        free(e->value);
        free(e->origin);
        e->value = v;
        e->origin = o;
        return FM_OK;
    }
    if (cfg->count == cfg->cap) {
        size_t cap = cfg->cap ? 2 * cfg->cap : 32;
        entry *items = realloc(cfg->items, cap * sizeof *items);
        if (!items) {
            free(v);
            free(o);
            return fm_error(FM_ERR_NO_MEMORY, "config: out of memory");
        }
        cfg->items = items;
        cfg->cap = cap;
    }
    char *k = dup_str(key, strlen(key));
    if (!k) {
        free(v);
        free(o);
        return fm_error(FM_ERR_NO_MEMORY, "config: out of memory");
    }
    cfg->items[cfg->count++] = (entry){k, v, o, 0};
    return FM_OK;
}

fm_status fm_config_set_assignment(fm_config *cfg, const char *assignment)
{
    const char *eq = assignment ? strchr(assignment, '=') : NULL;
    if (!eq || eq == assignment)
        return fm_error(FM_ERR_CONFIG, "--set '%s': expected key=value", assignment ? assignment : "");
    char key[256];
    size_t n = (size_t)(eq - assignment);
    if (n >= sizeof key)
        return fm_error(FM_ERR_CONFIG, "--set: key too long");
    memcpy(key, assignment, n);
    key[n] = '\0';
    return fm_config_set(cfg, key, eq + 1, "--set");
}

static fm_status flatten(fm_config *cfg, struct fy_node *node, const char *prefix, const char *origin)
{
    char key[512], where[600];
    switch (fy_node_get_type(node)) {
    case FYNT_SCALAR: {
        size_t len = 0;
        const char *text = fy_node_get_scalar(node, &len);
        if (!*prefix)
            return fm_error(FM_ERR_CONFIG, "%s: the top level must be a mapping of keys", origin);
        struct fy_token *tok = fy_node_get_scalar_token(node);
        const struct fy_mark *mark = tok ? fy_token_start_mark(tok) : NULL;
        snprintf(where, sizeof where, "%s:%d", origin, mark ? mark->line + 1 : 0);
        char *v = dup_str(text ? text : "", text ? len : 0);
        if (!v)
            return fm_error(FM_ERR_NO_MEMORY, "config: out of memory");
        fm_status s = fm_config_set(cfg, prefix, v, where);
        free(v);
        return s;
    }
    case FYNT_MAPPING: {
        void *it = NULL;
        struct fy_node_pair *pair;
        while ((pair = fy_node_mapping_iterate(node, &it)) != NULL) {
            struct fy_node *k = fy_node_pair_key(pair);
            size_t klen = 0;
            const char *ktext = k && fy_node_get_type(k) == FYNT_SCALAR ? fy_node_get_scalar(k, &klen) : NULL;
            if (!ktext || klen == 0)
                return fm_error(FM_ERR_CONFIG, "%s: a mapping key under '%s' is not a plain scalar", origin, prefix);
            int n = snprintf(key, sizeof key, "%s%s%.*s", prefix, *prefix ? "." : "", (int)klen, ktext);
            if (n < 0 || (size_t)n >= sizeof key)
                return fm_error(FM_ERR_CONFIG, "%s: key too long under '%s'", origin, prefix);
            struct fy_node *v = fy_node_pair_value(pair);
            if (!v) {
                FM_TRY(fm_config_set(cfg, key, "", origin));
                continue;
            }
            FM_TRY(flatten(cfg, v, key, origin));
        }
        return FM_OK;
    }
    case FYNT_SEQUENCE: {
        void *it = NULL;
        struct fy_node *item;
        int i = 0;
        if (!*prefix)
            return fm_error(FM_ERR_CONFIG, "%s: the top level must be a mapping of keys", origin);
        while ((item = fy_node_sequence_iterate(node, &it)) != NULL) {
            snprintf(key, sizeof key, "%s.%d", prefix, i++);
            FM_TRY(flatten(cfg, item, key, origin));
        }
        snprintf(key, sizeof key, "%s.count", prefix);
        char count[16];
        snprintf(count, sizeof count, "%d", i);
        return fm_config_set(cfg, key, count, origin);
    }
    }
    return fm_error(FM_ERR_CONFIG, "%s: unexpected YAML node", origin);
}

/* libfyaml's diagnostics are collected here (first line only) instead of going to stderr. */
typedef struct yaml_diag {
    char text[512];
    size_t len;
    int done;
} yaml_diag;

static void collect_diag(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    yaml_diag *d = user;
    for (size_t i = 0; i < len && !d->done; i++) {
        if (buf[i] == '\n') {
            d->done = d->len > 0;
            continue;
        }
        if (d->len + 1 < sizeof d->text)
            d->text[d->len++] = buf[i];
    }
    d->text[d->len] = '\0';
}

fm_status fm_config_load_yaml_string(fm_config *cfg, const char *text, size_t len, const char *origin)
{
    origin = origin ? origin : "(string)";
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r'))
        i++;
    if (i == len)
        return FM_OK; /* an empty document sets nothing */
    yaml_diag collected = {0};
    struct fy_diag_cfg dcfg;
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = collect_diag;
    dcfg.user = &collected;
    dcfg.colorize = false;
    dcfg.show_source = false;
    dcfg.show_type = false;
    dcfg.show_module = false;
    dcfg.show_position = true;
    struct fy_diag *diag = fy_diag_create(&dcfg);
    if (!diag)
        return fm_error(FM_ERR_NO_MEMORY, "config %s: out of memory", origin);
    struct fy_parse_cfg pc = {.flags = FYPCF_QUIET | FYPCF_DEFAULT_PARSE, .diag = diag};
    struct fy_document *doc = fy_document_build_from_string(&pc, text, len);
    fm_status s;
    if (!doc) {
        /* The message starts with "<memory-@...>:" when positions are shown: keep from the line number. */
        const char *msg = collected.text;
        const char *gt = strstr(msg, ">:");
        if (gt)
            msg = gt + 2;
        while (*msg == ' ')
            msg++;
        s = fm_error(FM_ERR_CONFIG, "%s: not valid YAML: %s", origin, *msg ? msg : "parse error");
        if (doc)
            fy_document_destroy(doc);
    } else {
        struct fy_node *root = fy_document_root(doc);
        if (!root)
            s = FM_OK;
        else if (fy_node_get_type(root) != FYNT_MAPPING)
            s = fm_error(FM_ERR_CONFIG, "%s: the top level must be a mapping of keys", origin);
        else
            s = flatten(cfg, root, "", origin);
        fy_document_destroy(doc);
    }
    fy_diag_destroy(diag);
    return s;
}

fm_status fm_config_load_yaml(fm_config *cfg, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error(FM_ERR_IO, "config %s: %s", path, strerror(errno));
    enum { MAX_CONFIG = 16 << 20 };
    char *buf = malloc(MAX_CONFIG + 1);
    if (!buf) {
        fclose(f);
        return fm_error(FM_ERR_NO_MEMORY, "config %s: out of memory", path);
    }
    size_t n = fread(buf, 1, MAX_CONFIG + 1, f);
    int err = ferror(f);
    fclose(f);
    fm_status s;
    if (err)
        s = fm_error(FM_ERR_IO, "config %s: read error", path);
    else if (n > MAX_CONFIG)
        s = fm_error(FM_ERR_CONFIG, "config %s: larger than %d MiB", path, MAX_CONFIG >> 20);
    else
        s = fm_config_load_yaml_string(cfg, buf, n, path);
    free(buf);
    return s;
}

int fm_config_has(const fm_config *cfg, const char *key) { return find(cfg, key) != NULL; }

fm_status fm_config_str(fm_config *cfg, const char *key, const char *dflt, const char **out)
{
    entry *e = find(cfg, key);
    if (!e) {
        *out = dflt;
        return FM_OK;
    }
    e->used = 1;
    *out = e->value;
    return FM_OK;
}

fm_status fm_config_int(fm_config *cfg, const char *key, int64_t dflt, int64_t min, int64_t max, int64_t *out)
{
    entry *e = find(cfg, key);
    if (!e) {
        *out = dflt;
        return FM_OK;
    }
    e->used = 1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(e->value, &end, 10);
    if (errno || end == e->value || *end != '\0')
        return fm_error(FM_ERR_CONFIG, "%s (%s): '%s' is not an integer", key, e->origin, e->value);
    if (v < min || v > max)
        return fm_error(FM_ERR_CONFIG, "%s (%s): %lld is outside [%lld, %lld]", key, e->origin, v, (long long)min,
                        (long long)max);
    *out = v;
    return FM_OK;
}

fm_status fm_config_float(fm_config *cfg, const char *key, double dflt, double min, double max, double *out)
{
    entry *e = find(cfg, key);
    if (!e) {
        *out = dflt;
        return FM_OK;
    }
    e->used = 1;
    char *end = NULL;
    errno = 0;
    double v = strtod(e->value, &end);
    if (errno || end == e->value || *end != '\0' || !isfinite(v))
        return fm_error(FM_ERR_CONFIG, "%s (%s): '%s' is not a finite number", key, e->origin, e->value);
    if (v < min || v > max)
        return fm_error(FM_ERR_CONFIG, "%s (%s): %g is outside [%g, %g]", key, e->origin, v, min, max);
    *out = v;
    return FM_OK;
}

fm_status fm_config_bool(fm_config *cfg, const char *key, int dflt, int *out)
{
    entry *e = find(cfg, key);
    if (!e) {
        *out = dflt;
        return FM_OK;
    }
    e->used = 1;
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(e->value, yes[i]) == 0) {
            *out = 1;
            return FM_OK;
        }
        if (strcasecmp(e->value, no[i]) == 0) {
            *out = 0;
            return FM_OK;
        }
    }
    return fm_error(FM_ERR_CONFIG, "%s (%s): '%s' is not a boolean (true/false)", key, e->origin, e->value);
}

fm_status fm_config_each(fm_config *cfg, const char *prefix, fm_config_visit_fn fn, void *ctx)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < cfg->count; i++) {
        entry *e = &cfg->items[i];
        if (plen && (strncmp(e->key, prefix, plen) != 0 || e->key[plen] != '.'))
            continue;
        e->used = 1;
        fm_status s = fn(e->key + (plen ? plen + 1 : 0), e->value, ctx);
        if (s != FM_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", fm_last_error());
            return fm_error(s, "%s (%s): %s", e->key, e->origin, msg);
        }
    }
    return FM_OK;
}

fm_status fm_config_check_unused(const fm_config *cfg)
{
    char msg[900] = "";
    size_t pos = 0, unknown = 0;
    for (size_t i = 0; i < cfg->count; i++) {
        const entry *e = &cfg->items[i];
        if (e->used)
            continue;
        if (pos < sizeof msg)
            pos += (size_t)snprintf(msg + pos, sizeof msg - pos, "%s'%s' (%s)", unknown ? ", " : "", e->key, e->origin);
        unknown++;
    }
    if (unknown)
        return fm_error(FM_ERR_CONFIG, "unknown config key%s %s", unknown > 1 ? "s" : "", msg);
    return FM_OK;
}

static int cmp_entry(const void *a, const void *b) { return strcmp(((const entry *)a)->key, ((const entry *)b)->key); }

fm_status fm_config_dump(const fm_config *cfg, const char *path)
{
    /* A shallow copy sorted by key: the strings stay owned by cfg. */
    entry *sorted = malloc((cfg->count ? cfg->count : 1) * sizeof *sorted);
    if (!sorted)
        return fm_error(FM_ERR_NO_MEMORY, "config dump: out of memory");
    for (size_t i = 0; i < cfg->count; i++)
        sorted[i] = cfg->items[i];
    qsort(sorted, cfg->count, sizeof *sorted, cmp_entry);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(sorted);
        return fm_error(FM_ERR_IO, "config dump %s: %s", path, strerror(errno));
    }
    fprintf(f, "# effective configuration (flattened keys)\n");
    for (size_t i = 0; i < cfg->count; i++)
        fprintf(f, "%s: \"%s\"\n", sorted[i].key, sorted[i].value);
    free(sorted);
    if (fclose(f) != 0)
        return fm_error(FM_ERR_IO, "config dump %s: write failed", path);
    return FM_OK;
}
