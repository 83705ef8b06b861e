#!/usr/bin/env bash
# The checks that need a GPU, prepared for a lent GPU machine (about 6-8 minutes on one H200):
#   ddp    torchrun: gpt2-124m (12x768) in bf16, the baseline for fsdp; 2 processes where 2+ GPUs exist, else 1 (a
#          world of 1: --parallelism auto runs none, so this is DDP's launch and data path without its all-reduce)
#   fsdp   the same with --parallelism fsdp (FSDP2 fully_shard); with one GPU it is refused in one line (FSDP needs
#          2+ processes) and recorded "not available"
#   bf16   one process, bf16 autocast; its final/ is the pretrained model of qlora
#   flash  --use_flash_attention (flash_attention_2 where flash-attn is installed, else the recorded fallback)
#   qlora  --load_in_4bit --use_lora on bf16's final/ (bitsandbytes NF4)
#   ttt    benchmarks/bench_ttt.py: TTT-Linear-125M and GPT-2 of the same size, tokens/s at 2048 tokens, bf16
# Usage:
#   bash benchmarks/gpu_check.sh             run the steps; write benchmarks/results/gpu_check_<UTC date>.md
#   bash benchmarks/gpu_check.sh --dry-run   print the commands only (no GPU; tests/test_gpu_check.py reads them)
# A step that fails, or a flag this checkout lacks, is recorded "not available" with its last output line, and the
# script goes on. Every step runs offline: synthetic data, a tokenizer trained on it, weights from scratch.
# PYTHON picks the interpreter (default .venv/bin/python if present, else python3); STEP_TIMEOUT (s, default 150)
# bounds a step and BUDGET (s, default 540) the whole run: a step that would start past it is "not run";
# STEPS (default "ddp fsdp bf16 flash qlora ttt") picks the steps.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY=${PYTHON:-}
[ -z "$PY" ] && { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
BUDGET=${BUDGET:-540}
stamp=$(date -u +%Y-%m-%d_%H%M)
results=benchmarks/results/gpu_check_$stamp.md
if [ "$dry_run" = 1 ]; then work='$WORK'; else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# One gpt2-124m job: 40 steps of 8 x 256 tokens, bf16, no checkpoints, a small evaluation.
MODEL=(--model gpt2-124m --train_tokenizer bpe:8192)
JOB=(--max_length 256 --per_device_train_batch_size 8 --max_steps 40 --logging_steps 10 --eval_steps 0
     --max_eval_examples 16 --warmup_steps 0 --seed 1 --precision bf16 --device cuda)
TRAIN=("${MODEL[@]}" "${JOB[@]}")
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 2 ]; then nproc=2; else nproc=1; fi  # ddp/fsdp: 2 processes where 2 GPUs exist
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc" train.py)
read -ra STEPS <<< "${STEPS:-ddp fsdp bf16 flash qlora ttt}"  # STEPS="bf16 qlora" reruns some (qlora needs bf16)
qlora_base="$work/bf16/RUN/final"  # set to the bf16 step's final/ once it exists

step_command() {  # the command of step $1, one word per line (so paths with spaces survive)
  case "$1" in
    ddp)   printf '%s\n' "${TORCHRUN[@]}" "${TRAIN[@]}" --runs_dir "$work/ddp" ;;
    fsdp)  printf '%s\n' "${TORCHRUN[@]}" "${TRAIN[@]}" --parallelism fsdp --runs_dir "$work/fsdp" ;;
    bf16)  printf '%s\n' "$PY" train.py "${TRAIN[@]}" --runs_dir "$work/bf16" ;;
    flash) printf '%s\n' "$PY" train.py "${TRAIN[@]}" --use_flash_attention --runs_dir "$work/flash" ;;
    qlora) printf '%s\n' "$PY" train.py --model "$qlora_base" "${JOB[@]}" --load_in_4bit --use_lora --lora_r 16 \
             --runs_dir "$work/qlora" ;;
    ttt)   printf '%s\n' "$PY" benchmarks/bench_ttt.py --device cuda --preset ttt-linear-125m --bf16 --context 2048 \
             --models ttt-linear gpt2 --warmup 2 --steps 5 --output "$work/ttt.md" ;;
  esac
}

if [ "$dry_run" = 1 ]; then
  for step in "${STEPS[@]}"; do
    mapfile -t cmd < <(step_command "$step")
    printf '%s:' "$step"; printf ' %q' "${cmd[@]}"; printf '\n'
  done
  exit 0
fi

# What one training step reports: the run's metrics.json, plus the GPU memory nvidia-smi saw at its peak.
summary() {  # $1 runs dir, $2 peak MiB from nvidia-smi
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
runs, peak = Path(sys.argv[1]), sys.argv[2]
folders = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
if len(folders) != 1 or not (folders[0] / "metrics.json").is_file():
    print(f"no single run folder with metrics.json in {runs}"); sys.exit(0)
m = json.loads((folders[0] / "metrics.json").read_text())
run = m.get("run", {}); tp = run.get("throughput", {})
memory = {k: v for k, v in run.items() if "memory" in k or "parallel" in k}
print(f"tokens/s {tp.get('tokens_per_second', float('nan')):,.0f}; nvidia-smi peak {peak} MiB; "
      f"train_loss {m.get('train', {}).get('train_loss')}; precision {run.get('precision_as_run')}; "
      f"attention {run.get('attention')} (fallback {run.get('attention_fallback')}); "
      f"quantization {run.get('quantization')}; world_size {run.get('world_size')}; {memory or ''}")
EOF
}

mkdir -p benchmarks/results
{
  echo "# GPU check ($stamp UTC)"
  echo
  echo "Generated by \`bash benchmarks/gpu_check.sh\` in $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo
  echo '```'
  if command -v nvidia-smi > /dev/null; then nvidia-smi 2>&1 | head -20; nvidia-smi topo -m 2>&1
  else echo "nvidia-smi: not available"; fi
  "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "trl", "peft", "bitsandbytes", "flash_attn", "datasets"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # a missing optional package is a result, not a failure
        print(name, "not available:", type(error).__name__)
import torch
print("cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "| bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
  echo '```'
  echo
  echo "| step | status | wall s | result |"
  echo "|---|---|---:|---|"
} > "$results"

for step in "${STEPS[@]}"; do
  if [ "$step" = qlora ]; then
    found=$(ls -d "$work"/bf16/*/final 2>/dev/null | head -1)
    [ -n "$found" ] && qlora_base=$found
  fi
  mapfile -t cmd < <(step_command "$step")
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "| $step | not run (the ${BUDGET}s budget was spent) | 0 | |" >> "$results"
    continue
  fi
  echo "[gpu_check] $step:$(printf ' %q' "${cmd[@]}")"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$work/$step.mem" 2>/dev/null &
  sampler=$!
  start=$SECONDS
  limit=$((left < STEP_TIMEOUT ? left : STEP_TIMEOUT))
  timeout "$limit" "${cmd[@]}" > "$work/$step.log" 2>&1
  code=$?
  wall=$((SECONDS - start))
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  peak=$(sort -n "$work/$step.mem" 2>/dev/null | tail -1)
  # the failing program's own line: Strata's "error: ..." (torchrun prints a banner after it), else the last line
  last=$( (grep -E '^(error|[A-Za-z]*Error)' "$work/$step.log" || grep -vE '^\s*$|^=+$' "$work/$step.log") \
          | tail -1 | tr '|' '/' | cut -c1-300)
  if [ "$code" = 0 ] && [ "$step" = ttt ] && grep -qE '^\| (ttt-linear|gpt2) \|.*error' "$work/ttt.md"; then
    code=1; last=$(grep -oE 'error: [^|]*' "$work/ttt.md" | head -1)  # bench_ttt records a failed worker, exit 0
  fi
  if [ "$code" != 0 ]; then
    status="not available (exit $code$([ "$code" = 124 ] && echo ", timed out after ${limit}s"))"
    result="$last"
  elif [ "$step" = ttt ]; then
    status=ok
    result=$(grep -E '^\| (ttt-linear|gpt2) \|' "$work/ttt.md" | awk -F'|' '{printf "%s %s tokens/s; ", $2, $4}')
    result="$result nvidia-smi peak ${peak:-?} MiB"
  else
    status=ok
    result=$(summary "$work/$step" "${peak:-?}" | tr '|' '/')
  fi
  echo "| $step | $status | $wall | $result |" >> "$results"
  echo "[gpu_check] $step: $status ($wall s)"
done

{
  echo
  echo "Commands (\$WORK is a temporary folder, removed at the end):"
  echo
  echo '```'
  work_real=$work; work='$WORK'; qlora_base='$WORK/bf16/RUN/final'
  for step in "${STEPS[@]}"; do
    mapfile -t cmd < <(step_command "$step")
    printf '%s:' "$step"; printf ' %q' "${cmd[@]}"; printf '\n'
  done
  work=$work_real
  echo '```'
} >> "$results"
echo "[gpu_check] results in $results"
