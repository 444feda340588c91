#!/usr/bin/env python3
"""PyTorch's side of benchmarks/gpu/run.sh: one training step of the same CLIP model as fedmm's bench_clip_step —
the same shapes (fedmm's presets, below), batch and kind of synthetic data — in PyTorch eager or torch.compile, bf16
autocast (fp32 master weights) and scaled-dot-product attention.

The step is fedmm's: copy the batch from (pageable) host memory, zero the gradients, forward of both towers and
CLIP's symmetric contrastive loss, backward, global-norm clipping to 1.0, AdamW (betas 0.9/0.98, eps 1e-6, weight
decay 0.1). The model is Hugging Face's CLIPModel built from a CLIPConfig of those shapes when transformers is
installed (attention "sdpa"), else a self-contained CLIP written below with F.scaled_dot_product_attention (--impl
forces one). --mode lora wraps the model with PEFT (r 8, alpha 8, q/k/v/out of both towers, as fedmm's presets);
without peft that row is skipped, and the script says so. Warm-up steps are excluded; the median, 10th and 90th
percentiles of the timed steps are reported. One JSON line on stdout; progress on stderr.

usage: torch_clip_step.py [--preset clip-base] [--batch 256] [--mode full|lora] [--variant eager|compile]
                          [--impl auto|hf|own] [--warmup 5] [--steps 20] [--device cuda]
"""
import argparse
import json
import math
import sys
import time

PRESETS = {
    # fedmm's src/model/clip_config.c: image, patch, vision width/layers/heads/mlp, context, text
    # width/layers/heads/mlp, embed dim; vocab 0 means "the tokenizer's", 49408 here as in fedmm's benchmark
    "clip-tiny": dict(S=32, P=8, Wv=64, Lv=2, Hv=4, Mv=256, T=16, Wt=64, Lt=2, Ht=4, Mt=256, E=64, V=49408),
    "clip-small": dict(S=64, P=8, Wv=256, Lv=4, Hv=4, Mv=1024, T=32, Wt=256, Lt=4, Ht=4, Mt=1024, E=256, V=49408),
    "clip-base": dict(S=224, P=16, Wv=768, Lv=12, Hv=12, Mv=3072, T=77, Wt=512, Lt=12, Ht=8, Mt=2048, E=512,
                      V=49408),
}
LORA_RANK, LORA_ALPHA = 8, 8


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def step_flops(c, B, lora):
    """fedmm's count (benchmarks/gpu/bench_clip_step.c, step_flops): GEMM FLOPs the step needs."""
    NP = (c["S"] // c["P"]) ** 2

    def tower(T, W, M, L, stem, adapted):
        lin = 2.0 * B * T * (4 * W * W + 2 * W * M) * L
        att = 4.0 * B * T * T * W * L
        lo = 2.0 * B * T * LORA_RANK * (4 * 2 * W) * L if (lora and adapted) else 0.0  # q, k, v, out
        proj = 2.0 * B * W * c["E"]
        fwd = stem + lin + att + lo + proj
        if not lora:
            return fwd + 2.0 * (fwd - stem) + stem
        if adapted:  # projections frozen: their input gradient only
            return fwd + lin + 2 * att + 2 * lo + proj
        return fwd

    patch = 2.0 * B * NP * 3 * c["P"] ** 2 * c["Wv"]
    return (tower(NP + 1, c["Wv"], c["Mv"], c["Lv"], patch, True) +
            tower(c["T"], c["Wt"], c["Mt"], c["Lt"], 0.0, True))


def build_hf(c, torch):
    import transformers
    from transformers import CLIPConfig, CLIPModel
    text = dict(vocab_size=c["V"], hidden_size=c["Wt"], intermediate_size=c["Mt"], num_hidden_layers=c["Lt"],
                num_attention_heads=c["Ht"], max_position_embeddings=c["T"], hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=c["E"], eos_token_id=c["V"] - 1, bos_token_id=c["V"] - 2,
                pad_token_id=0)
    vision = dict(hidden_size=c["Wv"], intermediate_size=c["Mv"], num_hidden_layers=c["Lv"],
                  num_attention_heads=c["Hv"], image_size=c["S"], patch_size=c["P"], hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, projection_dim=c["E"])
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=c["E"], logit_scale_init_value=2.6592)
    attn = "sdpa"
    try:
        model = CLIPModel._from_config(cfg, attn_implementation="sdpa")
    except (TypeError, ValueError, ImportError) as e:  # an old transformers without CLIP's SDPA path
        log(f"transformers {transformers.__version__}: no SDPA attention for CLIP ({e}); eager attention")
        model = CLIPModel(cfg)
        attn = "eager"
    attn = getattr(model.config, "_attn_implementation", attn) or attn

    def loss_fn(m, images, tokens, eot):
        del eot  # HF pools the first end-of-text token (the largest id here), the same position
        return m(input_ids=tokens, pixel_values=images, return_loss=True).loss

    return model, loss_fn, "hf", attn, transformers.__version__


def build_own(c, torch):
    nn, F = torch.nn, torch.nn.functional

    class QuickGELU(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    class Attention(nn.Module):
        def __init__(self, W, H, causal):
            super().__init__()
            self.H, self.causal = H, causal
            self.q_proj, self.k_proj = nn.Linear(W, W), nn.Linear(W, W)
            self.v_proj, self.out_proj = nn.Linear(W, W), nn.Linear(W, W)

        def forward(self, x):
            B, T, W = x.shape
            split = lambda t: t.view(B, T, self.H, W // self.H).transpose(1, 2)
            y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                               is_causal=self.causal)
            return self.out_proj(y.transpose(1, 2).reshape(B, T, W))

    class Layer(nn.Module):
        def __init__(self, W, H, M, causal):
            super().__init__()
            self.layer_norm1, self.layer_norm2 = nn.LayerNorm(W, eps=1e-5), nn.LayerNorm(W, eps=1e-5)
            self.self_attn = Attention(W, H, causal)
            self.mlp = nn.Sequential(nn.Linear(W, M), QuickGELU(), nn.Linear(M, W))

        def forward(self, x):
            x = x + self.self_attn(self.layer_norm1(x))
            return x + self.mlp(self.layer_norm2(x))

    class CLIP(nn.Module):
        def __init__(self):
            super().__init__()
            NP = (c["S"] // c["P"]) ** 2
            self.patch = nn.Conv2d(3, c["Wv"], c["P"], c["P"], bias=False)
            self.cls = nn.Parameter(torch.randn(c["Wv"]) * c["Wv"] ** -0.5)
            self.vpos = nn.Parameter(torch.randn(NP + 1, c["Wv"]) * 0.02)
            self.pre_ln = nn.LayerNorm(c["Wv"], eps=1e-5)
            self.vlayers = nn.ModuleList(Layer(c["Wv"], c["Hv"], c["Mv"], False) for _ in range(c["Lv"]))
            self.post_ln = nn.LayerNorm(c["Wv"], eps=1e-5)
            self.visual_projection = nn.Linear(c["Wv"], c["E"], bias=False)
            self.tok = nn.Embedding(c["V"], c["Wt"])
            self.tpos = nn.Parameter(torch.randn(c["T"], c["Wt"]) * 0.02)
            self.tlayers = nn.ModuleList(Layer(c["Wt"], c["Ht"], c["Mt"], True) for _ in range(c["Lt"]))
            self.final_ln = nn.LayerNorm(c["Wt"], eps=1e-5)
            self.text_projection = nn.Linear(c["Wt"], c["E"], bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(2.6592))

        def forward(self, images, tokens, eot):
            B = images.shape[0]
            x = self.patch(images).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(B, 1, -1).to(x.dtype), x], 1) + self.vpos
            x = self.pre_ln(x)
            for layer in self.vlayers:
                x = layer(x)
            img = self.visual_projection(self.post_ln(x[:, 0]))
            t = self.tok(tokens) + self.tpos
            for layer in self.tlayers:
                t = layer(t)
            t = self.final_ln(t)[torch.arange(B, device=t.device), eot]
            txt = self.text_projection(t)
            img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
            logits = self.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.t()
            labels = torch.arange(B, device=logits.device)
            return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))

    def loss_fn(m, images, tokens, eot):
        return m(images, tokens, eot)

    return CLIP(), loss_fn, "own", "sdpa", None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="clip-base", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mode", choices=["full", "lora"], default="full")
    ap.add_argument("--variant", choices=["eager", "compile"], default="eager")
    ap.add_argument("--impl", choices=["auto", "hf", "own"], default="auto")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    row = dict(bench="train_step", framework="pytorch", variant=args.variant, mode=args.mode, preset=args.preset,
               batch=args.batch, precision="bf16-autocast", warmup=args.warmup, steps=args.steps)

    def emit(**kw):
        row.update(kw)
        print(json.dumps(row), flush=True)

    try:
        import torch
    except ImportError:
        emit(skipped="torch is not installed")
        return 0
    row["torch"] = torch.__version__
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        emit(skipped="torch sees no CUDA device")
        return 0
    c = PRESETS[args.preset]
    B = args.batch
    impl = args.impl
    if impl == "auto":
        try:
            import transformers  # noqa: F401
            impl = "hf"
        except ImportError:
            log("transformers is not installed: the self-contained CLIP below stands in for CLIPModel")
            impl = "own"
    torch.manual_seed(0)
    model, loss_fn, impl, attn, tf_version = (build_hf if impl == "hf" else build_own)(c, torch)
    row.update(impl=impl, attn=attn, transformers=tf_version)
    if args.mode == "lora":
        try:
            import peft
            from peft import LoraConfig, get_peft_model
        except ImportError:
            emit(skipped="peft is not installed: no PyTorch + PEFT LoRA row")
            return 0
        row["peft"] = peft.__version__
        targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                 target_modules=targets, bias="none"))
        for name, p in model.named_parameters():  # fedmm's LoRA vector holds logit_scale too
            if name.endswith("logit_scale"):
                p.requires_grad_(True)
    model = model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    row["trainable"] = sum(p.numel() for p in params)
    fused = dev.type == "cuda"
    try:
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, fused=fused)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    fwd = model
    if args.variant == "compile":
        fwd = torch.compile(model)

    # synthetic data in host memory, as fedmm's: uniform images, random tokens, the end-of-text token (the largest
    # id) at a random position from 8 on
    g = torch.Generator().manual_seed(42)
    images = torch.rand(B, 3, c["S"], c["S"], generator=g) * 2 - 1
    tokens = torch.randint(0, c["V"] - 2, (B, c["T"]), generator=g)
    eot = torch.randint(8, c["T"], (B,), generator=g)
    tokens[torch.arange(B), eot] = c["V"] - 1
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    def step():
        x, t, e = images.to(dev), tokens.to(dev), eot.to(dev)
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(fwd, x, t, e)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()  # fedmm reads its loss back every step too

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times, loss = [], float("nan")
    try:
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss = step()
            sync()
            dt = time.perf_counter() - t0
            if i < args.warmup:
                log(f"pytorch {args.variant} {args.mode} warm-up step {i}: {dt * 1e3:.1f} ms")
            else:
                times.append(dt)
    except Exception as e:  # an out-of-memory or a compile failure is a result to report, not a crash
        emit(error=f"{type(e).__name__}: {e}"[:400])
        return 1
    times.sort()
    q = lambda p: times[min(len(times) - 1, max(0, int(round(p * (len(times) - 1)))))]
    med, flops = q(0.5), step_flops(c, B, args.mode == "lora")
    emit(median_s=med, p10_s=q(0.1), p90_s=q(0.9), pairs_per_s=B / med, images_texts_per_s=2 * B / med,
         flops_per_step=flops, tflops=flops / med / 1e12, last_loss=loss)
    log(f"pytorch {args.variant} ({impl}, {attn}) {args.preset} {args.mode} batch {B}: median {med * 1e3:.1f} ms, "
        f"{2 * B / med:.0f} images+texts/s, {flops / med / 1e12:.1f} TFLOP/s, loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
