/* Time and device memory of CreamFL's global–local ensemble on the GPU (src/fl/creamfl_ensemble_cuda.c,
 * kernels/creamfl_ensemble.cu) for one modality: K sites' (|P|, d) representations scored against the global ones,
 * the weights and the fused (|P|, d) — by default the size, |P| = 50,000, d = 512, K = 10.
 *
 * Each configuration: `--warmup` untimed calls, then the median (p10, p90) of `--reps` calls, timed with CUDA events
 * on fedmm's stream around fm_creamfl_cuda_ensemble with a workspace made beforehand (no allocation inside the
 * timing). TFLOP/s counts the tile products alone, 2·K·|P|²·d. Device memory: what cudaMemGetInfo shows in use over
 * the state before the inputs were allocated (context, cuBLASLt handle and its workspace excluded), taken with the
 * workspace allocated and again after the timed calls (the larger is printed; the computation allocates nothing
 * itself, so this is its peak): inputs (K + 1)·|P|·d floats, outputs |P|·d + K·|P|, and the workspace. The "staged"
 * rows time fm_creamfl_ensemble_staged on host buffers (wall clock: the copies to and from the GPU, its allocations
 * and the same computation; what `fedmm sim --device cuda` calls); their memory is computed, not measured.
 *
 * Inputs: uniform in ±√(3/d) per element (rows of norm ≈ 1, as CreamFL's L2-normalised ones), rounded to bf16, so
 * that the fp32 and the bf16 score tiles compute the same exact products (what travels with rep_dtype: bf16). A spot
 * check recomputes the scores of three samples per site in float64 on the host and prints the largest relative
 * error; above 1e-4 the run fails.
 *
 * usage: fedmm_bench_creamfl_ensemble [--n 50000] [--d 512] [--sites 10] [--warmup 2] [--reps 5]
 *                                     [--precision fp32|bf16|both] [--tiles RxC]... [--no-staged] [--quick]
 *   --tiles  the tile shapes to run (repeatable); default: the default 2048×4096 for both precisions, and bf16 also
 *            at 2048×2048, 4096×8192 and 8192×8192
 *   --quick  |P| = 10,000 (a first look in seconds)
 * One JSON line per configuration on stdout (benchmarks/gpu/report.py makes the table), progress on stderr.
 * Exit: 0 done, 77 no usable GPU (said so), 1 a failure or a spot check off, 2 bad usage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda/runtime.h"
#include "fedmm/creamfl.h"
#include "fedmm/device.h"
#include "fedmm/log.h"
#include "fedmm/rng.h"
#include "fl/creamfl_cuda.h"

#define MAX_CONFIGS 16
#define MAX_REPS 100
#define CHECK_TOL 1e-4

typedef struct config {
    fm_creamfl_precision precision;
    fm_creamfl_tiles tiles;
    int staged;
} config;

typedef struct bench {
    size_t n, d;
    int K, warmup, reps;
    float **h_reps, *h_global, *h_agg; /* host */
    const float **d_reps;              /* device */
    float *d_global, *d_agg, *d_w;
    size_t free0; /* free device memory before the inputs */
} bench;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double quantile(const double *sorted, int n, double q)
{
    int i = (int)floor(q * (n - 1) + 0.5);
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static int fail(const char *what, fm_status st)
{
    fprintf(stderr, "fedmm_bench_creamfl_ensemble: %s: %s\n", what,
            *fm_last_error() ? fm_last_error() : fm_strerror(st));
    return 1;
}

static double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

static fm_status free_mem(size_t *out)
{
    size_t total = 0;
    return FM_CUDA_CHECK(cudaMemGetInfo(out, &total));
}

/* The inputs on the host (uniform ±√(3/d), rounded to bf16) and their device copies, and the outputs. */
static fm_status setup(bench *b)
{
    const size_t nd = b->n * b->d;
    const float a = sqrtf(3.0f / (float)b->d);
    b->h_reps = calloc((size_t)b->K, sizeof(float *));
    b->d_reps = calloc((size_t)b->K, sizeof(float *));
    b->h_global = malloc(nd * sizeof(float));
    b->h_agg = malloc(nd * sizeof(float));
    if (!b->h_reps || !b->d_reps || !b->h_global || !b->h_agg)
        return fm_error(FM_ERR_NO_MEMORY, "host memory for the inputs");
    fm_rng rng = fm_rng_make(20261122, 7);
    for (int k = 0; k <= b->K; k++) {
        float *h = k < b->K ? malloc(nd * sizeof(float)) : b->h_global;
        if (!h)
            return fm_error(FM_ERR_NO_MEMORY, "host memory for site %d", k);
        if (k < b->K)
            b->h_reps[k] = h;
        fm_rng_uniform(&rng, h, nd);
        for (size_t i = 0; i < nd; i++)
            h[i] = a * (2.0f * h[i] - 1.0f);
        fm_creamfl_round_bf16(h, nd);
        float *dev = NULL;
        FM_TRY(fm_cuda_malloc((void **)&dev, nd * sizeof(float)));
        FM_TRY(fm_cuda_memcpy(dev, h, nd * sizeof(float), 0));
        if (k < b->K)
            b->d_reps[k] = dev;
        else
            b->d_global = dev;
    }
    FM_TRY(fm_cuda_malloc((void **)&b->d_agg, nd * sizeof(float)));
    FM_TRY(fm_cuda_malloc((void **)&b->d_w, (size_t)b->K * b->n * sizeof(float)));
    return fm_cuda_synchronize();
}

static void teardown(bench *b)
{
    for (int k = 0; k < b->K; k++) {
        if (b->h_reps)
            free(b->h_reps[k]);
        if (b->d_reps)
            fm_cuda_free((void *)b->d_reps[k]);
    }
    free(b->h_reps);
    free((void *)b->d_reps);
    free(b->h_global);
    free(b->h_agg);
    fm_cuda_free(b->d_global);
    fm_cuda_free(b->d_agg);
    fm_cuda_free(b->d_w);
}

/* The scores of samples 0, |P|/2, |P|−1 of every site in float64 against the device's; the largest relative error. */
static fm_status spot_check(bench *b, fm_creamfl_cuda_ws *ws, double *max_rel)
{
    const size_t n = b->n, d = b->d;
    FM_TRY(fm_creamfl_cuda_scores(ws, b->d_reps, b->K, b->d_global, b->d_w));
    float *s = malloc((size_t)b->K * n * sizeof(float));
    double *logit = malloc(n * sizeof(double));
    if (!s || !logit) {
        free(s);
        free(logit);
        return fm_error(FM_ERR_NO_MEMORY, "spot check");
    }
    fm_status st = fm_cuda_memcpy(s, b->d_w, (size_t)b->K * n * sizeof(float), 1);
    const size_t rows[3] = {0, n / 2, n - 1};
    *max_rel = 0.0;
    for (int k = 0; st == FM_OK && k < b->K; k++)
        for (int q = 0; q < 3; q++) {
            const float *r = b->h_reps[k] + rows[q] * d;
            double mx = -INFINITY, sum = 0.0;
            for (size_t j = 0; j < n; j++) {
                const float *g = b->h_global + j * d;
                double dot = 0.0;
                for (size_t e = 0; e < d; e++)
                    dot += (double)r[e] * (double)g[e];
                logit[j] = dot;
                mx = dot > mx ? dot : mx;
            }
            for (size_t j = 0; j < n; j++)
                sum += exp(logit[j] - mx);
            const double want = logit[rows[q]] - (mx + log(sum));
            const double rel = fabs((double)s[(size_t)k * n + rows[q]] - want) / fabs(want);
            *max_rel = rel > *max_rel || isnan(rel) ? rel : *max_rel;
        }
    free(s);
    free(logit);
    return st;
}

/* One configuration: times, memory, the spot check; its JSON line. *bad = 1 when the check is off. */
static fm_status run_config(bench *b, const config *c, int *bad)
{
    const size_t n = b->n, d = b->d, nd = n * d, kn = (size_t)b->K * n;
    const char *pname = c->precision == FM_CREAMFL_BF16 ? "bf16" : "fp32";
    fm_creamfl_cuda_ws *ws = NULL;
    FM_TRY(fm_creamfl_cuda_ws_create(&ws, b->K, n, d, c->tiles, c->precision));
    size_t tr = 0, tc = 0;
    fm_creamfl_cuda_ws_tiles(ws, &tr, &tc);
    const double ws_bytes = (double)fm_creamfl_cuda_ws_bytes(ws);
    const double in_bytes = (double)((size_t)(b->K + 1) * nd * sizeof(float));
    const double out_bytes = (double)((nd + kn) * sizeof(float));
    size_t free1 = 0, free2 = 0;
    fm_status st = free_mem(&free1);
    double *t = calloc((size_t)b->reps, sizeof *t);
    if (!t && st == FM_OK)
        st = fm_error(FM_ERR_NO_MEMORY, "timings");
    cudaEvent_t start = NULL, stop = NULL;
    struct CUstream_st *stream = NULL;
    if (st == FM_OK)
        st = fm_cuda_get_stream(&stream);
    if (st == FM_OK && !c->staged)
        st = FM_CUDA_CHECK(cudaEventCreate(&start));
    if (st == FM_OK && !c->staged)
        st = FM_CUDA_CHECK(cudaEventCreate(&stop));
    for (int i = 0; st == FM_OK && i < b->warmup + b->reps; i++) {
        double sec = 0.0;
        if (c->staged) {
            const double t0 = fm_now_seconds();
            st = fm_creamfl_ensemble_staged(FM_DEVICE_CUDA, c->precision, (const float *const *)b->h_reps, b->K,
                                            b->h_global, n, d, c->tiles, 0, b->h_agg, NULL);
            sec = fm_now_seconds() - t0;
        } else {
            float ms = 0.0f;
            st = FM_CUDA_CHECK(cudaEventRecord(start, stream));
            if (st == FM_OK)
                st = fm_creamfl_cuda_ensemble(ws, b->d_reps, b->K, b->d_global, 0, b->d_agg, b->d_w);
            if (st == FM_OK)
                st = FM_CUDA_CHECK(cudaEventRecord(stop, stream));
            if (st == FM_OK)
                st = FM_CUDA_CHECK(cudaEventSynchronize(stop));
            if (st == FM_OK)
                st = FM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
            sec = ms * 1e-3;
        }
        if (i >= b->warmup)
            t[i - b->warmup] = sec;
    }
    if (st == FM_OK)
        st = free_mem(&free2);
    double max_rel = NAN;
    if (st == FM_OK && !c->staged)
        st = spot_check(b, ws, &max_rel);
    if (start)
        (void)cudaEventDestroy(start);
    if (stop)
        (void)cudaEventDestroy(stop);
    fm_creamfl_cuda_ws_destroy(ws);
    if (st != FM_OK) {
        free(t);
        return st;
    }
    qsort(t, (size_t)b->reps, sizeof *t, cmp_double);
    const double med = quantile(t, b->reps, 0.5), p10 = quantile(t, b->reps, 0.1), p90 = quantile(t, b->reps, 0.9);
    free(t);
    const double flops = 2.0 * b->K * (double)n * (double)n * (double)d;
    const size_t lowest = free1 < free2 ? free1 : free2;
    double mem = (double)(b->free0 - lowest);
    const char *how = "measured";
    if (c->staged) { /* the staging copies and the workspace live inside the call */
        mem = (double)((size_t)(b->K + 2) * nd + kn) * sizeof(float) + ws_bytes;
        how = "computed";
    }
    *bad = !c->staged && !(max_rel <= CHECK_TOL);
    printf("{\"bench\": \"creamfl_ensemble\", \"path\": \"%s\", \"precision\": \"%s\", \"n\": %zu, \"d\": %zu, "
           "\"sites\": %d, \"tile_rows\": %zu, \"tile_cols\": %zu, \"warmup\": %d, \"reps\": %d, \"median_s\": %.6e, "
           "\"p10_s\": %.6e, \"p90_s\": %.6e, \"tflops\": %.2f, \"mem_mib\": %.1f, \"mem_how\": \"%s\", "
           "\"inputs_mib\": %.1f, \"outputs_mib\": %.1f, \"workspace_mib\": %.1f",
           c->staged ? "staged" : "device", pname, n, d, b->K, tr, tc, b->warmup, b->reps, med, p10, p90,
           flops / med / 1e12, mib(mem), how, mib(in_bytes), mib(out_bytes), mib(ws_bytes));
    if (!c->staged)
        printf(", \"check_max_rel\": %.3e", max_rel);
    printf("}\n");
    fflush(stdout);
    fprintf(stderr,
            "creamfl ensemble %s %s |P| %zu d %zu K %d tile %zux%zu: median %.1f ms (p10 %.1f, p90 %.1f), "
            "%.1f TFLOP/s, %.0f MiB (%s)%s\n",
            c->staged ? "staged" : "device", pname, n, d, b->K, tr, tc, med * 1e3, p10 * 1e3, p90 * 1e3,
            flops / med / 1e12, mib(mem), how, *bad ? ", SPOT CHECK OFF" : "");
    return FM_OK;
}

static int usage(void)
{
    fprintf(stderr, "usage: fedmm_bench_creamfl_ensemble [--n N] [--d D] [--sites K] [--warmup W] [--reps R] "
                    "[--precision fp32|bf16|both] [--tiles RxC]... [--no-staged] [--quick]\n");
    return 2;
}

int main(int argc, char **argv)
{
    bench b = {.n = 50000, .d = 512, .K = 10, .warmup = 2, .reps = 5};
    int want_fp32 = 1, want_bf16 = 1, staged = 1, ntiles = 0;
    fm_creamfl_tiles tiles[MAX_CONFIGS];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) {
            b.n = 10000;
        } else if (!strcmp(a, "--no-staged")) {
            staged = 0;
        } else if (v && !strcmp(a, "--n")) {
            b.n = strtoull(v, NULL, 10), i++;
        } else if (v && !strcmp(a, "--d")) {
            b.d = strtoull(v, NULL, 10), i++;
        } else if (v && !strcmp(a, "--sites")) {
            b.K = atoi(v), i++;
        } else if (v && !strcmp(a, "--warmup")) {
            b.warmup = atoi(v), i++;
        } else if (v && !strcmp(a, "--reps")) {
            b.reps = atoi(v), i++;
        } else if (v && !strcmp(a, "--precision")) {
            want_fp32 = !strcmp(v, "fp32") || !strcmp(v, "both");
            want_bf16 = !strcmp(v, "bf16") || !strcmp(v, "both");
            if (!want_fp32 && !want_bf16)
                return usage();
            i++;
        } else if (v && !strcmp(a, "--tiles") && ntiles < MAX_CONFIGS) {
            unsigned long long r = 0, c = 0;
            if (sscanf(v, "%llux%llu", &r, &c) != 2 || r == 0 || c == 0)
                return usage();
            tiles[ntiles++] = (fm_creamfl_tiles){(size_t)r, (size_t)c};
            i++;
        } else {
            return usage();
        }
    }
    if (b.n < 3 || b.d < 1 || b.K < 1 || b.warmup < 0 || b.reps < 1 || b.reps > MAX_REPS)
        return usage();
    char why[256] = "";
    if (fm_cuda_device_count(why, sizeof why) <= 0) {
        printf("SKIPPED: fedmm_bench_creamfl_ensemble: no usable CUDA device (%s)\n", why);
        return 77;
    }
    config cfg[MAX_CONFIGS * 2 + 2];
    int nc = 0;
    if (ntiles == 0) {
        static const fm_creamfl_tiles sweep[] = {{2048, 2048}, {4096, 8192}, {8192, 8192}};
        if (want_fp32)
            cfg[nc++] = (config){FM_CREAMFL_FP32, {0, 0}, 0};
        if (want_bf16) {
            cfg[nc++] = (config){FM_CREAMFL_BF16, {0, 0}, 0};
            for (size_t i = 0; i < sizeof sweep / sizeof sweep[0]; i++)
                cfg[nc++] = (config){FM_CREAMFL_BF16, sweep[i], 0};
        }
    } else {
        for (int i = 0; i < ntiles; i++) {
            if (want_fp32)
                cfg[nc++] = (config){FM_CREAMFL_FP32, tiles[i], 0};
            if (want_bf16)
                cfg[nc++] = (config){FM_CREAMFL_BF16, tiles[i], 0};
        }
    }
    if (staged && want_fp32)
        cfg[nc++] = (config){FM_CREAMFL_FP32, {0, 0}, 1};
    if (staged && want_bf16)
        cfg[nc++] = (config){FM_CREAMFL_BF16, {0, 0}, 1};

    /* the baseline: context, stream and cuBLASLt (with its workspace) exist before anything is measured */
    struct cublasLtContext *lt = NULL;
    void *lt_ws = NULL;
    size_t lt_bytes = 0;
    struct CUstream_st *stream = NULL;
    fm_status st = fm_cuda_get_stream(&stream);
    if (st == FM_OK)
        st = fm_cuda_get_cublaslt(&lt, &lt_ws, &lt_bytes);
    if (st == FM_OK)
        st = fm_cuda_synchronize();
    if (st == FM_OK)
        st = free_mem(&b.free0);
    if (st != FM_OK)
        return fail("device set-up", st);
    fprintf(stderr, "creamfl ensemble: |P| %zu, d %zu, %d sites: drawing %.0f MiB of inputs\n", b.n, b.d, b.K,
            mib((double)(b.K + 1) * (double)(b.n * b.d) * sizeof(float)));
    st = setup(&b);
    int rc = 0;
    if (st != FM_OK)
        rc = fail("inputs", st);
    for (int i = 0; rc == 0 && i < nc; i++) {
        int bad = 0;
        st = run_config(&b, &cfg[i], &bad);
        if (st != FM_OK)
            rc = fail("ensemble", st);
        else if (bad)
            rc = 1;
    }
    teardown(&b);
    (void)fm_cuda_shutdown();
    return rc;
}
