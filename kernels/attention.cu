/* CUDA twin of src/cpu/attention.c: fused flash-attention forward and backward in fp32, with the causal
 * and key-padding masks. No B×NH×T×T tensor exists: forward keeps each query row's log-sum-exp (lse) and
 * backward recomputes the probabilities tile by tile from q, k and lse.
 *
 * Tiling. A block of ATT_THREADS = 256 threads owns ATT_ROWS = 32 rows of one (batch, head): query rows in
 * forward and in the dQ pass, key rows in the dK/dV pass. Each row belongs to a group of ATT_G = 8
 * consecutive lanes; lane g holds dims g, g+8, g+16, … of the row in registers (DPER = 4, 8 or 16 dims,
 * for head sizes up to 32, 64 and 128), so a dot product is DPER FMAs and three xor-shuffles, and a warp
 * (4 rows) reading one shared-memory row touches 8 consecutive words that the 4 groups share (no bank
 * conflicts). The other operand streams through shared memory in tiles of ATT_TILE = 32 rows × 8·DPER
 * floats (two such tiles: 8, 16 or 32 KiB, under the 48 KiB of static shared memory).
 *   forward: the block walks the key tiles its rows can see (a prefix, by both masks) with an online
 *            softmax per row — running max m, l = Σ exp(s − m), out = Σ exp(s − m)·v — one key at a time,
 *            as the CPU reference, and writes out = out/l and lse = m + log l (−inf, zeros for an empty row).
 *   dK, dV:  a block owns 32 keys and walks the query tiles that can see them (i ≥ first key when
 *            causal); per tile it stages q and dout and computes D_i = dout_i·out_i and lse_i; then for
 *            each query, p = exp(s − lse_i), dv += p·dout_i, dk += p·(dout_i·v_j − D_i)/√hs·q_i.
 *   dQ:      a block owns 32 queries and walks the visible key tiles: dq += p·(dout_i·v_j − D_i)/√hs·k_j.
 * Every gradient element is summed by one thread in a fixed order, so backward is deterministic (no
 * atomics), at the price of computing the scores twice (once per pass), as FlashAttention-2 does.
 *
 * Limits: head size C/NH ≤ 128 (FM_ERR_UNSUPPORTED beyond); B·NH < 2³¹ blocks in x, ⌈T/32⌉ ≤ 65535 in y
 * (T ≤ 2,097,120). fp32 FMAs on the CUDA cores: a correctness-first kernel, not yet a tensor-core one. */
#include <math.h>

#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"

#define ATT_G 8
#define ATT_ROWS 32
#define ATT_TILE 32
#define ATT_THREADS (ATT_G * ATT_ROWS)
#define ATT_MAX_HS 128

static_assert(ATT_TILE == ATT_ROWS, "the dK/dV pass computes one tile row's D per row group");

/* Keys visible to query i: a prefix [0, n) (see src/cpu/attention.c). */
static __device__ __forceinline__ int visible_keys(int i, int valid, int causal)
{
    return causal && i + 1 < valid ? i + 1 : valid;
}

/* Sum over the 8 lanes of a row group. Every lane ends with the same bits: the butterfly adds the same
 * pairs in each lane, and float addition is commutative. */
static __device__ __forceinline__ float group_sum(float x)
{
    x += __shfl_xor_sync(0xffffffffu, x, 4);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x;
}

/* Copies rows [r0, r0 + ATT_TILE) of one head (rows ≥ rend read as zeros) into a shared tile, coalesced:
 * consecutive threads take consecutive dims of a row. */
template <int HSMAX>
static __device__ __forceinline__ void load_tile(float (*tile)[HSMAX], const float *src, size_t base, int r0, int rend,
                                                 int C, int hs)
{
    for (int e = threadIdx.x; e < ATT_TILE * HSMAX; e += ATT_THREADS) {
        const int rr = e / HSMAX, d = e % HSMAX, r = r0 + rr;
        tile[rr][d] = r < rend && d < hs ? src[base + (size_t)r * C + d] : 0.0f;
    }
}

/* Loads this lane's dims of row r (zeros past hs or for a row that does not exist). */
template <int DPER>
static __device__ __forceinline__ void load_row(float (&x)[DPER], const float *src, size_t base, int r, bool ok,
                                                int C, int hs, int g)
{
#pragma unroll
    for (int t = 0; t < DPER; t++) {
        const int d = g + ATT_G * t;
        x[t] = ok && d < hs ? src[base + (size_t)r * C + d] : 0.0f;
    }
}

template <int DPER, int HSMAX>
static __device__ __forceinline__ float dot_tile_row(const float (&x)[DPER], const float (*tile)[HSMAX], int rr, int g)
{
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < DPER; t++)
        s += x[t] * tile[rr][g + ATT_G * t];
    return group_sum(s);
}

/* ---- forward --------------------------------------------------------------------------------------- */

template <int DPER>
static __global__ void __launch_bounds__(ATT_THREADS)
    attention_forward_kernel(float *out,              // (B, T, C)
                             float *lse,              // (B, NH, T)
                             const float *q,          // (B, T, C)
                             const float *k,          // (B, T, C)
                             const float *v,          // (B, T, C)
                             const int32_t *lengths,  // (B) or NULL
                             int causal, int T, int C, int NH, int hs, float scale)
{
    constexpr int HSMAX = ATT_G * DPER;
    __shared__ float Ks[ATT_TILE][HSMAX];
    __shared__ float Vs[ATT_TILE][HSMAX];
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int r = threadIdx.x / ATT_G, g = threadIdx.x % ATT_G;
    const int i0 = blockIdx.y * ATT_ROWS, i = i0 + r;
    const int valid = lengths ? lengths[b] : T;
    const bool row_ok = i < T;
    const int nkeys = row_ok ? visible_keys(i, valid, causal) : 0;
    /* keys any row of the block sees: those of its last row (the visible sets are nested prefixes) */
    const int kend = visible_keys(min(i0 + ATT_ROWS, T) - 1, valid, causal);
    const size_t base = (size_t)b * T * C + (size_t)h * hs;

    float qr[DPER], o[DPER];
    load_row<DPER>(qr, q, base, i, row_ok, C, hs, g);
#pragma unroll
    for (int t = 0; t < DPER; t++)
        o[t] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads(); /* the previous tile has been used by every row */
        load_tile<HSMAX>(Ks, k, base, k0, kend, C, hs);
        load_tile<HSMAX>(Vs, v, base, k0, kend, C, hs);
        __syncthreads();
        const int n = min(ATT_TILE, kend - k0);
        for (int jj = 0; jj < n; jj++) {
            /* every lane runs the shuffles; the mask is applied after */
            const float s = dot_tile_row<DPER, HSMAX>(qr, Ks, jj, g) * scale;
            if (k0 + jj >= nkeys)
                continue;
            if (s > m) {
                const float corr = expf(m - s); /* 0 for the first key (m = −inf) */
                l *= corr;
#pragma unroll
                for (int t = 0; t < DPER; t++)
                    o[t] *= corr;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
#pragma unroll
            for (int t = 0; t < DPER; t++)
                o[t] += p * Vs[jj][g + ATT_G * t];
        }
    }
    if (!row_ok)
        return;
    const float inv = nkeys > 0 ? 1.0f / l : 0.0f;
#pragma unroll
    for (int t = 0; t < DPER; t++) {
        const int d = g + ATT_G * t;
        if (d < hs)
            out[base + (size_t)i * C + d] = o[t] * inv;
    }
    if (g == 0)
        lse[(size_t)bh * T + i] = nkeys > 0 ? m + logf(l) : -INFINITY;
}

/* ---- backward: dK and dV, one block per 32 keys ----------------------------------------------------- */

template <int DPER>
static __global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_dkdv_kernel(float *dk,               // (B, T, C) or NULL, accumulated
                                   float *dv,               // (B, T, C) or NULL, accumulated
                                   const float *dout,       // (B, T, C)
                                   const float *q,          // (B, T, C)
                                   const float *k,          // (B, T, C)
                                   const float *v,          // (B, T, C)
                                   const float *out,        // (B, T, C)
                                   const float *lse,        // (B, NH, T)
                                   const int32_t *lengths,  // (B) or NULL
                                   int causal, int T, int C, int NH, int hs, float scale)
{
    constexpr int HSMAX = ATT_G * DPER;
    __shared__ float Qs[ATT_TILE][HSMAX];
    __shared__ float dOs[ATT_TILE][HSMAX];
    __shared__ float lse_s[ATT_TILE], D_s[ATT_TILE];
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int r = threadIdx.x / ATT_G, g = threadIdx.x % ATT_G;
    const int j0 = blockIdx.y * ATT_ROWS, j = j0 + r;
    const int valid = lengths ? lengths[b] : T;
    if (j0 >= valid)
        return; /* every key of the block is padding: no query sees it, its gradients stay (uniform exit) */
    const bool key_ok = j < valid;
    const size_t base = (size_t)b * T * C + (size_t)h * hs;

    float kr[DPER], vr[DPER], dkacc[DPER], dvacc[DPER];
    load_row<DPER>(kr, k, base, j, key_ok, C, hs, g);
    load_row<DPER>(vr, v, base, j, key_ok, C, hs, g);
#pragma unroll
    for (int t = 0; t < DPER; t++)
        dkacc[t] = dvacc[t] = 0.0f;

    /* under the causal mask queries before the block's first key see none of its keys */
    for (int i0 = causal ? j0 : 0; i0 < T; i0 += ATT_TILE) {
        __syncthreads();
        load_tile<HSMAX>(Qs, q, base, i0, T, C, hs);
        load_tile<HSMAX>(dOs, dout, base, i0, T, C, hs);
        {
            /* row group r computes D and fetches lse for query i0 + r */
            const int iq = i0 + r;
            float dor[DPER], orow[DPER];
            load_row<DPER>(dor, dout, base, iq, iq < T, C, hs, g);
            load_row<DPER>(orow, out, base, iq, iq < T, C, hs, g);
            float D = 0.0f;
#pragma unroll
            for (int t = 0; t < DPER; t++)
                D += dor[t] * orow[t];
            D = group_sum(D);
            if (g == 0) {
                D_s[r] = D;
                lse_s[r] = iq < T ? lse[(size_t)bh * T + iq] : -INFINITY;
            }
        }
        __syncthreads();
        const int n = min(ATT_TILE, T - i0);
        for (int ii = 0; ii < n; ii++) {
            const int i = i0 + ii;
            const float s = dot_tile_row<DPER, HSMAX>(kr, Qs, ii, g) * scale;
            const float dp = dot_tile_row<DPER, HSMAX>(vr, dOs, ii, g);
            const float lse_i = lse_s[ii];
            if (!key_ok || (causal && j > i) || !(lse_i > -INFINITY))
                continue;
            const float p = expf(s - lse_i);
            const float ds = p * (dp - D_s[ii]) * scale;
#pragma unroll
            for (int t = 0; t < DPER; t++) {
                dvacc[t] += p * dOs[ii][g + ATT_G * t];
                dkacc[t] += ds * Qs[ii][g + ATT_G * t];
            }
        }
    }
    if (!key_ok)
        return;
#pragma unroll
    for (int t = 0; t < DPER; t++) {
        const int d = g + ATT_G * t;
        if (d >= hs)
            continue;
        const size_t o = base + (size_t)j * C + d;
        if (dk)
            dk[o] += dkacc[t];
        if (dv)
            dv[o] += dvacc[t];
    }
}

/* ---- backward: dQ, one block per 32 queries --------------------------------------------------------- */

template <int DPER>
static __global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_dq_kernel(float *dq,               // (B, T, C), accumulated
                                 const float *dout,       // (B, T, C)
                                 const float *q,          // (B, T, C)
                                 const float *k,          // (B, T, C)
                                 const float *v,          // (B, T, C)
                                 const float *out,        // (B, T, C)
                                 const float *lse,        // (B, NH, T)
                                 const int32_t *lengths,  // (B) or NULL
                                 int causal, int T, int C, int NH, int hs, float scale)
{
    constexpr int HSMAX = ATT_G * DPER;
    __shared__ float Ks[ATT_TILE][HSMAX];
    __shared__ float Vs[ATT_TILE][HSMAX];
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int r = threadIdx.x / ATT_G, g = threadIdx.x % ATT_G;
    const int i0 = blockIdx.y * ATT_ROWS, i = i0 + r;
    const int valid = lengths ? lengths[b] : T;
    const bool row_ok = i < T;
    const int nkeys = row_ok ? visible_keys(i, valid, causal) : 0;
    const int kend = visible_keys(min(i0 + ATT_ROWS, T) - 1, valid, causal);
    const size_t base = (size_t)b * T * C + (size_t)h * hs;

    float qr[DPER], dor[DPER], orow[DPER], dqacc[DPER];
    load_row<DPER>(qr, q, base, i, row_ok, C, hs, g);
    load_row<DPER>(dor, dout, base, i, row_ok, C, hs, g);
    load_row<DPER>(orow, out, base, i, row_ok, C, hs, g);
    float D = 0.0f;
#pragma unroll
    for (int t = 0; t < DPER; t++) {
        D += dor[t] * orow[t];
        dqacc[t] = 0.0f;
    }
    D = group_sum(D);
    const float lse_i = row_ok ? lse[(size_t)bh * T + i] : -INFINITY;
    const bool live = nkeys > 0 && lse_i > -INFINITY;

    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        load_tile<HSMAX>(Ks, k, base, k0, kend, C, hs);
        load_tile<HSMAX>(Vs, v, base, k0, kend, C, hs);
        __syncthreads();
        const int n = min(ATT_TILE, kend - k0);
        for (int jj = 0; jj < n; jj++) {
            const float s = dot_tile_row<DPER, HSMAX>(qr, Ks, jj, g) * scale;
            const float dp = dot_tile_row<DPER, HSMAX>(dor, Vs, jj, g);
            if (!live || k0 + jj >= nkeys)
                continue;
            const float ds = expf(s - lse_i) * (dp - D) * scale;
#pragma unroll
            for (int t = 0; t < DPER; t++)
                dqacc[t] += ds * Ks[jj][g + ATT_G * t];
        }
    }
    if (!live)
        return;
#pragma unroll
    for (int t = 0; t < DPER; t++) {
        const int d = g + ATT_G * t;
        if (d < hs)
            dq[base + (size_t)i * C + d] += dqacc[t];
    }
}

/* ---- launchers ---------------------------------------------------------------------------------------- */

/* Checks the sizes and gives the grid, the head size and the dims per lane (0: nothing to launch). */
static fm_status attention_plan(const char *op, int B, int T, int C, int NH, dim3 *grid, int *hs, int *dper)
{
    *dper = 0;
    if (B < 0 || T < 0 || C < 0 || NH <= 0 || C % NH != 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: B = %d, T = %d, C = %d, NH = %d: expected sizes >= 0 and NH > 0 "
                        "dividing C", op, B, T, C, NH);
    *hs = C / NH;
    if (*hs > ATT_MAX_HS)
        return fm_error(FM_ERR_UNSUPPORTED, "cuda %s: head size %d is above the kernel's %d", op, *hs, ATT_MAX_HS);
    const long long tiles = ((long long)T + ATT_ROWS - 1) / ATT_ROWS, heads = (long long)B * NH;
    if (tiles > 65535 || heads > 0x7fffffffLL)
        return fm_error(FM_ERR_UNSUPPORTED, "cuda %s: B·NH = %lld and T = %d exceed the kernel's grid", op, heads, T);
    if (B == 0 || T == 0 || *hs == 0)
        return FM_OK;
    *grid = dim3((unsigned)heads, (unsigned)tiles, 1);
    *dper = *hs <= 32 ? 4 : *hs <= 64 ? 8 : 16;
    return FM_OK;
}

template <int DPER>
static fm_status forward_launch(dim3 grid, cudaStream_t stream, float *out, float *lse, const float *q, const float *k,
                                const float *v, const int32_t *lengths, int causal, int T, int C, int NH, int hs,
                                float scale)
{
    attention_forward_kernel<DPER><<<grid, ATT_THREADS, 0, stream>>>(out, lse, q, k, v, lengths, causal, T, C, NH, hs,
                                                                      scale);
    return FM_CUDA_LAUNCH_CHECK("attention_forward_kernel");
}

extern "C" fm_status fm_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                               const int32_t *lengths, int causal, int B, int T, int C, int NH)
{
    dim3 grid;
    int hs = 0, dper = 0;
    FM_TRY(attention_plan("attention_forward", B, T, C, NH, &grid, &hs, &dper));
    if (dper == 0)
        return FM_OK;
    if (!out || !lse || !q || !k || !v)
        return fm_error(FM_ERR_INVALID_ARG, "cuda attention_forward: NULL %s",
                        !out ? "out" : !lse ? "lse" : !q ? "q" : !k ? "k" : "v");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    const float scale = 1.0f / sqrtf((float)hs);
    switch (dper) {
    case 4: return forward_launch<4>(grid, stream, out, lse, q, k, v, lengths, causal, T, C, NH, hs, scale);
    case 8: return forward_launch<8>(grid, stream, out, lse, q, k, v, lengths, causal, T, C, NH, hs, scale);
    default: return forward_launch<16>(grid, stream, out, lse, q, k, v, lengths, causal, T, C, NH, hs, scale);
    }
}

template <int DPER>
static fm_status backward_launch(dim3 grid, cudaStream_t stream, float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v, const float *out, const float *lse,
                                 const int32_t *lengths, int causal, int T, int C, int NH, int hs, float scale)
{
    if (dk || dv) {
        attention_backward_dkdv_kernel<DPER>
            <<<grid, ATT_THREADS, 0, stream>>>(dk, dv, dout, q, k, v, out, lse, lengths, causal, T, C, NH, hs, scale);
        FM_TRY(FM_CUDA_LAUNCH_CHECK("attention_backward_dkdv_kernel"));
    }
    if (dq) {
        attention_backward_dq_kernel<DPER>
            <<<grid, ATT_THREADS, 0, stream>>>(dq, dout, q, k, v, out, lse, lengths, causal, T, C, NH, hs, scale);
        FM_TRY(FM_CUDA_LAUNCH_CHECK("attention_backward_dq_kernel"));
    }
    return FM_OK;
}

extern "C" fm_status fm_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                                const float *k, const float *v, const float *out, const float *lse,
                                                const int32_t *lengths, int causal, int B, int T, int C, int NH)
{
    dim3 grid;
    int hs = 0, dper = 0;
    FM_TRY(attention_plan("attention_backward", B, T, C, NH, &grid, &hs, &dper));
    if (dper == 0 || (!dq && !dk && !dv))
        return FM_OK;
    if (!dout || !q || !k || !v || !out || !lse)
        return fm_error(FM_ERR_INVALID_ARG, "cuda attention_backward: NULL %s",
                        !dout ? "dout" : !q ? "q" : !k ? "k" : !v ? "v" : !out ? "out" : "lse");
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    const float scale = 1.0f / sqrtf((float)hs);
    switch (dper) {
    case 4:
        return backward_launch<4>(grid, stream, dq, dk, dv, dout, q, k, v, out, lse, lengths, causal, T, C, NH, hs,
                                  scale);
    case 8:
        return backward_launch<8>(grid, stream, dq, dk, dv, dout, q, k, v, out, lse, lengths, causal, T, C, NH, hs,
                                  scale);
    default:
        return backward_launch<16>(grid, stream, dq, dk, dv, dout, q, k, v, out, lse, lengths, causal, T, C, NH, hs,
                                   scale);
    }
}
