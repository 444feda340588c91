#!/usr/bin/env bash
# Weight averaging: train.ema_decay (fedmm train) and fl.ema_decay (fedmm sim). The average changes what a run
# evaluates and saves, never how it trains; it is checkpointed, so a resumed run ends bit-identical to a straight
# one; a resume with the other setting, a decay of 1, a local-only run with it and fedmm server with it are refused.
source "$(dirname "$0")/lib.sh"

# ---- fedmm train --------------------------------------------------------------------------------------------------
tr=(--config experiments/train-tiny-lora.yaml --set train.eval_every=0 --set train.eval_size=100 --set data.train_size=2000
    --set train.batch_size=16 --set train.warmup_steps=0 --set train.log_every=1 --set log_level=warn)
"$FEDMM" train "${tr[@]}" --set train.steps=12 --out "$WORK/t-plain" >/dev/null
"$FEDMM" train "${tr[@]}" --set train.steps=12 --set train.ema_decay=0.8 --out "$WORK/t-ema" >/dev/null
"$FEDMM" train "${tr[@]}" --set train.steps=12 --set train.ema_decay=0.8 --set train.stop_after=5 \
  --out "$WORK/t-resumed" >/dev/null
"$FEDMM" train "${tr[@]}" --set train.steps=12 --set train.ema_decay=0.8 --resume --out "$WORK/t-resumed" >/dev/null
# the training steps are the plain run's: the same loss at every step
if diff <(grep '"lr"' "$WORK/t-plain/metrics.jsonl" | json_num loss) \
        <(grep '"lr"' "$WORK/t-ema/metrics.jsonl" | json_num loss) >/dev/null; then
  pass "train: the average leaves the 12 training steps unchanged"
else
  fail "train: the losses of the run with an average differ from the plain run's"
fi
cmp -s "$WORK/t-plain/adapters.safetensors" "$WORK/t-ema/adapters.safetensors" \
  && fail "train: the saved adapters are the last weights, not the average" \
  || pass "train: the saved adapters are the average"
cmp -s "$WORK/t-ema/adapters.safetensors" "$WORK/t-resumed/adapters.safetensors" \
  && cmp -s "$WORK/t-ema/checkpoint.safetensors" "$WORK/t-resumed/checkpoint.safetensors" \
  && pass "train: stopped at 5 and resumed, bit-identical to the straight run (average included)" \
  || fail "train: the resumed run with an average differs from the straight one"
if "$FEDMM" train "${tr[@]}" --set train.steps=14 --resume --out "$WORK/t-resumed" >/dev/null 2>"$WORK/err"; then
  fail "train: resuming a run that keeps an average without train.ema_decay succeeded"
else
  grep -q "holds a weight average" "$WORK/err" && pass "train: resume without the average refused: $(head -1 "$WORK/err")" \
    || fail "train: unexpected message: $(head -1 "$WORK/err")"
fi
if "$FEDMM" train "${tr[@]}" --set train.steps=2 --set train.ema_decay=1 --out "$WORK/t-bad" >/dev/null 2>"$WORK/err"; then
  fail "train: train.ema_decay 1 accepted"
else
  pass "train: train.ema_decay 1 refused: $(head -1 "$WORK/err")"
fi

# ---- fedmm sim ----------------------------------------------------------------------------------------------------
sm=(--config experiments/quickstart.yaml --set data.train_size=2000 --set data.test_size=200 --set fl.eval_size=100
    --set fl.eval_every=0 --set fl.local_steps=2 --set train.batch_size=8 --set log_level=warn)
"$FEDMM" sim "${sm[@]}" --set fl.rounds=6 --out "$WORK/s-plain" >/dev/null 2>&1
"$FEDMM" sim "${sm[@]}" --set fl.rounds=6 --set fl.ema_decay=0.7 --out "$WORK/s-ema" >/dev/null 2>&1
"$FEDMM" sim "${sm[@]}" --set fl.rounds=3 --set fl.ema_decay=0.7 --out "$WORK/s-resumed" >/dev/null 2>&1
"$FEDMM" sim "${sm[@]}" --set fl.rounds=6 --set fl.ema_decay=0.7 --resume --out "$WORK/s-resumed" >/dev/null 2>&1
# summary.csv: round,loss,... — the sites' training losses are the plain run's
if diff <(cut -d, -f1,2 "$WORK/s-plain/summary.csv") <(cut -d, -f1,2 "$WORK/s-ema/summary.csv") >/dev/null; then
  pass "sim: the average leaves every round's training unchanged"
else
  fail "sim: the rounds' losses differ with an average"
fi
cmp -s "$WORK/s-plain/adapters.safetensors" "$WORK/s-ema/adapters.safetensors" \
  && fail "sim: the saved model is the last global model, not the average" \
  || pass "sim: the saved model is the average"
cmp -s "$WORK/s-ema/adapters.safetensors" "$WORK/s-resumed/adapters.safetensors" \
  && pass "sim: 3 rounds, resumed to 6: bit-identical to the straight run" \
  || fail "sim: the resumed run with an average differs from the straight one"
if "$FEDMM" sim "${sm[@]}" --set fl.rounds=7 --resume --out "$WORK/s-resumed" >/dev/null 2>"$WORK/err"; then
  fail "sim: resuming a run that keeps an average without fl.ema_decay succeeded"
else
  grep -q "holds a moving average" "$WORK/err" && pass "sim: resume without the average refused: $(tail -1 "$WORK/err")" \
    || fail "sim: unexpected message: $(tail -1 "$WORK/err")"
fi
if "$FEDMM" sim "${sm[@]}" --set fl.rounds=1 --set fl.strategy=local --set fl.ema_decay=0.5 --out "$WORK/s-local" \
    >/dev/null 2>"$WORK/err"; then
  fail "sim: a local-only run with fl.ema_decay accepted"
else
  pass "sim: local-only with an average refused: $(tail -1 "$WORK/err")"
fi
if "$FEDMM" server --help >/dev/null 2>&1; then
  if timeout 60 "$FEDMM" server "${sm[@]}" --set fl.ema_decay=0.5 --listen 127.0.0.1:0 --out "$WORK/srv" \
      >/dev/null 2>"$WORK/err"; then
    fail "server: fl.ema_decay accepted (the server keeps no average)"
  else
    grep -q "kept by fedmm sim only" "$WORK/err" && pass "server: fl.ema_decay refused: $(tail -1 "$WORK/err")" \
      || fail "server: unexpected message: $(tail -1 "$WORK/err")"
  fi
fi
finish
