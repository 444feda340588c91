/* CLIP checkpoints as safetensors: the whole model under Hugging Face names (loads real CLIPModel weights,
 * F32/F16/BF16) and the trainable vector under its slice names (PEFT's for adapters). Loading checks every
 * name and shape first and changes the model only when all of it is good. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fedmm/safetensors.h"
#include "model/clip_internal.h"

/* Host copies of the frozen and trainable buffers (one allocation; *frozen first). */
static fm_status host_copy(fm_clip *m, float **frozen, float **trainable)
{
    float *h = malloc((m->n_frozen + m->n_trainable + 1) * sizeof(float));
    if (!h)
        return fm_error(FM_ERR_NO_MEMORY, "clip: host copy of %zu parameters", m->n_frozen + m->n_trainable);
    fm_status st = fm_device_copy(h, FM_DEVICE_CPU, m->frozen, m->device, m->n_frozen * sizeof(float));
    if (st == FM_OK)
        st = fm_device_copy(h + m->n_frozen, FM_DEVICE_CPU, m->trainable, m->device, m->n_trainable * sizeof(float));
    if (st != FM_OK) {
        free(h);
        return st;
    }
    *frozen = h;
    *trainable = h + m->n_frozen;
    return FM_OK;
}

static float *entry_data(const clip_entry *e, float *frozen, float *trainable)
{
    return (e->trainable ? trainable : frozen) + e->offset;
}

static fm_status write_file(fm_st_writer *w, fm_clip *m, const char *path, int adapters)
{
    char buf[64];
    FM_TRY(fm_st_writer_set_metadata(w, "format", "pt"));
    FM_TRY(fm_st_writer_set_metadata(w, "fedmm_model", m->cfg.name[0] ? m->cfg.name : "clip"));
    if (adapters) {
        snprintf(buf, sizeof buf, "%d", m->cfg.full_finetune);
        FM_TRY(fm_st_writer_set_metadata(w, "fedmm_full_finetune", buf));
        if (!m->cfg.full_finetune) {
            snprintf(buf, sizeof buf, "%d", m->cfg.lora_rank);
            FM_TRY(fm_st_writer_set_metadata(w, "lora_rank", buf));
            snprintf(buf, sizeof buf, "%.9g", (double)m->cfg.lora_alpha);
            FM_TRY(fm_st_writer_set_metadata(w, "lora_alpha", buf));
        }
    }
    return fm_st_write(w, path);
}

fm_status fm_clip_save(fm_clip *m, const char *path)
{
    if (!m || !path)
        return fm_error(FM_ERR_INVALID_ARG, "clip save: NULL argument");
    float *hf = NULL, *ht = NULL;
    FM_TRY(host_copy(m, &hf, &ht));
    fm_st_writer *w = NULL;
    fm_status st = fm_st_writer_create(&w);
    for (size_t i = 0; i < m->n_entries && st == FM_OK; i++) {
        const clip_entry *e = &m->entries[i];
        if (!e->adapter)
            st = fm_st_writer_add_f32(w, e->name, FM_ST_F32, e->ndim, e->shape, entry_data(e, hf, ht));
    }
    if (st == FM_OK)
        st = write_file(w, m, path, 0);
    fm_st_writer_free(w);
    free(hf);
    return st;
}

fm_status fm_clip_save_adapters(fm_clip *m, const char *path)
{
    if (!m || !path)
        return fm_error(FM_ERR_INVALID_ARG, "clip save_adapters: NULL argument");
    float *hf = NULL, *ht = NULL;
    FM_TRY(host_copy(m, &hf, &ht));
    fm_st_writer *w = NULL;
    fm_status st = fm_st_writer_create(&w);
    for (size_t i = 0; i < m->n_slices && st == FM_OK; i++) {
        const fm_clip_slice *s = &m->slices[i];
        st = fm_st_writer_add_f32(w, s->name, FM_ST_F32, s->ndim, s->shape, ht + s->offset);
    }
    if (st == FM_OK)
        st = write_file(w, m, path, 1);
    fm_st_writer_free(w);
    free(hf);
    return st;
}

/* Buffers that HF checkpoints carry beside the parameters and fedmm recomputes. */
static int ignorable(const char *name)
{
    static const char suffix[] = "embeddings.position_ids";
    size_t n = strlen(name), k = sizeof suffix - 1;
    return n >= k && strcmp(name + n - k, suffix) == 0;
}

/* Appends `name` to a comma-separated list in buf (at most a few names, then a count). */
static void list_add(char *buf, size_t len, size_t *count, const char *name)
{
    if (*count < 4) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s'%s'", *count ? ", " : "", name);
    }
    (*count)++;
}

static void list_end(char *buf, size_t len, size_t count)
{
    if (count > 4) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, " and %zu more", count - 4);
    }
}

/* Checks that `file` holds exactly the tensors named by `name_of(i)` for i < n (plus ignorable buffers). */
typedef const char *(*name_fn)(const fm_clip *m, size_t i);

static fm_status check_names(const fm_clip *m, const fm_st_file *file, const char *what, const char *path, size_t n,
                             name_fn name_of)
{
    char list[640] = "";
    size_t missing = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = name_of(m, i);
        if (name && !fm_st_find(file, name))
            list_add(list, sizeof list, &missing, name);
    }
    if (missing) {
        list_end(list, sizeof list, missing);
        return fm_error(FM_ERR_RANGE, "%s %s: %zu tensor%s missing: %s", what, path, missing, missing == 1 ? "" : "s",
                        list);
    }
    size_t extra = 0;
    for (size_t j = 0; j < fm_st_count(file); j++) {
        const char *fname = fm_st_at(file, j)->name;
        int known = ignorable(fname);
        for (size_t i = 0; i < n && !known; i++) {
            const char *name = name_of(m, i);
            known = name && strcmp(name, fname) == 0;
        }
        if (!known)
            list_add(list, sizeof list, &extra, fname);
    }
    if (extra) {
        list_end(list, sizeof list, extra);
        return fm_error(FM_ERR_RANGE, "%s %s: %zu unexpected tensor%s: %s", what, path, extra, extra == 1 ? "" : "s",
                        list);
    }
    return FM_OK;
}

static const char *hf_name_at(const fm_clip *m, size_t i) { return m->entries[i].adapter ? NULL : m->entries[i].name; }

static const char *slice_name_at(const fm_clip *m, size_t i) { return m->slices[i].name; }

/* Reads one tensor; logit_scale may be stored as () or (1) (both occur in the wild). */
static fm_status read_tensor(const fm_st_file *file, const char *name, float *dst, size_t numel, int ndim,
                             const int64_t *shape)
{
    if (ndim == 0) {
        const fm_st_tensor_info *info = fm_st_find(file, name);
        if (info && info->numel == 1 && info->ndim <= 1)
            return fm_st_info_to_f32(info, dst, 1);
    }
    return fm_st_read_f32(file, name, dst, numel, ndim, shape);
}

/* Copies the staged host buffers back to the device. */
static fm_status commit(fm_clip *m, const float *hf, const float *ht)
{
    FM_TRY(fm_device_copy(m->frozen, m->device, hf, FM_DEVICE_CPU, m->n_frozen * sizeof(float)));
    return fm_device_copy(m->trainable, m->device, ht, FM_DEVICE_CPU, m->n_trainable * sizeof(float));
}

fm_status fm_clip_load(fm_clip *m, const char *path)
{
    if (!m || !path)
        return fm_error(FM_ERR_INVALID_ARG, "clip load: NULL argument");
    if (m->merged)
        return fm_error(FM_ERR_STATE, "clip load: the LoRA adapters are merged; unmerge them first");
    fm_st_file *file = NULL;
    FM_TRY(fm_st_open(&file, path));
    float *hf = NULL, *ht = NULL;
    fm_status st = check_names(m, file, "checkpoint", path, m->n_entries, hf_name_at);
    if (st == FM_OK)
        st = host_copy(m, &hf, &ht);
    for (size_t i = 0; i < m->n_entries && st == FM_OK; i++) {
        const clip_entry *e = &m->entries[i];
        if (!e->adapter)
            st = read_tensor(file, e->name, entry_data(e, hf, ht), e->numel, e->ndim, e->shape);
    }
    if (st == FM_OK)
        st = commit(m, hf, ht);
    free(hf);
    fm_st_close(file);
    return st;
}

/* A metadata value recorded by save_adapters must match the model's. */
static fm_status check_meta(const fm_st_file *file, const char *path, const char *key, double want)
{
    const char *v = fm_st_metadata(file, key);
    if (!v)
        return FM_OK;
    char *end = NULL;
    double got = strtod(v, &end);
    if (end == v || *end != '\0')
        return fm_error(FM_ERR_PARSE, "adapters %s: metadata %s = '%s' is not a number", path, key, v);
    if (got != want)
        return fm_error(FM_ERR_CONFIG, "adapters %s: %s is %s in the file but %.9g in the model", path, key, v, want);
    return FM_OK;
}

fm_status fm_clip_load_adapters(fm_clip *m, const char *path)
{
    if (!m || !path)
        return fm_error(FM_ERR_INVALID_ARG, "clip load_adapters: NULL argument");
    if (m->merged)
        return fm_error(FM_ERR_STATE, "clip load_adapters: the LoRA adapters are merged; unmerge them first");
    fm_st_file *file = NULL;
    FM_TRY(fm_st_open(&file, path));
    float *hf = NULL, *ht = NULL;
    fm_status st = check_meta(file, path, "fedmm_full_finetune", m->cfg.full_finetune);
    if (st == FM_OK && !m->cfg.full_finetune)
        st = check_meta(file, path, "lora_rank", m->cfg.lora_rank);
    if (st == FM_OK && !m->cfg.full_finetune)
        st = check_meta(file, path, "lora_alpha", (double)m->cfg.lora_alpha);
    if (st == FM_OK)
        st = check_names(m, file, "adapters", path, m->n_slices, slice_name_at);
    if (st == FM_OK)
        st = host_copy(m, &hf, &ht);
    for (size_t i = 0; i < m->n_slices && st == FM_OK; i++) {
        const fm_clip_slice *s = &m->slices[i];
        st = read_tensor(file, s->name, ht + s->offset, s->numel, s->ndim, s->shape);
    }
    if (st == FM_OK)
        st = fm_device_copy(m->trainable, m->device, ht, FM_DEVICE_CPU, m->n_trainable * sizeof(float));
    free(hf);
    fm_st_close(file);
    return st;
}
