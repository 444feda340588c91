/* Tensor-level dispatch of global-norm gradient clipping over one (flat or shaped) gradient buffer.
 * A non-finite norm is an error and leaves the gradients as they were. CUDA tensors run kernels/clip_grad.cu,
 * which decides on the device and reads back only the norm. */
#include <math.h>

#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

fm_status fm_clip_grad_norm(fm_tensor *g, float max_norm, float *norm_before)
{
    static const char op[] = "clip_grad_norm";
    const fm_op_arg args[] = {FM_OP_F32("g", g)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    if (!(isfinite(max_norm) && max_norm > 0.0f))
        return fm_error(FM_ERR_INVALID_ARG, "%s: max_norm = %g, expected a finite value > 0", op, (double)max_norm);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        float dnorm = 0.0f;
        const fm_status st = fm_cuda_clip_grad_norm(g->data, (size_t)fm_tensor_numel(g), max_norm, &dnorm);
        if (norm_before && (st == FM_OK || st == FM_ERR_NOT_FINITE))
            *norm_before = dnorm;
        return st;
#else
        return fm_op_no_cuda(op);
#endif
    }
    const float norm = fm_cpu_clip_grad_norm(g->data, (size_t)fm_tensor_numel(g), max_norm);
    if (norm_before)
        *norm_before = norm;
    if (!isfinite(norm))
        return fm_error(FM_ERR_NOT_FINITE, "%s: the gradient norm is %g (a NaN or Inf gradient); g left unchanged", op,
                        (double)norm);
    return FM_OK;
}
