/* PNG / JPEG decoding and encoding (libpng, libjpeg-turbo) and CLIP's preprocessing (see fedmm/image.h).
 * Both libraries report errors by longjmp from a callback; the decoders keep everything they must free in
 * a context struct reachable after the jump, and turn the library's message into an fm_error. The resize
 * reproduces Pillow's 8-bit resampler (same coefficients, fixed point and rounding) so that a CLIP model
 * sees what torchvision's preprocessing would give it. */
#include "fedmm/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#define MSG_LEN 200

static const char *name_or(const char *name) { return name ? name : "<memory>"; }

/* ---- PNG ------------------------------------------------------------------------------------------------ */

typedef struct png_ctx {
    const uint8_t *data;
    size_t size, pos;
    char msg[MSG_LEN];
    uint8_t *pixels;
    png_bytep *rows;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* benign (unknown chunks, bad gamma values): the pixels are still right */
}

static void png_read_mem(png_structp png, png_bytep out, png_size_t n)
{
    png_ctx *ctx = png_get_io_ptr(png);
    if (n > ctx->size - ctx->pos)
        png_error(png, "file is truncated (unexpected end of data)");
    memcpy(out, ctx->data + ctx->pos, n);
    ctx->pos += n;
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static fm_status check_dims(const char *name, uint64_t w, uint64_t h)
{
    if (w == 0 || h == 0)
        return fm_error(FM_ERR_RANGE, "image %s: zero-sized image (%llu×%llu)", name, (unsigned long long)w,
                        (unsigned long long)h);
    if (w > FM_IMAGE_MAX_SIDE || h > FM_IMAGE_MAX_SIDE)
        return fm_error(FM_ERR_RANGE, "image %s: %llu×%llu exceeds the limit of %d pixels per side", name,
                        (unsigned long long)w, (unsigned long long)h, FM_IMAGE_MAX_SIDE);
    return FM_OK;
}

static fm_status decode_png(const uint8_t *data, size_t size, const char *name, fm_image *out)
{
    /* Check the header ourselves first: a clearer message than libpng's, and before any allocation. */
    if (size < 33 || memcmp(data + 12, "IHDR", 4) != 0)
        return fm_error(FM_ERR_PARSE, "image %s: PNG is truncated or has no IHDR chunk", name);
    FM_TRY(check_dims(name, be32(data + 16), be32(data + 20)));

    png_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.data = data;
    ctx.size = size;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_on_error, png_on_warning);
    if (!png)
        return fm_error(FM_ERR_NO_MEMORY, "image %s: cannot create a PNG reader", name);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return fm_error(FM_ERR_NO_MEMORY, "image %s: cannot create a PNG reader", name);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(ctx.pixels);
        free(ctx.rows);
        return fm_error(FM_ERR_PARSE, "image %s: corrupt PNG: %s", name, ctx.msg);
    }
    png_set_read_fn(png, &ctx, png_read_mem);
    png_set_user_limits(png, FM_IMAGE_MAX_SIDE, FM_IMAGE_MAX_SIDE);
    png_read_info(png, info);
    const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    /* Everything to 8-bit RGB: palette and low-depth gray expanded, 16-bit rounded, alpha dropped. */
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    if (depth == 16)
        png_set_scale_16(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    if (rowbytes != (size_t)w * 3)
        png_error(png, "unexpected row layout after conversion to RGB");
    ctx.pixels = malloc((size_t)w * (size_t)h * 3);
    ctx.rows = malloc((size_t)h * sizeof(png_bytep));
    if (!ctx.pixels || !ctx.rows) {
        png_destroy_read_struct(&png, &info, NULL);
        free(ctx.pixels);
        free(ctx.rows);
        return fm_error(FM_ERR_NO_MEMORY, "image %s: no memory for %u×%u pixels", name, (unsigned)w, (unsigned)h);
    }
    for (size_t y = 0; y < h; y++)
        ctx.rows[y] = ctx.pixels + y * rowbytes;
    png_read_image(png, ctx.rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(ctx.rows);
    out->width = (int)w;
    out->height = (int)h;
    out->pixels = ctx.pixels;
    return FM_OK;
}

/* ---- JPEG ----------------------------------------------------------------------------------------------- */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr mgr; /* first: libjpeg hands callbacks this pointer */
    jmp_buf jump;
    char msg[MSG_LEN];
    int code;
    uint8_t *pixels;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_ctx *ctx = (jpeg_ctx *)cinfo->err;
    ctx->code = ctx->mgr.msg_code;
    (*cinfo->err->format_message)(cinfo, ctx->msg);
    longjmp(ctx->jump, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_ctx *ctx = (jpeg_ctx *)cinfo->err;
    if (level >= 0)
        return; /* trace messages */
    /* A warning means damaged data: libjpeg would fill the rest with gray and carry on. A truncated or
     * corrupt file must not silently become a training sample, so it is an error. Extraneous bytes before
     * a marker are common in real files and harmless. */
    if (ctx->mgr.msg_code == JWRN_EXTRANEOUS_DATA)
        return;
    jpeg_on_error(cinfo);
}

static void jpeg_silent(j_common_ptr cinfo) { (void)cinfo; }

static fm_status decode_jpeg(const uint8_t *data, size_t size, const char *name, fm_image *out)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    cinfo.err = jpeg_std_error(&ctx.mgr);
    ctx.mgr.error_exit = jpeg_on_error;
    ctx.mgr.emit_message = jpeg_on_message;
    ctx.mgr.output_message = jpeg_silent;
    if (setjmp(ctx.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(ctx.pixels);
        if (ctx.code == JERR_EMPTY_IMAGE)
            return fm_error(FM_ERR_RANGE, "image %s: zero-sized JPEG (%s)", name, ctx.msg);
        if (ctx.code == JERR_OUT_OF_MEMORY)
            return fm_error(FM_ERR_NO_MEMORY, "image %s: JPEG decoder: %s", name, ctx.msg);
        if (ctx.code == JWRN_JPEG_EOF)
            return fm_error(FM_ERR_PARSE, "image %s: JPEG is truncated (%s)", name, ctx.msg);
        return fm_error(FM_ERR_PARSE, "image %s: corrupt JPEG: %s", name, ctx.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    fm_status st = check_dims(name, cinfo.image_width, cinfo.image_height);
    if (st == FM_OK && (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK))
        st = fm_error(FM_ERR_UNSUPPORTED, "image %s: CMYK JPEGs are not supported; convert to RGB", name);
    if (st != FM_OK) {
        jpeg_destroy_decompress(&cinfo);
        return st;
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    const size_t w = cinfo.output_width, h = cinfo.output_height;
    if (cinfo.output_components != 3) {
        jpeg_destroy_decompress(&cinfo);
        return fm_error(FM_ERR_PARSE, "image %s: JPEG decodes to %d components, not RGB", name,
                        cinfo.output_components);
    }
    ctx.pixels = malloc(w * h * 3);
    if (!ctx.pixels) {
        jpeg_destroy_decompress(&cinfo);
        return fm_error(FM_ERR_NO_MEMORY, "image %s: no memory for %zu×%zu pixels", name, w, h);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = ctx.pixels + (size_t)cinfo.output_scanline * w * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    out->width = (int)w;
    out->height = (int)h;
    out->pixels = ctx.pixels;
    return FM_OK;
}

/* ---- loading -------------------------------------------------------------------------------------------- */

fm_status fm_image_decode(const void *data, size_t size, const char *name, fm_image *out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "image: output is NULL");
    memset(out, 0, sizeof *out);
    name = name_or(name);
    if (!data || size == 0)
        return fm_error(FM_ERR_PARSE, "image %s: empty file", name);
    const uint8_t *p = data;
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 8 && memcmp(p, png_magic, 8) == 0)
        return decode_png(p, size, name, out);
    if (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return decode_jpeg(p, size, name, out);
    return fm_error(FM_ERR_PARSE, "image %s: not a PNG or JPEG file (starts with %02x %02x %02x %02x)", name, p[0],
                    size > 1 ? p[1] : 0, size > 2 ? p[2] : 0, size > 3 ? p[3] : 0);
}

fm_status fm_image_load(const char *path, fm_image *out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "image: output is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return fm_error(FM_ERR_INVALID_ARG, "image: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error(FM_ERR_IO, "image %s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return fm_error(FM_ERR_IO, "image %s: not a regular file", path);
    }
    const long len = (long)sb.st_size;
    if ((unsigned long)len > FM_IMAGE_MAX_FILE_BYTES) {
        fclose(f);
        return fm_error(FM_ERR_RANGE, "image %s: file of %ld bytes exceeds the limit of %zu", path, len,
                        (size_t)FM_IMAGE_MAX_FILE_BYTES);
    }
    if (len == 0) {
        fclose(f);
        return fm_error(FM_ERR_PARSE, "image %s: empty file", path);
    }
    uint8_t *buf = malloc((size_t)len);
    if (!buf) {
        fclose(f);
        return fm_error(FM_ERR_NO_MEMORY, "image %s: no memory to read %ld bytes", path, len);
    }
    size_t got = fread(buf, 1, (size_t)len, f);
    int read_error = ferror(f);
    fclose(f);
    if (got != (size_t)len || read_error) {
        free(buf);
        return fm_error(FM_ERR_IO, "image %s: read %zu of %ld bytes", path, got, len);
    }
    fm_status st = fm_image_decode(buf, (size_t)len, path, out);
    free(buf);
    return st;
}

void fm_image_free(fm_image *image)
{
    if (!image)
        return;
    free(image->pixels);
    memset(image, 0, sizeof *image);
}

/* ---- writing -------------------------------------------------------------------------------------------- */

static fm_status check_write_args(const char *what, const char *path, const uint8_t *rgb, int width, int height)
{
    if (!path || !rgb)
        return fm_error(FM_ERR_INVALID_ARG, "%s: NULL path or pixels", what);
    if (width < 1 || height < 1 || width > FM_IMAGE_MAX_SIDE || height > FM_IMAGE_MAX_SIDE)
        return fm_error(FM_ERR_RANGE, "%s %s: size %d×%d is outside [1, %d]", what, path, width, height,
                        FM_IMAGE_MAX_SIDE);
    return FM_OK;
}

fm_status fm_image_write_png(const char *path, const uint8_t *rgb, int width, int height)
{
    FM_TRY(check_write_args("png", path, rgb, width, height));
    png_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    FILE *f = fopen(path, "wb");
    if (!f)
        return fm_error(FM_ERR_IO, "png %s: cannot create: %s", path, strerror(errno));
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        fclose(f);
        return fm_error(FM_ERR_NO_MEMORY, "png %s: cannot create a PNG writer", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return fm_error(FM_ERR_IO, "png %s: %s", path, ctx.msg);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, rgb + (size_t)y * (size_t)width * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(f) != 0)
        return fm_error(FM_ERR_IO, "png %s: write failed: %s", path, strerror(errno));
    return FM_OK;
}

fm_status fm_image_write_jpeg(const char *path, const uint8_t *rgb, int width, int height, int quality)
{
    FM_TRY(check_write_args("jpeg", path, rgb, width, height));
    if (quality < 1 || quality > 100)
        return fm_error(FM_ERR_RANGE, "jpeg %s: quality %d is outside [1, 100]", path, quality);
    FILE *f = fopen(path, "wb");
    if (!f)
        return fm_error(FM_ERR_IO, "jpeg %s: cannot create: %s", path, strerror(errno));
    struct jpeg_compress_struct cinfo;
    jpeg_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    cinfo.err = jpeg_std_error(&ctx.mgr);
    ctx.mgr.error_exit = jpeg_on_error;
    ctx.mgr.output_message = jpeg_silent;
    if (setjmp(ctx.jump)) {
        jpeg_destroy_compress(&cinfo);
        fclose(f);
        return fm_error(FM_ERR_IO, "jpeg %s: %s", path, ctx.msg);
    }
    jpeg_create_compress(&cinfo);
    jpeg_stdio_dest(&cinfo, f);
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)cinfo.next_scanline * (size_t)width * 3);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    if (fclose(f) != 0)
        return fm_error(FM_ERR_IO, "jpeg %s: write failed: %s", path, strerror(errno));
    return FM_OK;
}

/* ---- Pillow-compatible bicubic resampling --------------------------------------------------------------- */

#define PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0)
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Fixed-point weights for outputs first .. first+count-1 of an in_size → out_size resample (Pillow's
 * precompute_coeffs + normalize_coeffs_8bpc). bounds (count, 2): first input and number of taps. */
typedef struct coeffs {
    int ksize;
    int *bounds;
    int32_t *k;
} coeffs;

static int make_coeffs(int in_size, int out_size, int first, int count, coeffs *c)
{
    const double scale = (double)in_size / (double)out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale;
    c->ksize = (int)ceil(support) * 2 + 1;
    /* Zeroed: taps past a row's support must read as 0 weights, and bounds[] is read back by the caller. */
    c->bounds = calloc((size_t)count * 2, sizeof(int));
    c->k = calloc((size_t)count * (size_t)c->ksize, sizeof(int32_t));
    double *w = malloc((size_t)c->ksize * sizeof(double));
    if (!c->bounds || !c->k || !w) {
        free(w);
        return 0;
    }
    for (int i = 0; i < count; i++) {
        const double center = ((double)(first + i) + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        int xmax = (int)(center + support + 0.5);
        if (xmin < 0)
            xmin = 0;
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        double total = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic(((double)(x + xmin) - center + 0.5) / filterscale);
            total += w[x];
        }
        int32_t *k = c->k + (size_t)i * (size_t)c->ksize;
        for (int x = 0; x < c->ksize; x++) {
            double v = x < xmax && total != 0.0 ? w[x] / total : 0.0;
            v *= (double)(1 << PRECISION_BITS);
            k[x] = (int32_t)(v < 0 ? -0.5 + v : 0.5 + v); /* truncation toward zero, as Pillow does */
        }
        c->bounds[2 * i] = xmin;
        c->bounds[2 * i + 1] = xmax;
    }
    free(w);
    return 1;
}

static void free_coeffs(coeffs *c)
{
    free(c->bounds);
    free(c->k);
}

static uint8_t clip8(int32_t v)
{
    if (v < 0)
        return 0;
    v >>= PRECISION_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

/* Resizes `in` to out_w × out_h and keeps the window [x0, x0+cw) × [y0, y0+ch) of the result into out
 * (ch, cw, 3); computing only the window gives the same values as resizing everything and cropping.
 * Returns 0 when out of memory (the only way it can fail), 1 otherwise. */
static int resize_window(const fm_image *in, int out_w, int out_h, int x0, int y0, int cw, int chh, uint8_t *out)
{
    const int need_h = out_w != in->width, need_v = out_h != in->height;
    coeffs hx = {0, NULL, NULL}, vy = {0, NULL, NULL};
    int ok = 1;
    if (need_h)
        ok = make_coeffs(in->width, out_w, x0, cw, &hx);
    if (ok && need_v)
        ok = make_coeffs(in->height, out_h, y0, chh, &vy);
    /* Rows of the input that the vertical pass reads. */
    int row_lo = y0, row_hi = y0 + chh;
    if (ok && need_v) {
        row_lo = vy.bounds[0];
        row_hi = vy.bounds[2 * (chh - 1)] + vy.bounds[2 * (chh - 1) + 1];
    }
    /* Zeroed so that the vertical pass never reads indeterminate bytes, even where its taps carry weight 0. */
    uint8_t *mid = ok ? calloc((size_t)(row_hi - row_lo) * (size_t)cw * 3, 1) : NULL;
    if (!mid) {
        free_coeffs(&hx);
        free_coeffs(&vy);
        return 0;
    }
    /* Horizontal pass (or a copy of the window's columns) over the rows needed. */
    for (int y = row_lo; y < row_hi; y++) {
        const uint8_t *src = in->pixels + (size_t)y * (size_t)in->width * 3;
        uint8_t *dst = mid + (size_t)(y - row_lo) * (size_t)cw * 3;
        if (!need_h) {
            memcpy(dst, src + (size_t)x0 * 3, (size_t)cw * 3);
            continue;
        }
        for (int x = 0; x < cw; x++) {
            const int xmin = hx.bounds[2 * x], taps = hx.bounds[2 * x + 1];
            const int32_t *k = hx.k + (size_t)x * (size_t)hx.ksize;
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int t = 0; t < taps; t++) {
                const uint8_t *p = src + (size_t)(xmin + t) * 3;
                s0 += p[0] * k[t];
                s1 += p[1] * k[t];
                s2 += p[2] * k[t];
            }
            dst[3 * x] = clip8(s0);
            dst[3 * x + 1] = clip8(s1);
            dst[3 * x + 2] = clip8(s2);
        }
    }
    /* Vertical pass. */
    for (int y = 0; y < chh; y++) {
        uint8_t *dst = out + (size_t)y * (size_t)cw * 3;
        if (!need_v) {
            memcpy(dst, mid + (size_t)(y0 + y - row_lo) * (size_t)cw * 3, (size_t)cw * 3);
            continue;
        }
        const int ymin = vy.bounds[2 * y], taps = vy.bounds[2 * y + 1];
        const int32_t *k = vy.k + (size_t)y * (size_t)vy.ksize;
        for (size_t x = 0; x < (size_t)cw * 3; x++) {
            int32_t s = 1 << (PRECISION_BITS - 1);
            for (int t = 0; t < taps; t++)
                s += mid[(size_t)(ymin + t - row_lo) * (size_t)cw * 3 + x] * k[t];
            dst[x] = clip8(s);
        }
    }
    free(mid);
    free_coeffs(&hx);
    free_coeffs(&vy);
    return 1;
}

/* The caller has checked that image and its pixels are not NULL. */
static fm_status check_image_size(const fm_image *image, const char *what)
{
    if (image->width < 1 || image->height < 1 || image->width > FM_IMAGE_MAX_SIDE || image->height > FM_IMAGE_MAX_SIDE)
        return fm_error(FM_ERR_RANGE, "%s: image size %d×%d is outside [1, %d]", what, image->width, image->height,
                        FM_IMAGE_MAX_SIDE);
    return FM_OK;
}

fm_status fm_image_resize_bicubic(const fm_image *image, int out_width, int out_height, uint8_t *out)
{
    if (!image || !image->pixels)
        return fm_error(FM_ERR_INVALID_ARG, "image resize: image is NULL or empty");
    FM_TRY(check_image_size(image, "image resize"));
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "image resize: output is NULL");
    if (out_width < 1 || out_height < 1 || out_width > FM_IMAGE_MAX_SIDE || out_height > FM_IMAGE_MAX_SIDE)
        return fm_error(FM_ERR_RANGE, "image resize: target %d×%d is outside [1, %d]", out_width, out_height,
                        FM_IMAGE_MAX_SIDE);
    if (!resize_window(image, out_width, out_height, 0, 0, out_width, out_height, out))
        return fm_error(FM_ERR_NO_MEMORY, "image resize: no memory for %d×%d → %d×%d", image->width, image->height,
                        out_width, out_height);
    return FM_OK;
}

fm_status fm_image_clip_preprocess(const fm_image *image, int size, float *out)
{
    if (!image || !image->pixels)
        return fm_error(FM_ERR_INVALID_ARG, "clip preprocess: image is NULL or empty");
    FM_TRY(check_image_size(image, "clip preprocess"));
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "clip preprocess: output is NULL");
    if (size < 1 || size > 4096)
        return fm_error(FM_ERR_RANGE, "clip preprocess: size %d is outside [1, 4096]", size);
    /* torchvision.transforms.Resize(size): shorter side to `size`, longer side int(size·long/short). */
    const int w = image->width, h = image->height;
    int new_w, new_h;
    if (w <= h) {
        new_w = size;
        new_h = (int)((double)size * (double)h / (double)w);
    } else {
        new_h = size;
        new_w = (int)((double)size * (double)w / (double)h);
    }
    if (new_w < size)
        new_w = size;
    if (new_h < size)
        new_h = size;
    /* CenterCrop: Python's round() of (dim - size) / 2, which rounds half to even (the FE default). */
    const int left = (int)nearbyint((double)(new_w - size) / 2.0);
    const int top = (int)nearbyint((double)(new_h - size) / 2.0);
    uint8_t *crop = malloc((size_t)size * (size_t)size * 3);
    if (!crop)
        return fm_error(FM_ERR_NO_MEMORY, "clip preprocess: no memory for %d×%d", size, size);
    if (!resize_window(image, new_w, new_h, left, top, size, size, crop)) {
        free(crop);
        return fm_error(FM_ERR_NO_MEMORY, "image resize: no memory for %d×%d → %d×%d", w, h, new_w, new_h);
    }
    static const float mean[3] = FM_CLIP_MEAN, stdv[3] = FM_CLIP_STD;
    const size_t plane = (size_t)size * (size_t)size;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            out[(size_t)c * plane + i] = ((float)crop[3 * i + (size_t)c] / 255.0f - mean[c]) / stdv[c];
    free(crop);
    return FM_OK;
}

fm_status fm_image_load_clip(const char *path, int size, float *out)
{
    fm_image image;
    FM_TRY(fm_image_load(path, &image));
    fm_status st = fm_image_clip_preprocess(&image, size, out);
    fm_image_free(&image);
    return st;
}
