"""The reporter: how a run tells the world what it does.

Every entry point `run_xxx(spec, out_dir, reporter)` talks only to this protocol. The CLI passes a
console reporter (progress bar + log file); the lab's worker passes one that batches into the database.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from obow.errors import StopRequested
from obow.progress import PhaseClock, Upcoming, describe


@runtime_checkable
class Reporter(Protocol):
    def log(self, message: str, level: str = "info") -> None:
        """A human-readable line for the run's log."""

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Scalar metrics at a global step (pretraining iteration, evaluation epoch, ...)."""

    def progress(self, done: int, total: int) -> None:
        """Units of work done out of total, within the current phase (iterations for training)."""

    def phase(self, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()) -> None:
        """A new labelled phase of `total` units begins ("caching features", 60000 "images"); `upcoming`
        lists the phases still to come after it as (label, total, unit), for the run's ETA."""

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

    def phase(self, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()) -> None:
        pass

    def artifact(self, path: Path, kind: str, meta: Mapping[str, Any]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def flush(self) -> None:
        pass


class RecordingReporter(NullReporter):
    """Keeps everything in memory; used by tests and by callers that want the raw series."""

    def __init__(self, stop_after_metrics: int | None = None, clock: Callable[[], float] = time.time) -> None:
        """`clock`: the time the phases' rates and ETA are measured in (tests may pass CPU time)."""
        self.logs: list[tuple[str, str]] = []
        self.points: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str, dict[str, Any]]] = []
        self.last_progress: tuple[int, int] = (0, 0)
        # (monotonic time, phase label, done, total) of every phase start and progress report
        self.progress_log: list[tuple[float, str, int, int]] = []
        self.clock = PhaseClock(clock)
        self._stop_after = stop_after_metrics

    def log(self, message: str, level: str = "info") -> None:
        self.logs.append((level, message))

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.points.append((step, dict(values)))

    def progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)
        self.clock.update(done, total)
        self.progress_log.append((time.monotonic(), self.clock.current or "", done, total))

    def phase(self, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()) -> None:
        self.clock.start(label, total, unit, done, upcoming)
        self.progress_log.append((time.monotonic(), label, done, total))

    def phases(self) -> list[str]:
        """The labels of the phases in the order they began (a label repeats when a phase resumes)."""
        labels: list[str] = []
        for _, label, _, _ in self.progress_log:
            if not labels or labels[-1] != label:
                labels.append(label)
        return labels

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
        self._bar_phase: str | None = None
        self._clock = PhaseClock()
        self._last_refresh = 0.0
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

    def phase(self, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()) -> None:
        self._clock.start(label, total, unit, done, upcoming)
        if not self._show_progress:
            self._logger.info("phase: %s (%d %s)", label, total, unit)

    def progress(self, done: int, total: int) -> None:
        """One tqdm bar per phase, labelled with it; the postfix is the run's ETA (all phases)."""
        self._clock.update(done, total)
        if not self._show_progress:
            return
        snapshot = self._clock.snapshot()
        label = snapshot["label"] if snapshot else None
        if self._bar is not None and self._bar_phase != label:
            self._bar.close()
            self._bar = None
        if self._bar is None:
            from tqdm import tqdm

            unit = snapshot["unit"] if snapshot else "it"
            self._bar = tqdm(total=total, initial=done, unit=unit, desc=label, dynamic_ncols=True)
            self._bar_phase = label
        self._bar.total = total
        self._bar.n = done
        now = time.monotonic()
        if now - self._last_refresh >= 0.2 or done >= total:  # a redraw per batch would cost more than it shows
            self._last_refresh = now
            if snapshot and snapshot.get("eta_s") is not None and snapshot.get("upcoming"):
                self._bar.set_postfix_str(f"run ETA {describe(snapshot).rsplit('ETA ', 1)[-1]}", refresh=False)
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


def start_phase(
    reporter: Reporter, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()
) -> None:
    """Begin a phase on any reporter (one written before phases existed only gets the progress report)."""
    hook = getattr(reporter, "phase", None)
    if callable(hook):
        hook(label, total, unit, done, tuple(upcoming))
    reporter.progress(done, total)


def phases_plan(*phases: tuple[str, int, str]) -> list[tuple[str, int, str]]:
    """The (label, total, unit) list of a run's phases, dropping empty ones (no test split, no cache)."""
    return [p for p in phases if p[1] > 0]


def check_stop(reporter: Reporter) -> None:
    if reporter.should_stop():
        raise StopRequested("stop requested")
