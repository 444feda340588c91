/* fedmm's side of the attention benchmark (benchmarks/gpu/run.sh, against PyTorch's scaled_dot_product_attention
 * in torch_attention.py): the fused flash-style attention of kernels/attention.cu — fp32, CUDA cores — forward and
 * backward alone, at clip-base's shapes (models/clip-base.yaml): batch 256, heads of 64, the vision tower's 12
 * heads over 197 positions without a mask and the text tower's 8 heads over 77 positions, causal.
 *
 * Inputs: q, k, v and the output gradient uniform in [-1, 1) on the device, in fedmm's layout (B, T, NH·hs), heads
 * interleaved along the last dim (what the q/k/v projections write). Each time is the median of --iters timed
 * calls after --warmup untimed ones, CUDA events on fedmm's stream around the kernels alone: forward (out and the
 * row log-sum-exp), backward (dq, dk, dv from the saved out and lse; accumulated into the same buffers every call,
 * as fedmm's backward accumulates — the model zeroes them first, which is not timed here), and forward followed by
 * backward. FLOPs: the four products of attention, 4·B·T²·C forward and 8·B·T²·C backward (the convention of
 * bench_clip_step.c; causal attention counted in full, the same count for every implementation of a row).
 *
 * usage: fedmm_bench_attention [--batch 256] [--vision-heads 12] [--text-heads 8] [--head-dim 64] [--warmup 5]
 *                              [--iters 20]
 * One JSON line per shape on stdout (benchmarks/gpu/report.py), progress on stderr.
 * Exit: 0 done, 77 no usable GPU (said so), 1 a failure, 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda/runtime.h"
#include "fedmm/status.h"
#include "kernels/aggregate.h"
#include "kernels/cuda_ops.h"

#define MAX_ITERS 1000

static int fail(const char *what, fm_status st)
{
    fprintf(stderr, "fedmm_bench_attention: %s: %s: %s\n", what, fm_strerror(st), fm_last_error());
    return 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct bufs {
    float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
} bufs;

typedef struct shape {
    const char *tower;
    int B, T, C, NH, causal;
} shape;

enum { RUN_FWD = 1, RUN_BWD = 2 };

static fm_status run(const bufs *b, const shape *s, int what)
{
    if (what & RUN_FWD)
        FM_TRY(fm_cuda_attention_forward(b->out, b->lse, b->q, b->k, b->v, NULL, s->causal, s->B, s->T, s->C, s->NH));
    if (what & RUN_BWD)
        FM_TRY(fm_cuda_attention_backward(b->dq, b->dk, b->dv, b->dout, b->q, b->k, b->v, b->out, b->lse, NULL,
                                          s->causal, s->B, s->T, s->C, s->NH));
    return FM_OK;
}

/* Median milliseconds of `iters` timed runs after `warmup` untimed ones. */
static fm_status time_run(const bufs *b, const shape *s, int what, int warmup, int iters, double *ms)
{
    struct CUstream_st *stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    for (int i = 0; i < warmup; i++)
        FM_TRY(run(b, s, what));
    FM_TRY(fm_cuda_synchronize());
    cudaEvent_t start = NULL, stop = NULL;
    FM_TRY(FM_CUDA_CHECK(cudaEventCreate(&start)));
    fm_status st = FM_CUDA_CHECK(cudaEventCreate(&stop));
    double *times = calloc((size_t)iters, sizeof *times);
    if (!times && st == FM_OK)
        st = fm_error(FM_ERR_NO_MEMORY, "timings");
    for (int i = 0; i < iters && st == FM_OK; i++) {
        st = FM_CUDA_CHECK(cudaEventRecord(start, stream));
        if (st == FM_OK)
            st = run(b, s, what);
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
    if (st == FM_OK) {
        qsort(times, (size_t)iters, sizeof *times, cmp_double);
        *ms = iters % 2 ? times[iters / 2] : 0.5 * (times[iters / 2 - 1] + times[iters / 2]);
    }
    free(times);
    return st;
}

static fm_status bench_shape(const shape *s, int warmup, int iters)
{
    const size_t n = (size_t)s->B * (size_t)s->T * (size_t)s->C, nl = (size_t)s->B * (size_t)s->NH * (size_t)s->T;
    bufs b;
    memset(&b, 0, sizeof b);
    float **act[] = {&b.q, &b.k, &b.v, &b.out, &b.dout, &b.dq, &b.dk, &b.dv};
    fm_status st = FM_OK;
    for (size_t i = 0; i < sizeof act / sizeof act[0] && st == FM_OK; i++)
        st = fm_cuda_malloc((void **)act[i], n * sizeof(float));
    if (st == FM_OK)
        st = fm_cuda_malloc((void **)&b.lse, nl * sizeof(float));
    float *fill[] = {b.q, b.k, b.v, b.dout, b.dq, b.dk, b.dv};
    for (size_t i = 0; i < sizeof fill / sizeof fill[0] && st == FM_OK; i++)
        st = fm_cuda_agg_fill_uniform(fill[i], n, 20261123u + i, -1.0f, 1.0f);
    double fwd = 0.0, bwd = 0.0, both = 0.0;
    if (st == FM_OK)
        st = time_run(&b, s, RUN_FWD, warmup, iters, &fwd);
    if (st == FM_OK)
        st = time_run(&b, s, RUN_BWD, warmup, iters, &bwd);
    if (st == FM_OK)
        st = time_run(&b, s, RUN_FWD | RUN_BWD, warmup, iters, &both);
    for (size_t i = 0; i < sizeof act / sizeof act[0]; i++)
        fm_cuda_free(*act[i]);
    fm_cuda_free(b.lse);
    FM_TRY(st);
    const double f_fwd = 4.0 * s->B * (double)s->T * s->T * s->C, f_bwd = 2.0 * f_fwd;
    printf("{\"bench\": \"attention\", \"framework\": \"fedmm\", \"impl\": \"fedmm fused (kernels/attention.cu)\", "
           "\"backend\": \"fedmm\", \"dtype\": \"fp32\", \"tower\": \"%s\", \"batch\": %d, \"heads\": %d, "
           "\"head_dim\": %d, \"seq\": %d, \"causal\": %d, \"warmup\": %d, \"iters\": %d, \"fwd_ms\": %.4f, "
           "\"bwd_ms\": %.4f, \"fwdbwd_ms\": %.4f, \"flops_fwd\": %.6e, \"flops_bwd\": %.6e, "
           "\"tflops_fwdbwd\": %.3f}\n",
           s->tower, s->B, s->NH, s->C / s->NH, s->T, s->causal, warmup, iters, fwd, bwd, both, f_fwd, f_bwd,
           (f_fwd + f_bwd) / (both * 1e-3) / 1e12);
    fflush(stdout);
    fprintf(stderr,
            "fedmm attention fp32, %s (T = %d%s): forward %.3f ms, backward %.3f ms, both %.3f ms (%.1f TFLOP/s)\n",
            s->tower, s->T, s->causal ? ", causal" : "", fwd, bwd, both, (f_fwd + f_bwd) / (both * 1e-3) / 1e12);
    return FM_OK;
}

static int positive(const char *arg, int *out)
{
    char *end = NULL;
    long v = strtol(arg, &end, 10);
    if (!end || *end || v < 0 || v > 1 << 20)
        return 0;
    *out = (int)v;
    return 1;
}

int main(int argc, char **argv)
{
    int B = 256, vh = 12, th = 8, hs = 64, warmup = 5, iters = 20;
    for (int i = 1; i < argc; i++) {
        int ok = i + 1 < argc;
        if (ok && strcmp(argv[i], "--batch") == 0)
            ok = positive(argv[++i], &B) && B > 0;
        else if (ok && strcmp(argv[i], "--vision-heads") == 0)
            ok = positive(argv[++i], &vh) && vh > 0;
        else if (ok && strcmp(argv[i], "--text-heads") == 0)
            ok = positive(argv[++i], &th) && th > 0;
        else if (ok && strcmp(argv[i], "--head-dim") == 0)
            ok = positive(argv[++i], &hs) && hs > 0;
        else if (ok && strcmp(argv[i], "--warmup") == 0)
            ok = positive(argv[++i], &warmup);
        else if (ok && strcmp(argv[i], "--iters") == 0)
            ok = positive(argv[++i], &iters) && iters > 0 && iters <= MAX_ITERS;
        else
            ok = 0;
        if (!ok) {
            fprintf(stderr,
                    "usage: fedmm_bench_attention [--batch 256] [--vision-heads 12] [--text-heads 8] "
                    "[--head-dim 64] [--warmup 5] [--iters 20 (at most %d)]\n",
                    MAX_ITERS);
            return 2;
        }
    }
    char why[384];
    if (fm_cuda_probe(why, sizeof why) == 0) {
        printf("SKIPPED: fedmm_bench_attention: no usable CUDA device (%s)\n", why);
        return 77;
    }
    const shape shapes[] = {{"vision", B, 197, vh * hs, vh, 0}, {"text", B, 77, th * hs, th, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        fm_status st = bench_shape(&shapes[i], warmup, iters);
        if (st != FM_OK) {
            printf("{\"bench\": \"attention\", \"framework\": \"fedmm\", \"backend\": \"fedmm\", \"dtype\": \"fp32\", "
                   "\"tower\": \"%s\", \"seq\": %d, \"error\": \"%s\"}\n",
                   shapes[i].tower, shapes[i].T, fm_strerror(st));
            return fail(shapes[i].tower, st);
        }
    }
    return fm_cuda_shutdown() == FM_OK ? 0 : 1;
}
