"""Evaluation settings that fit the run they evaluate, and what an evaluation will cost (torch-free).

An evaluation launched from a run takes that run's data (dataset, folder), its evaluation view (the
teacher view's resize and crop) and its normalisation, so the probe sees images as the network was
trained on them. On top come per-dataset defaults sized to finish in minutes on a CPU (subsets of a
stated size, a few epochs on cached features); `images_to_process` counts the forward passes an
evaluation spec implies, which the lab turns into an estimated time with the last measured speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from obow.config.eval import EVAL_SPECS, image_defaults

# Images per split and classes of the datasets whose size is known without opening them.
# None: a folder of the user's (ImageNet, ImageFolder): its size is only known when it is read.
DATASET_SIZES: dict[str, dict[str, Any]] = {
    "FashionMNIST": {"train": 60_000, "val": 10_000, "test": 10_000, "classes": 10},
    "MNIST": {"train": 60_000, "val": 10_000, "test": 10_000, "classes": 10},
    "Synthetic": {"train": 512, "val": 128, "test": 128, "classes": 4},
    "FoolboxImageNet": {"train": 20, "val": 20, "test": 20, "classes": 20},
}

# Per dataset and kind: settings that finish in minutes on two CPU cores with the tiny preset's backbone.
_SMALL_IMAGES: dict[str, dict[str, Any]] = {
    "linear": {"subset": 1000, "test_subset": 500, "precache": True, "cache_views": "center_flip",
               "batch_norm": True, "lr": 0.1, "epochs": 10, "cos_schedule": True, "eval_every": 5,
               "workers": 0},
    "knn": {"subset": 1000, "test_subset": 200, "k": [20], "workers": 0},
    "semisup": {"subset": 1000, "test_subset": 200, "percentage": 10.0, "epochs": 3, "schedule": [2],
                "eval_every": 3, "workers": 0},
    "fewshot": {"test_subset": 100, "episodes": 100, "n_way": 5, "k_shot": [1, 5], "n_query": 15,
                "workers": 0},
    "svm": {"subset": 100, "test_subset": 100, "folds": 3, "costs": [0.1, 1.0], "workers": 0},
}
QUICK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "FashionMNIST": _SMALL_IMAGES,
    "MNIST": _SMALL_IMAGES,
    "Synthetic": {"linear": {"precache": True, "batch_norm": True, "lr": 0.1, "epochs": 5, "cos_schedule": True,
                             "workers": 0},
                  "knn": {"k": [20], "workers": 0},
                  "fewshot": {"episodes": 50, "n_way": 4, "n_query": 5, "workers": 0}},
}
VIEWS = {"center_flip": 2, "ten_crop": 10}
BACKWARD_COST = 3  # a training step costs about three forward passes (forward, two backward products)


def parent_view(parent_kind: str, parent_spec: dict[str, Any] | None) -> dict[str, Any]:
    """The data and view an evaluation of a run of `parent_kind` should use, from the parent's spec:
    a pretraining's dataset, folder, teacher view (resize, crop) and normalisation; another evaluation's
    own settings; nothing for what names no data (an import)."""
    spec = parent_spec if isinstance(parent_spec, dict) else {}
    if parent_kind == "pretrain":
        data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
        if not data.get("dataset_name"):
            return {}
        out = {"dataset": data["dataset_name"], "data_dir": data.get("data_dir"),
               "resize": data.get("teacher_resize"), "size": data.get("teacher_size"),
               "mean": data.get("mean"), "std": data.get("std")}
        if data.get("val_split") in ("val", "test"):
            out["test_split"] = data["val_split"]
        return {k: v for k, v in out.items() if v is not None or k == "data_dir"}
    if parent_kind in EVAL_SPECS:
        keys = ("dataset", "data_dir", "resize", "size", "mean", "std", "test_split")
        return {k: spec[k] for k in keys if k in spec}
    return {}


def inherit_view(kind: str, parent_kind: str, parent_spec: dict[str, Any] | None,
                 requested: dict[str, Any]) -> dict[str, Any]:
    """`requested` (an evaluation spec's values) with what it leaves unset taken from the parent's view:
    an evaluation of a run reads that run's data as it was trained on, unless it names other data
    (then the dataset's own defaults apply, never the parent's sizes for different images)."""
    if kind not in EVAL_SPECS:
        return requested
    view = parent_view(parent_kind, parent_spec)
    if not view or requested.get("dataset", view["dataset"]) != view["dataset"]:
        return requested
    return {**view, **{k: v for k, v in requested.items() if v is not None or k not in view}}


def evaluation_defaults(
    kind: str, parent_kind: str, parent_spec: dict[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """(spec values, notes saying where they came from) for a `kind` evaluation of such a parent."""
    if kind not in EVAL_SPECS:
        raise KeyError(f"'{kind}' is not an evaluation kind; use one of {', '.join(EVAL_SPECS)}")
    view = parent_view(parent_kind, parent_spec)
    dataset = view.get("dataset", "FashionMNIST")
    notes = []
    if view:
        notes.append(f"dataset, sizes and normalisation from the parent's {parent_kind} spec ({dataset}, "
                     f"{view.get('size', image_defaults(dataset)['size'])} px)")
    else:
        notes.append(f"the parent names no dataset: {dataset} with its standard view")
    values = {**image_defaults(dataset), "dataset": dataset, **view}
    quick = QUICK_DEFAULTS.get(dataset, {}).get(kind)
    if quick:
        values.update(quick)
        sized = [f"{k}={quick[k]}" + (" per class" if k.endswith("subset") else "")
                 for k in ("subset", "test_subset", "epochs", "episodes") if k in quick]
        notes.append(f"CPU-sized defaults for {dataset}: " + (", ".join(sized) or "its full (small) splits"))
    else:
        notes.append(f"no CPU-sized defaults for {dataset} {kind}: the protocol's own (set subset to go faster)")
    if kind == "fewshot" and dataset in DATASET_SIZES:
        values.setdefault("split", values.get("test_split", "val"))
    return values, notes


@dataclass(frozen=True)
class Cost:
    images: int | None  # forward passes over images; None when the data's size is unknown
    parts: list[str]  # how the count is made up, for people


def _split_count(dataset: str, split: str, per_class: int | None) -> int | None:
    sizes = DATASET_SIZES.get(dataset)
    if sizes is None:  # an ImageFolder: unknown until it is read
        return None
    total, classes = sizes[split], sizes["classes"]
    return total if per_class is None else min(total, per_class * classes)


def images_to_process(kind: str, spec: dict[str, Any]) -> Cost:
    """Forward passes over images the evaluation `spec` (validated values) implies; a backward pass counts
    as two more. Head-only epochs on cached features cost next to nothing and are not counted."""
    dataset = spec.get("dataset", "FashionMNIST")
    train = _split_count(dataset, spec.get("train_split", "train"), spec.get("subset"))
    test = _split_count(dataset, spec.get("test_split", "val"), spec.get("test_subset"))
    if train is None or test is None:
        return Cost(None, [f"{dataset} is a folder of yours: its size is known once it is read"])
    epochs = int(spec.get("epochs", 1))
    if kind == "linear":
        if spec.get("precache"):
            views = VIEWS.get(spec.get("cache_views", "center_flip"), 2)
            return Cost(train * views + test, [f"{train} train images × {views} cached views", f"{test} test images",
                                               f"{epochs} epochs on the cached features (no images)"])
        return Cost(train * epochs + test, [f"{train} train images × {epochs} epochs", f"{test} test images"])
    if kind == "semisup":
        labelled = max(1, math.ceil(train * float(spec.get("percentage", 100)) / 100))
        evals = math.ceil(epochs / max(1, int(spec.get("eval_every", 1))))
        return Cost(labelled * epochs * BACKWARD_COST + test * evals,
                    [f"{labelled} labelled images × {epochs} epochs × {BACKWARD_COST} (forward + backward)",
                     f"{test} test images × {evals} evaluations"])
    if kind == "fewshot":
        split = _split_count(dataset, spec.get("split", "val"), spec.get("test_subset")) or 0
        return Cost(split, [f"{split} images of the {spec.get('split', 'val')} split (features once)"])
    return Cost(train + test, [f"{train} train images", f"{test} test images"])
