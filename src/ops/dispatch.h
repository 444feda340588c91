/* Internal helpers shared by the tensor-level dispatchers in src/ops/: argument checks (presence, dtype,
 * contiguity, one device), shape checks with messages that name the op and the tensor, and the answer for
 * CUDA tensors of ops without a kernel. Not installed; every message goes through fm_error().
 *
 * Typical use in a dispatcher:
 *
 *     const fm_op_arg args[] = {
 *         FM_OP_F32("out", out), FM_OP_F32("inp", inp), FM_OP_F32("weight", weight), FM_OP_F32_OPT("bias", bias),
 *     };
 *     fm_device dev;
 *     FM_TRY(fm_op_check_args("linear_forward", args, FM_OP_NARGS(args), &dev));
 *     int64_t n, c;
 *     FM_TRY(fm_op_rows_cols("linear_forward", "inp", inp, &n, &c));
 *     FM_TRY(fm_op_check_shape("linear_forward", "weight", weight, 2, (const int64_t[]){-1, c}));
 *     if (dev == FM_DEVICE_CUDA)
 *         return fm_op_no_cuda("linear_forward");
 */
#ifndef FEDMM_OPS_DISPATCH_H
#define FEDMM_OPS_DISPATCH_H

#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

/* One tensor argument of an op: its name in messages, the tensor (may be NULL when optional) and the
 * dtype it must have. */
typedef struct fm_op_arg {
    const char *name;
    const fm_tensor *t;
    fm_dtype dtype;
    int optional; /* 1: NULL is allowed (skipped gradient, absent bias) */
} fm_op_arg;

#define FM_OP_F32(name, t) ((fm_op_arg){(name), (t), FM_F32, 0})
#define FM_OP_F32_OPT(name, t) ((fm_op_arg){(name), (t), FM_F32, 1})
#define FM_OP_I32(name, t) ((fm_op_arg){(name), (t), FM_I32, 0})
#define FM_OP_I32_OPT(name, t) ((fm_op_arg){(name), (t), FM_I32, 1})
#define FM_OP_NARGS(array) ((int)(sizeof(array) / sizeof((array)[0])))

/* Checks every argument: a required one must be non-NULL (FM_ERR_INVALID_ARG); each non-NULL one must
 * have its dtype (FM_ERR_DTYPE), be contiguous (FM_ERR_INVALID_ARG), have non-NULL data when it has
 * elements (FM_ERR_INVALID_ARG), and all must be on one device (FM_ERR_DEVICE). `*device` gets that
 * device (FM_DEVICE_CPU if every argument is NULL). */
fm_status fm_op_check_args(const char *op, const fm_op_arg *args, int nargs, fm_device *device);

/* Exact shape check: `t` must have `ndim` dims equal to `shape` (a negative entry matches any size).
 * FM_ERR_SHAPE naming op, tensor, its shape and the expected one. */
fm_status fm_op_check_shape(const char *op, const char *name, const fm_tensor *t, int ndim, const int64_t *shape);

/* `t` must have exactly the shape of `ref` (FM_ERR_SHAPE otherwise, naming both). */
fm_status fm_op_check_same_shape(const char *op, const char *name, const fm_tensor *t, const char *ref_name,
                                 const fm_tensor *ref);

/* `t` must have the leading dims of `ref` (all but its last one) followed by `last` (negative: any), as an
 * output row-for-row with an input: linear's out against inp, softmax's out, a loss's probs. */
fm_status fm_op_check_rows_like(const char *op, const char *name, const fm_tensor *t, const char *ref_name,
                                const fm_tensor *ref, int64_t last);

/* Views `t` (ndim ≥ 1) as a matrix: *cols = the last dim, *rows = the product of the leading dims (1 for a
 * 1-dim tensor). FM_ERR_SHAPE for a 0-dim tensor. */
fm_status fm_op_rows_cols(const char *op, const char *name, const fm_tensor *t, int64_t *rows, int64_t *cols);

/* `t` must be 0-dim or (1) — a scalar such as a loss (FM_ERR_SHAPE otherwise). */
fm_status fm_op_check_scalar(const char *op, const char *name, const fm_tensor *t);

/* Narrows a size to int for the fm_cpu_* signatures; FM_ERR_RANGE if it is negative or above INT_MAX. */
fm_status fm_op_to_int(const char *op, const char *what, int64_t value, int *out);

/* The answer for a CUDA tensor where no kernel runs: FM_ERR_UNSUPPORTED "<op>: no CUDA kernel yet" in a
 * CUDA build, FM_ERR_DEVICE "<op>: this build has no CUDA backend" otherwise. */
fm_status fm_op_no_cuda(const char *op);

#endif
