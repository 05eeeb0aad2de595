"""VOC07-style evaluation: one-vs-rest linear SVMs per class on frozen features, mean AP on the test split.

For each class, the cost is chosen from a grid by k-fold cross-validation on the training split
(maximising the mean held-out AP), the SVM is refitted on the whole training split with that cost,
and the test AP is computed on its decision scores. The headline AP is the standard non-interpolated
one (the mean of the precisions at each positive's rank, tied scores counted as one threshold).
Reported beside it: the area under the monotone (interpolated) precision envelope, which is what the
fair self-supervision benchmark's test script computes, and the legacy VOC07 11-point AP. Targets are
1 (present), 0 (absent) or -1 (ignored, e.g. VOC "difficult"): ignored images are left out of that
class's training and AP, as in the benchmark. The SVM settings are the benchmark's: squared hinge,
L2, positive-class weight 2, tolerance 1e-4.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from obow.config.eval import SvmSpec
from obow.data.multicrop import eval_transform
from obow.data.sources import ImageSource
from obow.data.views import ViewDataset
from obow.devices import resolve_device
from obow.errors import ConfigError, DataError
from obow.eval.common import load_eval_backbone, loader, open_split, write_results
from obow.eval.splits import image_names
from obow.models.features import extract_features
from obow.reporting import Reporter, check_stop, start_phase


def _as_ranking_input(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The three AP variants' common input: float64 scores, boolean positives, and the positive count."""
    positives = np.asarray(positives).astype(bool)
    return np.asarray(scores, dtype=np.float64), positives, int(positives.sum())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP: Σ over distinct score thresholds of (recall gain) × precision. NaN without positives."""
    scores, positives, total = _as_ranking_input(scores, positives)
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(positives)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0, tp]) / total
    return float((recall_gain * precision).sum())


def interpolated_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve after making precision non-increasing in recall
    (all-point interpolation, VOC2010+ and the fair benchmark's test). NaN without positives."""
    scores, positives, total = _as_ranking_input(scores, positives)
    if total == 0:
        return float("nan")
    hits = positives[np.argsort(-scores, kind="stable")]
    tp = np.cumsum(hits)
    precision = np.maximum.accumulate((tp / np.arange(1, len(tp) + 1))[::-1])[::-1]
    return float(precision[hits].sum() / total)


def voc07_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """Legacy VOC07 11-point interpolated AP: mean over recall r in {0, .1, ..., 1} of max precision at >= r."""
    scores, positives, total = _as_ranking_input(scores, positives)
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positives[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / total
    points = [precision[recall >= r].max() if (recall >= r).any() else 0.0 for r in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def normalise_features(train: np.ndarray, test: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """`bn`: standardise each dimension by the training statistics (a non-affine BN, like pool5_bn);
    `l2`: unit-length rows; `none`: raw pool5."""
    if mode == "bn":
        mean, std = train.mean(0, keepdims=True), np.sqrt(train.var(0, keepdims=True) + 1e-5)
        return (train - mean) / std, (test - mean) / std
    if mode == "l2":
        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        return unit(train), unit(test)
    return train, test


def _svm(cost: float, max_iter: int, seed: int):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, class_weight={1: 2, 0: 1}, penalty="l2", loss="squared_hinge", dual=True, tol=1e-4,
                     max_iter=max_iter, intercept_scaling=1.0, random_state=seed)


def _fit(model, x: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def choose_cost(x: np.ndarray, y: np.ndarray, costs: list[float], folds: int, seed: int,
                max_iter: int, on_fit: Callable[[], None] | None = None) -> tuple[float, dict[float, float]]:
    """(best cost, mean cross-validated AP per cost); ties go to the smaller cost. `on_fit()` after each
    of the costs × folds fits (progress)."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    cv: dict[float, float] = {}
    for cost in costs:
        aps = []
        for fit_idx, held_idx in splitter.split(x, y):
            model = _fit(_svm(cost, max_iter, seed), x[fit_idx], y[fit_idx])
            aps.append(average_precision(model.decision_function(x[held_idx]), y[held_idx]))
            if on_fit is not None:
                on_fit()
        cv[cost] = float(np.nanmean(aps))
    best = max(costs, key=lambda c: (cv[c], -c))
    return best, cv


def label_matrix(source: ImageSource, labels_file: str | None, split: str) -> tuple[np.ndarray, list[str]]:
    """[N, C] targets in {1, 0, -1 (ignored)}: one-hot folder labels, or the labels file's lists matched
    by file name (its optional "ignore" mapping marks image/class pairs to leave out)."""
    if labels_file is None:
        matrix = np.zeros((len(source), source.num_classes), dtype=np.int64)
        matrix[np.arange(len(source)), np.asarray(source.targets)] = 1
        return matrix, list(source.classes)
    path = Path(labels_file)
    try:
        data = json.loads(path.read_bytes())
        classes, labels = list(data["classes"]), dict(data["labels"])
        ignore = dict(data.get("ignore", {}))
    except FileNotFoundError:
        raise ConfigError(f"labels file '{path}' does not exist") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"labels file '{path}' must be JSON like {{\"classes\": [...], \"labels\": "
                          f"{{\"<image file name>\": [classes]}}, \"ignore\": {{...}} (optional)}}") from None
    names = image_names(source)
    if names is None:
        raise ConfigError("a labels file needs an image-folder dataset (images are matched by file name)")
    where = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(source), len(classes)), dtype=np.int64)
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(f"labels file '{path}' has no entry for {len(missing)} {split} images "
                        f"(first: {', '.join(missing[:3])})")
    for row, name in enumerate(names):
        for value, mapping, key in ((1, labels, "labels"), (-1, ignore, "ignore")):
            for position, entry in enumerate(mapping.get(name, [])):
                col = entry if isinstance(entry, int) else where.get(entry)
                if col is None or not 0 <= col < len(classes):
                    # the entry itself is not quoted: the file is a path from a request (see read_split)
                    raise DataError(f"labels file '{path}': {key} entry {position} of image '{name}' is not "
                                    f"one of its {len(classes)} classes (a name or an index)")
                matrix[row, col] = value
    return matrix, classes


def run_svm(spec: SvmSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    backbone = load_eval_backbone(spec.checkpoint, device).backbone
    train_src = open_split(spec, spec.train_split, spec.subset)
    test_src = open_split(spec, spec.test_split, spec.test_subset)
    y_train, classes = label_matrix(train_src, spec.labels_file, spec.train_split)
    y_test, _ = label_matrix(test_src, spec.labels_file, spec.test_split)
    if y_train.shape[1] != y_test.shape[1]:
        raise DataError(f"train has {y_train.shape[1]} classes but {spec.test_split} has {y_test.shape[1]}")
    positives, negatives = (y_train == 1).sum(0), (y_train == 0).sum(0)
    too_few = [classes[c] for c in range(len(classes)) if min(positives[c], negatives[c]) < spec.folds]
    if too_few:
        raise DataError(f"{len(too_few)} classes have fewer than folds={spec.folds} positive or negative training "
                        f"images (first: {too_few[0]}); lower --folds or add images")
    transform = eval_transform(spec.resize, spec.size, spec.mean, spec.std)
    fitting = ("SVM fits", len(classes) * (len(spec.costs) * spec.folds + 1), "fits")
    x_train = extract_features(backbone, loader(ViewDataset(train_src, transform), spec, False), device,
                               progress=False, reporter=reporter, label="train features",
                               upcoming=[("test features", len(test_src), "images"), fitting])[0].numpy()
    check_stop(reporter)
    x_test = extract_features(backbone, loader(ViewDataset(test_src, transform), spec, False), device,
                              progress=False, reporter=reporter, label="test features",
                              upcoming=[fitting])[0].numpy()
    x_train, x_test = normalise_features(x_train.astype(np.float64), x_test.astype(np.float64), spec.normalize)
    per_class, rows = [], []
    start_phase(reporter, *fitting)
    fits = 0

    def on_fit() -> None:
        nonlocal fits
        fits += 1
        reporter.progress(fits, fitting[1])
        check_stop(reporter)

    for c, name in enumerate(classes):
        check_stop(reporter)
        used, tested = y_train[:, c] >= 0, y_test[:, c] >= 0
        x_fit, y_fit = x_train[used], y_train[used, c]
        best, cv = choose_cost(x_fit, y_fit, spec.costs, spec.folds, spec.seed, spec.max_iter, on_fit)
        model = _fit(_svm(best, spec.max_iter, spec.seed), x_fit, y_fit)
        on_fit()
        scores, truth = model.decision_function(x_test[tested]), y_test[tested, c]
        ap, ap_int, ap11 = average_precision(scores, truth), interpolated_ap(scores, truth), voc07_ap(scores, truth)
        per_class.append({"class": name, "cost": best, "cv_ap": cv[best] * 100, "ap": ap * 100,
                          "ap_interpolated": ap_int * 100, "ap_voc07_11pt": ap11 * 100,
                          "cv": {str(k): v * 100 for k, v in cv.items()}})
        rows.append((name, best, cv[best] * 100, ap * 100, ap_int * 100, ap11 * 100))
    valid = [p for p in per_class if not np.isnan(p["ap"])]
    if not valid:
        raise DataError(f"no class has a positive image in the {spec.test_split} split; mAP is undefined")
    mean_ap = float(np.mean([p["ap"] for p in valid]))
    mean_ap11 = float(np.mean([p["ap_voc07_11pt"] for p in valid]))
    mean_int = float(np.mean([p["ap_interpolated"] for p in valid]))
    reporter.metrics(0, {"svm_mAP": mean_ap, "svm_mAP_interpolated": mean_int, "svm_mAP_voc07_11pt": mean_ap11})
    rows.append(("mean", "-", float(np.mean([p["cv_ap"] for p in per_class])), mean_ap, mean_int, mean_ap11))
    result = {"checkpoint": spec.checkpoint, "mAP": mean_ap, "mAP_interpolated": mean_int,
              "mAP_voc07_11pt": mean_ap11,
              "ap_definition": "mAP: non-interpolated AP over ranked scores (ties as one threshold); "
                               "mAP_interpolated: monotone precision envelope (fair benchmark); "
                               "mAP_voc07_11pt: legacy 11-point",
              "classes": per_class, "train_images": len(train_src), "test_images": len(test_src),
              "feature_dim": int(x_train.shape[1]), "spec": spec.model_dump(mode="json")}
    write_results(out_dir, "svm", result, rows, ["class", "cost", "cv_AP", "AP", "AP_interp", "AP_11pt"])
    reporter.artifact(out_dir / "results.json", "results", {"mAP": mean_ap})
    return result
