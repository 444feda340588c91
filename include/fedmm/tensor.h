/* Tensors are views: a typed, shaped, strided window onto memory that somebody else owns (an arena,
 * a parameter buffer, a mapped file). Creating, slicing or reshaping a view never allocates. */
#ifndef FEDMM_TENSOR_H
#define FEDMM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_dtype { FM_F32 = 0, FM_F16, FM_BF16, FM_I32, FM_I64, FM_U8, FM_DTYPE_COUNT } fm_dtype;

typedef enum fm_device { FM_DEVICE_CPU = 0, FM_DEVICE_CUDA = 1 } fm_device;

#define FM_MAX_DIMS 6

typedef struct fm_tensor {
    void *data; /* first element of the view (not owned) */
    fm_dtype dtype;
    fm_device device;
    int ndim;
    int64_t shape[FM_MAX_DIMS];
    int64_t stride[FM_MAX_DIMS]; /* in elements */
} fm_tensor;

/* Bytes per element of `dtype` (0 for an invalid dtype). */
size_t fm_dtype_size(fm_dtype dtype);
/* "f32", "bf16", ... ; "?" for an invalid dtype. */
const char *fm_dtype_name(fm_dtype dtype);
const char *fm_device_name(fm_device device);

/* A contiguous row-major view of `ndim` dims over `base`, starting `offset` elements in. Fails with
 * FM_ERR_RANGE when the view would reach past `capacity_bytes` of `base`, FM_ERR_SHAPE on a negative
 * dim or ndim outside [0, FM_MAX_DIMS]. */
fm_status fm_tensor_view(fm_tensor *out, void *base, size_t capacity_bytes, size_t offset, fm_dtype dtype,
                         fm_device device, int ndim, const int64_t *shape);

/* Number of elements (1 for a 0-dim tensor). */
int64_t fm_tensor_numel(const fm_tensor *t);
/* Bytes covered by a contiguous tensor: numel * dtype size. */
size_t fm_tensor_nbytes(const fm_tensor *t);
/* Whether strides are exactly the row-major ones for the shape. */
int fm_tensor_is_contiguous(const fm_tensor *t);

/* A view of indices [start, stop) along `dim` (a narrower view sharing the data). */
fm_status fm_tensor_narrow(fm_tensor *out, const fm_tensor *t, int dim, int64_t start, int64_t stop);
/* The same contiguous data with another shape of equal element count. */
fm_status fm_tensor_reshape(fm_tensor *out, const fm_tensor *t, int ndim, const int64_t *shape);

/* Checks that `t` has dtype, device and exact shape (ndim entries); `name` goes into the message. A
 * negative entry in `shape` matches any size. Contiguity is required. */
fm_status fm_tensor_expect(const fm_tensor *t, const char *name, fm_dtype dtype, int ndim, const int64_t *shape);

/* Fills `dims` text like "(2, 3, 4)" into buf; returns buf. */
const char *fm_tensor_shape_str(const fm_tensor *t, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
