#!/usr/bin/env bash
# A site that stalls in the middle of its Push holds only its own call: the server serves calls concurrently.
# fedmm_test_net_stall opens site 0's round-1 Push (a valid header and one chunk) and sends nothing more.
#  1. net.call_timeout_s = 600 and the stalling process frozen (SIGSTOP): the real sites 0, 1 and 2 run every
#     round while the stalled call stays open (it is never cancelled; a server that served one call at a time
#     would hold every other site for those 600 s, longer than this test's limits); all exit 0 and the global
#     model is bit-identical to `fedmm sim`.
#  2. net.call_timeout_s = 2: sites 1 and 2 push round 1 while the stall is open; the server cancels the stall
#     (the staller sees status 1, CANCELLED) and its partial push leaves nothing behind: site 0 then pushes its
#     own update, accepted, and the run ends bit-identical to sim.
#  3. net.round_timeout_s = 0.1 s, fl.min_sites = 2: every Task carries the round's deadline (the client logs it).
#     Sites 0 and 1 finish training after it (20 steps take longer) while the round still needs them: they ask
#     and push. Site 2, held (SIGSTOP) while training until round 1 closed with the other two, asks first and does
#     not push its stale update. net.release_grace_s = 300 lets the server wait for every site to hear DONE.
# Every process runs under `timeout`; waits poll files and log lines, never fixed sleeps.
source "$(dirname "$0")/lib.sh"
needs_control_plane
STALL=${FEDMM_NET_STALL:-$(dirname "$FEDMM")/tests/fedmm_test_net_stall}
[ -x "$STALL" ] || { fail "no staller at $STALL (build the fedmm_test_net_stall target)"; finish; }
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=2 --set fl.local_steps=20 --set fl.sites=3
      --set fl.cross_k=3 --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
T=300

# start_staller NAME: site 0's stalled Push; sets stpid once it says the server took the call.
start_staller() {
  local name=$1
  "$STALL" "${base[@]}" --site 0 --server 127.0.0.1:$port >"$WORK/$name-stall.out" 2>"$WORK/$name-stall.err" &
  stpid=$!
  wait_for has_or_gone "$WORK/$name-stall.out" "stalled: site 0 round 1" $stpid || true
  grep -q "stalled: site 0 round 1" "$WORK/$name-stall.out" \
    && pass "$name: site 0's round-1 Push is open and stalled after its header and first chunk" \
    || { cat "$WORK/$name-stall.err"; fail "$name: the staller did not get its Push open"; finish; }
}
same_as_sim() {
  cmp -s "$WORK/sim/adapters.safetensors" "$WORK/$1-srv/adapters.safetensors" \
    && pass "$1: global model bit-identical to fedmm sim" || fail "$1: global model differs from fedmm sim's"
}

"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; }

# 1. a frozen site mid-Push, a call timeout longer than the test
start_server frozen --set net.call_timeout_s=600
start_staller frozen
kill -STOP $stpid && pass "frozen: the staller is stopped (SIGSTOP) with its Push open"
pids=() ks=()
for k in 0 1 2; do start_client frozen $k; pids+=($cpid); ks+=($k); done
wait_sites frozen
kill -0 $stpid 2>/dev/null && pass "frozen: the staller was still stopped with its call open when the run ended" \
  || fail "frozen: the staller is gone"
kill -KILL $stpid 2>/dev/null || true
wait $stpid 2>/dev/null || true
grep -q "cancelled: no progress" "$WORK/frozen-srv.err" \
  && { cat "$WORK/frozen-srv.err"; fail "frozen: a call was cancelled for lack of progress"; } \
  || pass "frozen: no call had to be cancelled: the stall held only itself"
[ "$(grep -c '"sites": 3' "$WORK/frozen-srv/metrics.jsonl" 2>/dev/null || true)" = 2 ] \
  && pass "frozen: metrics: 2 rounds of 3 sites" || fail "frozen: metrics: not 2 rounds of 3 sites"
same_as_sim frozen

# 2. the server cancels the stall after net.call_timeout_s; the partial push leaves nothing behind
start_server timeout --set net.call_timeout_s=2
start_staller timeout
pids=() ks=()
for k in 1 2; do start_client timeout $k --set log_level=info; pids+=($cpid); ks+=($k); done
wait_for has_or_gone "$WORK/timeout-stall.out" "stall ended" $stpid || true
rc=0; wait $stpid || rc=$?
grep -q "stall ended: status 1$" "$WORK/timeout-stall.out" && [ $rc -eq 0 ] \
  && pass "timeout: the server cancelled the stalled Push (the staller saw status 1)" \
  || { cat "$WORK/timeout-stall.out" "$WORK/timeout-stall.err"; fail "timeout: the stall did not end as cancelled"; }
grep -q "Push (site 0) cancelled: no progress for 2 s (net.call_timeout_s); its partial push is discarded" \
  "$WORK/timeout-srv.err" && pass "timeout: the server logged the cancellation" \
  || { cat "$WORK/timeout-srv.err"; fail "timeout: no cancellation in the server's log"; }
for k in 1 2; do
  wait_for has_or_gone "$WORK/timeout-c$k.err" "site $k: round 1 pushed" ${pids[$((k - 1))]} || true
done
grep -q "site 1: round 1 pushed" "$WORK/timeout-c1.err" && grep -q "site 2: round 1 pushed" "$WORK/timeout-c2.err" \
  && pass "timeout: sites 1 and 2 pushed round 1 while site 0 stalled" || fail "timeout: sites 1 and 2 did not push"
round1_closed "$WORK/timeout-srv/metrics.jsonl" && fail "timeout: round 1 closed without site 0" \
  || pass "timeout: round 1 still waits for site 0"
start_client timeout 0
pids+=($cpid) ks+=(0)
wait_sites timeout
grep -q "refused with status" "$WORK/timeout-srv.err" \
  && { cat "$WORK/timeout-srv.err"; fail "timeout: a call was refused (site 0's own push?)"; } \
  || pass "timeout: no call refused: site 0's own push was accepted"
same_as_sim timeout

# 3. the round's deadline reaches the sites
dl=(--set net.round_timeout_s=0.1 --set fl.min_sites=2 --set net.release_grace_s=300)
start_server deadline "${dl[@]}"
pids=() ks=()
for k in 0 1; do start_client deadline $k "${dl[@]}"; pids+=($cpid); ks+=($k); done
start_client deadline 2 "${dl[@]}" --set log_level=info
pids+=($cpid) ks+=(2)
wait_for has_or_gone "$WORK/deadline-c2.err" "site 2: round 1: training" $cpid || true
child=$(child_of $cpid)
if [ -n "$child" ] && kill -STOP "$child"; then
  wait_for round1_closed "$WORK/deadline-srv/metrics.jsonl" || fail "deadline: round 1 never closed without site 2"
  kill -CONT "$child"
  pass "deadline: site 2 held while round 1 closed at its deadline"
else
  cat "$WORK/deadline-c2.err"; fail "deadline: site 2 could not be held"
fi
wait_sites deadline
grep -q "site 2: round 1: training; the round's deadline is in -\?[0-9.]* s" "$WORK/deadline-c2.err" \
  && pass "deadline: the task told site 2 the round's deadline" \
  || { cat "$WORK/deadline-c2.err"; fail "deadline: no deadline in site 2's log"; }
grep -q "site 2: round 1: [0-9.]* s past its deadline, closed without this site: the update is not pushed" \
  "$WORK/deadline-c2.err" && pass "deadline: site 2 did not push its late round-1 update" \
  || { cat "$WORK/deadline-c2.err"; fail "deadline: site 2 pushed (or did not ask) after the deadline"; }
grep -q "site [01]: round 1: [0-9.]* s past its deadline, still open: pushing" "$WORK/deadline-c0.err" \
  "$WORK/deadline-c1.err" && pass "deadline: a site late while its round still waited for it pushed" \
  || { cat "$WORK/deadline-c0.err" "$WORK/deadline-c1.err"; fail "deadline: no late push into an open round"; }
grep -q "round 1 closed at its 0.1 s deadline with 2 of 3 sites" "$WORK/deadline-srv.err" \
  && pass "deadline: round 1 closed at its deadline with sites 0 and 1" \
  || { cat "$WORK/deadline-srv.err"; fail "deadline: round 1 did not close at its deadline with 2 sites"; }
finish
