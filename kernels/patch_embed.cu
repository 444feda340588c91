/* CUDA twin of src/cpu/patch_embed.c: the ViT patch embedding, a P×P convolution with stride P, as im2col (one
 * row of Cin·P·P values per patch, saved for backward) followed by the linear layer's cuBLASLt GEMM.
 * Backward: dweight and dbias through the linear backward on the saved columns; dimg through one fused
 * kernel that computes each pixel's entry of dcols = dout · W and adds it to the pixel it came from (patches
 * do not overlap, so every pixel belongs to exactly one (patch, column) pair and no two threads write one
 * pixel). That kernel is a plain dot product per pixel, not a tuned GEMM: the image gradient serves checks
 * and attacks on inputs, not training, where images are data. */
#include "cuda/launch.cuh"
#include "kernels/cuda_ops.h"

/* Geometry of one call: patches per image row (NPW) and per image (NP), K = Cin·P·P. */
struct pe_geom {
    size_t Cin, H, W, P, NPW, NP, K;
};

static pe_geom make_geom(int Cin, int H, int W, int P)
{
    pe_geom g;
    g.Cin = (size_t)Cin;
    g.H = (size_t)H;
    g.W = (size_t)W;
    g.P = (size_t)P;
    g.NPW = g.W / g.P;
    g.NP = (g.H / g.P) * g.NPW;
    g.K = g.Cin * g.P * g.P;
    return g;
}

/* Pixel (b, ci, y, x) that column k = (ci·P + ky)·P + kx of patch row r = b·NP + py·NPW + px reads. */
static __device__ __forceinline__ size_t pixel_index(size_t r, size_t k, const pe_geom &g)
{
    size_t PP = g.P * g.P;
    size_t b = r / g.NP, p = r % g.NP, py = p / g.NPW, px = p % g.NPW;
    size_t ci = k / PP, ky = (k % PP) / g.P, kx = k % g.P;
    return ((b * g.Cin + ci) * g.H + py * g.P + ky) * g.W + px * g.P + kx;
}

static __global__ void im2col_kernel(float *cols,      // (B·NP, K)
                                     const float *img, // (B, Cin, H, W)
                                     size_t rows, pe_geom g)
{
    for (FM_GRID_STRIDE(i, rows * g.K))
        cols[i] = img[pixel_index(i / g.K, i % g.K, g)];
}

/* dimg[pixel] += Σ_c dout[r, c] · W[c, k] for the (r, k) the pixel belongs to. */
static __global__ void col2im_dimg_kernel(float *dimg,         // (B, Cin, H, W), accumulated
                                          const float *dout,   // (B·NP, C)
                                          const float *weight, // (C, K)
                                          size_t pixels, size_t C, pe_geom g)
{
    for (FM_GRID_STRIDE(i, pixels)) {
        size_t x = i % g.W, y = (i / g.W) % g.H, ci = (i / (g.W * g.H)) % g.Cin, b = i / (g.W * g.H * g.Cin);
        size_t r = b * g.NP + (y / g.P) * g.NPW + x / g.P;
        size_t k = (ci * g.P + y % g.P) * g.P + x % g.P;
        const float *dy = dout + r * C;
        float s = 0.0f;
        for (size_t c = 0; c < C; c++)
            s += dy[c] * weight[c * g.K + k];
        dimg[i] += s;
    }
}

/* Sizes as the dispatcher guarantees them; anything else is refused rather than computed on a floor. */
static fm_status check_geometry(const char *op, int B, int Cin, int H, int W, int P, int C)
{
    if (B < 0 || Cin < 0 || H < 0 || W < 0 || P < 1 || C < 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: bad sizes (B=%d, Cin=%d, H=%d, W=%d, P=%d, C=%d)", op, B, Cin, H,
                        W, P, C);
    if (H % P != 0 || W % P != 0)
        return fm_error(FM_ERR_INVALID_ARG, "cuda %s: H=%d and W=%d must be multiples of the patch size P=%d", op, H, W,
                        P);
    if ((size_t)B * (size_t)(H / P) * (size_t)(W / P) > 0x7fffffffu ||
        (size_t)Cin * (size_t)P * (size_t)P > 0x7fffffffu)
        return fm_error(FM_ERR_RANGE, "cuda %s: B·NP or Cin·P·P exceeds INT_MAX", op);
    return FM_OK;
}

extern "C" fm_status fm_cuda_patch_embed_forward(float *out, float *cols, const float *img, const float *weight,
                                                 const float *bias, int B, int Cin, int H, int W, int P, int C)
{
    FM_TRY(check_geometry("patch_embed_forward", B, Cin, H, W, P, C));
    const pe_geom g = make_geom(Cin, H, W, P);
    const size_t rows = (size_t)B * g.NP;
    if (rows == 0 || g.K == 0)
        return FM_OK;
    if (!out || !cols || !img || !weight)
        return fm_error(FM_ERR_INVALID_ARG, "cuda patch_embed_forward: NULL %s",
                        !out    ? "out"
                        : !cols ? "cols"
                        : !img  ? "img"
                                : "weight");
    FM_TRY(FM_LAUNCH_1D(im2col_kernel, rows * g.K, cols, img, rows, g));
    return fm_cuda_linear_forward(out, cols, weight, bias, (int)rows, (int)g.K, C);
}

extern "C" fm_status fm_cuda_patch_embed_backward(float *dweight, float *dbias, float *dimg, const float *dout,
                                                  const float *cols, const float *weight, int B, int Cin, int H, int W,
                                                  int P, int C)
{
    FM_TRY(check_geometry("patch_embed_backward", B, Cin, H, W, P, C));
    const pe_geom g = make_geom(Cin, H, W, P);
    const size_t rows = (size_t)B * g.NP;
    if (rows == 0 || g.K == 0 || C == 0)
        return FM_OK;
    if (!dout || (dweight && !cols) || (dimg && !weight))
        return fm_error(FM_ERR_INVALID_ARG, "cuda patch_embed_backward: NULL %s",
                        !dout              ? "dout"
                        : dweight && !cols ? "cols"
                                           : "weight");
    FM_TRY(fm_cuda_linear_backward(NULL, dweight, dbias, dout, cols, weight, (int)rows, (int)g.K, C));
    if (!dimg)
        return FM_OK;
    return FM_LAUNCH_1D(col2im_dimg_kernel, rows * g.K, dimg, dout, weight, rows * g.K, (size_t)C, g);
}
