#!/usr/bin/env bash
# train.precision: fp32 (the default, the CPU's only arithmetic) or bf16 (CUDA only). On the CPU bf16 is refused
# with a one-line reason that says what to do, as is an unknown precision and bf16 with LoRA dropout; nothing is
# written by a refused run; fp32 spelled out trains as the default does.
source "$(dirname "$0")/lib.sh"
expect_fail() { # expect_fail "what" "expected text" args...
  local what=$1 want=$2; shift 2
  if "$FEDMM" "$@" >"$WORK/out" 2>"$WORK/err"; then fail "$what: exited 0"; return; fi
  if grep -q -- "$want" "$WORK/err"; then pass "$what: $(grep -- "$want" "$WORK/err" | head -1)"; else fail "$what: got '$(cat "$WORK/err")'"; fi
}
cfg=experiments/train-tiny-lora.yaml
small=(--set train.steps=3 --set train.batch_size=8 --set train.eval_size=20 --set data.train_size=200
       --set data.test_size=20 --set log_level=warn)
expect_fail "bf16 on the cpu" "train.precision bf16 runs on CUDA only" \
  train --config $cfg --out "$WORK/a" --device cpu --set train.precision=bf16 "${small[@]}"
expect_fail "unknown precision" "train.precision: 'fp16' is not fp32 or bf16" \
  train --config $cfg --out "$WORK/a" --device cpu --set train.precision=fp16 "${small[@]}"
expect_fail "bf16 with lora dropout" "does not support LoRA dropout" \
  train --config $cfg --out "$WORK/a" --device cpu --set train.precision=bf16 --set model.lora_dropout=0.1 "${small[@]}"
expect_fail "bf16 sim on the cpu" "train.precision bf16 runs on CUDA only" \
  sim --config experiments/quickstart.yaml --out "$WORK/a" --device cpu --set train.precision=bf16 \
  --set fl.rounds=1 --set fl.local_steps=1 --set data.train_size=200 --set fl.eval_size=20 --set data.test_size=20
[ ! -e "$WORK/a/model.safetensors" ] && pass "nothing written by refused runs" || fail "a refused run wrote a model"
"$FEDMM" train --config $cfg --out "$WORK/d" --device cpu "${small[@]}" >/dev/null 2>&1 || fail "default run failed"
"$FEDMM" train --config $cfg --out "$WORK/f" --device cpu --set train.precision=fp32 "${small[@]}" >/dev/null 2>&1 \
  || fail "fp32 run failed"
cmp -s "$WORK/d/adapters.safetensors" "$WORK/f/adapters.safetensors" && pass "train.precision fp32 is the default" \
  || fail "train.precision fp32 differs from the default"
finish
