#!/usr/bin/env bash
# Server crash-resume: fedmm server + 4 clients on 127.0.0.1; once round 1 is saved the server is killed with
# SIGKILL and restarted with --resume on the same port. The clients (never restarted) retry, re-join the same
# run and carry on; the run ends with every round saved before the kill kept, each round logged once, everyone
# exiting 0, and the global model bit-identical to `fedmm sim`'s. Then --resume is refused without a state,
# with a damaged state, and with another configuration, and a finished run resumes as finished.
# Every process runs under `timeout`; waits poll files and log lines, never fixed sleeps.
source "$(dirname "$0")/lib.sh"
if ! "$FEDMM" server --help >/dev/null 2>&1; then
  echo "SKIP: this fedmm has no gRPC control plane"; exit 77
fi
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=5 --set fl.local_steps=2 --set fl.sites=4
      --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=2000 --set log_level=warn
      --threads 1)
T=300
D=$WORK/srv

# wait_for CMD...: polls CMD every 0.05 s for up to 240 s; 1 when it never succeeded.
wait_for() {
  for _ in $(seq 1 4800); do "$@" && return 0; sleep 0.05; done
  return 1
}
rounds_in() { grep -c '"round"' "$1" 2>/dev/null || true; }
port_of() { sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$1" 2>/dev/null || true; }
# up_or_gone OUT PID: the server printed its port, or its process is gone
up_or_gone() { [ -n "$(port_of "$1")" ] || ! kill -0 "$2" 2>/dev/null; }
# the fedmm process under a `timeout` wrapper (signals to the wrapper would not reach it as SIGKILL)
child_of() { ps -o pid= --ppid "$1" | tr -d ' '; }

"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; finish; }

timeout $T "$FEDMM" server "${base[@]}" --listen 127.0.0.1:0 --out "$D" >"$WORK/srv1.out" 2>"$WORK/srv1.err" &
spid=$!
wait_for up_or_gone "$WORK/srv1.out" $spid || true
port=$(port_of "$WORK/srv1.out")
[ -n "$port" ] || { cat "$WORK/srv1.err"; fail "server did not start"; finish; }
pass "server listening on 127.0.0.1:$port"
cpids=()
for k in 0 1 2 3; do
  timeout $T "$FEDMM" client "${base[@]}" --site $k --server 127.0.0.1:$port >"$WORK/c$k.out" 2>"$WORK/c$k.err" &
  cpids+=($!)
done

# the first round is saved (the state file is written after the metrics line): kill -9 the server
saved() { [ "$(rounds_in "$D/metrics.jsonl")" -ge 1 ] && [ -s "$D/server-state.safetensors" ]; }
wait_for saved || { cat "$WORK/srv1.err"; fail "round 1 was never saved"; }
kill -9 "$(child_of $spid)"
rc=0; { wait $spid; } 2>/dev/null || rc=$?
[ $rc -eq 137 ] && pass "server killed with SIGKILL" || fail "server: exit $rc, not killed by SIGKILL"
cp "$D/metrics.jsonl" "$WORK/metrics-at-kill.jsonl"
at_kill=$(rounds_in "$WORK/metrics-at-kill.jsonl")
[ "$at_kill" -lt 5 ] && pass "the kill came after $at_kill of 5 rounds" \
  || fail "the run finished before the kill: nothing to resume"

# restart on the same port (the clients dial it); retried in case the port is briefly unavailable
rc=1
for attempt in 1 2 3; do
  timeout $T "$FEDMM" server "${base[@]}" --resume --listen 127.0.0.1:$port --out "$D" \
    >"$WORK/srv2.out" 2>"$WORK/srv2.err" &
  spid=$!
  wait_for up_or_gone "$WORK/srv2.out" $spid || true
  [ -n "$(port_of "$WORK/srv2.out")" ] && { rc=0; break; }
  wait $spid 2>/dev/null || true
  grep -q "cannot listen" "$WORK/srv2.err" || break
done
[ $rc -eq 0 ] && pass "server restarted with --resume on port $port" || { cat "$WORK/srv2.err"; fail "restart failed"; }
resumed=$(sed -n 's/.*resuming run \([0-9a-f]*\) after round \([0-9]*\) of 5.*/\1 \2/p' "$WORK/srv2.err")
run_id=${resumed% *} after=${resumed#* }
[ -n "$resumed" ] && [ "$after" -ge 1 ] && pass "resumed run $run_id after round $after" \
  || { cat "$WORK/srv2.err"; fail "no 'resuming run ... after round' line"; }

for k in 0 1 2 3; do
  rc=0; wait ${cpids[$k]} || rc=$?
  [ $rc -eq 0 ] && pass "client $k exited 0" || { tail -5 "$WORK/c$k.err"; fail "client $k exited $rc"; }
  grep -q "done: run $run_id" "$WORK/c$k.out" && grep -q "re-joined run $run_id" "$WORK/c$k.err" \
    && pass "client $k re-joined the same run $run_id and finished it" \
    || { cat "$WORK/c$k.out" "$WORK/c$k.err"; fail "client $k: did not re-join run $run_id"; }
done
rc=0; wait $spid || rc=$?
[ $rc -eq 0 ] && pass "resumed server exited 0" || { tail -5 "$WORK/srv2.err"; fail "resumed server exited $rc"; }
cmp -s "$WORK/sim/adapters.safetensors" "$D/adapters.safetensors" \
  && pass "killed and resumed run: global model bit-identical to fedmm sim" \
  || fail "killed and resumed run: global model differs from fedmm sim's"
[ "$(sed -n 's/.*"round": *\([0-9]*\).*/\1/p' "$D/metrics.jsonl" | tr '\n' ' ')" = "1 2 3 4 5 " ] \
  && pass "metrics: rounds 1..5, each once" || { cat "$D/metrics.jsonl"; fail "metrics: not rounds 1..5 once each"; }
[ "$(head -n "$after" "$WORK/metrics-at-kill.jsonl")" = "$(head -n "$after" "$D/metrics.jsonl")" ] \
  && pass "the $after round(s) saved before the kill are kept as they were" \
  || { cat "$WORK/metrics-at-kill.jsonl"; fail "the rounds saved before the kill changed"; }
# the payload byte count goes on across the restart: the pushes the killed server lost were pushed again
up_sim=$(tail -n 1 "$WORK/sim/metrics.jsonl" | json_num bytes_up) up_srv=$(tail -n 1 "$D/metrics.jsonl" | json_num bytes_up)
[ -n "$up_srv" ] && [ "$up_sim" = "$up_srv" ] && pass "bytes_up over the whole run: $up_srv, as fedmm sim's" \
  || fail "bytes_up: server $up_srv, sim $up_sim"
[ ! -e "$D/server-strategy-4.safetensors" ] && [ -e "$D/server-strategy-5.safetensors" ] \
  && pass "only the last round's strategy file is left" || { ls "$D"; fail "strategy files left behind"; }

# --resume refusals (exit 2, one line naming the problem)
expect_refusal() {
  local name=$1 pattern=$2; shift 2
  local rc=0
  timeout 60 "$FEDMM" server "${base[@]}" --resume --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" \
    || rc=$?
  [ $rc -eq 2 ] && grep -q "$pattern" "$WORK/$name.err" && pass "--resume $name: refused (exit 2)" \
    || { cat "$WORK/$name.err"; fail "--resume $name: exit $rc"; }
}
mkdir -p "$WORK/empty"
expect_refusal "without a state" "no server state in" --out "$WORK/empty"
expect_refusal "with another fl.seed" "another configuration: the federation" --out "$D" --set fl.seed=99
expect_refusal "with another strategy" "another configuration: the strategy" --out "$D" --set fl.strategy=fedavgm
cp -r "$D" "$WORK/damaged"
printf 'garbage!' | dd of="$WORK/damaged/server-state.safetensors" conv=notrunc 2>/dev/null
expect_refusal "with a damaged state" "is damaged" --out "$WORK/damaged"

# a finished run resumes as finished: nothing to do, the same model written again
cp -r "$D" "$WORK/finished"
rm -f "$WORK/finished/adapters.safetensors"
rc=0
timeout 60 "$FEDMM" server "${base[@]}" --resume --listen 127.0.0.1:0 --out "$WORK/finished" \
  >"$WORK/finished.out" 2>"$WORK/finished.err" || rc=$?
[ $rc -eq 0 ] && cmp -s "$WORK/sim/adapters.safetensors" "$WORK/finished/adapters.safetensors" \
  && pass "--resume of a finished run: exit 0, the same global model" \
  || { cat "$WORK/finished.err"; fail "--resume of a finished run: exit $rc"; }
finish
