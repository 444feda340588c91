/* CUDA twin of src/cpu/embedding.c: out[b, t] = wte[tokens[b, t]] + wpe[t]. The token ids live on the device,
 * so the kernels check them as they read them: an id outside [0, V) is never dereferenced, and the first such
 * position is recorded in a device word that the host reads back after the launch (FM_ERR_RANGE). That read
 * waits for the stream: one synchronisation per call, the price of a clear error for bad ids.
 *
 * Backward: dwpe[t] += Σ_b dout[b, t] is a fixed-order loop over b per (t, c): deterministic. dwte scatters by
 * token id, and repeated ids in a batch collide; it uses float atomicAdd (as llm.c's simple kernels do), so its
 * sums for repeated ids may differ in the last bits from run to run. A deterministic scatter needs the
 * positions grouped by id (a device sort), which this first version does not do. Backward takes V (the CPU
 * twin does not) because it must check the ids it scatters by. */
#include <stdint.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"

/* The smallest flat position (b·T + t) of an out-of-range id seen by the last launch; UINT64_MAX if none.
 * Part of the device context: like everything on fedmm's stream, used by one host thread at a time. */
static __device__ unsigned long long bad_position;

static __global__ void reset_bad_position_kernel(void) { bad_position = ~0ull; }

static __device__ __forceinline__ bool token_ok(int32_t id, int V, size_t bt)
{
    if (id >= 0 && id < V)
        return true;
    atomicMin(&bad_position, (unsigned long long)bt);
    return false;
}

static __global__ void embedding_forward_kernel(float *out,            // (B, T, C)
                                                const int32_t *tokens, // (B, T)
                                                const float *wte,      // (V, C)
                                                const float *wpe,      // (T_max, C)
                                                size_t BT, size_t T, size_t C, int V)
{
    for (FM_GRID_STRIDE(i, BT * C)) {
        size_t bt = i / C, c = i % C;
        int32_t id = tokens[bt];
        /* A row with a bad id is left as it was (the caller gets FM_ERR_RANGE). */
        if (token_ok(id, V, bt))
            out[i] = wte[(size_t)id * C + c] + wpe[(bt % T) * C + c];
    }
}

static __global__ void embedding_backward_dwte_kernel(float *dwte,           // (V, C), accumulated
                                                      const float *dout,     // (B, T, C)
                                                      const int32_t *tokens, // (B, T)
                                                      size_t BT, size_t C, int V)
{
    for (FM_GRID_STRIDE(i, BT * C)) {
        size_t bt = i / C, c = i % C;
        int32_t id = tokens[bt];
        if (token_ok(id, V, bt))
            atomicAdd(&dwte[(size_t)id * C + c], dout[i]);
    }
}

static __global__ void embedding_backward_dwpe_kernel(float *dwpe,       // (T_max, C), accumulated
                                                      const float *dout, // (B, T, C)
                                                      size_t B, size_t T, size_t C)
{
    for (FM_GRID_STRIDE(i, T * C)) {
        float s = 0.0f;
        for (size_t b = 0; b < B; b++)
            s += dout[b * T * C + i];
        dwpe[i] += s;
    }
}

/* Reads the flag back after a checking kernel (waits for the stream); FM_ERR_RANGE names the first bad
 * position and its id. */
static fm_status read_bad_position(const char *op, const int32_t *tokens, int T, int V)
{
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    unsigned long long bad = 0;
    FM_CUDA_TRY(cudaMemcpyFromSymbolAsync(&bad, bad_position, sizeof bad, 0, cudaMemcpyDeviceToHost, stream));
    FM_CUDA_TRY(cudaStreamSynchronize(stream));
    if (bad == ~0ull)
        return FM_OK;
    int32_t id = 0;
    FM_CUDA_TRY(cudaMemcpyAsync(&id, tokens + bad, sizeof id, cudaMemcpyDeviceToHost, stream));
    FM_CUDA_TRY(cudaStreamSynchronize(stream));
    return fm_error(FM_ERR_RANGE, "cuda %s: token id %d at (b=%llu, t=%llu) is outside [0, %d)", op, (int)id,
                    bad / (unsigned long long)T, bad % (unsigned long long)T, V);
}

static fm_status reset_bad_position(void)
{
    cudaStream_t stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    reset_bad_position_kernel<<<1, 1, 0, stream>>>();
    return FM_CUDA_LAUNCH_CHECK("reset_bad_position_kernel");
}

extern "C" fm_status fm_cuda_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                                               int B, int T, int C, int V)
{
    if (B < 0 || T < 0 || C < 0 || V < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda embedding_forward: negative size (B=%d, T=%d, C=%d, V=%d)", B, T, C,
                        V);
    if (B == 0 || T == 0)
        return FM_OK;
    if (!tokens || (C > 0 && (!out || !wte || !wpe)))
        return fm_error(FM_ERR_INVALID_ARG, "cuda embedding_forward: NULL %s",
                        !tokens ? "tokens"
                        : !out  ? "out"
                        : !wte  ? "wte"
                                : "wpe");
    if (C == 0)
        return FM_OK; /* no columns, no threads to look at the ids: unlike the CPU reference, none is checked */
    const size_t BT = (size_t)B * (size_t)T;
    FM_TRY(reset_bad_position());
    FM_TRY(FM_LAUNCH_1D(embedding_forward_kernel, BT * (size_t)C, out, tokens, wte, wpe, BT, (size_t)T, (size_t)C, V));
    return read_bad_position("embedding_forward", tokens, T, V);
}

extern "C" fm_status fm_cuda_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                                                int B, int T, int C, int V)
{
    if (B < 0 || T < 0 || C < 0 || V < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda embedding_backward: negative size (B=%d, T=%d, C=%d, V=%d)", B, T, C,
                        V);
    if (B == 0 || T == 0 || C == 0 || (!dwte && !dwpe))
        return FM_OK;
    if (!dout || (dwte && !tokens))
        return fm_error(FM_ERR_INVALID_ARG, "cuda embedding_backward: NULL %s", !dout ? "dout" : "tokens");
    const size_t BT = (size_t)B * (size_t)T;
    if (dwpe)
        FM_TRY(FM_LAUNCH_1D(embedding_backward_dwpe_kernel, (size_t)T * (size_t)C, dwpe, dout, (size_t)B, (size_t)T,
                            (size_t)C));
    if (!dwte)
        return FM_OK;
    FM_TRY(reset_bad_position());
    FM_TRY(FM_LAUNCH_1D(embedding_backward_dwte_kernel, BT * (size_t)C, dwte, dout, tokens, BT, (size_t)C, V));
    return read_bad_position("embedding_backward", tokens, T, V);
}
