"""Representation quality on Fashion-MNIST under a fixed CPU wall-clock budget.

Pretrains a Fashion-MNIST preset for `--budget` seconds, then evaluates the student's frozen pooled
features on the official test set with a linear probe (multinomial logistic regression on standardised
features) and weighted kNN, next to the two reference points: logistic regression on raw pixels and the
same network with random weights.

    python benchmarks/quality_fmnist.py --budget 1200          # the 20-minute target run
    python benchmarks/quality_fmnist.py --budget 120 --train-size 10000   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from obow.config import load_pretrain_config
from obow.data.multicrop import eval_transform
from obow.data.sources import open_dataset
from obow.errors import StopRequested
from obow.models.backbone import build_backbone
from obow.models.features import extract_features, knn_accuracy
from obow.models.loading import load_backbone
from obow.reporting import ConsoleReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain


class Views(torch.utils.data.Dataset):
    def __init__(self, source, transform, limit: int | None) -> None:
        self.source, self.transform = source, transform
        self.n = min(len(source), limit) if limit else len(source)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image, label = self.source[i]
        return self.transform(image), label


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=300, C=1.0)
    clf.fit(scaler.transform(train_x), train_y)
    return float((clf.predict(scaler.transform(test_x)) == test_y).mean() * 100)


def evaluate(backbone, spec, train_size: int | None) -> tuple[float, float]:
    d = spec.data
    transform = eval_transform(d.teacher_resize, d.teacher_size, d.mean, d.std)
    train = Views(open_dataset("FashionMNIST", None, "train"), transform, train_size)
    test = Views(open_dataset("FashionMNIST", None, "test"), transform, None)
    tx, ty = extract_features(backbone, train, batch_size=500, progress=False)
    vx, vy = extract_features(backbone, test, batch_size=500, progress=False)
    lin = linear_probe(tx.numpy(), ty.numpy(), vx.numpy(), vy.numpy())
    knn = knn_accuracy(tx, ty, vx, vy, k=20, temperature=0.07, num_classes=10)
    return lin, knn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="FashionMNIST/ResNet18s_OBoW_full_cpu")
    parser.add_argument("--budget", type=float, default=1200.0, help="pretraining wall-clock seconds")
    parser.add_argument("--train-size", type=int, default=None, help="images for the probe (default: all 60k)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="keep the run here (default: a temp folder)")
    args = parser.parse_args()

    spec = load_pretrain_config(args.preset, [*args.overrides, f"runtime.time_budget_s={args.budget}"])
    rows: list[tuple[str, str, str]] = []

    train = open_dataset("FashionMNIST", None, "train")
    test = open_dataset("FashionMNIST", None, "test")
    n = args.train_size or len(train)
    raw_train = train.images[:n].reshape(n, -1).astype(np.float32) / 255
    raw_test = test.images.reshape(len(test), -1).astype(np.float32) / 255
    raw_acc = linear_probe(raw_train, np.array(train.targets[:n]), raw_test, np.array(test.targets))
    rows.append(("raw pixels", f"{raw_acc:.2f}", "-"))

    torch.manual_seed(0)
    fe = spec.model.feature_extractor_opts
    random_net = build_backbone(spec.model.feature_extractor_arch, fe.small_stem, fe.width)
    lin, knn = evaluate(random_net, spec, args.train_size)
    rows.append(("random-init network", f"{lin:.2f}", f"{knn:.2f}"))

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="obow_quality_"))
    start = time.monotonic()
    reporter = ConsoleReporter(out / "logs", show_progress=False)
    with contextlib.suppress(StopRequested):  # the time budget ends the run with a checkpoint
        run_pretrain(spec, out, reporter)
    reporter.close()
    trained_for = time.monotonic() - start
    ckpt = latest_checkpoint(out)
    loaded = load_backbone(ckpt)
    lin, knn = evaluate(loaded.backbone, spec, args.train_size)
    epochs = torch.load(ckpt, weights_only=True)["iteration"] * spec.data.batch_size / len(train)
    rows.append((f"OBoW {args.preset} ({trained_for / 60:.1f} min, {epochs:.2f} epochs)", f"{lin:.2f}", f"{knn:.2f}"))

    print(f"\nFashion-MNIST test accuracy (%), probe trained on {n} images")
    print(f"{'features':70} {'linear':>8} {'kNN':>8}")
    for name, lin_s, knn_s in rows:
        print(f"{name:70} {lin_s:>8} {knn_s:>8}")


if __name__ == "__main__":
    main()
