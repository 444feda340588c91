/* Reading and writing safetensors files (the Hugging Face checkpoint format): an 8-byte little-endian
 * header length N, N bytes of JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]},
 * ..., "__metadata__": {str: str}}, then the raw little-endian tensor bytes. fedmm's checkpoints, the
 * Hugging Face CLIP weights it loads and the tensors it streams over the network all use this format.
 *
 * Validation follows the reference implementation (huggingface/safetensors), strictly:
 *   - header length at most FM_ST_MAX_HEADER bytes and within the file;
 *   - the header is a JSON object; every entry other than "__metadata__" is an object with "dtype" (a
 *     known dtype string), "shape" (an array of non-negative integers, at most FM_ST_MAX_DIMS of them)
 *     and "data_offsets" (two non-negative integers, begin <= end); "__metadata__" maps strings to strings;
 *   - end - begin equals numel × element size (numel of a 0-dim tensor is 1);
 *   - sorted by begin, the tensors tile the data buffer exactly: the first begins at 0, each begins where
 *     the previous ends (no gap, no overlap) and the last ends at the end of the file. Trailing bytes after
 *     the last tensor are an error, as in the reference (MetadataIncompleteBuffer);
 *   - tensor names are unique and non-empty.
 * Integers in the header must be exact in a double (below 2^53). Errors: FM_ERR_IO (open/read/write),
 * FM_ERR_PARSE (malformed header: JSON, structure, types, unknown dtype, bad dims, duplicate names),
 * FM_ERR_RANGE (offsets outside the buffer, reversed, overlapping or leaving gaps, sizes that do not match
 * shape × dtype, numel overflow, trailing bytes, a tensor name that is not in the file), FM_ERR_SHAPE (a
 * tensor whose shape is not the one the caller expects), FM_ERR_DTYPE (a dtype that cannot be converted).
 * Every message names the source (path or "<memory>") and the tensor concerned.
 *
 * Tensor data is raw little-endian bytes; fedmm supports little-endian hosts only. */
#ifndef FEDMM_SAFETENSORS_H
#define FEDMM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest header accepted, in bytes (the reference implementation's limit). */
#define FM_ST_MAX_HEADER 100000000u
/* Most dimensions a tensor may have. */
#define FM_ST_MAX_DIMS 8

/* The dtypes of the safetensors format. Every one can be read and iterated; conversion to float32
 * (fm_st_read_f32) takes F64, F32, F16 and BF16; the writer stores F32, F16 and BF16 (and any dtype as
 * raw bytes through fm_st_writer_add). */
typedef enum fm_st_dtype {
    FM_ST_BOOL = 0,
    FM_ST_U8,
    FM_ST_I8,
    FM_ST_F8_E5M2,
    FM_ST_F8_E4M3,
    FM_ST_I16,
    FM_ST_U16,
    FM_ST_F16,
    FM_ST_BF16,
    FM_ST_I32,
    FM_ST_U32,
    FM_ST_F32,
    FM_ST_F64,
    FM_ST_I64,
    FM_ST_U64,
    FM_ST_DTYPE_COUNT
} fm_st_dtype;

/* The format's name of a dtype ("F32", "BF16", ...); "?" for an invalid value. */
const char *fm_st_dtype_name(fm_st_dtype dtype);
/* Bytes per element (0 for an invalid value). */
size_t fm_st_dtype_size(fm_st_dtype dtype);
/* The dtype named `name` ("F32", ...; case-sensitive, as in the format). FM_ERR_PARSE if unknown. */
fm_status fm_st_dtype_from_name(fm_st_dtype *out, const char *name);
/* The fedmm tensor dtype for a safetensors dtype (F32, F16, BF16, I32, I64, U8); FM_ERR_DTYPE otherwise. */
fm_status fm_st_dtype_to_fm(fm_dtype *out, fm_st_dtype dtype);

/* One tensor of an open file. Owned by the fm_st_file; valid until fm_st_close. */
typedef struct fm_st_tensor_info {
    const char *name; /* NUL-terminated, as in the header */
    fm_st_dtype dtype;
    int ndim;                      /* 0 for a scalar */
    int64_t shape[FM_ST_MAX_DIMS]; /* shape[0..ndim-1]; the rest are 0 */
    size_t numel;                  /* product of shape (1 for a scalar) */
    size_t nbytes;                 /* numel × dtype size = end - begin */
    size_t offset;                 /* begin, relative to the start of the data buffer */
    const void *data;              /* the tensor's bytes inside the file image; may be unaligned when
                                      the header length is not a multiple of 8, so read with memcpy */
} fm_st_tensor_info;

/* An opened, fully validated safetensors file (opaque). */
typedef struct fm_st_file fm_st_file;

/* Opens and validates the file at `path` (memory-mapped read-only). On success *out owns the mapping;
 * release it with fm_st_close. On failure *out is NULL and the message says what is wrong. The file must
 * not be truncated by someone else while it is open (a mapped file that shrinks faults on access). */
fm_status fm_st_open(fm_st_file **out, const char *path);

/* Validates `len` bytes of a safetensors image in memory and takes a private copy of them, so `bytes`
 * may be freed as soon as this returns. For input from the network and for fuzzing. */
fm_status fm_st_parse(fm_st_file **out, const void *bytes, size_t len);

/* Like fm_st_parse but borrows `bytes` without copying: they must stay alive and unchanged until
 * fm_st_close. For large buffers the caller already holds. */
fm_status fm_st_parse_view(fm_st_file **out, const void *bytes, size_t len);

/* Releases the file and everything returned from it. NULL is a no-op. */
void fm_st_close(fm_st_file *file);

/* Number of tensors (the "__metadata__" entry is not a tensor). */
size_t fm_st_count(const fm_st_file *file);

/* The i-th tensor in data order (ascending offset), 0 <= i < fm_st_count; NULL if out of range. */
const fm_st_tensor_info *fm_st_at(const fm_st_file *file, size_t i);

/* The tensor named `name`, or NULL if there is none (also records an FM_ERR_RANGE message naming it, for
 * callers that want to report it). O(log n). */
const fm_st_tensor_info *fm_st_find(const fm_st_file *file, const char *name);

/* The value of "__metadata__"[key], or NULL if absent. Owned by the file. */
const char *fm_st_metadata(const fm_st_file *file, const char *key);
/* Number of metadata entries, and the i-th key/value (in header order); both NULL-safe, NULL if i is out
 * of range. */
size_t fm_st_metadata_count(const fm_st_file *file);
const char *fm_st_metadata_key(const fm_st_file *file, size_t i);
const char *fm_st_metadata_value(const fm_st_file *file, size_t i);

/* Reads tensor `name` as float32 into dst (n_expected floats), converting from F32, F16, BF16 or F64
 * (F64 rounds to nearest). Checks, with a message that says exactly what differs:
 *   - the tensor exists (FM_ERR_RANGE);
 *   - if expected_shape is non-NULL: the tensor has `ndim` dims and shape[i] == expected_shape[i] for every
 *     i where expected_shape[i] >= 0 (negative = any size) (FM_ERR_SHAPE);
 *   - its element count equals n_expected (FM_ERR_SHAPE);
 *   - its dtype converts to float (FM_ERR_DTYPE).
 * dst is untouched on failure. */
fm_status fm_st_read_f32(const fm_st_file *file, const char *name, float *dst, size_t n_expected, int ndim,
                         const int64_t *expected_shape);

/* The same conversion for a tensor already in hand (from fm_st_at / fm_st_find); checks only n_expected
 * and the dtype. */
fm_status fm_st_info_to_f32(const fm_st_tensor_info *info, float *dst, size_t n_expected);

/* ---- writing ---------------------------------------------------------------------------------- */

/* Collects tensors and metadata, then writes them as one safetensors file. Names and metadata are copied
 * on add; tensor data is BORROWED: it must stay alive and unchanged until the last fm_st_write /
 * fm_st_serialize call that uses it has returned.
 *
 * Layout of what is written: "__metadata__" first (if any entry was set, keys in insertion order), then
 * the tensors ordered by element size descending, then by name (strcmp) — the reference implementation's
 * order, which keeps every tensor aligned to its element size and makes the bytes independent of the
 * order of the add calls. Offsets are contiguous from 0. The header is padded with spaces to a multiple of
 * 8 bytes, so the data buffer starts 8-byte aligned. */
typedef struct fm_st_writer fm_st_writer;

fm_status fm_st_writer_create(fm_st_writer **out);
/* NULL is a no-op. */
void fm_st_writer_free(fm_st_writer *writer);

/* Adds tensor `name` whose bytes at `data` are already in `dtype` (numel × size bytes, little-endian).
 * FM_ERR_INVALID_ARG for an empty name, the name "__metadata__", a duplicate name, NULL data
 * with numel > 0; FM_ERR_SHAPE for ndim outside [0, FM_ST_MAX_DIMS] or a negative dim; FM_ERR_RANGE when
 * the size overflows. */
fm_status fm_st_writer_add(fm_st_writer *writer, const char *name, fm_st_dtype dtype, int ndim, const int64_t *shape,
                           const void *data);

/* Adds float32 data to be stored as `stored` (FM_ST_F32, FM_ST_BF16 or FM_ST_F16; the conversion rounds to
 * nearest even and happens at write time). FM_ERR_DTYPE for any other `stored`; otherwise as above. */
fm_status fm_st_writer_add_f32(fm_st_writer *writer, const char *name, fm_st_dtype stored, int ndim,
                               const int64_t *shape, const float *data);

/* Sets "__metadata__"[key] = value (both copied; setting a key again replaces its value). */
fm_status fm_st_writer_set_metadata(fm_st_writer *writer, const char *key, const char *value);

/* Writes the file at `path` atomically: into a temporary file in the same directory, fsync, rename over
 * `path`, fsync of the directory. A failure at any step removes the temporary file and leaves whatever was
 * at `path` before untouched (FM_ERR_IO with the step and the system's reason). The file gets mode 0644. */
fm_status fm_st_write(const fm_st_writer *writer, const char *path);

/* Serializes into one malloc'ed buffer (*out_bytes, *out_len; the caller frees it with free()). The bytes
 * are exactly those fm_st_write would write. */
fm_status fm_st_serialize(const fm_st_writer *writer, void **out_bytes, size_t *out_len);

/* ---- float conversions ------------------------------------------------------------------------ */

/* float32 → bfloat16 / IEEE half, rounding to nearest, ties to even; NaN stays NaN (quiet), overflow goes
 * to ±inf (half), subnormal halves are produced where the value needs them. */
uint16_t fm_st_f32_to_bf16(float x);
uint16_t fm_st_f32_to_f16(float x);
/* Exact widenings back to float32. */
float fm_st_bf16_to_f32(uint16_t h);
float fm_st_f16_to_f32(uint16_t h);

/* Array forms of the four conversions above (n elements; no overlap between src and dst). */
void fm_st_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);
void fm_st_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
void fm_st_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void fm_st_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
