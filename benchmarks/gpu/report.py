#!/usr/bin/env python3
"""The table of benchmarks/gpu/run.sh: reads the JSON lines that bench_clip_step and torch_clip_step.py printed,
and prints (and with --out writes, as Markdown) one row per training step measured — fedmm, PyTorch eager,
torch.compile, for full fine-tuning and for LoRA — with images+texts per second and MFU against the measured bf16
matrix peak; then, when attention.c and torch_attention.py ran, attention forward + backward alone, fedmm against
PyTorch's SDPA backends (cuDNN, flash, memory-efficient). Standard library only.

usage: report.py RESULTS.jsonl [--out FILE.md] [--title TEXT] [--machine TEXT]
"""
import argparse
import json
import sys


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"report.py: skipping a malformed line: {line[:120]}", file=sys.stderr)
    return rows


def name_of(r):
    if r.get("framework") == "fedmm":
        return "fedmm"
    v = {"eager": "PyTorch eager", "compile": "torch.compile"}.get(r.get("variant"), r.get("variant", "?"))
    extra = []
    if r.get("impl") == "hf":
        extra.append(f"HF CLIPModel, attn {r.get('attn', '?')}")
    elif r.get("impl") == "own":
        extra.append("self-contained CLIP, SDPA")
    if r.get("mode") == "lora" and r.get("peft"):
        extra.append(f"PEFT {r['peft']}")
    return v + (f" ({'; '.join(extra)})" if extra else "")


def table(rows, peak):
    steps = [r for r in rows if r.get("bench") == "train_step"]
    out = ["| step | implementation | precision | median ms (p10–p90) | images+texts/s | TFLOP/s | MFU | "
           "fedmm's speed-up over it |",
           "|---|---|---|---|---|---|---|---|"]
    for mode in ("full", "lora"):
        group = [r for r in steps if r.get("mode") == mode]
        if not group:
            continue
        base = next((r for r in group if r.get("framework") == "fedmm" and "median_s" in r), None)
        label = "full fine-tuning" if mode == "full" else "LoRA fine-tuning"
        order = {"fedmm": 0, "eager": 1, "compile": 2}
        group.sort(key=lambda r: order.get(r.get("framework") if r.get("framework") == "fedmm" else r.get("variant"), 9))
        for r in group:
            head = f"| {label} (batch {r.get('batch', '?')}, {r.get('preset', '?')}) | {name_of(r)} | "
            head += f"{r.get('precision', '?')} | "
            if "median_s" not in r:
                why = r.get("skipped") or r.get("error") or "no result"
                out.append(head + f"{'skipped' if 'skipped' in r else 'FAILED'}: {why} | | | | |")
                continue
            med = r["median_s"]
            mfu = f"{100.0 * r['tflops'] / peak:.1f} %" if peak else "n/a (no peak)"
            vs = f"{med / base['median_s']:.2f}×" if base else "n/a"  # > 1: fedmm is faster
            if base is r:
                vs = "1.00×"
            out.append(head + f"{med * 1e3:.1f} ({r['p10_s'] * 1e3:.1f}–{r['p90_s'] * 1e3:.1f}) | "
                       f"{r['images_texts_per_s']:.0f} | {r['tflops']:.1f} | {mfu} | {vs} |")
    return out


def creamfl_table(rows):
    """CreamFL's ensemble (benchmarks/gpu/creamfl_ensemble.c): one table per size, a row per path, precision, tile."""
    ens = [r for r in rows if r.get("bench") == "creamfl_ensemble"]
    out = []
    for key in sorted({(r["n"], r["d"], r["sites"]) for r in ens}):
        n, d, k = key
        tflop = 2.0 * k * n * n * d / 1e12
        out += [f"## CreamFL ensemble: |P| = {n}, d = {d}, {k} sites (one modality)", "",
                "| path | score tiles | tile | median ms (p10–p90) | TFLOP/s | device memory MiB | spot check |",
                "|---|---|---|---|---|---|---|"]
        for r in (r for r in ens if (r["n"], r["d"], r["sites"]) == key):
            check = f"{r['check_max_rel']:.1e}" if "check_max_rel" in r else "–"
            out.append(f"| {r['path']} | {r['precision']} | {r['tile_rows']}×{r['tile_cols']} | "
                       f"{r['median_s'] * 1e3:.1f} ({r['p10_s'] * 1e3:.1f}–{r['p90_s'] * 1e3:.1f}) | "
                       f"{r['tflops']:.1f} | {r['mem_mib']:.0f} ({r['mem_how']}; inputs {r['inputs_mib']:.0f}, "
                       f"workspace {r['workspace_mib']:.0f}) | {check} |")
        out += ["", f"{tflop:.1f} TFLOP of tile products per call (2·K·|P|²·d). device: scores, weights and fusion "
                "on device buffers, CUDA events around the call; staged: host buffers in and out "
                "(fm_creamfl_ensemble_staged, wall clock). fp32 tiles are bound by the GPU's fp32 rate; bf16 tiles "
                "are exact on bf16-valued representations (these inputs are). Spot check: the largest relative "
                "error of 3 samples' scores per site against float64. Target (issue 7): under 100 ms on an H200.", ""]
    return out


def attention_table(rows):
    """Attention forward + backward alone, per tower: fedmm's fused fp32 kernel and PyTorch's SDPA backends."""
    att = [r for r in rows if r.get("bench") == "attention" and r.get("tower")]
    if not att:
        return []
    out = ["## Attention forward + backward alone", "",
           "| attention (tower, B × heads × T × 64) | implementation | dtype | forward ms | backward ms | "
           "forward + backward ms | TFLOP/s | fedmm's speed-up over it |",
           "|---|---|---|---|---|---|---|---|"]
    order = {"fedmm": 0, "cudnn": 1, "flash": 2, "efficient": 3, "math": 4}
    for tower in ("vision", "text"):
        group = [r for r in att if r.get("tower") == tower]
        group.sort(key=lambda r: (order.get(r.get("backend"), 9), r.get("dtype") != "bf16"))
        base = next((r for r in group if r.get("framework") == "fedmm" and "fwdbwd_ms" in r), None)
        for r in group:
            shape = (f"{tower} ({r.get('batch', '?')} × {r.get('heads', '?')} × {r.get('seq', '?')}"
                     f"{', causal' if r.get('causal') else ''})")
            name = "fedmm fused (kernels/attention.cu)" if r.get("framework") == "fedmm" else \
                f"PyTorch SDPA, {r.get('backend', '?')} backend"
            head = f"| {shape} | {name} | {r.get('dtype', '?')} | "
            if "fwdbwd_ms" not in r:
                why = r.get("skipped") or r.get("error") or "no result"
                out.append(head + f"{'skipped' if 'skipped' in r else 'FAILED'}: {why} | | | | |")
                continue
            vs = f"{r['fwdbwd_ms'] / base['fwdbwd_ms']:.2f}×" if base else "n/a"  # > 1: fedmm is faster
            out.append(head + f"{r['fwd_ms']:.3f} | {r['bwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | "
                       f"{r['tflops_fwdbwd']:.1f} | {vs} |")
    out += ["", "Attention alone (benchmarks/gpu/attention.c, torch_attention.py): q, k, v as the projections write "
            "them, (B, T, heads·64), medians after warm-up; TFLOP/s count attention's four products (4·B·T²·C "
            "forward, twice that backward, causal in full). fedmm's kernel is fp32 on the CUDA cores; a bf16 "
            "tensor-core attention is not written yet. A skipped row is a backend that does not take that dtype "
            "(or no GPU), with PyTorch's reason."]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--out")
    ap.add_argument("--title", default="GPU benchmarks")
    ap.add_argument("--machine", default="")
    args = ap.parse_args()
    rows = load(args.results)
    peak_row = next((r for r in rows if r.get("bench") == "peak_bf16"), None)
    peak = peak_row["tflops"] if peak_row else None
    gemms = [r for r in rows if r.get("bench") == "peak_bf16_gemm"]
    errors = [r for r in rows if r.get("bench") == "error"]
    flops = {}
    for r in rows:
        if r.get("bench") == "train_step" and "flops_per_step" in r:
            flops.setdefault((r.get("mode"), r.get("preset"), r.get("batch")), set()).add(round(r["flops_per_step"]))
    lines = [f"# {args.title}", ""]
    if args.machine:
        lines += [args.machine, ""]
    if peak:
        lines.append(f"Measured bf16 matrix peak: **{peak:.1f} TFLOP/s** (cuBLASLt bf16 GEMM, fp32 accumulation, "
                     "random data; the best median of: " +
                     ", ".join(f"{g['m']}×{g['n']}×{g['k']} {g['tflops']:.1f}" for g in gemms) + ").")
    else:
        lines.append("Measured bf16 matrix peak: **not measured** (see the errors below); MFU is not given.")
    lines += ["", *table(rows, peak), ""]
    att = attention_table(rows)
    if att:
        lines += [*att, ""]
    cream = creamfl_table(rows)
    lines += [
        "Each step: the batch copied from host memory, forward and backward of both towers and the contrastive "
        "loss, global-norm clipping, AdamW; synthetic data of the same shapes and kind on both sides; warm-up steps "
        "excluded; the median of the timed steps. TFLOP/s and MFU count the GEMM FLOPs the step needs "
        "(benchmarks/gpu/bench_clip_step.c, step_flops; attention's products counted in full, causal or not), "
        "the same count for every implementation of a row group. fedmm bf16: bf16 weight copies and bf16 inputs "
        "to the encoder layers' GEMMs with fp32 accumulation; its attention core, layernorms, patch embedding and "
        "projections run in fp32. PyTorch: torch.autocast bf16 over fp32 master weights."]
    if cream:
        lines += ["", *cream]
    for key, vals in sorted(flops.items(), key=str):
        if len(vals) > 1:
            lines.append(f"\nWARNING: the FLOP counts of {key} differ between implementations: {sorted(vals)}")
    for e in errors:
        lines.append(f"\nFAILED: {e.get('what', '?')}: exit {e.get('rc', '?')} {e.get('detail', '')}".rstrip())
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
