/* CUDA twin of src/cpu/adamw.c: one AdamW step as torch.optim.AdamW takes it — decoupled weight decay
 * p -= lr·wd·p first, then the bias-corrected Adam step — with the CPU reference's order of operations. */
#include <math.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"

static __global__ void adamw_kernel(float *params,      // (n), updated in place
                                    const float *grads, // (n)
                                    float *m,           // (n) first moment, updated
                                    float *v,           // (n) second moment, updated
                                    size_t n, float lr, float beta1, float beta2, float eps, float decay,
                                    float bc1, float bc2)
{
    for (FM_GRID_STRIDE(i, n)) {
        float g = grads[i];
        float p = params[i];
        p -= decay * p;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        params[i] = p - lr * (mhat / (sqrtf(vhat) + eps));
    }
}

extern "C" fm_status fm_cuda_adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                                          fm_adamw_hparams hp, int t)
{
    if (t < 1)
        return fm_error(FM_ERR_INVALID_ARG, "cuda adamw: step t = %d, must be >= 1", t);
    /* β = 1 would make a bias correction 1 − β^t zero; the negated test also refuses NaN. */
    if (!(hp.beta1 >= 0.0f && hp.beta1 < 1.0f) || !(hp.beta2 >= 0.0f && hp.beta2 < 1.0f))
        return fm_error(FM_ERR_INVALID_ARG, "cuda adamw: betas (%g, %g) must lie in [0, 1)", (double)hp.beta1,
                        (double)hp.beta2);
    if (n == 0)
        return FM_OK;
    if (!params || !grads || !m || !v)
        return fm_error(FM_ERR_INVALID_ARG, "cuda adamw: NULL %s",
                        !params ? "params" : !grads ? "grads" : !m ? "m" : "v");
    /* Bias corrections in double, as the CPU reference: 1 − β2^t loses digits in float for small t. */
    float bc1 = (float)(1.0 - pow((double)hp.beta1, (double)t));
    float bc2 = (float)(1.0 - pow((double)hp.beta2, (double)t));
    return FM_LAUNCH_1D(adamw_kernel, n, params, grads, m, v, n, hp.lr, hp.beta1, hp.beta2, hp.eps,
                        hp.lr * hp.weight_decay, bc1, bc2);
}
