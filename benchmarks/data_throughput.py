"""Training views per second per core: the per-sample PIL path against the batched tensor path.

Each (data set, path) pair runs in a fresh single-threaded subprocess (one core), the pairs are
interleaved round-robin and the table shows the median over the repeats. A "view" is one teacher
view, crop or patch; both paths decode from the stored files (JPEG photos) or the in-memory IDX array.

    python benchmarks/data_throughput.py                        # CPU, both data sets, 5 repeats
    python benchmarks/data_throughput.py --device cuda          # batched path decoding on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DATASETS = {
    # name -> (source name, split, DataSpec overrides of the preset)
    "imagenet-photos": ("FoolboxImageNet", "train", "ImageNet20/ResNet18_OBoW_full"),
    "fashion-mnist": ("FashionMNIST", "train", "FashionMNIST/ResNet18s_OBoW_full_cpu"),
    "image-folder": ("ImageFolder", "train", "ImageNet20/ResNet18_OBoW_full"),  # --image-folder DIR
}

CHILD = r"""
import json, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from obow.config import load_pretrain_config
from obow.data.sources import open_dataset
subset = 2000 if args["source"] == "FashionMNIST" else None
source = open_dataset(args["source"], args["data_dir"], args["split"], subset)
d = load_pretrain_config(args["preset"]).data
views_per_sample = 1 + (d.num_img_crops if not d.only_patches else 0) + d.num_img_patches
device = torch.device(args["device"])
batch, n = args["batch"], len(source)
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)
if args["path"] == "pil":
    from obow.data.multicrop import MultiCropDataset
    ds = MultiCropDataset(source, d, seed=0)
    def run(step):
        for i in range(batch):
            ds[(step * batch + i) % n]
else:
    from obow.data.batched import BatchedMultiCrop, RawImageDataset, collate_raw, decode
    ds = RawImageDataset(source, seed=0, decode_in_worker=device.type == "cpu")
    make = BatchedMultiCrop(d)
    def run(step):
        images, _labels, seeds = collate_raw([ds[((step * batch + i) % n, step * batch + i)] for i in range(batch)])
        make(decode(images, device), seeds)
run(0)
sync()
start, steps = time.perf_counter(), 0
while time.perf_counter() - start < args["seconds"]:
    steps += 1
    run(steps)
    sync()
elapsed = time.perf_counter() - start
print("RESULT " + json.dumps({"samples_per_s": steps * batch / elapsed, "views_per_sample": views_per_sample}))
"""


def run_child(dataset: str, path: str, device: str, batch: int, seconds: float, data_dir: str | None) -> dict:
    source, split, preset = DATASETS[dataset]
    args = {
        "source": source, "split": split, "preset": preset, "path": path, "data_dir": data_dir,
        "device": device if path == "batched" else "cpu", "batch": batch, "seconds": seconds, "threads": 1,
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "imagenet-photos"], choices=sorted(DATASETS))
    parser.add_argument("--image-folder", default=None, help="ImageFolder root (train/<class>/...) for 'image-folder'")
    parser.add_argument("--paths", nargs="+", default=["pil", "batched"], choices=["pil", "batched"])
    parser.add_argument("--device", default="cpu", help="device of the batched path (the PIL path is CPU only)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeats):
        for dataset in args.datasets:
            for path in args.paths:
                res = run_child(dataset, path, args.device, args.batch, args.seconds, args.image_folder)
                results.setdefault((dataset, path), []).append(res)
                shown = f"{res['samples_per_s']:.1f} samples/s" if "error" not in res else res["error"]
                print(f"  [round {rep + 1}] {dataset} {path}: {shown}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'data set':16} {'path':8} {'device':7} {'samples/s':>10} {'views/s/core':>13} {'min':>8} {'max':>8}")
    for dataset in args.datasets:
        for path in args.paths:
            runs = [r for r in results[(dataset, path)] if "error" not in r]
            if not runs:
                print(f"{dataset:16} {path:8} failed: {results[(dataset, path)][0]['error']}")
                continue
            views = [r["samples_per_s"] * r["views_per_sample"] for r in runs]
            device = args.device if path == "batched" else "cpu"
            med = statistics.median(r["samples_per_s"] for r in runs)
            print(f"{dataset:16} {path:8} {device:7} {med:10.1f} {statistics.median(views):13.1f} "
                  f"{min(views):8.1f} {max(views):8.1f}")
    print(f"(one thread per run; median of {args.repeats} interleaved fresh-process runs of {args.seconds:.0f} s)")


if __name__ == "__main__":
    main()
