/* An exponential moving average of a model's trainable vector (include/fedmm/train.h): fedmm train's
 * train.ema_decay. The update is the FedAvg family's two-term weighted sum (fm_agg_weighted_sum on the CPU,
 * kernels/aggregate.cu's on a GPU), so both devices give the same bits. */
#include <math.h>
#include <stdlib.h>

#include "fedmm/device.h"
#include "fedmm/strategy.h"
#include "fedmm/train.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/aggregate.h"
#endif

struct fm_weight_average {
    fm_clip *model;
    fm_device device;
    size_t n;
    float decay;
    float *avg;     /* (n) on the model's device */
    float *scratch; /* (n) on the model's device: the model's own vector while the average is swapped in */
    int swapped;
};

fm_status fm_weight_average_create(fm_weight_average **out, fm_clip *model, double decay)
{
    *out = NULL;
    if (!(decay > 0.0 && decay < 1.0))
        return fm_error(FM_ERR_INVALID_ARG, "weight average: decay %g is outside (0, 1)", decay);
    fm_weight_average *a = calloc(1, sizeof *a);
    if (!a)
        return fm_error(FM_ERR_NO_MEMORY, "weight average: out of memory");
    a->model = model;
    a->device = fm_clip_device(model);
    a->n = fm_clip_num_trainable(model);
    a->decay = (float)decay;
    void *mem = NULL;
    fm_status s = fm_device_alloc(a->device, (2 * a->n + 1) * sizeof(float), &mem);
    a->avg = mem;
    a->scratch = a->avg ? a->avg + a->n : NULL;
    if (s == FM_OK) /* the average starts at the model's current vector */
        s = fm_weight_average_restart(a);
    if (s != FM_OK) {
        fm_weight_average_destroy(a);
        return s;
    }
    *out = a;
    return FM_OK;
}

void fm_weight_average_destroy(fm_weight_average *a)
{
    if (!a)
        return;
    fm_device_free(a->device, a->avg); /* scratch lives in the same allocation */
    free(a);
}

size_t fm_weight_average_size(const fm_weight_average *a) { return a->n; }

fm_status fm_weight_average_update(fm_weight_average *a)
{
    if (a->swapped)
        return fm_error(FM_ERR_STATE, "weight average: update while the average is swapped into the model");
    const float *x[2] = {a->avg, fm_clip_trainable(a->model)};
    const float w[2] = {a->decay, 1.0f - a->decay};
    if (a->device != FM_DEVICE_CPU) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_agg_weighted_sum(a->avg, x, w, 2, a->n, 0);
#else
        return fm_error(FM_ERR_UNSUPPORTED, "weight average: this build has no CUDA");
#endif
    }
    return fm_agg_weighted_sum(a->avg, x, w, 2, a->n);
}

fm_status fm_weight_average_restart(fm_weight_average *a)
{
    if (a->swapped)
        return fm_error(FM_ERR_STATE, "weight average: restart while the average is swapped into the model");
    return fm_device_copy(a->avg, a->device, fm_clip_trainable(a->model), a->device, a->n * sizeof(float));
}

fm_status fm_weight_average_swap(fm_weight_average *a)
{
    const size_t bytes = a->n * sizeof(float);
    float *w = fm_clip_trainable(a->model);
    FM_TRY(fm_device_copy(a->scratch, a->device, w, a->device, bytes));
    FM_TRY(fm_device_copy(w, a->device, a->avg, a->device, bytes));
    FM_TRY(fm_device_copy(a->avg, a->device, a->scratch, a->device, bytes));
    a->swapped = !a->swapped;
    return FM_OK;
}

int fm_weight_average_swapped(const fm_weight_average *a) { return a->swapped; }

fm_status fm_weight_average_get(const fm_weight_average *a, float *host)
{
    if (a->swapped)
        return fm_device_copy(host, FM_DEVICE_CPU, fm_clip_trainable(a->model), a->device, a->n * sizeof(float));
    return fm_device_copy(host, FM_DEVICE_CPU, a->avg, a->device, a->n * sizeof(float));
}

fm_status fm_weight_average_set(fm_weight_average *a, const float *host)
{
    if (a->swapped)
        return fm_error(FM_ERR_STATE, "weight average: set while the average is swapped into the model");
    for (size_t i = 0; i < a->n; i++)
        if (!isfinite(host[i]))
            return fm_error(FM_ERR_NOT_FINITE, "weight average: non-finite value at %zu", i);
    return fm_device_copy(a->avg, a->device, host, FM_DEVICE_CPU, a->n * sizeof(float));
}
