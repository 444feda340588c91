/* Data parallelism inside one site (include/fedmm/dp.h): options, the id file through which the ranks meet, and
 * the group itself, whose collectives go to cuda/nccl.c when the build has NCCL. */
#include "fedmm/dp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef FEDMM_WITH_NCCL
#include "cuda/nccl.h"
#endif

#define ID_MAGIC "fedmm-nccl-id 1"

struct fm_dp {
    int world, rank;
    fm_device device;
#ifdef FEDMM_WITH_NCCL
    fm_nccl *nccl; /* NULL: world 1 without NCCL, or on the CPU */
#endif
};

fm_dp_options fm_dp_default_options(void)
{
    fm_dp_options o;
    memset(&o, 0, sizeof o);
    o.world = 1;
    o.rank = 0;
    o.id_file = NULL;
    o.timeout_s = 300.0;
    return o;
}

static fm_status env_int(const char *name, int *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return FM_OK;
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0' || x < 0 || x > 1 << 20)
        return fm_error(FM_ERR_CONFIG, "environment %s='%s' is not a rank count or index", name, v);
    *out = (int)x;
    return FM_OK;
}

fm_status fm_dp_options_from_env(fm_dp_options *o)
{
    if (!o)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_options_from_env: NULL options");
    fm_dp_options t = *o;
    FM_TRY(env_int("WORLD_SIZE", &t.world));
    FM_TRY(env_int("RANK", &t.rank));
    *o = t;
    return FM_OK;
}

fm_status fm_dp_options_validate(const fm_dp_options *o)
{
    if (!o)
        return fm_error(FM_ERR_INVALID_ARG, "data parallelism: NULL options");
    if (o->world < 1)
        return fm_error(FM_ERR_CONFIG, "data parallelism: world size %d must be >= 1", o->world);
    if (o->rank < 0 || o->rank >= o->world)
        return fm_error(FM_ERR_CONFIG, "data parallelism: rank %d is outside [0, %d)", o->rank, o->world);
    if (!(o->timeout_s > 0.0))
        return fm_error(FM_ERR_CONFIG, "data parallelism: timeout %g s must be > 0", o->timeout_s);
    if (o->world > 1 && (!o->id_file || !*o->id_file))
        return fm_error(FM_ERR_CONFIG,
                        "data parallelism over %d ranks needs an id file (where rank 0 publishes "
                        "the NCCL unique id)",
                        o->world);
    return FM_OK;
}

/* ---- the id file ------------------------------------------------------------------------------------------- */

fm_status fm_dp_id_publish(const char *path, int world, const void *id, size_t len)
{
    if (!path || !*path || !id || len == 0 || len > FM_DP_ID_MAX_BYTES)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_id_publish: no path, no id or an id of %zu bytes", len);
    char tmp[4200];
    int w = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (w < 0 || (size_t)w >= sizeof tmp)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_id_publish: path '%s' is too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return fm_error(FM_ERR_IO, "data parallelism: cannot write %s: %s", tmp, strerror(errno));
    int bad = fprintf(f, "%s\nworld %d\n", ID_MAGIC, world) < 0;
    const unsigned char *b = id;
    for (size_t i = 0; i < len && !bad; i++)
        bad = fprintf(f, "%02x", b[i]) < 0;
    bad = bad || fprintf(f, "\n") < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0;
    const int err = errno;
    if (fclose(f) != 0 && !bad)
        bad = 1;
    if (bad) {
        (void)remove(tmp);
        return fm_error(FM_ERR_IO, "data parallelism: writing %s failed: %s", tmp, strerror(err ? err : EIO));
    }
    /* rename is atomic within a file system: a reader sees no file or the whole file */
    if (rename(tmp, path) != 0) {
        const int e = errno;
        (void)remove(tmp);
        return fm_error(FM_ERR_IO, "data parallelism: cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
    return FM_OK;
}

static int hex_nibble(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Parses an id file's text; FM_ERR_PARSE or FM_ERR_CONFIG (world) with path in the message. */
static fm_status parse_id(const char *path, const char *text, int world, unsigned char *id, size_t len)
{
    const size_t ml = strlen(ID_MAGIC);
    if (strncmp(text, ID_MAGIC, ml) != 0 || text[ml] != '\n')
        return fm_error(FM_ERR_PARSE, "data parallelism: %s is not a fedmm NCCL id file", path);
    const char *p = text + ml + 1;
    int file_world = 0, used = 0;
    if (sscanf(p, "world %d\n%n", &file_world, &used) != 1 || used == 0)
        return fm_error(FM_ERR_PARSE, "data parallelism: %s has no 'world' line", path);
    if (file_world != world)
        return fm_error(FM_ERR_CONFIG,
                        "data parallelism: %s was written for a group of %d ranks, this rank expects %d (the "
                        "ranks disagree on the world size)",
                        path, file_world, world);
    p += used;
    for (size_t i = 0; i < len; i++) {
        const int hi = hex_nibble(p[2 * i]), lo = hi < 0 ? -1 : hex_nibble(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return fm_error(FM_ERR_PARSE, "data parallelism: %s: the id is not %zu hexadecimal bytes", path, len);
        id[i] = (unsigned char)(hi << 4 | lo);
    }
    if (p[2 * len] != '\n' || p[2 * len + 1] != '\0')
        return fm_error(FM_ERR_PARSE, "data parallelism: %s: the id is not %zu bytes long", path, len);
    return FM_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

fm_status fm_dp_id_wait(const char *path, int world, void *id, size_t len, double timeout_s)
{
    if (!path || !*path || !id || len == 0 || len > FM_DP_ID_MAX_BYTES)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_id_wait: no path, no id or an id of %zu bytes", len);
    const double t0 = now_s();
    for (;;) {
        FILE *f = fopen(path, "r");
        if (f) {
            /* magic, world line, 2·len hex digits, newline: well under this */
            char text[2 * FM_DP_ID_MAX_BYTES + 128];
            size_t got = fread(text, 1, sizeof text - 1, f);
            const int err = ferror(f);
            fclose(f);
            if (err)
                return fm_error(FM_ERR_IO, "data parallelism: reading %s failed", path);
            text[got] = '\0';
            return parse_id(path, text, world, id, len);
        }
        if (errno != ENOENT)
            return fm_error(FM_ERR_IO, "data parallelism: cannot open %s: %s", path, strerror(errno));
        if (now_s() - t0 >= timeout_s)
            return fm_error(FM_ERR_NETWORK,
                            "data parallelism: no id file at %s after %g s (rank 0 writes it; is rank 0 running "
                            "with the same id file?)",
                            path, timeout_s);
        struct timespec nap = {0, 20 * 1000000L};
        nanosleep(&nap, NULL);
    }
}

/* ---- the group ----------------------------------------------------------------------------------------------- */

fm_status fm_dp_create(fm_dp **out, const fm_dp_options *o, fm_device device)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_create: NULL out");
    *out = NULL;
    FM_TRY(fm_dp_options_validate(o));
    if (device != FM_DEVICE_CPU && device != FM_DEVICE_CUDA)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_create: device %d", (int)device);
    fm_dp *dp = calloc(1, sizeof *dp);
    if (!dp)
        return fm_error(FM_ERR_NO_MEMORY, "fm_dp_create: no memory");
    dp->world = o->world;
    dp->rank = o->rank;
    dp->device = device;
    if (device == FM_DEVICE_CPU) {
        if (o->world > 1) {
            free(dp);
            return fm_error(FM_ERR_UNSUPPORTED,
                            "data parallelism over %d ranks runs on CUDA devices through NCCL; this run is on the CPU",
                            o->world);
        }
        *out = dp;
        return FM_OK;
    }
#ifdef FEDMM_WITH_NCCL
    unsigned char id[FM_NCCL_ID_BYTES];
    fm_status st = FM_OK;
    if (o->rank == 0) {
        st = fm_nccl_unique_id(id);
        if (st == FM_OK && o->world > 1)
            st = fm_dp_id_publish(o->id_file, o->world, id, sizeof id);
    } else {
        st = fm_dp_id_wait(o->id_file, o->world, id, sizeof id, o->timeout_s);
    }
    if (st == FM_OK)
        st = fm_nccl_create(&dp->nccl, id, o->world, o->rank, o->timeout_s);
    /* every rank has joined (or the group failed): the id is spent either way */
    if (o->rank == 0 && o->world > 1)
        (void)remove(o->id_file);
    if (st != FM_OK) {
        free(dp);
        return st;
    }
#else
    if (o->world > 1) {
        free(dp);
        return fm_error(FM_ERR_UNSUPPORTED,
                        "data parallelism over %d ranks needs NCCL, and this fedmm was built without it (see the "
                        "CMake configure output)",
                        o->world);
    }
#endif
    *out = dp;
    return FM_OK;
}

void fm_dp_destroy(fm_dp *dp)
{
    if (!dp)
        return;
#ifdef FEDMM_WITH_NCCL
    fm_nccl_destroy(dp->nccl);
#endif
    free(dp);
}

int fm_dp_world(const fm_dp *dp) { return dp ? dp->world : 1; }

int fm_dp_rank(const fm_dp *dp) { return dp ? dp->rank : 0; }

int fm_dp_uses_nccl(const fm_dp *dp)
{
#ifdef FEDMM_WITH_NCCL
    return dp && dp->nccl != NULL;
#else
    (void)dp;
    return 0;
#endif
}

fm_status fm_dp_allreduce_mean(fm_dp *dp, float *buf, size_t n)
{
    if (!dp)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_allreduce_mean: NULL group");
#ifdef FEDMM_WITH_NCCL
    if (dp->nccl)
        return fm_nccl_allreduce_mean(dp->nccl, buf, n);
#endif
    (void)buf;
    (void)n;
    return FM_OK; /* one rank: the mean is the buffer itself */
}

fm_status fm_dp_broadcast(fm_dp *dp, float *buf, size_t n)
{
    if (!dp)
        return fm_error(FM_ERR_INVALID_ARG, "fm_dp_broadcast: NULL group");
#ifdef FEDMM_WITH_NCCL
    if (dp->nccl)
        return fm_nccl_broadcast(dp->nccl, buf, n, 0);
#endif
    (void)buf;
    (void)n;
    return FM_OK;
}
