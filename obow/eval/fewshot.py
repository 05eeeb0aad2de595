"""Few-shot classification of novel classes with a cosine prototype classifier.

Features of the chosen split are extracted once; every episode (n classes, k support and q query
images per class, all drawn without replacement from a seeded generator) then costs a few small
matrix products. Score of a query for class c: scale · cos(query, normalise(mean of the normalised
support features of c)). Accuracy is averaged over episodes with a 95% interval 1.96·std/√episodes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from obow.config.eval import FewshotSpec
from obow.data.multicrop import eval_transform
from obow.data.views import ViewDataset
from obow.devices import resolve_device
from obow.errors import ConfigError, DataError
from obow.eval.common import load_eval_backbone, loader, open_split, per_class_counts, write_results
from obow.models.features import extract_features
from obow.reporting import Reporter, check_stop, start_phase


def prototype_logits(support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor, n_way: int,
                     scale: float = 10.0) -> torch.Tensor:
    """[Q, n_way] scores; `support_labels` are episode-local labels 0..n_way-1."""
    support = F.normalize(support.float(), dim=1)
    sums = torch.zeros(n_way, support.shape[1]).index_add_(0, support_labels.long(), support)
    counts = torch.bincount(support_labels.long(), minlength=n_way).clamp(min=1).unsqueeze(1)
    prototypes = F.normalize(sums / counts, dim=1)
    return scale * F.normalize(queries.float(), dim=1) @ prototypes.t()


def mean_and_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width 1.96·std/√n (population std, as the usual few-shot reports)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(1.96 * arr.std() / math.sqrt(len(arr)))


def make_episodes(labels: Sequence[int], classes: Sequence[int], n_way: int, k_shot: int, n_query: int,
                  episodes: int, seed: int) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """Deterministic episodes: (chosen classes, support indices [n_way, k], query indices [n_way, q])."""
    labels_arr = np.asarray(labels)
    members = {c: np.flatnonzero(labels_arr == c) for c in classes}
    if n_way > len(classes):
        raise ConfigError(f"n_way ({n_way}) is larger than the number of novel classes ({len(classes)}); "
                          f"lower --fewshot-n or use more classes")
    small = {c: len(m) for c, m in members.items() if len(m) < k_shot + n_query}
    if small:
        c, n = next(iter(small.items()))
        raise DataError(f"{len(small)} novel classes have fewer than k_shot + n_query = {k_shot + n_query} images "
                        f"(class {c} has {n}); lower --fewshot-k / --fewshot-q or use more images per class")
    rng = np.random.default_rng([seed, k_shot])
    out = []
    for _ in range(episodes):
        chosen = [int(c) for c in rng.choice(np.asarray(classes), size=n_way, replace=False)]
        picks = np.stack([rng.choice(members[c], size=k_shot + n_query, replace=False) for c in chosen])
        out.append((chosen, picks[:, :k_shot], picks[:, k_shot:]))
    return out


def episode_accuracy(feats: torch.Tensor, support: np.ndarray, query: np.ndarray, scale: float) -> float:
    n_way, k = support.shape
    q = query.shape[1]
    support_labels = torch.arange(n_way).repeat_interleave(k)
    query_labels = torch.arange(n_way).repeat_interleave(q)
    logits = prototype_logits(feats[torch.from_numpy(support.reshape(-1))], support_labels,
                              feats[torch.from_numpy(query.reshape(-1))], n_way, scale)
    return float((logits.argmax(1) == query_labels).float().mean() * 100)


def novel_classes(spec: FewshotSpec, class_names: Sequence[str]) -> list[int]:
    """Class indices from the JSON file (names or indices), else a seeded share of all classes."""
    if spec.novel_classes_file:
        path = Path(spec.novel_classes_file)
        try:
            listed = json.loads(path.read_bytes())[spec.novel_key]
        except FileNotFoundError:
            raise ConfigError(f"novel-classes file '{path}' does not exist") from None
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"novel-classes file '{path}' must be JSON with a list under '{spec.novel_key}', "
                              f"like {{\"novel_classes\": [...]}}") from None
        where = {name: i for i, name in enumerate(class_names)}
        found: list[int] = []
        for position, entry in enumerate(listed):
            if isinstance(entry, int) and 0 <= entry < len(class_names):
                found.append(entry)
            elif isinstance(entry, str) and entry in where:
                found.append(where[entry])
            else:  # named by position, not quoted: the file is a path from a request
                raise ConfigError(f"entry {position} of '{spec.novel_key}' in '{path}' is neither a class name "
                                  f"nor an index 0..{len(class_names) - 1} of this dataset")
        return sorted(set(found))
    count = max(1, round(spec.novel_fraction * len(class_names)))
    rng = np.random.default_rng(spec.seed)
    return sorted(int(c) for c in rng.permutation(len(class_names))[:count])


def run_fewshot(spec: FewshotSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    backbone = load_eval_backbone(spec.checkpoint, device).backbone
    source = open_split(spec, spec.split, spec.test_subset)
    classes = novel_classes(spec, source.classes)
    # fail on impossible episodes before the costly extraction
    for k in spec.k_shot:
        make_episodes(source.targets, classes, spec.n_way, k, spec.n_query, 1, spec.seed)
    novel = set(classes)
    keep = [i for i, label in enumerate(source.targets) if label in novel]
    reporter.log(f"few-shot: {len(keep)} images of {len(classes)} novel classes, {spec.episodes} episodes of "
                 f"{spec.n_way}-way, k={spec.k_shot}, {spec.n_query} queries per class")
    data = ViewDataset(source, eval_transform(spec.resize, spec.size, spec.mean, spec.std), keep)
    episodes = ("episodes", spec.episodes * len(spec.k_shot), "episodes")
    feats, labels = extract_features(backbone, loader(data, spec, False), device, progress=False,
                                     reporter=reporter, label="features", upcoming=[episodes])
    check_stop(reporter)
    rows, per_k = [], {}
    step = 0
    start_phase(reporter, *episodes)
    for k in spec.k_shot:
        accs = []
        for chosen, support, query in make_episodes(labels.tolist(), classes, spec.n_way, k, spec.n_query,
                                                    spec.episodes, spec.seed):
            check_stop(reporter)
            del chosen
            accs.append(episode_accuracy(feats, support, query, spec.scale))
            step += 1
            reporter.progress(step, spec.episodes * len(spec.k_shot))
        mean, ci = mean_and_ci95(accs)
        per_k[str(k)] = {"accuracy": mean, "ci95": ci, "episodes": len(accs)}
        reporter.metrics(k, {f"fewshot_{k}shot_acc": mean, f"fewshot_{k}shot_ci95": ci})
        reporter.log(f"{spec.n_way}-way {k}-shot: {mean:.2f} ± {ci:.2f}")
        rows.append((spec.n_way, k, spec.n_query, len(accs), mean, ci))
    result = {"checkpoint": spec.checkpoint, "n_way": spec.n_way, "n_query": spec.n_query, "shots": per_k,
              "novel_classes": [source.classes[c] for c in classes], "images": len(keep),
              "images_per_class": per_class_counts(labels.tolist(), source.num_classes),
              "spec": spec.model_dump(mode="json")}
    write_results(out_dir, "fewshot", result, rows, ["n_way", "k_shot", "queries", "episodes", "accuracy", "ci95"])
    reporter.artifact(out_dir / "results.json", "results", {k: v["accuracy"] for k, v in per_k.items()})
    return result
