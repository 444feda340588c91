/* NCCL glue: the communicator of a data-parallel group (include/fedmm/dp.h) and its two collectives, on fedmm's
 * stream. The communicator is built non-blocking (ncclConfig_t.blocking = 0) so that a rank whose peers never
 * come gives up after a timeout with a message, instead of hanging in ncclCommInitRank; every call that answers
 * ncclInProgress is then polled through ncclCommGetAsyncError until it settles. Compiled only with NCCL. */
#ifdef FEDMM_WITH_NCCL

#include "cuda/nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "cuda/runtime.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "fedmm needs NCCL 2.14 or newer (non-blocking communicators, ncclAvg)"
#endif

_Static_assert(FM_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "FM_NCCL_ID_BYTES must equal NCCL_UNIQUE_ID_BYTES");

struct fm_nccl {
    ncclComm_t comm;
    int world, rank;
    double timeout_s;
};

/* Last two components of a path, as cuda/runtime.c prints them. */
static const char *short_path(const char *file)
{
    if (!file)
        return "?";
    const char *last = NULL, *prev = NULL;
    for (const char *p = file; *p; p++) {
        if (*p == '/') {
            prev = last;
            last = p;
        }
    }
    return prev ? prev + 1 : file;
}

static fm_status check_comm_at(int result, ncclComm_t comm, const char *call, const char *file, int line)
{
    if (result == (int)ncclSuccess)
        return FM_OK;
    const char *detail = ncclGetLastError(comm);
    return fm_error(FM_ERR_CUDA, "%s:%d: %s: %s%s%s", short_path(file), line, call ? call : "?",
                    ncclGetErrorString((ncclResult_t)result), detail && *detail ? ": " : "", detail ? detail : "");
}

fm_status fm_nccl_check_at(int result, const char *call, const char *file, int line)
{
    return check_comm_at(result, NULL, call, file, line);
}

#define COMM_CHECK(comm, call) check_comm_at((int)(call), (comm), #call, __FILE__, __LINE__)

const char *fm_nccl_version(void)
{
    static char text[32];
    int v = 0;
    if (ncclGetVersion(&v) != ncclSuccess)
        return "unknown";
    /* NCCL_VERSION: major·10000 + minor·100 + patch since 2.9 */
    snprintf(text, sizeof text, "%d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
    return text;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls the communicator until the call that answered `first` has settled; `what` names it in the messages. On a
 * timeout the communicator is aborted (it cannot be used any more): FM_ERR_NETWORK. */
static fm_status settle(ncclComm_t comm, ncclResult_t first, const char *what, double timeout_s, int *aborted)
{
    *aborted = 0;
    ncclResult_t state = first;
    const double t0 = now_s();
    while (state == ncclInProgress) {
        if (now_s() - t0 > timeout_s) {
            (void)ncclCommAbort(comm); /* unchecked: the timeout is the error worth reporting */
            *aborted = 1;
            return fm_error(FM_ERR_NETWORK,
                            "NCCL: %s did not complete within %g s (are all ranks running, with the same world size "
                            "and id file?)",
                            what, timeout_s);
        }
        nap_ms(1);
        FM_TRY(COMM_CHECK(comm, ncclCommGetAsyncError(comm, &state)));
    }
    if (state != ncclSuccess)
        return fm_error(FM_ERR_CUDA, "NCCL: %s failed: %s%s%s", what, ncclGetErrorString(state),
                        *ncclGetLastError(comm) ? ": " : "", ncclGetLastError(comm));
    return FM_OK;
}

fm_status fm_nccl_unique_id(unsigned char id[FM_NCCL_ID_BYTES])
{
    if (!id)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_unique_id: NULL id");
    ncclUniqueId uid;
    memset(&uid, 0, sizeof uid);
    FM_TRY(FM_NCCL_CHECK(ncclGetUniqueId(&uid)));
    memcpy(id, uid.internal, FM_NCCL_ID_BYTES);
    return FM_OK;
}

fm_status fm_nccl_create(fm_nccl **out, const unsigned char id[FM_NCCL_ID_BYTES], int world, int rank, double timeout_s)
{
    if (!out || !id)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_create: NULL argument");
    *out = NULL;
    if (world < 1 || rank < 0 || rank >= world || !(timeout_s > 0.0))
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_create: rank %d of world %d, timeout %g s", rank, world,
                        timeout_s);
    /* NCCL runs on the current device; make sure fedmm's context and stream exist there first */
    struct CUstream_st *stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    fm_nccl *c = calloc(1, sizeof *c);
    if (!c)
        return fm_error(FM_ERR_NO_MEMORY, "fm_nccl_create: no memory");
    c->world = world;
    c->rank = rank;
    c->timeout_s = timeout_s;
    ncclUniqueId uid;
    memcpy(uid.internal, id, FM_NCCL_ID_BYTES);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->comm, world, uid, rank, &config);
    fm_status st = FM_OK;
    int aborted = 0;
    if (r != ncclSuccess && r != ncclInProgress) {
        st = COMM_CHECK(c->comm, r);
        if (c->comm)
            (void)ncclCommAbort(c->comm); /* unchecked: the first failure is the one reported */
        aborted = 1;
    } else {
        char what[96];
        snprintf(what, sizeof what, "joining a group of %d ranks as rank %d", world, rank);
        st = settle(c->comm, r, what, timeout_s, &aborted);
        if (st != FM_OK && !aborted)
            (void)ncclCommAbort(c->comm);
    }
    if (st != FM_OK) {
        free(c);
        return st;
    }
    *out = c;
    return FM_OK;
}

void fm_nccl_destroy(fm_nccl *c)
{
    if (!c)
        return;
    int aborted = 0;
    /* Finalize flushes the queued collectives; destroy frees. A failure here leaves nothing to do but abort. */
    ncclResult_t r = ncclCommFinalize(c->comm);
    fm_status st = r == ncclSuccess || r == ncclInProgress ? settle(c->comm, r, "finalize", c->timeout_s, &aborted)
                                                           : COMM_CHECK(c->comm, r);
    if (aborted) {
        free(c);
        return;
    }
    if (st == FM_OK)
        (void)COMM_CHECK(c->comm, ncclCommDestroy(c->comm));
    else
        (void)ncclCommAbort(c->comm);
    free(c);
}

/* After a collective was queued: wait until NCCL has taken it (non-blocking communicators may answer
 * ncclInProgress), so that the next call on the communicator is legal. */
static fm_status queued(fm_nccl *c, ncclResult_t r, const char *what)
{
    if (r != ncclSuccess && r != ncclInProgress)
        return check_comm_at((int)r, c->comm, what, __FILE__, __LINE__);
    int aborted = 0;
    return settle(c->comm, r, what, c->timeout_s, &aborted);
}

fm_status fm_nccl_allreduce_mean(fm_nccl *c, float *buf, size_t n)
{
    if (!c)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_allreduce_mean: NULL communicator");
    if (n == 0)
        return FM_OK;
    if (!buf)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_allreduce_mean: NULL buffer of %zu floats", n);
    struct CUstream_st *stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    return queued(c, ncclAllReduce(buf, buf, n, ncclFloat32, ncclAvg, c->comm, (cudaStream_t)stream),
                  "ncclAllReduce(ncclAvg, float32)");
}

fm_status fm_nccl_broadcast(fm_nccl *c, float *buf, size_t n, int root)
{
    if (!c)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_broadcast: NULL communicator");
    if (root < 0 || root >= c->world)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_broadcast: root %d of world %d", root, c->world);
    if (n == 0)
        return FM_OK;
    if (!buf)
        return fm_error(FM_ERR_INVALID_ARG, "fm_nccl_broadcast: NULL buffer of %zu floats", n);
    struct CUstream_st *stream = NULL;
    FM_TRY(fm_cuda_get_stream(&stream));
    return queued(c, ncclBroadcast(buf, buf, n, ncclFloat32, root, c->comm, (cudaStream_t)stream), "ncclBroadcast");
}

#else

/* ISO C wants at least one declaration in a translation unit. */
typedef int fm_nccl_not_built;

#endif
