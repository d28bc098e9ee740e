#!/usr/bin/env bash
# GPU check: training and batch-1 decoding of a random-init 1.1B Llama in bf16 (benchmarks/gpu_bench.py).
#
#   bash benchmarks/gpu_check.sh                     # from anywhere; runs against this checkout's src/
#   bash benchmarks/gpu_check.sh --repeats 1         # arguments go to gpu_bench.py (--help lists them)
#
# Needs python with torch, transformers and peft, nothing else: no pip install, no network. Prints the
# card, then the report; writes the report to $OUT/gpu_check.log and its JSON line to $OUT/gpu_check.json
# ($OUT defaults to the current directory). PYTHON overrides the interpreter.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-.}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$out"

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
else
    echo "nvidia-smi not found: no NVIDIA GPU visible"
fi

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$python" "$root/benchmarks/gpu_bench.py" "$@" 2>&1 | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
set -e
tail -n 1 "$out/gpu_check.log" > "$out/gpu_check.json"
echo "report: $out/gpu_check.log, JSON line: $out/gpu_check.json"
exit "$status"
