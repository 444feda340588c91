/* FedMLLM's modality-heterogeneity scenarios over the built-in dataset (see fedmm/modality.h): a Dirichlet
 * label split of the train split, then per-site and per-sample modality draws on top of it. The modality
 * draws use their own RNG streams, so changing the scenario never changes which samples a site holds. */
#include "fedmm/modality.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/partition.h"
#include "fedmm/rng.h"

/* Streams of the modality draws (the Dirichlet split uses cfg->seed through fm_partition_dirichlet's own
 * streams; these are keyed by a different Philox key so they cannot overlap them). */
#define MODALITY_KEY_SALT 0x6D6F64616C697479ULL /* "modality" */
#define STREAM_SITES 0xFFFFFFFF00000001ULL      /* per-site draws: cross permutation, hybrid presence */
/* per-sample draws of site k use stream k */

/* ---- names ---------------------------------------------------------------------------------------------- */

static const char *const MODALITY_NAMES[] = {"none", "image", "text", "paired"};
static const char *const SCENARIO_NAMES[FM_SCENARIO_COUNT] = {"aligned", "missing", "cross", "hybrid"};

const char *fm_modality_name(fm_modality modality)
{
    if ((int)modality < 0 || (int)modality > FM_MODALITY_PAIRED)
        return "?";
    return MODALITY_NAMES[modality];
}

fm_status fm_modality_parse(const char *name, fm_modality *out)
{
    if (!name || !out)
        return fm_error(FM_ERR_INVALID_ARG, "modality: name or out is NULL");
    static const struct {
        const char *name;
        fm_modality m;
    } table[] = {{"none", FM_MODALITY_NONE},        {"image", FM_MODALITY_IMAGE},   {"image-only", FM_MODALITY_IMAGE},
                 {"image_only", FM_MODALITY_IMAGE}, {"text", FM_MODALITY_TEXT},     {"text-only", FM_MODALITY_TEXT},
                 {"text_only", FM_MODALITY_TEXT},   {"paired", FM_MODALITY_PAIRED}, {"both", FM_MODALITY_PAIRED}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(name, table[i].name) == 0) {
            *out = table[i].m;
            return FM_OK;
        }
    }
    return fm_error(FM_ERR_CONFIG, "modality: unknown modality '%s' (expected none, image, text or paired)", name);
}

const char *fm_scenario_name(fm_scenario scenario)
{
    if ((int)scenario < 0 || scenario >= FM_SCENARIO_COUNT)
        return "?";
    return SCENARIO_NAMES[scenario];
}

fm_status fm_scenario_parse(const char *name, fm_scenario *out)
{
    if (!name || !out)
        return fm_error(FM_ERR_INVALID_ARG, "scenario: name or out is NULL");
    for (int s = 0; s < FM_SCENARIO_COUNT; s++) {
        if (strcmp(name, SCENARIO_NAMES[s]) == 0) {
            *out = (fm_scenario)s;
            return FM_OK;
        }
    }
    if (strcmp(name, "missing-modality") == 0 || strcmp(name, "missing_modality") == 0) {
        *out = FM_SCENARIO_MISSING;
        return FM_OK;
    }
    if (strcmp(name, "cross-modality") == 0 || strcmp(name, "cross_modality") == 0) {
        *out = FM_SCENARIO_CROSS;
        return FM_OK;
    }
    return fm_error(FM_ERR_CONFIG, "scenario: unknown scenario '%s' (expected aligned, missing, cross or hybrid)",
                    name);
}

/* ---- configuration -------------------------------------------------------------------------------------- */

fm_scenario_config fm_scenario_default_config(void)
{
    fm_scenario_config c;
    memset(&c, 0, sizeof c);
    c.scenario = FM_SCENARIO_ALIGNED;
    c.alpha = 0.5;
    c.missing_rate = 0.3;
    c.cross_k = 3;
    c.hybrid_q = 0.2;
    c.label_attr = FM_ATTR_KIND;
    c.num_sites = 10;
    c.min_site_size = 2;
    c.seed = 0;
    return c;
}

fm_status fm_scenario_validate(const fm_scenario_config *c)
{
    if (!c)
        return fm_error(FM_ERR_INVALID_ARG, "scenario: config is NULL");
    if ((int)c->scenario < 0 || c->scenario >= FM_SCENARIO_COUNT)
        return fm_error(FM_ERR_CONFIG, "scenario: scenario %d is not one of aligned, missing, cross, hybrid",
                        (int)c->scenario);
    if (!(c->alpha > 0.0) || !isfinite(c->alpha))
        return fm_error(FM_ERR_CONFIG, "scenario: alpha %g must be a finite number > 0", c->alpha);
    if (c->num_sites < 1 || c->num_sites > (1 << 20))
        return fm_error(FM_ERR_CONFIG, "scenario: num_sites %d is outside [1, 2^20]", c->num_sites);
    if (fm_synth_num_classes(c->label_attr) <= 0)
        return fm_error(FM_ERR_CONFIG, "scenario: label_attr %d is not an attribute", (int)c->label_attr);
    if (c->min_site_size < 0)
        return fm_error(FM_ERR_CONFIG, "scenario: min_site_size %lld must be >= 0", (long long)c->min_site_size);
    if (!(c->missing_rate >= 0.0 && c->missing_rate <= 1.0))
        return fm_error(FM_ERR_CONFIG, "scenario: missing_rate %g is outside [0, 1]", c->missing_rate);
    /* the bound on cross_k only where it is used: the default 3 must not refuse an aligned run of 2 sites */
    if (c->cross_k < 0 || (c->scenario == FM_SCENARIO_CROSS && c->cross_k > c->num_sites))
        return fm_error(FM_ERR_CONFIG, "scenario: cross_k %d is outside [0, num_sites = %d]", c->cross_k, c->num_sites);
    if (!(c->hybrid_q >= 0.0 && c->hybrid_q <= 1.0))
        return fm_error(FM_ERR_CONFIG, "scenario: hybrid_q %g is outside [0, 1]", c->hybrid_q);
    return FM_OK;
}

static const struct setting {
    const char *name;
    fm_scenario scenario;
    double alpha;
    double missing_rate;
    int cross_k;
    double hybrid_q;
} SETTINGS[] = {
    {"aligned-a5", FM_SCENARIO_ALIGNED, 5.0, 0.3, 3, 0.2},   {"aligned-a1", FM_SCENARIO_ALIGNED, 1.0, 0.3, 3, 0.2},
    {"aligned-a0.5", FM_SCENARIO_ALIGNED, 0.5, 0.3, 3, 0.2}, {"missing-0.3", FM_SCENARIO_MISSING, 0.5, 0.3, 3, 0.2},
    {"missing-0.4", FM_SCENARIO_MISSING, 0.5, 0.4, 3, 0.2},  {"missing-0.5", FM_SCENARIO_MISSING, 0.5, 0.5, 3, 0.2},
    {"cross-3", FM_SCENARIO_CROSS, 0.5, 0.3, 3, 0.2},        {"cross-5", FM_SCENARIO_CROSS, 0.5, 0.3, 5, 0.2},
    {"cross-7", FM_SCENARIO_CROSS, 0.5, 0.3, 7, 0.2},        {"hybrid-0.2", FM_SCENARIO_HYBRID, 0.5, 0.3, 3, 0.2},
    {"hybrid-0.3", FM_SCENARIO_HYBRID, 0.5, 0.3, 3, 0.3},    {"hybrid-0.4", FM_SCENARIO_HYBRID, 0.5, 0.3, 3, 0.4},
};
#define NUM_SETTINGS (sizeof SETTINGS / sizeof SETTINGS[0])

const char *const *fm_scenario_setting_names(size_t *count)
{
    static const char *const names[NUM_SETTINGS] = {
        "aligned-a5", "aligned-a1", "aligned-a0.5", "missing-0.3", "missing-0.4", "missing-0.5",
        "cross-3",    "cross-5",    "cross-7",      "hybrid-0.2",  "hybrid-0.3",  "hybrid-0.4",
    };
    if (count)
        *count = NUM_SETTINGS;
    return names;
}

fm_status fm_scenario_setting(const char *name, fm_scenario_config *cfg)
{
    if (!name || !cfg)
        return fm_error(FM_ERR_INVALID_ARG, "scenario: setting name or config is NULL");
    for (size_t i = 0; i < NUM_SETTINGS; i++) {
        if (strcmp(name, SETTINGS[i].name) != 0)
            continue;
        fm_scenario_config c = fm_scenario_default_config();
        c.seed = cfg->seed;
        c.num_sites = cfg->num_sites;
        c.label_attr = cfg->label_attr;
        c.scenario = SETTINGS[i].scenario;
        c.alpha = SETTINGS[i].alpha;
        c.missing_rate = SETTINGS[i].missing_rate;
        c.cross_k = SETTINGS[i].cross_k;
        c.hybrid_q = SETTINGS[i].hybrid_q;
        *cfg = c;
        return FM_OK;
    }
    return fm_error(FM_ERR_CONFIG,
                    "scenario: unknown setting '%s' (known: aligned-a5, aligned-a1, aligned-a0.5, missing-0.3, "
                    "missing-0.4, missing-0.5, cross-3, cross-5, cross-7, hybrid-0.2, hybrid-0.3, hybrid-0.4)",
                    name);
}

/* ---- the split ------------------------------------------------------------------------------------------ */

void fm_site_data_free(fm_site_data *sites, int num_sites)
{
    if (!sites)
        return;
    for (int k = 0; k < num_sites; k++) {
        free(sites[k].indices);
        free(sites[k].sample_modality);
    }
    free(sites);
}

/* Fills the per-sample modalities of one site whose site-level draw is `site_mod` (NONE: the hybrid
 * "neither" case, each sample image- or text-only at random). */
static void draw_samples(const fm_scenario_config *cfg, uint64_t key, fm_site_data *s, fm_modality site_mod)
{
    fm_rng rng = fm_rng_make(key, (uint64_t)s->site);
    for (int64_t i = 0; i < s->n; i++) {
        fm_modality m = site_mod;
        if (cfg->scenario == FM_SCENARIO_MISSING) {
            /* Two draws per sample whatever the first gives, so sample i's fate does not depend on the
             * draws of the samples before it in a way that shifts with the rate. */
            double u = fm_rng_double(&rng), v = fm_rng_double(&rng);
            m = u < cfg->missing_rate ? (v < 0.5 ? FM_MODALITY_IMAGE : FM_MODALITY_TEXT) : FM_MODALITY_PAIRED;
        } else if (site_mod == FM_MODALITY_NONE) {
            m = fm_rng_double(&rng) < 0.5 ? FM_MODALITY_IMAGE : FM_MODALITY_TEXT;
        }
        s->sample_modality[i] = (uint8_t)m;
    }
}

/* The site-level modality draws: what each site holds before per-sample draws (NONE = hybrid "neither"). */
static fm_status site_modalities(const fm_scenario_config *cfg, uint64_t key, fm_modality *out)
{
    const int K = cfg->num_sites;
    fm_rng rng = fm_rng_make(key, STREAM_SITES);
    for (int k = 0; k < K; k++)
        out[k] = FM_MODALITY_PAIRED;
    if (cfg->scenario == FM_SCENARIO_CROSS) {
        int32_t *perm = malloc((size_t)K * sizeof *perm);
        if (!perm)
            return fm_error(FM_ERR_NO_MEMORY, "scenario: out of memory for %d sites", K);
        fm_rng_permutation(&rng, perm, (size_t)K);
        for (int j = 0; j < K; j++)
            out[perm[j]] = j < cfg->cross_k ? FM_MODALITY_IMAGE : FM_MODALITY_TEXT;
        free(perm);
    } else if (cfg->scenario == FM_SCENARIO_HYBRID) {
        const double p = 1.0 - cfg->hybrid_q;
        for (int k = 0; k < K; k++) {
            int has_image = fm_rng_double(&rng) < p, has_text = fm_rng_double(&rng) < p;
            out[k] = (fm_modality)((has_image ? FM_MODALITY_IMAGE : 0) | (has_text ? FM_MODALITY_TEXT : 0));
        }
    }
    return FM_OK;
}

fm_status fm_federation_split(const fm_scenario_config *cfg, const fm_synth_config *synth, fm_site_data **sites_out)
{
    if (!cfg || !synth || !sites_out)
        return fm_error(FM_ERR_INVALID_ARG, "federation split: cfg, synth or sites_out is NULL");
    *sites_out = NULL;
    FM_TRY(fm_scenario_validate(cfg));
    FM_TRY(fm_synth_validate(synth));
    const int K = cfg->num_sites;
    const int64_t n = synth->split_size[FM_SPLIT_TRAIN];
    if (cfg->min_site_size > 0 && n / K < cfg->min_site_size)
        return fm_error(FM_ERR_CONFIG,
                        "federation split: %lld train samples cannot give each of %d sites min_site_size = %lld",
                        (long long)n, K, (long long)cfg->min_site_size);

    fm_status st = FM_OK;
    int32_t *labels = malloc((size_t)(n > 0 ? n : 1) * sizeof *labels);
    fm_modality *site_mod = malloc((size_t)K * sizeof *site_mod);
    fm_site_data *sites = calloc((size_t)K, sizeof *sites);
    fm_partition part;
    memset(&part, 0, sizeof part);
    if (!labels || !site_mod || !sites) {
        st = fm_error(FM_ERR_NO_MEMORY, "federation split: out of memory for %lld samples", (long long)n);
        goto done;
    }
    st = fm_synth_label_array(synth, FM_SPLIT_TRAIN, 0, n, cfg->label_attr, labels);
    if (st != FM_OK)
        goto done;
    st = fm_partition_dirichlet(labels, n, fm_synth_num_classes(cfg->label_attr), K, cfg->alpha, cfg->min_site_size,
                                cfg->seed, &part);
    if (st != FM_OK)
        goto done;

    const uint64_t key = cfg->seed ^ MODALITY_KEY_SALT;
    st = site_modalities(cfg, key, site_mod);
    if (st != FM_OK)
        goto done;

    for (int k = 0; k < K; k++) {
        fm_site_data *s = &sites[k];
        s->site = k;
        s->n = fm_partition_site_size(&part, k);
        size_t cnt = (size_t)(s->n > 0 ? s->n : 1);
        s->indices = malloc(cnt * sizeof *s->indices);
        s->sample_modality = malloc(cnt * sizeof *s->sample_modality);
        if (!s->indices || !s->sample_modality) {
            st = fm_error(FM_ERR_NO_MEMORY, "federation split: out of memory for site %d", k);
            goto done;
        }
        if (s->n > 0)
            memcpy(s->indices, fm_partition_site_indices(&part, k), (size_t)s->n * sizeof *s->indices);
        draw_samples(cfg, key, s, site_mod[k]);
        unsigned uni = 0;
        for (int64_t i = 0; i < s->n; i++) {
            fm_modality m = (fm_modality)s->sample_modality[i];
            uni |= (unsigned)m;
            s->n_paired += m == FM_MODALITY_PAIRED;
            s->n_image += m == FM_MODALITY_IMAGE;
            s->n_text += m == FM_MODALITY_TEXT;
        }
        /* An empty site (possible with min_site_size 0) keeps its drawn modality, so that a cross site stays
         * image- or text-only for reporting; the union is used otherwise. */
        s->modality =
            s->n > 0 ? (fm_modality)uni : (site_mod[k] == FM_MODALITY_NONE ? FM_MODALITY_PAIRED : site_mod[k]);
    }

done:
    fm_partition_free(&part);
    free(labels);
    free(site_mod);
    if (st != FM_OK) {
        fm_site_data_free(sites, K);
        return st;
    }
    *sites_out = sites;
    return FM_OK;
}
