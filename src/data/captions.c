/* Image–caption lists from JSON Lines and COCO captions files (see fedmm/captions.h), parsed with cJSON.
 * Images are deduplicated by resolved path (JSONL) or by id (COCO) through small open-addressing hash
 * tables, so that loading stays linear in the number of captions. */
#include "fedmm/captions.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#define MAX_FILE_BYTES ((size_t)1 << 31)

/* ---- small helpers -------------------------------------------------------------------------------------- */

static fm_status read_text(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error(FM_ERR_IO, "captions %s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return fm_error(FM_ERR_IO, "captions %s: not a regular file", path);
    }
    const long size = (long)sb.st_size;
    if ((unsigned long)size > MAX_FILE_BYTES) {
        fclose(f);
        return fm_error(FM_ERR_RANGE, "captions %s: %ld bytes exceeds the limit of %zu", path, size, MAX_FILE_BYTES);
    }
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return fm_error(FM_ERR_NO_MEMORY, "captions %s: no memory for %ld bytes", path, size);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    int bad = ferror(f);
    fclose(f);
    if (got != (size_t)size || bad) {
        free(buf);
        return fm_error(FM_ERR_IO, "captions %s: read %zu of %ld bytes", path, got, size);
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return FM_OK;
}

/* Directory part of `path` with a trailing '/', or "" when there is none. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) + 1 : 0;
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}

static char *join_path(const char *dir, const char *rel)
{
    if (rel[0] == '/')
        dir = "";
    size_t a = strlen(dir), b = strlen(rel);
    char *p = malloc(a + b + 1);
    if (p) {
        memcpy(p, dir, a);
        memcpy(p + a, rel, b);
        p[a + b] = '\0';
    }
    return p;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

static uint64_t hash_bytes(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

/* Growing set under construction: items plus distinct images, with a hash table (slot → image index + 1)
 * keyed by path (JSONL) or by numeric id (COCO). */
typedef struct builder {
    fm_caption_set set;
    size_t item_cap, image_cap;
    int64_t *slots;     /* image index + 1, 0 = empty */
    int64_t *slot_keys; /* COCO ids, parallel to slots */
    size_t nslots;
} builder;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return 0;
    *p = q;
    *cap = n;
    return 1;
}

static int rehash(builder *b, int by_id)
{
    size_t n = b->nslots ? b->nslots * 2 : 1024;
    int64_t *slots = calloc(n, sizeof *slots), *keys = by_id ? calloc(n, sizeof *keys) : NULL;
    if (!slots || (by_id && !keys)) {
        free(slots);
        free(keys);
        return 0;
    }
    for (size_t i = 0; i < b->nslots; i++) {
        if (!b->slots[i])
            continue;
        int64_t idx = b->slots[i] - 1;
        uint64_t h = by_id ? hash_u64((uint64_t)b->slot_keys[i]) : hash_bytes(b->set.image_paths[idx]);
        size_t s = (size_t)(h & (n - 1));
        while (slots[s])
            s = (s + 1) & (n - 1);
        slots[s] = b->slots[i];
        if (by_id)
            keys[s] = b->slot_keys[i];
    }
    free(b->slots);
    free(b->slot_keys);
    b->slots = slots;
    b->slot_keys = keys;
    b->nslots = n;
    return 1;
}

/* Finds the slot of a path (by_id = 0) or id (by_id = 1); *found says whether it is occupied by that key. */
static size_t find_slot(const builder *b, const char *path, int64_t id, int by_id, int *found)
{
    uint64_t h = by_id ? hash_u64((uint64_t)id) : hash_bytes(path);
    size_t s = (size_t)(h & (b->nslots - 1));
    *found = 0;
    if (b->set.num_images == 0)
        return s; /* an empty table has no occupied slot */
    while (b->slots[s]) {
        int64_t idx = b->slots[s] - 1;
        if (by_id ? b->slot_keys[s] == id : strcmp(b->set.image_paths[idx], path) == 0) {
            *found = 1;
            return s;
        }
        s = (s + 1) & (b->nslots - 1);
    }
    return s;
}

/* Index of the image with this path (JSONL) / id (COCO), adding it if new. Takes ownership of `path`
 * (freed when the image already exists). Returns -1 on allocation failure. */
static int64_t intern_image(builder *b, char *path, int64_t id, int by_id)
{
    if ((b->set.num_images + 1) * 2 > b->nslots && !rehash(b, by_id)) {
        free(path);
        return -1;
    }
    int found;
    size_t s = find_slot(b, path, id, by_id, &found);
    if (found) {
        free(path);
        return b->slots[s] - 1;
    }
    if (!grow((void **)&b->set.image_paths, &b->image_cap, b->set.num_images + 1, sizeof(char *))) {
        free(path);
        return -1;
    }
    int64_t idx = (int64_t)b->set.num_images++;
    b->set.image_paths[idx] = path;
    b->slots[s] = idx + 1;
    if (by_id)
        b->slot_keys[s] = id;
    return idx;
}

static int add_item(builder *b, int64_t image_index, const char *caption)
{
    if (!grow((void **)&b->set.items, &b->item_cap, b->set.count + 1, sizeof(fm_caption_item)))
        return 0;
    char *c = dup_str(caption);
    if (!c)
        return 0;
    fm_caption_item *it = &b->set.items[b->set.count++];
    it->caption = c;
    it->image_index = image_index;
    it->image_path = NULL; /* set in finish(): image_paths may still move */
    return 1;
}

static void builder_free(builder *b)
{
    free(b->slots);
    free(b->slot_keys);
    fm_captions_free(&b->set);
}

static void finish(builder *b, fm_caption_set *out)
{
    for (size_t i = 0; i < b->set.count; i++)
        b->set.items[i].image_path = b->set.image_paths[b->set.items[i].image_index];
    free(b->slots);
    free(b->slot_keys);
    *out = b->set;
}

/* Parses exactly one JSON value from text[0, len): trailing non-blank characters are an error (cJSON alone
 * stops after the first value). */
static cJSON *parse_exact(const char *text, size_t len)
{
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!v)
        return NULL;
    for (const char *c = end; c && c < text + len; c++) {
        if (*c != ' ' && *c != '\t' && *c != '\r' && *c != '\n') {
            cJSON_Delete(v);
            return NULL;
        }
    }
    return v;
}

/* ---- JSON Lines ----------------------------------------------------------------------------------------- */

static fm_status parse_jsonl(const char *path, char *text, size_t len, fm_caption_set *out)
{
    builder b;
    memset(&b, 0, sizeof b);
    char *dir = dir_of(path);
    if (!dir)
        return fm_error(FM_ERR_NO_MEMORY, "captions %s: out of memory", path);
    fm_status st = FM_OK;
    size_t pos = 0, line_no = 0;
    if (len >= 3 && (uint8_t)text[0] == 0xEF && (uint8_t)text[1] == 0xBB && (uint8_t)text[2] == 0xBF)
        pos = 3; /* UTF-8 byte order mark */
    while (pos < len && st == FM_OK) {
        line_no++;
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        size_t next = end + 1, stop = end;
        while (stop > pos && (text[stop - 1] == '\r' || text[stop - 1] == ' ' || text[stop - 1] == '\t'))
            stop--;
        size_t start = pos;
        while (start < stop && (text[start] == ' ' || text[start] == '\t'))
            start++;
        pos = next;
        if (start == stop)
            continue; /* blank line */
        cJSON *obj = parse_exact(text + start, stop - start);
        if (!obj) {
            st = fm_error(FM_ERR_PARSE, "captions %s:%zu: not valid JSON", path, line_no);
            break;
        }
        const cJSON *img = cJSON_GetObjectItemCaseSensitive(obj, "image");
        const cJSON *cap = cJSON_GetObjectItemCaseSensitive(obj, "caption");
        if (!cJSON_IsObject(obj))
            st = fm_error(FM_ERR_PARSE, "captions %s:%zu: expected a JSON object", path, line_no);
        else if (!cJSON_IsString(img) || !img->valuestring[0])
            st = fm_error(FM_ERR_PARSE, "captions %s:%zu: missing or empty string field \"image\"", path, line_no);
        else if (!cJSON_IsString(cap))
            st = fm_error(FM_ERR_PARSE, "captions %s:%zu: missing string field \"caption\"", path, line_no);
        if (st == FM_OK) {
            char *full = join_path(dir, img->valuestring);
            int64_t idx = full ? intern_image(&b, full, 0, 0) : -1;
            if (idx < 0 || !add_item(&b, idx, cap->valuestring))
                st = fm_error(FM_ERR_NO_MEMORY, "captions %s:%zu: out of memory", path, line_no);
        }
        cJSON_Delete(obj);
    }
    free(dir);
    if (st != FM_OK) {
        builder_free(&b);
        return st;
    }
    finish(&b, out);
    return FM_OK;
}

/* ---- COCO ----------------------------------------------------------------------------------------------- */

/* A JSON number that is an exact integer. */
static int get_int_id(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || (double)(int64_t)d != d)
        return 0;
    *out = (int64_t)d;
    return 1;
}

static fm_status parse_coco(const char *path, const cJSON *root, fm_caption_set *out)
{
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(root, "images");
    const cJSON *annotations = cJSON_GetObjectItemCaseSensitive(root, "annotations");
    if (!cJSON_IsArray(images))
        return fm_error(FM_ERR_PARSE, "captions %s: COCO file has no \"images\" array", path);
    if (!cJSON_IsArray(annotations))
        return fm_error(FM_ERR_PARSE, "captions %s: COCO file has no \"annotations\" array", path);
    /* Table id → entry of "images" (first pass), then images are interned as annotations use them. */
    builder ids;
    memset(&ids, 0, sizeof ids);
    builder b;
    memset(&b, 0, sizeof b);
    char *dir = dir_of(path);
    const char **file_names = NULL; /* "file_name" of each entry of "images", borrowed from root */
    size_t names_cap = 0, n_names = 0;
    fm_status st = dir ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "captions %s: out of memory", path);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, images)
    {
        if (st != FM_OK)
            break;
        int64_t id;
        const cJSON *fname = cJSON_GetObjectItemCaseSensitive(e, "file_name");
        if (!cJSON_IsObject(e) || !get_int_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id)) {
            st = fm_error(FM_ERR_PARSE, "captions %s: images[%zu] has no integer \"id\"", path, i);
        } else if (!cJSON_IsString(fname) || !fname->valuestring[0]) {
            st = fm_error(FM_ERR_PARSE, "captions %s: images[%zu] (id %lld) has no string \"file_name\"", path, i,
                          (long long)id);
        } else {
            /* The id table reuses the builder: its "paths" are placeholders, its index is into file_names. */
            size_t before = ids.set.num_images;
            char *placeholder = dup_str("");
            int64_t idx = placeholder ? intern_image(&ids, placeholder, id, 1) : -1;
            if (idx < 0 || !grow((void **)&file_names, &names_cap, n_names + 1, sizeof *file_names))
                st = fm_error(FM_ERR_NO_MEMORY, "captions %s: out of memory", path);
            else if (ids.set.num_images == before)
                st = fm_error(FM_ERR_PARSE, "captions %s: images[%zu]: duplicate id %lld", path, i, (long long)id);
            else
                file_names[n_names++] = fname->valuestring;
        }
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(e, annotations)
    {
        if (st != FM_OK)
            break;
        int64_t id;
        const cJSON *cap = cJSON_GetObjectItemCaseSensitive(e, "caption");
        if (!cJSON_IsObject(e) || !get_int_id(cJSON_GetObjectItemCaseSensitive(e, "image_id"), &id)) {
            st = fm_error(FM_ERR_PARSE, "captions %s: annotations[%zu] has no integer \"image_id\"", path, i);
        } else if (!cJSON_IsString(cap)) {
            st = fm_error(FM_ERR_PARSE, "captions %s: annotations[%zu] has no string \"caption\"", path, i);
        } else {
            int found = 0;
            size_t s = ids.nslots ? find_slot(&ids, NULL, id, 1, &found) : 0;
            if (!found) {
                st = fm_error(FM_ERR_PARSE, "captions %s: annotations[%zu]: image_id %lld is not among \"images\"",
                              path, i, (long long)id);
            } else {
                char *full = join_path(dir, file_names[ids.slots[s] - 1]);
                int64_t idx = full ? intern_image(&b, full, id, 1) : -1;
                if (idx < 0 || !add_item(&b, idx, cap->valuestring))
                    st = fm_error(FM_ERR_NO_MEMORY, "captions %s: out of memory", path);
            }
        }
        i++;
    }
    free(dir);
    free(file_names);
    builder_free(&ids);
    if (st != FM_OK) {
        builder_free(&b);
        return st;
    }
    finish(&b, out);
    return FM_OK;
}

/* ---- public --------------------------------------------------------------------------------------------- */

static fm_status begin(const char *path, fm_caption_set *out, char **text, size_t *len)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "captions: output is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return fm_error(FM_ERR_INVALID_ARG, "captions: path is NULL");
    return read_text(path, text, len);
}

fm_status fm_captions_load_jsonl(const char *path, fm_caption_set *out)
{
    char *text = NULL;
    size_t len = 0;
    FM_TRY(begin(path, out, &text, &len));
    fm_status st = parse_jsonl(path, text, len, out);
    free(text);
    return st;
}

static fm_status load_coco_text(const char *path, const char *text, size_t len, fm_caption_set *out)
{
    cJSON *root = parse_exact(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t line = 1;
        if (at && at >= text && at <= text + len)
            for (const char *c = text; c < at; c++)
                line += *c == '\n';
        return fm_error(FM_ERR_PARSE, "captions %s:%zu: not valid JSON", path, line);
    }
    fm_status st = cJSON_IsObject(root) ? parse_coco(path, root, out)
                                        : fm_error(FM_ERR_PARSE, "captions %s: COCO file is not a JSON object", path);
    cJSON_Delete(root);
    return st;
}

fm_status fm_captions_load_coco(const char *path, fm_caption_set *out)
{
    char *text = NULL;
    size_t len = 0;
    FM_TRY(begin(path, out, &text, &len));
    fm_status st = load_coco_text(path, text, len, out);
    free(text);
    return st;
}

fm_status fm_captions_load(const char *path, fm_caption_set *out)
{
    char *text = NULL;
    size_t len = 0;
    FM_TRY(begin(path, out, &text, &len));
    size_t n = strlen(path);
    int coco = 0;
    if (!(n >= 6 && strcmp(path + n - 6, ".jsonl") == 0)) {
        /* A whole-file JSON object with "annotations" is COCO; a JSONL file fails to parse as one value
         * (or, with a single line, has no "annotations"). */
        cJSON *root = parse_exact(text, len);
        coco = root && cJSON_IsObject(root) && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "annotations"));
        fm_status st = FM_OK;
        if (coco)
            st = parse_coco(path, root, out);
        cJSON_Delete(root);
        if (coco) {
            free(text);
            return st;
        }
    }
    fm_status st = parse_jsonl(path, text, len, out);
    free(text);
    return st;
}

void fm_captions_free(fm_caption_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->count; i++)
        free(set->items[i].caption);
    for (size_t i = 0; i < set->num_images; i++)
        free(set->image_paths[i]);
    free(set->items);
    free(set->image_paths);
    memset(set, 0, sizeof *set);
}
