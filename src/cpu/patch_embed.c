/* CPU reference of the ViT patch embedding: a P×P convolution with stride P, computed as im2col (one row
 * of Cin·P·P values per patch) followed by the linear layer's GEMM. */
#include <stdlib.h>

#include <cblas.h>

#include "cpu/cpu_ops.h"

/* Patch rows per scratch tile in backward: bounds the scratch to TILE·Cin·P·P floats. */
#define PE_TILE_ROWS 256

/* Pixel (b, ci, y, x) that column k = (ci·P + ky)·P + kx of patch row r = b·NP + py·(W/P) + px reads. */
static size_t pixel_index(size_t r, size_t k, int Cin, int H, int W, int P)
{
    size_t np_w = (size_t)(W / P), np = (size_t)(H / P) * np_w, PP = (size_t)P * (size_t)P;
    size_t b = r / np, p = r % np, py = p / np_w, px = p % np_w;
    size_t ci = k / PP, ky = (k % PP) / (size_t)P, kx = k % (size_t)P;
    size_t y = py * (size_t)P + ky, x = px * (size_t)P + kx;
    return ((b * (size_t)Cin + ci) * (size_t)H + y) * (size_t)W + x;
}

void fm_cpu_patch_embed_forward(float *out, float *cols, const float *img, const float *weight, const float *bias,
                                int B, int Cin, int H, int W, int P, int C)
{
    if (B <= 0 || Cin <= 0 || P <= 0 || H < P || W < P)
        return;
    int NP = (H / P) * (W / P), K = Cin * P * P;
    size_t rows = (size_t)B * (size_t)NP;
#pragma omp parallel for schedule(static) if (rows * (size_t)K > 65536)
    for (size_t r = 0; r < rows; r++) {
        float *col = cols + r * (size_t)K;
        /* Each run of P columns is one contiguous stretch of an image row. */
        for (size_t k = 0; k < (size_t)K; k += (size_t)P) {
            const float *src = img + pixel_index(r, k, Cin, H, W, P);
            for (int kx = 0; kx < P; kx++)
                col[k + (size_t)kx] = src[kx];
        }
    }
    fm_cpu_linear_forward(out, cols, weight, bias, B * NP, K, C);
}

/* dimg += col2im(dcols) for patch rows [r0, r0 + nr); dcols holds those rows. Patches do not overlap
 * (stride P), so every row writes its own pixels and rows can run in parallel. */
static void col2im_add(float *dimg, const float *dcols, size_t r0, size_t nr, int Cin, int H, int W, int P)
{
    size_t K = (size_t)Cin * (size_t)P * (size_t)P;
#pragma omp parallel for schedule(static) if (nr * K > 65536)
    for (size_t i = 0; i < nr; i++) {
        const float *dcol = dcols + i * K;
        for (size_t k = 0; k < K; k += (size_t)P) {
            float *dst = dimg + pixel_index(r0 + i, k, Cin, H, W, P);
            for (int kx = 0; kx < P; kx++)
                dst[kx] += dcol[k + (size_t)kx];
        }
    }
}

void fm_cpu_patch_embed_backward(float *dweight, float *dbias, float *dimg, const float *dout, const float *cols,
                                 const float *weight, int B, int Cin, int H, int W, int P, int C)
{
    if (B <= 0 || Cin <= 0 || P <= 0 || H < P || W < P || C <= 0)
        return;
    int NP = (H / P) * (W / P), K = Cin * P * P;
    size_t rows = (size_t)B * (size_t)NP;
    fm_cpu_linear_backward(NULL, dweight, dbias, dout, cols, weight, (int)rows, K, C);
    if (!dimg)
        return;
    /* dcols = dout · W, a tile of patch rows at a time, then scattered back onto the image. */
    size_t tile = rows < PE_TILE_ROWS ? rows : PE_TILE_ROWS;
    float *dcols = malloc(tile * (size_t)K * sizeof(float));
    if (dcols) {
        for (size_t r0 = 0; r0 < rows; r0 += tile) {
            size_t nr = rows - r0 < tile ? rows - r0 : tile;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, K, C, 1.0f, dout + r0 * (size_t)C, C,
                        weight, K, 0.0f, dcols, K);
            col2im_add(dimg, dcols, r0, nr, Cin, H, W, P);
        }
        free(dcols);
        return;
    }
    /* No memory for the scratch tile: this function cannot fail, so take the slow road with none. */
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *dy = dout + r * (size_t)C;
        for (size_t k = 0; k < (size_t)K; k++) {
            double s = 0.0;
            for (size_t c = 0; c < (size_t)C; c++)
                s += (double)dy[c] * weight[c * (size_t)K + k];
            dimg[pixel_index(r, k, Cin, H, W, P)] += (float)s;
        }
    }
}
