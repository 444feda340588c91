/* Row-major GEMMs over fp32 or bf16 operands through cuBLASLt (see kernels/model_ops.h): alpha, beta, fp32 or
 * bf16 output, an optional fp32 bias by the epilogue, and for the weight gradient the bias gradient by the BGRADB
 * epilogue (fm_cuda_gemm_dbias). fedmm's one cuBLASLt path: the per-op linear layer
 * (kernels/linear.cu), the LoRA path accumulated into the base output (alpha = scaling, beta = 1) and every GEMM
 * of bf16 mixed precision use it. Plans are cached per shape, types and alignment.
 *
 * Row-major ↔ cuBLAS column-major: a row-major (R, C) matrix read column-major is its transpose (C×R, ld = C).
 * For D (M, N) row-major, Dᶜ = Dᵀ (N×M, ld N), so every op below computes Dᵀ with m = N, n = M:
 *   'N'  D = X·Yᵀ, X (M, K), Y (N, K):  Dᵀ = Y·Xᵀ  = op_T(Yᶜ (K×N, ld K)) · Xᶜ (K×M, ld K)
 *   'A'  D = X·Y,  X (M, K), Y (K, N):  Dᵀ = Yᵀ·Xᵀ = Yᶜ (N×K, ld N) · Xᶜ (K×M, ld K)
 *   'W'  D = Xᵀ·Y, X (K, M), Y (K, N):  Dᵀ = Yᵀ·X  = Yᶜ (N×K, ld N) · op_T(Xᶜ (M×K, ld M)) */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_bf16.h>

#include "cuda/launch.cuh"
#include "fedmm/log.h"
#include "kernels/model_ops.h"
#include "kernels/reduce.cuh"
#include "kernels/rows_cols.cuh"

/* What the epilogue adds: nothing, a bias on every row of D (forward), or the bias gradient (BGRADB: the column sums
 * of the dy operand of a weight-gradient GEMM). */
enum { MM_EPI_NONE = 0, MM_EPI_BIAS = 1, MM_EPI_BGRADB = 2 };

typedef struct mm_key {
    int transa, transb, bias; /* bias: MM_EPI_* */
    int m, n, k, lda, ldb, ldd;
    int in, out;
    unsigned align_a, align_b, align_d, align_bias;
} mm_key;

typedef struct mm_plan {
    int used;
    int bias_by_kernel; /* the heuristic had no algorithm with the epilogue: a kernel does its work after */
    mm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} mm_plan;

/* A training step of the two towers uses about 40 (shape, type, alignment) combinations in bf16 with LoRA on
 * every projection; when full, the oldest plan is replaced (round robin). */
#define MM_PLAN_SLOTS 128

static pthread_mutex_t mm_mutex = PTHREAD_MUTEX_INITIALIZER;
static mm_plan mm_plans[MM_PLAN_SLOTS];
static int mm_next;

static size_t type_size(int t) { return t == FM_GEMM_BF16 ? 2 : 4; }
static cudaDataType_t cuda_type(int t) { return t == FM_GEMM_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* Largest power of two (≤ 256) dividing the address and the byte stride of a leading dimension. */
static unsigned alignment_of(const void *p, int ld, size_t elem)
{
    uintptr_t v = (uintptr_t)p | ((uintptr_t)ld * elem) | (uintptr_t)256;
    return (unsigned)(v & (~v + 1));
}

static void mm_release(mm_plan *p)
{
    /* Unchecked: releasing host descriptors has nothing to report that the caller could act on. */
    if (p->desc)
        (void)cublasLtMatmulDescDestroy(p->desc);
    if (p->a)
        (void)cublasLtMatrixLayoutDestroy(p->a);
    if (p->b)
        (void)cublasLtMatrixLayoutDestroy(p->b);
    if (p->d)
        (void)cublasLtMatrixLayoutDestroy(p->d);
    memset(p, 0, sizeof *p);
}

/* Descriptors, layouts and the heuristic's first algorithm for `key`, with the epilogue `epilogue` (MM_EPI_*; bias
 * is its vector, whose address the heuristic reads for its alignment). *found = 0 (and FM_OK) when the heuristic has
 * no algorithm. */
static fm_status mm_try_build(mm_plan *p, const mm_key *key, int epilogue, cublasLtHandle_t lt, const float *bias,
                              size_t ws_bytes, int *found)
{
    memset(p, 0, sizeof *p);
    *found = 0;
    const cublasOperation_t ta = key->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const uint64_t m = (uint64_t)key->m, n = (uint64_t)key->n, k = (uint64_t)key->k;
    const cudaDataType_t tin = cuda_type(key->in), tout = cuda_type(key->out);
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t result;
    memset(&result, 0, sizeof result);
    const uint64_t ws = ws_bytes;
    fm_status st = FM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (st == FM_OK && epilogue != MM_EPI_NONE) {
        const cublasLtEpilogue_t epi = epilogue == MM_EPI_BGRADB ? CUBLASLT_EPILOGUE_BGRADB : CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = CUDA_R_32F;
        st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        if (st == FM_OK)
            st = FM_CUBLAS_CHECK(
                cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        if (st == FM_OK)
            st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                                &bias_type, sizeof bias_type));
    }
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&p->a, tin, key->transa ? k : m, key->transa ? m : k, (int64_t)key->lda));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&p->b, tin, key->transb ? n : k, key->transb ? k : n, (int64_t)key->ldb));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, tout, m, n, (int64_t)key->ldd));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    const struct {
        cublasLtMatmulPreferenceAttributes_t attr;
        uint32_t value;
    } aligns[] = {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key->align_a},
                  {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key->align_b},
                  {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key->align_d},
                  {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key->align_d}};
    for (size_t i = 0; st == FM_OK && i < sizeof aligns / sizeof aligns[0]; i++)
        st = FM_CUBLAS_CHECK(
            cublasLtMatmulPreferenceSetAttribute(pref, aligns[i].attr, &aligns[i].value, sizeof aligns[i].value));
    int n_found = 0;
    if (st == FM_OK) {
        /* NOT_SUPPORTED is the heuristic's way of saying "no algorithm" for some combinations: not an error. */
        cublasStatus_t hs =
            cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &result, &n_found);
        if (hs == CUBLAS_STATUS_NOT_SUPPORTED)
            n_found = 0;
        else
            st = FM_CUBLAS_CHECK(hs);
    }
    if (pref)
        (void)cublasLtMatmulPreferenceDestroy(pref);
    if (st != FM_OK || n_found < 1) {
        mm_release(p);
        return st;
    }
    p->algo = result.algo;
    p->key = *key;
    p->used = 1;
    *found = 1;
    return FM_OK;
}

/* The epilogue when the heuristic has an algorithm for it, else the plain GEMM (and a kernel after: the bias added,
 * or the bias gradient's column sum). */
static fm_status mm_build(mm_plan *p, const mm_key *key, cublasLtHandle_t lt, const float *bias, size_t ws_bytes)
{
    int found = 0;
    fm_status st = mm_try_build(p, key, key->bias, lt, bias, ws_bytes, &found);
    if (key->bias != MM_EPI_NONE && (st != FM_OK || !found)) {
        /* An epilogue the library does not offer for this case (an error from the descriptor or the heuristic counts
         * as "not offered": a real fault fails the plain build below too). Said at debug level, once per plan. */
        FM_DEBUG("cuBLASLt: no algorithm with the %s epilogue for m=%d n=%d k=%d %s (%s); a kernel does its work",
                 key->bias == MM_EPI_BGRADB ? "bias-gradient" : "bias", key->m, key->n, key->k,
                 key->in == FM_GEMM_BF16 ? "bf16" : "fp32", st != FM_OK ? fm_last_error() : "none offered");
        fm_clear_error();
        st = mm_try_build(p, key, MM_EPI_NONE, lt, bias, ws_bytes, &found);
        p->bias_by_kernel = found;
    }
    FM_TRY(st);
    if (!found)
        return fm_error(FM_ERR_CUDA,
                        "cuBLASLt has no algorithm for %s→%s m=%d n=%d k=%d (trans %c%c, bias %d, alignments "
                        "%u/%u/%u)",
                        key->in == FM_GEMM_BF16 ? "bf16" : "fp32", key->out == FM_GEMM_BF16 ? "bf16" : "fp32", key->m,
                        key->n, key->k, key->transa ? 'T' : 'N', key->transb ? 'T' : 'N', key->bias, key->align_a,
                        key->align_b, key->align_d);
    return FM_OK;
}

/* D (M, N) row-major: D = beta·D, then + bias on every row. For K = 0 and for the bias without the epilogue. */
static __global__ void scale_bias_kernel(float *D,          // (M, N)
                                         const float *bias, // (N) or NULL
                                         float beta, int apply_beta, size_t M, size_t N)
{
    for (FM_GRID_STRIDE(i, M * N)) {
        float v = apply_beta ? (beta == 0.0f ? 0.0f : beta * D[i]) : D[i];
        D[i] = bias ? v + bias[i % N] : v;
    }
}

static __global__ void scale_bf16_kernel(uint16_t *D, size_t n) // beta = 0 into a bf16 D: zeros
{
    for (FM_GRID_STRIDE(i, n))
        D[i] = 0;
}

static fm_status check_args(char op, int M, int N, int K, const void *X, const void *Y, fm_gemm_type in, float beta,
                            const void *D, fm_gemm_type out, const float *bias)
{
    if (op != 'N' && op != 'A' && op != 'W')
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: op '%c' is not N (x·Yᵀ), A (x·Y) or W (xᵀ·Y)", op);
    if (M < 0 || N < 0 || K < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: negative size (M=%d, N=%d, K=%d)", M, N, K);
    if ((in != FM_GEMM_F32 && in != FM_GEMM_BF16) || (out != FM_GEMM_F32 && out != FM_GEMM_BF16))
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: unknown operand type %d or %d", (int)in, (int)out);
    if (out == FM_GEMM_BF16 && (beta != 0.0f || bias))
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: a bf16 output takes beta = 0 and no bias");
    if (bias && op != 'N')
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: a bias only with op N (the forward of a linear)");
    if ((size_t)M * (size_t)N > 0 && !D)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: NULL D");
    if ((size_t)M * (size_t)N * (size_t)K > 0 && (!X || !Y))
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm: NULL %s", !X ? "X" : "Y");
    return FM_OK;
}

/* The key of a row-major op on X, Y, D (see the top of the file), with the epilogue `epi` on the vector `vec`; *A and
 * *Bm get cuBLAS's operands. */
static void mm_make_key(mm_key *key, char op, int M, int N, int K, const void *X, const void *Y, fm_gemm_type in,
                        const void *D, fm_gemm_type out, int epi, const float *vec, const void **A, const void **Bm)
{
    memset(key, 0, sizeof *key); /* padding too: keys are compared with memcmp */
    *A = Y, *Bm = X;
    key->m = N, key->n = M, key->k = K;
    switch (op) {
    case 'N': key->transa = 1, key->transb = 0, key->lda = K, key->ldb = K; break;
    case 'A': key->transa = 0, key->transb = 0, key->lda = N, key->ldb = K; break;
    default: key->transa = 0, key->transb = 1, key->lda = N, key->ldb = M; break; /* 'W' */
    }
    key->ldd = N;
    key->in = in, key->out = out;
    key->bias = epi;
    key->align_a = alignment_of(*A, key->lda, type_size(in));
    key->align_b = alignment_of(*Bm, key->ldb, type_size(in));
    key->align_d = alignment_of(D, key->ldd, type_size(out));
    key->align_bias = vec ? alignment_of(vec, 0, 4) : 0;
}

/* Runs the GEMM of `key` through its cached plan (built on first use), the epilogue reading or writing `vec`.
 * *epi_done = 0 when the plan had no algorithm with the epilogue and ran without it (the caller does that work). */
static fm_status mm_run(const mm_key *key, float alpha, const void *A, const void *Bm, float beta, void *D,
                        const float *vec, int *epi_done)
{
    cublasLtHandle_t lt = NULL;
    void *ws = NULL;
    size_t ws_bytes = 0;
    FM_TRY(fm_cuda_get_cublaslt(&lt, &ws, &ws_bytes));
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));

    pthread_mutex_lock(&mm_mutex);
    mm_plan *plan = NULL;
    for (int i = 0; i < MM_PLAN_SLOTS && !plan; i++)
        if (mm_plans[i].used && memcmp(&mm_plans[i].key, key, sizeof *key) == 0)
            plan = &mm_plans[i];
    fm_status st = FM_OK;
    if (!plan) {
        plan = &mm_plans[mm_next];
        mm_next = (mm_next + 1) % MM_PLAN_SLOTS;
        mm_release(plan);
        st = mm_build(plan, key, lt, vec, ws_bytes);
    }
    const int epi = key->bias != MM_EPI_NONE && st == FM_OK && !plan->bias_by_kernel;
    if (epi) /* the vector's address may change between calls of one plan */
        st = FM_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vec, sizeof vec));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmul(lt, plan->desc, &alpha, A, plan->a, Bm, plan->b, &beta, D, plan->d, D,
                                            plan->d, &plan->algo, ws, ws_bytes, stream));
    pthread_mutex_unlock(&mm_mutex);
    *epi_done = epi;
    return st;
}

extern "C" fm_status fm_cuda_gemm(char op, int M, int N, int K, float alpha, const void *X, const void *Y,
                                  fm_gemm_type in, float beta, void *D, fm_gemm_type out, const float *bias)
{
    FM_TRY(check_args(op, M, N, K, X, Y, in, beta, D, out, bias));
    if (M == 0 || N == 0)
        return FM_OK;
    if (K == 0) { /* no products: D = beta·D + bias */
        if (out == FM_GEMM_BF16)
            return FM_LAUNCH_1D(scale_bf16_kernel, (size_t)M * (size_t)N, (uint16_t *)D, (size_t)M * (size_t)N);
        return FM_LAUNCH_1D(scale_bias_kernel, (size_t)M * (size_t)N, (float *)D, bias, beta, 1, (size_t)M, (size_t)N);
    }
    mm_key key;
    const void *A = NULL, *Bm = NULL;
    mm_make_key(&key, op, M, N, K, X, Y, in, D, out, bias ? MM_EPI_BIAS : MM_EPI_NONE, bias, &A, &Bm);
    int epi_done = 0;
    FM_TRY(mm_run(&key, alpha, A, Bm, beta, D, bias, &epi_done));
    if (bias && !epi_done)
        return FM_LAUNCH_1D(scale_bias_kernel, (size_t)M * (size_t)N, (float *)D, bias, 1.0f, 0, (size_t)M, (size_t)N);
    return FM_OK;
}

/* ---- the weight gradient with the bias gradient ----------------------------------------------------------- */

/* Column c of X (K, M) as the GEMM reads it (bf16 values widened), for the column sum without the epilogue. */
struct operand_column {
    static constexpr int kOut = 1;
    const void *X;
    size_t M;
    int bf16;
    __device__ void operator()(size_t k, size_t c, float *v) const
    {
        v[0] = bf16 ? __bfloat162float(__ushort_as_bfloat16(((const uint16_t *)X)[k * M + c]))
                    : ((const float *)X)[k * M + c];
    }
};

static __global__ void add_kernel(float *dst,       // (n), accumulated
                                  const float *src, // (n)
                                  size_t n)
{
    for (FM_GRID_STRIDE(i, n))
        dst[i] += src[i];
}

extern "C" fm_status fm_cuda_gemm_dbias(int M, int N, int K, const void *X, const void *Y, fm_gemm_type in, float beta,
                                        float *D, float *dbias)
{
    FM_TRY(check_args('W', M, N, K, X, Y, in, beta, D, FM_GEMM_F32, NULL));
    if (M == 0)
        return FM_OK;
    if (!dbias)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm_dbias: NULL dbias (use fm_cuda_gemm without a bias gradient)");
    if (K > 0 && !X)
        return fm_error(FM_ERR_INVALID_ARG, "cuda gemm_dbias: NULL X");
    if (K == 0) /* no rows: dbias gets nothing, D = beta·D */
        return fm_cuda_gemm('W', M, N, 0, 1.0f, X, Y, in, beta, D, FM_GEMM_F32, NULL);
    const operand_column col{X, (size_t)M, in == FM_GEMM_BF16};
    if (N == 0) /* no GEMM to ride on */
        return fm_colsum("gemm_dbias column sum", dbias, (float *)NULL, col, (size_t)K, (size_t)M);
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    /* BGRADB writes the sums; they are added to dbias after (gradients accumulate) */
    float *sums = NULL;
    FM_TRY(fm_scratch_alloc((void **)&sums, (size_t)M * sizeof(float), stream));
    mm_key key;
    const void *A = NULL, *Bm = NULL;
    mm_make_key(&key, 'W', M, N, K, X, Y, in, D, FM_GEMM_F32, MM_EPI_BGRADB, sums, &A, &Bm);
    int epi_done = 0;
    fm_status st = mm_run(&key, 1.0f, A, Bm, beta, D, sums, &epi_done);
    if (st == FM_OK && epi_done)
        st = FM_LAUNCH_1D(add_kernel, (size_t)M, dbias, (const float *)sums, (size_t)M);
    else if (st == FM_OK)
        st = fm_colsum("gemm_dbias column sum", dbias, (float *)NULL, col, (size_t)K, (size_t)M);
    return fm_scratch_free(sums, stream, st);
}
