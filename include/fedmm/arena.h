/* Arenas: one allocation, carved into aligned pieces by a bump pointer, released all at once. Used for
 * per-step activations and scratch, so that a training step allocates nothing. */
#ifndef FEDMM_ARENA_H
#define FEDMM_ARENA_H

#include <stddef.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_ARENA_ALIGN 256 /* bytes; enough for AVX-512 and for CUDA's coalescing */

typedef struct fm_arena {
    void *base;
    size_t capacity;
    size_t used;
    size_t high_water;
    fm_device device;
} fm_arena;

/* Allocates `capacity` bytes on `device` (host memory is zero-filled). */
fm_status fm_arena_init(fm_arena *arena, size_t capacity, fm_device device);
/* Returns the next `bytes` (rounded up to FM_ARENA_ALIGN) in *out; FM_ERR_NO_MEMORY if it does not fit. */
fm_status fm_arena_alloc(fm_arena *arena, size_t bytes, void **out);
/* A contiguous tensor of `dtype` and `shape` carved from the arena. */
fm_status fm_arena_tensor(fm_arena *arena, fm_tensor *out, fm_dtype dtype, int ndim, const int64_t *shape);
/* Forgets every allocation (memory stays reserved). */
void fm_arena_reset(fm_arena *arena);
/* Current position, to roll back to with fm_arena_rewind (stack-like scratch). */
size_t fm_arena_mark(const fm_arena *arena);
void fm_arena_rewind(fm_arena *arena, size_t mark);
/* Releases the memory; the arena may be initialised again. Safe on a zeroed arena. */
void fm_arena_free(fm_arena *arena);

#ifdef __cplusplus
}
#endif
#endif
