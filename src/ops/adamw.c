/* Tensor-level dispatch of one AdamW step: params, grads, m, v of one shape; hyper-parameters checked as
 * torch.optim.AdamW checks them. CUDA tensors run the kernel in kernels/ when this build has it. */
#include <math.h>

#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

static fm_status check_hparams(const char *op, fm_adamw_hparams hp, int t)
{
    if (t < 1)
        return fm_error(FM_ERR_INVALID_ARG, "%s: step t = %d, expected >= 1 (the first step is 1)", op, t);
    if (!isfinite(hp.lr) || hp.lr < 0.0f)
        return fm_error(FM_ERR_INVALID_ARG, "%s: lr = %g, expected a finite value >= 0", op, (double)hp.lr);
    if (!(hp.beta1 >= 0.0f && hp.beta1 < 1.0f))
        return fm_error(FM_ERR_INVALID_ARG, "%s: beta1 = %g, expected in [0, 1)", op, (double)hp.beta1);
    if (!(hp.beta2 >= 0.0f && hp.beta2 < 1.0f))
        return fm_error(FM_ERR_INVALID_ARG, "%s: beta2 = %g, expected in [0, 1)", op, (double)hp.beta2);
    if (!isfinite(hp.eps) || hp.eps < 0.0f)
        return fm_error(FM_ERR_INVALID_ARG, "%s: eps = %g, expected a finite value >= 0", op, (double)hp.eps);
    if (!isfinite(hp.weight_decay) || hp.weight_decay < 0.0f)
        return fm_error(FM_ERR_INVALID_ARG, "%s: weight_decay = %g, expected a finite value >= 0", op,
                        (double)hp.weight_decay);
    return FM_OK;
}

fm_status fm_adamw_update(fm_tensor *params, const fm_tensor *grads, fm_tensor *m, fm_tensor *v, fm_adamw_hparams hp,
                          int t)
{
    static const char op[] = "adamw_update";
    const fm_op_arg args[] = {FM_OP_F32("params", params), FM_OP_F32("grads", grads), FM_OP_F32("m", m),
                              FM_OP_F32("v", v)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_same_shape(op, "grads", grads, "params", params));
    FM_TRY(fm_op_check_same_shape(op, "m", m, "params", params));
    FM_TRY(fm_op_check_same_shape(op, "v", v, "params", params));
    FM_TRY(check_hparams(op, hp, t));
    const size_t n = (size_t)fm_tensor_numel(params);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_adamw_update(params->data, grads->data, m->data, v->data, n, hp, t);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_adamw_update(params->data, grads->data, m->data, v->data, n, hp, t);
    return FM_OK;
}
