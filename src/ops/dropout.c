/* Tensor-level inverted dropout: checks (dtypes, shapes, p in [0, 1)), then the CPU reference or, in a CUDA
 * build, the CUDA kernel, which draws the same mask. */
#include "cpu/cpu_ops.h"
#include "fedmm/ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

fm_status fm_dropout_forward(fm_tensor *out, fm_tensor *mask, const fm_tensor *inp, float p, uint64_t seed,
                             uint64_t stream)
{
    static const char op[] = "dropout_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("mask", mask), FM_OP_F32("inp", inp)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    if (!(p >= 0.0f && p < 1.0f))
        return fm_error(FM_ERR_INVALID_ARG, "%s: p = %g, expected a probability in [0, 1)", op, (double)p);
    FM_TRY(fm_op_check_same_shape(op, "out", out, "inp", inp));
    FM_TRY(fm_op_check_same_shape(op, "mask", mask, "inp", inp));
    size_t n = (size_t)fm_tensor_numel(inp);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_dropout_forward(out->data, mask->data, inp->data, n, p, seed, stream);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_dropout_forward(out->data, mask->data, inp->data, n, p, seed, stream);
    return FM_OK;
}

fm_status fm_dropout_backward(fm_tensor *dinp, const fm_tensor *dout, const fm_tensor *mask)
{
    static const char op[] = "dropout_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dinp", dinp), FM_OP_F32("dout", dout), FM_OP_F32("mask", mask)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "mask", mask));
    if (dinp)
        FM_TRY(fm_op_check_same_shape(op, "dinp", dinp, "mask", mask));
    size_t n = (size_t)fm_tensor_numel(mask);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return dinp ? fm_cuda_dropout_backward(dinp->data, dout->data, mask->data, n) : FM_OK;
#else
        return fm_op_no_cuda(op);
#endif
    }
    if (dinp)
        fm_cpu_dropout_backward(dinp->data, dout->data, mask->data, n);
    return FM_OK;
}
