"""Running one attempt in a child process and watching it.

The worker forks a child per attempt, in a process group of its own (the library's DDP ranks and data
loader workers join it). The parent keeps the run's heartbeat, reads the cancel flag twice a second,
and ends the attempt itself when the child will not:

- cancel: the library stops at its next step and saves a checkpoint; if it has not exited
  `grace_s` seconds after the request (a long evaluation, a hung data loader), the whole group gets
  SIGTERM, then SIGKILL two seconds later. The run is `cancelled`; its last checkpoint (written
  atomically) is what remains on disk.
- the child dies (OOM killer, segfault, os._exit): the run fails at once, saying how it died, instead
  of waiting for the heartbeat lease to run out.
- the worker itself dies: the child gets SIGKILL from the kernel (PR_SET_PDEATHSIG), so nothing keeps
  training while the sweeper hands the run to another worker.
- the attempt loses the run (its heartbeat was refused: the sweeper declared it lost during a long
  pause, and another attempt may hold it now): the child is stopped like a cancel, and nothing of its
  outcome is recorded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import select

from obow.procs import exit_with_parent
from server.core import transitions
from server.core.models import Run, RunState

Outcome = tuple[str, str | None, Any]  # state, error, result
# an attempt's outcomes that are never a run's state
HANDED_BACK = "handed_back"  # the worker shut down; the run goes back to the queue
LOST_RUN = "lost_run"  # the attempt no longer owns the run; it records nothing
POLL_S = 0.5
TERM_TO_KILL_S = 2.0


def _child(conn: Connection, parent_pid: int, target: Callable[[], Outcome]) -> None:
    os.setsid()  # a group of its own: the parent can stop every process the run started
    exit_with_parent(parent_pid)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)  # not the worker's handlers (a warm shutdown of a copy of it)
    try:
        outcome = target()
    except BaseException as err:  # the target reports its own errors; this is a last resort
        outcome = ("failed", f"{type(err).__name__}: {err}", None)
        traceback.print_exc()
    conn.send(outcome)
    conn.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer, or an external kill)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode} without reporting an outcome"


def supervise(
    maker,
    run_id: int,
    attempt_id: int,
    target: Callable[[], Outcome],
    grace_s: float,
    heartbeat_s: float,
    shutting_down: Callable[[], bool],
) -> Outcome:
    """Run `target` in a forked child and return its outcome, or the one this watch decides.

    On a worker shutdown the child gets SIGUSR1 (stop at the next step, with a checkpoint) and the
    same grace as a cancel; its outcome is then `handed_back`."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, os.getpid(), target), name=f"obow-run-{run_id}")
    child.start()
    send.close()
    outcome: Outcome | None = None
    stop_seen: float | None = None
    lost = False
    handoff: float | None = None
    termed: float | None = None
    last_beat = last_poll = 0.0
    try:
        while True:
            if receive.poll(0.1):
                with contextlib.suppress(EOFError):  # EOF: the child is gone without a word
                    outcome = receive.recv()
                break
            if not child.is_alive():
                break
            now = time.monotonic()
            if now - last_poll >= POLL_S:
                last_poll = now
                with maker() as session:
                    row = session.execute(
                        select(Run.cancel_requested, Run.state, Run.attempt_id).where(Run.id == run_id)
                    ).one_or_none()
                    owned = row is not None and row[1] == RunState.RUNNING and row[2] == attempt_id
                    if owned and now - last_beat >= heartbeat_s:
                        last_beat = now
                        owned = transitions.heartbeat(session, run_id, attempt_id)
                    lost = lost or not owned
                    if lost or row[0]:
                        stop_seen = stop_seen or now
            if handoff is None and shutting_down():
                handoff = now
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGUSR1)
            asked = [t for t in (stop_seen, handoff) if t is not None]
            if termed is None and asked and now - min(asked) >= grace_s:
                termed = now
                _signal_group(child.pid, signal.SIGTERM)
            if termed is not None and now - termed >= TERM_TO_KILL_S:
                _signal_group(child.pid, signal.SIGKILL)
    finally:
        child.join(timeout=TERM_TO_KILL_S)
        if child.is_alive():
            _signal_group(child.pid, signal.SIGKILL)
            child.join()
        _signal_group(child.pid, signal.SIGKILL)  # ranks or loader workers the run left behind
        receive.close()
    if lost:
        return LOST_RUN, None, None
    if outcome is not None:
        return outcome
    if stop_seen is not None:
        return "cancelled", None, None
    if handoff is not None:  # stopped by force: the next worker resumes from the last checkpoint
        return HANDED_BACK, None, None
    return "failed", f"the run's process {describe_exit(child.exitcode)}", None
