/* Argument and shape checks shared by the tensor-level dispatchers (see dispatch.h). */
#include "ops/dispatch.h"

#include <limits.h>
#include <stdio.h>

fm_status fm_op_check_args(const char *op, const fm_op_arg *args, int nargs, fm_device *device)
{
    const fm_op_arg *first = NULL;
    for (int i = 0; i < nargs; i++) {
        const fm_op_arg *a = &args[i];
        if (!a->t) {
            if (a->optional)
                continue;
            return fm_error(FM_ERR_INVALID_ARG, "%s: %s is NULL", op, a->name);
        }
        if (a->t->dtype != a->dtype)
            return fm_error(FM_ERR_DTYPE, "%s: %s is %s, expected %s", op, a->name, fm_dtype_name(a->t->dtype),
                            fm_dtype_name(a->dtype));
        if (!fm_tensor_is_contiguous(a->t))
            return fm_error(FM_ERR_INVALID_ARG, "%s: %s is not contiguous", op, a->name);
        if (!a->t->data && fm_tensor_numel(a->t) > 0)
            return fm_error(FM_ERR_INVALID_ARG, "%s: %s has no data", op, a->name);
        if (!first) {
            first = a;
        } else if (a->t->device != first->t->device) {
            return fm_error(FM_ERR_DEVICE, "%s: %s is on %s but %s is on %s", op, a->name, fm_device_name(a->t->device),
                            first->name, fm_device_name(first->t->device));
        }
    }
    if (device)
        *device = first ? first->t->device : FM_DEVICE_CPU;
    return FM_OK;
}

/* Formats an expected shape with "*" for wildcards. */
static const char *expected_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t used = 0;
    int w = snprintf(buf, len, "(");
    used = w > 0 ? (size_t)w : 0;
    for (int d = 0; d < ndim && used < len; d++) {
        const char *sep = d ? ", " : "";
        if (shape[d] < 0)
            w = snprintf(buf + used, len - used, "%s*", sep);
        else
            w = snprintf(buf + used, len - used, "%s%lld", sep, (long long)shape[d]);
        used += w > 0 ? (size_t)w : 0;
    }
    if (used < len)
        snprintf(buf + used, len - used, ")");
    return buf;
}

fm_status fm_op_check_shape(const char *op, const char *name, const fm_tensor *t, int ndim, const int64_t *shape)
{
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = shape[d] < 0 || t->shape[d] == shape[d];
    if (ok)
        return FM_OK;
    char got[128], want[128];
    return fm_error(FM_ERR_SHAPE, "%s: %s has shape %s, expected %s", op, name, fm_tensor_shape_str(t, got, sizeof got),
                    expected_str(ndim, shape, want, sizeof want));
}

fm_status fm_op_check_same_shape(const char *op, const char *name, const fm_tensor *t, const char *ref_name,
                                 const fm_tensor *ref)
{
    int ok = t->ndim == ref->ndim;
    for (int d = 0; ok && d < t->ndim; d++)
        ok = t->shape[d] == ref->shape[d];
    if (ok)
        return FM_OK;
    char got[128], want[128];
    return fm_error(FM_ERR_SHAPE, "%s: %s has shape %s but %s has %s", op, name,
                    fm_tensor_shape_str(t, got, sizeof got), ref_name, fm_tensor_shape_str(ref, want, sizeof want));
}

fm_status fm_op_check_rows_like(const char *op, const char *name, const fm_tensor *t, const char *ref_name,
                                const fm_tensor *ref, int64_t last)
{
    if (ref->ndim < 1)
        return fm_error(FM_ERR_SHAPE, "%s: %s is 0-dim, expected at least 1 dim", op, ref_name);
    int64_t want[FM_MAX_DIMS];
    for (int d = 0; d < ref->ndim; d++)
        want[d] = ref->shape[d];
    want[ref->ndim - 1] = last;
    int ok = t->ndim == ref->ndim;
    for (int d = 0; ok && d < ref->ndim; d++)
        ok = want[d] < 0 || t->shape[d] == want[d];
    if (ok)
        return FM_OK;
    char got[128], exp[128];
    return fm_error(FM_ERR_SHAPE, "%s: %s has shape %s, expected %s (%s's leading dims, then %lld)", op, name,
                    fm_tensor_shape_str(t, got, sizeof got), expected_str(ref->ndim, want, exp, sizeof exp), ref_name,
                    (long long)last);
}

fm_status fm_op_rows_cols(const char *op, const char *name, const fm_tensor *t, int64_t *rows, int64_t *cols)
{
    if (t->ndim < 1)
        return fm_error(FM_ERR_SHAPE, "%s: %s is 0-dim, expected at least 1 dim", op, name);
    int64_t r = 1;
    for (int d = 0; d + 1 < t->ndim; d++)
        r *= t->shape[d];
    *rows = r;
    *cols = t->shape[t->ndim - 1];
    return FM_OK;
}

fm_status fm_op_check_scalar(const char *op, const char *name, const fm_tensor *t)
{
    if (t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1))
        return FM_OK;
    char got[128];
    return fm_error(FM_ERR_SHAPE, "%s: %s has shape %s, expected a scalar (0-dim or (1))", op, name,
                    fm_tensor_shape_str(t, got, sizeof got));
}

fm_status fm_op_to_int(const char *op, const char *what, int64_t value, int *out)
{
    if (value < 0 || value > INT_MAX)
        return fm_error(FM_ERR_RANGE, "%s: %s = %lld is outside [0, %d]", op, what, (long long)value, INT_MAX);
    *out = (int)value;
    return FM_OK;
}

fm_status fm_op_no_cuda(const char *op)
{
#ifdef FEDMM_WITH_CUDA
    return fm_error(FM_ERR_UNSUPPORTED, "%s: no CUDA kernel yet", op);
#else
    return fm_error(FM_ERR_DEVICE, "%s: this build has no CUDA backend", op);
#endif
}
