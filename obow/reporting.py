"""The reporter: how a run tells the world what it does.

Every entry point `run_xxx(spec, out_dir, reporter)` talks only to this protocol. The CLI passes a
console reporter (progress bar + log file); the lab's worker passes one that batches into the database.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from obow.errors import StopRequested


@runtime_checkable
class Reporter(Protocol):
    def log(self, message: str, level: str = "info") -> None:
        """A human-readable line for the run's log."""

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Scalar metrics at a global step (pretraining iteration, evaluation epoch, ...)."""

    def progress(self, done: int, total: int) -> None:
        """Units of work done out of total (iterations for training)."""

    def artifact(self, path: Path, kind: str, meta: Mapping[str, Any]) -> None:
        """A file the run produced (checkpoint, export, result table)."""

    def should_stop(self) -> bool:
        """True when the run must stop at the next safe point (cancel, time budget)."""

    def flush(self) -> None:
        """Make everything reported so far durable. Called before a checkpoint is written, so that a
        crash right after it loses no point the resumed run will not write again."""


class NullReporter:
    def log(self, message: str, level: str = "info") -> None:
        pass

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def artifact(self, path: Path, kind: str, meta: Mapping[str, Any]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def flush(self) -> None:
        pass


class RecordingReporter(NullReporter):
    """Keeps everything in memory; used by tests and by callers that want the raw series."""

    def __init__(self, stop_after_metrics: int | None = None) -> None:
        self.logs: list[tuple[str, str]] = []
        self.points: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str, dict[str, Any]]] = []
        self.last_progress: tuple[int, int] = (0, 0)
        self._stop_after = stop_after_metrics

    def log(self, message: str, level: str = "info") -> None:
        self.logs.append((level, message))

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.points.append((step, dict(values)))

    def progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)

    def artifact(self, path: Path, kind: str, meta: Mapping[str, Any]) -> None:
        self.artifacts.append((Path(path), kind, dict(meta)))

    def should_stop(self) -> bool:
        return self._stop_after is not None and len(self.points) >= self._stop_after

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(step, vals[key]) for step, vals in self.points if key in vals]


class ConsoleReporter(NullReporter):
    """Progress bar on stderr, log lines to a logger and a log file, metrics to a JSON-lines file."""

    def __init__(self, log_dir: Path | None = None, show_progress: bool = True, name: str = "obow") -> None:
        self._logger = logging.getLogger(name)
        self._bar = None
        self._show_progress = show_progress
        self._metrics_file = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            handler = logging.FileHandler(log_dir / f"LOG_INFO_{stamp}.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self._logger.addHandler(handler)
            self._metrics_file = open(log_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self._logger.setLevel(logging.INFO)

    def log(self, message: str, level: str = "info") -> None:
        getattr(self._logger, level if level in ("debug", "info", "warning", "error") else "info")(message)
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
            self._metrics_file.flush()
        if self._bar is not None:
            shown = {k: v for k, v in values.items() if k.startswith(("loss", "lr", "img_per_s"))}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in list(shown.items())[:4]}, refresh=False)

    def progress(self, done: int, total: int) -> None:
        if not self._show_progress:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="it", dynamic_ncols=True)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def flush(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.flush()
            os.fsync(self._metrics_file.fileno())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None


def check_stop(reporter: Reporter) -> None:
    if reporter.should_stop():
        raise StopRequested("stop requested")
