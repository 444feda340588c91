/* Data parallelism with two ranks in two processes (include/fedmm/dp.h): the test starts itself twice as ranks 0
 * and 1 (each with its own GPU through CUDA_VISIBLE_DEVICES), they meet through an id file in a fresh directory,
 * all-reduce known vectors (rank r holds r + 1 + i/4 at i: the mean is 1.5 + i/4, exact in float) and broadcast
 * rank 0's; each checks every element and exits 0 or 1, and the parent checks both. Needs two GPUs and NCCL; with
 * fewer GPUs (or without NCCL) it reports itself skipped, visibly. */
#include "gpu_test.h"

#if !defined(FEDMM_WITH_CUDA) || !defined(FEDMM_WITH_NCCL)

int main(void)
{
    printf("SKIPPED: gpu.nccl_world2: this fedmm was built without NCCL / CUDA\n");
    return FM_TEST_SKIP;
}

#else

#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "fedmm/dp.h"

#include "../../cuda/runtime.h"

extern char **environ;

#define N_FLOATS 1000003
#define TIMEOUT_S 120.0

/* ---- one rank --------------------------------------------------------------------------------------------- */

static int rank_main(int rank, const char *id_file)
{
    fm_dp_options o = fm_dp_default_options();
    o.world = 2;
    o.rank = rank;
    o.id_file = id_file;
    o.timeout_s = TIMEOUT_S / 2;
    fm_dp *dp = NULL;
    fm_status st = fm_dp_create(&dp, &o, FM_DEVICE_CUDA);
    if (st != FM_OK) {
        fprintf(stderr, "rank %d: fm_dp_create: %s\n", rank, fm_last_error());
        return 1;
    }
    float *x = malloc(N_FLOATS * sizeof(float)), *d = NULL;
    if (!x)
        return 1;
    for (size_t i = 0; i < N_FLOATS; i++)
        x[i] = (float)(rank + 1) + (float)(i % 1024) * 0.25f;
    st = fm_cuda_malloc((void **)&d, N_FLOATS * sizeof(float));
    if (st == FM_OK)
        st = fm_cuda_memcpy(d, x, N_FLOATS * sizeof(float), 0);
    if (st == FM_OK)
        st = fm_dp_allreduce_mean(dp, d, N_FLOATS);
    if (st == FM_OK)
        st = fm_cuda_memcpy(x, d, N_FLOATS * sizeof(float), 1);
    int bad = st != FM_OK;
    for (size_t i = 0; i < N_FLOATS && !bad; i++) {
        const float want = 1.5f + (float)(i % 1024) * 0.25f;
        if (x[i] != want) {
            fprintf(stderr, "rank %d: all-reduce mean element %zu is %.9g, want %.9g\n", rank, i, (double)x[i],
                    (double)want);
            bad = 1;
        }
    }
    /* broadcast: every rank ends with rank 0's vector */
    for (size_t i = 0; i < N_FLOATS && !bad; i++)
        x[i] = rank == 0 ? (float)i : -1.0f;
    if (!bad)
        st = fm_cuda_memcpy(d, x, N_FLOATS * sizeof(float), 0);
    if (!bad && st == FM_OK)
        st = fm_dp_broadcast(dp, d, N_FLOATS);
    if (!bad && st == FM_OK)
        st = fm_cuda_memcpy(x, d, N_FLOATS * sizeof(float), 1);
    bad = bad || st != FM_OK;
    for (size_t i = 0; i < N_FLOATS && !bad; i++)
        if (x[i] != (float)i) {
            fprintf(stderr, "rank %d: broadcast element %zu is %.9g\n", rank, i, (double)x[i]);
            bad = 1;
        }
    if (st != FM_OK)
        fprintf(stderr, "rank %d: %s\n", rank, fm_last_error());
    fm_cuda_free(d);
    free(x);
    fm_dp_destroy(dp);
    (void)fm_cuda_shutdown();
    if (!bad)
        printf("rank %d of 2: all-reduce mean and broadcast of %d floats correct\n", rank, N_FLOATS);
    return bad;
}

/* ---- the parent ------------------------------------------------------------------------------------------- */

/* The r-th entry of CUDA_VISIBLE_DEVICES when it is set, else r: the GPU rank r gets. */
static void visible_device(int r, char *out, size_t len)
{
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    if (!v || !*v) {
        snprintf(out, len, "%d", r);
        return;
    }
    const char *p = v;
    for (int i = 0; i < r && p; i++) {
        p = strchr(p, ',');
        if (p)
            p++;
    }
    size_t n = p ? strcspn(p, ",") : 0;
    snprintf(out, len, "%.*s", (int)n, p ? p : "");
}

static pid_t spawn_rank(int r, const char *id_file)
{
    char dev[64], env_dev[96], rank_s[16];
    visible_device(r, dev, sizeof dev);
    snprintf(env_dev, sizeof env_dev, "CUDA_VISIBLE_DEVICES=%s", dev);
    snprintf(rank_s, sizeof rank_s, "%d", r);
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **envp = calloc(ne + 2, sizeof(char *));
    if (!envp)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) != 0)
            envp[k++] = environ[i];
    envp[k++] = env_dev;
    char *args[] = {"/proc/self/exe", "--rank", rank_s, (char *)id_file, NULL};
    pid_t pid = -1;
    int e = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, envp);
    free(envp);
    if (e != 0) {
        fprintf(stderr, "posix_spawn: %s\n", strerror(e));
        return -1;
    }
    printf("started rank %d as pid %ld on GPU %s\n", r, (long)pid, dev);
    return pid;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_two_ranks(void **state)
{
    (void)state;
    char dir[] = "/tmp/fedmm-test-nccl-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char id_file[128];
    snprintf(id_file, sizeof id_file, "%s/dp-nccl-id", dir);
    fflush(NULL);
    pid_t pids[2] = {spawn_rank(1, id_file), spawn_rank(0, id_file)}; /* rank 1 first: it must wait for 0 */
    int status[2] = {-1, -1}, done[2] = {0, 0};
    const double t0 = now_s();
    while ((!done[0] || !done[1]) && now_s() - t0 < TIMEOUT_S) {
        for (int i = 0; i < 2; i++) {
            if (done[i] || pids[i] <= 0) {
                done[i] = 1;
                continue;
            }
            int wst = 0;
            pid_t w = waitpid(pids[i], &wst, WNOHANG);
            if (w == pids[i]) {
                done[i] = 1;
                status[i] = WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + (WIFSIGNALED(wst) ? WTERMSIG(wst) : 0);
            }
        }
        struct timespec nap = {0, 50 * 1000000L};
        nanosleep(&nap, NULL);
    }
    for (int i = 0; i < 2; i++) {
        if (!done[i] && pids[i] > 0) { /* our own child, by its pid */
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    }
    remove(id_file);
    rmdir(dir);
    for (int i = 0; i < 2; i++)
        if (status[i] != 0)
            fail_msg("rank %d (pid %ld) %s (status %d)", i == 0 ? 1 : 0, (long)pids[i],
                     done[i] ? "failed" : "did not finish in time", status[i]);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--rank") == 0)
        return rank_main(atoi(argv[2]), argv[3]);
    char why[384];
    int count = fm_cuda_probe(why, sizeof why);
    if (count == 0)
        return fm_gpu_test_no_device("gpu.nccl_world2", why);
    int all = 0;
    if (cudaGetDeviceCount(&all) != cudaSuccess)
        all = count;
    (void)fm_cuda_shutdown();
    if (all < 2) {
        /* one GPU is a valid machine: skipped, not failed, even where a GPU is required */
        printf("SKIPPED: gpu.nccl_world2: two ranks need two GPUs, this machine shows %d\n", all);
        return FM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_ranks),
    };
    return cmocka_run_group_tests_name("data parallelism with two ranks in two processes", tests, NULL, NULL) ? 1 : 0;
}

#endif
