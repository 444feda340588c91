/* Tokenizer tests: a hand-written vocab.json + merges.txt whose encodings are worked out by hand below, the
 * built-in vocabulary's save -> load round trip on random captions, every malformed-file error, and random
 * garbage text and files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedmm/status.h"
#include "fedmm/tokenizer.h"
#include "testutil.h"

/* ---- the hand-written vocabulary ------------------------------------------------------------------------
 * Ids 0..255: the byte tokens in bytes_to_unicode order (printable ASCII c is id c - 33, as in CLIP);
 * 256..511: the same with "</w>" (c -> 256 + c - 33). Then one id per merge, in rank order: */
static const char *const hand_merges[][2] = {
    {"h", "e"},        /* r0 -> 512 "he" */
    {"l", "l"},        /* r1 -> 513 "ll" */
    {"he", "ll"},      /* r2 -> 514 "hell" */
    {"hell", "o</w>"}, /* r3 -> 515 "hello</w>" */
    {"e", "l"},        /* r4 -> 516 "el": ranked after "l l", so "elle" splits e|ll|e</w> */
    {"t", "h"},        /* r5 -> 517 "th" */
    {"th", "e</w>"},   /* r6 -> 518 "the</w>" */
    {"'", "s</w>"},    /* r7 -> 519 "'s</w>" */
    {"c", "a"},        /* r8 -> 520 "ca" */
    {"ca", "t</w>"},   /* r9 -> 521 "cat</w>" */
    {"!", "!</w>"},    /* r10 -> 522 "!!</w>" */
};
#define N_HAND_MERGES 11
enum { HELLO = 515, LL = 513, EL = 516, THE = 518, APOS_S = 519, CAT = 521, BANGBANG = 522, SOT = 523, EOT = 524 };
#define HAND_VOCAB 525

/* Ids of single-byte tokens for printable ASCII. */
static int32_t ch(char c) { return (int32_t)c - 33; }
static int32_t ch_end(char c) { return 256 + (int32_t)c - 33; }

/* bytes_to_unicode written independently of the library, straight from the reference's Python. */
static void b2u_table(uint32_t cp[256], uint8_t order[256])
{
    int n = 0, k = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int b = 0; b < 256; b++) {
            int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            if (printable != (pass == 0))
                continue;
            order[k++] = (uint8_t)b;
            cp[b] = printable ? (uint32_t)b : 256u + (uint32_t)n++;
        }
    }
}

/* A JSON string literal for code point cp (escaping what JSON needs). */
static void json_char(char *out, uint32_t cp)
{
    if (cp == '"' || cp == '\\')
        sprintf(out, "\\%c", (char)cp);
    else if (cp < 0x80)
        sprintf(out, "%c", (char)cp);
    else
        sprintf(out, "\\u%04x", (unsigned)cp);
}

typedef struct {
    char *p;
    size_t len, cap;
} text;

static void put(text *t, const char *s)
{
    size_t n = strlen(s);
    if (t->len + n + 1 > t->cap) {
        t->cap = 2 * (t->len + n + 1);
        t->p = realloc(t->p, t->cap);
        assert_non_null(t->p);
    }
    memcpy(t->p + t->len, s, n + 1);
    t->len += n;
}

/* The hand vocabulary as JSON, `extra` inserted before the closing brace; specials optional. */
static char *hand_vocab_json(int with_sot, int with_eot, const char *extra)
{
    uint32_t cp[256];
    uint8_t order[256];
    b2u_table(cp, order);
    text t = {0};
    put(&t, "{\n");
    char buf[64], c[16];
    for (int i = 0; i < 512; i++) {
        json_char(c, cp[order[i % 256]]);
        snprintf(buf, sizeof buf, "  \"%s%s\": %d,\n", c, i >= 256 ? "</w>" : "", i);
        put(&t, buf);
    }
    for (int r = 0; r < N_HAND_MERGES; r++) {
        snprintf(buf, sizeof buf, "  \"%s%s\": %d,\n", hand_merges[r][0], hand_merges[r][1], 512 + r);
        put(&t, buf);
    }
    if (with_sot)
        put(&t, "  \"<|startoftext|>\": 523,\n");
    if (with_eot) {
        snprintf(buf, sizeof buf, "  \"<|endoftext|>\": %d,\n", with_sot ? 524 : 523);
        put(&t, buf);
    }
    put(&t, extra);
    /* drop the last comma */
    while (t.len > 0 && (t.p[t.len - 1] == '\n' || t.p[t.len - 1] == ','))
        t.p[--t.len] = '\0';
    put(&t, "\n}\n");
    return t.p;
}

static char *hand_merges_txt(int header, const char *extra)
{
    text t = {0};
    if (header)
        put(&t, "#version: 0.2\n");
    for (int r = 0; r < N_HAND_MERGES; r++) {
        put(&t, hand_merges[r][0]);
        put(&t, " ");
        put(&t, hand_merges[r][1]);
        put(&t, "\n");
    }
    put(&t, extra);
    return t.p;
}

typedef struct {
    char dir[64];
    char vocab[128], merges[128];
    fm_tokenizer *hand;
} fixture;

static void write_text(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s, 1, strlen(s), f), strlen(s));
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    strcpy(fx->dir, "/tmp/fm_tok_XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    snprintf(fx->vocab, sizeof fx->vocab, "%s/vocab.json", fx->dir);
    snprintf(fx->merges, sizeof fx->merges, "%s/merges.txt", fx->dir);
    char *v = hand_vocab_json(1, 1, "");
    char *m = hand_merges_txt(1, "");
    write_text(fx->vocab, v);
    write_text(fx->merges, m);
    free(v);
    free(m);
    if (fm_tokenizer_load(&fx->hand, fx->vocab, fx->merges) != FM_OK) {
        fprintf(stderr, "load: %s\n", fm_last_error());
        return -1;
    }
    *state = fx;
    return 0;
}

static void remove_in(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    remove(path);
}

static int teardown(void **state)
{
    fixture *fx = *state;
    fm_tokenizer_free(fx->hand);
    const char *names[] = {"vocab.json", "merges.txt", "bad_vocab.json", "bad_merges.txt"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        remove_in(fx->dir, names[i]);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* Encodes with context_len and checks the row against want[0..n_want) followed by EOT padding. */
static void expect_row(const fm_tokenizer *tok, const char *s, int context_len, const int32_t *want, int n_want,
                       int want_eot_pos)
{
    int32_t ids[128];
    int n = -1, eot = -1;
    assert_true(context_len <= 128);
    if (fm_tokenizer_encode_ex(tok, s, ids, context_len, &n, &eot) != FM_OK)
        fail_msg("encode \"%s\": %s", s, fm_last_error());
    int bad = n != n_want || eot != want_eot_pos;
    for (int i = 0; i < context_len; i++)
        bad |= ids[i] != (i < n_want ? want[i] : fm_tokenizer_pad_id(tok));
    if (bad) {
        fprintf(stderr, "text \"%s\": n=%d (want %d) eot_pos=%d (want %d)\n got:", s, n, n_want, eot, want_eot_pos);
        for (int i = 0; i < context_len; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\nwant:");
        for (int i = 0; i < n_want; i++)
            fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
        fail();
    }
}

#define ROW(tok, s, L, ...)                                                                                            \
    do {                                                                                                               \
        const int32_t want_[] = {__VA_ARGS__};                                                                         \
        int nw_ = (int)(sizeof want_ / sizeof want_[0]);                                                               \
        expect_row(tok, s, L, want_, nw_, nw_ - 1);                                                                    \
    } while (0)

static void test_hand_vocab_encodings(void **state)
{
    const fm_tokenizer *tok = ((fixture *)*state)->hand;
    assert_int_equal(fm_tokenizer_vocab_size(tok), HAND_VOCAB);
    assert_int_equal(fm_tokenizer_merges_count(tok), N_HAND_MERGES);
    assert_int_equal(fm_tokenizer_sot_id(tok), SOT);
    assert_int_equal(fm_tokenizer_eot_id(tok), EOT);
    assert_int_equal(fm_tokenizer_pad_id(tok), EOT);
    assert_int_equal(fm_tokenizer_token_to_id(tok, "hello</w>"), HELLO);
    assert_int_equal(fm_tokenizer_token_to_id(tok, "a</w>"), 320);
    assert_int_equal(fm_tokenizer_token_to_id(tok, "hello"), -1);
    assert_string_equal(fm_tokenizer_id_to_token(tok, CAT), "cat</w>");
    assert_null(fm_tokenizer_id_to_token(tok, HAND_VOCAB));
    assert_null(fm_tokenizer_id_to_token(tok, -1));

    /* A merge chain h e -> he, l l -> ll, he ll -> hell, hell o</w> -> hello</w>. */
    ROW(tok, "hello", 8, SOT, HELLO, EOT);
    /* Upper case, tabs, runs of spaces, leading/trailing space; "'s" splits off as a contraction. */
    ROW(tok, "  Hello \t THE\n\ncat's  ", 10, SOT, HELLO, THE, CAT, APOS_S, EOT);
    /* No merges apply: byte fallback, the last byte in its "</w>" form. */
    ROW(tok, "zebra", 8, SOT, ch('z'), ch('e'), ch('b'), ch('r'), ch_end('a'), EOT);
    /* Rank order, not position: "l l" (r1) beats "e l" (r4) in "elle"; in "yell" only "e l" applies. */
    ROW(tok, "elle yell", 10, SOT, ch('e'), LL, ch_end('e'), ch('y'), EL, ch_end('l'), EOT);
    /* Punctuation runs are one word; digits are one word each. */
    ROW(tok, "wow!! a,b. 42 !!!", 16, SOT, ch('w'), ch('o'), ch_end('w'), BANGBANG, ch_end('a'), ch_end(','),
        ch_end('b'), ch_end('.'), ch_end('4'), ch_end('2'), ch('!'), BANGBANG, EOT);
    /* An apostrophe that starts no contraction is punctuation, and swallows a following one. */
    ROW(tok, "'x it''s", 10, SOT, ch_end('\''), ch_end('x'), ch('i'), ch_end('t'), ch('\''), ch_end('\''), ch_end('s'),
        EOT);
    /* Non-ASCII: é is C3 A9, both printable Latin-1 bytes (ids 127 and 256 + 102); É lower-cases to é. */
    ROW(tok, "é É", 8, SOT, 127, 256 + 102, 127, 256 + 102, EOT);
    /* Empty and all-space texts. */
    ROW(tok, "", 4, SOT, EOT);
    ROW(tok, " \t\n ", 4, SOT, EOT);
    /* Special tokens spelled exactly in the text encode as themselves, even glued to punctuation (as Hugging
     * Face); pooling is at the first EOT. Spelled in another case they are plain text: "<|", word, "|>". */
    {
        const int32_t want[] = {SOT, HELLO, EOT, CAT, EOT};
        expect_row(tok, "hello<|endoftext|>cat", 8, want, 5, 2);
    }
    ROW(tok, "!<|startoftext|>", 6, SOT, ch_end('!'), SOT, EOT);
    ROW(tok, "<|EndOfText|>", 20, SOT, ch('<'), ch_end('|'), ch('e'), ch('n'), ch('d'), ch('o'), ch('f'), ch('t'),
        ch('e'), ch('x'), ch_end('t'), ch('|'), ch_end('>'), EOT);
    /* Exactly full, then truncated with EOT forced into the last slot. */
    ROW(tok, "the cat the", 5, SOT, THE, CAT, THE, EOT);
    ROW(tok, "the cat the cat the", 5, SOT, THE, CAT, THE, EOT);
    ROW(tok, "the cat the cat the", 2, SOT, EOT);

    int32_t ids[4];
    assert_int_equal(fm_tokenizer_encode(tok, "hello", ids, 1, NULL), FM_ERR_INVALID_ARG);
    assert_int_equal(fm_tokenizer_encode(tok, NULL, ids, 4, NULL), FM_ERR_INVALID_ARG);
}

static void test_tokenize_and_batch(void **state)
{
    const fm_tokenizer *tok = ((fixture *)*state)->hand;
    int32_t ids[3];
    size_t n = 0;
    /* No specials, no truncation: the full count comes back even when the buffer is short. */
    assert_int_equal(fm_tokenizer_tokenize(tok, "the cat's zebra", ids, 3, &n), FM_OK);
    assert_int_equal(n, 8);
    assert_int_equal(ids[0], THE);
    assert_int_equal(ids[1], CAT);
    assert_int_equal(ids[2], APOS_S);

    /* Many special tokens in one text, each splitting it. */
    text many = {0};
    for (int i = 0; i < 500; i++)
        put(&many, i % 3 ? "<|startoftext|>" : "cat<|endoftext|>");
    int32_t *all = fm_test_alloc(700 * sizeof *all);
    assert_int_equal(fm_tokenizer_tokenize(tok, many.p, all, 700, &n), FM_OK);
    assert_int_equal(n, 333 + 2 * 167);
    const int32_t head[] = {CAT, EOT, SOT, SOT, CAT, EOT, SOT};
    assert_memory_equal(all, head, sizeof head);
    free(all);
    free(many.p);

    const char *texts[] = {"hello", "the cat the cat the cat", "x"};
    int32_t rows[3 * 6], eot[3];
    assert_int_equal(fm_tokenizer_encode_batch(tok, texts, 3, rows, 6, eot), FM_OK);
    const int32_t want[3 * 6] = {SOT, HELLO, EOT, EOT, EOT,         EOT, SOT, THE, CAT,
                                 THE, CAT,   EOT, SOT, ch_end('x'), EOT, EOT, EOT, EOT};
    for (int i = 0; i < 18; i++)
        assert_int_equal(rows[i], want[i]);
    assert_int_equal(eot[0], 2);
    assert_int_equal(eot[1], 5);
    assert_int_equal(eot[2], 2);
}

static void test_decode(void **state)
{
    const fm_tokenizer *tok = ((fixture *)*state)->hand;
    const int32_t ids[] = {SOT, HELLO, THE, CAT, APOS_S, 127, 256 + 102, ch('z'), ch_end('!'), EOT, EOT};
    char buf[128];
    size_t len = 0;
    assert_int_equal(fm_tokenizer_decode(tok, ids, 11, true, buf, sizeof buf, &len), FM_OK);
    assert_string_equal(buf, "hello the cat 's é z!");
    assert_int_equal(len, strlen("hello the cat 's é z!"));
    assert_int_equal(fm_tokenizer_decode(tok, ids, 11, false, buf, sizeof buf, &len), FM_OK);
    assert_string_equal(buf, "<|startoftext|>hello the cat 's é z! <|endoftext|><|endoftext|>");
    /* Too small: a NUL-terminated prefix, the needed length, FM_ERR_RANGE. */
    assert_int_equal(fm_tokenizer_decode(tok, ids, 11, true, buf, 6, &len), FM_ERR_RANGE);
    assert_string_equal(buf, "hello");
    assert_int_equal(len, strlen("hello the cat 's é z!"));
    const int32_t bad[] = {HELLO, HAND_VOCAB};
    assert_int_equal(fm_tokenizer_decode(tok, bad, 2, true, buf, sizeof buf, &len), FM_ERR_RANGE);
    assert_non_null(strstr(fm_last_error(), "525"));
}

/* Writes vocab / merges texts into the fixture dir and expects fm_tokenizer_load to fail with `want` and a
 * message containing every one of the NULL-terminated fragments. */
static void expect_load_error(const fixture *fx, const char *vocab, const char *merges, fm_status want, ...)
{
    char vp[160], mp[160];
    snprintf(vp, sizeof vp, "%s/bad_vocab.json", fx->dir);
    snprintf(mp, sizeof mp, "%s/bad_merges.txt", fx->dir);
    write_text(vp, vocab);
    write_text(mp, merges);
    static max_align_t poison; /* any non-NULL handle: a failed load must reset it to NULL */
    fm_tokenizer *tok = (fm_tokenizer *)(void *)&poison;
    fm_status st = fm_tokenizer_load(&tok, vp, mp);
    if (st != want)
        fail_msg("status %d (%s), want %d; message: %s", st, fm_strerror(st), want, fm_last_error());
    assert_null(tok);
    va_list ap;
    va_start(ap, want);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;)
        if (!strstr(fm_last_error(), frag))
            fail_msg("message \"%s\" lacks \"%s\"", fm_last_error(), frag);
    va_end(ap);
}

static void test_malformed_files(void **state)
{
    const fixture *fx = *state;
    char *good_m = hand_merges_txt(1, "");
    char *good_v = hand_vocab_json(1, 1, "");
    char *v;

    /* vocab.json */
    expect_load_error(fx, "{\n  \"a\": 1,\n  \"b\" 2\n}", good_m, FM_ERR_PARSE, "bad_vocab.json", "line 3", NULL);
    expect_load_error(fx, "", good_m, FM_ERR_PARSE, "bad_vocab.json", "malformed JSON", NULL);
    expect_load_error(fx, "[1, 2]", good_m, FM_ERR_PARSE, "bad_vocab.json", "object", NULL);
    expect_load_error(fx, "{}", good_m, FM_ERR_PARSE, "bad_vocab.json", "empty", NULL);
    expect_load_error(fx, "{\"a\": 0} {", good_m, FM_ERR_PARSE, "bad_vocab.json", "after the JSON", NULL);
    v = hand_vocab_json(1, 1, "\"zz\": 525.5,");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "bad_vocab.json", "entry 526", "\"zz\"", "not an integer", NULL);
    free(v);
    v = hand_vocab_json(1, 1, "\"zz\": \"525\",");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "entry 526", "must be an integer", "string", NULL);
    free(v);
    v = hand_vocab_json(1, 1, "\"zz\": 5,");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "entry 526", "duplicate id 5", NULL);
    free(v);
    v = hand_vocab_json(1, 1, "\"zz\": 9999,");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "entry 526", "9999", "outside", NULL);
    free(v);
    v = hand_vocab_json(1, 1, "\"zz\": -1,");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "entry 526", "outside", NULL);
    free(v);
    v = hand_vocab_json(1, 1, "\"hello</w>\": 525,");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "entry 526", "duplicate token", "hello</w>", NULL);
    free(v);
    v = hand_vocab_json(1, 1, "\"\": 525,");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "entry 526", "empty token", NULL);
    free(v);
    v = hand_vocab_json(0, 1, "");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "bad_vocab.json", "<|startoftext|>", NULL);
    free(v);
    v = hand_vocab_json(1, 0, "");
    expect_load_error(fx, v, good_m, FM_ERR_PARSE, "bad_vocab.json", "<|endoftext|>", NULL);
    free(v);

    /* merges.txt: the header is line 1, the hand merges lines 2..12, so an appended line is line 13. */
    char *m = hand_merges_txt(1, "a b c\n");
    expect_load_error(fx, good_v, m, FM_ERR_PARSE, "bad_merges.txt line 13", "two tokens", "3 fields", NULL);
    free(m);
    m = hand_merges_txt(1, "lonely\n");
    expect_load_error(fx, good_v, m, FM_ERR_PARSE, "bad_merges.txt line 13", "1 field", NULL);
    free(m);
    m = hand_merges_txt(1, "q nope\n");
    expect_load_error(fx, good_v, m, FM_ERR_PARSE, "line 13", "\"nope\"", "not in the vocabulary", NULL);
    free(m);
    m = hand_merges_txt(1, "q u\n");
    expect_load_error(fx, good_v, m, FM_ERR_PARSE, "line 13", "result \"qu\"", NULL);
    free(m);
    m = hand_merges_txt(1, "c a\n");
    expect_load_error(fx, good_v, m, FM_ERR_PARSE, "line 13", "duplicate merge \"c a\"", NULL);
    free(m);
    /* Without the header the merges start on line 1; a blank line and CRLF endings are fine. */
    m = hand_merges_txt(0, "\r\n\r\n");
    fm_tokenizer *tok = NULL;
    assert_int_equal(fm_tokenizer_load_buffers(&tok, good_v, strlen(good_v), NULL, m, strlen(m), NULL), FM_OK);
    assert_int_equal(fm_tokenizer_merges_count(tok), N_HAND_MERGES);
    fm_tokenizer_free(tok);
    free(m);
    m = hand_merges_txt(0, "x y z\n");
    expect_load_error(fx, good_v, m, FM_ERR_PARSE, "bad_merges.txt line 12", NULL);
    free(m);

    /* Missing files. */
    tok = NULL;
    assert_int_equal(fm_tokenizer_load(&tok, "/nonexistent/fedmm/vocab.json", fx->merges), FM_ERR_IO);
    assert_non_null(strstr(fm_last_error(), "/nonexistent/fedmm/vocab.json"));
    assert_null(tok);
    free(good_v);
    free(good_m);
}

/* ---- the built-in vocabulary ----------------------------------------------------------------------------- */

static const char *pick(fm_rng *rng, const char *const *list, size_t n) { return list[fm_rng_below(rng, n)]; }

/* A random caption from a grammar like the procedural dataset's, with random case, spacing and noise. */
static void random_caption(fm_rng *rng, char *out, size_t cap, int noisy)
{
    static const char *const det[] = {"a", "the", "an"};
    static const char *const size[] = {"small", "medium", "large", "big", "tiny"};
    static const char *const color[] = {"red",    "green", "blue",  "yellow", "purple",
                                        "orange", "white", "black", "gray",   "cyan"};
    static const char *const fill[] = {"plain", "striped", "dotted", "checkered", "solid"};
    static const char *const shape[] = {"circle", "square", "triangle", "star", "cross", "ring", "diamond"};
    static const char *const rel[] = {"to the left of", "to the right of",  "above", "below", "next to", "on", "in",
                                      "at the top of",  "at the bottom of", "with"};
    static const char *const pre[] = {"", "a photo of ", "a picture of ", "an image of ", "there is "};
    text t = {0};
    put(&t, pick(rng, pre, 5));
    for (int obj = 0; obj < 2; obj++) {
        if (obj) {
            put(&t, " ");
            put(&t, pick(rng, rel, 10));
            put(&t, " ");
        }
        put(&t, pick(rng, det, 3));
        put(&t, " ");
        put(&t, pick(rng, size, 5));
        put(&t, " ");
        if (fm_rng_below(rng, 2)) {
            put(&t, pick(rng, fill, 5));
            put(&t, " ");
        }
        put(&t, pick(rng, color, 10));
        put(&t, " ");
        put(&t, pick(rng, shape, 7));
    }
    if (noisy) {
        static const char *const noise[] = {".", ",", "!", "'s", " zebra", " 42", " Ünïcödé", "  \t ", " <3"};
        put(&t, pick(rng, noise, 9));
    }
    size_t j = 0;
    for (size_t i = 0; i < t.len && j + 1 < cap; i++) {
        char c = t.p[i];
        if (noisy && c >= 'a' && c <= 'z' && fm_rng_below(rng, 5) == 0)
            c = (char)(c - 'a' + 'A');
        out[j++] = c;
        if (noisy && c == ' ' && j + 1 < cap && fm_rng_below(rng, 4) == 0)
            out[j++] = ' ';
    }
    out[j] = '\0';
    free(t.p);
}

static size_t count_words(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += *p != ' ' && (p == s || p[-1] == ' ');
    return n;
}

static void test_builtin_vocab(void **state)
{
    (void)state;
    fm_tokenizer *tok = NULL;
    assert_int_equal(fm_tokenizer_builtin(&tok), FM_OK);
    int v = fm_tokenizer_vocab_size(tok);
    assert_true(v > 512 + 2);
    assert_int_equal(fm_tokenizer_eot_id(tok), v - 1);
    assert_int_equal(fm_tokenizer_sot_id(tok), v - 2);
    assert_int_equal(fm_tokenizer_token_to_id(tok, "a</w>"), 320); /* as in CLIP's own vocabulary */
    size_t n_words;
    const char *const *words = fm_tokenizer_builtin_words(&n_words);
    assert_true(n_words >= 54);
    for (size_t i = 0; i < n_words; i++) {
        char tokstr[64];
        snprintf(tokstr, sizeof tokstr, "%s</w>", words[i]);
        int32_t id = fm_tokenizer_token_to_id(tok, tokstr);
        if (id < 0)
            fail_msg("built-in word \"%s\" has no token", words[i]);
        int32_t ids[8];
        size_t n = 0;
        assert_int_equal(fm_tokenizer_tokenize(tok, words[i], ids, 8, &n), FM_OK);
        if (n != 1 || ids[0] != id)
            fail_msg("built-in word \"%s\" encodes as %zu tokens", words[i], n);
    }
    /* Two builds give the same ids. */
    fm_tokenizer *again = NULL;
    assert_int_equal(fm_tokenizer_builtin(&again), FM_OK);
    assert_int_equal(fm_tokenizer_vocab_size(again), v);
    for (int32_t id = 0; id < v; id++)
        assert_string_equal(fm_tokenizer_id_to_token(tok, id), fm_tokenizer_id_to_token(again, id));
    fm_tokenizer_free(again);

    /* Clean captions of built-in words: one token per word, and decode gives the caption back. */
    fm_rng rng = fm_rng_make(fm_test_seed(), 71);
    for (int trial = 0; trial < 200; trial++) {
        char cap[256], back[256];
        random_caption(&rng, cap, sizeof cap, 0);
        int32_t ids[FM_CLIP_CONTEXT_LEN];
        int n = 0;
        assert_int_equal(fm_tokenizer_encode(tok, cap, ids, FM_CLIP_CONTEXT_LEN, &n), FM_OK);
        if ((size_t)n != count_words(cap) + 2)
            fail_msg("\"%s\": %d tokens for %zu words", cap, n, count_words(cap));
        assert_int_equal(fm_tokenizer_decode(tok, ids, FM_CLIP_CONTEXT_LEN, true, back, sizeof back, NULL), FM_OK);
        assert_string_equal(back, cap);
    }
    fm_tokenizer_free(tok);
}

static void test_builtin_save_load_roundtrip(void **state)
{
    const fixture *fx = *state;
    fm_tokenizer *tok = NULL, *loaded = NULL;
    assert_int_equal(fm_tokenizer_builtin(&tok), FM_OK);
    char sub[128];
    snprintf(sub, sizeof sub, "%s/builtin", fx->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(fm_tokenizer_save(tok, sub), FM_OK);
    char vp[160], mp[160];
    snprintf(vp, sizeof vp, "%s/vocab.json", sub);
    snprintf(mp, sizeof mp, "%s/merges.txt", sub);
    if (fm_tokenizer_load(&loaded, vp, mp) != FM_OK)
        fail_msg("load of saved built-in vocabulary: %s", fm_last_error());
    assert_int_equal(fm_tokenizer_vocab_size(loaded), fm_tokenizer_vocab_size(tok));
    assert_int_equal(fm_tokenizer_merges_count(loaded), fm_tokenizer_merges_count(tok));
    assert_int_equal(fm_tokenizer_eot_id(loaded), fm_tokenizer_eot_id(tok));
    for (int32_t id = 0; id < fm_tokenizer_vocab_size(tok); id++)
        assert_string_equal(fm_tokenizer_id_to_token(tok, id), fm_tokenizer_id_to_token(loaded, id));

    fm_rng rng = fm_rng_make(fm_test_seed(), 72);
    for (int trial = 0; trial < 300; trial++) {
        char cap[256];
        random_caption(&rng, cap, sizeof cap, 1);
        int L = 2 + (int)fm_rng_below(&rng, 40); /* short contexts exercise truncation too */
        int32_t a[64], b[64];
        int na, nb, ea, eb;
        assert_int_equal(fm_tokenizer_encode_ex(tok, cap, a, L, &na, &ea), FM_OK);
        assert_int_equal(fm_tokenizer_encode_ex(loaded, cap, b, L, &nb, &eb), FM_OK);
        assert_int_equal(na, nb);
        assert_int_equal(ea, eb);
        assert_memory_equal(a, b, (size_t)L * sizeof a[0]);
    }
    fm_tokenizer_free(tok);
    fm_tokenizer_free(loaded);
    remove_in(sub, "vocab.json");
    remove_in(sub, "merges.txt");
    assert_int_equal(rmdir(sub), 0);
    assert_int_equal(fm_tokenizer_save(NULL, sub), FM_ERR_INVALID_ARG);
}

/* ---- garbage ------------------------------------------------------------------------------------------------ */

static void test_garbage_text(void **state)
{
    const fixture *fx = *state;
    fm_tokenizer *builtin = NULL;
    assert_int_equal(fm_tokenizer_builtin(&builtin), FM_OK);
    const fm_tokenizer *toks[2] = {fx->hand, builtin};
    fm_rng rng = fm_rng_make(fm_test_seed(), 73);
    for (int trial = 0; trial < 400; trial++) {
        const fm_tokenizer *tok = toks[trial & 1];
        size_t n = 1 + (size_t)fm_rng_below(&rng, 300);
        char *s = fm_test_alloc(n + 1);
        int ascii = trial % 4 < 2;
        for (size_t i = 0; i < n; i++) /* never NUL; ASCII half the time, any byte (invalid UTF-8) otherwise */
            s[i] = (char)(ascii ? 9 + fm_rng_below(&rng, 118) : 1 + fm_rng_below(&rng, 255));
        int L = 2 + (int)fm_rng_below(&rng, 100);
        int32_t *ids = fm_test_alloc((size_t)L * sizeof *ids);
        int nt = 0, eot = 0;
        assert_int_equal(fm_tokenizer_encode_ex(tok, s, ids, L, &nt, &eot), FM_OK);
        int v = fm_tokenizer_vocab_size(tok);
        assert_true(nt >= 2 && nt <= L);
        assert_int_equal(ids[0], fm_tokenizer_sot_id(tok));
        assert_int_equal(ids[nt - 1], fm_tokenizer_eot_id(tok));
        assert_true(eot >= 1 && eot <= nt - 1);
        for (int i = 0; i < L; i++)
            assert_true(ids[i] >= 0 && ids[i] < v);
        for (int i = nt; i < L; i++)
            assert_int_equal(ids[i], fm_tokenizer_pad_id(tok));
        /* Byte-level: with every byte in the vocabulary, the tokens spell the text back exactly, less white
         * space and upper case (ASCII texts, so lower-casing is plain). */
        size_t m = 0;
        assert_int_equal(fm_tokenizer_tokenize(tok, s, NULL, 0, &m), FM_OK);
        int32_t *all = fm_test_alloc((m + 1) * sizeof *all);
        size_t m2 = 0;
        assert_int_equal(fm_tokenizer_tokenize(tok, s, all, m, &m2), FM_OK);
        assert_int_equal(m, m2);
        if (m <= (size_t)L - 2) {
            assert_int_equal(nt, (int)m + 2);
            assert_memory_equal(all, ids + 1, m * sizeof *all);
        }
        if (ascii && !strstr(s, "<|")) {
            char *back = fm_test_alloc(4 * n + 16);
            size_t len = 0;
            assert_int_equal(fm_tokenizer_decode(tok, all, m, true, back, 4 * n + 16, &len), FM_OK);
            size_t j = 0;
            for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (c == ' ' || (c >= 9 && c <= 13))
                    continue;
                if (c >= 'A' && c <= 'Z')
                    c = (char)(c - 'A' + 'a');
                while (back[j] == ' ')
                    j++;
                if (back[j] != c)
                    fail_msg("trial %d: decode differs at byte %zu of the text", trial, i);
                j++;
            }
            free(back);
        }
        free(all);
        free(ids);
        free(s);
    }
    /* One very long word: BPE is O(n log n), and it is cut to the context. */
    size_t n = 200000;
    char *s = fm_test_alloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = "helo"[fm_rng_below(&rng, 4)];
    int32_t ids[FM_CLIP_CONTEXT_LEN];
    int nt = 0;
    assert_int_equal(fm_tokenizer_encode(fx->hand, s, ids, FM_CLIP_CONTEXT_LEN, &nt), FM_OK);
    assert_int_equal(nt, FM_CLIP_CONTEXT_LEN);
    assert_int_equal(ids[FM_CLIP_CONTEXT_LEN - 1], EOT);
    free(s);
    fm_tokenizer_free(builtin);
}

/* The first n bytes of s in a buffer of exactly n bytes, with no NUL, so that ASan catches a parser reading past
 * the length it was given. */
static char *copy_unterminated(const char *s, size_t n)
{
    char *c = malloc(n);
    assert_non_null(c);
    memcpy(c, s, n);
    return c;
}

static void test_garbage_files(void **state)
{
    (void)state;
    char *v = hand_vocab_json(1, 1, "");
    char *m = hand_merges_txt(1, "");
    size_t vl = strlen(v), ml = strlen(m);
    fm_rng rng = fm_rng_make(fm_test_seed(), 74);
    int parse_errors = 0;
    for (int trial = 0; trial < 300; trial++) {
        fm_tokenizer *tok = NULL;
        fm_status st;
        int kind = trial % 3;
        if (kind == 0) { /* truncated vocab.json: always malformed */
            size_t cut = (size_t)fm_rng_below(&rng, vl - 2);
            st = fm_tokenizer_load_buffers(&tok, v, cut, NULL, m, ml, NULL);
            assert_int_equal(st, FM_ERR_PARSE);
        } else if (kind == 1) { /* truncated merges.txt: fine at a line end, malformed mid-token */
            size_t cut = (size_t)fm_rng_below(&rng, ml);
            st = fm_tokenizer_load_buffers(&tok, v, vl, NULL, m, cut, NULL);
            assert_true(st == FM_OK || st == FM_ERR_PARSE);
        } else { /* random bytes flipped in either file */
            char *vc = copy_unterminated(v, vl), *mc = copy_unterminated(m, ml);
            for (int k = 0; k < 3; k++) {
                if (fm_rng_below(&rng, 2))
                    vc[fm_rng_below(&rng, vl)] = (char)fm_rng_below(&rng, 256);
                else
                    mc[fm_rng_below(&rng, ml)] = (char)fm_rng_below(&rng, 256);
            }
            st = fm_tokenizer_load_buffers(&tok, vc, vl, NULL, mc, ml, NULL);
            assert_true(st == FM_OK || st == FM_ERR_PARSE);
            free(vc);
            free(mc);
        }
        if (st == FM_OK) {
            int32_t ids[16];
            assert_int_equal(fm_tokenizer_encode(tok, "hello the cat's zebra", ids, 16, NULL), FM_OK);
            fm_tokenizer_free(tok);
        } else {
            assert_null(tok);
            assert_true(strlen(fm_last_error()) > 10);
            parse_errors++;
        }
    }
    assert_true(parse_errors >= 100);
    free(v);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_vocab_encodings),
        cmocka_unit_test(test_tokenize_and_batch),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_builtin_vocab),
        cmocka_unit_test(test_builtin_save_load_roundtrip),
        cmocka_unit_test(test_garbage_text),
        cmocka_unit_test(test_garbage_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
