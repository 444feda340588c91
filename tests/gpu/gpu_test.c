/* Helpers of the gpu tests (gpu_test.h): bf16 on the host, and device buffers through fedmm's CUDA runtime. */
#include "gpu_test.h"

#ifdef FEDMM_WITH_CUDA
#include "cuda/runtime.h"
#endif

uint16_t fm_test_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float fm_test_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#ifdef FEDMM_WITH_CUDA
float *fm_test_dev_alloc(size_t n)
{
    void *d = NULL;
    FM_CHECK_OK(fm_cuda_malloc(&d, (n ? n : 1) * sizeof(float)));
    return d;
}

float *fm_test_dev_upload(const float *h, size_t n)
{
    float *d = fm_test_dev_alloc(n);
    FM_CHECK_OK(fm_cuda_memcpy(d, h, n * sizeof(float), 0));
    return d;
}

float *fm_test_dev_poisoned(size_t n)
{
    float *d = fm_test_dev_alloc(n);
    FM_CHECK_OK(fm_cuda_memset(d, 0xff, n * sizeof(float)));
    return d;
}

float *fm_test_dev_download(const float *d, size_t n)
{
    float *h = fm_test_alloc((n ? n : 1) * sizeof(float));
    FM_CHECK_OK(fm_cuda_memcpy(h, d, n * sizeof(float), 1));
    return h;
}

void fm_test_dev_expect_close(const char *what, size_t n, const float *dev, const float *cpu, double rtol, double atol)
{
    float *got = fm_test_dev_download(dev, n);
    double *want = fm_test_alloc(n * sizeof(double));
    fm_test_to_double(want, cpu, n);
    char label[160];
    snprintf(label, sizeof label, "%s (n = %zu)", what, n);
    fm_test_assert_close(label, got, want, n, rtol, atol);
    free(want);
    free(got);
}

int fm_test_dev_teardown(void **state)
{
    (void)state;
    return fm_cuda_shutdown() == FM_OK ? 0 : -1;
}
#endif
