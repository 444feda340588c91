/* The probe's one kernel launch and the list of architectures this build carries kernels for: a GPU
 * can be listed by the driver yet unable to run our code (no kernel image for its architecture, a
 * driver older than this runtime), and one empty launch is the cheapest way to find out. */
#include <cstdio>

#include <cuda_runtime.h>

#include "cuda/runtime.h"

static __global__ void probe_kernel(int *unused)
{
    if (unused)
        *unused = 0;
}

extern "C" int fm_cuda_probe_launch(void)
{
    probe_kernel<<<1, 1>>>(nullptr);
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess)
        err = cudaDeviceSynchronize();
    return (int)err;
}

namespace {
struct arch_text {
    char s[128];
};

arch_text make_arch_text()
{
    arch_text t = {};
#ifdef __CUDA_ARCH_LIST__
    /* nvcc defines __CUDA_ARCH_LIST__ as e.g. 800,900 (the virtual architectures, x10). */
    static const int archs[] = {__CUDA_ARCH_LIST__};
    size_t used = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0] && used < sizeof t.s; i++) {
        int w = snprintf(t.s + used, sizeof t.s - used, "%ssm_%d", i ? "," : "", archs[i] / 10);
        if (w < 0)
            break;
        used += (size_t)w;
    }
#else
    snprintf(t.s, sizeof t.s, "unknown");
#endif
    return t;
}
} // namespace

extern "C" const char *fm_cuda_built_archs(void)
{
    /* A function-local static is initialised once, thread-safely (C++11). */
    static const arch_text text = make_arch_text();
    return text.s;
}
