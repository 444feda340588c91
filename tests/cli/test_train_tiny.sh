#!/usr/bin/env bash
# The tiny model learns on the built-in dataset: R@1 both ways at least 10x chance on 1000 test pairs;
# `fedmm eval` reproduces the numbers from the saved model.
source "$(dirname "$0")/lib.sh"
out=$WORK/tiny
"$FEDMM" train --config experiments/train-tiny.yaml --out "$out" --set train.eval_every=0 >"$WORK/train.log" 2>&1 \
  || { cat "$WORK/train.log"; fail "fedmm train exited non-zero"; finish; }
tail -3 "$WORK/train.log"
last=$(grep '"i2t_r1"' "$out/metrics.jsonl" | tail -1)
pairs=$(echo "$last" | json_num pairs)
i2t=$(echo "$last" | json_num i2t_r1)
t2i=$(echo "$last" | json_num t2i_r1)
chance=$(awk -v n="$pairs" 'BEGIN { print 1 / n }')
echo "test pairs $pairs, chance R@1 $chance, i2t R@1 $i2t, t2i R@1 $t2i"
ge "$pairs" 500 && pass "evaluated on >= 500 pairs" || fail "only $pairs test pairs"
ge "$i2t" "$(awk -v c="$chance" 'BEGIN { print 10 * c }')" && pass "i2t R@1 >= 10x chance" || fail "i2t R@1 $i2t < 10x chance"
ge "$t2i" "$(awk -v c="$chance" 'BEGIN { print 10 * c }')" && pass "t2i R@1 >= 10x chance" || fail "t2i R@1 $t2i < 10x chance"
# loss went down: first logged loss > last logged loss
first_loss=$(grep '"loss"' "$out/metrics.jsonl" | head -1 | json_num loss)
last_loss=$(grep '"loss"' "$out/metrics.jsonl" | grep -v eval_loss | tail -1 | json_num loss)
ge "$first_loss" "$(awk -v l="$last_loss" 'BEGIN { print l * 1.5 }')" && pass "loss fell from $first_loss to $last_loss" \
  || fail "loss did not fall enough ($first_loss -> $last_loss)"
ev=$("$FEDMM" eval --model "$out/model.safetensors" --set eval.size=1000 2>"$WORK/eval.err") \
  || { cat "$WORK/eval.err"; fail "fedmm eval failed"; }
echo "eval: $ev"
[ "$(echo "$ev" | json_num i2t_r1)" = "$(printf '%.4f' "$i2t")" ] && pass "eval reproduces i2t R@1" \
  || fail "eval i2t_r1 $(echo "$ev" | json_num i2t_r1) != train's $i2t"
finish
