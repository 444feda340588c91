#!/usr/bin/env bash
# Over-selection (fl.over_select): 3 sites, 2 per round, over_select 0.5 tasks all 3 every round and a round
# closes once 2 pushed.
#  1. Only sites 0 and 1 run: the server never waits for site 2, and the run equals `fedmm sim` with the same
#     key (sim aggregates the first 2 tasked sites in site order), bit for bit.
#  2. All three run, site 2 held (SIGSTOP) while it trains round 1 until the round has closed: its push is
#     refused as stale, it carries on, and everyone exits 0.
# Every process runs under `timeout`; waits poll files and log lines, never fixed sleeps.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=3 --set fl.local_steps=20 --set fl.sites=3
      --set fl.sites_per_round=2 --set fl.over_select=0.5 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
T=300

training_or_gone() { grep -q "site 2: round 1: training" "$1" 2>/dev/null || ! kill -0 "$2" 2>/dev/null; }
# wait_all NAME: every process exits 0 (pids, spid), and the server logged 3 rounds of 2 sites
wait_all() {
  wait_sites "$1"
  [ "$(grep -c '"sites": 2' "$WORK/$1-srv/metrics.jsonl" 2>/dev/null || true)" = 3 ] \
    && pass "$1: metrics: 3 rounds of 2 sites" || fail "$1: metrics: not 3 rounds of 2 sites"
}

"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; }
"$FEDMM" sim "${base[@]}" --set fl.over_select=0 --out "$WORK/sim0" >"$WORK/sim0.log" 2>&1 \
  || { cat "$WORK/sim0.log"; fail "sim (no over-selection) failed"; }
cmp -s "$WORK/sim/adapters.safetensors" "$WORK/sim0/adapters.safetensors" \
  && fail "sim: over-selection changes nothing" || pass "sim: over-selection changes the rounds' sites"

# 1. sites 0 and 1 only
start_server pair
pids=() ks=()
for k in 0 1; do start_client pair $k; pids+=($cpid); done
wait_all pair
cmp -s "$WORK/sim/adapters.safetensors" "$WORK/pair-srv/adapters.safetensors" \
  && pass "pair: global model bit-identical to fedmm sim with fl.over_select" \
  || fail "pair: global model differs from fedmm sim's"

# 2. site 2 late in round 1
start_server late --set log_level=info
pids=() ks=()
for k in 0 1; do start_client late $k; pids+=($cpid); done
start_client late 2 --set log_level=info
pids+=($cpid)
wait_for training_or_gone "$WORK/late-c2.err" $cpid || true
child=$(child_of $cpid)
if [ -n "$child" ] && kill -STOP "$child"; then
  wait_for round1_closed "$WORK/late-srv/metrics.jsonl" || fail "late: round 1 never closed without site 2"
  kill -CONT "$child"
  pass "late: site 2 held while round 1 closed without it"
else
  cat "$WORK/late-c2.err"; fail "late: site 2 could not be held"
fi
wait_all late
grep -q "site 2: round 1 refused: .*stale round 1" "$WORK/late-c2.err" \
  && pass "late: site 2's round-1 push refused as stale; it carried on" \
  || { cat "$WORK/late-c2.err"; fail "late: no stale refusal for site 2"; }

# fl.over_select is checked like any key
rc=0
"$FEDMM" sim "${base[@]}" --set fl.over_select=-1 --out "$WORK/bad" >/dev/null 2>"$WORK/bad.err" || rc=$?
[ $rc -eq 2 ] && grep -q "fl.over_select" "$WORK/bad.err" && pass "fl.over_select = -1: exit 2" \
  || { cat "$WORK/bad.err"; fail "fl.over_select = -1: exit $rc"; }
finish
