#!/usr/bin/env bash
# Parked updates spilled to disk (net.park_memory_mb = 0): 3 sites, all tasked every round; site 0 is held
# (SIGSTOP) while it trains round 1, so sites 1 and 2 push first and their updates, which must wait for
# site 0's, go to files under the server's --out dir. Site 0 then pushes, the files are read back (checked)
# and removed, and the run ends bit-identical to `fedmm sim`.
# Every process runs under `timeout`; waits poll log lines, never fixed sleeps.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=2 --set fl.local_steps=20 --set fl.sites=3
      --set fl.cross_k=3 --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
T=300
D=$WORK/srv

wait_for() {
  for _ in $(seq 1 4800); do "$@" && return 0; sleep 0.05; done
  return 1
}
port_of() { sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$1" 2>/dev/null || true; }
up_or_gone() { [ -n "$(port_of "$1")" ] || ! kill -0 "$2" 2>/dev/null; }
child_of() { ps -o pid= --ppid "$1" | tr -d ' '; }
training_or_gone() { grep -q "site 0: round 1: training" "$1" 2>/dev/null || ! kill -0 "$2" 2>/dev/null; }
both_spilled() { [ "$(grep -c "round 1: site [12]'s update parked on disk" "$1" 2>/dev/null || true)" = 2 ]; }

"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; }
timeout $T "$FEDMM" server "${base[@]}" --set net.park_memory_mb=0 --set log_level=info --listen 127.0.0.1:0 \
  --out "$D" >"$WORK/srv.out" 2>"$WORK/srv.err" &
spid=$!
wait_for up_or_gone "$WORK/srv.out" $spid || true
port=$(port_of "$WORK/srv.out")
[ -n "$port" ] && pass "server listening on 127.0.0.1:$port" || { cat "$WORK/srv.err"; fail "server did not start"; finish; }
pids=()
timeout $T "$FEDMM" client "${base[@]}" --set log_level=info --site 0 --server 127.0.0.1:$port \
  >"$WORK/c0.out" 2>"$WORK/c0.err" &
pids+=($!)
wait_for training_or_gone "$WORK/c0.err" ${pids[0]} || true
child=$(child_of ${pids[0]})
[ -n "$child" ] && kill -STOP "$child" && pass "site 0 held while it trains round 1" \
  || { cat "$WORK/c0.err"; fail "site 0 could not be held"; }
for k in 1 2; do
  timeout $T "$FEDMM" client "${base[@]}" --site $k --server 127.0.0.1:$port >"$WORK/c$k.out" 2>"$WORK/c$k.err" &
  pids+=($!)
done
wait_for both_spilled "$WORK/srv.err" && pass "sites 1 and 2 pushed first: both updates parked on disk" \
  || { cat "$WORK/srv.err"; fail "no updates parked on disk"; }
ls "$D/parked/"r1-site*.f32 >/dev/null 2>&1 && pass "the spill files are under --out/parked" \
  || fail "no spill files under --out/parked"
kill -CONT "$child" 2>/dev/null || true
for k in 0 1 2; do
  rc=0; wait ${pids[$k]} || rc=$?
  [ $rc -eq 0 ] && pass "client $k exited 0" || { tail -5 "$WORK/c$k.err"; fail "client $k exited $rc"; }
done
rc=0; wait $spid || rc=$?
[ $rc -eq 0 ] && pass "server exited 0" || { tail -5 "$WORK/srv.err"; fail "server exited $rc"; }
[ -z "$(ls -A "$D/parked" 2>/dev/null)" ] && pass "every spill file was read back and removed" \
  || { ls "$D/parked"; fail "spill files left behind"; }
cmp -s "$WORK/sim/adapters.safetensors" "$D/adapters.safetensors" \
  && pass "spilled updates: global model bit-identical to fedmm sim" || fail "global model differs from fedmm sim's"
finish
