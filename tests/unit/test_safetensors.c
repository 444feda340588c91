/* Tests for safetensors I/O: bit-exact round trips, float32 → bf16/f16 rounding against an independent
 * reference, hand-made F16/BF16/F64 files, truncated and garbage input, every header violation, and the
 * atomicity of fm_st_write. Temporary files live in a fresh mkdtemp directory per test. */
#include "testutil.h"

#include <dirent.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedmm/safetensors.h"

/* ---- helpers ----------------------------------------------------------------------------------- */

static int setup_dir(void **state)
{
    char tmpl[] = "/tmp/fedmm-st-XXXXXX";
    char *d = mkdtemp(tmpl);
    if (d == NULL)
        return -1;
    *state = strdup(d);
    return *state ? 0 : -1;
}

static int teardown_dir(void **state)
{
    char *dir = *state;
    DIR *dp = opendir(dir);
    if (dp != NULL) {
        struct dirent *de;
        while ((de = readdir(dp)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            if (unlink(p) != 0)
                rmdir(p);
        }
        closedir(dp);
    }
    rmdir(dir);
    free(dir);
    return 0;
}

static char *path_in(const char *dir, const char *name)
{
    char *p = fm_test_alloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

/* Number of entries in dir other than . and .. */
static int count_entries(const char *dir)
{
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    }
    closedir(dp);
    return n;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = fm_test_alloc((size_t)n);
    assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static void write_all(const char *path, const void *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b, 1, n, fp), n);
    fclose(fp);
}

/* A safetensors image from header text and `data_len` data bytes (a fixed non-zero pattern). */
static unsigned char *make_image(const char *header, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *b = fm_test_alloc(*len);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    for (size_t i = 0; i < h; i++) /* the header text, without its NUL */
        b[8 + i] = (unsigned char)header[i];
    for (size_t i = 0; i < data_len; i++)
        b[8 + h + i] = (unsigned char)(0x3c + 7 * i);
    return b;
}

static void expect_error(fm_status got, fm_status want, const char *substr, const char *what)
{
    if (got != want)
        fail_msg("%s: status %s, expected %s (message: %s)", what, fm_strerror(got), fm_strerror(want),
                 fm_last_error());
    if (substr != NULL && strstr(fm_last_error(), substr) == NULL)
        fail_msg("%s: message '%s' does not mention '%s'", what, fm_last_error(), substr);
}

static uint32_t fbits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bitsf(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* Random float32 of any kind: raw random bits (all exponents, NaNs, infs, subnormals). */
static float random_bits_float(fm_rng *rng) { return bitsf((uint32_t)fm_rng_u64(rng)); }

/* ---- independent reference roundings (double arithmetic, not bit tricks) ------------------------ */

/* Value of a finite non-negative half bit pattern (h < 0x7c00), from the IEEE definition. */
static double half_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f;
    int m = h & 0x3ff;
    return e == 0 ? ldexp((double)m, -24) : ldexp((double)(1024 + m), e - 25);
}

/* Nearest half to x, ties to even, overflow to inf (IEEE 754 roundTiesToEven). NaN is handled by caller. */
static uint16_t ref_f16(float x)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double d = fabs((double)x);
    if (isinf(x) || d >= 65520.0) /* 65520 = 65504 + half an ulp: the tie goes to inf (even) */
        return sign | 0x7c00;
    /* Largest finite half with value <= d (binary search over the monotone bit patterns). */
    unsigned lo = 0, hi = 0x7bff;
    while (lo < hi) {
        unsigned mid = (lo + hi + 1) / 2;
        if (half_value((uint16_t)mid) <= d)
            lo = mid;
        else
            hi = mid - 1;
    }
    double below = half_value((uint16_t)lo);
    double above = lo == 0x7bff ? 65536.0 : half_value((uint16_t)(lo + 1));
    uint16_t r;
    if (d - below < above - d)
        r = (uint16_t)lo;
    else if (d - below > above - d)
        r = (uint16_t)(lo + 1);
    else
        r = (uint16_t)((lo & 1) ? lo + 1 : lo);
    return sign | r;
}

/* Nearest bf16 to finite x, ties to even: bf16 keeps float32's exponent and 7 mantissa bits. */
static uint16_t ref_bf16(float x)
{
    uint32_t u = fbits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t mag = u & 0x7fffffffu;
    if (mag == 0x7f800000u)
        return sign | 0x7f80;
    uint32_t trunc = mag & 0xffff0000u;
    int e = (int)(trunc >> 23);
    double ulp = ldexp(1.0, (e == 0 ? 1 : e) - 127 - 7);
    double below = fabs((double)bitsf(trunc));
    double above = below + ulp; /* may be 2^128: rounds to inf below */
    double d = fabs((double)x);
    uint32_t r;
    if (d - below < above - d)
        r = trunc;
    else if (d - below > above - d)
        r = trunc + 0x10000u;
    else
        r = (trunc & 0x10000u) ? trunc + 0x10000u : trunc;
    return (uint16_t)(sign | (r >> 16));
}

static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }
static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

/* ---- round trips ------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[FM_ST_MAX_DIMS];
} shape_case;

static const shape_case k_shapes[] = {
    {"vision.patch_embed.weight", 4, {5, 3, 7, 7}},    {"scalar", 0, {0}},   {"b", 1, {13}},
    {"text.layers.0.attn.q_proj.weight", 2, {11, 17}}, {"empty", 2, {3, 0}}, {"odd.5d", 5, {1, 3, 1, 5, 2}},
};
#define N_SHAPES (sizeof k_shapes / sizeof k_shapes[0])

static size_t numel_of(const shape_case *c)
{
    size_t n = 1;
    for (int i = 0; i < c->ndim; i++)
        n *= (size_t)c->shape[i];
    return n;
}

static void test_roundtrip_f32(void **state)
{
    const char *dir = *state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    float *data[N_SHAPES];
    for (size_t t = 0; t < N_SHAPES; t++) {
        size_t n = numel_of(&k_shapes[t]);
        data[t] = fm_test_alloc(n * sizeof(float) + 1);
        fm_rng_normal(&rng, data[t], n, 0.0f, 3.0f);
    }
    /* Special values must survive bit for bit. */
    float *w = data[0];
    w[0] = -0.0f;
    w[1] = bitsf(0x00000001u); /* smallest subnormal */
    w[2] = INFINITY;
    w[3] = bitsf(0x7fc12345u); /* NaN with payload */
    w[4] = -FLT_MAX;

    fm_st_writer *wr;
    assert_int_equal(fm_st_writer_create(&wr), FM_OK);
    for (size_t t = 0; t < N_SHAPES; t++)
        assert_int_equal(
            fm_st_writer_add_f32(wr, k_shapes[t].name, FM_ST_F32, k_shapes[t].ndim, k_shapes[t].shape, data[t]), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(wr, "format", "pt"), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(wr, "note", "quote \" backslash \\ newline \n tab \t é"), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(wr, "format", "fedmm"), FM_OK); /* replaces */

    char *path = path_in(dir, "model.safetensors");
    assert_int_equal(fm_st_write(wr, path), FM_OK);
    assert_int_equal(count_entries(dir), 1);

    /* The bytes on disk are the serialized bytes; the header is padded to a multiple of 8. */
    void *mem;
    size_t mem_len, disk_len;
    assert_int_equal(fm_st_serialize(wr, &mem, &mem_len), FM_OK);
    unsigned char *disk = read_all(path, &disk_len);
    assert_int_equal(mem_len, disk_len);
    assert_memory_equal(mem, disk, mem_len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | disk[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(disk[8], '{');

    /* Adding in another order gives the same bytes (documented order: element size, then name). */
    fm_st_writer *wr2;
    assert_int_equal(fm_st_writer_create(&wr2), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(wr2, "format", "fedmm"), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(wr2, "note", "quote \" backslash \\ newline \n tab \t é"), FM_OK);
    for (size_t t = N_SHAPES; t-- > 0;)
        assert_int_equal(
            fm_st_writer_add(wr2, k_shapes[t].name, FM_ST_F32, k_shapes[t].ndim, k_shapes[t].shape, data[t]), FM_OK);
    void *mem2;
    size_t mem2_len;
    assert_int_equal(fm_st_serialize(wr2, &mem2, &mem2_len), FM_OK);
    assert_int_equal(mem2_len, mem_len);
    assert_memory_equal(mem2, mem, mem_len);

    fm_st_file *f;
    assert_int_equal(fm_st_open(&f, path), FM_OK);
    assert_int_equal(fm_st_count(f), N_SHAPES);
    assert_string_equal(fm_st_metadata(f, "format"), "fedmm");
    assert_string_equal(fm_st_metadata(f, "note"), "quote \" backslash \\ newline \n tab \t é");
    assert_null(fm_st_metadata(f, "absent"));
    assert_int_equal(fm_st_metadata_count(f), 2);
    assert_string_equal(fm_st_metadata_key(f, 0), "format");
    assert_null(fm_st_metadata_key(f, 2));

    for (size_t t = 0; t < N_SHAPES; t++) {
        const shape_case *c = &k_shapes[t];
        size_t n = numel_of(c);
        const fm_st_tensor_info *info = fm_st_find(f, c->name);
        assert_non_null(info);
        assert_string_equal(info->name, c->name);
        assert_int_equal(info->dtype, FM_ST_F32);
        assert_int_equal(info->ndim, c->ndim);
        for (int d = 0; d < c->ndim; d++)
            assert_int_equal(info->shape[d], c->shape[d]);
        assert_int_equal(info->numel, n);
        assert_int_equal(info->nbytes, 4 * n);
        float *back = fm_test_alloc(n * sizeof(float) + 1);
        assert_int_equal(fm_st_read_f32(f, c->name, back, n, c->ndim, c->shape), FM_OK);
        if (n)
            assert_memory_equal(back, data[t], n * sizeof(float));
        free(back);
    }
    /* Iteration: data order, contiguous, every tensor once. */
    size_t expect = 0;
    for (size_t i = 0; i < fm_st_count(f); i++) {
        const fm_st_tensor_info *info = fm_st_at(f, i);
        assert_non_null(info);
        assert_int_equal(info->offset, expect);
        expect += info->nbytes;
    }
    assert_null(fm_st_at(f, N_SHAPES));
    fm_st_close(f);

    /* The same image parsed from memory, copied and borrowed. */
    assert_int_equal(fm_st_parse(&f, mem, mem_len), FM_OK);
    assert_int_equal(fm_st_count(f), N_SHAPES);
    fm_st_close(f);
    assert_int_equal(fm_st_parse_view(&f, mem, mem_len), FM_OK);
    const fm_st_tensor_info *sc = fm_st_find(f, "scalar");
    assert_non_null(sc);
    assert_int_equal(sc->ndim, 0);
    assert_int_equal(sc->numel, 1);
    float s;
    assert_int_equal(fm_st_read_f32(f, "scalar", &s, 1, 0, NULL), FM_OK);
    assert_int_equal(fbits(s), fbits(data[1][0]));
    fm_st_close(f);

    free(mem);
    free(mem2);
    free(disk);
    free(path);
    fm_st_writer_free(wr);
    fm_st_writer_free(wr2);
    for (size_t t = 0; t < N_SHAPES; t++)
        free(data[t]);
}

/* Mixed dtypes: the writer orders by element size so every tensor starts aligned to its element size. */
static void test_writer_alignment(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    float a[7], c[5];
    double d[3];
    fm_test_fill(&rng, a, 7, -2, 2);
    fm_test_fill(&rng, c, 5, -2, 2);
    fm_test_fill_d(&rng, d, 3, -2, 2);
    int64_t s7[] = {7}, s5[] = {5}, s3[] = {3};
    fm_st_writer *w;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "a_half", FM_ST_F16, 1, s7, a), FM_OK); /* 14 bytes */
    assert_int_equal(fm_st_writer_add_f32(w, "b_f32", FM_ST_F32, 1, s5, c), FM_OK);
    assert_int_equal(fm_st_writer_add(w, "c_f64", FM_ST_F64, 1, s3, d), FM_OK);
    void *mem;
    size_t len;
    assert_int_equal(fm_st_serialize(w, &mem, &len), FM_OK);
    fm_st_file *f;
    assert_int_equal(fm_st_parse_view(&f, mem, len), FM_OK);
    for (size_t i = 0; i < fm_st_count(f); i++) {
        const fm_st_tensor_info *t = fm_st_at(f, i);
        /* Aligned within the data buffer and within the file (the padded header keeps it so). */
        assert_int_equal(t->offset % fm_st_dtype_size(t->dtype), 0);
        assert_int_equal(((uintptr_t)t->data - (uintptr_t)mem) % fm_st_dtype_size(t->dtype), 0);
    }
    assert_int_equal(fm_st_at(f, 0)->dtype, FM_ST_F64);
    assert_int_equal(fm_st_at(f, 2)->dtype, FM_ST_F16);
    float back[3];
    assert_int_equal(fm_st_read_f32(f, "c_f64", back, 3, 1, s3), FM_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(fbits(back[i]), fbits((float)d[i]));
    fm_st_close(f);
    free(mem);
    fm_st_writer_free(w);
}

static void test_conversion_rounding(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    /* Decoders: every half and bf16 pattern. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float x = fm_st_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00) {
            assert_true((h & 0x3ff) ? isnan(x) : isinf(x));
        } else {
            double want = (h & 0x8000) ? -half_value((uint16_t)(h & 0x7fff)) : half_value((uint16_t)h);
            if ((double)x != want || !signbit(x) != !signbit(want))
                fail_msg("f16 0x%04x decodes to %.9g, expected %.9g", h, (double)x, want);
        }
        assert_int_equal(fbits(fm_st_bf16_to_f32((uint16_t)h)), h << 16);
    }
    /* Encoders against the references: raw random bits, scaled normals, and exact ties. */
    size_t checked = 0, ties = 0;
    for (int i = 0; i < 400000; i++) {
        float x;
        switch (i % 5) {
        case 0: x = random_bits_float(&rng); break;
        case 1: x = (float)(fm_rng_gaussian(&rng) * ldexp(1.0, (int)fm_rng_below(&rng, 60) - 30)); break;
        case 2: /* bf16 tie: low 16 bits exactly half an ulp */
            x = bitsf(((uint32_t)fm_rng_u64(&rng) & 0xffff0000u) | 0x8000u);
            break;
        case 3: { /* half tie: the midpoint of two adjacent finite halves (exact in float32) */
            uint16_t h = (uint16_t)fm_rng_below(&rng, 0x7bff);
            x = (float)((half_value(h) + half_value((uint16_t)(h + 1))) / 2);
            if (fm_rng_below(&rng, 2))
                x = -x;
            ties++;
            break;
        }
        default: /* values around the half range edges: subnormals and near 65504 */
            x = (float)(fm_rng_double(&rng) * (fm_rng_below(&rng, 2) ? 7e-5 : 70000.0));
            break;
        }
        uint16_t b = fm_st_f32_to_bf16(x);
        uint16_t h = fm_st_f32_to_f16(x);
        if (isnan(x)) {
            assert_true(bf16_is_nan(b));
            assert_true(f16_is_nan(h));
            continue;
        }
        uint16_t rb = ref_bf16(x), rh = ref_f16(x);
        if (b != rb)
            fail_msg("bf16(%a = 0x%08x) = 0x%04x, reference 0x%04x", (double)x, fbits(x), b, rb);
        if (h != rh)
            fail_msg("f16(%a = 0x%08x) = 0x%04x, reference 0x%04x", (double)x, fbits(x), h, rh);
        checked++;
    }
    assert_true(checked > 300000 && ties > 50000);
    /* Named edge cases. */
    assert_int_equal(fm_st_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(fm_st_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(fm_st_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(fm_st_f32_to_f16(ldexpf(1.0f, -25)), 0x0000); /* tie between 0 and 2^-24: even */
    assert_int_equal(fm_st_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    assert_int_equal(fm_st_f32_to_f16(-1.0f), 0xbc00);
    assert_int_equal(fm_st_f32_to_bf16(FLT_MAX), 0x7f80);                 /* past the last bf16: rounds to inf */
    assert_int_equal(fm_st_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80); /* tie, even is down */
    assert_int_equal(fm_st_f32_to_bf16(bitsf(0x3f818000u)), 0x3f82);      /* tie, even is up */

    /* Array forms and the writer's conversion at write time give the same bits. */
    enum { N = 1031 };
    float *src = fm_test_alloc(N * sizeof(float));
    uint16_t *hb = fm_test_alloc(N * 2), *hh = fm_test_alloc(N * 2);
    float *back = fm_test_alloc(N * sizeof(float));
    fm_rng_normal(&rng, src, N, 0.5f, 40.0f);
    fm_st_f32_to_bf16_n(hb, src, N);
    fm_st_f32_to_f16_n(hh, src, N);
    int64_t shape[] = {N};
    fm_st_writer *w;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "as_bf16", FM_ST_BF16, 1, shape, src), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "as_f16", FM_ST_F16, 1, shape, src), FM_OK);
    void *mem;
    size_t len;
    assert_int_equal(fm_st_serialize(w, &mem, &len), FM_OK);
    fm_st_file *f;
    assert_int_equal(fm_st_parse(&f, mem, len), FM_OK);
    assert_int_equal(fm_st_find(f, "as_bf16")->dtype, FM_ST_BF16);
    assert_memory_equal(fm_st_find(f, "as_bf16")->data, hb, N * 2);
    assert_memory_equal(fm_st_find(f, "as_f16")->data, hh, N * 2);
    assert_int_equal(fm_st_read_f32(f, "as_bf16", back, N, 1, shape), FM_OK);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(fbits(back[i]), fbits(fm_st_bf16_to_f32(ref_bf16(src[i]))));
    assert_int_equal(fm_st_read_f32(f, "as_f16", back, N, 1, shape), FM_OK);
    for (size_t i = 0; i < N; i++) {
        uint16_t r = ref_f16(src[i]);
        double want = (r & 0x7c00) == 0x7c00 ? copysign(INFINITY, (double)src[i])
                                             : ((r & 0x8000) ? -half_value(r & 0x7fff) : half_value(r));
        assert_true((double)back[i] == want);
    }
    fm_st_close(f);
    free(mem);
    fm_st_writer_free(w);
    free(src);
    free(hb);
    free(hh);
    free(back);
}

/* A file made by hand (not by our writer): F16, BF16 and an unaligned F64 tensor, read back as float32. */
static void test_handmade_file(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    const uint16_t f16[6] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x3555, 0x8400};
    const float f16_want[6] = {1.0f, -2.5f, 65504.0f, 5.9604644775390625e-08f, 0.333251953125f, -6.103515625e-05f};
    const uint16_t bf16[5] = {0x3f80, 0xc040, 0x4049, 0x0001, 0x7f7f};
    const float bf16_want[5] = {1.0f, -3.0f, 3.140625f, 9.18354961579912e-41f, 3.3895313892515355e38f};
    const double f64[3] = {0.1, -1e10, 1.0e-3};
    enum { NR = 37 };
    uint16_t rnd[NR];
    for (int i = 0; i < NR; i++) {
        do
            rnd[i] = (uint16_t)fm_rng_u64(&rng);
        while ((rnd[i] & 0x7c00) == 0x7c00);
    }
    char header[512];
    /* Unpadded header and an F64 tensor at offset 22: the data is deliberately unaligned. */
    snprintf(header, sizeof header,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[5],\"data_offsets\":[12,22]},"
             "\"d\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[22,46]},"
             "\"__metadata__\":{\"made\":\"by hand\"},"
             "\"r\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[46,%d]}}",
             NR, 46 + 2 * NR);
    size_t len;
    unsigned char *img = make_image(header, 46 + 2 * NR, &len);
    unsigned char *data = img + 8 + strlen(header);
    memcpy(data, f16, 12);
    memcpy(data + 12, bf16, 10);
    memcpy(data + 22, f64, 24);
    memcpy(data + 46, rnd, 2 * NR);

    fm_st_file *f;
    assert_int_equal(fm_st_parse(&f, img, len), FM_OK);
    assert_int_equal(fm_st_count(f), 4);
    assert_string_equal(fm_st_metadata(f, "made"), "by hand");
    float out[NR];
    int64_t s23[] = {2, 3}, s5[] = {5}, s3[] = {3};
    assert_int_equal(fm_st_read_f32(f, "h", out, 6, 2, s23), FM_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(fbits(out[i]), fbits(f16_want[i]));
    assert_int_equal(fm_st_read_f32(f, "b", out, 5, 1, s5), FM_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(fbits(out[i]), fbits(bf16_want[i]));
    assert_int_equal(fm_st_read_f32(f, "d", out, 3, 1, s3), FM_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(fbits(out[i]), fbits((float)f64[i]));
    const fm_st_tensor_info *r = fm_st_find(f, "r");
    assert_non_null(r);
    assert_int_equal(fm_st_info_to_f32(r, out, NR), FM_OK);
    for (int i = 0; i < NR; i++) {
        double want = (rnd[i] & 0x8000) ? -half_value(rnd[i] & 0x7fff) : half_value(rnd[i]);
        assert_true((double)out[i] == want);
    }
    fm_st_close(f);
    free(img);
}

/* ---- bad input --------------------------------------------------------------------------------- */

/* A small valid image made by the writer, for the truncation and mutation tests. */
static void *small_image(fm_rng *rng, size_t *len, float **keep)
{
    static const int64_t s1[] = {3, 5}, s2[] = {4};
    float *x = fm_test_alloc(32 * sizeof(float));
    fm_test_fill(rng, x, 32, -4, 4);
    fm_st_writer *w;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(w, "round", "7"), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "w", FM_ST_F32, 2, s1, x), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "v", FM_ST_BF16, 1, s2, x + 15), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "s", FM_ST_F16, 0, NULL, x + 19), FM_OK);
    void *mem;
    assert_int_equal(fm_st_serialize(w, &mem, len), FM_OK);
    fm_st_writer_free(w);
    *keep = x;
    return mem;
}

static void test_truncated(void **state)
{
    const char *dir = *state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 5);
    size_t len;
    float *x;
    unsigned char *img = small_image(&rng, &len, &x);
    fm_st_file *f = NULL;
    assert_int_equal(fm_st_parse(&f, img, len), FM_OK);
    fm_st_close(f);
    for (size_t cut = 0; cut < len; cut++) {
        fm_clear_error();
        fm_status st = fm_st_parse(&f, img, cut);
        if (st == FM_OK)
            fail_msg("a file truncated to %zu of %zu bytes was accepted", cut, len);
        assert_null(f);
        assert_true(st == FM_ERR_PARSE || st == FM_ERR_RANGE);
        assert_true(strlen(fm_last_error()) > 10);
    }
    /* A few truncations through the file path (mmap). */
    char *path = path_in(dir, "cut.safetensors");
    size_t cuts[] = {0, 3, 7, 8, 9, 20, len / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(path, img, cuts[i]);
        fm_status st = fm_st_open(&f, path);
        assert_true(st == FM_ERR_PARSE || st == FM_ERR_RANGE);
        assert_non_null(strstr(fm_last_error(), path));
    }
    /* Named cases. */
    expect_error(fm_st_parse(&f, img, 5), FM_ERR_PARSE, "too short", "5-byte file");
    expect_error(fm_st_parse(&f, img, len - 1), FM_ERR_RANGE, "reach past", "last byte missing");
    /* One trailing byte after the last tensor. */
    unsigned char *longer = fm_test_alloc(len + 1);
    memcpy(longer, img, len);
    longer[len] = 0x5a;
    expect_error(fm_st_parse(&f, longer, len + 1), FM_ERR_RANGE, "trailing", "trailing byte");
    free(longer);
    free(path);
    free(img);
    free(x);
}

static void test_garbage(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 6);
    unsigned char buf[600];
    fm_st_file *f;
    for (int trial = 0; trial < 3000; trial++) {
        size_t n = (size_t)fm_rng_below(&rng, sizeof buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)fm_rng_u64(&rng);
        if (trial % 2 && n >= 8) { /* a plausible header length, so the JSON parser sees the garbage */
            uint64_t h = fm_rng_below(&rng, n - 7);
            for (int i = 0; i < 8; i++)
                buf[i] = (unsigned char)(h >> (8 * i));
            if (n > 8 && trial % 4 == 1)
                buf[8] = '{';
        }
        fm_status st = fm_st_parse(&f, buf, n);
        if (st == FM_OK)
            fail_msg("%zu random bytes parsed as a safetensors file", n);
        assert_true(st == FM_ERR_PARSE || st == FM_ERR_RANGE);
    }
    /* Header length fields: absurd, and beyond the file. */
    size_t len;
    unsigned char *img = make_image("{}", 0, &len);
    assert_int_equal(fm_st_parse(&f, img, len), FM_OK);
    assert_int_equal(fm_st_count(f), 0);
    fm_st_close(f);
    img[4] = 1; /* 2^32 + 2 */
    expect_error(fm_st_parse(&f, img, len), FM_ERR_PARSE, "limit", "4 GiB header length");
    img[4] = 0;
    img[0] = 3;
    expect_error(fm_st_parse(&f, img, len), FM_ERR_PARSE, "truncated", "header length past the end");
    free(img);

    /* Mutations of a valid file: never a crash; whatever is accepted is readable. */
    float *x;
    unsigned char *good = small_image(&rng, &len, &x);
    unsigned char *mut = fm_test_alloc(len);
    for (int trial = 0; trial < 4000; trial++) {
        memcpy(mut, good, len);
        int flips = 1 + (int)fm_rng_below(&rng, 3);
        for (int k = 0; k < flips; k++)
            mut[fm_rng_below(&rng, len)] ^= (unsigned char)(1 + fm_rng_below(&rng, 255));
        fm_status st = fm_st_parse_view(&f, mut, len);
        assert_true(st == FM_OK || st == FM_ERR_PARSE || st == FM_ERR_RANGE);
        if (st == FM_OK) {
            for (size_t i = 0; i < fm_st_count(f); i++) {
                const fm_st_tensor_info *t = fm_st_at(f, i);
                float tmp[64];
                if (t->numel <= 64)
                    (void)fm_st_info_to_f32(t, tmp, t->numel);
            }
            fm_st_close(f);
        }
    }
    free(mut);
    free(good);
    free(x);
}

typedef struct {
    const char *header;
    size_t data_len;
    fm_status status;
    const char *substr; /* must appear in the message; names the tensor where there is one */
} violation;

#define T32(name, offs) "\"" name "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":" offs "}"

static const violation k_violations[] = {
    {"", 0, FM_ERR_PARSE, "not valid JSON"},
    {"{\"w\":", 0, FM_ERR_PARSE, "not valid JSON"},
    {"[1, 2]", 0, FM_ERR_PARSE, "not an object"},
    {"{" T32("w", "[0,8]") "} x", 8, FM_ERR_PARSE, "unexpected bytes"},
    {"{\"w\":3}", 0, FM_ERR_PARSE, "'w': entry is not a JSON object"},
    {"{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE, "'w': missing \"dtype\""},
    {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE, "'w': missing \"shape\""},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, FM_ERR_PARSE, "'w': missing \"data_offsets\""},
    {"{\"w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE, "'w': \"dtype\" is not a string"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE,
     "'w': \"shape\" is not an array"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"a\":0}}}", 8, FM_ERR_PARSE,
     "'w': \"data_offsets\" is not an array"},
    {"{\"w\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE, "'w': unknown dtype"},
    {"{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE, "'w': unknown dtype"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE, "'w': shape[0] is negative"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,2.5],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE,
     "'w': shape[1] is not an integer"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE,
     "'w': shape[0] is not a number"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, FM_ERR_PARSE,
     "'w': 9 dims"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, FM_ERR_PARSE, "'w': \"data_offsets\" has 1"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8, FM_ERR_PARSE,
     "'w': \"data_offsets\" has 3"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}", 8, FM_ERR_PARSE,
     "'w': data_offsets[1] is not a number"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]}}", 8, FM_ERR_PARSE,
     "'w': data_offsets[1] is not an integer below 2^53"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, FM_ERR_PARSE,
     "'w': data_offsets[0] is negative"},
    {"{" T32("w", "[0,800]") "}", 8, FM_ERR_RANGE, "'w': data_offsets [0, 800] reach past the 8-byte data buffer"},
    {"{" T32("w", "[8,0]") "}", 8, FM_ERR_RANGE, "'w': data_offsets [8, 0] are reversed"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, FM_ERR_RANGE,
     "'w': data_offsets [0, 8] span 8 bytes but F32 (3) needs 12"},
    {"{" T32("a", "[0,8]") "," T32("b", "[4,12]") "}", 12, FM_ERR_RANGE, "'b' (bytes [4, 12)) overlaps tensor 'a'"},
    {"{" T32("a", "[0,8]") "," T32("b", "[12,20]") "}", 20, FM_ERR_RANGE, "'b' begins at byte 12"},
    {"{" T32("a", "[4,12]") "}", 12, FM_ERR_RANGE, "'a' begins at byte 4"},
    {"{" T32("w", "[0,8]") "}", 12, FM_ERR_RANGE, "trailing bytes"},
    {"{}", 4, FM_ERR_RANGE, "trailing bytes"},
    {"{" T32("w", "[0,8]") "," T32("w", "[8,16]") "}", 16, FM_ERR_PARSE, "'w' appears twice"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8, FM_ERR_RANGE,
     "'w': shape (4294967296, 4294967296, 16) of F32 overflows"},
    {"{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, FM_ERR_RANGE,
     "'w': shape (4294967296, 4294967296) of U8 overflows"},
    {"{\"__metadata__\":[1]," T32("w", "[0,8]") "}", 8, FM_ERR_PARSE, "\"__metadata__\" is not a JSON object"},
    {"{\"__metadata__\":{\"k\":1}," T32("w", "[0,8]") "}", 8, FM_ERR_PARSE, "metadata 'k' is not a string"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, FM_ERR_PARSE, "\"__metadata__\" appears twice"},
    {"{" T32("", "[0,8]") "}", 8, FM_ERR_PARSE, "empty name"},
};

static void test_header_violations(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof k_violations / sizeof k_violations[0]; i++) {
        const violation *v = &k_violations[i];
        size_t len;
        unsigned char *img = make_image(v->header, v->data_len, &len);
        static max_align_t poison; /* any non-NULL handle: a failed parse must reset it to NULL */
        fm_st_file *f = (fm_st_file *)(void *)&poison;
        fm_clear_error();
        char what[600];
        snprintf(what, sizeof what, "header %s (+%zu data bytes)", v->header, v->data_len);
        expect_error(fm_st_parse(&f, img, len), v->status, v->substr, what);
        assert_null(f);
        free(img);
    }
    /* Sanity of the table's building blocks: the same entries, made consistent, are accepted. */
    size_t len;
    unsigned char *img =
        make_image("{" T32("a", "[8,16]") "," T32("b", "[0,8]") ",\"z\":{\"dtype\":\"F32\","
                                                                "\"shape\":[0,5],\"data_offsets\":[16,16]}}   ",
                   16, &len);
    fm_st_file *f;
    assert_int_equal(fm_st_parse(&f, img, len), FM_OK);
    assert_string_equal(fm_st_at(f, 0)->name, "b");
    assert_int_equal(fm_st_find(f, "z")->numel, 0);
    fm_st_close(f);
    free(img);
}

static void test_read_errors(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 7);
    float x[11 * 13];
    fm_test_fill(&rng, x, 11 * 13, -1, 1);
    int32_t ints[6] = {1, -2, 3, 4, 5, 6};
    int64_t s[] = {11, 13}, si[] = {6};
    fm_st_writer *w;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "proj", FM_ST_F32, 2, s, x), FM_OK);
    assert_int_equal(fm_st_writer_add(w, "ids", FM_ST_I32, 1, si, ints), FM_OK);
    void *mem;
    size_t len;
    assert_int_equal(fm_st_serialize(w, &mem, &len), FM_OK);
    fm_st_writer_free(w);
    fm_st_file *f;
    assert_int_equal(fm_st_parse(&f, mem, len), FM_OK);

    float *dst = fm_test_alloc(sizeof x);
    for (size_t i = 0; i < 11 * 13; i++)
        dst[i] = 12345.0f;
    int64_t wrong_dim[] = {11, 12}, wrong_nd[] = {143}, any[] = {-1, 13};
    expect_error(fm_st_read_f32(f, "nope", dst, 143, 2, s), FM_ERR_RANGE, "no tensor named 'nope'", "missing");
    assert_null(fm_st_find(f, "proj.weight"));
    expect_error(fm_st_read_f32(f, "proj", dst, 132, 2, wrong_dim), FM_ERR_SHAPE,
                 "'proj' has shape (11, 13), expected (11, 12): dim 1 is 13, expected 12", "wrong dim");
    expect_error(fm_st_read_f32(f, "proj", dst, 143, 1, wrong_nd), FM_ERR_SHAPE, "(2 dims), expected (143) (1 dims)",
                 "wrong ndim");
    expect_error(fm_st_read_f32(f, "proj", dst, 140, 0, NULL), FM_ERR_SHAPE, "'proj' has 143 elements", "wrong n");
    expect_error(fm_st_read_f32(f, "ids", dst, 6, 1, si), FM_ERR_DTYPE, "'ids' is I32", "int dtype");
    for (size_t i = 0; i < 11 * 13; i++)
        assert_true(dst[i] == 12345.0f); /* untouched on failure */
    assert_int_equal(fm_st_read_f32(f, "proj", dst, 143, 2, any), FM_OK);
    assert_memory_equal(dst, x, sizeof x);
    fm_dtype fd;
    assert_int_equal(fm_st_dtype_to_fm(&fd, fm_st_find(f, "ids")->dtype), FM_OK);
    assert_int_equal(fd, FM_I32);
    assert_int_equal(fm_st_dtype_to_fm(&fd, FM_ST_F64), FM_ERR_DTYPE);
    fm_st_dtype sd;
    assert_int_equal(fm_st_dtype_from_name(&sd, "BF16"), FM_OK);
    assert_int_equal(sd, FM_ST_BF16);
    assert_int_equal(fm_st_dtype_from_name(&sd, "bf16"), FM_ERR_PARSE);
    fm_st_close(f);
    free(dst);
    free(mem);

    expect_error(fm_st_open(&f, "/nonexistent/dir/x.safetensors"), FM_ERR_IO, "/nonexistent/dir/x.safetensors",
                 "open missing");
    expect_error(fm_st_open(&f, "/tmp"), FM_ERR_IO, "not a regular file", "open a directory");
}

static void test_writer_errors(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4};
    int64_t s[] = {4}, neg[] = {-4}, many[FM_ST_MAX_DIMS + 1] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    fm_st_writer *w;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "x", FM_ST_F32, 1, s, x), FM_OK);
    expect_error(fm_st_writer_add_f32(w, "x", FM_ST_BF16, 1, s, x), FM_ERR_INVALID_ARG, "'x' added twice", "dup");
    expect_error(fm_st_writer_add_f32(w, "__metadata__", FM_ST_F32, 1, s, x), FM_ERR_INVALID_ARG, "reserved",
                 "reserved");
    expect_error(fm_st_writer_add_f32(w, "", FM_ST_F32, 1, s, x), FM_ERR_INVALID_ARG, "empty", "empty");
    expect_error(fm_st_writer_add_f32(w, "n", FM_ST_F32, 1, neg, x), FM_ERR_SHAPE, "'n': dim 0 is negative", "neg");
    expect_error(fm_st_writer_add_f32(w, "m", FM_ST_F32, FM_ST_MAX_DIMS + 1, many, x), FM_ERR_SHAPE, "'m': ndim 9",
                 "many dims");
    expect_error(fm_st_writer_add_f32(w, "i", FM_ST_I32, 1, s, x), FM_ERR_DTYPE, "'i'", "f32 as I32");
    expect_error(fm_st_writer_add(w, "z", FM_ST_F32, 1, s, NULL), FM_ERR_INVALID_ARG, "'z': NULL data", "null");
    /* The failed adds left the writer as it was: one tensor. */
    void *mem;
    size_t len;
    assert_int_equal(fm_st_serialize(w, &mem, &len), FM_OK);
    fm_st_file *f;
    assert_int_equal(fm_st_parse(&f, mem, len), FM_OK);
    assert_int_equal(fm_st_count(f), 1);
    fm_st_close(f);
    free(mem);
    fm_st_writer_free(w);
}

/* ---- atomic write ------------------------------------------------------------------------------ */

static void *image_of(const float *x, size_t n, const char *tag, size_t *len, fm_st_writer **keep)
{
    int64_t s[] = {(int64_t)n};
    fm_st_writer *w;
    assert_int_equal(fm_st_writer_create(&w), FM_OK);
    assert_int_equal(fm_st_writer_add_f32(w, "x", FM_ST_F32, 1, s, x), FM_OK);
    assert_int_equal(fm_st_writer_set_metadata(w, "tag", tag), FM_OK);
    void *mem;
    assert_int_equal(fm_st_serialize(w, &mem, len), FM_OK);
    *keep = w;
    return mem;
}

static void test_atomic_write(void **state)
{
    const char *dir = *state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 8);
    enum { NA = 101, NB = 40000 };
    float *a = fm_test_alloc(NA * sizeof(float)), *b = fm_test_alloc(NB * sizeof(float));
    fm_test_fill(&rng, a, NA, -1, 1);
    fm_test_fill(&rng, b, NB, -1, 1);
    size_t la, lb, got_len;
    fm_st_writer *wa, *wb;
    void *ia = image_of(a, NA, "A", &la, &wa);
    void *ib = image_of(b, NB, "B", &lb, &wb);
    char *path = path_in(dir, "ckpt.safetensors");

    /* Overwrite an existing checkpoint: the new one replaces it whole. */
    assert_int_equal(fm_st_write(wa, path), FM_OK);
    unsigned char *got = read_all(path, &got_len);
    assert_int_equal(got_len, la);
    assert_memory_equal(got, ia, la);
    free(got);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
    assert_int_equal(fm_st_write(wb, path), FM_OK);
    got = read_all(path, &got_len);
    assert_int_equal(got_len, lb);
    assert_memory_equal(got, ib, lb);
    free(got);
    assert_int_equal(fm_st_write(wa, path), FM_OK);
    assert_int_equal(count_entries(dir), 1);

    /* A directory that does not exist: FM_ERR_IO, nothing created. */
    char *missing = path_in(dir, "no/such/dir/ckpt.safetensors");
    expect_error(fm_st_write(wb, missing), FM_ERR_IO, "cannot create a temporary file", "missing dir");
    assert_int_equal(count_entries(dir), 1);

    /* The target is a directory: the rename fails, the temporary file is removed, the directory stays. */
    char *subdir = path_in(dir, "sub.safetensors");
    assert_int_equal(mkdir(subdir, 0755), 0);
    expect_error(fm_st_write(wb, subdir), FM_ERR_IO, "rename", "target is a directory");
    assert_int_equal(stat(subdir, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(count_entries(dir), 2);

    /* A write that fails half way (file size limit: write() gets EFBIG): the old checkpoint is intact and
     * no temporary file is left behind. */
    struct rlimit old_lim, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old_lim;
    lim.rlim_cur = 65536; /* B is 160 KB */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fm_status st = fm_st_write(wb, path);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
    signal(SIGXFSZ, old_handler);
    expect_error(st, FM_ERR_IO, "write failed", "write past the file size limit");
    got = read_all(path, &got_len);
    assert_int_equal(got_len, la);
    assert_memory_equal(got, ia, la);
    free(got);
    assert_int_equal(count_entries(dir), 2);
    fm_st_file *f;
    assert_int_equal(fm_st_open(&f, path), FM_OK);
    assert_string_equal(fm_st_metadata(f, "tag"), "A");
    fm_st_close(f);

    free(missing);
    free(subdir);
    free(path);
    free(ia);
    free(ib);
    fm_st_writer_free(wa);
    fm_st_writer_free(wb);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_f32, setup_dir, teardown_dir),
        cmocka_unit_test(test_writer_alignment),
        cmocka_unit_test(test_conversion_rounding),
        cmocka_unit_test(test_handmade_file),
        cmocka_unit_test_setup_teardown(test_truncated, setup_dir, teardown_dir),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_header_violations),
        cmocka_unit_test(test_read_errors),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test_setup_teardown(test_atomic_write, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
