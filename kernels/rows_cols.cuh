/* Row and column reductions shared by kernels/linear.cu, layernorm.cu, softmax.cu and l2norm.cu: a warp sum
 * and max for the one-warp-per-row kernels and their launcher, and deterministic column sums over the rows of
 * a matrix (dbias, a norm's dweight) without float atomics: per-block partial sums of row chunks, then a
 * second pass that adds the partials in a fixed order. The result depends on (N, C) only, never on
 * scheduling. CUDA C++ only. */
#ifndef FEDMM_KERNELS_ROWS_COLS_CUH
#define FEDMM_KERNELS_ROWS_COLS_CUH

#include <cuda_runtime.h>

#include "cuda/launch.cuh"

#define FM_WARP 32u

static __device__ __forceinline__ float fm_warp_sum(float v)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

static __device__ __forceinline__ float fm_warp_max(float v)
{
    for (int off = 16; off > 0; off >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/* ---- one warp per row ------------------------------------------------------------------------------------
 * Row kernels run in blocks of FM_WARP × FM_ROWS_PER_BLOCK threads, row = blockIdx.x·FM_ROWS_PER_BLOCK +
 * threadIdx.y, lane = threadIdx.x. */
#define FM_ROWS_PER_BLOCK 8u

/* Launches a row kernel over N rows on fedmm's stream and checks the launch. Use through FM_LAUNCH_ROWS. */
template <typename... KernelArgs, typename... Args>
static inline fm_status fm_launch_rows(const char *name, const char *file, int line, void (*kernel)(KernelArgs...),
                                       size_t N, Args... args)
{
    if (N == 0)
        return FM_OK;
    const size_t blocks = (N + FM_ROWS_PER_BLOCK - 1) / FM_ROWS_PER_BLOCK;
    if (blocks > 0x7fffffffu)
        return fm_error(FM_ERR_RANGE, "%s: %zu rows is too many for one grid", name, N);
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    kernel<<<(unsigned)blocks, dim3(FM_WARP, FM_ROWS_PER_BLOCK), 0, stream>>>(args...);
    return fm_cuda_check_launch_at(name, file, line);
}

#define FM_LAUNCH_ROWS(kernel, N, ...) fm_launch_rows(#kernel, __FILE__, __LINE__, kernel, (size_t)(N), __VA_ARGS__)

/* ---- deterministic column sums ------------------------------------------------------------------------------
 * out_k[c] += Σ_n op(n, c)_k for k < Op::kOut (1 or 2 sums at once, e.g. dweight and dbias of layernorm).
 * Op is a small struct with `static constexpr int kOut` and `__device__ void operator()(size_t n, size_t c,
 * float *v) const`. A block of FM_WARP × FM_COLSUM_ROWS threads owns 32 columns and one chunk of rows; each
 * thread sums rows ty, ty + FM_COLSUM_ROWS, … of its chunk, then thread ty = 0 adds the partials in order. */
#define FM_COLSUM_ROWS 8u
/* Enough blocks to fill an H200 (132 SMs) about twice; more only splits rows into shorter chunks. */
#define FM_COLSUM_TARGET_BLOCKS 256u
/* A chunk shorter than this is not worth a partial of its own. */
#define FM_COLSUM_MIN_CHUNK 64u

template <typename Op>
static __global__ void fm_colsum_kernel(float *partial, // (chunks, kOut, C) when gridDim.y > 1, else unused
                                        float *out0,    // (C) accumulated, or NULL
                                        float *out1,    // (C) accumulated, or NULL (kOut == 2 only)
                                        Op op, size_t N, size_t C, size_t chunk_rows)
{
    __shared__ float part[2][FM_COLSUM_ROWS][FM_WARP + 1]; /* +1: no bank conflicts on the column read */
    const size_t c = (size_t)blockIdx.x * FM_WARP + threadIdx.x;
    const size_t r0 = (size_t)blockIdx.y * chunk_rows;
    const size_t r1 = r0 + chunk_rows < N ? r0 + chunk_rows : N;
    float acc[2] = {0.0f, 0.0f};
    if (c < C) {
        for (size_t n = r0 + threadIdx.y; n < r1; n += FM_COLSUM_ROWS) {
            float v[2] = {0.0f, 0.0f};
            op(n, c, v);
            for (int k = 0; k < Op::kOut; k++)
                acc[k] += v[k];
        }
    }
    for (int k = 0; k < Op::kOut; k++)
        part[k][threadIdx.y][threadIdx.x] = acc[k];
    __syncthreads();
    if (threadIdx.y != 0 || c >= C)
        return;
    for (int k = 0; k < Op::kOut; k++) {
        float s = 0.0f;
        for (unsigned y = 0; y < FM_COLSUM_ROWS; y++)
            s += part[k][y][threadIdx.x];
        if (gridDim.y > 1) {
            partial[((size_t)blockIdx.y * Op::kOut + (size_t)k) * C + c] = s;
        } else {
            float *out = k == 0 ? out0 : out1;
            if (out)
                out[c] += s;
        }
    }
}

/* Second pass: out_k[c] += Σ_chunk partial[chunk][k][c], chunks in order. */
static __global__ void fm_colsum_finish_kernel(float *out0, float *out1, const float *partial, size_t chunks, int kout,
                                               size_t C)
{
    for (FM_GRID_STRIDE(i, (size_t)kout * C)) {
        size_t k = i / C, c = i % C;
        float *out = k == 0 ? out0 : out1;
        if (!out)
            continue;
        float s = 0.0f;
        for (size_t j = 0; j < chunks; j++)
            s += partial[(j * (size_t)kout + k) * C + c];
        out[c] += s;
    }
}

/* Runs the column sums on fedmm's stream. The partials live in the cuBLAS(Lt) workspace: like cuBLAS, these
 * kernels use it only from fedmm's single stream, in issue order, and nothing reads them after the second
 * pass, so a later GEMM may reuse it (as for the cuBLAS handle, fedmm's device work is issued by one host
 * thread at a time). The chunk count depends only on N, C and the workspace size: results are reproducible. */
template <typename Op>
static inline fm_status fm_colsum(const char *name, float *out0, float *out1, Op op, size_t N, size_t C)
{
    if (N == 0 || C == 0 || (!out0 && !out1))
        return FM_OK;
    struct cublasLtContext *lt = NULL;
    void *ws = NULL;
    size_t ws_bytes = 0;
    FM_TRY(fm_cuda_get_cublaslt(&lt, &ws, &ws_bytes));
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    const size_t col_blocks = (C + FM_WARP - 1) / FM_WARP;
    if (col_blocks > 0x7fffffffu)
        return fm_error(FM_ERR_RANGE, "%s: %zu columns is too many for one grid", name, C);
    size_t chunks = (FM_COLSUM_TARGET_BLOCKS + col_blocks - 1) / col_blocks;
    const size_t max_by_rows = (N + FM_COLSUM_MIN_CHUNK - 1) / FM_COLSUM_MIN_CHUNK;
    const size_t max_by_ws = ws_bytes / ((size_t)Op::kOut * C * sizeof(float));
    chunks = chunks < max_by_rows ? chunks : max_by_rows;
    chunks = chunks < max_by_ws ? chunks : max_by_ws;
    chunks = chunks < 65535 ? chunks : 65535; /* gridDim.y's limit */
    if (chunks < 1)
        chunks = 1; /* one chunk adds straight into out: no workspace needed */
    const size_t chunk_rows = (N + chunks - 1) / chunks;
    chunks = (N + chunk_rows - 1) / chunk_rows;
    dim3 grid((unsigned)col_blocks, (unsigned)chunks), block(FM_WARP, FM_COLSUM_ROWS);
    fm_colsum_kernel<Op><<<grid, block, 0, stream>>>((float *)ws, out0, out1, op, N, C, chunk_rows);
    FM_TRY(fm_cuda_check_launch_at(name, __FILE__, __LINE__));
    if (chunks == 1)
        return FM_OK;
    return FM_LAUNCH_1D(fm_colsum_finish_kernel, (size_t)Op::kOut * C, out0, out1, (const float *)ws, chunks, Op::kOut,
                        C);
}

#endif
