#!/usr/bin/env bash
# Lossy tensor encodings over the wire (net.encoding, net.compress): fedmm server + 4 fedmm client processes on
# 127.0.0.1 with bf16 (then int8 + zstd) end with the same global model as `fedmm sim` with the same keys, bit
# for bit, because sim passes every broadcast and every update through the same encoding; the server's
# bytes_up / bytes_down (payload bytes) equal sim's; bf16 sends half the bytes of f32 and changes the result;
# bad values of the keys are refused before anything runs. SCAFFOLD's control variates travel in the same
# encoding (int8 + zstd), and the run still equals sim's. Every process runs under `timeout`.
source "$(dirname "$0")/lib.sh"
needs_control_plane
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
base=(--config experiments/quickstart.yaml --set fl.rounds=3 --set fl.local_steps=2 --set fl.sites=4
      --set fl.sites_per_round=3 --set fl.eval_size=100 --set data.train_size=2000 --set log_level=warn
      --threads 1)
T=180

# last KEY FILE: KEY of the last line of a metrics file
last() { tail -1 "$2" | json_num "$1"; }

# federate NAME [--set ...]: sim, then server + 4 clients with the same keys; compares models and bytes.
federate() {
  local name=$1; shift
  local common=("${base[@]}" "$@")
  "$FEDMM" sim "${common[@]}" --out "$WORK/$name-sim" >"$WORK/$name-sim.log" 2>&1 \
    || { cat "$WORK/$name-sim.log"; fail "$name: sim failed"; return; }
  timeout $T "$FEDMM" server "${common[@]}" --listen 127.0.0.1:0 --out "$WORK/$name-srv" \
    >"$WORK/$name-srv.out" 2>"$WORK/$name-srv.err" &
  local spid=$! port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/$name-srv.out" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$WORK/$name-srv.err"; fail "$name: server did not start"; return; }
  local pids=() k rc
  for k in 0 1 2 3; do
    timeout $T "$FEDMM" client "${common[@]}" --site $k --server 127.0.0.1:$port --out "$WORK/$name-c$k" \
      >"$WORK/$name-c$k.out" 2>"$WORK/$name-c$k.err" &
    pids+=($!)
  done
  local bad=0
  for k in 0 1 2 3; do
    rc=0; wait ${pids[$k]} || rc=$?
    [ $rc -eq 0 ] || { tail -5 "$WORK/$name-c$k.err"; bad=1; }
  done
  rc=0; wait $spid || rc=$?
  [ $rc -eq 0 ] || { tail -5 "$WORK/$name-srv.err"; bad=1; }
  [ $bad -eq 0 ] && pass "$name: server and 4 clients exited 0" || fail "$name: a process failed"
  cmp -s "$WORK/$name-sim/adapters.safetensors" "$WORK/$name-srv/adapters.safetensors" \
    && pass "$name: networked global model bit-identical to fedmm sim with the same encoding" \
    || fail "$name: networked global model differs from fedmm sim's"
  local su sd nu nd
  su=$(last bytes_up "$WORK/$name-sim/metrics.jsonl"); sd=$(last bytes_down "$WORK/$name-sim/metrics.jsonl")
  nu=$(last bytes_up "$WORK/$name-srv/metrics.jsonl"); nd=$(last bytes_down "$WORK/$name-srv/metrics.jsonl")
  [ -n "$su" ] && [ "$su" = "$nu" ] && [ "$sd" = "$nd" ] \
    && pass "$name: server counted the bytes sim counts (up $nu, down $nd)" \
    || fail "$name: bytes: sim up $su down $sd, server up $nu down $nd"
}

federate f32
federate bf16 --set net.encoding=bf16
federate int8-zstd --set net.encoding=int8 --set net.compress=zstd --set net.zstd_level=5
federate scaffold-int8-zstd --set fl.strategy=scaffold --set net.encoding=int8 --set net.compress=zstd

# the encoding matters: bf16 is not f32, and it sends half the payload
cmp -s "$WORK/f32-sim/adapters.safetensors" "$WORK/bf16-sim/adapters.safetensors" \
  && fail "bf16 gave the same model as f32" || pass "bf16 and f32 give different models"
f32_up=$(last bytes_up "$WORK/f32-sim/metrics.jsonl"); b16_up=$(last bytes_up "$WORK/bf16-sim/metrics.jsonl")
i8_up=$(last bytes_up "$WORK/int8-zstd-sim/metrics.jsonl")
awk -v a="$f32_up" -v b="$b16_up" 'BEGIN { exit !(a > 0 && b * 2 == a) }' \
  && pass "bf16 payload is half of f32's ($b16_up of $f32_up bytes up)" || fail "bytes up: f32 $f32_up, bf16 $b16_up"
awk -v a="$f32_up" -v b="$i8_up" 'BEGIN { exit !(b > 0 && b * 3.5 < a) }' \
  && pass "int8 + zstd payload is under 1/3.5 of f32's ($i8_up bytes up)" || fail "bytes up: int8+zstd $i8_up"

# bad values are refused before anything runs, by every command
for kv in net.encoding=fp8 net.compress=gzip net.zstd_level=40; do
  rc=0; "$FEDMM" sim "${base[@]}" --set "$kv" --out "$WORK/bad" >/dev/null 2>"$WORK/bad.err" || rc=$?
  [ $rc -eq 2 ] && grep -q "${kv%%=*}" "$WORK/bad.err" && pass "sim refuses $kv (exit 2)" \
    || { cat "$WORK/bad.err"; fail "sim with $kv: exit $rc"; }
done
rc=0
timeout 60 "$FEDMM" client "${base[@]}" --set net.encoding=int4 --site 0 --server 127.0.0.1:1 >/dev/null \
  2>"$WORK/badc.err" || rc=$?
[ $rc -eq 2 ] && pass "client refuses net.encoding=int4 (exit 2)" || { cat "$WORK/badc.err"; fail "client int4: exit $rc"; }
finish
