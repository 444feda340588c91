/* Tensor-level residual add: checks, then the CPU reference or, in a CUDA build, the CUDA kernel. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

fm_status fm_residual_forward(fm_tensor *out, const fm_tensor *a, const fm_tensor *b)
{
    static const char op[] = "residual_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("a", a), FM_OP_F32("b", b)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_same_shape(op, "b", b, "a", a));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "a", a));
    size_t n = (size_t)fm_tensor_numel(a);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_residual_forward(out->data, a->data, b->data, n);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_residual_forward(out->data, a->data, b->data, n);
    return FM_OK;
}

fm_status fm_residual_backward(fm_tensor *da, fm_tensor *db, const fm_tensor *dout)
{
    static const char op[] = "residual_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("da", da), FM_OP_F32_OPT("db", db), FM_OP_F32("dout", dout)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    if (da)
        FM_TRY(fm_op_check_same_shape(op, "da", da, "dout", dout));
    if (db)
        FM_TRY(fm_op_check_same_shape(op, "db", db, "dout", dout));
    size_t n = (size_t)fm_tensor_numel(dout);
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_residual_backward(da ? da->data : NULL, db ? db->data : NULL, dout->data, n);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_residual_backward(da ? da->data : NULL, db ? db->data : NULL, dout->data, n);
    return FM_OK;
}
