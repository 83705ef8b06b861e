#!/usr/bin/env bash
# The default job (`strata train`, no flags) in fp32 and in bf16 autocast, for several seeds, one after
# the other on this machine: wall time and label-likelihood accuracy. Writes a table to stdout.
#   bash benchmarks/bench_precision_cpu.sh [seeds...]      (default seeds: 42 1 2; about 2 minutes per seed)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("$@")
[ $# -eq 0 ] && seeds=(42 1 2)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| seed | precision | accuracy | macro-F1 | wall s |"
echo "|---|---|---|---|---|"
for seed in "${seeds[@]}"; do
  for precision in fp32 bf16; do
    start=$(date +%s.%N)
    HF_HUB_OFFLINE=1 .venv/bin/strata train --precision "$precision" --seed "$seed" \
      --runs_dir "$work/$precision-$seed" > "$work/log" 2>&1
    end=$(date +%s.%N)
    final=$(grep "final evaluation" "$work/log" | tail -1)
    acc=$(grep -o "eval_accuracy=[0-9.]*" <<<"$final" | cut -d= -f2)
    f1=$(grep -o "eval_macro_f1=[0-9.]*" <<<"$final" | cut -d= -f2)
    printf "| %s | %s | %s | %s | %.1f |\n" "$seed" "$precision" "$acc" "$f1" "$(echo "$end - $start" | bc)"
  done
done
