/* Bump-pointer arenas over one host or device allocation. */
#include "fedmm/arena.h"

#include <stdint.h>
#include <string.h>

#include "fedmm/device.h"

fm_status fm_arena_init(fm_arena *arena, size_t capacity, fm_device device)
{
    if (!arena)
        return fm_error(FM_ERR_INVALID_ARG, "arena: NULL");
    memset(arena, 0, sizeof *arena);
    arena->device = device;
    if (capacity == 0)
        return FM_OK;
    void *p = NULL;
    FM_TRY(fm_device_alloc(device, capacity, &p));
    if (device == FM_DEVICE_CPU)
        memset(p, 0, capacity);
    arena->base = p;
    arena->capacity = capacity;
    return FM_OK;
}

fm_status fm_arena_alloc(fm_arena *arena, size_t bytes, void **out)
{
    if (!arena || !out)
        return fm_error(FM_ERR_INVALID_ARG, "arena alloc: NULL argument");
    size_t rounded = (bytes + FM_ARENA_ALIGN - 1) / FM_ARENA_ALIGN * FM_ARENA_ALIGN;
    if (rounded < bytes || rounded > arena->capacity - arena->used)
        return fm_error(FM_ERR_NO_MEMORY, "arena: %zu bytes requested, %zu of %zu free", bytes,
                        arena->capacity - arena->used, arena->capacity);
    *out = (char *)arena->base + arena->used;
    arena->used += rounded;
    if (arena->used > arena->high_water)
        arena->high_water = arena->used;
    return FM_OK;
}

fm_status fm_arena_tensor(fm_arena *arena, fm_tensor *out, fm_dtype dtype, int ndim, const int64_t *shape)
{
    if (!arena || !out || ndim < 0 || ndim > FM_MAX_DIMS || (ndim > 0 && !shape))
        return fm_error(FM_ERR_INVALID_ARG, "arena tensor: bad arguments");
    size_t bytes = fm_dtype_size(dtype);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return fm_error(FM_ERR_SHAPE, "arena tensor: dim %d is negative", d);
        if (shape[d] > 0 && bytes > SIZE_MAX / (size_t)shape[d])
            return fm_error(FM_ERR_RANGE, "arena tensor: size overflows");
        bytes *= (size_t)shape[d];
    }
    void *p = NULL;
    FM_TRY(fm_arena_alloc(arena, bytes, &p));
    return fm_tensor_view(out, p, bytes, 0, dtype, arena->device, ndim, shape);
}

void fm_arena_reset(fm_arena *arena) { arena->used = 0; }

size_t fm_arena_mark(const fm_arena *arena) { return arena->used; }

void fm_arena_rewind(fm_arena *arena, size_t mark)
{
    if (mark <= arena->used)
        arena->used = mark;
}

void fm_arena_free(fm_arena *arena)
{
    if (!arena)
        return;
    if (arena->base)
        fm_device_free(arena->device, arena->base);
    memset(arena, 0, sizeof *arena);
}
