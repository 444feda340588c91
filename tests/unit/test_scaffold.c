/* SCAFFOLD (Karimireddy et al. 2020, site variates from the mean local gradient): the server rule against a
 * hand-computed reference, the site-side control-variate update, and a toy federation of 10 sites with heterogeneous
 * quadratic objectives f_k(x) = ½‖A_k x − b_k‖², trained with local gradient steps written here: the control variates
 * become non-zero, approach ck = ∇f_k(x*) (∇f(x*) = 0), stay averaged into c, and SCAFFOLD ends far closer to the
 * optimum than FedAvg in the same number of rounds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/strategy.h"
#include "testutil.h"

/* Server: x += ηg·mean(Δy) (unweighted, over the sites that trained each block), c += Σ Δc / N. */
static void test_server_rule(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 21);
    enum { N = 9, S = 3 };
    fm_strategy_block bl[2] = {{"w", 0, 6, 0, 1}, {"h", 6, 3, -1, 0}};
    const uint8_t mk[2][S][2] = {{{1, 1}, {1, 0}, {1, 0}}, {{1, 1}, {1, 1}, {0, 1}}};
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_SCAFFOLD);
    cfg.server_lr = 0.8;
    cfg.scaffold_num_sites = 5;
    float x0[N];
    fm_test_fill(&rng, x0, N, -1.0f, 1.0f);
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, N, bl, 2, x0), FM_OK);
    double x[N], c[N];
    for (size_t i = 0; i < N; i++) {
        x[i] = x0[i];
        c[i] = 0.0;
        assert_true(fm_strategy_control(st)[i] == 0.0f);
    }
    for (int r = 0; r < 2; r++) {
        float dy[S][N], dc[S][N];
        assert_int_equal(fm_strategy_begin_round(st, r), FM_OK);
        for (int k = 0; k < S; k++) {
            fm_test_fill(&rng, dy[k], N, -1.0f, 1.0f);
            fm_test_fill(&rng, dc[k], N, -1.0f, 1.0f);
            fm_site_update u = {.n_params = N,
                                .delta = dy[k],
                                .weight = 1.0 + 50.0 * k,
                                .n_blocks = 2,
                                .trained = mk[r][k],
                                .control_delta = dc[k]};
            if (k == 0) { /* without Δc it is refused */
                u.control_delta = NULL;
                assert_int_equal(fm_strategy_add_update(st, &u), FM_ERR_INVALID_ARG);
                u.control_delta = dc[k];
            }
            assert_int_equal(fm_strategy_add_update(st, &u), FM_OK);
        }
        float out[N];
        assert_int_equal(fm_strategy_finish_round(st, out), FM_OK);
        for (size_t b = 0; b < 2; b++) {
            for (size_t i = bl[b].offset; i < bl[b].offset + bl[b].numel; i++) {
                double sy = 0.0, sc = 0.0;
                int cnt = 0;
                for (int k = 0; k < S; k++)
                    if (mk[r][k][b]) {
                        sy += dy[k][i];
                        sc += dc[k][i];
                        cnt++;
                    }
                x[i] += 0.8 * sy / cnt;
                c[i] += sc / 5.0;
            }
        }
        fm_test_assert_close("scaffold x", out, x, N, 1e-5, 1e-6);
        fm_test_assert_close("scaffold c", fm_strategy_control(st), c, N, 1e-5, 1e-6);
    }
    /* more sites in one round than N is a caller bug */
    assert_int_equal(fm_strategy_begin_round(st, 2), FM_OK);
    float z[N];
    fm_test_fill(&rng, z, N, -1.0f, 1.0f);
    fm_site_update u = {.n_params = N, .delta = z, .weight = 1.0, .control_delta = z};
    for (int k = 0; k < 5; k++)
        assert_int_equal(fm_strategy_add_update(st, &u), FM_OK);
    assert_int_equal(fm_strategy_add_update(st, &u), FM_ERR_STATE);
    /* a non-finite Δc is refused */
    fm_strategy_abort_round(st);
    assert_int_equal(fm_strategy_begin_round(st, 2), FM_OK);
    float bad[N];
    memcpy(bad, z, sizeof(bad));
    bad[7] = INFINITY;
    u.control_delta = bad;
    assert_int_equal(fm_strategy_add_update(st, &u), FM_ERR_NOT_FINITE);
    assert_non_null(strstr(fm_last_error(), "control_delta"));
    assert_int_equal(fm_strategy_num_updates(st), 0);
    fm_strategy_destroy(st);
}

static void test_site_update(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 22);
    enum { N = 11 };
    float ci[N], c[N], gm[N], cn[N], dc[N];
    fm_test_fill(&rng, ci, N, -1.0f, 1.0f);
    fm_test_fill(&rng, c, N, -1.0f, 1.0f);
    fm_test_fill(&rng, gm, N, -1.0f, 1.0f);
    /* ck⁺ = the mean gradient, Δck = ck⁺ − ck */
    assert_int_equal(fm_scaffold_site_update(ci, gm, N, cn, dc), FM_OK);
    double want[N], wdc[N];
    for (size_t i = 0; i < N; i++) {
        want[i] = gm[i];
        wdc[i] = (double)gm[i] - ci[i];
    }
    fm_test_assert_close("ck+", cn, want, N, 0.0, 0.0);
    fm_test_assert_close("dck", dc, wdc, N, 1e-6, 1e-6);
    /* in place over ck, and over the mean gradient (as sim and the client call it) */
    float ci2[N], gm2[N];
    memcpy(ci2, ci, sizeof(ci2));
    memcpy(gm2, gm, sizeof(gm2));
    assert_int_equal(fm_scaffold_site_update(ci2, gm, N, ci2, dc), FM_OK);
    fm_test_assert_close("ck+ over ck", ci2, want, N, 0.0, 0.0);
    fm_test_assert_close("dck over ck", dc, wdc, N, 1e-6, 1e-6);
    assert_int_equal(fm_scaffold_site_update(ci, gm2, N, gm2, dc), FM_OK);
    fm_test_assert_close("ck+ over the gradient", gm2, want, N, 0.0, 0.0);
    fm_test_assert_close("dck over the gradient", dc, wdc, N, 1e-6, 1e-6);
    /* a non-finite gradient is refused before anything is written */
    float bad[N];
    memcpy(bad, gm, sizeof(bad));
    bad[4] = NAN;
    memcpy(ci2, ci, sizeof(ci2));
    assert_int_equal(fm_scaffold_site_update(ci2, bad, N, ci2, dc), FM_ERR_NOT_FINITE);
    assert_non_null(strstr(fm_last_error(), "mean gradient[4]"));
    assert_memory_equal(ci2, ci, sizeof(ci2));
    assert_int_equal(fm_scaffold_site_update(ci, NULL, N, cn, dc), FM_ERR_INVALID_ARG);
    /* the gradient correction: g += c − ck */
    float g0[N], g[N];
    fm_test_fill(&rng, g0, N, -1.0f, 1.0f);
    memcpy(g, g0, sizeof(g));
    fm_strategy_config cfg = fm_strategy_default_config(FM_STRATEGY_SCAFFOLD);
    fm_site_correction corr;
    assert_int_equal(fm_site_correction_prepare(&corr, &cfg, N, NULL, 0, NULL, c, cn), FM_OK);
    fm_site_correct_grad(g, NULL, &corr, N);
    for (size_t i = 0; i < N; i++)
        want[i] = (double)g0[i] + c[i] - cn[i];
    fm_test_assert_close("scaffold grad", g, want, N, 1e-6, 1e-6);
    fm_site_correction_free(&corr);
}

/* ---- the toy federation ------------------------------------------------------------------------ */

enum { NS = 10, D = 6, LOCAL_STEPS = 10, ROUNDS = 150 };

typedef struct toy {
    double A[NS][D][D], b[NS][D];
    double xstar[D];
    double lr; /* local learning rate */
} toy;

static void grad_k(const toy *t, int k, const double *x, double *g)
{
    double r[D];
    for (int i = 0; i < D; i++) {
        r[i] = -t->b[k][i];
        for (int j = 0; j < D; j++)
            r[i] += t->A[k][i][j] * x[j];
    }
    for (int j = 0; j < D; j++) {
        g[j] = 0.0;
        for (int i = 0; i < D; i++)
            g[j] += t->A[k][i][j] * r[i];
    }
}

static double objective(const toy *t, const double *x)
{
    double f = 0.0;
    for (int k = 0; k < NS; k++)
        for (int i = 0; i < D; i++) {
            double r = -t->b[k][i];
            for (int j = 0; j < D; j++)
                r += t->A[k][i][j] * x[j];
            f += 0.5 * r * r;
        }
    return f / NS;
}

/* Solves (Σ AᵀA) x = Σ Aᵀb by Gaussian elimination with partial pivoting. */
static void solve_optimum(toy *t)
{
    double M[D][D + 1];
    memset(M, 0, sizeof(M));
    for (int k = 0; k < NS; k++)
        for (int i = 0; i < D; i++)
            for (int r = 0; r < D; r++) {
                for (int j = 0; j < D; j++)
                    M[i][j] += t->A[k][r][i] * t->A[k][r][j];
                M[i][D] += t->A[k][r][i] * t->b[k][r];
            }
    for (int col = 0; col < D; col++) {
        int piv = col;
        for (int r = col + 1; r < D; r++)
            if (fabs(M[r][col]) > fabs(M[piv][col]))
                piv = r;
        for (int j = 0; j <= D; j++) {
            double tmp = M[col][j];
            M[col][j] = M[piv][j];
            M[piv][j] = tmp;
        }
        for (int r = 0; r < D; r++) {
            if (r == col)
                continue;
            double fct = M[r][col] / M[col][col];
            for (int j = 0; j <= D; j++)
                M[r][j] -= fct * M[col][j];
        }
    }
    for (int i = 0; i < D; i++)
        t->xstar[i] = M[i][D] / M[i][i];
}

static void make_toy(toy *t, fm_rng *rng)
{
    double maxfro = 0.0;
    for (int k = 0; k < NS; k++) {
        /* site k's curvature is stretched along its own axes: heterogeneous Hessians and far-apart optima */
        double scale = 0.5 + 1.5 * fm_rng_double(rng);
        double fro = 0.0;
        for (int i = 0; i < D; i++) {
            for (int j = 0; j < D; j++)
                t->A[k][i][j] = 0.3 * (2.0 * fm_rng_double(rng) - 1.0) + (i == j ? scale * (1 + (i + k) % 3) : 0.0);
            t->b[k][i] = 4.0 * (2.0 * fm_rng_double(rng) - 1.0);
            for (int j = 0; j < D; j++)
                fro += t->A[k][i][j] * t->A[k][i][j];
        }
        if (fro > maxfro)
            maxfro = fro;
    }
    t->lr = 0.5 / maxfro; /* ‖A‖_F² bounds the largest eigenvalue of AᵀA: the local steps are stable */
    solve_optimum(t);
}

/* Runs ROUNDS rounds of `kind` with `per_round` sites sampled round-robin; returns the final global objective.
 * For SCAFFOLD, ck_out receives the sites' control variates and c_out the server's. */
static double federate(const toy *t, fm_strategy_kind kind, int per_round, float ck_out[NS][D], float *c_out)
{
    fm_strategy_config cfg = fm_strategy_default_config(kind);
    cfg.scaffold_num_sites = NS;
    float x0[D] = {0};
    fm_strategy *st = NULL;
    assert_int_equal(fm_strategy_create(&st, &cfg, D, NULL, 0, x0), FM_OK);
    static float ck[NS][D];
    memset(ck, 0, sizeof(ck));
    int next = 0;
    for (int r = 0; r < ROUNDS; r++) {
        float x[D];
        memcpy(x, fm_strategy_global(st), sizeof(x));
        const float *c = fm_strategy_control(st);
        assert_int_equal(fm_strategy_begin_round(st, r), FM_OK);
        for (int s = 0; s < per_round; s++) {
            int k = next;
            next = (next + 1) % NS;
            fm_site_correction corr;
            assert_int_equal(fm_site_correction_prepare(&corr, &cfg, D, NULL, 0, x, c, ck[k]), FM_OK);
            float y[D], gmean[D] = {0};
            memcpy(y, x, sizeof(y));
            for (int step = 0; step < LOCAL_STEPS; step++) {
                double yd[D], gd[D];
                for (int i = 0; i < D; i++)
                    yd[i] = y[i];
                grad_k(t, k, yd, gd);
                float g[D];
                for (int i = 0; i < D; i++) {
                    g[i] = (float)gd[i];
                    gmean[i] += g[i] / LOCAL_STEPS; /* the raw gradient's mean: ck⁺ */
                }
                fm_site_correct_grad(g, y, &corr, D);
                for (int i = 0; i < D; i++)
                    y[i] -= (float)t->lr * g[i];
            }
            fm_site_correction_free(&corr);
            float delta[D], dc[D];
            for (int i = 0; i < D; i++)
                delta[i] = y[i] - x[i];
            fm_site_update u = {.n_params = D, .delta = delta, .weight = 1.0};
            if (kind == FM_STRATEGY_SCAFFOLD) {
                assert_int_equal(fm_scaffold_site_update(ck[k], gmean, D, ck[k], dc), FM_OK);
                u.control_delta = dc;
            }
            assert_int_equal(fm_strategy_add_update(st, &u), FM_OK);
        }
        assert_int_equal(fm_strategy_finish_round(st, NULL), FM_OK);
    }
    double xf[D];
    for (int i = 0; i < D; i++)
        xf[i] = fm_strategy_global(st)[i];
    if (ck_out)
        memcpy(ck_out, ck, sizeof(ck));
    if (c_out)
        memcpy(c_out, fm_strategy_control(st), D * sizeof(float));
    fm_strategy_destroy(st);
    return objective(t, xf);
}

static void test_toy_federation(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 23);
    static toy t;
    make_toy(&t, &rng);
    double fstar = objective(&t, t.xstar);
    static float ck[NS][D];
    float c[D];
    double f_avg = federate(&t, FM_STRATEGY_FEDAVG, NS, NULL, NULL);
    double f_scaf = federate(&t, FM_STRATEGY_SCAFFOLD, NS, ck, c);
    print_message("toy: f* %.6f, FedAvg gap %.3e, SCAFFOLD gap %.3e after %d rounds\n", fstar, f_avg - fstar,
                  f_scaf - fstar, ROUNDS);
    assert_true(f_avg - fstar > 1e-3);                    /* client drift: FedAvg stalls away from x* */
    assert_true(f_scaf - fstar < 1e-2 * (f_avg - fstar)); /* SCAFFOLD removes it */

    /* control variates: non-zero, ck ≈ ∇f_k(x*), c = mean ck ≈ ∇f(x*) = 0 */
    double worst = 0.0;
    for (int k = 0; k < NS; k++) {
        double g[D], num = 0.0, den = 0.0;
        grad_k(&t, k, t.xstar, g);
        for (int i = 0; i < D; i++) {
            num += (ck[k][i] - g[i]) * (ck[k][i] - g[i]);
            den += g[i] * g[i];
        }
        assert_true(sqrt(den) > 0.1);
        double rel = sqrt(num / den);
        if (rel > worst)
            worst = rel;
    }
    print_message("toy: worst ‖ck − ∇f_k(x*)‖ / ‖∇f_k(x*)‖ = %.3e\n", worst);
    assert_true(worst < 1e-3);
    for (int i = 0; i < D; i++) {
        double mean = 0.0;
        for (int k = 0; k < NS; k++)
            mean += ck[k][i];
        mean /= NS;
        assert_float_equal(c[i], mean, 1e-4);
    }

    /* partial participation (5 of 10 per round): c stays the mean of all ck, and SCAFFOLD still beats FedAvg */
    double f_avg_p = federate(&t, FM_STRATEGY_FEDAVG, NS / 2, NULL, NULL);
    double f_scaf_p = federate(&t, FM_STRATEGY_SCAFFOLD, NS / 2, ck, c);
    print_message("toy, 5 of 10 sites per round: FedAvg gap %.3e, SCAFFOLD gap %.3e\n", f_avg_p - fstar,
                  f_scaf_p - fstar);
    assert_true(f_scaf_p - fstar < 0.1 * (f_avg_p - fstar));
    for (int i = 0; i < D; i++) {
        double mean = 0.0;
        for (int k = 0; k < NS; k++)
            mean += ck[k][i];
        assert_float_equal(c[i], mean / NS, 1e-4);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_rule),
        cmocka_unit_test(test_site_update),
        cmocka_unit_test(test_toy_federation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
