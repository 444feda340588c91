/* Status codes and error messages. Library code never exits the process: every fallible function
 * returns an fm_status, and the detailed reason of the most recent failure on the calling thread is
 * kept in a thread-local buffer readable through fm_last_error(). */
#ifndef FEDMM_STATUS_H
#define FEDMM_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_status {
    FM_OK = 0,
    FM_ERR_INVALID_ARG, /* a NULL pointer, a negative size, an option out of range */
    FM_ERR_SHAPE,       /* tensor shapes that do not fit together */
    FM_ERR_DTYPE,       /* a dtype the operation does not take */
    FM_ERR_DEVICE,      /* tensors on different devices, or a device that is not there */
    FM_ERR_NO_MEMORY,   /* an allocation failed (host or device) */
    FM_ERR_IO,          /* a file could not be opened, read or written */
    FM_ERR_PARSE,       /* malformed input: a file, a message, a config */
    FM_ERR_RANGE,       /* an index or value outside its allowed range */
    FM_ERR_NOT_FINITE,  /* NaN or Inf where finite numbers are required */
    FM_ERR_UNSUPPORTED, /* a feature this build or backend does not have */
    FM_ERR_CUDA,        /* a CUDA, cuBLAS, cuDNN or NCCL call failed */
    FM_ERR_CONFIG,      /* an unknown key or a bad value in a configuration */
    FM_ERR_NETWORK,     /* a remote call failed */
    FM_ERR_STATE,       /* a call that is not valid in the object's current state */
    FM_ERR_INTERNAL,    /* a bug in fedmm: an invariant that should hold did not */
    FM_STATUS_COUNT
} fm_status;

/* A static, human-readable name for a status code ("shape mismatch", ...). Never NULL. */
const char *fm_strerror(fm_status status);

/* Records a formatted message for `status` on the calling thread and returns `status`, so that a
 * failing function can `return fm_error(FM_ERR_SHAPE, "linear: x has %d columns, W %d", a, b);`. */
fm_status fm_error(fm_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#if defined(__clang_analyzer__)
/* Lets clang's static analyzer see that fm_error returns its first argument, so it does not explore
 * "success" paths behind `return fm_error(FM_ERR_x, ...)`. */
#define fm_error(status, ...) (fm_error((status), __VA_ARGS__), (status))
#endif

/* The message of the most recent fm_error() on this thread ("" if none). Owned by the library; valid
 * until the next fm_error() call on the same thread. */
const char *fm_last_error(void);

/* Clears this thread's last error message. */
void fm_clear_error(void);

/* Evaluates `expr` (an fm_status expression) and returns it from the calling function if not FM_OK. */
#define FM_TRY(expr)                                                                                                   \
    do {                                                                                                               \
        fm_status fm_try_status_ = (expr);                                                                             \
        if (fm_try_status_ != FM_OK)                                                                                   \
            return fm_try_status_;                                                                                     \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
