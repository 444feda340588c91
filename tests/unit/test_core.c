/* Core: status messages, tensor views and their bounds, arenas, and RNG determinism. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/arena.h"
#include "fedmm/log.h"
#include "fedmm/rng.h"
#include "fedmm/status.h"
#include "fedmm/tensor.h"
#include "fedmm/threads.h"
#include "testutil.h"

static void test_status_names_and_messages(void **state)
{
    (void)state;
    for (int s = 0; s < FM_STATUS_COUNT; s++) {
        const char *name = fm_strerror((fm_status)s);
        assert_non_null(name);
        assert_true(strlen(name) > 1);
        for (int t = 0; t < s; t++) /* every code has its own name */
            assert_string_not_equal(name, fm_strerror((fm_status)t));
    }
    assert_string_equal(fm_strerror((fm_status)999), "unknown status");
    fm_clear_error();
    assert_string_equal(fm_last_error(), "");
    assert_int_equal(fm_error(FM_ERR_SHAPE, "x has %d columns", 7), FM_ERR_SHAPE);
    assert_string_equal(fm_last_error(), "x has 7 columns");
}

static fm_status fails_then_stops(int *reached)
{
    FM_TRY(fm_error(FM_ERR_IO, "first"));
    *reached = 1;
    return FM_OK;
}

static void test_try_macro_propagates(void **state)
{
    (void)state;
    int reached = 0;
    assert_int_equal(fails_then_stops(&reached), FM_ERR_IO);
    assert_int_equal(reached, 0);
}

static void test_tensor_view_bounds(void **state)
{
    (void)state;
    float buf[24];
    fm_tensor t;
    int64_t shape[3] = {2, 3, 4};
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CPU, 3, shape), FM_OK);
    assert_int_equal(fm_tensor_numel(&t), 24);
    assert_int_equal(fm_tensor_nbytes(&t), sizeof buf);
    assert_int_equal(t.stride[0], 12);
    assert_int_equal(t.stride[1], 4);
    assert_int_equal(t.stride[2], 1);
    assert_true(fm_tensor_is_contiguous(&t));
    /* one element too many, at an offset, or a negative dim */
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 1, FM_F32, FM_DEVICE_CPU, 3, shape), FM_ERR_RANGE);
    int64_t big[1] = {25};
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CPU, 1, big), FM_ERR_RANGE);
    int64_t neg[2] = {2, -1};
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CPU, 2, neg), FM_ERR_SHAPE);
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CPU, 7, shape), FM_ERR_SHAPE);
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, (fm_dtype)42, FM_DEVICE_CPU, 1, shape), FM_ERR_DTYPE);
    int64_t overflow[3] = {INT64_MAX / 2, 4, 4};
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CPU, 3, overflow), FM_ERR_RANGE);
    /* 16 bf16 elements fit where 8 f32 do */
    int64_t n16[1] = {16};
    assert_int_equal(fm_tensor_view(&t, buf, 32, 0, FM_BF16, FM_DEVICE_CPU, 1, n16), FM_OK);
    assert_int_equal(fm_tensor_view(&t, buf, 32, 0, FM_F32, FM_DEVICE_CPU, 1, n16), FM_ERR_RANGE);
}

static void test_tensor_narrow_reshape_expect(void **state)
{
    (void)state;
    float buf[24];
    for (int i = 0; i < 24; i++)
        buf[i] = (float)i;
    fm_tensor t, n, r;
    int64_t shape[2] = {6, 4};
    assert_int_equal(fm_tensor_view(&t, buf, sizeof buf, 0, FM_F32, FM_DEVICE_CPU, 2, shape), FM_OK);
    assert_int_equal(fm_tensor_narrow(&n, &t, 0, 2, 5), FM_OK);
    assert_int_equal(n.shape[0], 3);
    assert_float_equal(((float *)n.data)[0], 8.0f, 0.0f);
    assert_true(fm_tensor_is_contiguous(&n));
    assert_int_equal(fm_tensor_narrow(&n, &t, 0, 4, 7), FM_ERR_RANGE);
    assert_int_equal(fm_tensor_narrow(&n, &t, 2, 0, 1), FM_ERR_RANGE);
    /* narrowing columns breaks contiguity, and a reshape of that is refused */
    assert_int_equal(fm_tensor_narrow(&n, &t, 1, 1, 3), FM_OK);
    assert_false(fm_tensor_is_contiguous(&n));
    int64_t flat[1] = {12};
    assert_int_equal(fm_tensor_reshape(&r, &n, 1, flat), FM_ERR_SHAPE);
    int64_t s3[3] = {2, 3, 4};
    assert_int_equal(fm_tensor_reshape(&r, &t, 3, s3), FM_OK);
    assert_int_equal(r.stride[0], 12);
    int64_t bad[2] = {5, 5};
    assert_int_equal(fm_tensor_reshape(&r, &t, 2, bad), FM_ERR_SHAPE);
    assert_non_null(strstr(fm_last_error(), "24 elements"));
    int64_t want[2] = {6, -1};
    assert_int_equal(fm_tensor_expect(&t, "x", FM_F32, 2, want), FM_OK);
    int64_t want2[2] = {5, 4};
    assert_int_equal(fm_tensor_expect(&t, "x", FM_F32, 2, want2), FM_ERR_SHAPE);
    assert_string_equal(fm_last_error(), "x: shape (6, 4), expected (5, 4)");
    assert_int_equal(fm_tensor_expect(&t, "x", FM_I32, 2, want), FM_ERR_DTYPE);
}

static void test_arena(void **state)
{
    (void)state;
    fm_arena a;
    assert_int_equal(fm_arena_init(&a, 4096, FM_DEVICE_CPU), FM_OK);
    void *p1, *p2;
    assert_int_equal(fm_arena_alloc(&a, 10, &p1), FM_OK);
    assert_int_equal(fm_arena_alloc(&a, 300, &p2), FM_OK);
    assert_int_equal(((uintptr_t)p2) % FM_ARENA_ALIGN, 0);
    assert_int_equal((char *)p2 - (char *)p1, FM_ARENA_ALIGN);
    size_t mark = fm_arena_mark(&a);
    fm_tensor t;
    int64_t shape[2] = {16, 16};
    assert_int_equal(fm_arena_tensor(&a, &t, FM_F32, 2, shape), FM_OK);
    assert_int_equal(fm_tensor_nbytes(&t), 1024);
    fm_arena_rewind(&a, mark);
    assert_int_equal(a.used, mark);
    int64_t huge[1] = {4096};
    assert_int_equal(fm_arena_tensor(&a, &t, FM_F32, 1, huge), FM_ERR_NO_MEMORY);
    assert_true(a.high_water >= mark + 1024);
    fm_arena_reset(&a);
    assert_int_equal(a.used, 0);
    fm_arena_free(&a);
    fm_arena_free(&a); /* twice is safe */
}

/* Philox-4x32-10 known-answer vectors from the Random123 distribution (kat_vectors). */
static void test_philox_known_answers(void **state)
{
    (void)state;
    uint32_t out[4];
    fm_philox4x32(0, 0, 0, out);
    assert_int_equal(out[0], 0x6627e8d5u);
    assert_int_equal(out[1], 0xe169c58du);
    assert_int_equal(out[2], 0xbc57ac4cu);
    assert_int_equal(out[3], 0x9b00dbd8u);
    /* ctr = ffffffff x4, key = ffffffff x2 */
    fm_philox4x32(UINT64_MAX, UINT64_MAX, UINT64_MAX, out);
    assert_int_equal(out[0], 0x408f276du);
    assert_int_equal(out[1], 0x41c83b0eu);
    assert_int_equal(out[2], 0xa20bc7c6u);
    assert_int_equal(out[3], 0x6d5451fdu);
}

static void test_rng_same_bits_any_thread_count(void **state)
{
    (void)state;
    const size_t n = 1000003; /* large enough for the parallel path, odd to test the tail */
    float *a = fm_test_alloc(n * sizeof(float)), *b = fm_test_alloc(n * sizeof(float));
    float *na = fm_test_alloc(n * sizeof(float)), *nb = fm_test_alloc(n * sizeof(float));
    int saved = fm_get_num_threads();
    fm_set_num_threads(1);
    fm_rng r1 = fm_rng_make(fm_test_seed(), 3);
    fm_rng_uniform(&r1, a, n);
    fm_rng_normal(&r1, na, n, 0.5f, 2.0f);
    fm_set_num_threads(2);
    omp_set_dynamic(0);
    fm_rng r2 = fm_rng_make(fm_test_seed(), 3);
    fm_rng_uniform(&r2, b, n);
    fm_rng_normal(&r2, nb, n, 0.5f, 2.0f);
    fm_set_num_threads(saved);
    assert_memory_equal(a, b, n * sizeof(float));
    assert_memory_equal(na, nb, n * sizeof(float));
    assert_int_equal(r1.offset, r2.offset);
    /* moments: uniform mean 1/2, var 1/12; normal mean 0.5, std 2 */
    double s = 0, s2 = 0, m = 0, m2 = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(a[i] >= 0.0f && a[i] < 1.0f);
        s += a[i];
        s2 += (double)a[i] * a[i];
        m += na[i];
        m2 += (double)na[i] * na[i];
    }
    double mean = s / (double)n, var = s2 / (double)n - mean * mean;
    assert_true(fabs(mean - 0.5) < 0.002);
    assert_true(fabs(var - 1.0 / 12.0) < 0.002);
    double nmean = m / (double)n, nstd = sqrt(m2 / (double)n - nmean * nmean);
    assert_true(fabs(nmean - 0.5) < 0.01);
    assert_true(fabs(nstd - 2.0) < 0.01);
    free(a);
    free(b);
    free(na);
    free(nb);
}

static void test_rng_streams_and_draws(void **state)
{
    (void)state;
    fm_rng a = fm_rng_make(7, 0), b = fm_rng_make(7, 1), c = fm_rng_make(8, 0);
    uint64_t xa = fm_rng_u64(&a), xb = fm_rng_u64(&b), xc = fm_rng_u64(&c);
    assert_true(xa != xb && xa != xc && xb != xc);
    /* a split fill equals one fill */
    float whole[10], parts[10];
    fm_rng r = fm_rng_make(99, 5), q = fm_rng_make(99, 5);
    fm_rng_uniform(&r, whole, 8);
    fm_rng_uniform(&q, parts, 4);
    fm_rng_uniform(&q, parts + 4, 4);
    assert_memory_equal(whole, parts, 8 * sizeof(float));
    int counts[5] = {0};
    for (int i = 0; i < 50000; i++) {
        uint64_t v = fm_rng_below(&r, 5);
        assert_true(v < 5);
        counts[v]++;
    }
    for (int i = 0; i < 5; i++)
        assert_true(counts[i] > 9500 && counts[i] < 10500);
    int32_t perm[101];
    fm_rng_permutation(&r, perm, 101);
    int seen[101] = {0};
    int moved = 0;
    for (int i = 0; i < 101; i++) {
        assert_true(perm[i] >= 0 && perm[i] < 101);
        seen[perm[i]]++;
        moved += perm[i] != i;
    }
    for (int i = 0; i < 101; i++)
        assert_int_equal(seen[i], 1);
    assert_true(moved > 50);
    double d = fm_rng_double(&r);
    assert_true(d >= 0.0 && d < 1.0);
}

static void test_progress_plain_lines(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    fm_progress p;
    fm_progress_begin(&p, f, "train", 10);
    assert_int_equal(p.tty, 0);
    p.min_interval_s = 0.0; /* print every update */
    for (int i = 1; i <= 10; i++)
        fm_progress_update(&p, i, "loss %.2f", 1.0 / i);
    fm_progress_end(&p);
    rewind(f);
    char line[512];
    int lines = 0, saw_last = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        assert_null(strchr(line, '\r')); /* no cursor tricks off a TTY */
        if (strstr(line, "train 10/10 (100%)") && strstr(line, "loss 0.10"))
            saw_last = 1;
    }
    fclose(f);
    assert_int_equal(lines, 10); /* the final state is printed once, not again by _end */
    assert_true(saw_last);
}

static void test_log_levels(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    fm_log_set_stream(f);
    fm_log_set_level(FM_LOG_WARN);
    FM_INFO("hidden %d", 1);
    FM_WARN("shown %d", 2);
    fm_log_set_stream(NULL);
    fm_log_set_level(FM_LOG_INFO);
    rewind(f);
    char line[256] = "";
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "fedmm warn: shown 2\n");
    assert_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_int_equal(fm_log_level_parse("debug"), FM_LOG_DEBUG);
    assert_int_equal(fm_log_level_parse("ERROR"), FM_LOG_ERROR);
    assert_int_equal(fm_log_level_parse("loud"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names_and_messages),
        cmocka_unit_test(test_try_macro_propagates),
        cmocka_unit_test(test_tensor_view_bounds),
        cmocka_unit_test(test_tensor_narrow_reshape_expect),
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_rng_same_bits_any_thread_count),
        cmocka_unit_test(test_rng_streams_and_draws),
        cmocka_unit_test(test_progress_plain_lines),
        cmocka_unit_test(test_log_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
