/* CLIP's byte-level BPE text tokenizer (as openai/CLIP simple_tokenizer and Hugging Face CLIPTokenizer):
 * loads vocab.json + merges.txt, or builds fedmm's small built-in vocabulary for the procedural dataset,
 * and turns captions into fixed-length id rows [SOT] tokens... [EOT] [pad...] for the text tower.
 *
 * What it matches, and where it knowingly differs from Hugging Face's CLIPTokenizer (transformers 5, Rust
 * backed); benchmarks/reference/check_tokenizer.py compares the two:
 * - cleanup: Unicode white space only separates words; letters are lower-cased (ASCII, Latin-1, Latin
 *   Extended-A, basic Greek and Cyrillic; other scripts are left as they are). No ftfy, no html.unescape, no
 *   NFC normalization (Hugging Face applies NFC: decomposed accents differ).
 * - special tokens: "<|startoftext|>" and "<|endoftext|>" spelled exactly (case included) anywhere in the
 *   raw text encode as those tokens and split it, as Hugging Face's CLIPTokenizer does. (openai's
 *   simple_tokenizer and the old Python CLIPTokenizer match them in the regex after lower-casing instead, so
 *   they differ on "<|EndOfText|>" and on "!<|endoftext|>"; nothing else differs.)
 * - pre-tokenizer: CLIP's regex 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ on each piece
 *   between special tokens, written by hand. Letter / number classes are exact for ASCII and Latin-1 and
 *   approximated by a small range table elsewhere: most non-ASCII code points count as letters, common
 *   punctuation, symbol, mark and emoji blocks as "other", a few decimal-digit blocks as numbers. Bytes
 *   that are not valid UTF-8 count as letters and pass through unchanged (byte-level BPE takes any byte).
 * - BPE: bytes_to_unicode mapping, "</w>" on the last symbol of each word, lowest-rank pair first with
 *   all its occurrences merged left to right (the reference's exact order), in O(n log n) per word. No
 *   cache, so a loaded tokenizer is read-only and encode is safe from many threads at once.
 * - a symbol that is not in the vocabulary encodes as the unknown token, which is <|endoftext|> in CLIP.
 * - padding uses the <|endoftext|> id (Hugging Face's pad_token; openai's clip.tokenize pads with 0).
 *   The text tower pools at the first <|endoftext|>; with CLIP's vocabulary and the built-in one that is
 *   also the position of the largest id (Hugging Face's argmax rule), since <|endoftext|> is the last id.
 * - merges.txt: a first line starting "#version" is skipped (Hugging Face always drops line 1, so files
 *   that fedmm writes always carry it); blank lines are ignored; every merge "a b" needs a, b and ab in
 *   the vocabulary. Hugging Face's cap of 48,894 merges is not applied.
 * - vocab.json: ids must be the integers 0..n-1, each once. */
#ifndef FEDMM_TOKENIZER_H
#define FEDMM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fedmm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* CLIP's text context length. */
#define FM_CLIP_CONTEXT_LEN 77

#define FM_TOKENIZER_SOT "<|startoftext|>"
#define FM_TOKENIZER_EOT "<|endoftext|>"

/* Opaque and read-only once built: every function below that takes a const tokenizer may run
 * concurrently on the same one. */
typedef struct fm_tokenizer fm_tokenizer;

/* Loads a Hugging Face / openai CLIP tokenizer from vocab.json (a JSON object token -> id) and merges.txt
 * (one "a b" merge per line, lowest rank first). On success *out is a new tokenizer owned by the caller
 * (free with fm_tokenizer_free). Errors: FM_ERR_IO (a file cannot be read), FM_ERR_PARSE (malformed JSON,
 * a non-integer, duplicate or out-of-range id, a duplicate token, a merge line without exactly two
 * tokens, a duplicate merge, a merge whose parts or result are not in the vocabulary, no <|startoftext|>
 * or <|endoftext|>), with a message naming the file and the line or entry. */
fm_status fm_tokenizer_load(fm_tokenizer **out, const char *vocab_path, const char *merges_path);

/* Same from memory: `vocab_json` (vocab_len bytes) and `merges_txt` (merges_len bytes, may be NULL when
 * merges_len is 0). The buffers need no terminating NUL and are not kept. `vocab_name` / `merges_name`
 * are only used in error messages (NULL: "vocab.json" / "merges.txt"). */
fm_status fm_tokenizer_load_buffers(fm_tokenizer **out, const char *vocab_json, size_t vocab_len,
                                    const char *vocab_name, const char *merges_txt, size_t merges_len,
                                    const char *merges_name);

/* fedmm's built-in vocabulary for the procedural dataset's captions: the 256 byte tokens and their
 * "</w>" forms (so any text encodes, unknown words falling back to bytes), one "word</w>" token for
 * every word of fm_tokenizer_builtin_words() with the merges that build it, then <|startoftext|> and
 * <|endoftext|> as the last two ids. Deterministic: the same ids in every build. */
fm_status fm_tokenizer_builtin(fm_tokenizer **out);

/* The words that fm_tokenizer_builtin() makes single tokens (lower-case; static storage). */
const char *const *fm_tokenizer_builtin_words(size_t *n_words);

/* Writes `dir`/vocab.json and `dir`/merges.txt (with a "#version: 0.2" first line) so that
 * fm_tokenizer_load, Hugging Face's CLIPTokenizer(vocab_file, merges_file) or
 * CLIPTokenizer.from_pretrained(dir) read back the same tokenizer. `dir` must exist. FM_ERR_IO on
 * failure. */
fm_status fm_tokenizer_save(const fm_tokenizer *tok, const char *dir);

/* Frees a tokenizer; NULL is a no-op. */
void fm_tokenizer_free(fm_tokenizer *tok);

/* Number of ids (they are 0..n-1): the text tower's embedding rows. */
int fm_tokenizer_vocab_size(const fm_tokenizer *tok);
/* Number of merges. */
int fm_tokenizer_merges_count(const fm_tokenizer *tok);
/* The ids of <|startoftext|>, <|endoftext|> and of the padding (= <|endoftext|>). */
int32_t fm_tokenizer_sot_id(const fm_tokenizer *tok);
int32_t fm_tokenizer_eot_id(const fm_tokenizer *tok);
int32_t fm_tokenizer_pad_id(const fm_tokenizer *tok);

/* The id of `token`, written in the vocabulary's byte-to-unicode form ("red</w>", "Ġ"), or -1. */
int32_t fm_tokenizer_token_to_id(const fm_tokenizer *tok, const char *token);
/* The token string of `id` (owned by the tokenizer, valid until it is freed), or NULL if out of range. */
const char *fm_tokenizer_id_to_token(const fm_tokenizer *tok, int32_t id);

/* Encodes `text` (UTF-8, NUL-terminated) into ids[0..context_len): <|startoftext|>, the BPE tokens,
 * <|endoftext|>, then padding with the pad id up to context_len. When the text has more than
 * context_len - 2 tokens it is cut there and the last slot holds <|endoftext|> (as clip.tokenize with
 * truncate=True and Hugging Face with truncation=True). *n_tokens (may be NULL) gets the count before the
 * padding, both special tokens included, so the closing <|endoftext|> sits at *n_tokens - 1.
 * context_len must be >= 2 (FM_ERR_INVALID_ARG otherwise). */
fm_status fm_tokenizer_encode(const fm_tokenizer *tok, const char *text, int32_t *ids, int context_len, int *n_tokens);

/* fm_tokenizer_encode that also reports in *eot_pos (may be NULL) the pooling position: the first
 * <|endoftext|> in the row. It is *n_tokens - 1 unless the text itself contains "<|endoftext|>" spelled
 * exactly, which encodes as that token, as in Hugging Face. */
fm_status fm_tokenizer_encode_ex(const fm_tokenizer *tok, const char *text, int32_t *ids, int context_len,
                                 int *n_tokens, int *eot_pos);

/* Encodes n_texts texts into a row-major (n_texts, context_len) id matrix; eot_pos (may be NULL) gets
 * n_texts pooling positions. Stops at the first failing text, whose index is named in the message. */
fm_status fm_tokenizer_encode_batch(const fm_tokenizer *tok, const char *const *texts, size_t n_texts,
                                    int32_t *ids,                       // (n_texts, context_len)
                                    int context_len, int32_t *eot_pos); // (n_texts)

/* The BPE tokens of `text` alone: no special tokens added, no truncation, no padding. Writes at most
 * `cap` ids and sets *n_ids to the full count (so a count above cap means the output was cut). */
fm_status fm_tokenizer_tokenize(const fm_tokenizer *tok, const char *text, int32_t *ids, size_t cap, size_t *n_ids);

/* Turns ids back into text for debugging, as the reference decode: token bytes concatenated, each
 * "</w>" becoming a space, the result stripped of white space at both ends. With skip_special, <|startoftext|>
 * and <|endoftext|> (so also padding) are left out; otherwise they appear spelled out. Writes a
 * NUL-terminated string into buf (cap bytes) and the length it needs (without the NUL) into *len (may be
 * NULL). FM_ERR_RANGE for an id outside the vocabulary or when cap is too small (buf then holds a
 * truncated, still NUL-terminated prefix when cap > 0). */
fm_status fm_tokenizer_decode(const fm_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special, char *buf,
                              size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
