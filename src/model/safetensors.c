/* safetensors reader (validating, mmap or in-memory) and atomic writer; see include/fedmm/safetensors.h
 * for the format, the validation rules and who owns what. */
#include "fedmm/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; fedmm supports little-endian hosts only"
#endif

/* Integers above 2^53 are not exact in the double cJSON stores them in. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* ---- dtypes ------------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[FM_ST_DTYPE_COUNT] = {
    [FM_ST_BOOL] = {"BOOL", 1},       [FM_ST_U8] = {"U8", 1},           [FM_ST_I8] = {"I8", 1},
    [FM_ST_F8_E5M2] = {"F8_E5M2", 1}, [FM_ST_F8_E4M3] = {"F8_E4M3", 1}, [FM_ST_I16] = {"I16", 2},
    [FM_ST_U16] = {"U16", 2},         [FM_ST_F16] = {"F16", 2},         [FM_ST_BF16] = {"BF16", 2},
    [FM_ST_I32] = {"I32", 4},         [FM_ST_U32] = {"U32", 4},         [FM_ST_F32] = {"F32", 4},
    [FM_ST_F64] = {"F64", 8},         [FM_ST_I64] = {"I64", 8},         [FM_ST_U64] = {"U64", 8},
};

const char *fm_st_dtype_name(fm_st_dtype dtype)
{
    if ((int)dtype < 0 || dtype >= FM_ST_DTYPE_COUNT)
        return "?";
    return st_dtypes[dtype].name;
}

size_t fm_st_dtype_size(fm_st_dtype dtype)
{
    if ((int)dtype < 0 || dtype >= FM_ST_DTYPE_COUNT)
        return 0;
    return st_dtypes[dtype].size;
}

fm_status fm_st_dtype_from_name(fm_st_dtype *out, const char *name)
{
    if (out == NULL || name == NULL)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_dtype_from_name: NULL argument");
    for (int i = 0; i < FM_ST_DTYPE_COUNT; i++) {
        if (strcmp(st_dtypes[i].name, name) == 0) {
            *out = (fm_st_dtype)i;
            return FM_OK;
        }
    }
    return fm_error(FM_ERR_PARSE, "unknown safetensors dtype '%s'", name);
}

fm_status fm_st_dtype_to_fm(fm_dtype *out, fm_st_dtype dtype)
{
    if (out == NULL)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_dtype_to_fm: NULL out");
    switch (dtype) {
    case FM_ST_F32: *out = FM_F32; return FM_OK;
    case FM_ST_F16: *out = FM_F16; return FM_OK;
    case FM_ST_BF16: *out = FM_BF16; return FM_OK;
    case FM_ST_I32: *out = FM_I32; return FM_OK;
    case FM_ST_I64: *out = FM_I64; return FM_OK;
    case FM_ST_U8: *out = FM_U8; return FM_OK;
    default: break;
    }
    return fm_error(FM_ERR_DTYPE, "safetensors dtype %s has no fedmm tensor dtype", fm_st_dtype_name(dtype));
}

/* ---- float conversions ------------------------------------------------------------------------- */

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t fm_st_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u); /* NaN: keep sign and top payload, force quiet */
    /* Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even; a carry out of the
     * mantissa correctly bumps the exponent (up to inf). */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float fm_st_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t fm_st_f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t ax = u & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 rounds to inf (65520 is the tie between 65504 and 2^16: even wins) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a half subnormal (or zero) */
        uint32_t exp = ax >> 23;
        uint32_t mant = (ax & 0x7fffffu) | (exp ? 0x800000u : 0);
        /* value = mant·2^(exp-150) = m·2^-24 with m = mant·2^(exp-126). */
        uint32_t shift = 126 - (exp ? exp : 1);
        if (shift >= 25) /* below 2^-25 · ... : rounds to zero */
            return sign;
        uint32_t m = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (m & 1u)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = ax - 0x38000000u; /* rebias the exponent from 127 to 15 */
    uint32_t h = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float fm_st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        if (mant == 0)
            return bits_f32(sign);
        uint32_t e = 113; /* 2^-14 in float32's bias; normalise the subnormal */
        while (!(mant & 0x400u)) {
            mant <<= 1;
            e--;
        }
        return bits_f32(sign | (e << 23) | ((mant & 0x3ffu) << 13));
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

void fm_st_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = fm_st_f32_to_bf16(src[i]);
}

void fm_st_f32_to_f16_n(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = fm_st_f32_to_f16(src[i]);
}

void fm_st_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = fm_st_bf16_to_f32(src[i]);
}

void fm_st_f16_to_f32_n(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = fm_st_f16_to_f32(src[i]);
}

/* ---- shared helpers ---------------------------------------------------------------------------- */

/* "(2, 3, 4)" into buf; a negative entry prints as "*" (any size). */
static const char *shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t used = 0;
    int k = snprintf(buf, len, "(");
    used = k > 0 ? (size_t)k : 0;
    for (int i = 0; i < ndim && used < len; i++) {
        if (shape[i] < 0)
            k = snprintf(buf + used, len - used, "%s*", i ? ", " : "");
        else
            k = snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
        used += k > 0 ? (size_t)k : 0;
    }
    if (used < len)
        snprintf(buf + used, len - used, ")");
    return buf;
}

/* numel and bytes of a shape, or FM_ERR_RANGE on overflow of size_t. */
static int shape_sizes(int ndim, const int64_t *shape, size_t elsize, size_t *numel, size_t *nbytes)
{
    /* A zero dim makes the tensor empty whatever the other dims are (as the reference computes it). */
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) {
            *numel = 0;
            *nbytes = 0;
            return 1;
        }
    }
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        size_t d = (size_t)shape[i];
        if (n > SIZE_MAX / d)
            return 0;
        n *= d;
    }
    if (elsize != 0 && n > SIZE_MAX / elsize)
        return 0;
    *numel = n;
    *nbytes = n * elsize;
    return 1;
}

/* ---- reading ----------------------------------------------------------------------------------- */

enum { ST_BORROWED = 0, ST_MALLOC, ST_MMAP };

/* One entry of the name index: a tensor of the file's table, looked up by its name. */
typedef struct st_name_ref {
    const fm_st_tensor_info *tensor;
} st_name_ref;

struct fm_st_file {
    char *source;               /* path or "<memory>", for messages */
    const unsigned char *image; /* the whole file */
    size_t image_len;
    int storage;                /* ST_BORROWED / ST_MALLOC / ST_MMAP */
    fm_st_tensor_info *tensors; /* in data order */
    size_t n_tensors;
    st_name_ref *by_name; /* sorted by name, for bsearch */
    char **meta_keys;
    char **meta_values;
    size_t n_meta;
};

static void file_free(fm_st_file *f)
{
    if (f == NULL)
        return;
    if (f->tensors != NULL) {
        for (size_t i = 0; i < f->n_tensors; i++)
            free((char *)f->tensors[i].name);
    }
    free(f->tensors);
    free(f->by_name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    if (f->storage == ST_MALLOC)
        free((void *)f->image);
    else if (f->storage == ST_MMAP && f->image != NULL)
        munmap((void *)f->image, f->image_len);
    free(f->source);
    free(f);
}

void fm_st_close(fm_st_file *file) { file_free(file); }

/* A non-negative integer exact in a double, from a JSON number; what = field name for the message. */
static fm_status json_uint(const cJSON *item, uint64_t *out, const char *src, const char *tname, const char *what)
{
    *out = 0;
    if (!cJSON_IsNumber(item))
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': %s is not a number", src, tname, what);
    double v = item->valuedouble;
    if (v < 0)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': %s is negative (%g)", src, tname, what, v);
    if (!(v < ST_MAX_JSON_INT) || v != floor(v))
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': %s is not an integer below 2^53 (%g)", src, tname, what, v);
    *out = (uint64_t)v;
    return FM_OK;
}

static fm_status parse_metadata(fm_st_file *f, const cJSON *meta)
{
    const char *src = f->source;
    if (!cJSON_IsObject(meta))
        return fm_error(FM_ERR_PARSE, "%s: \"__metadata__\" is not a JSON object", src);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    if (n == 0)
        return FM_OK;
    /* Called once per file (the caller rejects a second "__metadata__"), on an empty table. */
    f->n_meta = 0;
    f->meta_keys = calloc(n, sizeof *f->meta_keys);
    f->meta_values = calloc(n, sizeof *f->meta_values);
    if (f->meta_keys == NULL || f->meta_values == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "%s: no memory for %zu metadata entries", src, n);
    const cJSON *item;
    cJSON_ArrayForEach(item, meta)
    {
        if (!cJSON_IsString(item) || item->valuestring == NULL)
            return fm_error(FM_ERR_PARSE, "%s: metadata '%s' is not a string", src, item->string ? item->string : "?");
        for (size_t i = 0; i < f->n_meta; i++) {
            if (strcmp(f->meta_keys[i], item->string) == 0)
                return fm_error(FM_ERR_PARSE, "%s: duplicate metadata key '%s'", src, item->string);
        }
        f->meta_keys[f->n_meta] = strdup(item->string);
        f->meta_values[f->n_meta] = strdup(item->valuestring);
        if (f->meta_keys[f->n_meta] == NULL || f->meta_values[f->n_meta] == NULL) {
            free(f->meta_keys[f->n_meta]);
            free(f->meta_values[f->n_meta]);
            return fm_error(FM_ERR_NO_MEMORY, "%s: no memory for metadata", src);
        }
        f->n_meta++;
    }
    return FM_OK;
}

/* Parses one tensor entry into *t (name not yet set); data_len bounds the offsets. */
static fm_status parse_entry(const fm_st_file *f, const cJSON *entry, size_t data_len, fm_st_tensor_info *t)
{
    const char *src = f->source;
    const char *name = entry->string;
    if (name[0] == '\0')
        return fm_error(FM_ERR_PARSE, "%s: a tensor has an empty name", src);
    if (!cJSON_IsObject(entry))
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': entry is not a JSON object", src, name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (dtype == NULL)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': missing \"dtype\"", src, name);
    if (shape == NULL)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': missing \"shape\"", src, name);
    if (offs == NULL)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': missing \"data_offsets\"", src, name);
    if (!cJSON_IsString(dtype) || dtype->valuestring == NULL)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': \"dtype\" is not a string", src, name);
    if (!cJSON_IsArray(shape))
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': \"shape\" is not an array", src, name);
    if (!cJSON_IsArray(offs))
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': \"data_offsets\" is not an array", src, name);

    int found = 0;
    for (int i = 0; i < FM_ST_DTYPE_COUNT; i++) {
        if (strcmp(st_dtypes[i].name, dtype->valuestring) == 0) {
            t->dtype = (fm_st_dtype)i;
            found = 1;
            break;
        }
    }
    if (!found)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': unknown dtype \"%s\"", src, name, dtype->valuestring);

    int ndim = cJSON_GetArraySize(shape);
    if (ndim > FM_ST_MAX_DIMS)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': %d dims, at most %d supported", src, name, ndim,
                        FM_ST_MAX_DIMS);
    t->ndim = ndim;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape)
    {
        char what[32];
        uint64_t v;
        snprintf(what, sizeof what, "shape[%d]", d);
        FM_TRY(json_uint(dim, &v, src, name, what));
        if (v > (uint64_t)INT64_MAX)
            return fm_error(FM_ERR_RANGE, "%s: tensor '%s': %s too large", src, name, what);
        t->shape[d++] = (int64_t)v;
    }
    char sbuf[256];
    if (!shape_sizes(ndim, t->shape, st_dtypes[t->dtype].size, &t->numel, &t->nbytes))
        return fm_error(FM_ERR_RANGE, "%s: tensor '%s': shape %s of %s overflows the address space", src, name,
                        shape_str(sbuf, sizeof sbuf, ndim, t->shape), st_dtypes[t->dtype].name);

    if (cJSON_GetArraySize(offs) != 2)
        return fm_error(FM_ERR_PARSE, "%s: tensor '%s': \"data_offsets\" has %d entries, expected 2", src, name,
                        cJSON_GetArraySize(offs));
    uint64_t begin, end;
    FM_TRY(json_uint(offs->child, &begin, src, name, "data_offsets[0]"));
    FM_TRY(json_uint(offs->child->next, &end, src, name, "data_offsets[1]"));
    if (begin > end)
        return fm_error(FM_ERR_RANGE, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", src, name,
                        (unsigned long long)begin, (unsigned long long)end);
    if (end > data_len)
        return fm_error(FM_ERR_RANGE, "%s: tensor '%s': data_offsets [%llu, %llu] reach past the %zu-byte data buffer",
                        src, name, (unsigned long long)begin, (unsigned long long)end, data_len);
    if (end - begin != t->nbytes)
        return fm_error(FM_ERR_RANGE, "%s: tensor '%s': data_offsets [%llu, %llu] span %llu bytes but %s %s needs %zu",
                        src, name, (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)(end - begin), st_dtypes[t->dtype].name,
                        shape_str(sbuf, sizeof sbuf, ndim, t->shape), t->nbytes);
    t->offset = (size_t)begin;
    return FM_OK;
}

static int cmp_offset(const void *a, const void *b)
{
    const fm_st_tensor_info *x = a, *y = b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name_ref(const void *a, const void *b)
{
    const st_name_ref *x = a, *y = b;
    return strcmp(x->tensor->name, y->tensor->name);
}

/* Validates f->image and fills the tensor table. */
static fm_status parse_image(fm_st_file *f)
{
    const char *src = f->source;
    const unsigned char *p = f->image;
    size_t len = f->image_len;
    if (len < 8)
        return fm_error(FM_ERR_PARSE, "%s: %zu bytes, too short for the 8-byte header length", src, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > FM_ST_MAX_HEADER)
        return fm_error(FM_ERR_PARSE, "%s: header length %llu exceeds the %u-byte limit (not a safetensors file?)", src,
                        (unsigned long long)hlen, FM_ST_MAX_HEADER);
    if (hlen > len - 8)
        return fm_error(FM_ERR_PARSE, "%s: header length %llu but only %zu bytes follow it (truncated file?)", src,
                        (unsigned long long)hlen, len - 8);
    size_t n = (size_t)hlen;
    const unsigned char *data = p + 8 + n;
    size_t data_len = len - 8 - n;

    /* cJSON gets a NUL-terminated private copy so that nothing can read past the header. */
    char *text = malloc(n + 1);
    if (text == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "%s: no memory for a %zu-byte header", src, n);
    memcpy(text, p + 8, n);
    text[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (root == NULL) {
        size_t at = end != NULL && end >= text ? (size_t)(end - text) : 0;
        free(text);
        return fm_error(FM_ERR_PARSE, "%s: header is not valid JSON (error near byte %zu of %zu)", src, at, n);
    }
    /* The reference pads the header with spaces; anything else after the object is garbage. */
    for (const char *q = end; q < text + n; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            size_t at = (size_t)(q - text);
            cJSON_Delete(root);
            free(text);
            return fm_error(FM_ERR_PARSE, "%s: unexpected bytes after the header's JSON object (byte %zu of %zu)", src,
                            at, n);
        }
    }
    free(text);

    fm_status st = FM_OK;
    if (!cJSON_IsObject(root)) {
        st = fm_error(FM_ERR_PARSE, "%s: header is JSON but not an object", src);
        goto done;
    }
    size_t count = (size_t)cJSON_GetArraySize(root);
    f->tensors = calloc(count ? count : 1, sizeof *f->tensors);
    if (f->tensors == NULL) {
        st = fm_error(FM_ERR_NO_MEMORY, "%s: no memory for %zu tensor entries", src, count);
        goto done;
    }
    int seen_meta = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root)
    {
        if (strcmp(entry->string, "__metadata__") == 0) {
            if (seen_meta) {
                st = fm_error(FM_ERR_PARSE, "%s: \"__metadata__\" appears twice", src);
                goto done;
            }
            seen_meta = 1;
            st = parse_metadata(f, entry);
            if (st != FM_OK)
                goto done;
            continue;
        }
        fm_st_tensor_info *t = &f->tensors[f->n_tensors];
        memset(t, 0, sizeof *t);
        st = parse_entry(f, entry, data_len, t);
        if (st != FM_OK)
            goto done;
        t->name = strdup(entry->string);
        if (t->name == NULL) {
            st = fm_error(FM_ERR_NO_MEMORY, "%s: no memory for tensor names", src);
            goto done;
        }
        t->data = data + t->offset;
        f->n_tensors++;
    }

    /* Names: unique. */
    f->by_name = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *f->by_name);
    if (f->by_name == NULL) {
        st = fm_error(FM_ERR_NO_MEMORY, "%s: no memory for the name index", src);
        goto done;
    }
    for (size_t i = 0; i < f->n_tensors; i++)
        f->by_name[i].tensor = &f->tensors[i];
    qsort(f->by_name, f->n_tensors, sizeof *f->by_name, cmp_name_ref);
    for (size_t i = 1; i < f->n_tensors; i++) {
        if (strcmp(f->by_name[i - 1].tensor->name, f->by_name[i].tensor->name) == 0) {
            st = fm_error(FM_ERR_PARSE, "%s: tensor '%s' appears twice in the header", src, f->by_name[i].tensor->name);
            goto done;
        }
    }

    /* Offsets: sorted by begin they must tile [0, data_len) exactly, as the reference requires. */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_offset);
    size_t expect = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const fm_st_tensor_info *t = &f->tensors[i];
        if (t->offset < expect) {
            st = fm_error(FM_ERR_RANGE, "%s: tensor '%s' (bytes [%zu, %zu)) overlaps tensor '%s' (ending at %zu)", src,
                          t->name, t->offset, t->offset + t->nbytes, f->tensors[i - 1].name, expect);
            goto done;
        }
        if (t->offset > expect) {
            st = fm_error(FM_ERR_RANGE, "%s: tensor '%s' begins at byte %zu but the previous tensor ends at %zu (gap)",
                          src, t->name, t->offset, expect);
            goto done;
        }
        expect = t->offset + t->nbytes;
    }
    if (expect != data_len) {
        st = fm_error(FM_ERR_RANGE, "%s: the data buffer is %zu bytes but the tensors cover %zu (%s)", src, data_len,
                      expect, expect < data_len ? "trailing bytes" : "truncated");
        goto done;
    }
    /* The sort moved the tensors: rebuild the name index over their new places. */
    for (size_t i = 0; i < f->n_tensors; i++)
        f->by_name[i].tensor = &f->tensors[i];
    qsort(f->by_name, f->n_tensors, sizeof *f->by_name, cmp_name_ref);

done:
    cJSON_Delete(root);
    return st;
}

/* A new empty handle, or NULL when out of memory. */
static fm_st_file *file_new(const char *source)
{
    fm_st_file *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->source = strdup(source);
    if (f->source == NULL) {
        free(f);
        return NULL;
    }
    return f;
}

static fm_status finish_open(fm_st_file **out, fm_st_file *f)
{
    fm_status st = parse_image(f);
    if (st != FM_OK) {
        file_free(f);
        return st;
    }
    *out = f;
    return FM_OK;
}

fm_status fm_st_open(fm_st_file **out, const char *path)
{
    if (out == NULL || path == NULL)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fm_error(FM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fm_error(FM_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fm_error(FM_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return fm_error(FM_ERR_PARSE, "%s: %lld bytes, too short for the 8-byte header length", path,
                        (long long)sb.st_size);
    }
    if ((unsigned long long)sb.st_size > SIZE_MAX) {
        close(fd);
        return fm_error(FM_ERR_RANGE, "%s: file too large to map", path);
    }
    size_t len = (size_t)sb.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return fm_error(FM_ERR_IO, "%s: cannot map %zu bytes: %s", path, len, strerror(e));
    fm_st_file *f = file_new(path);
    if (f == NULL) {
        munmap(map, len);
        return fm_error(FM_ERR_NO_MEMORY, "safetensors: no memory for a file handle");
    }
    f->image = map;
    f->image_len = len;
    f->storage = ST_MMAP;
    return finish_open(out, f);
}

fm_status fm_st_parse(fm_st_file **out, const void *bytes, size_t len)
{
    if (out == NULL || (bytes == NULL && len > 0))
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_parse: NULL argument");
    *out = NULL;
    fm_st_file *f = file_new("<memory>");
    if (f == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "safetensors: no memory for a file handle");
    unsigned char *copy = malloc(len ? len : 1);
    if (copy == NULL) {
        file_free(f);
        return fm_error(FM_ERR_NO_MEMORY, "<memory>: no memory to copy %zu bytes", len);
    }
    if (len)
        memcpy(copy, bytes, len);
    f->image = copy;
    f->image_len = len;
    f->storage = ST_MALLOC;
    return finish_open(out, f);
}

fm_status fm_st_parse_view(fm_st_file **out, const void *bytes, size_t len)
{
    if (out == NULL || (bytes == NULL && len > 0))
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_parse_view: NULL argument");
    *out = NULL;
    fm_st_file *f = file_new("<memory>");
    if (f == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "safetensors: no memory for a file handle");
    f->image = bytes;
    f->image_len = len;
    f->storage = ST_BORROWED;
    return finish_open(out, f);
}

size_t fm_st_count(const fm_st_file *file) { return file ? file->n_tensors : 0; }

const fm_st_tensor_info *fm_st_at(const fm_st_file *file, size_t i)
{
    if (file == NULL || i >= file->n_tensors)
        return NULL;
    return &file->tensors[i];
}

const fm_st_tensor_info *fm_st_find(const fm_st_file *file, const char *name)
{
    if (file == NULL || name == NULL) {
        fm_error(FM_ERR_INVALID_ARG, "fm_st_find: NULL argument");
        return NULL;
    }
    fm_st_tensor_info key;
    memset(&key, 0, sizeof key);
    key.name = name;
    const st_name_ref kref = {&key};
    const st_name_ref *hit = bsearch(&kref, file->by_name, file->n_tensors, sizeof *file->by_name, cmp_name_ref);
    if (hit == NULL) {
        fm_error(FM_ERR_RANGE, "%s: no tensor named '%s' (the file has %zu tensors)", file->source, name,
                 file->n_tensors);
        return NULL;
    }
    return hit->tensor;
}

const char *fm_st_metadata(const fm_st_file *file, const char *key)
{
    if (file == NULL || key == NULL)
        return NULL;
    for (size_t i = 0; i < file->n_meta; i++) {
        if (strcmp(file->meta_keys[i], key) == 0)
            return file->meta_values[i];
    }
    return NULL;
}

size_t fm_st_metadata_count(const fm_st_file *file) { return file ? file->n_meta : 0; }

const char *fm_st_metadata_key(const fm_st_file *file, size_t i)
{
    return file && i < file->n_meta ? file->meta_keys[i] : NULL;
}

const char *fm_st_metadata_value(const fm_st_file *file, size_t i)
{
    return file && i < file->n_meta ? file->meta_values[i] : NULL;
}

static fm_status convert_to_f32(const fm_st_tensor_info *t, float *dst)
{
    const unsigned char *s = t->data;
    switch (t->dtype) {
    case FM_ST_F32:
        if (t->nbytes)
            memcpy(dst, s, t->nbytes);
        return FM_OK;
    case FM_ST_F16:
    case FM_ST_BF16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2); /* data may be unaligned */
            dst[i] = t->dtype == FM_ST_F16 ? fm_st_f16_to_f32(h) : fm_st_bf16_to_f32(h);
        }
        return FM_OK;
    case FM_ST_F64:
        for (size_t i = 0; i < t->numel; i++) {
            double v;
            memcpy(&v, s + 8 * i, 8);
            dst[i] = (float)v;
        }
        return FM_OK;
    default: break;
    }
    return fm_error(FM_ERR_DTYPE, "tensor '%s' is %s; only F32, F16, BF16 and F64 convert to float32", t->name,
                    fm_st_dtype_name(t->dtype));
}

fm_status fm_st_info_to_f32(const fm_st_tensor_info *info, float *dst, size_t n_expected)
{
    if (info == NULL || (dst == NULL && n_expected > 0))
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_info_to_f32: NULL argument");
    if (info->numel != n_expected) {
        char sbuf[256];
        return fm_error(FM_ERR_SHAPE, "tensor '%s' has %zu elements %s, the destination holds %zu", info->name,
                        info->numel, shape_str(sbuf, sizeof sbuf, info->ndim, info->shape), n_expected);
    }
    return convert_to_f32(info, dst);
}

fm_status fm_st_read_f32(const fm_st_file *file, const char *name, float *dst, size_t n_expected, int ndim,
                         const int64_t *expected_shape)
{
    if (file == NULL || name == NULL || (dst == NULL && n_expected > 0))
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_read_f32: NULL argument");
    const fm_st_tensor_info *t = fm_st_find(file, name);
    if (t == NULL)
        return FM_ERR_RANGE; /* fm_st_find recorded the message */
    char have[256], want[256];
    if (expected_shape != NULL) {
        if (ndim < 0 || ndim > FM_ST_MAX_DIMS)
            return fm_error(FM_ERR_INVALID_ARG, "fm_st_read_f32: ndim %d outside [0, %d]", ndim, FM_ST_MAX_DIMS);
        shape_str(have, sizeof have, t->ndim, t->shape);
        shape_str(want, sizeof want, ndim, expected_shape);
        if (t->ndim != ndim)
            return fm_error(FM_ERR_SHAPE, "%s: tensor '%s' has shape %s (%d dims), expected %s (%d dims)", file->source,
                            name, have, t->ndim, want, ndim);
        for (int i = 0; i < ndim; i++) {
            if (expected_shape[i] >= 0 && expected_shape[i] != t->shape[i])
                return fm_error(
                    FM_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s: dim %d is %lld, expected %lld",
                    file->source, name, have, want, i, (long long)t->shape[i], (long long)expected_shape[i]);
        }
    }
    if (t->numel != n_expected)
        return fm_error(FM_ERR_SHAPE, "%s: tensor '%s' has %zu elements %s, the destination holds %zu", file->source,
                        name, t->numel, shape_str(have, sizeof have, t->ndim, t->shape), n_expected);
    fm_status st = convert_to_f32(t, dst);
    if (st != FM_OK)
        return fm_error(st, "%s: tensor '%s' is %s; only F32, F16, BF16 and F64 convert to float32", file->source, name,
                        fm_st_dtype_name(t->dtype));
    return FM_OK;
}

/* ---- writing ----------------------------------------------------------------------------------- */

typedef struct st_entry {
    char *name;
    fm_st_dtype dtype; /* as stored */
    int from_f32;      /* data is float32, converted to dtype at write time */
    int ndim;
    int64_t shape[FM_ST_MAX_DIMS];
    size_t numel, nbytes; /* nbytes as stored */
    const void *data;
} st_entry;

struct fm_st_writer {
    st_entry *entries;
    size_t n, cap;
    char **meta_keys, **meta_values;
    size_t n_meta, cap_meta;
};

fm_status fm_st_writer_create(fm_st_writer **out)
{
    if (out == NULL)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_create: NULL out");
    *out = calloc(1, sizeof **out);
    if (*out == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "fm_st_writer_create: no memory");
    return FM_OK;
}

void fm_st_writer_free(fm_st_writer *w)
{
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->entries[i].name);
    free(w->entries);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

static fm_status writer_add(fm_st_writer *w, const char *name, fm_st_dtype dtype, int from_f32, int ndim,
                            const int64_t *shape, const void *data)
{
    if (w == NULL || name == NULL || (ndim > 0 && shape == NULL))
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_add: NULL argument");
    if (name[0] == '\0')
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_add: empty tensor name");
    if (strcmp(name, "__metadata__") == 0)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_add: \"__metadata__\" is reserved, not a tensor name");
    if ((int)dtype < 0 || dtype >= FM_ST_DTYPE_COUNT)
        return fm_error(FM_ERR_DTYPE, "fm_st_writer_add: tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > FM_ST_MAX_DIMS)
        return fm_error(FM_ERR_SHAPE, "fm_st_writer_add: tensor '%s': ndim %d outside [0, %d]", name, ndim,
                        FM_ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fm_error(FM_ERR_SHAPE, "fm_st_writer_add: tensor '%s': dim %d is negative (%lld)", name, i,
                            (long long)shape[i]);
    }
    for (size_t i = 0; i < w->n; i++) {
        if (strcmp(w->entries[i].name, name) == 0)
            return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_add: tensor '%s' added twice", name);
    }
    st_entry e;
    memset(&e, 0, sizeof e);
    e.dtype = dtype;
    e.from_f32 = from_f32;
    e.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e.shape[i] = shape[i];
    size_t src_bytes;
    if (!shape_sizes(ndim, e.shape, st_dtypes[dtype].size, &e.numel, &e.nbytes) ||
        !shape_sizes(ndim, e.shape, 4, &e.numel, &src_bytes))
        return fm_error(FM_ERR_RANGE, "fm_st_writer_add: tensor '%s': size overflows", name);
    (void)src_bytes;
    if (data == NULL && e.numel > 0)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_add: tensor '%s': NULL data for %zu elements", name, e.numel);
    e.data = data;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        st_entry *grown = realloc(w->entries, cap * sizeof *grown);
        if (grown == NULL)
            return fm_error(FM_ERR_NO_MEMORY, "fm_st_writer_add: no memory");
        w->entries = grown;
        w->cap = cap;
    }
    e.name = strdup(name);
    if (e.name == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "fm_st_writer_add: no memory");
    w->entries[w->n++] = e;
    return FM_OK;
}

fm_status fm_st_writer_add(fm_st_writer *writer, const char *name, fm_st_dtype dtype, int ndim, const int64_t *shape,
                           const void *data)
{
    return writer_add(writer, name, dtype, 0, ndim, shape, data);
}

fm_status fm_st_writer_add_f32(fm_st_writer *writer, const char *name, fm_st_dtype stored, int ndim,
                               const int64_t *shape, const float *data)
{
    if (stored != FM_ST_F32 && stored != FM_ST_BF16 && stored != FM_ST_F16)
        return fm_error(FM_ERR_DTYPE,
                        "fm_st_writer_add_f32: tensor '%s': float32 data can be stored as F32, BF16 or "
                        "F16, not %s",
                        name ? name : "?", fm_st_dtype_name(stored));
    return writer_add(writer, name, stored, stored != FM_ST_F32, ndim, shape, data);
}

fm_status fm_st_writer_set_metadata(fm_st_writer *w, const char *key, const char *value)
{
    if (w == NULL || key == NULL || value == NULL)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_writer_set_metadata: NULL argument");
    char *v = strdup(value);
    if (v == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "fm_st_writer_set_metadata: no memory");
    for (size_t i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return FM_OK;
        }
    }
    if (w->n_meta == w->cap_meta) {
        size_t cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k2 = realloc(w->meta_keys, cap * sizeof *k2);
        if (k2 != NULL)
            w->meta_keys = k2;
        char **v2 = realloc(w->meta_values, cap * sizeof *v2);
        if (v2 != NULL)
            w->meta_values = v2;
        if (k2 == NULL || v2 == NULL) {
            free(v);
            return fm_error(FM_ERR_NO_MEMORY, "fm_st_writer_set_metadata: no memory");
        }
        w->cap_meta = cap;
    }
    char *k = strdup(key);
    if (k == NULL) {
        free(v);
        return fm_error(FM_ERR_NO_MEMORY, "fm_st_writer_set_metadata: no memory");
    }
    w->meta_keys[w->n_meta] = k;
    w->meta_values[w->n_meta] = v;
    w->n_meta++;
    return FM_OK;
}

/* A growable text buffer for the header. */
typedef struct st_buf {
    char *p;
    size_t len, cap;
    int failed;
} st_buf;

static void buf_put(st_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *g = realloc(b->p, cap);
        if (g == NULL) {
            b->failed = 1;
            return;
        }
        b->p = g;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(st_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_printf_u64(st_buf *b, unsigned long long v)
{
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, "%llu", v);
    buf_put(b, tmp, (size_t)k);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped; other bytes (UTF-8) verbatim. */
static void buf_json_str(st_buf *b, const char *s)
{
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char esc[2] = {'\\', (char)*c};
            buf_put(b, esc, 2);
        } else if (*c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            buf_put(b, esc, 6);
        } else {
            buf_put(b, (const char *)c, 1);
        }
    }
    buf_put(b, "\"", 1);
}

static int cmp_entry(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    size_t sx = st_dtypes[x->dtype].size, sy = st_dtypes[y->dtype].size;
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The write order and the padded header text. */
typedef struct st_plan {
    st_entry *order; /* shallow copies of the writer's entries, in write order */
    st_buf header;   /* padded to a multiple of 8 */
    size_t total;    /* 8 + header + data */
} st_plan;

static void plan_free(st_plan *p)
{
    free(p->order);
    free(p->header.p);
}

static fm_status plan_make(const fm_st_writer *w, st_plan *p)
{
    memset(p, 0, sizeof *p);
    p->order = malloc((w->n ? w->n : 1) * sizeof *p->order);
    if (p->order == NULL)
        return fm_error(FM_ERR_NO_MEMORY, "safetensors writer: no memory");
    for (size_t i = 0; i < w->n; i++)
        p->order[i] = w->entries[i];
    qsort(p->order, w->n, sizeof *p->order, cmp_entry);

    st_buf *b = &p->header;
    buf_puts(b, "{");
    int first = 1;
    if (w->n_meta > 0) {
        buf_puts(b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i)
                buf_puts(b, ",");
            buf_json_str(b, w->meta_keys[i]);
            buf_puts(b, ":");
            buf_json_str(b, w->meta_values[i]);
        }
        buf_puts(b, "}");
        first = 0;
    }
    size_t offset = 0;
    for (size_t i = 0; i < w->n; i++) {
        const st_entry *e = &p->order[i];
        if (!first)
            buf_puts(b, ",");
        first = 0;
        buf_json_str(b, e->name);
        buf_puts(b, ":{\"dtype\":\"");
        buf_puts(b, st_dtypes[e->dtype].name);
        buf_puts(b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            if (d)
                buf_puts(b, ",");
            buf_printf_u64(b, (unsigned long long)e->shape[d]);
        }
        buf_puts(b, "],\"data_offsets\":[");
        buf_printf_u64(b, (unsigned long long)offset);
        buf_puts(b, ",");
        if (e->nbytes > SIZE_MAX - offset) {
            plan_free(p);
            return fm_error(FM_ERR_RANGE, "safetensors writer: total size overflows at tensor '%s'", e->name);
        }
        offset += e->nbytes;
        buf_printf_u64(b, (unsigned long long)offset);
        buf_puts(b, "]}");
    }
    buf_puts(b, "}");
    while (b->len % 8 != 0)
        buf_puts(b, " ");
    if (b->failed) {
        plan_free(p);
        return fm_error(FM_ERR_NO_MEMORY, "safetensors writer: no memory for the header");
    }
    if (b->len > FM_ST_MAX_HEADER) {
        size_t hl = b->len;
        plan_free(p);
        return fm_error(FM_ERR_RANGE, "safetensors writer: header of %zu bytes exceeds the %u-byte limit", hl,
                        FM_ST_MAX_HEADER);
    }
    if (offset > SIZE_MAX - 8 - b->len) {
        plan_free(p);
        return fm_error(FM_ERR_RANGE, "safetensors writer: total size overflows");
    }
    p->total = 8 + b->len + offset;
    return FM_OK;
}

/* Where the bytes go: a memory buffer or a file descriptor. */
typedef struct st_sink {
    unsigned char *mem; /* non-NULL: write here at pos */
    size_t pos;
    int fd;
    const char *path; /* for messages */
} st_sink;

static fm_status sink_write(st_sink *s, const void *bytes, size_t n)
{
    if (s->mem != NULL) {
        if (n)
            memcpy(s->mem + s->pos, bytes, n);
        s->pos += n;
        return FM_OK;
    }
    const unsigned char *p = bytes;
    while (n > 0) {
        ssize_t k = write(s->fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return fm_error(FM_ERR_IO, "%s: write failed: %s", s->path, strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
    return FM_OK;
}

static fm_status plan_emit(const st_plan *p, size_t n_entries, st_sink *s)
{
    unsigned char prefix[8];
    uint64_t hl = p->header.len;
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(hl >> (8 * i));
    FM_TRY(sink_write(s, prefix, 8));
    FM_TRY(sink_write(s, p->header.p, p->header.len));
    enum { CHUNK = 16384 };
    uint16_t tmp[CHUNK];
    for (size_t i = 0; i < n_entries; i++) {
        const st_entry *e = &p->order[i];
        if (!e->from_f32) {
            FM_TRY(sink_write(s, e->data, e->nbytes));
            continue;
        }
        const float *src = e->data;
        for (size_t j = 0; j < e->numel; j += CHUNK) {
            size_t m = e->numel - j < CHUNK ? e->numel - j : CHUNK;
            if (e->dtype == FM_ST_BF16)
                fm_st_f32_to_bf16_n(tmp, src + j, m);
            else
                fm_st_f32_to_f16_n(tmp, src + j, m);
            FM_TRY(sink_write(s, tmp, m * sizeof *tmp));
        }
    }
    return FM_OK;
}

fm_status fm_st_serialize(const fm_st_writer *writer, void **out_bytes, size_t *out_len)
{
    if (writer == NULL || out_bytes == NULL || out_len == NULL)
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_serialize: NULL argument");
    *out_bytes = NULL;
    *out_len = 0;
    st_plan plan;
    FM_TRY(plan_make(writer, &plan));
    unsigned char *mem = malloc(plan.total);
    if (mem == NULL) {
        size_t total = plan.total;
        plan_free(&plan);
        return fm_error(FM_ERR_NO_MEMORY, "fm_st_serialize: no memory for %zu bytes", total);
    }
    st_sink sink = {.mem = mem, .pos = 0, .fd = -1, .path = "<memory>"};
    fm_status st = plan_emit(&plan, writer->n, &sink);
    if (st != FM_OK) {
        free(mem);
        plan_free(&plan);
        return st;
    }
    *out_bytes = mem;
    *out_len = plan.total;
    plan_free(&plan);
    return FM_OK;
}

fm_status fm_st_write(const fm_st_writer *writer, const char *path)
{
    if (writer == NULL || path == NULL || path[0] == '\0')
        return fm_error(FM_ERR_INVALID_ARG, "fm_st_write: NULL or empty argument");
    st_plan plan;
    FM_TRY(plan_make(writer, &plan));

    /* The temporary file lives in the target's directory so that rename() is atomic (same filesystem). */
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) : 0;
    const char *base = slash ? slash + 1 : path;
    size_t tmp_cap = strlen(path) + 32;
    char *tmp = malloc(tmp_cap);
    char *dir = malloc(dir_len + 2);
    if (tmp == NULL || dir == NULL) {
        free(tmp);
        free(dir);
        plan_free(&plan);
        return fm_error(FM_ERR_NO_MEMORY, "fm_st_write: no memory");
    }
    if (slash) {
        memcpy(dir, path, dir_len);
        dir[dir_len] = '\0';
        if (dir_len == 0)
            strcpy(dir, "/");
    } else {
        strcpy(dir, ".");
    }
    snprintf(tmp, tmp_cap, "%.*s%s.%s.tmp-XXXXXX", (int)dir_len, path, slash ? "/" : "", base);

    fm_status st = FM_OK;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = fm_error(FM_ERR_IO, "%s: cannot create a temporary file in '%s': %s", path, dir, strerror(errno));
        goto out;
    }
    /* mkstemp makes 0600; a checkpoint is meant to be shared like any output file. */
    if (fchmod(fd, 0644) != 0) {
        st = fm_error(FM_ERR_IO, "%s: cannot chmod the temporary file: %s", path, strerror(errno));
        goto fail_fd;
    }
    st_sink sink = {.mem = NULL, .pos = 0, .fd = fd, .path = path};
    st = plan_emit(&plan, writer->n, &sink);
    if (st != FM_OK)
        goto fail_fd;
    if (fsync(fd) != 0) {
        st = fm_error(FM_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
        goto fail_fd;
    }
    if (close(fd) != 0) {
        st = fm_error(FM_ERR_IO, "%s: close failed: %s", path, strerror(errno));
        goto fail_unlink;
    }
    if (rename(tmp, path) != 0) {
        st = fm_error(FM_ERR_IO, "%s: cannot rename the temporary file into place: %s", path, strerror(errno));
        goto fail_unlink;
    }
    /* Make the rename itself durable. Some filesystems refuse fsync on a directory; the rename is already
     * atomic, so a failure here is not reported. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    goto out;

fail_fd:
    close(fd);
fail_unlink:
    unlink(tmp);
out:
    free(tmp);
    free(dir);
    plan_free(&plan);
    return st;
}
