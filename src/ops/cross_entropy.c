/* Tensor-level dispatch of softmax cross-entropy: logits and probs (N, C) (leading dims flattened into N),
 * targets i32 with N entries in [-1, C), -1 meaning ignored. CUDA tensors run kernels/cross_entropy.cu, which
 * checks the targets on the device and reports a bad one as FM_ERR_RANGE too (waiting for the stream). */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* targets may be (N), or shaped like the logits' leading dims ((B, T) for (B, T, C) logits). */
static fm_status check_targets_shape(const char *op, const fm_tensor *targets, const fm_tensor *logits, int64_t rows)
{
    if (targets->ndim == 1 && targets->shape[0] == rows)
        return FM_OK;
    int ok = targets->ndim == logits->ndim - 1;
    for (int d = 0; ok && d < targets->ndim; d++)
        ok = targets->shape[d] == logits->shape[d];
    if (ok)
        return FM_OK;
    char got[128], ref[128];
    return fm_error(FM_ERR_SHAPE, "%s: targets has shape %s, expected (%lld) or the leading dims of %s", op,
                    fm_tensor_shape_str(targets, got, sizeof got), (long long)rows,
                    fm_tensor_shape_str(logits, ref, sizeof ref));
}

fm_status fm_cross_entropy_forward(fm_tensor *loss, fm_tensor *probs, const fm_tensor *logits, const fm_tensor *targets)
{
    static const char op[] = "cross_entropy_forward";
    const fm_op_arg args[] = {FM_OP_F32("loss", loss), FM_OP_F32("probs", probs), FM_OP_F32("logits", logits),
                              FM_OP_I32("targets", targets)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int64_t rows = 0, cols = 0;
    FM_TRY(fm_op_rows_cols(op, "logits", logits, &rows, &cols));
    if (cols < 1)
        return fm_error(FM_ERR_SHAPE, "%s: logits have no classes", op);
    FM_TRY(fm_op_check_same_shape(op, "probs", probs, "logits", logits));
    FM_TRY(check_targets_shape(op, targets, logits, rows));
    FM_TRY(fm_op_check_scalar(op, "loss", loss));
    int N = 0, C = 0;
    FM_TRY(fm_op_to_int(op, "rows", rows, &N));
    FM_TRY(fm_op_to_int(op, "classes", cols, &C));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_cross_entropy_forward(loss->data, probs->data, logits->data, targets->data, N, C);
#else
        return fm_op_no_cuda(op);
#endif
    }
    return fm_cpu_cross_entropy_forward(loss->data, probs->data, logits->data, targets->data, N, C);
}

fm_status fm_cross_entropy_backward(fm_tensor *dlogits, const fm_tensor *probs, const fm_tensor *targets, float dloss)
{
    static const char op[] = "cross_entropy_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dlogits", dlogits), FM_OP_F32("probs", probs),
                              FM_OP_I32("targets", targets)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int64_t rows = 0, cols = 0;
    FM_TRY(fm_op_rows_cols(op, "probs", probs, &rows, &cols));
    if (dlogits)
        FM_TRY(fm_op_check_same_shape(op, "dlogits", dlogits, "probs", probs));
    FM_TRY(check_targets_shape(op, targets, probs, rows));
    int N = 0, C = 0;
    FM_TRY(fm_op_to_int(op, "rows", rows, &N));
    FM_TRY(fm_op_to_int(op, "classes", cols, &C));
    if (!dlogits)
        return FM_OK;
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_cross_entropy_backward(dlogits->data, probs->data, targets->data, N, C, dloss);
#else
        return fm_op_no_cuda(op);
#endif
    }
    /* checked again here because a bad target would make backward write outside dlogits */
    const int32_t *t = targets->data;
    for (int i = 0; i < N; i++)
        if (t[i] < -1 || t[i] >= C)
            return fm_error(FM_ERR_RANGE, "%s: targets[%d] = %d is outside [-1, %d)", op, i, (int)t[i], C);
    fm_cpu_cross_entropy_backward(dlogits->data, probs->data, t, N, C, dloss);
    return FM_OK;
}
