/* Tensor-level dispatch of the symmetric InfoNCE (CLIP) loss: img, txt (N, D), probs (N, N) each, loss
 * and logit_scale scalars (0-dim or (1)). CUDA tensors run kernels/infonce.cu, which reads logit_scale on
 * the device (there a NaN or Inf logit_scale is not refused: it makes the loss NaN). */
#include <math.h>

#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* Checks shared by forward and backward; gives N and D. */
static fm_status infonce_sizes(const char *op, const fm_tensor *img, const fm_tensor *txt, const fm_tensor *probs_i2t,
                               const fm_tensor *probs_t2i, const fm_tensor *logit_scale, int *N, int *D)
{
    FM_TRY(fm_op_check_shape(op, "img", img, 2, (const int64_t[]){-1, -1}));
    FM_TRY(fm_op_check_same_shape(op, "txt", txt, "img", img));
    if (img->shape[0] < 1)
        return fm_error(FM_ERR_SHAPE, "%s: img has no rows; the loss needs at least one image-text pair", op);
    const int64_t n = img->shape[0];
    FM_TRY(fm_op_check_shape(op, "probs_i2t", probs_i2t, 2, (const int64_t[]){n, n}));
    FM_TRY(fm_op_check_shape(op, "probs_t2i", probs_t2i, 2, (const int64_t[]){n, n}));
    FM_TRY(fm_op_check_scalar(op, "logit_scale", logit_scale));
    FM_TRY(fm_op_to_int(op, "N", n, N));
    FM_TRY(fm_op_to_int(op, "D", img->shape[1], D));
    return FM_OK;
}

/* Reads the logit scale from host memory; a NaN or Inf would make every output NaN. */
static fm_status read_logit_scale(const char *op, const fm_tensor *logit_scale, float *out)
{
    const float ls = *(const float *)logit_scale->data;
    if (!isfinite(ls))
        return fm_error(FM_ERR_NOT_FINITE, "%s: logit_scale is %g", op, (double)ls);
    *out = ls;
    return FM_OK;
}

fm_status fm_infonce_forward(fm_tensor *loss, fm_tensor *probs_i2t, fm_tensor *probs_t2i, const fm_tensor *img,
                             const fm_tensor *txt, const fm_tensor *logit_scale)
{
    static const char op[] = "infonce_forward";
    const fm_op_arg args[] = {
        FM_OP_F32("loss", loss),
        FM_OP_F32("probs_i2t", probs_i2t),
        FM_OP_F32("probs_t2i", probs_t2i),
        FM_OP_F32("img", img),
        FM_OP_F32("txt", txt),
        FM_OP_F32("logit_scale", logit_scale),
    };
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, D = 0;
    FM_TRY(infonce_sizes(op, img, txt, probs_i2t, probs_t2i, logit_scale, &N, &D));
    FM_TRY(fm_op_check_scalar(op, "loss", loss));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_infonce_forward(loss->data, probs_i2t->data, probs_t2i->data, img->data, txt->data,
                                       logit_scale->data, N, D);
#else
        return fm_op_no_cuda(op);
#endif
    }
    float ls = 0.0f;
    FM_TRY(read_logit_scale(op, logit_scale, &ls));
    fm_cpu_infonce_forward(loss->data, probs_i2t->data, probs_t2i->data, img->data, txt->data, ls, N, D);
    return FM_OK;
}

fm_status fm_infonce_backward(fm_tensor *dimg, fm_tensor *dtxt, fm_tensor *dlogit_scale, const fm_tensor *img,
                              const fm_tensor *txt, const fm_tensor *probs_i2t, const fm_tensor *probs_t2i,
                              const fm_tensor *logit_scale, float dloss)
{
    static const char op[] = "infonce_backward";
    const fm_op_arg args[] = {
        FM_OP_F32_OPT("dimg", dimg),
        FM_OP_F32_OPT("dtxt", dtxt),
        FM_OP_F32_OPT("dlogit_scale", dlogit_scale),
        FM_OP_F32("img", img),
        FM_OP_F32("txt", txt),
        FM_OP_F32("probs_i2t", probs_i2t),
        FM_OP_F32("probs_t2i", probs_t2i),
        FM_OP_F32("logit_scale", logit_scale),
    };
    fm_device dev = FM_DEVICE_CPU;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    int N = 0, D = 0;
    FM_TRY(infonce_sizes(op, img, txt, probs_i2t, probs_t2i, logit_scale, &N, &D));
    if (dimg)
        FM_TRY(fm_op_check_same_shape(op, "dimg", dimg, "img", img));
    if (dtxt)
        FM_TRY(fm_op_check_same_shape(op, "dtxt", dtxt, "txt", txt));
    if (dlogit_scale)
        FM_TRY(fm_op_check_scalar(op, "dlogit_scale", dlogit_scale));
    if (!dimg && !dtxt && !dlogit_scale)
        return FM_OK;
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_infonce_backward(dimg ? dimg->data : NULL, dtxt ? dtxt->data : NULL,
                                        dlogit_scale ? dlogit_scale->data : NULL, img->data, txt->data, probs_i2t->data,
                                        probs_t2i->data, logit_scale->data, N, D, dloss);
#else
        return fm_op_no_cuda(op);
#endif
    }
    float ls = 0.0f;
    FM_TRY(read_logit_scale(op, logit_scale, &ls));
    fm_cpu_infonce_backward(dimg ? dimg->data : NULL, dtxt ? dtxt->data : NULL,
                            dlogit_scale ? dlogit_scale->data : NULL, img->data, txt->data, probs_i2t->data,
                            probs_t2i->data, ls, N, D, dloss);
    return FM_OK;
}
