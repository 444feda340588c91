#!/usr/bin/env bash
# LoRA-only training (frozen random base, adapters + projections + logit scale trainable) measurably
# improves retrieval and zero-shot accuracy over the base model it started from.
source "$(dirname "$0")/lib.sh"
cfg=experiments/train-tiny-lora.yaml
# the untouched base: one step at learning rate 0
"$FEDMM" train --config $cfg --out "$WORK/base" --set train.steps=1 --set train.lr=0 --set train.warmup_steps=0 \
  --set train.eval_size=1000 >"$WORK/base.log" 2>&1 || { cat "$WORK/base.log"; fail "base run failed"; finish; }
"$FEDMM" train --config $cfg --out "$WORK/lora" --set train.eval_every=0 >"$WORK/lora.log" 2>&1 \
  || { cat "$WORK/lora.log"; fail "LoRA run failed"; finish; }
base=$(grep '"i2t_r1"' "$WORK/base/metrics.jsonl" | tail -1)
lora=$(grep '"i2t_r1"' "$WORK/lora/metrics.jsonl" | tail -1)
echo "base: $base"
echo "lora: $lora"
b_r1=$(awk -v a="$(echo "$base" | json_num i2t_r1)" -v b="$(echo "$base" | json_num t2i_r1)" 'BEGIN { print a + b }')
l_r1=$(awk -v a="$(echo "$lora" | json_num i2t_r1)" -v b="$(echo "$lora" | json_num t2i_r1)" 'BEGIN { print a + b }')
b_zs=$(echo "$base" | json_num zs_acc)
l_zs=$(echo "$lora" | json_num zs_acc)
# R@1 (both directions summed) at least 5x the base's (plus one chance level so a zero base still needs gains)
ge "$l_r1" "$(awk -v b="$b_r1" 'BEGIN { print 5 * (b + 0.001) }')" && pass "R@1 sum $b_r1 -> $l_r1" \
  || fail "R@1 sum only $b_r1 -> $l_r1"
ge "$l_zs" "$(awk -v b="$b_zs" 'BEGIN { print b + 0.08 }')" && pass "zero-shot accuracy $b_zs -> $l_zs" \
  || fail "zero-shot accuracy only $b_zs -> $l_zs"
# the base weights did not move: the merged model differs from the base, the adapters file is small
[ "$(stat -c %s "$WORK/lora/adapters.safetensors")" -lt "$(stat -c %s "$WORK/lora/model.safetensors")" ] \
  && pass "adapters ($(stat -c %s "$WORK/lora/adapters.safetensors") B) smaller than the model" || fail "adapters not smaller"
finish
