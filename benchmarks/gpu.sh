#!/usr/bin/env bash
# One prepared script for a lent GPU machine (fits in 10 minutes). That machine has PyTorch but no
# network and no pydantic, so carry pydantic as wheels first, on this machine, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types typing-inspection
# then run `bash benchmarks/gpu.sh` there. It checks the library on CUDA (one real training step per
# precision, and the batched view pipeline decoding JPEGs with nvjpeg), then times the training step
# at the original sizes (fp32 vs bf16+channels_last vs +torch.compile) and the batched data path on
# the GPU against the PIL path per CPU core, and writes the tables to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --find-links .whl pydantic 2>&1 | tail -1 || true
fi
IMAGES="$(mktemp -d)"
python3 - "$IMAGES" <<'PY'
import sys, torch
from pathlib import Path
from torchvision.io import encode_jpeg
from obow.config import load_pretrain_config
from obow.data.batched import BatchedMultiCrop, RawImageDataset, collate_raw, decode
from obow.data.sources import open_dataset
from obow.models.obow import build_obow
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
# 256 JPEGs of ImageNet-like size (smooth random content) for the data-path timings
root = Path(sys.argv[1]) / "train" / "c0"
root.mkdir(parents=True)
g = torch.Generator().manual_seed(0)
for i in range(256):
    small = torch.rand(3, 12, 16, generator=g)
    img = torch.nn.functional.interpolate(small[None], size=(375, 500), mode="bicubic")[0].clamp(0, 1)
    (root / f"{i:04d}.jpg").write_bytes(encode_jpeg((img * 255).to(torch.uint8), quality=90).numpy().tobytes())
spec = load_pretrain_config("ImageNetFull/ResNet50_OBoW_full", ["data.batch_size=32"])
ds = RawImageDataset(open_dataset("ImageFolder", str(Path(sys.argv[1])), "train"), decode_in_worker=False)
images, labels, seeds = collate_raw([ds[i] for i in range(32)])
teacher, groups = BatchedMultiCrop(spec.data)(decode(images, torch.device("cuda")), seeds)
print("batched views on", teacher.device, tuple(teacher.shape), [tuple(x.shape) for x in groups])
model = build_obow(spec).cuda(); model.total_iterations = 100
for bf16 in (False, True):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss, values = model(teacher, groups, labels.cuda())
    loss.backward()
    print("bf16" if bf16 else "fp32", {k: round(v, 3) for k, v in values.items() if k.startswith(("loss", "perp_b"))})
PY
timeout 150 python3 benchmarks/data_throughput.py --datasets image-folder --image-folder "$IMAGES" --device cuda \
    --batch 128 --seconds 5 --repeats 3 | tee "$OUT/data_throughput_gpu.txt" || true
timeout 330 python3 benchmarks/pretrain_throughput.py --device cuda --configs r18-gpu r50 --repeats 2 \
    --variants fp32 bf16+cl bf16+cl+compile | tee "$OUT/pretrain_throughput_gpu.txt"
