#!/usr/bin/env bash
# Round overhead of the protocol: a real `fedmm server` and N sites on 127.0.0.1 that train nothing
# (fedmm_bench_net sites: the client's calls, config reading and update shapes, no training), all N sampled
# every round. The seconds a round takes are then the protocol's cost: Join / Heartbeat polling (every 20 ms, as
# fedmm client), N Pulls and N Pushes through the one-call-at-a-time server, the state machine and FedAvg.
# Usage: benchmarks/net/round_overhead.sh [SITES=100] [ROUNDS=6] [extra --set args for both sides...]
# (BUILD=dir selects the build, default build.) Prints a markdown table; round 1 includes the sites joining.
source "$(dirname "$0")/common.sh"
N=${1:-100}; R=${2:-6}; shift $(( $# > 2 ? 2 : $# ))
work=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-bench-net.XXXXXX")
trap 'rm -rf "$work"' EXIT
cfg=(--config experiments/quickstart.yaml --set fl.sites=$N --set fl.sites_per_round=$N --set fl.rounds=$R
     --set fl.local_steps=1 --set log_level=warn "$@")
echo "| sites | rounds | trainable floats | encoding | round 1 (joins) s | rounds 2..$R: mean s/round | min | max | server CPU s | server peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for enc in f32 bf16; do
  d="$work/$enc"
  run_federation "$d" -- "${cfg[@]}" --set net.encoding=$enc || { echo "| $N | $R | failed ($enc) |"; continue; }
  P=$(sed -n 's/.*sites, \([0-9]*\) parameters.*/\1/p' "$d/sites.out")
  awk -v n="$N" -v r="$R" -v p="$P" -v e="$enc" -v cpu="$(server_stat "$d" cpu)" -v rss="$(server_stat "$d" rss)" '
    { match($0, /"wall_s": *[0-9.eE+-]+/); w[NR] = substr($0, RSTART + 9, RLENGTH - 9) + 0 }
    END {
      min = 1e9; max = 0; s = 0
      for (i = 2; i <= NR; i++) { d = w[i] - w[i - 1]; s += d; if (d < min) min = d; if (d > max) max = d }
      printf "| %d | %d | %s | %s | %.2f | %.3f | %.3f | %.3f | %s | %s |\n", n, r, p, e, w[1], s / (NR - 1), min, max, cpu, rss
    }' "$d/server/metrics.jsonl"
done
