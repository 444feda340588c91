/* Tensor-level fully connected layer: checks, then the CPU reference or, in a CUDA build, the cuBLASLt twin. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* Checks inp (..., C) and weight (OC, C) and returns N (the leading dims flattened), C and OC as ints. */
static fm_status linear_sizes(const char *op, const fm_tensor *inp, const fm_tensor *weight, int *N, int *C, int *OC)
{
    int64_t n, c;
    FM_TRY(fm_op_rows_cols(op, "inp", inp, &n, &c));
    FM_TRY(fm_op_check_shape(op, "weight", weight, 2, (const int64_t[]){-1, c}));
    FM_TRY(fm_op_to_int(op, "N (rows of inp)", n, N));
    FM_TRY(fm_op_to_int(op, "C (in features)", c, C));
    return fm_op_to_int(op, "OC (out features)", weight->shape[0], OC);
}

fm_status fm_linear_forward(fm_tensor *out, const fm_tensor *inp, const fm_tensor *weight, const fm_tensor *bias)
{
    static const char op[] = "linear_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("inp", inp), FM_OP_F32("weight", weight),
                              FM_OP_F32_OPT("bias", bias)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, C = 0, OC = 0;
    FM_TRY(linear_sizes(op, inp, weight, &N, &C, &OC));
    if (bias)
        FM_TRY(fm_op_check_shape(op, "bias", bias, 1, (const int64_t[]){OC}));
    FM_TRY(fm_op_check_rows_like(op, "out", out, "inp", inp, OC));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_linear_forward(out->data, inp->data, weight->data, bias ? bias->data : NULL, N, C, OC);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_linear_forward(out->data, inp->data, weight->data, bias ? bias->data : NULL, N, C, OC);
    return FM_OK;
}

fm_status fm_linear_backward(fm_tensor *dinp, fm_tensor *dweight, fm_tensor *dbias, const fm_tensor *dout,
                             const fm_tensor *inp, const fm_tensor *weight)
{
    static const char op[] = "linear_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dinp", dinp),   FM_OP_F32_OPT("dweight", dweight),
                              FM_OP_F32_OPT("dbias", dbias), FM_OP_F32("dout", dout),
                              FM_OP_F32("inp", inp),         FM_OP_F32("weight", weight)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, C = 0, OC = 0;
    FM_TRY(linear_sizes(op, inp, weight, &N, &C, &OC));
    FM_TRY(fm_op_check_rows_like(op, "dout", dout, "inp", inp, OC));
    if (dinp)
        FM_TRY(fm_op_check_same_shape(op, "dinp", dinp, "inp", inp));
    if (dweight)
        FM_TRY(fm_op_check_same_shape(op, "dweight", dweight, "weight", weight));
    if (dbias)
        FM_TRY(fm_op_check_shape(op, "dbias", dbias, 1, (const int64_t[]){OC}));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_linear_backward(dinp ? dinp->data : NULL, dweight ? dweight->data : NULL,
                                       dbias ? dbias->data : NULL, dout->data, inp->data, weight->data, N, C, OC);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_linear_backward(dinp ? dinp->data : NULL, dweight ? dweight->data : NULL, dbias ? dbias->data : NULL,
                           dout->data, inp->data, weight->data, N, C, OC);
    return FM_OK;
}
