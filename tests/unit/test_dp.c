/* Data parallelism's host side (include/fedmm/dp.h, src/core/dp.c), no GPU needed: the options (validation, the
 * WORLD_SIZE / RANK environment), the id file through which the ranks meet (atomic publish, polling with a timeout,
 * refusal of garbage, of truncated ids and of another world size, a writer that appears while the reader waits),
 * and the group on the CPU (world 1 is a no-op, world > 1 is refused with a reason). */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fedmm/dp.h"

static char tmpdir[256];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fedmm-test-dp-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *e;
        char path[600];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", tmpdir, e->d_name);
            remove(path);
        }
        closedir(d);
    }
    return rmdir(tmpdir) == 0 ? 0 : -1;
}

static void path_in_tmp(char *out, size_t len, const char *name) { snprintf(out, len, "%s/%s", tmpdir, name); }

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void expect_error(fm_status got, fm_status want, const char *needle)
{
    if (got != want)
        fail_msg("status %s (%s), expected %s", fm_strerror(got), fm_last_error(), fm_strerror(want));
    if (needle && !strstr(fm_last_error(), needle))
        fail_msg("message '%s' lacks '%s'", fm_last_error(), needle);
}

static void random_id(unsigned char *id, size_t n, uint64_t salt)
{
    fm_rng rng = fm_rng_make(fm_test_seed(), salt);
    float tmp[128];
    fm_test_fill(&rng, tmp, n, 0.0f, 256.0f);
    for (size_t i = 0; i < n; i++)
        id[i] = (unsigned char)tmp[i];
    id[0] = 0; /* zero bytes and 0xff must survive the text format */
    id[n - 1] = 0xff;
}

static void test_options(void **state)
{
    (void)state;
    fm_dp_options o = fm_dp_default_options();
    assert_int_equal(o.world, 1);
    assert_int_equal(o.rank, 0);
    assert_null(o.id_file);
    assert_true(o.timeout_s > 0.0);
    assert_int_equal(fm_dp_options_validate(&o), FM_OK);
    o.world = 0;
    expect_error(fm_dp_options_validate(&o), FM_ERR_CONFIG, "world size 0");
    o.world = 2;
    o.rank = 2;
    expect_error(fm_dp_options_validate(&o), FM_ERR_CONFIG, "rank 2 is outside [0, 2)");
    o.rank = 1;
    expect_error(fm_dp_options_validate(&o), FM_ERR_CONFIG, "needs an id file");
    o.id_file = "/tmp/x";
    assert_int_equal(fm_dp_options_validate(&o), FM_OK);
    o.timeout_s = 0.0;
    expect_error(fm_dp_options_validate(&o), FM_ERR_CONFIG, "timeout");
    assert_int_equal(fm_dp_options_validate(NULL), FM_ERR_INVALID_ARG);
}

static void test_options_from_env(void **state)
{
    (void)state;
    fm_dp_options o = fm_dp_default_options();
    unsetenv("WORLD_SIZE");
    unsetenv("RANK");
    assert_int_equal(fm_dp_options_from_env(&o), FM_OK);
    assert_int_equal(o.world, 1);
    assert_int_equal(o.rank, 0);
    setenv("WORLD_SIZE", "4", 1);
    setenv("RANK", "3", 1);
    assert_int_equal(fm_dp_options_from_env(&o), FM_OK);
    assert_int_equal(o.world, 4);
    assert_int_equal(o.rank, 3);
    setenv("RANK", "two", 1);
    fm_dp_options before = o;
    expect_error(fm_dp_options_from_env(&o), FM_ERR_CONFIG, "RANK='two'");
    assert_int_equal(o.world, before.world); /* unchanged on failure */
    setenv("RANK", "-1", 1);
    expect_error(fm_dp_options_from_env(&o), FM_ERR_CONFIG, "RANK");
    unsetenv("WORLD_SIZE");
    unsetenv("RANK");
}

static void test_id_round_trip(void **state)
{
    (void)state;
    char path[600];
    path_in_tmp(path, sizeof path, "id-round-trip");
    unsigned char id[128], got[128];
    random_id(id, sizeof id, 1);
    assert_int_equal(fm_dp_id_publish(path, 3, id, sizeof id), FM_OK);
    memset(got, 0x5a, sizeof got);
    assert_int_equal(fm_dp_id_wait(path, 3, got, sizeof got, 1.0), FM_OK);
    assert_memory_equal(id, got, sizeof id);
    /* publishing again replaces it whole */
    random_id(id, sizeof id, 2);
    assert_int_equal(fm_dp_id_publish(path, 3, id, sizeof id), FM_OK);
    assert_int_equal(fm_dp_id_wait(path, 3, got, sizeof got, 1.0), FM_OK);
    assert_memory_equal(id, got, sizeof id);
    /* no temporary file is left beside it */
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp."))
            fail_msg("temporary file %s left behind", e->d_name);
    closedir(d);
    remove(path);
}

static void test_id_wait_times_out(void **state)
{
    (void)state;
    char path[600];
    path_in_tmp(path, sizeof path, "never-written");
    unsigned char got[128];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 0.2), FM_ERR_NETWORK, "never-written");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (waited < 0.19)
        fail_msg("gave up after %.3f s, before the 0.2 s timeout", waited);
    /* a directory that does not exist looks like a file not yet written: the same timeout */
    expect_error(fm_dp_id_wait("/nonexistent-dir-fedmm/x/id", 2, got, sizeof got, 0.05), FM_ERR_NETWORK, NULL);
}

static void test_id_bad_files(void **state)
{
    (void)state;
    char path[600];
    path_in_tmp(path, sizeof path, "id-bad");
    unsigned char id[128], got[128];
    random_id(id, sizeof id, 3);
    /* another world size: the ranks disagree */
    assert_int_equal(fm_dp_id_publish(path, 4, id, sizeof id), FM_OK);
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 1.0), FM_ERR_CONFIG, "group of 4 ranks");
    /* a shorter id than expected */
    assert_int_equal(fm_dp_id_publish(path, 2, id, 64), FM_OK);
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 1.0), FM_ERR_PARSE, "128 hexadecimal bytes");
    /* a longer one */
    assert_int_equal(fm_dp_id_publish(path, 2, id, 128), FM_OK);
    expect_error(fm_dp_id_wait(path, 2, got, 64, 1.0), FM_ERR_PARSE, "64 bytes long");
    /* not an id file at all, an empty one, a truncated one */
    write_text(path, "hello world\n");
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 1.0), FM_ERR_PARSE, "not a fedmm NCCL id file");
    write_text(path, "");
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 1.0), FM_ERR_PARSE, NULL);
    write_text(path, "fedmm-nccl-id 1\nworld 2\n00ff");
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 1.0), FM_ERR_PARSE, NULL);
    write_text(path, "fedmm-nccl-id 1\nwrld 2\n");
    expect_error(fm_dp_id_wait(path, 2, got, sizeof got, 1.0), FM_ERR_PARSE, "'world' line");
    /* bad arguments */
    assert_int_equal(fm_dp_id_publish(path, 2, id, 0), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_dp_id_publish(NULL, 2, id, 8), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_dp_id_wait(path, 2, got, FM_DP_ID_MAX_BYTES + 1, 1.0), FM_ERR_INVALID_ARG);
    /* a directory that does not exist: FM_ERR_IO naming it */
    expect_error(fm_dp_id_publish("/nonexistent-dir-fedmm/id", 2, id, 8), FM_ERR_IO, "/nonexistent-dir-fedmm/id");
    remove(path);
}

/* A reader that starts before the writer: the child publishes after a while, the parent's wait sees the file. */
static void test_id_writer_comes_later(void **state)
{
    (void)state;
    char path[600];
    path_in_tmp(path, sizeof path, "id-later");
    unsigned char id[128], got[128];
    random_id(id, sizeof id, 4);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct timespec nap = {0, 300 * 1000000L};
        nanosleep(&nap, NULL);
        _exit(fm_dp_id_publish(path, 2, id, sizeof id) == FM_OK ? 0 : 1);
    }
    fm_status st = fm_dp_id_wait(path, 2, got, sizeof got, 20.0);
    int wst = 0;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    if (st != FM_OK)
        fail_msg("wait: %s", fm_last_error());
    assert_memory_equal(id, got, sizeof id);
    remove(path);
}

static void test_group_on_cpu(void **state)
{
    (void)state;
    fm_dp_options o = fm_dp_default_options();
    fm_dp *dp = NULL;
    assert_int_equal(fm_dp_create(&dp, &o, FM_DEVICE_CPU), FM_OK);
    assert_int_equal(fm_dp_world(dp), 1);
    assert_int_equal(fm_dp_rank(dp), 0);
    assert_int_equal(fm_dp_uses_nccl(dp), 0);
    float x[5] = {1.5f, -2.0f, 0.25f, 3.0e7f, -0.0f}, y[5];
    memcpy(y, x, sizeof x);
    assert_int_equal(fm_dp_allreduce_mean(dp, y, 5), FM_OK);
    assert_memory_equal(x, y, sizeof x); /* one rank: the mean is the vector itself */
    assert_int_equal(fm_dp_broadcast(dp, y, 5), FM_OK);
    assert_memory_equal(x, y, sizeof x);
    fm_dp_destroy(dp);
    fm_dp_destroy(NULL);
    /* more than one rank on the CPU: refused, with the reason */
    char path[600];
    path_in_tmp(path, sizeof path, "cpu-id");
    o.world = 2;
    o.id_file = path;
    dp = (fm_dp *)&o; /* must be reset to NULL */
    expect_error(fm_dp_create(&dp, &o, FM_DEVICE_CPU), FM_ERR_UNSUPPORTED, "CUDA devices through NCCL");
    assert_null(dp);
    /* invalid options are refused before anything else */
    o.rank = 5;
    expect_error(fm_dp_create(&dp, &o, FM_DEVICE_CPU), FM_ERR_CONFIG, "rank 5");
    assert_int_equal(fm_dp_allreduce_mean(NULL, x, 5), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_dp_world(NULL), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options),       cmocka_unit_test(test_options_from_env),
        cmocka_unit_test(test_id_round_trip), cmocka_unit_test(test_id_wait_times_out),
        cmocka_unit_test(test_id_bad_files),  cmocka_unit_test(test_id_writer_comes_later),
        cmocka_unit_test(test_group_on_cpu),
    };
    return cmocka_run_group_tests_name("data parallelism: options, id file, CPU group", tests, setup_dir, teardown_dir);
}
