/* CUDA runtime glue (internal): device probing, checked calls that turn CUDA errors into fm_status,
 * device memory, the default stream, and the cuBLAS(Lt) handle. Compiled only with FEDMM_WITH_CUDA. */
#ifndef FEDMM_CUDA_RUNTIME_H
#define FEDMM_CUDA_RUNTIME_H

#include <stddef.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA types below are pointers to these structs (cudaStream_t, cublasHandle_t, cublasLtHandle_t);
 * naming the structs keeps this header free of CUDA's headers for plain C callers. */
struct CUstream_st;
struct cublasContext;
struct cublasLtContext;

/* Number of usable CUDA devices; 0 with a reason in `why` on any error (no driver, no device, stub
 * library). Never fails otherwise; result cached after the first call. */
int fm_cuda_probe(char *why, size_t why_len);

/* Device memory. A request of 0 bytes gives NULL and FM_OK; running out of device memory is
 * FM_ERR_NO_MEMORY, any other failure FM_ERR_CUDA. fm_cuda_free(NULL) does nothing. */
fm_status fm_cuda_malloc(void **ptr, size_t bytes);
void fm_cuda_free(void *ptr);
/* kind: 0 host→device, 1 device→host, 2 device→device, 3 host→host. Copies that touch host memory
 * have finished when this returns; device→device copies are queued on fedmm's stream, before any
 * kernel launched after them. */
fm_status fm_cuda_memcpy(void *dst, const void *src, size_t bytes, int kind);
/* Queued on fedmm's stream, like a kernel. */
fm_status fm_cuda_memset(void *ptr, int value, size_t bytes);
/* Waits for all work queued on the device; reports asynchronous kernel faults. */
fm_status fm_cuda_synchronize(void);

/* Turns a cudaError_t (as int) into FM_OK or FM_ERR_CUDA with "file:line: call: message". */
fm_status fm_cuda_check_at(int err, const char *call, const char *file, int line);
/* After a kernel launch: checks cudaGetLastError(). */
fm_status fm_cuda_check_launch_at(const char *kernel, const char *file, int line);
/* Same as fm_cuda_check_at for a cublasStatus_t (cuBLAS and cuBLASLt). */
fm_status fm_cublas_check_at(int status, const char *call, const char *file, int line);

#define FM_CUDA_CHECK(call) fm_cuda_check_at((int)(call), #call, __FILE__, __LINE__)
#define FM_CUDA_TRY(call) FM_TRY(FM_CUDA_CHECK(call))
#define FM_CUDA_LAUNCH_CHECK(name) fm_cuda_check_launch_at(name, __FILE__, __LINE__)
#define FM_CUBLAS_CHECK(call) fm_cublas_check_at((int)(call), #call, __FILE__, __LINE__)
#define FM_CUBLAS_TRY(call) FM_TRY(FM_CUBLAS_CHECK(call))

/* ---- the device context: created on first use, shared by all threads, released by shutdown ------ */

/* fedmm's stream (a cudaStream_t). Every kernel and async copy of fedmm runs on it, in issue order.
 * It is a blocking stream, so work that other libraries put on the legacy default stream stays
 * ordered with ours. */
fm_status fm_cuda_get_stream(struct CUstream_st **out);
/* The cuBLAS handle (a cublasHandle_t), bound to fedmm's stream and to the shared workspace. */
fm_status fm_cuda_get_cublas(struct cublasContext **out);
/* The cuBLASLt handle (a cublasLtHandle_t) and the workspace to pass to cublasLtMatmul. The workspace
 * is shared with the cuBLAS handle: safe because both only use it from fedmm's (single) stream. */
fm_status fm_cuda_get_cublaslt(struct cublasLtContext **out, void **workspace, size_t *workspace_bytes);
/* Blocks for an elementwise kernel over n items with `block` threads each: enough to fill the GPU a
 * couple of times over, never more than needed; kernels cover the rest with grid-stride loops.
 * Returns 0 when n is 0 (launch nothing). */
unsigned fm_cuda_grid_1d(size_t n, unsigned block);
/* Waits for the device, then destroys the handles, the workspace and the stream (the next use
 * creates them again). For tests and clean exits: a memory checker then sees no leaks. Returns the
 * first failure, having still released everything it could. */
fm_status fm_cuda_shutdown(void);

/* Internal to the probe (cuda/probe.cu): launches one empty kernel and waits for it, returning the
 * cudaError_t as int, so a device this build has no kernel image for is found before it is used. */
int fm_cuda_probe_launch(void);
/* The GPU architectures this build's kernels were compiled for, e.g. "sm_90". */
const char *fm_cuda_built_archs(void);

#ifdef __cplusplus
}
#endif
#endif
