/* Aggregation throughput on the GPU (kernels/aggregate.cu): the weighted sum, coordinate-wise median and trimmed
 * mean (trim ratio 0.1) of K flat vectors of P floats, for K = 10, 100 and P = 10M, 100M, next to the
 * device-to-device copy bandwidth measured in the same run.
 *
 * Each time is the median of --reps timed calls after --warmup untimed ones, measured with CUDA events on fedmm's
 * stream around the kernel alone (the list of K pointers lives on the device, fm_cuda_agg_list_create). Columns:
 * "input GB/s" counts the bytes of input read, K·P·4; "traffic GB/s" adds the output written, (K+1)·P·4; the
 * copy's traffic is 2·P·4 (read and write) and "% of copy" compares the two traffic rates. Inputs are uniform in
 * [-1, 1) (fm_cuda_agg_fill_uniform). The sorted rules take the register path for K ≤ 64 and the shared-memory
 * path above (kernels/aggregate.h); the "path" column says which ran.
 *
 * Usage: fedmm_bench_aggregate [--quick] [--reps N] [--warmup N]
 *   --quick  P = 1M and 10M (a first look in seconds)
 * Prints progress on stderr and the table last on stdout. Exit: 0 done, 77 no usable GPU (said so), 1 failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda/runtime.h"
#include "fedmm/status.h"
#include "kernels/aggregate.h"

#define MAX_ROWS 32
#define MAX_REPS 100

typedef struct row {
    const char *op, *path;
    int is_copy;
    size_t k, p;
    double ms;
} row;

typedef enum op_kind { OP_WSUM, OP_MEDIAN, OP_TRIMMED, OP_COPY } op_kind;

static int fail(const char *what, fm_status st)
{
    fprintf(stderr, "fedmm_bench_aggregate: %s: %s: %s\n", what, fm_strerror(st), fm_last_error());
    return 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One call of the operation on fedmm's stream. */
static fm_status run_op(op_kind op, const fm_cuda_agg_list *list, size_t k, size_t p, float *out, const float *src)
{
    switch (op) {
    case OP_WSUM: return fm_cuda_agg_weighted_sum_list(out, list, p, 0);
    case OP_MEDIAN: return fm_cuda_agg_sorted_mean_list(out, list, p, (k - 1) / 2, k / 2 + 1, FM_CUDA_AGG_SORT_AUTO);
    case OP_TRIMMED: {
        size_t t = k / 10; /* floor(0.1·k), as fm_agg_trimmed_mean */
        return fm_cuda_agg_sorted_mean_list(out, list, p, t, k - t, FM_CUDA_AGG_SORT_AUTO);
    }
    case OP_COPY: {
        struct CUstream_st *stream = NULL;
        FM_TRY(fm_cuda_get_stream(&stream));
        return FM_CUDA_CHECK(cudaMemcpyAsync(out, src, p * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    }
    }
    return fm_error(FM_ERR_INVALID_ARG, "op %d", (int)op);
}

/* Median milliseconds of `reps` timed calls after `warmup` untimed ones. */
static fm_status time_op(op_kind op, const fm_cuda_agg_list *list, size_t k, size_t p, float *out, const float *src,
                         int warmup, int reps, double *ms)
{
    struct CUstream_st *stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    for (int i = 0; i < warmup; i++)
        FM_TRY(run_op(op, list, k, p, out, src));
    FM_TRY(fm_cuda_synchronize());
    cudaEvent_t start = NULL, stop = NULL;
    FM_TRY(FM_CUDA_CHECK(cudaEventCreate(&start)));
    fm_status st = FM_CUDA_CHECK(cudaEventCreate(&stop));
    double times[MAX_REPS];
    for (int i = 0; i < reps && st == FM_OK; i++) {
        st = FM_CUDA_CHECK(cudaEventRecord(start, stream));
        if (st == FM_OK)
            st = run_op(op, list, k, p, out, src);
        if (st == FM_OK)
            st = FM_CUDA_CHECK(cudaEventRecord(stop, stream));
        if (st == FM_OK)
            st = FM_CUDA_CHECK(cudaEventSynchronize(stop));
        float t = 0.0f;
        if (st == FM_OK)
            st = FM_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
        times[i] = t;
    }
    if (stop)
        (void)cudaEventDestroy(stop);
    (void)cudaEventDestroy(start);
    FM_TRY(st);
    qsort(times, (size_t)reps, sizeof(double), cmp_double);
    *ms = reps % 2 ? times[reps / 2] : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
    return FM_OK;
}

int main(int argc, char **argv)
{
    int quick = 0, reps = 9, warmup = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) {
            warmup = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: fedmm_bench_aggregate [--quick] [--reps N] [--warmup N]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > MAX_REPS || warmup < 0) {
        fprintf(stderr, "fedmm_bench_aggregate: --reps must be in [1, %d] and --warmup >= 0\n", MAX_REPS);
        return 2;
    }
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0) {
        printf("SKIPPED: fedmm_bench_aggregate: no usable CUDA device (%s)\n", why);
        return 77;
    }
    struct cudaDeviceProp prop;
    memset(&prop, 0, sizeof prop);
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
        snprintf(prop.name, sizeof prop.name, "unknown");

    const size_t ks[2] = {10, 100};
    const size_t ps_full[2] = {10000000, 100000000}, ps_quick[2] = {1000000, 10000000};
    const size_t *ps = quick ? ps_quick : ps_full;
    const size_t kmax = ks[1], pmax = ps[1];
    float *base = NULL, *out = NULL;
    fm_status st = fm_cuda_malloc((void **)&base, kmax * pmax * sizeof(float));
    if (st == FM_OK)
        st = fm_cuda_malloc((void **)&out, pmax * sizeof(float));
    if (st == FM_OK)
        st = fm_cuda_agg_fill_uniform(base, kmax * pmax, 20261122u, -1.0f, 1.0f);
    if (st != FM_OK) {
        fm_cuda_free(base);
        return fail("inputs", st);
    }
    fprintf(stderr, "fedmm_bench_aggregate: %s, %.1f GiB of inputs, %d warm-up and %d timed calls each\n", prop.name,
            (double)(kmax * pmax * sizeof(float)) / (1 << 30), warmup, reps);

    row rows[MAX_ROWS];
    size_t nrows = 0;
    double copy_ms[2] = {0.0, 0.0};
    int rc = 0;
    for (int pi = 0; pi < 2 && rc == 0; pi++) {
        const size_t p = ps[pi];
        st = time_op(OP_COPY, NULL, 1, p, out, base, warmup, reps, &copy_ms[pi]);
        if (st != FM_OK) {
            rc = fail("device-to-device copy", st);
            break;
        }
        rows[nrows++] = (row){"cudaMemcpy D2D", "-", 1, 1, p, copy_ms[pi]};
        for (int ki = 0; ki < 2 && rc == 0; ki++) {
            const size_t k = ks[ki];
            const float *ptrs[100];
            float w[100];
            for (size_t i = 0; i < k; i++) {
                ptrs[i] = base + i * p;
                w[i] = 1.0f / (float)k;
            }
            fm_cuda_agg_list *list = NULL;
            st = fm_cuda_agg_list_create(&list, ptrs, w, k);
            if (st != FM_OK) {
                rc = fail("list", st);
                break;
            }
            const struct {
                op_kind op;
                const char *name;
            } ops[3] = {{OP_WSUM, "weighted sum"}, {OP_MEDIAN, "median"}, {OP_TRIMMED, "trimmed mean 0.1"}};
            for (int oi = 0; oi < 3 && rc == 0; oi++) {
                double ms = 0.0;
                fprintf(stderr, "  %s, K = %zu, P = %zu ...\n", ops[oi].name, k, p);
                st = time_op(ops[oi].op, list, k, p, out, NULL, warmup, reps, &ms);
                if (st != FM_OK) {
                    rc = fail(ops[oi].name, st);
                    break;
                }
                const char *path = ops[oi].op == OP_WSUM             ? "-"
                                   : k <= FM_CUDA_AGG_SORT_REG_MAX_K ? "registers"
                                                                     : "shared memory";
                rows[nrows++] = (row){ops[oi].name, path, 0, k, p, ms};
            }
            fm_cuda_agg_list_destroy(list);
        }
    }
    fm_cuda_free(out);
    fm_cuda_free(base);
    if (rc != 0)
        return rc;

    printf("\n## Aggregation throughput, %s (medians of %d calls after %d warm-up)\n\n", prop.name, reps, warmup);
    printf("| op | path | K | P | ms | input GB/s | traffic GB/s | %% of copy |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < nrows; i++) {
        const row *r = &rows[i];
        const double in_bytes = (double)r->k * (double)r->p * 4.0;
        const double traffic = r->is_copy ? 2.0 * (double)r->p * 4.0 : in_bytes + (double)r->p * 4.0;
        const double ref_ms = copy_ms[r->p == ps[0] ? 0 : 1];
        const double copy_traffic_rate = 2.0 * (double)r->p * 4.0 / (ref_ms * 1e-3);
        const double rate = traffic / (r->ms * 1e-3);
        printf("| %s | %s | %zu | %zu | %.3f | %.0f | %.0f | %.0f %% |\n", r->op, r->path, r->k, r->p, r->ms,
               in_bytes / (r->ms * 1e-3) / 1e9, rate / 1e9, 100.0 * rate / copy_traffic_rate);
    }
    return fm_cuda_shutdown() == FM_OK ? 0 : 1;
}
