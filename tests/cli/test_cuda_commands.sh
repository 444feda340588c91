#!/usr/bin/env bash
# The commands end to end on the GPU (--device cuda): fedmm train (full fine-tuning fp32; LoRA in bf16), fedmm eval
# of the trained model on the GPU and on the CPU (the same recall), the first step's loss on the GPU against the CPU,
# and fedmm sim with FedAvg and with FedProx (its correction on the GPU). Skipped (77), saying so, where fedmm sees no
# usable GPU; with FEDMM_REQUIRE_GPU=1 that is a failure.
source "$(dirname "$0")/lib.sh"
gpus=$("$FEDMM" version | sed -n 's/^usable GPUs: \([0-9]*\).*/\1/p')
if [ "${gpus:-0}" = 0 ]; then
  reason=$("$FEDMM" version | sed -n 's/^usable GPUs: 0 //p')
  if [ -n "${FEDMM_REQUIRE_GPU:-}" ] && [ "${FEDMM_REQUIRE_GPU}" != 0 ]; then
    echo "FAILED: FEDMM_REQUIRE_GPU is set but fedmm sees no usable GPU $reason"
    exit 1
  fi
  echo "SKIPPED: cli.cuda_commands: no usable CUDA device $reason"
  exit 77
fi
tiny=(--set train.steps=60 --set train.eval_every=0 --set train.eval_size=200 --set data.train_size=4000
      --set data.test_size=200 --set log_level=warn)
# full fine-tuning, fp32, on the GPU; eval on both devices
"$FEDMM" train --config experiments/train-tiny.yaml --device cuda --out "$WORK/full" "${tiny[@]}" >"$WORK/full.log" 2>&1 \
  || { cat "$WORK/full.log"; fail "train --device cuda failed"; finish; }
tail -1 "$WORK/full.log"
first=$(grep '"loss"' "$WORK/full/metrics.jsonl" | grep -v eval_loss | head -1 | json_num loss)
last=$(grep '"loss"' "$WORK/full/metrics.jsonl" | grep -v eval_loss | tail -1 | json_num loss)
ge "$first" "$(awk -v l="$last" 'BEGIN { print l * 1.05 }')" && pass "cuda fp32: loss fell from $first to $last" \
  || fail "cuda fp32: loss did not fall ($first -> $last)"
eg=$("$FEDMM" eval --model "$WORK/full/model.safetensors" --device cuda --set eval.size=200 2>"$WORK/eg.err") \
  || { cat "$WORK/eg.err"; fail "eval --device cuda failed"; }
ec=$("$FEDMM" eval --model "$WORK/full/model.safetensors" --device cpu --set eval.size=200 2>"$WORK/ec.err") \
  || { cat "$WORK/ec.err"; fail "eval --device cpu failed"; }
echo "eval cuda: $eg"
echo "eval cpu:  $ec"
# the embeddings differ in their last bits, so a near-tie may swap one pair's rank: at most 1 of 200 pairs
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.0051) }'; }
close "$(echo "$eg" | json_num i2t_r1)" "$(echo "$ec" | json_num i2t_r1)" &&
  close "$(echo "$eg" | json_num t2i_r1)" "$(echo "$ec" | json_num t2i_r1)" \
  && pass "the GPU-trained model evaluates the same on the GPU and the CPU (R@1 within one pair of 200)" \
  || fail "eval differs between devices"
# the first step's loss: GPU against CPU (the same data order and initialisation)
one=(--set train.steps=1 --set train.log_every=1 --set train.eval_size=20 --set data.train_size=400
     --set data.test_size=20 --set log_level=warn)
"$FEDMM" train --config experiments/train-tiny-lora.yaml --device cuda --out "$WORK/g1" "${one[@]}" >/dev/null 2>&1
"$FEDMM" train --config experiments/train-tiny-lora.yaml --device cpu --out "$WORK/c1" "${one[@]}" >/dev/null 2>&1
lg=$(grep '"loss"' "$WORK/g1/metrics.jsonl" | grep -v eval_loss | head -1 | json_num loss)
lc=$(grep '"loss"' "$WORK/c1/metrics.jsonl" | grep -v eval_loss | head -1 | json_num loss)
awk -v a="$lg" -v b="$lc" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= 1e-5 * b) }' \
  && pass "first-step loss on the GPU $lg, on the CPU $lc" || fail "first-step loss: GPU $lg, CPU $lc"
# LoRA in bf16 mixed precision
"$FEDMM" train --config experiments/train-tiny-lora.yaml --device cuda --set train.precision=bf16 --out "$WORK/bf16" \
  "${tiny[@]}" >"$WORK/bf16.log" 2>&1 || { cat "$WORK/bf16.log"; fail "train bf16 failed"; finish; }
tail -1 "$WORK/bf16.log"
first=$(grep '"loss"' "$WORK/bf16/metrics.jsonl" | grep -v eval_loss | head -1 | json_num loss)
last=$(grep '"loss"' "$WORK/bf16/metrics.jsonl" | grep -v eval_loss | tail -1 | json_num loss)
ge "$first" "$(awk -v l="$last" 'BEGIN { print l * 1.05 }')" && pass "cuda bf16: loss fell from $first to $last" \
  || fail "cuda bf16: loss did not fall ($first -> $last)"
# the federation in one process, on the GPU
for strategy in fedavg fedprox; do
  "$FEDMM" sim --config experiments/quickstart.yaml --device cuda --out "$WORK/sim-$strategy" --set fl.rounds=2 \
    --set fl.local_steps=4 --set fl.eval_every=2 --set fl.eval_size=100 --set data.train_size=2000 \
    --set data.test_size=100 --set fl.strategy=$strategy --set log_level=warn >"$WORK/sim.log" 2>&1 \
    && pass "sim --device cuda, $strategy: $(tail -1 "$WORK/sim.log" | cut -c1-120)" \
    || { cat "$WORK/sim.log"; fail "sim --device cuda, $strategy failed"; }
done
finish
