/* Tensor views: construction, shape checks, narrowing and reshaping without allocation. */
#include "fedmm/tensor.h"

#include <stdio.h>
#include <string.h>

size_t fm_dtype_size(fm_dtype dtype)
{
    switch (dtype) {
    case FM_F32: return 4;
    case FM_F16: return 2;
    case FM_BF16: return 2;
    case FM_I32: return 4;
    case FM_I64: return 8;
    case FM_U8: return 1;
    case FM_DTYPE_COUNT: break;
    }
    return 0;
}

const char *fm_dtype_name(fm_dtype dtype)
{
    static const char *names[] = {"f32", "f16", "bf16", "i32", "i64", "u8"};
    return (unsigned)dtype < FM_DTYPE_COUNT ? names[dtype] : "?";
}

const char *fm_device_name(fm_device device)
{
    return device == FM_DEVICE_CPU ? "cpu" : device == FM_DEVICE_CUDA ? "cuda" : "?";
}

static void set_contiguous_strides(fm_tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->stride[d] = s;
        s *= t->shape[d];
    }
}

fm_status fm_tensor_view(fm_tensor *out, void *base, size_t capacity_bytes, size_t offset, fm_dtype dtype,
                         fm_device device, int ndim, const int64_t *shape)
{
    if (!out || (!base && capacity_bytes) || (ndim > 0 && !shape))
        return fm_error(FM_ERR_INVALID_ARG, "tensor view: NULL argument");
    if (ndim < 0 || ndim > FM_MAX_DIMS)
        return fm_error(FM_ERR_SHAPE, "tensor view: %d dims (allowed 0..%d)", ndim, FM_MAX_DIMS);
    size_t esize = fm_dtype_size(dtype);
    if (esize == 0)
        return fm_error(FM_ERR_DTYPE, "tensor view: invalid dtype %d", (int)dtype);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return fm_error(FM_ERR_SHAPE, "tensor view: dim %d is negative (%lld)", d, (long long)shape[d]);
        if (shape[d] > 0 && numel > SIZE_MAX / esize / (size_t)shape[d])
            return fm_error(FM_ERR_RANGE, "tensor view: element count overflows");
        numel *= (size_t)shape[d];
    }
    if (offset > capacity_bytes / esize || numel > capacity_bytes / esize - offset)
        return fm_error(FM_ERR_RANGE, "tensor view: %zu elements at offset %zu exceed the buffer of %zu bytes", numel,
                        offset, capacity_bytes);
    memset(out, 0, sizeof *out);
    out->data = base ? (char *)base + offset * esize : NULL;
    out->dtype = dtype;
    out->device = device;
    out->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        out->shape[d] = shape[d];
    set_contiguous_strides(out);
    return FM_OK;
}

int64_t fm_tensor_numel(const fm_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

size_t fm_tensor_nbytes(const fm_tensor *t) { return (size_t)fm_tensor_numel(t) * fm_dtype_size(t->dtype); }

int fm_tensor_is_contiguous(const fm_tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != s)
            return 0;
        s *= t->shape[d];
    }
    return 1;
}

fm_status fm_tensor_narrow(fm_tensor *out, const fm_tensor *t, int dim, int64_t start, int64_t stop)
{
    if (!out || !t)
        return fm_error(FM_ERR_INVALID_ARG, "tensor narrow: NULL argument");
    if (dim < 0 || dim >= t->ndim)
        return fm_error(FM_ERR_RANGE, "tensor narrow: dim %d of a %d-dim tensor", dim, t->ndim);
    if (start < 0 || stop < start || stop > t->shape[dim])
        return fm_error(FM_ERR_RANGE, "tensor narrow: [%lld, %lld) outside [0, %lld) on dim %d", (long long)start,
                        (long long)stop, (long long)t->shape[dim], dim);
    fm_tensor v = *t;
    if (v.data)
        v.data = (char *)v.data + (size_t)(start * t->stride[dim]) * fm_dtype_size(t->dtype);
    v.shape[dim] = stop - start;
    *out = v;
    return FM_OK;
}

fm_status fm_tensor_reshape(fm_tensor *out, const fm_tensor *t, int ndim, const int64_t *shape)
{
    if (!out || !t || (ndim > 0 && !shape))
        return fm_error(FM_ERR_INVALID_ARG, "tensor reshape: NULL argument");
    if (!fm_tensor_is_contiguous(t))
        return fm_error(FM_ERR_SHAPE, "tensor reshape: the tensor is not contiguous");
    if (ndim < 0 || ndim > FM_MAX_DIMS)
        return fm_error(FM_ERR_SHAPE, "tensor reshape: %d dims (allowed 0..%d)", ndim, FM_MAX_DIMS);
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return fm_error(FM_ERR_SHAPE, "tensor reshape: dim %d is negative", d);
        n *= shape[d];
    }
    if (n != fm_tensor_numel(t)) {
        char buf[96];
        return fm_error(FM_ERR_SHAPE, "tensor reshape: %lld elements into a shape of %lld (from %s)",
                        (long long)fm_tensor_numel(t), (long long)n, fm_tensor_shape_str(t, buf, sizeof buf));
    }
    fm_tensor v = *t;
    v.ndim = ndim;
    for (int d = 0; d < ndim; d++)
        v.shape[d] = shape[d];
    set_contiguous_strides(&v);
    *out = v;
    return FM_OK;
}

const char *fm_tensor_shape_str(const fm_tensor *t, char *buf, size_t len)
{
    size_t pos = 0;
    if (len == 0)
        return buf;
    buf[0] = '\0';
    pos += (size_t)snprintf(buf + pos, len - pos, "(");
    for (int d = 0; d < t->ndim && pos < len; d++)
        pos += (size_t)snprintf(buf + pos, len - pos, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (pos < len)
        snprintf(buf + pos, len - pos, ")");
    return buf;
}

fm_status fm_tensor_expect(const fm_tensor *t, const char *name, fm_dtype dtype, int ndim, const int64_t *shape)
{
    if (!t)
        return fm_error(FM_ERR_INVALID_ARG, "%s: tensor is NULL", name);
    if (t->dtype != dtype)
        return fm_error(FM_ERR_DTYPE, "%s: dtype %s, expected %s", name, fm_dtype_name(t->dtype), fm_dtype_name(dtype));
    if (!fm_tensor_is_contiguous(t))
        return fm_error(FM_ERR_SHAPE, "%s: tensor is not contiguous", name);
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = shape[d] < 0 || shape[d] == t->shape[d];
    if (!ok) {
        char got[96], want[96];
        size_t pos = 0;
        pos += (size_t)snprintf(want + pos, sizeof want - pos, "(");
        for (int d = 0; d < ndim && pos < sizeof want; d++) {
            if (shape[d] < 0)
                pos += (size_t)snprintf(want + pos, sizeof want - pos, d ? ", *" : "*");
            else
                pos += (size_t)snprintf(want + pos, sizeof want - pos, d ? ", %lld" : "%lld", (long long)shape[d]);
        }
        if (pos < sizeof want)
            snprintf(want + pos, sizeof want - pos, ")");
        return fm_error(FM_ERR_SHAPE, "%s: shape %s, expected %s", name, fm_tensor_shape_str(t, got, sizeof got), want);
    }
    return FM_OK;
}
