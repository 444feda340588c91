/* Inverted dropout (fm_dropout_*): the kept fraction is 1 − p within a statistical bound on 10⁵ elements, kept
 * values are exactly x·(1/(1 − p)) and dropped ones 0; the mask is the documented Philox scheme (checked
 * against an independent evaluation of it, which the CUDA twin must also match), the same for 1 and 2
 * threads and depends only on (seed, stream, i); backward against finite differences with the mask fixed,
 * accumulation; p = 0 is the identity; refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/ops.h"
#include "fedmm/threads.h"

enum { NBIG = 100003 }; /* odd: the last Philox block is partly used; above the parallel threshold */

/* The mask element i must get, from the scheme's definition (ops.h): word i%4 of Philox block
 * (seed, (stream, i/4)) compared with ⌈p·2³²⌉. */
static float ref_mask(uint64_t seed, uint64_t stream, size_t i, float p)
{
    uint32_t w[4];
    fm_philox4x32(seed, stream, (uint64_t)(i / 4), w);
    double thr = ceil((double)p * 4294967296.0);
    return (double)w[i % 4] >= thr ? 1.0f / (1.0f - p) : 0.0f;
}

static void forward_or_fail(float *out, float *mask, const float *x, size_t n, float p, uint64_t seed, uint64_t stream)
{
    int64_t shape[1] = {(int64_t)n};
    fm_tensor to = gc_view(out, FM_F32, 1, shape), tm = gc_view(mask, FM_F32, 1, shape);
    fm_tensor tx = gc_view((void *)x, FM_F32, 1, shape);
    GC_EXPECT(fm_dropout_forward(&to, &tm, &tx, p, seed, stream), FM_OK);
}

static void test_forward_statistics(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 1);
    const size_t n = NBIG;
    gc_buf x = gc_rand(&rng, n, -2.0f, 2.0f);
    float *out = fm_test_alloc(n * sizeof(float)), *mask = fm_test_alloc(n * sizeof(float));
    static const float ps[] = {0.05f, 0.3f, 0.5f, 0.9f};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        float p = ps[k];
        uint64_t seed = fm_rng_u64(&rng), stream = fm_rng_u64(&rng);
        forward_or_fail(out, mask, x.f, n, p, seed, stream);
        const float scale = 1.0f / (1.0f - p);
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            if (mask[i] != ref_mask(seed, stream, i, p))
                fail_msg("p %g: mask[%zu] = %g, the scheme gives %g", (double)p, i, (double)mask[i],
                         (double)ref_mask(seed, stream, i, p));
            if (mask[i] == 0.0f) {
                if (out[i] != 0.0f)
                    fail_msg("p %g: dropped element %zu is %g, not 0", (double)p, i, (double)out[i]);
                continue;
            }
            kept++;
            /* exactly the float product x·(1/(1 − p)), within one rounding of x/(1 − p) */
            if (mask[i] != scale || out[i] != x.f[i] * scale)
                fail_msg("p %g: kept element %zu: out %.9g mask %.9g, expected %.9g and %.9g", (double)p, i,
                         (double)out[i], (double)mask[i], (double)(x.f[i] * scale), (double)scale);
            double exact = x.d[i] / (1.0 - (double)p);
            if (fabs((double)out[i] - exact) > 2.5e-7 * fabs(exact))
                fail_msg("p %g: kept element %zu = %.9g, x/(1-p) = %.9g", (double)p, i, (double)out[i], exact);
        }
        /* Binomial(n, 1 − p): 6 standard deviations (a false failure about once in 5·10⁸ runs); a threshold
         * off by one 2⁻⁸ step of a 24-bit comparison would still pass, a wrong comparison (≤ p kept) fails. */
        double frac = (double)kept / (double)n, sd = sqrt((double)p * (1.0 - (double)p) / (double)n);
        print_message("p %.2f: kept %.5f (expected %.5f ± %.5f)\n", (double)p, frac, 1.0 - (double)p, sd);
        if (fabs(frac - (1.0 - (double)p)) > 6.0 * sd)
            fail_msg("p %g: kept fraction %.6f, expected %.6f ± %.6f", (double)p, frac, 1.0 - (double)p, 6.0 * sd);
    }
    free(out);
    free(mask);
    gc_free(&x);
}

/* Same (seed, stream) → same mask with 1 and 2 threads, in place too; element i depends only on
 * (seed, stream, i), not on n; another stream or seed gives another mask. */
static void test_mask_determinism(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 2);
    const size_t n = NBIG;
    const float p = 0.37f;
    uint64_t seed = fm_rng_u64(&rng), stream = fm_rng_u64(&rng);
    gc_buf x = gc_rand(&rng, n, -1.0f, 1.0f);
    float *o1 = fm_test_alloc(n * sizeof(float)), *m1 = fm_test_alloc(n * sizeof(float));
    float *o2 = fm_test_alloc(n * sizeof(float)), *m2 = fm_test_alloc(n * sizeof(float));
    int threads = fm_get_num_threads();
    fm_set_num_threads(1);
    forward_or_fail(o1, m1, x.f, n, p, seed, stream);
    fm_set_num_threads(2);
    forward_or_fail(o2, m2, x.f, n, p, seed, stream);
    assert_memory_equal(m1, m2, n * sizeof(float));
    assert_memory_equal(o1, o2, n * sizeof(float));
    /* in place: out is inp */
    memcpy(o2, x.f, n * sizeof(float));
    forward_or_fail(o2, m2, o2, n, p, seed, stream);
    assert_memory_equal(o1, o2, n * sizeof(float));
    fm_set_num_threads(threads);
    /* a prefix of odd length draws the same first elements */
    const size_t n_short = 1001;
    forward_or_fail(o2, m2, x.f, n_short, p, seed, stream);
    assert_memory_equal(m1, m2, n_short * sizeof(float));
    /* another stream, another seed: independent masks agree on about p² + (1 − p)² of the elements */
    for (int which = 0; which < 2; which++) {
        forward_or_fail(o2, m2, x.f, n, p, which ? seed + 1 : seed, which ? stream : stream + 1);
        size_t same = 0;
        for (size_t i = 0; i < n; i++)
            same += (m1[i] == 0.0f) == (m2[i] == 0.0f);
        double agree = (double)same / (double)n, want = (double)p * p + (1.0 - p) * (1.0 - p);
        if (fabs(agree - want) > 0.01)
            fail_msg("%s changed: masks agree on %.4f of the elements, independent ones on %.4f",
                     which ? "seed" : "stream", agree, want);
    }
    free(o1);
    free(m1);
    free(o2);
    free(m2);
    gc_free(&x);
}

/* Backward with the mask fixed: L = Σ w·(x ⊙ mask) in float64, central differences against fm_dropout_backward,
 * accumulated twice onto a random start. */
typedef struct drop_ctx {
    size_t n;
    const double *x, *mask, *w;
} drop_ctx;

static double drop_obj(void *p)
{
    const drop_ctx *c = p;
    double acc = 0.0;
    for (size_t i = 0; i < c->n; i++)
        acc += c->w[i] * c->x[i] * c->mask[i];
    return acc;
}

static void test_backward(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 3);
    const int64_t shape[3] = {3, 7, 13};
    const size_t n = 3 * 7 * 13;
    const float p = 0.45f;
    gc_buf x = gc_rand(&rng, n, -1.5f, 1.5f), out = gc_rand(&rng, n, -1.0f, 1.0f), mask = gc_rand(&rng, n, 5, 6);
    fm_tensor tx = gc_f32(&x, 3, shape), tout = gc_f32(&out, 3, shape), tm = gc_f32(&mask, 3, shape);
    GC_EXPECT(fm_dropout_forward(&tout, &tm, &tx, p, fm_rng_u64(&rng), 77), FM_OK);
    fm_test_to_double(mask.d, mask.f, n);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        kept += mask.f[i] != 0.0f;
    assert_true(kept > 0 && kept < n); /* both kinds present, so the check below can tell them apart */

    gc_buf w = gc_rand(&rng, n, -1.0f, 1.0f), dinp = gc_rand(&rng, n, -1.0f, 1.0f);
    fm_test_to_double(dinp.d, dinp.f, n);
    fm_tensor tw = gc_f32(&w, 3, shape), td = gc_f32(&dinp, 3, shape);
    GC_EXPECT(fm_dropout_backward(&td, &tw, &tm), FM_OK);
    GC_EXPECT(fm_dropout_backward(&td, &tw, &tm), FM_OK);
    drop_ctx ctx = {n, x.d, mask.d, w.d};
    double *fd = gc_dalloc(n);
    gc_window all = {0, n};
    gc_fd(drop_obj, &ctx, x.d, all, fd);
    gc_check_grad("dropout dinp", dinp.f, dinp.d, fd, all, 2.0);
    /* a NULL gradient is skipped */
    GC_EXPECT(fm_dropout_backward(NULL, &tw, &tm), FM_OK);
    free(fd);
    gc_free(&x);
    gc_free(&out);
    gc_free(&mask);
    gc_free(&w);
    gc_free(&dinp);
}

static void test_p_zero_is_identity(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    const size_t n = 4097;
    gc_buf x = gc_rand(&rng, n, -3.0f, 3.0f), out = gc_rand(&rng, n, 7, 8), mask = gc_rand(&rng, n, 7, 8);
    forward_or_fail(out.f, mask.f, x.f, n, 0.0f, fm_rng_u64(&rng), fm_rng_u64(&rng));
    assert_memory_equal(out.f, x.f, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        assert_true(mask.f[i] == 1.0f);
    int64_t shape[1] = {(int64_t)n};
    fm_tensor tm = gc_f32(&mask, 1, shape), tdo = gc_f32(&x, 1, shape), td = gc_f32(&out, 1, shape);
    /* out holds x now: dinp = x + x·1 = 2x exactly */
    GC_EXPECT(fm_dropout_backward(&td, &tdo, &tm), FM_OK);
    for (size_t i = 0; i < n; i++)
        assert_true(out.f[i] == 2.0f * x.f[i]);
    gc_free(&x);
    gc_free(&out);
    gc_free(&mask);
}

static void test_refusals(void **state)
{
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6], c[6];
    int32_t ib[6];
    fm_tensor ta = gc_view(a, FM_F32, 2, (const int64_t[]){2, 3}), tb = gc_view(b, FM_F32, 2, (const int64_t[]){2, 3});
    fm_tensor tc = gc_view(c, FM_F32, 2, (const int64_t[]){3, 2}), ti = gc_view(ib, FM_I32, 2, (const int64_t[]){2, 3});
    GC_EXPECT(fm_dropout_forward(&tb, &tb, &ta, 1.0f, 1, 1), FM_ERR_INVALID_ARG);
    assert_non_null(strstr(fm_last_error(), "[0, 1)"));
    GC_EXPECT(fm_dropout_forward(&tb, &tb, &ta, -0.1f, 1, 1), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_dropout_forward(&tb, &tb, &ta, NAN, 1, 1), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_dropout_forward(&tb, &tc, &ta, 0.5f, 1, 1), FM_ERR_SHAPE);
    assert_non_null(strstr(fm_last_error(), "mask"));
    GC_EXPECT(fm_dropout_forward(&tb, &ti, &ta, 0.5f, 1, 1), FM_ERR_DTYPE);
    GC_EXPECT(fm_dropout_forward(&tb, NULL, &ta, 0.5f, 1, 1), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_dropout_backward(&tb, &ta, &tc), FM_ERR_SHAPE);
    GC_EXPECT(fm_dropout_backward(&tc, &ta, &tb), FM_ERR_SHAPE);
    fm_tensor devb = tb;
    devb.device = FM_DEVICE_CUDA;
    /* a CPU tensor beside a CUDA one is refused whatever the build */
    GC_EXPECT(fm_dropout_backward(&devb, &ta, &tb), FM_ERR_DEVICE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_statistics), cmocka_unit_test(test_mask_determinism),
        cmocka_unit_test(test_backward),           cmocka_unit_test(test_p_zero_is_identity),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
