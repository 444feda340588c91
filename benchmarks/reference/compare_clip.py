#!/usr/bin/env python3
"""Compare fedmm's CPU CLIP model with Hugging Face transformers' CLIPModel (PyTorch) on the same weights
and batch: embeddings, loss and every parameter gradient, in float32 and float64.

    build/fedmm_reference_dump /tmp/ref clip-tiny 8
    python3 benchmarks/reference/compare_clip.py /tmp/ref

Needs torch, transformers and safetensors (PyPI); never needed to build or run fedmm."""
import sys

import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel


def main(d):
    cfg = {}
    for line in open(f"{d}/config.txt"):
        k, v = line.split()
        cfg[k] = v
    i = lambda k: int(cfg[k])
    conf = CLIPConfig(
        text_config=dict(vocab_size=i("vocab_size"), hidden_size=i("text_width"), intermediate_size=i("text_mlp"),
                         num_hidden_layers=i("text_layers"), num_attention_heads=i("text_heads"),
                         max_position_embeddings=i("context_length"), hidden_act=cfg["hidden_act"],
                         layer_norm_eps=float(cfg["layer_norm_eps"]), eos_token_id=i("eot_id"),
                         bos_token_id=i("eot_id") - 1, pad_token_id=i("eot_id"), projection_dim=i("embed_dim")),
        vision_config=dict(hidden_size=i("vision_width"), intermediate_size=i("vision_mlp"),
                           num_hidden_layers=i("vision_layers"), num_attention_heads=i("vision_heads"),
                           image_size=i("image_size"), patch_size=i("patch_size"), hidden_act=cfg["hidden_act"],
                           layer_norm_eps=float(cfg["layer_norm_eps"]), projection_dim=i("embed_dim")),
        projection_dim=i("embed_dim"))
    weights = load_file(f"{d}/weights.safetensors")
    batch = load_file(f"{d}/batch.safetensors")
    ours = load_file(f"{d}/fedmm.safetensors")
    rows = []
    worst = {}
    for dtype in (torch.float32, torch.float64):
        model = CLIPModel(conf).to(dtype)
        missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        assert not missing and not unexpected, (missing, unexpected)
        model.train(False)
        ids = batch["input_ids"].long()
        out = model(input_ids=ids, pixel_values=batch["pixel_values"].to(dtype), return_loss=True)
        out.loss.backward()
        tag = "fp32" if dtype == torch.float32 else "fp64"

        def rel(a, b):
            a, b = a.detach().double(), b.detach().double()
            return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

        r_img = rel(ours["image_embeds"], out.image_embeds)
        r_txt = rel(ours["text_embeds"], out.text_embeds)
        r_loss = abs(ours["loss"].item() - out.loss.item()) / abs(out.loss.item())
        g_worst, g_name = 0.0, ""
        n = 0
        # Some gradients are zero in exact arithmetic (the key-projection bias: adding a constant to every
        # key's score of a query leaves its softmax unchanged), so a relative error against them is noise.
        # Tensors whose reference gradient is below 1e-6 of the largest one are checked apart: fedmm's must be
        # as small (relative to the largest gradient).
        gmax = max(p.grad.abs().max().item() for p in model.parameters())
        zero_worst = 0.0
        for name, p in model.named_parameters():
            key = "grad." + name
            assert key in ours, f"fedmm has no gradient for {name}"
            a, b = ours[key].double(), p.grad.detach().double()
            n += 1
            if b.abs().max().item() < 1e-6 * gmax:
                zero_worst = max(zero_worst, a.abs().max().item() / gmax)
                continue
            r = ((a - b).abs().max() / b.abs().max()).item()
            if r > g_worst:
                g_worst, g_name = r, name
        print(f"{tag}: gradients zero in exact arithmetic (k_proj biases): fedmm's largest is {zero_worst:.1e} "
              f"of the largest gradient")
        if zero_worst > 1e-5:
            g_worst, g_name = zero_worst, "a zero gradient"
        rows.append((tag, r_img, r_txt, r_loss, g_worst, g_name, n))
        worst[tag] = max(r_img, r_txt, r_loss), g_worst
    print(f"{'reference':9} {'image_emb':>10} {'text_emb':>10} {'loss':>10} {'worst grad':>11}  (tensor; of N)")
    for tag, a, b, c, g, name, n in rows:
        print(f"{tag:9} {a:10.2e} {b:10.2e} {c:10.2e} {g:11.2e}  ({name}; {n} tensors)")
    fwd, grad = worst["fp64"]
    ok = fwd <= 1e-5 and grad <= 1e-4
    print(f"targets vs float64: forward <= 1e-5 relative: {fwd:.2e}, gradients <= 1e-4: {grad:.2e} -> "
          f"{'MET' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ref"))
