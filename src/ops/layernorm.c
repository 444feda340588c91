/* Tensor-level layer normalisation over the last dim: checks, then the CPU reference or,
 * in a CUDA build, the CUDA twin. */
#include <math.h>

#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* mean / rstd hold one value per row: either flat (N) or inp's leading dims, e.g. (B, T). */
static fm_status check_row_stat(const char *op, const char *name, const fm_tensor *t, const fm_tensor *inp, int64_t N)
{
    if (t->ndim == 1 && t->shape[0] == N)
        return FM_OK;
    int ok = t->ndim == inp->ndim - 1;
    for (int d = 0; ok && d < t->ndim; d++)
        ok = t->shape[d] == inp->shape[d];
    if (ok)
        return FM_OK;
    char got[128], in[128];
    return fm_error(FM_ERR_SHAPE, "%s: %s has shape %s, expected (%lld) or the leading dims of inp %s", op, name,
                    fm_tensor_shape_str(t, got, sizeof got), (long long)N, fm_tensor_shape_str(inp, in, sizeof in));
}

/* Checks inp (..., C), weight (C) and the row statistics; returns N and C as ints. */
static fm_status layernorm_sizes(const char *op, const fm_tensor *inp, const fm_tensor *weight, const fm_tensor *mean,
                                 const fm_tensor *rstd, int *N, int *C)
{
    int64_t n, c;
    FM_TRY(fm_op_rows_cols(op, "inp", inp, &n, &c));
    FM_TRY(fm_op_check_shape(op, "weight", weight, 1, (const int64_t[]){c}));
    FM_TRY(check_row_stat(op, "mean", mean, inp, n));
    FM_TRY(check_row_stat(op, "rstd", rstd, inp, n));
    FM_TRY(fm_op_to_int(op, "N (rows of inp)", n, N));
    return fm_op_to_int(op, "C (last dim of inp)", c, C);
}

fm_status fm_layernorm_forward(fm_tensor *out, fm_tensor *mean, fm_tensor *rstd, const fm_tensor *inp,
                               const fm_tensor *weight, const fm_tensor *bias, float eps)
{
    static const char op[] = "layernorm_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("mean", mean),     FM_OP_F32("rstd", rstd),
                              FM_OP_F32("inp", inp), FM_OP_F32("weight", weight), FM_OP_F32("bias", bias)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    if (!(eps >= 0.0f) || !isfinite(eps))
        return fm_error(FM_ERR_INVALID_ARG, "%s: eps = %g must be finite and >= 0", op, (double)eps);
    int N = 0, C = 0;
    FM_TRY(layernorm_sizes(op, inp, weight, mean, rstd, &N, &C));
    FM_TRY(fm_op_check_same_shape(op, "bias", bias, "weight", weight));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "inp", inp));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_layernorm_forward(out->data, mean->data, rstd->data, inp->data, weight->data, bias->data, N, C,
                                         eps);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_layernorm_forward(out->data, mean->data, rstd->data, inp->data, weight->data, bias->data, N, C, eps);
    return FM_OK;
}

fm_status fm_layernorm_backward(fm_tensor *dinp, fm_tensor *dweight, fm_tensor *dbias, const fm_tensor *dout,
                                const fm_tensor *inp, const fm_tensor *weight, const fm_tensor *mean,
                                const fm_tensor *rstd)
{
    static const char op[] = "layernorm_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dinp", dinp),   FM_OP_F32_OPT("dweight", dweight),
                              FM_OP_F32_OPT("dbias", dbias), FM_OP_F32("dout", dout),
                              FM_OP_F32("inp", inp),         FM_OP_F32("weight", weight),
                              FM_OP_F32("mean", mean),       FM_OP_F32("rstd", rstd)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, C = 0;
    FM_TRY(layernorm_sizes(op, inp, weight, mean, rstd, &N, &C));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "inp", inp));
    if (dinp)
        FM_TRY(fm_op_check_same_shape(op, "dinp", dinp, "inp", inp));
    if (dweight)
        FM_TRY(fm_op_check_same_shape(op, "dweight", dweight, "weight", weight));
    if (dbias)
        FM_TRY(fm_op_check_same_shape(op, "dbias", dbias, "weight", weight));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_layernorm_backward(dinp ? dinp->data : NULL, dweight ? dweight->data : NULL,
                                          dbias ? dbias->data : NULL, dout->data, inp->data, weight->data, mean->data,
                                          rstd->data, N, C);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_layernorm_backward(dinp ? dinp->data : NULL, dweight ? dweight->data : NULL, dbias ? dbias->data : NULL,
                              dout->data, inp->data, weight->data, mean->data, rstd->data, N, C);
    return FM_OK;
}
