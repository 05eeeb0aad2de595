"""Semi-supervised evaluation: fine-tune the whole network on a labelled fraction of the training split.

BN runs in train mode, the backbone and the head have their own learning rates, both decayed by the
same step (or cosine) schedule, as in the original's 1% / 10% ImageNet protocol.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obow.config.eval import SemisupSpec
from obow.data.multicrop import eval_transform, train_linear_transform
from obow.errors import DataError
from obow.eval.common import (
    ViewDataset,
    epoch_lr,
    load_eval_backbone,
    loader,
    open_split,
    per_class_counts,
    resolve_device,
    topk_correct,
    write_results,
)
from obow.eval.linear import LinearHead
from obow.eval.splits import balanced_split, read_split, split_file_name, write_split
from obow.reporting import Reporter, check_stop


class FineTuneNet(nn.Module):
    def __init__(self, backbone: nn.Module, head: LinearHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images, taps=("pooled",))["pooled"])


@torch.no_grad()
def evaluate_model(model: nn.Module, data, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    hits, seen = {1: 0, 5: 0}, 0
    for images, labels in data:
        logits = model(images.to(device, non_blocking=True))
        for k, n in topk_correct(logits, labels.to(device)).items():
            hits[k] += n
        seen += len(labels)
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
    criterion = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    steps_per_epoch = -(-len(train_data) // spec.batch_size)
    done = 0
    for epoch in range(spec.epochs):
        factor = epoch_lr(1.0, epoch, spec.epochs, spec.cos_schedule, spec.schedule, spec.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for images, labels in loader(train_data, spec, shuffle=True, seed=spec.seed * 1000 + epoch):
            check_stop(reporter)
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            logits = model(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            done += 1
            reporter.progress(done, spec.epochs * steps_per_epoch)
        point = {"epoch": epoch + 1, "lr": spec.lr * factor, "lr_head": spec.lr_head * factor,
                 "loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
                 "epoch_seconds": time.perf_counter() - t0}
        if (epoch + 1) % spec.eval_every == 0 or epoch + 1 == spec.epochs:
            point.update(evaluate_model(model, test_data, device))
        history.append(point)
        reporter.metrics(epoch + 1, {k: v for k, v in point.items() if k != "epoch"})
        reporter.log("epoch {epoch}: loss {loss:.4f} train@1 {train_top1:.2f}".format(**point)
                     + (" test@1 {top1:.2f} test@5 {top5:.2f}".format(**point) if "top1" in point else ""))
    final = history[-1]
    result = {"checkpoint": spec.checkpoint, "top1": final["top1"], "top5": final["top5"],
              "labelled_images": len(labelled), "split": split_name, "test_images": len(test_src),
              "num_classes": train_src.num_classes, "history": history, "spec": spec.model_dump(mode="json")}
    rows = [(p["epoch"], p["lr"], p["lr_head"], p["loss"], p["train_top1"], p.get("top1", "-"), p.get("top5", "-"))
            for p in history]
    write_results(out_dir, "semisup", result, rows, ["epoch", "lr", "lr_head", "loss", "train@1", "top1", "top5"])
    reporter.artifact(out_dir / "results.json", "results", {"top1": final["top1"], "top5": final["top5"]})
    return result
