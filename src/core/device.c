/* Device selection and memory on whichever device a tensor lives. The CUDA side is in cuda/runtime.c
 * and only linked in builds with FEDMM_WITH_CUDA. */
#include "fedmm/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/log.h"

#ifdef FEDMM_WITH_CUDA
#include "cuda/runtime.h"
#endif

fm_status fm_device_request_parse(const char *name, fm_device_request *out)
{
    if (name && strcmp(name, "auto") == 0)
        *out = FM_REQUEST_AUTO;
    else if (name && strcmp(name, "cpu") == 0)
        *out = FM_REQUEST_CPU;
    else if (name && strcmp(name, "cuda") == 0)
        *out = FM_REQUEST_CUDA;
    else
        return fm_error(FM_ERR_CONFIG, "device '%s': expected auto, cpu or cuda", name ? name : "(null)");
    return FM_OK;
}

int fm_build_has_cuda(void)
{
#ifdef FEDMM_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

int fm_cuda_device_count(char *why, size_t why_len)
{
#ifdef FEDMM_WITH_CUDA
    return fm_cuda_probe(why, why_len);
#else
    if (why && why_len)
        snprintf(why, why_len, "this fedmm was built without the CUDA backend");
    return 0;
#endif
}

fm_status fm_device_select(fm_device_request request, fm_device *out)
{
    char why[256] = "";
    switch (request) {
    case FM_REQUEST_CPU: *out = FM_DEVICE_CPU; return FM_OK;
    case FM_REQUEST_CUDA:
        if (fm_cuda_device_count(why, sizeof why) <= 0)
            return fm_error(FM_ERR_DEVICE, "--device cuda: no usable GPU: %s", why);
        *out = FM_DEVICE_CUDA;
        return FM_OK;
    case FM_REQUEST_AUTO:
        if (fm_cuda_device_count(why, sizeof why) > 0) {
            *out = FM_DEVICE_CUDA;
        } else {
            FM_INFO("running on the CPU: %s", why);
            *out = FM_DEVICE_CPU;
        }
        return FM_OK;
    }
    return fm_error(FM_ERR_INVALID_ARG, "device request %d", (int)request);
}

#ifndef FEDMM_WITH_CUDA
static fm_status no_cuda(void) { return fm_error(FM_ERR_DEVICE, "this build has no CUDA backend"); }
#endif

fm_status fm_device_alloc(fm_device device, size_t bytes, void **out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "device alloc: NULL out");
    if (device == FM_DEVICE_CPU) {
        void *p = NULL;
        /* 256-byte alignment matches the arena's and keeps SIMD loads aligned. */
        size_t rounded = (bytes + 255) / 256 * 256;
        if (rounded < bytes || posix_memalign(&p, 256, rounded ? rounded : 256) != 0)
            return fm_error(FM_ERR_NO_MEMORY, "host allocation of %zu bytes failed", bytes);
        *out = p;
        return FM_OK;
    }
#ifdef FEDMM_WITH_CUDA
    return fm_cuda_malloc(out, bytes);
#else
    return no_cuda();
#endif
}

void fm_device_free(fm_device device, void *ptr)
{
    if (!ptr)
        return;
    if (device == FM_DEVICE_CPU) {
        free(ptr);
        return;
    }
#ifdef FEDMM_WITH_CUDA
    fm_cuda_free(ptr);
#endif
}

fm_status fm_device_copy(void *dst, fm_device dst_device, const void *src, fm_device src_device, size_t bytes)
{
    if (bytes == 0)
        return FM_OK;
    if (!dst || !src)
        return fm_error(FM_ERR_INVALID_ARG, "device copy: NULL pointer");
    if (dst_device == FM_DEVICE_CPU && src_device == FM_DEVICE_CPU) {
        memmove(dst, src, bytes);
        return FM_OK;
    }
#ifdef FEDMM_WITH_CUDA
    int kind = src_device == FM_DEVICE_CPU ? 0 : dst_device == FM_DEVICE_CPU ? 1 : 2;
    return fm_cuda_memcpy(dst, src, bytes, kind);
#else
    return no_cuda();
#endif
}

fm_status fm_device_memset(fm_device device, void *ptr, int value, size_t bytes)
{
    if (bytes == 0)
        return FM_OK;
    if (!ptr)
        return fm_error(FM_ERR_INVALID_ARG, "device memset: NULL pointer");
    if (device == FM_DEVICE_CPU) {
        memset(ptr, value, bytes);
        return FM_OK;
    }
#ifdef FEDMM_WITH_CUDA
    return fm_cuda_memset(ptr, value, bytes);
#else
    return no_cuda();
#endif
}

fm_status fm_device_synchronize(fm_device device)
{
    if (device == FM_DEVICE_CPU)
        return FM_OK;
#ifdef FEDMM_WITH_CUDA
    return fm_cuda_synchronize();
#else
    return no_cuda();
#endif
}
