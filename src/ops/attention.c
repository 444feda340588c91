/* Tensor-level dispatch of the attention core: checks q, k, v, out (B, T, C), att (B, NH, T, T) and the
 * key-padding lengths (B) i32 in [0, T], then runs the CPU reference (no CUDA kernel yet). */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"

/* Shared by forward and backward: (B, T, C) from q, NH valid and dividing C, sizes narrowed to int. */
static fm_status attention_sizes(const char *op, const fm_tensor *q, int num_heads, int *B, int *T, int *C)
{
    FM_TRY(fm_op_check_shape(op, "q", q, 3, (const int64_t[]){-1, -1, -1}));
    if (num_heads <= 0)
        return fm_error(FM_ERR_INVALID_ARG, "%s: num_heads = %d, expected > 0", op, num_heads);
    if (q->shape[2] % num_heads != 0)
        return fm_error(FM_ERR_SHAPE, "%s: channels C = %lld are not divisible by num_heads = %d", op,
                        (long long)q->shape[2], num_heads);
    FM_TRY(fm_op_to_int(op, "B", q->shape[0], B));
    FM_TRY(fm_op_to_int(op, "T", q->shape[1], T));
    FM_TRY(fm_op_to_int(op, "C", q->shape[2], C));
    return FM_OK;
}

fm_status fm_attention_forward(fm_tensor *out, fm_tensor *att, const fm_tensor *q, const fm_tensor *k,
                               const fm_tensor *v, const fm_tensor *lengths, int causal, int num_heads)
{
    static const char op[] = "attention_forward";
    const fm_op_arg args[] = {
        FM_OP_F32("out", out), FM_OP_F32("att", att), FM_OP_F32("q", q),
        FM_OP_F32("k", k),     FM_OP_F32("v", v),     FM_OP_I32_OPT("lengths", lengths),
    };
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int B = 0, T = 0, C = 0;
    FM_TRY(attention_sizes(op, q, num_heads, &B, &T, &C));
    FM_TRY(fm_op_check_same_shape(op, "k", k, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "v", v, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "q", q));
    FM_TRY(fm_op_check_shape(op, "att", att, 4, (const int64_t[]){B, num_heads, T, T}));
    if (lengths)
        FM_TRY(fm_op_check_shape(op, "lengths", lengths, 1, (const int64_t[]){B}));
    if (dev == FM_DEVICE_CUDA)
        return fm_op_no_cuda(op);

    const int32_t *len = lengths ? (const int32_t *)lengths->data : NULL;
    for (int b = 0; len && b < B; b++)
        if (len[b] < 0 || len[b] > T)
            return fm_error(FM_ERR_RANGE, "%s: lengths[%d] = %d is outside [0, T = %d]", op, b, (int)len[b], T);
    fm_cpu_attention_forward(out->data, att->data, q->data, k->data, v->data, len, causal != 0, B, T, C, num_heads);
    return FM_OK;
}

fm_status fm_attention_backward(fm_tensor *dq, fm_tensor *dk, fm_tensor *dv, const fm_tensor *dout, const fm_tensor *q,
                                const fm_tensor *k, const fm_tensor *v, const fm_tensor *att, int num_heads)
{
    static const char op[] = "attention_backward";
    const fm_op_arg args[] = {
        FM_OP_F32_OPT("dq", dq), FM_OP_F32_OPT("dk", dk), FM_OP_F32_OPT("dv", dv), FM_OP_F32("dout", dout),
        FM_OP_F32("q", q),       FM_OP_F32("k", k),       FM_OP_F32("v", v),       FM_OP_F32("att", att),
    };
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int B = 0, T = 0, C = 0;
    FM_TRY(attention_sizes(op, q, num_heads, &B, &T, &C));
    FM_TRY(fm_op_check_same_shape(op, "k", k, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "v", v, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "q", q));
    if (dq)
        FM_TRY(fm_op_check_same_shape(op, "dq", dq, "q", q));
    if (dk)
        FM_TRY(fm_op_check_same_shape(op, "dk", dk, "q", q));
    if (dv)
        FM_TRY(fm_op_check_same_shape(op, "dv", dv, "q", q));
    FM_TRY(fm_op_check_shape(op, "att", att, 4, (const int64_t[]){B, num_heads, T, T}));
    if (dev == FM_DEVICE_CUDA)
        return fm_op_no_cuda(op);
    if (!dq && !dk && !dv)
        return FM_OK;
    fm_cpu_attention_backward(dq ? dq->data : NULL, dk ? dk->data : NULL, dv ? dv->data : NULL, dout->data, q->data,
                              k->data, v->data, att->data, B, T, C, num_heads);
    return FM_OK;
}
