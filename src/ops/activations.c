/* Tensor-level elementwise activations (exact GELU, QuickGELU): checks, then the CPU reference or, in a
 * CUDA build, the CUDA kernel. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

typedef void (*act_fwd_cpu)(float *out, const float *inp, size_t n);
typedef void (*act_bwd_cpu)(float *dinp, const float *inp, const float *dout, size_t n);
#ifdef FEDMM_WITH_CUDA
typedef fm_status (*act_fwd_cuda)(float *out, const float *inp, size_t n);
typedef fm_status (*act_bwd_cuda)(float *dinp, const float *inp, const float *dout, size_t n);
#else
typedef void *act_fwd_cuda;
typedef void *act_bwd_cuda;
#endif

static fm_status act_forward(const char *op, fm_tensor *out, const fm_tensor *inp, act_fwd_cpu cpu, act_fwd_cuda cuda)
{
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("inp", inp)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "inp", inp));
    size_t n = (size_t)fm_tensor_numel(inp);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return cuda(out->data, inp->data, n);
#else
        (void)cuda;
        return fm_op_no_cuda(op);
#endif
    }
    cpu(out->data, inp->data, n);
    return FM_OK;
}

static fm_status act_backward(const char *op, fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout,
                              act_bwd_cpu cpu, act_bwd_cuda cuda)
{
    const fm_op_arg args[] = {FM_OP_F32_OPT("dinp", dinp), FM_OP_F32("inp", inp), FM_OP_F32("dout", dout)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "inp", inp));
    if (dinp)
        FM_TRY(fm_op_check_same_shape(op, "dinp", dinp, "inp", inp));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return dinp ? cuda(dinp->data, inp->data, dout->data, (size_t)fm_tensor_numel(inp)) : FM_OK;
#else
        (void)cuda;
        return fm_op_no_cuda(op);
#endif
    }
    if (dinp)
        cpu(dinp->data, inp->data, dout->data, (size_t)fm_tensor_numel(inp));
    return FM_OK;
}

#ifdef FEDMM_WITH_CUDA
#define CUDA_FN(f) f
#else
#define CUDA_FN(f) NULL
#endif

fm_status fm_gelu_forward(fm_tensor *out, const fm_tensor *inp)
{
    return act_forward("gelu_forward", out, inp, fm_cpu_gelu_forward, CUDA_FN(fm_cuda_gelu_forward));
}

fm_status fm_gelu_backward(fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout)
{
    return act_backward("gelu_backward", dinp, inp, dout, fm_cpu_gelu_backward, CUDA_FN(fm_cuda_gelu_backward));
}

fm_status fm_quick_gelu_forward(fm_tensor *out, const fm_tensor *inp)
{
    return act_forward("quick_gelu_forward", out, inp, fm_cpu_quick_gelu_forward, CUDA_FN(fm_cuda_quick_gelu_forward));
}

fm_status fm_quick_gelu_backward(fm_tensor *dinp, const fm_tensor *inp, const fm_tensor *dout)
{
    return act_backward("quick_gelu_backward", dinp, inp, dout, fm_cpu_quick_gelu_backward,
                        CUDA_FN(fm_cuda_quick_gelu_backward));
}
