#!/usr/bin/env bash
# One prepared script for a lent GPU machine (fits in 10 minutes). That machine has PyTorch but no
# network and no pydantic, so carry pydantic as wheels first, on this machine, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types typing-inspection
# then run `bash benchmarks/gpu.sh` there. It checks the library on CUDA (one real training step per
# precision), then times the training step at the original sizes: naive distances vs fp32 vs
# bf16+channels_last vs +torch.compile, and writes the table to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --find-links .whl pydantic 2>&1 | tail -1 || true
fi
python3 - <<'PY'
import torch
from obow.config import load_pretrain_config
from obow.models.obow import build_obow
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
spec = load_pretrain_config("ImageNetFull/ResNet50_OBoW_full", ["data.batch_size=32", "model.bow_extractor_opts.num_words=8192"])
model = build_obow(spec).cuda(); model.total_iterations = 100
for bf16 in (False, True):
    t = torch.randn(32, 3, 224, 224, device="cuda")
    g = [torch.randn(32, 2, 3, 160, 160, device="cuda"), torch.randn(32, 5, 3, 96, 96, device="cuda")]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss, values = model(t, g, torch.randint(0, 1000, (32,), device="cuda"))
    loss.backward()
    print("bf16" if bf16 else "fp32", {k: round(v, 3) for k, v in values.items() if k.startswith(("loss", "perp_b"))})
PY
timeout 480 python3 benchmarks/pretrain_throughput.py --gpu --steps 10 | tee "${OUT:-.}/pretrain_throughput_gpu.txt"
