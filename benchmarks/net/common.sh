# Shared by the control-plane benchmarks (sourced): a real `fedmm server` under GNU time, and fake sites
# (fedmm_bench_net sites) against it. Set BUILD (default build), read START_SERVER's results from $OUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD:-build}
FEDMM=$BUILD/fedmm
BENCH=$BUILD/fedmm_bench_net
NICE=${NICE:-nice -n 5}
[ -x "$FEDMM" ] && [ -x "$BENCH" ] || { echo "build $FEDMM and $BENCH first (cmake --build $BUILD)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "GNU time (/usr/bin/time) is needed for the server's peak RSS" >&2; exit 2; }
export FEDMM_SECRET=${FEDMM_SECRET:-bench-secret-0123456789abcdef}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# run_federation OUTDIR SITES_ARGS... -- CONFIG_ARGS...: a server with CONFIG_ARGS (peak RSS and CPU seconds
# by GNU time into OUTDIR/server.time), then fedmm_bench_net sites with CONFIG_ARGS and SITES_ARGS. Returns
# non-zero if either fails.
run_federation() {
  local out=$1; shift
  local sites_args=()
  while [ "$1" != -- ]; do sites_args+=("$1"); shift; done
  shift
  mkdir -p "$out"
  $NICE /usr/bin/time -f "%M %U %S %e" -o "$out/server.time" "$FEDMM" server "$@" --listen 127.0.0.1:0 \
    --out "$out/server" >"$out/server.out" 2>"$out/server.err" &
  local spid=$! port=""
  for _ in $(seq 1 1200); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$out/server.out" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { tail -n 3 "$out/server.err" >&2; return 1; }
  local rc=0
  $NICE "$BENCH" sites "$@" "${sites_args[@]}" --server 127.0.0.1:$port >"$out/sites.out" 2>"$out/sites.err" || rc=$?
  wait $spid || rc=$?
  [ $rc -eq 0 ] || { tail -n 3 "$out/sites.err" "$out/server.err" >&2; return 1; }
}

# server_stat OUTDIR FIELD: peak RSS in MB (rss), CPU seconds (cpu) or wall seconds (wall) of the server
server_stat() {
  awk -v f="$2" '{ if (f == "rss") printf "%.0f", $1 / 1024; else if (f == "cpu") printf "%.1f", $2 + $3;
                   else printf "%.1f", $4 }' "$1/server.time"
}
