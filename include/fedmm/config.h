/* Run configuration: a YAML file (libfyaml) flattened into dotted keys ("train.lr", "data.seed"), then
 * `--set key=value` overrides. Readers take values by key with a default; afterwards
 * fm_config_check_unused() turns every key nobody read into an "unknown config key" error, so a typo in a
 * config never passes silently. */
#ifndef FEDMM_CONFIG_H
#define FEDMM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_config fm_config;

/* An empty configuration. */
fm_status fm_config_create(fm_config **out);
/* Parses a YAML file whose top level is a mapping. Nested mappings become dotted keys; sequences
 * become "key.0", "key.1", ...; scalars keep their text. Keys in the file override earlier ones. */
fm_status fm_config_load_yaml(fm_config *cfg, const char *path);
/* Parses YAML text (same rules); `origin` names it in messages. */
fm_status fm_config_load_yaml_string(fm_config *cfg, const char *text, size_t len, const char *origin);
/* Applies one "key=value" override (value may be empty; key must be non-empty). */
fm_status fm_config_set_assignment(fm_config *cfg, const char *assignment);
/* Sets key to value (origin may be NULL). */
fm_status fm_config_set(fm_config *cfg, const char *key, const char *value, const char *origin);
void fm_config_destroy(fm_config *cfg);

/* Typed getters. A missing key gives the default and FM_OK; a present key is marked used, and a value
 * that does not parse (or is out of [min, max] for the ranged ones) gives FM_ERR_CONFIG naming the key,
 * the value and where it came from. */
fm_status fm_config_str(fm_config *cfg, const char *key, const char *dflt, const char **out);
fm_status fm_config_int(fm_config *cfg, const char *key, int64_t dflt, int64_t min, int64_t max, int64_t *out);
fm_status fm_config_float(fm_config *cfg, const char *key, double dflt, double min, double max, double *out);
fm_status fm_config_bool(fm_config *cfg, const char *key, int dflt, int *out);
/* Whether key is present. Does not mark it used. */
int fm_config_has(const fm_config *cfg, const char *key);

/* Calls fn(key_without_prefix, value, ctx) for every key under "prefix." (every key when prefix is "";
 * marking each used); the first
 * failure stops the walk, and its message gets the key's origin prepended. */
typedef fm_status (*fm_config_visit_fn)(const char *key, const char *value, void *ctx);
fm_status fm_config_each(fm_config *cfg, const char *prefix, fm_config_visit_fn fn, void *ctx);

/* FM_ERR_CONFIG listing every key that no getter read ("unknown config key 'train.lrr' (file.yaml:7)"). */
fm_status fm_config_check_unused(const fm_config *cfg);

/* Writes every key: value (sorted) to a file, for the run directory's record. */
fm_status fm_config_dump(const fm_config *cfg, const char *path);

#ifdef __cplusplus
}
#endif
#endif
