#!/usr/bin/env bash
# CreamFL over `fedmm server` / `fedmm client` with the config file `fedmm sim` reads (experiments/creamfl-quick.yaml,
# cut small): a server and 4 clients (2 paired sites, 1 image-only, 1 text-only) end with sim's server model bit for
# bit and sim's metrics.jsonl (timings aside, byte counts included); a site whose CreamFL configuration differs (|P|)
# is refused at Join while the others carry on; bf16 representations with zstd end bit-identical too (their bytes
# as compressed); a server killed with SIGKILL and restarted with --resume carries the running clients on to sim's
# model; with a round deadline a site that never comes is done without. Every process runs under `timeout`.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/creamfl-quick.yaml --set log_level=warn --set data.train_size=600
      --set data.image_only_size=300 --set data.text_only_size=300 --set data.public_size=64 --set data.test_size=64
      --set fl.creamfl.public_size=64 --set fl.eval_size=64 --set fl.eval_every=2 --set train.batch_size=16
      --set fl.local_steps=2 --set fl.creamfl.init_local_steps=1 --set fl.creamfl.server_init_steps=1
      --set fl.creamfl.server_steps=2 --set fl.creamfl.distill_steps=2 --set fl.sites_per_round=2 --threads 1)
T=120

wait_for() { # wait_for CMD...: polls CMD every 0.05 s for up to 60 s
  for _ in $(seq 1 1200); do "$@" && return 0; sleep 0.05; done
  return 1
}
port_of() { sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$1" 2>/dev/null || true; }
up_or_gone() { [ -n "$(port_of "$1")" ] || ! kill -0 "$2" 2>/dev/null; }
child_of() { ps -o pid= --ppid "$1" | tr -d ' '; }
no_time() { sed -e 's/"wall_s": [-0-9.eE+]*,//' -e 's/"ensemble_s": [-0-9.eE+]*,//' "$1"; }
no_bytes() { no_time "$1" | sed -e 's/"bytes_up": [-0-9.eE+]*,//' -e 's/"bytes_down": [-0-9.eE+]*,//'; }

# start_server NAME LISTEN ARGS...: the server in the background; sets spid and port (empty: it did not start)
start_server() {
  local name=$1 listen=$2; shift 2
  timeout $T "$FEDMM" server "$@" --listen "$listen" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  spid=$!
  wait_for up_or_gone "$WORK/$name.out" $spid || true
  port=$(port_of "$WORK/$name.out")
}
started() { [ -n "$port" ] || { cat "$WORK/$1.err"; fail "$1: server did not start"; return 1; }; }
# start_clients NAME SITES ARGS...: one client per site in the background; sets cpids
start_clients() {
  local name=$1 sites=$2 k; shift 2
  cpids=()
  for k in $sites; do
    timeout $T "$FEDMM" client "$@" --site $k --server 127.0.0.1:$port >"$WORK/$name-c$k.out" 2>"$WORK/$name-c$k.err" &
    cpids+=($!)
  done
}
# wait_all NAME SITES: every client and the server exit 0
wait_all() {
  local name=$1 sites=$2 i=0 k rc bad=0
  for k in $sites; do
    rc=0; wait ${cpids[$i]} || rc=$?
    [ $rc -eq 0 ] || { tail -3 "$WORK/$name-c$k.err"; fail "$name: client $k exited $rc"; bad=1; }
    i=$((i + 1))
  done
  rc=0; wait $spid || rc=$?
  [ $rc -eq 0 ] || { tail -5 "$WORK/$name.err"; fail "$name: server exited $rc"; bad=1; }
  [ $bad = 0 ] && pass "$name: the server and clients $sites exited 0"
}

# 1. sim, then server + 4 clients with the same config; meanwhile a site with another |P| is refused at Join
common=("${base[@]}" --set fl.rounds=4)
"$FEDMM" sim "${common[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { tail -3 "$WORK/sim.log"; fail "sim failed"; finish; }
start_server net 127.0.0.1:0 "${common[@]}" --out "$WORK/net"
started net || finish
rc=0
timeout 60 "$FEDMM" client "${common[@]}" --set fl.creamfl.public_size=32 --site 1 --server 127.0.0.1:$port \
  >"$WORK/bad.out" 2>"$WORK/bad.err" || rc=$?
[ $rc -ne 0 ] && grep -q "status 9.*4096 parameters" "$WORK/bad.err" \
  && pass "a site with |P| = 32 is refused at Join (FAILED_PRECONDITION), exit $rc" \
  || { cat "$WORK/bad.err"; fail "a site with another |P|: exit $rc"; }
start_clients net "0 1 2 3" "${common[@]}"
wait_all net "0 1 2 3"
grep -q "4096 parameters" "$WORK/net.err" && pass "the server logged the refused Join and served on" \
  || fail "the server log does not show the refused Join"
cmp -s "$WORK/sim/model.safetensors" "$WORK/net/model.safetensors" \
  && pass "server + 4 clients, 4 rounds: server model bit-identical to fedmm sim's" \
  || fail "the networked server model differs from fedmm sim's"
cmp -s <(no_time "$WORK/sim/metrics.jsonl") <(no_time "$WORK/net/metrics.jsonl") \
  && pass "metrics.jsonl equals fedmm sim's (timings aside): $(tail -n 1 "$WORK/net/metrics.jsonl" | cut -c1-90)..." \
  || { diff <(no_time "$WORK/sim/metrics.jsonl") <(no_time "$WORK/net/metrics.jsonl") | head -4; fail "metrics differ"; }
"$FEDMM" sim "${base[@]}" --set fl.rounds=3 --out "$WORK/sim3" >/dev/null 2>&1 || fail "3-round sim failed"
cmp -s "$WORK/sim3/model.safetensors" "$WORK/net/model.safetensors" && fail "4 networked rounds equal 3 simulated" \
  || pass "and differs from a 3-round sim"

# 2. bf16 representations, zstd on the wire, joint distillation, 3 sites per round
common=("${base[@]}" --set fl.rounds=2 --set fl.creamfl.rep_dtype=bf16 --set net.compress=zstd
        --set fl.creamfl.distill=joint --set fl.sites_per_round=3)
"$FEDMM" sim "${common[@]}" --out "$WORK/sim-bf16" >"$WORK/sim-bf16.log" 2>&1 || fail "bf16 sim failed"
start_server bf16 127.0.0.1:0 "${common[@]}" --out "$WORK/bf16"
started bf16 || finish
start_clients bf16 "0 1 2 3" "${common[@]}"
wait_all bf16 "0 1 2 3"
cmp -s "$WORK/sim-bf16/model.safetensors" "$WORK/bf16/model.safetensors" \
  && cmp -s <(no_bytes "$WORK/sim-bf16/metrics.jsonl") <(no_bytes "$WORK/bf16/metrics.jsonl") \
  && pass "bf16 + zstd: server model and metrics bit-identical to fedmm sim's" || fail "bf16 + zstd differs from sim"
up_sim=$(tail -n 1 "$WORK/sim-bf16/metrics.jsonl" | json_num bytes_up)
up_net=$(tail -n 1 "$WORK/bf16/metrics.jsonl" | json_num bytes_up)
[ -n "$up_net" ] && ge "$up_sim" "$up_net" && pass "bf16 + zstd: $up_net bytes up (sim's bf16 count: $up_sim)" \
  || fail "bf16 + zstd bytes up: $up_net (sim $up_sim)"
"$FEDMM" client "${common[@]}" --set net.encoding=int8 --site 0 --server 127.0.0.1:1 >/dev/null 2>"$WORK/int8.err" \
  && fail "net.encoding int8 accepted" || { grep -q "rep_dtype" "$WORK/int8.err" && pass "net.encoding int8 refused"; } \
  || fail "net.encoding int8: $(cat "$WORK/int8.err")"

# 3. kill -9 the server once round 2 is saved; restart it with --resume on the same port; the clients carry on
common=("${base[@]}" --set fl.rounds=6 --set fl.eval_every=3)
"$FEDMM" sim "${common[@]}" --out "$WORK/sim6" >"$WORK/sim6.log" 2>&1 || fail "6-round sim failed"
D=$WORK/res
start_server res1 127.0.0.1:0 "${common[@]}" --out "$D"
started res1 || finish
start_clients res "0 1 2 3" "${common[@]}"
saved() { [ "$(grep -c '"round"' "$D/metrics.jsonl" 2>/dev/null || true)" -ge 2 ] && [ -s "$D/server-state.safetensors" ]; }
wait_for saved || { cat "$WORK/res1.err"; fail "round 2 was never saved"; }
kill -9 "$(child_of $spid)" 2>/dev/null || true
rc=0; { wait $spid; } 2>/dev/null || rc=$?
[ $rc -eq 137 ] && pass "server killed with SIGKILL after $(grep -c '"round"' "$D/metrics.jsonl") rounds logged" \
  || fail "server: exit $rc, not killed by SIGKILL (the run ended first?)"
killed_port=$port
for attempt in 1 2 3; do
  start_server res2 127.0.0.1:$killed_port "${common[@]}" --out "$D" --resume
  [ -n "$port" ] && break
  wait $spid 2>/dev/null || true
  grep -q "cannot listen" "$WORK/res2.err" || break
  sleep 0.5
done
started res2 || finish
grep -q "resuming CreamFL run .* after round" "$WORK/res2.err" \
  && pass "resumed: $(grep -o 'resuming CreamFL run .* after round [0-9]*' "$WORK/res2.err")" \
  || { cat "$WORK/res2.err"; fail "no 'resuming' line"; }
wait_all res "0 1 2 3"
cmp -s "$WORK/sim6/model.safetensors" "$D/model.safetensors" \
  && pass "killed + resumed server: model bit-identical to fedmm sim's" || fail "killed + resumed server differs from sim"
# bytes_down aside: a site that had pushed a round the killed server lost pushes it again without pulling it again
cmp -s <(no_bytes "$WORK/sim6/metrics.jsonl") <(no_bytes "$D/metrics.jsonl") \
  && pass "killed + resumed: metrics.jsonl equals sim's (each round once, timings and bytes aside)" \
  || { diff <(no_bytes "$WORK/sim6/metrics.jsonl") <(no_bytes "$D/metrics.jsonl") | head -6; fail "resumed metrics differ"; }
up_sim=$(tail -n 1 "$WORK/sim6/metrics.jsonl" | json_num bytes_up)
up_net=$(tail -n 1 "$D/metrics.jsonl" | json_num bytes_up)
[ "$up_sim" = "$up_net" ] && pass "killed + resumed: bytes_up over the whole run $up_net, as sim's" \
  || fail "killed + resumed: bytes_up $up_net, sim $up_sim"

# 4. a round deadline: all 4 sites tasked every round, site 3 never comes; each round closes with 3 of 4
common=("${base[@]}" --set fl.rounds=2 --set fl.sites_per_round=4 --set net.round_timeout_s=1 --set fl.min_sites=3)
start_server dl 127.0.0.1:0 "${common[@]}" --out "$WORK/dl"
started dl || finish
start_clients dl "0 1 2" "${common[@]}"
wait_all dl "0 1 2"
[ "$(grep -c 'closed at its 1.0 s deadline with 3 of 4 sites' "$WORK/dl.err")" = 2 ] \
  && [ "$(grep -c '"round"' "$WORK/dl/metrics.jsonl")" = 2 ] && [ -s "$WORK/dl/model.safetensors" ] \
  && pass "deadline: both rounds closed with 3 of 4 sites, the run finished" \
  || { cat "$WORK/dl.err"; fail "deadline: rounds did not close without site 3"; }
finish
