"""Phases of a run and their ETA: what a run is doing now, how far it is, and when it will be done.

A run is a sequence of labelled phases ("caching features" over images, "training" over iterations, "kNN
scoring" over queries, ...), each with done/total units. The ETA of a phase comes from its measured rate;
the clock of a phase starts at its first progress report after it began, so the first unit (worker start,
warm-up, a data loader's first batch) does not count against the rate. Phases still to come (`upcoming`)
are estimated with the rate last measured for their unit (the test split's features go as fast as the
training split's), and left out while no phase of their unit has been measured.

Pure: no torch, no lab. Time is injected, so the ETA arithmetic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Upcoming = Sequence[tuple[str, int, str]]  # (label, total, unit) of each phase still to come


def phase_rate(baseline: tuple[float, int] | None, now: float, done: int) -> float | None:
    """Units per second since the baseline (time, done) of a phase; None until there is a measurement."""
    if baseline is None:
        return None
    elapsed, units = now - baseline[0], done - baseline[1]
    if elapsed <= 0 or units <= 0:
        return None
    return units / elapsed


def eta_seconds(
    done: int,
    total: int,
    rate: float | None,
    upcoming: Upcoming = (),
    rates_by_unit: Mapping[str, float] | None = None,
    unit: str = "it",
) -> float | None:
    """Seconds until the run is done: the rest of the current phase at its rate, plus each upcoming phase
    at the rate measured for its unit (the current one's included). None while the current rate is
    unknown."""
    if rate is None or rate <= 0:
        return None
    known = dict(rates_by_unit or {})
    known[unit] = rate
    seconds = max(0, total - done) / rate
    for _, phase_total, phase_unit in upcoming:
        phase_rate_ = known.get(phase_unit)
        if phase_rate_:
            seconds += max(0, phase_total) / phase_rate_
    return seconds


def format_duration(seconds: float | None) -> str:
    """'2m10s', '1h05m', '45s'; '?' when unknown."""
    if seconds is None:
        return "?"
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class _Phase:
    label: str
    unit: str
    total: int
    done: int
    started_at: float
    start_done: int
    baseline: tuple[float, int] | None = None
    upcoming: list[tuple[str, int, str]] = field(default_factory=list)


class PhaseClock:
    """The current phase of a run and the rates measured so far.

    Returning to a label seen before (training after an epoch-end kNN monitor) continues its clock, so
    its rate includes the interruptions, as its remaining time will."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._current: _Phase | None = None
        self._seen: dict[str, _Phase] = {}
        self._rates: dict[str, float] = {}  # unit -> the last measured rate of a phase of that unit
        self.index = 0  # phases started so far (a return to an earlier label counts again)

    @property
    def current(self) -> str | None:
        return self._current.label if self._current else None

    def start(self, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()) -> None:
        self._retire()
        now = self._clock()
        earlier = self._seen.get(label)
        if earlier is not None and earlier.unit == unit and earlier.total == total and done >= earlier.done:
            phase = earlier
            phase.done = done
        else:
            phase = _Phase(label, unit, max(0, int(total)), int(done), now, int(done))
        phase.upcoming = [(str(lbl), int(tot), str(u)) for lbl, tot, u in upcoming]
        self._current = self._seen[label] = phase
        self.index += 1

    def update(self, done: int, total: int | None = None) -> None:
        """A progress report of the current phase (one called "progress" is started when there is none)."""
        if self._current is None:
            self.start("progress", total or 0)
        phase = self._current
        assert phase is not None
        if total is not None:
            phase.total = max(0, int(total))
        phase.done = int(done)
        if phase.baseline is None or done < phase.baseline[1]:
            phase.baseline = (self._clock(), int(done))  # the clock starts at the first report

    def _retire(self) -> None:
        phase = self._current
        if phase is not None:
            rate = phase_rate(phase.baseline, self._clock(), phase.done)
            if rate:
                self._rates[phase.unit] = rate

    def snapshot(self) -> dict[str, Any] | None:
        """The current phase as the lab stores it and the dashboard shows it (JSON-ready)."""
        phase = self._current
        if phase is None:
            return None
        now = self._clock()
        rate = phase_rate(phase.baseline, now, phase.done)
        phase_eta = eta_seconds(phase.done, phase.total, rate, unit=phase.unit)
        eta = eta_seconds(phase.done, phase.total, rate, phase.upcoming, self._rates, phase.unit)
        return {
            "label": phase.label,
            "unit": phase.unit,
            "done": phase.done,
            "total": phase.total,
            "index": self.index,
            "upcoming": [label for label, _, _ in phase.upcoming],
            "started_at": phase.started_at,
            "updated_at": now,
            "rate": rate,
            "phase_eta_s": phase_eta,
            "eta_s": eta,
        }


def describe(snapshot: Mapping[str, Any] | None) -> str:
    """'caching features 1200/60000 images · ETA 2m10s' (the CLI's and the log's wording)."""
    if not snapshot:
        return ""
    text = f"{snapshot['label']} {snapshot['done']}/{snapshot['total']} {snapshot['unit']}"
    if snapshot.get("eta_s") is not None:
        text += f" · ETA {format_duration(snapshot['eta_s'])}"
    return text
