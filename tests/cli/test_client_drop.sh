#!/usr/bin/env bash
# A site killed (SIGKILL) in the middle of its local training:
#  1. with net.round_timeout_s and fl.min_sites = 2 of 3, every round closes at its deadline without it; the
#     run completes and the server and the two other sites exit 0;
#  2. without a deadline the round waits; the killed site is started again, joins, is tasked with the round
#     the server is on, and the run ends bit-identical to `fedmm sim` with no push refused.
# Every process runs under `timeout`; waits poll log lines, never fixed sleeps.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
# 20 local steps: long enough that the kill lands while site 2 trains (it is sent 0.05 s after the log line)
base=(--config experiments/quickstart.yaml --set fl.rounds=3 --set fl.local_steps=20 --set fl.sites=3
      --set fl.cross_k=3 --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
T=300

# training_or_gone ERR PID: the site logged its round-1 training, or its process is gone
training_or_gone() { grep -q "site 2: round 1: training" "$1" 2>/dev/null || ! kill -0 "$2" 2>/dev/null; }

# kill_while_training NAME PID: SIGKILL site 2 once it logs that it trains round 1
kill_while_training() {
  local name=$1 pid=$2 rc=0
  wait_for training_or_gone "$WORK/$name-c2.err" $pid || true
  grep -q "site 2: round 1: training" "$WORK/$name-c2.err" \
    || { cat "$WORK/$name-c2.err"; fail "$name: site 2 never started training"; finish; }
  kill -9 "$(child_of $pid)"
  { wait $pid; } 2>/dev/null || rc=$?
  [ $rc -eq 137 ] && ! grep -q "round 1 pushed" "$WORK/$name-c2.err" \
    && pass "$name: site 2 killed (SIGKILL) while training round 1" \
    || { cat "$WORK/$name-c2.err"; fail "$name: site 2 was not killed mid-round (exit $rc)"; }
}

# 1. the deadline closes every round without the killed site
start_server deadline --set net.round_timeout_s=2 --set fl.min_sites=2
pids=() ks=()
for k in 0 1; do start_client deadline $k; pids+=($cpid); done
start_client deadline 2 --set log_level=info
kill_while_training deadline $cpid
wait_sites deadline
[ "$(grep -c 'closed at its 2.0 s deadline with 2 of 3 sites' "$WORK/deadline-srv.err")" = 3 ] \
  && pass "deadline: all 3 rounds closed at the deadline with the 2 live sites" \
  || { cat "$WORK/deadline-srv.err"; fail "deadline: not 3 rounds closed with 2 of 3 sites"; }
[ "$(grep -c '"sites": 2' "$WORK/deadline-srv/metrics.jsonl" 2>/dev/null || true)" = 3 ] \
  && pass "deadline: metrics: 3 rounds of 2 sites" || fail "deadline: metrics: not 3 rounds of 2 sites"

# 2. no deadline: the round waits for site 2, which is started again and carries on
"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; }
start_server restart
pids=() ks=()
for k in 0 1; do start_client restart $k; pids+=($cpid); done
start_client restart 2 --set log_level=info
kill_while_training restart $cpid
start_client restart 2 --set log_level=info
pids+=($cpid)
wait_sites restart
[ "$(grep -c 'site 2: joined run' "$WORK/restart-c2.err")" = 2 ] && [ "$(grep -c 'site 2: round 1 pushed' "$WORK/restart-c2.err")" = 1 ] \
  && pass "restart: site 2 joined again and pushed round 1 once" || { cat "$WORK/restart-c2.err"; fail "restart: site 2's log"; }
grep -q "refused with status" "$WORK/restart-srv.err" && { cat "$WORK/restart-srv.err"; fail "restart: a push was refused"; } \
  || pass "restart: no call refused (no stale push)"
cmp -s "$WORK/sim/adapters.safetensors" "$WORK/restart-srv/adapters.safetensors" \
  && pass "restart: global model bit-identical to fedmm sim" || fail "restart: global model differs from fedmm sim's"
finish
