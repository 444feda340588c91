/* CUDA twin of src/cpu/cross_entropy.c: softmax cross-entropy over C classes, averaged over the rows
 * whose target is not -1. Targets live on the device, so a first kernel validates them (and counts the
 * rows used) into a small device record that the others read: with a bad target, forward leaves the loss
 * and backward the gradient unwritten, and the launcher reads the record back to return FM_ERR_RANGE for
 * the first bad row. Reductions are deterministic (fixed trees in double). */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/reduce.cuh"

typedef struct ce_check {
    int n_used;    /* rows with target >= 0 */
    int bad_index; /* first row with a target outside [-1, C), or -1 */
    int bad_value;
} ce_check;

/* One block over all N targets. */
static __global__ void __launch_bounds__(FM_RED_BLOCK)
    ce_check_kernel(ce_check *chk, const int32_t *targets, int N, int C)
{
    __shared__ int used_sh[FM_RED_BLOCK], bad_sh[FM_RED_BLOCK];
    int used = 0, bad = 0x7fffffff;
    for (int i = threadIdx.x; i < N; i += FM_RED_BLOCK) {
        const int32_t t = targets[i];
        if (t < -1 || t >= C)
            bad = min(bad, i);
        else
            used += t >= 0;
    }
    used_sh[threadIdx.x] = used;
    bad_sh[threadIdx.x] = bad;
    __syncthreads();
    for (unsigned s = FM_RED_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            used_sh[threadIdx.x] += used_sh[threadIdx.x + s];
            bad_sh[threadIdx.x] = min(bad_sh[threadIdx.x], bad_sh[threadIdx.x + s]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const int first = bad_sh[0];
        chk->n_used = used_sh[0];
        chk->bad_index = first == 0x7fffffff ? -1 : first;
        chk->bad_value = first == 0x7fffffff ? 0 : targets[first];
    }
}

/* One block per row: probs and the row's loss term (0 for an ignored or bad target). */
static __global__ void __launch_bounds__(FM_RED_BLOCK)
    ce_rows_kernel(double *row_nll,         // (N)
                   float *probs,            // (N, C)
                   const float *logits,     // (N, C)
                   const int32_t *targets,  // (N)
                   int C)
{
    __shared__ float shf[FM_RED_BLOCK];
    __shared__ double shd[FM_RED_BLOCK];
    const size_t i = blockIdx.x, Cs = (size_t)C;
    const int32_t t = targets[i];
    const long long target = t >= 0 && t < C ? t : -1;
    const double nll = fm_softmax_row<FM_RED_BLOCK>(probs + i * Cs, logits + i * Cs, Cs, target, shf, shd);
    if (threadIdx.x == 0)
        row_nll[i] = nll;
}

static __global__ void __launch_bounds__(FM_RED_BLOCK)
    ce_loss_kernel(float *loss, const double *row_nll, const ce_check *chk, int N)
{
    __shared__ double sh[FM_RED_BLOCK];
    if (chk->bad_index >= 0)
        return; /* uniform over the block */
    double s = 0.0;
    for (int i = threadIdx.x; i < N; i += FM_RED_BLOCK)
        s += row_nll[i];
    s = fm_block_sum<FM_RED_BLOCK>(s, sh);
    if (threadIdx.x == 0)
        *loss = chk->n_used ? (float)(s / (double)chk->n_used) : 0.0f;
}

static __global__ void ce_backward_kernel(float *dlogits,          // (N, C), accumulated
                                          const float *probs,      // (N, C)
                                          const int32_t *targets,  // (N)
                                          const ce_check *chk, size_t n, int C, float dloss)
{
    if (chk->bad_index >= 0 || chk->n_used == 0)
        return;
    const float scale = (float)((double)dloss / (double)chk->n_used);
    for (FM_GRID_STRIDE(idx, n)) {
        const size_t i = idx / (size_t)C;
        const int c = (int)(idx % (size_t)C);
        const int32_t t = targets[i];
        if (t < 0)
            continue;
        dlogits[idx] += scale * (probs[idx] - (c == t ? 1.0f : 0.0f));
    }
}

static fm_status report(const char *op, const ce_check *chk, int C)
{
    if (chk->bad_index < 0)
        return FM_OK;
    return fm_error(FM_ERR_RANGE, "cuda %s: targets[%d] = %d is outside [-1, %d)", op, chk->bad_index, chk->bad_value,
                    C);
}

extern "C" fm_status fm_cuda_cross_entropy_forward(float *loss, float *probs, const float *logits,
                                                   const int32_t *targets, int N, int C)
{
    if (N < 0 || C < 1)
        return fm_error(FM_ERR_INVALID_ARG, "cuda cross_entropy_forward: N = %d, C = %d (need N >= 0, C >= 1)", N, C);
    if (!loss)
        return fm_error(FM_ERR_INVALID_ARG, "cuda cross_entropy_forward: NULL loss");
    if (N == 0)
        return fm_cuda_memset(loss, 0, sizeof(float));
    if (!probs || !logits || !targets)
        return fm_error(FM_ERR_INVALID_ARG, "cuda cross_entropy_forward: NULL %s",
                        !probs ? "probs" : !logits ? "logits" : "targets");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    void *scratch = nullptr;
    const size_t rows_bytes = (size_t)N * sizeof(double);
    FM_TRY(fm_scratch_alloc(&scratch, rows_bytes + sizeof(ce_check), stream));
    double *row_nll = (double *)scratch;
    ce_check *chk = (ce_check *)((char *)scratch + rows_bytes);
    ce_check_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(chk, targets, N, C);
    fm_status st = FM_CUDA_LAUNCH_CHECK("ce_check_kernel");
    if (st == FM_OK) {
        ce_rows_kernel<<<(unsigned)N, FM_RED_BLOCK, 0, stream>>>(row_nll, probs, logits, targets, C);
        st = FM_CUDA_LAUNCH_CHECK("ce_rows_kernel");
    }
    if (st == FM_OK) {
        ce_loss_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(loss, row_nll, chk, N);
        st = FM_CUDA_LAUNCH_CHECK("ce_loss_kernel");
    }
    ce_check host = {0, -1, 0};
    if (st == FM_OK)
        st = fm_cuda_memcpy(&host, chk, sizeof host, 1);
    st = fm_scratch_free(scratch, stream, st);
    return st != FM_OK ? st : report("cross_entropy_forward", &host, C);
}

extern "C" fm_status fm_cuda_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *targets, int N,
                                                    int C, float dloss)
{
    if (N < 0 || C < 1)
        return fm_error(FM_ERR_INVALID_ARG, "cuda cross_entropy_backward: N = %d, C = %d (need N >= 0, C >= 1)", N,
                        C);
    if (!dlogits || N == 0)
        return FM_OK;
    if (!probs || !targets)
        return fm_error(FM_ERR_INVALID_ARG, "cuda cross_entropy_backward: NULL %s", !probs ? "probs" : "targets");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    ce_check *chk = nullptr;
    FM_TRY(fm_scratch_alloc((void **)&chk, sizeof *chk, stream));
    ce_check_kernel<<<1, FM_RED_BLOCK, 0, stream>>>(chk, targets, N, C);
    fm_status st = FM_CUDA_LAUNCH_CHECK("ce_check_kernel");
    const size_t n = (size_t)N * (size_t)C;
    if (st == FM_OK)
        st = FM_LAUNCH_1D(ce_backward_kernel, n, dlogits, probs, targets, (const ce_check *)chk, n, C, dloss);
    ce_check host = {0, -1, 0};
    if (st == FM_OK)
        st = fm_cuda_memcpy(&host, chk, sizeof host, 1);
    st = fm_scratch_free(chk, stream, st);
    return st != FM_OK ? st : report("cross_entropy_backward", &host, C);
}
