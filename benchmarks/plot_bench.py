#!/usr/bin/env python3
"""Plots of a `fedmm bench` run: python3 benchmarks/plot_bench.py DIR

Reads DIR/results.csv and DIR/curves.csv (written by `fedmm bench`) and writes into DIR/plots/:
  curves-<setting>.png  zero-shot accuracy and mean R@1 against round, one line per method (mean over seeds,
                        a band of ± one standard deviation where there are several seeds);
  bars-<scenario>.png   one bar chart per scenario: final zero-shot accuracy and mean R@1 (i2t and t2i) of every
                        method in each of the scenario's settings, with ± std error bars.
Methods run on pooled data (setting "pooled", the centralized baseline) appear in every setting's plot.
Exit codes: 0 plots written, 3 matplotlib is not installed, 2 bad input.
"""
import csv
import math
import os
import sys
from collections import defaultdict


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def mean_std(xs):
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def main():
    if len(sys.argv) != 2:
        print("usage: plot_bench.py DIR   (DIR: a fedmm bench output directory)", file=sys.stderr)
        return 2
    out = sys.argv[1]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_bench.py: matplotlib is not installed (pip install matplotlib, or apt-get install "
              "python3-matplotlib)", file=sys.stderr)
        return 3
    try:
        results = read_csv(os.path.join(out, "results.csv"))
        curves = read_csv(os.path.join(out, "curves.csv"))
    except OSError as e:
        print(f"plot_bench.py: {e}", file=sys.stderr)
        return 2
    plots = os.path.join(out, "plots")
    os.makedirs(plots, exist_ok=True)

    # method order and labels as the results table has them
    order, label = [], {}
    for r in results:
        if r["method"] not in label:
            order.append(r["method"])
            label[r["method"]] = r["label"]
    settings = []
    for r in results:
        if r["setting"] != "pooled" and r["setting"] not in settings:
            settings.append(r["setting"])
    # tab10 first (distinct hues), then the light halves of tab20 for methods 11 to 20
    palette = [plt.get_cmap("tab10")(i) for i in range(10)] + [plt.get_cmap("tab20")(2 * i + 1) for i in range(10)]
    color = {m: palette[i % len(palette)] for i, m in enumerate(order)}
    from matplotlib.ticker import MaxNLocator

    # curves: (setting, method) -> round -> [values per seed]
    zs = defaultdict(lambda: defaultdict(list))
    r1 = defaultdict(lambda: defaultdict(list))
    for c in curves:
        key = (c["setting"], c["method"])
        x = round(num(c["round"]), 6)
        zs[key][x].append(num(c["zs_acc"]))
        r1[key][x].append((num(c["i2t_r1"]) + num(c["t2i_r1"])) / 2)
    written = 0
    for s in settings:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        drawn = False
        for m in order:
            key = (s, m) if (s, m) in zs else ("pooled", m)
            if key not in zs:
                continue
            for ax, data in ((axes[0], zs), (axes[1], r1)):
                xs = sorted(data[key])
                ms = [mean_std(data[key][x]) for x in xs]
                ys = [100 * a for a, _ in ms]
                sd = [100 * b for _, b in ms]
                style = "--" if key[0] == "pooled" else "-"
                ax.plot(xs, ys, style, marker="o", markersize=3, color=color[m], label=label[m])
                if any(v > 0 for v in sd):
                    ax.fill_between(xs, [y - d for y, d in zip(ys, sd)], [y + d for y, d in zip(ys, sd)],
                                    color=color[m], alpha=0.15, linewidth=0)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        axes[0].set_ylabel("zero-shot accuracy (%)")
        axes[1].set_ylabel("mean R@1, i2t and t2i (%)")
        for ax in axes:
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{s}: accuracy against round (mean over seeds; dashed: pooled data)")
        fig.tight_layout()
        fig.savefig(os.path.join(plots, f"curves-{s}.png"), dpi=110)
        plt.close(fig)
        written += 1

    # bars: one chart per scenario, groups = the scenario's settings, bars = methods
    final = {}
    for r in results:
        if r["status"] in ("ok", "partial"):
            r1m = (num(r["i2t_r1_mean"]) + num(r["t2i_r1_mean"])) / 2
            r1s = math.sqrt((num(r["i2t_r1_std"]) ** 2 + num(r["t2i_r1_std"]) ** 2) / 2)
            final[(r["setting"], r["method"])] = (num(r["zs_acc_mean"]), num(r["zs_acc_std"]), r1m, r1s)
    scenarios = []
    for s in settings:
        sc = s.split("-")[0]
        if sc not in scenarios:
            scenarios.append(sc)
    for sc in scenarios:
        group = [s for s in settings if s.split("-")[0] == sc]
        methods = [m for m in order if any((s, m) in final or ("pooled", m) in final for s in group)]
        if not methods:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 + 0.35 * len(methods) * len(group) * 2), 4.2))
        width = 0.8 / len(methods)
        for ax, (mi, si), ylabel in ((axes[0], (0, 1), "zero-shot accuracy (%)"),
                                     (axes[1], (2, 3), "mean R@1, i2t and t2i (%)")):
            for j, m in enumerate(methods):
                xs, ys, es = [], [], []
                for g, s in enumerate(group):
                    v = final.get((s, m), final.get(("pooled", m)))
                    if v is None:
                        continue
                    xs.append(g - 0.4 + width * (j + 0.5))
                    ys.append(100 * v[mi])
                    es.append(100 * v[si])
                ax.bar(xs, ys, width, yerr=es, capsize=2, color=color[m], label=label[m])
            ax.set_xticks(range(len(group)))
            ax.set_xticklabels(group)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
        axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"scenario {sc}: final accuracy (mean ± std over seeds)")
        fig.tight_layout()
        fig.savefig(os.path.join(plots, f"bars-{sc}.png"), dpi=110)
        plt.close(fig)
        written += 1
    print(f"plot_bench.py: wrote {written} plots to {plots}")
    return 0 if written else 2


if __name__ == "__main__":
    sys.exit(main())
