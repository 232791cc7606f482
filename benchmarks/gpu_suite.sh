#!/usr/bin/env bash
# The GPU benchmark suite: one prepared run for a machine with one NVIDIA GPU (issue 8, item 3).
#
#   benchmarks/gpu_suite.sh OUT_DIR            # full run, under 8 minutes (--budget-s 450)
#   benchmarks/gpu_suite.sh OUT_DIR --smoke    # tiny sizes on CPU, as the tests run it
#
# Needs nothing from the network: synthetic tensors, the embedded synthetic dataset drawn at
# 256 px, seeded random Inception / AlexNet / FAN weights. Writes OUT_DIR/results.json (every
# figure) and OUT_DIR/environment.txt, and prints one table last. PYTHON overrides the
# interpreter (default: the project's .venv). Extra arguments go to benchmarks/gpu_suite.py.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--smoke] [--budget-s SECONDS] [--device DEVICE]" >&2
    exit 2
fi
out="$1"
shift
mkdir -p "$out"

# Offline by construction: no W&B, no hub downloads; torchvision weights are never requested.
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TORCH_HOME="$out/torch-home"

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    uname -a
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
        || echo "nvidia-smi: not available"
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$out/environment.txt" 2>&1

cd "$root"
exec "$python" benchmarks/gpu_suite.py --out "$out" "$@"
