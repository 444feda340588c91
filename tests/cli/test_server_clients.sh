#!/usr/bin/env bash
# fedmm server + 4 fedmm client processes on 127.0.0.1 run 3 FedAvg rounds and end with the same global model
# as `fedmm sim` with the same config and seed, bit for bit; a client with a wrong token is refused while the
# others carry on; everyone exits 0. Then the same with FedProx under cross-modality (sites train different
# blocks), and with SCAFFOLD (the server's c travels with the global vector, each site's Δc_i with its update; each
# site keeps c_i in its --out). Every process runs under `timeout`.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=3 --set fl.local_steps=2 --set fl.sites=4
      --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=2000 --set log_level=warn
      --threads 1)
T=180

# federate NAME [--set ...]: sim, then server + 4 clients, same config; compares the global models.
federate() {
  local name=$1; shift
  local common=("${base[@]}" "$@")
  "$FEDMM" sim "${common[@]}" --out "$WORK/$name-sim" >"$WORK/$name-sim.log" 2>&1 \
    || { cat "$WORK/$name-sim.log"; fail "$name: sim failed"; return; }
  # port 0: the server binds a free port and prints it
  timeout $T "$FEDMM" server "${common[@]}" --listen 127.0.0.1:0 --out "$WORK/$name-srv" \
    >"$WORK/$name-srv.out" 2>"$WORK/$name-srv.err" &
  local spid=$! port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/$name-srv.out" 2>/dev/null || true)  # the file may not exist yet
    [ -n "$port" ] && break
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$WORK/$name-srv.err"; fail "$name: server did not start"; return; }
  pass "$name: server listening on 127.0.0.1:$port"
  local rc=0
  if [ "$name" = fedavg ]; then
    # a site with a wrong token, refused while the server waits for the real ones
    timeout 60 "$FEDMM" client "${common[@]}" --site 1 --server 127.0.0.1:$port --token not-the-token \
      >"$WORK/bad.out" 2>"$WORK/bad.err" || rc=$?
    [ $rc -ne 0 ] && grep -q "status 16" "$WORK/bad.err" && pass "wrong token refused (UNAUTHENTICATED), exit $rc" \
      || { cat "$WORK/bad.err"; fail "wrong token: exit $rc"; }
  fi
  local pids=() k
  for k in 0 1 2 3; do
    timeout $T "$FEDMM" client "${common[@]}" --site $k --server 127.0.0.1:$port --out "$WORK/$name-c$k" \
      >"$WORK/$name-c$k.out" 2>"$WORK/$name-c$k.err" &
    pids+=($!)
  done
  for k in 0 1 2 3; do
    rc=0; wait ${pids[$k]} || rc=$?
    [ $rc -eq 0 ] && pass "$name: client $k exited 0" || { tail -5 "$WORK/$name-c$k.err"; fail "$name: client $k exited $rc"; }
  done
  rc=0; wait $spid || rc=$?
  [ $rc -eq 0 ] && pass "$name: server exited 0" || { tail -5 "$WORK/$name-srv.err"; fail "$name: server exited $rc"; }
  cmp -s "$WORK/$name-sim/adapters.safetensors" "$WORK/$name-srv/adapters.safetensors" \
    && pass "$name: server + 4 clients, 3 rounds: global model bit-identical to fedmm sim" \
    || fail "$name: networked global model differs from fedmm sim's"
  [ "$(grep -c '"round"' "$WORK/$name-srv/metrics.jsonl")" = 3 ] && pass "$name: server metrics: 3 rounds" \
    || fail "$name: server metrics: $(grep -c '"round"' "$WORK/$name-srv/metrics.jsonl") rounds"
}

federate fedavg
grep -q "bearer token" "$WORK/fedavg-srv.err" && pass "server logged the refused token" \
  || fail "server log does not mention the refused token"
# the comparison can fail: 2 simulated rounds are not 3
"$FEDMM" sim "${base[@]}" --set fl.rounds=2 --out "$WORK/sim2" >/dev/null 2>&1 || fail "sim (2 rounds) failed"
cmp -s "$WORK/sim2/adapters.safetensors" "$WORK/fedavg-srv/adapters.safetensors" \
  && fail "3 networked rounds equal 2 simulated rounds" || pass "differs from a 2-round sim"
# a site index outside fl.sites is refused (by the client itself, before it dials)
rc=0
timeout 60 "$FEDMM" client "${base[@]}" --site 7 --server 127.0.0.1:1 >/dev/null 2>"$WORK/c7.err" || rc=$?
[ $rc -eq 2 ] && pass "site 7 of 4 refused (exit 2)" || fail "site 7 of 4: exit $rc"

federate cross-fedprox --set fl.scenario=cross-3 --set fl.strategy=fedprox

federate scaffold --set fl.strategy=scaffold
cmp -s "$WORK/fedavg-sim/adapters.safetensors" "$WORK/scaffold-sim/adapters.safetensors" \
  && fail "scaffold: the same model as FedAvg" || pass "scaffold: a model other than FedAvg's"
n=0
for k in 0 1 2 3; do [ -s "$WORK/scaffold-c$k/site-$k-scaffold.safetensors" ] && n=$((n + 1)); done
[ $n = 4 ] && pass "scaffold: every site kept its control variate in its --out" \
  || fail "scaffold: $n of 4 sites have a control variate file"
[ ! -e "$WORK/fedavg-c0" ] && pass "fedavg: a site writes nothing" || fail "fedavg: site 0 wrote into its --out"
# the local-only baseline has no server
rc=0
timeout 60 "$FEDMM" server "${base[@]}" --set fl.strategy=local --listen 127.0.0.1:0 --out "$WORK/local" \
  >/dev/null 2>"$WORK/local.err" || rc=$?
[ $rc -eq 2 ] && grep -q "has no server: run it with fedmm sim" "$WORK/local.err" \
  && pass "fl.strategy local refused by the server (exit 2)" || { cat "$WORK/local.err"; fail "local: exit $rc"; }
finish
