/* Check of the AdamW step (fm_adamw_update) against a float64 reference of torch.optim.AdamW's update over
 * several steps with fresh gradients: decoupled weight decay, bias correction, late steps; the
 * hyper-parameter and shape refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"

/* torch.optim.AdamW, one step: p -= lr·wd·p; m, v updated; p -= lr·m̂/(√v̂ + eps). */
static void ref_adamw(double *p, const double *g, double *m, double *v, size_t n, fm_adamw_hparams hp, int t)
{
    const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, eps = hp.eps, wd = hp.weight_decay;
    const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    for (size_t i = 0; i < n; i++) {
        p[i] -= lr * wd * p[i];
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + eps);
    }
}

static void run_steps(uint64_t stream, int ndim, const int64_t *shape, fm_adamw_hparams hp, int t0, int steps)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    gc_buf p = gc_rand(&rng, n, -2.0f, 2.0f), m = gc_zeros(n), v = gc_zeros(n);
    if (t0 > 1) { /* resume mid-run: moments already non-zero */
        fm_test_fill(&rng, m.f, n, -0.1f, 0.1f);
        fm_test_fill(&rng, v.f, n, 1e-4f, 1e-2f);
        fm_test_to_double(m.d, m.f, n);
        fm_test_to_double(v.d, v.f, n);
    }
    fm_tensor tp = gc_f32(&p, ndim, shape), tm = gc_f32(&m, ndim, shape), tv = gc_f32(&v, ndim, shape);
    for (int t = t0; t < t0 + steps; t++) {
        gc_buf g = gc_rand(&rng, n, -1.0f, 1.0f);
        for (size_t i = 0; i < n; i += 5) /* gradients of different scales */
            g.f[i] *= 10.0f;
        fm_test_to_double(g.d, g.f, n);
        fm_tensor tg = gc_f32(&g, ndim, shape);
        GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, hp, t), FM_OK);
        ref_adamw(p.d, g.d, m.d, v.d, n, hp, t);
        char what[64];
        snprintf(what, sizeof what, "adamw params after step %d", t);
        fm_test_assert_close(what, p.f, p.d, n, 1e-5, 1e-6);
        snprintf(what, sizeof what, "adamw m after step %d", t);
        fm_test_assert_close(what, m.f, m.d, n, 1e-5, 1e-7);
        snprintf(what, sizeof what, "adamw v after step %d", t);
        fm_test_assert_close(what, v.f, v.d, n, 1e-5, 1e-10);
        gc_free(&g);
    }
    gc_free(&p);
    gc_free(&m);
    gc_free(&v);
}

static void test_steps_with_weight_decay(void **state)
{
    (void)state;
    const fm_adamw_hparams hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    const int64_t s[3] = {5, 7, 3};
    run_steps(1, 3, s, hp, 1, 6);
}

static void test_other_hparams(void **state)
{
    (void)state;
    const fm_adamw_hparams hp = {.lr = 3e-3f, .beta1 = 0.8f, .beta2 = 0.95f, .eps = 1e-6f, .weight_decay = 0.0f};
    const int64_t s[1] = {37};
    run_steps(2, 1, s, hp, 1, 5);
    const fm_adamw_hparams strong = {.lr = 0.05f, .beta1 = 0.0f, .beta2 = 0.5f, .eps = 1e-3f, .weight_decay = 2.0f};
    run_steps(3, 1, s, strong, 1, 4);
}

static void test_late_steps_large_tensor(void **state)
{
    (void)state;
    const fm_adamw_hparams hp = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-8f, .weight_decay = 0.01f};
    const int64_t s[2] = {101, 99};
    run_steps(4, 2, s, hp, 1000, 3);
}

static void test_first_step_is_lr_sized(void **state)
{
    (void)state;
    /* at t = 1 with no decay, bias correction makes the step exactly lr·g/(|g| + eps) */
    float p[3] = {1.0f, -1.0f, 0.5f}, g[3] = {0.003f, -40.0f, 2.0f}, m[3] = {0}, v[3] = {0};
    const int64_t s[1] = {3};
    fm_tensor tp = gc_view(p, FM_F32, 1, s), tg = gc_view(g, FM_F32, 1, s), tm = gc_view(m, FM_F32, 1, s);
    fm_tensor tv = gc_view(v, FM_F32, 1, s);
    const fm_adamw_hparams hp = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.0f};
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, hp, 1), FM_OK);
    assert_true(fabsf(p[0] - 0.9f) < 1e-6f && fabsf(p[1] + 0.9f) < 1e-6f && fabsf(p[2] - 0.4f) < 1e-6f);
}

static void test_dispatch_errors(void **state)
{
    (void)state;
    float p[12] = {1.0f}, g[12] = {0.5f}, m[12] = {0}, v[12] = {0};
    const int64_t s[2] = {3, 4}, st[2] = {4, 3};
    fm_tensor tp = gc_view(p, FM_F32, 2, s), tg = gc_view(g, FM_F32, 2, s), tm = gc_view(m, FM_F32, 2, s);
    fm_tensor tv = gc_view(v, FM_F32, 2, s);
    const fm_adamw_hparams hp = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, hp, 1), FM_OK);
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, hp, 0), FM_ERR_INVALID_ARG);
    fm_adamw_hparams bad = hp;
    bad.beta1 = 1.0f;
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, bad, 1), FM_ERR_INVALID_ARG);
    bad = hp;
    bad.beta2 = -0.1f;
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, bad, 1), FM_ERR_INVALID_ARG);
    bad = hp;
    bad.lr = -1.0f;
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, bad, 1), FM_ERR_INVALID_ARG);
    bad = hp;
    bad.eps = NAN;
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, bad, 1), FM_ERR_INVALID_ARG);
    bad = hp;
    bad.weight_decay = -0.5f;
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tv, bad, 1), FM_ERR_INVALID_ARG);
    fm_tensor tgt = gc_view(g, FM_F32, 2, st);
    GC_EXPECT(fm_adamw_update(&tp, &tgt, &tm, &tv, hp, 2), FM_ERR_SHAPE);
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tm, &tgt, hp, 2), FM_ERR_SHAPE);
    fm_tensor tmi = gc_view(m, FM_I32, 2, s);
    GC_EXPECT(fm_adamw_update(&tp, &tg, &tmi, &tv, hp, 2), FM_ERR_DTYPE);
    GC_EXPECT(fm_adamw_update(&tp, NULL, &tm, &tv, hp, 2), FM_ERR_INVALID_ARG);
    fm_tensor tpc = tp;
    tpc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_adamw_update(&tpc, &tg, &tm, &tv, hp, 2), FM_ERR_DEVICE); /* mixed devices */
#ifndef FEDMM_WITH_CUDA
    fm_tensor tgc = tg, tmc = tm, tvc = tv;
    tgc.device = tmc.device = tvc.device = FM_DEVICE_CUDA;
    GC_EXPECT(fm_adamw_update(&tpc, &tgc, &tmc, &tvc, hp, 2), FM_ERR_DEVICE); /* no CUDA backend */
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steps_with_weight_decay), cmocka_unit_test(test_other_hparams),
        cmocka_unit_test(test_late_steps_large_tensor), cmocka_unit_test(test_first_step_is_lr_sized),
        cmocka_unit_test(test_dispatch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
