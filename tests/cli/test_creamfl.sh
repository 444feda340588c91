#!/usr/bin/env bash
# fedmm sim with fl.algorithm: creamfl: the same seed gives a bit-identical server; κ = 0 is exactly the
# public-only server (the baseline CreamFL is measured against); a run killed with SIGKILL and continued with
# --resume ends bit-identical to an unbroken one (server model and every logged number but the timings); sites
# from each FedMLLM scenario (fl.scenario) run and log the metric keys of every fedmm run; a bench suite with the
# creamfl method fills every cell; bad keys get a clear error.
source "$(dirname "$0")/lib.sh"
small=(--config experiments/creamfl-quick.yaml --set log_level=warn --set data.train_size=600
       --set data.image_only_size=300 --set data.text_only_size=300 --set data.public_size=64 --set data.test_size=64
       --set fl.creamfl.public_size=64 --set fl.eval_size=64 --set fl.eval_every=2 --set train.batch_size=16
       --set fl.local_steps=2 --set fl.creamfl.init_local_steps=1 --set fl.creamfl.server_init_steps=1
       --set fl.creamfl.server_steps=2 --set fl.creamfl.distill_steps=2 --set fl.sites_per_round=2)
run() { # run NAME ARGS...: fedmm sim into $WORK/NAME, log in $WORK/NAME.log
  local name=$1
  shift
  "$FEDMM" sim "${small[@]}" "$@" --out "$WORK/$name" >"$WORK/$name.log" 2>&1
}
no_wall() { sed -e 's/"wall_s": [-0-9.eE+]*,//' -e 's/"ensemble_s": [-0-9.eE+]*,//' "$1"; }

run a --set fl.rounds=4 || { tail -5 "$WORK/a.log"; fail "creamfl sim a failed"; finish; }
run b --set fl.rounds=4 || { tail -5 "$WORK/b.log"; fail "creamfl sim b failed"; finish; }
tail -1 "$WORK/a.log"
cmp -s "$WORK/a/model.safetensors" "$WORK/b/model.safetensors" && pass "same seed, bit-identical server" \
  || fail "two runs with the same seed differ"
last=$(grep '"i2t_r1": [0-9]' "$WORK/a/metrics.jsonl" | tail -1)
for key in round loss i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10 zs_acc wall_s bytes_up bytes_down server_loss \
  distill_loss inter intra align_i align_t align_server; do
  [ -n "$(echo "$last" | json_num $key)" ] || fail "metrics lack $key"
done
[ "$(echo "$last" | json_num round)" = 4 ] && pass "metrics carry every key, last round 4" || fail "last round wrong"
[ -L "$WORK/a/latest" ] && [ -s "$WORK/a/round-4/server.safetensors" ] && [ -s "$WORK/a/round-4/site-3.safetensors" ] \
  && [ ! -e "$WORK/a/round-3" ] && pass "checkpoint of the last round only" || fail "checkpoint layout: $(ls "$WORK/a")"

# κ = 0: the sites' representations reach nothing, and the server is exactly the public-only one (separate
# distillation, the default: no distillation steps; joint: the same CLIP steps as the baseline)
run k0 --set fl.rounds=2 --set fl.creamfl.kappa=0 || { tail -3 "$WORK/k0.log"; fail "kappa=0 failed"; }
run po --set fl.rounds=2 --set fl.creamfl.public_only=true \
  || { tail -3 "$WORK/po.log"; fail "public_only failed"; }
cmp -s "$WORK/k0/model.safetensors" "$WORK/po/model.safetensors" \
  && pass "kappa = 0 gives exactly the public-only server" || fail "kappa = 0 differs from the public-only server"
run j0 --set fl.rounds=2 --set fl.creamfl.kappa=0 --set fl.creamfl.distill=joint || fail "joint kappa=0 failed"
run jpo --set fl.rounds=2 --set fl.creamfl.public_only=true --set fl.creamfl.distill=joint || fail "joint po failed"
cmp -s "$WORK/j0/model.safetensors" "$WORK/jpo/model.safetensors" \
  && pass "joint distillation: kappa = 0 is exactly the public-only server too" || fail "joint: kappa = 0 differs"
run k3 --set fl.rounds=2 || true
cmp -s "$WORK/k3/model.safetensors" "$WORK/po/model.safetensors" \
  && fail "distillation changed nothing" || pass "kappa = 0.3 moves the server away from the public-only one"

# kill -9 once round 2 is checkpointed, then resume: the same server and the same log as run a (fedmm itself in
# the background, not a shell function: killing a subshell would leave its fedmm child running)
"$FEDMM" sim "${small[@]}" --set fl.rounds=4 --out "$WORK/k" >"$WORK/k.log" 2>&1 &
pid=$!
for _ in $(seq 1 900); do
  r=$(readlink "$WORK/k/latest" 2>/dev/null || true)
  [ -n "$r" ] && [ "${r#round-}" -ge 2 ] && break
  sleep 0.05
done
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
kill -0 $pid 2>/dev/null && fail "the killed run is still alive"
echo "killed at $(readlink "$WORK/k/latest")"
[ -e "$WORK/k/model.safetensors" ] && echo "note: the run finished before the kill"
"$FEDMM" sim "${small[@]}" --set fl.rounds=4 --out "$WORK/k" --resume >"$WORK/k2.log" 2>&1 \
  || { tail -3 "$WORK/k2.log"; fail "resume failed"; }
cmp -s "$WORK/a/model.safetensors" "$WORK/k/model.safetensors" && pass "killed + resumed server is bit-identical" \
  || fail "resumed server differs from the unbroken run"
cmp -s <(no_wall "$WORK/a/metrics.jsonl") <(no_wall "$WORK/k/metrics.jsonl") \
  && pass "killed + resumed metrics.jsonl equals the unbroken one (timings aside)" || fail "resumed metrics differ"
"$FEDMM" sim "${small[@]}" --set fl.rounds=4 --out "$WORK/k" --resume >"$WORK/k3.log" 2>&1 \
  && grep -q "sim done (creamfl): 4 rounds" "$WORK/k3.log" && pass "resuming a finished run only evaluates" \
  || fail "resuming a finished run: $(tail -1 "$WORK/k3.log")"
cp "$WORK/k/round-4/server.safetensors" "$WORK/good.safetensors"
head -c 300 "$WORK/good.safetensors" >"$WORK/k/round-4/server.safetensors"
if "$FEDMM" sim "${small[@]}" --set fl.rounds=5 --out "$WORK/k" --resume >"$WORK/bad.log" 2>&1; then
  fail "resume from a truncated checkpoint succeeded"
else
  pass "truncated checkpoint refused: $(grep -m1 'fedmm sim' "$WORK/bad.log")"
fi

# sites from the FedMLLM scenarios (fl.sites + fl.scenario instead of fl.creamfl.<kind>.count)
cat >"$WORK/scen.yaml" <<EOF
log_level: warn
model: {preset: clip-tiny, full_finetune: true}
data: {dataset: synth, train_size: 600, public_size: 64, test_size: 64}
fl:
  algorithm: creamfl
  sites: 6
  sites_per_round: 2
  rounds: 2
  local_steps: 2
  eval_size: 64
  creamfl: {public_size: 64, server_steps: 2, distill_steps: 2}
train: {batch_size: 16, lr: 1.0e-3}
EOF
for s in aligned-a0.5 missing-0.5 cross-3 hybrid-0.3; do
  "$FEDMM" sim --config "$WORK/scen.yaml" --set fl.scenario=$s --out "$WORK/s-$s" >"$WORK/s-$s.log" 2>&1 \
    || { tail -3 "$WORK/s-$s.log"; fail "scenario $s failed"; continue; }
  l=$(grep '"i2t_r1": [0-9]' "$WORK/s-$s/metrics.jsonl" | tail -1)
  [ -n "$(echo "$l" | json_num t2i_r10)" ] && [ -n "$(echo "$l" | json_num zs_acc)" ] \
    && pass "scenario $s: $(grep -o 'sites paired.*' "$WORK/s-$s.log")" || fail "scenario $s: no metrics"
done
grep -q "sites paired 0 image 3 text 3" "$WORK/s-cross-3.log" && pass "cross-3: 3 image-only + 3 text-only sites" \
  || fail "cross-3 site kinds: $(grep -o 'sites paired.*' "$WORK/s-cross-3.log")"

# a bench suite with the creamfl method: one cell per scenario, every cell with metrics
cat >"$WORK/suite.yaml" <<EOF
description: creamfl cells of the fedmllm settings
seeds: [1]
settings: [aligned-a0.5, missing-0.5, cross-5, hybrid-0.3]
methods: [creamfl]
base:
  log_level: warn
  model: {preset: clip-tiny, lora_rank: 8, lora_alpha: 8, train_projections: true}
  data: {dataset: synth, train_size: 600, test_size: 64, public_size: 64}
  fl: {sites: 10, sites_per_round: 2, rounds: 2, local_steps: 2, eval_every: 1, eval_size: 64}
  train: {batch_size: 16, lr: 3.0e-3, weight_decay: 0.0}
method:
  creamfl:
    label: CreamFL
    set: {fl.algorithm: creamfl, fl.creamfl.public_size: 64, fl.creamfl.server_steps: 2, fl.creamfl.distill_steps: 2}
EOF
"$FEDMM" bench --suite "$WORK/suite.yaml" --out "$WORK/bench" --jobs 1 >"$WORK/bench.log" 2>&1 \
  && grep -q ": 4 ran, 0 done earlier, 0 skipped" "$WORK/bench.log" \
  && [ "$(grep -c ',creamfl,CreamFL,ok,' "$WORK/bench/results.csv")" = 4 ] \
  && pass "bench: 4 creamfl cells ran with metrics" || { tail -5 "$WORK/bench.log"; fail "bench creamfl cells"; }

# bad input: a clear refusal
"$FEDMM" sim "${small[@]}" --set fl.creamfl.rounds=3 --out "$WORK/x" >"$WORK/x.log" 2>&1 \
  && fail "fl.creamfl.rounds accepted" || { grep -q "is now fl.rounds" "$WORK/x.log" && pass "moved key named"; } \
  || fail "moved key: $(tail -1 "$WORK/x.log")"
"$FEDMM" sim "${small[@]}" --set fl.scenario=cross-3 --out "$WORK/y" >"$WORK/y.log" 2>&1 \
  && fail "groups and scenario together accepted" \
  || { grep -q "both given" "$WORK/y.log" && pass "groups + scenario refused"; } \
  || fail "groups + scenario: $(tail -1 "$WORK/y.log")"
"$FEDMM" sim "${small[@]}" --set fl.strategy=fedprox --out "$WORK/z" >"$WORK/z.log" 2>&1 \
  && fail "fl.strategy accepted under creamfl" || pass "fl.strategy refused: $(grep -m1 'fedmm sim' "$WORK/z.log")"
finish
