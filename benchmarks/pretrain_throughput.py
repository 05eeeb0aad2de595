"""Images/s and peak memory of one full OBoW training step, a straightforward variant beside the optimised one.

The step is timed on synthetic tensors (data loading is benchmarked in data_throughput.py), so the
table isolates the model: student forwards over every crop type, teacher forward, distances to the
K words, vocabulary update, weight generators, loss and SGD.

    python benchmarks/pretrain_throughput.py                 # CPU presets (tiny, FashionMNIST cpu)
    python benchmarks/pretrain_throughput.py --gpu           # + ResNet18/50 at the original sizes
"""

from __future__ import annotations

import argparse
import time

import torch

from obow.config import PretrainSpec, load_pretrain_config
from obow.models import bow_ops
from obow.models.obow import build_obow


def naive_squared_distances(features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """The literal definition: a [B, K, C, h, w] difference tensor. Memory-hungry on purpose."""
    diff = features.unsqueeze(1) - words.view(1, words.shape[0], words.shape[1], 1, 1)
    return diff.pow(2).sum(dim=2)


def batch_for(spec: PretrainSpec, batch: int, device: torch.device):
    d = spec.data
    teacher = torch.randn(batch, 3, d.teacher_size, d.teacher_size, device=device)
    groups = []
    if d.num_img_crops and not d.only_patches:
        groups.append(torch.randn(batch, d.num_img_crops, 3, d.image_crop_size, d.image_crop_size, device=device))
    if d.num_img_patches:
        groups.append(torch.randn(batch, d.num_img_patches, 3, d.img_patch_size, d.img_patch_size, device=device))
    labels = torch.randint(0, spec.model.num_classes or 1, (batch,), device=device)
    return teacher, groups, labels


def measure(spec: PretrainSpec, variant: str, device: torch.device, batch: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_obow(spec).to(device)
    model.total_iterations = 10_000
    original = bow_ops.squared_distances
    bf16 = variant.endswith("bf16") or "+bf16" in variant
    if variant == "naive":
        bow_ops.squared_distances = naive_squared_distances
    if "channels_last" in variant:
        model.to(memory_format=torch.channels_last)
    if "compile" in variant:
        model.student.compile()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.01, momentum=0.9)
    data = batch_for(spec, batch, device)
    if "channels_last" in variant:
        data = (data[0].contiguous(memory_format=torch.channels_last), data[1], data[2])
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        elapsed = 0.0
        for step in range(steps + 2):  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model(*data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= 2:
                elapsed += time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        return batch * steps / elapsed, peak
    finally:
        bow_ops.squared_distances = original


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="also the original ResNet18/50 configs on CUDA")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    cpu = torch.device("cpu")
    for preset, batch in (("FashionMNIST/tiny", 32), ("FashionMNIST/ResNet18s_OBoW_full_cpu", 128)):
        for levels in (["block4"], ["block3", "block4"]):
            spec = load_pretrain_config(preset, [f"model.bow_levels={levels}"])
            kind = "vanilla" if len(levels) == 1 else "full"
            for variant in ("naive", "optimised"):
                ips, _ = measure(spec, variant, cpu, batch, args.steps)
                rows.append((preset, kind, "cpu", variant, batch, ips, peak_rss_mb()))
    if args.gpu and torch.cuda.is_available():
        gpu = torch.device("cuda")
        for preset, batch in (
            ("ImageNet20/ResNet18_OBoW_vanilla", 256),
            ("ImageNet20/ResNet18_OBoW_full", 128),
            ("ImageNetFull/ResNet50_OBoW_full", 64),
        ):
            spec = load_pretrain_config(preset, [f"data.batch_size={batch}"] if batch != 256 else [])
            for variant in ("naive", "fp32", "bf16+channels_last", "bf16+channels_last+compile"):
                try:
                    ips, peak = measure(spec, variant, gpu, batch, args.steps)
                except torch.OutOfMemoryError:
                    ips, peak = float("nan"), float("inf")
                    torch.cuda.empty_cache()
                rows.append((preset, "", "cuda", variant, batch, ips, peak))
    print(f"{'preset':40} {'levels':8} {'dev':5} {'variant':28} {'batch':>5} {'img/s':>9} {'peak MiB':>9}")
    for preset, kind, dev, variant, batch, ips, peak in rows:
        print(f"{preset:40} {kind:8} {dev:5} {variant:28} {batch:5d} {ips:9.1f} {peak:9.0f}")
    print("(peak: CUDA max allocated on GPU, process max RSS on CPU)")


if __name__ == "__main__":
    main()
