/* Gradient check of the elementwise activations, exact GELU and QuickGELU (fm_gelu_*, fm_quick_gelu_*):
 * forward against float64 formulas, backward against central differences, accumulation, refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

typedef enum act_kind { ACT_GELU, ACT_QUICK_GELU } act_kind;

typedef struct act_ctx {
    act_kind kind;
    size_t n;
    const double *x, *wout;
    double *out;
} act_ctx;

static double act_ref1(act_kind kind, double x)
{
    if (kind == ACT_GELU)
        return 0.5 * x * erfc(-x / sqrt(2.0)); /* = 0.5·x·(1 + erf(x/√2)) without the cancellation for x ≪ 0 */
    return x / (1.0 + exp(-1.702 * x));
}

static double act_obj(void *p)
{
    act_ctx *c = p;
    for (size_t i = 0; i < c->n; i++)
        c->out[i] = act_ref1(c->kind, c->x[i]);
    return fm_test_dot(c->wout, c->out, c->n);
}

typedef fm_status (*act_fwd)(fm_tensor *out, const fm_tensor *inp);
typedef fm_status (*act_bwd)(fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout);

static void run_act(uint64_t stream, act_kind kind, int ndim, const int64_t *shape, size_t fd_max)
{
    const char *name = kind == ACT_GELU ? "gelu" : "quick_gelu";
    act_fwd fwd = kind == ACT_GELU ? fm_gelu_forward : fm_quick_gelu_forward;
    act_bwd bwd = kind == ACT_GELU ? fm_gelu_backward : fm_quick_gelu_backward;
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];

    /* [-5, 5) reaches both tails, where GELU's 1 + erf and QuickGELU's sigmoid lose precision first. */
    gc_buf x = gc_rand(&rng, n, -5.0f, 5.0f), out = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tx = gc_f32(&x, ndim, shape), tout = gc_f32(&out, ndim, shape);
    GC_EXPECT(fwd(&tout, &tx), FM_OK);

    gc_buf wout = gc_rand(&rng, n, -1.0f, 1.0f);
    act_ctx ctx = {kind, n, x.d, wout.d, gc_dalloc(n)};
    act_obj(&ctx);
    char what[64];
    snprintf(what, sizeof what, "%s out", name);
    fm_test_assert_close(what, out.f, ctx.out, n, GC_FWD_RTOL, GC_FWD_ATOL);

    gc_window wx = gc_pick(&rng, n, fd_max);
    double *fdx = gc_dalloc(wx.n);
    gc_fd(act_obj, &ctx, x.d, wx, fdx);
    gc_buf dx = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_tensor tdx = gc_f32(&dx, ndim, shape), tdout = gc_f32(&wout, ndim, shape);
    snprintf(what, sizeof what, "%s dinp", name);
    for (int call = 1; call <= 2; call++) {
        GC_EXPECT(bwd(&tdx, &tx, &tdout), FM_OK);
        gc_check_grad(what, dx.f, dx.d, fdx, wx, call);
    }
    GC_EXPECT(bwd(NULL, &tx, &tdout), FM_OK); /* nothing to do, but valid */
    gc_check_grad(what, dx.f, dx.d, fdx, wx, 2);

    free(fdx), free(ctx.out);
    gc_free(&x), gc_free(&out), gc_free(&wout), gc_free(&dx);
}

static void test_gelu_small(void **state)
{
    (void)state;
    run_act(1, ACT_GELU, 3, (const int64_t[]){5, 3, 7}, SIZE_MAX);
}

static void test_quick_gelu_small(void **state)
{
    (void)state;
    run_act(2, ACT_QUICK_GELU, 2, (const int64_t[]){5, 7}, SIZE_MAX);
}

/* Past the OpenMP threshold; differences on windows. */
static void test_gelu_large(void **state)
{
    (void)state;
    run_act(3, ACT_GELU, 2, (const int64_t[]){1, 40009}, 16);
}

static void test_quick_gelu_large(void **state)
{
    (void)state;
    run_act(4, ACT_QUICK_GELU, 1, (const int64_t[]){40009}, 16);
}

/* GELU at large |x| must give x and 0, and QuickGELU must not turn exp overflow into NaN. */
static void test_activation_tails(void **state)
{
    (void)state;
    float in[6] = {-200.0f, -60.0f, -9.0f, 9.0f, 60.0f, 200.0f}, out[6], dx[6] = {0}, ones[6] = {1, 1, 1, 1, 1, 1};
    const int64_t shape[1] = {6};
    fm_tensor tin = gc_view(in, FM_F32, 1, shape), tout = gc_view(out, FM_F32, 1, shape);
    fm_tensor tdx = gc_view(dx, FM_F32, 1, shape), tones = gc_view(ones, FM_F32, 1, shape);
    for (int k = 0; k < 2; k++) {
        act_kind kind = k ? ACT_QUICK_GELU : ACT_GELU;
        GC_EXPECT(k ? fm_quick_gelu_forward(&tout, &tin) : fm_gelu_forward(&tout, &tin), FM_OK);
        memset(dx, 0, sizeof dx);
        GC_EXPECT(k ? fm_quick_gelu_backward(&tdx, &tin, &tones) : fm_gelu_backward(&tdx, &tin, &tones), FM_OK);
        double want[6], dwant[6];
        for (int i = 0; i < 6; i++) {
            want[i] = act_ref1(kind, in[i]);
            double x = in[i], sig = 1.0 / (1.0 + exp(-1.702 * x));
            dwant[i] = kind == ACT_GELU
                           ? 0.5 * erfc(-x / sqrt(2.0)) + x * exp(-0.5 * x * x) / sqrt(2.0 * 3.14159265358979323846)
                           : sig + 1.702 * x * sig * (1.0 - sig);
        }
        fm_test_assert_close(k ? "quick_gelu tails" : "gelu tails", out, want, 6, GC_FWD_RTOL, 1e-30);
        fm_test_assert_close(k ? "quick_gelu tail slopes" : "gelu tail slopes", dx, dwant, 6, GC_RTOL, 1e-6);
    }
}

static void test_activation_rejects(void **state)
{
    (void)state;
    float buf[64] = {0};
    int32_t ibuf[64] = {0};
    fm_tensor x = gc_view(buf, FM_F32, 2, (const int64_t[]){5, 7});
    fm_tensor x_t = gc_view(buf, FM_F32, 2, (const int64_t[]){7, 5});
    fm_tensor x_int = gc_view(ibuf, FM_I32, 2, (const int64_t[]){5, 7});
    GC_EXPECT(fm_gelu_forward(&x_t, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_quick_gelu_forward(&x_t, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_gelu_forward(&x, &x_int), FM_ERR_DTYPE);
    GC_EXPECT(fm_quick_gelu_forward(&x_int, &x), FM_ERR_DTYPE);
    GC_EXPECT(fm_gelu_backward(&x_t, &x, &x), FM_ERR_SHAPE);
    GC_EXPECT(fm_quick_gelu_backward(&x, &x, &x_t), FM_ERR_SHAPE);
    GC_EXPECT(fm_gelu_backward(&x, &x_int, &x), FM_ERR_DTYPE);
    GC_EXPECT(fm_gelu_forward(NULL, &x), FM_ERR_INVALID_ARG);

    fm_tensor x_gpu = x;
    x_gpu.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_gelu_forward(&x, &x_gpu), FM_ERR_DEVICE);
    GC_EXPECT(fm_quick_gelu_backward(&x, &x_gpu, &x), FM_ERR_DEVICE);
#ifndef FEDMM_WITH_CUDA
    /* Only without a CUDA backend: with one, these would launch kernels on host memory. */
    GC_EXPECT(fm_gelu_forward(&x_gpu, &x_gpu), FM_ERR_DEVICE);
    GC_EXPECT(fm_quick_gelu_backward(&x_gpu, &x_gpu, &x_gpu), FM_ERR_DEVICE);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gelu_small),       cmocka_unit_test(test_quick_gelu_small),
        cmocka_unit_test(test_gelu_large),       cmocka_unit_test(test_quick_gelu_large),
        cmocka_unit_test(test_activation_tails), cmocka_unit_test(test_activation_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
