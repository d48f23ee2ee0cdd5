#!/usr/bin/env bash
# Issue 18's GPU measurements in one run on a lent CUDA machine (about 5 minutes on an H100):
# base images/s at batch 1/4/16, the cascade at batch 16 (official steps and the fast preset),
# fp16 and bf16, peak GPU memory, and fp16/bf16 against fp32 on the same noise.
#   bash benchmarks/gpu.sh [OUT_PREFIX]      (default: benchmarks/results/gpu -> .md and .json)
# Needs torch with CUDA, and glidekit's dependencies (numpy, pillow, safetensors, tiktoken with
# the GPT-2 vocabulary: TIKTOKEN_CACHE_DIR, else ../shared/reference/vocab/tiktoken).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device here; for a smoke test on a CPU run:" \
         "python benchmarks/bench_gpu.py --device cpu --tiny" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/bench_gpu.py --out "${1:-benchmarks/results/gpu}"
