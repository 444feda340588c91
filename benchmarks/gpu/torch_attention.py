#!/usr/bin/env python3
"""PyTorch's side of the attention benchmark of benchmarks/gpu/run.sh (fedmm's side: attention.c):
torch.nn.functional.scaled_dot_product_attention forward and backward alone, at clip-base's shapes (batch 256, heads
of 64: the vision tower's 12 heads over 197 positions, no mask; the text tower's 8 heads over 77, causal), restricted
to one backend at a time with torch.nn.attention.sdpa_kernel — cuDNN's fused attention (CUDNN_ATTENTION), FlashAttention
(FLASH_ATTENTION) and the memory-efficient kernel (EFFICIENT_ATTENTION, PyTorch's fused kernel that takes fp32) — in
bf16 and fp32. A combination the backend does not take (cuDNN and flash take no fp32; no cuDNN without a GPU) is a
row "skipped" with PyTorch's reason, never a silent fallback to another backend.

The same work as fedmm's side: q, k, v and the output gradient uniform in [-1, 1), in the layout a CLIP layer hands
over — (B, T, heads·64) from the projections, viewed as (B, heads, T, 64) by a transpose (no copy); forward (with
autograd recording, as in training), backward from the saved graph (torch.autograd.grad with retain_graph: the
gradients are new tensors each call), and the two together. Medians of --iters timed calls after --warmup untimed
ones (CUDA events on the current stream; on the CPU, perf_counter). FLOPs: 4·B·T²·C forward, 8·B·T²·C backward,
causal counted in full (bench_clip_step.c's convention, the same count as fedmm's rows).

usage: torch_attention.py [--batch 256] [--vision-heads 12] [--text-heads 8] [--head-dim 64] [--warmup 5]
                          [--iters 20] [--backends cudnn,flash,efficient] [--dtypes bf16,fp32] [--device auto]
                          [--towers vision,text]
One JSON line per (tower, backend, dtype) on stdout, progress on stderr. Exit 0 when every row was measured or
skipped with a reason, 1 on an unexpected failure, 2 without PyTorch.
"""
import argparse
import json
import statistics
import sys
import time
import warnings

BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
            "math": "MATH"}


def emit(row):
    print(json.dumps(row), flush=True)


def timer(device, torch):
    """A function that runs fn once and returns its milliseconds."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run(fn):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def median_ms(fn, warmup, iters, run):
    for _ in range(warmup):
        fn()
    return statistics.median(run(fn) for _ in range(iters))


def one(torch, F, sdpa_kernel, backend_enum, args, device, tower, heads, seq, causal, backend, dtype_name):
    B, hs = args.batch, args.head_dim
    C = heads * hs
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    row = {"bench": "attention", "framework": "pytorch", "impl": f"PyTorch SDPA, {backend}", "backend": backend,
           "dtype": dtype_name, "tower": tower, "batch": B, "heads": heads, "head_dim": hs, "seq": seq,
           "causal": int(causal), "warmup": args.warmup, "iters": args.iters, "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    gen = torch.Generator(device=device).manual_seed(20261123)

    def rand(*shape):
        return (torch.rand(*shape, device=device, generator=gen, dtype=torch.float32) * 2 - 1).to(dtype)

    base = [rand(B, seq, C).requires_grad_() for _ in range(3)]
    q, k, v = (t.view(B, seq, heads, hs).transpose(1, 2) for t in base)
    dout = rand(B, seq, C).view(B, seq, heads, hs).transpose(1, 2)
    with sdpa_kernel(backend_enum):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                torch.autograd.grad(out, base, dout, retain_graph=True)
        except RuntimeError as e:
            if isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            # PyTorch says why in its warnings ("... requires ...") and raises a generic error: keep both, short
            why = "; ".join(str(w.message).split("\n")[0] for w in caught)[:300]
            row["skipped"] = f"{str(e).splitlines()[0][:160]}{' (' + why + ')' if why else ''}"
            emit(row)
            print(f"  {tower} {backend} {dtype_name}: skipped: {row['skipped']}", file=sys.stderr)
            return
        run = timer(device, torch)

        def fwd():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def bwd():
            torch.autograd.grad(out, base, dout, retain_graph=True)

        def both():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            torch.autograd.grad(o, base, dout)

        row["fwd_ms"] = median_ms(fwd, args.warmup, args.iters, run)
        row["bwd_ms"] = median_ms(bwd, args.warmup, args.iters, run)
        row["fwdbwd_ms"] = median_ms(both, args.warmup, args.iters, run)
    f_fwd = 4.0 * B * seq * seq * C
    row["flops_fwd"], row["flops_bwd"] = f_fwd, 2 * f_fwd
    row["tflops_fwdbwd"] = 3 * f_fwd / (row["fwdbwd_ms"] * 1e-3) / 1e12
    emit(row)
    print(f"  {tower} {backend} {dtype_name}: forward {row['fwd_ms']:.3f} ms, backward {row['bwd_ms']:.3f} ms, "
          f"both {row['fwdbwd_ms']:.3f} ms ({row['tflops_fwdbwd']:.1f} TFLOP/s)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--vision-heads", type=int, default=12)
    ap.add_argument("--text-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--backends", default="cudnn,flash,efficient")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--towers", default="vision,text")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r} (known: {', '.join(BACKENDS)})")
    if min(args.batch, args.vision_heads, args.text_heads, args.head_dim, args.iters) < 1 or args.warmup < 0:
        ap.error("sizes and --iters must be >= 1, --warmup >= 0")
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        emit({"bench": "attention", "framework": "pytorch", "skipped": f"PyTorch is not importable: {e}"})
        print(f"torch_attention.py: PyTorch is not importable: {e}", file=sys.stderr)
        return 2
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cpu":
        print("torch_attention.py: no GPU: timing on the CPU (cuDNN's backend needs a GPU: its rows say skipped)",
              file=sys.stderr)
    towers = {"vision": (args.vision_heads, 197, False), "text": (args.text_heads, 77, True)}
    rc = 0
    for tower in [t for t in args.towers.split(",") if t]:
        if tower not in towers:
            ap.error(f"unknown tower {tower!r}")
        heads, seq, causal = towers[tower]
        for backend in backends:
            for dtype_name in [d for d in args.dtypes.split(",") if d]:
                if dtype_name not in ("bf16", "fp32"):
                    ap.error(f"unknown dtype {dtype_name!r}")
                try:
                    one(torch, F, sdpa_kernel, getattr(SDPBackend, BACKENDS[backend]), args, device, tower, heads,
                        seq, causal, backend, dtype_name)
                except Exception as e:  # an unexpected failure: a row that says so, and a non-zero exit
                    emit({"bench": "attention", "framework": "pytorch", "backend": backend, "dtype": dtype_name,
                          "tower": tower, "seq": seq, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    print(f"  {tower} {backend} {dtype_name}: FAILED: {e}", file=sys.stderr)
                    rc = 1
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    return rc


if __name__ == "__main__":
    sys.exit(main())
