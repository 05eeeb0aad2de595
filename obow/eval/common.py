"""What every evaluation run shares: backbone, labelled splits, loaders, the frozen-state hash, result files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from obow.config.eval import EvalSpec
from obow.data.sources import ImageSource, open_dataset
from obow.errors import DataError
from obow.models.backbone import ResNetBackbone
from obow.models.loading import LoadedBackbone, load_backbone
from obow.train.schedules import cosine


def load_eval_backbone(path: str, device: torch.device) -> LoadedBackbone:
    """The student of any supported checkpoint (official OBoW and torchvision files included), eval mode."""
    loaded = load_backbone(path)
    loaded.backbone.to(device).eval()
    return loaded


def freeze(backbone: ResNetBackbone) -> None:
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)


def state_hash(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (BN statistics included), in key order."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_unchanged(before: str, module: torch.nn.Module, what: str = "frozen backbone") -> None:
    after = state_hash(module)
    if after != before:
        raise RuntimeError(
            f"the {what} changed during training (state hash {before[:12]} -> {after[:12]}): a parameter or "
            f"a BatchNorm statistic was updated; the probe's result would be invalid"
        )


def open_split(spec: EvalSpec, split: str, per_class: int | None) -> ImageSource:
    source = open_dataset(spec.dataset, spec.data_dir, split, per_class)
    if len(source) == 0 or source.num_classes == 0:
        raise DataError(f"the {split} split of {spec.dataset} has no labelled images (or no classes)")
    return source


def loader(dataset: Dataset, spec: EvalSpec, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=shuffle, num_workers=spec.workers,
                      generator=g, drop_last=drop_last, persistent_workers=False)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest scores (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return {k: int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks}


def write_results(out_dir: Path, kind: str, result: Mapping[str, Any], rows: Sequence[Sequence[Any]],
                  header: Sequence[str]) -> None:
    """results.json (everything) and results.txt (a table for people)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"kind": kind, **result}, indent=2, default=str) + "\n")
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"{kind} evaluation of {result.get('checkpoint', '?')}"]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    (out_dir / "results.txt").write_text("\n".join(lines) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value == 0 or abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def epoch_lr(base_lr: float, epoch: int, epochs: int, cos_schedule: bool, milestones: Sequence[int],
             decay: float) -> float:
    """lr of a 0-based epoch: cosine to 0 over `epochs`, or base·decay^(milestones passed)."""
    if cos_schedule:
        return cosine(base_lr, 0.0, epoch / epochs)
    return base_lr * decay ** sum(1 for m in milestones if m <= epoch)


def per_class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for label in labels:
        counts[int(label)] += 1
    return counts
