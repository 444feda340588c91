/* Internal building blocks of the tokenizer (src/model/tokenizer.c), shared with the built-in vocabulary
 * (src/model/tokenizer_builtin.c), which builds its merges by running BPE on each word. Not installed. */
#ifndef FEDMM_MODEL_TOKENIZER_INTERNAL_H
#define FEDMM_MODEL_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "fedmm/tokenizer.h"

/* An empty tokenizer (no tokens, no merges), or NULL when out of memory. */
fm_tokenizer *fm_tok_new(void);

/* The unicode character (UTF-8, 1 or 2 bytes, NUL-terminated in out[3]) that CLIP's bytes_to_unicode maps
 * byte b to, and the order in which the reference lists the 256 byte tokens (printable first). */
void fm_tok_byte_char(uint8_t b, char out[3]);
uint8_t fm_tok_byte_order(int i);

/* Appends token s[0..len) with the next id (written to *id). FM_ERR_PARSE if it is already there. */
fm_status fm_tok_append_token(fm_tokenizer *tok, const char *s, size_t len, int32_t *id);

/* Appends the merge (a, b) with the next rank; its result a+b is looked up or, when add_result is
 * non-zero, appended as a new token if missing. *out (may be NULL) gets the result's id. FM_ERR_PARSE for
 * a duplicate merge or a result missing from the vocabulary. */
fm_status fm_tok_add_merge(fm_tokenizer *tok, int32_t a, int32_t b, int add_result, int32_t *out);

/* Looks up the ids of the byte symbols (bytes inside and at the end of a word); BPE needs them. */
void fm_tok_lookup_bytes(fm_tokenizer *tok);

/* fm_tok_lookup_bytes, then looks up <|startoftext|> and <|endoftext|>, once the vocabulary is complete.
 * FM_ERR_PARSE naming `what` when a special token is missing. */
fm_status fm_tok_finish(fm_tokenizer *tok, const char *what);

/* BPE of one pre-tokenized word (raw bytes, len >= 1) with the current merges: writes its symbol ids
 * (-1 for a symbol outside the vocabulary) to out (room for len ids) and their count to *n_out. */
fm_status fm_tok_bpe_word(const fm_tokenizer *tok, const uint8_t *word, size_t len, int32_t *out, size_t *n_out);

#endif
