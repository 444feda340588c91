/* CUDA twin of src/cpu/linear.c: out = inp · Wᵀ + b through cuBLASLt (fp32 compute, no TF32), the bias
 * added by the GEMM's epilogue; backward as two accumulating GEMMs (beta = 1) and a deterministic column sum
 * for dbias (kernels/rows_cols.cuh). Matmul descriptors, layouts and the heuristic's algorithm are built once
 * per shape and kept in a small table.
 *
 * Row-major ↔ cuBLAS column-major: a row-major (R, C) matrix is a column-major (C, R) one with ld = C, so
 *   out (N, OC) = inp (N, C) · Wᵀ      is  outᶜ (OC×N) = Wᶜᵀ (OC×C) · inpᶜ (C×N)
 *   dinp (N, C) += dout (N, OC) · W     is  dinpᶜ (C×N) += Wᶜ (C×OC) · doutᶜ (OC×N)
 *   dW (OC, C) += doutᵀ (OC, N) · inp   is  dWᶜ (C×OC) += inpᶜ (C×N) · doutᶜᵀ (N×OC)
 * where Xᶜ is the row-major X read column-major (its transpose). */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <cublasLt.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/rows_cols.cuh"

/* ---- the plan table -------------------------------------------------------------------------------------- */

/* Everything the heuristic's choice depends on. Alignments are those of the pointers and leading dimensions
 * (the heuristic's default assumes 256-byte aligned buffers, which views into a larger buffer need not be). */
typedef struct gemm_key {
    int transa, transb, bias;
    int m, n, k, lda, ldb, ldd;
    unsigned align_a, align_b, align_d, align_bias;
} gemm_key;

typedef struct gemm_plan {
    int used;
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

/* A training step uses a handful of linear shapes (3 GEMMs each); 64 covers both towers of a dual encoder.
 * When full, the oldest plan is replaced (round robin). */
#define GEMM_PLAN_SLOTS 64

static pthread_mutex_t plan_mutex = PTHREAD_MUTEX_INITIALIZER;
static gemm_plan plans[GEMM_PLAN_SLOTS];
static int plan_next;

/* Largest power of two (≤ 256) dividing the address and the byte stride of a leading dimension. */
static unsigned alignment_of(const void *p, int ld)
{
    uintptr_t v = (uintptr_t)p | ((uintptr_t)ld * sizeof(float)) | (uintptr_t)256;
    return (unsigned)(v & (~v + 1));
}

static void plan_release(gemm_plan *p)
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

/* Builds descriptors and asks the heuristic for the best algorithm; `bias` is the pointer the heuristic
 * reads the bias alignment from. On failure *p is left empty. */
static fm_status plan_build(gemm_plan *p, const gemm_key *key, cublasLtHandle_t lt, const float *bias, size_t ws_bytes)
{
    memset(p, 0, sizeof *p);
    const cublasOperation_t ta = key->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const uint64_t m = (uint64_t)key->m, n = (uint64_t)key->n, k = (uint64_t)key->k;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    const uint64_t ws = ws_bytes;
    fm_status st = FM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (st == FM_OK && key->bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        st = FM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        if (st == FM_OK)
            st = FM_CUBLAS_CHECK(
                cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&p->a, CUDA_R_32F, key->transa ? k : m, key->transa ? m : k, (int64_t)key->lda));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&p->b, CUDA_R_32F, key->transb ? n : k, key->transb ? k : n, (int64_t)key->ldb));
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, CUDA_R_32F, m, n, (int64_t)key->ldd));
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
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(
            cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &result, &found));
    if (st == FM_OK && found < 1)
        st = fm_error(FM_ERR_CUDA,
                      "cuBLASLt has no fp32 algorithm for m=%d n=%d k=%d (trans %c%c, bias %d, alignments %u/%u/%u)",
                      key->m, key->n, key->k, key->transa ? 'T' : 'N', key->transb ? 'T' : 'N', key->bias, key->align_a,
                      key->align_b, key->align_d);
    if (pref)
        (void)cublasLtMatmulPreferenceDestroy(pref);
    if (st != FM_OK) {
        plan_release(p);
        return st;
    }
    p->algo = result.algo;
    p->key = *key;
    p->used = 1;
    return FM_OK;
}

/* D (m×n, column-major, ld ldd) = op(A) · op(B) (+ bias per row of D) + beta·D, on fedmm's stream. */
static fm_status lt_gemm(int transa, int transb, int m, int n, int k, const float *A, int lda, const float *B, int ldb,
                         float beta, float *D, int ldd, const float *bias)
{
    cublasLtHandle_t lt = NULL;
    void *ws = NULL;
    size_t ws_bytes = 0;
    FM_TRY(fm_cuda_get_cublaslt(&lt, &ws, &ws_bytes));
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    gemm_key key;
    memset(&key, 0, sizeof key); /* padding too: keys are compared with memcmp */
    key.transa = transa;
    key.transb = transb;
    key.bias = bias != NULL;
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = lda;
    key.ldb = ldb;
    key.ldd = ldd;
    key.align_a = alignment_of(A, lda);
    key.align_b = alignment_of(B, ldb);
    key.align_d = alignment_of(D, ldd);
    key.align_bias = bias ? alignment_of(bias, 0) : 0;

    pthread_mutex_lock(&plan_mutex);
    gemm_plan *plan = NULL;
    for (int i = 0; i < GEMM_PLAN_SLOTS && !plan; i++)
        if (plans[i].used && memcmp(&plans[i].key, &key, sizeof key) == 0)
            plan = &plans[i];
    fm_status st = FM_OK;
    if (!plan) {
        plan = &plans[plan_next];
        plan_next = (plan_next + 1) % GEMM_PLAN_SLOTS;
        plan_release(plan);
        st = plan_build(plan, &key, lt, bias, ws_bytes);
    }
    if (st == FM_OK && bias)
        st = FM_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    const float alpha = 1.0f;
    if (st == FM_OK)
        st = FM_CUBLAS_CHECK(cublasLtMatmul(lt, plan->desc, &alpha, A, plan->a, B, plan->b, &beta, D, plan->d, D,
                                            plan->d, &plan->algo, ws, ws_bytes, stream));
    pthread_mutex_unlock(&plan_mutex);
    return st;
}

/* ---- kernels for what the GEMM does not cover ------------------------------------------------------------- */

/* C = 0: out is the bias broadcast over rows, or zeros. */
static __global__ void fill_rows_kernel(float *out,        // (N, OC)
                                        const float *bias, // (OC) or NULL
                                        size_t N, size_t OC)
{
    for (FM_GRID_STRIDE(i, N * OC))
        out[i] = bias ? bias[i % OC] : 0.0f;
}

/* dbias[o] += Σ_n dout[n, o] */
struct dout_column {
    static constexpr int kOut = 1;
    const float *dout; // (N, OC)
    size_t OC;
    __device__ void operator()(size_t n, size_t c, float *v) const { v[0] = dout[n * OC + c]; }
};

/* ---- entry points -------------------------------------------------------------------------------------------- */

static fm_status check_sizes(const char *op, int N, int C, int OC)
{
    if (N < 0 || C < 0 || OC < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: negative size (N=%d, C=%d, OC=%d)", op, N, C, OC);
    return FM_OK;
}

extern "C" fm_status fm_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                                            int C, int OC)
{
    FM_TRY(check_sizes("linear_forward", N, C, OC));
    if (N == 0 || OC == 0)
        return FM_OK;
    if (!out || (C > 0 && (!inp || !weight)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda linear_forward: NULL %s", !out ? "out" : !inp ? "inp" : "weight");
    if (C == 0)
        return FM_LAUNCH_1D(fill_rows_kernel, (size_t)N * (size_t)OC, out, bias, (size_t)N, (size_t)OC);
    return lt_gemm(1, 0, OC, N, C, weight, C, inp, C, 0.0f, out, OC, bias);
}

extern "C" fm_status fm_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                             const float *inp, const float *weight, int N, int C, int OC)
{
    FM_TRY(check_sizes("linear_backward", N, C, OC));
    if (N == 0 || OC == 0)
        return FM_OK; /* no output, so nothing flows back */
    if (!dout)
        return fm_error(FM_ERR_INVALID_ARG, "cuda linear_backward: NULL dout");
    if (C > 0 && ((dinp && !weight) || (dweight && !inp)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda linear_backward: NULL %s", dinp && !weight ? "weight" : "inp");
    /* dbias first: its partials use the workspace, which the GEMMs below may then reuse (stream order). */
    if (dbias)
        FM_TRY(fm_colsum("linear dbias", dbias, (float *)NULL, dout_column{dout, (size_t)OC}, (size_t)N, (size_t)OC));
    if (dinp && C > 0)
        FM_TRY(lt_gemm(0, 0, C, N, OC, weight, C, dout, OC, 1.0f, dinp, C, NULL));
    if (dweight && C > 0)
        FM_TRY(lt_gemm(0, 1, C, OC, N, inp, C, dout, OC, 1.0f, dweight, C, NULL));
    return FM_OK;
}
