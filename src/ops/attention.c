/* Tensor-level dispatch of the attention core: checks q, k, v, out (B, T, C), lse (B, NH, T) and the
 * key-padding lengths (B) i32 in [0, T], then runs the CPU reference or, for CUDA tensors, the fused
 * kernels of kernels/attention.cu. */
#include <stdlib.h>

#include "fedmm/device.h"
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

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

/* lengths must be (B) with every entry in [0, T]: a larger one would make the kernels read past k and v.
 * Device lengths are copied to the host for the check (B ints; the copy waits for the stream). */
static fm_status check_lengths(const char *op, const fm_tensor *lengths, int B, int T)
{
    if (!lengths)
        return FM_OK;
    FM_TRY(fm_op_check_shape(op, "lengths", lengths, 1, (const int64_t[]){B}));
    const int32_t *len = lengths->data;
    int32_t *host = NULL;
    if (lengths->device != FM_DEVICE_CPU && B > 0) {
        host = malloc((size_t)B * sizeof *host);
        if (!host)
            return fm_error(FM_ERR_NO_MEMORY, "%s: host copy of %d lengths", op, B);
        fm_status st = fm_device_copy(host, FM_DEVICE_CPU, lengths->data, lengths->device, (size_t)B * sizeof *host);
        if (st != FM_OK) {
            free(host);
            return st;
        }
        len = host;
    }
    fm_status st = FM_OK;
    for (int b = 0; b < B && st == FM_OK; b++)
        if (len[b] < 0 || len[b] > T)
            st = fm_error(FM_ERR_RANGE, "%s: lengths[%d] = %d is outside [0, T = %d]", op, b, (int)len[b], T);
    free(host);
    return st;
}

fm_status fm_attention_forward(fm_tensor *out, fm_tensor *lse, const fm_tensor *q, const fm_tensor *k,
                               const fm_tensor *v, const fm_tensor *lengths, int causal, int num_heads)
{
    static const char op[] = "attention_forward";
    const fm_op_arg args[] = {
        FM_OP_F32("out", out), FM_OP_F32("lse", lse), FM_OP_F32("q", q),
        FM_OP_F32("k", k),     FM_OP_F32("v", v),     FM_OP_I32_OPT("lengths", lengths),
    };
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int B = 0, T = 0, C = 0;
    FM_TRY(attention_sizes(op, q, num_heads, &B, &T, &C));
    FM_TRY(fm_op_check_same_shape(op, "k", k, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "v", v, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "q", q));
    FM_TRY(fm_op_check_shape(op, "lse", lse, 3, (const int64_t[]){B, num_heads, T}));
    if (lengths)
        FM_TRY(fm_op_check_shape(op, "lengths", lengths, 1, (const int64_t[]){B}));
#ifndef FEDMM_WITH_CUDA
    if (dev == FM_DEVICE_CUDA)
        return fm_op_no_cuda(op);
#endif
    FM_TRY(check_lengths(op, lengths, B, T));
    const int32_t *len = lengths ? (const int32_t *)lengths->data : NULL;
#ifdef FEDMM_WITH_CUDA
    if (dev == FM_DEVICE_CUDA)
        return fm_cuda_attention_forward(out->data, lse->data, q->data, k->data, v->data, len, causal != 0, B, T, C,
                                         num_heads);
#endif
    fm_cpu_attention_forward(out->data, lse->data, q->data, k->data, v->data, len, causal != 0, B, T, C, num_heads);
    return FM_OK;
}

fm_status fm_attention_backward(fm_tensor *dq, fm_tensor *dk, fm_tensor *dv, const fm_tensor *dout, const fm_tensor *q,
                                const fm_tensor *k, const fm_tensor *v, const fm_tensor *out, const fm_tensor *lse,
                                const fm_tensor *lengths, int causal, int num_heads)
{
    static const char op[] = "attention_backward";
    const fm_op_arg args[] = {
        FM_OP_F32_OPT("dq", dq), FM_OP_F32_OPT("dk", dk),
        FM_OP_F32_OPT("dv", dv), FM_OP_F32("dout", dout),
        FM_OP_F32("q", q),       FM_OP_F32("k", k),
        FM_OP_F32("v", v),       FM_OP_F32("out", out),
        FM_OP_F32("lse", lse),   FM_OP_I32_OPT("lengths", lengths),
    };
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int B = 0, T = 0, C = 0;
    FM_TRY(attention_sizes(op, q, num_heads, &B, &T, &C));
    FM_TRY(fm_op_check_same_shape(op, "k", k, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "v", v, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "out", out, "q", q));
    FM_TRY(fm_op_check_same_shape(op, "dout", dout, "q", q));
    if (dq)
        FM_TRY(fm_op_check_same_shape(op, "dq", dq, "q", q));
    if (dk)
        FM_TRY(fm_op_check_same_shape(op, "dk", dk, "q", q));
    if (dv)
        FM_TRY(fm_op_check_same_shape(op, "dv", dv, "q", q));
    FM_TRY(fm_op_check_shape(op, "lse", lse, 3, (const int64_t[]){B, num_heads, T}));
    if (lengths)
        FM_TRY(fm_op_check_shape(op, "lengths", lengths, 1, (const int64_t[]){B}));
#ifndef FEDMM_WITH_CUDA
    if (dev == FM_DEVICE_CUDA)
        return fm_op_no_cuda(op);
#endif
    if (!dq && !dk && !dv)
        return FM_OK;
    FM_TRY(check_lengths(op, lengths, B, T));
    const int32_t *len = lengths ? (const int32_t *)lengths->data : NULL;
    float *pdq = dq ? dq->data : NULL, *pdk = dk ? dk->data : NULL, *pdv = dv ? dv->data : NULL;
#ifdef FEDMM_WITH_CUDA
    if (dev == FM_DEVICE_CUDA)
        return fm_cuda_attention_backward(pdq, pdk, pdv, dout->data, q->data, k->data, v->data, out->data, lse->data,
                                          len, causal != 0, B, T, C, num_heads);
#endif
    fm_cpu_attention_backward(pdq, pdk, pdv, dout->data, q->data, k->data, v->data, out->data, lse->data, len,
                              causal != 0, B, T, C, num_heads);
    return FM_OK;
}
