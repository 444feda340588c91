#!/usr/bin/env bash
# The round deadline (net.round_timeout_s, fl.min_sites): 3 sites, all sampled every round; site 2 joins and
# dies before it ever pushes (its config differs, so it exits at its first task). The server closes each round
# at the deadline with sites 0 and 1 and the run finishes; with fl.min_sites = 3 it keeps waiting and says why.
# Every process runs under `timeout`.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=2 --set fl.local_steps=2 --set fl.sites=3
      --set fl.cross_k=3 --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
T=90

# start_server NAME ARGS...: the server in the background; sets spid and port.
start_server() {
  local name=$1; shift
  timeout $T "$FEDMM" server "${base[@]}" "$@" --listen 127.0.0.1:0 --out "$WORK/$name-srv" \
    >"$WORK/$name-srv.out" 2>"$WORK/$name-srv.err" &
  spid=$! port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/$name-srv.out" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] && pass "$name: server listening on 127.0.0.1:$port" \
    || { cat "$WORK/$name-srv.err"; fail "$name: server did not start"; }
}

# site 2 first: it joins, is tasked with round 1 and dies before pushing
dying_site() {
  local name=$1 rc=0
  timeout 60 "$FEDMM" client "${base[@]}" --set fl.local_steps=3 --site 2 --server 127.0.0.1:$port \
    >"$WORK/$name-c2.out" 2>"$WORK/$name-c2.err" || rc=$?
  [ $rc -ne 0 ] && grep -q "differs from this config" "$WORK/$name-c2.err" \
    && pass "$name: site 2 joined and died before pushing (exit $rc)" || { cat "$WORK/$name-c2.err"; fail "$name: site 2: exit $rc"; }
}

# 1. deadline 1.5 s, min_sites 2: both rounds close with sites 0 and 1
start_server deadline --set net.round_timeout_s=1.5 --set fl.min_sites=2
dying_site deadline
pids=()
for k in 0 1; do
  timeout $T "$FEDMM" client "${base[@]}" --site $k --server 127.0.0.1:$port \
    >"$WORK/deadline-c$k.out" 2>"$WORK/deadline-c$k.err" &
  pids+=($!)
done
for k in 0 1; do
  rc=0; wait ${pids[$k]} || rc=$?
  [ $rc -eq 0 ] && pass "deadline: client $k exited 0" || { tail -5 "$WORK/deadline-c$k.err"; fail "deadline: client $k exited $rc"; }
done
rc=0; wait $spid || rc=$?
[ $rc -eq 0 ] && pass "deadline: server exited 0" || { tail -5 "$WORK/deadline-srv.err"; fail "deadline: server exited $rc"; }
[ "$(grep -c '"round"' "$WORK/deadline-srv/metrics.jsonl" 2>/dev/null || true)" = 2 ] \
  && pass "deadline: server metrics: 2 rounds" || fail "deadline: server metrics: not 2 rounds"
[ "$(grep -c 'closed at its 1.5 s deadline with 2 of 3 sites' "$WORK/deadline-srv.err")" = 2 ] \
  && pass "deadline: both rounds closed at the deadline with 2 of 3 sites" \
  || { cat "$WORK/deadline-srv.err"; fail "deadline: the log does not show 2 rounds closed at the deadline"; }
[ -s "$WORK/deadline-srv/adapters.safetensors" ] && pass "deadline: global model written" \
  || fail "deadline: no global model"

# 2. min_sites 3: the deadline passes with 2 pushes; the server keeps waiting (and logs it) instead of closing
start_server short --set net.round_timeout_s=1 --set fl.min_sites=3
dying_site short
pids=()
for k in 0 1; do
  timeout 8 "$FEDMM" client "${base[@]}" --site $k --server 127.0.0.1:$port \
    >"$WORK/short-c$k.out" 2>"$WORK/short-c$k.err" &
  pids+=($!)
done
for k in 0 1; do wait ${pids[$k]} || true; done
grep -q "passed its 1.0 s deadline with [0-2] of 3 pushes; waiting for fl.min_sites = 3" "$WORK/short-srv.err" \
  && pass "short: fewer than fl.min_sites pushes: the server logs it and keeps waiting" \
  || { cat "$WORK/short-srv.err"; fail "short: no 'waiting for fl.min_sites' line"; }
kill -0 $spid 2>/dev/null && pass "short: server still waiting for round 1" || fail "short: the server stopped"
grep -q '"round"' "$WORK/short-srv/metrics.jsonl" 2>/dev/null && fail "short: a round closed below fl.min_sites" \
  || pass "short: no round closed"
kill $spid 2>/dev/null || true
wait $spid 2>/dev/null || true

# 3. fl.min_sites above fl.sites_per_round is a config error (exit 2)
rc=0
timeout 60 "$FEDMM" server "${base[@]}" --set fl.min_sites=4 --listen 127.0.0.1:0 --out "$WORK/bad-srv" \
  >/dev/null 2>"$WORK/bad.err" || rc=$?
[ $rc -eq 2 ] && grep -q "fl.min_sites 4 exceeds fl.sites_per_round 3" "$WORK/bad.err" \
  && pass "fl.min_sites > fl.sites_per_round: exit 2" || { cat "$WORK/bad.err"; fail "min_sites 4: exit $rc"; }
finish
