"""Feature-extraction throughput and the linear probe's precache speed-up, in one short run.

Usage: python benchmarks/eval_features.py [--images-per-class 50] [--width 0.25] [--device cpu]
       [--checkpoint FILE]  (default: a randomly initialised backbone, which costs the same to run)

Prints one table: images/s of the frozen student's feature extraction, the time of a linear-probe epoch
computing features on the fly, the one-off cache build, and a cached epoch (with the speed-up).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from obow.config.eval import LinearSpec
from obow.config.pretrain import PretrainSpec
from obow.data.multicrop import eval_transform
from obow.data.views import ViewDataset
from obow.eval.common import loader, open_split
from obow.eval.linear import run_linear
from obow.io.atomic import save_atomic
from obow.io.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT
from obow.models.backbone import ResNetBackbone
from obow.models.features import extract_features
from obow.reporting import NullReporter


def random_checkpoint(path: Path, arch: str, width: float, small_stem: bool) -> None:
    backbone = ResNetBackbone(arch=arch, small_stem=small_stem, width=width)
    spec = PretrainSpec.model_validate({
        "model": {"feature_extractor_arch": arch, "feature_extractor_opts": {"small_stem": small_stem, "width": width},
                  "bow_extractor_opts": {"num_words": 256}},
        "data": {"batch_size": 32},
    })
    save_atomic({"format": PRETRAIN_FORMAT, "format_version": FORMAT_VERSION, "epoch": 0, "iteration": 0,
                 "spec": spec.model_dump(mode="json"),
                 "model": {f"student.{k}": v for k, v in backbone.state_dict().items()}}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images-per-class", type=int, default=50, help="Fashion-MNIST training images per class")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(Path(tmp) / "random.pt")
        if args.checkpoint is None:
            random_checkpoint(Path(checkpoint), args.arch, args.width, small_stem=True)
        common = dict(checkpoint=checkpoint, dataset="FashionMNIST", subset=args.images_per_class,
                      test_subset=10, test_split="test", batch_size=args.batch_size, workers=args.workers,
                      device=args.device, epochs=2, lr=0.1, batch_norm=True)
        spec = LinearSpec(**common)
        from obow.devices import resolve_device
        from obow.eval.common import load_eval_backbone

        device = resolve_device(spec.device)
        backbone = load_eval_backbone(checkpoint, device).backbone
        source = open_split(spec, "train", spec.subset)
        data = loader(ViewDataset(source, eval_transform(spec.resize, spec.size, spec.mean, spec.std)), spec, False)
        extract_features(backbone, data, device, progress=False)  # warm-up (allocator, cudnn)
        start = time.perf_counter()
        extract_features(backbone, data, device, progress=False)
        extract_s = time.perf_counter() - start

        plain = run_linear(spec, Path(tmp) / "plain", NullReporter())
        cached = run_linear(LinearSpec(**common, precache=True), Path(tmp) / "cached", NullReporter())
    n = len(source)
    plain_epoch = plain["history"][-1]["epoch_seconds"]
    cached_epoch = cached["history"][-1]["epoch_seconds"]
    rows = [
        ("feature extraction", f"{n} images", f"{extract_s:.2f} s", f"{n / extract_s:.0f} img/s"),
        ("linear epoch, on the fly", f"{n} images", f"{plain_epoch:.2f} s", f"{n / plain_epoch:.0f} img/s"),
        ("cache build (2 views + test)", f"{n} images", f"{cached['feature_seconds']:.2f} s", ""),
        ("linear epoch, cached", f"{n} images", f"{cached_epoch:.3f} s",
         f"{plain_epoch / cached_epoch:.0f}x faster"),
    ]
    print(f"{args.arch} width {args.width}, {spec.size}px Fashion-MNIST, device {device}, "
          f"threads {torch.get_num_threads()}")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
