/* NCCL glue (internal; compiled with FEDMM_WITH_NCCL): one communicator per process, collectives on fedmm's stream,
 * every NCCL result checked and turned into an fm_status with NCCL's own message. include/fedmm/dp.h is the
 * public face; src/core/dp.c calls these. */
#ifndef FEDMM_CUDA_NCCL_H
#define FEDMM_CUDA_NCCL_H

#include <stddef.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NCCL_UNIQUE_ID_BYTES; checked against nccl.h in cuda/nccl.c. */
#define FM_NCCL_ID_BYTES 128

typedef struct fm_nccl fm_nccl;

/* Turns an ncclResult_t (as int) into FM_OK or FM_ERR_CUDA with "file:line: call: NCCL's error string", plus
 * ncclGetLastError's detail when it has one. */
fm_status fm_nccl_check_at(int result, const char *call, const char *file, int line);
#define FM_NCCL_CHECK(call) fm_nccl_check_at((int)(call), #call, __FILE__, __LINE__)

/* NCCL's version as "2.28.9". */
const char *fm_nccl_version(void);

/* A fresh unique id (rank 0 draws it; it holds the address of rank 0's bootstrap socket). */
fm_status fm_nccl_unique_id(unsigned char id[FM_NCCL_ID_BYTES]);

/* Builds the communicator of `world` ranks on the current CUDA device, waiting at most timeout_s for the others
 * (FM_ERR_NETWORK then, the half-built communicator aborted). */
fm_status fm_nccl_create(fm_nccl **out, const unsigned char id[FM_NCCL_ID_BYTES], int world, int rank,
                         double timeout_s);
/* Finalizes and destroys the communicator (waiting for its queued work). NULL is a no-op. */
void fm_nccl_destroy(fm_nccl *c);

/* In place on fedmm's stream: buf = mean over the ranks (ncclAvg, float32). */
fm_status fm_nccl_allreduce_mean(fm_nccl *c, float *buf, size_t n);
/* In place on fedmm's stream: buf = root's buf. */
fm_status fm_nccl_broadcast(fm_nccl *c, float *buf, size_t n, int root);

#ifdef __cplusplus
}
#endif
#endif
