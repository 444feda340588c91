/* Tensor-level token + position embedding: checks, then the CPU reference or, in a
 * CUDA build, the CUDA twin (which checks the token ids on the device). */
#include "fedmm/ops.h"

#include "cpu/cpu_ops.h"
#include "ops/dispatch.h"
#ifdef FEDMM_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

/* Checks tokens (B, T), a table `tab` (V, C) and positions `pos` (T_max ≥ T, C); returns B, T, C, V. */
static fm_status embedding_sizes(const char *op, const fm_tensor *tokens, const char *tab_name, const fm_tensor *tab,
                                 const char *pos_name, const fm_tensor *pos, int64_t C, int *B, int *T, int *V)
{
    FM_TRY(fm_op_check_shape(op, "tokens", tokens, 2, (const int64_t[]){-1, -1}));
    if (tab)
        FM_TRY(fm_op_check_shape(op, tab_name, tab, 2, (const int64_t[]){-1, C}));
    if (pos) {
        FM_TRY(fm_op_check_shape(op, pos_name, pos, 2, (const int64_t[]){-1, C}));
        if (pos->shape[0] < tokens->shape[1])
            return fm_error(FM_ERR_SHAPE, "%s: %s has %lld positions but tokens has T = %lld", op, pos_name,
                            (long long)pos->shape[0], (long long)tokens->shape[1]);
    }
    FM_TRY(fm_op_to_int(op, "B (rows of tokens)", tokens->shape[0], B));
    FM_TRY(fm_op_to_int(op, "T (columns of tokens)", tokens->shape[1], T));
    return fm_op_to_int(op, "V (vocabulary)", tab ? tab->shape[0] : 0, V);
}

fm_status fm_embedding_forward(fm_tensor *out, const fm_tensor *tokens, const fm_tensor *wte, const fm_tensor *wpe)
{
    static const char op[] = "embedding_forward";
    const fm_op_arg args[] = {FM_OP_F32("out", out), FM_OP_I32("tokens", tokens), FM_OP_F32("wte", wte),
                              FM_OP_F32("wpe", wpe)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_shape(op, "wte", wte, 2, (const int64_t[]){-1, -1}));
    int B = 0, T = 0, V = 0, C = 0;
    FM_TRY(embedding_sizes(op, tokens, "wte", wte, "wpe", wpe, wte->shape[1], &B, &T, &V));
    FM_TRY(fm_op_to_int(op, "C (embedding width)", wte->shape[1], &C));
    FM_TRY(fm_op_check_shape(op, "out", out, 3, (const int64_t[]){B, T, C}));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_embedding_forward(out->data, tokens->data, wte->data, wpe->data, B, T, C, V);
#else
        return fm_op_no_cuda(op);
#endif
    }
    return fm_cpu_embedding_forward(out->data, tokens->data, wte->data, wpe->data, B, T, C, V);
}

fm_status fm_embedding_backward(fm_tensor *dwte, fm_tensor *dwpe, const fm_tensor *dout, const fm_tensor *tokens)
{
    static const char op[] = "embedding_backward";
    const fm_op_arg args[] = {FM_OP_F32_OPT("dwte", dwte), FM_OP_F32_OPT("dwpe", dwpe), FM_OP_F32("dout", dout),
                              FM_OP_I32("tokens", tokens)};
    fm_device dev;
    FM_TRY(fm_op_check_args(op, args, FM_OP_NARGS(args), &dev));
    FM_TRY(fm_op_check_shape(op, "tokens", tokens, 2, (const int64_t[]){-1, -1}));
    FM_TRY(fm_op_check_shape(op, "dout", dout, 3, (const int64_t[]){tokens->shape[0], tokens->shape[1], -1}));
    int B = 0, T = 0, V = 0, C = 0;
    FM_TRY(embedding_sizes(op, tokens, "dwte", dwte, "dwpe", dwpe, dout->shape[2], &B, &T, &V));
    FM_TRY(fm_op_to_int(op, "C (embedding width)", dout->shape[2], &C));
    if (dev == FM_DEVICE_CUDA) {
#ifdef FEDMM_WITH_CUDA
        return fm_cuda_embedding_backward(dwte ? dwte->data : NULL, dwpe ? dwpe->data : NULL, dout->data, tokens->data,
                                          B, T, C, V);
#else
        return fm_op_no_cuda(op);
#endif
    }
    if (dwte) {
        /* The CPU kernel scatters into dwte by token id, so an id out of range would write out of bounds. */
        const int32_t *ids = tokens->data;
        for (size_t i = 0; i < (size_t)B * (size_t)T; i++) {
            if (ids[i] < 0 || ids[i] >= V)
                return fm_error(FM_ERR_RANGE, "%s: token id %d at (b=%zu, t=%zu) is outside [0, %d)", op, (int)ids[i],
                                i / (size_t)T, i % (size_t)T, V);
        }
    }
    fm_cpu_embedding_backward(dwte ? dwte->data : NULL, dwpe ? dwpe->data : NULL, dout->data, tokens->data, B, T, C);
    return FM_OK;
}
