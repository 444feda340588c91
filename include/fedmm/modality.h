/* Modality heterogeneity for federated simulation: FedMLLM's four scenarios (aligned, missing modality,
 * cross-modality, hybrid), their twelve named settings, and the split of the built-in dataset's train
 * split over sites, giving each site its sample indices, its modality and each sample's modality.
 * Every scenario sits on a Dirichlet label skew over one attribute (fm_partition_dirichlet); the modality
 * assignment is drawn on top of it. Deterministic from the seed. */
#ifndef FEDMM_MODALITY_H
#define FEDMM_MODALITY_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/synth.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a sample or a site holds, as bits: PAIRED = IMAGE | TEXT. */
typedef enum fm_modality {
    FM_MODALITY_NONE = 0,
    FM_MODALITY_IMAGE = 1,
    FM_MODALITY_TEXT = 2,
    FM_MODALITY_PAIRED = 3
} fm_modality;

/* "none", "image", "text", "paired"; "?" out of range. */
const char *fm_modality_name(fm_modality modality);
/* Parses the names above (also "image-only", "text-only", "both"); FM_ERR_CONFIG otherwise. */
fm_status fm_modality_parse(const char *name, fm_modality *out);

typedef enum fm_scenario {
    FM_SCENARIO_ALIGNED = 0, /* every sample paired; only the label skew varies */
    FM_SCENARIO_MISSING,     /* every site paired, but each sample independently loses one modality */
    FM_SCENARIO_CROSS,       /* k sites image-only, the rest text-only */
    FM_SCENARIO_HYBRID,      /* each site holds each modality with probability 1 − q */
    FM_SCENARIO_COUNT
} fm_scenario;

/* "aligned", "missing", "cross", "hybrid"; "?" out of range. */
const char *fm_scenario_name(fm_scenario scenario);
/* Parses the names above (also "cross-modality", "missing-modality"); FM_ERR_CONFIG otherwise. */
fm_status fm_scenario_parse(const char *name, fm_scenario *out);

typedef struct fm_scenario_config {
    fm_scenario scenario;
    /* Dirichlet concentration of the label skew, > 0, used by EVERY scenario: FedMLLM builds each modality
     * scenario on its Dirichlet split "partition-alpha0.5-clt10" (1xbq1/FedMLLM data_gen/
     * gen_data_hateful_missing.py, gen_data_hateful_mix_aug.py, YOCO/data_gen/gen_data_hateful_single.py),
     * so the missing / cross / hybrid presets use alpha = 0.5; the aligned presets vary it (5 / 1 / 0.5). */
    double alpha;
    double missing_rate;     /* MISSING: probability a sample loses one modality, [0, 1] */
    int cross_k;             /* CROSS: number of image-only sites, [0, num_sites] (≥ 0 checked always) */
    double hybrid_q;         /* HYBRID: probability a site lacks a given modality, [0, 1] */
    fm_attribute label_attr; /* attribute whose classes the skew is over (default FM_ATTR_KIND) */
    int num_sites;           /* >= 1 (default 10) */
    int64_t min_site_size;   /* the Dirichlet split is redrawn until every site has this many (default 2) */
    uint64_t seed;
} fm_scenario_config;

/* aligned, alpha 0.5, missing_rate 0.3, cross_k 3, hybrid_q 0.2, label_attr kind, 10 sites,
 * min_site_size 2, seed 0. The per-scenario fields are only read by their scenario. */
fm_scenario_config fm_scenario_default_config(void);
/* FM_ERR_CONFIG naming the bad field. */
fm_status fm_scenario_validate(const fm_scenario_config *cfg);

/* Fills *cfg (starting from the defaults; seed, num_sites and label_attr are kept from *cfg) with one of
 * FedMLLM's twelve settings: "aligned-a5", "aligned-a1", "aligned-a0.5", "missing-0.3", "missing-0.4",
 * "missing-0.5", "cross-3", "cross-5", "cross-7", "hybrid-0.2", "hybrid-0.3", "hybrid-0.4".
 * FM_ERR_CONFIG listing the names for an unknown one. */
fm_status fm_scenario_setting(const char *name, fm_scenario_config *cfg);
/* The twelve names above in that order; *count gets 12. Static storage. */
const char *const *fm_scenario_setting_names(size_t *count);

/* One site's share of the train split. */
typedef struct fm_site_data {
    int site;                          /* 0 .. num_sites-1 */
    fm_modality modality;              /* what the site holds: the union of its samples' modalities (PAIRED under
                                          ALIGNED and MISSING; IMAGE or TEXT under CROSS; any non-NONE under HYBRID) */
    int64_t n;                         /* number of samples */
    int64_t *indices;                  /* (n) ascending indices into FM_SPLIT_TRAIN */
    uint8_t *sample_modality;          /* (n) fm_modality of each sample (IMAGE, TEXT or PAIRED), never NONE */
    int64_t n_paired, n_image, n_text; /* how many samples are PAIRED / IMAGE-only / TEXT-only */
} fm_site_data;

/* Splits the train split of the built-in dataset `synth` (labels of cfg->label_attr) over cfg->num_sites
 * sites under the scenario. *sites_out gets an array of cfg->num_sites sites (free with
 * fm_site_data_free). Every train index is in exactly one site. Definitions:
 *   ALIGNED: every sample PAIRED.
 *   MISSING: each sample independently loses a modality with probability missing_rate; the lost one is the
 *            image or the text with probability 1/2 each (so rate/2 IMAGE-only, rate/2 TEXT-only). FedMLLM's
 *            script instead drops image and text independently with probability rate each, leaving rate²
 *            of the samples with no input at all, which a contrastive/embedding model cannot use; here the
 *            rate is the fraction of samples missing a modality and every sample keeps one.
 *   CROSS:   a seeded permutation of the sites; its first cross_k are IMAGE-only, the rest TEXT-only
 *            (FedMLLM: random.sample of k image clients).
 *   HYBRID:  FedMLLM's definition (gen_data_hateful_mix_aug.py): each site draws image presence and text
 *            presence independently ~ Bernoulli(1 − q); both → PAIRED, one → that modality only; neither →
 *            each of its samples is independently IMAGE-only or TEXT-only with probability 1/2 (the site's
 *            modality is then PAIRED as the union, with n_paired = 0).
 * Deterministic from cfg->seed (the synth config's own seed only picks the data). */
fm_status fm_federation_split(const fm_scenario_config *cfg, const fm_synth_config *synth, fm_site_data **sites_out);

/* Frees the array from fm_federation_split and everything in it; NULL is a no-op. */
void fm_site_data_free(fm_site_data *sites, int num_sites);

#ifdef __cplusplus
}
#endif
#endif
