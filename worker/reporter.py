"""The reporter a worker hands to the library: batches metrics and log lines into the database,
keeps the run's heartbeat fresh, records artifacts, and turns a cancel request into should_stop().

Every write is fenced by the attempt's id (`server.core.transitions.fenced_update` in the same
transaction): once this attempt no longer owns the run, nothing it sends is stored, and should_stop()
turns true so the library stops at its next step."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from obow.errors import ObowError
from obow.progress import PhaseClock, Upcoming
from server.core import artifacts as artifact_store
from server.core import metrics as metric_store
from server.core import transitions
from server.core.models import Attempt, LogLine, Run, RunState, utcnow
from server.core.notify import run_changed
from server.core.space import low_space
from server.core.text import clean_json, clean_text
from worker.supervisor import HANDED_BACK, LOST_RUN

LEVELS = ("debug", "info", "warning", "error")


class DiskFull(ObowError):
    """The lab's disk is (almost) full: the run stops with this reason, while it can still be recorded."""


class DbReporter:
    def __init__(
        self,
        maker: sessionmaker[Session],
        run_id: int,
        attempt_id: int,
        artifact_root: Path,
        flush_every_s: float = 1.0,
        flush_points: int = 5000,
        stop_check_s: float = 1.0,
        heartbeat_s: float | None = 10.0,
        watched_disks: Sequence[Path] = (),
        min_free_bytes: int = 0,
    ) -> None:
        """`watched_disks`, `min_free_bytes`: before storing a batch (and so before every checkpoint, which
        the library precedes with a flush) the reporter checks those disks and raises `DiskFull` when one
        has less free space than that."""
        self._maker = maker
        self._run_id = run_id
        self._attempt_id = attempt_id
        self.lost_ownership = False
        self._root = artifact_root
        self._flush_every_s = flush_every_s
        self._flush_points = flush_points
        self._stop_check_s = stop_check_s
        self._points: list[tuple[str, int, float, float]] = []
        self._logs: list[dict[str, Any]] = []
        self._progress: tuple[int, int] | None = None
        self._clock = PhaseClock()
        self._phase_dirty = False
        # points from other threads (the system-metrics sampler): appended there, drained by flush()
        self._foreign: deque[tuple[str, int, float, float]] = deque()
        self._last: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._last_stop_check = 0.0
        self._stop = False
        self.handoff_requested = False
        self._skipped_keys: set[str] = set()
        self._stored_keys: dict[str, str] = {}  # a metric key as the library gives it -> as it is stored
        self._watched = list(watched_disks)
        self._min_free = min_free_bytes
        with maker() as session:
            run = session.get(Run, run_id)
            self._keys: list[str] = list(run.metric_keys or []) if run else []
            self._last = dict(run.last_metrics or {}) if run else {}
            first_start = session.scalar(select(func.min(Attempt.started_at)).where(Attempt.run_id == run_id))
        # the origin of the wall-time axis of system metrics: the run's first attempt, so that a resumed
        # attempt's points follow the earlier ones instead of replacing them
        self.origin = first_start.timestamp() if first_start is not None else time.time()
        # keys an earlier attempt of this run wrote: this attempt's first point of each replaces the
        # earlier attempt's points from that step on (a resume repeats the steps after the checkpoint)
        self._earlier_keys = set(self._keys)
        self._seen_keys: set[str] = set()
        self._beating = threading.Event()
        self._beater: threading.Thread | None = None
        if heartbeat_s is not None:  # None: a supervising process keeps the heartbeat
            self._beater = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name="heartbeat")
            self._beater.start()

    # -- the Reporter protocol -------------------------------------------------------------------
    def log(self, message: str, level: str = "info") -> None:
        self._logs.append(
            {
                "run_id": self._run_id,
                "time": time.time(),
                "level": level if level in LEVELS else "info",
                "message": clean_text(message, 100_000),
            }
        )
        self._maybe_flush()

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        now = time.time()
        for key, value in values.items():
            value = float(value)
            if not math.isfinite(value):  # JSON has no NaN/inf: say so once instead of storing it
                if key not in self._skipped_keys:
                    self._skipped_keys.add(key)
                    self.log(
                        f"metric '{key}' is {value} at step {step}; non-finite values are not stored",
                        "warning",
                    )
                continue
            key = self._stored_keys.get(key) or self._stored_keys.setdefault(key, clean_text(key, 100))
            self._points.append((key, int(step), value, now))
            self._last[key] = value
        self._maybe_flush()

    def progress(self, done: int, total: int) -> None:
        self._progress = (int(done), int(total))
        self._clock.update(done, total)
        self._phase_dirty = True
        self._maybe_flush()

    def phase(self, label: str, total: int, unit: str = "it", done: int = 0, upcoming: Upcoming = ()) -> None:
        self._clock.start(clean_text(str(label), 200), total, clean_text(str(unit), 40), done, upcoming)
        self._phase_dirty = True
        self._maybe_flush()

    def system_metrics(self, values: Mapping[str, float], when: float | None = None) -> None:
        """Thread-safe: points of another thread (the system sampler), keyed by whole seconds since the
        run's first attempt began; stored by the library thread's next flush (at most a second away
        while the run reports progress) or by close()."""
        now = time.time() if when is None else when
        step = max(0, int(now - self.origin))
        for key, value in values.items():
            value = float(value)
            if math.isfinite(value):
                self._foreign.append((clean_text(key, 100), step, value, now))

    def record_provenance(self, provenance: Mapping[str, Any]) -> bool:
        """Store where and with what this attempt runs on its row (fenced: only while it owns the run)."""
        with self._maker() as session:
            if not self._owns(session, heartbeat_at=utcnow()):
                return False
            # environment text (a variable, a host name) may hold what no JSON column takes: cleaned
            session.execute(
                update(Attempt).where(Attempt.id == self._attempt_id).values(provenance=clean_json(dict(provenance)))
            )
            session.commit()
        return True

    def artifact(self, path: Path, kind: str, meta: Mapping[str, Any]) -> None:
        self.flush()
        with self._maker() as session:
            if not self._owns(session, version=Run.version + 1):
                return
            run_changed(session, self._run_id)
            artifact_store.record(session, self._root, self._run_id, Path(path), kind, meta)
            artifact_store.forget_deleted(session, self._root, self._run_id, kind)
            session.commit()

    def request_handoff(self) -> None:
        """The worker is shutting down: stop at the next step (with a checkpoint) so another worker can
        resume the run at once. Safe from a signal handler (it only sets flags)."""
        self.handoff_requested = True
        self._stop = True

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_stop_check >= self._stop_check_s:
            self._last_stop_check = now
            with self._maker() as session:
                row = session.execute(
                    select(Run.cancel_requested, Run.state, Run.attempt_id).where(Run.id == self._run_id)
                ).one_or_none()
            if row is None or row[1] != RunState.RUNNING or row[2] != self._attempt_id:
                self._lose()
            self._stop = self._stop or bool(row and row[0])
        self._maybe_flush()
        return self._stop

    def stop_outcome(self) -> str:
        """Why the library stopped: the run was taken from this attempt, the worker is handing it back,
        or a cancel."""
        if self.lost_ownership:
            return LOST_RUN
        return HANDED_BACK if self.handoff_requested else RunState.CANCELLED.value

    def _lose(self) -> None:
        self.lost_ownership = True
        self._stop = True
        self._points, self._logs, self._progress = [], [], None
        self._phase_dirty = False
        self._foreign.clear()

    def _owns(self, session: Session, **values: Any) -> bool:
        """The fenced write that guards a transaction; on False the transaction is rolled back."""
        if self.lost_ownership:
            return False
        if transitions.fenced_update(session, self._run_id, self._attempt_id, **values):
            return True
        session.rollback()
        self._lose()
        return False

    # -- batching ----------------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if (
            len(self._points) >= self._flush_points
            or time.monotonic() - self._last_flush >= self._flush_every_s
        ):
            self.flush()

    def _check_space(self) -> None:
        if self._min_free and self._watched and not self.lost_ownership:
            reason = low_space(self._watched, self._min_free)
            if reason is not None:
                raise DiskFull(reason)

    def flush(self, check_space: bool = True) -> None:
        """One transaction: points, log lines, progress, latest values, heartbeat. With `check_space`,
        first the free-space check (DiskFull, with everything still buffered for `close()`)."""
        self._last_flush = time.monotonic()
        if check_space:
            self._check_space()
        points, logs, progress = self._points, self._logs, self._progress
        self._points, self._logs, self._progress = [], [], None
        foreign: list[tuple[str, int, float, float]] = []
        while self._foreign:
            point = self._foreign.popleft()
            foreign.append(point)
            self._last[point[0]] = point[2]
        phase = clean_json(self._clock.snapshot()) if self._phase_dirty else None
        self._phase_dirty = False
        first_steps: dict[str, int] = {}
        for key, step, _, _ in points:
            if key not in self._seen_keys and step < first_steps.get(key, step + 1):
                first_steps[key] = step
        self._seen_keys.update(first_steps)
        points += foreign  # wall-time points never repeat an earlier attempt's: nothing to supersede
        new_keys = sorted({p[0] for p in points} - set(self._keys))
        self._keys += new_keys
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values.update(progress_done=progress[0], progress_total=progress[1])
        if phase is not None:
            values["phase"] = phase
        if points:
            values["last_metrics"] = dict(self._last)
        if new_keys:
            values["metric_keys"] = list(self._keys)
        if points or progress is not None or new_keys or phase is not None:
            values["version"] = Run.version + 1
        if self.lost_ownership:
            return
        with self._maker() as session:
            if points and session.get_bind().dialect.name == "postgresql":
                # metrics may lose their last second in a database crash; not worth a WAL flush each
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            # first: the fence (on PostgreSQL it also locks the row, so the sweeper cannot declare the run
            # lost between this check and the commit)
            if not self._owns(session, **values):
                return
            replaced = self._supersede(session, first_steps)
            if replaced:
                logs = [*logs, self._replaced_line(replaced)]
            metric_store.ingest(session, self._run_id, points)
            if logs:
                session.execute(insert(LogLine), logs)
            if points or logs or "version" in values:  # not for a bare heartbeat: no stream shows it
                run_changed(session, self._run_id)  # the run's SSE streams wake at this commit
            try:
                session.commit()
            except OperationalError as err:  # SQLite on a full disk: say so instead of a driver message
                if "full" not in str(err).lower():
                    raise
                raise DiskFull(
                    "the database's disk is full: the run's metrics and logs cannot be stored; free space, "
                    "then retry the run (it resumes from its last checkpoint)"
                ) from None

    def _supersede(self, session: Session, first_steps: dict[str, int]) -> dict[str, tuple[int, int]]:
        """key -> (from step, points dropped) for keys whose earlier points this attempt repeats."""
        replaced = {}
        for key, step in first_steps.items():
            if key not in self._earlier_keys:
                continue
            last = metric_store.max_step(session, self._run_id, key)
            if last is not None and last >= step:
                replaced[key] = (step, metric_store.supersede(session, self._run_id, key, step))
        return replaced

    def _replaced_line(self, replaced: dict[str, tuple[int, int]]) -> dict[str, Any]:
        start = min(step for step, _ in replaced.values())
        dropped = sum(count for _, count in replaced.values())
        return {
            "run_id": self._run_id,
            "time": time.time(),
            "level": "info",
            "message": f"resumed at step {start}: {dropped} points of {len(replaced)} metric(s) written after "
            f"the last checkpoint by an earlier attempt are replaced by this attempt's",
        }

    def _beat(self, every_s: float) -> None:
        """Heartbeats from a thread, so a long step (data loading, an evaluation) is not taken for a
        dead worker."""
        while not self._beating.wait(every_s):
            try:
                with self._maker() as session:
                    if not transitions.heartbeat(session, self._run_id, self._attempt_id):
                        self.lost_ownership = True  # flags only: the library's thread sees it at its next step
                        self._stop = True
                        return
            except Exception:  # a database hiccup: the next beat tries again, the lease allows a few misses
                pass

    def close(self) -> None:
        self._beating.set()
        self.flush(check_space=False)  # the last lines (the reason of a DiskFull among them) fit the reserve
        if self._beater is not None:
            self._beater.join(timeout=5)
