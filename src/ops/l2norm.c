/* Tensor-level dispatch of row-wise L2 normalisation over the last dim; norm holds one value per row,
 * shaped (N) or as the input's leading dims. The CPU reference or, in a CUDA build, the CUDA twin. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* norm may be (N) with N rows, or shaped like inp's leading dims ((B, T) for a (B, T, C) input). */
static fm_status check_norm_shape(const char *op, const fm_tensor *norm, const fm_tensor *inp, int64_t rows)
{
    if (norm->ndim == 1 && norm->shape[0] == rows)
        return FM_OK;
    int ok = norm->ndim == inp->ndim - 1;
    for (int d = 0; ok && d < norm->ndim; d++)
        ok = norm->shape[d] == inp->shape[d];
    if (ok)
        return FM_OK;
    char got[128], in[128];
    return fm_error(FM_ERR_SHAPE, "%s: norm has shape %s, expected (%lld) or the leading dims of inp %s", op,
                    fm_tensor_shape_str(norm, got, sizeof got), (long long)rows,
                    fm_tensor_shape_str(inp, in, sizeof in));
}

fm_status fm_l2norm_forward(fm_tensor *out, fm_tensor *norm, const fm_tensor *inp)
{
    static const char op[] = "l2norm_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("norm", norm), FM_OP_F32("inp", inp)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int64_t rows = 0, cols = 0;
    FM_TRY(fm_op_rows_cols(op, "inp", inp, &rows, &cols));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "inp", inp));
    FM_TRY(check_norm_shape(op, norm, inp, rows));
    int N = 0, C = 0;
    FM_TRY(fm_op_to_int(op, "rows", rows, &N));
    FM_TRY(fm_op_to_int(op, "columns", cols, &C));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_l2norm_forward(out->data, norm->data, inp->data, N, C);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_l2norm_forward(out->data, norm->data, inp->data, N, C);
    return FM_OK;
}

fm_status fm_l2norm_backward(fm_tensor *dinp, const fm_tensor *dout, const fm_tensor *out, const fm_tensor *norm)
{
    static const char op[] = "l2norm_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dinp", dinp), FM_OP_F32("dout", dout), FM_OP_F32("out", out),
                              FM_OP_F32("norm", norm)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int64_t rows = 0, cols = 0;
    FM_TRY(fm_op_rows_cols(op, "out", out, &rows, &cols));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "out", out));
    if (dinp)
        FM_TRY(fm_op_check_same_shape(op, "dinp", dinp, "out", out));
    FM_TRY(check_norm_shape(op, norm, out, rows));
    int N = 0, C = 0;
    FM_TRY(fm_op_to_int(op, "rows", rows, &N));
    FM_TRY(fm_op_to_int(op, "columns", cols, &C));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return dinp ? fm_cuda_l2norm_backward(dinp->data, dout->data, out->data, norm->data, N, C) : FM_OK;
#else
        return fm_op_no_cuda(op);
#endif
    }
    if (dinp)
        fm_cpu_l2norm_backward(dinp->data, dout->data, out->data, norm->data, N, C);
    return FM_OK;
}
