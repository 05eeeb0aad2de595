"""The one task every run kind uses: claim the run, call `obow.runs.run`, record the outcome.

Idempotent by run id: a redelivered message for a run that another attempt holds (fresh heartbeat) or
that has finished does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import signals
from sqlalchemy import select

from obow import runs as obow_runs
from obow.config.kinds import PathRoot
from obow.errors import ObowError, StopRequested
from obow.hashing import sha256_of
from obow.io.sums import record_sha256
from server.core import kinds as kinds_service
from server.core import transitions
from server.core.artifacts import inside_root, run_dir
from server.core.db import make_engine, make_sessionmaker
from server.core.models import Artifact, Run, RunState
from server.core.paths import path_errors
from server.core.queue import RUN_TASK, send_run
from server.core.settings import Settings
from server.core.workers import Beater
from worker import provenance
from worker.celery_app import app
from worker.reporter import DbReporter
from worker.supervisor import HANDED_BACK, LOST_RUN, Outcome, supervise
from worker.sysmetrics import Gpus, SystemSampler

_makers: dict[str, Any] = {}


def _maker(settings: Settings):
    if settings.db_url not in _makers:
        _makers[settings.db_url] = make_sessionmaker(make_engine(settings.db_url))
    return _makers[settings.db_url]


def claim(maker, run_id: int, heartbeat_timeout_s: float) -> int | None:
    """The run's new attempt id, or None when the run is not waiting (taken, finished, cancelled)."""
    with maker() as session:
        attempt = transitions.claim(
            session,
            run_id,
            worker_host=socket.gethostname(),
            gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
            pid=os.getpid(),
            lease_s=heartbeat_timeout_s,
        )
    return attempt.id if attempt is not None else None


def _seed_from_retry(maker, retry_of_id: int | None, out_dir: Path, root: Path, reporter: DbReporter) -> None:
    """A retried run starts from the old run's newest checkpoint whose bytes still match the sha256
    recorded when it was written (copied into its empty directory, its digest recorded beside it for the
    library to check again on load). A corrupt one is skipped with a warning naming it."""
    if retry_of_id is None or any(out_dir.iterdir()):
        return
    with maker() as session:
        candidates = session.scalars(
            select(Artifact)
            .where(Artifact.run_id == retry_of_id, Artifact.kind == "checkpoint")
            .order_by(Artifact.id.desc())
        ).all()
    for ckpt in candidates:
        source = inside_root(root, ckpt.path)
        if source is None or not source.is_file():
            continue
        if sha256_of(source) != ckpt.sha256:
            reporter.log(
                f"checkpoint '{ckpt.path}' of run {retry_of_id} is corrupt (its sha256 differs from the one "
                f"recorded when it was written); trying the previous one",
                "warning",
            )
            continue
        # a copy, not a hard link: a library that rewrote the file in place would change the old run's artifact
        target = out_dir / source.name
        shutil.copy2(source, target)
        record_sha256(target, ckpt.sha256)
        return


def heartbeat_interval(timeout_s: float) -> float:
    """A few beats per lease, so one late beat (a busy database, a GC pause) never makes a run look lost."""
    return max(0.2, min(10.0, timeout_s / 4))


def execute_run(
    run_id: int,
    settings: Settings | None = None,
    isolate: bool = False,
    shutting_down: Callable[[], bool] | None = None,
) -> str:
    """Claim the run and execute one attempt of it.

    With `isolate` (what workers do) the attempt runs in a forked child process in its own process group,
    watched by this process: a cancel that the run does not honour within the grace period, or a child
    that dies (out of memory, a segfault), ends the attempt at once instead of after a heartbeat lease.
    In-process (`isolate=False`) is for tests and debugging. When `shutting_down()` turns true (a warm
    shutdown of the worker) the run is asked to stop at its next step and is handed back to the queue.
    """
    settings = settings or Settings()
    maker = _maker(settings)
    attempt_id = claim(maker, run_id, settings.heartbeat_timeout_s)
    if attempt_id is None:
        return "skipped"
    with maker() as session:
        run = session.get(Run, run_id)
        kind, spec, retry_of_id, queue = run.kind, dict(run.spec), run.retry_of_id, run.queue
    beat_s = heartbeat_interval(settings.heartbeat_timeout_s)
    if isolate:
        def in_child() -> Outcome:
            return run_attempt(
                fresh_maker(settings), run_id, attempt_id, kind, spec, retry_of_id, settings, None, supervised=True
            )

        state, error, result = supervise(
            maker, run_id, attempt_id, in_child, settings.cancel_grace_s, beat_s, shutting_down or (lambda: False)
        )
    else:
        state, error, result = run_attempt(maker, run_id, attempt_id, kind, spec, retry_of_id, settings, beat_s)
    if state == HANDED_BACK:
        hand_back(maker, run_id, attempt_id, queue)
    elif state != LOST_RUN:  # a stale attempt has nothing to record: the run is another attempt's now
        finish(maker, run_id, attempt_id, state, error, result)
    return state


def hand_back(maker, run_id: int, attempt_id: int, queue: str) -> None:
    """The worker is shutting down: the run goes back to `queued` (its checkpoint was just written) and a
    new message is sent, so the next free worker resumes it instead of waiting for the heartbeat lease."""
    with maker() as session:
        if not transitions.interrupt(session, run_id, attempt_id, "the worker shut down; the run was queued again"):
            return
    try:
        task_id = send_run(app, run_id, queue, retry=True)
    except Exception:  # the broker is away too: the API's redelivery sends it once it can
        traceback.print_exc()
        return
    with maker() as session:
        transitions.requeue(session, run_id, task_id, "handed back by a worker that shut down")


def fresh_maker(settings: Settings):
    """A forked child's own engine: the inherited pools' connections belong to the parent, so they are
    dropped without being closed (closing would end the parent's sessions too)."""
    for inherited in _makers.values():
        inherited.kw["bind"].dispose(close=False)
    _makers.clear()
    return _maker(settings)


def checked_spec(kind: str, spec: dict[str, Any], settings: Settings, out_dir: Path) -> dict[str, Any]:
    """The submit-time path check again, where the files are opened (roots may have changed, a symlink
    may have been swapped since); relative cache folders are made to lie in the run's folder."""
    problems = path_errors(kind, spec, settings, lab_filled=True, run_dir=out_dir)
    if problems:
        raise ObowError("; ".join(f"spec field {'.'.join(loc)}: {msg}" for loc, msg in problems))
    spec = dict(spec)
    for loc, root in kinds_service.paths(kind).items():
        value = spec.get(loc[0]) if len(loc) == 1 else None
        if root == PathRoot.CACHE and isinstance(value, str) and not Path(value).is_absolute():
            spec[loc[0]] = str(out_dir / value)
    return spec


def run_attempt(
    maker,
    run_id: int,
    attempt_id: int,
    kind: str,
    spec: dict[str, Any],
    retry_of_id: int | None,
    settings: Settings,
    heartbeat_s: float | None,
    supervised: bool = False,
) -> Outcome:
    """Run the library's entry point with a database reporter; every error becomes the run's outcome.

    `heartbeat_s=None`: the supervising process keeps the heartbeat. `supervised`: SIGUSR1 from the
    supervisor asks for a hand-off (stop at the next step, checkpointed, and go back to the queue)."""
    root = settings.artifact_root
    out_dir = run_dir(root, run_id)
    reporter = DbReporter(
        maker,
        run_id,
        attempt_id,
        root,
        heartbeat_s=heartbeat_s,
        watched_disks=settings.watched_disks,
        min_free_bytes=int(settings.min_free_mb * 2**20),
    )
    state, error, result = "succeeded", None, None
    sampler: SystemSampler | None = None
    try:
        reporter.phase("starting", 1, "steps")  # until the library's first phase: imports, data, weights
        reporter.log(f"attempt {attempt_id} on {socket.gethostname()} pid {os.getpid()}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            _seed_from_retry(maker, retry_of_id, out_dir, root.resolve(), reporter)
        except OSError as err:  # a full or read-only artifact root: the run fails and says where
            raise ObowError(
                f"cannot prepare the run's folder '{out_dir}': {err.strerror or err} (check ARTIFACT_ROOT: "
                f"free space and write permission)"
            ) from None
        if supervised:
            signal.signal(signal.SIGUSR1, lambda *_: reporter.request_handoff())
        resolved = obow_runs.spec_class(kind).model_validate(checked_spec(kind, spec, settings, out_dir))
        gpus = Gpus.open()
        reporter.record_provenance(provenance.collect(kind, resolved, gpu_models(gpus)))
        if settings.system_metrics_s:
            sampler = SystemSampler(reporter, settings.system_metrics_s, gpus=lambda: gpus).start()
        elif gpus is not None:
            gpus.close()
        result = obow_runs.run(kind, resolved, out_dir, reporter)
        if reporter.should_stop():
            state = reporter.stop_outcome()
    except StopRequested:
        state = reporter.stop_outcome()
    except ObowError as err:
        state, error = "failed", str(err)
    except Exception as err:  # a bug or a crash in the library: keep the traceback in the run's log
        state, error = "failed", f"{type(err).__name__}: {err}"
        reporter.log(traceback.format_exc(), "error")
    finally:
        if sampler is not None:
            sampler.stop()
        try:
            reporter.close()
        except Exception:  # the final state matters more than the last log lines
            traceback.print_exc()
    safe_result = json.loads(json.dumps(result, default=str)) if isinstance(result, dict) else None
    return state, error, safe_result


def gpu_models(gpus: Gpus | None) -> Callable[[], list[str]]:
    """The GPU model names for provenance: from NVML, else from torch when it sees CUDA devices."""

    def models() -> list[str]:
        if gpus is not None:
            return gpus.models()
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    return models


def finish(maker, run_id: int, attempt_id: int, state: str, error: str | None, result: Any) -> None:
    """Record the outcome. If the database refuses it (a value it cannot store, a constraint), the run
    still ends: `failed`, saying why, rather than `running` until the sweeper re-queues it forever."""
    safe_result = result if isinstance(result, dict) else None
    try:
        with maker() as session:
            transitions.finish(session, run_id, attempt_id, state, error, safe_result)
        return
    except Exception as err:
        traceback.print_exc()
        reason = f"the outcome '{state}' could not be recorded ({type(err).__name__}); error: {error or '-'}"
    with maker() as session:
        transitions.finish(session, run_id, attempt_id, RunState.FAILED, reason, None)


def _worker_shutting_down() -> bool:
    from celery.worker import state

    return bool(state.should_stop is not None or state.should_terminate is not None)


@app.task(name=RUN_TASK)
def run_task(run_id: int) -> str:
    settings = Settings()
    return execute_run(int(run_id), settings, isolate=settings.isolate_runs, shutting_down=_worker_shutting_down)


_beater: Beater | None = None


@signals.worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    """The worker consumes its queues now: from here on it keeps its row in `workers` fresh (every
    quarter lease, like a run's heartbeat), so `/healthz` can tell a live worker from a dead one."""
    global _beater
    settings = Settings()
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    name = sender.hostname if sender is not None else f"worker.{os.getpid()}@{socket.gethostname()}"
    _beater = Beater(
        _maker(settings), name, socket.gethostname(), os.getpid(), queues,
        heartbeat_interval(settings.heartbeat_timeout_s),
    )
    _beater.start()


@signals.worker_shutdown.connect
def _retire(**_: Any) -> None:
    """A clean shutdown removes the worker's row (a killed worker's row stops being refreshed instead)."""
    global _beater
    if _beater is not None:
        _beater.stop()
        _beater = None
