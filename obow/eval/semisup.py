"""Semi-supervised evaluation: fine-tune the whole network on a labelled fraction of the training split.

BN runs in train mode, the backbone and the head have their own learning rates, both decayed by the
same step (or cosine) schedule, as in the original's 1% / 10% ImageNet protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obow.config.eval import SemisupSpec
from obow.data.multicrop import eval_transform, train_linear_transform
from obow.data.views import ViewDataset
from obow.devices import resolve_device
from obow.errors import DataError
from obow.eval.common import (
    epoch_lr,
    load_eval_backbone,
    loader,
    open_split,
    per_class_counts,
    topk_correct,
    write_results,
)
from obow.eval.linear import LinearHead
from obow.eval.loop import train_classifier
from obow.eval.splits import balanced_split, read_split, split_file_name, write_split
from obow.reporting import NullReporter, Reporter, start_phase


class FineTuneNet(nn.Module):
    def __init__(self, backbone: nn.Module, head: LinearHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images, taps=("pooled",))["pooled"])


@torch.no_grad()
def evaluate_model(model: nn.Module, data, device: torch.device,
                   reporter: Reporter | None = None) -> dict[str, float]:
    """Top-1/top-5 on the test loader; a phase "testing" (in images) when a reporter is given."""
    reporter = reporter or NullReporter()
    was_training = model.training
    model.eval()
    hits, seen = {1: 0, 5: 0}, 0
    total = len(data.dataset)
    start_phase(reporter, "testing", total, "images")
    for images, labels in data:
        logits = model(images.to(device, non_blocking=True))
        for k, n in topk_correct(logits, labels.to(device)).items():
            hits[k] += n
        seen += len(labels)
        reporter.progress(seen, total)
    model.train(was_training)
    return {"top1": 100.0 * hits[1] / seen, "top5": 100.0 * hits[5] / seen}


def run_semisup(spec: SemisupSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    device = resolve_device(spec.device)
    backbone = load_eval_backbone(spec.checkpoint, device).backbone
    train_src = open_split(spec, spec.train_split, spec.subset)
    test_src = open_split(spec, spec.test_split, spec.test_subset)
    if test_src.num_classes != train_src.num_classes:
        raise DataError(f"train has {train_src.num_classes} classes but {spec.test_split} has {test_src.num_classes}")
    if spec.split_file:
        labelled = read_split(Path(spec.split_file), train_src)
        split_name = Path(spec.split_file).name
    else:
        labelled = balanced_split(train_src.targets, train_src.num_classes, spec.percentage, spec.seed)
        split_name = split_file_name(spec.percentage, spec.seed)
        write_split(out_dir / split_name, train_src, labelled)
        reporter.artifact(out_dir / split_name, "split", {"images": len(labelled)})
    counts = per_class_counts([train_src.targets[i] for i in labelled], train_src.num_classes)
    reporter.log(f"fine-tuning on {len(labelled)} labelled images ({split_name}; per class {min(counts)}.."
                 f"{max(counts)}), testing on {len(test_src)}")

    head = LinearHead(backbone.out_dim, train_src.num_classes).to(device)
    model = FineTuneNet(backbone, head).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    groups = [{"params": list(backbone.parameters()), "base_lr": spec.lr},
              {"params": list(head.parameters()), "base_lr": spec.lr_head}]
    optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.wd,
                                nesterov=spec.nesterov and spec.momentum > 0)
    train_data = ViewDataset(train_src, train_linear_transform(spec.size, spec.mean, spec.std), labelled)
    test_data = loader(ViewDataset(test_src, eval_transform(spec.resize, spec.size, spec.mean, spec.std)), spec, False)
    steps_per_epoch = -(-len(train_data) // spec.batch_size)

    def set_lr(epoch: int) -> dict[str, float]:
        factor = epoch_lr(1.0, epoch, spec.epochs, spec.cos_schedule, spec.schedule, spec.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return {"lr": spec.lr * factor, "lr_head": spec.lr_head * factor}

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in loader(train_data, spec, shuffle=True, seed=spec.seed * 1000 + epoch):
            yield images.to(device, non_blocking=True), labels.to(device)

    history = train_classifier(model, optimizer, batches, steps_per_epoch, spec, set_lr,
                               lambda: evaluate_model(model, test_data, device, reporter), reporter)
    final = history[-1]
    result = {"checkpoint": spec.checkpoint, "top1": final["top1"], "top5": final["top5"],
              "labelled_images": len(labelled), "split": split_name, "test_images": len(test_src),
              "num_classes": train_src.num_classes, "history": history, "spec": spec.model_dump(mode="json")}
    rows = [(p["epoch"], p["lr"], p["lr_head"], p["loss"], p["train_top1"], p.get("top1", "-"), p.get("top5", "-"))
            for p in history]
    write_results(out_dir, "semisup", result, rows, ["epoch", "lr", "lr_head", "loss", "train@1", "top1", "top5"])
    reporter.artifact(out_dir / "results.json", "results", {"top1": final["top1"], "top5": final["top5"]})
    return result
