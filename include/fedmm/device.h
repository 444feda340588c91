/* Which device runs fedmm's ops. The CUDA backend is used only when this build has it AND the
 * runtime finds a working GPU; any error or a count of zero means the CPU, with one line saying why. */
#ifndef FEDMM_DEVICE_H
#define FEDMM_DEVICE_H

#include <stddef.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_device_request { FM_REQUEST_AUTO = 0, FM_REQUEST_CPU, FM_REQUEST_CUDA } fm_device_request;

/* Parses "auto", "cpu", "cuda"; FM_ERR_CONFIG otherwise. */
fm_status fm_device_request_parse(const char *name, fm_device_request *out);

/* Whether this binary was built with the CUDA backend. */
int fm_build_has_cuda(void);

/* Probes for a usable GPU (cached after the first call). Returns the number of usable devices (0 when
 * none or when the build has no CUDA) and, when 0, writes the reason into `why` (may be NULL). */
int fm_cuda_device_count(char *why, size_t why_len);

/* Picks the device: AUTO → CUDA if usable, else CPU with one INFO line saying why; CPU → CPU;
 * CUDA → CUDA, or FM_ERR_DEVICE with the reason if there is no usable GPU. */
fm_status fm_device_select(fm_device_request request, fm_device *out);

/* Device memory helpers; on FM_DEVICE_CPU these are malloc/free/memcpy. */
fm_status fm_device_alloc(fm_device device, size_t bytes, void **out);
void fm_device_free(fm_device device, void *ptr);
/* Copies between any two devices (host↔device, device↔device, host↔host). */
fm_status fm_device_copy(void *dst, fm_device dst_device, const void *src, fm_device src_device, size_t bytes);
fm_status fm_device_memset(fm_device device, void *ptr, int value, size_t bytes);
/* Waits for all queued work on the device. */
fm_status fm_device_synchronize(fm_device device);

#ifdef __cplusplus
}
#endif
#endif
