#!/usr/bin/env bash
# The GPU check (issue 19): the smoke preset on the embedded model, on a CUDA GPU, with bf16
# training, vLLM rollouts (TRL colocate mode) and vLLM generation. No network: the embedded model
# and the smoke data ship with the package. Prints per-stage times (and tokens/s where the stage
# counts tokens) through benchmarks/main_job.py.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]        # default: a fresh temporary folder
#
# Needs: the GPU build of vLLM (pip install -e '.[vllm]'), a CUDA GPU with bfloat16 (Ampere or
# later; set PRECISION=fp16 on older GPUs). Fails with one line before any stage otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${1:-$(mktemp -d /tmp/forgetbench-gpu-check.XXXXXX)}
PRECISION=${PRECISION:-bf16}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False)")
print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY

SETTINGS=(
  --set "method.precision=$PRECISION" --set "attack.precision=$PRECISION"
  --set "warmup.precision=$PRECISION"
  --set method.rollouts=vllm-colocate --set method.vllm_gpu_memory_utilization=0.3
  --set backend=vllm --set generation.dtype=auto --set generation.gpu_memory_utilization=0.5
)
echo "gpu_check: resource plan"
"$PYTHON" -m forgetbench run --preset smoke --method grpo --print-config "${SETTINGS[@]}" \
  --output-dir "$OUT" | sed -n '/estimated GPU memory/,$p'
echo "gpu_check: smoke on the GPU -> $OUT"
"$PYTHON" benchmarks/main_job.py --preset smoke --method grpo "${SETTINGS[@]}" \
  --output-dir "$OUT" --json "$OUT/gpu_check.json"
