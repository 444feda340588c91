#!/usr/bin/env bash
# fedmm bench --suite fedmllm --quick: every cell produces metrics; results.csv / results.md / index.md exist and
# are non-empty; the PNG plots exist and are non-empty when python3 + matplotlib are there (required under CI=true);
# a second run skips every cell (resumable); a cell that fails is reported and fails the bench; an optional method
# this build rejects is a visible skip, never a pass; bad suite files get a clear error.
source "$(dirname "$0")/lib.sh"
B="$WORK/b"
"$FEDMM" bench --suite fedmllm --quick --out "$B" >"$WORK/run1.log" 2>&1 \
  && pass "bench --quick finished" || { tail -20 "$WORK/run1.log"; fail "bench --quick failed"; finish; }
tail -2 "$WORK/run1.log"
n=$(sed -n 's/^bench fedmllm (quick): \([0-9]*\) cells.*/\1/p' "$WORK/run1.log")
[ -n "$n" ] && [ "$n" -gt 0 ] && pass "$n cells in the quick subset" || fail "no cell count in the output"

# every cell: a done marker and an evaluation with every metric key
bad=0
while IFS=, read -r setting method label seed status rest; do
  [ "$setting" = setting ] && continue
  dir="$B/cells/$setting/$method/seed-$seed"
  last=$(grep '"i2t_r1": [0-9]' "$dir/run/metrics.jsonl" 2>/dev/null | tail -1 || true)
  for key in i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10 zs_acc wall_s; do
    [ -n "$(echo "$last" | json_num $key)" ] || { echo "  $dir: no $key"; bad=$((bad + 1)); break; }
  done
  [ "$status" = ok ] && [ -e "$dir/done" ] || { echo "  $dir: status $status"; bad=$((bad + 1)); }
done <"$B/cells.csv"
rows=$(($(wc -l <"$B/cells.csv") - 1))
[ "$bad" = 0 ] && [ "$rows" = "$n" ] && pass "all $rows cells produced metrics" || fail "$bad cell(s) without metrics, $rows of $n rows"

for f in results.csv results.md index.md curves.csv; do
  [ -s "$B/$f" ] && pass "$f is there and non-empty" || fail "$f missing or empty"
done
[ "$(grep -c ',ok,' "$B/results.csv")" = "$(($(wc -l <"$B/results.csv") - 1))" ] \
  && pass "every results.csv row is ok" || fail "results.csv has rows that are not ok"
grep -q '| FedAvg | [0-9.]* ± [0-9.]* |' "$B/results.md" && pass "results.md has mean ± std rows" \
  || fail "results.md lacks a FedAvg row with mean ± std"
grep -q 'results.md' "$B/index.md" && grep -q 'machine:' "$B/index.md" && grep -q 'command:' "$B/index.md" \
  && pass "index.md links the tables and records machine and command" || fail "index.md incomplete"

# plots: need python3 + matplotlib; CI installs python3-matplotlib, so there they are required
if python3 -c 'import matplotlib' 2>/dev/null; then
  settings=$(tail -n +2 "$B/results.csv" | cut -d, -f2 | grep -v '^pooled$' | sort -u | wc -l)
  scenarios=$(tail -n +2 "$B/results.csv" | cut -d, -f1 | grep -v '^pooled$' | sort -u | wc -l)
  pngs=0
  for p in "$B"/plots/*.png; do
    [ -s "$p" ] && [ "$(head -c 4 "$p" | tail -c 3)" = PNG ] && pngs=$((pngs + 1))
  done
  [ "$pngs" = $((settings + scenarios)) ] && pass "$pngs non-empty PNG plots ($settings curves, $scenarios bar charts)" \
    || fail "$pngs PNG plots, expected $((settings + scenarios))"
  [ "$(grep -c '](plots/' "$B/index.md")" = "$pngs" ] && pass "index.md links every plot" || fail "index.md misses plots"
elif [ "${CI:-}" = true ]; then
  fail "matplotlib is not installed under CI (apt-get install python3-matplotlib): the plots are not checked"
else
  grep -q 'warning: no plots' "$WORK/run1.log" && pass "no matplotlib: a clear warning, tables still written" \
    || fail "no matplotlib and no warning"
  echo "SKIP: plot checks (python3 matplotlib not installed)"
fi

# resumable: a second run starts no cell
"$FEDMM" bench --suite fedmllm --quick --out "$B" >"$WORK/run2.log" 2>&1 || { tail -5 "$WORK/run2.log"; fail "second run failed"; }
grep -q ": 0 ran, $n done earlier, 0 skipped" "$WORK/run2.log" && ! grep -q ': done in' "$WORK/run2.log" \
  && pass "second run skips every cell" || { tail -3 "$WORK/run2.log"; fail "second run ran cells again"; }

# a cell whose configuration the child refuses fails the bench; an optional method the build rejects is a
# visible skip, never counted as passed
cat >"$WORK/mini.yaml" <<'EOF'
settings: [cross-3]
methods: [fedavg, broken, maybe]
seeds: [1]
base: {log_level: warn, data: {train_size: 400, test_size: 40}, fl: {rounds: 1, local_steps: 1, eval_size: 40},
       train: {batch_size: 8}}
method:
  fedavg: {set: {fl.strategy: fedavg}}
  broken: {set: {fl.strategy: fedprox, fl.prox_mu: -1}}
  maybe: {label: Maybe, optional: true, set: {fl.algorithm: not-in-this-build}}
EOF
rc=0
"$FEDMM" bench --suite "$WORK/mini.yaml" --out "$WORK/m" --no-plots >"$WORK/mini.log" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q 'cross-3 / broken / seed 1: FAILED' "$WORK/mini.log" \
  && pass "a failing cell is reported and the bench exits 1" || { cat "$WORK/mini.log"; fail "failing cell: exit $rc"; }
grep -q 'cross-3 / Maybe / seed 1: SKIPPED: not available in this build' "$WORK/mini.log" \
  && grep -q ',maybe,Maybe,skipped,0,1' "$WORK/m/results.csv" && grep -q 'skipped: not available' "$WORK/m/results.md" \
  && pass "an optional method the build rejects is a visible skip" || fail "optional method not reported as skipped"

# bad suite files: a clear, specific message and exit 2
check_bad() {
  local want="$1"
  rc=0
  "$FEDMM" bench --suite "$WORK/bad.yaml" --out "$WORK/bad" >"$WORK/bad.log" 2>&1 || rc=$?
  [ "$rc" = 2 ] && grep -q -- "$want" "$WORK/bad.log" && pass "bad suite: $want" \
    || { cat "$WORK/bad.log"; fail "bad suite ($want): exit $rc"; }
}
printf 'settings: [cross-3]\nmethods: [fedavg]\nseeds: [1]\nround: 3\nmethod:\n  fedavg: {set: {fl.strategy: fedavg}}\n' \
  >"$WORK/bad.yaml"
check_bad "unknown config key 'round'"
printf 'settings: [cross-4]\nmethods: [fedavg]\nseeds: [1]\nmethod:\n  fedavg: {set: {fl.strategy: fedavg}}\n' >"$WORK/bad.yaml"
check_bad "unknown setting 'cross-4'"
printf 'settings: [cross-3]\nmethods: [fedavgg]\nseeds: [1]\nmethod:\n  fedavg: {set: {fl.strategy: fedavg}}\n' >"$WORK/bad.yaml"
check_bad "unknown method 'fedavgg'"
printf 'settings: [cross-3]\nmethods: [x]\nseeds: [1]\nmethod:\n  x: {set: {fl.strategy: fedsgd}}\n' >"$WORK/bad.yaml"
check_bad "unknown strategy 'fedsgd'"
rc=0
"$FEDMM" bench --suite no-such-suite >"$WORK/bad.log" 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q 'no-such-suite.yaml does not exist' "$WORK/bad.log" && pass "unknown suite name" \
  || fail "unknown suite: exit $rc"
finish
