/* Gradient check of the token + position embedding (fm_embedding_*): forward against float64, backward
 * against central differences (with repeated token ids, unused vocabulary rows and unused positions),
 * accumulation, and refusals including out-of-range token ids. */
#include "gc_util.h"

#include "fedmm/ops.h"

typedef struct emb_ctx {
    size_t B, T, C;
    const int32_t *tokens;   /* (B, T) */
    const double *wte, *wpe; /* (V, C), (T_max, C) */
    const double *wout;      /* (B, T, C) */
    double *out;             /* (B, T, C) */
} emb_ctx;

static double emb_obj(void *p)
{
    emb_ctx *c = p;
    for (size_t bt = 0; bt < c->B * c->T; bt++)
        for (size_t k = 0; k < c->C; k++)
            c->out[bt * c->C + k] = c->wte[(size_t)c->tokens[bt] * c->C + k] + c->wpe[(bt % c->T) * c->C + k];
    return fm_test_dot(c->wout, c->out, c->B * c->T * c->C);
}

static void run_embedding(uint64_t stream, int64_t B, int64_t T, int64_t C, int64_t V, int64_t Tmax, size_t fd_max)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t BT = (size_t)(B * T), n = BT * (size_t)C;
    int32_t *tokens = fm_test_alloc(BT * sizeof(int32_t));
    for (size_t i = 0; i < BT; i++)
        tokens[i] = (int32_t)fm_rng_below(&rng, (uint64_t)V);
    tokens[BT - 1] = tokens[0]; /* at least one repeated id, so dwte must sum, not overwrite */
    const int64_t tshape[2] = {B, T}, eshape[2] = {V, C}, pshape[2] = {Tmax, C}, oshape[3] = {B, T, C};

    gc_buf wte = gc_rand(&rng, (size_t)(V * C), -1.0f, 1.0f), wpe = gc_rand(&rng, (size_t)(Tmax * C), -1.0f, 1.0f);
    gc_buf out = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor ttok = gc_view(tokens, FM_I32, 2, tshape), twte = gc_f32(&wte, 2, eshape);
    fm_tensor twpe = gc_f32(&wpe, 2, pshape), tout = gc_f32(&out, 3, oshape);
    GC_EXPECT(fm_embedding_forward(&tout, &ttok, &twte, &twpe), FM_OK);

    gc_buf wout = gc_rand(&rng, n, -1.0f, 1.0f);
    emb_ctx ctx = {(size_t)B, (size_t)T, (size_t)C, tokens, wte.d, wpe.d, wout.d, gc_dalloc(n)};
    emb_obj(&ctx);
    fm_test_assert_close("embedding out", out.f, ctx.out, n, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_window we = gc_pick(&rng, wte.n, fd_max), wp = gc_pick(&rng, wpe.n, fd_max);
    double *fde = gc_dalloc(we.n), *fdp = gc_dalloc(wp.n);
    gc_fd(emb_obj, &ctx, wte.d, we, fde);
    gc_fd(emb_obj, &ctx, wpe.d, wp, fdp);
    gc_buf dwte = gc_rand(&rng, wte.n, -1.0f, 1.0f), dwpe = gc_rand(&rng, wpe.n, -1.0f, 1.0f);
    fm_tensor tdwte = gc_f32(&dwte, 2, eshape), tdwpe = gc_f32(&dwpe, 2, pshape), tdout = gc_f32(&wout, 3, oshape);
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(fm_embedding_backward(&tdwte, &tdwpe, &tdout, &ttok), FM_OK);
        gc_check_grad("embedding dwte", dwte.f, dwte.d, fde, we, call);
        gc_check_grad("embedding dwpe", dwpe.f, dwpe.d, fdp, wp, call);
    }
    GC_EXPECT(fm_embedding_backward(NULL, &tdwpe, &tdout, &ttok), FM_OK);
    gc_check_grad("embedding dwte (skipped)", dwte.f, dwte.d, fde, we, 2);
    gc_check_grad("embedding dwpe (alone)", dwpe.f, dwpe.d, fdp, wp, 3);
    GC_EXPECT(fm_embedding_backward(&tdwte, NULL, &tdout, &ttok), FM_OK);
    gc_check_grad("embedding dwte (alone)", dwte.f, dwte.d, fde, we, 3);

    free(tokens), free(fde), free(fdp), free(ctx.out);
    gc_free(&wte), gc_free(&wpe), gc_free(&out), gc_free(&wout), gc_free(&dwte), gc_free(&dwpe);
}

static void test_embedding_small(void **state)
{
    (void)state;
    run_embedding(1, 2, 5, 7, 11, 8, SIZE_MAX);
}

/* C = 67 spans two column blocks of the dwte scatter, the second of one column; T = T_max. */
static void test_embedding_wide(void **state)
{
    (void)state;
    run_embedding(2, 3, 4, 67, 5, 4, SIZE_MAX);
}

/* Past the OpenMP threshold; differences on windows. */
static void test_embedding_large(void **state)
{
    (void)state;
    run_embedding(3, 3, 5, 4500, 11, 6, 24);
}

static void test_embedding_bad_token(void **state)
{
    (void)state;
    float buf[2 * 3 * 4] = {0};
    int32_t tokens[6] = {0, 1, 2, 3, 4, 5};
    fm_tensor ttok = gc_view(tokens, FM_I32, 2, (const int64_t[]){2, 3});
    fm_tensor wte = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 4});
    fm_tensor wpe = gc_view(buf, FM_F32, 2, (const int64_t[]){3, 4});
    fm_tensor out = gc_view(buf, FM_F32, 3, (const int64_t[]){2, 3, 4});

    /* id 5 at (b=1, t=2) with V = 5 */
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte, &wpe), FM_ERR_RANGE);
    const char *msg = fm_last_error();
    if (!strstr(msg, "5") || !strstr(msg, "b=1") || !strstr(msg, "t=2"))
        fail_msg("the message should name the id and its position: \"%s\"", msg);
    GC_EXPECT(fm_embedding_backward(&wte, NULL, &out, &ttok), FM_ERR_RANGE);
    /* dwpe alone never indexes by token id, so it needs no range check */
    GC_EXPECT(fm_embedding_backward(NULL, &wpe, &out, &ttok), FM_OK);
    tokens[5] = 4;
    tokens[1] = -1;
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte, &wpe), FM_ERR_RANGE);
    msg = fm_last_error();
    if (!strstr(msg, "-1") || !strstr(msg, "b=0") || !strstr(msg, "t=1"))
        fail_msg("the message should name the id and its position: \"%s\"", msg);
    tokens[1] = 1;
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte, &wpe), FM_OK);
}

static void test_embedding_rejects(void **state)
{
    (void)state;
    float buf[64] = {0};
    int32_t tokens[6] = {0, 1, 2, 3, 4, 0};
    fm_tensor ttok = gc_view(tokens, FM_I32, 2, (const int64_t[]){2, 3});
    fm_tensor tok_f = gc_view(buf, FM_F32, 2, (const int64_t[]){2, 3});
    fm_tensor wte = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 4});
    fm_tensor wpe = gc_view(buf, FM_F32, 2, (const int64_t[]){3, 4});
    fm_tensor out = gc_view(buf, FM_F32, 3, (const int64_t[]){2, 3, 4});

    GC_EXPECT(fm_embedding_forward(&out, &tok_f, &wte, &wpe), FM_ERR_DTYPE);
    fm_tensor wte_int = gc_view(tokens, FM_I32, 2, (const int64_t[]){2, 3});
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte_int, &wpe), FM_ERR_DTYPE);
    fm_tensor wpe_short = gc_view(buf, FM_F32, 2, (const int64_t[]){2, 4});
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte, &wpe_short), FM_ERR_SHAPE);
    fm_tensor wpe_narrow = gc_view(buf, FM_F32, 2, (const int64_t[]){3, 5});
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte, &wpe_narrow), FM_ERR_SHAPE);
    fm_tensor out_bad = gc_view(buf, FM_F32, 3, (const int64_t[]){2, 4, 4});
    GC_EXPECT(fm_embedding_forward(&out_bad, &ttok, &wte, &wpe), FM_ERR_SHAPE);
    fm_tensor tok_1d = gc_view(tokens, FM_I32, 1, (const int64_t[]){6});
    GC_EXPECT(fm_embedding_forward(&out, &tok_1d, &wte, &wpe), FM_ERR_SHAPE);

    GC_EXPECT(fm_embedding_backward(&wte, &wpe, &out_bad, &ttok), FM_ERR_SHAPE);
    GC_EXPECT(fm_embedding_backward(&wte, &wpe_short, &out, &ttok), FM_ERR_SHAPE);
    GC_EXPECT(fm_embedding_backward(&wpe_narrow, NULL, &out, &ttok), FM_ERR_SHAPE);
    GC_EXPECT(fm_embedding_backward(&wte, &wpe, &out, &tok_f), FM_ERR_DTYPE);

    fm_tensor wte_gpu = wte;
    wte_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_embedding_forward(&out, &ttok, &wte_gpu, &wpe), FM_ERR_DEVICE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding_small),   cmocka_unit_test(test_embedding_wide),
        cmocka_unit_test(test_embedding_large),   cmocka_unit_test(test_embedding_bad_token),
        cmocka_unit_test(test_embedding_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
