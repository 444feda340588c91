#!/usr/bin/env bash
# Robust aggregation under attack: 2 of 10 sites send their update sign-flipped and ×10 every round. FedAvg
# collapses to chance; coordinate median and trimmed mean keep most of the attack-free run's retrieval.
# Retrieval is judged by R@10 (mean of both directions; chance on 500 test pairs is 0.02), which is steadier
# than R@1 for runs this short.
source "$(dirname "$0")/lib.sh"
common=(--config experiments/quickstart.yaml --set fl.rounds=15 --set fl.sites_per_round=10 --set fl.local_steps=8
        --set fl.eval_every=0 --set fl.eval_size=500 --set data.train_size=8000 --set log_level=warn)
run() { # name args...  → sets r10 and zs
  local name=$1; shift
  "$FEDMM" sim "${common[@]}" "$@" --out "$WORK/$name" >"$WORK/$name.log" 2>&1 || { tail -3 "$WORK/$name.log"; fail "$name failed"; }
  local l; l=$(grep '"i2t_r10"' "$WORK/$name/metrics.jsonl" | tail -1)
  r10=$(awk -v a="$(echo "$l" | json_num i2t_r10)" -v b="$(echo "$l" | json_num t2i_r10)" 'BEGIN { print (a + b) / 2 }')
  zs=$(echo "$l" | json_num zs_acc)
  echo "$name: mean R@10 $r10, zero-shot $zs"
}
run clean; clean=$r10
run fedavg_attacked --set fl.malicious_sites=2; fedavg=$r10; fedavg_zs=$zs
run median_attacked --set fl.malicious_sites=2 --set fl.strategy=median; median=$r10; median_zs=$zs
run trimmed_attacked --set fl.malicious_sites=2 --set fl.strategy=trimmed_mean --set fl.trim_ratio=0.2; trimmed=$r10
ge "$clean" 0.05 && pass "attack-free FedAvg learns (R@10 $clean, chance 0.02)" || fail "attack-free run too weak ($clean)"
ge 0.03 "$fedavg" && pass "attacked FedAvg collapses to chance (R@10 $fedavg)" || fail "attacked FedAvg did not collapse ($fedavg)"
keep=$(awk -v c="$clean" 'BEGIN { print 0.6 * c }')
ge "$median" "$keep" && pass "median keeps >= 60% of the clean R@10 ($median vs $clean)" \
  || fail "median under attack: R@10 $median vs clean $clean"
ge "$trimmed" "$keep" && pass "trimmed mean keeps >= 60% of the clean R@10 ($trimmed vs $clean)" \
  || fail "trimmed mean under attack: R@10 $trimmed vs clean $clean"
ge "$median_zs" "$fedavg_zs" && pass "median zero-shot $median_zs >= attacked FedAvg's $fedavg_zs" \
  || fail "median zero-shot $median_zs < attacked FedAvg's $fedavg_zs"
finish
