/* Tests of image decoding (PNG variants and JPEG written here with libpng / libjpeg), CLIP preprocessing
 * against hand-computed values, and clear errors for missing, empty, garbage, truncated, corrupt and
 * oversized files. */
#include "testutil.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "fedmm/image.h"

static char dir[64];
static char path_buf[256];

static const char *tmp_path(const char *name)
{
    snprintf(path_buf, sizeof path_buf, "%s/%s", dir, name);
    return path_buf;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/fedmm-image-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    static const char *const names[] = {"rgb.png", "gray.png", "gray16.png", "rgba.png",    "pal.png",   "gray1.png",
                                        "q.jpg",   "gray.jpg", "empty.png",  "garbage.png", "trunc.png", "trunc.jpg",
                                        "big.png", "zero.png", "big.jpg",    "bad.jpg",     "fuzz.bin",  "dir.png"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        remove(tmp_path(names[i]));
    rmdir(dir);
    return 0;
}

static uint8_t *random_bytes(fm_rng *rng, size_t n)
{
    uint8_t *p = fm_test_alloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)fm_rng_below(rng, 256);
    return p;
}

/* Writes a PNG of `color_type` / `bit_depth` with rows given as raw bytes (row_bytes each); palette may be
 * NULL. Uses libpng directly, independent of the code under test. */
static void write_png_raw(const char *path, int w, int h, int color_type, int bit_depth, const uint8_t *data,
                          size_t row_bytes, const png_color *palette, int npal, const png_byte *trans, int ntrans)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)))
        fail_msg("libpng failed writing the test file");
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, bit_depth, color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (palette)
        png_set_PLTE(png, info, palette, npal);
    if (trans)
        png_set_tRNS(png, info, trans, ntrans, NULL);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, data + (size_t)y * row_bytes);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

static void test_png_rgb_roundtrip(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    const int w = 37, h = 23;
    uint8_t *px = random_bytes(&rng, (size_t)w * h * 3);
    assert_int_equal(fm_image_write_png(tmp_path("rgb.png"), px, w, h), FM_OK);
    fm_image im;
    assert_int_equal(fm_image_load(tmp_path("rgb.png"), &im), FM_OK);
    assert_int_equal(im.width, w);
    assert_int_equal(im.height, h);
    assert_memory_equal(im.pixels, px, (size_t)w * h * 3);
    fm_image_free(&im);
    assert_null(im.pixels);
    free(px);
}

static void test_png_conversions(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    const int w = 13, h = 9;
    const size_t n = (size_t)w * h;
    fm_image im;
    /* 8-bit gray → equal channels. */
    uint8_t *g = random_bytes(&rng, n);
    write_png_raw(tmp_path("gray.png"), w, h, PNG_COLOR_TYPE_GRAY, 8, g, (size_t)w, NULL, 0, NULL, 0);
    assert_int_equal(fm_image_load(tmp_path("gray.png"), &im), FM_OK);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            assert_int_equal(im.pixels[3 * i + (size_t)c], g[i]);
    fm_image_free(&im);
    /* 16-bit gray (big-endian samples) → rounded v·255/65535. */
    uint8_t *g16 = random_bytes(&rng, 2 * n);
    write_png_raw(tmp_path("gray16.png"), w, h, PNG_COLOR_TYPE_GRAY, 16, g16, (size_t)w * 2, NULL, 0, NULL, 0);
    assert_int_equal(fm_image_load(tmp_path("gray16.png"), &im), FM_OK);
    for (size_t i = 0; i < n; i++) {
        double v = (double)(g16[2 * i] * 256 + g16[2 * i + 1]) * 255.0 / 65535.0;
        if (fabs(im.pixels[3 * i] - v) > 0.51 || im.pixels[3 * i + 2] != im.pixels[3 * i])
            fail_msg("16-bit gray pixel %zu: got %d, want %.2f", i, im.pixels[3 * i], v);
    }
    fm_image_free(&im);
    /* RGBA → alpha dropped. */
    uint8_t *rgba = random_bytes(&rng, 4 * n);
    write_png_raw(tmp_path("rgba.png"), w, h, PNG_COLOR_TYPE_RGB_ALPHA, 8, rgba, (size_t)w * 4, NULL, 0, NULL, 0);
    assert_int_equal(fm_image_load(tmp_path("rgba.png"), &im), FM_OK);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            assert_int_equal(im.pixels[3 * i + (size_t)c], rgba[4 * i + (size_t)c]);
    fm_image_free(&im);
    /* Palette (4-bit indices, with transparency) → palette colours. */
    png_color pal[11];
    png_byte trans[11];
    for (int i = 0; i < 11; i++) {
        pal[i].red = (png_byte)fm_rng_below(&rng, 256);
        pal[i].green = (png_byte)fm_rng_below(&rng, 256);
        pal[i].blue = (png_byte)fm_rng_below(&rng, 256);
        trans[i] = (png_byte)fm_rng_below(&rng, 256);
    }
    const size_t prow = (size_t)(w + 1) / 2;
    uint8_t *packed = fm_test_alloc(prow * (size_t)h);
    int *index = fm_test_alloc(n * sizeof(int));
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int k = (int)fm_rng_below(&rng, 11);
            index[(size_t)y * w + (size_t)x] = k;
            packed[(size_t)y * prow + (size_t)x / 2] |= (uint8_t)(x % 2 == 0 ? k << 4 : k);
        }
    write_png_raw(tmp_path("pal.png"), w, h, PNG_COLOR_TYPE_PALETTE, 4, packed, prow, pal, 11, trans, 11);
    assert_int_equal(fm_image_load(tmp_path("pal.png"), &im), FM_OK);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(im.pixels[3 * i], pal[index[i]].red);
        assert_int_equal(im.pixels[3 * i + 1], pal[index[i]].green);
        assert_int_equal(im.pixels[3 * i + 2], pal[index[i]].blue);
    }
    fm_image_free(&im);
    /* 1-bit gray → 0 or 255. */
    const size_t brow = (size_t)(w + 7) / 8;
    uint8_t *bits = random_bytes(&rng, brow * (size_t)h);
    write_png_raw(tmp_path("gray1.png"), w, h, PNG_COLOR_TYPE_GRAY, 1, bits, brow, NULL, 0, NULL, 0);
    assert_int_equal(fm_image_load(tmp_path("gray1.png"), &im), FM_OK);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int bit = (bits[(size_t)y * brow + (size_t)x / 8] >> (7 - x % 8)) & 1;
            assert_int_equal(im.pixels[((size_t)y * w + (size_t)x) * 3 + 1], bit ? 255 : 0);
        }
    fm_image_free(&im);
    free(g);
    free(g16);
    free(rgba);
    free(packed);
    free(index);
    free(bits);
}

/* A smooth random image (JPEG is lossy on noise): a random colour gradient. */
static uint8_t *smooth_image(fm_rng *rng, int w, int h)
{
    uint8_t *p = fm_test_alloc((size_t)w * h * 3);
    double base[3], gx[3], gy[3];
    for (int c = 0; c < 3; c++) {
        base[c] = 40 + 100 * fm_rng_double(rng);
        gx[c] = 100.0 * fm_rng_double(rng) / w;
        gy[c] = 100.0 * fm_rng_double(rng) / h;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                p[((size_t)y * w + (size_t)x) * 3 + (size_t)c] = (uint8_t)(base[c] + gx[c] * x + gy[c] * y);
    return p;
}

static void write_gray_jpeg(const char *path, const uint8_t *gray, int w, int h)
{
    struct jpeg_compress_struct cinfo;
    struct jpeg_error_mgr err;
    cinfo.err = jpeg_std_error(&err);
    jpeg_create_compress(&cinfo);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    jpeg_stdio_dest(&cinfo, f);
    cinfo.image_width = (JDIMENSION)w;
    cinfo.image_height = (JDIMENSION)h;
    cinfo.input_components = 1;
    cinfo.in_color_space = JCS_GRAYSCALE;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, 95, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(gray + (size_t)cinfo.next_scanline * (size_t)w);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    fclose(f);
}

static void test_jpeg_decode(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    const int w = 45, h = 31;
    uint8_t *px = smooth_image(&rng, w, h);
    assert_int_equal(fm_image_write_jpeg(tmp_path("q.jpg"), px, w, h, 95), FM_OK);
    fm_image im;
    assert_int_equal(fm_image_load(tmp_path("q.jpg"), &im), FM_OK);
    assert_int_equal(im.width, w);
    assert_int_equal(im.height, h);
    double sum = 0, worst = 0;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        double d = fabs((double)im.pixels[i] - px[i]);
        sum += d;
        worst = fmax(worst, d);
    }
    if (sum / (w * h * 3) > 2.5 || worst > 16)
        fail_msg("JPEG round trip: mean |diff| %.2f, max %.0f", sum / (w * h * 3), worst);
    fm_image_free(&im);
    /* Grayscale JPEG → three equal channels close to the source. */
    uint8_t *gray = fm_test_alloc((size_t)w * h);
    for (size_t i = 0; i < (size_t)w * h; i++)
        gray[i] = px[3 * i];
    write_gray_jpeg(tmp_path("gray.jpg"), gray, w, h);
    assert_int_equal(fm_image_load(tmp_path("gray.jpg"), &im), FM_OK);
    sum = 0;
    for (size_t i = 0; i < (size_t)w * h; i++) {
        assert_int_equal(im.pixels[3 * i], im.pixels[3 * i + 1]);
        assert_int_equal(im.pixels[3 * i], im.pixels[3 * i + 2]);
        sum += fabs((double)im.pixels[3 * i] - gray[i]);
    }
    assert_true(sum / (w * h) < 2.5);
    fm_image_free(&im);
    free(px);
    free(gray);
}

static void expect_error(const char *file, fm_status want, const char *substring)
{
    fm_image im;
    fm_status st = fm_image_load(file, &im);
    if (st != want)
        fail_msg("%s: got status %d (%s), want %d", file, st, fm_last_error(), want);
    assert_null(im.pixels);
    if (substring && !strstr(fm_last_error(), substring))
        fail_msg("%s: message \"%s\" lacks \"%s\"", file, fm_last_error(), substring);
}

static uint8_t *read_all(const char *file, size_t *len)
{
    FILE *f = fopen(file, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = fm_test_alloc(*len);
    assert_int_equal(fread(p, 1, *len, f), *len);
    fclose(f);
    return p;
}

static void write_all(const char *file, const uint8_t *p, size_t len)
{
    FILE *f = fopen(file, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, len, f), len);
    fclose(f);
}

static void test_bad_files(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    expect_error(tmp_path("missing.png"), FM_ERR_IO, "missing.png");
    write_all(tmp_path("empty.png"), (const uint8_t *)"", 0);
    expect_error(tmp_path("empty.png"), FM_ERR_PARSE, "empty");
    uint8_t *junk = random_bytes(&rng, 300);
    junk[0] = 'G'; /* not a PNG or JPEG signature */
    write_all(tmp_path("garbage.png"), junk, 300);
    expect_error(tmp_path("garbage.png"), FM_ERR_PARSE, "not a PNG or JPEG");
    expect_error(dir, FM_ERR_IO, NULL); /* a directory */

    /* Truncated PNG and JPEG (a real file cut in half). */
    const int w = 40, h = 30;
    uint8_t *px = smooth_image(&rng, w, h);
    size_t len;
    assert_int_equal(fm_image_write_png(tmp_path("rgb.png"), px, w, h), FM_OK);
    uint8_t *png = read_all(tmp_path("rgb.png"), &len);
    write_all(tmp_path("trunc.png"), png, len / 2);
    expect_error(tmp_path("trunc.png"), FM_ERR_PARSE, "truncated");
    assert_int_equal(fm_image_write_jpeg(tmp_path("q.jpg"), px, w, h, 90), FM_OK);
    size_t jlen;
    uint8_t *jpg = read_all(tmp_path("q.jpg"), &jlen);
    write_all(tmp_path("trunc.jpg"), jpg, jlen / 2);
    expect_error(tmp_path("trunc.jpg"), FM_ERR_PARSE, "truncated");

    /* Absurd and zero sizes in the PNG header (IHDR width at byte 16). */
    uint8_t *big = fm_test_alloc(len);
    memcpy(big, png, len);
    big[16] = 0;
    big[17] = 0;
    big[18] = 0x4E; /* 20000 */
    big[19] = 0x20;
    write_all(tmp_path("big.png"), big, len);
    expect_error(tmp_path("big.png"), FM_ERR_RANGE, "16384");
    memset(big + 16, 0, 4);
    write_all(tmp_path("zero.png"), big, len);
    expect_error(tmp_path("zero.png"), FM_ERR_RANGE, "zero-sized");

    /* JPEG: height 20000 in the SOF0 segment; then a corrupt marker segment. */
    memcpy(big, jpg, jlen < len ? jlen : len);
    uint8_t *jbig = fm_test_alloc(jlen);
    memcpy(jbig, jpg, jlen);
    size_t sof = 0;
    for (size_t i = 2; i + 8 < jlen; i++)
        if (jbig[i] == 0xFF && jbig[i + 1] == 0xC0) {
            sof = i;
            break;
        }
    assert_true(sof > 0);
    jbig[sof + 5] = 0x4E; /* height, big-endian */
    jbig[sof + 6] = 0x20;
    write_all(tmp_path("big.jpg"), jbig, jlen);
    expect_error(tmp_path("big.jpg"), FM_ERR_RANGE, "exceeds");
    jbig[sof + 5] = 0;
    jbig[sof + 6] = 0;
    write_all(tmp_path("big.jpg"), jbig, jlen);
    expect_error(tmp_path("big.jpg"), FM_ERR_RANGE, "zero-sized");
    memcpy(jbig, jpg, jlen);
    jbig[sof + 9] = 7; /* 7 components: invalid */
    write_all(tmp_path("bad.jpg"), jbig, jlen);
    expect_error(tmp_path("bad.jpg"), FM_ERR_PARSE, "JPEG");

    /* Random damage never crashes: every result is OK or a clean error. */
    for (int trial = 0; trial < 300; trial++) {
        const uint8_t *src = trial % 2 ? png : jpg;
        size_t n = trial % 2 ? len : jlen;
        uint8_t *copy = fm_test_alloc(n);
        memcpy(copy, src, n);
        int flips = 1 + (int)fm_rng_below(&rng, 8);
        for (int f = 0; f < flips; f++)
            copy[fm_rng_below(&rng, n)] = (uint8_t)fm_rng_below(&rng, 256);
        size_t cut = trial % 3 == 0 ? (size_t)fm_rng_below(&rng, n) + 1 : n;
        fm_image im;
        fm_status st = fm_image_decode(copy, cut, "fuzz", &im);
        if (st == FM_OK) {
            assert_true(im.width > 0 && im.height > 0);
            fm_image_free(&im);
        } else {
            assert_true(st == FM_ERR_PARSE || st == FM_ERR_RANGE || st == FM_ERR_UNSUPPORTED);
            assert_non_null(strstr(fm_last_error(), "fuzz"));
            assert_null(im.pixels);
        }
        free(copy);
    }
    free(junk);
    free(px);
    free(png);
    free(jpg);
    free(big);
    free(jbig);
}

static float clip_norm(int c, double v)
{
    const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, stdv[3] = {0.26862954, 0.26130258, 0.27577711};
    return (float)((v / 255.0 - mean[c]) / stdv[c]);
}

/* Square input of the target size: no resampling, only scaling and normalisation. */
static void test_preprocess_identity(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 5);
    const int s = 11;
    fm_image im = {s, s, random_bytes(&rng, (size_t)s * s * 3)};
    float *out = fm_test_alloc(3 * (size_t)s * s * sizeof(float));
    double *want = fm_test_alloc(3 * (size_t)s * s * sizeof(double));
    assert_int_equal(fm_image_clip_preprocess(&im, s, out), FM_OK);
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < (size_t)s * s; i++)
            want[(size_t)c * s * s + i] = clip_norm(c, im.pixels[3 * i + (size_t)c]);
    fm_test_assert_close("identity preprocess", out, want, 3 * (size_t)s * s, 1e-6, 1e-6);
    fm_image_free(&im);
    free(out);
    free(want);
}

/* Shorter side already right: a pure centre crop; (width − size)/2 = 1.5 rounds to 2 (half to even). */
static void test_preprocess_center_crop(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 6);
    const int s = 8, w = 11;
    fm_image im = {w, s, random_bytes(&rng, (size_t)w * s * 3)};
    float *out = fm_test_alloc(3 * (size_t)s * s * sizeof(float));
    double *want = fm_test_alloc(3 * (size_t)s * s * sizeof(double));
    assert_int_equal(fm_image_clip_preprocess(&im, s, out), FM_OK);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++)
                want[((size_t)c * s + (size_t)y) * s + (size_t)x] =
                    clip_norm(c, im.pixels[((size_t)y * w + (size_t)x + 2) * 3 + (size_t)c]);
    fm_test_assert_close("centre crop", out, want, 3 * (size_t)s * s, 1e-6, 1e-6);
    fm_image_free(&im);
    free(out);
    free(want);
}

/* 4×4 → 2×2: Pillow's antialiased bicubic at scale 2 (support 4 input pixels). Output pixel 0 has centre
 * 1.0 and reads inputs 0..3 with raw weights bicubic((x − 0.5)/2) = 0.8671875, 0.8671875, 0.2265625,
 * −0.0703125 (sum 1.890625); pixel 1 mirrors them. R varies along x only, G along y only. */
static void test_preprocess_bicubic_downscale(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 7);
    uint8_t col[4], row[4];
    for (int i = 0; i < 4; i++) {
        col[i] = (uint8_t)(30 + fm_rng_below(&rng, 200));
        row[i] = (uint8_t)(30 + fm_rng_below(&rng, 200));
    }
    fm_image im = {4, 4, fm_test_alloc(4 * 4 * 3)};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) {
            uint8_t *p = im.pixels + ((size_t)y * 4 + (size_t)x) * 3;
            p[0] = col[x];
            p[1] = row[y];
            p[2] = 77;
        }
    const double k[4] = {0.8671875 / 1.890625, 0.8671875 / 1.890625, 0.2265625 / 1.890625, -0.0703125 / 1.890625};
    double r[2], g[2];
    for (int o = 0; o < 2; o++) {
        r[o] = g[o] = 0;
        for (int t = 0; t < 4; t++) {
            int src = o == 0 ? t : 3 - t;
            r[o] += k[t] * col[src];
            g[o] += k[t] * row[src];
        }
        r[o] = fmin(255, fmax(0, floor(r[o] + 0.5)));
        g[o] = fmin(255, fmax(0, floor(g[o] + 0.5)));
    }
    float out[3 * 2 * 2];
    double want[3 * 2 * 2];
    assert_int_equal(fm_image_clip_preprocess(&im, 2, out), FM_OK);
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++) {
            want[0 * 4 + y * 2 + x] = clip_norm(0, r[x]);
            want[1 * 4 + y * 2 + x] = clip_norm(1, g[y]);
            want[2 * 4 + y * 2 + x] = clip_norm(2, 77);
        }
    /* Pillow's 22-bit fixed point can move a value by one level from the exact double result. */
    fm_test_assert_close("bicubic 4x4 -> 2x2", out, want, 12, 0.0, 1.01 / 255.0 / 0.26);
    uint8_t same[4 * 4 * 3];
    assert_int_equal(fm_image_resize_bicubic(&im, 4, 4, same), FM_OK);
    assert_memory_equal(same, im.pixels, sizeof same);
    fm_image_free(&im);
}

/* Non-square input through the full path: shorter side to `size`, longer side floor(size·long/short),
 * then the crop. A constant image must stay constant (weights sum to one), whatever the sizes. */
static void test_preprocess_shapes(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 8);
    const int sizes[][3] = {{50, 17, 7}, {17, 50, 7}, {3, 9, 16}, {640, 480, 24}, {1, 300, 5}};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        const int w = sizes[t][0], h = sizes[t][1], s = sizes[t][2];
        uint8_t v[3] = {(uint8_t)fm_rng_below(&rng, 256), (uint8_t)fm_rng_below(&rng, 256),
                        (uint8_t)fm_rng_below(&rng, 256)};
        fm_image im = {w, h, fm_test_alloc((size_t)w * h * 3)};
        for (size_t i = 0; i < (size_t)w * h; i++)
            memcpy(im.pixels + 3 * i, v, 3);
        float *out = fm_test_alloc(3 * (size_t)s * s * sizeof(float));
        double *want = fm_test_alloc(3 * (size_t)s * s * sizeof(double));
        assert_int_equal(fm_image_clip_preprocess(&im, s, out), FM_OK);
        for (int c = 0; c < 3; c++)
            for (size_t i = 0; i < (size_t)s * s; i++)
                want[(size_t)c * s * s + i] = clip_norm(c, v[c]);
        fm_test_assert_close("constant image", out, want, 3 * (size_t)s * s, 0.0, 1e-5);
        fm_image_free(&im);
        free(out);
        free(want);
    }
    fm_image none = {0, 0, NULL};
    float out[3];
    assert_int_equal(fm_image_clip_preprocess(&none, 1, out), FM_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_rgb_roundtrip),
        cmocka_unit_test(test_png_conversions),
        cmocka_unit_test(test_jpeg_decode),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_preprocess_identity),
        cmocka_unit_test(test_preprocess_center_crop),
        cmocka_unit_test(test_preprocess_bicubic_downscale),
        cmocka_unit_test(test_preprocess_shapes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
