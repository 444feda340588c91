/* Gradient check of the ViT patch embedding (fm_patch_embed_*): the saved im2col columns and the output
 * against a float64 convolution, backward against central differences (and every image gradient against the
 * float64 transposed convolution), accumulation, NULL gradients, refusals. */
#include "gc_util.h"

#include "fedmm/ops.h"

typedef struct pe_ctx {
    size_t B, Cin, H, W, P, C;
    const double *img, *w, *bias; /* (B, Cin, H, W), (C, Cin, P, P), (C) or NULL */
    const double *wout;           /* (B, NP, C) */
    double *out;                  /* (B, NP, C) */
} pe_ctx;

static size_t pe_np(const pe_ctx *c) { return (c->H / c->P) * (c->W / c->P); }

/* Index of pixel (b, ci, py·P + ky, px·P + kx): input of patch (py, px) at kernel tap (ci, ky, kx). */
static size_t pe_pixel(const pe_ctx *c, size_t b, size_t ci, size_t py, size_t px, size_t ky, size_t kx)
{
    return ((b * c->Cin + ci) * c->H + py * c->P + ky) * c->W + px * c->P + kx;
}

static double pe_obj(void *p)
{
    pe_ctx *c = p;
    size_t npw = c->W / c->P, NP = pe_np(c);
    for (size_t b = 0; b < c->B; b++)
        for (size_t q = 0; q < NP; q++)
            for (size_t o = 0; o < c->C; o++) {
                double s = c->bias ? c->bias[o] : 0.0;
                for (size_t ci = 0; ci < c->Cin; ci++)
                    for (size_t ky = 0; ky < c->P; ky++)
                        for (size_t kx = 0; kx < c->P; kx++)
                            s += c->img[pe_pixel(c, b, ci, q / npw, q % npw, ky, kx)] *
                                 c->w[((o * c->Cin + ci) * c->P + ky) * c->P + kx];
                c->out[(b * NP + q) * c->C + o] = s;
            }
    return fm_test_dot(c->wout, c->out, c->B * NP * c->C);
}

static void run_patch_embed(uint64_t stream, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t P, int64_t C,
                            int use_bias, size_t fd_max)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    int64_t NP = (H / P) * (W / P), K = Cin * P * P;
    const int64_t ishape[4] = {B, Cin, H, W}, wshape[4] = {C, Cin, P, P}, bshape[1] = {C};
    const int64_t cshape[2] = {B * NP, K}, oshape[3] = {B, NP, C};

    gc_buf img = gc_rand(&rng, (size_t)(B * Cin * H * W), -1.0f, 1.0f), w = gc_rand(&rng, (size_t)(C * K), -1.0f, 1.0f);
    gc_buf bias = gc_rand(&rng, (size_t)C, -1.0f, 1.0f), cols = gc_rand(&rng, (size_t)(B * NP * K), -1.0f, 1.0f);
    gc_buf out = gc_rand(&rng, (size_t)(B * NP * C), -1.0f, 1.0f);
    fm_tensor timg = gc_f32(&img, 4, ishape), tw = gc_f32(&w, 4, wshape), tb = gc_f32(&bias, 1, bshape);
    fm_tensor tcols = gc_f32(&cols, 2, cshape), tout = gc_f32(&out, 3, oshape);
    GC_EXPECT(fm_patch_embed_forward(&tout, &tcols, &timg, &tw, use_bias ? &tb : NULL), FM_OK);

    gc_buf wout = gc_rand(&rng, out.n, -1.0f, 1.0f);
    pe_ctx ctx = {
        (size_t)B, (size_t)Cin,     (size_t)H, (size_t)W, (size_t)P, (size_t)C, img.d, w.d, use_bias ? bias.d : NULL,
        wout.d,    gc_dalloc(out.n)};
    pe_obj(&ctx);
    fm_test_assert_close("patch_embed out", out.f, ctx.out, out.n, GC_FWD_RTOL, GC_FWD_ATOL);

    /* cols row b·NP + q, column (ci·P + ky)·P + kx holds that pixel, copied exactly; and the transposed
     * convolution in float64 gives every entry of the image gradient. */
    double *want_cols = gc_dalloc(cols.n), *dimg_exact = gc_dalloc(img.n);
    size_t npw = (size_t)(W / P);
    for (size_t b = 0; b < (size_t)B; b++)
        for (size_t q = 0; q < (size_t)NP; q++)
            for (size_t k = 0; k < (size_t)K; k++) {
                size_t ci = k / (size_t)(P * P), ky = (k / (size_t)P) % (size_t)P, kx = k % (size_t)P;
                size_t pix = pe_pixel(&ctx, b, ci, q / npw, q % npw, ky, kx);
                want_cols[(b * (size_t)NP + q) * (size_t)K + k] = img.d[pix];
                for (size_t o = 0; o < (size_t)C; o++)
                    dimg_exact[pix] += wout.d[(b * (size_t)NP + q) * (size_t)C + o] * w.d[o * (size_t)K + k];
            }
    fm_test_assert_close("patch_embed cols", cols.f, want_cols, cols.n, 0.0, 0.0);

    gc_window wi = gc_pick(&rng, img.n, fd_max), ww = gc_pick(&rng, w.n, fd_max), wb = gc_pick(&rng, bias.n, fd_max);
    double *fdi = gc_dalloc(wi.n), *fdw = gc_dalloc(ww.n), *fdb = gc_dalloc(wb.n);
    gc_fd(pe_obj, &ctx, img.d, wi, fdi);
    gc_fd(pe_obj, &ctx, w.d, ww, fdw);
    if (use_bias)
        gc_fd(pe_obj, &ctx, bias.d, wb, fdb);
    else /* dbias is still Σ dout over patches: the derivative wrt a bias of 0 */
        for (size_t i = 0; i < wb.n; i++)
            for (size_t r = 0; r < (size_t)(B * NP); r++)
                fdb[i] += wout.d[r * (size_t)C + wb.off + i];

    gc_buf dimg = gc_rand(&rng, img.n, -1.0f, 1.0f), dw = gc_rand(&rng, w.n, -1.0f, 1.0f);
    gc_buf db = gc_rand(&rng, bias.n, -1.0f, 1.0f);
    fm_tensor tdimg = gc_f32(&dimg, 4, ishape), tdw = gc_f32(&dw, 4, wshape), tdb = gc_f32(&db, 1, bshape);
    fm_tensor tdout = gc_f32(&wout, 3, oshape);
    /* dimg sums over C, dweight over B·NP patch rows: float32 GEMM sums that long need a wider tolerance. */
    double atol_di = gc_atol_sum((size_t)C), atol_dw = gc_atol_sum((size_t)(B * NP));
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(fm_patch_embed_backward(&tdw, &tdb, &tdimg, &tdout, &tcols, &tw), FM_OK);
        gc_check_grad_atol("patch_embed dimg", dimg.f, dimg.d, fdi, wi, call, atol_di);
        gc_check_grad_atol("patch_embed dweight", dw.f, dw.d, fdw, ww, call, atol_dw);
        gc_check_grad("patch_embed dbias", db.f, db.d, fdb, wb, call);
        gc_check_grad_atol("patch_embed dimg (all, exact)", dimg.f, dimg.d, dimg_exact, (gc_window){0, img.n}, call,
                           atol_di);
    }
    /* Without dimg the op needs no image size: only B·NP from dout. */
    GC_EXPECT(fm_patch_embed_backward(&tdw, NULL, NULL, &tdout, &tcols, &tw), FM_OK);
    gc_check_grad_atol("patch_embed dweight (alone)", dw.f, dw.d, fdw, ww, 3, atol_dw);
    gc_check_grad("patch_embed dbias (skipped)", db.f, db.d, fdb, wb, 2);
    gc_check_grad_atol("patch_embed dimg (skipped)", dimg.f, dimg.d, fdi, wi, 2, atol_di);
    GC_EXPECT(fm_patch_embed_backward(NULL, NULL, &tdimg, &tdout, &tcols, &tw), FM_OK);
    gc_check_grad_atol("patch_embed dimg (alone)", dimg.f, dimg.d, dimg_exact, (gc_window){0, img.n}, 3, atol_di);

    free(want_cols), free(dimg_exact), free(fdi), free(fdw), free(fdb), free(ctx.out);
    gc_free(&img), gc_free(&w), gc_free(&bias), gc_free(&cols), gc_free(&out), gc_free(&wout);
    gc_free(&dimg), gc_free(&dw), gc_free(&db);
}

static void test_patch_embed_small(void **state)
{
    (void)state;
    run_patch_embed(1, 2, 3, 6, 9, 3, 5, 1, SIZE_MAX);
}

static void test_patch_embed_no_bias(void **state)
{
    (void)state;
    run_patch_embed(2, 3, 1, 4, 2, 2, 7, 0, SIZE_MAX);
}

/* More patch rows than one scratch tile (2112 = 8·256 + 64) and past the OpenMP threshold. */
static void test_patch_embed_large(void **state)
{
    (void)state;
    run_patch_embed(3, 2, 4, 96, 99, 3, 5, 1, 8);
}

static void test_patch_embed_rejects(void **state)
{
    (void)state;
    /* Separate buffers for the calls that succeed; the refused ones may share `buf` as they touch nothing. */
    static float buf[2 * 3 * 6 * 9], ibuf_img[2 * 3 * 6 * 9], wbuf[5 * 27], bbuf[5], cbuf[12 * 27], obuf[2 * 6 * 5];
    static float dibuf[2 * 3 * 6 * 9], dwbuf[5 * 27], dbbuf[5];
    int32_t ibuf[8] = {0};
    fm_tensor img = gc_view(ibuf_img, FM_F32, 4, (const int64_t[]){2, 3, 6, 9});
    fm_tensor w = gc_view(wbuf, FM_F32, 4, (const int64_t[]){5, 3, 3, 3});
    fm_tensor bias = gc_view(bbuf, FM_F32, 1, (const int64_t[]){5});
    fm_tensor cols = gc_view(cbuf, FM_F32, 2, (const int64_t[]){12, 27});
    fm_tensor out = gc_view(obuf, FM_F32, 3, (const int64_t[]){2, 6, 5});
    fm_tensor dimg = gc_view(dibuf, FM_F32, 4, (const int64_t[]){2, 3, 6, 9});
    fm_tensor dw = gc_view(dwbuf, FM_F32, 4, (const int64_t[]){5, 3, 3, 3});
    fm_tensor db = gc_view(dbbuf, FM_F32, 1, (const int64_t[]){5});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img, &w, &bias), FM_OK);

    fm_tensor img_odd = gc_view(buf, FM_F32, 4, (const int64_t[]){2, 3, 6, 8});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img_odd, &w, &bias), FM_ERR_SHAPE);
    fm_tensor img_cin = gc_view(buf, FM_F32, 4, (const int64_t[]){2, 2, 6, 9});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img_cin, &w, &bias), FM_ERR_SHAPE);
    fm_tensor w_rect = gc_view(buf, FM_F32, 4, (const int64_t[]){5, 3, 3, 2});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img, &w_rect, &bias), FM_ERR_SHAPE);
    fm_tensor w_flat = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 27});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img, &w_flat, &bias), FM_ERR_SHAPE);
    fm_tensor cols_bad = gc_view(buf, FM_F32, 2, (const int64_t[]){12, 26});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols_bad, &img, &w, &bias), FM_ERR_SHAPE);
    fm_tensor out_bad = gc_view(buf, FM_F32, 3, (const int64_t[]){2, 5, 5});
    GC_EXPECT(fm_patch_embed_forward(&out_bad, &cols, &img, &w, &bias), FM_ERR_SHAPE);
    fm_tensor bias_bad = gc_view(buf, FM_F32, 1, (const int64_t[]){4});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img, &w, &bias_bad), FM_ERR_SHAPE);
    fm_tensor bias_int = gc_view(ibuf, FM_I32, 1, (const int64_t[]){5});
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img, &w, &bias_int), FM_ERR_DTYPE);
    GC_EXPECT(fm_patch_embed_forward(&out, NULL, &img, &w, &bias), FM_ERR_INVALID_ARG);

    GC_EXPECT(fm_patch_embed_backward(&dw, &db, &dimg, &out, &cols, &w), FM_OK);
    GC_EXPECT(fm_patch_embed_backward(&w, &bias, &img, &out_bad, &cols, &w), FM_ERR_SHAPE);
    GC_EXPECT(fm_patch_embed_backward(&w, &bias, &img_odd, &out, &cols, &w), FM_ERR_SHAPE);
    GC_EXPECT(fm_patch_embed_backward(&w_rect, NULL, NULL, &out, &cols, &w), FM_ERR_SHAPE);
    GC_EXPECT(fm_patch_embed_backward(NULL, &bias_bad, NULL, &out, &cols, &w), FM_ERR_SHAPE);
    GC_EXPECT(fm_patch_embed_backward(&w, NULL, NULL, &out, &cols_bad, &w), FM_ERR_SHAPE);
    GC_EXPECT(fm_patch_embed_backward(NULL, &bias_int, NULL, &out, &cols, &w), FM_ERR_DTYPE);

    fm_tensor img_gpu = img;
    img_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_patch_embed_forward(&out, &cols, &img_gpu, &w, &bias), FM_ERR_DEVICE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patch_embed_small),
        cmocka_unit_test(test_patch_embed_no_bias),
        cmocka_unit_test(test_patch_embed_large),
        cmocka_unit_test(test_patch_embed_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
