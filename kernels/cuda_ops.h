/* CUDA twins of the CPU reference ops in src/cpu/cpu_ops.h: same names with fm_cuda_ for fm_cpu_, same
 * arguments (but returning fm_status), device pointers, launched on fedmm's stream. They return FM_ERR_CUDA (with file, line and
 * CUDA's message in fm_last_error()) if a launch fails. Declared here only for the ops that have a
 * kernel; the dispatcher in src/ops/ answers FM_ERR_UNSUPPORTED for CUDA tensors of the others. */
#ifndef FEDMM_CUDA_OPS_H
#define FEDMM_CUDA_OPS_H

#include <stddef.h>

#include "fedmm/hparams.h"
#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

fm_status fm_cuda_residual_forward(float *out, const float *a, const float *b, size_t n);
fm_status fm_cuda_residual_backward(float *da, float *db, const float *dout, size_t n);
fm_status fm_cuda_gelu_forward(float *out, const float *inp, size_t n);
fm_status fm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
fm_status fm_cuda_quick_gelu_forward(float *out, const float *inp, size_t n);
fm_status fm_cuda_quick_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
fm_status fm_cuda_adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                               fm_adamw_hparams hp, int t);

#ifdef __cplusplus
}
#endif
#endif
