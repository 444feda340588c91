/* Tensor-level dispatch of the mean squared error mean((a − b)²) over any shape (a and b alike, non-empty),
 * loss a scalar. CUDA tensors run kernels/mse.cu. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

static fm_status mse_size(const char *op, const fm_tensor *a, const fm_tensor *b, size_t *n)
{
    FM_TRY(fm_op_check_same_shape(op, "b", b, "a", a));
    const int64_t numel = fm_tensor_numel(a);
    if (numel < 1)
        return fm_error(FM_ERR_SHAPE, "%s: a is empty; the mean of no elements is undefined", op);
    *n = (size_t)numel;
    return FM_OK;
}

fm_status fm_mse_forward(fm_tensor *loss, const fm_tensor *a, const fm_tensor *b)
{
    static const char op[] = "mse_forward";
    const fm_op_arg args[] = {FM_OP_F32("loss", loss), FM_OP_F32("a", a), FM_OP_F32("b", b)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    size_t n = 0;
    FM_TRY(mse_size(op, a, b, &n));
    FM_TRY(fm_op_check_scalar(op, "loss", loss));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_mse_forward(loss->data, a->data, b->data, n);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_mse_forward(loss->data, a->data, b->data, n);
    return FM_OK;
}

fm_status fm_mse_backward(fm_tensor *da, fm_tensor *db, const fm_tensor *a, const fm_tensor *b, float dloss)
{
    static const char op[] = "mse_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("da", da), FM_OP_F32_OPT("db", db), FM_OP_F32("a", a), FM_OP_F32("b", b)};
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    size_t n = 0;
    FM_TRY(mse_size(op, a, b, &n));
    if (da)
        FM_TRY(fm_op_check_same_shape(op, "da", da, "a", a));
    if (db)
        FM_TRY(fm_op_check_same_shape(op, "db", db, "b", b));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_mse_backward(da ? da->data : NULL, db ? db->data : NULL, a->data, b->data, n, dloss);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_mse_backward(da ? da->data : NULL, db ? db->data : NULL, a->data, b->data, n, dloss);
    return FM_OK;
}
