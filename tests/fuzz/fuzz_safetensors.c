/* libFuzzer target for the safetensors reader (and, for every input it accepts, the writer): any bytes
 * must give FM_OK or a clean error, never a crash, a leak or a read outside the input; an accepted file
 * must survive a write → parse round trip with the same tensors, bytes and metadata.
 *
 * Not built by CMake. Build and run from the repository root:
 *   clang -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -fsanitize=fuzzer,address,undefined -Iinclude \
 *       tests/fuzz/fuzz_safetensors.c src/model/safetensors.c src/core/status.c -lcjson -lm -o /tmp/fuzz_safetensors
 *   mkdir -p /tmp/st-corpus && /tmp/fuzz_safetensors -max_total_time=60 -max_len=4096 /tmp/st-corpus
 * (Seed the corpus with a few real files, e.g. those the unit test writes, to start from valid input.)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant is a bug in the library: stop here so that libFuzzer records the input. */
#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            __builtin_trap();                                                                                          \
    } while (0)

static void roundtrip(const fm_st_file *f)
{
    fm_st_writer *w;
    CHECK(fm_st_writer_create(&w) == FM_OK);
    for (size_t i = 0; i < fm_st_metadata_count(f); i++)
        CHECK(fm_st_writer_set_metadata(w, fm_st_metadata_key(f, i), fm_st_metadata_value(f, i)) == FM_OK);
    for (size_t i = 0; i < fm_st_count(f); i++) {
        const fm_st_tensor_info *t = fm_st_at(f, i);
        CHECK(fm_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data) == FM_OK);
    }
    void *bytes;
    size_t len;
    CHECK(fm_st_serialize(w, &bytes, &len) == FM_OK);
    fm_st_file *g;
    CHECK(fm_st_parse_view(&g, bytes, len) == FM_OK);
    CHECK(fm_st_count(g) == fm_st_count(f));
    CHECK(fm_st_metadata_count(g) == fm_st_metadata_count(f));
    for (size_t i = 0; i < fm_st_metadata_count(f); i++) {
        const char *v = fm_st_metadata(g, fm_st_metadata_key(f, i));
        CHECK(v != NULL && strcmp(v, fm_st_metadata_value(f, i)) == 0);
    }
    for (size_t i = 0; i < fm_st_count(f); i++) {
        const fm_st_tensor_info *a = fm_st_at(f, i);
        const fm_st_tensor_info *b = fm_st_find(g, a->name);
        CHECK(b != NULL && b->dtype == a->dtype && b->ndim == a->ndim && b->nbytes == a->nbytes);
        CHECK(memcmp(a->shape, b->shape, sizeof a->shape) == 0);
        CHECK(a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0);
    }
    fm_st_close(g);
    free(bytes);
    fm_st_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fm_st_file *f = NULL;
    fm_status st = fm_st_parse_view(&f, data, size);
    CHECK(st == FM_OK || st == FM_ERR_PARSE || st == FM_ERR_RANGE || st == FM_ERR_NO_MEMORY);
    if (st != FM_OK) {
        CHECK(f == NULL && fm_last_error()[0] != '\0');
        return 0;
    }
    size_t total = 0;
    for (size_t i = 0; i < fm_st_count(f); i++) {
        const fm_st_tensor_info *t = fm_st_at(f, i);
        CHECK(t != NULL && fm_st_find(f, t->name) == t);
        CHECK(t->offset == total && t->nbytes == t->numel * fm_st_dtype_size(t->dtype));
        total += t->nbytes;
        /* Touch every byte through the float conversion (ASan checks the reads stay in the input). */
        float *out = malloc(t->numel ? t->numel * sizeof(float) : 1);
        CHECK(out != NULL);
        fm_status cs = fm_st_read_f32(f, t->name, out, t->numel, t->ndim, t->shape);
        int floaty = t->dtype == FM_ST_F32 || t->dtype == FM_ST_F16 || t->dtype == FM_ST_BF16 || t->dtype == FM_ST_F64;
        CHECK(floaty ? cs == FM_OK : cs == FM_ERR_DTYPE);
        free(out);
    }
    for (size_t i = 0; i < fm_st_metadata_count(f); i++)
        CHECK(fm_st_metadata(f, fm_st_metadata_key(f, i)) != NULL);
    roundtrip(f);
    fm_st_close(f);
    return 0;
}
