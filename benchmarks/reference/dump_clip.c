/* Writes what the PyTorch reference check (compare_clip.py) needs: the tiny model's weights under Hugging
 * Face names, one batch of the built-in dataset, and fedmm's embeddings, loss and gradients on it.
 *   fedmm_reference_dump OUT_DIR [preset] [batch]
 * OUT_DIR/weights.safetensors  every HF parameter (float32)
 * OUT_DIR/batch.safetensors    pixel_values (B,3,S,S), input_ids (B,T) as F32, eot (B) as F32
 * OUT_DIR/fedmm.safetensors    image_embeds, text_embeds (normalised), loss, and grad.<hf name> per parameter
 * OUT_DIR/config.txt           the model shapes, one "key value" per line, for the Python side */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/clip.h"
#include "fedmm/dataset.h"
#include "fedmm/safetensors.h"
#include "fedmm/synth.h"
#include "fedmm/tokenizer.h"

static int die(const char *what, fm_status s)
{
    fprintf(stderr, "dump_clip: %s: %s (%s)\n", what, fm_last_error(), fm_strerror(s));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s OUT_DIR [preset=clip-tiny] [batch=8]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *preset = argc > 2 ? argv[2] : "clip-tiny";
    int B = argc > 3 ? atoi(argv[3]) : 8;
    char path[4096];
    fm_tokenizer *tok = NULL;
    fm_status s = fm_tokenizer_builtin(&tok);
    if (s != FM_OK)
        return die("tokenizer", s);
    fm_clip_config cfg;
    if ((s = fm_clip_config_preset(preset, &cfg)) != FM_OK)
        return die("preset", s);
    cfg.vocab_size = fm_tokenizer_vocab_size(tok);
    cfg.full_finetune = 1; /* every parameter gets a gradient to compare */
    fm_clip *m = NULL;
    if ((s = fm_clip_create(&m, &cfg, FM_DEVICE_CPU, 7)) != FM_OK)
        return die("create", s);
    fm_synth_config sc = fm_synth_default_config();
    sc.image_size = cfg.image_size;
    fm_dataset *ds = NULL;
    if ((s = fm_dataset_synth(&ds, &sc, FM_SPLIT_TRAIN, tok, cfg.context_length)) != FM_OK)
        return die("dataset", s);
    const int S = cfg.image_size, T = cfg.context_length, E = cfg.embed_dim;
    float *images = malloc((size_t)B * 3 * S * S * sizeof(float));
    int32_t *tokens = malloc((size_t)B * T * sizeof(int32_t)), *eot = malloc((size_t)B * sizeof(int32_t));
    int64_t *idx = malloc((size_t)B * sizeof(int64_t));
    float *img = malloc((size_t)B * E * sizeof(float)), *txt = malloc((size_t)B * E * sizeof(float));
    float *ftok = malloc((size_t)B * T * sizeof(float)), *feot = malloc((size_t)B * sizeof(float));
    if (!images || !tokens || !eot || !idx || !img || !txt || !ftok || !feot)
        return die("alloc", FM_ERR_NO_MEMORY);
    for (int i = 0; i < B; i++)
        idx[i] = 17 * i + 3;
    if ((s = fm_dataset_batch(ds, idx, B, images, tokens, eot, NULL)) != FM_OK)
        return die("batch", s);
    float loss = 0.0f;
    if ((s = fm_clip_zero_grad(m)) != FM_OK ||
        (s = fm_clip_forward_backward(m, images, tokens, eot, B, &loss)) != FM_OK)
        return die("forward_backward", s);
    if ((s = fm_clip_encode_images(m, images, B, img)) != FM_OK ||
        (s = fm_clip_encode_texts(m, tokens, eot, B, txt)) != FM_OK)
        return die("encode", s);
    snprintf(path, sizeof path, "%s/weights.safetensors", dir);
    if ((s = fm_clip_save(m, path)) != FM_OK)
        return die("save weights", s);

    for (int i = 0; i < B * T; i++)
        ftok[i] = (float)tokens[i];
    for (int i = 0; i < B; i++)
        feot[i] = (float)eot[i];
    fm_st_writer *w = NULL;
    fm_st_writer_create(&w);
    int64_t ishape[4] = {B, 3, S, S}, tshape[2] = {B, T}, bshape[1] = {B}, eshape[2] = {B, E};
    fm_st_writer_add_f32(w, "pixel_values", FM_ST_F32, 4, ishape, images);
    fm_st_writer_add_f32(w, "input_ids", FM_ST_F32, 2, tshape, ftok);
    fm_st_writer_add_f32(w, "eot", FM_ST_F32, 1, bshape, feot);
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    if ((s = fm_st_write(w, path)) != FM_OK)
        return die("write batch", s);
    fm_st_writer_free(w);

    fm_st_writer_create(&w);
    int64_t one[1] = {1};
    fm_st_writer_add_f32(w, "image_embeds", FM_ST_F32, 2, eshape, img);
    fm_st_writer_add_f32(w, "text_embeds", FM_ST_F32, 2, eshape, txt);
    fm_st_writer_add_f32(w, "loss", FM_ST_F32, 1, one, &loss);
    const float *grad = fm_clip_trainable_grad(m);
    char names[512][160];
    size_t n_slices = fm_clip_num_slices(m);
    for (size_t i = 0; i < n_slices && i < 512; i++) {
        const fm_clip_slice *sl = fm_clip_slice_at(m, i);
        snprintf(names[i], sizeof names[i], "grad.%s", sl->name);
        fm_st_writer_add_f32(w, names[i], FM_ST_F32, sl->ndim, sl->shape, grad + sl->offset);
    }
    snprintf(path, sizeof path, "%s/fedmm.safetensors", dir);
    if ((s = fm_st_write(w, path)) != FM_OK)
        return die("write fedmm", s);
    fm_st_writer_free(w);

    snprintf(path, sizeof path, "%s/config.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return die("config.txt", FM_ERR_IO);
    fprintf(f,
            "image_size %d\npatch_size %d\nvision_width %d\nvision_layers %d\nvision_heads %d\nvision_mlp %d\n"
            "vocab_size %d\ncontext_length %d\ntext_width %d\ntext_layers %d\ntext_heads %d\ntext_mlp %d\n"
            "embed_dim %d\nhidden_act %s\nlayer_norm_eps %g\neot_id %d\n",
            cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp,
            cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.text_mlp,
            cfg.embed_dim, cfg.hidden_act == FM_CLIP_ACT_GELU ? "gelu" : "quick_gelu", (double)cfg.layer_norm_eps,
            fm_tokenizer_eot_id(tok));
    fclose(f);
    printf("dump_clip: %s, B=%d, loss %.7f, %zu parameter tensors -> %s\n", preset, B, (double)loss, n_slices, dir);
    free(images);
    free(tokens);
    free(eot);
    free(idx);
    free(img);
    free(txt);
    free(ftok);
    free(feot);
    fm_dataset_destroy(ds);
    fm_clip_destroy(m);
    fm_tokenizer_free(tok);
    return 0;
}
