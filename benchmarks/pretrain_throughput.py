"""Images/s and peak memory of one full OBoW training step, several variants compared in one run.

Every measurement runs in a fresh subprocess (so its peak RSS is its own), the variants are
interleaved round-robin (so a change in the machine's load hits all of them alike), and the table
shows the median of the repeats. The step is timed on synthetic tensors, isolating the model: student
forwards over every crop type, EMA, teacher forward, distances to the K words, vocabulary update,
weight generators, loss, backward and SGD.

Variants: `ref:<git ref>` runs the library as committed at that ref (extracted with `git archive`
into a temporary folder, nothing in the repository changes), e.g. `ref:main` for the code before
this branch, with the same flags after it (`ref:main+bf16+cl`); `fp32` is this tree as configured by
default; `bf16` autocast; `+cl` adds channels_last, `+compile` torch.compile of the student and teacher.

    python benchmarks/pretrain_throughput.py                          # both CPU configs, 5 repeats
    python benchmarks/pretrain_throughput.py --configs small --repeats 3 --variants fp32 fp32+cl
    python benchmarks/pretrain_throughput.py --device cuda --configs r50 --variants fp32 bf16+cl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (preset, overrides, steps timed); "full" and "small" are the ResNet18 sizes of issue 12.
CONFIGS: dict[str, tuple[str, list[str], int]] = {
    "full": (
        "ImageNet20/ResNet18_OBoW_full",
        ["data.batch_size=16", "model.bow_extractor_opts.num_words=8192"],
        3,
    ),
    "small": (
        "ImageNet20/ResNet18_OBoW_full",
        [
            "data.batch_size=8",
            "data.teacher_resize=192",
            "data.teacher_size=192",
            "data.image_crop_size=48",
            "data.img_patch_size=32",
            "data.img_patch_preresize=64",
            "data.img_patch_jitter=8",
            "model.bow_extractor_opts.num_words=64",
        ],
        5,
    ),
    # the Fashion-MNIST CPU preset as shipped (1/8-width small-stem ResNet18 with a 1/4-width block4, a 40 px
    # teacher and 2x32 px crops, K=1024); the README's older fmnist-cpu rows had 5x16 px patches too
    "fmnist-cpu": ("FashionMNIST/ResNet18s_OBoW_full_cpu", [], 20),
    # the stock-ResNet18 CPU preset (7x7 stem, width 1, 80 px teacher, 2x64 px crops, K=2048, batch 32;
    # the README's fmnist-r18 rows say which K they had)
    "fmnist-r18": ("FashionMNIST/resnet18", [], 10),
    "r18-gpu": ("ImageNet20/ResNet18_OBoW_full", ["data.batch_size=128"], 10),
    "r50": ("ImageNetFull/ResNet50_OBoW_full", ["data.batch_size=64"], 10),
}

CHILD = r"""
import json, resource, statistics, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from obow.config import load_pretrain_config
from obow.models.obow import build_obow

variant, device = args["variant"], torch.device(args["device"])
spec = load_pretrain_config(args["preset"], args["overrides"])
torch.manual_seed(0)
model = build_obow(spec).to(device)
model.total_iterations = 10_000
cl = "+cl" in variant
fmt = torch.channels_last if cl else torch.contiguous_format
if cl:
    model.to(memory_format=torch.channels_last)
if "+compile" in variant:
    model.student.compile()
    model.teacher.compile()
try:  # the library's own optimizer (fused SGD since issue 12); code before it had none: plain SGD
    from obow.train.engine import build_optimizer
    opt = build_optimizer(model, spec)
except ImportError:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
d, b = spec.data, spec.data.batch_size
teacher = torch.randn(b, 3, d.teacher_size, d.teacher_size, device=device).contiguous(memory_format=fmt)
groups = []
for n, s in ((d.num_img_crops, d.image_crop_size), (d.num_img_patches, d.img_patch_size)):
    if n:
        g = torch.randn(b * n, 3, s, s, device=device).contiguous(memory_format=fmt)
        groups.append(g.unflatten(0, (b, n)))
labels = torch.randint(0, spec.model.num_classes or 1, (b,), device=device)
bf16 = variant.startswith("bf16")
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)
times = []
for step in range(args["warmup"] + args["steps"]):
    sync()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model(teacher, groups, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()
    if step >= args["warmup"]:
        times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
print("RESULT " + json.dumps({"img_per_s": b * len(times) / sum(times), "rss_mib": peak, "gpu_mib": gpu,
                              "img_per_s_median_step": b / statistics.median(times)}))
"""


def extract_ref(ref: str, into: Path) -> Path:
    """The `obow/` package as committed at `ref`, unpacked under `into` (read-only use of the repo)."""
    target = into / ref.replace("/", "_")
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "obow"], check=True, capture_output=True)
        archive_path = target / "obow.tar"
        archive_path.write_bytes(archive.stdout)
        with tarfile.open(archive_path) as tar:
            tar.extractall(target, filter="data")
        archive_path.unlink()
    return target


def run_child(variant: str, config: str, device: str, threads: int, refs_dir: Path, steps: int | None = None) -> dict:
    preset, overrides, default_steps = CONFIGS[config]
    steps = steps or default_steps
    code_root = ROOT
    flags = variant
    if variant.startswith("ref:"):
        ref, _, flags = variant[4:].partition("+")
        code_root = extract_ref(ref, refs_dir)
        flags = flags if flags.startswith("bf16") else "fp32" + ("+" + flags if flags else "")  # ref:X+bf16+cl
    args = {
        "variant": flags,
        "device": device,
        "preset": preset,
        "overrides": overrides,
        "steps": steps,
        "warmup": 3 if "+compile" in flags else 2,
        "threads": threads,
    }
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env, cwd=code_root
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["full", "small"], choices=sorted(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=["ref:main", "fp32", "fp32+cl"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: per config)")
    parser.add_argument(
        "--per-run", choices=["mean", "median-step"], default="mean",
        help="a run's img/s: over all its timed steps, or from its median step (steady state: a slower "
        "neighbour's bursts on a shared machine hit a few steps, not the median)",
    )
    args = parser.parse_args()
    print(f"load average before: {load_average()}  (cpus: {os.cpu_count()}, threads per run: {args.threads})")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as refs:
        for config in args.configs:
            for rep in range(args.repeats):
                for variant in args.variants:  # interleaved: one run of each variant per round
                    start = time.perf_counter()
                    res = run_child(variant, config, args.device, args.threads, Path(refs), args.steps)
                    results.setdefault((config, variant), []).append(res)
                    if "error" not in res and args.per_run == "median-step":
                        res["img_per_s"] = res["img_per_s_median_step"]  # every child reports it, refs included
                    shown = res.get("error") or f"{res['img_per_s']:.2f} img/s, {res['rss_mib']:.0f} MiB"
                    print(f"  [{config} round {rep + 1}] {variant}: {shown} ({time.perf_counter() - start:.0f} s)",
                          flush=True)
    print(f"load average after: {load_average()}")
    header = f"{'config':8} {'variant':22} {'img/s (median)':>15} {'min':>7} {'max':>7} {'peak RSS MiB':>13}"
    if args.device == "cuda":
        header += f" {'GPU MiB':>8}"
    print(header)
    for config in args.configs:
        base = None
        for variant in args.variants:
            runs = [r for r in results[(config, variant)] if "error" not in r]
            if not runs:
                print(f"{config:8} {variant:22} failed: {results[(config, variant)][0]['error']}")
                continue
            ips = [r["img_per_s"] for r in runs]
            med = statistics.median(ips)
            base = base or med
            rss = max(r["rss_mib"] for r in runs)
            line = f"{config:8} {variant:22} {med:15.2f} {min(ips):7.2f} {max(ips):7.2f} {rss:13.0f}"
            if args.device == "cuda":
                line += f" {max(r['gpu_mib'] for r in runs):8.0f}"
            print(line + f"   ×{med / base:.2f} vs first")
    print(f"(median of {args.repeats} fresh-process runs per variant, interleaved; peak RSS = max over runs)")


if __name__ == "__main__":
    main()
