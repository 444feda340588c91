/* A federated site's training loss under its modality (see fedmm/site_objective.h). Each part — paired
 * contrastive, image-only against class prompts, text-only prompt matching — runs as its own forward pass
 * followed at once by its backward (the model keeps only the last pass's activations). The small losses on
 * embeddings (n×K logits) are computed on the host in double precision; the towers run on the model's
 * device. */
#include "fedmm/site_objective.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../cpu/cpu_ops.h"
#include "fedmm/device.h"

static const float LOGIT_SCALE_MAX = 4.605170186f; /* ln(100): CLIP's clamp, as fm_clip uses it */

/* ---- class prompts -------------------------------------------------------------------------------------- */

fm_status fm_class_prompts_build(const fm_dataset *ds, fm_attribute attr, fm_class_prompts *out)
{
    if (!ds || !out)
        return fm_error(FM_ERR_INVALID_ARG, "class prompts: ds or out is NULL");
    memset(out, 0, sizeof *out);
    int K = fm_synth_num_classes(attr);
    if (K <= 0)
        return fm_error(FM_ERR_INVALID_ARG, "class prompts: attribute %d has no classes", (int)attr);
    int T = fm_dataset_context_len(ds);
    int32_t *tokens = malloc((size_t)K * (size_t)T * sizeof *tokens);
    int32_t *eot = malloc((size_t)K * sizeof *eot);
    if (!tokens || !eot) {
        free(tokens);
        free(eot);
        return fm_error(FM_ERR_NO_MEMORY, "class prompts: out of memory for %d prompts", K);
    }
    fm_status st = fm_dataset_class_prompts(ds, attr, tokens, eot);
    if (st != FM_OK) {
        free(tokens);
        free(eot);
        return st;
    }
    out->attr = attr;
    out->num_classes = K;
    out->context_len = T;
    out->tokens = tokens;
    out->eot = eot;
    return FM_OK;
}

void fm_class_prompts_free(fm_class_prompts *p)
{
    if (!p)
        return;
    free(p->tokens);
    free(p->eot);
    memset(p, 0, sizeof *p);
}

/* ---- which blocks a site trains ------------------------------------------------------------------------- */

fm_clip_tower fm_site_trained_towers(fm_modality modality)
{
    switch (modality) {
    case FM_MODALITY_IMAGE: return FM_CLIP_TOWER_VISION;
    case FM_MODALITY_TEXT: return FM_CLIP_TOWER_TEXT;
    case FM_MODALITY_PAIRED: return FM_CLIP_TOWER_BOTH;
    default: return FM_CLIP_TOWER_NONE;
    }
}

int fm_site_trains_slice(fm_modality modality, const fm_clip_slice *slice)
{
    if (!slice)
        return 0;
    fm_clip_tower towers = fm_site_trained_towers(modality);
    if (towers == FM_CLIP_TOWER_NONE)
        return 0;
    if (slice->tower == FM_CLIP_TOWER_NONE) /* logit_scale: every part trains it */
        return 1;
    return ((unsigned)slice->tower & (unsigned)towers) != 0;
}

/* ---- helpers -------------------------------------------------------------------------------------------- */

/* The raw logit_scale parameter, and where its gradient lives in the trainable gradient (NULL when it does
 * not train). */
typedef struct scale_info {
    float raw;     /* the parameter */
    float clamped; /* min(raw, ln 100): what the losses use */
    float s;       /* exp(clamped) */
    int flows;     /* 1 when a gradient reaches the parameter (not clamped, and trainable) */
    float *grad;   /* device pointer to its gradient, or NULL */
} scale_info;

static fm_status get_scale(fm_clip *m, scale_info *si)
{
    fm_tensor t;
    FM_TRY(fm_clip_param(m, "logit_scale", &t));
    FM_TRY(fm_device_copy(&si->raw, FM_DEVICE_CPU, t.data, fm_clip_device(m), sizeof si->raw));
    if (!isfinite(si->raw))
        return fm_error(FM_ERR_NOT_FINITE, "site loss: logit_scale is %g", (double)si->raw);
    si->clamped = si->raw > LOGIT_SCALE_MAX ? LOGIT_SCALE_MAX : si->raw;
    si->s = expf(si->clamped);
    si->grad = NULL;
    for (size_t i = 0; i < fm_clip_num_slices(m); i++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, i);
        if (sl->tower == FM_CLIP_TOWER_NONE && sl->numel == 1 && strstr(sl->name, "logit_scale")) {
            si->grad = fm_clip_trainable_grad(m) + sl->offset;
            break;
        }
    }
    si->flows = si->grad != NULL && !(si->raw > LOGIT_SCALE_MAX);
    return FM_OK;
}

/* Adds d (a gradient with respect to the raw logit_scale) to its gradient slot. */
static fm_status add_scale_grad(fm_clip *m, const scale_info *si, double d)
{
    if (!si->flows || d == 0.0)
        return FM_OK;
    float g;
    FM_TRY(fm_device_copy(&g, FM_DEVICE_CPU, si->grad, fm_clip_device(m), sizeof g));
    g += (float)d;
    return fm_device_copy(si->grad, fm_clip_device(m), &g, FM_DEVICE_CPU, sizeof g);
}

/* Cross-entropy of logits s·X·Pᵀ (X (n, E), P (K, E)) against labels, mean over the n rows, times `weight`.
 * Returns the unweighted mean loss; fills dX (n, E) and dP (K, E, may be NULL) with the weighted gradients
 * and *dls with the weighted gradient wrt the logit scale's log (s·Σ dlogits·X·Pᵀ). */
static double prompt_ce(const float *X, const float *P, const int32_t *labels, int n, int K, int E, double s,
                        double weight, float *dX, float *dP, double *dls, double *work /* (K) */)
{
    double total = 0.0, ds = 0.0;
    if (dP)
        memset(dP, 0, (size_t)K * (size_t)E * sizeof *dP);
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * (size_t)E;
        double mx = -INFINITY;
        for (int c = 0; c < K; c++) {
            const float *p = P + (size_t)c * (size_t)E;
            double dot = 0.0;
            for (int e = 0; e < E; e++)
                dot += (double)x[e] * (double)p[e];
            work[c] = dot; /* keep the raw dot: ds needs it */
            if (s * dot > mx)
                mx = s * dot;
        }
        double z = 0.0;
        for (int c = 0; c < K; c++)
            z += exp(s * work[c] - mx);
        const int y = labels[i];
        total += mx + log(z) - s * work[y];
        float *dx = dX + (size_t)i * (size_t)E;
        memset(dx, 0, (size_t)E * sizeof *dx);
        for (int c = 0; c < K; c++) {
            double g = (exp(s * work[c] - mx) / z - (c == y ? 1.0 : 0.0)) * weight / n; /* dL/dlogit_ic */
            ds += g * work[c];
            const float *p = P + (size_t)c * (size_t)E;
            for (int e = 0; e < E; e++)
                dx[e] += (float)(s * g * (double)p[e]);
            if (dP) {
                float *dp = dP + (size_t)c * (size_t)E;
                for (int e = 0; e < E; e++)
                    dp[e] += (float)(s * g * (double)x[e]);
            }
        }
    }
    /* d logits / d log(s) = s·X·Pᵀ */
    *dls = ds * s;
    return n > 0 ? total / n : 0.0;
}

/* Copies rows `sel` (count) of a (B, row) array into dst. */
static void gather_f(float *dst, const float *src, const int *sel, int count, size_t row)
{
    for (int i = 0; i < count; i++)
        memcpy(dst + (size_t)i * row, src + (size_t)sel[i] * row, row * sizeof *dst);
}
static void gather_i(int32_t *dst, const int32_t *src, const int *sel, int count, size_t row)
{
    for (int i = 0; i < count; i++)
        memcpy(dst + (size_t)i * row, src + (size_t)sel[i] * row, row * sizeof *dst);
}

/* ---- the parts ------------------------------------------------------------------------------------------ */

typedef struct part_ctx {
    fm_clip *m;
    const fm_site_batch *b;
    const fm_class_prompts *prompts;
    scale_info si;
    int E, T;
    size_t img_row; /* 3·S·S */
} part_ctx;

/* Paired samples sel (n ≥ 2) inside a mixed batch: CLIP's loss through fm_clip_forward and the host
 * InfoNCE, so that its gradient can carry the part's weight (fm_clip_forward_backward always has weight 1). */
static fm_status paired_part(part_ctx *c, const int *sel, int n, double weight, double *loss)
{
    const size_t E = (size_t)c->E, nn = (size_t)n;
    fm_status st = FM_OK;
    float *images = malloc(nn * c->img_row * sizeof *images);
    int32_t *tokens = malloc(nn * (size_t)c->T * sizeof *tokens), *eot = malloc(nn * sizeof *eot);
    float *emb = malloc(2 * nn * E * sizeof *emb), *demb = calloc(2 * nn * E, sizeof *demb); /* += below */
    float *probs = malloc(2 * nn * nn * sizeof *probs);
    if (!images || !tokens || !eot || !emb || !demb || !probs) {
        st = fm_error(FM_ERR_NO_MEMORY, "site loss: out of memory for %d paired samples", n);
        goto done;
    }
    gather_f(images, c->b->images, sel, n, c->img_row);
    gather_i(tokens, c->b->tokens, sel, n, (size_t)c->T);
    gather_i(eot, c->b->eot, sel, n, 1);
    float *img = emb, *txt = emb + nn * E, *dimg = demb, *dtxt = demb + nn * E;
    st = fm_clip_forward(c->m, images, tokens, eot, n, img, txt);
    if (st != FM_OK)
        goto done;
    float l = 0.0f, dls = 0.0f;
    fm_cpu_infonce_forward(&l, probs, probs + nn * nn, img, txt, c->si.clamped, n, c->E);
    fm_cpu_infonce_backward(dimg, dtxt, &dls, img, txt, probs, probs + nn * nn, c->si.clamped, n, c->E, (float)weight);
    *loss = l;
    st = fm_clip_backward(c->m, dimg, dtxt);
    if (st == FM_OK)
        st = add_scale_grad(c->m, &c->si, dls);
done:
    free(images);
    free(tokens);
    free(eot);
    free(emb);
    free(demb);
    free(probs);
    return st;
}

/* Image-only samples sel (n ≥ 1): CE against the prompts' text embeddings, which are constants. */
static fm_status image_part(part_ctx *c, const int *sel, int n, double weight, double *loss)
{
    const size_t E = (size_t)c->E, nn = (size_t)n, K = (size_t)c->prompts->num_classes;
    fm_status st = FM_OK;
    float *images = malloc(nn * c->img_row * sizeof *images);
    float *P = malloc(K * E * sizeof *P), *X = malloc(nn * E * sizeof *X), *dX = malloc(nn * E * sizeof *dX);
    int32_t *labels = malloc(nn * sizeof *labels);
    double *work = malloc(K * sizeof *work);
    if (!images || !P || !X || !dX || !labels || !work) {
        st = fm_error(FM_ERR_NO_MEMORY, "site loss: out of memory for %d image-only samples", n);
        goto done;
    }
    gather_f(images, c->b->images, sel, n, c->img_row);
    gather_i(labels, c->b->labels, sel, n, 1);
    /* The prompts first: encoding is a pass of its own and would drop the image activations. */
    st = fm_clip_encode_texts(c->m, c->prompts->tokens, c->prompts->eot, (int)K, P);
    if (st != FM_OK)
        goto done;
    st = fm_clip_forward(c->m, images, NULL, NULL, n, X, NULL);
    if (st != FM_OK)
        goto done;
    double dls = 0.0;
    *loss = prompt_ce(X, P, labels, n, (int)K, c->E, c->si.s, weight, dX, NULL, &dls, work);
    st = fm_clip_backward(c->m, dX, NULL);
    if (st == FM_OK)
        st = add_scale_grad(c->m, &c->si, dls);
done:
    free(images);
    free(P);
    free(X);
    free(dX);
    free(labels);
    free(work);
    return st;
}

/* Text-only samples sel (n ≥ 1): captions and prompts in one text pass (n + K rows), CE of caption against
 * prompt embeddings; the gradient reaches the text tower through both. */
static fm_status text_part(part_ctx *c, const int *sel, int n, double weight, double *loss)
{
    const size_t E = (size_t)c->E, nn = (size_t)n, K = (size_t)c->prompts->num_classes, T = (size_t)c->T;
    const size_t rows = nn + K;
    fm_status st = FM_OK;
    int32_t *tokens = malloc(rows * T * sizeof *tokens), *eot = malloc(rows * sizeof *eot);
    int32_t *labels = malloc(nn * sizeof *labels);
    float *emb = malloc(rows * E * sizeof *emb), *demb = malloc(rows * E * sizeof *demb);
    double *work = malloc(K * sizeof *work);
    if (!tokens || !eot || !labels || !emb || !demb || !work) {
        st = fm_error(FM_ERR_NO_MEMORY, "site loss: out of memory for %d text-only samples", n);
        goto done;
    }
    gather_i(tokens, c->b->tokens, sel, n, T);
    gather_i(eot, c->b->eot, sel, n, 1);
    memcpy(tokens + nn * T, c->prompts->tokens, K * T * sizeof *tokens);
    memcpy(eot + nn, c->prompts->eot, K * sizeof *eot);
    gather_i(labels, c->b->labels, sel, n, 1);
    st = fm_clip_forward(c->m, NULL, tokens, eot, (int)rows, NULL, emb);
    if (st != FM_OK)
        goto done;
    double dls = 0.0;
    *loss = prompt_ce(emb, emb + nn * E, labels, n, (int)K, c->E, c->si.s, weight, demb, demb + nn * E, &dls, work);
    st = fm_clip_backward(c->m, NULL, demb);
    if (st == FM_OK)
        st = add_scale_grad(c->m, &c->si, dls);
done:
    free(tokens);
    free(eot);
    free(labels);
    free(emb);
    free(demb);
    free(work);
    return st;
}

/* ---- the loss ------------------------------------------------------------------------------------------- */

static fm_status check_batch(fm_clip *m, const fm_site_batch *b, const fm_class_prompts *prompts, int counts[4])
{
    const fm_clip_config *cfg = fm_clip_get_config(m);
    if (b->B < 1)
        return fm_error(FM_ERR_INVALID_ARG, "site loss: batch size %d must be >= 1", b->B);
    counts[0] = counts[1] = counts[2] = counts[3] = 0;
    for (int i = 0; i < b->B; i++) {
        int mod = b->modality ? b->modality[i] : FM_MODALITY_PAIRED;
        if (mod < FM_MODALITY_IMAGE || mod > FM_MODALITY_PAIRED)
            return fm_error(FM_ERR_RANGE, "site loss: sample %d has modality %d (expected image 1, text 2, paired 3)",
                            i, mod);
        counts[mod]++;
    }
    int uni = counts[FM_MODALITY_IMAGE] + counts[FM_MODALITY_TEXT];
    if ((counts[FM_MODALITY_PAIRED] + counts[FM_MODALITY_IMAGE]) > 0 && !b->images)
        return fm_error(FM_ERR_INVALID_ARG, "site loss: %d samples have an image but images is NULL",
                        counts[FM_MODALITY_PAIRED] + counts[FM_MODALITY_IMAGE]);
    if ((counts[FM_MODALITY_PAIRED] + counts[FM_MODALITY_TEXT]) > 0 && (!b->tokens || !b->eot))
        return fm_error(FM_ERR_INVALID_ARG, "site loss: %d samples have a text but tokens or eot is NULL",
                        counts[FM_MODALITY_PAIRED] + counts[FM_MODALITY_TEXT]);
    if (uni == 0)
        return FM_OK;
    if (!prompts || !prompts->tokens || !prompts->eot || prompts->num_classes < 1)
        return fm_error(FM_ERR_INVALID_ARG, "site loss: %d uni-modal samples need class prompts, got none", uni);
    if (prompts->context_len != cfg->context_length)
        return fm_error(FM_ERR_SHAPE, "site loss: class prompts have context_len %d, the model %d",
                        prompts->context_len, cfg->context_length);
    if (!b->labels)
        return fm_error(FM_ERR_INVALID_ARG, "site loss: %d uni-modal samples need labels, got NULL", uni);
    for (int i = 0; i < b->B; i++) {
        int mod = b->modality ? b->modality[i] : FM_MODALITY_PAIRED;
        if (mod != FM_MODALITY_PAIRED && (b->labels[i] < 0 || b->labels[i] >= prompts->num_classes))
            return fm_error(FM_ERR_RANGE, "site loss: sample %d has label %d outside [0, %d)", i, (int)b->labels[i],
                            prompts->num_classes);
    }
    return FM_OK;
}

fm_status fm_site_loss_backward_parts(fm_clip *m, const fm_site_batch *b, const fm_class_prompts *prompts,
                                      fm_site_loss_parts *parts)
{
    if (!m || !b || !parts)
        return fm_error(FM_ERR_INVALID_ARG, "site loss: model, batch or parts is NULL");
    memset(parts, 0, sizeof *parts);
    int counts[4];
    FM_TRY(check_batch(m, b, prompts, counts));
    const fm_clip_config *cfg = fm_clip_get_config(m);
    const int np = counts[FM_MODALITY_PAIRED], ni = counts[FM_MODALITY_IMAGE], nt = counts[FM_MODALITY_TEXT];
    const int np_used = np >= 2 ? np : 0;
    parts->n_skipped = np - np_used;
    const int used = np_used + ni + nt;
    if (used == 0)
        return FM_OK;

    /* Everything paired: the model's own fused path, exactly fm_clip_forward_backward. */
    if (np_used == b->B) {
        float l = 0.0f;
        FM_TRY(fm_clip_forward_backward(m, b->images, b->tokens, b->eot, b->B, &l));
        parts->loss = parts->paired_loss = l;
        parts->n_paired = np_used;
        return FM_OK;
    }

    part_ctx c = {.m = m, .b = b, .prompts = prompts, .E = cfg->embed_dim, .T = cfg->context_length};
    c.img_row = 3 * (size_t)cfg->image_size * (size_t)cfg->image_size;
    FM_TRY(get_scale(m, &c.si));
    int *sel = malloc((size_t)b->B * sizeof *sel);
    if (!sel)
        return fm_error(FM_ERR_NO_MEMORY, "site loss: out of memory for a batch of %d", b->B);
    fm_status st = FM_OK;
    double total = 0.0;
    static const fm_modality order[3] = {FM_MODALITY_PAIRED, FM_MODALITY_IMAGE, FM_MODALITY_TEXT};
    for (int p = 0; p < 3 && st == FM_OK; p++) {
        int n = 0;
        for (int i = 0; i < b->B; i++)
            if ((b->modality ? b->modality[i] : FM_MODALITY_PAIRED) == order[p])
                sel[n++] = i;
        if (n == 0 || (order[p] == FM_MODALITY_PAIRED && n < 2))
            continue;
        const double w = (double)n / (double)used;
        double l = 0.0;
        if (order[p] == FM_MODALITY_PAIRED) {
            st = paired_part(&c, sel, n, w, &l);
            parts->paired_loss = (float)l, parts->n_paired = n;
        } else if (order[p] == FM_MODALITY_IMAGE) {
            st = image_part(&c, sel, n, w, &l);
            parts->image_loss = (float)l, parts->n_image = n;
        } else {
            st = text_part(&c, sel, n, w, &l);
            parts->text_loss = (float)l, parts->n_text = n;
        }
        total += w * l;
    }
    free(sel);
    if (st != FM_OK)
        return st;
    parts->loss = (float)total;
    return FM_OK;
}

fm_status fm_site_loss_backward(fm_clip *m, const fm_site_batch *b, const fm_class_prompts *prompts, float *loss)
{
    if (!loss)
        return fm_error(FM_ERR_INVALID_ARG, "site loss: loss is NULL");
    fm_site_loss_parts parts;
    FM_TRY(fm_site_loss_backward_parts(m, b, prompts, &parts));
    *loss = parts.loss;
    return FM_OK;
}
