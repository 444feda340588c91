/* Configuration: YAML flattening, overrides, typed getters, unknown keys and malformed files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/config.h"
#include "testutil.h"

static const char yaml[] = "model:\n"
                           "  preset: clip-tiny\n"
                           "  lora:\n"
                           "    rank: 4\n"
                           "train:\n"
                           "  lr: 1e-3\n"
                           "  steps: 200\n"
                           "  amp: yes\n"
                           "seeds: [1, 2, 3]\n";

static fm_config *load(void)
{
    fm_config *c = NULL;
    assert_int_equal(fm_config_create(&c), FM_OK);
    assert_int_equal(fm_config_load_yaml_string(c, yaml, strlen(yaml), "t.yaml"), FM_OK);
    return c;
}

static void test_flatten_and_get(void **state)
{
    (void)state;
    fm_config *c = load();
    const char *s;
    int64_t i;
    double d;
    int b;
    assert_int_equal(fm_config_str(c, "model.preset", "x", &s), FM_OK);
    assert_string_equal(s, "clip-tiny");
    assert_int_equal(fm_config_int(c, "model.lora.rank", 0, 1, 64, &i), FM_OK);
    assert_int_equal(i, 4);
    assert_int_equal(fm_config_float(c, "train.lr", 0, 0, 1, &d), FM_OK);
    assert_float_equal(d, 1e-3, 1e-12);
    assert_int_equal(fm_config_bool(c, "train.amp", 0, &b), FM_OK);
    assert_int_equal(b, 1);
    assert_int_equal(fm_config_int(c, "seeds.count", 0, 0, 10, &i), FM_OK);
    assert_int_equal(i, 3);
    assert_int_equal(fm_config_int(c, "seeds.2", 0, 0, 10, &i), FM_OK);
    assert_int_equal(i, 3);
    assert_int_equal(fm_config_int(c, "seeds.0", 0, 0, 10, &i), FM_OK);
    assert_int_equal(fm_config_int(c, "seeds.1", 0, 0, 10, &i), FM_OK);
    /* absent: default */
    assert_int_equal(fm_config_int(c, "train.batch", 32, 1, 1024, &i), FM_OK);
    assert_int_equal(i, 32);
    assert_int_equal(fm_config_int(c, "train.steps", 0, 1, 1000, &i), FM_OK);
    assert_int_equal(fm_config_check_unused(c), FM_OK);
    fm_config_destroy(c);
}

static void test_overrides_and_bad_values(void **state)
{
    (void)state;
    fm_config *c = load();
    assert_int_equal(fm_config_set_assignment(c, "train.steps=abc"), FM_OK);
    int64_t i;
    assert_int_equal(fm_config_int(c, "train.steps", 0, 1, 1000, &i), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "train.steps (--set): 'abc' is not an integer"));
    assert_int_equal(fm_config_set_assignment(c, "train.steps=5000"), FM_OK);
    assert_int_equal(fm_config_int(c, "train.steps", 0, 1, 1000, &i), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "outside [1, 1000]"));
    assert_int_equal(fm_config_set_assignment(c, "train.steps=7"), FM_OK);
    assert_int_equal(fm_config_int(c, "train.steps", 0, 1, 1000, &i), FM_OK);
    assert_int_equal(i, 7);
    double d;
    assert_int_equal(fm_config_set_assignment(c, "train.lr=nan"), FM_OK);
    assert_int_equal(fm_config_float(c, "train.lr", 0, 0, 1, &d), FM_ERR_CONFIG);
    int b;
    assert_int_equal(fm_config_set_assignment(c, "train.amp=maybe"), FM_OK);
    assert_int_equal(fm_config_bool(c, "train.amp", 0, &b), FM_ERR_CONFIG);
    assert_int_equal(fm_config_set_assignment(c, "noequals"), FM_ERR_CONFIG);
    assert_int_equal(fm_config_set_assignment(c, "=1"), FM_ERR_CONFIG);
    fm_config_destroy(c);
}

static void test_unknown_keys_reported_with_origin(void **state)
{
    (void)state;
    fm_config *c = load();
    const char *s;
    assert_int_equal(fm_config_str(c, "model.preset", NULL, &s), FM_OK);
    assert_int_equal(fm_config_set_assignment(c, "train.lrr=1"), FM_OK);
    assert_int_equal(fm_config_check_unused(c), FM_ERR_CONFIG);
    const char *msg = fm_last_error();
    assert_non_null(strstr(msg, "'train.lrr' (--set)"));
    assert_non_null(strstr(msg, "'model.lora.rank' (t.yaml:4)"));
    fm_config_destroy(c);
}

static fm_status visit(const char *key, const char *value, void *ctx)
{
    int *n = ctx;
    if (strcmp(key, "lora.rank") == 0 && strcmp(value, "4") == 0)
        (*n)++;
    if (strcmp(key, "bad") == 0)
        return fm_error(FM_ERR_CONFIG, "unknown model key '%s'", key);
    return FM_OK;
}

static void test_each_prefix(void **state)
{
    (void)state;
    fm_config *c = load();
    int n = 0;
    assert_int_equal(fm_config_each(c, "model", visit, &n), FM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(fm_config_set_assignment(c, "model.bad=1"), FM_OK);
    assert_int_equal(fm_config_each(c, "model", visit, &n), FM_ERR_CONFIG);
    assert_non_null(strstr(fm_last_error(), "model.bad (--set): unknown model key 'bad'"));
    fm_config_destroy(c);
}

static void test_malformed_yaml(void **state)
{
    (void)state;
    fm_config *c = NULL;
    assert_int_equal(fm_config_create(&c), FM_OK);
    const char *bad[] = {"a: [1, 2\n", "- 1\n- 2\n", "just a scalar\n", "a:\n  b: 1\n c: 2\n", "\x01\x02\xff: :\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fm_status s = fm_config_load_yaml_string(c, bad[i], strlen(bad[i]), "bad.yaml");
        assert_int_equal(s, FM_ERR_CONFIG);
        assert_non_null(strstr(fm_last_error(), "bad.yaml"));
    }
    assert_int_equal(fm_config_load_yaml(c, "/nonexistent/fedmm.yaml"), FM_ERR_IO);
    assert_non_null(strstr(fm_last_error(), "/nonexistent/fedmm.yaml"));
    /* empty text is an empty config */
    assert_int_equal(fm_config_load_yaml_string(c, "", 0, "empty.yaml"), FM_OK);
    assert_int_equal(fm_config_check_unused(c), FM_OK);
    fm_config_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flatten_and_get),
        cmocka_unit_test(test_overrides_and_bad_values),
        cmocka_unit_test(test_unknown_keys_reported_with_origin),
        cmocka_unit_test(test_each_prefix),
        cmocka_unit_test(test_malformed_yaml),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
