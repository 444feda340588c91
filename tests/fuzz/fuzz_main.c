/* A plain driver for fedmm's fuzz targets, so that ctest exercises them without clang's libFuzzer:
 *
 *   fuzz_net_push [--iterations N] [--seed S] [--max-len L] [--write-corpus DIR] [FILE|DIR ...]
 *
 * runs the target on its seed corpus (fuzz_seeds) and any files named, on every truncation of each, then on N
 * inputs (default 2000) made by mutating them — bit flips, byte and length edits, inserted and deleted runs,
 * splices of two inputs, pure random bytes — from a deterministic generator (seed S, default
 * $FEDMM_TEST_SEED or 1). A target stops the process on a broken invariant (CHECK → trap), so a crash fails
 * the test; the driver prints the seed to reproduce it and how deep the inputs got. --write-corpus writes the
 * seeds as files to start libFuzzer from. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_driver.h"

#define MAX_INPUTS 256

static uint64_t rng_state;

static uint64_t next_u64(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t below(size_t n) { return n ? (size_t)(next_u64() % n) : 0; }

static void run(const uint8_t *data, size_t len, size_t *runs)
{
    /* a private copy of exactly len bytes, so that a read past the end is a read past an allocation */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        fprintf(stderr, "fuzz: out of memory\n");
        exit(1);
    }
    if (len)
        memcpy(copy, data, len);
    LLVMFuzzerTestOneInput(copy, len);
    free(copy);
    (*runs)++;
}

static int add_file(fm_wire_buf *in, size_t *n, const char *path)
{
    if (*n >= MAX_INPUTS)
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
    if (!buf || (size > 0 && fread(buf, 1, (size_t)size, f) != (size_t)size)) {
        fclose(f);
        free(buf);
        fprintf(stderr, "fuzz: cannot read %s\n", path);
        return -1;
    }
    fclose(f);
    in[*n].data = buf;
    in[*n].len = size > 0 ? (size_t)size : 0;
    (*n)++;
    return 0;
}

static int add_path(fm_wire_buf *in, size_t *n, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return add_file(in, n, path);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        rc = add_file(in, n, full);
    }
    closedir(d);
    return rc;
}

/* One random edit of buf (len bytes, capacity cap) in place; returns the new length. */
static size_t mutate_once(uint8_t *buf, size_t len, size_t cap, const fm_wire_buf *in, size_t n_in)
{
    switch (below(8)) {
    case 0: /* flip a bit */
        if (len)
            buf[below(len)] ^= (uint8_t)(1u << below(8));
        return len;
    case 1: /* an interesting byte */
        if (len) {
            static const uint8_t vals[] = {0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x3A};
            buf[below(len)] = vals[below(sizeof vals)];
        }
        return len;
    case 2: /* a random byte */
        if (len)
            buf[below(len)] = (uint8_t)next_u64();
        return len;
    case 3: { /* delete a run */
        if (!len)
            return len;
        size_t at = below(len), n = 1 + below(len - at < 16 ? len - at : 16);
        memmove(buf + at, buf + at + n, len - at - n);
        return len - n;
    }
    case 4: { /* insert random bytes */
        size_t n = 1 + below(8);
        if (len + n > cap)
            return len;
        size_t at = below(len + 1);
        memmove(buf + at + n, buf + at, len - at);
        for (size_t i = 0; i < n; i++)
            buf[at + i] = (uint8_t)next_u64();
        return len + n;
    }
    case 5: { /* duplicate a run */
        if (!len)
            return len;
        size_t at = below(len), n = 1 + below(len - at < 32 ? len - at : 32);
        if (len + n > cap)
            return len;
        size_t to = below(len + 1);
        uint8_t tmp[32];
        memcpy(tmp, buf + at, n);
        memmove(buf + to + n, buf + to, len - to);
        memcpy(buf + to, tmp, n);
        return len + n;
    }
    case 6: { /* splice: keep a prefix, continue with another input's suffix */
        const fm_wire_buf *o = &in[below(n_in)];
        size_t keep = below(len + 1), from = below(o->len + 1), n = o->len - from;
        if (keep + n > cap)
            n = cap - keep;
        memcpy(buf + keep, o->data + from, n);
        return keep + n;
    }
    default: /* overwrite a multi-byte little-endian number (lengths, varints, counts) */
        if (len >= 4) {
            size_t at = below(len - 3);
            uint32_t v = (uint32_t)next_u64() >> below(32);
            memcpy(buf + at, &v, 4);
        }
        return len;
    }
}

static int write_corpus(const char *dir, const fm_wire_buf *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%03zu", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(in[i].data, 1, in[i].len, f) != in[i].len) {
            fprintf(stderr, "fuzz: cannot write %s\n", path);
            if (f)
                fclose(f);
            return 1;
        }
        fclose(f);
    }
    printf("fuzz: wrote %zu seeds to %s\n", n, dir);
    return 0;
}

int main(int argc, char **argv)
{
    long iterations = 2000;
    size_t max_len = 4096;
    const char *corpus_out = NULL;
    const char *env = getenv("FEDMM_TEST_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 0) : 1;
    static fm_wire_buf in[MAX_INPUTS];
    size_t n = fuzz_seeds(in, MAX_INPUTS / 2);
    const size_t n_seeds = n;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
            iterations = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--max-len") == 0 && i + 1 < argc) {
            max_len = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--write-corpus") == 0 && i + 1 < argc) {
            corpus_out = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: %s [--iterations N] [--seed S] [--max-len L] [--write-corpus DIR] [FILE|DIR ...]\n",
                    argv[0]);
            return 2;
        } else if (add_path(in, &n, argv[i]) != 0) {
            return 2;
        }
    }
    if (corpus_out)
        return write_corpus(corpus_out, in, n_seeds);
    if (n == 0) {
        fprintf(stderr, "fuzz: no inputs (no seeds and no files)\n");
        return 2;
    }
    rng_state = seed ? seed : 1;
    printf("fuzz: %zu seed inputs, %ld mutations, seed %llu (rerun with --seed %llu)\n", n, iterations,
           (unsigned long long)seed, (unsigned long long)seed);
    fflush(stdout);
    size_t runs = 0;
    for (size_t i = 0; i < n; i++) {
        run(in[i].data, in[i].len, &runs);
        /* every truncation of short inputs, an evenly spaced sample of the long ones */
        const size_t step = in[i].len <= 512 ? 1 : in[i].len / 256;
        for (size_t cut = 0; cut < in[i].len; cut += step)
            run(in[i].data, cut, &runs);
    }
    const size_t after_seeds = runs;
    size_t cap = max_len;
    for (size_t i = 0; i < n; i++)
        cap = in[i].len > cap ? in[i].len : cap;
    uint8_t *buf = malloc(cap + 64);
    if (!buf)
        return 1;
    for (long it = 0; it < iterations; it++) {
        size_t len;
        if (it % 16 == 15) { /* pure random bytes */
            len = below(256);
            for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t)next_u64();
        } else {
            const fm_wire_buf *base = &in[below(n)];
            memcpy(buf, base->data, base->len);
            len = base->len;
            const size_t edits = 1 + below(it % 4 == 0 ? 16 : 4);
            for (size_t e = 0; e < edits; e++)
                len = mutate_once(buf, len, cap, in, n);
        }
        run(buf, len, &runs);
    }
    free(buf);
    printf("fuzz: %zu inputs run (%zu seeds and truncations); %zu messages decoded, %zu calls accepted, %zu "
           "operations completed\n",
           runs, after_seeds, fuzz_count.decoded, fuzz_count.accepted, fuzz_count.complete);
    for (size_t i = 0; i < n; i++)
        free(in[i].data);
    /* a target whose seeds never get through is not testing the state machine */
    if (n_seeds > 0 && fuzz_count.complete == 0) {
        fprintf(stderr, "fuzz: no input completed an operation: the seeds are broken\n");
        return 1;
    }
    return 0;
}
