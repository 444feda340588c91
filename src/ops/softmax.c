/* Tensor-level softmax over the last dim: checks, then the CPU reference or, in a CUDA build,
 * the CUDA twin. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* Rows (leading dims flattened) and columns (last dim) of `t` as ints. */
static fm_status softmax_sizes(const char *op, const char *name, const fm_tensor *t, int *N, int *C)
{
    int64_t n, c;
    FM_TRY(fm_op_rows_cols(op, name, t, &n, &c));
    FM_TRY(fm_op_to_int(op, "N (rows)", n, N));
    return fm_op_to_int(op, "C (last dim)", c, C);
}

fm_status fm_softmax_forward(fm_tensor *out, const fm_tensor *inp)
{
    static const char op[] = "softmax_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("inp", inp)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, C = 0;
    FM_TRY(softmax_sizes(op, "inp", inp, &N, &C));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "inp", inp));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_softmax_forward(out->data, inp->data, N, C);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_softmax_forward(out->data, inp->data, N, C);
    return FM_OK;
}

fm_status fm_softmax_backward(fm_tensor *dinp, const fm_tensor *out, const fm_tensor *dout)
{
    static const char op[] = "softmax_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dinp", dinp), FM_OP_F32("out", out), FM_OP_F32("dout", dout)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, C = 0;
    FM_TRY(softmax_sizes(op, "out", out, &N, &C));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "out", out));
    if (dinp)
        FM_TRY(fm_op_check_same_shape(op, "dinp", dinp, "out", out));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return dinp ? fm_cuda_softmax_backward(dinp->data, out->data, dout->data, N, C) : FM_OK;
#else
        return fm_op_no_cuda(op);
#endif
    }
    if (dinp)
        fm_cpu_softmax_backward(dinp->data, out->data, dout->data, N, C);
    return FM_OK;
}
