#!/usr/bin/env bash
# fedmm sim: the same seed gives a bit-identical global model; a run killed with SIGKILL mid-way and
# continued with --resume ends bit-identical to an uninterrupted one; metrics carry the federated keys.
source "$(dirname "$0")/lib.sh"
common=(--config experiments/quickstart.yaml --set fl.rounds=6 --set fl.local_steps=4 --set fl.eval_every=3
        --set fl.eval_size=200 --set data.train_size=4000 --set log_level=warn)
"$FEDMM" sim "${common[@]}" --out "$WORK/a" >"$WORK/a.log" 2>&1 || { cat "$WORK/a.log"; fail "sim a failed"; finish; }
"$FEDMM" sim "${common[@]}" --out "$WORK/b" >"$WORK/b.log" 2>&1 || { cat "$WORK/b.log"; fail "sim b failed"; finish; }
tail -1 "$WORK/a.log"
cmp -s "$WORK/a/adapters.safetensors" "$WORK/b/adapters.safetensors" && pass "same seed, bit-identical global model" \
  || fail "two runs with the same seed differ"
"$FEDMM" sim "${common[@]}" --set fl.seed=2 --out "$WORK/c" >/dev/null 2>&1
cmp -s "$WORK/a/adapters.safetensors" "$WORK/c/adapters.safetensors" && fail "another seed gave the same model" \
  || pass "another seed gives another model"
last=$(grep '"i2t_r1"' "$WORK/a/metrics.jsonl" | tail -1)
for key in round loss i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10 zs_acc wall_s bytes_up bytes_down; do
  [ -n "$(echo "$last" | json_num $key)" ] || fail "metrics lack $key"
done
[ "$(echo "$last" | json_num round)" = 6 ] && pass "metrics carry every key, last round 6" || fail "last round $(echo "$last" | json_num round)"
[ "$(wc -l <"$WORK/a/summary.csv")" = 3 ] && pass "summary.csv: header + 2 evaluations" || fail "summary.csv has $(wc -l <"$WORK/a/summary.csv") lines"

# kill -9 after round 2 or later, then resume
"$FEDMM" sim "${common[@]}" --out "$WORK/k" >"$WORK/k.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  r=$(readlink "$WORK/k/latest" 2>/dev/null || true)
  [ -n "$r" ] && [ "${r#round-}" -ge 2 ] && break
  sleep 0.1
done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null || true
echo "killed at $(readlink "$WORK/k/latest")"
if [ -e "$WORK/k/adapters.safetensors" ]; then
  echo "note: the run finished before the kill"
fi
"$FEDMM" sim "${common[@]}" --out "$WORK/k" --resume >"$WORK/k2.log" 2>&1 || { cat "$WORK/k2.log"; fail "resume failed"; }
cmp -s "$WORK/a/adapters.safetensors" "$WORK/k/adapters.safetensors" && pass "killed + resumed run is bit-identical" \
  || fail "resumed run differs from the uninterrupted one"
for s in fedprox scaffold fedadam median; do
  "$FEDMM" sim "${common[@]}" --set fl.rounds=2 --set fl.strategy=$s --out "$WORK/$s" >"$WORK/$s.log" 2>&1 \
    && pass "strategy $s runs" || { tail -3 "$WORK/$s.log"; fail "strategy $s failed"; }
done
"$FEDMM" sim "${common[@]}" --set fl.rounds=2 --set fl.scenario=cross-3 --out "$WORK/cross" >"$WORK/cross.log" 2>&1 \
  && pass "cross-modality scenario runs" || { tail -3 "$WORK/cross.log"; fail "cross-3 failed"; }
finish
