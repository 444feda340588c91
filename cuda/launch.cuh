/* Launching an elementwise kernel the one way fedmm does it: on fedmm's stream, a grid sized by
 * fm_cuda_grid_1d (kernels loop grid-stride over the rest), the launch checked at once. CUDA C++ only. */
#ifndef FEDMM_CUDA_LAUNCH_CUH
#define FEDMM_CUDA_LAUNCH_CUH

#include <cuda_runtime.h>

#include "cuda/runtime.h"

#define FM_BLOCK_1D 256u

/* Grid-stride loop over [0, n) with size_t indices: `for (FM_GRID_STRIDE(i, n)) { ... }`. */
#define FM_GRID_STRIDE(i, n)                                                              \
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                    \
    i += (size_t)gridDim.x * blockDim.x

/* Launches kernel(args...) over n items; n == 0 launches nothing. `name`, `file` and `line` name the
 * launch in the error message. Use through FM_LAUNCH_1D. */
template <typename... KernelArgs, typename... Args>
static inline fm_status fm_launch_1d(const char *name, const char *file, int line, void (*kernel)(KernelArgs...),
                                     size_t n, Args... args)
{
    if (n == 0)
        return FM_OK;
    cudaStream_t stream = nullptr;
    FM_TRY(fm_cuda_get_stream(&stream));
    unsigned grid = fm_cuda_grid_1d(n, FM_BLOCK_1D);
    kernel<<<grid, FM_BLOCK_1D, 0, stream>>>(args...);
    return fm_cuda_check_launch_at(name, file, line);
}

#define FM_LAUNCH_1D(kernel, n, ...) fm_launch_1d(#kernel, __FILE__, __LINE__, kernel, (n), __VA_ARGS__)

#endif
