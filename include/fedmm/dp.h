/* Data parallelism inside one site (docs/cuda.md, "Data parallelism"): `world` processes, one GPU each, train one
 * model; after every backward pass their gradients are averaged (an NCCL all-reduce with ncclAvg, fp32, on
 * fedmm's stream), so that all ranks take the same optimizer step on a global batch of world × batch_size pairs.
 *
 * The ranks meet through a file: rank 0 draws NCCL's unique id and publishes it at `id_file` (written to a
 * temporary name and renamed, so a reader never sees half a file); the others poll for it until `timeout_s`.
 * Rank 0 deletes the file once every rank has joined. Each process uses its CUDA device 0: give every rank its
 * own GPU with CUDA_VISIBLE_DEVICES.
 *
 * World 1 runs as one rank (with NCCL: a communicator of one, whose average is the identity). Without NCCL in the
 * build (or on the CPU), world > 1 is an error naming the reason; world 1 is then a no-op. */
#ifndef FEDMM_DP_H
#define FEDMM_DP_H

#include <stddef.h>

#include "fedmm/status.h"
#include "fedmm/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_dp_options {
    int world;           /* ranks (processes); 1 = no data parallelism */
    int rank;            /* this process, 0 … world − 1 */
    const char *id_file; /* where the NCCL unique id is exchanged; required when world > 1 (borrowed) */
    double timeout_s;    /* how long ranks > 0 wait for the id file, and every rank for the others to join */
} fm_dp_options;

/* world 1, rank 0, no id file, timeout 300 s. */
fm_dp_options fm_dp_default_options(void);
/* Overrides world and rank with the environment's WORLD_SIZE and RANK where they are set (as torchrun and most
 * launchers set them). FM_ERR_CONFIG naming the variable when one does not parse as a non-negative integer. */
fm_status fm_dp_options_from_env(fm_dp_options *o);
/* world ≥ 1, 0 ≤ rank < world, timeout > 0, an id file when world > 1; FM_ERR_CONFIG naming the field. */
fm_status fm_dp_options_validate(const fm_dp_options *o);

typedef struct fm_dp fm_dp;

/* Joins the group: rank 0 publishes the id, the others wait for it, then all build the NCCL communicator (each
 * call waits at most timeout_s; FM_ERR_NETWORK when the others do not come). device is the model's device:
 * FM_DEVICE_CPU allows world 1 only (FM_ERR_UNSUPPORTED otherwise), as does a build without NCCL. *out is NULL on
 * failure. */
fm_status fm_dp_create(fm_dp **out, const fm_dp_options *o, fm_device device);
/* NULL is a no-op. */
void fm_dp_destroy(fm_dp *dp);
int fm_dp_world(const fm_dp *dp);
int fm_dp_rank(const fm_dp *dp);
/* 1 when collectives go through NCCL (a CUDA dp with NCCL in the build), 0 when they are no-ops (world 1). */
int fm_dp_uses_nccl(const fm_dp *dp);

/* In place: buf (n floats on the dp's device) becomes the mean of every rank's buf. Queued on fedmm's stream
 * (later kernels see the result); world 1 without NCCL: nothing to do. */
fm_status fm_dp_allreduce_mean(fm_dp *dp, float *buf, size_t n);
/* In place: every rank's buf (n floats) becomes rank 0's (for identical starting parameters). */
fm_status fm_dp_broadcast(fm_dp *dp, float *buf, size_t n);

/* ---- the id file (also used by the tests) ---------------------------------------------------------------- */

#define FM_DP_ID_MAX_BYTES 256

/* Writes `len` bytes of id for a group of `world` ranks to path, atomically (a temporary file in the same
 * directory, flushed, renamed over path). FM_ERR_IO naming the file on failure. */
fm_status fm_dp_id_publish(const char *path, int world, const void *id, size_t len);
/* Polls for path until it exists, then reads the id (exactly `len` bytes) into id. FM_ERR_NETWORK after timeout_s
 * without the file; FM_ERR_PARSE for a file that is not an id file of `len` bytes; FM_ERR_CONFIG when it was
 * written for another world size. */
fm_status fm_dp_id_wait(const char *path, int world, void *id, size_t len, double timeout_s);

#ifdef __cplusplus
}
#endif
#endif
