/* CLIP's byte-level BPE tokenizer: vocab.json / merges.txt parsing, text cleanup, CLIP's pre-tokenizer
 * regex written by hand, rank-ordered BPE, encode / decode / save. Behaviour and known differences from
 * the reference are documented in include/fedmm/tokenizer.h. */
#include "fedmm/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_internal.h"

/* vocab.json of CLIP is under 1 MiB and merges.txt about 0.5 MiB; anything far larger is not a vocabulary. */
#define TOK_MAX_FILE_BYTES ((size_t)256 << 20)
#define NONE SIZE_MAX
#define EMPTY_PAIR UINT64_MAX
#define EOW "</w>"
#define EOW_LEN 4

struct fm_tokenizer {
    char *pool; /* every token string, each NUL-terminated */
    size_t pool_len, pool_cap;
    size_t *tok_off;   /* (vocab_cap) offset of token id in pool; NONE while unset */
    uint32_t *tok_len; /* (vocab_cap) */
    size_t n_vocab, vocab_cap;
    int32_t *vslot; /* open addressing: token string -> id, -1 empty; power-of-two size */
    size_t vslot_cap, n_hashed;
    int32_t *merge_a, *merge_b, *merge_out; /* (n_merges) in rank order */
    size_t n_merges, merges_cap;
    uint64_t *pkey; /* open addressing: (a << 32 | b) -> rank; EMPTY_PAIR empty */
    int32_t *prank;
    size_t pslot_cap;
    int32_t byte_id[256];     /* id of the symbol for byte b inside a word, -1 if not in the vocabulary */
    int32_t byte_end_id[256]; /* same with "</w>": the last symbol of a word */
    int32_t sot_id, eot_id;
};

/* ---- bytes_to_unicode ---------------------------------------------------------------------------- */

/* The reference maps printable Latin-1 bytes to themselves and the other 68 bytes, in increasing order,
 * to U+0100.., so that no byte becomes white space or a control character inside a token. */
static int byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_to_cp(uint8_t b)
{
    if (byte_is_printable(b))
        return b;
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++)
        n += !byte_is_printable(x);
    return 256 + n;
}

/* Inverse of byte_to_cp for decode: -1 where a code point is no byte's image. */
static int cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return byte_is_printable(cp) ? (int)cp : -1;
    uint32_t n = 256;
    for (unsigned x = 0; x < 256; x++) {
        if (!byte_is_printable(x)) {
            if (n == cp)
                return (int)x;
            n++;
        }
    }
    return -1;
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

#define CP_INVALID UINT32_MAX

/* Decodes one code point of strict UTF-8 at s (n > 0 bytes left). An invalid, overlong, surrogate or
 * truncated sequence consumes one byte and gives CP_INVALID. Returns the bytes consumed. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = CP_INVALID;
        return 1;
    }
    if (len > n) {
        *cp = CP_INVALID;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = CP_INVALID;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = CP_INVALID;
        return 1;
    }
    *cp = v;
    return len;
}

void fm_tok_byte_char(uint8_t b, char out[3])
{
    char tmp[4]; /* byte images are below U+0144: at most 2 bytes */
    size_t n = utf8_encode(byte_to_cp(b), tmp);
    memcpy(out, tmp, n);
    out[n] = '\0';
}

uint8_t fm_tok_byte_order(int i)
{
    /* Printable bytes in increasing order, then the others, as bytes_to_unicode lists them. */
    int k = 0;
    for (unsigned pass = 0; pass < 2; pass++) {
        for (unsigned b = 0; b < 256; b++) {
            if (byte_is_printable(b) == (pass == 0)) {
                if (k == i)
                    return (uint8_t)b;
                k++;
            }
        }
    }
    return 0;
}

/* ---- character classes and lower case --------------------------------------------------------------- */

enum { CC_SPACE, CC_LETTER, CC_NUMBER, CC_OTHER };

/* Non-ASCII code points that are white space, numbers (\p{N}) or neither letter nor number; everything
 * else >= 0x80 counts as a letter. Exact for Latin-1, an approximation elsewhere (header comment). */
/* clang-format off */
static const struct cc_range {
    uint32_t lo, hi;
    uint8_t cls;
} cc_table[] = {
    {0x0080, 0x0084, CC_OTHER},   {0x0085, 0x0085, CC_SPACE},   {0x0086, 0x009F, CC_OTHER},
    {0x00A0, 0x00A0, CC_SPACE},   {0x00A1, 0x00A9, CC_OTHER},   {0x00AB, 0x00B1, CC_OTHER},
    {0x00B2, 0x00B3, CC_NUMBER},  {0x00B4, 0x00B4, CC_OTHER},   {0x00B6, 0x00B8, CC_OTHER},
    {0x00B9, 0x00B9, CC_NUMBER},  {0x00BB, 0x00BB, CC_OTHER},   {0x00BC, 0x00BE, CC_NUMBER},
    {0x00BF, 0x00BF, CC_OTHER},   {0x00D7, 0x00D7, CC_OTHER},   {0x00F7, 0x00F7, CC_OTHER},
    {0x02C2, 0x02C5, CC_OTHER},   {0x02D2, 0x02DF, CC_OTHER},   {0x02E5, 0x02EB, CC_OTHER},
    {0x02ED, 0x02ED, CC_OTHER},   {0x02EF, 0x036F, CC_OTHER},   {0x0375, 0x0375, CC_OTHER},
    {0x037E, 0x037E, CC_OTHER},   {0x0384, 0x0385, CC_OTHER},   {0x0387, 0x0387, CC_OTHER},
    {0x03F6, 0x03F6, CC_OTHER},   {0x0482, 0x0489, CC_OTHER},   {0x055A, 0x055F, CC_OTHER},
    {0x0589, 0x058A, CC_OTHER},   {0x0591, 0x05C7, CC_OTHER},   {0x0600, 0x061F, CC_OTHER},
    {0x064B, 0x065F, CC_OTHER},   {0x0660, 0x0669, CC_NUMBER},  {0x066A, 0x066D, CC_OTHER},
    {0x0670, 0x0670, CC_OTHER},   {0x06D4, 0x06D4, CC_OTHER},   {0x06D6, 0x06ED, CC_OTHER},
    {0x06F0, 0x06F9, CC_NUMBER},  {0x0900, 0x0903, CC_OTHER},   {0x093A, 0x094F, CC_OTHER},
    {0x0951, 0x0957, CC_OTHER},   {0x0962, 0x0965, CC_OTHER},   {0x0966, 0x096F, CC_NUMBER},
    {0x0970, 0x0970, CC_OTHER},   {0x09E6, 0x09EF, CC_NUMBER},  {0x0E31, 0x0E31, CC_OTHER},
    {0x0E34, 0x0E3A, CC_OTHER},   {0x0E3F, 0x0E3F, CC_OTHER},   {0x0E47, 0x0E4F, CC_OTHER},
    {0x0E50, 0x0E59, CC_NUMBER},  {0x1680, 0x1680, CC_SPACE},   {0x2000, 0x200A, CC_SPACE},
    {0x200B, 0x2027, CC_OTHER},   {0x2028, 0x2029, CC_SPACE},   {0x202A, 0x202E, CC_OTHER},
    {0x202F, 0x202F, CC_SPACE},   {0x2030, 0x205E, CC_OTHER},   {0x205F, 0x205F, CC_SPACE},
    {0x2060, 0x206F, CC_OTHER},   {0x2070, 0x2070, CC_NUMBER},  {0x2074, 0x2079, CC_NUMBER},
    {0x207A, 0x207E, CC_OTHER},   {0x2080, 0x2089, CC_NUMBER},  {0x208A, 0x208E, CC_OTHER},
    {0x20A0, 0x20FF, CC_OTHER},   {0x2150, 0x2182, CC_NUMBER},  {0x2185, 0x2189, CC_NUMBER},
    {0x218A, 0x245F, CC_OTHER},   {0x2460, 0x249B, CC_NUMBER},  {0x249C, 0x24E9, CC_OTHER},
    {0x24EA, 0x24FF, CC_NUMBER},  {0x2500, 0x2775, CC_OTHER},   {0x2776, 0x2793, CC_NUMBER},
    {0x2794, 0x2BFF, CC_OTHER},   {0x2E00, 0x2FFF, CC_OTHER},   {0x3000, 0x3000, CC_SPACE},
    {0x3001, 0x3004, CC_OTHER},   {0x3007, 0x3007, CC_NUMBER},  {0x3008, 0x3020, CC_OTHER},
    {0x3021, 0x3029, CC_NUMBER},  {0x302A, 0x3030, CC_OTHER},   {0x3036, 0x3037, CC_OTHER},
    {0x3038, 0x303A, CC_NUMBER},  {0x303D, 0x303F, CC_OTHER},   {0x3099, 0x309C, CC_OTHER},
    {0x30A0, 0x30A0, CC_OTHER},   {0x30FB, 0x30FB, CC_OTHER},   {0xE000, 0xF8FF, CC_OTHER},
    {0xFE00, 0xFE19, CC_OTHER},   {0xFE20, 0xFE6F, CC_OTHER},   {0xFEFF, 0xFEFF, CC_OTHER},
    {0xFF01, 0xFF0F, CC_OTHER},   {0xFF10, 0xFF19, CC_NUMBER},  {0xFF1A, 0xFF20, CC_OTHER},
    {0xFF3B, 0xFF40, CC_OTHER},   {0xFF5B, 0xFF65, CC_OTHER},   {0xFFE0, 0xFFFF, CC_OTHER},
    {0x1D7CE, 0x1D7FF, CC_NUMBER}, {0x1F000, 0x1F0FF, CC_OTHER}, {0x1F100, 0x1F10C, CC_NUMBER},
    {0x1F10D, 0x1FAFF, CC_OTHER}, {0xE0000, 0xE007F, CC_OTHER}, {0xF0000, 0x10FFFF, CC_OTHER},
};
/* clang-format on */

static int char_class(uint32_t cp)
{
    if (cp == CP_INVALID)
        return CC_LETTER; /* stray bytes stay together with their word; see the header comment */
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'))
            return CC_LETTER;
        if (cp >= '0' && cp <= '9')
            return CC_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D))
            return CC_SPACE;
        return CC_OTHER;
    }
    size_t lo = 0, hi = sizeof cc_table / sizeof cc_table[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < cc_table[mid].lo)
            hi = mid;
        else if (cp > cc_table[mid].hi)
            lo = mid + 1;
        else
            return cc_table[mid].cls;
    }
    return CC_LETTER;
}

/* Simple one-to-one lower case for the scripts the header names; U+0130 is handled by the caller. */
static uint32_t to_lower(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c < 0xC0)
        return c;
    if (c <= 0xDE)
        return c == 0xD7 ? c : c + 32;
    if (c >= 0x100 && c <= 0x137)
        return c | 1;
    if (c >= 0x139 && c <= 0x148)
        return (c & 1) ? c + 1 : c;
    if (c >= 0x14A && c <= 0x177)
        return c | 1;
    if (c == 0x178)
        return 0xFF;
    if (c >= 0x179 && c <= 0x17E)
        return (c & 1) ? c + 1 : c;
    if (c == 0x386)
        return 0x3AC;
    if (c >= 0x388 && c <= 0x38A)
        return c + 0x25;
    if (c == 0x38C)
        return 0x3CC;
    if (c == 0x38E || c == 0x38F)
        return c + 0x3F;
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2)
        return c + 0x20;
    if (c >= 0x400 && c <= 0x40F)
        return c + 0x50;
    if (c >= 0x410 && c <= 0x42F)
        return c + 0x20;
    return c;
}

/* ---- tables ----------------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t x)
{
    x ^= x >> 30; /* splitmix64 finalizer */
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static const char *tok_str(const fm_tokenizer *t, int32_t id) { return t->pool + t->tok_off[id]; }

static int32_t vocab_find(const fm_tokenizer *t, const char *s, size_t len)
{
    if (t->vslot_cap == 0)
        return -1;
    size_t mask = t->vslot_cap - 1;
    for (size_t i = (size_t)hash_bytes(s, len) & mask;; i = (i + 1) & mask) {
        int32_t id = t->vslot[i];
        if (id < 0)
            return -1;
        if (t->tok_len[id] == len && memcmp(tok_str(t, id), s, len) == 0)
            return id;
    }
}

static void vocab_slot_put(fm_tokenizer *t, int32_t id)
{
    size_t mask = t->vslot_cap - 1;
    size_t i = (size_t)hash_bytes(tok_str(t, id), t->tok_len[id]) & mask;
    while (t->vslot[i] >= 0)
        i = (i + 1) & mask;
    t->vslot[i] = id;
}

/* Keeps the string table at most half full. */
static fm_status vocab_hash_reserve(fm_tokenizer *t, size_t n)
{
    if (2 * n <= t->vslot_cap)
        return FM_OK;
    size_t cap = 64;
    while (cap < 2 * n)
        cap *= 2;
    int32_t *slots = malloc(cap * sizeof *slots);
    if (!slots)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate a table of %zu tokens", n);
    for (size_t i = 0; i < cap; i++)
        slots[i] = -1;
    int32_t *old = t->vslot;
    size_t old_cap = t->vslot_cap;
    t->vslot = slots;
    t->vslot_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i] >= 0)
            vocab_slot_put(t, old[i]);
    free(old);
    return FM_OK;
}

static fm_status vocab_reserve(fm_tokenizer *t, size_t n)
{
    if (n <= t->vocab_cap)
        return FM_OK;
    if (n > (size_t)INT32_MAX)
        return fm_error(FM_ERR_RANGE, "tokenizer: %zu tokens is more than ids can number", n);
    size_t cap = t->vocab_cap ? t->vocab_cap : 512;
    while (cap < n)
        cap *= 2;
    size_t *off = realloc(t->tok_off, cap * sizeof *off);
    if (!off)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu tokens", cap);
    t->tok_off = off;
    uint32_t *len = realloc(t->tok_len, cap * sizeof *len);
    if (!len)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu tokens", cap);
    t->tok_len = len;
    for (size_t i = t->vocab_cap; i < cap; i++) {
        off[i] = NONE;
        len[i] = 0;
    }
    t->vocab_cap = cap;
    return FM_OK;
}

/* Stores s[0..len) as token `id` (id < vocab_cap, not yet set, string not yet present). */
static fm_status vocab_store(fm_tokenizer *t, size_t id, const char *s, size_t len)
{
    if (len >= UINT32_MAX)
        return fm_error(FM_ERR_RANGE, "tokenizer: a token of %zu bytes is too long", len);
    if (t->pool_len + len + 1 > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 4096;
        while (cap < t->pool_len + len + 1)
            cap *= 2;
        char *pool = realloc(t->pool, cap);
        if (!pool)
            return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu bytes of token strings", cap);
        t->pool = pool;
        t->pool_cap = cap;
    }
    FM_TRY(vocab_hash_reserve(t, t->n_hashed + 1));
    memcpy(t->pool + t->pool_len, s, len);
    t->pool[t->pool_len + len] = '\0';
    t->tok_off[id] = t->pool_len;
    t->tok_len[id] = (uint32_t)len;
    t->pool_len += len + 1;
    vocab_slot_put(t, (int32_t)id);
    t->n_hashed++;
    return FM_OK;
}

static int32_t pair_find(const fm_tokenizer *t, int32_t a, int32_t b)
{
    if (t->pslot_cap == 0)
        return -1;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->pslot_cap - 1;
    for (size_t i = (size_t)hash_pair(key) & mask;; i = (i + 1) & mask) {
        if (t->pkey[i] == EMPTY_PAIR)
            return -1;
        if (t->pkey[i] == key)
            return t->prank[i];
    }
}

static void pair_slot_put(fm_tokenizer *t, uint64_t key, int32_t rank)
{
    size_t mask = t->pslot_cap - 1;
    size_t i = (size_t)hash_pair(key) & mask;
    while (t->pkey[i] != EMPTY_PAIR)
        i = (i + 1) & mask;
    t->pkey[i] = key;
    t->prank[i] = rank;
}

/* Appends merge (a, b) -> out with the next rank; the caller has checked it is new and valid. */
static fm_status merge_push(fm_tokenizer *t, int32_t a, int32_t b, int32_t out)
{
    if (t->n_merges >= (size_t)INT32_MAX)
        return fm_error(FM_ERR_RANGE, "tokenizer: too many merges");
    if (t->n_merges == t->merges_cap) {
        size_t cap = t->merges_cap ? 2 * t->merges_cap : 256;
        int32_t *ma = realloc(t->merge_a, cap * sizeof *ma);
        if (!ma)
            return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu merges", cap);
        t->merge_a = ma;
        int32_t *mb = realloc(t->merge_b, cap * sizeof *mb);
        if (!mb)
            return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu merges", cap);
        t->merge_b = mb;
        int32_t *mo = realloc(t->merge_out, cap * sizeof *mo);
        if (!mo)
            return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu merges", cap);
        t->merge_out = mo;
        t->merges_cap = cap;
    }
    if (2 * (t->n_merges + 1) > t->pslot_cap) {
        size_t cap = t->pslot_cap ? 2 * t->pslot_cap : 512;
        uint64_t *keys = malloc(cap * sizeof *keys);
        int32_t *ranks = malloc(cap * sizeof *ranks);
        if (!keys || !ranks) {
            free(keys);
            free(ranks);
            return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate a table of %zu merges", cap);
        }
        for (size_t i = 0; i < cap; i++)
            keys[i] = EMPTY_PAIR;
        uint64_t *old_keys = t->pkey;
        int32_t *old_ranks = t->prank;
        size_t old_cap = t->pslot_cap;
        t->pkey = keys;
        t->prank = ranks;
        t->pslot_cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old_keys[i] != EMPTY_PAIR)
                pair_slot_put(t, old_keys[i], old_ranks[i]);
        free(old_keys);
        free(old_ranks);
    }
    int32_t rank = (int32_t)t->n_merges;
    t->merge_a[rank] = a;
    t->merge_b[rank] = b;
    t->merge_out[rank] = out;
    pair_slot_put(t, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, rank);
    t->n_merges++;
    return FM_OK;
}

/* A growable byte buffer for concatenations and decode output. */
typedef struct {
    char *p;
    size_t len, cap;
} strbuf;

/* Room for `extra` more bytes and a NUL; returns the new capacity, or 0 when out of memory. */
static size_t sb_grow(strbuf *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap)
        return sb->cap;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + extra + 1)
        cap *= 2;
    char *p = realloc(sb->p, cap);
    if (!p)
        return 0;
    sb->p = p;
    sb->cap = cap;
    return cap;
}

static fm_status sb_reserve(strbuf *sb, size_t extra)
{
    if (!sb_grow(sb, extra))
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu bytes", sb->len + extra + 1);
    return FM_OK;
}

static fm_status sb_append(strbuf *sb, const char *s, size_t n)
{
    if (!sb_grow(sb, n))
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu bytes", sb->len + n + 1);
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
    return FM_OK;
}

/* ---- construction ------------------------------------------------------------------------------------ */

fm_tokenizer *fm_tok_new(void)
{
    fm_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = t->byte_end_id[b] = -1;
    t->sot_id = t->eot_id = -1;
    return t;
}

void fm_tokenizer_free(fm_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->pool);
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok->vslot);
    free(tok->merge_a);
    free(tok->merge_b);
    free(tok->merge_out);
    free(tok->pkey);
    free(tok->prank);
    free(tok);
}

fm_status fm_tok_append_token(fm_tokenizer *tok, const char *s, size_t len, int32_t *id)
{
    if (vocab_find(tok, s, len) >= 0)
        return fm_error(FM_ERR_PARSE, "tokenizer: token \"%.*s\" is already in the vocabulary",
                        (int)(len > 60 ? 60 : len), s);
    FM_TRY(vocab_reserve(tok, tok->n_vocab + 1));
    FM_TRY(vocab_store(tok, tok->n_vocab, s, len));
    if (id)
        *id = (int32_t)tok->n_vocab;
    tok->n_vocab++;
    return FM_OK;
}

/* The merged string of tokens a and b into sb. */
static fm_status concat_tokens(const fm_tokenizer *t, int32_t a, int32_t b, strbuf *sb)
{
    sb->len = 0;
    FM_TRY(sb_append(sb, tok_str(t, a), t->tok_len[a]));
    return sb_append(sb, tok_str(t, b), t->tok_len[b]);
}

fm_status fm_tok_add_merge(fm_tokenizer *tok, int32_t a, int32_t b, int add_result, int32_t *out)
{
    if (a < 0 || b < 0 || (size_t)a >= tok->n_vocab || (size_t)b >= tok->n_vocab)
        return fm_error(FM_ERR_RANGE, "tokenizer: merge of ids %d and %d outside the vocabulary", (int)a, (int)b);
    if (pair_find(tok, a, b) >= 0)
        return fm_error(FM_ERR_PARSE, "tokenizer: duplicate merge \"%s %s\"", tok_str(tok, a), tok_str(tok, b));
    strbuf sb = {0};
    fm_status st = concat_tokens(tok, a, b, &sb);
    int32_t r = -1;
    if (st == FM_OK) {
        r = vocab_find(tok, sb.p, sb.len);
        if (r < 0 && add_result)
            st = fm_tok_append_token(tok, sb.p, sb.len, &r);
        else if (r < 0)
            st = fm_error(FM_ERR_PARSE, "tokenizer: merge result \"%s\" is not in the vocabulary", sb.p);
    }
    free(sb.p);
    FM_TRY(st);
    FM_TRY(merge_push(tok, a, b, r));
    if (out)
        *out = r;
    return FM_OK;
}

void fm_tok_lookup_bytes(fm_tokenizer *tok)
{
    for (int b = 0; b < 256; b++) {
        char s[3 + EOW_LEN];
        fm_tok_byte_char((uint8_t)b, s);
        size_t n = strlen(s);
        tok->byte_id[b] = vocab_find(tok, s, n);
        memcpy(s + n, EOW, EOW_LEN + 1); /* with its NUL: s has room for 2 bytes, EOW and the NUL */
        tok->byte_end_id[b] = vocab_find(tok, s, n + EOW_LEN);
    }
}

fm_status fm_tok_finish(fm_tokenizer *tok, const char *what)
{
    fm_tok_lookup_bytes(tok);
    tok->sot_id = vocab_find(tok, FM_TOKENIZER_SOT, strlen(FM_TOKENIZER_SOT));
    tok->eot_id = vocab_find(tok, FM_TOKENIZER_EOT, strlen(FM_TOKENIZER_EOT));
    if (tok->sot_id < 0)
        return fm_error(FM_ERR_PARSE, "%s: no \"%s\" token in the vocabulary", what, FM_TOKENIZER_SOT);
    if (tok->eot_id < 0)
        return fm_error(FM_ERR_PARSE, "%s: no \"%s\" token in the vocabulary", what, FM_TOKENIZER_EOT);
    return FM_OK;
}

/* ---- vocab.json and merges.txt ------------------------------------------------------------------------ */

static void line_col(const char *buf, size_t upto, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < upto; i++) {
        if (buf[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static const char *json_type_name(const cJSON *item)
{
    if (cJSON_IsString(item))
        return "a string";
    if (cJSON_IsBool(item))
        return "a boolean";
    if (cJSON_IsNull(item))
        return "null";
    if (cJSON_IsArray(item))
        return "an array";
    if (cJSON_IsObject(item))
        return "an object";
    return "a non-number";
}

static fm_status parse_vocab(fm_tokenizer *t, const char *json, size_t len, const char *name)
{
    /* cJSON gets its own NUL-terminated copy: the caller's buffer need not end in one. */
    char *copy = malloc(len + 1);
    if (!copy)
        return fm_error(FM_ERR_NO_MEMORY, "%s: cannot allocate %zu bytes", name, len + 1);
    memcpy(copy, json, len);
    copy[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, len, &end, 0);
    fm_status st = FM_OK;
    size_t line, col;
    if (!root) {
        size_t at = (end && end >= copy && end <= copy + len) ? (size_t)(end - copy) : 0;
        line_col(copy, at, &line, &col);
        st = fm_error(FM_ERR_PARSE, "%s: malformed JSON at line %zu, column %zu", name, line, col);
        goto done;
    }
    size_t at = (end && end >= copy && end <= copy + len) ? (size_t)(end - copy) : len;
    while (at < len && (copy[at] == ' ' || copy[at] == '\t' || copy[at] == '\n' || copy[at] == '\r'))
        at++;
    if (at < len) {
        line_col(copy, at, &line, &col);
        st =
            fm_error(FM_ERR_PARSE, "%s: unexpected data after the JSON value at line %zu, column %zu", name, line, col);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        st = fm_error(FM_ERR_PARSE, "%s: expected a JSON object of token -> id, got %s", name,
                      cJSON_IsNumber(root) ? "a number" : json_type_name(root));
        goto done;
    }
    size_t n = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) n++;
    if (n == 0) {
        st = fm_error(FM_ERR_PARSE, "%s: the vocabulary is empty", name);
        goto done;
    }
    if ((st = vocab_reserve(t, n)) != FM_OK)
        goto done;
    t->n_vocab = n;
    size_t entry = 0;
    cJSON_ArrayForEach(item, root)
    {
        entry++;
        const char *key = item->string;
        if (!key || !key[0]) {
            st = fm_error(FM_ERR_PARSE, "%s: entry %zu has an empty token", name, entry);
            goto done;
        }
        if (!cJSON_IsNumber(item)) {
            st = fm_error(FM_ERR_PARSE, "%s: entry %zu (\"%.60s\"): the id must be an integer, got %s", name, entry,
                          key, json_type_name(item));
            goto done;
        }
        double d = item->valuedouble;
        if (!isfinite(d) || d != floor(d)) {
            st = fm_error(FM_ERR_PARSE, "%s: entry %zu (\"%.60s\"): the id %g is not an integer", name, entry, key, d);
            goto done;
        }
        if (d < 0 || d >= (double)n) {
            st = fm_error(FM_ERR_PARSE,
                          "%s: entry %zu (\"%.60s\"): id %.0f is outside 0..%zu (the %zu ids must be "
                          "0..%zu, each once)",
                          name, entry, key, d, n - 1, n, n - 1);
            goto done;
        }
        size_t id = (size_t)d;
        if (t->tok_off[id] != NONE) {
            st = fm_error(FM_ERR_PARSE, "%s: entry %zu (\"%.60s\"): duplicate id %zu, already given to \"%.60s\"", name,
                          entry, key, id, tok_str(t, (int32_t)id));
            goto done;
        }
        size_t klen = strlen(key);
        if (vocab_find(t, key, klen) >= 0) {
            st = fm_error(FM_ERR_PARSE, "%s: entry %zu: duplicate token \"%.60s\"", name, entry, key);
            goto done;
        }
        if ((st = vocab_store(t, id, key, klen)) != FM_OK)
            goto done;
    }
done:
    cJSON_Delete(root);
    free(copy);
    return st;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static fm_status parse_merges(fm_tokenizer *t, const char *txt, size_t len, const char *name)
{
    strbuf sb = {0};
    fm_status st = FM_OK;
    size_t pos = 0, line_no = 0;
    while (pos < len && st == FM_OK) {
        size_t start = pos;
        while (pos < len && txt[pos] != '\n')
            pos++;
        size_t end = pos;
        pos++; /* past the '\n' (or past the end) */
        line_no++;
        if (line_no == 1 && end - start >= 8 && memcmp(txt + start, "#version", 8) == 0)
            continue;
        /* Split on spaces and tabs; more than two fields is an error, so remember only three. */
        size_t f_start[3], f_len[3], nf = 0;
        size_t i = start;
        while (i < end) {
            while (i < end && is_blank(txt[i]))
                i++;
            if (i == end)
                break;
            size_t s = i;
            while (i < end && !is_blank(txt[i]))
                i++;
            if (nf < 3) {
                f_start[nf] = s;
                f_len[nf] = i - s;
            }
            nf++;
        }
        if (nf == 0)
            continue;
        if (nf != 2) {
            st = fm_error(FM_ERR_PARSE, "%s line %zu: expected a merge of two tokens \"a b\", got %zu field%s", name,
                          line_no, nf, nf == 1 ? "" : "s");
            break;
        }
        int32_t ab[2] = {-1, -1};
        for (int k = 0; k < 2; k++) {
            ab[k] = vocab_find(t, txt + f_start[k], f_len[k]);
            if (ab[k] < 0) {
                st = fm_error(FM_ERR_PARSE, "%s line %zu: token \"%.*s\" is not in the vocabulary", name, line_no,
                              (int)(f_len[k] > 60 ? 60 : f_len[k]), txt + f_start[k]);
                break;
            }
        }
        if (st != FM_OK)
            break;
        int32_t rank = pair_find(t, ab[0], ab[1]);
        if (rank >= 0) {
            st = fm_error(FM_ERR_PARSE, "%s line %zu: duplicate merge \"%s %s\" (already rank %d)", name, line_no,
                          tok_str(t, ab[0]), tok_str(t, ab[1]), (int)rank);
            break;
        }
        if ((st = concat_tokens(t, ab[0], ab[1], &sb)) != FM_OK)
            break;
        int32_t out = vocab_find(t, sb.p, sb.len);
        if (out < 0) {
            st = fm_error(FM_ERR_PARSE, "%s line %zu: the merge result \"%.60s\" is not in the vocabulary", name,
                          line_no, sb.p);
            break;
        }
        st = merge_push(t, ab[0], ab[1], out);
    }
    free(sb.p);
    return st;
}

fm_status fm_tokenizer_load_buffers(fm_tokenizer **out, const char *vocab_json, size_t vocab_len,
                                    const char *vocab_name, const char *merges_txt, size_t merges_len,
                                    const char *merges_name)
{
    if (!out || (!vocab_json && vocab_len) || (!merges_txt && merges_len))
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_load_buffers: NULL argument");
    *out = NULL;
    if (!vocab_name)
        vocab_name = "vocab.json";
    if (!merges_name)
        merges_name = "merges.txt";
    fm_tokenizer *t = fm_tok_new();
    if (!t)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate");
    fm_status st = parse_vocab(t, vocab_json ? vocab_json : "", vocab_len, vocab_name);
    if (st == FM_OK)
        st = fm_tok_finish(t, vocab_name);
    if (st == FM_OK)
        st = parse_merges(t, merges_txt, merges_len, merges_name);
    if (st != FM_OK) {
        fm_tokenizer_free(t);
        return st;
    }
    *out = t;
    return FM_OK;
}

static fm_status read_whole_file(const char *path, char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error(FM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    strbuf sb = {0};
    fm_status st = FM_OK;
    for (;;) {
        if ((st = sb_reserve(&sb, 65536)) != FM_OK)
            break;
        size_t got = fread(sb.p + sb.len, 1, 65536, f);
        sb.len += got;
        if (sb.len > TOK_MAX_FILE_BYTES) {
            st =
                fm_error(FM_ERR_PARSE, "%s: larger than %zu MiB, not a tokenizer file", path, TOK_MAX_FILE_BYTES >> 20);
            break;
        }
        if (got < 65536) {
            if (ferror(f))
                st = fm_error(FM_ERR_IO, "%s: read error: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (st != FM_OK) {
        free(sb.p);
        return st;
    }
    *buf = sb.p;
    *len = sb.len;
    return FM_OK;
}

fm_status fm_tokenizer_load(fm_tokenizer **out, const char *vocab_path, const char *merges_path)
{
    if (!out || !vocab_path || !merges_path)
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_load: NULL argument");
    *out = NULL;
    char *vocab = NULL, *merges = NULL;
    size_t vocab_len = 0, merges_len = 0;
    fm_status st = read_whole_file(vocab_path, &vocab, &vocab_len);
    if (st == FM_OK)
        st = read_whole_file(merges_path, &merges, &merges_len);
    if (st == FM_OK)
        st = fm_tokenizer_load_buffers(out, vocab, vocab_len, vocab_path, merges, merges_len, merges_path);
    free(vocab);
    free(merges);
    return st;
}

/* ---- BPE ------------------------------------------------------------------------------------------------ */

typedef struct {
    int32_t rank;
    int32_t left_id, right_id; /* the ids the pair had when pushed: a changed id makes the entry stale */
    size_t left, right;        /* symbol positions */
} bpe_entry;

/* Working memory for BPE of words up to `cap` bytes, reused across the words of one call. */
typedef struct {
    size_t cap;
    int32_t *id; /* (cap) symbol id, per position of its first byte */
    size_t *prev, *next;
    uint8_t *alive;
    bpe_entry *heap; /* (3 cap): n-1 initial pairs plus at most 2 per merge */
    size_t heap_n;
    size_t *pending; /* (2 cap) left positions of pairs made by the current pass */
    int32_t *out;    /* (cap) */
} bpe_scratch;

static void scratch_free(bpe_scratch *sc)
{
    free(sc->id);
    free(sc->prev);
    free(sc->next);
    free(sc->alive);
    free(sc->heap);
    free(sc->pending);
    free(sc->out);
    memset(sc, 0, sizeof *sc);
}

static fm_status scratch_reserve(bpe_scratch *sc, size_t n)
{
    if (n <= sc->cap)
        return FM_OK;
    size_t cap = sc->cap ? sc->cap : 64;
    while (cap < n)
        cap *= 2;
    scratch_free(sc);
    sc->id = malloc(cap * sizeof *sc->id);
    sc->prev = malloc(cap * sizeof *sc->prev);
    sc->next = malloc(cap * sizeof *sc->next);
    sc->alive = malloc(cap);
    sc->heap = malloc(3 * cap * sizeof *sc->heap);
    sc->pending = malloc(2 * cap * sizeof *sc->pending);
    sc->out = malloc(cap * sizeof *sc->out);
    if (!sc->id || !sc->prev || !sc->next || !sc->alive || !sc->heap || !sc->pending || !sc->out) {
        scratch_free(sc);
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate BPE memory for a %zu-byte word", n);
    }
    sc->cap = cap;
    return FM_OK;
}

static int entry_less(const bpe_entry *x, const bpe_entry *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_push(bpe_scratch *sc, bpe_entry e)
{
    size_t i = sc->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!entry_less(&e, &sc->heap[parent]))
            break;
        sc->heap[i] = sc->heap[parent];
        i = parent;
    }
    sc->heap[i] = e;
}

static bpe_entry heap_pop(bpe_scratch *sc)
{
    bpe_entry top = sc->heap[0];
    bpe_entry last = sc->heap[--sc->heap_n];
    size_t i = 0, n = sc->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && entry_less(&sc->heap[c + 1], &sc->heap[c]))
            c++;
        if (!entry_less(&sc->heap[c], &last))
            break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n > 0)
        sc->heap[i] = last;
    return top;
}

static void push_pair(const fm_tokenizer *t, bpe_scratch *sc, size_t left)
{
    size_t right = sc->next[left];
    int32_t a = sc->id[left], b = sc->id[right];
    if (a < 0 || b < 0)
        return;
    int32_t rank = pair_find(t, a, b);
    if (rank < 0)
        return;
    bpe_entry e = {rank, a, b, left, right};
    heap_push(sc, e);
}

/* The reference repeatedly takes the lowest-ranked pair present and merges all its occurrences left to
 * right before looking again. Popping (rank, position) from a heap does the same as long as pairs created
 * during a pass only join the heap once the pass is over (a malformed file may rank them lower). */
static fm_status bpe_word(const fm_tokenizer *t, bpe_scratch *sc, const uint8_t *w, size_t n, size_t *n_out)
{
    FM_TRY(scratch_reserve(sc, n));
    if (n == 1) {
        sc->out[0] = t->byte_end_id[w[0]];
        *n_out = 1;
        return FM_OK;
    }
    for (size_t i = 0; i < n; i++) {
        sc->id[i] = i + 1 < n ? t->byte_id[w[i]] : t->byte_end_id[w[i]];
        sc->prev[i] = i == 0 ? NONE : i - 1;
        sc->next[i] = i + 1 < n ? i + 1 : NONE;
        sc->alive[i] = 1;
    }
    sc->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, sc, i);
    while (sc->heap_n > 0) {
        int32_t rank = sc->heap[0].rank;
        size_t n_pending = 0;
        while (sc->heap_n > 0 && sc->heap[0].rank == rank) {
            bpe_entry e = heap_pop(sc);
            if (!sc->alive[e.left] || sc->next[e.left] != e.right || sc->id[e.left] != e.left_id ||
                sc->id[e.right] != e.right_id)
                continue; /* stale: one side merged since */
            size_t after = sc->next[e.right];
            sc->id[e.left] = t->merge_out[rank];
            sc->alive[e.right] = 0;
            sc->next[e.left] = after;
            if (after != NONE)
                sc->prev[after] = e.left;
            if (sc->prev[e.left] != NONE)
                sc->pending[n_pending++] = sc->prev[e.left];
            if (after != NONE)
                sc->pending[n_pending++] = e.left;
        }
        for (size_t k = 0; k < n_pending; k++) {
            size_t left = sc->pending[k];
            if (sc->alive[left] && sc->next[left] != NONE)
                push_pair(t, sc, left);
        }
    }
    size_t m = 0;
    for (size_t i = 0; i != NONE; i = sc->next[i])
        sc->out[m++] = sc->id[i];
    *n_out = m;
    return FM_OK;
}

fm_status fm_tok_bpe_word(const fm_tokenizer *tok, const uint8_t *word, size_t len, int32_t *out, size_t *n_out)
{
    if (!tok || !word || len == 0 || !out || !n_out)
        return fm_error(FM_ERR_INVALID_ARG, "tokenizer: bad BPE word arguments");
    bpe_scratch sc = {0};
    fm_status st = bpe_word(tok, &sc, word, len, n_out);
    if (st == FM_OK)
        memcpy(out, sc.out, *n_out * sizeof *out);
    scratch_free(&sc);
    return st;
}

/* ---- text cleanup and pre-tokenization ------------------------------------------------------------------ */

/* Collapses white space runs to one space, strips both ends and lower-cases, into a new buffer of at most
 * 3/2 the input size (U+0130 lower-cases to 3 bytes from 2; everything else keeps its length). */
static fm_status clean_text(const char *text, size_t n, char **out, size_t *out_len)
{
    const uint8_t *s = (const uint8_t *)text;
    /* Zeroed: the pre-tokenizer reads only the first len bytes, but that bound runs through utf8_decode() a few
     * calls deep, where the static analyzer stops following it. */
    char *buf = calloc(n + n / 2 + 1, 1);
    if (!buf)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate %zu bytes for a text", n + n / 2 + 1);
    size_t len = 0;
    int pending_space = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_decode(s + i, n - i, &cp);
        if (cp != CP_INVALID && char_class(cp) == CC_SPACE) {
            pending_space = len > 0;
            i += k;
            continue;
        }
        if (pending_space) {
            buf[len++] = ' ';
            pending_space = 0;
        }
        if (cp == CP_INVALID) {
            buf[len++] = (char)s[i];
        } else if (cp == 0x130) {
            /* İ lower-cases to "i" + U+0307 COMBINING DOT ABOVE, as Python's str.lower() does. */
            buf[len++] = 'i';
            len += utf8_encode(0x307, buf + len);
        } else {
            len += utf8_encode(to_lower(cp), buf + len);
        }
        i += k;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return FM_OK;
}

/* Where the ids go: the first cap are written, all are counted, scanning stops once `stop` are counted. */
typedef struct {
    int32_t *ids;
    size_t cap, n, stop;
} id_sink;

static void sink_push(id_sink *sk, int32_t id)
{
    if (sk->n < sk->cap)
        sk->ids[sk->n] = id;
    sk->n++;
}

static int starts_with(const char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    return n >= m && memcmp(s, lit, m) == 0;
}

/* Length of a contraction 's 't 're 've 'm 'll 'd at s (s[0] == '\''), or 0; tried in the regex's order. */
static size_t contraction_len(const char *s, size_t n)
{
    static const char *const forms[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
        if (starts_with(s, n, forms[i]))
            return strlen(forms[i]);
    return 0;
}

static int class_at(const char *s, size_t n, size_t *clen)
{
    uint32_t cp;
    *clen = utf8_decode((const uint8_t *)s, n, &cp);
    return char_class(cp);
}

/* CLIP's pre-tokenizer on one cleaned segment: at each position the first alternative of
 * 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ that matches is taken; positions where none
 * does (spaces) are skipped. Each match goes through BPE into the sink. The special-token alternatives of
 * openai's regex are left out, as in Hugging Face's tokenizer.json: specials were split off before, and a
 * differently-cased spelling that reaches this point is ordinary text ("<|", "endoftext", "|>"). */
static fm_status encode_clean(const fm_tokenizer *t, const char *buf, size_t n, bpe_scratch *sc, id_sink *sk)
{
    size_t pos = 0;
    while (pos < n && sk->n < sk->stop) {
        const char *s = buf + pos;
        size_t left = n - pos, w = 0, clen;
        if (s[0] == '\'')
            w = contraction_len(s, left);
        if (w == 0) {
            int cls = class_at(s, left, &clen);
            if (cls == CC_SPACE) {
                pos += clen;
                continue;
            }
            w = clen;
            if (cls != CC_NUMBER) { /* letters and "other" extend as a run; a number is one character */
                while (w < left) {
                    size_t l2;
                    if (class_at(s + w, left - w, &l2) != cls)
                        break;
                    w += l2;
                }
            }
        }
        size_t m;
        FM_TRY(bpe_word(t, sc, (const uint8_t *)s, w, &m));
        for (size_t i = 0; i < m; i++)
            sink_push(sk, sc->out[i] >= 0 ? sc->out[i] : t->eot_id); /* unknown symbol: CLIP's unk token */
        pos += w;
    }
    return FM_OK;
}

/* As Hugging Face: the special tokens, spelled exactly, are split out of the raw text first; each piece
 * between them is cleaned and pre-tokenized on its own. */
static fm_status encode_text(const fm_tokenizer *t, const char *text, id_sink *sk)
{
    bpe_scratch sc = {0};
    fm_status st = FM_OK;
    const char *p = text;
    /* The next occurrence of each special token, searched again only once passed: linear in the text. */
    const char *next_sot = strstr(p, FM_TOKENIZER_SOT), *next_eot = strstr(p, FM_TOKENIZER_EOT);
    while (st == FM_OK && sk->n < sk->stop) {
        if (next_sot && next_sot < p)
            next_sot = strstr(p, FM_TOKENIZER_SOT);
        if (next_eot && next_eot < p)
            next_eot = strstr(p, FM_TOKENIZER_EOT);
        int sot_first = next_sot && (!next_eot || next_sot < next_eot);
        const char *at = sot_first ? next_sot : next_eot;
        int32_t special = sot_first ? t->sot_id : t->eot_id;
        size_t special_len = strlen(sot_first ? FM_TOKENIZER_SOT : FM_TOKENIZER_EOT);
        size_t seg_len = at ? (size_t)(at - p) : strlen(p);
        char *buf = NULL;
        size_t n = 0;
        if ((st = clean_text(p, seg_len, &buf, &n)) != FM_OK)
            break;
        st = encode_clean(t, buf, n, &sc, sk);
        free(buf);
        if (!at)
            break;
        if (st == FM_OK && sk->n < sk->stop)
            sink_push(sk, special);
        p = at + special_len;
    }
    scratch_free(&sc);
    return st;
}

/* ---- public encode / decode / queries ------------------------------------------------------------------- */

fm_status fm_tokenizer_tokenize(const fm_tokenizer *tok, const char *text, int32_t *ids, size_t cap, size_t *n_ids)
{
    if (!tok || !text || !n_ids || (!ids && cap))
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_tokenize: NULL argument");
    id_sink sk = {ids, cap, 0, SIZE_MAX};
    fm_status st = encode_text(tok, text, &sk);
    *n_ids = sk.n;
    return st;
}

fm_status fm_tokenizer_encode_ex(const fm_tokenizer *tok, const char *text, int32_t *ids, int context_len,
                                 int *n_tokens, int *eot_pos)
{
    if (!tok || !text || !ids)
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_encode: NULL argument");
    if (context_len < 2)
        return fm_error(FM_ERR_INVALID_ARG,
                        "fm_tokenizer_encode: context_len %d < 2 leaves no room for the "
                        "start and end tokens",
                        context_len);
    size_t L = (size_t)context_len;
    /* The body goes straight into ids[1..L-1); scanning stops once it is full (the rest is cut anyway). */
    id_sink sk = {ids + 1, L - 2, 0, L - 2};
    FM_TRY(encode_text(tok, text, &sk));
    size_t k = sk.n < L - 2 ? sk.n : L - 2;
    ids[0] = tok->sot_id;
    ids[k + 1] = tok->eot_id;
    for (size_t i = k + 2; i < L; i++)
        ids[i] = tok->eot_id; /* pad id */
    if (n_tokens)
        *n_tokens = (int)(k + 2);
    if (eot_pos) {
        size_t p = 1;
        while (ids[p] != tok->eot_id)
            p++;
        *eot_pos = (int)p;
    }
    return FM_OK;
}

fm_status fm_tokenizer_encode(const fm_tokenizer *tok, const char *text, int32_t *ids, int context_len, int *n_tokens)
{
    return fm_tokenizer_encode_ex(tok, text, ids, context_len, n_tokens, NULL);
}

fm_status fm_tokenizer_encode_batch(const fm_tokenizer *tok, const char *const *texts, size_t n_texts, int32_t *ids,
                                    int context_len, int32_t *eot_pos)
{
    if (!tok || (n_texts && (!texts || !ids)))
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_encode_batch: NULL argument");
    for (size_t i = 0; i < n_texts; i++) {
        int pos = 0;
        if (!texts[i])
            return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_encode_batch: text %zu is NULL", i);
        fm_status st = fm_tokenizer_encode_ex(tok, texts[i], ids + i * (size_t)(context_len > 0 ? context_len : 0),
                                              context_len, NULL, &pos);
        if (st != FM_OK) {
            char why[512]; /* fm_error writes the buffer fm_last_error() returns: copy it first */
            snprintf(why, sizeof why, "%s", fm_last_error());
            return fm_error(st, "fm_tokenizer_encode_batch: text %zu: %s", i, why);
        }
        if (eot_pos)
            eot_pos[i] = pos;
    }
    return FM_OK;
}

static int is_ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

fm_status fm_tokenizer_decode(const fm_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special, char *buf,
                              size_t cap, size_t *len)
{
    if (!tok || (!ids && n_ids) || (!buf && cap))
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_decode: NULL argument");
    strbuf sb = {0};
    fm_status st = sb_reserve(&sb, 0);
    for (size_t i = 0; i < n_ids && st == FM_OK; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= tok->n_vocab) {
            st = fm_error(FM_ERR_RANGE, "fm_tokenizer_decode: id %d at position %zu is outside 0..%zu", (int)id, i,
                          tok->n_vocab - 1);
            break;
        }
        if (id == tok->sot_id || id == tok->eot_id) {
            if (!skip_special)
                st = sb_append(&sb, tok_str(tok, id), tok->tok_len[id]);
            continue;
        }
        const char *s = tok_str(tok, id);
        size_t n = tok->tok_len[id];
        int word_end = n >= EOW_LEN && memcmp(s + n - EOW_LEN, EOW, EOW_LEN) == 0;
        if (word_end)
            n -= EOW_LEN;
        /* Each character of a byte-level token stands for one byte; others (not CLIP's) pass through. */
        for (size_t j = 0; j < n && st == FM_OK;) {
            uint32_t cp;
            size_t k = utf8_decode((const uint8_t *)s + j, n - j, &cp);
            int b = cp == CP_INVALID ? -1 : cp_to_byte(cp);
            if (b >= 0) {
                char c = (char)b;
                st = sb_append(&sb, &c, 1);
            } else {
                st = sb_append(&sb, s + j, k);
            }
            j += k;
        }
        if (word_end && st == FM_OK)
            st = sb_append(&sb, " ", 1);
    }
    if (st == FM_OK) {
        size_t a = 0, b = sb.len;
        while (a < b && is_ascii_space(sb.p[a]))
            a++;
        while (b > a && is_ascii_space(sb.p[b - 1]))
            b--;
        size_t need = b - a;
        if (len)
            *len = need;
        if (cap > 0) {
            size_t m = need < cap ? need : cap - 1;
            memcpy(buf, sb.p + a, m);
            buf[m] = '\0';
        }
        if (need >= cap)
            st = fm_error(FM_ERR_RANGE, "fm_tokenizer_decode: the text needs %zu bytes, the buffer has %zu", need + 1,
                          cap);
    }
    free(sb.p);
    return st;
}

int fm_tokenizer_vocab_size(const fm_tokenizer *tok) { return tok ? (int)tok->n_vocab : 0; }
int fm_tokenizer_merges_count(const fm_tokenizer *tok) { return tok ? (int)tok->n_merges : 0; }
int32_t fm_tokenizer_sot_id(const fm_tokenizer *tok) { return tok ? tok->sot_id : -1; }
int32_t fm_tokenizer_eot_id(const fm_tokenizer *tok) { return tok ? tok->eot_id : -1; }
int32_t fm_tokenizer_pad_id(const fm_tokenizer *tok) { return tok ? tok->eot_id : -1; }

int32_t fm_tokenizer_token_to_id(const fm_tokenizer *tok, const char *token)
{
    if (!tok || !token)
        return -1;
    return vocab_find(tok, token, strlen(token));
}

const char *fm_tokenizer_id_to_token(const fm_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || (size_t)id >= tok->n_vocab || tok->tok_off[id] == NONE)
        return NULL;
    return tok_str(tok, id);
}

/* ---- save ------------------------------------------------------------------------------------------------- */

static fm_status write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return fm_error(FM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    size_t wrote = fwrite(data, 1, len, f);
    int bad = wrote != len || ferror(f);
    if (fclose(f) != 0 || bad)
        return fm_error(FM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return FM_OK;
}

fm_status fm_tokenizer_save(const fm_tokenizer *tok, const char *dir)
{
    if (!tok || !dir)
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_save: NULL argument");
    strbuf path = {0}, merges = {0};
    char *json = NULL;
    fm_status st = FM_OK;
    cJSON *obj = cJSON_CreateObject();
    if (!obj)
        return fm_error(FM_ERR_NO_MEMORY, "fm_tokenizer_save: cannot allocate JSON");
    for (size_t id = 0; id < tok->n_vocab; id++) {
        if (!cJSON_AddNumberToObject(obj, tok_str(tok, (int32_t)id), (double)id)) {
            st = fm_error(FM_ERR_NO_MEMORY, "fm_tokenizer_save: cannot allocate JSON");
            goto done;
        }
    }
    json = cJSON_PrintUnformatted(obj);
    if (!json) {
        st = fm_error(FM_ERR_NO_MEMORY, "fm_tokenizer_save: cannot print JSON");
        goto done;
    }
    if ((st = sb_append(&path, dir, strlen(dir))) != FM_OK || (st = sb_append(&path, "/vocab.json", 11)) != FM_OK)
        goto done;
    if ((st = write_file(path.p, json, strlen(json))) != FM_OK)
        goto done;
    /* Hugging Face drops the first line of merges.txt unread, so it must be the header. */
    if ((st = sb_append(&merges, "#version: 0.2\n", 14)) != FM_OK)
        goto done;
    for (size_t r = 0; r < tok->n_merges && st == FM_OK; r++) {
        int32_t a = tok->merge_a[r], b = tok->merge_b[r];
        if ((st = sb_append(&merges, tok_str(tok, a), tok->tok_len[a])) == FM_OK &&
            (st = sb_append(&merges, " ", 1)) == FM_OK &&
            (st = sb_append(&merges, tok_str(tok, b), tok->tok_len[b])) == FM_OK)
            st = sb_append(&merges, "\n", 1);
    }
    if (st != FM_OK)
        goto done;
    path.len = 0;
    if ((st = sb_append(&path, dir, strlen(dir))) != FM_OK || (st = sb_append(&path, "/merges.txt", 11)) != FM_OK)
        goto done;
    st = write_file(path.p, merges.p, merges.len);
done:
    cJSON_Delete(obj);
    cJSON_free(json);
    free(path.p);
    free(merges.p);
    return st;
}
