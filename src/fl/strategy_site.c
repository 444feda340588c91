/* Site-side halves of the strategies: the gradient corrections applied before each local optimizer step
 * (FedProx's and adaptive regularization's proximal term, SCAFFOLD's c − ck; on the CPU here, on the GPU through
 * kernels/aggregate.cu) and SCAFFOLD's control-variate update after local training. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/device.h"
#include "fl/strategy_internal.h"

#ifdef FEDMM_WITH_CUDA
#include "kernels/aggregate.h"
#endif

#define SITE_OMP_MIN 16384

fm_status fm_blocks_check(const fm_strategy_block *blocks, size_t n_blocks, size_t n, const char *who)
{
    if (n_blocks == 0)
        return FM_OK;
    if (!blocks)
        return fm_error(FM_ERR_INVALID_ARG, "%s: blocks is NULL with n_blocks = %zu", who, n_blocks);
    size_t at = 0;
    for (size_t b = 0; b < n_blocks; b++) {
        const char *name = blocks[b].name ? blocks[b].name : "(unnamed)";
        if (blocks[b].offset != at)
            return fm_error(FM_ERR_SHAPE,
                            "%s: block %zu '%s' starts at %zu, expected %zu (blocks must tile the vector "
                            "in order)",
                            who, b, name, blocks[b].offset, at);
        if (blocks[b].numel == 0)
            return fm_error(FM_ERR_SHAPE, "%s: block %zu '%s' is empty", who, b, name);
        if (blocks[b].numel > n - at)
            return fm_error(FM_ERR_SHAPE, "%s: block %zu '%s' ends at %zu, past the vector's %zu floats", who, b, name,
                            at + blocks[b].numel, n);
        at += blocks[b].numel;
    }
    if (at != n)
        return fm_error(FM_ERR_SHAPE, "%s: the blocks cover %zu of the vector's %zu floats", who, at, n);
    return FM_OK;
}

fm_status fm_adaptive_reg_weights(float *weights, size_t n, const fm_strategy_block *blocks, size_t n_blocks, int skip,
                                  float mu_eff)
{
    if (!weights)
        return fm_error(FM_ERR_INVALID_ARG, "fm_adaptive_reg_weights: weights is NULL");
    if (skip < 0)
        return fm_error(FM_ERR_INVALID_ARG, "fm_adaptive_reg_weights: skip %d < 0", skip);
    FM_TRY(fm_blocks_check(blocks, n_blocks, n, "fm_adaptive_reg_weights"));
    memset(weights, 0, n * sizeof(float));
    for (size_t b = 0; b < n_blocks; b++) {
        const fm_strategy_block *blk = &blocks[b];
        /* FedMLLM regularizes the middle of each stack only: the first and last s layers adapt freely to
         * their site's modality mix. Blocks outside the encoder layers (embeddings, heads) are left free. */
        if (blk->layer < skip || blk->layer > blk->n_layers - 1 - skip)
            continue;
        for (size_t i = 0; i < blk->numel; i++)
            weights[blk->offset + i] = mu_eff;
    }
    return FM_OK;
}

fm_status fm_site_correction_prepare(fm_site_correction *corr, const fm_strategy_config *config, size_t n_params,
                                     const fm_strategy_block *blocks, size_t n_blocks, const float *anchor,
                                     const float *c_global, const float *c_local)
{
    if (!corr || !config)
        return fm_error(FM_ERR_INVALID_ARG, "fm_site_correction_prepare: NULL argument");
    FM_TRY(fm_strategy_config_validate(config));
    fm_site_correction c;
    memset(&c, 0, sizeof(c));
    switch (config->kind) {
    case FM_STRATEGY_FEDPROX:
        if (!anchor)
            return fm_error(FM_ERR_INVALID_ARG, "fm_site_correction_prepare: fedprox needs the global vector (anchor)");
        c.anchor = anchor;
        c.prox_mu = (float)config->prox_mu;
        break;
    case FM_STRATEGY_ADAPTIVE_REG: {
        if (!anchor)
            return fm_error(FM_ERR_INVALID_ARG,
                            "fm_site_correction_prepare: adaptive_reg needs the global vector (anchor)");
        float *w = malloc((n_params ? n_params : 1) * sizeof(float));
        if (!w)
            return fm_error(FM_ERR_NO_MEMORY, "fm_site_correction_prepare: no memory for %zu weights", n_params);
        fm_status st;
        if (n_blocks == 0) {
            /* no slice table: no layer is known to be in the middle, so nothing is regularized */
            memset(w, 0, n_params * sizeof(float));
            st = FM_OK;
        } else {
            st = fm_adaptive_reg_weights(w, n_params, blocks, n_blocks, config->adaptive_skip_layers,
                                         (float)(config->prox_mu * config->adaptive_mu_w));
        }
        if (st != FM_OK) {
            free(w);
            return st;
        }
        c.anchor = anchor;
        c.prox_weight = w;
        c.owned_weight = w;
        break;
    }
    case FM_STRATEGY_SCAFFOLD:
        if (!c_global || !c_local)
            return fm_error(FM_ERR_INVALID_ARG,
                            "fm_site_correction_prepare: scaffold needs the server control c and the site's ck");
        c.c_global = c_global;
        c.c_local = c_local;
        break;
    default: break;
    }
    *corr = c;
    return FM_OK;
}

fm_status fm_site_correction_to_device(fm_site_correction *corr, fm_device device, size_t n)
{
    if (!corr)
        return fm_error(FM_ERR_INVALID_ARG, "fm_site_correction_to_device: NULL correction");
    if (device == corr->device)
        return FM_OK;
    if (corr->device != FM_DEVICE_CPU)
        return fm_error(FM_ERR_STATE, "fm_site_correction_to_device: the correction is already on %s, not the host",
                        fm_device_name(corr->device));
    if (device != FM_DEVICE_CUDA)
        return fm_error(FM_ERR_INVALID_ARG, "fm_site_correction_to_device: device %d", (int)device);
    if (!fm_build_has_cuda())
        return fm_error(FM_ERR_DEVICE, "fm_site_correction_to_device: this fedmm was built without the CUDA backend");
    const float *src[4] = {corr->anchor, corr->prox_weight, corr->c_global, corr->c_local};
    size_t count = 0;
    for (int i = 0; i < 4; i++)
        count += src[i] ? 1 : 0;
    float *mem = NULL;
    if (count > 0 && n > 0) {
        FM_TRY(fm_device_alloc(device, count * n * sizeof(float), (void **)&mem));
        size_t at = 0;
        for (int i = 0; i < 4; i++) {
            if (!src[i])
                continue;
            fm_status st = fm_device_copy(mem + at * n, device, src[i], FM_DEVICE_CPU, n * sizeof(float));
            if (st != FM_OK) {
                fm_device_free(device, mem);
                return st;
            }
            at++;
        }
    }
    /* repoint, in the order the copies were laid out */
    const float **dst[4] = {&corr->anchor, &corr->prox_weight, &corr->c_global, &corr->c_local};
    size_t at = 0;
    for (int i = 0; i < 4; i++) {
        if (!src[i])
            continue;
        *dst[i] = mem ? mem + at * n : NULL;
        at++;
    }
    free(corr->owned_weight); /* its device copy replaces it */
    corr->owned_weight = NULL;
    corr->owned_device = mem;
    corr->device = device;
    return FM_OK;
}

void fm_site_correction_free(fm_site_correction *corr)
{
    if (!corr)
        return;
    free(corr->owned_weight);
    fm_device_free(corr->device, corr->owned_device);
    memset(corr, 0, sizeof(*corr));
}

fm_status fm_site_correct_grad(float *grad, const float *params, const fm_site_correction *corr, size_t n)
{
    if (!corr || (!grad && n > 0))
        return fm_error(FM_ERR_INVALID_ARG, "fm_site_correct_grad: NULL %s", corr ? "grad" : "correction");
    if (corr->device != FM_DEVICE_CPU) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_site_correct_grad(grad, params, corr->anchor, corr->prox_mu, corr->prox_weight, corr->c_global,
                                         corr->c_local, n);
#else
        return fm_error(FM_ERR_DEVICE, "fm_site_correct_grad: a correction on %s in a build without CUDA",
                        fm_device_name(corr->device));
#endif
    }
    const float *anchor = params ? corr->anchor : NULL;
    const float *pw = corr->prox_weight;
    float mu = corr->prox_mu;
    if (anchor && (pw || mu != 0.0f)) {
        if (pw) {
#pragma omp parallel for schedule(static) if (n >= SITE_OMP_MIN)
            for (size_t i = 0; i < n; i++)
                grad[i] += pw[i] * (params[i] - anchor[i]);
        } else {
#pragma omp parallel for schedule(static) if (n >= SITE_OMP_MIN)
            for (size_t i = 0; i < n; i++)
                grad[i] += mu * (params[i] - anchor[i]);
        }
    }
    if (corr->c_global && corr->c_local) {
        const float *c = corr->c_global, *ck = corr->c_local;
#pragma omp parallel for schedule(static) if (n >= SITE_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            grad[i] += c[i] - ck[i];
    }
    return FM_OK;
}

fm_status fm_scaffold_site_update(const float *ci, const float *grad_mean, size_t n, float *ci_new_out, float *dc_out)
{
    if (!ci || !grad_mean || !ci_new_out || !dc_out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_scaffold_site_update: NULL argument");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(grad_mean[i]))
            return fm_error(FM_ERR_NOT_FINITE, "fm_scaffold_site_update: mean gradient[%zu] is %f", i,
                            (double)grad_mean[i]);
#pragma omp parallel for schedule(static) if (n >= SITE_OMP_MIN)
    for (size_t i = 0; i < n; i++) {
        const float old = ci[i];
        dc_out[i] = grad_mean[i] - old;
        ci_new_out[i] = grad_mean[i]; /* written last: ci_new_out may alias ci */
    }
    return FM_OK;
}
