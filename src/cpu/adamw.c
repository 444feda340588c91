/* CPU reference of one AdamW step (Loshchilov & Hutter), written as torch.optim.AdamW computes it:
 * decoupled weight decay p -= lr·wd·p first, then the bias-corrected Adam step. */
#include <math.h>

#include "cpu/cpu_ops.h"

void fm_cpu_adamw_update(float *params, const float *grads, float *m, float *v, size_t n, fm_adamw_hparams hp, int t)
{
    /* bias corrections in double: for β2 = 0.999 and small t, 1 − β2^t loses digits in float */
    const float bc1 = (float)(1.0 - pow((double)hp.beta1, (double)t));
    const float bc2 = (float)(1.0 - pow((double)hp.beta2, (double)t));
    const float decay = hp.lr * hp.weight_decay;
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static)
    for (long long ii = 0; ii < nn; ii++) {
        const size_t i = (size_t)ii;
        const float g = grads[i];
        float p = params[i];
        p -= decay * p;
        const float mi = hp.beta1 * m[i] + (1.0f - hp.beta1) * g;
        const float vi = hp.beta2 * v[i] + (1.0f - hp.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi / bc1, vhat = vi / bc2;
        params[i] = p - hp.lr * (mhat / (sqrtf(vhat) + hp.eps));
    }
}
