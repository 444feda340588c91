/* libFuzzer target for the tokenizer: the vocab.json and merges.txt parsers, BPE under arbitrary merge
 * tables, and encode / tokenize / decode on arbitrary bytes. Not built by CMake; from the repository root:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc tests/fuzz/fuzz_tokenizer.c \
 *       src/model/tokenizer.c src/model/tokenizer_builtin.c src/core/status.c -lcjson -lm -o fuzz_tokenizer
 *   mkdir -p corpus && ./fuzz_tokenizer -max_total_time=60 corpus
 *
 * The first input byte picks what the rest is: 0 a text for the built-in tokenizer, 1 a vocab.json read
 * with the built-in merges, 2 a merges.txt read with the built-in vocabulary, 3 both files (a 2-byte length
 * prefix says where the vocabulary ends). Whatever loads is then used to encode and decode the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/status.h"
#include "fedmm/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static fm_tokenizer *builtin;
static char *builtin_vocab, *builtin_merges;
static size_t builtin_vocab_len, builtin_merges_len;

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        abort();
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        abort();
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The built-in tokenizer and its two files in memory, made once. */
static void init(void)
{
    if (builtin)
        return;
    char dir[] = "/tmp/fm_tok_fuzz_XXXXXX";
    if (fm_tokenizer_builtin(&builtin) != FM_OK || !mkdtemp(dir) || fm_tokenizer_save(builtin, dir) != FM_OK)
        abort();
    char path[64];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    builtin_vocab = slurp(path, &builtin_vocab_len);
    remove(path);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    builtin_merges = slurp(path, &builtin_merges_len);
    remove(path);
    rmdir(dir);
}

/* Encodes, tokenizes and decodes `text` with tok and checks the invariants that must hold for any input. */
static void exercise(const fm_tokenizer *tok, const char *text)
{
    static const int lens[] = {2, 3, 16, 77};
    int32_t ids[77];
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        int n = 0, eot = 0;
        if (fm_tokenizer_encode_ex(tok, text, ids, lens[k], &n, &eot) != FM_OK)
            abort();
        if (n < 2 || n > lens[k] || eot < 1 || eot >= n || ids[0] != fm_tokenizer_sot_id(tok) ||
            ids[n - 1] != fm_tokenizer_eot_id(tok))
            abort();
        for (int i = 0; i < lens[k]; i++)
            if (ids[i] < 0 || ids[i] >= fm_tokenizer_vocab_size(tok))
                abort();
        char out[512];
        size_t len;
        fm_status st = fm_tokenizer_decode(tok, ids, (size_t)lens[k], k & 1, out, sizeof out, &len);
        if (st != FM_OK && st != FM_ERR_RANGE)
            abort();
    }
    size_t m = 0;
    if (fm_tokenizer_tokenize(tok, text, ids, 77, &m) != FM_OK)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (size < 1)
        return 0;
    int mode = data[0] % 4;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    char *text = malloc(n + 1); /* the input as a C string (cut at its first NUL) */
    if (!text)
        return 0;
    memcpy(text, rest, n);
    text[n] = '\0';
    fm_tokenizer *tok = NULL;
    fm_status st = FM_OK;
    switch (mode) {
    case 0: exercise(builtin, text); break;
    case 1: st = fm_tokenizer_load_buffers(&tok, rest, n, NULL, builtin_merges, builtin_merges_len, NULL); break;
    case 2: st = fm_tokenizer_load_buffers(&tok, builtin_vocab, builtin_vocab_len, NULL, rest, n, NULL); break;
    default: {
        size_t split = n >= 2 ? ((size_t)(uint8_t)rest[0] | (size_t)(uint8_t)rest[1] << 8) : 0;
        size_t body = n >= 2 ? n - 2 : 0;
        split = body ? split % (body + 1) : 0;
        st = fm_tokenizer_load_buffers(&tok, rest + 2 * (n >= 2), split, NULL, rest + 2 * (n >= 2) + split,
                                       body - split, NULL);
        break;
    }
    }
    if (st != FM_OK && st != FM_ERR_PARSE)
        abort(); /* a malformed file must be FM_ERR_PARSE, never anything else */
    if (st == FM_OK && mode != 0) {
        if (!tok)
            abort();
        exercise(tok, text);
        exercise(tok, "a small red circle to the left of a large blue square");
        fm_tokenizer_free(tok);
    } else if (st != FM_OK && (tok || fm_last_error()[0] == '\0')) {
        abort();
    }
    free(text);
    return 0;
}
