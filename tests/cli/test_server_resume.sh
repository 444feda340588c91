#!/usr/bin/env bash
# Server crash-resume: fedmm server + 4 clients on 127.0.0.1; once round 1 is saved the server is killed with
# SIGKILL and restarted with --resume on the same port. The clients (never restarted) retry, re-join the same
# run and carry on; the run ends with every round saved before the kill kept, each round logged once, everyone
# exiting 0, and the global model bit-identical to `fedmm sim`'s. Then --resume is refused without a state,
# with a damaged state, and with another configuration, and a finished run resumes as finished. The crash and
# resume run again with SCAFFOLD: the server's c comes back from its state, each site keeps its c_i, and a site
# whose push of the open round the killed server lost pushes it again with its Δc_i: the run equals sim's.
# Every process runs under `timeout`; waits poll files and log lines, never fixed sleeps.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=5 --set fl.local_steps=2 --set fl.sites=4
      --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=2000 --set log_level=warn
      --threads 1)
T=300

rounds_in() { grep -c '"round"' "$1" 2>/dev/null || true; }
# saved DIR: the first round is saved (the state file is written after the metrics line)
saved() { [ "$(rounds_in "$1/metrics.jsonl")" -ge 1 ] && [ -s "$1/server-state.safetensors" ]; }

# crash_resume NAME [ARGS...]: sim, then the server and 4 clients (output in $WORK/NAME-*, the server's directory
# $WORK/NAME-srv); the server is killed with SIGKILL once round 1 is saved and resumed on its port; the run is
# checked against sim's.
crash_resume() {
  local name=$1; shift
  local common=("${base[@]}" "$@") D=$WORK/$name-srv rc k
  "$FEDMM" sim "${common[@]}" --out "$WORK/$name-sim" >"$WORK/$name-sim.log" 2>&1 \
    || { cat "$WORK/$name-sim.log"; fail "$name: sim failed"; finish; }
  timeout $T "$FEDMM" server "${common[@]}" --listen 127.0.0.1:0 --out "$D" >"$WORK/$name-srv1.out" \
    2>"$WORK/$name-srv1.err" &
  spid=$!
  wait_for up_or_gone "$WORK/$name-srv1.out" $spid || true
  port=$(port_of "$WORK/$name-srv1.out")
  [ -n "$port" ] || { cat "$WORK/$name-srv1.err"; fail "$name: server did not start"; finish; }
  pass "$name: server listening on 127.0.0.1:$port"
  local cpids=()
  for k in 0 1 2 3; do
    timeout $T "$FEDMM" client "${common[@]}" --site $k --server 127.0.0.1:$port --out "$WORK/$name-c$k" \
      >"$WORK/$name-c$k.out" 2>"$WORK/$name-c$k.err" &
    cpids+=($!)
  done

  wait_for saved "$D" || { cat "$WORK/$name-srv1.err"; fail "$name: round 1 was never saved"; }
  kill -9 "$(child_of $spid)"
  rc=0; { wait $spid; } 2>/dev/null || rc=$?
  [ $rc -eq 137 ] && pass "$name: server killed with SIGKILL" || fail "$name: server: exit $rc, not killed by SIGKILL"
  cp "$D/metrics.jsonl" "$WORK/$name-metrics-at-kill.jsonl"
  local at_kill
  at_kill=$(rounds_in "$WORK/$name-metrics-at-kill.jsonl")
  [ "$at_kill" -lt 5 ] && pass "$name: the kill came after $at_kill of 5 rounds" \
    || fail "$name: the run finished before the kill: nothing to resume"

  # restart on the same port (the clients dial it); retried in case the port is briefly unavailable
  rc=1
  for attempt in 1 2 3; do
    timeout $T "$FEDMM" server "${common[@]}" --resume --listen 127.0.0.1:$port --out "$D" \
      >"$WORK/$name-srv2.out" 2>"$WORK/$name-srv2.err" &
    spid=$!
    wait_for up_or_gone "$WORK/$name-srv2.out" $spid || true
    [ -n "$(port_of "$WORK/$name-srv2.out")" ] && { rc=0; break; }
    wait $spid 2>/dev/null || true
    grep -q "cannot listen" "$WORK/$name-srv2.err" || break
  done
  [ $rc -eq 0 ] && pass "$name: server restarted with --resume on port $port" \
    || { cat "$WORK/$name-srv2.err"; fail "$name: restart failed"; }
  local resumed run_id after
  resumed=$(sed -n 's/.*resuming run \([0-9a-f]*\) after round \([0-9]*\) of 5.*/\1 \2/p' "$WORK/$name-srv2.err")
  run_id=${resumed% *} after=${resumed#* }
  [ -n "$resumed" ] && [ "$after" -ge 1 ] && pass "$name: resumed run $run_id after round $after" \
    || { cat "$WORK/$name-srv2.err"; fail "$name: no 'resuming run ... after round' line"; }

  for k in 0 1 2 3; do
    rc=0; wait ${cpids[$k]} || rc=$?
    [ $rc -eq 0 ] && pass "$name: client $k exited 0" || { tail -5 "$WORK/$name-c$k.err"; fail "$name: client $k exited $rc"; }
    grep -q "done: run $run_id" "$WORK/$name-c$k.out" && grep -q "re-joined run $run_id" "$WORK/$name-c$k.err" \
      && pass "$name: client $k re-joined the same run $run_id and finished it" \
      || { cat "$WORK/$name-c$k.out" "$WORK/$name-c$k.err"; fail "$name: client $k: did not re-join run $run_id"; }
  done
  rc=0; wait $spid || rc=$?
  [ $rc -eq 0 ] && pass "$name: resumed server exited 0" \
    || { tail -5 "$WORK/$name-srv2.err"; fail "$name: resumed server exited $rc"; }
  cmp -s "$WORK/$name-sim/adapters.safetensors" "$D/adapters.safetensors" \
    && pass "$name: killed and resumed run: global model bit-identical to fedmm sim" \
    || fail "$name: killed and resumed run: global model differs from fedmm sim's"
  [ "$(sed -n 's/.*"round": *\([0-9]*\).*/\1/p' "$D/metrics.jsonl" | tr '\n' ' ')" = "1 2 3 4 5 " ] \
    && pass "$name: metrics: rounds 1..5, each once" \
    || { cat "$D/metrics.jsonl"; fail "$name: metrics: not rounds 1..5 once each"; }
  [ "$(head -n "$after" "$WORK/$name-metrics-at-kill.jsonl")" = "$(head -n "$after" "$D/metrics.jsonl")" ] \
    && pass "$name: the $after round(s) saved before the kill are kept as they were" \
    || { cat "$WORK/$name-metrics-at-kill.jsonl"; fail "$name: the rounds saved before the kill changed"; }
  # the payload byte count goes on across the restart: the pushes the killed server lost were pushed again
  local up_sim up_srv
  up_sim=$(tail -n 1 "$WORK/$name-sim/metrics.jsonl" | json_num bytes_up)
  up_srv=$(tail -n 1 "$D/metrics.jsonl" | json_num bytes_up)
  [ -n "$up_srv" ] && [ "$up_sim" = "$up_srv" ] && pass "$name: bytes_up over the whole run: $up_srv, as fedmm sim's" \
    || fail "$name: bytes_up: server $up_srv, sim $up_sim"
  [ ! -e "$D/server-strategy-4.safetensors" ] && [ -e "$D/server-strategy-5.safetensors" ] \
    && pass "$name: only the last round's strategy file is left" || { ls "$D"; fail "$name: strategy files left behind"; }
}

crash_resume fedavg
crash_resume scaffold --set fl.strategy=scaffold
D=$WORK/fedavg-srv

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
[ $rc -eq 0 ] && cmp -s "$WORK/fedavg-sim/adapters.safetensors" "$WORK/finished/adapters.safetensors" \
  && pass "--resume of a finished run: exit 0, the same global model" \
  || { cat "$WORK/finished.err"; fail "--resume of a finished run: exit $rc"; }
finish
