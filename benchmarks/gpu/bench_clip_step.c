/* fedmm's side of benchmarks/gpu/run.sh: the measured bf16 matrix peak of this GPU (a cuBLASLt bf16 GEMM,
 * fp32 accumulation, on random data) and the time of one training step of a CLIP model — zero the gradients,
 * copy the batch from host memory, forward and backward of both towers and the contrastive loss, global-norm
 * clipping, AdamW — on synthetic data. Warm-up steps are excluded; the median of the timed steps is reported,
 * with the 10th and 90th percentiles. One JSON line per measurement on stdout (benchmarks/gpu/report.py reads
 * them), a readable line on stderr.
 *
 * FLOPs per step (the same count is used for every framework in the report): 2·m·n·k for each GEMM the step
 * needs — forward of every linear (patch embedding, q/k/v/out, fc1/fc2, projections, LoRA A and B), attention's
 * two products (4·B·T²·W per layer, causal text attention counted in full), and in backward the input gradient
 * of every linear down to the lowest layer that trains, the weight gradient of every weight that trains, and
 * attention's four products (twice its forward). Elementwise ops, norms and the loss are not counted.
 *
 * usage: fedmm_bench_clip_step [--peak] [--preset clip-base] [--batch 256] [--precision bf16|fp32]
 *                              [--mode full|lora] [--warmup 5] [--steps 20] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/clip.h"
#include "fedmm/device.h"
#include "fedmm/log.h"
#include "fedmm/rng.h"
#include "fedmm/train.h"
#include "kernels/model_ops.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Quantile q of n sorted values (nearest rank). */
static double quantile(const double *sorted, int n, double q)
{
    int i = (int)floor(q * (n - 1) + 0.5);
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static int fail(const char *what, fm_status st)
{
    fprintf(stderr, "bench_clip_step: %s: %s\n", what, *fm_last_error() ? fm_last_error() : fm_strerror(st));
    return 1;
}

/* ---- the bf16 matrix peak ----------------------------------------------------------------------------------- */

/* n random bf16 values in [-1, 1) on the device: drawn on the host in fp32, cast on the device. */
static fm_status random_bf16(void **out, size_t n, uint64_t seed)
{
    float *h = malloc(n * sizeof *h);
    void *f = NULL, *b = NULL;
    if (!h)
        return fm_error(FM_ERR_NO_MEMORY, "peak: %zu floats of host memory", n);
    fm_rng rng = fm_rng_make(seed, 1);
    fm_rng_uniform(&rng, h, n);
    for (size_t i = 0; i < n; i++)
        h[i] = 2.0f * h[i] - 1.0f;
    fm_status st = fm_device_alloc(FM_DEVICE_CUDA, n * sizeof(float), &f);
    if (st == FM_OK)
        st = fm_device_alloc(FM_DEVICE_CUDA, n * sizeof(uint16_t), &b);
    if (st == FM_OK)
        st = fm_device_copy(f, FM_DEVICE_CUDA, h, FM_DEVICE_CPU, n * sizeof(float));
    if (st == FM_OK)
        st = fm_cuda_f32_to_bf16(b, f, n);
    if (st == FM_OK)
        st = fm_device_synchronize(FM_DEVICE_CUDA);
    fm_device_free(FM_DEVICE_CUDA, f);
    free(h);
    if (st != FM_OK) {
        fm_device_free(FM_DEVICE_CUDA, b);
        return st;
    }
    *out = b;
    return FM_OK;
}

/* D (M, N) bf16 = X (M, K) · Y (N, K)ᵀ in bf16, fp32 accumulation: the median over `iters` timed calls. */
static fm_status peak_one(int M, int N, int K, int warmup, int iters, double *tflops)
{
    void *X = NULL, *Y = NULL, *D = NULL;
    fm_status st = random_bf16(&X, (size_t)M * K, 1);
    if (st == FM_OK)
        st = random_bf16(&Y, (size_t)N * K, 2);
    if (st == FM_OK)
        st = fm_device_alloc(FM_DEVICE_CUDA, (size_t)M * N * sizeof(uint16_t), &D);
    double *t = calloc((size_t)iters, sizeof *t);
    if (!t && st == FM_OK)
        st = fm_error(FM_ERR_NO_MEMORY, "peak: timings");
    for (int i = 0; st == FM_OK && i < warmup + iters; i++) {
        double t0 = fm_now_seconds();
        st = fm_cuda_gemm('N', M, N, K, 1.0f, X, Y, FM_GEMM_BF16, 0.0f, D, FM_GEMM_BF16, NULL);
        if (st == FM_OK)
            st = fm_device_synchronize(FM_DEVICE_CUDA);
        if (i >= warmup)
            t[i - warmup] = fm_now_seconds() - t0;
    }
    if (st == FM_OK) {
        qsort(t, (size_t)iters, sizeof *t, cmp_double);
        double med = quantile(t, iters, 0.5);
        *tflops = 2.0 * M * N * K / med / 1e12;
        printf("{\"bench\": \"peak_bf16_gemm\", \"m\": %d, \"n\": %d, \"k\": %d, \"iters\": %d, \"median_s\": %.6e, "
               "\"tflops\": %.2f}\n",
               M, N, K, iters, med, *tflops);
        fprintf(stderr, "bf16 GEMM %dx%dx%d: median %.3f ms, %.1f TFLOP/s\n", M, N, K, med * 1e3, *tflops);
    }
    free(t);
    fm_device_free(FM_DEVICE_CUDA, X);
    fm_device_free(FM_DEVICE_CUDA, Y);
    fm_device_free(FM_DEVICE_CUDA, D);
    return st;
}

static int run_peak(void)
{
    static const int sizes[][3] = {{4096, 4096, 4096}, {8192, 8192, 8192}, {16384, 8192, 8192}};
    double best = 0.0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        double tf = 0.0;
        fm_status st = peak_one(sizes[i][0], sizes[i][1], sizes[i][2], 5, 30, &tf);
        if (st != FM_OK)
            return fail("bf16 GEMM peak", st);
        if (tf > best)
            best = tf;
    }
    printf("{\"bench\": \"peak_bf16\", \"tflops\": %.2f}\n", best);
    fprintf(stderr, "measured bf16 matrix peak: %.1f TFLOP/s (best median of the sizes above)\n", best);
    return 0;
}

/* ---- FLOPs of one training step ----------------------------------------------------------------------------- */

typedef struct tower_dims {
    double T, W, M, L, NH;
} tower_dims;

static double lora_fwd(const fm_clip_config *c, const tower_dims *d, double B)
{
    if (c->full_finetune || c->lora_rank == 0)
        return 0.0;
    double N = B * d->T, r = c->lora_rank, f = 0.0;
    unsigned t = c->lora_targets;
    double wide[6] = {d->W + d->W, d->W + d->W, d->W + d->W, d->W + d->W, d->W + d->M, d->M + d->W};
    for (int i = 0; i < 6; i++)
        if (t & (1u << i))
            f += 2.0 * N * r * wide[i];
    return f;
}

/* One tower: forward, backward as described in the header. */
static double tower_flops(const fm_clip_config *c, const tower_dims *d, double B, double stem_fwd, int adapted)
{
    const int full = c->full_finetune;
    double lin = 2.0 * B * d->T * (4.0 * d->W * d->W + 2.0 * d->W * d->M) * d->L;
    double att = 4.0 * B * d->T * d->T * d->W * d->L;
    double lora = adapted ? lora_fwd(c, d, B) * d->L : 0.0;
    double proj = 2.0 * B * d->W * c->embed_dim;
    double fwd = stem_fwd + lin + att + lora + proj;
    int below = full || (adapted && lora > 0.0); /* backward reaches into the layers */
    double bwd = 0.0;
    if (full)
        bwd = 2.0 * (fwd - stem_fwd) + stem_fwd; /* dX and dW of everything; the stem's input is data: dW only */
    else if (below)
        bwd = lin + 2.0 * att + 2.0 * lora + proj * (c->train_projections ? 2.0 : 1.0);
    else if (c->train_projections)
        bwd = proj;
    return fwd + bwd;
}

static double step_flops(const fm_clip_config *c, int B)
{
    const double P = c->patch_size, S = c->image_size, NP = (S / P) * (S / P);
    tower_dims v = {NP + 1, c->vision_width, c->vision_mlp, c->vision_layers, c->vision_heads};
    tower_dims t = {c->context_length, c->text_width, c->text_mlp, c->text_layers, c->text_heads};
    double patch = 2.0 * B * NP * 3.0 * P * P * c->vision_width;
    int av = (c->lora_towers & FM_CLIP_TOWER_VISION) != 0, at = (c->lora_towers & FM_CLIP_TOWER_TEXT) != 0;
    return tower_flops(c, &v, B, patch, av) + tower_flops(c, &t, B, 0.0, at);
}

/* ---- the training step -------------------------------------------------------------------------------------- */

static int run_step(const char *preset, int B, fm_precision prec, int full, int warmup, int steps)
{
    fm_clip_config cfg;
    fm_status st = fm_clip_config_preset(preset, &cfg);
    if (st != FM_OK)
        return fail("preset", st);
    if (cfg.vocab_size == 0)
        cfg.vocab_size = 49408;
    cfg.full_finetune = full;
    cfg.precision = prec;
    fm_clip *m = NULL;
    fm_optimizer *opt = NULL;
    fm_batch batch = {0};
    st = fm_clip_create(&m, &cfg, FM_DEVICE_CUDA, 0);
    if (st == FM_OK)
        st = fm_optimizer_create(&opt, m);
    if (st == FM_OK)
        st = fm_batch_alloc(&batch, B, cfg.image_size, cfg.context_length);
    if (st != FM_OK) {
        fm_optimizer_destroy(opt);
        fm_clip_destroy(m);
        return fail("set-up", st);
    }
    /* synthetic data, as torch_clip_step.py makes it: uniform images, random tokens, the end-of-text token (the
     * largest id) at a random position from 8 on, which both sides pool */
    fm_rng rng = fm_rng_make(42, 7);
    size_t nimg = (size_t)B * 3 * (size_t)cfg.image_size * (size_t)cfg.image_size;
    fm_rng_uniform(&rng, batch.images, nimg);
    for (size_t i = 0; i < nimg; i++)
        batch.images[i] = 2.0f * batch.images[i] - 1.0f;
    const int T = cfg.context_length;
    for (int b = 0; b < B; b++) {
        int eot = 8 + (int)fm_rng_below(&rng, (uint64_t)(T - 8));
        for (int i = 0; i < T; i++)
            batch.tokens[(size_t)b * T + i] = (int32_t)fm_rng_below(&rng, (uint64_t)cfg.vocab_size - 2);
        batch.tokens[(size_t)b * T + eot] = cfg.vocab_size - 1;
        batch.eot[b] = eot;
    }
    fm_train_options o = fm_train_default_options();
    o.lr = 1e-5; /* small: many steps on one batch must stay finite */
    double *t = calloc((size_t)steps, sizeof *t);
    float loss = 0.0f, gnorm = 0.0f;
    if (!t)
        st = fm_error(FM_ERR_NO_MEMORY, "timings");
    for (int i = 0; st == FM_OK && i < warmup + steps; i++) {
        double t0 = fm_now_seconds();
        st = fm_train_step(m, opt, &o, &batch, B, o.lr, &loss, &gnorm);
        if (st == FM_OK)
            st = fm_device_synchronize(FM_DEVICE_CUDA);
        if (i >= warmup)
            t[i - warmup] = fm_now_seconds() - t0;
    }
    int rc = 0;
    if (st != FM_OK) {
        rc = fail("training step", st);
    } else {
        qsort(t, (size_t)steps, sizeof *t, cmp_double);
        double med = quantile(t, steps, 0.5), flops = step_flops(&cfg, B);
        const char *mode = full ? "full" : "lora";
        printf("{\"bench\": \"train_step\", \"framework\": \"fedmm\", \"variant\": \"fedmm\", \"mode\": \"%s\", "
               "\"precision\": \"%s\", \"preset\": \"%s\", \"batch\": %d, \"warmup\": %d, \"steps\": %d, "
               "\"trainable\": %zu, \"median_s\": %.6e, \"p10_s\": %.6e, \"p90_s\": %.6e, \"pairs_per_s\": %.2f, "
               "\"images_texts_per_s\": %.2f, \"flops_per_step\": %.6e, \"tflops\": %.2f, \"last_loss\": %.6f}\n",
               mode, fm_precision_name(prec), preset, B, warmup, steps, fm_clip_num_trainable(m), med,
               quantile(t, steps, 0.1), quantile(t, steps, 0.9), B / med, 2.0 * B / med, flops, flops / med / 1e12,
               (double)loss);
        fprintf(stderr,
                "fedmm %s %s %s batch %d: median %.1f ms (p10 %.1f, p90 %.1f), %.0f images+texts/s, %.1f "
                "TFLOP/s, loss %.4f\n",
                preset, mode, fm_precision_name(prec), B, med * 1e3, quantile(t, steps, 0.1) * 1e3,
                quantile(t, steps, 0.9) * 1e3, 2.0 * B / med, flops / med / 1e12, (double)loss);
    }
    free(t);
    fm_batch_free(&batch);
    fm_optimizer_destroy(opt);
    fm_clip_destroy(m);
    return rc;
}

int main(int argc, char **argv)
{
    const char *preset = "clip-base";
    int B = 256, warmup = 5, steps = 20, full = 1, peak = 0;
    fm_precision prec = FM_PRECISION_BF16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--peak") == 0) {
            peak = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench_clip_step: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--preset") == 0) {
            preset = v;
        } else if (strcmp(a, "--batch") == 0) {
            B = atoi(v);
        } else if (strcmp(a, "--warmup") == 0) {
            warmup = atoi(v);
        } else if (strcmp(a, "--steps") == 0) {
            steps = atoi(v);
        } else if (strcmp(a, "--mode") == 0 && (strcmp(v, "full") == 0 || strcmp(v, "lora") == 0)) {
            full = strcmp(v, "full") == 0;
        } else if (strcmp(a, "--precision") == 0) {
            if (fm_precision_parse(v, &prec) != FM_OK)
                return fail("--precision", FM_ERR_CONFIG);
        } else {
            fprintf(stderr, "bench_clip_step: unknown option %s %s\n", a, v);
            return 2;
        }
    }
    if (B < 2 || warmup < 0 || steps < 1) {
        fprintf(stderr, "bench_clip_step: --batch must be >= 2, --warmup >= 0, --steps >= 1\n");
        return 2;
    }
    char why[256] = "";
    if (fm_cuda_device_count(why, sizeof why) <= 0) {
        fprintf(stderr, "bench_clip_step: no usable GPU: %s\n", why);
        return 3;
    }
    return peak ? run_peak() : run_step(preset, B, prec, full, warmup, steps);
}
