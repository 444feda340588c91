/* Tensor-level ViT patch embedding (P×P convolution, stride P, as im2col + GEMM): checks, then the CPU
 * reference or, in a CUDA build, the CUDA twin. */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

typedef struct pe_sizes {
    int B, Cin, H, W, P, C, NP, K;
} pe_sizes;

/* weight (C, Cin, P, P): C, Cin, P and K = Cin·P·P. */
static fm_status weight_sizes(const char *op, const fm_tensor *weight, pe_sizes *s)
{
    FM_TRY(fm_op_check_shape(op, "weight", weight, 4, (const int64_t[]){-1, -1, -1, -1}));
    if (weight->shape[2] != weight->shape[3] || weight->shape[2] < 1) {
        char buf[128];
        return fm_error(FM_ERR_SHAPE, "%s: weight has shape %s, expected (C, Cin, P, P) with square P >= 1", op,
                        fm_tensor_shape_str(weight, buf, sizeof buf));
    }
    FM_TRY(fm_op_to_int(op, "C (embedding width)", weight->shape[0], &s->C));
    FM_TRY(fm_op_to_int(op, "Cin (image channels)", weight->shape[1], &s->Cin));
    FM_TRY(fm_op_to_int(op, "P (patch size)", weight->shape[2], &s->P));
    return fm_op_to_int(op, "K = Cin*P*P", weight->shape[1] * weight->shape[2] * weight->shape[3], &s->K);
}

/* img (B, Cin, H, W) with H, W multiples of P: B, H, W and NP. */
static fm_status image_sizes(const char *op, const char *name, const fm_tensor *img, pe_sizes *s)
{
    FM_TRY(fm_op_check_shape(op, name, img, 4, (const int64_t[]){-1, s->Cin, -1, -1}));
    int64_t H = img->shape[2], W = img->shape[3], P = s->P;
    if (P < 1) /* weight_sizes() has already refused this; the guard keeps the divisions below visibly safe */
        return fm_error(FM_ERR_INTERNAL, "%s: patch size %lld", op, (long long)P);
    if (H % P != 0 || W % P != 0 || H == 0 || W == 0) {
        char buf[128];
        return fm_error(FM_ERR_SHAPE, "%s: %s has shape %s; H and W must be positive multiples of the patch size %d",
                        op, name, fm_tensor_shape_str(img, buf, sizeof buf), s->P);
    }
    FM_TRY(fm_op_to_int(op, "B (images)", img->shape[0], &s->B));
    FM_TRY(fm_op_to_int(op, "H (image height)", H, &s->H));
    FM_TRY(fm_op_to_int(op, "W (image width)", W, &s->W));
    FM_TRY(fm_op_to_int(op, "NP (patches per image)", (H / P) * (W / P), &s->NP));
    int rows;
    return fm_op_to_int(op, "B*NP (patch rows)", (int64_t)s->B * s->NP, &rows);
}

fm_status fm_patch_embed_forward(fm_tensor *out, fm_tensor *cols, const fm_tensor *img, const fm_tensor *weight,
                                 const fm_tensor *bias)
{
    static const char op[] = "patch_embed_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_F32("cols", cols), FM_OP_F32("img", img),
                              FM_OP_F32("weight", weight), FM_OP_F32_OPT("bias", bias)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    pe_sizes s = {0};
    FM_TRY(weight_sizes(op, weight, &s));
    FM_TRY(image_sizes(op, "img", img, &s));
    if (bias)
        FM_TRY(fm_op_check_shape(op, "bias", bias, 1, (const int64_t[]){s.C}));
    FM_TRY(fm_op_check_shape(op, "cols", cols, 2, (const int64_t[]){(int64_t)s.B * s.NP, s.K}));
    FM_TRY(fm_op_check_shape(op, "out", out, 3, (const int64_t[]){s.B, s.NP, s.C}));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_patch_embed_forward(out->data, cols->data, img->data, weight->data, bias ? bias->data : NULL,
                                           s.B, s.Cin, s.H, s.W, s.P, s.C);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_patch_embed_forward(out->data, cols->data, img->data, weight->data, bias ? bias->data : NULL, s.B, s.Cin,
                               s.H, s.W, s.P, s.C);
    return FM_OK;
}

fm_status fm_patch_embed_backward(fm_tensor *dweight, fm_tensor *dbias, fm_tensor *dimg, const fm_tensor *dout,
                                  const fm_tensor *cols, const fm_tensor *weight)
{
    static const char op[] = "patch_embed_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dweight", dweight), FM_OP_F32_OPT("dbias", dbias),
                              FM_OP_F32_OPT("dimg", dimg),       FM_OP_F32("dout", dout),
                              FM_OP_F32("cols", cols),           FM_OP_F32("weight", weight)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    pe_sizes s = {0};
    FM_TRY(weight_sizes(op, weight, &s));
    FM_TRY(fm_op_check_shape(op, "dout", dout, 3, (const int64_t[]){-1, -1, s.C}));
    if (dimg) {
        FM_TRY(image_sizes(op, "dimg", dimg, &s));
        FM_TRY(fm_op_check_shape(op, "dout", dout, 3, (const int64_t[]){s.B, s.NP, s.C}));
    } else {
        /* Without the image only B·NP matters; any H × W with NP patches stands in for it. */
        FM_TRY(fm_op_to_int(op, "B (images)", dout->shape[0], &s.B));
        FM_TRY(fm_op_to_int(op, "NP (patches per image)", dout->shape[1], &s.NP));
        FM_TRY(fm_op_to_int(op, "W (image width)", (int64_t)s.NP * s.P, &s.W));
        s.H = s.P;
    }
    FM_TRY(fm_op_check_shape(op, "cols", cols, 2, (const int64_t[]){(int64_t)s.B * s.NP, s.K}));
    if (dweight)
        FM_TRY(fm_op_check_same_shape(op, "dweight", dweight, "weight", weight));
    if (dbias)
        FM_TRY(fm_op_check_shape(op, "dbias", dbias, 1, (const int64_t[]){s.C}));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_patch_embed_backward(dweight ? dweight->data : NULL, dbias ? dbias->data : NULL,
                                            dimg ? dimg->data : NULL, dout->data, cols->data, weight->data, s.B, s.Cin,
                                            s.H, s.W, s.P, s.C);
#else
        return fm_op_no_cuda(op);
#endif
    }
    fm_cpu_patch_embed_backward(dweight ? dweight->data : NULL, dbias ? dbias->data : NULL, dimg ? dimg->data : NULL,
                                dout->data, cols->data, weight->data, s.B, s.Cin, s.H, s.W, s.P, s.C);
    return FM_OK;
}
