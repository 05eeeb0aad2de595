"""How right the ETA is: runs built-in presets and small evaluations, records the ETA the run shows when
it passes 25%, 50% and 75% of its units, and compares each with the wall time the run then really took.

Usage: python benchmarks/eta_accuracy.py [--repeats 3] [--presets FashionMNIST/tiny,...] [--evals knn,linear]
       [--set data.epoch_size=1024 ...]  (overrides applied to every preset)

Prints one table: run, share of its units done, the ETA shown then, the time actually left, and the error
(median of the repeats). The ETA counts the rest of the current phase at its measured rate plus the
phases still to come whose unit has been measured. A pretraining is one phase (training iterations); an
evaluation is read in its long first phase (features of the training split), whose ETA includes the test
split's features at the same rate per image (the cheap last phases, kNN scoring or the cached-feature
epochs, are not measured yet then).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from obow import runs
from obow.config.eval import KnnSpec, LinearSpec
from obow.config.presets import load_pretrain_config
from obow.reporting import NullReporter, RecordingReporter
from obow.train.checkpoint import latest_checkpoint

SHARES = (0.25, 0.5, 0.75)


class EtaMarks(RecordingReporter):
    """The run ETA shown when the watched phase first passes each share of its units."""

    def __init__(self, watched: str) -> None:
        super().__init__()
        self.watched = watched
        self.marks: dict[float, tuple[float, float]] = {}

    def progress(self, done: int, total: int) -> None:
        super().progress(done, total)
        snap = self.clock.snapshot()
        if not snap or snap["label"] != self.watched or not total or snap["eta_s"] is None:
            return
        for share in SHARES:
            if share not in self.marks and done >= share * total:
                self.marks[share] = (time.monotonic(), snap["eta_s"])


def measure(run: Callable[[RecordingReporter], None], watched: str) -> dict[float, float]:
    """share -> relative error (ETA - actual) / actual of one run."""
    rec = EtaMarks(watched)
    run(rec)
    end = time.monotonic()
    return {share: (eta - (end - when)) / (end - when) for share, (when, eta) in rec.marks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", default="FashionMNIST/tiny")
    parser.add_argument("--evals", default="knn,linear")
    parser.add_argument("--set", action="append", default=[], help="override for the presets, section.key=value")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in filter(None, args.presets.split(",")):
            spec = load_pretrain_config(preset, ["runtime.device=cpu", *args.set])
            errors: dict[float, list[float]] = {s: [] for s in SHARES}
            for n in range(args.repeats):
                out = Path(tmp) / f"{preset.replace('/', '_')}_{n}"
                def pretrain(rec: RecordingReporter, out: Path = out, spec=spec) -> None:
                    runs.run("pretrain", spec, out, rec)

                for share, err in measure(pretrain, "training").items():
                    errors[share].append(err)
            rows += [(f"pretrain {preset}", s, statistics.median(e)) for s, e in errors.items() if e]
        evals = [e for e in args.evals.split(",") if e]
        if evals:
            base = Path(tmp) / "for_evals"
            runs.run("pretrain", load_pretrain_config(
                "FashionMNIST/tiny", ["optim.num_epochs=1", "data.epoch_size=64", "runtime.device=cpu"]), base,
                NullReporter())
            ckpt = str(latest_checkpoint(base))
            common = dict(checkpoint=ckpt, dataset="FashionMNIST", resize=40, size=40, workers=0, device="cpu")
            specs = {
                # the long phase of each, whose ETA also counts the phases after it (same unit: images)
                "knn": (KnnSpec(**common, subset=400, test_subset=100, k=[20, 200]), "train features"),
                "linear": (LinearSpec(**common, subset=300, test_subset=100, epochs=10, lr=0.1, precache=True),
                           "caching train features"),
            }
            for kind in evals:
                spec, watched = specs[kind]
                errors = {s: [] for s in SHARES}
                for n in range(args.repeats):
                    out = Path(tmp) / f"{kind}_{n}"
                    for share, err in measure(lambda rec, out=out, kind=kind, spec=spec: runs.run(kind, spec, out, rec),
                                              watched).items():
                        errors[share].append(err)
                rows += [(f"{kind} ({watched})", s, statistics.median(e)) for s, e in errors.items() if e]
    print(f"{'run':40s} {'at':>5s} {'ETA error (median)':>20s}")
    for name, share, err in rows:
        flag = "" if abs(err) <= 0.25 else "  > 25%"
        print(f"{name:40s} {share:5.0%} {err:+19.1%}{flag}")


if __name__ == "__main__":
    main()
