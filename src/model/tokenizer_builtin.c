/* fedmm's built-in CLIP-format vocabulary for the procedural dataset's captions: byte tokens so that any
 * text encodes, plus one "word</w>" token per caption word, built by merges that BPE actually follows. */
#include <stdlib.h>
#include <string.h>

#include "fedmm/tokenizer.h"
#include "model/tokenizer_internal.h"

/* Grammar words first (their ids stay stable as extras are appended), then extras for richer captions.
 * All lower-case ASCII letters (or a contraction), each one regex word, so each becomes one token. */
/* clang-format off */
static const char *const builtin_words[] = {
    /* articles, sizes, colours */
    "a", "an", "the", "small", "medium", "large", "big", "tiny", "red", "green", "blue", "yellow", "purple",
    "orange", "white", "black", "gray", "cyan",
    /* shapes and fills */
    "circle", "square", "triangle", "star", "cross", "ring", "diamond", "plain", "striped", "dotted", "checkered",
    "solid",
    /* relations and places */
    "to", "of", "left", "right", "above", "below", "at", "on", "in", "top", "bottom", "center", "corner", "next",
    "and", "with",
    /* framing */
    "photo", "picture", "shape", "image", "is", "there",
    /* extras: plurals, more colours, shapes, patterns, positions and function words */
    "circles", "squares", "triangles", "stars", "crosses", "rings", "diamonds", "shapes", "images", "photos",
    "pictures", "pink", "brown", "grey", "magenta", "violet", "teal", "navy", "gold", "silver", "dark", "light",
    "bright", "pale", "colored", "coloured", "color", "colour", "rectangle", "oval", "ellipse", "hexagon",
    "pentagon", "heart", "arrow", "line", "lines", "dot", "dots", "stripes", "stripe", "grid", "checker", "filled",
    "empty", "hollow", "outlined", "outline", "thick", "thin", "pattern", "patterned", "texture", "textured",
    "size", "position", "middle", "centre", "centered", "upper", "lower", "side", "edge", "border", "corners",
    "near", "far", "beside", "between", "behind", "front", "under", "over", "across", "along", "around", "inside",
    "outside", "horizontal", "vertical", "diagonal", "half", "quarter", "background", "foreground", "scene",
    "object", "objects", "drawing", "rendering", "render", "synthetic", "simple", "one", "two", "three", "four",
    "five", "six", "seven", "eight", "nine", "ten", "some", "several", "many", "few", "no", "not", "or", "but",
    "are", "be", "by", "from", "for", "as", "it", "its", "this", "that", "these", "those", "has", "have", "here",
    "shows", "showing", "contains", "containing", "placed", "located", "positioned", "sits", "lies", "each",
    "other", "another", "same", "different", "than", "smaller", "larger", "bigger", "only", "also", "very",
    "'s",
};
/* clang-format on */

const char *const *fm_tokenizer_builtin_words(size_t *n_words)
{
    if (n_words)
        *n_words = sizeof builtin_words / sizeof builtin_words[0];
    return builtin_words;
}

/* Runs BPE on the word with the merges so far and, while it is still more than one symbol, merges its first
 * two symbols with a new lowest-priority merge. A merge appended after all others never changes how an
 * earlier word is split: that word is already one symbol before the new merge's rank is ever reached. */
static fm_status add_word(fm_tokenizer *tok, const char *word)
{
    size_t len = strlen(word);
    int32_t *syms = malloc(len * sizeof *syms);
    if (!syms)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate");
    fm_status st = FM_OK;
    for (;;) {
        size_t n;
        if ((st = fm_tok_bpe_word(tok, (const uint8_t *)word, len, syms, &n)) != FM_OK || n <= 1)
            break;
        if (syms[0] < 0 || syms[1] < 0) {
            st = fm_error(FM_ERR_INTERNAL, "tokenizer: built-in word \"%s\" has a symbol outside the vocabulary", word);
            break;
        }
        if ((st = fm_tok_add_merge(tok, syms[0], syms[1], 1, NULL)) != FM_OK)
            break;
    }
    free(syms);
    return st;
}

fm_status fm_tokenizer_builtin(fm_tokenizer **out)
{
    if (!out)
        return fm_error(FM_ERR_INVALID_ARG, "fm_tokenizer_builtin: NULL argument");
    *out = NULL;
    fm_tokenizer *tok = fm_tok_new();
    if (!tok)
        return fm_error(FM_ERR_NO_MEMORY, "tokenizer: cannot allocate");
    fm_status st = FM_OK;
    /* The reference's layout: 256 byte tokens, the same with "</w>", merge results, then the specials. */
    for (int pass = 0; pass < 2 && st == FM_OK; pass++) {
        for (int i = 0; i < 256 && st == FM_OK; i++) {
            char s[3 + 4 + 1];
            fm_tok_byte_char(fm_tok_byte_order(i), s);
            if (pass == 1)
                strcat(s, "</w>");
            st = fm_tok_append_token(tok, s, strlen(s), NULL);
        }
    }
    if (st == FM_OK)
        fm_tok_lookup_bytes(tok);
    size_t n_words;
    const char *const *words = fm_tokenizer_builtin_words(&n_words);
    for (size_t i = 0; i < n_words && st == FM_OK; i++)
        st = add_word(tok, words[i]);
    if (st == FM_OK)
        st = fm_tok_append_token(tok, FM_TOKENIZER_SOT, strlen(FM_TOKENIZER_SOT), NULL);
    if (st == FM_OK)
        st = fm_tok_append_token(tok, FM_TOKENIZER_EOT, strlen(FM_TOKENIZER_EOT), NULL);
    if (st == FM_OK)
        st = fm_tok_finish(tok, "built-in vocabulary");
    if (st != FM_OK) {
        fm_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return FM_OK;
}
