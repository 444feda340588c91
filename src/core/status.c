/* Status names and the thread-local last-error message. */
#include "fedmm/status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];

const char *fm_strerror(fm_status status)
{
    switch (status) {
    case FM_OK: return "ok";
    case FM_ERR_INVALID_ARG: return "invalid argument";
    case FM_ERR_SHAPE: return "shape mismatch";
    case FM_ERR_DTYPE: return "unsupported dtype";
    case FM_ERR_DEVICE: return "device error";
    case FM_ERR_NO_MEMORY: return "out of memory";
    case FM_ERR_IO: return "I/O error";
    case FM_ERR_PARSE: return "malformed input";
    case FM_ERR_RANGE: return "value out of range";
    case FM_ERR_NOT_FINITE: return "non-finite value";
    case FM_ERR_UNSUPPORTED: return "unsupported";
    case FM_ERR_CUDA: return "CUDA error";
    case FM_ERR_CONFIG: return "configuration error";
    case FM_ERR_NETWORK: return "network error";
    case FM_ERR_STATE: return "invalid state";
    case FM_ERR_INTERNAL: return "internal error";
    case FM_STATUS_COUNT: break;
    }
    return "unknown status";
}

fm_status(fm_error)(fm_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *fm_last_error(void) { return last_error; }

void fm_clear_error(void) { last_error[0] = '\0'; }
