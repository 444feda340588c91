/* CUDA runtime glue: the cached device probe, checked CUDA and cuBLAS calls that become fm_status with
 * file and line, device memory on fedmm's stream, and the device context (stream, cuBLAS and cuBLASLt
 * handles, their workspace), created on first use. See cuda/runtime.h. */
#include "cuda/runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

/* cuBLAS asks for 32 MiB of workspace on Hopper (less on older parts); cuBLASLt's heuristics take what
 * they are offered. One buffer serves both since both only run on fedmm's stream. */
#define FM_CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

/* Threads an SM can hold on every architecture CUDA 13 supports (sm_75 holds 1024, the rest 1536 or
 * 2048); a grid of twice this per SM keeps an elementwise kernel's loads in flight. */
#define FM_THREADS_PER_SM_TARGET 2048u

/* Trims a __FILE__ path to its last two components ("cuda/runtime.c"): build directories differ, the
 * file's place in the repository is what a reader needs. */
static const char *short_path(const char *file)
{
    if (!file)
        return "?";
    const char *last = NULL, *prev = NULL;
    for (const char *p = file; *p; p++) {
        if (*p == '/') {
            prev = last;
            last = p;
        }
    }
    return prev ? prev + 1 : file;
}

/* ---- checked calls ------------------------------------------------------------------------------- */

fm_status fm_cuda_check_at(int err, const char *call, const char *file, int line)
{
    if (err == (int)cudaSuccess)
        return FM_OK;
    /* Reset the runtime's last-error slot, so the next launch check does not report this failure a
     * second time (sticky errors, which poison the context, stay regardless). */
    (void)cudaGetLastError();
    cudaError_t e = (cudaError_t)err;
    return fm_error(FM_ERR_CUDA, "%s:%d: %s: %s (%s)", short_path(file), line, call ? call : "?", cudaGetErrorName(e),
                    cudaGetErrorString(e));
}

fm_status fm_cuda_check_launch_at(const char *kernel, const char *file, int line)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        return FM_OK;
    return fm_error(FM_ERR_CUDA, "%s:%d: launch of %s: %s (%s)", short_path(file), line, kernel ? kernel : "?",
                    cudaGetErrorName(e), cudaGetErrorString(e));
}

fm_status fm_cublas_check_at(int status, const char *call, const char *file, int line)
{
    if (status == (int)CUBLAS_STATUS_SUCCESS)
        return FM_OK;
    cublasStatus_t s = (cublasStatus_t)status;
    return fm_error(FM_ERR_CUDA, "%s:%d: %s: %s (%s)", short_path(file), line, call ? call : "?",
                    cublasGetStatusName(s), cublasGetStatusString(s));
}

/* ---- the probe ----------------------------------------------------------------------------------- */

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int probe_count;
static char probe_why[384];

static const char *count_failure_hint(cudaError_t err)
{
    switch (err) {
    case cudaErrorInsufficientDriver: return "no CUDA driver, or one older than this CUDA runtime";
    case cudaErrorNoDevice: return "no CUDA device";
    case cudaErrorStubLibrary: return "only CUDA's stub libcuda.so was found (a stubs/ directory on the library path?)";
    default: return "CUDA is not usable";
    }
}

/* The probe's failures are the expected answer on a machine without a GPU, not errors of the caller:
 * its CUDA calls are checked by hand so that they leave the thread's fm_last_error() alone. */
static void probe_run(void)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        snprintf(probe_why, sizeof probe_why, "%s (%s: %s)", count_failure_hint(err), cudaGetErrorName(err),
                 cudaGetErrorString(err));
        (void)cudaGetLastError();
        return;
    }
    if (count <= 0) {
        snprintf(probe_why, sizeof probe_why, "the CUDA driver reports no devices");
        return;
    }
    /* A listed device can still be unusable: a driver older than the runtime, an exclusive-process GPU
     * held by someone else, an architecture this build has no kernel image for. Creating the context
     * and running one empty kernel finds all of them here rather than at the first real launch. */
    err = cudaFree(NULL);
    if (err == cudaSuccess)
        err = (cudaError_t)fm_cuda_probe_launch();
    if (err != cudaSuccess) {
        struct cudaDeviceProp prop;
        memset(&prop, 0, sizeof prop);
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
            snprintf(prop.name, sizeof prop.name, "unknown");
        snprintf(probe_why, sizeof probe_why,
                 "CUDA device 0 (%s, compute capability %d.%d) cannot run fedmm's kernels (built for %s): %s (%s)",
                 prop.name, prop.major, prop.minor, fm_cuda_built_archs(), cudaGetErrorName(err),
                 cudaGetErrorString(err));
        (void)cudaGetLastError();
        return;
    }
    probe_count = count;
}

int fm_cuda_probe(char *why, size_t why_len)
{
    (void)pthread_once(&probe_once, probe_run);
    if (why && why_len)
        snprintf(why, why_len, "%s", probe_count > 0 ? "" : probe_why);
    return probe_count;
}

/* ---- the device context -------------------------------------------------------------------------- */

static pthread_mutex_t ctx_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct {
    cudaStream_t stream;
    int sm_count;
    void *workspace; /* FM_CUBLAS_WORKSPACE_BYTES, shared by cuBLAS and cuBLASLt */
    cublasHandle_t blas;
    cublasLtHandle_t blaslt;
} ctx;

/* The *_locked helpers run with ctx_mutex held; they may return early, their callers unlock. */
static fm_status ensure_stream_locked(void)
{
    if (ctx.stream)
        return FM_OK;
    int device = 0, sms = 0;
    FM_CUDA_TRY(cudaGetDevice(&device));
    FM_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    /* A blocking stream (not cudaStreamNonBlocking): it stays ordered with the legacy default stream
     * that other libraries and synchronous CUDA calls use. */
    cudaStream_t stream = NULL;
    FM_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamDefault));
    ctx.sm_count = sms;
    ctx.stream = stream;
    return FM_OK;
}

static fm_status ensure_workspace_locked(void)
{
    FM_TRY(ensure_stream_locked());
    if (!ctx.workspace)
        FM_CUDA_TRY(cudaMalloc(&ctx.workspace, FM_CUBLAS_WORKSPACE_BYTES));
    return FM_OK;
}

static fm_status ensure_cublas_locked(void)
{
    if (ctx.blas)
        return FM_OK;
    FM_TRY(ensure_workspace_locked());
    cublasHandle_t handle = NULL;
    FM_CUBLAS_TRY(cublasCreate(&handle));
    fm_status st = FM_CUBLAS_CHECK(cublasSetStream(handle, ctx.stream));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasSetWorkspace(handle, ctx.workspace, FM_CUBLAS_WORKSPACE_BYTES));
    if (st != FM_OK) {
        /* Unchecked on purpose: the message of the first failure is the one worth keeping. */
        (void)cublasDestroy(handle);
        return st;
    }
    ctx.blas = handle;
    return FM_OK;
}

static fm_status ensure_cublaslt_locked(void)
{
    if (ctx.blaslt)
        return FM_OK;
    FM_TRY(ensure_workspace_locked());
    cublasLtHandle_t handle = NULL;
    FM_CUBLAS_TRY(cublasLtCreate(&handle));
    ctx.blaslt = handle;
    return FM_OK;
}

fm_status fm_cuda_get_stream(struct CUstream_st **out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_cuda_get_stream: NULL out");
    pthread_mutex_lock(&ctx_mutex);
    fm_status st = ensure_stream_locked();
    *out = st == FM_OK ? ctx.stream : NULL;
    pthread_mutex_unlock(&ctx_mutex);
    return st;
}

fm_status fm_cuda_get_cublas(struct cublasContext **out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_cuda_get_cublas: NULL out");
    pthread_mutex_lock(&ctx_mutex);
    fm_status st = ensure_cublas_locked();
    *out = st == FM_OK ? ctx.blas : NULL;
    pthread_mutex_unlock(&ctx_mutex);
    return st;
}

fm_status fm_cuda_get_cublaslt(struct cublasLtContext **out, void **workspace, size_t *workspace_bytes)
{
    if (!out || !workspace || !workspace_bytes)
        return fm_error(FM_ERR_INVALID_ARG, "fm_cuda_get_cublaslt: NULL out, workspace or workspace_bytes");
    pthread_mutex_lock(&ctx_mutex);
    fm_status st = ensure_cublaslt_locked();
    *out = st == FM_OK ? ctx.blaslt : NULL;
    *workspace = st == FM_OK ? ctx.workspace : NULL;
    *workspace_bytes = st == FM_OK ? FM_CUBLAS_WORKSPACE_BYTES : 0;
    pthread_mutex_unlock(&ctx_mutex);
    return st;
}

unsigned fm_cuda_grid_1d(size_t n, unsigned block)
{
    if (n == 0 || block == 0)
        return 0;
    pthread_mutex_lock(&ctx_mutex);
    int sms = ctx.sm_count;
    pthread_mutex_unlock(&ctx_mutex);
    size_t per_sm = 2 * FM_THREADS_PER_SM_TARGET / block;
    size_t cap = sms > 0 ? (size_t)sms * (per_sm ? per_sm : 1) : 4096;
    size_t need = (n + block - 1) / block;
    return (unsigned)(need < cap ? need : cap);
}

/* Keeps the first failure of a sequence of release steps. */
static void keep_first(fm_status *first, fm_status st)
{
    if (*first == FM_OK)
        *first = st;
}

fm_status fm_cuda_shutdown(void)
{
    fm_status first = FM_OK;
    pthread_mutex_lock(&ctx_mutex);
    if (ctx.stream)
        keep_first(&first, FM_CUDA_CHECK(cudaStreamSynchronize(ctx.stream)));
    if (ctx.blaslt)
        keep_first(&first, FM_CUBLAS_CHECK(cublasLtDestroy(ctx.blaslt)));
    if (ctx.blas)
        keep_first(&first, FM_CUBLAS_CHECK(cublasDestroy(ctx.blas)));
    if (ctx.workspace)
        keep_first(&first, FM_CUDA_CHECK(cudaFree(ctx.workspace)));
    if (ctx.stream)
        keep_first(&first, FM_CUDA_CHECK(cudaStreamDestroy(ctx.stream)));
    memset(&ctx, 0, sizeof ctx);
    pthread_mutex_unlock(&ctx_mutex);
    return first;
}

/* ---- memory -------------------------------------------------------------------------------------- */

fm_status fm_cuda_malloc(void **ptr, size_t bytes)
{
    if (!ptr)
        return fm_error(FM_ERR_INVALID_ARG, "fm_cuda_malloc: NULL out pointer");
    *ptr = NULL;
    if (bytes == 0)
        return FM_OK;
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return fm_error(FM_ERR_NO_MEMORY, "%s:%d: cudaMalloc of %zu bytes: out of device memory", short_path(__FILE__),
                        __LINE__, bytes);
    }
    FM_TRY(fm_cuda_check_at((int)err, "cudaMalloc(&p, bytes)", __FILE__, __LINE__));
    *ptr = p;
    return FM_OK;
}

void fm_cuda_free(void *ptr)
{
    if (ptr)
        (void)FM_CUDA_CHECK(cudaFree(ptr));
}

fm_status fm_cuda_memcpy(void *dst, const void *src, size_t bytes, int kind)
{
    static const enum cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                                 cudaMemcpyDeviceToDevice};
    if (kind < 0 || kind > 3)
        return fm_error(FM_ERR_INVALID_ARG,
                        "fm_cuda_memcpy: kind %d is not 0 (host→device), 1 (device→host), 2 (device→device) "
                        "or 3 (host→host)",
                        kind);
    if (bytes == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "fm_cuda_memcpy: NULL %s for %zu bytes", dst ? "source" : "destination",
                        bytes);
    if (kind == 3) {
        memmove(dst, src, bytes);
        return FM_OK;
    }
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    FM_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kinds[kind], stream));
    /* The caller may read or reuse its host buffer as soon as this returns. */
    if (kind != 2)
        FM_CUDA_TRY(cudaStreamSynchronize(stream));
    return FM_OK;
}

fm_status fm_cuda_memset(void *ptr, int value, size_t bytes)
{
    if (bytes == 0)
        return FM_OK;
    if (!ptr)
        return fm_error(FM_ERR_INVALID_ARG, "fm_cuda_memset: NULL pointer for %zu bytes", bytes);
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    FM_CUDA_TRY(cudaMemsetAsync(ptr, value, bytes, stream));
    return FM_OK;
}

fm_status fm_cuda_synchronize(void)
{
    FM_CUDA_TRY(cudaDeviceSynchronize());
    return FM_OK;
}
