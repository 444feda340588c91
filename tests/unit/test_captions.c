/* Tests of the caption dataset loaders: JSON Lines and COCO files written here with random captions,
 * path resolution, image grouping, format detection, and errors that name the line or entry. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedmm/captions.h"

static char dir[64];
static char path_buf[256];

static const char *tmp_path(const char *name)
{
    snprintf(path_buf, sizeof path_buf, "%s/%s", dir, name);
    return path_buf;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/fedmm-captions-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    static const char *const names[] = {"good.jsonl", "bad.jsonl", "coco.json", "bad-coco.json", "plain.txt"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        remove(tmp_path(names[i]));
    rmdir(dir);
    return 0;
}

static void write_text(const char *file, const char *text)
{
    FILE *f = fopen(file, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A random caption of lower-case words, with a quote and a UTF-8 character to exercise escaping. */
static void random_caption(fm_rng *rng, char *buf, char *json, size_t cap)
{
    static const char *const words[] = {"a", "dog", "on", "the", "grass", "red", "bus", "near", "two", "cats"};
    size_t n = 3 + (size_t)fm_rng_below(rng, 6), len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? " " : "", words[fm_rng_below(rng, 10)]);
    snprintf(buf + len, cap - len, " \"caf\xc3\xa9\"");
    /* JSON form: quotes escaped. */
    size_t j = 0;
    for (const char *c = buf; *c && j + 3 < cap; c++) {
        if (*c == '"')
            json[j++] = '\\';
        json[j++] = *c;
    }
    json[j] = '\0';
}

static void test_jsonl_good(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 21);
    char caps[5][160], json[5][200];
    for (int i = 0; i < 5; i++)
        random_caption(&rng, caps[i], json[i], sizeof caps[i]);
    char text[2048];
    snprintf(text, sizeof text,
             "{\"image\": \"img/a.jpg\", \"caption\": \"%s\"}\n"
             "\n"
             "{\"caption\": \"%s\", \"image\": \"img/b.png\", \"extra\": 5}\r\n"
             "   {\"image\": \"img/a.jpg\", \"caption\": \"%s\"}  \n"
             "{\"image\": \"/abs/c.jpg\", \"caption\": \"%s\"}\n"
             "{\"image\": \"img/b.png\", \"caption\": \"%s\"}",
             json[0], json[1], json[2], json[3], json[4]);
    write_text(tmp_path("good.jsonl"), text);
    fm_caption_set set;
    assert_int_equal(fm_captions_load_jsonl(tmp_path("good.jsonl"), &set), FM_OK);
    assert_int_equal(set.count, 5);
    assert_int_equal(set.num_images, 3);
    for (int i = 0; i < 5; i++)
        assert_string_equal(set.items[i].caption, caps[i]);
    char want[300];
    snprintf(want, sizeof want, "%s/img/a.jpg", dir);
    assert_string_equal(set.items[0].image_path, want);
    assert_string_equal(set.items[3].image_path, "/abs/c.jpg");
    const int64_t idx[5] = {0, 1, 0, 2, 1};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(set.items[i].image_index, idx[i]);
        assert_string_equal(set.image_paths[idx[i]], set.items[i].image_path);
    }
    fm_captions_free(&set);
    assert_null(set.items);
    /* The content-based loader takes it as JSONL too. */
    assert_int_equal(fm_captions_load(tmp_path("good.jsonl"), &set), FM_OK);
    assert_int_equal(set.count, 5);
    fm_captions_free(&set);
}

static void expect_jsonl_error(const char *text, const char *substring)
{
    write_text(tmp_path("bad.jsonl"), text);
    fm_caption_set set;
    fm_status st = fm_captions_load_jsonl(tmp_path("bad.jsonl"), &set);
    if (st != FM_ERR_PARSE)
        fail_msg("\"%s\": got status %d, want FM_ERR_PARSE", text, st);
    if (!strstr(fm_last_error(), substring))
        fail_msg("message \"%s\" lacks \"%s\"", fm_last_error(), substring);
    assert_int_equal(set.count, 0);
    assert_null(set.items);
}

static void test_jsonl_errors_name_the_line(void **state)
{
    (void)state;
    const char *ok = "{\"image\": \"a.jpg\", \"caption\": \"x\"}\n";
    char text[512];
    snprintf(text, sizeof text, "%s%s{\"image\": \"b.jpg\", \"caption\": \"broken}\n%s", ok, ok, ok);
    expect_jsonl_error(text, "bad.jsonl:3: not valid JSON");
    snprintf(text, sizeof text, "%s\n%s{\"image\": \"b.jpg\"}\n", ok, ok);
    expect_jsonl_error(text, "bad.jsonl:4: missing string field \"caption\"");
    snprintf(text, sizeof text, "%s{\"image\": 7, \"caption\": \"y\"}\n", ok);
    expect_jsonl_error(text, ":2: missing or empty string field \"image\"");
    snprintf(text, sizeof text, "[1, 2]\n");
    expect_jsonl_error(text, ":1: expected a JSON object");
    snprintf(text, sizeof text, "%s{\"image\": \"b.jpg\", \"caption\": \"y\"} trailing\n", ok);
    expect_jsonl_error(text, ":2: not valid JSON");
    fm_caption_set set;
    assert_int_equal(fm_captions_load_jsonl(tmp_path("nope.jsonl"), &set), FM_ERR_IO);
    assert_non_null(strstr(fm_last_error(), "nope.jsonl"));
}

static void test_coco(void **state)
{
    (void)state;
    fm_rng rng = fm_rng_make(fm_test_seed(), 22);
    char caps[4][160], json[4][200];
    for (int i = 0; i < 4; i++)
        random_caption(&rng, caps[i], json[i], sizeof caps[i]);
    const int id_a = 100 + (int)fm_rng_below(&rng, 1000), id_b = id_a + 7, id_c = id_a + 13;
    char text[4096];
    snprintf(text, sizeof text,
             "{\"info\": {}, \"images\": [{\"id\": %d, \"file_name\": \"x/a.jpg\"}, {\"id\": %d, \"file_name\": "
             "\"b.jpg\"},\n {\"id\": %d, \"file_name\": \"unused.jpg\"}],\n"
             "\"annotations\": [{\"image_id\": %d, \"id\": 1, \"caption\": \"%s\"}, {\"image_id\": %d, \"caption\": "
             "\"%s\"}, {\"image_id\": %d, \"caption\": \"%s\"}, {\"image_id\": %d, \"caption\": \"%s\"}]}\n",
             id_a, id_b, id_c, id_b, json[0], id_a, json[1], id_b, json[2], id_a, json[3]);
    write_text(tmp_path("coco.json"), text);
    for (int pass = 0; pass < 2; pass++) {
        fm_caption_set set;
        assert_int_equal(pass ? fm_captions_load(tmp_path("coco.json"), &set)
                              : fm_captions_load_coco(tmp_path("coco.json"), &set),
                         FM_OK);
        assert_int_equal(set.count, 4);
        assert_int_equal(set.num_images, 2); /* the unused image is dropped */
        char want_a[300], want_b[300];
        snprintf(want_a, sizeof want_a, "%s/x/a.jpg", dir);
        snprintf(want_b, sizeof want_b, "%s/b.jpg", dir);
        const char *want[4] = {want_b, want_a, want_b, want_a};
        const int64_t idx[4] = {0, 1, 0, 1};
        for (int i = 0; i < 4; i++) {
            assert_string_equal(set.items[i].caption, caps[i]);
            assert_string_equal(set.items[i].image_path, want[i]);
            assert_int_equal(set.items[i].image_index, idx[i]);
        }
        fm_captions_free(&set);
    }
}

static void expect_coco_error(const char *text, const char *substring)
{
    write_text(tmp_path("bad-coco.json"), text);
    fm_caption_set set;
    fm_status st = fm_captions_load_coco(tmp_path("bad-coco.json"), &set);
    if (st != FM_ERR_PARSE)
        fail_msg("got status %d, want FM_ERR_PARSE", st);
    if (!strstr(fm_last_error(), substring))
        fail_msg("message \"%s\" lacks \"%s\"", fm_last_error(), substring);
    assert_null(set.items);
}

static void test_coco_errors_name_the_entry(void **state)
{
    (void)state;
    expect_coco_error("{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"}], \"annotations\": [{\"image_id\": 1, "
                      "\"caption\": \"ok\"}, {\"image_id\": 1, \"caption\": \"ok\"}, {\"image_id\": 9, \"caption\": "
                      "\"orphan\"}]}",
                      "annotations[2]: image_id 9 is not among");
    expect_coco_error("{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"}, {\"id\": 1, \"file_name\": \"b.jpg\"}], "
                      "\"annotations\": []}",
                      "images[1]: duplicate id 1");
    expect_coco_error("{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"}, {\"id\": 2}], \"annotations\": []}",
                      "images[1] (id 2) has no string \"file_name\"");
    expect_coco_error("{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"}], \"annotations\": [{\"image_id\": 1}]}",
                      "annotations[0] has no string \"caption\"");
    expect_coco_error("{\"images\": [{\"id\": 1.5, \"file_name\": \"a.jpg\"}], \"annotations\": []}",
                      "images[0] has no integer \"id\"");
    expect_coco_error("{\"images\": []}", "no \"annotations\" array");
    expect_coco_error("{\"images\": [],\n\"annotations\": [\n{\"image_id\": }]}", "bad-coco.json:3: not valid JSON");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jsonl_good),
        cmocka_unit_test(test_jsonl_errors_name_the_line),
        cmocka_unit_test(test_coco),
        cmocka_unit_test(test_coco_errors_name_the_entry),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
