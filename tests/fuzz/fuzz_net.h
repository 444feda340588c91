/* What the control plane's fuzz targets (tests/fuzz/fuzz_net_*.c) share: a small fake federation for the
 * server state machine (4 sites, 2 per round, 2 rounds, a 50-float vector in 4 blocks,
 * FedAvg), a way to cut one fuzz input into several messages, and helpers that build valid seed inputs with
 * the real encoders. Each target defines LLVMFuzzerTestOneInput (libFuzzer) and fuzz_seeds (the seed corpus
 * that tests/fuzz/fuzz_main.c, the plain driver ctest uses, mutates). */
#ifndef FEDMM_FUZZ_NET_H
#define FEDMM_FUZZ_NET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/site_train.h"
#include "fedmm/strategy.h"
#include "net/fedsrv.h"
#include "net/wire.h"

#include "fuzz_driver.h"

/* A broken invariant is a bug in the library: stop here so that libFuzzer (or ctest) records the input. */
#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz: CHECK failed at %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond,           \
                    fm_last_error());                                                                                  \
            __builtin_trap();                                                                                          \
        }                                                                                                              \
    } while (0)

fuzz_counts fuzz_count; /* the one definition: each fuzz target is one file that includes this header */

#define FZ_RUN "run-fuzz"
#define FZ_SITES 4
#define FZ_PER_ROUND 2
#define FZ_ROUNDS 2
#define FZ_NB 4
#define FZ_SEED 7

typedef struct fz_fed {
    fm_strategy_block blocks[FZ_NB];
    size_t P;
    int64_t samples[FZ_SITES];
    uint8_t trained[FZ_SITES * FZ_NB];
    char tokens[FZ_SITES][65];
    const char *token_ptrs[FZ_SITES];
    float init[64];
    fm_strategy *strategy;
    fm_fedsrv *srv;
} fz_fed;

/* Site 1 does not train block 2 (a site without one modality); the others train every block. */
static inline void fz_layout(fz_fed *f)
{
    static const char *names[FZ_NB] = {"a", "b", "big", "c"};
    static const size_t fz_sizes[FZ_NB] = {5, 2, 40, 3};
    size_t off = 0;
    for (size_t i = 0; i < FZ_NB; i++) {
        f->blocks[i] =
            (fm_strategy_block){.name = names[i], .offset = off, .numel = fz_sizes[i], .layer = -1, .n_layers = 1};
        off += fz_sizes[i];
    }
    f->P = off;
    for (int k = 0; k < FZ_SITES; k++) {
        f->samples[k] = 10 + 7 * k;
        for (size_t i = 0; i < FZ_NB; i++)
            f->trained[k * FZ_NB + i] = (uint8_t)(k == 1 && i == 2 ? 0 : 1);
        CHECK(fm_net_site_token("fuzz-secret-0123456789", k, f->tokens[k]) == FM_OK);
        f->token_ptrs[k] = f->tokens[k];
    }
    for (size_t i = 0; i < f->P; i++)
        f->init[i] = (float)((int)(i % 11) - 5) * 0.125f;
}

/* A fresh server in round 1 (each input starts from the same state). */
static inline void fz_open(fz_fed *f)
{
    memset(f, 0, sizeof *f);
    fz_layout(f);
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    CHECK(fm_strategy_create(&f->strategy, &sc, f->P, f->blocks, FZ_NB, f->init) == FM_OK);
    fm_fedsrv_config fc;
    memset(&fc, 0, sizeof fc);
    fc.run_id = FZ_RUN;
    fc.rounds = FZ_ROUNDS;
    fc.num_sites = FZ_SITES;
    fc.sites_per_round = FZ_PER_ROUND;
    fc.seed = FZ_SEED;
    fc.local_steps = 3;
    fc.model_family = "clip-tiny";
    fc.n_params = f->P;
    fc.blocks = f->blocks;
    fc.n_blocks = FZ_NB;
    fc.site_samples = f->samples;
    fc.site_trained = f->trained;
    fc.tokens = f->token_ptrs;
    fc.strategy = f->strategy;
    fc.min_sites = 1;
    CHECK(fm_fedsrv_create(&f->srv, &fc) == FM_OK);
}

static inline void fz_close(fz_fed *f)
{
    fm_fedsrv_destroy(f->srv);
    fm_strategy_destroy(f->strategy);
}

/* The site's token, or NULL for a site outside the federation. */
static inline const char *fz_token(const fz_fed *f, int site)
{
    return site >= 0 && site < FZ_SITES ? f->tokens[site] : NULL;
}

/* Nothing reached the strategy: the global vector is the initial one and no update is pending. */
static inline int fz_untouched(const fz_fed *f)
{
    return fm_strategy_num_updates(f->strategy) == 0 &&
           memcmp(fm_strategy_global(f->strategy), f->init, f->P * sizeof(float)) == 0;
}

/* ---- one input, several messages ------------------------------------------------------------------- */

/* Messages are cut from the input as [2-byte little-endian length][bytes]; a length past the end takes the
 * rest. Returns 0 when the input is used up. */
typedef struct fz_reader {
    const uint8_t *p;
    size_t left;
} fz_reader;

static inline int fz_next(fz_reader *r, const uint8_t **msg, size_t *len)
{
    if (r->left < 2)
        return 0;
    size_t n = (size_t)r->p[0] | (size_t)r->p[1] << 8;
    r->p += 2;
    r->left -= 2;
    if (n > r->left)
        n = r->left;
    *msg = r->p;
    *len = n;
    r->p += n;
    r->left -= n;
    return 1;
}

/* ---- building seeds --------------------------------------------------------------------------------- */

typedef struct fz_builder {
    uint8_t *data;
    size_t len, cap;
} fz_builder;

static inline void fz_put(fz_builder *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = (b->len + n) * 2 + 64;
        uint8_t *d = realloc(b->data, cap);
        CHECK(d != NULL);
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static inline void fz_put_byte(fz_builder *b, uint8_t v) { fz_put(b, &v, 1); }

/* Appends [length][message] and frees the message. */
static inline void fz_put_msg(fz_builder *b, fm_wire_buf *m)
{
    CHECK(m->len <= 0xFFFF);
    const uint8_t n[2] = {(uint8_t)(m->len & 0xFF), (uint8_t)(m->len >> 8)};
    fz_put(b, n, 2);
    fz_put(b, m->data, m->len);
    fm_wire_buf_free(m);
}

/* A zero-length message: the end of one stream (the fuzz targets' half-close). */
static inline void fz_put_end(fz_builder *b)
{
    const uint8_t z[2] = {0, 0};
    fz_put(b, z, 2);
}

static inline size_t fz_add_seed(fm_wire_buf *out, size_t n, size_t max, fz_builder *b)
{
    if (n < max) {
        out[n].data = b->data;
        out[n].len = b->len;
        return n + 1;
    }
    free(b->data);
    return n;
}

/* The sites round `round` samples (ascending). */
static inline void fz_chosen(int round, int chosen[FZ_PER_ROUND])
{
    CHECK(fm_round_sites(FZ_SEED, round, FZ_SITES, FZ_PER_ROUND, chosen) == FM_OK);
}

/* The codec a flags byte selects (targets that encode tensors): bits 0-1 the encoding, bit 2 zstd. */
static inline fm_wire_codec fz_codec(uint8_t flags)
{
    fm_wire_codec c = {(fm_wire_encoding)((flags & 3) % 3), (flags & 4) ? FM_WIRE_ZSTD : FM_WIRE_RAW, 1};
    return c;
}

#endif
