/* The interface between a fuzz target and tests/fuzz/fuzz_main.c, the plain driver that runs a target without
 * libFuzzer: over its seed corpus (fuzz_seeds, plus any files named on the command line), every truncation
 * of each seed, and a bounded number of deterministic random mutations — what ctest runs. Built with
 * -DFEDMM_LIBFUZZER=ON (clang), the same targets link libFuzzer's own main instead. */
#ifndef FEDMM_FUZZ_DRIVER_H
#define FEDMM_FUZZ_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "net/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Up to `max` seed inputs, each malloc'ed (the driver frees them); returns how many. */
size_t fuzz_seeds(fm_wire_buf *out, size_t max);

/* How deep the inputs got, counted by the target and printed by the driver: a run in which nothing is ever
 * decoded or accepted tests little. */
typedef struct fuzz_counts {
    size_t decoded;  /* messages that decoded */
    size_t accepted; /* calls the state machine answered OK */
    size_t complete; /* whole operations: a push aggregated, a stream reassembled */
} fuzz_counts;
extern fuzz_counts fuzz_count;

#endif
