/* Gradient check of CreamFL's site regularisers (fm_creamfl_inter_loss, fm_creamfl_intra_loss): the losses
 * against float64 references, their gradients with respect to the site embeddings against central
 * differences of λ·L, accumulation into a non-zero gradient, L_inter over more global representations than one
 * tile holds (the streamed softmax), and the refusals. */
#include <math.h>

#include "gc_util.h"

#include "fedmm/creamfl.h"

typedef struct inter_case {
    const double *z, *U;
    const int64_t *pos;
    int B;
    size_t d, n;
    double tau, scale;
} inter_case;

static double ref_inter(void *ctx)
{
    const inter_case *k = ctx;
    double total = 0.0;
    for (int b = 0; b < k->B; b++) {
        const double *zb = k->z + (size_t)b * k->d;
        double mx = -INFINITY, pos = 0.0;
        double *l = malloc(k->n * sizeof(double));
        for (size_t j = 0; j < k->n; j++) {
            double s = 0.0;
            for (size_t e = 0; e < k->d; e++)
                s += zb[e] * k->U[j * k->d + e];
            l[j] = s / k->tau;
            mx = l[j] > mx ? l[j] : mx;
        }
        double sum = 0.0;
        for (size_t j = 0; j < k->n; j++)
            sum += exp(l[j] - mx);
        pos = l[k->pos[b]];
        total += mx + log(sum) - pos;
        free(l);
    }
    return k->scale * total / k->B;
}

typedef struct intra_case {
    const double *z, *g, *o;
    int B;
    size_t d;
    double tau, scale;
} intra_case;

static double ref_intra(void *ctx)
{
    const intra_case *k = ctx;
    double total = 0.0;
    for (int b = 0; b < k->B; b++) {
        double a = 0.0, o = 0.0;
        for (size_t e = 0; e < k->d; e++) {
            a += k->z[(size_t)b * k->d + e] * k->g[(size_t)b * k->d + e];
            o += k->z[(size_t)b * k->d + e] * k->o[(size_t)b * k->d + e];
        }
        a /= k->tau;
        o /= k->tau;
        total += -(a - log(exp(a) + exp(o)));
    }
    return k->scale * total / k->B;
}

static void run_inter(uint64_t stream, int B, size_t d, size_t n, double tau, double scale)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    gc_buf z = gc_rand(&rng, (size_t)B * d, -0.6f, 0.6f), U = gc_rand(&rng, n * d, -0.6f, 0.6f);
    int64_t *pos = fm_test_alloc((size_t)B * sizeof(int64_t));
    for (int b = 0; b < B; b++)
        pos[b] = (int64_t)fm_rng_below(&rng, n);
    inter_case k = {z.d, U.d, pos, B, d, n, tau, scale};
    float loss = -1.0f;
    GC_EXPECT(fm_creamfl_inter_loss(z.f, B, d, U.f, n, pos, (float)tau, (float)scale, NULL, &loss), FM_OK);
    const double want = ref_inter(&k) / scale;
    fm_test_assert_close("L_inter", &loss, &want, 1, GC_FWD_RTOL, GC_FWD_ATOL);
    /* the gradient accumulates into a random start, twice */
    gc_buf dz = gc_rand(&rng, (size_t)B * d, -1.0f, 1.0f);
    GC_EXPECT(fm_creamfl_inter_loss(z.f, B, d, U.f, n, pos, (float)tau, (float)scale, dz.f, &loss), FM_OK);
    GC_EXPECT(fm_creamfl_inter_loss(z.f, B, d, U.f, n, pos, (float)tau, (float)scale, dz.f, &loss), FM_OK);
    const gc_window w = gc_pick(&rng, (size_t)B * d, 48);
    double *fd = gc_dalloc(w.n);
    gc_fd(ref_inter, &k, z.d, w, fd);
    gc_check_grad_atol("L_inter dz", dz.f, dz.d, fd, w, 2.0, gc_atol_sum(n / 64 + 1));
    free(fd);
    free(pos);
    gc_free(&z);
    gc_free(&U);
    gc_free(&dz);
}

static void run_intra(uint64_t stream, int B, size_t d, double tau, double scale)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    gc_buf z = gc_rand(&rng, (size_t)B * d, -0.7f, 0.7f), g = gc_rand(&rng, (size_t)B * d, -0.7f, 0.7f),
           o = gc_rand(&rng, (size_t)B * d, -0.7f, 0.7f);
    intra_case k = {z.d, g.d, o.d, B, d, tau, scale};
    float loss = -1.0f;
    GC_EXPECT(fm_creamfl_intra_loss(z.f, g.f, o.f, B, d, (float)tau, (float)scale, NULL, &loss), FM_OK);
    const double want = ref_intra(&k) / scale;
    fm_test_assert_close("L_intra", &loss, &want, 1, GC_FWD_RTOL, GC_FWD_ATOL);
    gc_buf dz = gc_rand(&rng, (size_t)B * d, -1.0f, 1.0f);
    GC_EXPECT(fm_creamfl_intra_loss(z.f, g.f, o.f, B, d, (float)tau, (float)scale, dz.f, &loss), FM_OK);
    const gc_window w = gc_pick(&rng, (size_t)B * d, 64);
    double *fd = gc_dalloc(w.n);
    gc_fd(ref_intra, &k, z.d, w, fd);
    gc_check_grad("L_intra dz", dz.f, dz.d, fd, w, 1.0);
    free(fd);
    gc_free(&z);
    gc_free(&g);
    gc_free(&o);
    gc_free(&dz);
}

static void test_inter_small(void **state)
{
    (void)state;
    run_inter(1, 3, 7, 11, 0.5, 0.5);
    run_inter(2, 1, 1, 2, 0.5, 1.0);
    run_inter(3, 5, 13, 29, 0.2, 0.7);
}

/* more global representations than one tile of the streamed softmax (1024 columns) */
static void test_inter_streamed(void **state)
{
    (void)state;
    run_inter(4, 3, 9, 2500, 0.5, 0.5);
}

static void test_intra(void **state)
{
    (void)state;
    run_intra(5, 4, 9, 0.5, 0.5);
    run_intra(6, 1, 3, 0.5, 1.0);
    run_intra(7, 7, 31, 0.1, 0.3); /* a small temperature: saturated sigmoids */
}

static void test_refusals(void **state)
{
    (void)state;
    float z[4] = {0.1f, 0.2f, 0.3f, 0.4f}, U[4] = {0.5f, -0.5f, 0.25f, 1.0f}, loss;
    int64_t pos[2] = {0, 2};
    GC_EXPECT(fm_creamfl_inter_loss(z, 2, 2, U, 2, pos, 0.5f, 1.0f, NULL, &loss), FM_ERR_RANGE);
    pos[1] = 1;
    GC_EXPECT(fm_creamfl_inter_loss(z, 2, 2, U, 2, pos, 0.0f, 1.0f, NULL, &loss), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_creamfl_inter_loss(z, 0, 2, U, 2, pos, 0.5f, 1.0f, NULL, &loss), FM_ERR_SHAPE);
    GC_EXPECT(fm_creamfl_inter_loss(z, 2, 2, NULL, 2, pos, 0.5f, 1.0f, NULL, &loss), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_creamfl_inter_loss(z, 2, 2, U, 2, pos, 0.5f, 1.0f, NULL, &loss), FM_OK);
    GC_EXPECT(fm_creamfl_intra_loss(z, U, NULL, 2, 2, 0.5f, 1.0f, NULL, &loss), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_creamfl_intra_loss(z, U, U, 2, 2, -1.0f, 1.0f, NULL, &loss), FM_ERR_INVALID_ARG);
    GC_EXPECT(fm_creamfl_intra_loss(z, U, U, 2, 2, 0.5f, 1.0f, NULL, &loss), FM_OK);
    /* identical positive and negative: −log(1/2) */
    assert_true(fabs(loss - log(2.0)) < 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inter_small),
        cmocka_unit_test(test_inter_streamed),
        cmocka_unit_test(test_intra),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
