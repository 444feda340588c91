#!/usr/bin/env bash
# A run stopped after N steps and resumed with --resume ends bit-identical to one that ran straight through.
source "$(dirname "$0")/lib.sh"
common=(--config experiments/train-tiny.yaml --set train.eval_every=0 --set train.eval_size=100
        --set data.train_size=2000 --set train.batch_size=16 --set train.warmup_steps=3 --set log_level=warn)
"$FEDMM" train "${common[@]}" --out "$WORK/straight" --set train.steps=12 >/dev/null
# the same 12-step schedule, stopped at 6 by a checkpoint-and-stop run, then resumed
"$FEDMM" train "${common[@]}" --out "$WORK/resumed" --set train.steps=12 --set train.stop_after=6 >/dev/null
"$FEDMM" train "${common[@]}" --out "$WORK/resumed" --set train.steps=12 --resume >/dev/null
if cmp -s "$WORK/straight/adapters.safetensors" "$WORK/resumed/adapters.safetensors"; then
  pass "resumed run is bit-identical to the straight run"
else
  fail "resumed run differs from the straight run"
fi
cmp -s "$WORK/straight/checkpoint.safetensors" "$WORK/resumed/checkpoint.safetensors" \
  && pass "optimizer state identical too" || fail "optimizer state differs"
# the same with LoRA dropout: the masks continue where the stopped run left them
lora=(--config experiments/train-tiny-lora.yaml --set model.lora_dropout=0.1 --set train.steps=8 --set train.eval_size=100
      --set data.train_size=2000 --set train.batch_size=16 --set log_level=warn)
"$FEDMM" train "${lora[@]}" --out "$WORK/drop-straight" >/dev/null
"$FEDMM" train "${lora[@]}" --out "$WORK/drop-resumed" --set train.stop_after=3 >/dev/null
"$FEDMM" train "${lora[@]}" --out "$WORK/drop-resumed" --resume >/dev/null
cmp -s "$WORK/drop-straight/adapters.safetensors" "$WORK/drop-resumed/adapters.safetensors" \
  && pass "with LoRA dropout too" || fail "LoRA dropout run differs after resume"
# a corrupt checkpoint is refused, and the good one beside it is not overwritten by the refusal
cp "$WORK/resumed/checkpoint.safetensors" "$WORK/good.safetensors"
head -c 200 "$WORK/good.safetensors" >"$WORK/resumed/checkpoint.safetensors"
if "$FEDMM" train "${common[@]}" --out "$WORK/resumed" --set train.steps=14 --resume >/dev/null 2>"$WORK/err"; then
  fail "resume from a truncated checkpoint succeeded"
else
  pass "truncated checkpoint refused: $(head -1 "$WORK/err")"
fi
finish
