#!/usr/bin/env bash
# Bad input gets a one-line reason and a non-zero exit, and nothing is trained or written.
source "$(dirname "$0")/lib.sh"
expect_fail() { # expect_fail "what" "expected text" args...
  local what=$1 want=$2; shift 2
  if "$FEDMM" "$@" >"$WORK/out" 2>"$WORK/err"; then fail "$what: exited 0"; return; fi
  if grep -q -- "$want" "$WORK/err"; then pass "$what: $(grep -- "$want" "$WORK/err" | head -1)"; else fail "$what: got '$(cat "$WORK/err")'"; fi
}
cfg=experiments/train-tiny.yaml
expect_fail "unknown key" "unknown config key 'train.lrr' (--set)" train --config $cfg --out "$WORK/a" --set train.lrr=1
expect_fail "bad number" "train.lr (--set): 'fast' is not a finite number" train --config $cfg --out "$WORK/a" --set train.lr=fast
expect_fail "out of range" "train.batch_size (--set): 1 is outside" train --config $cfg --out "$WORK/a" --set train.batch_size=1
expect_fail "unknown model key" "model.depth" train --config $cfg --out "$WORK/a" --set model.depth=3
expect_fail "unknown preset" "unknown model preset 'clip-huge'" train --config $cfg --out "$WORK/a" --set model.preset=clip-huge
expect_fail "missing config" "no-such.yaml" train --config "$WORK/no-such.yaml"
printf 'train:\n  steps: [1, 2\n' >"$WORK/broken.yaml"
expect_fail "broken yaml" "broken.yaml" train --config "$WORK/broken.yaml"
expect_fail "unknown option" "unknown option '--stepz'" train --config $cfg --stepz 3
expect_fail "unknown command" "unknown command 'trian'" trian
expect_fail "cuda without gpu" "no usable GPU" train --config $cfg --out "$WORK/a" --device cuda
[ ! -e "$WORK/a/model.safetensors" ] && pass "nothing written by refused runs" || fail "a refused run wrote a model"
head -c 100 /dev/urandom >"$WORK/garbage.safetensors"
cp $cfg "$WORK/config.yaml"
expect_fail "garbage model file" "garbage.safetensors" eval --model "$WORK/garbage.safetensors" --config $cfg
finish
