#!/usr/bin/env bash
# Stream throughput of one large update: fedmm_bench_net stream runs the real serving loop, state machine and
# FedAvg in-process over a fake vector of P floats (default 268,435,456 = 1 GiB... of float32, 1.07 GB) and one
# site that Pulls it and Pushes an update of the same size over gRPC on 127.0.0.1, in each encoding.
# Usage: benchmarks/net/stream_throughput.sh [PARAMS=268435456] [ENCODINGS="f32:none bf16:none int8:none f32:zstd int8:zstd"]
# Needs about 5 × 4 × PARAMS bytes of RAM (strategy: global, step, accumulator; staging; the site's buffer).
source "$(dirname "$0")/common.sh"
P=${1:-268435456}
encs=${2:-"f32:none bf16:none int8:none f32:zstd int8:zstd"}
echo "| floats | encoding | pull s | pull MB/s (of float32) | pull MB sent | pull CPU s | push s | push MB/s (of float32) | push MB sent | push CPU s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for ec in $encs; do
  e=${ec%%:*}; c=${ec##*:}
  line=$($NICE "$BENCH" stream --params "$P" --encoding "$e" --compress "$c" 2>/dev/null | grep '^result ') \
    || { echo "| $P | $e+$c | failed |"; continue; }
  # result k=v ...: the values in order
  set -- $(echo "${line#result }" | sed 's/[a-z_]*=//g')
  enc=$e; [ "$c" = zstd ] && enc="$e+zstd"
  echo "| $1 | $enc | $2 | $3 | $4 | $5 | $6 | $7 | $8 | $9 | ${10} |"
done
