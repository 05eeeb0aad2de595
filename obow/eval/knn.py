"""The kNN evaluation run: weighted k-nearest neighbours (`obow.models.features.knn_accuracy`) of the
frozen student's features, the training split as the memory bank and the test split as queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obow.config.eval import KnnSpec
from obow.data.multicrop import eval_transform
from obow.data.views import ViewDataset
from obow.devices import resolve_device
from obow.errors import ConfigError
from obow.eval.common import load_eval_backbone, loader, open_split, write_results
from obow.models.backbone import ResNetBackbone
from obow.models.features import extract_features, knn_accuracy
from obow.reporting import Reporter, check_stop, phases_plan, start_phase


def run_knn(spec: KnnSpec, out_dir: Path, reporter: Reporter, backbone: ResNetBackbone | None = None) -> dict[str, Any]:
    """kNN top-1 of the frozen student (or of `backbone`, a baseline's features): training split as the
    memory bank, test split as queries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    if backbone is None:
        backbone = load_eval_backbone(spec.checkpoint, device).backbone
    else:
        backbone = backbone.to(device).eval()
    train_src = open_split(spec, spec.train_split, spec.subset)
    test_src = open_split(spec, spec.test_split, spec.test_subset)
    if max(spec.k) > len(train_src):
        raise ConfigError(f"k ({max(spec.k)}) is larger than the memory bank ({len(train_src)} training images)")
    transform = eval_transform(spec.resize, spec.size, spec.mean, spec.std)
    scoring = ("kNN scoring", len(test_src) * len(spec.k), "queries")
    plan = phases_plan(("train features", len(train_src), "images"), ("test features", len(test_src), "images"),
                       scoring)
    feats = []
    for n, source in enumerate((train_src, test_src)):
        check_stop(reporter)
        feats.append(extract_features(backbone, loader(ViewDataset(source, transform), spec, False), device,
                                      progress=False, reporter=reporter, label=plan[n][0], upcoming=plan[n + 1:]))
    (train_x, train_y), (test_x, test_y) = feats
    start_phase(reporter, *scoring)
    scored = 0

    def on_chunk(n: int) -> None:
        nonlocal scored
        scored += n
        reporter.progress(scored, scoring[1])
        check_stop(reporter)

    accs = {str(k): knn_accuracy(train_x, train_y, test_x, test_y, k, spec.temperature, train_src.num_classes,
                                 on_chunk=on_chunk)
            for k in spec.k}
    reporter.metrics(0, {f"knn_top1_k{k}": v for k, v in accs.items()})
    result = {"checkpoint": spec.checkpoint, "top1": accs, "temperature": spec.temperature,
              "train_images": len(train_src), "test_images": len(test_src), "spec": spec.model_dump(mode="json")}
    write_results(out_dir, "knn", result, [(k, spec.temperature, v) for k, v in accs.items()],
                  ["k", "temperature", "top1"])
    reporter.artifact(out_dir / "results.json", "results", {f"top1_k{k}": v for k, v in accs.items()})
    return result
