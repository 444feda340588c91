/* Whole-model checks of the CLIP dual encoder on a very small configuration (image 16, patch 8, widths 16 and
 * 12, 2 layers, B = 3): analytic gradients of the loss against finite differences for every trainable slice,
 * with LoRA on both towers and with full fine-tuning; LoRA with B = 0 equals the base model; merge then
 * unmerge restores the weights; forward and backward are deterministic; bad inputs give clear errors.
 *
 * How the gradient check stays meaningful in float32: the loss is evaluated in float32, so a plain central
 * difference with h = 1e-2 carries an O(h²) truncation error comparable to the gradients themselves, and a
 * small h drowns in rounding. We use the 5-point stencil (f(-2h) - 8f(-h) + 8f(h) - f(2h)) / 12h, O(h⁴), and
 * Richardson-extrapolate it from h = 1e-2 and h/2 (O(h⁶)): without that, coordinates where the loss is strongly
 * curved (logit_scale through exp; token embeddings of std 0.02, where h = 1e-2 is not small) were off by
 * up to 0.3 %. What is left is float32 rounding of the loss, ≈ 1e-5 to 1e-4 absolute. Every tolerance below
 * also adds err = |fd5(h) - fd5(h/2)|, the difference's own uncertainty measured at that point (a wrong
 * gradient is off by the same amount at both steps, so this does not hide it). Checks:
 *   - 200 coordinates including at least one of every slice: |fd - g| ≤ 1e-4 + 2e-2·|g| + err;
 *   - every slice as a whole: along d = g_s/‖g_s‖ (that slice's own gradient direction) the derivative must
 *     be ‖g_s‖ within 1e-2 relative + 1e-4, so an error anywhere in a slice shows up, not only at sampled
 *     coordinates (a random direction of the whole vector would be nearly orthogonal to any error);
 *   - 2 directions mixing the full gradient direction with random noise, 5e-3 relative.
 * FEDMM_GRADCHECK_VERBOSE=1 prints the worst coordinates. A wrong LoRA scaling in one backward path fails by
 * ~40 %. Repeated with FEDMM_TEST_SEED = 1..20 before commit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/clip.h"
#include "fedmm/threads.h"
#include "testutil.h"

enum { NB = 3 };

typedef struct fixture {
    fm_clip_config cfg;
    float images[NB * 3 * 16 * 16];
    int32_t tokens[NB * 6];
    int32_t eot[NB];
    /* when set, the objective is Σ wi·img_emb + Σ wt·txt_emb through fm_clip_forward (NULL: that tower is
     * not run); otherwise CLIP's loss */
    const float *wi, *wt;
} fixture;

static void tiny_config(fm_clip_config *c, int full_finetune)
{
    assert_int_equal(fm_clip_config_preset("clip-tiny", c), FM_OK);
    c->image_size = 16, c->patch_size = 8;
    c->vision_width = 16, c->vision_layers = 2, c->vision_heads = 2, c->vision_mlp = 24;
    c->vocab_size = 23, c->context_length = 6;
    c->text_width = 12, c->text_layers = 2, c->text_heads = 2, c->text_mlp = 20;
    c->embed_dim = 10;
    c->lora_rank = 3, c->lora_alpha = 5.0f; /* scaling 5/3: the scaling path is exercised */
    c->lora_targets = FM_LORA_ALL, c->lora_towers = FM_CLIP_TOWER_BOTH;
    c->train_projections = 1;
    c->full_finetune = full_finetune;
    assert_int_equal(fm_clip_config_validate(c), FM_OK);
}

static void make_inputs(fixture *f, uint64_t stream)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), stream);
    fm_test_fill(&rng, f->images, sizeof f->images / sizeof f->images[0], -1.0f, 1.0f);
    for (size_t i = 0; i < NB * 6; i++)
        f->tokens[i] = (int32_t)fm_rng_below(&rng, (uint64_t)f->cfg.vocab_size);
    for (int b = 0; b < NB; b++)
        f->eot[b] = 1 + (int32_t)fm_rng_below(&rng, 5); /* a position past the first */
}

static fm_clip *make_model(const fm_clip_config *cfg, uint64_t seed)
{
    fm_clip *m = NULL;
    fm_status st = fm_clip_create(&m, cfg, FM_DEVICE_CPU, seed);
    if (st != FM_OK)
        fail_msg("fm_clip_create: %s", fm_last_error());
    return m;
}

/* Fills every slice whose name contains `pattern` with U(lo, hi) (e.g. the zero-initialised lora_B). */
static void fill_slices(fm_clip *m, fm_rng *rng, const char *pattern, float lo, float hi)
{
    float *p = fm_clip_trainable(m);
    for (size_t i = 0; i < fm_clip_num_slices(m); i++) {
        const fm_clip_slice *s = fm_clip_slice_at(m, i);
        if (strstr(s->name, pattern))
            fm_test_fill(rng, p + s->offset, s->numel, lo, hi);
    }
}

/* Adds U(-a, a) to every trainable coordinate except logit_scale (biases and layernorms start at 0 and 1). */
static void jitter(fm_clip *m, fm_rng *rng, float a)
{
    float *p = fm_clip_trainable(m);
    for (size_t i = 0; i < fm_clip_num_slices(m); i++) {
        const fm_clip_slice *s = fm_clip_slice_at(m, i);
        if (strstr(s->name, "logit_scale"))
            continue;
        for (size_t j = 0; j < s->numel; j++)
            p[s->offset + j] += a * (2.0f * (float)fm_rng_double(rng) - 1.0f);
    }
}

static double loss_at(fm_clip *m, const fixture *f)
{
    if (f->wi || f->wt) {
        enum { E = 10 };
        float img[NB * E], txt[NB * E];
        if (fm_clip_forward(m, f->wi ? f->images : NULL, f->wt ? f->tokens : NULL, f->eot, NB, img, txt) != FM_OK)
            fail_msg("fm_clip_forward: %s", fm_last_error());
        double acc = 0.0;
        for (int i = 0; i < NB * E; i++)
            acc += (f->wi ? (double)f->wi[i] * img[i] : 0.0) + (f->wt ? (double)f->wt[i] * txt[i] : 0.0);
        return acc;
    }
    float l = 0.0f;
    fm_status st = fm_clip_loss(m, f->images, f->tokens, f->eot, NB, &l);
    if (st != FM_OK)
        fail_msg("fm_clip_loss: %s", fm_last_error());
    return l;
}

/* 5-point derivative of the loss along `dir` (NULL: along coordinate i). */
static double fd5(fm_clip *m, const fixture *f, const float *dir, size_t i, double h)
{
    float *p = fm_clip_trainable(m);
    size_t n = fm_clip_num_trainable(m);
    float *saved = malloc(n * sizeof(float));
    assert_non_null(saved);
    memcpy(saved, p, n * sizeof(float));
    static const double steps[4] = {-2.0, -1.0, 1.0, 2.0};
    static const double weights[4] = {1.0, -8.0, 8.0, -1.0};
    double acc = 0.0;
    for (int s = 0; s < 4; s++) {
        if (dir) {
            for (size_t j = 0; j < n; j++)
                p[j] = saved[j] + (float)(steps[s] * h) * dir[j];
        } else {
            p[i] = saved[i] + (float)(steps[s] * h);
        }
        acc += weights[s] * loss_at(m, f);
        memcpy(p, saved, n * sizeof(float));
    }
    free(saved);
    return acc / (12.0 * h);
}

/* mode 0: LoRA on every linear of both towers, scaling 5/3, projections train; 1: full fine-tuning;
 * 2: LoRA on q, v, fc2 of the vision tower only with scaling 1 (the path without the scaling GEMM) and frozen
 * projections, so the text tower gets no backward at all. */
/* Richardson extrapolation of the 5-point stencil from h and h/2 (O(h⁶)); *err gets |fd5(h) - fd5(h/2)|, the
 * finite difference's own uncertainty (truncation where the loss is strongly curved, rounding where it is
 * flat), which the checks add to their tolerance: a wrong gradient is off consistently at both steps. */
static double fd(fm_clip *m, const fixture *f, const float *dir, size_t i, double h, double *err)
{
    double a = fd5(m, f, dir, i, h), b = fd5(m, f, dir, i, h / 2);
    *err = fabs(a - b);
    return b + (b - a) / 15.0;
}

/* Unit vector along g restricted to [off, off + n) (zero elsewhere) into dir; returns the norm of that part. */
static double slice_direction(const float *g, size_t total, size_t off, size_t n, float *dir)
{
    double norm = 0.0;
    memset(dir, 0, total * sizeof(float));
    for (size_t j = off; j < off + n; j++)
        norm += (double)g[j] * g[j];
    norm = sqrt(norm);
    for (size_t j = off; norm > 0.0 && j < off + n; j++)
        dir[j] = (float)(g[j] / norm);
    return norm;
}

static void gradcheck(int mode)
{
    int full_finetune = mode == 1;
    const char *what = mode == 1 ? "full fine-tune" : mode ? "lora (vision, scaling 1)" : "lora";
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, full_finetune);
    if (mode == 2) {
        f->cfg.lora_alpha = (float)f->cfg.lora_rank;
        f->cfg.lora_targets = FM_LORA_Q | FM_LORA_V | FM_LORA_FC2;
        f->cfg.lora_towers = FM_CLIP_TOWER_VISION;
        f->cfg.train_projections = 0;
    }
    make_inputs(f, 1 + (uint64_t)mode);
    fm_clip *m = make_model(&f->cfg, fm_test_seed());
    fm_rng rng = fm_rng_make(fm_test_seed(), 100 + (uint64_t)mode);
    fill_slices(m, &rng, "lora_B", -0.3f, 0.3f);
    jitter(m, &rng, 0.05f);

    size_t n = fm_clip_num_trainable(m), ns = fm_clip_num_slices(m);
    assert_true(n > 0 && ns > 0);
    float loss = 0.0f;
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    if (fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &loss) != FM_OK)
        fail_msg("forward_backward: %s", fm_last_error());
    assert_true(isfinite(loss) && loss > 0.0f);
    assert_float_equal(loss, loss_at(m, f), 1e-6);
    float *g = malloc(n * sizeof(float));
    assert_non_null(g);
    memcpy(g, fm_clip_trainable_grad(m), n * sizeof(float));

    /* 200 coordinates: one from every slice first, the rest anywhere. */
    const size_t ncoord = 200 > ns ? 200 : ns;
    const double h = 1e-2;
    double worst = 0.0, gmax = 0.0, max_abs_err = 0.0, max_rel_err = 0.0;
    size_t worst_i = 0, nonzero = 0;
    for (size_t c = 0; c < ncoord; c++) {
        size_t i;
        if (c < ns) {
            const fm_clip_slice *s = fm_clip_slice_at(m, c);
            i = s->offset + (size_t)fm_rng_below(&rng, s->numel);
        } else {
            i = (size_t)fm_rng_below(&rng, n);
        }
        double err;
        double fdi = fd(m, f, NULL, i, h, &err);
        double excess = fabs(fdi - g[i]) - (1e-4 + 2e-2 * fabs((double)g[i]) + err);
        if (excess > worst || isnan(fdi)) {
            worst = isnan(fdi) ? INFINITY : excess;
            worst_i = i;
        }
        if (fabs((double)g[i]) > 1e-4)
            nonzero++;
        max_abs_err = fmax(max_abs_err, fabs(fdi - g[i]));
        if (getenv("FEDMM_GRADCHECK_VERBOSE") && fabs(fdi - g[i]) > 3e-5)
            fprintf(stderr, "  coord %zu: g %.6g fd %.6g fd5(h) %.6g\n", i, g[i], fdi, fd5(m, f, NULL, i, h));
        if (fabs((double)g[i]) > 1e-3)
            max_rel_err = fmax(max_rel_err, fabs(fdi - g[i]) / fabs((double)g[i]));
        if (fabs((double)g[i]) > gmax)
            gmax = fabs((double)g[i]);
        if (c < ns && fabs(fdi - g[i]) > 1e-4 + 2e-2 * fabs((double)g[i]) + err)
            fprintf(stderr, "  slice %s [%zu]: analytic %.6g, finite difference %.6g\n", fm_clip_slice_at(m, c)->name,
                    i - fm_clip_slice_at(m, c)->offset, g[i], fdi);
    }
    if (worst > 0.0) {
        const char *name = "?";
        for (size_t s = 0; s < ns; s++) {
            const fm_clip_slice *sl = fm_clip_slice_at(m, s);
            if (worst_i >= sl->offset && worst_i < sl->offset + sl->numel)
                name = sl->name;
        }
        fail_msg("%s: coordinate %zu (%s): analytic %.6g vs finite difference off by %.3g beyond tolerance", what,
                 worst_i, name, g[worst_i], worst);
    }
    print_message("%s: %zu coordinates, largest |fd - g| %.3g, largest relative error (|g| > 1e-3) %.3g\n", what,
                  ncoord, max_abs_err, max_rel_err);
    /* A check that passes on all-zero gradients proves nothing. */
    assert_true(nonzero > ncoord / 2);
    assert_true(gmax > 1e-2);

    /* Every slice along its own gradient direction: the derivative there is the slice's gradient norm. */
    float *dir = malloc(n * sizeof(float));
    assert_non_null(dir);
    double worst_slice = 0.0;
    for (size_t k = 0; k < ns; k++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, k);
        double gn = slice_direction(g, n, sl->offset, sl->numel, dir);
        double err;
        double fdd = fd(m, f, dir, 0, h, &err);
        worst_slice = fmax(worst_slice, fabs(fdd - gn) / (gn > 1e-12 ? gn : 1e-12));
        if (!(fabs(fdd - gn) <= 1e-2 * gn + 1e-4 + err))
            fail_msg("%s: slice %s: gradient norm %.8g, finite difference along it %.8g", what, sl->name, gn, fdd);
    }
    /* Directions mixing the whole gradient with noise. */
    double gnorm = slice_direction(g, n, 0, n, dir);
    float *noise = malloc(n * sizeof(float));
    assert_non_null(noise);
    for (int k = 0; k < 2; k++) {
        fm_rng_normal(&rng, noise, n, 0.0f, 1.0f / sqrtf((float)n));
        double norm = 0.0, gd = 0.0;
        slice_direction(g, n, 0, n, dir);
        for (size_t j = 0; j < n; j++) {
            dir[j] += noise[j];
            norm += (double)dir[j] * dir[j];
        }
        for (size_t j = 0; j < n; j++) {
            dir[j] = (float)(dir[j] / sqrt(norm));
            gd += (double)g[j] * dir[j];
        }
        double err;
        double fdd = fd(m, f, dir, 0, h, &err);
        if (!(fabs(fdd - gd) <= 5e-3 * fabs(gd) + 1e-5 + err))
            fail_msg("%s: direction %d: analytic %.8g vs finite difference %.8g", what, k, gd, fdd);
    }
    print_message("%s: %zu slices along their gradients, largest relative error %.3g (gradient norm %.4g)\n", what, ns,
                  worst_slice, gnorm);
    free(noise);
    free(dir);
    free(g);
    fm_clip_destroy(m);
    free(f);
}

static void test_gradcheck_lora(void **state)
{
    (void)state;
    gradcheck(0);
}

static void test_gradcheck_full_finetune(void **state)
{
    (void)state;
    gradcheck(1);
}

static void test_gradcheck_lora_vision_only(void **state)
{
    (void)state;
    gradcheck(2);
}

/* ---- an independent float64 reference of Hugging Face's CLIPModel forward (with PEFT's LoRA) ---------- */

static const float *param(fm_clip *m, const char *name)
{
    fm_tensor t;
    if (fm_clip_param(m, name, &t) != FM_OK)
        fail_msg("no parameter %s: %s", name, fm_last_error());
    return t.data;
}

static const float *param_opt(fm_clip *m, const char *name)
{
    fm_tensor t;
    return fm_clip_param(m, name, &t) == FM_OK ? t.data : NULL;
}

/* y (N, out) = x (N, in) · W_effᵀ + b with W_eff = W + (alpha/r)·B·A when the module is adapted. */
static void ref_linear(fm_clip *m, const char *module, int has_bias, const double *x, double *y, int N, int in, int out)
{
    char name[200];
    snprintf(name, sizeof name, "%s.weight", module);
    const float *W = param(m, name);
    snprintf(name, sizeof name, "%s.bias", module);
    const float *b = has_bias ? param(m, name) : NULL;
    snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", module);
    const float *A = param_opt(m, name);
    snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", module);
    const float *Bm = param_opt(m, name);
    const fm_clip_config *c = fm_clip_get_config(m);
    int r = c->lora_rank;
    double s = A ? (double)c->lora_alpha / r : 0.0;
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < out; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < in; i++) {
                double w = W[(size_t)o * in + i];
                for (int k = 0; A && k < r; k++)
                    w += s * Bm[(size_t)o * r + k] * A[(size_t)k * in + i];
                acc += w * x[(size_t)n * in + i];
            }
            y[(size_t)n * out + o] = acc;
        }
    }
}

static void ref_layernorm(fm_clip *m, const char *module, const double *x, double *y, int N, int C)
{
    char name[200];
    snprintf(name, sizeof name, "%s.weight", module);
    const float *w = param(m, name);
    snprintf(name, sizeof name, "%s.bias", module);
    const float *b = param(m, name);
    for (int n = 0; n < N; n++) {
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < C; i++)
            mean += x[(size_t)n * C + i] / C;
        for (int i = 0; i < C; i++)
            var += (x[(size_t)n * C + i] - mean) * (x[(size_t)n * C + i] - mean) / C;
        for (int i = 0; i < C; i++)
            y[(size_t)n * C + i] = (x[(size_t)n * C + i] - mean) / sqrt(var + 1e-5) * w[i] + b[i];
    }
}

/* The encoder on one sequence x (T, W), in place. */
static void ref_encoder(fm_clip *m, const char *prefix, double *x, int T, int W, int NH, int M, int L, int causal)
{
    double *ln = calloc((size_t)T * W, sizeof(double)), *q = calloc((size_t)T * W, sizeof(double));
    double *k = calloc((size_t)T * W, sizeof(double)), *v = calloc((size_t)T * W, sizeof(double));
    double *a = calloc((size_t)T * W, sizeof(double)), *o = calloc((size_t)T * W, sizeof(double));
    double *h = calloc((size_t)T * M, sizeof(double)), *p = calloc((size_t)T, sizeof(double));
    int hs = W / NH;
    char mod[200];
    for (int l = 0; l < L; l++) {
#define MODULE(s) (snprintf(mod, sizeof mod, "%s.encoder.layers.%d.%s", prefix, l, s), mod)
        ref_layernorm(m, MODULE("layer_norm1"), x, ln, T, W);
        ref_linear(m, MODULE("self_attn.q_proj"), 1, ln, q, T, W, W);
        ref_linear(m, MODULE("self_attn.k_proj"), 1, ln, k, T, W, W);
        ref_linear(m, MODULE("self_attn.v_proj"), 1, ln, v, T, W, W);
        for (int hd = 0; hd < NH; hd++) {
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < T; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < hs; d++)
                        dot += q[(size_t)i * W + hd * hs + d] * k[(size_t)j * W + hd * hs + d];
                    p[j] = (causal && j > i) ? -INFINITY : dot / sqrt((double)hs);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++)
                    sum += (p[j] = exp(p[j] - mx));
                for (int d = 0; d < hs; d++) {
                    double acc = 0.0;
                    for (int j = 0; j < T; j++)
                        acc += p[j] / sum * v[(size_t)j * W + hd * hs + d];
                    a[(size_t)i * W + hd * hs + d] = acc;
                }
            }
        }
        ref_linear(m, MODULE("self_attn.out_proj"), 1, a, o, T, W, W);
        for (size_t i = 0; i < (size_t)T * W; i++)
            x[i] += o[i];
        ref_layernorm(m, MODULE("layer_norm2"), x, ln, T, W);
        ref_linear(m, MODULE("mlp.fc1"), 1, ln, h, T, W, M);
        for (size_t i = 0; i < (size_t)T * M; i++)
            h[i] = h[i] / (1.0 + exp(-1.702 * h[i])); /* quick_gelu */
        ref_linear(m, MODULE("mlp.fc2"), 1, h, o, T, M, W);
        for (size_t i = 0; i < (size_t)T * W; i++)
            x[i] += o[i];
#undef MODULE
    }
    free(ln), free(q), free(k), free(v), free(a), free(o), free(h), free(p);
}

/* pooled (W) → final layernorm → projection → L2 normalisation into e (E). */
static void ref_head(fm_clip *m, const char *ln_name, const char *proj, const double *pooled, int W, int E, double *e)
{
    double ln[64];
    ref_layernorm(m, ln_name, pooled, ln, 1, W);
    ref_linear(m, proj, 0, ln, e, 1, W, E);
    double norm = 0.0;
    for (int i = 0; i < E; i++)
        norm += e[i] * e[i];
    for (int i = 0; i < E; i++)
        e[i] /= sqrt(norm);
}

static void ref_image(fm_clip *m, const float *img, double *e)
{
    const fm_clip_config *c = fm_clip_get_config(m);
    int P = c->patch_size, G = c->image_size / P, H = c->image_size, W = c->vision_width, T = G * G + 1;
    const float *pw = param(m, "vision_model.embeddings.patch_embedding.weight");
    const float *cls = param(m, "vision_model.embeddings.class_embedding");
    const float *pos = param(m, "vision_model.embeddings.position_embedding.weight");
    double *x = calloc((size_t)T * W, sizeof(double)), *y = calloc((size_t)T * W, sizeof(double));
    for (int o = 0; o < W; o++)
        x[o] = cls[o] + pos[o];
    for (int py = 0; py < G; py++)
        for (int px = 0; px < G; px++)
            for (int o = 0; o < W; o++) {
                double acc = 0.0;
                for (int ch = 0; ch < 3; ch++)
                    for (int i = 0; i < P; i++)
                        for (int j = 0; j < P; j++)
                            acc += (double)pw[((size_t)(o * 3 + ch) * P + i) * P + j] *
                                   img[((size_t)ch * H + py * P + i) * H + px * P + j];
                size_t t = 1 + (size_t)py * G + px;
                x[t * W + o] = acc + pos[t * W + o];
            }
    ref_layernorm(m, "vision_model.pre_layrnorm", x, y, T, W);
    ref_encoder(m, "vision_model", y, T, W, c->vision_heads, c->vision_mlp, c->vision_layers, 0);
    ref_head(m, "vision_model.post_layernorm", "visual_projection", y, W, c->embed_dim, e);
    free(x), free(y);
}

static void ref_text(fm_clip *m, const int32_t *tokens, int eot, double *e)
{
    const fm_clip_config *c = fm_clip_get_config(m);
    int T = c->context_length, W = c->text_width;
    const float *tok = param(m, "text_model.embeddings.token_embedding.weight");
    const float *pos = param(m, "text_model.embeddings.position_embedding.weight");
    double *x = calloc((size_t)T * W, sizeof(double));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < W; i++)
            x[(size_t)t * W + i] = (double)tok[(size_t)tokens[t] * W + i] + pos[(size_t)t * W + i];
    ref_encoder(m, "text_model", x, T, W, c->text_heads, c->text_mlp, c->text_layers, 1);
    ref_head(m, "text_model.final_layer_norm", "text_projection", x + (size_t)eot * W, W, c->embed_dim, e);
    free(x);
}

/* The symmetric InfoNCE loss of the reference embeddings, with CLIP's clamp of the logit scale. */
static double ref_loss(fm_clip *m, const double *img, const double *txt, int N, int E)
{
    double ls = fmin(*param(m, "logit_scale"), log(100.0)), scale = exp(ls), loss = 0.0;
    double logits[NB][NB];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double dot = 0.0;
            for (int d = 0; d < E; d++)
                dot += img[i * E + d] * txt[j * E + d];
            logits[i][j] = scale * dot;
        }
    for (int i = 0; i < N; i++) {
        double r = 0.0, c = 0.0;
        for (int j = 0; j < N; j++)
            r += exp(logits[i][j]), c += exp(logits[j][i]);
        loss += (log(r) - logits[i][i]) + (log(c) - logits[i][i]);
    }
    return loss / (2.0 * N);
}

/* The model's embeddings and loss against the float64 reference: forward semantics, not just consistency. */
static void check_against_reference(int full_finetune)
{
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, full_finetune);
    make_inputs(f, 20 + (uint64_t)full_finetune);
    fm_clip *m = make_model(&f->cfg, 31);
    fm_rng rng = fm_rng_make(fm_test_seed(), 32);
    fill_slices(m, &rng, "lora_B", -0.3f, 0.3f);
    jitter(m, &rng, 0.05f);
    enum { E = 10 };
    float img[NB * E], txt[NB * E], loss = 0.0f;
    double rimg[NB * E], rtxt[NB * E];
    assert_int_equal(fm_clip_encode_images(m, f->images, NB, img), FM_OK);
    assert_int_equal(fm_clip_encode_texts(m, f->tokens, f->eot, NB, txt), FM_OK);
    assert_int_equal(fm_clip_loss(m, f->images, f->tokens, f->eot, NB, &loss), FM_OK);
    for (int b = 0; b < NB; b++) {
        ref_image(m, f->images + (size_t)b * 3 * 16 * 16, rimg + b * E);
        ref_text(m, f->tokens + b * 6, f->eot[b], rtxt + b * E);
    }
    fm_test_assert_close("image embeddings", img, rimg, NB * E, 1e-5, 1e-6);
    fm_test_assert_close("text embeddings", txt, rtxt, NB * E, 1e-5, 1e-6);
    double want = ref_loss(m, rimg, rtxt, NB, E);
    fm_test_assert_close("loss", &loss, &want, 1, 1e-5, 0.0);
    /* beyond ln(100) the scale is clamped */
    float *ls = (float *)param(m, "logit_scale");
    *ls = 5.5f;
    assert_int_equal(fm_clip_loss(m, f->images, f->tokens, f->eot, NB, &loss), FM_OK);
    want = ref_loss(m, rimg, rtxt, NB, E);
    fm_test_assert_close("clamped loss", &loss, &want, 1, 1e-5, 0.0);
    fm_clip_destroy(m);
    free(f);
}

static void test_forward_matches_reference_lora(void **state)
{
    (void)state;
    check_against_reference(0);
}

static void test_forward_matches_reference_full(void **state)
{
    (void)state;
    check_against_reference(1);
}

/* fm_clip_forward + fm_clip_backward with the caller's loss (a random projection of the embeddings), on both
 * towers and on the image tower alone: every slice along its gradient and 30 coordinates against finite
 * differences. */
static void embedding_gradcheck(int both)
{
    enum { E = 10 };
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    make_inputs(f, 40 + (uint64_t)both);
    fm_clip *m = make_model(&f->cfg, 41);
    fm_rng rng = fm_rng_make(fm_test_seed(), 42 + (uint64_t)both);
    fill_slices(m, &rng, "lora_B", -0.3f, 0.3f);
    float wi[NB * E], wt[NB * E];
    fm_test_fill(&rng, wi, NB * E, -1.0f, 1.0f);
    fm_test_fill(&rng, wt, NB * E, -1.0f, 1.0f);
    f->wi = wi, f->wt = both ? wt : NULL;

    size_t n = fm_clip_num_trainable(m);
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    double l0 = loss_at(m, f); /* runs fm_clip_forward */
    (void)l0;
    if (fm_clip_backward(m, wi, f->wt) != FM_OK)
        fail_msg("fm_clip_backward: %s", fm_last_error());
    /* a text gradient without a text forward is refused */
    if (!both)
        assert_int_equal(fm_clip_backward(m, NULL, wt), FM_ERR_STATE);
    float *g = malloc(n * sizeof(float)), *dir = malloc(n * sizeof(float));
    assert_non_null(g);
    assert_non_null(dir);
    memcpy(g, fm_clip_trainable_grad(m), n * sizeof(float));
    double gmax = 0.0;
    for (int c = 0; c < 30; c++) {
        size_t i = (size_t)fm_rng_below(&rng, n);
        double err;
        double fdi = fd(m, f, NULL, i, 1e-2, &err);
        if (!(fabs(fdi - g[i]) <= 1e-4 + 2e-2 * fabs((double)g[i]) + err))
            fail_msg("coordinate %zu: analytic %.6g, finite difference %.6g", i, g[i], fdi);
        gmax = fmax(gmax, fabs((double)g[i]));
    }
    assert_true(gmax > 1e-2);
    for (size_t k = 0; k < fm_clip_num_slices(m); k++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, k);
        double gn = slice_direction(g, n, sl->offset, sl->numel, dir);
        if (gn == 0.0)
            continue; /* the text tower when only images ran (checked below) */
        double err;
        double fdd = fd(m, f, dir, 0, 1e-2, &err);
        if (!(fabs(fdd - gn) <= 1e-2 * gn + 1e-4 + err))
            fail_msg("slice %s: gradient norm %.8g, finite difference along it %.8g", sl->name, gn, fdd);
    }
    /* only the image tower ran: the text adapters got nothing */
    for (size_t i = 0; !both && i < fm_clip_num_slices(m); i++) {
        const fm_clip_slice *s = fm_clip_slice_at(m, i);
        for (size_t j = 0; s->tower == FM_CLIP_TOWER_TEXT && j < s->numel; j++)
            assert_true(g[s->offset + j] == 0.0f);
    }
    /* any other pass invalidates the kept activations */
    float loss = 0.0f;
    assert_int_equal(fm_clip_loss(m, f->images, f->tokens, f->eot, NB, &loss), FM_OK);
    assert_int_equal(fm_clip_backward(m, wi, NULL), FM_ERR_STATE);
    free(g);
    free(dir);
    fm_clip_destroy(m);
    free(f);
}

static void test_embedding_backward_both(void **state)
{
    (void)state;
    embedding_gradcheck(1);
}

static void test_embedding_backward_image_only(void **state)
{
    (void)state;
    embedding_gradcheck(0);
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float d = 0.0f;
    for (size_t i = 0; i < n; i++)
        d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* Encodes the fixture's images and texts into img, txt (NB, E). */
static void encode(fm_clip *m, const fixture *f, float *img, float *txt)
{
    if (fm_clip_encode_images(m, f->images, NB, img) != FM_OK)
        fail_msg("encode_images: %s", fm_last_error());
    if (fm_clip_encode_texts(m, f->tokens, f->eot, NB, txt) != FM_OK)
        fail_msg("encode_texts: %s", fm_last_error());
}

/* LoRA with B = 0 (PEFT's init) is exactly the base model: same seed, full fine-tuning has no adapters. */
static void test_lora_zero_b_is_base(void **state)
{
    (void)state;
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    make_inputs(f, 3);
    fm_clip_config base_cfg = f->cfg;
    base_cfg.full_finetune = 1;
    fm_clip *lora = make_model(&f->cfg, 7), *base = make_model(&base_cfg, 7);
    enum { E = 10 };
    float i1[NB * E], t1[NB * E], i2[NB * E], t2[NB * E];
    encode(lora, f, i1, t1);
    encode(base, f, i2, t2);
    assert_memory_equal(i1, i2, sizeof i1);
    assert_memory_equal(t1, t2, sizeof t1);
    assert_float_equal(loss_at(lora, f), loss_at(base, f), 0.0);
    /* ... and a non-zero B changes both towers. */
    fm_rng rng = fm_rng_make(fm_test_seed(), 4);
    fill_slices(lora, &rng, "lora_B", -0.3f, 0.3f);
    encode(lora, f, i1, t1);
    assert_true(max_abs_diff(i1, i2, NB * E) > 1e-3f);
    assert_true(max_abs_diff(t1, t2, NB * E) > 1e-3f);
    fm_clip_destroy(lora);
    fm_clip_destroy(base);
    free(f);
}

static const char *const LINEARS[] = {"self_attn.q_proj",   "self_attn.k_proj", "self_attn.v_proj",
                                      "self_attn.out_proj", "mlp.fc1",          "mlp.fc2"};

/* Copies (or, with `cmp`, compares within tol) every adapted base weight of the model. */
static size_t walk_weights(fm_clip *m, float *buf, int cmp, float tol, float *maxdiff)
{
    size_t off = 0;
    const char *towers[2] = {"vision_model", "text_model"};
    for (int t = 0; t < 2; t++) {
        for (int l = 0; l < 2; l++) {
            for (int j = 0; j < 6; j++) {
                char name[160];
                snprintf(name, sizeof name, "%s.encoder.layers.%d.%s.weight", towers[t], l, LINEARS[j]);
                fm_tensor w;
                assert_int_equal(fm_clip_param(m, name, &w), FM_OK);
                size_t n = (size_t)fm_tensor_numel(&w);
                if (cmp) {
                    float d = max_abs_diff(buf + off, w.data, n);
                    *maxdiff = fmaxf(*maxdiff, d);
                    if (d > tol)
                        fail_msg("%s differs by %g after merge + unmerge", name, d);
                } else {
                    memcpy(buf + off, w.data, n * sizeof(float));
                }
                off += n;
            }
        }
    }
    return off;
}

static void test_merge_unmerge(void **state)
{
    (void)state;
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    make_inputs(f, 5);
    fm_clip *m = make_model(&f->cfg, 11);
    fm_rng rng = fm_rng_make(fm_test_seed(), 6);
    fill_slices(m, &rng, "lora_B", -0.3f, 0.3f);
    enum { E = 10, CAP = 64 * 1024 };
    float i1[NB * E], t1[NB * E], i2[NB * E], t2[NB * E];
    encode(m, f, i1, t1);
    float *orig = malloc(CAP * sizeof(float)), *merged = malloc(CAP * sizeof(float)), dmax = 0.0f;
    assert_non_null(orig);
    assert_non_null(merged);
    size_t nw = walk_weights(m, orig, 0, 0.0f, NULL);
    assert_true(nw < CAP);

    assert_int_equal(fm_clip_merge_lora(m), FM_OK);
    assert_int_equal(fm_clip_lora_merged(m), 1);
    assert_int_equal(fm_clip_merge_lora(m), FM_ERR_STATE);
    walk_weights(m, merged, 0, 0.0f, NULL);
    assert_true(max_abs_diff(orig, merged, nw) > 1e-3f); /* the adapters really moved into W */
    encode(m, f, i2, t2);                                /* and W alone computes what W + adapter did */
    assert_true(max_abs_diff(i1, i2, NB * E) < 2e-6f);
    assert_true(max_abs_diff(t1, t2, NB * E) < 2e-6f);
    float loss = 0.0f;
    assert_int_equal(fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &loss), FM_ERR_STATE);
    assert_non_null(strstr(fm_last_error(), "merged"));

    assert_int_equal(fm_clip_unmerge_lora(m), FM_OK);
    assert_int_equal(fm_clip_unmerge_lora(m), FM_ERR_STATE);
    walk_weights(m, orig, 1, 1e-6f, &dmax);
    print_message("merge + unmerge: largest weight difference %g\n", (double)dmax);
    encode(m, f, i2, t2);
    assert_true(max_abs_diff(i1, i2, NB * E) < 2e-6f);
    assert_true(max_abs_diff(t1, t2, NB * E) < 2e-6f);
    free(orig);
    free(merged);
    fm_clip_destroy(m);
    free(f);
}

static void test_deterministic(void **state)
{
    (void)state;
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 1);
    make_inputs(f, 7);
    fm_clip *a = make_model(&f->cfg, 21), *b = make_model(&f->cfg, 21), *c = make_model(&f->cfg, 22);
    size_t n = fm_clip_num_trainable(a);
    assert_memory_equal(fm_clip_trainable(a), fm_clip_trainable(b), n * sizeof(float));
    assert_true(memcmp(fm_clip_trainable(a), fm_clip_trainable(c), n * sizeof(float)) != 0);
    float la = 0.0f, lb = 0.0f;
    assert_int_equal(fm_clip_zero_grad(a), FM_OK);
    assert_int_equal(fm_clip_forward_backward(a, f->images, f->tokens, f->eot, NB, &la), FM_OK);
    float *g = malloc(n * sizeof(float));
    assert_non_null(g);
    memcpy(g, fm_clip_trainable_grad(a), n * sizeof(float));
    /* again on the same model (reused arena), and on a twin */
    assert_int_equal(fm_clip_zero_grad(a), FM_OK);
    assert_int_equal(fm_clip_forward_backward(a, f->images, f->tokens, f->eot, NB, &lb), FM_OK);
    assert_memory_equal(&la, &lb, sizeof la);
    assert_memory_equal(g, fm_clip_trainable_grad(a), n * sizeof(float));
    assert_int_equal(fm_clip_forward_backward(b, f->images, f->tokens, f->eot, NB, &lb), FM_OK);
    assert_memory_equal(&la, &lb, sizeof la);
    assert_memory_equal(g, fm_clip_trainable_grad(b), n * sizeof(float));
    /* gradients accumulate without zero_grad */
    assert_int_equal(fm_clip_forward_backward(b, f->images, f->tokens, f->eot, NB, &lb), FM_OK);
    const float *gb = fm_clip_trainable_grad(b);
    for (size_t i = 0; i < n; i++)
        assert_float_equal(gb[i], 2.0f * g[i], 1e-6f + 1e-6f * fabsf(g[i]));
    free(g);
    fm_clip_destroy(a);
    fm_clip_destroy(b);
    fm_clip_destroy(c);
    free(f);
}

/* Encoding in chunks and in a different batch gives each sample the same embedding. */
static void test_encode_batch_independent(void **state)
{
    (void)state;
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    make_inputs(f, 8);
    fm_clip *m = make_model(&f->cfg, 3);
    enum { E = 10 };
    float img[NB * E], txt[NB * E], one[E];
    encode(m, f, img, txt);
    for (int b = 0; b < NB; b++) {
        assert_int_equal(fm_clip_encode_images(m, f->images + (size_t)b * 3 * 16 * 16, 1, one), FM_OK);
        assert_true(max_abs_diff(one, img + b * E, E) < 1e-6f);
        assert_int_equal(fm_clip_encode_texts(m, f->tokens + b * 6, f->eot + b, 1, one), FM_OK);
        assert_true(max_abs_diff(one, txt + b * E, E) < 1e-6f);
        double norm = 0.0;
        for (int j = 0; j < E; j++)
            norm += (double)one[j] * one[j];
        assert_float_equal(norm, 1.0, 1e-5);
    }
    fm_clip_destroy(m);
    free(f);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    make_inputs(f, 9);
    fm_clip *m = make_model(&f->cfg, 3);
    float loss = 0.0f, emb[NB * 10];
    f->eot[1] = 6;
    assert_int_equal(fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &loss), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "eot_pos[1]"));
    f->eot[1] = 2;
    f->tokens[4] = 23;
    assert_int_not_equal(fm_clip_encode_texts(m, f->tokens, f->eot, NB, emb), FM_OK);
    assert_non_null(strstr(fm_last_error(), "23"));
    f->tokens[4] = 0;
    assert_int_equal(fm_clip_forward_backward(m, f->images, f->tokens, f->eot, 0, &loss), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_clip_encode_images(m, NULL, NB, emb), FM_ERR_INVALID_ARG);
    /* a bad config never makes a model */
    fm_clip_config bad = f->cfg;
    bad.vision_heads = 3;
    fm_clip *none = NULL;
    assert_int_equal(fm_clip_create(&none, &bad, FM_DEVICE_CPU, 1), FM_ERR_CONFIG);
    assert_null(none);
    assert_non_null(strstr(fm_last_error(), "vision_heads"));
    fm_clip_destroy(m);
    free(f);
}

/* ---- LoRA dropout ----------------------------------------------------------------------------------------
 * With lora_dropout = 0.3 the training passes drop the adapters' inputs; the masks depend only on the model's
 * dropout step, so setting the step back before every evaluation holds them fixed and the training loss is a
 * smooth function of the parameters that finite differences can check. */

/* The training objective with the masks of dropout step `step`: CLIP's loss through fm_clip_forward_backward
 * (the gradient it accumulates on the way is not used), or Σ wi·img_emb + Σ wt·txt_emb through fm_clip_forward. */
static double train_loss_at(fm_clip *m, const fixture *f, uint64_t step)
{
    assert_int_equal(fm_clip_set_dropout_step(m, step), FM_OK);
    if (f->wi || f->wt) {
        enum { E = 10 };
        float img[NB * E], txt[NB * E];
        if (fm_clip_forward(m, f->wi ? f->images : NULL, f->wt ? f->tokens : NULL, f->eot, NB, img, txt) != FM_OK)
            fail_msg("fm_clip_forward: %s", fm_last_error());
        double acc = 0.0;
        for (int i = 0; i < NB * E; i++)
            acc += (f->wi ? (double)f->wi[i] * img[i] : 0.0) + (f->wt ? (double)f->wt[i] * txt[i] : 0.0);
        return acc;
    }
    float l = 0.0f;
    if (fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &l) != FM_OK)
        fail_msg("fm_clip_forward_backward: %s", fm_last_error());
    return l;
}

/* fd() for the training objective at a fixed dropout step: Richardson-extrapolated 5-point stencil. */
static double fd_train5(fm_clip *m, const fixture *f, uint64_t step, const float *dir, size_t i, double h)
{
    float *p = fm_clip_trainable(m);
    size_t n = fm_clip_num_trainable(m);
    float *saved = malloc(n * sizeof(float));
    assert_non_null(saved);
    memcpy(saved, p, n * sizeof(float));
    static const double steps[4] = {-2.0, -1.0, 1.0, 2.0};
    static const double weights[4] = {1.0, -8.0, 8.0, -1.0};
    double acc = 0.0;
    for (int s = 0; s < 4; s++) {
        if (dir) {
            for (size_t j = 0; j < n; j++)
                p[j] = saved[j] + (float)(steps[s] * h) * dir[j];
        } else {
            p[i] = saved[i] + (float)(steps[s] * h);
        }
        acc += weights[s] * train_loss_at(m, f, step);
        memcpy(p, saved, n * sizeof(float));
    }
    free(saved);
    return acc / (12.0 * h);
}

static double fd_train(fm_clip *m, const fixture *f, uint64_t step, const float *dir, size_t i, double h, double *err)
{
    double a = fd_train5(m, f, step, dir, i, h), b = fd_train5(m, f, step, dir, i, h / 2);
    *err = fabs(a - b);
    return b + (b - a) / 15.0;
}

/* embeddings: 0 = CLIP's loss through fm_clip_forward_backward, 1 = a linear objective of both towers'
 * embeddings through fm_clip_forward + fm_clip_backward. One coordinate of every slice, then every slice
 * along its own gradient, with the tolerances of gradcheck() above. */
static void dropout_gradcheck(int embeddings)
{
    enum { E = 10 };
    const char *what = embeddings ? "lora dropout 0.3 (forward + backward)" : "lora dropout 0.3 (forward_backward)";
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    f->cfg.lora_dropout = 0.3f;
    assert_int_equal(fm_clip_config_validate(&f->cfg), FM_OK);
    make_inputs(f, 40 + (uint64_t)embeddings);
    fm_clip *m = make_model(&f->cfg, fm_test_seed());
    fm_rng rng = fm_rng_make(fm_test_seed(), 140 + (uint64_t)embeddings);
    fill_slices(m, &rng, "lora_B", -0.3f, 0.3f);
    jitter(m, &rng, 0.05f);
    float wi[NB * E], wt[NB * E];
    if (embeddings) {
        fm_test_fill(&rng, wi, NB * E, -1.0f, 1.0f);
        fm_test_fill(&rng, wt, NB * E, -1.0f, 1.0f);
        f->wi = wi, f->wt = wt;
    }
    const uint64_t step = 1 + fm_rng_below(&rng, 1000);

    size_t n = fm_clip_num_trainable(m), ns = fm_clip_num_slices(m);
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    assert_int_equal(fm_clip_set_dropout_step(m, step), FM_OK);
    double l0;
    if (embeddings) {
        l0 = train_loss_at(m, f, step);
        if (fm_clip_backward(m, wi, wt) != FM_OK)
            fail_msg("fm_clip_backward: %s", fm_last_error());
    } else {
        float loss = 0.0f;
        if (fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &loss) != FM_OK)
            fail_msg("forward_backward: %s", fm_last_error());
        l0 = loss;
    }
    assert_true(fm_clip_dropout_step(m) == step + 1); /* each training forward advances the step */
    float *g = malloc(n * sizeof(float));
    assert_non_null(g);
    memcpy(g, fm_clip_trainable_grad(m), n * sizeof(float));
    /* the same step replays the same masks; the next one draws others */
    assert_true(train_loss_at(m, f, step) == l0);
    assert_true(train_loss_at(m, f, step + 1) != l0);

    const double h = 1e-2;
    double worst = 0.0, gmax = 0.0, max_abs_err = 0.0;
    size_t worst_i = 0, nonzero = 0;
    for (size_t c = 0; c < ns; c++) {
        const fm_clip_slice *s = fm_clip_slice_at(m, c);
        size_t i = s->offset + (size_t)fm_rng_below(&rng, s->numel);
        double err;
        double fdi = fd_train(m, f, step, NULL, i, h, &err);
        double excess = fabs(fdi - g[i]) - (1e-4 + 2e-2 * fabs((double)g[i]) + err);
        if (excess > worst || isnan(fdi)) {
            worst = isnan(fdi) ? INFINITY : excess;
            worst_i = c;
        }
        if (fabs((double)g[i]) > 1e-4)
            nonzero++;
        gmax = fmax(gmax, fabs((double)g[i]));
        max_abs_err = fmax(max_abs_err, fabs(fdi - g[i]));
        if (excess > 0.0)
            fprintf(stderr, "  slice %s [%zu]: analytic %.6g, finite difference %.6g\n", s->name, i - s->offset, g[i],
                    fdi);
    }
    if (worst > 0.0)
        fail_msg("%s: slice %s: analytic gradient off by %.3g beyond tolerance", what,
                 fm_clip_slice_at(m, worst_i)->name, worst);
    assert_true(nonzero > ns / 2);
    assert_true(gmax > 1e-2);
    float *dir = malloc(n * sizeof(float));
    assert_non_null(dir);
    double worst_slice = 0.0;
    for (size_t k = 0; k < ns; k++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, k);
        double gn = slice_direction(g, n, sl->offset, sl->numel, dir);
        if (gn == 0.0)
            continue; /* e.g. logit_scale through the embedding objective */
        double err;
        double fdd = fd_train(m, f, step, dir, 0, h, &err);
        worst_slice = fmax(worst_slice, fabs(fdd - gn) / gn);
        if (!(fabs(fdd - gn) <= 1e-2 * gn + 1e-4 + err))
            fail_msg("%s: slice %s: gradient norm %.8g, finite difference along it %.8g", what, sl->name, gn, fdd);
    }
    print_message("%s: %zu slices, largest |fd - g| %.3g at one coordinate each, largest relative error along a "
                  "slice %.3g\n",
                  what, ns, max_abs_err, worst_slice);
    free(dir);
    free(g);
    fm_clip_destroy(m);
    free(f);
}

static void test_gradcheck_lora_dropout(void **state)
{
    (void)state;
    dropout_gradcheck(0);
}

static void test_gradcheck_lora_dropout_embeddings(void **state)
{
    (void)state;
    dropout_gradcheck(1);
}

/* Dropout acts in training only, differs between steps, and p = 0 (or full fine-tuning, which has no adapters)
 * behaves exactly as a model without dropout. */
static void test_lora_dropout_train_vs_eval(void **state)
{
    (void)state;
    enum { E = 10 };
    fixture *f = fm_test_alloc(sizeof *f);
    tiny_config(&f->cfg, 0);
    make_inputs(f, 42);
    fm_clip_config cfg_drop = f->cfg;
    cfg_drop.lora_dropout = 0.3f;
    fm_clip *m = make_model(&cfg_drop, 11), *m0 = make_model(&f->cfg, 11);
    size_t n = fm_clip_num_trainable(m);
    assert_int_equal(n, fm_clip_num_trainable(m0));
    fm_rng rng = fm_rng_make(fm_test_seed(), 142);
    fill_slices(m, &rng, "lora_B", -0.3f, 0.3f);
    jitter(m, &rng, 0.05f);
    memcpy(fm_clip_trainable(m0), fm_clip_trainable(m), n * sizeof(float));

    /* evaluation: identical, before and after training passes */
    float le = 0.0f, le0 = 0.0f, l1 = 0.0f, l2 = 0.0f, l0 = 0.0f;
    float img[NB * E], txt[NB * E], img0[NB * E], txt0[NB * E];
    assert_int_equal(fm_clip_loss(m, f->images, f->tokens, f->eot, NB, &le), FM_OK);
    assert_int_equal(fm_clip_loss(m0, f->images, f->tokens, f->eot, NB, &le0), FM_OK);
    assert_memory_equal(&le, &le0, sizeof le);
    assert_true(fm_clip_dropout_step(m) == 0); /* evaluation does not advance the step */
    float *g1 = malloc(n * sizeof(float));
    assert_non_null(g1);
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    assert_int_equal(fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &l1), FM_OK);
    memcpy(g1, fm_clip_trainable_grad(m), n * sizeof(float));
    assert_int_equal(fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &l2), FM_OK);
    assert_true(fm_clip_dropout_step(m) == 2);
    print_message("lora dropout: eval loss %.7f, training losses %.7f, %.7f\n", (double)le, (double)l1, (double)l2);
    assert_true(l1 != l2 && l1 != le && l2 != le);
    encode(m, f, img, txt);
    encode(m0, f, img0, txt0);
    assert_memory_equal(img, img0, sizeof img);
    assert_memory_equal(txt, txt0, sizeof txt);
    assert_int_equal(fm_clip_loss(m, f->images, f->tokens, f->eot, NB, &le0), FM_OK);
    assert_memory_equal(&le, &le0, sizeof le);
    /* replaying step 0 gives the first pass's loss and gradient bit for bit */
    assert_int_equal(fm_clip_set_dropout_step(m, 0), FM_OK);
    assert_int_equal(fm_clip_zero_grad(m), FM_OK);
    assert_int_equal(fm_clip_forward_backward(m, f->images, f->tokens, f->eot, NB, &l2), FM_OK);
    assert_memory_equal(&l1, &l2, sizeof l1);
    assert_memory_equal(g1, fm_clip_trainable_grad(m), n * sizeof(float));
    /* the training forward for the caller's loss drops too */
    assert_int_equal(fm_clip_forward(m, f->images, f->tokens, f->eot, NB, img0, txt0), FM_OK);
    assert_true(max_abs_diff(img, img0, NB * E) > 1e-6f && max_abs_diff(txt, txt0, NB * E) > 1e-6f);

    /* p = 0: training equals evaluation bit for bit, and the step changes nothing */
    float *g0 = malloc(n * sizeof(float));
    assert_non_null(g0);
    assert_int_equal(fm_clip_zero_grad(m0), FM_OK);
    assert_int_equal(fm_clip_forward_backward(m0, f->images, f->tokens, f->eot, NB, &l0), FM_OK);
    assert_memory_equal(&l0, &le, sizeof l0);
    memcpy(g0, fm_clip_trainable_grad(m0), n * sizeof(float));
    assert_true(memcmp(g0, g1, n * sizeof(float)) != 0); /* dropout did change the gradient */
    assert_int_equal(fm_clip_set_dropout_step(m0, 12345), FM_OK);
    assert_int_equal(fm_clip_zero_grad(m0), FM_OK);
    assert_int_equal(fm_clip_forward_backward(m0, f->images, f->tokens, f->eot, NB, &l0), FM_OK);
    assert_memory_equal(&l0, &le, sizeof l0);
    assert_memory_equal(g0, fm_clip_trainable_grad(m0), n * sizeof(float));
    assert_int_equal(fm_clip_forward(m0, f->images, f->tokens, f->eot, NB, img0, txt0), FM_OK);
    encode(m0, f, img, txt);
    assert_memory_equal(img, img0, sizeof img);
    assert_memory_equal(txt, txt0, sizeof txt);
    free(g0);
    free(g1);
    fm_clip_destroy(m);
    fm_clip_destroy(m0);

    /* full fine-tuning has no adapters: lora_dropout is accepted and changes nothing */
    fm_clip_config ft;
    tiny_config(&ft, 1);
    ft.lora_dropout = 0.3f;
    fm_clip *mf = make_model(&ft, 12);
    assert_int_equal(fm_clip_loss(mf, f->images, f->tokens, f->eot, NB, &le), FM_OK);
    assert_int_equal(fm_clip_forward_backward(mf, f->images, f->tokens, f->eot, NB, &l1), FM_OK);
    assert_memory_equal(&le, &l1, sizeof le);
    fm_clip_destroy(mf);
    /* out of range */
    cfg_drop.lora_dropout = 1.0f;
    fm_clip *none = NULL;
    assert_int_equal(fm_clip_create(&none, &cfg_drop, FM_DEVICE_CPU, 1), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "lora_dropout"));
    cfg_drop.lora_dropout = -0.1f;
    assert_int_equal(fm_clip_create(&none, &cfg_drop, FM_DEVICE_CPU, 1), FM_ERR_CONFIG);
    assert_null(none);
    free(f);
}

int main(void)
{
    /* The model is tiny: one thread avoids thread start-up and spinning costs that dominate on a busy machine. */
    fm_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_reference_lora),
        cmocka_unit_test(test_forward_matches_reference_full),
        cmocka_unit_test(test_gradcheck_lora),
        cmocka_unit_test(test_gradcheck_full_finetune),
        cmocka_unit_test(test_gradcheck_lora_vision_only),
        cmocka_unit_test(test_embedding_backward_both),
        cmocka_unit_test(test_embedding_backward_image_only),
        cmocka_unit_test(test_lora_zero_b_is_base),
        cmocka_unit_test(test_merge_unmerge),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_encode_batch_independent),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_gradcheck_lora_dropout),
        cmocka_unit_test(test_gradcheck_lora_dropout_embeddings),
        cmocka_unit_test(test_lora_dropout_train_vs_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
