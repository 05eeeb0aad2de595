#!/usr/bin/env bash
# One prepared script for a lent GPU (fits in 10 minutes): install, test the library on CUDA, then the
# training-step benchmark at the original sizes (fp32 vs bf16 + channels_last vs + torch.compile).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m venv .venv-gpu
.venv-gpu/bin/pip install -q torch torchvision 2>&1 | tail -1 || true
.venv-gpu/bin/pip install -q -e . 2>&1 | tail -1
timeout 120 .venv-gpu/bin/python -c "import torch; print('cuda', torch.cuda.is_available(), torch.version.cuda)"
timeout 420 .venv-gpu/bin/python benchmarks/pretrain_throughput.py --gpu --steps 10 | tee "${OUT:-.}/pretrain_throughput_gpu.txt"
