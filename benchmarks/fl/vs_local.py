#!/usr/bin/env python3
"""Where federated training beats local-only, from a `fedmm bench` output directory.

For every setting and method: the mean over seeds of R@1 (image->text and text->image averaged) and of zero-shot
accuracy, the difference to local-only in the same seed, and a verdict for each metric: "beats" when the method is
ahead of local-only in every seed, "loses" when it is behind in every seed, "mixed" otherwise; R@1 is marked
"chance" when both means are under 5/1000 (chance is 1/|test|: no paired data, nothing to retrieve with).
Prints a Markdown table.
Usage: benchmarks/fl/vs_local.py DIR  (DIR as given to `fedmm bench --out`)
"""
import json
import os
import sys


def final_metrics(path):
    last = None
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if d.get("i2t_r1") is not None:
                last = d
    return last


def mean(xs):
    return sum(xs) / len(xs)


def verdict(diffs):
    return "beats" if all(d > 0 for d in diffs) else "loses" if all(d < 0 for d in diffs) else "mixed"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    cells = os.path.join(sys.argv[1], "cells")
    rows = {}
    for setting in sorted(os.listdir(cells)):
        for method in sorted(os.listdir(os.path.join(cells, setting))):
            for seed_dir in sorted(os.listdir(os.path.join(cells, setting, method))):
                cell = os.path.join(cells, setting, method, seed_dir)
                if not os.path.exists(os.path.join(cell, "done")):
                    continue
                m = final_metrics(os.path.join(cell, "run", "metrics.jsonl"))
                if m is None:
                    continue
                r1 = (m["i2t_r1"] + m["t2i_r1"]) / 2.0
                rows.setdefault(setting, {}).setdefault(method, {})[seed_dir] = (r1, m["zs_acc"])
    print("| setting | method | mean R@1 | local-only | R@1 vs local (per seed) | R@1 | zero-shot | local-only | zero-shot |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setting, methods in rows.items():
        local = methods.get("local")
        if not local:
            continue
        for method, seeds in methods.items():
            if method == "local":
                continue
            common = sorted(set(seeds) & set(local))
            if not common:
                continue
            diffs = [seeds[s][0] - local[s][0] for s in common]
            r1, r1_local = mean([seeds[s][0] for s in common]), mean([local[s][0] for s in common])
            zs, zs_local = mean([seeds[s][1] for s in common]), mean([local[s][1] for s in common])
            r1_verdict = "chance" if max(r1, r1_local) < 0.005 else verdict(diffs)
            zs_verdict = verdict([seeds[s][1] - local[s][1] for s in common])
            print(f"| {setting} | {method} | {r1:.4f} | {r1_local:.4f} | {' '.join(f'{d:+.4f}' for d in diffs)} | "
                  f"{r1_verdict} | {zs:.3f} | {zs_local:.3f} | {zs_verdict} |")


if __name__ == "__main__":
    main()
