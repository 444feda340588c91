#!/usr/bin/env bash
# SCAFFOLD over the network: each site keeps its control variate c_i in its --out directory.
#  1. keep: site 2 is killed (SIGKILL) once the server has aggregated its round-1 update (it then holds a c_i that
#     is not zero) and started again with the same --out: it reads c_i back, and the run ends bit-identical to
#     `fedmm sim`.
#  2. lost: the same, but its file is deleted before the restart: the site says that its c_i is lost and starts
#     again from zero; the run completes (everyone exits 0) and no longer equals sim's.
# (Server + clients against sim without faults: test_server_clients.sh; with encodings: test_net_encoding.sh; a
# killed server resumed: test_server_resume.sh.) Every process runs under `timeout`; waits poll log lines.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
# 20 local steps: the kill (0.05 s after the log line) lands while site 2 pulls or trains round 2
base=(--config experiments/quickstart.yaml --set fl.strategy=scaffold --set fl.rounds=3 --set fl.local_steps=20
      --set fl.sites=3 --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
T=300
AGG="site 2: round 1 aggregated: SCAFFOLD's c_i updated"

"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; finish; }

# restart_site_2 NAME [rm]: the run with site 2 killed once its round-1 update was aggregated, then started again
# (after deleting its control variate's file with `rm`).
restart_site_2() {
  local name=$1 what=${2:-} rc=0 f
  start_server "$name"
  pids=() ks=()
  for k in 0 1; do start_client "$name" $k; pids+=($cpid); done
  start_client "$name" 2 --set log_level=info
  wait_for has_or_gone "$WORK/$name-c2.err" "$AGG" $cpid || true
  grep -q "$AGG" "$WORK/$name-c2.err" || { cat "$WORK/$name-c2.err"; fail "$name: site 2 never kept a c_i"; finish; }
  kill -9 "$(child_of $cpid)"
  { wait $cpid; } 2>/dev/null || rc=$?
  f="$WORK/$name-c2/site-2-scaffold.safetensors"
  [ $rc -eq 137 ] && [ -s "$f" ] && pass "$name: site 2 killed (SIGKILL) after round 1, its c_i on file" \
    || { cat "$WORK/$name-c2.err"; fail "$name: site 2 not killed as planned (exit $rc), or no $f"; }
  [ "$what" = rm ] && rm "$f"
  start_client "$name" 2 --set log_level=info
  pids+=($cpid)
  wait_sites "$name"
}

# 1. c_i kept across the restart
restart_site_2 keep
grep -q "site 2: SCAFFOLD: control variate of run [0-9a-f]* read from .*site-2-scaffold.safetensors" \
  "$WORK/keep-c2.err" && pass "keep: the restarted site 2 read its c_i back" \
  || { cat "$WORK/keep-c2.err"; fail "keep: site 2 did not read its c_i back"; }
grep -q "is lost" "$WORK/keep-c2.err" && { cat "$WORK/keep-c2.err"; fail "keep: site 2 says its c_i is lost"; }
cmp -s "$WORK/sim/adapters.safetensors" "$WORK/keep-srv/adapters.safetensors" \
  && pass "keep: global model bit-identical to fedmm sim" || fail "keep: global model differs from fedmm sim's"
for k in 0 1 2; do
  [ -s "$WORK/keep-c$k/site-$k-scaffold.safetensors" ] || fail "keep: site $k has no control variate file"
done

# 2. c_i lost: the site says so and goes on from zero
restart_site_2 lost rm
grep -q "site 2: SCAFFOLD: this site's control variate c_i of run [0-9a-f]* is lost .*aggregated its update of round [12]" \
  "$WORK/lost-c2.err" && pass "lost: the restarted site 2 says its c_i is lost and starts from zero" \
  || { cat "$WORK/lost-c2.err"; fail "lost: no 'is lost' warning from site 2"; }
cmp -s "$WORK/sim/adapters.safetensors" "$WORK/lost-srv/adapters.safetensors" \
  && fail "lost: the run equals sim although site 2 lost its c_i" \
  || pass "lost: the run completes and no longer equals fedmm sim"
finish
